"""Chapter 08: retrievers on *test description -> its article* — queries/s and recall@10.

BM25, exact dense search, our IVF and faiss's IVF at the same ``nlist`` and matched
``nprobe``, all over the 10,033 corpus articles. Throughput is one query at a time (the
latency a user sees), interleaved so that machine drift hits every variant alike; dense
variants exclude encoding the query (measured as its own row).
"""

from __future__ import annotations

import numpy as np

from course_lib import data, measure, rag
from course_lib.experiments import rag as rag_runs

NLIST = 100
NPROBES = (1, 4, 16)
N_TIMED = 100  # queries per timed round


def _setup():
    embedder = rag.get_embedder([a.extract for a in data.load_articles()])
    X = rag_runs.corpus_vectors(embedder)
    rows, texts = rag_runs.eval_queries("test")
    Q = rag_runs.query_vectors(embedder, "test")
    return embedder, X, rows, texts, Q


def bench_retrieval() -> list[dict]:
    """queries/s and recall@10 for BM25, exact dense, IVF (ours, faiss) at nprobe 1/4/16."""
    import faiss

    embedder, X, rows, texts, Q = _setup()
    bm25 = rag.BM25Index.from_tokens([rag.tokenize(a.extract) for a in data.load_articles()])
    tokens = [rag.tokenize(t) for t in texts]
    exact = rag.ExactIndex(X.shape[1])
    exact.add(X)
    ivf = rag.IVFIndex(X.shape[1], NLIST, iters=10, seed=0).train(X)
    ivf.add(X)
    f_ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(X.shape[1]), X.shape[1], NLIST, faiss.METRIC_INNER_PRODUCT)
    f_ivf.train(X.numpy())
    f_ivf.add(X.numpy())
    flat = faiss.IndexFlatIP(X.shape[1])
    flat.add(X.numpy())
    Xq = Q.numpy()

    def faiss_ivf(p):
        def run(i):
            f_ivf.nprobe = p
            return f_ivf.search(Xq[i : i + 1], 10)[1][0]

        return run

    single = {
        "BM25": lambda i: bm25.search(tokens[i], 10)[0],
        "dense exact (ours)": lambda i: exact.search(Q[i : i + 1], 10)[1][0].numpy(),
        "dense exact (faiss Flat)": lambda i: flat.search(Xq[i : i + 1], 10)[1][0],
    }
    for p in NPROBES:
        single[f"IVF nprobe {p} (ours)"] = lambda i, p=p: ivf.search(Q[i : i + 1], 10, nprobe=p)[1][0].numpy()
        single[f"IVF nprobe {p} (faiss)"] = faiss_ivf(p)
    timed = measure.interleaved(
        {n: (lambda f=f: [f(i) for i in range(N_TIMED)]) for n, f in single.items()}, warmup=1, repeats=5
    )
    encode = measure.time_fn(lambda: embedder.embed([texts[0]]), warmup=1, repeats=5)
    out = []
    for name, f in single.items():
        ranked = np.stack([np.asarray(f(i)) for i in range(len(rows))])
        m = rag.retrieval_metrics(rag.ranks_of(ranked, rows), ks=(1, 10))
        out.append(
            {
                "benchmark": "retrieval",
                "variant": name,
                "queries/s": N_TIMED / timed[name].median,
                "recall@10": round(m["recall@10"], 4),
                "recall@1": round(m["recall@1"], 4),
                "spread": round(timed[name].spread, 3),
            }
        )
    out.append({"benchmark": "retrieval", "variant": f"encode one query ({embedder.name})", "queries/s": 1 / encode})
    return out
