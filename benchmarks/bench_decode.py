"""Issue 24: the fast decode path against the readable one (tiny, small), on this machine's bandwidth bound;
prompt-lookup speculative decoding on the fast path with a target that copies (chapter 08's reader)."""

from __future__ import annotations

from course_lib import fastdecode, fingerprint, hardware, zoo
from course_lib import speculative as sd


def bench_readable_vs_fast() -> list[dict]:
    """Batch-1 decode tokens/s, readable vs fast vs fast + torch.compile, interleaved; each against the DRAM-bandwidth
    decode bound; the compile's seconds and the tokens after which it pays back."""
    l3 = fingerprint.cache_bytes().get("L3") or 0
    bw = hardware.memory_bandwidth("read", array_bytes=max(2 * l3, 64 * 2**20), repeats=3)  # DRAM, not cache
    models = {name: zoo.load(name).model for name in ("tiny", "small")}
    rows = fastdecode.readable_vs_fast(
        models, prompt_len=64, new_tokens=32, bandwidth=bw.bytes_per_s, compile=True, repeats=9
    )
    return [
        {
            "benchmark": "decode: readable vs fast",
            "variant": f"{r['model']} {r['path']}",
            "DRAM GB/s": bw.bytes_per_s / 1e9,
            **r,
        }
        for r in rows
    ]


def bench_speculative_reader_copy() -> list[dict]:
    """Prompt-lookup speculative vs plain greedy on the fast path, target = chapter 08's reader on test questions it
    answers by copying its passage's title; acceptance per draft position, c, v(k), measured and predicted speed-up."""
    from course_lib.experiments.rag import load_reader

    reader = load_reader()
    target = fastdecode.FastLM(reader.model)
    prompts = sd.reader_copy_prompts(reader, 8, copied_only=True)
    # 6 new tokens: a short title copied, its end-of-text, and whatever greedy decoding writes after it
    rows = sd.break_even_table(target, sd.PromptLookup(), prompts, ks=(1, 2, 3, 4), new_tokens=6, repeats=5)
    return [{"benchmark": "speculative: reader copy", **r} for r in rows]
