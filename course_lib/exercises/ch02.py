"""Chapter 02 (mixture of experts): the checkers for its exercises."""

from __future__ import annotations

from collections.abc import Callable

from course_lib.exercises.core import CheckResult, check_prediction, run_cases

#: (tokens N, experts E, capacity C, logit scale, seed) for the expert-choice cases
_EXPERT_CHOICE_CASES = [
    (16, 4, 4, 1.0, 0),
    (33, 8, 5, 3.0, 1),
    (64, 8, 16, 0.2, 2),
    (10, 2, 10, 1.0, 3),  # capacity = N: every expert takes every token
    (50, 6, 1, 10.0, 4),  # one token per expert
    (24, 3, 7, 2.0, 5),
]


def expert_choice_reference(probs, capacity: int):
    """Expert-choice routing (Zhou et al., 2022), written out: each expert takes its ``capacity`` tokens.

    ``probs`` (N, E) router probabilities (a softmax over experts, per token). Expert e picks
    the ``capacity`` tokens with the highest ``probs[:, e]``; the result G (N, E) holds
    ``probs[t, e]`` where expert e picked token t and 0 elsewhere (the layer's output is then
    ``y_t = Σ_e G[t, e] · Expert_e(x_t)``).
    """
    import torch

    picked = probs.topk(capacity, dim=0).indices  # (C, E): the token ids each expert chose
    gates = torch.zeros_like(probs)
    return gates.scatter_(0, picked, probs.gather(0, picked))


def check_expert_choice(fn: Callable) -> CheckResult:
    """02 — ``fn(probs, capacity)``: expert-choice gates (N, E), zero where an expert did not pick a token.

    Reference: :func:`expert_choice_reference` (each expert's top-``capacity`` tokens along the
    token axis — the transpose of the chapter's token-choice top-k).
    """
    import torch

    cases = []
    for n, e, c, scale, seed in _EXPERT_CHOICE_CASES:
        logits = torch.randn(n, e, generator=torch.Generator().manual_seed(seed)) * scale
        probs = logits.softmax(-1)
        cases.append((dict(probs=probs.clone(), capacity=c), expert_choice_reference(probs, c)))
    return run_cases("02 · expert-choice routing", fn, cases, rel=1e-6)


def check_moe_scaling_prediction(predicted, measured: float) -> CheckResult:
    """02 — the learner's predicted time ratio (MoE layer on 1,024 tokens / on 16 tokens) against the measured one.

    ``predicted``: a number or a function of no arguments returning one. Never fails on the
    value; it reports how far the FLOP-count model was from this machine's measurement.
    """
    return check_prediction(
        "02 · an MoE layer on fewer tokens",
        predicted,
        measured,
        unit="× (time on 1,024 tokens / time on 16 tokens)",
        explain=(
            "The FLOP model says time ∝ tokens, so 64×. But every call also pays costs that do not shrink "
            "with the tokens: the router's softmax and top-k, the sort by expert, one small matmul call per expert "
            "and per projection, the scatter back, and the Python between them (section 13 counted the operators). "
            "With 16 tokens each expert gets about 4 rows, far too few to keep the matrix units busy, so the small "
            "call costs nearly as much as a larger one and the measured ratio lands well below the FLOP ratio."
        ),
    )
