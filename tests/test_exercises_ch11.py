"""Chapter 11's checkers: a right answer passes, wrong ones fail with a message, stubs read as not attempted."""

from __future__ import annotations

import math

import pytest

from course_lib.exercises import (
    ExerciseFailed,
    check_decode_attention_intensity,
    check_ridge_batch,
    check_roofline_time_prediction,
)

# --------------------------------------------------------------------------- decode attention intensity


def _intensity(kv_len, heads, kv_heads, head_dim, kv_bytes, scale_bytes):
    flops = 4 * heads * kv_len * head_dim
    nbytes = 2 * heads * head_dim * 2 + 2 * kv_heads * kv_len * (head_dim * kv_bytes + scale_bytes)
    return flops / nbytes


def test_check_decode_attention_intensity_passes_the_right_answer():
    assert check_decode_attention_intensity(_intensity).passed


def test_the_fp16_case_agrees_with_the_library():
    from course_lib.hardware import attention_cost

    lib = attention_cost(batch=1, heads=32, q_len=1, kv_len=4096, head_dim=128, kv_heads=8, dtype="fp16")
    assert math.isclose(_intensity(4096, 32, 8, 128, 2, 0), lib.intensity, rel_tol=1e-12)


def test_check_decode_attention_intensity_rejects_ignoring_gqa():
    def mha_cache(kv_len, heads, kv_heads, head_dim, kv_bytes, scale_bytes):  # reads a K and V per query head
        return _intensity(kv_len, heads, heads, head_dim, kv_bytes, scale_bytes)

    with pytest.raises(ExerciseFailed, match="decode attention intensity"):
        check_decode_attention_intensity(mha_cache)


def test_check_decode_attention_intensity_rejects_forgetting_the_scales():
    def no_scales(kv_len, heads, kv_heads, head_dim, kv_bytes, scale_bytes):
        return _intensity(kv_len, heads, kv_heads, head_dim, kv_bytes, 0)

    with pytest.raises(ExerciseFailed):
        check_decode_attention_intensity(no_scales)


def test_check_decode_attention_intensity_rejects_a_quantized_query():
    def q_in_kv_precision(kv_len, heads, kv_heads, head_dim, kv_bytes, scale_bytes):
        flops = 4 * heads * kv_len * head_dim
        return flops / (2 * heads * head_dim * kv_bytes + 2 * kv_heads * kv_len * (head_dim * kv_bytes + scale_bytes))

    with pytest.raises(ExerciseFailed):
        check_decode_attention_intensity(q_in_kv_precision)


def test_check_decode_attention_intensity_stub_is_not_attempted():
    def stub(kv_len, heads, kv_heads, head_dim, kv_bytes, scale_bytes):
        raise NotImplementedError

    assert check_decode_attention_intensity(stub).status == "not attempted yet"


def test_check_decode_attention_intensity_missing_return_says_so():
    def no_return(kv_len, heads, kv_heads, head_dim, kv_bytes, scale_bytes):
        _intensity(kv_len, heads, kv_heads, head_dim, kv_bytes, scale_bytes)  # the learner forgot `return`

    with pytest.raises(ExerciseFailed, match="None"):
        check_decode_attention_intensity(no_return)


# --------------------------------------------------------------------------- ridge batch


def _ridge_batch(k, n, peak_flops, bandwidth, bytes_per_element):
    rb = peak_flops / bandwidth * bytes_per_element
    denominator = 2 * k * n - rb * (k + n)
    return None if denominator <= 0 else math.ceil(rb * k * n / denominator)


def test_check_ridge_batch_passes_the_right_answer():
    assert check_ridge_batch(_ridge_batch).passed


def test_check_ridge_batch_rejects_ignoring_the_output_bytes():
    def weights_only(k, n, peak_flops, bandwidth, bytes_per_element):  # I ≈ 2m / b: forgets mk and mn
        return max(1, math.ceil(peak_flops / bandwidth * bytes_per_element / 2))

    with pytest.raises(ExerciseFailed, match="smallest compute-bound batch"):
        check_ridge_batch(weights_only)


def test_check_ridge_batch_rejects_never_returning_none():
    def always_a_number(k, n, peak_flops, bandwidth, bytes_per_element):
        m = _ridge_batch(k, n, peak_flops, bandwidth, bytes_per_element)
        return k * n if m is None else m

    with pytest.raises(ExerciseFailed):
        check_ridge_batch(always_a_number)


def test_check_ridge_batch_stub_is_not_attempted():
    def stub(k, n, peak_flops, bandwidth, bytes_per_element):
        raise NotImplementedError

    assert check_ridge_batch(stub).status == "not attempted yet"


def test_check_ridge_batch_missing_return_says_so():
    def no_return(k, n, peak_flops, bandwidth, bytes_per_element):
        _ridge_batch(k, n, peak_flops, bandwidth, bytes_per_element)  # the learner forgot `return`

    with pytest.raises(ExerciseFailed, match="None"):
        check_ridge_batch(no_return)


# --------------------------------------------------------------------------- the prediction


def test_check_roofline_time_prediction_passes_any_positive_prediction():
    result = check_roofline_time_prediction(lambda: 4.0, 6.0)
    assert result.passed and result.ratio == pytest.approx(1.5)
    assert check_roofline_time_prediction(0.01, 6.0).passed  # far off still passes: machines differ


def test_check_roofline_time_prediction_rejects_a_negative_prediction():
    with pytest.raises(ExerciseFailed, match="positive"):
        check_roofline_time_prediction(lambda: -4.0, 6.0)


def test_check_roofline_time_prediction_rejects_a_non_number():
    with pytest.raises(ExerciseFailed, match="number"):
        check_roofline_time_prediction(lambda: "four", 6.0)


def test_check_roofline_time_prediction_stub_is_not_attempted():
    def stub():
        raise NotImplementedError

    assert check_roofline_time_prediction(stub, 6.0).status == "not attempted yet"


def test_check_roofline_time_prediction_rejects_a_missing_return():
    def no_return():
        4.0 / 1.0  # noqa: B018 — the learner forgot `return`

    with pytest.raises(ExerciseFailed, match="did you forget `return`"):
        check_roofline_time_prediction(no_return, 6.0)
