"""Chapter 04's checkers: a right answer passes, wrong ones fail with a message, stubs read as not attempted."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from course_lib.exercises import (
    ExerciseFailed,
    check_entropy_confidence,
    check_exit_layers_prediction,
    check_sparse_speedup_prediction,
    check_topk_mlp,
)


def _stub(**_):
    raise NotImplementedError


def _topk(mlp, x, k):
    a = F.silu(mlp.gate_proj(x)) * mlp.up_proj(x)
    keep = a.abs().topk(k, dim=-1).indices
    return mlp.down_proj(a * torch.zeros_like(a, dtype=torch.bool).scatter_(-1, keep, True))


# --------------------------------------------------------------------------- top-k MLP


def test_check_topk_mlp_passes_the_per_token_top_k():
    assert check_topk_mlp(_topk).passed


def test_check_topk_mlp_rejects_top_k_by_value_not_magnitude():
    def by_value(mlp, x, k):  # keeps the largest positive activations, drops large negative ones
        a = F.silu(mlp.gate_proj(x)) * mlp.up_proj(x)
        keep = a.topk(k, dim=-1).indices
        return mlp.down_proj(a * torch.zeros_like(a, dtype=torch.bool).scatter_(-1, keep, True))

    with pytest.raises(ExerciseFailed, match="top-k"):
        check_topk_mlp(by_value)


def test_check_topk_mlp_rejects_top_k_on_the_gate_only():
    def gate_only(mlp, x, k):  # ranks by |SiLU(gate)|, not by the hidden activation
        g = F.silu(mlp.gate_proj(x))
        a = g * mlp.up_proj(x)
        keep = g.abs().topk(k, dim=-1).indices
        return mlp.down_proj(a * torch.zeros_like(a, dtype=torch.bool).scatter_(-1, keep, True))

    with pytest.raises(ExerciseFailed):
        check_topk_mlp(gate_only)


def test_check_topk_mlp_stub_is_not_attempted():
    def stub(mlp, x, k):
        raise NotImplementedError

    assert check_topk_mlp(stub).status == "not attempted yet"


def test_check_topk_mlp_missing_return_says_so():
    def forgot(mlp, x, k):
        _topk(mlp, x, k)

    with pytest.raises(ExerciseFailed, match="forget `return`"):
        check_topk_mlp(forgot)


# --------------------------------------------------------------------------- prediction


def test_check_sparse_speedup_prediction_reports_the_ratio():
    r = check_sparse_speedup_prediction(lambda: 2.0, 1.5)
    assert r.passed and r.ratio == pytest.approx(0.75)
    assert "fixed" in r.explain


def test_check_sparse_speedup_prediction_rejects_a_string():
    with pytest.raises(ExerciseFailed, match="number"):
        check_sparse_speedup_prediction("2x", 1.5)


def test_check_sparse_speedup_prediction_stub_is_not_attempted():
    assert check_sparse_speedup_prediction(lambda: _stub(), 1.5).status == "not attempted yet"


def test_check_sparse_speedup_prediction_refuses_a_bad_measurement():
    with pytest.raises(ValueError, match="measured"):
        check_sparse_speedup_prediction(2.0, float("nan"))


# --------------------------------------------------------------------------- the entropy exit rule


def _entropy_conf(logits):
    logp = F.log_softmax(logits.float(), -1)
    return 1 + (logp.exp() * logp).sum(-1) / math.log(logits.shape[-1])


def test_check_entropy_confidence_passes_one_minus_normalised_entropy():
    assert check_entropy_confidence(_entropy_conf).passed


def test_check_entropy_confidence_rejects_the_unnormalised_entropy():
    def raw(logits):  # 1 - H, not 1 - H / ln V
        logp = F.log_softmax(logits.float(), -1)
        return 1 + (logp.exp() * logp).sum(-1)

    with pytest.raises(ExerciseFailed, match="entropy"):
        check_entropy_confidence(raw)


def test_check_entropy_confidence_rejects_entropy_of_the_raw_logits():
    def no_softmax(logits):  # treats the logits as probabilities after a plain normalisation
        p = logits.abs() / logits.abs().sum(-1, keepdim=True).clamp_min(1e-9)
        return 1 + (p * p.clamp_min(1e-12).log()).sum(-1) / math.log(logits.shape[-1])

    with pytest.raises(ExerciseFailed):
        check_entropy_confidence(no_softmax)


def test_check_entropy_confidence_rejects_max_prob():
    with pytest.raises(ExerciseFailed):
        check_entropy_confidence(lambda logits: F.softmax(logits.float(), -1).max(-1).values)


def test_check_entropy_confidence_stub_is_not_attempted():
    def stub(logits):
        raise NotImplementedError

    assert check_entropy_confidence(stub).status == "not attempted yet"


# --------------------------------------------------------------------------- prediction: blocks run


def test_check_exit_layers_prediction_reports_the_ratio():
    r = check_exit_layers_prediction(lambda: 0.8, 0.6)
    assert r.passed and r.ratio == pytest.approx(0.75)
    assert "interpolat" in r.explain


def test_check_exit_layers_prediction_rejects_a_string():
    with pytest.raises(ExerciseFailed, match="number"):
        check_exit_layers_prediction("most", 0.6)


def test_check_exit_layers_prediction_stub_is_not_attempted():
    assert check_exit_layers_prediction(lambda: _stub(), 0.6).status == "not attempted yet"
