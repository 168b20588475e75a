"""Chapter 08 (retrieval-augmented generation): the checkers for its exercises."""

from __future__ import annotations

from collections.abc import Callable

from course_lib.exercises.core import CheckResult, run_cases


def check_rrf(fn: Callable) -> CheckResult:
    """08 — ``fn(rankings, k)``: reciprocal rank fusion, fused ids best first (ties: smaller id).

    Reference: :func:`course_lib.rag.reciprocal_rank_fusion` on random rankings, including
    lists of different lengths, documents found by one list only, and a large and a zero ``k``.
    """
    import random

    from course_lib.rag import reciprocal_rank_fusion

    rng = random.Random(8)
    cases = [(dict(rankings=[[3, 1, 2], [1, 3, 4]], k=60), None), (dict(rankings=[[5, 6]], k=0), None)]
    for _ in range(6):
        n_lists, pool = rng.randint(2, 4), list(range(rng.randint(5, 30)))
        rankings = [rng.sample(pool, rng.randint(1, len(pool))) for _ in range(n_lists)]
        cases.append((dict(rankings=rankings, k=rng.choice([0, 1, 10, 60])), None))
    cases = [(kw, reciprocal_rank_fusion(kw["rankings"], k=kw["k"])[0].tolist()) for kw, _ in cases]

    def as_list(rankings, k):
        out = fn(rankings=[list(r) for r in rankings], k=k)
        return None if out is None else [int(d) for d in out]  # None: run_cases says "did you forget return?"

    return run_cases("08 · reciprocal rank fusion", as_list, cases)


def _maxp_reference(query_vec, candidates, passage_vecs, passage_doc):
    """Hand-written reference: each candidate scored by its best passage's cosine, best first; ties keep
    the first-stage order; a candidate without passages scores -inf (last)."""
    import numpy as np

    cos = np.asarray(passage_vecs, dtype=np.float64) @ np.asarray(query_vec, dtype=np.float64)  # (P,)
    doc = np.asarray(passage_doc)
    best = [cos[doc == c].max() if (doc == c).any() else -np.inf for c in candidates]
    order = sorted(range(len(candidates)), key=lambda i: -best[i])  # sorted() is stable
    return [int(candidates[i]) for i in order]


def check_maxp_rerank(fn: Callable) -> CheckResult:
    """08 — ``fn(query_vec, candidates, passage_vecs, passage_doc) -> list of ids``: a max-passage reranker.

    Each candidate document (ids, in first-stage order) is re-scored by the **largest** cosine
    between the query (d,) and any of its passages (``passage_vecs`` (P, d), unit rows;
    ``passage_doc`` (P,) the document of each passage); returned best first, equal scores in
    first-stage order. Cases: random unit vectors, a document whose one good passage must beat
    a better *average*, ties, passages of documents that are not candidates.
    """
    import numpy as np

    cases = []
    for seed, n_docs, per_doc, d, n_cand in [(0, 6, 3, 8, 6), (1, 20, 4, 16, 10), (2, 5, 1, 4, 3)]:
        rng = np.random.default_rng(seed)
        doc = np.repeat(np.arange(n_docs), per_doc)
        vecs = rng.normal(size=(len(doc), d))
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        q = rng.normal(size=d)
        q /= np.linalg.norm(q)
        cand = [int(c) for c in rng.permutation(n_docs)[:n_cand]]
        cases.append(dict(query_vec=q, candidates=cand, passage_vecs=vecs, passage_doc=doc))
    # document 7 has one passage equal to the query and one opposite (mean 0); document 3 two passages at 0.6
    q = np.array([1.0, 0.0])
    vecs = np.array([[1.0, 0.0], [-1.0, 0.0], [0.6, 0.8], [0.6, -0.8], [0.6, 0.8]])
    cases.append(dict(query_vec=q, candidates=[3, 7, 5], passage_vecs=vecs, passage_doc=np.array([7, 7, 3, 3, 5])))
    cases = [(kw, _maxp_reference(**kw)) for kw in cases]

    def as_list(query_vec, candidates, passage_vecs, passage_doc):
        out = fn(query_vec=query_vec, candidates=list(candidates), passage_vecs=passage_vecs, passage_doc=passage_doc)
        return None if out is None else [int(d) for d in out]

    return run_cases("08 · max-passage reranker", as_list, cases)
