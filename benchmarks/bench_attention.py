"""Chapter 03: dense vs sparse attention — time and peak memory vs length, flex_attention, decoding."""

from __future__ import annotations

import time

import torch

from course_lib import attention as A
from course_lib import measure, zoo
from course_lib.experiments import attention as attention_runs
from course_lib.model import TinyLM


def bench_scaling() -> list[dict]:
    """Dense SDPA (causal; with a window mask) vs the blocked kernel, window 256, batch 1, 2 heads of 64."""
    rows = attention_runs.measure_scaling(
        (1024, 2048, 4096, 8192), window=256, block_size=64, n_heads=2, head_dim=64, repeats=5
    )
    base = {r["seq_len"]: r["ms"] for r in rows if r["variant"] == "SDPA causal (dense)"}
    return [
        {
            "benchmark": "attention vs length",
            "variant": r["variant"],
            "seq_len": r["seq_len"],
            "ms": r["ms"],
            "peak MB": r["peak_mb"],
            "speed-up vs SDPA causal": base[r["seq_len"]] / r["ms"],
        }
        for r in rows
    ]


def bench_flex() -> list[dict]:
    """Compiled flex_attention vs the blocked kernel vs SDPA with a dense mask (4096 tokens, window 256)."""
    t0 = time.perf_counter()
    ok, why = A.flex_available()
    compile_s = time.perf_counter() - t0
    if not ok:
        return [{"benchmark": "flex_attention", "variant": "flex (compiled)", "status": f"unavailable: {why}"}]
    p = A.SparsePattern("sliding_window", window=256, block_size=64)
    n = 4096
    q, k, v = (torch.randn(1, 2, n, 64, generator=torch.Generator().manual_seed(i)) for i in range(3))
    t0 = time.perf_counter()
    A.flex_sparse_attention(q, k, v, p)  # compiles for this shape
    first_s = time.perf_counter() - t0
    t = measure.interleaved(
        {
            "flex (compiled)": lambda: A.flex_sparse_attention(q, k, v, p),
            "blocked (ours)": lambda: A.block_sparse_attention(q, k, v, p),
            "SDPA + mask (dense)": lambda: A.sdpa_attention(q, k, v, p.mask(n)),
            "SDPA causal (dense)": lambda: A.sdpa_attention(q, k, v, is_causal=True),
        },
        warmup=1,
        repeats=5,
    )
    sp = measure.speedups(t, "SDPA + mask (dense)")
    return [
        {
            "benchmark": "flex_attention",
            "variant": name,
            "seq_len": n,
            "ms": tm.median * 1e3,
            "speed-up vs SDPA + mask": sp[name],
            "first call s": round(compile_s + first_s, 1) if name == "flex (compiled)" else None,
        }
        for name, tm in t.items()
    ]


def bench_decode() -> list[dict]:
    """The tiny patient decoding 64 tokens after a 128-token prompt: full KV cache vs rolling cache (window 32)."""
    tiny = zoo.load("tiny").model
    windowed = TinyLM(A.sparse_config(tiny.config, pattern="sliding_window", window=32, block_size=32)).eval()
    windowed.load_state_dict(tiny.state_dict())
    models = {"full attention, KV cache": tiny, "window 32, rolling cache": windowed}
    t = measure.interleaved(
        {n: measure.decode_fn(m, prompt_len=128, new_tokens=64) for n, m in models.items()}, warmup=1, repeats=5
    )
    return [
        {
            "benchmark": "decode",
            "variant": n,
            "decode ms/token": t[n].median / 64 * 1e3,
            "cache kB at 256": sum(c.nbytes() for c in m.new_cache(1, 256)) / 1e3,
            "cache kB at 32768": sum(c.nbytes() for c in m.new_cache(1, 32768)) / 1e3,
        }
        for n, m in models.items()
    ]
