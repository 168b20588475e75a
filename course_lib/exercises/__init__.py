"""Checkers for the exercises at the end of each chapter (one module per chapter).

The mechanism — outcomes, messages, what a checker validates — is in :mod:`course_lib.exercises.core`;
``course_lib.exercises.chNN`` holds chapter NN's checkers. Everything is re-exported here, so a
notebook writes ``from course_lib.exercises import check_...``.
"""

from course_lib.exercises.ch00 import check_decode_latency, check_inference_aware_split, check_training_time_prediction
from course_lib.exercises.ch01 import check_batched_decode_prediction, check_kv_cache_bytes, check_top_p
from course_lib.exercises.ch02 import check_expert_choice, check_moe_scaling_prediction
from course_lib.exercises.ch03 import check_dilated_cache, check_reach, check_window_time_prediction
from course_lib.exercises.ch04 import (
    check_entropy_confidence,
    check_exit_layers_prediction,
    check_sparse_speedup_prediction,
    check_topk_mlp,
)
from course_lib.exercises.ch05 import check_int4_slowdown_prediction, check_quantized_bytes, check_rtn_groupwise
from course_lib.exercises.ch06 import check_structured_speedup_prediction, check_taylor_head_scores
from course_lib.exercises.ch07 import check_bbit_minhash, check_lsh_recall_prediction
from course_lib.exercises.ch08 import check_maxp_rerank, check_rrf
from course_lib.exercises.ch09 import check_answer_time_prediction, check_convert_tool
from course_lib.exercises.ch10 import check_expected_calibration_error, check_margin_cascade
from course_lib.exercises.ch11 import (
    check_decode_attention_intensity,
    check_ridge_batch,
    check_roofline_time_prediction,
)
from course_lib.exercises.ch12 import check_matvec_time_prediction, check_p_all_experts, check_speedup_ceiling
from course_lib.exercises.ch13 import check_front_door, check_time_from_flops_prediction
from course_lib.exercises.core import CheckResult, ExerciseFailed, check_prediction, run_cases

__all__ = [
    "CheckResult",
    "ExerciseFailed",
    "run_cases",
    "check_prediction",
    "check_inference_aware_split",
    "check_decode_latency",
    "check_training_time_prediction",
    "check_kv_cache_bytes",
    "check_top_p",
    "check_batched_decode_prediction",
    "check_expert_choice",
    "check_moe_scaling_prediction",
    "check_dilated_cache",
    "check_reach",
    "check_window_time_prediction",
    "check_quantized_bytes",
    "check_rtn_groupwise",
    "check_int4_slowdown_prediction",
    "check_taylor_head_scores",
    "check_structured_speedup_prediction",
    "check_rrf",
    "check_maxp_rerank",
    "check_expected_calibration_error",
    "check_margin_cascade",
    "check_decode_attention_intensity",
    "check_ridge_batch",
    "check_roofline_time_prediction",
    "check_p_all_experts",
    "check_speedup_ceiling",
    "check_matvec_time_prediction",
    "check_topk_mlp",
    "check_entropy_confidence",
    "check_exit_layers_prediction",
    "check_sparse_speedup_prediction",
    "check_convert_tool",
    "check_answer_time_prediction",
    "check_front_door",
    "check_time_from_flops_prediction",
    "check_bbit_minhash",
    "check_lsh_recall_prediction",
]
