"""Chapter 10's checkers: a right answer passes, wrong ones fail with a message, stubs read as not attempted."""

from __future__ import annotations

import numpy as np
import pytest

from course_lib import cascade
from course_lib.exercises import ExerciseFailed, check_expected_calibration_error, check_margin_cascade

# --------------------------------------------------------------------------- expected calibration error


def _ece(probs, labels, n_bins=10):
    conf, correct = probs.max(1), probs.argmax(1) == labels
    b = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    return float(
        sum(
            (b == i).mean() * abs(correct[b == i].mean() - conf[b == i].mean()) for i in range(n_bins) if (b == i).any()
        )
    )


def test_check_expected_calibration_error_passes_a_right_answer():
    assert check_expected_calibration_error(_ece).passed


def test_check_expected_calibration_error_agrees_with_the_library():
    assert check_expected_calibration_error(cascade.expected_calibration_error).passed


def test_check_expected_calibration_error_rejects_unweighted_bins():
    def unweighted(probs, labels, n_bins=10):  # mean gap over non-empty bins, not weighted by their size
        conf, correct = probs.max(1), probs.argmax(1) == labels
        b = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
        gaps = [abs(correct[b == i].mean() - conf[b == i].mean()) for i in range(n_bins) if (b == i).any()]
        return float(np.mean(gaps))

    with pytest.raises(ExerciseFailed, match="expected calibration error"):
        check_expected_calibration_error(unweighted)


def test_check_expected_calibration_error_stub_is_not_attempted():
    def stub(probs, labels, n_bins=10):
        raise NotImplementedError

    assert check_expected_calibration_error(stub).status == "not attempted yet"


def test_check_expected_calibration_error_missing_return_says_so():
    def no_return(probs, labels, n_bins=10):
        _ece(probs, labels, n_bins)

    with pytest.raises(ExerciseFailed, match="returned None"):
        check_expected_calibration_error(no_return)


# --------------------------------------------------------------------------- the margin cascade with a budget


def _margin_cascade(probs, pred_big, n_defer):
    top2 = np.sort(probs, axis=1)[:, -2:]
    deferred = np.argsort(top2[:, 1] - top2[:, 0], kind="stable")[:n_defer]
    answer = probs.argmax(1)
    answer[deferred] = pred_big[deferred]
    return answer


def test_check_margin_cascade_passes_a_right_answer():
    assert check_margin_cascade(_margin_cascade).passed


def test_check_margin_cascade_rejects_the_top_probability():
    def by_top_probability(probs, pred_big, n_defer):  # ranks by p(1), not by the margin p(1) - p(2)
        deferred = np.argsort(probs.max(1), kind="stable")[:n_defer]
        answer = probs.argmax(1)
        answer[deferred] = pred_big[deferred]
        return answer

    with pytest.raises(ExerciseFailed, match="margin cascade"):
        check_margin_cascade(by_top_probability)


def test_check_margin_cascade_rejects_deferring_the_most_confident():
    def backwards(probs, pred_big, n_defer):
        top2 = np.sort(probs, axis=1)[:, -2:]
        deferred = np.argsort(-(top2[:, 1] - top2[:, 0]), kind="stable")[:n_defer]
        answer = probs.argmax(1)
        answer[deferred] = pred_big[deferred]
        return answer

    with pytest.raises(ExerciseFailed, match="margin cascade"):
        check_margin_cascade(backwards)


def test_check_margin_cascade_rejects_breaking_ties_by_the_higher_index():
    def last_first(probs, pred_big, n_defer):
        top2 = np.sort(probs, axis=1)[:, -2:]
        margin = top2[:, 1] - top2[:, 0]
        order = np.lexsort((-np.arange(len(margin)), margin))  # equal margins: higher index first
        deferred = order[:n_defer]
        answer = probs.argmax(1)
        answer[deferred] = pred_big[deferred]
        return answer

    with pytest.raises(ExerciseFailed, match="margin cascade"):
        check_margin_cascade(last_first)


def test_check_margin_cascade_rejects_a_column_vector():
    def column(probs, pred_big, n_defer):
        return _margin_cascade(probs, pred_big, n_defer)[:, None]

    with pytest.raises(ExerciseFailed, match="shape"):
        check_margin_cascade(column)


def test_check_margin_cascade_stub_is_not_attempted():
    def stub(probs, pred_big, n_defer):
        raise NotImplementedError

    assert check_margin_cascade(stub).status == "not attempted yet"


def test_check_margin_cascade_missing_return_says_so():
    def no_return(probs, pred_big, n_defer):
        _margin_cascade(probs, pred_big, n_defer)

    with pytest.raises(ExerciseFailed, match="returned None"):
        check_margin_cascade(no_return)


def test_check_margin_cascade_shows_the_learners_exception():
    def crashes(probs, pred_big, n_defer):
        return probs[n_defer + 10**6]

    with pytest.raises(ExerciseFailed, match="IndexError"):
        check_margin_cascade(crashes)
