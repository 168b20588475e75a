"""Chapter 07 (data-centric efficiency): the checkers for its exercises."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from course_lib.exercises.core import CheckResult, check_prediction, run_cases


def bbit_reference(sig_a: np.ndarray, sig_b: np.ndarray, bits: int) -> float:
    r"""The b-bit MinHash estimate of Jaccard (Li & König 2010), in its large-set form.

    Keep the lowest ``bits`` bits of every signature value; two unequal minima then still
    agree on them by chance with probability :math:`C = 2^{-b}`, so the share of agreeing
    positions :math:`E` estimates :math:`J + (1 - J)C`, and :math:`\hat J = (E - C)/(1 - C)`.
    """
    mask = np.uint64((1 << bits) - 1)
    a = np.asarray(sig_a).astype(np.uint64) & mask
    b = np.asarray(sig_b).astype(np.uint64) & mask
    agree = float((a == b).mean())
    c = 2.0**-bits
    return (agree - c) / (1 - c)


def _bbit_cases() -> list[tuple[dict, float]]:
    """Signature pairs of sets with known overlaps (MinHash of course_lib), at several bit widths."""
    from course_lib.datacentric import MinHasher

    rng = np.random.default_rng(7)
    hasher = MinHasher(256, seed=3)
    cases = []
    for shared, own in ((90, 10), (50, 50), (20, 80), (5, 200)):
        universe = rng.choice(2**32, size=shared + 2 * own, replace=False).astype(np.uint32)
        a = universe[: shared + own]
        b = np.concatenate([universe[:shared], universe[shared + own :]])
        sig_a, sig_b = hasher.signatures_from_sets([a, b])
        for bits in (1, 2, 4, 8, 32):
            cases.append((dict(sig_a=sig_a, sig_b=sig_b, bits=bits), bbit_reference(sig_a, sig_b, bits)))
    return cases


def check_bbit_minhash(fn: Callable) -> CheckResult:
    """07 — ``fn(sig_a, sig_b, bits)``: the b-bit MinHash estimate of Jaccard from two uint32 signatures.

    Keep the lowest ``bits`` bits of each value, count the share of positions that agree, and
    correct for chance agreements: ``(E - 2**-bits) / (1 - 2**-bits)``. Reference:
    :func:`bbit_reference` on signatures of sets with known overlaps, at 1, 2, 4, 8 and 32 bits.
    """
    return run_cases("07 · b-bit MinHash", fn, _bbit_cases(), rel=1e-9, convert=float)


def check_lsh_recall_prediction(predicted, measured: float) -> CheckResult:
    """07 — the learner's predicted share (%) of planted near-duplicate pairs that 16 × 8 LSH makes candidates.

    ``predicted``: a number or a function of no arguments returning one; ``measured``: the
    share the notebook counted, in %. Never fails on the value: it reports how far the
    S-curve's prediction was from the count, and why they differ.
    """
    return check_prediction(
        "07 · LSH recall from the S-curve",
        predicted,
        measured,
        unit="%",
        explain=(
            "The S-curve 1 − (1 − sʳ)ᵇ is the probability for one pair if every signature position were an "
            "independent, truly random permutation. Averaged over the planted pairs' Jaccard values it predicts the "
            "expected share; the count differs by chance (each pair is one coin flip, and a few hundred flips vary "
            "by a few percent), and because our permutations are affine hashes, 2-universal rather than exactly "
            "min-wise independent. A prediction far off usually used one Jaccard value (the mean) instead of "
            "averaging the curve over the pairs: the curve is not linear, so the two differ."
        ),
    )
