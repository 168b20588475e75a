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


def _margin_cascade_reference(probs, pred_big, n_defer: int):
    """Hand-written reference: the small model answers except on the ``n_defer`` queries with
    the smallest top-2 margin (ties: the lower index is deferred first), which go to the big model."""
    import numpy as np

    top2 = np.sort(probs, axis=1)[:, -2:]  # (N, 2): second-largest, largest
    margin = top2[:, 1] - top2[:, 0]
    deferred = np.argsort(margin, kind="stable")[:n_defer]
    out = probs.argmax(1)
    out[deferred] = pred_big[deferred]
    return out


def check_margin_cascade(fn: Callable) -> CheckResult:
    """10 — ``fn(probs, pred_big, n_defer) -> (N,) int array``: a cascade with a budget.

    The big model can take only ``n_defer`` of the N queries: defer those whose small-model
    margin :math:`p_{(1)} - p_{(2)}` is smallest (equal margins: lower index first), answer the
    rest with the small model's argmax. Cases include ties, two classes, ``n_defer = 0`` and
    ``n_defer = N``; the reference is written out by hand above.
    """
    import numpy as np

    from course_lib import cascade

    cases = []
    for seed, n, k, scale, n_defer in [
        (0, 40, 5, 2.0, 10),
        (1, 200, 12, 4.0, 37),
        (2, 30, 2, 1.0, 0),
        (3, 25, 3, 0.5, 25),
    ]:
        rng = np.random.default_rng(seed)
        probs = cascade.softmax(rng.normal(size=(n, k)) * scale)
        pred_big = rng.integers(0, k, n)
        cases.append(
            (dict(probs=probs, pred_big=pred_big, n_defer=n_defer), _margin_cascade_reference(probs, pred_big, n_defer))
        )
    # ties: rows 0 and 2 have the same margin (0.25), row 1 a larger one; one query may be deferred
    tied = np.array([[0.5, 0.25, 0.25], [0.75, 0.125, 0.125], [0.25, 0.25, 0.5]])  # exact in binary
    cases.append(
        (
            dict(probs=tied, pred_big=np.array([2, 2, 0]), n_defer=1),
            _margin_cascade_reference(tied, np.array([2, 2, 0]), 1),
        )
    )
    return run_cases("10 · margin cascade with a budget", fn, cases)
