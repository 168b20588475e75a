"""Checkers for the exercises at the end of each chapter (one module per chapter).

The mechanism — outcomes, messages, what a checker validates — is in :mod:`course_lib.exercises.core`;
``course_lib.exercises.chNN`` holds chapter NN's checkers. Everything is re-exported here, so a
notebook writes ``from course_lib.exercises import check_...``.
"""

from course_lib.exercises.ch00 import check_compute_optimal, check_decode_latency
from course_lib.exercises.ch01 import check_kv_cache_bytes
from course_lib.exercises.ch02 import check_capacity_keep, check_load_balancing_loss
from course_lib.exercises.ch03 import check_reach, check_window_pairs
from course_lib.exercises.ch05 import check_quantized_bytes, check_rtn_groupwise
from course_lib.exercises.ch06 import check_nm_mask, check_remove_neurons
from course_lib.exercises.ch08 import check_rrf
from course_lib.exercises.ch10 import check_acceptance_probability, check_expected_calibration_error
from course_lib.exercises.ch11 import check_decode_attention_intensity, check_ridge_batch
from course_lib.exercises.ch12 import check_p_all_experts, check_speedup_ceiling
from course_lib.exercises.core import CheckResult, ExerciseFailed, run_cases

__all__ = [
    "CheckResult",
    "ExerciseFailed",
    "run_cases",
    "check_compute_optimal",
    "check_decode_latency",
    "check_kv_cache_bytes",
    "check_load_balancing_loss",
    "check_capacity_keep",
    "check_window_pairs",
    "check_reach",
    "check_quantized_bytes",
    "check_rtn_groupwise",
    "check_nm_mask",
    "check_remove_neurons",
    "check_rrf",
    "check_expected_calibration_error",
    "check_acceptance_probability",
    "check_decode_attention_intensity",
    "check_ridge_batch",
    "check_p_all_experts",
    "check_speedup_ceiling",
]
