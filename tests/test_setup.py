"""The setup path every entry point shares: the OpenMP wait policy, the thread count, ``start()``, lazy modules.

Issue 14 item 1 (threads that do not spin, chosen and printed) and issue 25 item 6 (the lazy
module list derives from the package).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import course_lib
from course_lib import notebook

ROOT = Path(__file__).resolve().parent.parent


def _python(code: str, **env) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (libgomp reads the policy once, when torch loads)."""
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "COURSE_THREADS")}
    return subprocess.run(
        [sys.executable, "-c", code], env={**base, **env}, cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_importing_course_lib_sets_passive_threads_unless_the_user_chose():
    code = "import os, course_lib; print(os.environ['OMP_WAIT_POLICY'], course_lib.TORCH_IMPORTED_FIRST)"
    assert _python(code).stdout.split() == ["PASSIVE", "False"]
    assert _python(code, OMP_WAIT_POLICY="ACTIVE").stdout.split() == ["ACTIVE", "False"]  # the user's value wins


def test_start_prints_the_machine_and_warns_when_torch_came_first():
    out = _python("import course_lib.notebook as nb; nb.start(0)", COURSE_THREADS="1")
    assert out.returncode == 0, out.stderr
    assert "OMP_WAIT_POLICY=PASSIVE" in out.stdout and "1 torch threads" in out.stdout and "seed 0" in out.stdout
    # Under pytest every child imports course_lib first (the network guard's sitecustomize), so the
    # detection's result is set by hand here: start() must then warn.
    late = _python(
        "import course_lib, course_lib.notebook as nb; course_lib.TORCH_IMPORTED_FIRST = True; nb.start(0, quiet=True)"
    )
    assert late.returncode == 0 and "torch was imported before course_lib" in late.stderr


def test_choose_threads(monkeypatch):
    monkeypatch.setenv("COURSE_THREADS", "3")
    assert notebook.choose_threads() == 3
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("COURSE_THREADS", bad)
        with pytest.raises(ValueError, match="COURSE_THREADS"):
            notebook.choose_threads()
    monkeypatch.delenv("COURSE_THREADS")
    assert notebook.choose_threads() == len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    "call, match",
    [(lambda: notebook.set_seed(-1), "seed"), (lambda: notebook.pick_device("tpu"), "prefer")],
)
def test_setup_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_lazy_modules_are_the_package_modules():
    on_disk = {p.stem for p in (ROOT / "course_lib").glob("*.py") if not p.stem.startswith("_")}
    on_disk |= {p.name for p in (ROOT / "course_lib").iterdir() if (p / "__init__.py").is_file()}
    assert on_disk <= set(dir(course_lib))
    assert course_lib.checks is __import__("course_lib.checks").checks
    with pytest.raises(AttributeError, match="no attribute 'no_such_module'"):
        course_lib.no_such_module  # noqa: B018
