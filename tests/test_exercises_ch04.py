"""Chapter 04's checkers: a right answer passes, wrong ones fail with a message, stubs read as not attempted."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from course_lib.exercises import ExerciseFailed, check_sparse_speedup_prediction, check_topk_mlp


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
