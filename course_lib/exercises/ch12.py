"""Chapter 12 (case studies): the checkers for its exercises."""

from __future__ import annotations

import math
from collections.abc import Callable

from course_lib.exercises.core import CheckResult, ExerciseFailed, check_prediction, run_cases


def _c12_number(exercise: str, fn: Callable) -> Callable:
    """Wrap a learner's function for chapter 12's checkers: a clear message for a missing
    ``return``, a non-number, or an exception raised inside it (``NotImplementedError`` passes
    through, so the stub reads *not attempted yet*)."""

    def call(**kwargs):
        try:
            got = fn(**kwargs)
        except NotImplementedError:
            raise
        except Exception as e:  # the learner's own error, shown as the checker's message
            raise ExerciseFailed(f"{exercise}: for {kwargs} your function raised {type(e).__name__}: {e}") from e
        if got is None:
            raise ExerciseFailed(f"{exercise}: your function returned None — did you forget `return`?")
        if isinstance(got, bool) or not isinstance(got, (int, float)) or not math.isfinite(got):
            raise ExerciseFailed(f"{exercise}: for {kwargs} expected a finite number, got {got!r}")
        return float(got)

    return call


def check_p_all_experts(fn: Callable) -> CheckResult:
    """12 — ``fn(n_experts, top_k, batch_size)``: probability that ``batch_size`` tokens, each choosing
    ``top_k`` distinct experts uniformly, together touch every expert.

    Reference: exact enumeration of every batch for the small cases (each token's choice is one
    of C(E, k) equally likely sets), and the inclusion–exclusion sum for the larger ones,
    which the enumeration confirms where both run.
    """
    import itertools
    from math import comb

    def enumerate_exact(e, k, b):
        sets = list(itertools.combinations(range(e), k))
        hit = sum(1 for batch in itertools.product(sets, repeat=b) if len(set().union(*batch)) == e)
        return hit / len(sets) ** b

    def inclusion_exclusion(e, k, b):
        return sum((-1) ** j * comb(e, j) * (comb(e - j, k) / comb(e, k)) ** b for j in range(e + 1))

    small = [(2, 1, 1), (2, 1, 3), (4, 2, 2), (4, 1, 4), (5, 2, 3), (3, 3, 1), (6, 2, 4)]
    for e, k, b in small:  # the reference checked against brute force
        assert abs(enumerate_exact(e, k, b) - inclusion_exclusion(e, k, b)) < 1e-12
    cases = [(dict(n_experts=e, top_k=k, batch_size=b), enumerate_exact(e, k, b)) for e, k, b in small]
    cases += [
        (dict(n_experts=e, top_k=k, batch_size=b), inclusion_exclusion(e, k, b))
        for e, k, b in [(8, 2, 1), (8, 2, 4), (8, 2, 8), (8, 2, 32), (64, 2, 64), (64, 2, 512), (16, 4, 10)]
    ]
    return run_cases(
        "12 · probability a batch reads every expert", _c12_number("12 · every expert", fn), cases, rel=1e-9
    )


def check_speedup_ceiling(fn: Callable) -> CheckResult:
    """12 — ``fn(fast, slow, batch_size)``: the most a decode step of ``fast`` can beat ``slow`` on equal
    hardware: max(weight bytes per step ratio (bf16, uniform routing, no KV cache), active-parameter ratio).

    Reference: :func:`course_lib.cases.step_bytes` and :func:`course_lib.configs.count_params`.
    """
    from course_lib import cases as case_studies
    from course_lib import configs

    def reference(fast, slow, b):
        w = [case_studies.step_bytes(c, dtype="bf16", batch_size=b)["weights"] for c in (fast, slow)]
        return max(w[1] / w[0], configs.count_params(slow)[1] / configs.count_params(fast)[1])

    pairs = [("mixtral-8x7b", "llama-2-70b"), ("glam-1.2t", "gpt-3-175b"), ("phi-3-mini", "llama-2-7b")]
    cases = []
    for fast, slow in pairs:
        for b in (1, 3, 8, 64):
            f, s = case_studies.config(fast), case_studies.config(slow)
            cases.append((dict(fast=f, slow=s, batch_size=b), reference(f, s, b)))
    return run_cases("12 · speed-up ceiling", _c12_number("12 · speed-up ceiling", fn), cases, rel=1e-9)


def check_matvec_time_prediction(predicted, measured: float) -> CheckResult:
    """12 — the learner's predicted time (ms) of one batch-1 product with a 64 MiB fp32 weight on this CPU.

    ``predicted``: a number or a function of no arguments returning one; ``measured``: the
    median the notebook just timed, in ms. Never fails on the value (machines differ); it
    reports how far the roofline's memory term (bytes ÷ measured bandwidth) was from the
    measurement, and why it misses.
    """
    return check_prediction(
        "12 · time of one weight read",
        predicted,
        measured,
        unit="ms",
        explain=(
            "The roofline's memory term says time = bytes read ÷ bandwidth, and every speed in this chapter is "
            "that bound. A real matrix-vector product comes close only when it streams the weight at the "
            "bandwidth the read benchmark reached: the product also writes its output, may run on fewer threads "
            "than the benchmark, and pays a fixed dispatch cost; a weight that fits in the last-level cache is "
            "read faster than memory allows; and a busy machine shares its bandwidth with other work. That gap is "
            "why the chapter calls its speeds upper bounds."
        ),
    )
