"""Chapter 06 (pruning): the checkers for its exercises."""

from __future__ import annotations

from collections.abc import Callable

from course_lib.exercises.core import CheckResult, ExerciseFailed, run_cases


def check_nm_mask(fn: Callable) -> CheckResult:
    """06 — ``fn(weight, n, m)``: the N:M keep-mask by magnitude (True = keep).

    Reference: :func:`course_lib.prune.nm_mask` on ``|weight|`` (the ``n`` largest of every
    ``m`` consecutive inputs in each row).
    """
    import torch

    from course_lib.prune import nm_mask

    cases = []
    for shape, n, m, seed in [((4, 8), 2, 4, 0), ((3, 16), 1, 4, 1), ((5, 16), 4, 8, 2), ((2, 6), 2, 2, 3)]:
        w = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
        cases.append((dict(weight=w, n=n, m=m), nm_mask(w.abs(), n, m)))
    return run_cases("06 · N:M mask", fn, cases)


def check_remove_neurons(fn: Callable) -> CheckResult:
    """06 — ``fn(mlp, keep) -> smaller SwiGLU`` keeping only the hidden units ``keep``.

    Checked two ways: the new module has ``3 · d_model · len(keep)`` weights, and its output
    equals the original MLP's with every other neuron's contribution removed.
    """
    import copy

    import torch
    import torch.nn.functional as F

    from course_lib.model import SwiGLU

    def run(d_model, d_ff, keep, seed):
        torch.manual_seed(seed)
        mlp = SwiGLU(d_model=d_model, d_ff=d_ff)
        x = torch.randn(2, 3, d_model, generator=torch.Generator().manual_seed(seed))
        small = fn(copy.deepcopy(mlp), torch.tensor(keep))
        n = sum(p.numel() for p in small.parameters())
        if n != 3 * d_model * len(keep):
            raise ExerciseFailed(
                f"06 · remove neurons: the new MLP has {n} weights, expected 3 x {d_model} x {len(keep)}"
            )
        with torch.no_grad():
            return small(x)

    cases = []
    for d_model, d_ff, keep, seed in [(8, 16, [0, 3, 4, 9, 15], 0), (16, 40, list(range(0, 40, 3)), 1), (4, 6, [5], 2)]:
        torch.manual_seed(seed)
        mlp = SwiGLU(d_model=d_model, d_ff=d_ff)
        x = torch.randn(2, 3, d_model, generator=torch.Generator().manual_seed(seed))
        k = torch.tensor(keep)
        with torch.no_grad():
            h = F.silu(x @ mlp.gate_proj.weight[k].T) * (x @ mlp.up_proj.weight[k].T)  # (2, 3, len(keep))
            expected = h @ mlp.down_proj.weight[:, k].T
        cases.append((dict(d_model=d_model, d_ff=d_ff, keep=keep, seed=seed), expected))
    return run_cases("06 · remove MLP neurons", run, cases, rel=1e-5)
