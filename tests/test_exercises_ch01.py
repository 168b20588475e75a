"""Chapter 01's checkers: a right answer passes, wrong ones fail with a message, stubs read as not attempted."""

from __future__ import annotations

import pytest
import torch

from course_lib import quiz
from course_lib.exercises import (
    ExerciseFailed,
    check_batched_decode_prediction,
    check_kv_cache_bytes,
    check_top_p,
)
from course_lib.exercises.ch01 import top_p_reference
from course_lib.model import Attention, KVCache, ModelConfig

NONE_MESSAGE = "returned None"


def _stub(*args, **kwargs):
    raise NotImplementedError


# --------------------------------------------------------------------------- KV-cache bytes


def kv_bytes(config, seq_len, batch_size=1, bytes_per_value=4):
    return 2 * config.n_layers * batch_size * config.n_kv_heads * seq_len * config.head_dim * bytes_per_value


def test_check_kv_cache_bytes_passes_the_formula():
    assert check_kv_cache_bytes(kv_bytes).passed


def test_check_kv_cache_bytes_rejects_query_heads_instead_of_kv_heads():
    def all_heads(config, seq_len, batch_size=1, bytes_per_value=4):  # forgets GQA
        return 2 * config.n_layers * batch_size * config.n_heads * seq_len * config.head_dim * bytes_per_value

    with pytest.raises(ExerciseFailed, match="KV-cache bytes: case"):
        check_kv_cache_bytes(all_heads)


def test_check_kv_cache_bytes_rejects_keys_only():
    def keys_only(config, seq_len, batch_size=1, bytes_per_value=4):
        return kv_bytes(config, seq_len, batch_size, bytes_per_value) // 2

    with pytest.raises(ExerciseFailed):
        check_kv_cache_bytes(keys_only)


def test_check_kv_cache_bytes_stub_is_not_attempted():
    assert check_kv_cache_bytes(_stub).status == "not attempted yet"


def test_check_kv_cache_bytes_names_a_missing_return():
    def no_return(config, seq_len, batch_size=1, bytes_per_value=4):
        kv_bytes(config, seq_len, batch_size, bytes_per_value)

    with pytest.raises(ExerciseFailed, match=NONE_MESSAGE):
        check_kv_cache_bytes(no_return)


# --------------------------------------------------------------------------- top-p


def top_p_loop(logits, p):
    """An independent solution (a Python loop over rows), so the test does not just call the reference."""
    probs = logits.float().softmax(-1)
    flat = probs.reshape(-1, probs.shape[-1])
    out = torch.zeros_like(flat)
    for r, row in enumerate(flat):
        mass = 0.0
        for i in row.argsort(descending=True).tolist():
            if mass >= p:
                break
            out[r, i] = row[i]
            mass += row[i].item()
    out = out / out.sum(-1, keepdim=True)
    return out.reshape(probs.shape)


def test_check_top_p_passes_an_independent_solution():
    assert check_top_p(top_p_loop).passed


def test_top_p_reference_keeps_the_smallest_set_reaching_p():
    logits = torch.tensor([0.1, 0.2, 0.3, 0.4]).log()  # probabilities 0.1 .. 0.4
    assert torch.equal(top_p_reference(logits, 0.5) > 0, torch.tensor([False, False, True, True]))
    assert torch.equal(top_p_reference(logits, 0.7) > 0, torch.tensor([False, False, True, True]))
    assert torch.equal(top_p_reference(logits, 0.71) > 0, torch.tensor([False, True, True, True]))
    assert torch.equal(top_p_reference(logits, 0.01) > 0, torch.tensor([False, False, False, True]))
    assert torch.allclose(top_p_reference(logits, 1.0), torch.tensor([0.1, 0.2, 0.3, 0.4]))


def test_check_top_p_rejects_no_renormalisation():
    def unnormalised(logits, p):
        kept = top_p_loop(logits, p) > 0
        return logits.float().softmax(-1) * kept

    with pytest.raises(ExerciseFailed, match="top-p sampling: case"):
        check_top_p(unnormalised)


def test_check_top_p_rejects_keeping_tokens_until_the_mass_exceeds_p_inclusive():
    def one_too_few(logits, p):  # keeps tokens while the mass *including* them stays below p
        probs = logits.float().softmax(-1)
        sorted_p, order = probs.sort(-1, descending=True)
        keep_sorted = sorted_p.cumsum(-1) < p
        keep_sorted[..., 0] = True
        keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
        kept = probs * keep
        return kept / kept.sum(-1, keepdim=True)

    with pytest.raises(ExerciseFailed):
        check_top_p(one_too_few)


def test_check_top_p_rejects_a_wrong_dtype():
    with pytest.raises(ExerciseFailed, match="float64"):
        check_top_p(lambda logits, p: top_p_loop(logits, p).double())


def test_check_top_p_stub_is_not_attempted():
    assert check_top_p(_stub).status == "not attempted yet"


def test_check_top_p_names_a_missing_return():
    def no_return(logits, p):
        top_p_loop(logits, p)

    with pytest.raises(ExerciseFailed, match=NONE_MESSAGE):
        check_top_p(no_return)


# --------------------------------------------------------------------------- the batched-decode prediction


def test_check_batched_decode_prediction_passes_any_positive_prediction():
    result = check_batched_decode_prediction(lambda: 8.0, 1.6)
    assert result.passed and result.ratio == pytest.approx(0.2)
    assert "Python" in result.explain


def test_check_batched_decode_prediction_rejects_a_negative_prediction():
    with pytest.raises(ExerciseFailed, match="positive"):
        check_batched_decode_prediction(-2.0, 1.6)


def test_check_batched_decode_prediction_stub_is_not_attempted():
    assert check_batched_decode_prediction(_stub, 1.6).status == "not attempted yet"
    assert check_batched_decode_prediction(None, 1.6).status == "not attempted yet"


def test_check_batched_decode_prediction_rejects_a_missing_return():
    def no_return():
        0.8 + 0.2 * 8

    with pytest.raises(ExerciseFailed, match="did you forget `return`"):
        check_batched_decode_prediction(no_return, 1.6)


# --------------------------------------------------------------------------- the quiz's numbers follow from the chapter's formulas


def _question(qid):
    return next(q for q in quiz.load("01")["questions"] if q["id"] == qid)


def test_quiz_kv_cache_size_matches_a_real_cache():
    one_layer = KVCache(1, 8, 4096, 128, dtype=torch.float16).nbytes()
    assert _question("q2")["answer"] == pytest.approx(32 * one_layer / 2**20)


def test_quiz_attention_weights_match_the_module():
    cfg = ModelConfig(vocab_size=16, d_model=512, n_layers=1, n_heads=8, n_kv_heads=2, max_seq_len=8)
    assert cfg.head_dim == 64
    assert _question("q4")["answer"] == sum(p.numel() for p in Attention(cfg).parameters())
