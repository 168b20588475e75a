"""Chapter 05's checkers: a right answer passes, wrong ones fail with a message, stubs read as not attempted."""

from __future__ import annotations

import math

import pytest
import torch

from course_lib import quant
from course_lib.exercises import (
    ExerciseFailed,
    check_int4_slowdown_prediction,
    check_quantized_bytes,
    check_rtn_groupwise,
)


def _stub(**_):
    raise NotImplementedError


# --------------------------------------------------------------------------- bytes of a quantized layer


def _qbytes(out_features, in_features, bits, group_size, symmetric, bias):
    groups = 1 if group_size is None else in_features // group_size
    per_row = math.ceil(in_features * bits / 8) + groups * (2 + (0 if symmetric else 1))
    return out_features * per_row + (4 * out_features if bias else 0)


def test_check_quantized_bytes_passes_the_storage_count():
    assert check_quantized_bytes(_qbytes).passed


def test_check_quantized_bytes_rejects_codes_not_padded_per_row():
    def whole_tensor_bits(out_features, in_features, bits, group_size, symmetric, bias):  # packs the whole matrix
        groups = 1 if group_size is None else in_features // group_size
        scales = out_features * groups * (2 + (0 if symmetric else 1))
        return math.ceil(out_features * in_features * bits / 8) + scales + (4 * out_features if bias else 0)

    with pytest.raises(ExerciseFailed, match="bytes of a quantized layer: case"):
        check_quantized_bytes(whole_tensor_bits)


def test_check_quantized_bytes_rejects_zero_points_always_counted():
    def always_zero(out_features, in_features, bits, group_size, symmetric, bias):
        return _qbytes(out_features, in_features, bits, group_size, False, bias)

    with pytest.raises(ExerciseFailed):
        check_quantized_bytes(always_zero)


def test_check_quantized_bytes_stub_is_not_attempted():
    assert check_quantized_bytes(_stub).status == "not attempted yet"


def test_check_quantized_bytes_missing_return_says_so():
    def forgot(out_features, in_features, bits, group_size, symmetric, bias):
        _qbytes(out_features, in_features, bits, group_size, symmetric, bias)

    with pytest.raises(ExerciseFailed, match="forget `return`"):
        check_quantized_bytes(forgot)


# --------------------------------------------------------------------------- group-wise zero-points


def _rtn(w, bits, group_size):
    wg = w.view(w.shape[0], -1, group_size)
    lo, hi = wg.amin(-1, keepdim=True).clamp(max=0), wg.amax(-1, keepdim=True).clamp(min=0)
    s = ((hi - lo) / (2**bits - 1)).clamp(min=torch.finfo(torch.float32).eps)
    z = torch.round(-lo / s)
    return ((torch.clamp(torch.round(wg / s + z), 0, 2**bits - 1) - z) * s).view_as(w)


def test_check_rtn_groupwise_passes_per_group_zero_points():
    assert check_rtn_groupwise(_rtn).passed


def test_check_rtn_groupwise_rejects_one_grid_per_row():
    def per_row(w, bits, group_size):
        return quant.fake_quantize(w, bits=bits, symmetric=False, granularity="channel")

    with pytest.raises(ExerciseFailed, match="group-wise RTN: case"):
        check_rtn_groupwise(per_row)


def test_check_rtn_groupwise_rejects_symmetric_groups():
    def symmetric(w, bits, group_size):
        return quant.fake_quantize(w, bits=bits, symmetric=True, granularity="group", group_size=group_size)

    with pytest.raises(ExerciseFailed):
        check_rtn_groupwise(symmetric)


def test_check_rtn_groupwise_rejects_the_grouped_shape():
    def grouped(w, bits, group_size):  # forgets to reshape back to (out, in)
        return _rtn(w, bits, group_size).view(w.shape[0], -1, group_size)

    with pytest.raises(ExerciseFailed, match="shape"):
        check_rtn_groupwise(grouped)


def test_check_rtn_groupwise_stub_is_not_attempted():
    assert check_rtn_groupwise(_stub).status == "not attempted yet"


def test_check_rtn_groupwise_missing_return_says_so():
    def forgot(w, bits, group_size):
        _rtn(w, bits, group_size)

    with pytest.raises(ExerciseFailed, match="forget `return`"):
        check_rtn_groupwise(forgot)


def test_check_rtn_groupwise_shows_the_learners_error():
    def broken(w, bits, group_size):
        return w.view(w.shape[0], -1, group_size + 1)

    with pytest.raises(ExerciseFailed, match="RuntimeError"):
        check_rtn_groupwise(broken)


# --------------------------------------------------------------------------- prediction: the int4 layer's time


def test_check_int4_slowdown_prediction_reports_the_ratio():
    r = check_int4_slowdown_prediction(lambda: 7.25, 14.5)
    assert r.passed and r.ratio == pytest.approx(2.0) and r.word == "right order of magnitude"
    assert "dequantiz" in r.explain or "zero-points" in r.explain


def test_check_int4_slowdown_prediction_rejects_a_negative_prediction():
    with pytest.raises(ExerciseFailed, match="positive"):
        check_int4_slowdown_prediction(-3.0, 14.5)


def test_check_int4_slowdown_prediction_stub_is_not_attempted():
    def stub():
        raise NotImplementedError

    assert check_int4_slowdown_prediction(stub, 14.5).status == "not attempted yet"


def test_check_int4_slowdown_prediction_rejects_a_missing_return():
    def forgot():
        7.25  # noqa: B018 (the learner's missing return)

    with pytest.raises(ExerciseFailed, match="did you forget `return`"):
        check_int4_slowdown_prediction(forgot, 14.5)
