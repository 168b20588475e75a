"""Issue 24: the fast decode path against the readable one (tiny, small), on this machine's bandwidth bound;
prompt-lookup speculative decoding on the fast path with a target that copies (the quoting reader; chapter 08's title
reader beside it)."""

from __future__ import annotations

from course_lib import fastdecode, fingerprint, hardware, measure, zoo
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


def bench_fast_huge_pages() -> list[dict]:
    """What the huge-page buffer buys: the small patient's fast path with its weights on transparent huge pages
    (where the OS grants them) and on ordinary 4 KiB pages, interleaved at the fast path's measured thread count."""
    model = zoo.load("small").model
    paged, plain = fastdecode.FastLM(model), fastdecode.FastLM(model, huge_pages=False)
    paged.threads = plain.threads = fastdecode.best_threads(paged)
    t = measure.interleaved(
        {
            "huge pages": fastdecode.fast_decode_fn(paged, prompt_len=64, new_tokens=32),
            "4 KiB pages": fastdecode.fast_decode_fn(plain, prompt_len=64, new_tokens=32),
        },
        warmup=2,
        repeats=9,
    )
    return [
        {
            "benchmark": "decode: fast path, weight pages",
            "variant": f"small fast, {name}",
            "huge pages granted": paged.huge_pages if name == "huge pages" else False,
            "threads": paged.threads,
            "ms_per_token": t[name].median / 32 * 1e3,
            "speedup vs 4 KiB pages": t["4 KiB pages"].median / t[name].median,
            "note": t.note(),
        }
        for name in ("huge pages", "4 KiB pages")
    ]


def bench_weight_layout() -> list[dict]:
    """The fast path's one weight layout, checked: every matmul of the small patient's step (its fused weights, in
    step order) as ``x @ W`` with W stored (in, out) — the layout FastLM keeps — against ``(W @ x.T).T`` with W
    stored (out, in), as nn.Linear keeps it, for M rows at once (1: a decode step; 5 and 13: verify passes of k = 4
    and 12; 64: a prefill), interleaved, one thread."""
    import torch

    fast = fastdecode.FastLM(zoo.load("small").model)
    cols = [w for layer in fast.layers for w in layer] + [fast.head_t]  # (in, out), in the huge-page buffer
    rows = [w.t().contiguous() for w in cols]  # (out, in)
    out = []
    for m in (1, 5, 13, 64):
        xs = [torch.randn(m, w.shape[0], generator=torch.Generator().manual_seed(i)) for i, w in enumerate(cols)]

        def in_out(xs=xs):
            with torch.inference_mode(), measure.num_threads(1):
                for x, w in zip(xs, cols):
                    x @ w

        def out_in(xs=xs):
            with torch.inference_mode(), measure.num_threads(1):
                for x, w in zip(xs, rows):
                    (w @ x.t()).t().contiguous()

        t = measure.interleaved({"(in, out)": in_out, "(out, in)": out_in}, warmup=2, repeats=9)
        for name in ("(in, out)", "(out, in)"):
            out.append(
                {
                    "benchmark": "decode: weight layout",
                    "variant": f"M = {m}, W stored {name}",
                    "rows M": m,
                    "ms per pass": t[name].median * 1e3,
                    "x vs (out, in)": t["(out, in)"].median / t[name].median,
                    "note": t.note(),
                }
            )
    return out


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
