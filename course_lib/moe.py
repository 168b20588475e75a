r"""Mixture of experts (chapter 02): router, load balance, capacity, dispatch, and ``MoEMLP``.

A mixture-of-experts (MoE) layer replaces one MLP by ``E`` expert MLPs and a **router**
that sends each token to ``k`` of them. Parameters grow with ``E``; the FLOPs a token
costs grow only with ``k``. The pieces, each a small function here:

* **router** (:func:`top_k_route`): logits :math:`z = W_r x` (``E`` numbers per token),
  probabilities :math:`p = \mathrm{softmax}(z)`, the ``k`` largest kept; their weights
  renormalised to sum to 1 (Mixtral) — the same as a softmax over the kept logits. With
  ``noisy`` routing (Shazeer et al. 2017, :func:`noisy_logits`) training adds
  :math:`\epsilon \cdot \mathrm{softplus}(W_n x)`, :math:`\epsilon \sim N(0, 1)`.
* **load-balancing loss** (:func:`load_balancing_loss`, Switch Transformer):
  :math:`L_{bal} = E \sum_i f_i P_i`, where :math:`f_i` is the fraction of the
  :math:`N k` assignments that went to expert ``i`` and :math:`P_i` the mean router
  probability of ``i``. It is 1 when the load is uniform and grows to ``E`` as it collapses.
* **router z-loss** (:func:`router_z_loss`, ST-MoE): :math:`L_z = \frac1N \sum_t
  (\log \sum_j e^{z_{tj}})^2` keeps the logits small, which keeps training stable.
* **capacity** (:func:`expert_capacity`, :func:`capacity_keep`): an expert takes at most
  :math:`C = \lceil c \cdot N k / E \rceil` assignments (``c`` = capacity factor); the rest
  are **dropped** (the token keeps only its residual) — first choices before second choices.
* **dispatch**: three implementations with identical outputs — :func:`dispatch_naive`
  (a Python loop over tokens, for teaching), :func:`dispatch_grouped` (assignments sorted
  by expert, one matmul per expert on a contiguous block, scattered back with the gate
  weights) and :func:`dispatch_batched` (a capacity-padded ``(E, C, D)`` buffer and one
  batched matmul, the static-shape form GShard and Switch use).

:class:`MoEMLP` puts them together as a drop-in for the patient's MLP:
``ModelConfig(mlp="moe", mlp_options={...})`` builds a ``TinyLM`` with MoE layers (see
:class:`MoEOptions` for the options). It sets ``self.aux_loss`` (added by
``course_lib.train``), defines ``inactive_params()`` (so ``num_params(active=True)`` and
``flops_per_token`` count only the ``k`` experts a token uses) and keeps cheap running
**router statistics** (assignments per expert and per position, drops) that
:class:`RouterRecorder` reads as a training callback.

The chapter's runs (dense vs MoE patients, their router statistics and figures, the
expert-parallel demo) are in :mod:`course_lib.experiments.moe`::

    python -m course_lib.build moe [--jobs 3]               # train the runs -> zoo_data/moe_runs.json
    python -m course_lib.build moe --expert-parallel-demo   # 2 processes, gloo all_to_all, == 1 process

References: Shazeer et al. 2017 (arXiv:1701.06538), Lepikhin et al. 2020 GShard
(arXiv:2006.16668), Fedus et al. 2021 Switch Transformer (arXiv:2101.03961), Zoph et al.
2022 ST-MoE (arXiv:2202.08906), Jiang et al. 2024 Mixtral (arXiv:2401.04088).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields, replace

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from course_lib.checks import (
    ArgumentTypeError,
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_keys,
    check_tensor,
    check_type,
    show,
)
from course_lib.data import eval_batches
from course_lib.model import ModelConfig, SwiGLU

#: capacity factors for which the router statistics count the drops they *would* cause
CAPACITY_PROBES = (1.0, 1.25, 2.0)
DISPATCH_KINDS = ("grouped", "batched", "naive")
LAYER_SETS = ("all", "even", "odd")

# --------------------------------------------------------------------------- options


@dataclass
class MoEOptions:
    """Settings of the MoE layers, read from ``ModelConfig.mlp_options``.

    ``d_expert`` is each expert's hidden width (default: the config's ``d_ff``); ``layers``
    says which blocks get an MoE MLP (``"all"``, ``"even"``, ``"odd"`` or a list of layer
    indices; the others keep a dense SwiGLU). ``capacity_factor=None`` never drops a token.
    ``normalize=None`` renormalises the top-k weights when ``top_k > 1`` and keeps the raw
    probability for ``top_k = 1`` (Switch): renormalising a single weight would make it
    always 1 and cut the router off from the language-model loss.
    """

    n_experts: int = 8
    top_k: int = 2
    d_expert: int | None = None
    capacity_factor: float | None = None
    aux_loss_coef: float = 0.01
    z_loss_coef: float = 0.001
    noisy: bool = False
    normalize: bool | None = None
    layers: str | list = "all"
    dispatch: str = "grouped"

    @classmethod
    def from_dict(cls, options: dict | None) -> MoEOptions:
        """From ``ModelConfig.mlp_options``: unknown keys are refused with the allowed ones listed."""
        return cls(**check_keys("mlp_options for mlp='moe'", options or {}, [f.name for f in fields(cls)]))

    def __post_init__(self):
        check_int("n_experts", self.n_experts, min=1)
        check_int("top_k", self.top_k, min=1, max=self.n_experts)
        check_int("d_expert", self.d_expert, min=1, allow_none=True)
        check_float("capacity_factor", self.capacity_factor, min=0, min_inclusive=False, allow_none=True)
        check_float("aux_loss_coef", self.aux_loss_coef, min=0)
        check_float("z_loss_coef", self.z_loss_coef, min=0)
        check_bool("noisy", self.noisy)
        check_bool("normalize", self.normalize, allow_none=True)
        check_choice("dispatch", self.dispatch, DISPATCH_KINDS)
        if isinstance(self.layers, str):
            check_choice("layers", self.layers, LAYER_SETS)
        elif isinstance(self.layers, (list, tuple)):
            for i, idx in enumerate(self.layers):
                check_int(f"layers[{i}]", idx, min=0)
        else:
            raise ArgumentTypeError(
                f"layers must be one of {list(LAYER_SETS)} or a list of layer indices, got {show(self.layers)}"
            )

    @property
    def renormalize(self) -> bool:
        return self.top_k > 1 if self.normalize is None else self.normalize

    def check_layers(self, n_layers: int) -> None:
        """Raise a ValueError when ``layers`` names a layer a model of ``n_layers`` does not have."""
        bad = [] if isinstance(self.layers, str) else [i for i in self.layers if i >= n_layers]
        if bad:
            raise ValueError(f"layers {bad} do not exist in a model with n_layers = {n_layers}")

    def is_moe_layer(self, layer_idx: int, n_layers: int) -> bool:
        """Does block ``layer_idx`` of ``n_layers`` get an MoE MLP (else a dense SwiGLU)?"""
        self.check_layers(n_layers)
        if isinstance(self.layers, str):
            return {"all": True, "even": layer_idx % 2 == 0, "odd": layer_idx % 2 == 1}[self.layers]
        return layer_idx in self.layers


def moe_options(config: ModelConfig) -> MoEOptions:
    """The validated :class:`MoEOptions` of ``config``: known keys, valid values, layers that exist.

    ``ModelConfig(mlp="moe", mlp_options=...)`` calls this when the config is made (it is the
    registered factory's ``check_config``), so a typo fails at the line that made it.
    """
    check_type("config", config, ModelConfig)
    options = MoEOptions.from_dict(config.mlp_options)
    options.check_layers(config.n_layers)
    return options


def moe_config(config: ModelConfig, **options) -> ModelConfig:
    """A copy of ``config`` with MoE MLPs: ``moe_config(cfg, n_experts=8, top_k=2)``, validated now."""
    check_type("config", config, ModelConfig)
    return replace(config, mlp="moe", mlp_options=dict(options))


# --------------------------------------------------------------------------- routing


@dataclass
class Routing:
    """Where each of N tokens goes: ``experts`` and ``weights`` (N, k); ``keep`` marks the
    assignments within capacity; ``probs`` (N, E) the full router distribution."""

    logits: torch.Tensor
    probs: torch.Tensor
    weights: torch.Tensor
    experts: torch.Tensor
    keep: torch.Tensor
    capacity: int | None = None

    @property
    def n_dropped(self) -> int:
        return int((~self.keep).sum())

    @property
    def drop_rate(self) -> float:
        """Fraction of the N·k assignments dropped for lack of capacity."""
        return self.n_dropped / self.keep.numel() if self.keep.numel() else 0.0


def top_k_route(logits: torch.Tensor, top_k: int, *, normalize: bool | None = None):
    r"""(weights, experts, probs) for router ``logits`` (N, E).

    :math:`p = \mathrm{softmax}(z)` in float32; ``experts`` are the ``top_k`` largest
    (distinct, descending); ``weights`` their probabilities, divided by their sum when
    ``normalize`` (default: when ``top_k > 1``).
    """
    check_tensor("logits", logits, dims=("tokens", "n_experts"))
    n_experts = logits.shape[-1]
    check_int("top_k", top_k, min=1, max=n_experts)
    normalize = top_k > 1 if normalize is None else normalize
    probs = logits.float().softmax(dim=-1)  # (N, E)
    weights, experts = probs.topk(top_k, dim=-1)  # (N, k) each
    if normalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights.to(logits.dtype), experts, probs


def noisy_logits(x: torch.Tensor, router: nn.Linear, noise: nn.Linear, *, generator=None) -> torch.Tensor:
    r"""Noisy top-k gating (Shazeer et al. 2017): :math:`W_r x + \epsilon \cdot \mathrm{softplus}(W_n x)`."""
    clean = router(x)  # (N, E)
    std = F.softplus(noise(x))
    eps = torch.randn(clean.shape, generator=generator, device=clean.device, dtype=clean.dtype)
    return clean + eps * std


def load_balancing_loss(probs: torch.Tensor, experts: torch.Tensor, n_experts: int) -> torch.Tensor:
    r"""Switch Transformer's auxiliary loss :math:`E \sum_i f_i P_i`.

    :math:`f_i` = share of the N·k assignments (``experts``, (N, k)) that chose expert i
    (not differentiable: it counts), :math:`P_i` = mean of ``probs`` (N, E) over tokens
    (differentiable: pushing it down for crowded experts moves tokens away). Equals 1 for a
    uniform router and ``E`` when every token goes to one expert. ``transformers``' Mixtral
    ``load_balancing_loss_func`` counts f over tokens instead of assignments: ``k`` times this.
    """
    f = torch.bincount(experts.reshape(-1), minlength=n_experts).to(probs.dtype) / experts.numel()  # (E,)
    p = probs.mean(dim=0)  # (E,)
    return n_experts * (f * p).sum()


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    r"""ST-MoE's router z-loss :math:`\frac1N\sum_t (\log\sum_j e^{z_{tj}})^2` for logits (N, E)."""
    return torch.logsumexp(logits.float(), dim=-1).pow(2).mean()


def expert_capacity(n_tokens: int, n_experts: int, top_k: int, capacity_factor: float) -> int:
    r"""Assignments one expert may take: :math:`C = \lceil c \cdot N k / E \rceil`."""
    check_int("n_tokens", n_tokens, min=0)
    check_int("n_experts", n_experts, min=1)
    check_int("top_k", top_k, min=1, max=n_experts)
    check_float("capacity_factor", capacity_factor, min=0, min_inclusive=False)
    return math.ceil(capacity_factor * n_tokens * top_k / n_experts)


def capacity_keep(experts: torch.Tensor, n_experts: int, capacity: int) -> torch.Tensor:
    """Boolean (N, k): True where the assignment fits in its expert's ``capacity``.

    Assignments queue at their expert in priority order — every token's first choice
    (in token order), then every second choice, ... (GShard) — and the first ``capacity``
    in each queue are kept.
    """
    n, k = experts.shape
    order = experts.t().reshape(-1)  # (k·N,): choice-major priority order
    onehot = F.one_hot(order, n_experts)  # (k·N, E)
    position = (onehot.cumsum(dim=0) * onehot).sum(dim=-1) - 1  # place in its expert's queue
    return (position < capacity).view(k, n).t()


def route(
    logits: torch.Tensor,
    *,
    top_k: int,
    capacity_factor: float | None = None,
    normalize: bool | None = None,
) -> Routing:
    """Top-k routing plus capacity: everything dispatch needs, for logits (N, E)."""
    weights, experts, probs = top_k_route(logits, top_k, normalize=normalize)
    n, n_experts = logits.shape
    if capacity_factor is None:
        keep, capacity = torch.ones_like(experts, dtype=torch.bool), None
    else:
        capacity = expert_capacity(n, n_experts, top_k, capacity_factor)
        keep = capacity_keep(experts, n_experts, capacity)
    return Routing(logits, probs, weights, experts, keep, capacity)


# --------------------------------------------------------------------------- experts


class ExpertLinear(nn.Module):
    """``n_experts`` weight matrices in one tensor (E, out, in): expert e computes ``x @ W[e].T``.

    ``in_features · out_features`` equals the number of weights (``out_features`` is
    ``n_experts · out``), which is what ``TinyLM.flops_per_token`` counts; the MoE layer
    then subtracts the experts a token does not use through ``inactive_params``.
    """

    def __init__(self, n_experts: int, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_experts, out_features, in_features))
        self.in_features, self.out_features = in_features, n_experts * out_features
        nn.init.normal_(self.weight, std=0.02)


class Experts(nn.Module):
    r"""``E`` SwiGLU experts, weights stacked like ``transformers``' Mixtral experts:
    expert e: :math:`W^{down}_e(\mathrm{SiLU}(W^{gate}_e h) \odot W^{up}_e h)`."""

    def __init__(self, n_experts: int, d_model: int, d_expert: int):
        super().__init__()
        self.n_experts, self.d_model, self.d_expert = n_experts, d_model, d_expert
        self.gate_proj = ExpertLinear(n_experts, d_model, d_expert)  # weight (E, F, D)
        self.up_proj = ExpertLinear(n_experts, d_model, d_expert)  # (E, F, D)
        self.down_proj = ExpertLinear(n_experts, d_expert, d_model)  # (E, D, F)

    def params_per_expert(self) -> int:
        return 3 * self.d_model * self.d_expert

    def one(self, e: int, h: torch.Tensor) -> torch.Tensor:
        """Expert ``e`` on rows h (M, D) -> (M, D)."""
        g, u, d = self.gate_proj.weight[e], self.up_proj.weight[e], self.down_proj.weight[e]
        return (F.silu(h @ g.t()) * (h @ u.t())) @ d.t()

    def grouped(self, blocks: list[torch.Tensor]) -> list[torch.Tensor]:
        """Expert e on ``blocks[e]`` (M_e, D) for every e, one matmul per weight and expert.

        The stacked weights are split once with ``unbind`` (indexing ``W[e]`` per expert
        would allocate a full-size gradient for every slice in the backward pass).
        """
        gs, us, ds = (lin.weight.unbind(0) for lin in (self.gate_proj, self.up_proj, self.down_proj))
        return [(F.silu(b @ g.t()) * (b @ u.t())) @ d.t() for b, g, u, d in zip(blocks, gs, us, ds)]

    def batched(self, buf: torch.Tensor) -> torch.Tensor:
        """Every expert on its own slab: buf (E, C, D) -> (E, C, D), three batched matmuls."""
        g = torch.bmm(buf, self.gate_proj.weight.transpose(1, 2))  # (E, C, F)
        u = torch.bmm(buf, self.up_proj.weight.transpose(1, 2))
        return torch.bmm(F.silu(g) * u, self.down_proj.weight.transpose(1, 2))  # (E, C, D)


# --------------------------------------------------------------------------- dispatch


def dispatch_naive(x: torch.Tensor, routing: Routing, experts: Experts) -> torch.Tensor:
    r"""For teaching: every token, every kept choice, one expert call. :math:`y_t = \sum_j w_{tj} E_{e_{tj}}(x_t)`."""
    idx, w, keep = routing.experts.tolist(), routing.weights, routing.keep.tolist()
    rows = []
    for t in range(x.shape[0]):
        y_t = x.new_zeros(x.shape[1])
        for j, e in enumerate(idx[t]):
            if keep[t][j]:
                y_t = y_t + w[t, j] * experts.one(e, x[t : t + 1])[0]
        rows.append(y_t)
    return torch.stack(rows) if rows else x.new_zeros(x.shape)


def sort_by_expert(routing: Routing):
    """The kept assignments sorted by expert: (token, expert, gate weight), each (M,), M <= N·k.

    Sorting is what turns scattered routing decisions into one contiguous block of rows per
    expert; ``torch.bincount(expert)`` gives the block sizes.
    """
    n, k = routing.experts.shape
    token = torch.arange(n * k, device=routing.experts.device) // k  # (N·k,) token of each assignment
    expert, weight = routing.experts.reshape(-1), routing.weights.reshape(-1)
    if not bool(routing.keep.all()):  # drop what did not fit
        keep = routing.keep.reshape(-1)
        token, expert, weight = token[keep], expert[keep], weight[keep]
    order = torch.argsort(expert, stable=True)  # group by expert, token order within
    return token[order], expert[order], weight[order]


def dispatch_grouped(x: torch.Tensor, routing: Routing, experts: Experts) -> torch.Tensor:
    """Sort assignments by expert, gather rows, one matmul per expert, scatter back weighted."""
    token, expert, weight = sort_by_expert(routing)
    counts = torch.bincount(expert, minlength=experts.n_experts).tolist()
    xs = x[token]  # (M, D), contiguous block per expert
    ys = torch.cat(experts.grouped(list(xs.split(counts))))  # (M, D)
    return x.new_zeros(x.shape).index_add(0, token, ys * weight[:, None].to(ys.dtype))


def dispatch_batched(x: torch.Tensor, routing: Routing, experts: Experts) -> torch.Tensor:
    """Capacity-padded: scatter rows into an (E, C, D) buffer, one bmm per weight, gather back.

    ``C`` is the capacity (or the busiest expert's load when there is none); empty slots
    are computed too — the price of static shapes, and why a balanced load matters here.
    """
    token, expert, weight = sort_by_expert(routing)
    counts = torch.bincount(expert, minlength=experts.n_experts)
    start = torch.cumsum(counts, 0) - counts  # (E,) first sorted index of each expert
    slot = torch.arange(len(expert), device=x.device) - start[expert]  # place in the expert's slab
    cap = routing.capacity if routing.capacity is not None else int(counts.max()) if len(expert) else 0
    buf = x.new_zeros(experts.n_experts, cap, x.shape[1]).index_put((expert, slot), x[token])  # (E, C, D)
    ys = experts.batched(buf)[expert, slot]  # (M, D)
    return x.new_zeros(x.shape).index_add(0, token, ys * weight[:, None].to(ys.dtype))


DISPATCH: dict[str, Callable] = {"naive": dispatch_naive, "grouped": dispatch_grouped, "batched": dispatch_batched}


# --------------------------------------------------------------------------- the layer


class MoEMLP(nn.Module):
    """A mixture-of-experts MLP, a drop-in for the patient's SwiGLU (``ModelConfig(mlp="moe")``).

    ``TinyLM`` builds it through :func:`moe_mlp`, the factory registered for ``mlp="moe"``,
    which gives the layers that ``layers`` leaves dense a plain
    :class:`~course_lib.model.SwiGLU` of width ``config.d_ff``; ``MoEMLP(config, layer_idx)``
    itself always builds an MoE layer. Options come from ``config.mlp_options``
    (:class:`MoEOptions`).

    After each forward: ``aux_loss`` (coefficient-weighted balance + z-loss, a tensor, in
    training mode; None in eval mode),
    ``last`` (the :class:`Routing`, detached) and ``drop_rate``. In training mode the
    buffers ``load`` (E,), ``pos_load`` (max_seq_len, E), ``would_drop`` (one count per
    :data:`CAPACITY_PROBES`), ``dropped``, ``assignments``, ``z_sum`` accumulate until
    :meth:`reset_stats` — a bincount per step, cheap next to the matmuls.
    """

    def __init__(self, config: ModelConfig, layer_idx: int = 0):
        super().__init__()
        opts = moe_options(config)
        self.options, self.layer_idx, self.d_model = opts, layer_idx, config.d_model
        self.n_experts, self.top_k = opts.n_experts, opts.top_k
        self.capacity_factor, self.dispatch = opts.capacity_factor, opts.dispatch
        self.router = nn.Linear(config.d_model, opts.n_experts, bias=False)
        self.noise = nn.Linear(config.d_model, opts.n_experts, bias=False) if opts.noisy else None
        self.experts = Experts(opts.n_experts, config.d_model, opts.d_expert or config.d_ff)
        for m in (self.router, self.noise):
            if m is not None:
                nn.init.normal_(m.weight, std=0.02)
        e = opts.n_experts
        self.register_buffer("load", torch.zeros(e, dtype=torch.long), persistent=False)
        self.register_buffer("pos_load", torch.zeros(config.max_seq_len, e, dtype=torch.long), persistent=False)
        self.register_buffer("would_drop", torch.zeros(len(CAPACITY_PROBES), dtype=torch.long), persistent=False)
        self.register_buffer("dropped", torch.zeros((), dtype=torch.long), persistent=False)
        self.register_buffer("assignments", torch.zeros((), dtype=torch.long), persistent=False)
        self.register_buffer("z_sum", torch.zeros((), dtype=torch.float64), persistent=False)
        self.aux_loss: torch.Tensor | None = None
        self.last: Routing | None = None
        self.generator: torch.Generator | None = None  # for the routing noise; None = global RNG

    def extra_repr(self) -> str:
        o = self.options
        return (
            f"n_experts={o.n_experts}, top_k={o.top_k}, d_expert={self.experts.d_expert}, "
            f"capacity_factor={self.capacity_factor}, dispatch={self.dispatch!r}"
        )

    def inactive_params(self) -> int:
        """Weights one token does not use: ``E - k`` experts (and the noise projection, train-only)."""
        noise = self.noise.weight.numel() if self.noise is not None else 0
        return (self.n_experts - self.top_k) * self.experts.params_per_expert() + noise

    @property
    def drop_rate(self) -> float:
        return self.last.drop_rate if self.last is not None else 0.0

    def router_logits(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, D) -> logits (N, E); noisy in training when the layer is noisy."""
        if self.noise is not None and self.training:
            return noisy_logits(x, self.router, self.noise, generator=self.generator)
        return self.router(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C) or (N, C) -> same shape
        if x.shape[-1] != self.d_model:
            raise ValueError(f"MoEMLP expects hidden size {self.d_model}, got input of shape {tuple(x.shape)}")
        # the attributes may have been changed since construction (the chapter sweeps them)
        check_choice("dispatch", self.dispatch, DISPATCH)
        check_float("capacity_factor", self.capacity_factor, min=0, min_inclusive=False, allow_none=True)
        flat = x.reshape(-1, self.d_model)  # (N, C)
        logits = self.router_logits(flat)  # (N, E)
        r = route(logits, top_k=self.top_k, capacity_factor=self.capacity_factor, normalize=self.options.normalize)
        y = DISPATCH[self.dispatch](flat, r, self.experts)
        o = self.options
        aux = None
        if self.training and (o.aux_loss_coef > 0 or o.z_loss_coef > 0):
            aux = o.aux_loss_coef * load_balancing_loss(r.probs, r.experts, self.n_experts)
            aux = aux + o.z_loss_coef * router_z_loss(logits)
        self.aux_loss = aux
        self.last = Routing(*(t.detach() for t in (r.logits, r.probs, r.weights, r.experts, r.keep)), r.capacity)
        if self.training:
            self._accumulate(r, x.shape[-2] if x.dim() == 3 else None)
        return y.view(x.shape)

    @torch.no_grad()
    def _accumulate(self, r: Routing, seq_len: int | None) -> None:
        n, k = r.experts.shape
        counts = torch.bincount(r.experts.reshape(-1), minlength=self.n_experts)  # (E,)
        self.load += counts
        for i, c in enumerate(CAPACITY_PROBES):
            self.would_drop[i] += (counts - expert_capacity(n, self.n_experts, k, c)).clamp(min=0).sum()
        self.dropped += (~r.keep).sum()
        self.assignments += n * k
        self.z_sum += torch.logsumexp(r.logits.double(), dim=-1).pow(2).sum()
        if seq_len is not None and seq_len <= self.pos_load.shape[0]:
            pos = torch.arange(n, device=r.experts.device) % seq_len  # (N,) position in its sequence
            flat = (pos[:, None] * self.n_experts + r.experts).reshape(-1)
            self.pos_load.view(-1).index_add_(0, flat, torch.ones_like(flat))

    def reset_stats(self, *, positions: bool = True) -> None:
        for name in ("load", "would_drop", "dropped", "assignments", "z_sum") + (("pos_load",) if positions else ()):
            getattr(self, name).zero_()


def moe_mlp(config: ModelConfig, layer_idx: int = 0) -> nn.Module:
    """The factory registered as ``mlp="moe"``: an :class:`MoEMLP` in the blocks that the
    ``layers`` option names, the dense :class:`~course_lib.model.SwiGLU` (width ``config.d_ff``)
    in the others."""
    if moe_options(config).is_moe_layer(check_int("layer_idx", layer_idx, min=0), config.n_layers):
        return MoEMLP(config, layer_idx)
    return SwiGLU(config, layer_idx)


#: ModelConfig calls this when a config with ``mlp="moe"`` is made (the plug-in contract, model.py)
moe_mlp.check_config = moe_options


def moe_layers(model: nn.Module) -> list[MoEMLP]:
    """The MoE layers of a model, in order."""
    return [m for m in model.modules() if isinstance(m, MoEMLP)]


def coefficient_of_variation(fractions) -> float:
    r"""Load imbalance :math:`\sigma(f)/\mu(f)` over experts (0 = perfectly even)."""
    f = torch.as_tensor(fractions, dtype=torch.float64)
    if f.numel() < 1 or f.sum() <= 0:
        raise ValueError("fractions must be a non-empty vector with a positive sum")
    f = f / f.sum()
    return float(f.std(unbiased=False) / f.mean())


class RouterRecorder:
    """Training callback: every ``every`` steps, snapshot and reset each MoE layer's counters.

    ``train(model, ..., callback=RouterRecorder(model, every=10))``. Afterwards ``steps``
    (S,), ``fractions`` (S, L, E): token share per expert and layer over each window,
    ``would_drop`` (S, L, len(CAPACITY_PROBES)), ``drop_rate`` (S, L) (actual drops),
    ``z`` (S, L) mean squared log-sum-exp of the router logits, and :meth:`positions`
    (L, T, E) over the whole run.
    """

    def __init__(self, model: nn.Module, *, every: int = 10):
        self.every = check_int("every", every, min=1)
        self.layers = moe_layers(model)
        if not self.layers:
            raise ValueError("model has no MoE layers (build it with ModelConfig(mlp='moe'))")
        for m in self.layers:
            m.reset_stats()
        self.steps: list[int] = []
        self.fractions: list[list[list[float]]] = []
        self.would_drop: list[list[list[float]]] = []
        self.drop_rate: list[list[float]] = []
        self.z: list[list[float]] = []

    def __call__(self, step: int, model=None, loss=None) -> None:
        if (step + 1) % self.every:
            return
        fr, wd, dr, z = [], [], [], []
        for m in self.layers:
            a = max(int(m.assignments), 1)
            fr.append((m.load.double() / a).tolist())
            wd.append((m.would_drop.double() / a).tolist())
            dr.append(int(m.dropped) / a)
            z.append(float(m.z_sum) / (a / m.top_k))
            m.reset_stats(positions=False)
        self.steps.append(step)
        self.fractions.append(fr)
        self.would_drop.append(wd)
        self.drop_rate.append(dr)
        self.z.append(z)

    def positions(self) -> torch.Tensor:
        """(L, T, E): share of each position's assignments per expert, over the whole run."""
        p = torch.stack([m.pos_load.double() for m in self.layers])
        return p / p.sum(-1, keepdim=True).clamp(min=1)

    def cv(self) -> list[list[float]]:
        """(S, L) coefficient of variation of the expert load per snapshot and layer."""
        return [[coefficient_of_variation(f) for f in snap] for snap in self.fractions]


# --------------------------------------------------------------------------- router analysis


@torch.no_grad()
def token_routing(model: nn.Module, ids: list[int]) -> list[list[list[int]]]:
    """Experts chosen for each token of ``ids``: (L, T, k) lists, from one eval forward."""
    model.eval()
    model(torch.tensor([ids], device=next(model.parameters()).device))
    return [m.last.experts.tolist() for m in moe_layers(model)]


@torch.no_grad()
def routing_profile(model: nn.Module, tokens, *, seq_len: int = 128, batch_size: int = 16, max_batches: int = 8):
    """On held-out ``tokens``: load share per expert (L, E), drop rates at the probe capacity
    factors (L, P), and token-identity *purity* per layer — the share of tokens whose top-1
    expert is that token id's most common one (1 = routing decided by the token alone) —
    next to the purity of the same assignments shuffled across tokens (rare token ids are
    "pure" by chance; the gap is what the token id explains)."""
    model.eval()
    layers = moe_layers(model)
    loads = [torch.zeros(m.n_experts, dtype=torch.long) for m in layers]
    drops = [torch.zeros(len(CAPACITY_PROBES)) for _ in layers]
    firsts = [[] for _ in layers]
    ids = []
    n_batches = 0
    for x, _ in eval_batches(tokens, batch_size, seq_len, max_batches=max_batches):
        model(x.to(next(model.parameters()).device))
        ids.append(x.reshape(-1))
        n_batches += 1
        for i, m in enumerate(layers):
            e = m.last.experts.cpu()
            counts = torch.bincount(e.reshape(-1), minlength=m.n_experts)
            loads[i] += counts
            n, k = e.shape
            for j, c in enumerate(CAPACITY_PROBES):
                drops[i][j] += float((counts - expert_capacity(n, m.n_experts, k, c)).clamp(min=0).sum()) / (n * k)
            firsts[i].append(e[:, 0])
    ids = torch.cat(ids)

    def purity(first: torch.Tensor, n_experts: int) -> float:
        table = torch.zeros(int(ids.max()) + 1, n_experts, dtype=torch.long)
        table.index_put_((ids, first), torch.ones_like(ids), accumulate=True)
        return float(table.max(dim=1).values.sum()) / len(ids)

    pure, shuffled = [], []
    for i, m in enumerate(layers):
        first = torch.cat(firsts[i])
        pure.append(purity(first, m.n_experts))
        # the same loads, assigned at random: the purity that token frequencies alone produce
        perm = torch.randperm(len(first), generator=torch.Generator().manual_seed(i))
        shuffled.append(purity(first[perm], m.n_experts))
    return {
        "fractions": [(lo.double() / lo.sum()).tolist() for lo in loads],
        "would_drop": [(d / n_batches).tolist() for d in drops],
        "token_purity": pure,
        "token_purity_shuffled": shuffled,
    }


@torch.no_grad()
def capacity_sweep(
    model: nn.Module,
    tokens,
    factors=(None, 2.0, 1.25, 1.0, 0.5, 0.25),
    *,
    seq_len: int = 128,
    batch_size: int = 16,
    max_batches: int = 8,
) -> list[dict]:
    """Validation loss and dropped share of assignments when every MoE layer of ``model``
    uses each capacity factor in turn (None = no limit); the layers' setting is restored."""
    layers = moe_layers(model)
    if not layers:
        raise ValueError("model has no MoE layers")
    saved = [m.capacity_factor for m in layers]
    device = next(model.parameters()).device
    model.eval()
    rows = []
    try:
        for i, c in enumerate(factors):
            check_float(f"factors[{i}]", c, min=0, min_inclusive=False, allow_none=True)
            for m in layers:
                m.capacity_factor = c
            losses, drops = [], []
            for x, y in eval_batches(tokens, batch_size, seq_len, max_batches=max_batches):
                losses.append(model.loss(x.to(device), y.to(device)).item())
                drops.append(sum(m.drop_rate for m in layers) / len(layers))
            rows.append(
                {"capacity_factor": c, "val_loss": sum(losses) / len(losses), "dropped": sum(drops) / len(drops)}
            )
    finally:
        for m, c in zip(layers, saved):
            m.capacity_factor = c
    return rows


# --------------------------------------------------------------------------- expert parallelism


def expert_parallel_forward(
    layer: MoEMLP, x_local: torch.Tensor, *, rank: int, world_size: int, group=None
) -> tuple[torch.Tensor, dict]:
    """One MoE forward with the experts split across ``world_size`` processes (expert parallelism).

    Rank r owns experts ``[r·E/W, (r+1)·E/W)`` and its own tokens ``x_local`` (n, D). The router
    is replicated. Steps: route locally; sort assignments by expert (hence by owner rank);
    ``all_to_all_single`` the counts, then the token rows and their expert ids; run the local
    experts on what arrived; ``all_to_all_single`` the results back (splits reversed); weight
    and sum them per token. Uses only ``layer.experts`` rows this rank owns. No capacity.
    """
    e_local = layer.n_experts // world_size
    r = route(layer.router(x_local), top_k=layer.top_k, normalize=layer.options.normalize)
    token, expert, weight = sort_by_expert(r)  # (M,) sorted by expert, so by owner rank
    send_counts = torch.bincount(expert // e_local, minlength=world_size)  # (W,)
    recv_counts = torch.empty_like(send_counts)
    dist.all_to_all_single(recv_counts, send_counts, group=group)
    send, recv = send_counts.tolist(), recv_counts.tolist()
    rows = x_local.new_empty(sum(recv), x_local.shape[1])
    dist.all_to_all_single(rows, x_local[token].contiguous(), recv, send, group=group)
    ids = expert.new_empty(sum(recv))
    dist.all_to_all_single(ids, expert.contiguous(), recv, send, group=group)
    out = torch.empty_like(rows)  # run each local expert on its rows (grouped, like dispatch_grouped)
    for e in range(rank * e_local, (rank + 1) * e_local):
        sel = (ids == e).nonzero().squeeze(1)
        if len(sel):
            out[sel] = layer.experts.one(e, rows[sel])
    back = x_local.new_empty(len(token), x_local.shape[1])
    dist.all_to_all_single(back, out, send, recv, group=group)
    y = x_local.new_zeros(x_local.shape).index_add(0, token, back * weight[:, None])
    return y, {"sent": send, "received": recv}
