r"""Depth-adaptive computation: layers a token can skip (chapter 04, the depth half).

Two ways to spend fewer *layers* on a token, both on the course's patient (:class:`TinyLM`):

**Early exit** (in the spirit of CALM, Schuster et al. 2022). After block :math:`\ell` an
*exit head* turns the residual stream :math:`h_\ell` into next-token logits with the model's
own final norm and (tied) LM head, optionally after a small trained adapter
:math:`h \mapsto h + A_\ell h` (:class:`ExitHeads`, zero-initialised, so untrained it *is*
the "logit lens"). A confidence rule scores those logits,

* ``"max_prob"``: :math:`c = \max_v p_v`,
* ``"top2_gap"``: :math:`c = p_{(1)} - p_{(2)}` (the gap between the two most likely tokens),
* ``"classifier"``: :math:`c = \sigma(u_\ell^\top \mathrm{norm}(h_\ell))`, a linear probe per
  exit trained to predict "this exit's top token is the full model's" (CALM's early-exit
  classifier). The two softmax rules need the exit head's logits at *every* layer checked,
  and on a small model with a 4096-token vocabulary one LM-head product costs about two
  blocks; the probe costs :math:`2d` FLOPs, so the head runs once, at the exit;
* ``"learned"``: a per-block logistic regression (:class:`ExitClassifier`, CALM's learned
  early-exit classifier with a handful of inputs) on cheap features of the exit
  (:func:`exit_features`: max probability, top-2 gap, entropy, whether the top token is the
  previous check's, and CALM's *state propagation* signals, the cosine and the relative size
  of the block's update), fitted on a calibration text (:func:`fit_exit_classifier`), its
  threshold chosen there (:func:`calibrate_exit_threshold`) and judged on other text. It may
  check only some blocks, or use only the state signals, so the head runs once, at the exit.

and the token stops at the first layer where :math:`c > \lambda` (the threshold; strictly
greater, so :math:`\lambda = 1` never exits and is the full model, bit for bit).

*The KV entries the skipped layers would have written.* A later token attends to this
token in every layer, so each layer's cache needs an entry for it. We do what CALM does
(*state propagation*): the exited token's hidden state :math:`h_e` is **copied** to every
skipped layer, which writes :math:`K_\ell = W_K^{(\ell)} \mathrm{norm}_\ell(h_e)`,
:math:`V_\ell = W_V^{(\ell)} \mathrm{norm}_\ell(h_e)` (RoPE applied) into its cache. That
costs the key/value projections of the skipped layers (about 6 % of a block for the small
patient) but not their attention or MLP. The tests check those cache entries.

**Training a model to exit** (LayerSkip, Elhoushi et al. 2024). A model trained only through
its last block has middle layers that were never asked to predict. :func:`train_for_exit`
fine-tunes low-rank updates :math:`W + BA` of every block's linear layers with layer dropout
rising with depth (:func:`layer_dropout_rates`; a dropped block leaves the residual unchanged,
the very state copying leaves for later blocks) and an early-exit loss on every layer through
the shared head (:func:`exit_loss_weights`); :func:`apply_exit_delta` merges the stored
update back, so the result is a plain :class:`TinyLM` for every function here.

**Mixture-of-Depths** (Raposo et al. 2024). A block gets a router :math:`r_i = w^\top x_i`;
of a sequence of :math:`T` tokens only the top :math:`k = \lceil cT \rceil` by score
(capacity :math:`c`) go through the block, the rest skip it on the residual stream. It is
*expert-choice* routing (chapter 02) with two experts, the block and the identity: the
block chooses its tokens, so the compute per sequence is fixed and known in advance. The
router learns through a gate on the block's update that is exactly 1 in the forward pass
(:class:`MoDBlock`), so at capacity 1 the block is the plain block, bit for bit.

The expensive runs (exit-adapter training, the exit fine-tune, MoD fine-tuning) live in
:mod:`course_lib.experiments.depth`: ``python -m course_lib.build depth``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.checks import (
    check_choice,
    check_float,
    check_int,
    check_keys,
    check_probability,
    check_tensor,
    check_type,
)
from course_lib.model import Attention, Block, TinyLM

#: the confidence rules of :func:`confidence`, the probe and the learned decision (:class:`ExitClassifier`)
CONFIDENCE_RULES = ("max_prob", "top2_gap", "classifier", "learned")
#: the rules computed from the exit logits (the others need no logits to decide)
SOFTMAX_RULES = ("max_prob", "top2_gap")

# --------------------------------------------------------------------------- exit heads


class ExitHeads(nn.Module):
    r"""One zero-initialised residual adapter per exit, :math:`h \mapsto h + B_\ell A_\ell h`.

    Exit :math:`\ell` sits after block :math:`\ell` (:math:`0 \le \ell < L - 1`; the last
    block's exit is the model's own head). ``rank=None`` makes each adapter a full
    :math:`d \times d` matrix; a rank :math:`r` makes it :math:`B_\ell A_\ell` with
    :math:`2dr` weights. Both start at zero: an untrained head is the logit lens. The model's
    final norm and LM head are shared, not copied (CALM shares the output layer too).
    """

    def __init__(self, d_model: int, n_exits: int, *, rank: int | None = None):
        super().__init__()
        d_model = check_int("d_model", d_model, min=1)
        n_exits = check_int("n_exits", n_exits, min=1)
        self.rank = check_int("rank", rank, min=1, max=d_model, allow_none=True)
        if rank is None:
            self.adapters = nn.ModuleList(nn.Linear(d_model, d_model, bias=False) for _ in range(n_exits))
            for a in self.adapters:
                nn.init.zeros_(a.weight)
        else:
            self.adapters = nn.ModuleList(
                nn.Sequential(nn.Linear(d_model, rank, bias=False), nn.Linear(rank, d_model, bias=False))
                for _ in range(n_exits)
            )
            for a in self.adapters:
                nn.init.normal_(a[0].weight, std=d_model**-0.5)
                nn.init.zeros_(a[1].weight)
        # the "classifier" rule's probes; zero-initialised (sigmoid 0.5 everywhere until trained)
        self.probes = nn.ModuleList(nn.Linear(d_model, 1) for _ in range(n_exits))
        for pr in self.probes:
            nn.init.zeros_(pr.weight)
            nn.init.zeros_(pr.bias)

    @property
    def n_exits(self) -> int:
        return len(self.adapters)

    def adapt(self, h, layer: int):
        """h (..., C) after block ``layer`` -> the adapted state (..., C)."""
        return h + self.adapters[layer](h)

    def probe(self, hn, layer: int):
        """P(this exit agrees with the full model) from the normalised state hn (..., C) -> (...)."""
        return torch.sigmoid(self.probes[layer](hn).squeeze(-1).float())

    def flops_per_exit(self) -> int:
        """FLOPs (2 x multiply-adds) of one adapter on one token."""
        return 2 * sum(m.in_features * m.out_features for m in self.adapters[0].modules() if isinstance(m, nn.Linear))

    def flops_per_probe(self) -> int:
        return 2 * self.probes[0].in_features


def _check_model(model) -> TinyLM:
    model = check_type("model", model, TinyLM)
    if any(not isinstance(b, Block) or not isinstance(b.attn, Attention) for b in model.blocks):
        raise TypeError("model must be a TinyLM of plain blocks (model.Block with a model.Attention)")
    return model


def _check_heads(model: TinyLM, heads) -> ExitHeads | None:
    if heads is None:
        return None
    heads = check_type("heads", heads, ExitHeads)
    if heads.n_exits != model.config.n_layers - 1:
        raise ValueError(f"heads must have n_layers - 1 = {model.config.n_layers - 1} exits, got {heads.n_exits}")
    return heads


def exit_logits(model: TinyLM, h, layer: int, *, heads: ExitHeads | None = None):
    r"""Next-token logits (..., V) read from the residual stream ``h`` (..., C) after block ``layer``.

    :math:`\mathrm{LMHead}(\mathrm{norm}(h + A_\ell h))`; the last layer (``n_layers - 1``)
    is the model's own output, with no adapter.
    """
    model = _check_model(model)
    layer = check_int("layer", layer, min=0, max=model.config.n_layers - 1)
    heads = _check_heads(model, heads)
    h = check_tensor("h", h, floating=True)
    if heads is not None and layer < model.config.n_layers - 1:
        h = heads.adapt(h, layer)
    return model.lm_head(model.norm(h))


def confidence(logits, rule: str = "max_prob"):
    """Confidence in [0, 1] of each row of ``logits`` (..., V): max probability or top-2 gap."""
    logits = check_tensor("logits", logits, floating=True)
    rule = check_choice("rule", rule, SOFTMAX_RULES)
    if logits.shape[-1] < 2:
        raise ValueError(f"logits must have at least 2 entries in the last dimension, got {logits.shape[-1]}")
    p = F.softmax(logits.float(), dim=-1)
    if rule == "max_prob":
        return p.max(-1).values
    top = p.topk(2, dim=-1).values
    return top[..., 0] - top[..., 1]


@torch.no_grad()
def hidden_states(model: TinyLM, idx) -> list:
    """The residual stream after every block, for a whole sequence: ``n_layers`` tensors (B, T, C)."""
    model = _check_model(model)
    check_tensor("idx", idx, dims=("batch", "seq_len"), floating=False)
    t = idx.shape[1]
    if t > model.config.max_seq_len:
        raise ValueError(f"idx has {t} positions; max_seq_len is {model.config.max_seq_len}")
    cos, sin = model.rope_cos[:t], model.rope_sin[:t]
    x, out = model.embed(idx), []
    for block in model.blocks:
        x = block(x, cos, sin)
        out.append(x)
    return out


def train_exit_heads(
    model: TinyLM,
    idx,
    *,
    rank: int | None = None,
    steps: int = 300,
    batch_tokens: int = 512,
    lr: float = 2e-3,
    seed: int = 0,
) -> tuple[ExitHeads, list[float]]:
    r"""Train one adapter per exit to imitate the full model, the patient frozen.

    The loss is the distillation loss summed over exits,
    :math:`\sum_\ell \mathrm{KL}(p_{L} \,\|\, p_\ell)`, where :math:`p_L` is the full model's
    next-token distribution: an exit head should predict what the *model* would say (the
    agreement early exit is judged by), not the data. Alongside, each exit's probe (the
    ``"classifier"`` rule) learns by binary cross-entropy whether the exit's top token is
    the full model's. Hidden states of ``idx`` (B, T) are computed once; each step samples
    ``batch_tokens`` positions. Cheap: only the adapters and probes learn. Returns the heads
    and the mean distillation loss per exit at every step.
    """
    model = _check_model(model)
    steps = check_int("steps", steps, min=1)
    batch_tokens = check_int("batch_tokens", batch_tokens, min=1)
    lr = check_float("lr", lr, min=0, min_inclusive=False)
    n_layers = model.config.n_layers
    if n_layers < 2:
        raise ValueError(f"model needs at least 2 layers to have an exit before the last, got {n_layers}")
    hs = hidden_states(model, idx)
    with torch.no_grad():
        target = F.softmax(model.lm_head(model.norm(hs[-1])).flatten(0, 1).float(), -1)  # (N, V)
        top = target.argmax(-1)  # (N,)
        states = [h.flatten(0, 1) for h in hs[:-1]]  # (N, C) each
        normed = [model.norm(h) for h in states]
    with torch.random.fork_rng(devices=[]):  # seeded, without moving the caller's random state
        torch.manual_seed(seed)
        heads = ExitHeads(model.config.d_model, n_layers - 1, rank=rank).to(states[0].device)
    frozen = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    opt = torch.optim.Adam(heads.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    n, history = target.shape[0], []
    try:
        for _ in range(steps):
            pick = torch.randint(0, n, (batch_tokens,), generator=gen)
            loss = 0.0
            distill = 0.0
            for layer, h in enumerate(states):
                logp = F.log_softmax(model.lm_head(model.norm(heads.adapt(h[pick], layer))).float(), -1)
                distill = distill + F.kl_div(logp, target[pick], reduction="batchmean")
                agree = (logp.detach().argmax(-1) == top[pick]).float()  # (batch,)
                logit = heads.probes[layer](normed[layer][pick]).squeeze(-1)
                loss = loss + F.binary_cross_entropy_with_logits(logit, agree)
            opt.zero_grad(set_to_none=True)
            (distill + loss).backward()
            opt.step()
            history.append(distill.item() / len(states))
    finally:
        for p, g in zip(model.parameters(), frozen):
            p.requires_grad_(g)
    return heads.eval(), history


# --------------------------------------------------------------------------- training a model to exit (LayerSkip)


def layer_dropout_rates(n_layers: int, max_rate: float) -> list[float]:
    r"""LayerSkip's layer-dropout rates, rising with depth (Elhoushi et al. 2024, eq. 1):
    :math:`p_\ell = p_{max}\,(2^{\ell/(L-1)} - 1)`, so the first block is never dropped and
    the last is dropped with probability :math:`p_{max}`."""
    n_layers = check_int("n_layers", n_layers, min=1)
    max_rate = check_float("max_rate", max_rate, min=0, max=1, max_inclusive=False)
    if n_layers == 1:
        return [0.0]
    return [max_rate * (2 ** (layer / (n_layers - 1)) - 1) for layer in range(n_layers)]


def exit_loss_weights(n_layers: int, scale: float) -> list[float]:
    r"""LayerSkip's normalised early-exit loss weights (eq. 4, without the curriculum):
    :math:`e_\ell = s \sum_{i=0}^{\ell} i` for the exits :math:`\ell < L - 1`, and
    :math:`e_{L-1} = L - 1 + s \sum_{i=0}^{L-2} i` for the model's own output; then
    :math:`\tilde e_\ell = e_\ell / \sum_i e_i`. Later exits weigh more (they are easier to
    make agree); ``scale`` :math:`s = 0` is ordinary training (all weight on the last layer)."""
    n_layers = check_int("n_layers", n_layers, min=1)
    scale = check_float("scale", scale, min=0)
    tri = [layer * (layer + 1) / 2 for layer in range(n_layers)]  # sum_{i<=l} i
    e = [scale * tri[layer] for layer in range(n_layers - 1)] + [
        n_layers - 1 + scale * tri[n_layers - 2] if n_layers > 1 else 1.0
    ]
    total = sum(e)
    return [v / total for v in e]


class _LowRankDelta(nn.Module):
    """A trainable low-rank update of a frozen weight: ``W -> W + B A`` (LoRA, Hu et al. 2021)."""

    def __init__(self, out_features: int, in_features: int, rank: int):
        super().__init__()
        self.a = nn.Parameter(torch.randn(rank, in_features) * in_features**-0.5)
        self.b = nn.Parameter(torch.zeros(out_features, rank))

    def forward(self, w):
        return w + self.b @ self.a


def _block_linears(model: TinyLM) -> list[tuple[str, nn.Linear]]:
    return [
        (f"blocks.{i}.{n}", m)
        for i, b in enumerate(model.blocks)
        for n, m in b.named_modules()
        if isinstance(m, nn.Linear)
    ]


def apply_exit_delta(model: TinyLM, delta: dict) -> TinyLM:
    r"""A copy of ``model`` with the low-rank updates of :func:`train_for_exit` merged in:
    :math:`W \leftarrow W + B A` for every linear layer of the blocks (``delta`` maps
    ``"<layer>.a"`` / ``"<layer>.b"`` to the factors; fp16 factors are used as float32).
    The result is a plain :class:`TinyLM`: every early-exit function applies to it."""
    model = _check_model(model)
    check_type("delta", delta, dict)
    names = {n for n, _ in _block_linears(model)}
    unknown = sorted({k.rsplit(".", 1)[0] for k in delta} - names)
    if unknown or any(not k.endswith((".a", ".b")) for k in delta):
        raise ValueError(f"delta must map '<block linear>.a' / '.b' to factors; unknown: {unknown[:3]}")
    out = copy.deepcopy(model)
    with torch.no_grad():
        for name, lin in _block_linears(out):
            if f"{name}.a" in delta:
                a, b = delta[f"{name}.a"].float(), delta[f"{name}.b"].float()
                if a.shape[1] != lin.in_features or b.shape[0] != lin.out_features or a.shape[0] != b.shape[1]:
                    raise ValueError(f"delta factors of {name} have shapes {tuple(b.shape)} x {tuple(a.shape)}")
                lin.weight.copy_(lin.weight + b @ a)
    return out


def layerskip_loss(
    model: TinyLM, x, y, *, drop, weights, exit_tokens: int, generator
) -> tuple[torch.Tensor, list[float]]:
    r"""One LayerSkip training loss on the batch ``x`` -> ``y`` (B, T).

    Block :math:`\ell` is skipped for a whole sequence with probability ``drop[l]`` (the
    residual passes unchanged: exactly the state an exited token leaves for the later
    layers' K and V, so training with it teaches the model to live with state copying).
    Every layer's output is read by the model's own norm and LM head (no extra parameters)
    and scored against the next tokens; the exits (:math:`\ell < L - 1`) on
    ``exit_tokens`` random positions to keep the LM-head cost down. Returns
    :math:`\sum_\ell \tilde e_\ell \mathrm{CE}_\ell` and the per-layer losses.
    """
    b, t = x.shape
    cos, sin = model.rope_cos[:t], model.rope_sin[:t]
    h = model.embed(x)  # (B, T, C)
    n_layers = len(model.blocks)
    flat_y = y.reshape(-1)
    pick = torch.randperm(b * t, generator=generator)[: min(exit_tokens, b * t)]
    total, per = 0.0, []
    for layer, block in enumerate(model.blocks):
        keep = torch.rand(b, generator=generator) >= drop[layer]  # (B,)
        if bool(keep.all()):
            h = block(h, cos, sin)
        elif bool(keep.any()):
            out = h.clone()
            out[keep] = block(h[keep], cos, sin)
            h = out
        if layer == n_layers - 1:
            ce = F.cross_entropy(model.lm_head(model.norm(h)).flatten(0, 1).float(), flat_y)
        elif weights[layer] > 0:
            ce = F.cross_entropy(model.lm_head(model.norm(h.flatten(0, 1)[pick])).float(), flat_y[pick])
        else:
            per.append(float("nan"))
            continue
        total = total + weights[layer] * ce
        per.append(ce.item())
    return total, per


def train_for_exit(
    model: TinyLM,
    train_ids,
    *,
    rank: int = 16,
    steps: int = 200,
    batch_size: int = 16,
    seq_len: int = 128,
    lr: float = 2e-3,
    max_dropout: float = 0.2,
    exit_scale: float = 1.0,
    exit_tokens: int = 512,
    seed: int = 0,
    progress: bool = False,
) -> tuple[TinyLM, dict, list[list[float]]]:
    r"""Fine-tune ``model`` to exit early, LayerSkip-style (Elhoushi et al. 2024).

    A frozen model gets rank-``rank`` updates :math:`W + BA` on every linear layer of its
    blocks (the embedding / tied LM head and the norms stay as they were, so what changes is
    a few hundred KB), trained on random windows of ``train_ids`` with
    :func:`layerskip_loss`: layer dropout rising with depth (:func:`layer_dropout_rates`,
    up to ``max_dropout``) and the early-exit loss on every layer through the shared head
    (:func:`exit_loss_weights` with ``exit_scale``). AdamW, linear warm-up, cosine decay.
    The factors are rounded to fp16 (what is stored is what is measured).

    Returns (the exit-trained model, a plain :class:`TinyLM` built by
    :func:`apply_exit_delta`; the fp16 ``delta``; the per-layer losses of every step).
    """
    from course_lib.data import random_batch
    from course_lib.train import TrainConfig, lr_at

    model = _check_model(model)
    rank = check_int("rank", rank, min=1, max=model.config.d_model)
    steps = check_int("steps", steps, min=1)
    batch_size = check_int("batch_size", batch_size, min=1)
    seq_len = check_int("seq_len", seq_len, min=2, max=model.config.max_seq_len)
    lr = check_float("lr", lr, min=0, min_inclusive=False)
    max_dropout = check_float("max_dropout", max_dropout, min=0, max=1, max_inclusive=False)
    exit_scale = check_float("exit_scale", exit_scale, min=0)
    exit_tokens = check_int("exit_tokens", exit_tokens, min=1)
    n_layers = model.config.n_layers
    drop = layer_dropout_rates(n_layers, max_dropout)
    weights = exit_loss_weights(n_layers, exit_scale)
    work = copy.deepcopy(model).train()
    for p in work.parameters():
        p.requires_grad_(False)
    deltas: dict[str, _LowRankDelta] = {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name, lin in _block_linears(work):
            deltas[name] = _LowRankDelta(lin.out_features, lin.in_features, rank)
            nn.utils.parametrize.register_parametrization(lin, "weight", deltas[name])
    params = [p for d in deltas.values() for p in d.parameters()]
    cfg = TrainConfig(
        steps=steps, batch_size=batch_size, seq_len=seq_len, lr=lr, warmup_steps=min(20, steps), seed=seed
    )
    opt = torch.optim.AdamW(params, lr=lr, betas=cfg.betas, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    history = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="train for exit", mininterval=1.0)
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg)
        x, y = random_batch(train_ids, batch_size, seq_len, gen)
        loss, per = layerskip_loss(work, x, y, drop=drop, weights=weights, exit_tokens=exit_tokens, generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        history.append([round(v, 4) for v in per])
        if bar is not None:
            bar.set_postfix({"final": f"{per[-1]:.3f}"}, refresh=False)
            bar.update(1)
    if bar is not None:
        bar.close()
    delta = {}
    for name, d in deltas.items():
        delta[f"{name}.a"] = d.a.detach().half().contiguous()
        delta[f"{name}.b"] = d.b.detach().half().contiguous()
    return apply_exit_delta(model, delta).eval(), delta, history


# --------------------------------------------------------------------------- early-exit decoding


@dataclass
class ExitResult:
    """What :func:`early_exit_forward` returns.

    ``logits`` (B, T, V): the next-token logits each position exited with; ``exit_layer``
    (B, T): the block after which it exited (``n_layers - 1`` = ran every block);
    ``confidence`` (B, T): the confidence it exited with (at the last layer: of the final
    logits); ``cache``: the per-layer KV caches, with the copied entries of exited tokens.
    """

    logits: torch.Tensor
    exit_layer: torch.Tensor
    confidence: torch.Tensor
    cache: list
    n_layers: int

    @property
    def layers_used(self) -> torch.Tensor:
        """Blocks run per position (B, T): ``exit_layer + 1``."""
        return self.exit_layer + 1

    @property
    def layer_fraction(self) -> float:
        """Mean blocks run per position / n_layers."""
        return float(self.layers_used.float().mean()) / self.n_layers


def _check_threshold(threshold) -> float:
    return float(check_probability("threshold", threshold))


@torch.no_grad()
def early_exit_forward(
    model: TinyLM,
    idx,
    *,
    threshold: float,
    rule: str = "max_prob",
    heads: ExitHeads | None = None,
    min_layer: int = 0,
    cache: list | None = None,
    classifier: ExitClassifier | None = None,
) -> ExitResult:
    r"""Run ``idx`` (B, T) one position at a time, each token leaving at its first confident layer.

    Position by position (as a decoder meets them; teacher-forced on ``idx``), block by
    block: after block :math:`\ell \ge` ``min_layer`` the exit head's confidence is compared
    with ``threshold`` and a row that clears it stops. An exited row keeps its state
    :math:`h_e`; the later blocks still write its K and V, computed from :math:`h_e` (CALM's
    state copying; see the module docstring), and its output is discarded. When every row of
    the batch has exited, the later blocks compute *only* those K and V projections, so a
    batch of one really saves the attention and MLP work. ``threshold = 1`` never exits
    (confidence is at most 1 and the rule is strict) and returns the full model's logits
    bit for bit. Pass ``cache`` (from ``model.new_cache``) to continue a sequence.
    ``rule="learned"`` needs ``classifier`` (a fitted :class:`ExitClassifier`); it checks
    only the classifier's blocks, and its ``confidence`` is the classifier's probability.
    """
    model = _check_model(model)
    check_tensor("idx", idx, dims=("batch", "seq_len"), floating=False)
    threshold = _check_threshold(threshold)
    rule = check_choice("rule", rule, CONFIDENCE_RULES)
    heads = _check_heads(model, heads)
    if rule == "classifier" and heads is None:
        raise ValueError("rule='classifier' needs heads (trained ExitHeads with their probes)")
    min_layer = check_int("min_layer", min_layer, min=0, max=model.config.n_layers - 1)
    classifier = _check_classifier(model, rule, classifier)
    return _early_exit(model, idx, threshold, rule, heads, min_layer, cache, classifier)


@torch.no_grad()
def _early_exit(model, idx, threshold, rule, heads, min_layer, cache, classifier=None) -> ExitResult:
    """:func:`early_exit_forward` after the checks; ``threshold`` a float or one per row (B,)."""
    n_layers = model.config.n_layers
    final_rule = rule if rule in SOFTMAX_RULES else "max_prob"
    b, t = idx.shape
    if cache is None:
        cache = model.new_cache(b, t)
    start = cache[0].pos
    if start + t > min(model.config.max_seq_len, cache[0].max_len):
        raise ValueError(f"idx of {t} positions after {start} cached ones does not fit the cache / max_seq_len")
    logits_out, layer_out, conf_out = [], [], []
    for j in range(t):
        pos = start + j
        cos, sin = model.rope_cos[pos : pos + 1], model.rope_sin[pos : pos + 1]
        x = model.embed(idx[:, j : j + 1])  # (B, 1, C)
        done = torch.zeros(b, dtype=torch.bool, device=idx.device)
        exit_at = torch.full((b,), n_layers - 1, dtype=torch.long, device=idx.device)
        logits = None
        conf = None
        prev_top = None  # the learned rule's top token at the previous checked block
        for layer, block in enumerate(model.blocks):
            if bool(done.all()):  # only the copied K, V of the skipped layer
                _, k, v = block.attn.project(block.attn_norm(x), cos, sin)
                cache[layer].update(k, v)
                continue
            out = block(x, cos, sin, cache[layer])  # writes K, V of every row (exited: from h_e)
            x_in, x = x, torch.where(done[:, None, None], x, out)
            if layer == n_layers - 1:
                final = model.lm_head(model.norm(x))[:, 0]  # (B, V)
                keep = ~done
                logits = torch.where(keep[:, None], final, logits) if logits is not None else final
                c_final = confidence(final, final_rule)
                conf = torch.where(keep, c_final, conf) if conf is not None else c_final
            elif layer >= min_layer and (rule != "learned" or layer in classifier.check_layers):
                if rule == "learned":  # a few cheap features; the head only if they need it
                    lg = exit_logits(model, x, layer, heads=heads)[:, 0] if classifier.uses_head else None
                    feats = exit_features(x[:, 0], x_in[:, 0], lg, prev_top, features=classifier.features)
                    c = classifier.prob(layer, feats)  # (B,)
                    new = ~done & (c > threshold)
                    if lg is not None:
                        prev_top = lg.argmax(-1)
                    elif bool(new.any()):
                        lg = exit_logits(model, x, layer, heads=heads)[:, 0]
                elif rule == "classifier":  # a 2d-FLOP probe decides; the head runs only to exit
                    c = heads.probe(model.norm(x), layer)[:, 0]  # (B,)
                    new = ~done & (c > threshold)
                    lg = exit_logits(model, x, layer, heads=heads)[:, 0] if bool(new.any()) else None
                else:
                    lg = exit_logits(model, x, layer, heads=heads)[:, 0]  # (B, V)
                    c = confidence(lg, rule)
                    new = ~done & (c > threshold)
                if bool(new.any()):
                    logits = torch.where(new[:, None], lg, logits) if logits is not None else lg
                    conf = torch.where(new, c, conf) if conf is not None else c
                    exit_at = torch.where(new, torch.full_like(exit_at, layer), exit_at)
                    done = done | new
        logits_out.append(logits)
        layer_out.append(exit_at)
        conf_out.append(conf)
    return ExitResult(
        logits=torch.stack(logits_out, 1),
        exit_layer=torch.stack(layer_out, 1),
        confidence=torch.stack(conf_out, 1),
        cache=cache,
        n_layers=n_layers,
    )


@torch.no_grad()
def early_exit_generate(
    model: TinyLM,
    prompt,
    max_new_tokens: int,
    *,
    threshold: float,
    rule: str = "max_prob",
    heads: ExitHeads | None = None,
    min_layer: int = 0,
    classifier: ExitClassifier | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy decoding with early exit: (new tokens (B, n), their exit layers (B, n)).

    The prompt is prefilled by the full model (one forward, as ``TinyLM.generate`` does);
    each new token then runs :func:`early_exit_forward` on its own position. With
    ``threshold = 1`` the tokens are exactly ``model.generate``'s.
    """
    model = _check_model(model)
    check_tensor("prompt", prompt, dims=("batch", "seq_len"), floating=False)
    n = check_int("max_new_tokens", max_new_tokens, min=1)
    threshold = _check_threshold(threshold)
    total = prompt.shape[1] + n
    if total > model.config.max_seq_len:
        raise ValueError(f"prompt + max_new_tokens = {total} exceeds max_seq_len = {model.config.max_seq_len}")
    cache = model.new_cache(prompt.shape[0], total)
    nxt = model(prompt, cache=cache)[:, -1].argmax(-1, keepdim=True)  # (B, 1)
    tokens, layers = [nxt], [torch.full_like(nxt, model.config.n_layers - 1)]
    for _ in range(n - 1):
        r = early_exit_forward(
            model,
            nxt,
            threshold=threshold,
            rule=rule,
            heads=heads,
            min_layer=min_layer,
            cache=cache,
            classifier=classifier,
        )
        nxt = r.logits[:, -1].argmax(-1, keepdim=True)
        tokens.append(nxt)
        layers.append(r.exit_layer)
    return torch.cat(tokens, 1), torch.cat(layers, 1)


# --------------------------------------------------------------------------- a learned exit decision (CALM)

#: the inputs a learned exit decision may use (:func:`exit_features`)
EXIT_FEATURES = ("max_prob", "top2_gap", "entropy", "consistent", "state_cos", "state_change")
#: the ones that need the exit head's logits at the block checked (the others are O(d))
HEAD_FEATURES = ("max_prob", "top2_gap", "entropy", "consistent")


def _check_features(features) -> tuple[str, ...]:
    if isinstance(features, str) or not isinstance(features, (list, tuple)) or not features:
        raise TypeError(f"features must be a non-empty list chosen from {list(EXIT_FEATURES)}, got {features!r}")
    for f in features:
        check_choice("features", f, EXIT_FEATURES)
    if len(set(features)) != len(features):
        raise ValueError(f"features must not repeat a name, got {list(features)}")
    return tuple(features)


def exit_features(h, h_prev, logits=None, prev_top=None, *, features=EXIT_FEATURES):
    r"""The inputs of a learned exit decision for the states ``h`` (..., C) after a block.

    ``h_prev`` (..., C) is the block's input (the previous block's output; the embedding for
    block 0); ``logits`` (..., V) the exit head's output there (needed only by the head
    features); ``prev_top`` (...) the top token at the previous *checked* block (None: no
    check before, so ``consistent`` is 0). Returns (..., F), one column per name in
    ``features``:

    * ``max_prob`` :math:`p_{(1)}`, ``top2_gap`` :math:`p_{(1)} - p_{(2)}`, ``entropy``
      :math:`-\sum_v p_v \log p_v`, ``consistent`` (1 if the top token is ``prev_top``);
    * ``state_cos`` :math:`\cos(h_\ell, h_{\ell-1})` and ``state_change``
      :math:`\lVert h_\ell - h_{\ell-1}\rVert / \lVert h_\ell \rVert` (CALM's state
      propagation: a block that hardly moved the state is unlikely to be changing its mind;
      :math:`O(d)`, no head).
    """
    features = _check_features(features)
    h = check_tensor("h", h, floating=True)
    h_prev = check_tensor("h_prev", h_prev, floating=True)
    if h_prev.shape != h.shape:
        raise ValueError(f"h_prev must have the shape of h {tuple(h.shape)}, got {tuple(h_prev.shape)}")
    if logits is None and any(f in HEAD_FEATURES for f in features):
        raise ValueError(f"logits are needed for the features {[f for f in features if f in HEAD_FEATURES]}")
    cols = {}
    if logits is not None:
        logits = check_tensor("logits", logits, floating=True)
        if logits.shape[:-1] != h.shape[:-1]:
            raise ValueError(f"logits must have shape {tuple(h.shape[:-1])} + (V,), got {tuple(logits.shape)}")
        logp = F.log_softmax(logits.float(), -1)
        p = logp.exp()
        top = p.topk(2, dim=-1)
        cols["max_prob"] = top.values[..., 0]
        cols["top2_gap"] = top.values[..., 0] - top.values[..., 1]
        cols["entropy"] = -(p * logp).sum(-1)
        top1 = top.indices[..., 0]
        cols["consistent"] = (top1 == prev_top).float() if prev_top is not None else torch.zeros_like(top1).float()
    hf, pf = h.float(), h_prev.float()
    cols["state_cos"] = F.cosine_similarity(hf, pf, dim=-1)
    cols["state_change"] = (hf - pf).norm(dim=-1) / hf.norm(dim=-1).clamp_min(1e-12)
    return torch.stack([cols[f] for f in features], -1)


class ExitClassifier:
    r"""CALM's learned exit decision: one logistic regression per checked block.

    At a checked block :math:`\ell` the classifier reads the :func:`exit_features`
    :math:`x_\ell` and says how likely the exit's top token is the full depth's,
    :math:`q_\ell = \sigma(w_\ell^\top (x_\ell - \mu_\ell)/s_\ell + b_\ell)` (features
    standardised on the calibration text); the token stops where :math:`q_\ell > \lambda`.
    ``check_layers`` are the blocks where it looks (default every block before the last):
    checking fewer blocks saves the exit head where the head features are used; with
    only the state features (``"state_cos"``, ``"state_change"``) no block runs the head
    until the token exits. Fit with :meth:`fit` (or :func:`fit_exit_classifier`); store with
    :meth:`to_dict` / :meth:`from_dict` (a few hundred numbers).
    """

    def __init__(self, n_layers: int, *, features=EXIT_FEATURES, check_layers=None):
        self.n_layers = check_int("n_layers", n_layers, min=2)
        self.features = _check_features(features)
        if check_layers is None:
            check_layers = tuple(range(self.n_layers - 1))
        if isinstance(check_layers, int) or not isinstance(check_layers, (list, tuple)) or not check_layers:
            raise TypeError(f"check_layers must be a non-empty list of blocks in [0, {self.n_layers - 2}]")
        layers = [check_int("check_layers", b, min=0, max=self.n_layers - 2) for b in check_layers]
        if len(set(layers)) != len(layers):
            raise ValueError(f"check_layers must not repeat a block, got {layers}")
        self.check_layers = tuple(sorted(layers))
        self.params: dict[int, dict[str, torch.Tensor]] = {}

    @property
    def fitted(self) -> bool:
        return set(self.params) == set(self.check_layers)

    @property
    def uses_head(self) -> bool:
        """Whether a check needs the exit head's logits (any head feature)."""
        return any(f in HEAD_FEATURES for f in self.features)

    def _require_fitted(self):
        if not self.fitted:
            raise ValueError("classifier is not fitted: call ExitClassifier.fit (or fit_exit_classifier) first")

    def fit(self, x: dict, y: dict, *, l2: float = 1e-3, steps: int = 100) -> ExitClassifier:
        """Fit block by block: ``x[layer]`` (N, F) features, ``y[layer]`` (N,) 1 where the exit
        agrees with the full depth. L2-regularised logistic regression by L-BFGS (deterministic)."""
        check_type("x", x, dict)
        check_type("y", y, dict)
        l2 = check_float("l2", l2, min=0)
        steps = check_int("steps", steps, min=1)
        params = {}
        for layer in self.check_layers:
            if layer not in x or layer not in y:
                raise ValueError(f"x and y must have an entry for every checked block {list(self.check_layers)}")
            xl = check_tensor(f"x[{layer}]", x[layer], rank=2, floating=True).float()
            yl = check_tensor(f"y[{layer}]", y[layer], rank=1).float()
            if xl.shape != (yl.shape[0], len(self.features)) or yl.shape[0] < 2:
                raise ValueError(
                    f"x[{layer}] must be (N, {len(self.features)}) with N >= 2 matching y, got {tuple(xl.shape)}"
                )
            mean, std = xl.mean(0), xl.std(0).clamp_min(1e-6)
            z = (xl - mean) / std
            w = torch.zeros(len(self.features), requires_grad=True)
            b = torch.zeros((), requires_grad=True)
            opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

            def closure(z=z, yl=yl, w=w, b=b, opt=opt):
                opt.zero_grad()
                loss = F.binary_cross_entropy_with_logits(z @ w + b, yl) + l2 * (w**2).sum()
                loss.backward()
                return loss

            with torch.enable_grad():
                opt.step(closure)
            params[layer] = {"weight": w.detach(), "bias": b.detach(), "mean": mean, "std": std}
        self.params = params
        return self

    def prob(self, layer: int, x):
        """P(the exit after ``layer`` agrees with the full depth) from its features x (..., F) -> (...)."""
        self._require_fitted()
        layer = check_int("layer", layer, min=0, max=self.n_layers - 2)
        if layer not in self.params:
            raise ValueError(f"layer must be a checked block {list(self.check_layers)}, got {layer}")
        x = check_tensor("x", x, floating=True)
        if x.shape[-1] != len(self.features):
            raise ValueError(f"x must have {len(self.features)} features in the last dimension, got {x.shape[-1]}")
        p = self.params[layer]
        return torch.sigmoid(((x.float() - p["mean"]) / p["std"]) @ p["weight"] + p["bias"])

    def check_flops(self, d_model: int, vocab_size: int) -> int:
        """FLOPs of one check without the exit head: the features (softmax, entropy, top-2:
        about 5V when head features are used; the two state signals about 8d) and the dot product."""
        d_model = check_int("d_model", d_model, min=1)
        vocab_size = check_int("vocab_size", vocab_size, min=1)
        head_part = 5 * vocab_size if self.uses_head else 0
        state_part = 8 * d_model if {"state_cos", "state_change"} & set(self.features) else 0
        return head_part + state_part + 4 * len(self.features)

    def to_dict(self) -> dict:
        """A JSON-able description (floats as stored, so :meth:`from_dict` rebuilds it exactly)."""
        self._require_fitted()
        return {
            "n_layers": self.n_layers,
            "features": list(self.features),
            "check_layers": list(self.check_layers),
            "params": {str(k): {n: v.tolist() for n, v in p.items()} for k, p in self.params.items()},
        }

    @classmethod
    def from_dict(cls, d: dict) -> ExitClassifier:
        check_type("d", d, dict)
        check_keys("d", d, ("n_layers", "features", "check_layers", "params"), required=("n_layers", "features"))
        out = cls(d["n_layers"], features=list(d["features"]), check_layers=d.get("check_layers"))
        out.params = {
            int(k): {n: torch.tensor(v, dtype=torch.float32) for n, v in p.items()}
            for k, p in d.get("params", {}).items()
        }
        if not out.fitted:
            raise ValueError("d must hold the parameters of every checked block")
        return out


def _check_classifier(model: TinyLM, rule: str, classifier) -> ExitClassifier | None:
    if rule != "learned":
        return None
    if classifier is None:
        raise ValueError("rule='learned' needs classifier (a fitted ExitClassifier)")
    classifier = check_type("classifier", classifier, ExitClassifier)
    classifier._require_fitted()
    if classifier.n_layers != model.config.n_layers:
        raise ValueError(f"classifier is for {classifier.n_layers} blocks, the model has {model.config.n_layers}")
    return classifier


@torch.no_grad()
def exit_classifier_data(model: TinyLM, idx, classifier: ExitClassifier, *, heads: ExitHeads | None = None):
    """Teacher-forced features and labels of the checked blocks on ``idx`` (B, T).

    Computed from the full-depth states (one parallel forward; CALM calibrates the same way),
    so cheap; the early-exit run itself sees slightly different states after an exited token
    (its copied K/V), which is why the rule is judged by a real run on other text. Returns
    ``(x, y)``: ``x[layer]`` (B*T, F), ``y[layer]`` (B*T,) 1.0 where the exit's top token is
    the full depth's.
    """
    model = _check_model(model)
    check_type("classifier", classifier, ExitClassifier)
    if classifier.n_layers != model.config.n_layers:
        raise ValueError(f"classifier is for {classifier.n_layers} blocks, the model has {model.config.n_layers}")
    heads = _check_heads(model, heads)
    hs = hidden_states(model, idx)
    full = exit_logits(model, hs[-1], model.config.n_layers - 1).argmax(-1).flatten()
    prev_state, prev_top = model.embed(idx).flatten(0, 1), None
    x, y = {}, {}
    for layer, h in enumerate(hs[:-1]):
        h = h.flatten(0, 1)
        if layer in classifier.check_layers:
            lg = exit_logits(model, h, layer, heads=heads)
            x[layer] = exit_features(h, prev_state, lg, prev_top, features=classifier.features)
            top = lg.argmax(-1)
            y[layer] = (top == full).float()
            prev_top = top
        prev_state = h
    return x, y


def fit_exit_classifier(
    model: TinyLM,
    idx,
    *,
    features=EXIT_FEATURES,
    check_layers=None,
    heads: ExitHeads | None = None,
    l2: float = 1e-3,
) -> ExitClassifier:
    """An :class:`ExitClassifier` fitted on the calibration text ``idx`` (B, T) (:func:`exit_classifier_data`)."""
    model = _check_model(model)
    clf = ExitClassifier(model.config.n_layers, features=features, check_layers=check_layers)
    x, y = exit_classifier_data(model, idx, clf, heads=heads)
    return clf.fit(x, y, l2=l2)


def simulate_exits(classifier: ExitClassifier, x: dict, y: dict, thresholds) -> list[dict]:
    """Each threshold's rule replayed on teacher-forced data (:func:`exit_classifier_data`):
    ``{"threshold", "agreement", "layer_fraction"}``, a token stopping at the first checked
    block whose probability exceeds the threshold (the last block always agrees)."""
    check_type("classifier", classifier, ExitClassifier)
    classifier._require_fitted()
    thresholds = [_check_threshold(v) for v in thresholds]
    first = classifier.check_layers[0]
    n = check_tensor("y", y[first], rank=1).shape[0]
    probs = {layer: classifier.prob(layer, x[layer]) for layer in classifier.check_layers}
    rows = []
    for thr in thresholds:
        exit_at = torch.full((n,), classifier.n_layers - 1)
        ok = torch.ones(n)
        done = torch.zeros(n, dtype=torch.bool)
        for layer in classifier.check_layers:
            new = ~done & (probs[layer] > thr)
            exit_at[new] = layer
            ok[new] = y[layer][new].float()
            done |= new
        rows.append(
            {
                "threshold": thr,
                "agreement": float(ok.mean()),
                "layer_fraction": float((exit_at + 1).double().mean() / classifier.n_layers),
            }
        )
    return rows


def calibrate_exit_threshold(
    classifier: ExitClassifier, x: dict, y: dict, *, target: float = 0.95, grid: int = 200
) -> dict:
    """The lowest threshold of a ``grid``-step grid on [0, 1] whose replayed agreement on the
    *calibration* data (:func:`simulate_exits`) is at least ``target``: the operating point
    to be judged on other text. Returns its row (threshold 1.0, never exit, if none lower keeps it)."""
    target = check_probability("target", target)
    grid = check_int("grid", grid, min=1)
    rows = simulate_exits(classifier, x, y, [i / grid for i in range(grid + 1)])
    ok = [r for r in rows if r["agreement"] >= target]
    return min(ok, key=lambda r: (r["layer_fraction"], -r["threshold"]))


# --------------------------------------------------------------------------- accounting


def block_flops(block: Block, seq_len: int) -> dict:
    r"""Forward FLOPs of one block for one token: ``{"kv": ..., "rest": ..., "total": ...}``.

    ``kv`` is what a skipped layer still pays under state copying (the K and V projections);
    ``rest`` the query/output projections, the attention reads (:math:`4 \bar c H d`) and the MLP.
    """
    block = check_type("block", block, Block)
    seq_len = check_int("seq_len", seq_len, min=1)
    lin = lambda m: 2 * m.in_features * m.out_features  # noqa: E731
    kv = lin(block.attn.k_proj) + lin(block.attn.v_proj)
    linear = sum(lin(m) for m in block.modules() if isinstance(m, nn.Linear))
    attn = 4 * block.attn.mean_context(seq_len) * block.attn.n_heads * block.attn.head_dim
    return {"kv": kv, "rest": linear - kv + attn, "total": linear + attn}


def early_exit_flops(
    model: TinyLM,
    exit_layer,
    *,
    heads: ExitHeads | None = None,
    rule: str = "max_prob",
    min_layer: int = 0,
    seq_len: int | None = None,
    classifier: ExitClassifier | None = None,
) -> dict:
    r"""Mean forward FLOPs per token of early exit against the full model, from the exit layers.

    A token that exits after block :math:`e` pays :math:`e + 1` blocks, the K/V projections
    of the :math:`L - 1 - e` skipped ones, and one check per layer from ``min_layer`` to
    :math:`e`. With a softmax rule a check is the exit head (adapter + the :math:`d \times V`
    LM head; on a small vocabulary-heavy model that is not free: the small patient's LM head
    costs about two blocks); with ``"classifier"`` it is the :math:`2d`-FLOP probe, plus
    one exit head at the exit. With ``"learned"`` only the classifier's blocks are checked,
    each paying :meth:`ExitClassifier.check_flops` plus the exit head if the classifier
    reads the logits (else one exit head at the exit). Returns ``{"full", "early_exit",
    "fraction", "layer_fraction", "head_fraction"}`` (the last: the share of the early-exit
    FLOPs spent on checks).
    """
    model = _check_model(model)
    heads = _check_heads(model, heads)
    rule = check_choice("rule", rule, CONFIDENCE_RULES)
    if rule == "classifier" and heads is None:
        raise ValueError("rule='classifier' needs heads (trained ExitHeads with their probes)")
    classifier = _check_classifier(model, rule, classifier)
    n_layers = model.config.n_layers
    exit_layer = check_tensor("exit_layer", exit_layer, floating=False)
    if exit_layer.numel() == 0 or int(exit_layer.min()) < 0 or int(exit_layer.max()) > n_layers - 1:
        raise ValueError(f"exit_layer must be a non-empty tensor of layers in [0, {n_layers - 1}]")
    min_layer = check_int("min_layer", min_layer, min=0, max=n_layers - 1)
    seq_len = check_int("seq_len", model.config.max_seq_len if seq_len is None else seq_len, min=1)
    per = [block_flops(b, seq_len) for b in model.blocks]
    head = 2 * model.lm_head.in_features * model.lm_head.out_features
    exit_head = head + (heads.flops_per_exit() if heads is not None else 0)
    check = heads.flops_per_probe() if rule == "classifier" else exit_head
    lazy_head = rule == "classifier"  # the head runs only where the token exits
    checked = set(range(n_layers - 1))
    if classifier is not None:
        check = classifier.check_flops(model.config.d_model, model.config.vocab_size)
        check += exit_head if classifier.uses_head else 0
        lazy_head = not classifier.uses_head
        checked = set(classifier.check_layers)
    full = sum(p["total"] for p in per) + head
    counts = torch.bincount(exit_layer.flatten().cpu(), minlength=n_layers).double()
    total = checks_total = 0.0
    for e in range(n_layers):
        run = sum(p["total"] for p in per[: e + 1]) + sum(p["kv"] for p in per[e + 1 :])
        n_checks = sum(1 for b in checked if min_layer <= b <= min(e, n_layers - 2))
        cost_checks = n_checks * check
        if lazy_head and e < n_layers - 1:
            cost_checks += exit_head  # the head runs once, where the probe said stop
        last = head if e == n_layers - 1 else 0.0
        total += float(counts[e]) * (run + cost_checks + last)
        checks_total += float(counts[e]) * cost_checks
    n = float(counts.sum())
    mean = total / n
    return {
        "full": float(full),
        "early_exit": mean,
        "fraction": mean / full,
        "layer_fraction": float(((exit_layer.double() + 1).mean()) / n_layers),
        "head_fraction": checks_total / total,
    }


def exit_sweep(
    model: TinyLM,
    idx,
    thresholds,
    *,
    rule: str = "max_prob",
    heads: ExitHeads | None = None,
    min_layer: int = 0,
    classifier: ExitClassifier | None = None,
) -> list[dict]:
    """Quality against compute for each threshold, on ``idx`` (B, T) teacher-forced.

    Per threshold: ``layer_fraction`` (mean blocks run / L), ``flops_fraction`` (from
    :func:`early_exit_flops`), ``agreement`` (share of positions whose exit argmax equals the
    full model's), ``loss`` and ``ppl`` on the next tokens of ``idx``.
    """
    model = _check_model(model)
    check_tensor("idx", idx, dims=("batch", "seq_len"), floating=False)
    if idx.shape[1] < 2:
        raise ValueError(f"idx needs at least 2 positions (a next token to score), got {idx.shape[1]}")
    thresholds = [_check_threshold(v) for v in thresholds]
    if not thresholds:
        raise ValueError("thresholds must be a non-empty list of numbers in [0, 1]")
    rule = check_choice("rule", rule, CONFIDENCE_RULES)
    heads = _check_heads(model, heads)
    if rule == "classifier" and heads is None:
        raise ValueError("rule='classifier' needs heads (trained ExitHeads with their probes)")
    min_layer = check_int("min_layer", min_layer, min=0, max=model.config.n_layers - 1)
    classifier = _check_classifier(model, rule, classifier)
    with torch.no_grad():
        full = model(idx)  # (B, T, V)
    want, targets = full.argmax(-1)[:, :-1], idx[:, 1:]
    # every threshold in one batched pass: rows are independent, so this is len(thresholds)
    # separate runs at the per-position cost of one (the loop over positions dominates)
    b, n = idx.shape[0], len(thresholds)
    per_row = torch.tensor(thresholds, device=idx.device).repeat_interleave(b)  # (n * B,)
    big = _early_exit(model, idx.repeat(n, 1), per_row, rule, heads, min_layer, None, classifier)
    rows = []
    for i, thr in enumerate(thresholds):
        part = slice(i * b, (i + 1) * b)
        r = ExitResult(big.logits[part], big.exit_layer[part], big.confidence[part], [], big.n_layers)
        lg = r.logits[:, :-1]
        loss = float(F.cross_entropy(lg.reshape(-1, lg.shape[-1]).float(), targets.reshape(-1)))
        fl = early_exit_flops(
            model,
            r.exit_layer[:, :-1],
            heads=heads,
            rule=rule,
            min_layer=min_layer,
            seq_len=idx.shape[1],
            classifier=classifier,
        )
        rows.append(
            {
                "threshold": thr,
                "layer_fraction": fl["layer_fraction"],
                "flops_fraction": fl["fraction"],
                "agreement": float((lg.argmax(-1) == want).float().mean()),
                "loss": loss,
                "ppl": math.exp(loss),
                "exit_counts": torch.bincount(r.exit_layer[:, :-1].flatten(), minlength=model.config.n_layers).tolist(),
            }
        )
    return rows


# --------------------------------------------------------------------------- which tokens exit

#: short English function words (articles, prepositions, conjunctions, auxiliaries, pronouns)
FUNCTION_WORDS = frozenset(
    "a an the of in on at to for from by with as and or but nor if that which who whom whose this these those "
    "it its is was are were be been being has have had do does did not no so than then there their they he she "
    "his her him we our you your i my me into over under about after before during between through".split()
)
TOKEN_KINDS = ("word piece", "punctuation", "function word", "capitalised word", "other word")


def token_kind(piece: str, *, first: bool = False) -> str:
    """The kind of a decoded token: a word piece (continues a word), punctuation, a function
    word, a capitalised word (names, sentence starts) or another word."""
    if not isinstance(piece, str):
        raise TypeError(f"piece must be a str, got {type(piece).__name__}")
    word = piece.strip()
    if not word:
        return "punctuation"
    if not word[0].isalnum():
        return "punctuation"
    if not piece.startswith(" ") and not first:
        return "word piece"
    if word.lower() in FUNCTION_WORDS:
        return "function word"
    if word[0].isupper():
        return "capitalised word"
    return "other word"


def exits_by_kind(pieces: list[str], layers_used, *, n_layers: int | None = None) -> dict[str, dict]:
    """Blocks used per token kind: ``{kind: {"count", "mean_layers"[, "early_share"]}}``.

    ``pieces`` are decoded tokens from running text (none is taken as a text's first word);
    with ``n_layers``, ``early_share`` is the share of the kind's tokens that ran fewer
    blocks than that. Kinds that do not occur are left out.
    """
    layers_used = check_tensor("layers_used", layers_used, rank=1, floating=False)
    n_layers = check_int("n_layers", n_layers, min=1, allow_none=True)
    if not isinstance(pieces, (list, tuple)) or len(pieces) != layers_used.numel():
        raise ValueError(f"pieces must be a list of {layers_used.numel()} decoded tokens (one per layers_used entry)")
    acc: dict[str, list] = {}
    for p, n in zip(pieces, layers_used.tolist()):
        acc.setdefault(token_kind(p), []).append(n)
    out = {}
    for k in TOKEN_KINDS:
        if k in acc:
            out[k] = {"count": len(acc[k]), "mean_layers": sum(acc[k]) / len(acc[k])}
            if n_layers is not None:
                out[k]["early_share"] = sum(n < n_layers for n in acc[k]) / len(acc[k])
    return out


# --------------------------------------------------------------------------- Mixture-of-Depths


def _check_capacity(capacity) -> float:
    return float(check_float("capacity", capacity, min=0, max=1, min_inclusive=False))


def mod_tokens(seq_len: int, capacity: float) -> int:
    r"""Tokens a MoD block processes in a sequence of ``seq_len``: :math:`\max(1, \lceil cT \rceil)`."""
    seq_len = check_int("seq_len", seq_len, min=1)
    capacity = _check_capacity(capacity)
    return max(1, min(seq_len, math.ceil(capacity * seq_len - 1e-9)))


class MoDBlock(nn.Module):
    r"""A transformer block that processes only the top-capacity tokens of each sequence.

    ``router`` scores every token, :math:`r_i = w^\top x_i`; the :math:`k` best of the
    sequence (:func:`mod_tokens`) are gathered *in their original order* with their own
    rotary positions, run through ``block`` (causal attention among themselves, the MLP),
    and scattered back; the others pass unchanged (the residual). The router learns from a
    gate on the block's update :math:`y - x`,

    .. math:: \tilde y = y + (g - 1)(y - x), \qquad g = \sigma(r) / \mathrm{sg}[\sigma(r)],

    which is exactly 1 in the forward pass (so capacity 1 *is* the plain block) and has the
    gradient :math:`(1 - \sigma(r))\,\langle \partial L/\partial \tilde y, y - x\rangle`
    with respect to :math:`r`: a token whose update lowers the loss gets a higher score.

    Top-k over the sequence looks at future tokens, so it is for training and scoring whole
    sequences; decoding with a KV cache is refused (Raposo et al. train a small causal
    predictor of the router's choice for sampling).
    """

    def __init__(self, block: Block, *, capacity: float):
        super().__init__()
        self.block = check_type("block", block, Block)
        self.capacity = _check_capacity(capacity)
        d = block.attn_norm.weight.shape[0]
        self.router = nn.Linear(d, 1, bias=False)
        nn.init.normal_(self.router.weight, std=d**-0.5)
        self.last_selected = None  # (B, k) positions routed through the block in the last forward

    # the model reads these from its blocks (caches, FLOP counting)
    @property
    def attn(self):
        return self.block.attn

    def forward(self, x, cos, sin, cache=None):  # x (B, T, C)
        if cache is not None:
            raise ValueError("a MoD block routes over the whole sequence: decode with cache=None (use_cache=False)")
        b, t, c = x.shape
        k = mod_tokens(t, self.capacity)
        scores = self.router(x).squeeze(-1)  # (B, T)
        pick = scores.topk(k, dim=-1).indices.sort(dim=-1).values  # (B, k), in sequence order
        self.last_selected = pick.detach()
        x_sel = x.gather(1, pick[..., None].expand(b, k, c))  # (B, k, C)
        cos_sel, sin_sel = cos[pick][:, None], sin[pick][:, None]  # (B, 1, k, d)
        y = self.block(x_sel, cos_sel, sin_sel)  # (B, k, C)
        s = torch.sigmoid(scores.gather(1, pick))[..., None]  # (B, k, 1)
        y = y + (s / s.detach() - 1) * (y - x_sel)  # = y in value; routes gradient to the router
        return x.scatter(1, pick[..., None].expand(b, k, c), y)

    def flops_per_token(self, seq_len: int) -> float:
        r"""Mean FLOPs per token of the sequence: :math:`c \cdot` (the block's linear layers)
        + attention over :math:`k` tokens + the router; capacity enters attention squared."""
        seq_len = check_int("seq_len", seq_len, min=1)
        k = mod_tokens(seq_len, self.capacity)
        f = block_flops(self.block, k)  # the block on a sequence of k tokens
        return (k / seq_len) * f["total"] + 2 * self.router.in_features


def mod_model(model: TinyLM, *, layers, capacity: float, seed: int = 0) -> TinyLM:
    """A copy of ``model`` whose blocks ``layers`` are :class:`MoDBlock` s of ``capacity``
    (Raposo et al. route every other block). The original model is not changed."""
    model = _check_model(model)
    capacity = _check_capacity(capacity)
    n = model.config.n_layers
    if isinstance(layers, int) or not isinstance(layers, (list, tuple)) or not layers:
        raise TypeError(f"layers must be a non-empty list of block indices in [0, {n - 1}], got {layers!r}")
    layers = [check_int("layers", i, min=0, max=n - 1) for i in layers]
    if len(set(layers)) != len(layers):
        raise ValueError(f"layers must not repeat a block, got {layers}")
    out = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):  # seeded routers, the caller's random state untouched
        torch.manual_seed(seed)
        for i in layers:
            out.blocks[i] = MoDBlock(out.blocks[i], capacity=capacity)
    return out


def mod_flops_per_token(model: TinyLM, seq_len: int) -> dict:
    """Mean forward FLOPs per token of a model with MoD blocks: ``{"total", "dense", "fraction",
    "block_fraction"}`` (``dense``: every block processing every token, no routers;
    ``block_fraction``: the same ratio without the LM head, which MoD does not touch)."""
    model = check_type("model", model, TinyLM)
    seq_len = check_int("seq_len", seq_len, min=1)
    head = 2 * model.lm_head.in_features * model.lm_head.out_features
    blocks = dense_blocks = 0.0
    for b in model.blocks:
        plain = b.block if isinstance(b, MoDBlock) else b
        dense_blocks += block_flops(plain, seq_len)["total"]
        blocks += b.flops_per_token(seq_len) if isinstance(b, MoDBlock) else block_flops(b, seq_len)["total"]
    return {
        "total": float(blocks + head),
        "dense": float(dense_blocks + head),
        "fraction": float((blocks + head) / (dense_blocks + head)),
        "block_fraction": float(blocks / dense_blocks),
    }
