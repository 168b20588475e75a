"""Chapter 02: MoE dispatch — grouped vs batched vs the naive loop vs a dense MLP.

4,096 tokens, d_model 512, 8 experts of width 1024, top-2. The dense baseline is a SwiGLU
of width 2 x 1024: the same active parameters and matmul FLOPs per token as the MoE layer.
"""

from __future__ import annotations

import torch

from course_lib import measure, moe
from course_lib.model import ModelConfig, SwiGLU

N_TOKENS, D_MODEL, N_EXPERTS, TOP_K, D_EXPERT = 4096, 512, 8, 2, 1024


def _setup(seed: int = 0):
    cfg = ModelConfig(
        d_model=D_MODEL,
        n_heads=8,
        mlp="moe",
        mlp_options=dict(n_experts=N_EXPERTS, top_k=TOP_K, d_expert=D_EXPERT),
    )
    torch.manual_seed(seed)
    layer = moe.MoEMLP(cfg).eval()
    dense = SwiGLU(d_model=D_MODEL, d_ff=TOP_K * D_EXPERT).eval()
    x = torch.randn(N_TOKENS, D_MODEL, generator=torch.Generator().manual_seed(seed))
    return layer, dense, x


@torch.no_grad()
def bench_dispatch() -> list[dict]:
    """Forward time of one MoE layer per dispatch kind and of the dense MLP, interleaved."""
    layer, dense, x = _setup()
    routing = moe.route(layer.router(x), top_k=TOP_K)
    variants = {"dense MLP (same active params)": lambda: dense(x)}
    for kind in moe.DISPATCH_KINDS:
        variants[f"moe {kind}"] = lambda kind=kind: moe.DISPATCH[kind](x, routing, layer.experts)
    variants["moe router only"] = lambda: moe.route(layer.router(x), top_k=TOP_K)
    t = measure.interleaved(variants, warmup=1, repeats=3)
    base = t["dense MLP (same active params)"].median
    flops = 2 * 3 * D_MODEL * D_EXPERT * TOP_K * N_TOKENS  # active matmul FLOPs (router excluded)
    return [
        {
            "benchmark": "moe dispatch",
            "variant": name,
            "tokens": N_TOKENS,
            "ms": timing.median * 1e3,
            "x dense time": timing.median / base,
            "GFLOP/s (active)": flops / timing.median / 1e9 if "router" not in name else None,
            "spread": round(timing.spread, 3),
        }
        for name, timing in t.items()
    ]


def bench_train_step() -> list[dict]:
    """Forward + backward of one MoE layer (grouped, batched) vs the dense MLP, 4,096 tokens."""
    layer, dense, x = _setup()
    layer.train()

    def step(module):
        def run():
            xi = x.clone().requires_grad_(True)
            out = module(xi).square().mean()
            aux = getattr(module, "aux_loss", None)
            (out + aux if aux is not None else out).backward()

        return run

    variants = {"dense MLP": step(dense)}
    for kind in ("grouped", "batched"):

        def run_kind(kind=kind):
            layer.dispatch = kind
            step(layer)()

        variants[f"moe {kind}"] = run_kind
    t = measure.interleaved(variants, warmup=1, repeats=3)
    base = t["dense MLP"].median
    return [
        {
            "benchmark": "moe train step",
            "variant": name,
            "tokens": N_TOKENS,
            "ms": timing.median * 1e3,
            "x dense time": timing.median / base,
        }
        for name, timing in t.items()
    ]
