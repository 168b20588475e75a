"""Chapter 03 (sparse attention): the checkers for its exercises."""

from __future__ import annotations

from collections.abc import Callable

from course_lib.exercises.core import CheckResult, run_cases


def check_window_pairs(fn: Callable) -> CheckResult:
    """03 — ``fn(seq_len, window)``: (query, key) pairs a causal sliding window keeps.

    Reference: count the True entries of the mask built by ``course_lib.attention``.
    """
    from course_lib.attention import sliding_window_mask

    cases = [
        (dict(seq_len=t, window=w), int(sliding_window_mask(t, w).sum()))
        for t, w in [(1, 1), (8, 1), (8, 3), (10, 10), (10, 25), (64, 16), (257, 32), (1000, 999)]
    ]
    return run_cases("03 · sliding-window pairs", fn, cases)


def check_reach(fn: Callable) -> CheckResult:
    """03 — ``fn(n_layers, window, dilation, seq_len)``: positions that can influence the last token.

    Reference: the receptive field of a stack of dilated-window layers, propagated through
    the real masks by ``course_lib.attention.receptive_field``.
    """
    from course_lib.attention import dilated_window_mask, receptive_field

    cases = []
    for layers, w, d, t in [(1, 4, 1, 32), (3, 4, 1, 32), (4, 8, 1, 20), (2, 3, 2, 40), (3, 5, 3, 64), (6, 4, 4, 50)]:
        expected = int(receptive_field(dilated_window_mask(t, w, d), layers)[-1].sum())
        cases.append((dict(n_layers=layers, window=w, dilation=d, seq_len=t), expected))
    return run_cases("03 · receptive field of stacked windows", fn, cases)
