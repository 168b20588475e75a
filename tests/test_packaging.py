"""The two ways to install (pip + pyproject, conda + environment.yml) must agree."""

import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CONDA_NAMES = {"pytorch": "torch"}  # conda-forge name -> PyPI name


def _split(req: str) -> tuple[str, str]:
    m = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*(.*)", req)
    return m.group(1).lower().replace("_", "-"), m.group(2).replace(" ", "")


def test_environment_yml_mirrors_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    py = dict(_split(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]
    conda, pip = {}, {}
    for d in env:
        if isinstance(d, dict):
            pip.update(_split(r) for r in d["pip"] if not r.startswith("-"))
        elif d != "pip" and not d.startswith("python="):
            name, spec = _split(d)
            conda[CONDA_NAMES.get(name, name)] = spec
    assert {**conda, **pip} == py


def test_constraints_pin_torch_and_everything_in_pyproject():
    pins = dict(
        _split(line)
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert pins["torch"] == "==2.13.0"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for req in project["dependencies"] + project["optional-dependencies"]["dev"]:
        assert _split(req)[0] in pins, f"{req} is not pinned in constraints.txt"


def _pin_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("pin_bootstrap", ROOT / "scripts" / "pin_bootstrap.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pin_script_changes_only_the_bootstrap_and_is_idempotent():
    """scripts/pin_bootstrap.py on each notebook's text (in memory): two lines change, a second run none."""
    import difflib

    import course_lib

    pin = _pin_script()
    assert pin.course_version() == course_lib.__version__
    assert pin.notebooks(), "no notebooks/NN_*.py found"
    for path in pin.notebooks():
        text = path.read_text()
        once = pin.pin(text, "9.8.7")
        assert pin.pin(once, "9.8.7") == once
        assert pin.pinned_version(once) == "9.8.7"
        changed = [
            line
            for line in difflib.ndiff(text.splitlines(), once.splitlines())
            if line[:1] in "+-" and line[1:2] == " "
        ]
        added, removed = (len([c for c in changed if c.startswith(sign)]) for sign in "+-")
        assert added <= 4 and removed <= 1, (path.name, changed)  # COURSE_VERSION + the install call
        compile(once, path.name, "exec")
        assert 'git+{REPO_URL}@v{COURSE_VERSION}"' in once and 'COURSE_VERSION = "9.8.7"' in once
    with pytest.raises(ValueError, match="REPO_URL"):
        pin.pin("print('no bootstrap')\n", "1.0")


def test_every_notebook_bootstrap_installs_the_pinned_release():
    """The bootstrap installs the tag of this version, never the default branch (run scripts/pin_bootstrap.py)."""
    import course_lib

    pin = _pin_script()
    unpinned = {p.name: pin.pinned_version(p.read_text()) for p in pin.notebooks()}
    unpinned = {k: v for k, v in unpinned.items() if v != course_lib.__version__}
    assert not unpinned, (
        f"notebooks whose bootstrap does not install v{course_lib.__version__} (pinned version or None = default "
        f"branch): {unpinned}; run  python scripts/pin_bootstrap.py && make sync"
    )
