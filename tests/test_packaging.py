"""The two ways to install (pip + pyproject, conda + environment.yml) must agree."""

import re
import tomllib
from pathlib import Path

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
