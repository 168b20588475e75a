"""Chapter 10: cascade cost at matched accuracy; speculative decoding speed-up and acceptance."""

from __future__ import annotations

import numpy as np

from course_lib import cascade as cc
from course_lib import encoder, measure, zoo
from course_lib import speculative as sd
from course_lib.experiments.cascade import precomputed_logits


def bench_cascade_matched_accuracy() -> list[dict]:
    """Topic cascades at MiniLM's accuracy: held-out accuracy, FLOPs and measured ms per query."""
    task = cc.topic_task()
    y, dev, held = task.labels, task.train, task.heldout
    logits = {
        "bow": cc.naive_bayes_predictions(task),
        "mini32": precomputed_logits("mini32"),
        "minilm": precomputed_logits("minilm"),
    }
    temps = {m: cc.fit_temperature(z[dev], y[dev]) for m, z in logits.items()}
    pred = {m: z.argmax(1) for m, z in logits.items()}

    nb = cc.NaiveBayesBoW().fit([task.texts[i] for i in dev], y[dev])
    head = cc.fit_linear_head(encoder.corpus_embeddings("extract")[dev], y[dev])
    minilm = encoder.load_model()
    n_bpe = np.array([len(t) for t in cc.token_ids(task.texts)])
    n_full = cc.minilm_tokens(task.texts)
    sample = [task.texts[i] for i in held[:16]]
    runners = {
        "bow": lambda t: nb.logits([t]),
        "mini32": lambda t: head.logits(encoder.embed([t], model=minilm, max_length=cc.MINI_TOKENS)),
        "minilm": lambda t: head.logits(encoder.embed([t], model=minilm)),
    }
    lat = measure.interleaved(
        {m: (lambda fn=fn: [fn(t) for t in sample]) for m, fn in runners.items()}, warmup=1, repeats=5
    )
    costs = {
        "bow": cc.QueryCost("bow", cc.bow_flops(n_bpe), lat["bow"].median / len(sample)),
        "mini32": cc.QueryCost(
            "mini32", cc.minilm_flops(np.minimum(n_full, cc.MINI_TOKENS), minilm), lat["mini32"].median / len(sample)
        ),
        "minilm": cc.QueryCost("minilm", cc.minilm_flops(n_full, minilm), lat["minilm"].median / len(sample)),
    }

    def arrays(models, rows):
        preds = [pred[m][rows] for m in models]
        scores = [cc.confidence(cc.softmax(logits[m][rows], temps[m])) for m in models[:-1]]
        return preds, scores, [costs[m][rows] for m in models]

    target = float((pred["minilm"][dev] == y[dev]).mean())
    big = costs["minilm"][held]
    rows = []
    for m in logits:
        r = cc.run_cascade([pred[m][held]], [], [costs[m][held]], [], y[held])
        rows.append((f"{m} alone", r))
    for models, grid in (
        (("bow", "minilm"), np.linspace(0, 1, 201)),
        (("bow", "mini32", "minilm"), np.linspace(0, 1, 41)),
    ):
        sw = cc.sweep(*arrays(models, dev), y[dev], grid)
        best = cc.cheapest_for_accuracy(sw, target)
        rows.append((" -> ".join(models), cc.run_cascade(*arrays(models, held), tuple(sw.thresholds[best]), y[held])))
    return [
        {
            "benchmark": "cascade at matched accuracy",
            "variant": name,
            "thresholds": ", ".join(f"{t:.3f}" for t in r.thresholds),
            "held-out accuracy": r.accuracy,
            "fractions": ", ".join(f"{f:.2f}" for f in r.fractions),
            "MFLOPs/query": r.mean_flops / 1e6,
            "ms/query": r.mean_seconds * 1e3,
            "FLOPs saved vs minilm": big.flops.mean() / r.mean_flops,
            "time saved vs minilm": big.seconds.mean() / r.mean_seconds,
        }
        for name, r in rows
    ]


def bench_speculative() -> list[dict]:
    """Greedy speculative decoding, target small, draft tiny: acceptance, tokens/s, speed-up."""
    tiny, small = zoo.load("tiny"), zoo.load("small")
    prompts = [
        small.encode(s)
        for s in ("The Moon is", "Albert Einstein was a", "Python is a programming", "The French Revolution")
    ]
    sc = sd.step_costs(small.model, tiny.model, context=16, k=4, warmup=3, repeats=21)
    rows = sd.speculative_benchmark(small.model, tiny.model, prompts, ks=(1, 2, 3, 4, 6, 8), new_tokens=64, repeats=5)
    for r in rows:
        r["benchmark"] = "speculative decoding"
        r["predicted speed-up"] = r["tokens_per_pass"] / (r["k"] * sc["c"] + sc["v"]) if r["k"] else 1.0
        r["c (draft/target step)"] = sc["c"]
        r["v (verify/target step)"] = sc["v"]
    return rows


def bench_speculative_fast() -> list[dict]:
    """Speculative vs plain decoding on the *fast* path (issue 24): small target, drafts prompt lookup and the
    tiny patient, on free text and on the RAG-copy task; α, c, v(k), measured and predicted speed-ups."""
    from course_lib.fastdecode import FastLM

    tiny, small = zoo.load("tiny"), zoo.load("small")
    target = FastLM(small.model)
    tasks = {
        "free text": [
            small.encode(s)
            for s in ("The Moon is", "Albert Einstein was a", "Python is a programming", "The French Revolution")
        ],
        "RAG-copy": sd.rag_copy_prompts(small.encode, 4),
    }
    drafts = {"prompt lookup": sd.PromptLookup(), "tiny draft": FastLM(tiny.model)}
    rows = []
    for task, prompts in tasks.items():
        for dname, draft in drafts.items():
            for r in sd.break_even_table(target, draft, prompts, ks=(1, 2, 4, 8), new_tokens=48, repeats=3):
                rows.append({"benchmark": "speculative on the fast path", "task": task, "draft": dname, **r})
    return rows
