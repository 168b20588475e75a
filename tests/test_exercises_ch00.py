"""Chapter 00's checkers: a right answer passes, wrong ones fail with a message, stubs read as not attempted."""

from __future__ import annotations

import math

import numpy as np
import pytest

from course_lib import configs, quiz, scaling
from course_lib.exercises import (
    ExerciseFailed,
    check_decode_latency,
    check_inference_aware_split,
    check_training_time_prediction,
)
from course_lib.exercises.ch00 import inference_aware_reference

NONE_MESSAGE = "returned None"


def _stub(*args, **kwargs):
    raise NotImplementedError


# --------------------------------------------------------------------------- the inference-aware split


def grid_split(target_loss, inference_tokens):
    """An independent solution: a fine log-spaced grid, refined once around its best point."""
    law = scaling.CHINCHILLA
    gap = target_loss - law.E

    def data(n):
        return (law.B / (gap - law.A / n**law.alpha)) ** (1 / law.beta)

    def best_of(log_n):
        n = np.exp(log_n)
        return log_n[np.argmin(6 * n * data(n) + 2 * n * inference_tokens)]

    lo, step = math.log(law.A / gap) / law.alpha, math.log(1e6) / 20000
    best = best_of(np.linspace(lo + 1e-9, lo + math.log(1e6), 20001))
    best = best_of(np.linspace(best - step, best + step, 20001))
    return math.exp(best), data(math.exp(best))


def test_check_inference_aware_split_passes_an_independent_grid_search():
    assert check_inference_aware_split(grid_split).passed


def test_inference_aware_reference_without_inference_is_compute_optimal():
    n, d = inference_aware_reference(2.0, 0.0)
    assert scaling.chinchilla_loss(n, d) == pytest.approx(2.0, rel=1e-9)
    n_opt, d_opt = scaling.compute_optimal(6 * n * d)
    assert n == pytest.approx(n_opt, rel=1e-5) and d == pytest.approx(d_opt, rel=1e-5)
    assert inference_aware_reference(2.0, 1e13)[0] < n  # serving many tokens favours a smaller model


def test_inference_aware_reference_refuses_an_unreachable_loss():
    with pytest.raises(ValueError, match="target_loss"):
        inference_aware_reference(scaling.CHINCHILLA.E, 0.0)


def test_check_inference_aware_split_rejects_the_compute_optimal_split_ignoring_inference():
    def training_only(target_loss, inference_tokens):  # forgets the serving cost
        return grid_split(target_loss, 0.0)

    with pytest.raises(ExerciseFailed, match="inference-aware split: case"):
        check_inference_aware_split(training_only)


def test_check_inference_aware_split_rejects_the_twenty_tokens_rule():
    def twenty_tokens(target_loss, inference_tokens):  # D = 20 N, on the loss curve
        from scipy.optimize import brentq

        n = math.exp(brentq(lambda ln: scaling.chinchilla_loss(math.exp(ln), 20 * math.exp(ln)) - target_loss, 10, 40))
        return n, 20 * n

    with pytest.raises(ExerciseFailed):
        check_inference_aware_split(twenty_tokens)


def test_check_inference_aware_split_rejects_a_single_number():
    with pytest.raises(ExerciseFailed):
        check_inference_aware_split(lambda target_loss, inference_tokens: 1e10)


def test_check_inference_aware_split_stub_is_not_attempted():
    assert check_inference_aware_split(_stub).status == "not attempted yet"


def test_check_inference_aware_split_names_a_missing_return():
    def no_return(target_loss, inference_tokens):
        grid_split(target_loss, inference_tokens)

    with pytest.raises(ExerciseFailed, match=NONE_MESSAGE):
        check_inference_aware_split(no_return)


# --------------------------------------------------------------------------- the decode floor


def floor(config, bandwidth, dtype="fp16"):
    return configs.count_params(config)[1] * configs.dtype_bytes(dtype) / bandwidth * 1e3


def test_check_decode_latency_passes_active_bytes_over_bandwidth():
    assert check_decode_latency(floor).passed


def test_check_decode_latency_rejects_total_instead_of_active_parameters():
    def total_not_active(config, bandwidth, dtype="fp16"):
        return configs.count_params(config)[0] * configs.dtype_bytes(dtype) / bandwidth * 1e3

    with pytest.raises(ExerciseFailed, match="case 2 of 4"):  # Mixtral-8x7B, the MoE
        check_decode_latency(total_not_active)


def test_check_decode_latency_rejects_seconds_instead_of_milliseconds():
    with pytest.raises(ExerciseFailed):
        check_decode_latency(lambda config, bandwidth, dtype="fp16": floor(config, bandwidth, dtype) / 1e3)


def test_check_decode_latency_stub_is_not_attempted():
    assert check_decode_latency(_stub).status == "not attempted yet"


def test_check_decode_latency_names_a_missing_return():
    def no_return(config, bandwidth, dtype="fp16"):
        floor(config, bandwidth, dtype)

    with pytest.raises(ExerciseFailed, match=NONE_MESSAGE):
        check_decode_latency(no_return)


def test_check_decode_latency_refuses_a_result_instead_of_a_function():
    with pytest.raises(TypeError):
        check_decode_latency(3)


# --------------------------------------------------------------------------- the training-time prediction


def test_check_training_time_prediction_passes_any_positive_prediction():
    result = check_training_time_prediction(lambda: 2.0, 1.0)
    assert result.passed and result.ratio == pytest.approx(0.5) and "FLOP/s" in result.explain


def test_check_training_time_prediction_rejects_zero_seconds():
    with pytest.raises(ExerciseFailed, match="positive"):
        check_training_time_prediction(0.0, 1.0)


def test_check_training_time_prediction_stub_is_not_attempted():
    assert check_training_time_prediction(_stub, 1.0).status == "not attempted yet"


def test_check_training_time_prediction_rejects_a_missing_return():
    def no_return():
        math.sqrt(4.0)

    with pytest.raises(ExerciseFailed, match="did you forget `return`"):
        check_training_time_prediction(no_return, 1.0)


# --------------------------------------------------------------------------- the quiz's numbers follow from the chapter's formulas


def _question(qid):
    return next(q for q in quiz.load("00")["questions"] if q["id"] == qid)


def test_quiz_training_flops_follow_six_n_d():
    assert _question("q2")["answer"] == pytest.approx(scaling.training_flops(7e9, 2e12) / 1e22)


def test_quiz_decode_floor_follows_the_bandwidth_rule():
    q = _question("q3")
    assert q["answer"] == pytest.approx(70e9 * configs.dtype_bytes("fp16") / 3.35e12 * 1e3, rel=q["tolerance"] / 2)
