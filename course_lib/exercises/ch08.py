"""Chapter 08 (retrieval-augmented generation): the checkers for its exercises."""

from __future__ import annotations

from collections.abc import Callable

from course_lib.exercises.core import CheckResult, run_cases


def check_rrf(fn: Callable) -> CheckResult:
    """08 — ``fn(rankings, k)``: reciprocal rank fusion, fused ids best first (ties: smaller id).

    Reference: :func:`course_lib.rag.reciprocal_rank_fusion` on random rankings, including
    lists of different lengths, documents found by one list only, and a large and a zero ``k``.
    """
    import random

    from course_lib.rag import reciprocal_rank_fusion

    rng = random.Random(8)
    cases = [(dict(rankings=[[3, 1, 2], [1, 3, 4]], k=60), None), (dict(rankings=[[5, 6]], k=0), None)]
    for _ in range(6):
        n_lists, pool = rng.randint(2, 4), list(range(rng.randint(5, 30)))
        rankings = [rng.sample(pool, rng.randint(1, len(pool))) for _ in range(n_lists)]
        cases.append((dict(rankings=rankings, k=rng.choice([0, 1, 10, 60])), None))
    cases = [(kw, reciprocal_rank_fusion(kw["rankings"], k=kw["k"])[0].tolist()) for kw, _ in cases]

    def as_list(rankings, k):
        return [int(d) for d in fn(rankings=[list(r) for r in rankings], k=k)]

    return run_cases("08 · reciprocal rank fusion", as_list, cases)
