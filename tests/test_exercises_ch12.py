"""Chapter 12's checkers: a right answer passes, wrong ones fail with a message, stubs read as not attempted."""

from __future__ import annotations

from math import comb

import pytest

from course_lib import cases, configs
from course_lib.exercises import (
    ExerciseFailed,
    check_matvec_time_prediction,
    check_p_all_experts,
    check_speedup_ceiling,
)


def _stub(**_):
    raise NotImplementedError


# --------------------------------------------------------------------------- every expert read


def _p_all(n_experts, top_k, batch_size):
    return sum(
        (-1) ** j * comb(n_experts, j) * (comb(n_experts - j, top_k) / comb(n_experts, top_k)) ** batch_size
        for j in range(n_experts + 1)
    )


def test_check_p_all_experts_passes_inclusion_exclusion():
    assert check_p_all_experts(_p_all).passed


def test_check_p_all_experts_rejects_the_expected_fraction():
    def expected_fraction(n_experts, top_k, batch_size):  # E[touched] / E: not a probability of all
        return 1 - (1 - top_k / n_experts) ** batch_size

    with pytest.raises(ExerciseFailed, match="every expert"):
        check_p_all_experts(expected_fraction)


def test_check_p_all_experts_rejects_independent_experts():
    def independent(n_experts, top_k, batch_size):  # treats the experts as independent events
        return (1 - (1 - top_k / n_experts) ** batch_size) ** n_experts

    with pytest.raises(ExerciseFailed):
        check_p_all_experts(independent)


def test_check_p_all_experts_stub_is_not_attempted():
    assert check_p_all_experts(_stub).status == "not attempted yet"


def test_check_p_all_experts_missing_return_says_so():
    def forgot(n_experts, top_k, batch_size):
        _p_all(n_experts, top_k, batch_size)

    with pytest.raises(ExerciseFailed, match="forget `return`"):
        check_p_all_experts(forgot)


# --------------------------------------------------------------------------- speed-up ceiling


def _ceiling(fast, slow, batch_size):
    w = [cases.step_bytes(c, dtype="bf16", batch_size=batch_size)["weights"] for c in (fast, slow)]
    return max(w[1] / w[0], configs.count_params(slow)[1] / configs.count_params(fast)[1])


def test_check_speedup_ceiling_passes_the_larger_ratio():
    assert check_speedup_ceiling(_ceiling).passed


def test_check_speedup_ceiling_rejects_the_bytes_ratio_alone():
    def bytes_only(fast, slow, batch_size):
        w = [cases.step_bytes(c, dtype="bf16", batch_size=batch_size)["weights"] for c in (fast, slow)]
        return w[1] / w[0]

    with pytest.raises(ExerciseFailed, match="speed-up ceiling"):
        check_speedup_ceiling(bytes_only)


def test_check_speedup_ceiling_stub_is_not_attempted():
    assert check_speedup_ceiling(_stub).status == "not attempted yet"


def test_check_speedup_ceiling_missing_return_says_so():
    def forgot(fast, slow, batch_size):
        _ceiling(fast, slow, batch_size)

    with pytest.raises(ExerciseFailed, match="forget `return`"):
        check_speedup_ceiling(forgot)


# --------------------------------------------------------------------------- prediction: one weight read


def test_check_matvec_time_prediction_reports_the_ratio():
    r = check_matvec_time_prediction(lambda: 30.0, 60.0)
    assert r.passed and r.ratio == pytest.approx(2.0) and r.unit == "ms"
    assert "bandwidth" in r.explain


def test_check_matvec_time_prediction_rejects_a_string():
    with pytest.raises(ExerciseFailed, match="number"):
        check_matvec_time_prediction("30 ms", 60.0)


def test_check_matvec_time_prediction_stub_is_not_attempted():
    def stub():
        raise NotImplementedError

    assert check_matvec_time_prediction(stub, 60.0).status == "not attempted yet"


def test_check_matvec_time_prediction_refuses_a_bad_measurement():
    with pytest.raises(ValueError, match="measured"):
        check_matvec_time_prediction(30.0, 0.0)
