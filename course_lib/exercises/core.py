"""Checkers for the exercises at the end of each chapter.

Every exercise is a stub the reader fills in (it raises ``NotImplementedError`` until
then) and a checker here that runs it against cases computed by the course's own, tested
code. A checker reports one of three things:

* ``not attempted yet`` — the stub still raises ``NotImplementedError`` (no error, so a
  notebook with untouched stubs still runs top to bottom);
* ``passed`` — every case agrees;
* a :class:`ExerciseFailed` error that names the first case that disagrees and both values.

Solution cells (tagged ``solution``, hidden in the book) end with
``assert check_...(fn).passed`` so CI proves every solution passes its checker.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from course_lib.checks import check_callable


class ExerciseFailed(AssertionError):
    """The reader's function disagrees with the reference on a case."""


@dataclass
class CheckResult:
    exercise: str
    status: str  # "passed" | "not attempted yet"
    cases: int = 0

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def __repr__(self) -> str:
        mark = "✓" if self.passed else "…"
        detail = f" ({self.cases} cases)" if self.passed else " — fill in the stub above, then run this cell again"
        return f"{mark} {self.exercise}: {self.status}{detail}"

    def _repr_html_(self) -> str:
        colour = "#009E73" if self.passed else "#E69F00"
        return f'<p style="color:{colour};font-weight:600">{self!r}</p>'


def _close(a, b, rel: float) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=rel, abs_tol=rel)
    try:
        import torch

        if torch.is_tensor(a) or torch.is_tensor(b):
            return torch.allclose(
                torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64), rtol=rel, atol=rel
            )
    except ImportError:
        pass
    return a == b


def run_cases(exercise: str, fn: Callable, cases: list[tuple[dict, object]], *, rel: float = 1e-6) -> CheckResult:
    """Call ``fn(**kwargs)`` for each ``(kwargs, expected)``; see the module doc for outcomes."""
    check_callable(f"{exercise}: your answer (pass the function itself, not its result)", fn)
    for kwargs, expected in cases:
        try:
            got = fn(**kwargs)
        except NotImplementedError:
            return CheckResult(exercise, "not attempted yet")
        if not _close(got, expected, rel):
            raise ExerciseFailed(f"{exercise}: for {kwargs} you returned {got!r}, expected {expected!r}")
    return CheckResult(exercise, "passed", len(cases))
