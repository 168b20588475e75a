"""Chapter 01 (baseline): the checkers for its exercises."""

from __future__ import annotations

from collections.abc import Callable

from course_lib.exercises.core import CheckResult, check_prediction, run_cases


def check_kv_cache_bytes(fn: Callable) -> CheckResult:
    """01 — ``fn(config, seq_len, batch_size, bytes_per_value)``: bytes of a full KV cache.

    Reference: allocate a real cache with :meth:`TinyLM.new_cache` and count its bytes.
    """
    import torch

    from course_lib.model import ModelConfig, TinyLM

    cases = []
    for cfg, seq, batch, dtype in [
        (
            ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=4, max_seq_len=64),
            64,
            1,
            torch.float32,
        ),
        (
            ModelConfig(vocab_size=64, d_model=48, n_layers=3, n_heads=6, n_kv_heads=2, max_seq_len=40),
            40,
            3,
            torch.float32,
        ),
        (
            ModelConfig(vocab_size=64, d_model=64, n_layers=1, n_heads=8, n_kv_heads=1, max_seq_len=32),
            17,
            2,
            torch.float16,
        ),
    ]:
        model = TinyLM(cfg).to(dtype)
        expected = sum(c.nbytes() for c in model.new_cache(batch, seq))
        cases.append(
            (dict(config=cfg, seq_len=seq, batch_size=batch, bytes_per_value=torch.finfo(dtype).bits // 8), expected)
        )
    return run_cases("01 · KV-cache bytes", fn, cases)


def top_p_reference(logits, p: float):
    """Nucleus (top-p) sampling's distribution (Holtzman et al., 2020), written independently of the learner's.

    Sort the softmax probabilities from largest to smallest; keep a token when the probability
    mass *before* it is below ``p`` (the smallest set of most likely tokens whose mass reaches
    ``p``; the most likely token is always kept); zero the rest and renormalise over the last axis.
    """
    import torch

    probs = torch.softmax(logits.float(), dim=-1)
    sorted_p, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_p.cumsum(-1) - sorted_p
    keep_sorted = mass_before < p
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    kept = probs * keep
    return kept / kept.sum(-1, keepdim=True)


def check_top_p(fn: Callable) -> CheckResult:
    """01 — ``fn(logits, p) -> probabilities``: the distribution nucleus (top-p) sampling draws from.

    Reference: :func:`top_p_reference`, on logits whose probabilities have no ties (so the
    kept set is unambiguous), in 1-D and batched, from a nearly greedy ``p`` to ``p = 1``.
    """
    import torch

    gen = torch.Generator().manual_seed(1)
    cases = []
    for shape, scale, p in [
        ((12,), 2.0, 0.5),
        ((12,), 2.0, 0.9),
        ((3, 50), 3.0, 0.75),
        ((2, 40), 1.0, 1.0),
        ((4, 30), 4.0, 0.01),
    ]:
        logits = torch.randn(shape, generator=gen) * scale
        cases.append((dict(logits=logits, p=p), top_p_reference(logits, p)))
    return run_cases("01 · top-p sampling", fn, cases, rel=1e-5)


def check_batched_decode_prediction(predicted, measured: float) -> CheckResult:
    """01 — the learner's predicted ratio (one decode step for 8 sequences / for 1) against the measured one.

    ``predicted``: a number or a function of no arguments returning one. Never fails on the
    value; it reports how far the learner's model was from this machine's measurement.
    """
    return check_prediction(
        "01 · a decode step for 8 sequences",
        predicted,
        measured,
        unit="× (time of one decode step at batch 8 / at batch 1)",
        explain=(
            "Counting FLOPs says 8×: every matrix product does 8 rows instead of 1. But at batch 1 a decode step "
            "of a small model is mostly costs that do not grow with the batch — every weight is read from memory "
            "once per step whatever the batch, and each of the model's operators is launched from Python once — "
            "so the measured ratio usually lands far below 8×; only the part that is real arithmetic (and the "
            "attention over each sequence's own cache) grows with the batch. That is why servers batch requests."
        ),
    )
