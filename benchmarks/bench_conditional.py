"""Chapter 04: the sparse decode MLP vs the dense MLP (and a pruned MLP of the same width), batch 1.

The small patient's first MLP (d_model 192, d_ff 512) at activation sparsity 50/80/90/95 %,
one token per call on one thread, dense / sparse / pruned interleaved per sparsity
(:func:`course_lib.conditional.kernel_sweep`).
"""

from __future__ import annotations

from course_lib import conditional, zoo

SPARSITIES = [0.5, 0.8, 0.9, 0.95]


def bench_sparse_decode_mlp() -> list[dict]:
    """Median µs per decode token of the dense, sparse (gather) and statically pruned MLP."""
    mlp = zoo.load("small").model.blocks[0].mlp
    rows = conditional.kernel_sweep(mlp, SPARSITIES, threads=1, min_time=0.2)
    be = conditional.break_even(rows)
    return [
        {
            "sparsity": r["sparsity"],
            "active neurons": r["k"],
            "dense µs": round(r["dense_us"], 1),
            "sparse µs": round(r["sparse_us"], 1),
            "pruned µs": round(r["pruned_us"], 1),
            "sparse speed-up": round(r["speedup"], 2),
            "pruned speed-up": round(r["pruned_speedup"], 2),
            "break-even sparsity": None if be is None else round(be, 3),
        }
        for r in rows
    ]


def bench_early_exit() -> list[dict]:
    """Greedy decode tokens/s of the small patient at batch 1: the full model against early exit
    (trained exit heads, the probe rule, CALM's K/V copy) at two thresholds, interleaved."""
    import torch

    from course_lib import depth, measure
    from course_lib.experiments import depth as depth_runs

    p = zoo.load("small")
    model, heads = p.model.eval(), depth_runs.load_exit_heads()
    prompt = p.encode("The river Thames flows through London, and the city grew along its banks")
    n_new, base = 32, "full model (generate)"
    variants, used = {base: lambda: model.generate(prompt, n_new)}, {base: 1.0}
    for thr in (0.9, 0.6):
        name = f"early exit, probe threshold {thr}"
        _, layers = depth.early_exit_generate(model, prompt, n_new, threshold=thr, rule="classifier", heads=heads)
        used[name] = float((layers.float() + 1).mean()) / model.config.n_layers
        variants[name] = lambda thr=thr: depth.early_exit_generate(
            model, prompt, n_new, threshold=thr, rule="classifier", heads=heads
        )
    with torch.no_grad():
        t = measure.interleaved(variants, warmup=1, repeats=3)
    return [
        {
            "benchmark": "early-exit decode (small patient, batch 1)",
            "variant": name,
            "tokens/s": round(n_new / timing.median, 1),
            "blocks run": round(used[name], 3),
            "x full time": round(timing.median / t[base].median, 3),
            "spread": round(timing.spread, 3),
        }
        for name, timing in t.items()
    ]
