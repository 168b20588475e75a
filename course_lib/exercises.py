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
from dataclasses import dataclass
from typing import Callable


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
            return torch.allclose(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64), rtol=rel, atol=rel)
    except ImportError:
        pass
    return a == b


def run_cases(exercise: str, fn: Callable, cases: list[tuple[dict, object]], *, rel: float = 1e-6) -> CheckResult:
    """Call ``fn(**kwargs)`` for each ``(kwargs, expected)``; see the module doc for outcomes."""
    if not callable(fn):
        raise TypeError(f"{exercise}: pass your function itself (not its result), got {type(fn).__name__}")
    for kwargs, expected in cases:
        try:
            got = fn(**kwargs)
        except NotImplementedError:
            return CheckResult(exercise, "not attempted yet")
        if not _close(got, expected, rel):
            raise ExerciseFailed(f"{exercise}: for {kwargs} you returned {got!r}, expected {expected!r}")
    return CheckResult(exercise, "passed", len(cases))


# ---------------------------------------------------------------- chapter 01: baseline


def check_kv_cache_bytes(fn: Callable) -> CheckResult:
    """01 — ``fn(config, seq_len, batch_size, bytes_per_value)``: bytes of a full KV cache.

    Reference: allocate a real cache with :meth:`TinyLM.new_cache` and count its bytes.
    """
    import torch

    from course_lib.model import ModelConfig, TinyLM

    cases = []
    for cfg, seq, batch, dtype in [
        (ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=4, max_seq_len=64), 64, 1, torch.float32),
        (ModelConfig(vocab_size=64, d_model=48, n_layers=3, n_heads=6, n_kv_heads=2, max_seq_len=40), 40, 3, torch.float32),
        (ModelConfig(vocab_size=64, d_model=64, n_layers=1, n_heads=8, n_kv_heads=1, max_seq_len=32), 17, 2, torch.float16),
    ]:
        model = TinyLM(cfg).to(dtype)
        expected = sum(c.nbytes() for c in model.new_cache(batch, seq))
        cases.append((dict(config=cfg, seq_len=seq, batch_size=batch, bytes_per_value=torch.finfo(dtype).bits // 8), expected))
    return run_cases("01 · KV-cache bytes", fn, cases)
