"""Chapter 12: the case-study models side by side — roofline decode bounds on an H100 and on
this machine's measured roofs, and Mixtral's speed-up over Llama 2 70B against batch size."""

from __future__ import annotations

from course_lib import cases, fingerprint, hardware


def _this_cpu() -> cases.Hardware:
    roof = hardware.measure_roofline(dtypes=("fp32",), kinds=("read", "triad"), repeats=3)
    return cases.cpu_hardware(
        roof, memory_bytes=fingerprint.memory_bytes()[0], threads=fingerprint.machine()["logical_cpus"]
    )


def bench_decode_bounds() -> list[dict]:
    """Decode tokens/s, $/M tokens and J/token per model, precision and batch, on an H100 and this CPU."""
    rows = []
    for hw in (cases.h100(), _this_cpu()):
        for dtype in ("bf16", "int4"):
            for batch in (1, 16):
                for model, label in cases.COMPARED.items():
                    est = cases.decode_estimate(model, hw, dtype=dtype, batch_size=batch)
                    rows.append(
                        {
                            "benchmark": f"decode bound ({hw.name})",
                            "variant": f"{label}, {dtype}, batch {batch}",
                            "tokens/s": round(est.tokens_per_s, 3),
                            "bound": est.bound,
                            "devices": est.devices,
                            "fits": est.fits,
                            "$/M tokens": round(est.usd_per_million, 4),
                            "J/token": round(est.joules_per_token, 4),
                            "roofs from": hw.source,
                        }
                    )
    return rows


def bench_mixtral_speedup() -> list[dict]:
    """Mixtral 8x7B over Llama 2 70B on equal H100s, uniform and chapter-02-measured routing."""
    hw = cases.h100()
    shares = {"uniform": None, "ch.02 balanced router": cases.measured_load_shares("moe-k2-aux")}
    return [
        {
            "benchmark": "Mixtral vs Llama 2 70B (H100 roofline)",
            "variant": f"batch {b}, {name}",
            "speed-up": round(cases.speedup("mixtral-8x7b", "llama-2-70b", hw, batch_size=b, load_shares=s), 3),
            "experts touched": round(
                cases.step_bytes("mixtral-8x7b", batch_size=b, load_shares=s)["experts_touched"], 3
            ),
        }
        for name, s in shares.items()
        for b in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
    ]
