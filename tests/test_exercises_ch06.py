"""Chapter 06's checkers: a right answer passes, wrong ones fail with a message, stubs read as not attempted."""

from __future__ import annotations

import pytest
import torch

from course_lib.exercises import ExerciseFailed, check_structured_speedup_prediction, check_taylor_head_scores
from course_lib.exercises.ch06 import taylor_head_scores_reference

# --------------------------------------------------------------------------- Taylor head scores


def _taylor(w_o, grad_o, n_heads):
    c, hd = w_o.shape
    return (w_o * grad_o).reshape(c, n_heads, hd // n_heads).sum(dim=(0, 2)).abs()


def test_check_taylor_head_scores_passes_the_right_answer():
    assert check_taylor_head_scores(_taylor).passed


def test_taylor_reference_is_the_first_order_loss_change_of_zeroing_a_head():
    # For L = sum(y * u) with y = x @ W_o.T, zeroing head h's columns changes L by exactly -sum(W ⊙ G)
    # over them (L is linear in W_o), so the reference must equal |ΔL| of the real ablation.
    gen = torch.Generator().manual_seed(0)
    c, n_heads, d = 6, 3, 4
    w = torch.randn(c, n_heads * d, generator=gen, dtype=torch.float64, requires_grad=True)
    x, u = (
        torch.randn(5, n_heads * d, generator=gen, dtype=torch.float64),
        torch.randn(5, c, generator=gen, dtype=torch.float64),
    )
    loss = ((x @ w.T) * u).sum()
    (g,) = torch.autograd.grad(loss, w)
    scores = taylor_head_scores_reference(w.detach(), g, n_heads)
    for h in range(n_heads):
        w0 = w.detach().clone()
        w0[:, h * d : (h + 1) * d] = 0
        assert scores[h].item() == pytest.approx(abs(((x @ w0.T) * u).sum().item() - loss.item()))


def test_check_taylor_head_scores_rejects_abs_before_the_sum():
    def abs_first(w_o, grad_o, n_heads):  # |w·g| per weight: signs no longer cancel
        c, hd = w_o.shape
        return (w_o * grad_o).abs().reshape(c, n_heads, hd // n_heads).sum(dim=(0, 2))

    with pytest.raises(ExerciseFailed, match="Taylor head scores"):
        check_taylor_head_scores(abs_first)


def test_check_taylor_head_scores_rejects_grouping_the_wrong_way():
    def interleaved(w_o, grad_o, n_heads):  # columns h, h+H, h+2H, ... instead of a contiguous block
        c, hd = w_o.shape
        return (w_o * grad_o).reshape(c, hd // n_heads, n_heads).sum(dim=(0, 1)).abs()

    with pytest.raises(ExerciseFailed, match="differ"):
        check_taylor_head_scores(interleaved)


def test_check_taylor_head_scores_rejects_a_wrong_shape():
    def keeps_rows(w_o, grad_o, n_heads):  # forgets to sum over the output rows: (C, H)
        c, hd = w_o.shape
        return (w_o * grad_o).reshape(c, n_heads, hd // n_heads).sum(dim=2).abs()

    with pytest.raises(ExerciseFailed, match="shape"):
        check_taylor_head_scores(keeps_rows)


def test_check_taylor_head_scores_stub_is_not_attempted():
    def stub(w_o, grad_o, n_heads):
        raise NotImplementedError

    assert check_taylor_head_scores(stub).status == "not attempted yet"


def test_check_taylor_head_scores_missing_return_says_so():
    def no_return(w_o, grad_o, n_heads):
        _taylor(w_o, grad_o, n_heads)  # the learner forgot `return`

    with pytest.raises(ExerciseFailed, match="None"):
        check_taylor_head_scores(no_return)


def test_check_taylor_head_scores_shows_the_learners_exception():
    def crashes(w_o, grad_o, n_heads):
        return w_o.reshape(n_heads, -1, 7)

    with pytest.raises(ExerciseFailed, match="RuntimeError"):
        check_taylor_head_scores(crashes)


# --------------------------------------------------------------------------- the prediction


def test_check_structured_speedup_prediction_passes_any_positive_prediction():
    result = check_structured_speedup_prediction(lambda: 3.0, 2.4)
    assert result.passed and result.ratio == pytest.approx(2.4 / 3.0)
    assert check_structured_speedup_prediction(40.0, 2.4).passed  # far off still passes: machines differ


def test_check_structured_speedup_prediction_rejects_a_negative_prediction():
    with pytest.raises(ExerciseFailed, match="positive"):
        check_structured_speedup_prediction(lambda: -2.0, 2.4)


def test_check_structured_speedup_prediction_rejects_a_non_number():
    with pytest.raises(ExerciseFailed, match="number"):
        check_structured_speedup_prediction(lambda: "four", 2.4)


def test_check_structured_speedup_prediction_stub_is_not_attempted():
    def stub():
        raise NotImplementedError

    assert check_structured_speedup_prediction(stub, 2.4).status == "not attempted yet"


def test_check_structured_speedup_prediction_rejects_a_missing_return():
    def no_return():
        4.0 / 1.0  # noqa: B018 — the learner forgot `return`

    with pytest.raises(ExerciseFailed, match="did you forget `return`"):
        check_structured_speedup_prediction(no_return, 2.4)
