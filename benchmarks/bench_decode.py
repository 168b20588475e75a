"""Issue 24: the fast decode path against the readable one (tiny, small), on this machine's bandwidth bound;
prompt-lookup speculative decoding on the fast path with a target that copies (the quoting reader; chapter 08's title
reader beside it)."""

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
    """Prompt-lookup speculative vs plain greedy on the fast path for the RAG-copy task, side by side per target:
    the quoting reader (its answer is its passage, quoted: ~50 tokens copied, where a free draft pays) and chapter
    08's title reader (a few tokens and end-of-text: little to win), on test questions each answers by copying
    exactly, each decoding its own answer and end-of-text. Acceptance per draft position, c, v(k), the loop's own
    overhead per round, measured and predicted speed-up; every greedy output identical to plain decoding."""
    from course_lib.experiments.rag import load_quoter, load_reader

    out = []
    for task, reader, ks in (("quote", load_quoter(), (2, 4, 8, 12)), ("title", load_reader(), (1, 2, 3, 4))):
        # each prompt decodes its own answer and end-of-text, as a reader that stops there would
        prompts, lengths = sd.reader_copy_prompts(reader, 8, task=task, copied_only=True, answer_tokens=True)
        target = fastdecode.FastLM(reader.model)
        target.threads = fastdecode.best_threads(target)  # plain decoding at its best: the honest baseline
        rows = sd.break_even_table(target, sd.PromptLookup(), prompts, ks=ks, new_tokens=lengths, repeats=5)
        sd.add_loop_overhead(rows, sd.loop_overhead(target, prompts, new_tokens=lengths, repeats=5))
        for r in rows:
            r["threads"] = target.threads
        out += [{"benchmark": f"speculative: reader copy ({task})", "new tokens": sum(lengths), **r} for r in rows]
    return out
