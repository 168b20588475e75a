"""The patient: a Llama-style decoder-only language model, small enough for a laptop CPU.

``TinyLM`` = token embedding -> ``n_layers`` x [RMSNorm -> attention (RoPE, GQA, causal SDPA)
-> residual -> RMSNorm -> SwiGLU MLP -> residual] -> RMSNorm -> LM head (tied to the
embedding by default). It is the same recipe as Llama 2/3 and Mistral, scaled down.

Later chapters operate on this one model instead of copying it:

* the MLP and the attention are chosen **by config** (``ModelConfig.mlp`` / ``.attention``)
  from a registry, so chapter 02 plugs in ``"moe"`` and chapter 03 a sparse pattern;
* Linear layers are swapped by :func:`replace_linears` (quantized in chapter 05, pruned in
  chapter 06).

Weights use the Hugging Face Llama layout and RoPE convention (rotate-half), so a TinyLM
can be checked against ``transformers.LlamaForCausalLM`` with copied weights (tests do).
"""

from __future__ import annotations

import importlib
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.checks import check_bool, check_choice, check_float, check_int, check_keys, check_tensor, check_type

# --------------------------------------------------------------------------- config


@dataclass
class ModelConfig:
    """Hyper-parameters of a TinyLM. ``d_ff`` defaults to the Llama rule (~8/3 · d_model)."""

    vocab_size: int = 4096
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None  # None -> n_heads (plain multi-head); fewer -> GQA
    d_ff: int | None = None  # None -> multiple of 16 nearest 8/3 · d_model
    max_seq_len: int = 256
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    mlp: str = "swiglu"  # key into the MLP registry (chapter 02 adds "moe")
    mlp_options: dict = field(default_factory=dict)
    attention: str = "full"  # key into the attention registry (chapter 03 adds sparse kinds)
    attention_options: dict = field(default_factory=dict)

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "max_seq_len"):
            check_int(name, getattr(self, name), min=1)
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.d_ff is None:
            self.d_ff = 16 * max(1, round(8 * self.d_model / 3 / 16))
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError(f"head_dim = d_model / n_heads must be even for RoPE, got {self.d_model // self.n_heads}")
        check_int("n_kv_heads", self.n_kv_heads, min=1, max=self.n_heads)
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_kv_heads must divide n_heads ({self.n_heads}), got {self.n_kv_heads}")
        check_int("d_ff", self.d_ff, min=1)
        check_float("rope_theta", self.rope_theta, min=0, min_inclusive=False)
        check_float("norm_eps", self.norm_eps, min=0, min_inclusive=False)
        check_bool("tie_embeddings", self.tie_embeddings)
        check_choice("mlp", self.mlp, sorted(MLP_REGISTRY))
        check_choice("attention", self.attention, sorted(ATTENTION_REGISTRY))
        check_type("mlp_options", self.mlp_options, dict)
        check_type("attention_options", self.attention_options, dict)
        # each plug-in validates its own options now, not when the model is built
        for registry, name in ((MLP_REGISTRY, self.mlp), (ATTENTION_REGISTRY, self.attention)):
            check_config = getattr(_resolve(registry, name), "check_config", None)
            if check_config is not None:
                check_config(self)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        return cls(**check_keys("ModelConfig", d, cls.__dataclass_fields__))


# --------------------------------------------------------------------------- registries
# name -> "module:attribute" (imported on first use) or a factory. The contract of a plug-in:
#
# * ``factory(config, layer_idx) -> nn.Module`` builds it in every block;
# * ``factory.check_config(config)``, when the factory defines it, validates
#   ``config.mlp_options`` / ``config.attention_options``. ``ModelConfig`` calls it when the
#   config is made, so ``mlp_options={"n_experst": 4}`` fails there, not when the model is
#   built. The dense defaults (``SwiGLU``, ``Attention``) take no options.
# * an attention module implements ``forward(x, cos, sin, cache=None)``,
#   ``new_cache(batch_size, max_len, dtype=, device=)``, ``mean_context(seq_len)`` (the keys
#   a query reads on average, what ``flops_per_token`` charges) and has ``n_heads`` and
#   ``head_dim``; :class:`Attention` is the base to subclass. ``Block`` checks this at build time.

MLP_REGISTRY: dict[str, str | Callable] = {
    "swiglu": "course_lib.model:SwiGLU",
    "moe": "course_lib.moe:moe_mlp",
    "conditional": "course_lib.conditional:conditional_mlp",
}
ATTENTION_REGISTRY: dict[str, str | Callable] = {
    "full": "course_lib.model:Attention",
    "sparse": "course_lib.attention:SparseAttention",
}


def register_mlp(name: str, factory: Callable) -> None:
    """Make ``ModelConfig(mlp=name)`` build ``factory(config, layer_idx)`` in every block."""
    MLP_REGISTRY[name] = factory


def register_attention(name: str, factory: Callable) -> None:
    """Make ``ModelConfig(attention=name)`` build ``factory(config, layer_idx)``."""
    ATTENTION_REGISTRY[name] = factory


def _resolve(registry: dict, name: str) -> Callable:
    """The factory registered under ``name`` (a "module:attribute" string is imported now)."""
    entry = registry[name]
    if isinstance(entry, str):
        module, attr = entry.split(":")
        entry = getattr(importlib.import_module(module), attr)
    return entry


# --------------------------------------------------------------------------- layers


class RMSNorm(nn.Module):
    r"""Root-mean-square norm: :math:`y = x / \sqrt{\mathrm{mean}(x^2) + \epsilon} \cdot g`."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):  # (..., C)
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def rope_cache(head_dim: int, max_len: int, theta: float = 10000.0):
    r"""cos and sin tables for rotary position embeddings, each (max_len, head_dim).

    Frequencies :math:`\omega_i = \theta^{-2i/d}` for :math:`i < d/2`; position :math:`p`
    rotates the pair :math:`(x_i, x_{i+d/2})` by the angle :math:`p\,\omega_i`.
    """
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)  # (d/2,)
    angles = torch.outer(torch.arange(max_len, dtype=torch.float64), inv_freq)  # (L, d/2)
    angles = torch.cat([angles, angles], dim=-1)  # (L, d): same angle for i and i + d/2
    return angles.cos().float(), angles.sin().float()


def rotate_half(x):
    """(x1, x2) -> (-x2, x1) on the two halves of the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x, cos, sin):
    r"""Rotate ``x`` (B, H, T, d) by position: :math:`x \cos + \mathrm{rot}(x) \sin`; cos/sin (T, d)."""
    return x * cos + rotate_half(x) * sin


class KVCache:
    """Keys and values of one attention layer, preallocated for ``max_len`` positions.

    ``update`` appends (B, H_kv, T, d) and returns everything cached so far. Memory grows
    with the context: ``2 · B · H_kv · max_len · d`` numbers per layer.
    """

    def __init__(
        self, batch_size: int, n_kv_heads: int, max_len: int, head_dim: int, *, dtype=torch.float32, device=None
    ):
        shape = (batch_size, n_kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.pos = 0  # number of positions filled (= absolute position of the next token)

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    def update(self, k, v):
        t = k.shape[2]
        if self.pos + t > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; cannot add {t} at position {self.pos}")
        self.k[:, :, self.pos : self.pos + t] = k
        self.v[:, :, self.pos : self.pos + t] = v
        self.pos += t
        return self.k[:, :, : self.pos], self.v[:, :, : self.pos]

    def truncate(self, length: int) -> None:
        """Forget every position from ``length`` on (speculative decoding's rollback).

        Attention reads ``[:pos]`` only, so moving the fill mark back *is* the rollback:
        the stale entries beyond it are never read and the next ``update`` overwrites them.
        Every cache kind implements ``truncate``; this one can go back to any length.
        """
        self.pos = check_int("length", length, min=0, max=self.pos)

    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes


def causal_mask(q_len: int, k_len: int, device=None):
    """Boolean (q_len, k_len) mask, True = may attend; queries are the last ``q_len`` positions."""
    offset = k_len - q_len
    return torch.arange(k_len, device=device)[None, :] <= torch.arange(q_len, device=device)[:, None] + offset


class Attention(nn.Module):
    r"""Causal multi-head attention with RoPE and grouped-query attention (GQA).

    :math:`\mathrm{softmax}(QK^\top/\sqrt{d})V` through ``F.scaled_dot_product_attention``.
    With ``n_kv_heads < n_heads`` each key/value head serves ``n_heads / n_kv_heads`` query
    heads, shrinking the KV cache by that factor.
    """

    def __init__(self, config: ModelConfig, layer_idx: int = 0):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        d = config.d_model
        self.q_proj = nn.Linear(d, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(d, self.n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d, self.n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, d, bias=False)

    @classmethod
    def check_config(cls, config: ModelConfig) -> None:
        """Full attention has no options: refuse any, rather than ignore them."""
        check_keys("attention_options for attention='full'", config.attention_options, ())

    def new_cache(self, batch_size: int, max_len: int, *, dtype=torch.float32, device=None) -> KVCache:
        return KVCache(batch_size, self.n_kv_heads, max_len, self.head_dim, dtype=dtype, device=device)

    def mean_context(self, seq_len: int) -> float:
        r"""Keys a query reads on average over a causal sequence of ``seq_len``: :math:`(T + 1) / 2`."""
        return (seq_len + 1) / 2

    def project(self, x, cos, sin):
        """x (B, T, C) -> q (B, H, T, d), k and v (B, H_kv, T, d), RoPE applied to q and k."""
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def forward(self, x, cos, sin, cache: KVCache | None = None):  # x (B, T, C)
        b, t, _ = x.shape
        q, k, v = self.project(x, cos, sin)
        start = 0
        if cache is not None:
            start = cache.pos
            k, v = cache.update(k, v)  # (B, H_kv, start + T, d)
        if self.n_kv_heads != self.n_heads:  # GQA: share each kv head across a group of q heads
            rep = self.n_heads // self.n_kv_heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        if start == 0:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif t == 1:  # one new token sees every cached position
            y = F.scaled_dot_product_attention(q, k, v)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(t, k.shape[2], x.device))
        return self.o_proj(y.transpose(1, 2).reshape(b, t, -1))  # (B, T, C)


class SwiGLU(nn.Module):
    r"""Gated MLP: :math:`W_{down}(\mathrm{SiLU}(W_{gate}x) \odot W_{up}x)` (Shazeer 2020)."""

    def __init__(
        self,
        config: ModelConfig | None = None,
        layer_idx: int = 0,
        *,
        d_model: int | None = None,
        d_ff: int | None = None,
    ):
        super().__init__()
        d_model = d_model if d_model is not None else config.d_model
        d_ff = d_ff if d_ff is not None else config.d_ff
        self.gate_proj = nn.Linear(d_model, d_ff, bias=False)
        self.up_proj = nn.Linear(d_model, d_ff, bias=False)
        self.down_proj = nn.Linear(d_ff, d_model, bias=False)

    @staticmethod
    def check_config(config: ModelConfig) -> None:
        """The dense MLP has no options: refuse any, rather than ignore them."""
        check_keys("mlp_options for mlp='swiglu'", config.mlp_options, ())

    def forward(self, x):  # (..., C) -> (..., C)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


#: what the model and the decoders call on an attention module (see the registries above)
ATTENTION_CONTRACT = ("forward", "new_cache", "mean_context", "n_heads", "head_dim")


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm(x))`` then ``x + mlp(norm(x))``."""

    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.attn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.attn = _resolve(ATTENTION_REGISTRY, config.attention)(config, layer_idx)
        missing = [a for a in ATTENTION_CONTRACT if not hasattr(self.attn, a)]
        if missing:
            raise TypeError(
                f"attention={config.attention!r} built a {type(self.attn).__name__} without {missing}; "
                "an attention module implements forward, new_cache and mean_context (subclass model.Attention)"
            )
        self.mlp_norm = RMSNorm(config.d_model, config.norm_eps)
        self.mlp = _resolve(MLP_REGISTRY, config.mlp)(config, layer_idx)

    def forward(self, x, cos, sin, cache=None):
        x = x + self.attn(self.attn_norm(x), cos, sin, cache)
        return x + self.mlp(self.mlp_norm(x))


class TinyLM(nn.Module):
    """A Llama-style decoder. ``forward(idx) -> logits``; ``generate`` decodes with a KV cache."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = check_type("config", config, ModelConfig)
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        cos, sin = rope_cache(config.head_dim, config.max_seq_len, config.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    def reset_parameters(self, std: float = 0.02) -> None:
        """Normal(0, 0.02) weights; residual output projections scaled by 1/sqrt(2·n_layers) (GPT-2)."""
        for name, p in self.named_parameters():
            if p.dim() == 1 and name.endswith("norm.weight"):
                nn.init.ones_(p)
            elif p.dim() >= 2:
                scale = (
                    1 / math.sqrt(2 * self.config.n_layers)
                    if name.endswith(("o_proj.weight", "down_proj.weight"))
                    else 1.0
                )
                nn.init.normal_(p, mean=0.0, std=std * scale)
            else:
                nn.init.zeros_(p)

    # -- forward -------------------------------------------------------------------

    def forward(self, idx, *, cache: list | None = None):
        """idx (B, T) token ids -> logits (B, T, vocab). With ``cache``, positions continue from it."""
        check_tensor("idx", idx, dims=("batch", "seq_len"), floating=False)
        b, t = idx.shape
        if idx.numel() == 0:  # an empty prompt: F.embedding and the reshapes below would fail obscurely
            raise ValueError(f"idx must hold at least one token id per row, got shape {tuple(idx.shape)}")
        lo, hi = torch.aminmax(idx)
        if lo < 0 or hi >= self.config.vocab_size:  # F.embedding would raise a bare IndexError
            raise ValueError(
                f"idx must hold token ids in [0, vocab_size = {self.config.vocab_size}), got ids from {int(lo)} "
                f"to {int(hi)}: tokens from another tokenizer or vocabulary?"
            )
        start = cache[0].pos if cache else 0
        if start + t > self.config.max_seq_len:
            raise ValueError(f"sequence of {start + t} positions exceeds max_seq_len = {self.config.max_seq_len}")
        cos, sin = self.rope_cos[start : start + t], self.rope_sin[start : start + t]
        x = self.embed(idx)  # (B, T, C)
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, cache[i] if cache else None)
        return self.lm_head(self.norm(x))  # (B, T, V)

    def aux_loss(self):
        """Sum of auxiliary losses that layers set during the last forward (e.g. MoE balance)."""
        losses = [
            m.aux_loss
            for m in self.modules()
            if m is not self and getattr(m, "aux_loss", None) is not None and torch.is_tensor(m.aux_loss)
        ]
        return sum(losses) if losses else None

    def loss(self, idx, targets):
        """Mean next-token cross-entropy in nats (auxiliary losses not included)."""
        logits = self(idx)
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))

    # -- generation ------------------------------------------------------------------

    def new_cache(self, batch_size: int, max_len: int | None = None) -> list:
        """One cache per layer, from each attention module (a sparse layer may bring its own kind)."""
        max_len = self.config.max_seq_len if max_len is None else max_len
        p = self.embed.weight
        return [blk.attn.new_cache(batch_size, max_len, dtype=p.dtype, device=p.device) for blk in self.blocks]

    @torch.no_grad()
    def generate(
        self,
        idx,
        max_new_tokens: int,
        *,
        temperature: float = 0.0,
        top_k: int | None = None,
        generator=None,
        use_cache: bool = True,
    ):
        """Continue ``idx`` (B, T) by ``max_new_tokens`` tokens.

        ``temperature = 0`` is greedy; otherwise sample from softmax(logits / temperature),
        restricted to the ``top_k`` most likely tokens when given. With ``use_cache`` the
        prompt is processed once (prefill) and each new token costs one position (decode).
        """
        check_int("max_new_tokens", max_new_tokens, min=0)
        check_float("temperature", temperature, min=0)
        check_int("top_k", top_k, min=1, allow_none=True)
        check_bool("use_cache", use_cache)
        total = idx.shape[1] + max_new_tokens
        if total > self.config.max_seq_len:
            raise ValueError(f"prompt + max_new_tokens = {total} exceeds max_seq_len = {self.config.max_seq_len}")
        cache = self.new_cache(idx.shape[0], total) if use_cache else None
        new, _ = decode_tokens(
            self, idx, cache, max_new_tokens, temperature=temperature, top_k=top_k, generator=generator
        )  # (B, max_new_tokens)
        return torch.cat([idx, new], dim=1)

    # -- accounting --------------------------------------------------------------------

    def num_params(self, *, active: bool = False, embedding: bool = True) -> int:
        """Parameters (shared ones once). ``active`` counts only those one token uses (MoE)."""
        total = sum(p.numel() for p in self.parameters())
        if active:
            total -= sum(m.inactive_params() for m in self.modules() if hasattr(m, "inactive_params"))
        if not embedding:
            total -= self.embed.weight.numel()
            if not self.config.tie_embeddings:
                total -= self.lm_head.weight.numel()
        return total

    def flops_per_token(self, seq_len: int | None = None) -> dict:
        r"""Forward FLOPs per token, counted from the layers (training ≈ 3x this).

        matmuls: :math:`2 \times` the active weights of every linear layer (lm_head included,
        embedding lookup free). attention: :math:`QK^\top` and :math:`AV` cost
        :math:`2 \cdot 2 \cdot n_{layers} \cdot \bar{c} \cdot d_{attn}`, where
        :math:`\bar{c} = (T+1)/2` is a causal token's average context over a sequence of T.
        """
        seq_len = check_int("seq_len", self.config.max_seq_len if seq_len is None else seq_len, min=1)
        linear = sum(m.in_features * m.out_features for m in self.modules() if _is_linear_like(m))
        linear -= sum(m.inactive_params() for m in self.modules() if hasattr(m, "inactive_params"))
        # per layer: a sparse attention reads fewer keys; a pruned one (chapter 06) has fewer heads
        attn = 2 * 2 * sum(b.attn.mean_context(seq_len) * b.attn.n_heads * b.attn.head_dim for b in self.blocks)
        return {"matmul": 2 * linear, "attention": attn, "total": 2 * linear + attn}


def _is_linear_like(m: nn.Module) -> bool:
    """nn.Linear or a drop-in for it (quantized, pruned): anything with in/out_features and a forward."""
    return isinstance(m, nn.Linear) or (
        hasattr(m, "in_features") and hasattr(m, "out_features") and not list(m.children())
    )


# --------------------------------------------------------------------------- sampling and the decode loop
# The one sampler of the course: ``generate`` and speculative decoding's draft and verify
# (course_lib.speculative) all draw through ``token_probs``.


def token_probs(logits, *, temperature: float = 1.0, top_k: int | None = None):
    r"""The distribution the model samples from: :math:`\mathrm{softmax}(z / T)`, restricted to
    the ``top_k`` largest logits when given. logits (..., V) -> probabilities (..., V)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 for sampling, got {temperature!r}")
    z = logits.float() / temperature
    if top_k is not None and top_k < z.size(-1):
        kth = torch.topk(z, top_k, dim=-1).values[..., -1:]
        z = z.masked_fill(z < kth, float("-inf"))
    return F.softmax(z, dim=-1)


def _sample(logits, temperature: float, top_k: int | None, generator, want_probs: bool):
    """(next tokens (B, 1), the probabilities they were drawn from (B, V) or None)."""
    if temperature == 0:
        return logits.argmax(-1, keepdim=True), None
    probs = token_probs(logits, temperature=temperature, top_k=top_k)
    return torch.multinomial(probs, 1, generator=generator), (probs if want_probs else None)


def sample_next(logits, *, temperature: float = 0.0, top_k: int | None = None, generator=None):
    """Pick the next token from logits (B, V): greedy when temperature is 0, else a draw from
    :func:`token_probs`. Returns (B, 1)."""
    return _sample(logits, temperature, top_k, generator, False)[0]


@torch.no_grad()
def decode_tokens(
    model,
    feed,
    cache: list | None,
    n: int,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    generator=None,
    return_probs: bool = False,
):
    """The decode loop: ``n`` new tokens after ``feed`` (B, T >= 1), one forward each.

    With a ``cache`` the first forward takes ``feed`` (what the cache lacks: the whole
    prompt at prefill) and each later one only the token just sampled; without one every
    forward re-reads the whole sequence. Returns ``(tokens (B, n), probs)``, where
    ``probs`` (B, n, V) are the distributions the tokens were drawn from when sampling
    with ``return_probs`` (speculative decoding's draft needs them), else None.
    ``TinyLM.generate`` and the draft of :mod:`course_lib.speculative` both run this loop.
    """
    tokens, probs, seq = [], [], feed
    for _ in range(n):
        logits = model(feed if cache is not None else seq, cache=cache)[:, -1]  # (B, V)
        nxt, p = _sample(logits, temperature, top_k, generator, return_probs)  # (B, 1), (B, V) | None
        tokens.append(nxt)
        if p is not None:
            probs.append(p)
        feed = nxt
        if cache is None:
            seq = torch.cat([seq, nxt], dim=1)
    out = torch.cat(tokens, dim=1) if tokens else feed.new_zeros((feed.shape[0], 0))
    return out, (torch.stack(probs, dim=1) if probs else None)


def to_transformers_llama(model: TinyLM):
    """The same network as transformers' ``LlamaForCausalLM``, weights copied in (eval mode).

    TinyLM follows Llama's design and naming closely enough that only a few prefixes differ;
    the tests use this to cross-check the patient (and chapters built on it) against the
    reference implementation. Needs ``transformers`` (a dev dependency).
    """
    check_type("model", model, TinyLM)
    import transformers

    c = model.config
    hf = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=c.vocab_size,
            hidden_size=c.d_model,
            intermediate_size=c.d_ff,
            num_hidden_layers=c.n_layers,
            num_attention_heads=c.n_heads,
            num_key_value_heads=c.n_kv_heads,
            max_position_embeddings=c.max_seq_len,
            rope_theta=c.rope_theta,
            rms_norm_eps=c.norm_eps,
            tie_word_embeddings=c.tie_embeddings,
            pad_token_id=None,
            bos_token_id=None,
            eos_token_id=None,
        )
    ).eval()
    rename = {
        "embed.": "model.embed_tokens.",
        "blocks.": "model.layers.",
        "attn_norm": "input_layernorm",
        "mlp_norm": "post_attention_layernorm",
        ".attn.": ".self_attn.",
    }
    state = {}
    for key, v in model.state_dict().items():
        for a, b in rename.items():
            key = key.replace(a, b)
        state["model.norm.weight" if key == "norm.weight" else key] = v
    hf.load_state_dict(state, strict=True)
    return hf


def replace_linears(model: nn.Module, make: Callable, *, where: Callable | None = None) -> list[str]:
    """Swap Linear layers in place: ``make(name, linear) -> new module`` for each chosen one.

    ``where(name, linear) -> bool`` picks them; the default takes every ``nn.Linear`` except
    ``lm_head`` (tied to the embedding). Returns the names replaced. This is how chapters 05
    and 06 quantize or prune a patient without copying the model code.
    """
    where = where or (lambda name, m: not name.endswith("lm_head"))
    chosen = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and where(n, m)]
    for name, linear in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, make(name, linear))
    return [n for n, _ in chosen]
