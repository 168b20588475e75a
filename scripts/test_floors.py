"""Install the LOWEST versions pyproject.toml allows and run the unit tests on them (`make test-floors`).

pyproject.toml states floors (``pkg>=X``), not pins; CI tests the exact versions in
constraints.txt. A floor nobody installs is a guess: this script turns every ``pkg>=X`` of
``[project] dependencies`` and the ``dev`` extra (the unit suite imports from both) into
``pkg==X``, writes them to a constraints file, builds a fresh virtual environment
(build/venv-floors by default), installs the Makefile's pinned CPU torch first (an unpinned
torch can pull a multi-GB CUDA build), then everything else under those constraints, then
the course itself with ``--no-deps``, and runs the unit-test selection of ``make unit``
(``-m "not browser"``; no unit test starts a notebook kernel). It prints each package's
floor beside the version actually installed and the pytest result, and exits non-zero when
an install, a floor check or a test fails.

    python3 scripts/test_floors.py                        # what `make test-floors` runs
    python3 scripts/test_floors.py --pin numpy==2.1.0     # try one floor higher (bisecting a failure)
    python3 scripts/test_floors.py --reuse -- tests/test_rag.py   # reuse the venv, run some tests
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXTRAS = ("dev",)  # the optional-dependency groups the unit suite needs
UNIT_FLAGS = ("-q", "-p", "no:cacheprovider", "-m", "not browser")  # `make unit`'s selection, no cache writes
_REQ = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._\-]*)\s*(.*?)\s*$")


def normalise(name: str) -> str:
    """PEP 503 name: lower case, runs of ``-_.`` as one ``-`` (``rank_bm25`` -> ``rank-bm25``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(pyproject: Path = ROOT / "pyproject.toml", extras: tuple[str, ...] = EXTRAS) -> list[str]:
    """The requirement strings of ``[project] dependencies`` plus the given optional groups, in file order."""
    project = tomllib.loads(Path(pyproject).read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in extras:
        groups = project.get("optional-dependencies", {})
        if extra not in groups:
            raise ValueError(f"extras: {extra!r} is not an optional-dependency group of {pyproject} ({sorted(groups)})")
        reqs += groups[extra]
    return reqs


def floor_of(req: str) -> tuple[str, str]:
    """``(name, lowest version)`` of one requirement: the X of ``>=X`` or ``==X``.

    Other clauses (an upper bound such as ``<2``) are allowed beside the floor: the floor
    satisfies them. A requirement without ``>=`` or ``==`` has no floor to test: ValueError.
    """
    m = _REQ.match(req)
    if not m or ";" in req or "[" in req:
        raise ValueError(f"req: cannot parse {req!r} (expected 'name>=X' with optional ',<Y' clauses)")
    name, spec = m.group(1), m.group(2).replace(" ", "")
    lows = [c[2:] for c in spec.split(",") if c.startswith((">=", "==")) and not c.startswith("===")]
    if len(lows) != 1 or not re.fullmatch(r"[0-9]+(\.[0-9]+)*", lows[0]):
        raise ValueError(f"req: {req!r} has no floor (one '>=X' or '==X' with a release number X)")
    return normalise(name), lows[0]


def torch_pin(makefile: Path = ROOT / "Makefile") -> str:
    """The version of the Makefile's ``TORCH_PIN := torch==X`` (the one torch this project installs)."""
    m = re.search(r"^TORCH_PIN\s*:?=\s*torch==([0-9][0-9.]*)\s*$", Path(makefile).read_text(), re.M)
    if not m:
        raise ValueError(f"makefile: no 'TORCH_PIN := torch==X' line in {makefile}")
    return m.group(1)


def floor_pins(reqs: list[str], overrides: dict[str, str] | None = None, torch: str | None = None) -> dict[str, str]:
    """``{name: version}`` to install: every requirement at its floor, ``overrides`` replacing some.

    torch is installed at the Makefile's TORCH_PIN (``torch``); pyproject's torch floor must
    equal it, since that pin is the only torch tested (ValueError otherwise).
    """
    pins = dict(floor_of(r) for r in reqs)
    if "torch" in pins:
        torch = torch or torch_pin()
        if not same_release(pins["torch"], torch):
            raise ValueError(f"pyproject: torch floor {pins['torch']} is not the Makefile's TORCH_PIN torch=={torch}")
        pins["torch"] = torch
    for name, version in (overrides or {}).items():
        if normalise(name) not in pins:
            raise ValueError(f"--pin: {name!r} is not a dependency in pyproject.toml ({sorted(pins)})")
        pins[normalise(name)] = version
    return pins


def _run(cmd: list[str], **kw) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, **kw)


def installed(py: Path) -> dict[str, str]:
    """``{normalised name: version}`` of what pip installed in the venv of ``py``."""
    out = subprocess.run([str(py), "-m", "pip", "list", "--format", "json"], check=True, capture_output=True, text=True)
    return {normalise(d["name"]): d["version"] for d in json.loads(out.stdout)}


def same_release(wanted: str, got: str) -> bool:
    """``2.0`` matches ``2.0.0``, and ``2.13.0`` matches ``2.13.0+cpu`` (as ``==`` does)."""

    def key(v: str) -> tuple[int, ...]:
        parts = [int(p) for p in v.split("+")[0].split(".") if p.isdigit()]
        while parts and parts[-1] == 0:
            parts.pop()
        return tuple(parts)

    return key(wanted) == key(got.split("+")[0]) and not re.search(r"[a-z]", got.split("+")[0])


def _install(py: Path, torch: str, pins: dict[str, str], *, venv: Path, python: str, reuse: bool) -> None:
    """A fresh venv (unless ``reuse``), pip upgraded, the pinned torch, the floors, then the course with --no-deps."""
    if not (reuse and py.exists()):
        shutil.rmtree(venv, ignore_errors=True)
        _run([python, "-m", "venv", str(venv)])
    _run([str(py), "-m", "pip", "install", "-q", "--upgrade", "pip"])  # as the Makefile does: today's resolver
    # CPU torch first, pinned (the Makefile's TORCH_PIN): an unpinned torch can pull a CUDA build.
    _run([str(py), "-m", "pip", "install", "-q", f"torch=={torch}"])
    with tempfile.NamedTemporaryFile("w", suffix="-floors.txt", delete=False) as f:
        f.write(f"torch=={torch}\n" + "".join(f"{n}=={v}\n" for n, v in pins.items()))
    try:
        _run([str(py), "-m", "pip", "install", "-q", "-c", f.name, *[f"{n}=={v}" for n, v in pins.items()]])
    finally:
        Path(f.name).unlink()
    _run([str(py), "-m", "pip", "install", "-q", "--no-deps", "-e", str(ROOT)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--python", default="python3.11", help="interpreter for the venv (default python3.11)")
    ap.add_argument("--venv", type=Path, default=ROOT / "build" / "venv-floors")
    ap.add_argument(
        "--reuse", action="store_true", help="install into an existing venv instead of a fresh one (quicker retries)"
    )
    ap.add_argument(
        "--torch", default=None, metavar="torch==X", help="the torch pin (default: the Makefile's TORCH_PIN)"
    )
    ap.add_argument("--pin", action="append", default=[], metavar="PKG==X", help="test PKG at X instead of its floor")
    ap.add_argument("pytest_args", nargs="*", help="after --: pytest arguments (default: the unit suite, tests)")
    args = ap.parse_args(argv)
    overrides = {}
    for p in args.pin:
        if "==" not in p:
            ap.error(f"--pin: {p!r} is not PKG==X")
        name, version = p.split("==", 1)
        overrides[name] = version
    if args.torch is not None and not re.fullmatch(r"torch==[0-9][0-9.]*", args.torch):
        ap.error(f"--torch: {args.torch!r} is not torch==X")
    pins = floor_pins(requirements(), overrides, torch=args.torch and args.torch.split("==")[1])
    torch = pins.pop("torch")
    py = args.venv / "bin" / "python"
    t0 = time.monotonic()
    try:
        _install(py, torch, pins, venv=args.venv, python=args.python, reuse=args.reuse)
    except subprocess.CalledProcessError as e:
        print(
            f"\nfloors: install failed (exit {e.returncode}): a floor does not install on {args.python}, or two "
            "floors conflict (pip says which above). Raise it in pyproject.toml; try one first with --pin PKG==X."
        )
        return 1
    t_install = time.monotonic() - t0
    have = installed(py)
    print(f"\n{'package':<28} {'floor':>12} {'installed':>14}")
    bad = []
    for name, want in {"torch": torch, **pins}.items():
        got = have.get(name, "MISSING")
        ok = same_release(want, got)
        bad += [] if ok else [name]
        print(f"{name:<28} {want:>12} {got:>14}{'' if ok else '   <- not the floor'}")
    t1 = time.monotonic()
    cmd = [str(py), "-m", "pytest", *UNIT_FLAGS, *(args.pytest_args or ["tests"])]
    print("+", " ".join(cmd), flush=True)
    rc = subprocess.run(cmd, cwd=ROOT).returncode
    print(
        f"\nfloors: {len(pins) + 1} packages, {len(bad)} not at their floor{': ' + ', '.join(bad) if bad else ''}; "
        f"install {t_install:.0f} s; pytest exit {rc} in {time.monotonic() - t1:.0f} s"
    )
    return 1 if bad or rc else 0


if __name__ == "__main__":
    sys.exit(main())
