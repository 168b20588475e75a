"""Chapter 05: what quantized Linear layers cost and save on this machine.

fp32 ``nn.Linear`` vs W8A8 through ``torch._int_mm`` (``W8A8Linear``) vs
``torch.ao`` dynamic int8 (fbgemm) vs weight-only int8 and int4 (group 128), at batch 1
(decode-like) and batch 64 (prefill-like), with their weight bytes. Which int8 path is fast
depends on the CPU's int8 instructions: compare the rows, do not assume.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from course_lib import measure
from course_lib.quant import QuantLinear, W8A8Linear

#: torch.ao's deprecation warnings would otherwise create this entry in the module's globals
#: during the first benchmark, changing ``vars(bench_quant)`` while a runner iterates over it.
__warningregistry__: dict = {}


def _variants(lin: nn.Linear) -> dict[str, nn.Module]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated in favour of torchao
        ao = torch.ao.quantization.quantize_dynamic(nn.Sequential(lin), {nn.Linear}, dtype=torch.qint8)
    return {
        "fp32": lin,
        "W8A8 (_int_mm)": W8A8Linear.from_linear(lin),
        "torch.ao dynamic int8": ao,
        "int8 weight-only": QuantLinear.from_linear(lin, bits=8, symmetric=True),
        "int4 weight-only g128": QuantLinear.from_linear(lin, bits=4, group_size=128),
    }


def _bytes(m: nn.Module) -> int:
    if hasattr(m, "weight_bytes"):
        return m.weight_bytes()
    if isinstance(m, nn.Sequential):  # torch.ao's packed weights: int8 + per-tensor scale + fp32 bias
        packed = m[0]._packed_params._weight_bias()
        w, b = packed
        return w.int_repr().numel() + 8 + (0 if b is None else b.numel() * 4)
    return measure.weight_bytes(m)


@torch.no_grad()
def bench_linear(sizes=(1024, 2048), batches=(1, 64)) -> list[dict]:
    """Latency of one Linear (in = out = size) in every format, interleaved, with bytes."""
    rows = []
    for size in sizes:
        torch.manual_seed(0)
        lin = nn.Linear(size, size)
        variants = _variants(lin)
        for batch in batches:
            x = torch.randn(batch, size)
            t = measure.interleaved({n: (lambda m=m, x=x: m(x)) for n, m in variants.items()}, warmup=2, repeats=7)
            sp = measure.speedups(t, "fp32")
            for name, m in variants.items():
                rows.append(
                    {
                        "benchmark": "linear",
                        "variant": name,
                        "size": size,
                        "batch": batch,
                        "ms": round(t[name].median * 1e3, 4),
                        "speedup vs fp32": round(sp[name], 3),
                        "weight bytes": _bytes(m),
                        "bytes vs fp32": round(_bytes(variants["fp32"]) / _bytes(m), 3),
                        "spread": round(t[name].spread, 3),
                    }
                )
    return rows


@torch.no_grad()
def bench_int_gemm(size: int = 1024) -> list[dict]:
    """The raw GEMMs: fp32 ``mm`` vs ``torch._int_mm`` (int8 x int8 -> int32) at size^3."""
    g = torch.Generator().manual_seed(0)
    a = torch.randint(-127, 128, (size, size), dtype=torch.int8, generator=g)
    b = torch.randint(-127, 128, (size, size), dtype=torch.int8, generator=g)
    af, bf = a.float(), b.float()
    t = measure.interleaved(
        {"fp32 mm": lambda: af @ bf, "int8 _int_mm": lambda: torch._int_mm(a, b)}, warmup=1, repeats=5
    )
    sp = measure.speedups(t, "fp32 mm")
    return [
        {
            "benchmark": "gemm",
            "variant": n,
            "size": size,
            "ms": round(t[n].median * 1e3, 3),
            "speedup vs fp32": round(sp[n], 3),
        }
        for n in t
    ]
