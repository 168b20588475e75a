"""Issue 24: the fast decode path against the readable one (tiny, small), on this machine's bandwidth bound."""

from __future__ import annotations

from course_lib import fastdecode, fingerprint, hardware, zoo


def bench_readable_vs_fast() -> list[dict]:
    """Batch-1 decode tokens/s, readable vs fast, interleaved; each against the DRAM-bandwidth decode bound."""
    l3 = fingerprint.cache_bytes().get("L3") or 0
    bw = hardware.memory_bandwidth("read", array_bytes=max(2 * l3, 64 * 2**20), repeats=3)  # DRAM, not cache
    models = {name: zoo.load(name).model for name in ("tiny", "small")}
    rows = fastdecode.readable_vs_fast(models, prompt_len=64, new_tokens=32, bandwidth=bw.bytes_per_s, repeats=9)
    return [
        {
            "benchmark": "decode: readable vs fast",
            "variant": f"{r['model']} {r['path']}",
            "DRAM GB/s": bw.bytes_per_s / 1e9,
            **r,
        }
        for r in rows
    ]
