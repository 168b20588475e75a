"""Chapter 06 (pruning): the checkers for its exercises."""

from __future__ import annotations

from collections.abc import Callable

from course_lib.exercises.core import CheckResult, check_prediction, run_cases


def taylor_head_scores_reference(w_o, grad_o, n_heads: int):
    r"""The reference: :math:`\big|\sum_i \sum_{c \in h} W_o[i, c]\, G[i, c]\big|` for each head h, (n_heads,).

    Query head h owns columns ``h·d : (h+1)·d`` of the output projection ``w_o`` (C, H·d); zeroing
    them removes the head, and to first order that changes the loss by ``-sum(W ⊙ G)`` over those
    columns (Michel et al., 2019, score heads by the size of this change).
    """
    c, hd = w_o.shape
    return (w_o * grad_o).reshape(c, n_heads, hd // n_heads).sum(dim=(0, 2)).abs()


def check_taylor_head_scores(fn: Callable) -> CheckResult:
    """06 — ``fn(w_o, grad_o, n_heads) -> (n_heads,)``: first-order (Taylor) importance of each head.

    Cases: output projections (C, H·d) with C ≠ H·d (so rows and columns cannot be confused),
    one head, and a gradient with mixed signs inside a head (so the sum must be taken before
    the absolute value). Reference: :func:`taylor_head_scores_reference`.
    """
    import torch

    cases = []
    for c, n_heads, d, seed in [(12, 4, 5, 0), (8, 6, 4, 1), (16, 1, 8, 2), (6, 3, 2, 3)]:
        gen = torch.Generator().manual_seed(seed)
        w = torch.randn(c, n_heads * d, generator=gen)
        g = torch.randn(c, n_heads * d, generator=gen)
        cases.append((dict(w_o=w, grad_o=g, n_heads=n_heads), taylor_head_scores_reference(w, g, n_heads)))
    return run_cases("06 · Taylor head scores", fn, cases, rel=1e-5)


def check_structured_speedup_prediction(predicted, measured: float) -> CheckResult:
    """06 — the learner's predicted speed-up (dense MLP time / time with a quarter of its neurons).

    ``predicted``: a number or a function of no arguments returning one; ``measured``: the
    speed-up the notebook just timed. Never fails on the value (machines differ); it reports how
    far a "fixed cost + cost per multiply-add" model was from this machine, and why it misses.
    """
    return check_prediction(
        "06 · speed-up of a quarter-size MLP",
        predicted,
        measured,
        unit="× (dense time / time with a quarter of the neurons)",
        explain=(
            "A model fitted on two points (dense and half the neurons) assumes the time per multiply-add stays the "
            "same as the matrices shrink. It does not quite: a smaller matrix fits better in the caches (its time "
            "per multiply-add can fall), while a narrower matrix gives the BLAS kernel less work to spread over its "
            "threads and blocks (its time per multiply-add can rise); and two timings on a busy machine carry "
            "their own noise into the fitted fixed cost."
        ),
    )
