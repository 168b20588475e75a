"""Chapter 01 (baseline): the checkers for its exercises."""

from __future__ import annotations

from collections.abc import Callable

from course_lib.exercises.core import CheckResult, run_cases


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
