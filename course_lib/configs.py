"""Published configurations of real language models, as data, and the arithmetic on them.

Chapters 00 (the scaling wall), 02 (mixture of experts), 11 (hardware) and 12 (case
studies) reason about models far too large to run here. They do it from the published
configuration: a Hugging Face ``config.json`` where one exists, the paper's table where not.
Every entry of :data:`MODELS` carries its ``"source"``.

Parameter count of a decoder-only transformer (Llama layout: RMSNorm, RoPE, gated MLP,
no biases), with :math:`V` vocabulary, :math:`d` hidden size, :math:`f` intermediate size,
:math:`L` layers, :math:`h` query heads, :math:`h_{kv}` key/value heads, :math:`d_h` head dim,
:math:`E` experts of which :math:`k` are used per token:

.. math::

    N_{\\text{attn}} = d\\,(h\\,d_h) + 2\\,d\\,(h_{kv} d_h) + (h\\,d_h)\\,d
    \\qquad N_{\\text{mlp}} = 3\\,d\\,f \\qquad N_{\\text{router}} = d\\,E

    N = V d\\,(2 - [\\text{tied}]) + d + L\\,(N_{\\text{attn}} + E\\,N_{\\text{mlp}} + N_{\\text{router}} + 2d)

(a dense model has :math:`E = 1` and no router), and the *active* count replaces :math:`E` by
:math:`k` in the MLP term (the router itself always runs).
Layouts that differ (GPT-3: learned positions, LayerNorm, a plain 4x GELU MLP with biases;
GLaM: MoE in every other layer, plain experts) say so in their ``"architecture"`` entry.

Memory: weights take ``N x bytes(dtype)``; the KV cache of one sequence of length
:math:`T` takes :math:`2\\,L\\,h_{kv}\\,d_h\\,T` values.
"""

from __future__ import annotations

import copy
import math

from course_lib.checks import check_bool, check_choice, check_int, check_keys, check_type

__all__ = [
    "MODELS",
    "DTYPE_BYTES",
    "get",
    "names",
    "count_params",
    "param_breakdown",
    "weight_bytes",
    "kv_cache_bytes",
    "dtype_bytes",
    "from_model_config",
]

# Bytes per stored value. int4 packs two values into one byte.
DTYPE_BYTES: dict[str, float] = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "int8": 1.0, "int4": 0.5}

_HF = "https://huggingface.co/{}/blob/main/config.json"

# Layout defaults (the Llama family). An "architecture" entry overrides some of them.
_ARCH_DEFAULTS = {
    "mlp": "gated",  # "gated": gate, up, down (SwiGLU/GeGLU, 3 matrices); "plain": up, down (2 matrices)
    "expert_mlp": None,  # layout of each expert's MLP; None = same as "mlp"
    "linear_bias": False,  # biases on every linear layer (GPT-2/3)
    "norm": "rmsnorm",  # "rmsnorm": a weight vector; "layernorm": weight and bias
    "position": "rope",  # "rope" (no parameters) or "learned" (max_position_embeddings x hidden)
    "moe_every": 1,  # 1: every layer is MoE (Mixtral); 2: every other layer (GLaM, GShard)
}

MODELS: dict[str, dict] = {
    "llama-2-7b": {
        "vocab_size": 32000,
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "tie_word_embeddings": False,
        "max_position_embeddings": 4096,
        "source": _HF.format("meta-llama/Llama-2-7b-hf"),
    },
    "llama-2-70b": {
        "vocab_size": 32000,
        "hidden_size": 8192,
        "intermediate_size": 28672,
        "num_hidden_layers": 80,
        "num_attention_heads": 64,
        "num_key_value_heads": 8,
        "tie_word_embeddings": False,
        "max_position_embeddings": 4096,
        "source": _HF.format("meta-llama/Llama-2-70b-hf"),
    },
    "llama-3-8b": {
        "vocab_size": 128256,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "tie_word_embeddings": False,
        "max_position_embeddings": 8192,
        "source": _HF.format("meta-llama/Meta-Llama-3-8B"),
    },
    "llama-3.1-405b": {
        "vocab_size": 128256,
        "hidden_size": 16384,
        "intermediate_size": 53248,
        "num_hidden_layers": 126,
        "num_attention_heads": 128,
        "num_key_value_heads": 8,
        "tie_word_embeddings": False,
        "max_position_embeddings": 131072,
        "source": _HF.format("meta-llama/Llama-3.1-405B"),
    },
    "mistral-7b": {
        "vocab_size": 32000,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "tie_word_embeddings": False,
        "max_position_embeddings": 32768,
        "sliding_window": 4096,
        "source": _HF.format("mistralai/Mistral-7B-v0.1"),
    },
    "mixtral-8x7b": {
        "vocab_size": 32000,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "tie_word_embeddings": False,
        "num_local_experts": 8,
        "num_experts_per_tok": 2,
        "max_position_embeddings": 32768,
        "sliding_window": None,
        "source": _HF.format("mistralai/Mixtral-8x7B-v0.1"),
    },
    "mixtral-8x22b": {
        "vocab_size": 32768,
        "hidden_size": 6144,
        "intermediate_size": 16384,
        "num_hidden_layers": 56,
        "num_attention_heads": 48,
        "num_key_value_heads": 8,
        "tie_word_embeddings": False,
        "num_local_experts": 8,
        "num_experts_per_tok": 2,
        "max_position_embeddings": 65536,
        "sliding_window": None,
        "source": _HF.format("mistralai/Mixtral-8x22B-v0.1"),
    },
    "phi-3-mini": {
        # Phi-3 fuses q/k/v into one qkv_proj and gate/up into gate_up_proj: same count.
        "vocab_size": 32064,
        "hidden_size": 3072,
        "intermediate_size": 8192,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "tie_word_embeddings": False,
        "max_position_embeddings": 4096,
        "source": _HF.format("microsoft/Phi-3-mini-4k-instruct"),
    },
    "gpt-3-175b": {
        # Brown et al. 2020, Table 2.1: n_layers 96, d_model 12288, n_heads 96, d_head 128,
        # context 2048; "the same model and architecture as GPT-2" (learned positions,
        # pre-LayerNorm, biases, 4x GELU MLP, tied input/output embedding, the GPT-2 BPE of
        # 50257 tokens). The paper states 175.0B parameters (rounded); this layout counts
        # 174.6B — the paper does not publish the exact count, so tests allow 0.5 %.
        "vocab_size": 50257,
        "hidden_size": 12288,
        "intermediate_size": 4 * 12288,
        "num_hidden_layers": 96,
        "num_attention_heads": 96,
        "num_key_value_heads": 96,
        "head_dim": 128,
        "tie_word_embeddings": True,
        "max_position_embeddings": 2048,
        "architecture": {"mlp": "plain", "linear_bias": True, "norm": "layernorm", "position": "learned"},
        "source": "https://arxiv.org/abs/2005.14165",
        "published_params": {"total": 175.0e9},
    },
    "glam-1.2t": {
        # Du et al. 2022, Table 4, GLaM (64B/64E): 64 layers, d_model 8192, d_ff 32768,
        # 128 heads of 128 (so attention is 16384 wide, twice d_model), 64 experts, top-2,
        # an MoE layer in every other layer (32 MoE layers); 1.2T total, 96.6B activated.
        # The paper gives no config file, so this is a reconstruction: dense FFNs are gated
        # (the paper replaces their first projection with a GLU, 3 matrices), experts are
        # plain (2 matrices), vocabulary 256K word pieces with a tied embedding, relative
        # position biases and norms ignored (< 0.01 % of the total). This layout gives
        # 1.162T / 96.60B, matching both published (rounded) totals; tests assert that.
        "vocab_size": 256000,
        "hidden_size": 8192,
        "intermediate_size": 32768,
        "num_hidden_layers": 64,
        "num_attention_heads": 128,
        "num_key_value_heads": 128,
        "head_dim": 128,
        "tie_word_embeddings": True,
        "num_local_experts": 64,
        "num_experts_per_tok": 2,
        "max_position_embeddings": 1024,
        "architecture": {"mlp": "gated", "expert_mlp": "plain", "moe_every": 2},
        "source": "https://arxiv.org/abs/2112.06905",
        "published_params": {"total": 1.2e12, "active": 96.6e9},
    },
}


def names() -> list[str]:
    """The model names :func:`get` accepts."""
    return sorted(MODELS)


def get(name: str) -> dict:
    """A deep copy of the published config ``name`` (so callers may edit it freely)."""
    check_type("name", name, str)
    return copy.deepcopy(MODELS[check_choice("name", name, names())])


def dtype_bytes(dtype: str) -> float:
    """Bytes per value of ``dtype`` (one of :data:`DTYPE_BYTES`; int4 is 0.5)."""
    return DTYPE_BYTES[check_choice("dtype", dtype, sorted(DTYPE_BYTES))]


# --------------------------------------------------------------------------- validation


def _int(config: dict, key: str, *, default=None, minimum: int = 1) -> int:
    if key not in config or config[key] is None:
        if default is None:
            raise ValueError(f"config is missing required key {key!r}")
        return default
    return check_int(f"config[{key!r}]", config[key], min=minimum)


def _dims(config: dict) -> dict:
    """Validated dimensions and layout of ``config`` (HF defaults for optional keys)."""
    check_type("config", config, dict, what="a dict (Hugging Face style)")
    d = {k: _int(config, k) for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers")}
    d["num_attention_heads"] = heads = _int(config, "num_attention_heads")
    d["num_key_value_heads"] = _int(config, "num_key_value_heads", default=heads)
    if heads % d["num_key_value_heads"]:
        raise ValueError(
            f"num_attention_heads ({heads}) must be a multiple of num_key_value_heads ({d['num_key_value_heads']})"
        )
    if "head_dim" in config and config["head_dim"] is not None:
        d["head_dim"] = _int(config, "head_dim")
    elif d["hidden_size"] % heads:
        raise ValueError(
            f"hidden_size ({d['hidden_size']}) is not divisible by num_attention_heads ({heads}); give head_dim"
        )
    else:
        d["head_dim"] = d["hidden_size"] // heads
    d["tie_word_embeddings"] = check_bool(
        "config['tie_word_embeddings']",
        config.get("tie_word_embeddings", False),  # LlamaConfig's default
    )
    d["num_local_experts"] = experts = _int(config, "num_local_experts", default=1)
    if experts > 1 and "num_experts_per_tok" not in config:
        raise ValueError("config has num_local_experts > 1 but is missing required key 'num_experts_per_tok'")
    d["num_experts_per_tok"] = k = _int(config, "num_experts_per_tok", default=1)
    if k > experts:
        raise ValueError(f"num_experts_per_tok ({k}) must be <= num_local_experts ({experts})")
    arch = {**_ARCH_DEFAULTS, **check_keys("config['architecture']", config.get("architecture") or {}, _ARCH_DEFAULTS)}
    arch["expert_mlp"] = arch["expert_mlp"] or arch["mlp"]
    for key, allowed in (
        ("mlp", ("gated", "plain")),
        ("expert_mlp", ("gated", "plain")),
        ("norm", ("rmsnorm", "layernorm")),
        ("position", ("rope", "learned")),
    ):
        check_choice(f"architecture[{key!r}]", arch[key], allowed)
    check_bool("architecture['linear_bias']", arch["linear_bias"])
    check_int("architecture['moe_every']", arch["moe_every"], min=1)
    if arch["position"] == "learned":
        d["max_position_embeddings"] = _int(config, "max_position_embeddings")
    d["arch"] = arch
    return d


# --------------------------------------------------------------------------- counting


def _linear(n_in: int, n_out: int, bias: bool) -> int:
    return n_in * n_out + (n_out if bias else 0)


def _mlp(d: int, f: int, layout: str, bias: bool) -> int:
    n_up = 2 if layout == "gated" else 1  # gated: gate and up projections
    return n_up * _linear(d, f, bias) + _linear(f, d, bias)


def param_breakdown(config: dict) -> dict[str, tuple[int, int]]:
    """Parameters by component: ``{name: (total, active per token)}``.

    Components: ``embedding``, ``positions``, ``attention``, ``mlp`` (dense layers),
    ``experts``, ``router``, ``norms``, ``lm_head`` (0 when tied).
    """
    c = _dims(config)
    a = c["arch"]
    d, f, L, V = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    E, k, bias = c["num_local_experts"], c["num_experts_per_tok"], a["linear_bias"]
    q_width, kv_width = c["num_attention_heads"] * c["head_dim"], c["num_key_value_heads"] * c["head_dim"]
    attn = _linear(d, q_width, bias) + 2 * _linear(d, kv_width, bias) + _linear(q_width, d, bias)
    norm = 2 * d if a["norm"] == "layernorm" else d
    # Which layers carry experts: with moe_every = m, layers m-1, 2m-1, ... (GShard/GLaM).
    n_moe = L // a["moe_every"] if E > 1 else 0
    n_dense = L - n_moe
    dense_mlp = _mlp(d, f, a["mlp"], bias)
    expert = _mlp(d, f, a["expert_mlp"], bias)
    embedding = V * d
    parts = {
        "embedding": (embedding, embedding),
        "positions": (c["max_position_embeddings"] * d,) * 2 if a["position"] == "learned" else (0, 0),
        "attention": (L * attn, L * attn),
        "mlp": (n_dense * dense_mlp, n_dense * dense_mlp),
        "experts": (n_moe * E * expert, n_moe * k * expert),
        "router": (n_moe * d * E,) * 2,
        "norms": ((2 * L + 1) * norm,) * 2,  # two per block and the final one
        "lm_head": (0, 0) if c["tie_word_embeddings"] else (embedding, embedding),
    }
    return parts


def count_params(config: dict) -> tuple[int, int]:
    """``(total, active per token)`` parameters of a Hugging Face-style ``config`` dict.

    Reproduces published counts exactly for the Llama/Mistral/Mixtral layout (e.g.
    Llama-2-7B 6,738,415,616; Mixtral-8x7B 46,702,792,704 total, 12,879,925,248 active).
    Active counts every parameter a token touches: embeddings, attention, the router,
    the ``num_experts_per_tok`` chosen experts, norms and the output head.
    """
    parts = param_breakdown(config)
    return sum(t for t, _ in parts.values()), sum(a for _, a in parts.values())


def _matrix_rows_cols(config: dict) -> list[tuple[int, int, int]]:
    """``(count, rows, cols)`` of every weight matrix (cols = the input dimension)."""
    c = _dims(config)
    a = c["arch"]
    d, f, L, V = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    E = c["num_local_experts"]
    qw, kvw = c["num_attention_heads"] * c["head_dim"], c["num_key_value_heads"] * c["head_dim"]
    n_moe = L // a["moe_every"] if E > 1 else 0
    n_dense = L - n_moe

    def mlp(layout: str) -> list[tuple[int, int, int]]:
        return [(2 if layout == "gated" else 1, f, d), (1, d, f)]

    mats = [(1, V, d)] + ([] if c["tie_word_embeddings"] else [(1, V, d)])
    if a["position"] == "learned":
        mats.append((1, c["max_position_embeddings"], d))
    mats += [(L, qw, d), (2 * L, kvw, d), (L, d, qw)]
    mats += [(n * n_dense, r, co) for n, r, co in mlp(a["mlp"])]
    mats += [(n * n_moe * E, r, co) for n, r, co in mlp(a["expert_mlp"])]
    if n_moe:
        mats.append((n_moe, E, d))
    return mats


def weight_bytes(config: dict, dtype: str = "fp16", *, group_size: int | None = None) -> int:
    """Bytes to store every parameter of ``config`` in ``dtype``.

    ``int4`` stores two weights per byte (rounded up). With ``group_size`` (int8/int4 only)
    each weight matrix also stores one fp16 scale per ``group_size`` consecutive inputs of
    every output row, ``rows x ceil(cols / group_size) x 2`` bytes (symmetric quantization:
    no zero points). Vectors (norms, biases) are counted in ``dtype`` as well — in practice
    they stay in 16 bits, a difference below 0.01 % for these models.
    """
    total, _ = count_params(config)
    stored = math.ceil(total * dtype_bytes(dtype))
    if group_size is None:
        return stored
    if dtype not in ("int8", "int4"):
        raise ValueError(f"group_size only applies to int8/int4, got dtype={dtype!r}")
    check_int("group_size", group_size, min=1)
    scales = sum(n * rows * math.ceil(cols / group_size) for n, rows, cols in _matrix_rows_cols(config))
    return stored + 2 * scales


def kv_cache_bytes(
    config: dict, *, seq_len: int, batch_size: int = 1, dtype: str = "fp16", rolling_buffer: bool = False
) -> int:
    """Bytes of the key/value cache: ``2 x layers x kv_heads x head_dim x seq_len x batch x bytes``.

    With ``rolling_buffer=True`` a model with a ``sliding_window`` (Mistral-7B) keeps only
    the last ``sliding_window`` positions, as Mistral's reference implementation does;
    the default counts every position, as a plain (Hugging Face default) cache does.
    """
    c = _dims(config)
    check_int("seq_len", seq_len, min=1)
    check_int("batch_size", batch_size, min=1)
    check_bool("rolling_buffer", rolling_buffer)
    positions = seq_len
    window = config.get("sliding_window")
    if rolling_buffer and window:
        positions = min(seq_len, int(window))
    values = 2 * c["num_hidden_layers"] * c["num_key_value_heads"] * c["head_dim"] * positions * batch_size
    return math.ceil(values * dtype_bytes(dtype))


def from_model_config(config) -> dict:
    """The Hugging Face-style dict of a course :class:`~course_lib.model.ModelConfig` (dense SwiGLU)."""
    from course_lib.model import ModelConfig

    check_type("config", config, ModelConfig)
    if config.mlp != "swiglu":
        raise ValueError(f"from_model_config handles the dense SwiGLU patient only, got mlp={config.mlp!r}")
    return {
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "intermediate_size": config.d_ff,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads,
        "head_dim": config.head_dim,
        "tie_word_embeddings": config.tie_embeddings,
        "max_position_embeddings": config.max_seq_len,
        "source": "course_lib.model.ModelConfig",
    }
