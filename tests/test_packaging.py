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


def _floors_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("test_floors", ROOT / "scripts" / "test_floors.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_dependency_has_a_floor_that_make_test_floors_installs():
    """scripts/test_floors.py pins each pyproject requirement at its floor; torch's floor is the Makefile's pin."""
    floors = _floors_script()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + project["optional-dependencies"]["dev"]
    assert floors.requirements() == reqs
    pins = floors.floor_pins(reqs)
    assert set(pins) == {floors.normalise(_split(r)[0]) for r in reqs}
    for req in reqs:
        name, spec = _split(req)
        low = re.search(r"(?:>=|==)([0-9][0-9.]*)", spec)
        assert low, f"{req} has no floor (>=X): make test-floors cannot test it"
        if name != "torch":
            assert pins[floors.normalise(name)] == low.group(1), req
    torch_pin = re.search(r"^TORCH_PIN := torch==([0-9.]+)$", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert floors.torch_pin() == torch_pin == pins["torch"]
    torch_floor = re.search(r">=([0-9.]+)", dict(map(_split, reqs))["torch"]).group(1)
    assert floors.same_release(torch_floor, torch_pin), f"pyproject torch>={torch_floor} but TORCH_PIN is {torch_pin}"
    assert floors.floor_of("jupyter-book>=1.0,<2") == ("jupyter-book", "1.0")
    assert floors.floor_of("rank_bm25>=0.2.2") == ("rank-bm25", "0.2.2")
    for bad in ("numpy", "numpy<3", "numpy>2.0", "numpy>=2.0,>=2.1"):
        with pytest.raises(ValueError, match="req"):
            floors.floor_of(bad)
    with pytest.raises(ValueError, match="torch floor"):
        floors.floor_pins(["torch>=2.6", "numpy>=2.0"], torch="2.13.0")
    with pytest.raises(ValueError, match="--pin"):
        floors.floor_pins(reqs, overrides={"not-a-dependency": "1.0"})
    assert floors.floor_pins(reqs, overrides={"NumPy": "2.1.0"})["numpy"] == "2.1.0"
