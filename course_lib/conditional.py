r"""Chapter 04, the width half of conditional computation: MLP neurons a token can skip.

A gated MLP computes, for one token :math:`x \in \mathbb{R}^{C}`,

.. math::

    a = \sigma(W_{gate}\,x) \odot (W_{up}\,x) \in \mathbb{R}^{d_{ff}}, \qquad y = W_{down}\,a

and every neuron :math:`j` with :math:`a_j = 0` contributes nothing: its row of
:math:`W_{gate}`, :math:`W_{up}` and its column of :math:`W_{down}` need not be read. The
question of this module is how many such zeros a patient has, how many it can be *made*
to have, and what skipping them buys:

* **measuring** — :func:`capture_activations` hooks the input of every ``down_proj`` (the
  hidden :math:`a`, shape (B, T, d_ff)); :func:`activation_stats` counts exact zeros and
  near-zeros :math:`|a| \le \tau` per layer and per token. SiLU is almost never exactly 0.
* **ReLUfication** (Mirzadeh et al., 2023) — :func:`relufy` swaps :math:`\sigma =` SiLU for
  ReLU (optionally a ReLU on the MLP input, the normalised residual, too) in a copy of the
  patient; :func:`finetune_mlp` recovers the perplexity with a short fine-tune of the MLPs.
* **thresholded SwiGLU** (CATS, Lee et al., 2024) — :func:`fit_thresholds` picks, per layer,
  the :math:`t_\ell` below which the fraction ``sparsity`` of :math:`|\mathrm{SiLU}(W_{gate}x)|`
  falls on calibration tokens; :func:`thresholded` zeroes those gate values (no training).
* **the sparse decode kernel** — :class:`SparseDecodeMLP` computes one token's MLP from the
  active neurons only: gather their rows of :math:`W_{gate}, W_{up}` (stored side by side)
  and rows of :math:`W_{down}^\top`, exactly equal to :func:`masked_mlp`, the dense MLP with
  the other activations zeroed. :func:`kernel_variants` gives the dense, sparse and
  statically pruned (chapter 06) callables that the notebook times side by side.
* **contextual sparsity** (Deja Vu, Liu et al., 2023) — :class:`SparsityPredictor`, a
  rank-:math:`r` network :math:`W_2 W_1 x` that predicts from the MLP input which neurons
  will be active, so even :math:`W_{gate}x` is computed only for them;
  :func:`train_predictor`, :func:`predictor_recall` and :class:`PredictedMLP` (the patient
  running on the predicted neurons only, for the perplexity cost).

The MLP kind ``"conditional"`` (``ModelConfig(mlp="conditional", mlp_options=...)``, see
:class:`ConditionalMLP`) is the one layer behind ReLUfication and CATS; its weights keep
SwiGLU's names, so a patient's state dict loads into it unchanged.

The expensive runs (the ReLUfication fine-tune, the CATS sweep, the predictors) are
:mod:`course_lib.experiments.conditional`: ``python -m course_lib.build conditional``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.checks import (
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_keys,
    check_tensor,
    check_type,
)
from course_lib.model import SwiGLU, TinyLM
from course_lib.prune import shrink_linear

__all__ = [
    "ACTIVATIONS",
    "ConditionalMLP",
    "conditional_mlp",
    "capture_activations",
    "capture_mlp_inputs",
    "ActivationStats",
    "activation_stats",
    "relufy",
    "finetune_mlp",
    "gate_values",
    "fit_thresholds",
    "thresholded",
    "masked_mlp",
    "SparseDecodeMLP",
    "pruned_mlp",
    "kernel_variants",
    "kernel_sweep",
    "break_even",
    "SparsityPredictor",
    "active_mask",
    "train_predictor",
    "predictor_recall",
    "PredictedMLP",
    "with_predictors",
]

#: the gate nonlinearities :class:`ConditionalMLP` knows
ACTIVATIONS = {"silu": F.silu, "relu": F.relu}


def check_sparsity(sparsity, name: str = "sparsity") -> float:
    """A target fraction of zeros in [0, 1): 1 would skip the whole MLP."""
    return check_float(name, sparsity, min=0, max=1, max_inclusive=False)


def _mlps(model: nn.Module) -> list[nn.Module]:
    """The MLP of every block, each with a ``down_proj`` Linear (SwiGLU, ConditionalMLP)."""
    check_type("model", model, TinyLM)
    mlps = [blk.mlp for blk in model.blocks]
    for i, m in enumerate(mlps):
        if not isinstance(getattr(m, "down_proj", None), nn.Linear):
            raise TypeError(
                f"model.blocks[{i}].mlp is a {type(m).__name__} without a down_proj Linear; "
                "activation statistics need a gated MLP (swiglu or conditional)"
            )
    return mlps


def _check_ids(ids) -> torch.Tensor:
    return check_tensor("ids", ids, dims=("batch", "seq_len"), floating=False)


# --------------------------------------------------------------------------- the layer


class ConditionalMLP(SwiGLU):
    r"""A gated MLP whose gate can be made sparse: ReLUfication and CATS in one layer.

    :math:`y = W_{down}\big(\mathrm{thr}_t(\sigma(W_{gate}\,x')) \odot W_{up}\,x'\big)` with
    :math:`x' = \mathrm{ReLU}(x)` when ``input_relu`` else :math:`x`, :math:`\sigma` =
    ``activation`` (``"silu"`` or ``"relu"``) and :math:`\mathrm{thr}_t(g) = g\,[|g| > t]`
    (CATS; ``threshold`` 0 keeps everything). ``mlp_options``: ``activation``,
    ``input_relu``, ``threshold`` (one float for every layer or a list, one per layer).
    With the defaults it *is* SwiGLU. The threshold is a buffer ``threshold`` (saved in the
    state dict), so :func:`fit_thresholds` can set it after the model is built.
    """

    OPTIONS = ("activation", "input_relu", "threshold")

    def __init__(self, config=None, layer_idx: int = 0, *, d_model=None, d_ff=None, **options):
        super().__init__(config, layer_idx, d_model=d_model, d_ff=d_ff)
        opts = dict(config.mlp_options) if config is not None else {}
        opts.update(options)
        opts = _check_options(opts, config.n_layers if config is not None else None)
        self.activation = opts["activation"]
        self.act = ACTIVATIONS[self.activation]
        self.input_relu = opts["input_relu"]
        t = opts["threshold"]
        t = t[layer_idx] if isinstance(t, (list, tuple)) else t
        self.register_buffer("threshold", torch.tensor(float(t)))

    @classmethod
    def check_config(cls, config) -> None:
        _check_options(dict(config.mlp_options), config.n_layers)

    def gate(self, x):  # (..., C) -> (..., d_ff): the gate after the nonlinearity and the threshold
        if self.input_relu:
            x = F.relu(x)
        g = self.act(self.gate_proj(x))
        if float(self.threshold) > 0:
            g = g * (g.abs() > self.threshold)
        return g

    def hidden(self, x):  # (..., C) -> (..., d_ff): what feeds down_proj
        xin = F.relu(x) if self.input_relu else x
        return self.gate(x) * self.up_proj(xin)

    def forward(self, x):  # (..., C) -> (..., C)
        return self.down_proj(self.hidden(x))


def _check_options(opts: dict, n_layers: int | None) -> dict:
    check_keys("mlp_options for mlp='conditional'", opts, ConditionalMLP.OPTIONS)
    out = {"activation": "silu", "input_relu": False, "threshold": 0.0, **opts}
    check_choice("activation", out["activation"], sorted(ACTIVATIONS))
    check_bool("input_relu", out["input_relu"])
    t = out["threshold"]
    if isinstance(t, (list, tuple)):
        if n_layers is not None and len(t) != n_layers:
            raise ValueError(f"threshold must be one float or a list of n_layers = {n_layers} floats, got {len(t)}")
        for i, v in enumerate(t):
            check_float(f"threshold[{i}]", v, min=0)
        out["threshold"] = [float(v) for v in t]
    else:
        out["threshold"] = check_float("threshold", t, min=0)
    return out


def conditional_mlp(config, layer_idx: int) -> ConditionalMLP:
    """The factory behind ``MLP_REGISTRY["conditional"]``."""
    return ConditionalMLP(config, layer_idx)


conditional_mlp.check_config = ConditionalMLP.check_config


def _as_conditional(model: TinyLM, **options) -> TinyLM:
    """A copy of ``model`` whose MLPs are :class:`ConditionalMLP` with ``options``, same weights."""
    check_type("model", model, TinyLM)
    if model.config.mlp not in ("swiglu", "conditional"):
        raise TypeError(f"model.config.mlp must be 'swiglu' or 'conditional', got {model.config.mlp!r}")
    base = dict(model.config.mlp_options) if model.config.mlp == "conditional" else {}
    base.pop("threshold", None)
    cfg = replace(model.config, mlp="conditional", mlp_options={**base, **options})
    new = TinyLM(cfg).to(next(model.parameters()).device)
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("mlp.threshold")}
    missing, unexpected = new.load_state_dict(state, strict=False)
    if unexpected or any(not k.endswith("mlp.threshold") for k in missing):
        raise RuntimeError(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
    return new.eval()


# --------------------------------------------------------------------------- measuring


@torch.no_grad()
def capture_activations(model: TinyLM, ids) -> list[torch.Tensor]:
    """Per layer, the MLP hidden activations that feed ``down_proj``, each (B, T, d_ff).

    Forward pre-hooks on every ``down_proj`` record its input during one forward of
    ``ids`` (B, T); the hooks are removed afterwards, even when the forward fails.
    """
    mlps = _mlps(model)
    ids = _check_ids(ids)
    return _capture(model, ids, [m.down_proj for m in mlps])


@torch.no_grad()
def capture_mlp_inputs(model: TinyLM, ids) -> list[torch.Tensor]:
    """Per layer, what each MLP reads (the normalised residual), each (B, T, C)."""
    mlps = _mlps(model)
    ids = _check_ids(ids)
    return _capture(model, ids, mlps)


def _capture(model: TinyLM, ids: torch.Tensor, modules: list[nn.Module]) -> list[torch.Tensor]:
    seen: list[torch.Tensor | None] = [None] * len(modules)

    def hook(i):
        def record(_module, args):
            seen[i] = args[0].detach().clone()

        return record

    handles = [m.register_forward_pre_hook(hook(i)) for i, m in enumerate(modules)]
    was_training = model.training
    try:
        model.eval()
        model(ids.to(next(model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return seen


@dataclass
class ActivationStats:
    r"""How sparse the MLP activations are. Layer fractions are over all B·T·d_ff values.

    ``zeros[l]``: fraction exactly 0; ``small[l]``: fraction with :math:`|a| \le \tau`
    (``tau``; equal to ``zeros`` at :math:`\tau = 0`); ``token_zeros`` / ``token_small``
    (L, B, T): the same per token (over its d_ff neurons).
    """

    tau: float
    zeros: list[float]
    small: list[float]
    token_zeros: torch.Tensor  # (L, B, T)
    token_small: torch.Tensor  # (L, B, T)

    @property
    def mean_zeros(self) -> float:
        return sum(self.zeros) / len(self.zeros)

    @property
    def mean_small(self) -> float:
        return sum(self.small) / len(self.small)

    def rows(self, *, digits: int = 3) -> list[dict]:
        """One row per layer, for ``viz.Table``."""
        return [
            {"layer": i, "exact zeros": round(z, digits), f"|a| ≤ {self.tau:g}": round(s, digits)}
            for i, (z, s) in enumerate(zip(self.zeros, self.small))
        ]


def stats_of(acts: Sequence[torch.Tensor], *, tau: float = 0.0) -> ActivationStats:
    """:class:`ActivationStats` of captured activations (a list of (B, T, d_ff) tensors)."""
    tau = check_float("tau", tau, min=0)
    if not acts:
        raise ValueError("acts must hold at least one layer's activations")
    for i, a in enumerate(acts):
        check_tensor(f"acts[{i}]", a, dims=("batch", "seq_len", "d_ff"), floating=True)
    tz = torch.stack([(a == 0).float().mean(-1) for a in acts])  # (L, B, T)
    ts = torch.stack([(a.abs() <= tau).float().mean(-1) for a in acts])
    zeros = [float((a == 0).float().mean()) for a in acts]
    small = [float((a.abs() <= tau).float().mean()) for a in acts]
    return ActivationStats(float(tau), zeros, small, tz, ts)


def activation_stats(model: TinyLM, ids, *, tau: float = 0.0) -> ActivationStats:
    """Fractions of exact zeros and of :math:`|a| \\le \\tau` in every MLP, per layer and per token."""
    tau = check_float("tau", tau, min=0)
    return stats_of(capture_activations(model, ids), tau=tau)


# --------------------------------------------------------------------------- ReLUfication


def relufy(model: TinyLM, *, input_relu: bool = False) -> TinyLM:
    """A copy of ``model`` with ReLU instead of SiLU in every gate (and on the MLP input
    when ``input_relu``): Mirzadeh et al.'s stage 1 (and 2). Weights unchanged; the
    perplexity rises until :func:`finetune_mlp` recovers it."""
    check_bool("input_relu", input_relu)
    return _as_conditional(model, activation="relu", input_relu=input_relu)


def finetune_mlp(model: TinyLM, train_ids, val_ids=None, cfg=None, *, progress: bool = False):
    """Fine-tune only the MLPs (gate, up, down) of ``model`` in place; returns the History.

    Everything else stays frozen, so the change is the MLP weights alone (what the build
    stores) and the comparison with a dense patient fine-tuned the same way is fair.
    """
    from course_lib.train import TrainConfig, train

    check_type("model", model, TinyLM)
    cfg = check_type("cfg", cfg or TrainConfig(), TrainConfig)
    for name, p in model.named_parameters():
        p.requires_grad_(".mlp." in name)
    try:
        return train(model, train_ids, val_ids, cfg, progress=progress, desc="finetune mlp")
    finally:
        for p in model.parameters():
            p.requires_grad_(True)


# --------------------------------------------------------------------------- CATS


@torch.no_grad()
def gate_values(model: TinyLM, ids) -> list[torch.Tensor]:
    """Per layer, :math:`\\sigma(W_{gate}x)` before any threshold, each (B, T, d_ff)."""
    mlps = _mlps(model)
    xs = capture_mlp_inputs(model, ids)
    out = []
    for m, x in zip(mlps, xs):
        if getattr(m, "input_relu", False):
            x = F.relu(x)
        out.append(getattr(m, "act", F.silu)(m.gate_proj(x)))
    return out


def fit_thresholds(model: TinyLM, ids, *, sparsity: float) -> list[float]:
    """CATS: per layer, the ``sparsity`` quantile of :math:`|\\sigma(W_{gate}x)|` on ``ids``.

    Zeroing gate values at or below it makes that fraction of the calibration activations
    exactly zero (ties aside); a new token's fraction is close to it, not equal.
    """
    sparsity = check_sparsity(sparsity)
    out = []
    for g in gate_values(model, ids):
        flat = g.abs().flatten().double()
        if sparsity == 0:
            out.append(0.0)
            continue
        k = max(1, round(sparsity * flat.numel()))
        out.append(float(flat.kthvalue(k).values))
    return out


def thresholded(model: TinyLM, thresholds: Sequence[float]) -> TinyLM:
    """A copy of ``model`` running CATS with one gate threshold per layer (see :func:`fit_thresholds`)."""
    check_type("thresholds", thresholds, (list, tuple))
    if len(thresholds) != model.config.n_layers:
        raise ValueError(f"thresholds must have n_layers = {model.config.n_layers} entries, got {len(thresholds)}")
    return _as_conditional(
        model, threshold=[check_float(f"thresholds[{i}]", t, min=0) for i, t in enumerate(thresholds)]
    )


# --------------------------------------------------------------------------- the sparse decode kernel


def _hidden(mlp: nn.Module, x):
    """The activations that feed ``down_proj`` (SwiGLU has no ``hidden`` method; ConditionalMLP does)."""
    return mlp.hidden(x) if hasattr(mlp, "hidden") else F.silu(mlp.gate_proj(x)) * mlp.up_proj(x)


def _mlp_parts(mlp: nn.Module):
    check_type("mlp", mlp, SwiGLU, what="a SwiGLU or ConditionalMLP")
    act = getattr(mlp, "act", F.silu)
    input_relu = bool(getattr(mlp, "input_relu", False))
    t = float(getattr(mlp, "threshold", 0.0))
    return act, input_relu, t


@torch.no_grad()
def masked_mlp(mlp: nn.Module, x, mask) -> torch.Tensor:
    """The dense MLP with every hidden activation outside ``mask`` zeroed: the reference.

    x (..., C), mask (..., d_ff) or (d_ff,) bool -> (..., C). The layer's own threshold
    (CATS) applies as in its forward.
    """
    _mlp_parts(mlp)
    x = check_tensor("x", x, floating=True)
    mask = check_tensor("mask", mask, dtype=torch.bool)
    if mask.shape[-1] != mlp.down_proj.in_features:
        raise ValueError(f"mask must end in d_ff = {mlp.down_proj.in_features}, got shape {tuple(mask.shape)}")
    return mlp.down_proj(_hidden(mlp, x) * mask)


class SparseDecodeMLP:
    r"""One token's MLP computed from the active neurons only (decode, batch 1).

    The weights are laid out once, neuron-major, for gathering: :math:`W_{gu}` (d_ff, 2C)
    holds neuron :math:`j`'s gate row and up row side by side, :math:`W_{down}^\top`
    (d_ff, C) its down column as a row. For active indices :math:`S` (k of them):

    .. math::

        [g, u] = W_{gu}[S]\,x \;(k, 2), \qquad a = \sigma(g) \odot u, \qquad
        y = a^\top W_{down}^\top[S] = \textstyle\sum_{j \in S} a_j\, W_{down}[:, j]

    Two gathers copy the :math:`3kC` numbers into contiguous blocks, so both products run
    on contiguous memory. Work and bytes read scale with :math:`k`; the copy and a fixed
    cost per call (a handful of tensor operations, whatever :math:`k`) do not go away.
    ``forward(x, idx)`` takes the indices (Deja Vu: from a predictor);
    ``forward_thresholded(x)`` computes the gate densely, keeps :math:`|g| > t` and gathers
    only up and down (CATS's kernel). Both equal :func:`masked_mlp` to float tolerance.
    """

    def __init__(self, mlp: nn.Module):
        self.act, self.input_relu, self.t = _mlp_parts(mlp)
        gate, up, down = (mlp.gate_proj.weight.detach(), mlp.up_proj.weight.detach(), mlp.down_proj.weight.detach())
        self.d_ff, self.d_model = gate.shape
        self.w_gu = torch.stack([gate, up], dim=1).reshape(self.d_ff, 2 * self.d_model).contiguous()  # (d_ff, 2C)
        self.w_down_t = down.t().contiguous()  # (d_ff, C)
        self.w_gate = gate.contiguous()  # (d_ff, C), for the dense gate of forward_thresholded
        self.w_up = up.contiguous()  # (d_ff, C)

    def _x(self, x):
        x = check_tensor("x", x, rank=(1, 2), floating=True)
        if x.shape[-1] != self.d_model or (x.dim() == 2 and x.shape[0] != 1):
            raise ValueError(
                f"x must be one token, shape ({self.d_model},) or (1, {self.d_model}), got {tuple(x.shape)}"
            )
        x = x.reshape(-1)
        return F.relu(x) if self.input_relu else x

    #: gathers of at least this many numbers go into preallocated buffers: a fresh
    #: multi-MiB tensor per call costs page faults that can exceed the copy itself
    BUFFER_FROM = 1 << 16

    def _gather(self, w, idx, name):
        k = idx.shape[0]
        if k * w.shape[1] < self.BUFFER_FROM:
            return w.index_select(0, idx)
        buf = getattr(self, name, None)
        if buf is None:
            buf = torch.empty_like(w)
            setattr(self, name, buf)
        return torch.index_select(w, 0, idx, out=buf[:k])

    def _run(self, x, idx):  # the kernel itself, no checks: x (C,), idx (k,)
        k = idx.shape[0]
        gu = torch.mv(self._gather(self.w_gu, idx, "_buf_gu").view(2 * k, self.d_model), x).view(k, 2)  # gather 1
        g = self.act(gu[:, 0])
        if self.t > 0:
            g = g * (g.abs() > self.t)
        return (g * gu[:, 1]) @ self._gather(self.w_down_t, idx, "_buf_down")  # gather 2 -> (C,)

    @torch.no_grad()
    def forward(self, x, idx) -> torch.Tensor:
        """x (C,) or (1, C), idx (k,) long neuron indices -> y (C,)."""
        x = self._x(x)
        idx = check_tensor("idx", idx, rank=1, dtype=torch.long)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.d_ff):
            raise ValueError(f"idx must hold neuron indices in [0, {self.d_ff}), got {idx.min()}..{idx.max()}")
        return self._run(x, idx)

    @torch.no_grad()
    def forward_thresholded(self, x) -> torch.Tensor:
        """CATS decode: dense gate, then only the neurons with :math:`|g| > t`. x (C,) -> y (C,)."""
        x = self._x(x)
        g = self.act(self.w_gate @ x)  # (d_ff,)
        idx = (g.abs() > self.t).nonzero().reshape(-1)  # (k,)
        u = self._gather(self.w_up, idx, "_buf_up") @ x  # (k,)
        return (g[idx] * u) @ self._gather(self.w_down_t, idx, "_buf_down")

    __call__ = forward


def pruned_mlp(mlp: nn.Module, keep) -> SwiGLU:
    """Structured pruning (chapter 06): a smaller dense SwiGLU with only the neurons ``keep``.

    The same neurons for every token (static sparsity); built with
    :func:`course_lib.prune.shrink_linear`, so nothing is gathered at run time.
    """
    act, input_relu, _ = _mlp_parts(mlp)
    keep = check_tensor("keep", torch.as_tensor(keep), rank=1, floating=False)
    out = SwiGLU(d_model=mlp.gate_proj.in_features, d_ff=int(keep.numel()))
    out.gate_proj = shrink_linear(mlp.gate_proj, keep, dim=0)
    out.up_proj = shrink_linear(mlp.up_proj, keep, dim=0)
    out.down_proj = shrink_linear(mlp.down_proj, keep, dim=1)
    if act is not F.silu or input_relu:
        raise TypeError("pruned_mlp builds a SwiGLU: pass a SiLU MLP without input_relu")
    return out.eval()


def kernel_variants(mlp: nn.Module, sparsity: float, *, seed: int = 0) -> dict:
    """Callables for one decode token at ``sparsity``, to time side by side.

    ``dense``: the MLP as the patient runs it; ``sparse``: :class:`SparseDecodeMLP` on a
    random active set of ``round((1 - sparsity) · d_ff)`` neurons (which neurons does not
    change the cost); ``pruned``: a statically pruned SwiGLU of the same width. Returns
    ``{"dense": fn, "sparse": fn, "pruned": fn, "k": k}``; each fn takes no argument.
    """
    sparsity = check_sparsity(sparsity)
    check_int("seed", seed)
    d_ff, c = mlp.down_proj.in_features, mlp.down_proj.out_features
    k = max(1, round((1 - sparsity) * d_ff))
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(d_ff, generator=gen)[:k].sort().values
    x = torch.randn(1, c, generator=gen)
    kernel = SparseDecodeMLP(mlp)
    small = pruned_mlp(mlp, idx) if isinstance(mlp, SwiGLU) and getattr(mlp, "activation", "silu") == "silu" else None
    x1 = x[0]

    def dense():
        with torch.no_grad():
            return mlp(x)

    def sparse():
        with torch.no_grad():
            return kernel._run(x1, idx)

    out = {"dense": dense, "sparse": sparse, "k": k}
    if small is not None and not getattr(mlp, "input_relu", False):

        def pruned():
            with torch.no_grad():
                return small(x)

        out["pruned"] = pruned
    return out


def kernel_sweep(
    mlp: nn.Module, sparsities: Sequence[float], *, threads: int = 1, min_time: float = 0.3, seed: int = 0
) -> list[dict]:
    """Time :func:`kernel_variants` at every sparsity in **one** interleaved run.

    The dense MLP is one variant; the sparse kernel and the pruned MLP at each sparsity
    are the others, all timed round-robin (``measure.interleaved``), so a busy machine's
    drift is shared by every number of the sweep. Runs under ``threads`` torch threads
    (restored afterwards): one decode token is too little work to split across threads on a
    busy 2-core machine. One row per sparsity: ``sparsity``, ``k`` (active neurons),
    median microseconds ``dense_us`` (the same in every row), ``sparse_us``, ``pruned_us``,
    ``speedup`` (dense / sparse), ``pruned_speedup`` and the timing ``note``.
    """
    from course_lib import measure

    check_type("sparsities", sparsities, (list, tuple))
    if not sparsities:
        raise ValueError("sparsities must hold at least one sparsity in [0, 1)")
    for i, v in enumerate(sparsities):
        check_sparsity(v, f"sparsities[{i}]")
    threads = check_int("threads", threads, min=1)
    per = [kernel_variants(mlp, s, seed=seed) for s in sparsities]
    variants = {"dense": per[0]["dense"]}
    for s, v in zip(sparsities, per):
        variants[f"sparse {s}"] = v["sparse"]
        if "pruned" in v:
            variants[f"pruned {s}"] = v["pruned"]
    with measure.num_threads(threads):
        t = measure.interleaved(variants, min_time=min_time)
    dense = t["dense"].median
    rows = []
    for s, v in zip(sparsities, per):
        row = {"sparsity": s, "k": v["k"], "dense_us": dense * 1e6, "sparse_us": t[f"sparse {s}"].median * 1e6}
        row["speedup"] = dense / t[f"sparse {s}"].median
        if f"pruned {s}" in t:
            row["pruned_us"] = t[f"pruned {s}"].median * 1e6
            row["pruned_speedup"] = dense / t[f"pruned {s}"].median
        row["note"] = t.note()
        rows.append(row)
    return rows


def break_even(rows: Sequence[dict]) -> float | None:
    """The sparsity where the sparse kernel first matches the dense MLP (speedup 1), by linear
    interpolation between measured rows; 0.0 if it is never slower, None if never faster."""
    check_type("rows", rows, (list, tuple))
    pts = sorted((r["sparsity"], r["speedup"]) for r in rows)
    if not pts:
        raise ValueError("rows must hold at least one measured sparsity")
    if pts[0][1] >= 1:
        return 0.0
    for (s0, v0), (s1, v1) in zip(pts, pts[1:]):
        if v0 < 1 <= v1:
            return s0 + (1 - v0) * (s1 - s0) / (v1 - v0)
    return None


# --------------------------------------------------------------------------- Deja Vu


class SparsityPredictor(nn.Module):
    r"""Deja Vu's predictor for one layer: logits :math:`W_2 W_1 x` (C -> rank -> d_ff).

    Trained to say which neurons will be active for the MLP input :math:`x`; it costs
    :math:`r\,(C + d_{ff})` multiply-adds against the MLP's :math:`3\,C\,d_{ff}`.
    """

    def __init__(self, d_model: int, d_ff: int, rank: int = 16):
        super().__init__()
        check_int("d_model", d_model, min=1)
        check_int("d_ff", d_ff, min=1)
        check_int("rank", rank, min=1)
        self.down = nn.Linear(d_model, rank, bias=False)
        self.up = nn.Linear(rank, d_ff, bias=True)

    def forward(self, x):  # (..., C) -> (..., d_ff) logits
        return self.up(self.down(x))

    @torch.no_grad()
    def predict(self, x, *, budget: float | None = None):
        """Boolean (..., d_ff): logit > 0, or the top ``budget`` fraction of neurons per token."""
        logits = self(x)
        if budget is None:
            return logits > 0
        budget = check_float("budget", budget, min=0, max=1, min_inclusive=False)
        k = max(1, round(budget * logits.shape[-1]))
        top = logits.topk(k, dim=-1).indices
        return torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, top, True)


def active_mask(mlp: nn.Module, x) -> torch.Tensor:
    """Which neurons are truly active (hidden activation :math:`\\ne 0`) for inputs x (..., C)."""
    _mlp_parts(mlp)
    x = check_tensor("x", x, floating=True)
    with torch.no_grad():
        return _hidden(mlp, x) != 0


def train_predictor(
    x, active, *, rank: int = 16, steps: int = 300, lr: float = 1e-2, seed: int = 0, pos_weight: float = 1.0
) -> SparsityPredictor:
    """Fit a :class:`SparsityPredictor` to (inputs x (N, C), active (N, d_ff) bool), full batch.

    Binary cross-entropy per neuron; ``pos_weight`` > 1 trades precision for recall (a
    missed active neuron costs quality, a false alarm only time).
    """
    x = check_tensor("x", x, rank=2, floating=True)
    active = check_tensor("active", active, rank=2, dtype=torch.bool)
    if active.shape[0] != x.shape[0]:
        raise ValueError(f"active must have one row per input ({x.shape[0]}), got {active.shape[0]}")
    steps = check_int("steps", steps, min=1)
    lr = check_float("lr", lr, min=0, min_inclusive=False)
    pos_weight = check_float("pos_weight", pos_weight, min=0, min_inclusive=False)
    check_int("seed", seed)
    torch.manual_seed(seed)
    pred = SparsityPredictor(x.shape[1], active.shape[1], rank)
    opt = torch.optim.Adam(pred.parameters(), lr=lr)
    y = active.float()
    pw = torch.tensor(pos_weight)
    with torch.enable_grad():
        for _ in range(steps):
            loss = F.binary_cross_entropy_with_logits(pred(x), y, pos_weight=pw)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return pred.eval()


def predictor_recall(predicted, active) -> dict:
    """Recall (truly active neurons that were predicted), and the predicted fraction of neurons."""
    predicted = check_tensor("predicted", predicted, dtype=torch.bool)
    active = check_tensor("active", active, dtype=torch.bool)
    if predicted.shape != active.shape:
        raise ValueError(
            f"predicted and active must have one shape, got {tuple(predicted.shape)} and {tuple(active.shape)}"
        )
    hit = (predicted & active).sum().item()
    return {
        "recall": hit / max(1, active.sum().item()),
        "predicted": predicted.float().mean().item(),
        "active": active.float().mean().item(),
    }


class PredictedMLP(nn.Module):
    """An MLP that runs only the neurons its predictor picks (others are zero): the quality cost."""

    def __init__(self, mlp: nn.Module, predictor: SparsityPredictor, *, budget: float | None = None):
        super().__init__()
        _mlp_parts(mlp)
        self.mlp = mlp
        self.predictor = check_type("predictor", predictor, SparsityPredictor)
        self.budget = None if budget is None else check_float("budget", budget, min=0, max=1, min_inclusive=False)
        self.down_proj = mlp.down_proj  # so activation statistics still find the hidden layer

    def forward(self, x):  # (..., C)
        mask = self.predictor.predict(x, budget=self.budget)
        return self.down_proj(_hidden(self.mlp, x) * mask)


def with_predictors(model: TinyLM, predictors: Sequence[SparsityPredictor], *, budget: float | None = None) -> TinyLM:
    """A copy of ``model`` whose every MLP runs on its predictor's neurons only."""
    mlps = _mlps(model)
    check_type("predictors", predictors, (list, tuple))
    if len(predictors) != len(mlps):
        raise ValueError(f"predictors must have one per layer ({len(mlps)}), got {len(predictors)}")
    new = copy.deepcopy(model)
    for blk, p in zip(new.blocks, predictors):
        blk.mlp = PredictedMLP(blk.mlp, p, budget=budget)
    return new.eval()
