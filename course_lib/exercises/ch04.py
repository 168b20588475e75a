"""Chapter 04 (conditional computation): the checkers for its exercises."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from course_lib.exercises.core import CheckResult, check_prediction, run_cases


def _reference_topk_mlp(mlp, x, k):
    a = F.silu(mlp.gate_proj(x)) * mlp.up_proj(x)  # (..., d_ff)
    keep = a.abs().topk(k, dim=-1).indices
    return mlp.down_proj(a * torch.zeros_like(a, dtype=torch.bool).scatter_(-1, keep, True))


def check_topk_mlp(fn: Callable) -> CheckResult:
    """04 — ``fn(mlp, x, k)``: a SwiGLU MLP that keeps only the ``k`` largest-magnitude hidden
    activations of each token and zeroes the rest; x (..., C) -> (..., C).

    Reference: the hidden activations computed densely, a per-token top-k mask on |a|, then
    ``down_proj``. Cases: one token and batches, k = 1, k = d_ff (the dense MLP) and between.
    """
    from course_lib.model import SwiGLU

    torch.manual_seed(4)
    mlps = [SwiGLU(d_model=16, d_ff=48).eval(), SwiGLU(d_model=8, d_ff=20).eval()]
    gen = torch.Generator().manual_seed(4)
    cases = []
    with torch.no_grad():
        for mlp in mlps:
            c, d_ff = mlp.gate_proj.in_features, mlp.gate_proj.out_features
            for shape, k in (((c,), 1), ((3, c), 5), ((2, 4, c), d_ff // 2), ((2, c), d_ff)):
                x = torch.randn(*shape, generator=gen)
                cases.append((dict(mlp=mlp, x=x, k=k), _reference_topk_mlp(mlp, x, k)))
        assert torch.allclose(cases[3][1], mlps[0](cases[3][0]["x"]), atol=1e-6)  # k = d_ff is the dense MLP

    def call(mlp, x, k):
        with torch.no_grad():
            return fn(mlp, x, k)

    return run_cases("04 · top-k activation sparsity", call, cases, rel=1e-4)


def check_sparse_speedup_prediction(predicted, measured: float) -> CheckResult:
    """04 — the learner's predicted speed-up (×) of the sparse decode kernel over the dense MLP at 95 %.

    ``predicted``: a number or a function of no arguments returning one; ``measured``: the
    ratio the notebook just timed. Never fails on the value (machines differ).
    """
    return check_prediction(
        "04 · sparse kernel speed-up at 95 %",
        predicted,
        measured,
        unit="× (dense time / sparse time)",
        explain=(
            "A sparse kernel's time is a fixed part (launching each tensor operation, allocating the gathered copy) "
            "plus a part proportional to the active neurons (copying and multiplying their weights). Halving the "
            "active neurons from 10 % to 5 % halves only the second part, so the speed-up grows far less than "
            "2x; on a small MLP the fixed part dominates. Timings on a busy machine also move between runs."
        ),
    )
