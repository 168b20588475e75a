"""Chapter 13: the capstone's report card — the monolith, the efficient system and its ablations on the
whole task, measured on this machine (the same run as ``python -m course_lib.capstone run``; minutes)."""

from __future__ import annotations

from course_lib import capstone as cap
from course_lib.experiments import capstone as capx


def bench_report_card() -> list[dict]:
    """One row per system: accuracy per kind, latency p50/p95, MFLOPs, tokens/s per $/h, J/query, CO2, cost ratios."""
    runs = capx.run(progress=False)
    rows = []
    for name, s in runs["systems"].items():
        ratio = runs["report_card"]["ratios"][name]
        energy = "J/query (estimate)" if s["energy_method"] == "estimate" else "J/query (RAPL)"
        rows.append(
            {
                "benchmark": "capstone report card",
                "variant": name,
                **{f"acc {k}": round(v, 3) for k, v in s["accuracy"].items()},
                "p50 s": round(s["latency_p50_s"], 4),
                "p95 s": round(s["latency_p95_s"], 4),
                "MFLOPs/query": round(s["flops_per_query"] / 1e6, 2),
                "tokens/s per $/h": round(s["tokens_per_s_per_dollar"], 1),
                energy: round(s["energy_per_query_j"], 3),
                "g CO2/1k queries": round(s["co2_g_per_1000"], 4),
                "FLOPs ÷ monolith": round(ratio["flops_per_query"], 3),
                "seconds ÷ monolith": round(ratio["mean_seconds"], 3),
            }
        )
    t = runs["target"]
    rows.append(
        {
            "benchmark": "capstone report card",
            "variant": "target: accuracy ≥ monolith at ≤ 1/3 FLOPs and seconds",
            "acc overall": round(t["accuracy_efficient"], 3),
            "FLOPs ÷ monolith": round(t["flops_ratio"], 3),
            "seconds ÷ monolith": round(t["seconds_ratio"], 3),
            "met": t["met"],
            "price": cap.PRICE_SOURCE,
        }
    )
    return rows
