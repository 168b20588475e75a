"""Chapter 01: how fast the patients generate and train on this machine."""

from __future__ import annotations

import torch

from course_lib import data, measure, zoo
from course_lib.train import TrainConfig, train


def bench_decode() -> list[dict]:
    """Patient decode speed: batch 1, 64-token prompt, 64 new tokens, KV cache."""
    models = {n: zoo.load(n).model for n in zoo.names()}
    t = measure.interleaved(
        {n: measure.decode_fn(m, prompt_len=64, new_tokens=64) for n, m in models.items()}, warmup=2, repeats=7
    )
    pre = measure.interleaved({n: measure.prefill_fn(m, prompt_len=64) for n, m in models.items()}, warmup=2, repeats=7)
    return [
        {
            "benchmark": "decode",
            "variant": n,
            "params": models[n].num_params(),
            "decode tok/s": 64 / t[n].median,
            "decode ms/token": t[n].median / 64 * 1e3,
            "prefill tok/s": 64 / pre[n].median,
            "spread": round(t[n].spread, 3),
        }
        for n in models
    ]


def bench_train() -> list[dict]:
    """Patient training throughput: the zoo recipes' batch (32 x 256), 12 steps after 3 warm-up."""
    tokens = data.encode_split("train")
    rows = []
    for n in zoo.names():
        mcfg, tcfg = zoo.RECIPES[n]
        torch.manual_seed(0)
        model = zoo.TinyLM(mcfg)
        train(
            model,
            tokens,
            None,
            TrainConfig(steps=3, batch_size=tcfg.batch_size, seq_len=tcfg.seq_len, warmup_steps=1),
            progress=False,
        )
        h = train(
            model,
            tokens,
            None,
            TrainConfig(steps=12, batch_size=tcfg.batch_size, seq_len=tcfg.seq_len, warmup_steps=1),
            progress=False,
        )
        flops = 3 * model.flops_per_token(tcfg.seq_len)["total"]
        rows.append(
            {
                "benchmark": "train",
                "variant": n,
                "params": model.num_params(),
                "train tok/s": h.tokens_per_second,
                "achieved GFLOP/s": flops * h.tokens_per_second / 1e9,
            }
        )
    return rows
