"""Chapter 00 (scaling wall): the checkers for its exercises."""

from __future__ import annotations

from collections.abc import Callable

from course_lib.checks import check_callable
from course_lib.exercises.core import CheckResult, run_cases


def check_compute_optimal(fn: Callable) -> CheckResult:
    """00 — ``fn(compute) -> (N, D)``: the Chinchilla-optimal split of a FLOP budget.

    Reference: :func:`course_lib.scaling.compute_optimal` (Hoffmann et al. 2022, eq. 4).
    """
    import torch

    from course_lib import scaling

    check_callable("00 · compute-optimal split: your answer (pass the function itself, not its result)", fn)

    def as_pair(**kwargs):
        return torch.tensor([float(v) for v in fn(**kwargs)], dtype=torch.float64)

    cases = [
        (dict(compute=c), torch.tensor(scaling.compute_optimal(c), dtype=torch.float64))
        for c in (1e19, 5.76e23, 3.8e25, 1e27)
    ]
    return run_cases("00 · compute-optimal split", as_pair, cases, rel=1e-6)


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
