"""Chapter 02 (mixture of experts): the checkers for its exercises."""

from __future__ import annotations

from collections.abc import Callable

from course_lib.exercises.core import CheckResult, run_cases


def _moe_routing_cases():
    """Router outputs (probs (N, E), experts (N, k)) for the chapter 02 checkers."""
    import torch

    from course_lib.moe import top_k_route

    out = []
    for seed, (n, e, k, scale) in enumerate(
        [(1, 2, 1, 1.0), (16, 4, 1, 1.0), (33, 8, 2, 3.0), (50, 6, 3, 0.2), (64, 8, 2, 10.0)]
    ):
        logits = torch.randn(n, e, generator=torch.Generator().manual_seed(seed)) * scale
        _, experts, probs = top_k_route(logits, k)
        out.append((probs, experts, e))
    return out


def check_load_balancing_loss(fn: Callable) -> CheckResult:
    """02 — ``fn(probs, experts, n_experts)``: the Switch balance loss ``E · Σ_i f_i · P_i``.

    Reference: :func:`course_lib.moe.load_balancing_loss` (f over the N·k assignments).
    """
    from course_lib.moe import load_balancing_loss

    cases = [
        (dict(probs=p, experts=x, n_experts=e), float(load_balancing_loss(p, x, e))) for p, x, e in _moe_routing_cases()
    ]
    return run_cases("02 · load-balancing loss", lambda **kw: float(fn(**kw)), cases, rel=1e-5)


def check_capacity_keep(fn: Callable) -> CheckResult:
    """02 — ``fn(experts, n_experts, capacity)``: which assignments fit (bool (N, k)).

    Reference: :func:`course_lib.moe.capacity_keep` (first choices queue before second ones).
    """
    from course_lib.moe import capacity_keep

    cases = []
    for _, x, e in _moe_routing_cases():
        n, k = x.shape
        for cap in sorted({1, max(1, n * k // e), n * k}):
            cases.append((dict(experts=x, n_experts=e, capacity=cap), capacity_keep(x, e, cap)))
    return run_cases("02 · expert capacity", fn, cases)
