"""Chapter 06: what pruning buys in time on this machine — dense vs zeros vs CSR vs smaller layers."""

from __future__ import annotations

import copy

import torch

from course_lib import measure
from course_lib import prune as P
from course_lib.experiments import prune as prune_runs
from course_lib.model import SwiGLU


def _mlp_variants(d_model: int, d_ff: int) -> dict:
    torch.manual_seed(0)
    dense = SwiGLU(d_model=d_model, d_ff=d_ff).eval()
    masked = copy.deepcopy(dense)
    P.prune_unstructured(masked, method="magnitude", sparsity=0.5)
    csr50 = copy.deepcopy(masked)
    P.to_csr(csr50)
    csr90 = copy.deepcopy(dense)
    P.prune_unstructured(csr90, method="magnitude", sparsity=0.9)
    P.to_csr(csr90)
    keep = P.keep_highest(dense.down_proj.weight.norm(dim=0), 0.5)
    structured = SwiGLU(d_model=d_model, d_ff=len(keep))
    structured.gate_proj = P.shrink_linear(dense.gate_proj, keep, dim=0)
    structured.up_proj = P.shrink_linear(dense.up_proj, keep, dim=0)
    structured.down_proj = P.shrink_linear(dense.down_proj, keep, dim=1)
    return {
        "dense": dense,
        "50% unstructured (zeros, dense kernel)": masked,
        "50% unstructured, CSR kernel": csr50,
        "90% unstructured, CSR kernel": csr90,
        "50% structured (half the neurons)": structured.eval(),
    }


def bench_mlp() -> list[dict]:
    """A Llama-shaped SwiGLU MLP (1024 -> 2816 -> 1024): prefill (128 tokens) and decode (1 token)."""
    variants = _mlp_variants(1024, 2816)
    rows = []
    for tokens in (128, 1):
        x = torch.randn(1, tokens, 1024, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            t = measure.interleaved({n: (lambda m=m, x=x: m(x)) for n, m in variants.items()}, warmup=3, repeats=15)
        base = t["dense"].median
        for name, m in variants.items():
            rows.append(
                {
                    "benchmark": "mlp",
                    "variant": name,
                    "tokens": tokens,
                    "ms": t[name].median * 1e3,
                    "speed-up vs dense": base / t[name].median,
                    "weight MB": measure.weight_bytes(m) / 1e6,
                    "spread": round(t[name].spread, 3),
                }
            )
    return rows


def bench_patient() -> list[dict]:
    """The zoo patient at 50 %: masked, CSR and structured (MLP neurons), prefill 128 and decode 16 tokens."""
    from course_lib import zoo

    base = zoo.load(prune_runs.PATIENT).model
    variants = {
        "dense": base,
        "50% unstructured (zeros)": prune_runs.pruned_patient(
            base, method="magnitude", structure="unstructured", sparsity=0.5
        ),
        "50% structured MLP": prune_runs.pruned_patient(base, method="magnitude", structure="structured", sparsity=0.5),
    }
    variants["50% unstructured, CSR"] = copy.deepcopy(variants["50% unstructured (zeros)"])
    P.to_csr(variants["50% unstructured, CSR"])
    pre = measure.interleaved({n: measure.prefill_fn(m, prompt_len=128) for n, m in variants.items()}, repeats=9)
    dec = measure.interleaved(
        {n: measure.decode_fn(m, prompt_len=64, new_tokens=16) for n, m in variants.items()}, warmup=1, repeats=5
    )
    return [
        {
            "benchmark": "patient",
            "variant": n,
            "prefill ms": pre[n].median * 1e3,
            "prefill speed-up": pre["dense"].median / pre[n].median,
            "decode ms/token": dec[n].median / 16 * 1e3,
            "decode speed-up": dec["dense"].median / dec[n].median,
            "weight MB": measure.weight_bytes(m) / 1e6,
        }
        for n, m in variants.items()
    ]
