"""Chapter 03 (sparse attention): the checkers for its exercises."""

from __future__ import annotations

from collections.abc import Callable

from course_lib.exercises.core import CheckResult, ExerciseFailed, check_prediction, run_cases

#: (batch, query heads, kv heads, head_dim, tokens decoded, window, dilation, seed)
_DILATED_CASES = [
    (1, 2, 1, 8, 20, 3, 2, 0),
    (1, 4, 2, 16, 40, 4, 3, 1),
    (2, 2, 2, 8, 25, 5, 1, 2),  # dilation 1: the plain window
    (1, 2, 1, 8, 10, 8, 4, 3),  # fewer tokens than the reach
    (1, 1, 1, 4, 30, 1, 5, 4),  # window 1: a token reads only itself
    (1, 4, 1, 8, 64, 6, 7, 5),
]


def _tensors_held(obj) -> list:
    """The floating-point tensors an object holds in its attributes (directly or in lists, tuples, dicts)."""
    import torch

    found = []
    for val in vars(obj).values():
        items = list(val.values()) if isinstance(val, dict) else val if isinstance(val, (list, tuple)) else [val]
        found += [t for t in items if torch.is_tensor(t) and t.is_floating_point()]
    return found


def _decode_dilated(cache_class, *, batch, heads, kv_heads, head_dim, tokens, window, dilation, seed):
    """Decode ``tokens`` random tokens one at a time through the learner's cache -> (B, H, T, d).

    Returns None when ``attend`` returns None (so the checker can say "did you forget return?").
    Raises ExerciseFailed when the cache's memory grows while decoding or exceeds the reach.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, tokens, head_dim, generator=gen)
    k = torch.randn(batch, kv_heads, tokens, head_dim, generator=gen)
    v = torch.randn(batch, kv_heads, tokens, head_dim, generator=gen)
    cache = cache_class(batch_size=batch, n_kv_heads=kv_heads, head_dim=head_dim, window=window, dilation=dilation)
    slots = (window - 1) * dilation + 1  # the oldest key a query reads is (w - 1)·d positions back
    limit = 2 * batch * kv_heads * slots * head_dim  # keys and values of that many positions
    first = None
    outs = []
    for t in range(tokens):
        y = cache.attend(q[:, :, t : t + 1], k[:, :, t : t + 1], v[:, :, t : t + 1])
        if y is None:
            return None
        outs.append(y)
        held = sum(x.numel() for x in _tensors_held(cache))
        first = held if first is None else first
        if held > limit or held > first:
            raise ExerciseFailed(
                f"03 · dilated window cache: after {t + 1} tokens your cache holds {held} numbers in floating-point "
                f"tensors (after the first token: {first}); a dilated window of {window}, dilation {dilation} needs "
                f"keys and values of at most {slots} positions: 2·B·H_kv·{slots}·d = {limit}, and a constant amount"
            )
    return torch.cat(outs, dim=2)


def check_dilated_cache(cache_class: Callable) -> CheckResult:
    """03 — ``cache_class(batch_size, n_kv_heads, head_dim, window, dilation)`` with ``.attend(q, k, v)``.

    A decoding cache for a causal dilated window (keys at distance 0, d, …, (w−1)·d): each
    ``attend`` takes one token, q (B, H, 1, d), k and v (B, H_kv, 1, d), stores its key and
    value and returns its attention output (B, H, 1, d). Reference: the whole sequence through
    :func:`course_lib.attention.dense_attention` with :func:`~course_lib.attention.dilated_window_mask`;
    and the cache must hold keys and values of at most (w−1)·d + 1 positions, a constant amount.
    """
    import torch

    from course_lib.attention import dense_attention, dilated_window_mask

    cases = []
    for b, h, hkv, d, t, w, dil, seed in _DILATED_CASES:
        kwargs = dict(batch=b, heads=h, kv_heads=hkv, head_dim=d, tokens=t, window=w, dilation=dil, seed=seed)
        gen = torch.Generator().manual_seed(seed)  # the same tensors _decode_dilated draws
        q = torch.randn(b, h, t, d, generator=gen)
        k, v = torch.randn(b, hkv, t, d, generator=gen), torch.randn(b, hkv, t, d, generator=gen)
        cases.append((kwargs, dense_attention(q, k, v, dilated_window_mask(t, w, dil))))

    def decode(**kw):
        return _decode_dilated(cache_class, **kw)

    return run_cases("03 · dilated window cache", decode, cases, rel=1e-4)


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


def check_window_time_prediction(predicted, measured: float) -> CheckResult:
    """03 — the learner's predicted time ratio (window 512 / window 128, blocked kernel) against the measured one.

    ``predicted``: a number or a function of no arguments returning one. Never fails on the
    value; it reports how far the score-count model was from this machine's measurement.
    """
    return check_prediction(
        "03 · time of a wider window",
        predicted,
        measured,
        unit="× (time with window 512 / time with window 128)",
        explain=(
            "The score-count model says time ∝ keys gathered per query block (w + b rounded up to whole blocks). "
            "The kernel also does work that does not grow with the window — scaling, padding and reshaping the "
            "queries, writing the output, a fixed dispatch cost per tensor operation — so the measured ratio "
            "usually comes out below the count ratio; gathered keys that no longer fit in the cache can push it "
            "the other way."
        ),
    )
