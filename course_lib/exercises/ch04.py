"""Chapter 04 (conditional computation): the checkers for its exercises."""

from __future__ import annotations

import math
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


# --------------------------------------------------------------------------- the depth half


def _reference_entropy_confidence(logits):
    logp = F.log_softmax(logits.double(), dim=-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return (1 - entropy / math.log(logits.shape[-1])).float()


def check_entropy_confidence(fn: Callable) -> CheckResult:
    r"""04 — ``fn(logits)``: CALM's third softmax rule, one minus the normalised entropy,
    :math:`c = 1 - H(p) / \ln V` with :math:`p = \mathrm{softmax}(\text{logits})`, for
    logits (..., V) -> (...), in [0, 1] (1: one token certain; 0: uniform).

    Reference: float64 log-softmax. Cases: uniform logits (0), one dominant logit (near 1),
    shifted logits (softmax ignores a constant), batches of random logits, a two-way vocabulary.
    """
    gen = torch.Generator().manual_seed(4)
    rand = torch.randn(3, 5, 50, generator=gen) * 3
    cases = [
        torch.zeros(7),  # uniform: 0
        torch.tensor([30.0, 0.0, 0.0, 0.0]),  # one certain token: ~1
        torch.randn(4, 16, generator=gen) + 100.0,  # a constant shift changes nothing
        rand,
        torch.randn(6, 2, generator=gen),  # a two-token vocabulary
    ]
    return run_cases(
        "04 · the entropy exit rule", fn, [(dict(logits=x), _reference_entropy_confidence(x)) for x in cases], rel=1e-4
    )


def check_exit_layers_prediction(predicted, measured: float) -> CheckResult:
    """04 — the learner's predicted share of the blocks the exit-trained patient runs at a threshold.

    ``predicted``: a number in (0, 1] or a function of no arguments returning one;
    ``measured``: the share the notebook just measured on fresh validation text.
    """
    return check_prediction(
        "04 · early exit: the share of blocks run",
        predicted,
        measured,
        unit="of the blocks (mean blocks run / blocks)",
        explain=(
            "The stored sweep gives the share at the neighbouring thresholds on other windows of the same "
            "validation text; the share moves smoothly with the threshold, so interpolating between them is "
            "a good model. What it cannot see: other text has other easy tokens, and the copied KV entries "
            "of early-exited tokens change what later tokens see, so the confidences (and the exits) of a "
            "new passage differ a little."
        ),
    )
