"""Chapter 08's checkers: a right answer passes, wrong ones fail with a message, stubs read as not attempted."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from course_lib.exercises import ExerciseFailed, check_maxp_rerank, check_rrf

# --------------------------------------------------------------------------- reciprocal rank fusion


def _rrf(rankings, k=60):
    score = Counter()
    for ranking in rankings:
        for rank, doc in enumerate(ranking, start=1):
            score[doc] += 1 / (k + rank)
    return sorted(score, key=lambda d: (-score[d], d))


def test_check_rrf_passes_a_right_answer():
    assert check_rrf(_rrf).passed


def test_check_rrf_rejects_ranks_from_zero():
    def from_zero(rankings, k=60):
        score = Counter()
        for ranking in rankings:
            for rank, doc in enumerate(ranking):  # ranks start at 0: k = 0 divides by zero or reorders
                score[doc] += 1 / (k + rank + 1e-9)
        return sorted(score, key=lambda d: (-score[d], d))

    with pytest.raises(ExerciseFailed, match="reciprocal rank fusion"):
        check_rrf(from_zero)


def test_check_rrf_rejects_ties_by_the_larger_id():
    def larger_first(rankings, k=60):
        score = Counter()
        for ranking in rankings:
            for rank, doc in enumerate(ranking, start=1):
                score[doc] += 1 / (k + rank)
        return sorted(score, key=lambda d: (-score[d], -d))

    with pytest.raises(ExerciseFailed, match="reciprocal rank fusion"):
        check_rrf(larger_first)


def test_check_rrf_stub_is_not_attempted():
    def stub(rankings, k=60):
        raise NotImplementedError

    assert check_rrf(stub).status == "not attempted yet"


def test_check_rrf_missing_return_says_so():
    def no_return(rankings, k=60):
        _rrf(rankings, k)

    with pytest.raises(ExerciseFailed, match="returned None"):
        check_rrf(no_return)


# --------------------------------------------------------------------------- the max-passage reranker


def _maxp(query_vec, candidates, passage_vecs, passage_doc):
    cos = passage_vecs @ query_vec
    best = {c: max((cos[i] for i in range(len(cos)) if passage_doc[i] == c), default=-np.inf) for c in candidates}
    return sorted(candidates, key=lambda c: -best[c])


def test_check_maxp_rerank_passes_a_right_answer():
    assert check_maxp_rerank(_maxp).passed


def test_check_maxp_rerank_rejects_the_mean_passage():
    def mean_passage(query_vec, candidates, passage_vecs, passage_doc):
        cos = passage_vecs @ query_vec
        mean = {c: cos[passage_doc == c].mean() if (passage_doc == c).any() else -np.inf for c in candidates}
        return sorted(candidates, key=lambda c: -mean[c])

    with pytest.raises(ExerciseFailed, match="max-passage reranker"):
        check_maxp_rerank(mean_passage)


def test_check_maxp_rerank_rejects_worst_first():
    def ascending(query_vec, candidates, passage_vecs, passage_doc):
        return _maxp(query_vec, candidates, passage_vecs, passage_doc)[::-1]

    with pytest.raises(ExerciseFailed, match="max-passage reranker"):
        check_maxp_rerank(ascending)


def test_check_maxp_rerank_rejects_reordering_ties_by_id():
    def ties_by_id(query_vec, candidates, passage_vecs, passage_doc):
        cos = passage_vecs @ query_vec
        best = {c: cos[passage_doc == c].max() for c in candidates}
        return sorted(candidates, key=lambda c: (-best[c], -c))  # equal scores: larger id first

    with pytest.raises(ExerciseFailed, match="max-passage reranker"):
        check_maxp_rerank(ties_by_id)


def test_check_maxp_rerank_stub_is_not_attempted():
    def stub(query_vec, candidates, passage_vecs, passage_doc):
        raise NotImplementedError

    assert check_maxp_rerank(stub).status == "not attempted yet"


def test_check_maxp_rerank_missing_return_says_so():
    def no_return(query_vec, candidates, passage_vecs, passage_doc):
        _maxp(query_vec, candidates, passage_vecs, passage_doc)

    with pytest.raises(ExerciseFailed, match="returned None"):
        check_maxp_rerank(no_return)
