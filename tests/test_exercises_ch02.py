"""Chapter 02's checkers: a right answer passes, wrong ones fail with a message, stubs read as not attempted."""

from __future__ import annotations

import pytest
import torch

from course_lib.exercises import ExerciseFailed, check_expert_choice, check_moe_scaling_prediction
from course_lib.exercises.ch02 import expert_choice_reference

# --------------------------------------------------------------------------- expert-choice routing


def _expert_choice_loop(probs, capacity):
    """An independent answer: each expert in turn sorts the tokens by its score and keeps the first C."""
    gates = torch.zeros_like(probs)
    for e in range(probs.shape[1]):
        order = sorted(range(probs.shape[0]), key=lambda t: -float(probs[t, e]))
        for t in order[:capacity]:
            gates[t, e] = probs[t, e]
    return gates


def test_check_expert_choice_passes_a_loop_and_the_reference():
    assert check_expert_choice(_expert_choice_loop).passed
    assert check_expert_choice(expert_choice_reference).passed


def test_check_expert_choice_rejects_token_choice():
    def token_choice(probs, capacity):  # top-k along the expert axis: the chapter's routing, not the variant
        top = probs.topk(min(capacity, probs.shape[1]), dim=1).indices
        return torch.zeros_like(probs).scatter(1, top, probs.gather(1, top))

    with pytest.raises(ExerciseFailed, match="expert-choice routing: case"):
        check_expert_choice(token_choice)


def test_check_expert_choice_rejects_a_mask_instead_of_gates():
    def mask_only(probs, capacity):
        return (expert_choice_reference(probs, capacity) > 0).float()

    with pytest.raises(ExerciseFailed):
        check_expert_choice(mask_only)


def test_check_expert_choice_rejects_a_transposed_answer():
    def transposed(probs, capacity):  # (E, N) instead of (N, E)
        return expert_choice_reference(probs, capacity).t()

    with pytest.raises(ExerciseFailed, match="shape"):
        check_expert_choice(transposed)


def test_check_expert_choice_stub_is_not_attempted():
    def stub(probs, capacity):
        raise NotImplementedError

    assert check_expert_choice(stub).status == "not attempted yet"


def test_check_expert_choice_missing_return_says_so():
    def no_return(probs, capacity):
        expert_choice_reference(probs, capacity)

    with pytest.raises(ExerciseFailed, match="returned None"):
        check_expert_choice(no_return)


def test_expert_choice_reference_balances_the_load():
    probs = torch.randn(40, 5, generator=torch.Generator().manual_seed(0)).softmax(-1)
    gates = expert_choice_reference(probs, 6)
    assert gates.shape == (40, 5) and (gates > 0).sum(0).eq(6).all()  # every expert picks exactly C tokens
    assert torch.equal(gates[gates > 0], probs[gates > 0])


# --------------------------------------------------------------------------- the prediction


def test_check_moe_scaling_prediction_passes_any_positive_prediction():
    result = check_moe_scaling_prediction(lambda: 64.0, 20.0)
    assert result.passed and result.ratio == pytest.approx(20.0 / 64.0)
    assert check_moe_scaling_prediction(2.0, 20.0).passed  # far off still passes: machines differ


def test_check_moe_scaling_prediction_rejects_zero():
    with pytest.raises(ExerciseFailed, match="positive"):
        check_moe_scaling_prediction(0.0, 20.0)


def test_check_moe_scaling_prediction_rejects_a_tensor_of_many_values():
    with pytest.raises(ExerciseFailed, match="number"):
        check_moe_scaling_prediction(lambda: [64.0, 32.0], 20.0)


def test_check_moe_scaling_prediction_stub_is_not_attempted():
    def stub():
        raise NotImplementedError

    assert check_moe_scaling_prediction(stub, 20.0).status == "not attempted yet"


def test_check_moe_scaling_prediction_missing_return_says_so():
    def no_return():
        1024 / 16  # noqa: B018 — the learner forgot `return`

    with pytest.raises(ExerciseFailed, match="returned None"):
        check_moe_scaling_prediction(no_return, 20.0)
