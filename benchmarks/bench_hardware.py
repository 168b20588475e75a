"""Chapter 11: this machine's roofline, and how close a large matmul and a decode GEMV get to it."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from course_lib import hardware, measure
from course_lib.experiments import hardware as hardware_runs


def bench_roofline() -> list[dict]:
    """Peak matmul GFLOP/s (fp32, bf16, int8 via torch._int_mm) and STREAM bandwidth (read, copy, triad)."""
    roof = hardware.measure_roofline(dtypes=("fp32", "bf16", "int8"), kinds=("read", "copy", "triad"), repeats=5)
    rows = [
        {
            "benchmark": "roofline",
            "variant": f"peak {d}",
            "GFLOP/s": p.flops_per_s / 1e9,
            "matrix n": p.n,
            "ridge FLOP/byte": roof.ridge(d),
        }
        for d, p in roof.details["peaks"].items()
    ]
    rows += [
        {
            "benchmark": "roofline",
            "variant": f"bandwidth {k}",
            "GB/s": b.bytes_per_s / 1e9,
            "array MiB": b.array_bytes / 2**20,
        }
        for k, b in roof.details["bandwidths"].items()
    ]
    return rows


def bench_achieved() -> list[dict]:
    """Fraction of the roof reached by a 2048³ fp32 matmul and by fp32 decode GEMVs (batch 1 and 16)."""
    roof = hardware.measure_roofline(dtypes=("fp32",), repeats=5)
    g = torch.Generator().manual_seed(0)
    n, d = 2048, 4096
    a, b = torch.rand(n, n, generator=g), torch.rand(n, n, generator=g)
    w = torch.rand(hardware.working_set_bytes() // (4 * d), d, generator=g)  # weight past the L3 cache
    x1, x16 = torch.rand(1, d, generator=g), torch.rand(16, d, generator=g)
    ops = {
        "matmul 2048³": (hardware.matmul_cost(n, n, n), lambda: a @ b),
        "decode GEMV, batch 1": (hardware.gemv_cost(d, w.shape[0]), lambda: F.linear(x1, w)),
        "decode GEMV, batch 16": (hardware.gemv_cost(d, w.shape[0], batch=16), lambda: F.linear(x16, w)),
    }
    t = measure.interleaved({k: fn for k, (_, fn) in ops.items()}, warmup=2, repeats=9)
    rows = []
    for name, (cost, _) in ops.items():
        p = hardware.place(cost, t[name].median, roof)
        rows.append(
            {
                "benchmark": "achieved",
                "variant": name,
                "FLOP/byte": p.intensity,
                "GFLOP/s": p.achieved / 1e9,
                "roof GFLOP/s": p.attainable / 1e9,
                "fraction of roof": p.fraction,
                "GB/s": p.bytes_per_s / 1e9,
                "bound": p.bound,
                "spread": round(t[name].spread, 3),
            }
        )
    return rows


def bench_fusion() -> list[dict]:
    """Eager vs torch.compile'd RMSNorm and SwiGLU activation on arrays twice the L3 cache (compile time included)."""
    dim = 2048
    rows = hardware_runs.fusion_benchmark(rows=hardware.working_set_bytes(factor=2) // (4 * dim), dim=dim, hidden=dim)
    return [{"benchmark": "fusion", "variant": r.pop("op"), **r} for r in rows]
