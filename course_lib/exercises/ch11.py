"""Chapter 11 (hardware-aware design): the checkers for its exercises."""

from __future__ import annotations

from collections.abc import Callable

from course_lib.exercises.core import CheckResult, check_prediction, run_cases


def check_decode_attention_intensity(fn: Callable) -> CheckResult:
    """11 — ``fn(kv_len, heads, kv_heads, head_dim, kv_bytes, scale_bytes)``: FLOPs per byte of one
    decode step of attention whose KV cache is quantized (a variant the chapter does not show).

    One new query per head attends to ``kv_len`` cached positions of ``kv_heads`` key/value
    heads. The cache stores ``kv_bytes`` per element (2 fp16, 1 int8, 0.5 int4) plus one scale
    of ``scale_bytes`` per position and KV head, for K and for V; q and the output stay fp16.
    FLOPs: the two matmuls (:func:`course_lib.hardware.attention_cost`; dequantizing is not
    counted). Bytes (fused): q and the output once, K and V with their scales once.
    """
    from course_lib.hardware import attention_cost

    def reference(kv_len, heads, kv_heads, head_dim, kv_bytes, scale_bytes):
        flops = attention_cost(
            batch=1, heads=heads, q_len=1, kv_len=kv_len, head_dim=head_dim, kv_heads=kv_heads, dtype="fp16"
        ).flops
        q_and_out = 2 * heads * head_dim * 2  # fp16
        cache = 2 * kv_heads * kv_len * (head_dim * kv_bytes + scale_bytes)  # K and V, codes + scales
        return flops / (q_and_out + cache)

    cases = []
    for kv_len, heads, kv_heads, head_dim in [(4096, 32, 32, 128), (4096, 32, 8, 128), (100, 6, 2, 32), (1, 4, 1, 8)]:
        for kv_bytes, scale_bytes in [(2, 0), (1, 2), (0.5, 2), (1, 4)]:
            kw = dict(
                kv_len=kv_len,
                heads=heads,
                kv_heads=kv_heads,
                head_dim=head_dim,
                kv_bytes=kv_bytes,
                scale_bytes=scale_bytes,
            )
            cases.append((kw, reference(**kw)))
    return run_cases("11 · decode attention intensity, quantized KV cache", fn, cases, rel=1e-9)


def check_ridge_batch(fn: Callable) -> CheckResult:
    """11 — ``fn(k, n, peak_flops, bandwidth, bytes_per_element)``: the smallest batch m that makes
    an (m, k) @ (k, n) matmul compute-bound on a machine with those roofs (None if none up to k·n does).

    Reference: the first m whose :func:`course_lib.hardware.matmul_cost` intensity reaches
    the ridge point ``peak_flops / bandwidth``, found by search.
    """
    from course_lib.hardware import matmul_cost

    def reference(k, n, peak, bw, b):
        ridge, dtype = peak / bw, {4: "fp32", 2: "fp16"}[b]
        lo, hi = 1, k * n
        if matmul_cost(hi, k, n, dtype=dtype).intensity < ridge:
            return None
        while lo < hi:  # intensity grows with m: bisect for the first m that reaches the ridge
            mid = (lo + hi) // 2
            lo, hi = (mid + 1, hi) if matmul_cost(mid, k, n, dtype=dtype).intensity < ridge else (lo, mid)
        return lo

    machines = [(50e9, 10e9), (1e12, 100e9), (989e12, 3.35e12), (20e9, 40e9)]  # the last: ridge below 1
    cases = [
        (dict(k=k, n=n, peak_flops=p, bandwidth=bw, bytes_per_element=b), reference(k, n, p, bw, b))
        for k, n in [(4096, 4096), (4096, 14336), (192, 512)]
        for p, bw in machines
        for b in (4, 2)
    ]
    cases.append((dict(k=64, n=64, peak_flops=1e15, bandwidth=1e9, bytes_per_element=4), None))  # never compute-bound
    return run_cases("11 · smallest compute-bound batch", fn, cases)


def check_roofline_time_prediction(predicted, measured_ms: float) -> CheckResult:
    """11 — the learner's predicted time (ms) of one (16 × 4096) @ (4096 × 4096) fp32 matmul on this machine.

    ``predicted``: a number or a function of no arguments returning one; ``measured_ms``: the
    median the notebook just timed. Never fails on the value (machines differ); it reports how
    far the roofline's bound was from this machine's measurement, and why it misses.
    """
    return check_prediction(
        "11 · time of a batch-16 matmul",
        predicted,
        measured_ms,
        unit="ms",
        explain=(
            "The roofline gives the least time an op can take: its FLOPs at the peak or its bytes at the "
            "bandwidth, whichever is slower. Real kernels take longer (a ratio above 1): near the ridge neither "
            "the arithmetic nor the memory runs flat out, a batch of 16 rows is too thin for the kernel's best "
            "blocking, and the peak and bandwidth were measured with the friendliest shapes. A ratio below 1 means "
            "the roofs were measured low, typically while the machine was busy."
        ),
    )
