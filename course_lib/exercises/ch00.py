"""Chapter 00 (scaling wall): the checkers for its exercises."""

from __future__ import annotations

import math
from collections.abc import Callable

from course_lib.exercises.core import CheckResult, check_prediction, run_cases


def inference_aware_reference(target_loss: float, inference_tokens: float) -> tuple[float, float]:
    """(N, D) reaching Chinchilla loss ``target_loss`` at the least training + inference compute.

    Written independently of the learner's answer: on the curve ``L(N, D) = target_loss`` the
    data needed by a model of N parameters is ``D(N) = (B / (target − E − A/N^α))^(1/β)``; the
    total cost ``6·N·D(N) + 2·N·inference_tokens`` is minimised over log N by bounded Brent
    search, from the smallest N that can reach the target (infinite data) to a million times it.
    Sardana et al. (2023), *Beyond Chinchilla-Optimal*.
    """
    from scipy.optimize import minimize_scalar

    from course_lib import scaling

    law = scaling.CHINCHILLA
    gap = target_loss - law.E
    if not gap > 0:
        raise ValueError(f"target_loss must be above the irreducible loss E = {law.E}, got {target_loss!r}")
    log_n_min = math.log(law.A / gap) / law.alpha  # below this N no amount of data reaches the target

    def data_needed(n: float) -> float:
        return (law.B / (gap - law.A / n**law.alpha)) ** (1 / law.beta)

    def log_cost(log_n: float) -> float:
        n = math.exp(log_n)
        return math.log(6 * n * data_needed(n) + 2 * n * inference_tokens)

    best = minimize_scalar(
        log_cost, bounds=(log_n_min + 1e-9, log_n_min + math.log(1e6)), method="bounded", options={"xatol": 1e-10}
    )
    n = math.exp(best.x)
    return n, data_needed(n)


def check_inference_aware_split(fn: Callable) -> CheckResult:
    """00 — ``fn(target_loss, inference_tokens) -> (N, D)``: the cheapest model to train *and* serve.

    Reference: :func:`inference_aware_reference`, to 0.2 % (a numerical optimum). With no
    inference tokens the answer is the compute-optimal split at that loss.
    """
    import torch

    cases = [
        (
            dict(target_loss=loss, inference_tokens=tokens),
            torch.tensor(inference_aware_reference(loss, tokens), dtype=torch.float64),
        )
        for loss, tokens in [(2.0, 0.0), (2.0, 1e13), (1.9, 1e12), (2.2, 2e14)]
    ]

    def as_pair(answer):
        n, d = answer  # a pair (N, D)
        return torch.tensor([float(n), float(d)], dtype=torch.float64)

    return run_cases("00 · inference-aware split", fn, cases, rel=2e-3, convert=as_pair)


def check_decode_latency(fn: Callable) -> CheckResult:
    """00 — ``fn(config, bandwidth, dtype) -> ms``: the batch-1 decode floor, active weight bytes / bandwidth.

    Reference: :func:`course_lib.scaling.decode_bytes_per_step` at batch size 1.
    """
    from course_lib import configs, scaling

    cases = []
    for name, bandwidth, dtype in [
        ("llama-2-7b", 3.35e12, "fp16"),
        ("mixtral-8x7b", 3.35e12, "fp16"),
        ("phi-3-mini", 1.0e11, "int4"),
        ("glam-1.2t", 4.8e12, "int8"),
    ]:
        cfg = configs.get(name)
        expected = scaling.decode_bytes_per_step(cfg, batch_size=1, dtype=dtype) / bandwidth * 1e3
        cases.append((dict(config=cfg, bandwidth=bandwidth, dtype=dtype), expected))
    return run_cases("00 · decode latency floor", fn, cases, rel=1e-6)


def check_training_time_prediction(predicted, measured: float) -> CheckResult:
    """00 — the learner's predicted seconds to train a wider patient against the measured seconds.

    ``predicted``: a number or a function of no arguments returning one. Never fails on the
    value; it reports how far the FLOPs-at-a-fixed-rate model was from this machine.
    """
    return check_prediction(
        "00 · training time of a wider patient",
        predicted,
        measured,
        unit="seconds",
        explain=(
            "Dividing FLOPs by a FLOP/s rate assumes every FLOP costs the same. On a CPU it does not: wider matrices "
            "keep the cores busier, so a wider patient usually runs at more FLOP/s than a narrower one, and a fixed "
            "cost per step (Python, launching each operator, the optimiser's loop over tensors) weighs more on a small "
            "model. The sweep's seconds also include its validation passes, which this measurement does not run."
        ),
    )
