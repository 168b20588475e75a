"""Chapter 00: the mini scaling law (fit quality) and training throughput per patient size."""

from __future__ import annotations

import numpy as np

from course_lib import configs, scaling


def bench_mini_scaling_law() -> list[dict]:
    """Train the chapter's five patients on one token budget; one row per size plus the fits."""
    rows = scaling.run_sweep(scaling.byte_tokens("train"), scaling.byte_tokens("val"))
    n = np.array([r["params_non_embedding"] for r in rows], dtype=float)
    loss = np.array([r["val_loss"] for r in rows])
    fit = scaling.fit_power_law(n, loss)
    pure = scaling.fit_power_law(n, loss, offset=False)
    head = scaling.fit_power_law(n[:-1], loss[:-1])
    out = [
        {
            "benchmark": "mini scaling law",
            "variant": f"d{r['d_model']} x {r['n_layers']}",
            "params": r["params"],
            "non-embedding params": r["params_non_embedding"],
            "tokens": r["tokens"],
            "val loss": round(r["val_loss"], 4),
            "train tok/s": round(r["tokens_per_second"]),
            "achieved GFLOP/s": round(r["train_flops"] / r["seconds"] / 1e9, 2),
            "seconds": round(r["seconds"], 1),
            "threads": r["threads"],
        }
        for r in rows
    ]
    out.append(
        {
            "benchmark": "mini scaling law",
            "variant": "fit E + A/N^alpha",
            "alpha": round(fit.alpha, 4),
            "E": round(fit.E, 4),
            "R2": round(fit.r2, 5),
            "RMSE (nats)": round(fit.rmse, 5),
            "pure power-law alpha": round(pure.alpha, 4),
            "pure power-law R2": round(pure.r2, 5),
            "extrapolation error, largest (nats)": round(head.predict(n[-1]) - loss[-1], 4),
            "total seconds": round(sum(r["seconds"] for r in rows), 1),
        }
    )
    return out


def bench_query_cost() -> list[dict]:
    """The chapter's 'rocket engine' table: one short query per model, roofline lower bounds."""
    contenders = {
        n: configs.get(n) for n in ("phi-3-mini", "llama-3-8b", "mixtral-8x7b", "llama-3.1-405b", "glam-1.2t")
    }
    rows = []
    for batch in (1, 64):
        for name, cfg in contenders.items():
            q = scaling.query_cost(cfg, prompt_tokens=50, output_tokens=100, batch_size=batch)
            rows.append(
                {
                    "benchmark": "query cost (H100 roofline)",
                    "variant": f"{name}, batch {batch}",
                    "gpus": q["gpus"],
                    "ms/token": round(q["decode_ms_per_token"], 3),
                    "latency s": round(q["latency_s"], 3),
                    "$ per query": float(f"{q['dollars_per_query']:.3g}"),
                    "Wh per query": float(f"{q['wh_per_query']:.3g}"),
                }
            )
    return rows
