"""Chapter 07's checkers: a right answer passes, wrong ones fail with a message, stubs read as not attempted."""

from __future__ import annotations

import numpy as np
import pytest

from course_lib.datacentric import MinHasher
from course_lib.exercises import ExerciseFailed, check_bbit_minhash, check_lsh_recall_prediction
from course_lib.exercises.ch07 import bbit_reference


def _stub(**_):
    raise NotImplementedError


# --------------------------------------------------------------------------- b-bit MinHash


def _bbit(sig_a, sig_b, bits):
    low = (1 << bits) - 1
    agree = np.mean((sig_a.astype(np.int64) & low) == (sig_b.astype(np.int64) & low))
    chance = 0.5**bits
    return (agree - chance) / (1 - chance)


def test_check_bbit_minhash_passes_the_corrected_estimate():
    assert check_bbit_minhash(_bbit).passed


def test_bbit_reference_by_hand():
    a = np.array([0b101, 0b110, 0b111, 0b000], dtype=np.uint32)
    b = np.array([0b001, 0b010, 0b111, 0b100], dtype=np.uint32)
    # lowest 2 bits: 01/01, 10/10, 11/11, 00/00 -> E = 1 -> J = 1; lowest 3 bits: only index 2 agrees
    assert bbit_reference(a, b, 2) == pytest.approx(1.0)
    assert bbit_reference(a, b, 3) == pytest.approx((0.25 - 1 / 8) / (1 - 1 / 8))


def test_bbit_estimate_is_close_to_jaccard_and_32_bits_is_plain_minhash():
    rng = np.random.default_rng(0)
    u = rng.choice(2**32, size=300, replace=False).astype(np.uint32)
    a, b = u[:200], u[100:]  # |A ∩ B| = 100, |A ∪ B| = 300: J = 1/3
    sa, sb = MinHasher(1024, seed=0).signatures_from_sets([a, b])
    assert abs(bbit_reference(sa, sb, 1) - 1 / 3) < 0.1
    assert bbit_reference(sa, sb, 32) == pytest.approx((sa == sb).mean(), abs=1e-9)


def test_check_bbit_minhash_rejects_the_uncorrected_share():
    def uncorrected(sig_a, sig_b, bits):  # forgets the chance agreements of b-bit values
        low = (1 << bits) - 1
        return float(np.mean((sig_a.astype(np.int64) & low) == (sig_b.astype(np.int64) & low)))

    with pytest.raises(ExerciseFailed, match="b-bit MinHash"):
        check_bbit_minhash(uncorrected)


def test_check_bbit_minhash_rejects_the_highest_bits():
    def high_bits(sig_a, sig_b, bits):  # the top bits, not the lowest ones the exercise asks for
        shift = 32 - bits
        agree = np.mean((sig_a.astype(np.int64) >> shift) == (sig_b.astype(np.int64) >> shift))
        return (agree - 0.5**bits) / (1 - 0.5**bits)

    with pytest.raises(ExerciseFailed):
        check_bbit_minhash(high_bits)


def test_check_bbit_minhash_stub_is_not_attempted():
    assert check_bbit_minhash(_stub).status == "not attempted yet"


def test_check_bbit_minhash_missing_return_says_so():
    def forgot(sig_a, sig_b, bits):
        _bbit(sig_a, sig_b, bits)

    with pytest.raises(ExerciseFailed, match="forget `return`"):
        check_bbit_minhash(forgot)


# --------------------------------------------------------------------------- prediction: LSH recall


def test_check_lsh_recall_prediction_reports_the_ratio():
    r = check_lsh_recall_prediction(lambda: 40.0, 80.0)
    assert r.passed and r.ratio == pytest.approx(2.0) and r.unit == "%"
    assert "S-curve" in r.explain


def test_check_lsh_recall_prediction_rejects_a_negative_prediction():
    with pytest.raises(ExerciseFailed, match="positive"):
        check_lsh_recall_prediction(-5.0, 80.0)


def test_check_lsh_recall_prediction_stub_is_not_attempted():
    def stub():
        raise NotImplementedError

    assert check_lsh_recall_prediction(stub, 80.0).status == "not attempted yet"


def test_check_lsh_recall_prediction_refuses_a_bad_measurement():
    with pytest.raises(ValueError, match="measured"):
        check_lsh_recall_prediction(50.0, 0.0)
