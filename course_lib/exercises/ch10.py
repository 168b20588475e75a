"""Chapter 10 (cascades): the checkers for its exercises."""

from __future__ import annotations

from collections.abc import Callable

from course_lib.exercises.core import CheckResult, run_cases


def check_expected_calibration_error(fn: Callable) -> CheckResult:
    """10 — ``fn(probs, labels, n_bins) -> float``: ECE of top-label confidence, equal-width bins.

    Reference: :func:`course_lib.cascade.expected_calibration_error` on random (N, K)
    probabilities with labels that make some bins over- and some under-confident.
    """
    import numpy as np

    from course_lib import cascade

    cases = []
    for seed, n, k, scale, n_bins in [
        (0, 300, 4, 2.0, 10),
        (1, 1000, 12, 4.0, 15),
        (2, 50, 3, 0.5, 5),
        (3, 400, 2, 8.0, 10),
    ]:
        rng = np.random.default_rng(seed)
        probs = cascade.softmax(rng.normal(size=(n, k)) * scale)
        labels = np.where(rng.random(n) < 0.6, probs.argmax(1), rng.integers(0, k, n))
        cases.append(
            (
                dict(probs=probs, labels=labels, n_bins=n_bins),
                cascade.expected_calibration_error(probs, labels, n_bins=n_bins),
            )
        )
    return run_cases("10 · expected calibration error", fn, cases, rel=1e-9)


def check_acceptance_probability(fn: Callable) -> CheckResult:
    """10 — ``fn(p, q) -> float``: probability that a token drafted from ``q`` passes speculative sampling against ``p``.

    Reference: :func:`course_lib.speculative.acceptance_probability`, :math:`\\sum_x \\min(p(x), q(x))`.
    """
    import numpy as np

    from course_lib import speculative

    cases = []
    for seed, v, conc in [(0, 5, 1.0), (1, 50, 0.3), (2, 2, 5.0)]:
        rng = np.random.default_rng(seed)
        p, q = rng.dirichlet(np.ones(v) * conc), rng.dirichlet(np.ones(v) * conc)
        cases.append((dict(p=p, q=q), speculative.acceptance_probability(p, q)))
    same = np.full(8, 1 / 8)
    cases += [(dict(p=same, q=same), 1.0), (dict(p=np.array([1.0, 0.0]), q=np.array([0.0, 1.0])), 0.0)]
    return run_cases("10 · acceptance probability", fn, cases, rel=1e-9)
