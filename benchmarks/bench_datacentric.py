"""Chapter 07: dedup and filter throughput on the labelled crawl (documents/s).

Exact dedup (normalise + BLAKE2b) over the whole crawl; MinHash signatures from text,
ours (vectorised numpy) against datasketch (``MinHash.bulk`` over the same word 5-shingles,
its usual SHA-1 input hash, the same ``affine32`` permutations) on the same documents;
LSH index build and single-signature queries; the whole near-dedup pipeline; the
heuristic rules; the perplexity filter (the tiny patient, 64 tokens per document).
Variants that are compared are timed interleaved (course_lib.measure).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from course_lib import datacentric as dc
from course_lib import measure, zoo

N_MINHASH = 2000  # documents per timed MinHash round (datasketch is slow in Python)
N_QUERIES = 200
N_PERPLEXITY = 512


@lru_cache(maxsize=1)
def _crawl() -> dc.Crawl:
    return dc.build_crawl()


def _row(benchmark: str, variant: str, n: int, seconds: float, **extra) -> dict:
    return {"benchmark": benchmark, "variant": variant, "docs": n, "docs/s": round(n / seconds, 1), **extra}


def bench_exact_dedup() -> list[dict]:
    """Exact dedup of the whole crawl: normalised (NFKC, case-fold, whitespace) vs raw text."""
    texts = _crawl().texts
    t = measure.interleaved(
        {"normalised": lambda: dc.exact_dedup(texts), "raw": lambda: dc.exact_dedup(texts, normalized=False)},
        warmup=1,
        repeats=3,
        min_time=0,
    )
    return [_row("exact dedup", name, len(texts), t[name].median, note=t.note()) for name in ("normalised", "raw")]


def bench_minhash() -> list[dict]:
    """MinHash signatures (128 permutations) from text: ours vs datasketch, same documents."""
    import datasketch

    texts = _crawl().texts[:N_MINHASH]
    mh = dc.MinHasher(128, seed=1)

    def ours():
        return mh.signatures(texts)

    def theirs():
        shingle_bytes = [[" ".join(s).encode() for s in dc.shingles(t)] for t in texts]
        return datasketch.MinHash.bulk(shingle_bytes, num_perm=128, seed=1)

    t = measure.interleaved({"ours (numpy)": ours, "datasketch": theirs}, warmup=1, repeats=3, min_time=0)
    cmp = measure.compare(t, "ours (numpy)", "datasketch")
    return [
        _row(
            "MinHash signatures", "ours (numpy)", len(texts), t["ours (numpy)"].median, speed=cmp.phrase, note=t.note()
        ),
        _row("MinHash signatures", "datasketch", len(texts), t["datasketch"].median, note=t.note()),
    ]


def bench_lsh() -> list[dict]:
    """LSH (32 bands x 4 rows) over the crawl's signatures: index build, candidate pairs, single queries."""
    sig = dc.MinHasher(128, seed=1).signatures(_crawl().texts)
    rng = np.random.default_rng(0)
    queries = sig[rng.integers(len(sig), size=N_QUERIES)]
    index = dc.LSHIndex(32, 4)
    index.add(sig)
    index.query(queries[0])  # builds the sorted tables once

    def build():
        dc.LSHIndex(32, 4).add(sig)

    def query():
        for q in queries:
            index.query(q)

    t = measure.interleaved(
        {"build": build, "candidate pairs": index.candidate_pairs, "query": query}, warmup=1, repeats=3, min_time=0
    )
    return [
        _row("LSH", "index build", len(sig), t["build"].median, note=t.note()),
        _row("LSH", "all candidate pairs", len(sig), t["candidate pairs"].median, note=t.note()),
        {
            "benchmark": "LSH",
            "variant": "single query",
            "docs": len(sig),
            "queries/s": round(N_QUERIES / t["query"].median, 1),
            "note": t.note(),
        },
    ]


def bench_near_dedup() -> list[dict]:
    """The whole near-dedup pipeline on the crawl (shingle, MinHash, LSH, verify, cluster)."""
    texts = _crawl().texts
    t = measure.interleaved(
        {
            "verify exact": lambda: dc.near_dedup(texts),
            "verify minhash": lambda: dc.near_dedup(texts, verify="minhash"),
        },
        warmup=0,
        repeats=2,
        min_time=0,
    )
    return [_row("near dedup", name, len(texts), t[name].median, note=t.note()) for name in t]


def bench_filters() -> list[dict]:
    """Heuristic rules on the whole crawl; the perplexity filter on a sample."""
    crawl = _crawl()
    texts = crawl.texts
    patient = zoo.load("tiny")
    rng = np.random.default_rng(0)
    sample = [texts[i] for i in rng.choice(len(texts), N_PERPLEXITY, replace=False)]
    t = measure.interleaved(
        {"heuristics": lambda: dc.heuristic_flags(texts), "perplexity": lambda: dc.perplexity_scores(sample, patient)},
        warmup=0,
        repeats=2,
        min_time=0,
    )
    return [
        _row("quality filters", "heuristic rules", len(texts), t["heuristics"].median, note=t.note()),
        _row("quality filters", "perplexity (tiny, 64 tokens)", len(sample), t["perplexity"].median, note=t.note()),
    ]
