r"""Case studies (chapter 12): published numbers about real models, with their sources, and the
arithmetic that turns them into comparable rows.

The article the course answers makes five claims about real systems (Mixtral, GLaM, GPT-4,
Phi-3, Claude 3 Haiku). Checking them needs two kinds of input:

* **published numbers** — parameter counts, benchmark scores, energy, prices, the provider's
  own words. Each is a :class:`Fact` in :data:`FACTS` with its :class:`Source` (a URL plus
  the table, section or page where the number is), and a *status*: what the maker published
  is ``"published"`` or ``"confirmed by the provider"``, what only the press says is
  ``"reported"``, what nobody published is ``"not disclosed"``. Nothing here is typed into a
  notebook's prose; the chapter reads it from this module.
* **configurations** — Hugging Face ``config.json`` files or the paper's table, in
  :data:`course_lib.configs.MODELS` (plus :data:`EXTRA_CONFIGS` for the two this chapter
  adds), counted by :func:`course_lib.configs.count_params`.

The arithmetic reuses the course's tools: chapter 00's inference FLOPs and expected experts
touched (:mod:`course_lib.scaling`), the weight and KV-cache bytes of :mod:`course_lib.configs`,
and chapter 11's roofline and decode bound (:mod:`course_lib.hardware`). A decode step of a
batch of :math:`B` sequences at context :math:`T` on :math:`n` devices takes at least

.. math::

    t_{\text{step}} = \max\Big(\frac{Q_{\text{weights}}(B) + Q_{\text{KV}}(B, T)}{n\,\beta},\;
    \frac{B\,F_{\text{token}}(T)}{n\,P\,u}\Big)

with :math:`\beta` the memory bandwidth, :math:`P` the peak FLOP/s, :math:`u` the achieved
fraction of peak (MFU), :math:`F_{\text{token}} = 2N_{\text{active}} + 4LTw` (chapter 00) and
:math:`Q_{\text{weights}}(B)` the shared weights plus the experts the batch touches: with
per-token probability :math:`p_e` of using expert :math:`e`, a batch touches

.. math:: \mathbb{E}[\text{experts}] = \sum_e 1 - (1 - p_e)^B

of them per MoE layer (:func:`experts_touched`; uniform routing, :math:`p_e = k/E`, gives
chapter 00's :math:`E(1 - (1 - k/E)^B)`). Tokens/s is :math:`B / t_{\text{step}}`; dollars
per million tokens and joules per token follow from a stated price per device-hour and a
stated power per device (:func:`decode_estimate`). These are lower bounds on time (no
communication, no kernel overheads), so upper bounds on speed.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

from course_lib import configs, scaling
from course_lib.checks import check_choice, check_float, check_int, check_type

__all__ = [
    "Source",
    "Fact",
    "FACTS",
    "fact",
    "EXTRA_CONFIGS",
    "config",
    "COMPARED",
    "PRECISIONS",
    "MIXTRAL_TABLE2",
    "Hardware",
    "h100",
    "cpu_hardware",
    "ASSUMPTIONS",
    "experts_touched",
    "measured_load_shares",
    "flops_per_token",
    "step_bytes",
    "DecodeEstimate",
    "decode_estimate",
    "speedup",
    "break_even_tokens_per_s",
    "smallest_batch_for",
    "comparison_rows",
    "comparison_figure",
]

# --------------------------------------------------------------------------- sources and facts

STATUSES = ("published", "confirmed by the provider", "reported", "not disclosed")


@dataclass(frozen=True)
class Source:
    """Where a number comes from: a URL (paper or provider page) and the table, section or page in it."""

    url: str
    where: str

    def __post_init__(self):
        if not (isinstance(self.url, str) and self.url.startswith("https://")):
            raise ValueError(f"url must be an https:// link, got {self.url!r}")
        if not (isinstance(self.where, str) and self.where.strip()):
            raise ValueError("where must name the table, section or page the number comes from")

    def cite(self) -> str:
        return f"{self.url} ({self.where})"


@dataclass(frozen=True)
class Fact:
    """One published (or reported, or undisclosed) figure: value, unit, what it is, its source, its status."""

    value: float | str | None
    unit: str
    what: str
    source: Source
    status: str = "published"

    def __post_init__(self):
        check_choice("status", self.status, STATUSES)
        if self.status == "not disclosed" and self.value is not None:
            raise ValueError("a 'not disclosed' fact has value None")


MIXTRAL_PAPER = "https://arxiv.org/abs/2401.04088"
MISTRAL_POST = "https://mistral.ai/news/mixtral-of-experts/"
GLAM_PAPER = "https://arxiv.org/abs/2112.06905"
GPT3_PAPER = "https://arxiv.org/abs/2005.14165"
PATTERSON = "https://arxiv.org/abs/2104.10350"
PHI3_PAPER = "https://arxiv.org/abs/2404.14219"
GPT4_REPORT = "https://arxiv.org/abs/2303.08774"
DECODER_GPT4 = "https://the-decoder.com/gpt-4-architecture-datasets-costs-and-more-leaked/"
CLAUDE3_POST = "https://www.anthropic.com/news/claude-3-family"
HAIKU_POST = "https://www.anthropic.com/news/claude-3-haiku"
PHI3_MEDIUM_CONFIG = "https://huggingface.co/microsoft/Phi-3-medium-4k-instruct/blob/main/config.json"
PHI3_SMALL_CONFIG = "https://huggingface.co/microsoft/Phi-3-small-8k-instruct/blob/main/config.json"

_mixtral_t2 = Source(MIXTRAL_PAPER, "Table 2 (all models re-evaluated with Mistral's pipeline)")
_phi3_abs = Source(PHI3_PAPER, "abstract")
_gpt4_t2 = Source(GPT4_REPORT, "Table 2 (5-shot MMLU)")

FACTS: dict[str, Fact] = {
    # ---- C1 Mixtral 8x7B
    "mixtral.total_params": Fact(
        46.7e9, "parameters", "Mixtral 8x7B total parameters", Source(MISTRAL_POST, "announcement")
    ),
    "mixtral.active_params": Fact(
        12.9e9, "parameters", "Mixtral 8x7B parameters used per token", Source(MISTRAL_POST, "announcement")
    ),
    "mixtral.speedup_claim": Fact(
        6.0,
        "x",
        "'outperforms Llama 2 70B on most benchmarks with 6x faster inference' (hardware and batch not stated)",
        Source(MISTRAL_POST, "announcement, first paragraph"),
    ),
    "mixtral.moe": Fact(
        "sparse mixture of experts: 8 feed-forward experts per layer, 2 chosen per token",
        "",
        "Mixtral's architecture, described by its maker",
        Source(MIXTRAL_PAPER, "§2.1 Sparse Mixture of Experts; Table 1"),
        status="confirmed by the provider",
    ),
    # ---- C2 GLaM and GPT-3
    "glam.total_params": Fact(1.2e12, "parameters", "GLaM (64B/64E) total parameters", Source(GLAM_PAPER, "Table 4")),
    "glam.active_params": Fact(
        96.6e9, "parameters", "GLaM (64B/64E) parameters activated per token", Source(GLAM_PAPER, "Table 4")
    ),
    "glam.train_tokens": Fact(
        600e9,
        "tokens",
        "tokens the largest GLaM was trained on",
        Source(GLAM_PAPER, "text on training efficiency and energy"),
    ),
    "glam.train_energy_mwh": Fact(
        456.0,
        "MWh",
        "energy of GLaM's full training (600B tokens, TPU-v4)",
        Source(GLAM_PAPER, "Table 1; text on training energy"),
    ),
    "glam.energy_at_280b_mwh": Fact(
        213.0,
        "MWh",
        "energy of GLaM trained on 280B tokens, where it already matches or beats GPT-3",
        Source(GLAM_PAPER, "text on training efficiency and energy"),
    ),
    "glam.tokens_to_match": Fact(
        280e9,
        "tokens",
        "GLaM training tokens at which it matches GPT-3's quality",
        Source(GLAM_PAPER, "text on training efficiency and energy"),
    ),
    "gpt3.train_energy_mwh": Fact(
        1287.0,
        "MWh",
        "energy of GPT-3's training (V100 GPUs)",
        Source(GLAM_PAPER, "Table 1, GPT-3 column (from Patterson et al. 2021)"),
    ),
    "gpt3.train_tokens": Fact(300e9, "tokens", "tokens GPT-3 was trained on", Source(GPT3_PAPER, "§2.2")),
    "gpt3.train_flops": Fact(3.14e23, "FLOPs", "GPT-3 175B total training compute", Source(GPT3_PAPER, "Table D.1")),
    "glam.quality": Fact(
        "GLaM outperforms GPT-3 on average over 21 NLU and 8 NLG benchmarks, zero-, one- and few-shot",
        "",
        "GLaM's 'comparable quality' in the paper's own words",
        Source(GLAM_PAPER, "Table 1 caption; abstract"),
    ),
    # ---- C3 who confirmed MoE
    "gpt4.architecture": Fact(
        None,
        "",
        "GPT-4's architecture and size: 'this report contains no further details about the architecture "
        "(including model size), hardware, training compute, dataset construction, training method'",
        Source(GPT4_REPORT, "§2 Scope and Limitations of this Technical Report"),
        status="not disclosed",
    ),
    "gpt4.moe_reported": Fact(
        "mixture of experts, about 1.76-1.8T parameters (8 x 220B or 16 experts)",
        "",
        "GPT-4's architecture as press reports (George Hotz; SemiAnalysis) describe it; no statement from OpenAI",
        Source(DECODER_GPT4, "The Decoder, June 28 / July 11, 2023"),
        status="reported",
    ),
    # ---- C4 Phi-3
    "phi3.mini_params": Fact(3.8e9, "parameters", "phi-3-mini parameters", _phi3_abs),
    "phi3.mini_tokens": Fact(3.3e12, "tokens", "phi-3-mini training tokens", _phi3_abs),
    "phi3.small_params": Fact(7e9, "parameters", "phi-3-small parameters", _phi3_abs),
    "phi3.medium_params": Fact(14e9, "parameters", "phi-3-medium parameters", _phi3_abs),
    "phi3.rivals": Fact(
        "rivals that of models such as Mixtral 8x7B and GPT-3.5",
        "",
        "Microsoft's claim for phi-3-mini (academic benchmarks and internal testing)",
        _phi3_abs,
    ),
    "phi3.data": Fact(
        "a scaled-up version of phi-2's data: heavily filtered publicly available web data and synthetic data",
        "",
        "what the Phi-3 report credits for the quality",
        _phi3_abs,
    ),
    "phi3.weakness": Fact(
        "phi-3-mini lacks the capacity to store much factual knowledge (low TriviaQA score)",
        "",
        "the limitation the Phi-3 report itself names",
        Source(PHI3_PAPER, "limitations paragraph ('Weakness')"),
    ),
    "mmlu.phi-3-mini": Fact(69.0, "% (MMLU)", "phi-3-mini MMLU", _phi3_abs),
    "mmlu.phi-3-small": Fact(75.0, "% (MMLU)", "phi-3-small MMLU", _phi3_abs),
    "mmlu.phi-3-medium": Fact(78.0, "% (MMLU)", "phi-3-medium MMLU", _phi3_abs),
    "mtbench.phi-3-mini": Fact(8.38, "MT-bench", "phi-3-mini MT-bench", _phi3_abs),
    "mtbench.phi-3-small": Fact(8.7, "MT-bench", "phi-3-small MT-bench", _phi3_abs),
    "mtbench.phi-3-medium": Fact(8.9, "MT-bench", "phi-3-medium MT-bench", _phi3_abs),
    "mmlu.mixtral-8x7b": Fact(70.6, "% (MMLU)", "Mixtral 8x7B MMLU (5-shot)", _mixtral_t2),
    "mmlu.llama-2-70b": Fact(69.9, "% (MMLU)", "Llama 2 70B MMLU (5-shot)", _mixtral_t2),
    "mmlu.gpt-3.5": Fact(70.0, "% (MMLU)", "GPT-3.5 MMLU (5-shot)", _gpt4_t2),
    "mmlu.gpt-4": Fact(86.4, "% (MMLU)", "GPT-4 MMLU (5-shot)", _gpt4_t2),
    "gpt-3.5.params": Fact(
        None, "parameters", "GPT-3.5's size", Source(GPT4_REPORT, "not given anywhere in it"), status="not disclosed"
    ),
    # ---- C5 Claude 3 Haiku
    "haiku.positioning": Fact(
        "the fastest and most compact model for near-instant responsiveness",
        "",
        "how Anthropic describes Claude 3 Haiku",
        Source(CLAUDE3_POST, "'Introducing the next generation of Claude', model descriptions"),
        status="confirmed by the provider",
    ),
    "haiku.price_in": Fact(
        0.25, "USD per million input tokens", "Claude 3 Haiku input price", Source(CLAUDE3_POST, "pricing")
    ),
    "haiku.price_out": Fact(
        1.25, "USD per million output tokens", "Claude 3 Haiku output price", Source(CLAUDE3_POST, "pricing")
    ),
    "sonnet.price_out": Fact(
        15.0, "USD per million output tokens", "Claude 3 Sonnet output price", Source(CLAUDE3_POST, "pricing")
    ),
    "opus.price_out": Fact(
        75.0, "USD per million output tokens", "Claude 3 Opus output price", Source(CLAUDE3_POST, "pricing")
    ),
    "haiku.params": Fact(
        None,
        "parameters",
        "Claude 3 Haiku's size",
        Source(CLAUDE3_POST, "not given; nor in the model card"),
        status="not disclosed",
    ),
    "haiku.architecture": Fact(
        None,
        "",
        "Claude 3 Haiku's architecture (dense or MoE)",
        Source(CLAUDE3_POST, "not given"),
        status="not disclosed",
    ),
    "haiku.tokens_per_s": Fact(
        None,
        "tokens/s",
        "Claude 3 Haiku's throughput: Anthropic's Haiku page states one, but the page could not be read offline to "
        "check the figure, so the course leaves it out",
        Source(HAIKU_POST, "speed paragraph (not checked offline)"),
        status="not disclosed",
    ),
}


def fact(key: str) -> Fact:
    """The :class:`Fact` ``key`` (e.g. ``"glam.train_energy_mwh"``); a ValueError lists the keys otherwise."""
    check_type("key", key, str)
    if key not in FACTS:
        raise ValueError(f"key must be one of {sorted(FACTS)}, got {key!r}")
    return FACTS[key]


#: Mixtral paper, Table 2: (Mixtral 8x7B, Llama 2 70B), % — every model re-evaluated by Mistral.
MIXTRAL_TABLE2: dict[str, tuple[float, float]] = {
    "MMLU": (70.6, 69.9),
    "HellaSwag": (84.4, 85.4),
    "WinoGrande": (77.2, 80.4),
    "PIQA": (83.6, 82.6),
    "Arc-e": (83.1, 79.9),
    "Arc-c": (59.7, 56.5),
    "NaturalQuestions": (30.6, 25.4),
    "TriviaQA": (71.5, 73.0),
    "HumanEval": (40.2, 29.3),
    "MBPP": (60.7, 49.8),
    "MATH": (28.4, 13.8),
    "GSM8K": (74.4, 69.6),
}
MIXTRAL_TABLE2_SOURCE = _mixtral_t2

# --------------------------------------------------------------------------- configs

#: Configs this chapter needs that :data:`course_lib.configs.MODELS` does not hold.
EXTRA_CONFIGS: dict[str, dict] = {
    "phi-3-medium": {
        # Fused qkv_proj / gate_up_proj like phi-3-mini: the same count as separate matrices.
        "vocab_size": 32064,
        "hidden_size": 5120,
        "intermediate_size": 17920,
        "num_hidden_layers": 40,
        "num_attention_heads": 40,
        "num_key_value_heads": 10,
        "tie_word_embeddings": False,
        "max_position_embeddings": 4096,
        "source": PHI3_MEDIUM_CONFIG,
    },
    "phi-3-small": {
        # Not a Llama layout; its config.json (model_type "phi3small") and the model's own code,
        # modeling_phi3_small.py in the same repository, give:
        # - "ff_intermediate_size": 14336 is intermediate_size; hidden_act "gegelu" is a gated MLP,
        #   up_proj = Linear(d, 2 x 14336) and down_proj = Linear(14336, d), both with biases: the
        #   same count as the course's gated layout (gate and up, each d x f + f) with biases.
        # - Attention is a fused query_key_value Linear and a dense output Linear, both nn.Linear
        #   with PyTorch's default bias=True. config.json's "attention_bias": false is not read by
        #   that code (vLLM's and TensorRT-LLM's ports also build them with bias=True), so every
        #   linear layer but the output head has biases: linear_bias True.
        # - nn.LayerNorm (weight and bias) twice per block and once at the end; RoPE (no parameters).
        # - The head: config.json has no tie_word_embeddings key, so transformers 4.x's
        #   PretrainedConfig default (True; the file was saved by 4.38.1) applies, and
        #   Phi3SmallForCausalLM (_tied_weights_keys = ["lm_head.weight"]) shares embed_tokens.
        #   Tied: 7.39 B, which rounds to the paper's "7B"; an untied head would add V x d =
        #   0.41 B, 7.80 B (tests check both).
        # - dense_attention_every_n_layers 2: every other layer uses block-sparse attention (local
        #   blocks plus vertical stride). No parameters; it cuts attention FLOPs at long context,
        #   which flops_per_token's dense 4LTw term does not model (an overestimate for that term).
        "vocab_size": 100352,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "tie_word_embeddings": True,
        "max_position_embeddings": 8192,
        "dense_attention_every_n_layers": 2,
        "architecture": {"mlp": "gated", "linear_bias": True, "norm": "layernorm"},
        "source": PHI3_SMALL_CONFIG,
    },
}

#: The models the chapter compares (all have a config), with a display name.
COMPARED: dict[str, str] = {
    "phi-3-mini": "Phi-3-mini",
    "phi-3-medium": "Phi-3-medium",
    "mixtral-8x7b": "Mixtral 8x7B",
    "llama-2-70b": "Llama 2 70B",
    "gpt-3-175b": "GPT-3 175B",
    "glam-1.2t": "GLaM 1.2T",
}

#: Weight precisions the estimates support (bytes per weight from configs.DTYPE_BYTES).
PRECISIONS = ("fp32", "bf16", "fp16", "int8", "int4")


def config(name: str) -> dict:
    """A copy of the config ``name``: :data:`course_lib.configs.MODELS` or :data:`EXTRA_CONFIGS`."""
    check_type("name", name, str)
    if name in EXTRA_CONFIGS:
        return copy.deepcopy(EXTRA_CONFIGS[name])  # deep: its 'architecture' is a dict too
    if name in configs.MODELS:
        return configs.get(name)
    raise ValueError(f"unknown model {name!r}; known: {sorted(set(configs.MODELS) | set(EXTRA_CONFIGS))}")


def _cfg(model) -> tuple[str, dict]:
    if isinstance(model, str):
        return model, config(model)
    if isinstance(model, dict):
        configs.count_params(model)  # validates
        return model.get("name", "config"), model
    raise TypeError(f"model must be a model name or a config dict, got {type(model).__name__}")


# --------------------------------------------------------------------------- hardware


@dataclass(frozen=True)
class Hardware:
    """One kind of device: roofs (peak FLOP/s, bandwidth), memory, and the stated power and price.

    ``max_devices`` is how many of them one server holds (a model that needs more does not
    "fit"). ``source`` says where the roofs come from (a datasheet URL or "measured here").
    """

    name: str
    peak_flops: float
    bandwidth: float
    memory_bytes: float
    power_w: float
    price_per_hour: float
    max_devices: int = 1
    usable_memory_fraction: float = scaling.USABLE_MEMORY_FRACTION
    source: str = ""

    def __post_init__(self):
        check_type("name", self.name, str)
        for k in ("peak_flops", "bandwidth", "memory_bytes", "power_w"):
            check_float(k, getattr(self, k), min=0, min_inclusive=False)
        check_float("price_per_hour", self.price_per_hour, min=0)
        check_int("max_devices", self.max_devices, min=1)
        check_float("usable_memory_fraction", self.usable_memory_fraction, min=0, max=1, min_inclusive=False)


#: The course assumptions this module adds (chapter 00's are in scaling.ASSUMPTIONS).
ASSUMPTIONS: dict[str, dict] = {
    "gpus_per_server": {
        "value": 8,
        "unit": "GPUs",
        "what": "H100 SXM GPUs in one HGX/DGX H100 server: a model 'fits' when it needs no more",
        "source": "https://www.nvidia.com/en-us/data-center/dgx-h100/",
    },
    "cpu_power_w_per_thread": {
        "value": 4.0,
        "unit": "W per logical CPU",
        "what": "codecarbon's fallback CPU power when it does not know the CPU (no RAPL here to measure it)",
        "source": "codecarbon OfflineEmissionsTracker fallback, observed on this machine kind (course design §7)",
    },
    "cpu_price_per_hour_per_thread": {
        "value": 0.02,
        "unit": "USD per logical-CPU-hour",
        "what": "course assumption for the order of a cloud vCPU-hour; change it to your own",
        "source": "assumption",
    },
}


def h100() -> Hardware:
    """NVIDIA H100 SXM from chapter 00's cited assumptions (datasheet roofs, TDP, the $/GPU-hour)."""
    a = scaling.ASSUMPTIONS
    return Hardware(
        "H100 SXM",
        peak_flops=a["peak_flops"]["value"],
        bandwidth=a["bandwidth"]["value"],
        memory_bytes=a["memory_per_gpu"]["value"],
        power_w=a["gpu_power_w"]["value"],
        price_per_hour=a["price_per_gpu_hour"]["value"],
        max_devices=ASSUMPTIONS["gpus_per_server"]["value"],
        source=a["bandwidth"]["source"],
    )


def cpu_hardware(roof, *, memory_bytes: float, threads: int, name: str = "this CPU") -> Hardware:
    """This machine as a :class:`Hardware`, from a measured :class:`course_lib.hardware.Roofline`.

    Peak is the measured fp32 matmul peak (weights dequantized to fp32 for compute); bandwidth
    the best measured STREAM kernel; power and price are :data:`ASSUMPTIONS` per logical CPU.
    """
    check_int("threads", threads, min=1)
    check_float("memory_bytes", memory_bytes, min=0, min_inclusive=False)
    if not hasattr(roof, "peak") or not hasattr(roof, "bandwidth"):
        raise TypeError(f"roof must be a course_lib.hardware.Roofline, got {type(roof).__name__}")
    return Hardware(
        name,
        peak_flops=roof.peak("fp32"),
        bandwidth=roof.bandwidth,
        memory_bytes=memory_bytes,
        power_w=ASSUMPTIONS["cpu_power_w_per_thread"]["value"] * threads,
        price_per_hour=ASSUMPTIONS["cpu_price_per_hour_per_thread"]["value"] * threads,
        max_devices=1,
        source="measured here (course_lib.hardware.measure_roofline)",
    )


# --------------------------------------------------------------------------- routing


def experts_touched(load_shares, top_k: int, batch_size: int) -> float:
    r"""Expected distinct experts one MoE layer reads for ``batch_size`` independent tokens.

    ``load_shares`` (length E, summing to 1) is each expert's share of the routing
    assignments; a token then uses expert :math:`e` with probability :math:`p_e = k\,s_e`
    (its ``top_k`` choices are distinct), and the batch misses it with probability
    :math:`(1 - p_e)^B`. Uniform shares give :func:`course_lib.scaling.expected_experts_touched`.
    """
    shares = [check_float(f"load_shares[{i}]", s, min=0) for i, s in enumerate(load_shares)]
    if not shares:
        raise ValueError("load_shares must name at least one expert")
    if not math.isclose(sum(shares), 1.0, abs_tol=1e-6):
        raise ValueError(f"load_shares must sum to 1, got {sum(shares):.6f}")
    check_int("top_k", top_k, min=1, max=len(shares))
    check_int("batch_size", batch_size, min=1)
    probs = [min(1.0, top_k * s) for s in shares]
    return float(sum(1.0 - (1.0 - p) ** batch_size for p in probs))


def measured_load_shares(run: str = "moe-k2-aux") -> list[list[float]]:
    """Per-layer expert load shares (L, E) measured on validation text by chapter 02's trained router.

    Read from ``course_lib/zoo_data/moe_runs.json`` (``python -m course_lib.build moe``).
    The chapter-02 patients route top-2 of 8 experts, like Mixtral.
    """
    import json

    from course_lib.paths import zoo_file

    runs = json.loads(zoo_file("moe_runs.json").read_text())["runs"]
    check_choice("run", run, [r for r in runs if "router" in runs[r]])
    return [list(map(float, layer)) for layer in runs[run]["router"]["profile"]["fractions"]]


# --------------------------------------------------------------------------- per-token arithmetic


def _head_dim(cfg: dict) -> int:
    return cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]


def flops_per_token(model, *, context: int = 1024) -> float:
    """Forward FLOPs of one token at ``context``: :math:`2N_{active} + 4\\,L\\,T\\,w` (chapter 00)."""
    _, cfg = _cfg(model)
    check_int("context", context, min=1)
    _, active = configs.count_params(cfg)
    width = cfg["num_attention_heads"] * _head_dim(cfg)
    return scaling.inference_flops_per_token(
        active, context=context, n_layers=cfg["num_hidden_layers"], attn_width=width
    )


def step_bytes(
    model,
    *,
    dtype: str = "bf16",
    batch_size: int = 1,
    context: int = 1024,
    kv_dtype: str = "bf16",
    load_shares=None,
) -> dict:
    """Bytes one decode step reads: ``{"weights", "kv", "total", "experts_touched"}``.

    Weights: everything but the experts, plus each MoE layer's experts that the batch
    touches — uniform routing unless ``load_shares`` gives one (E,) share vector for all MoE
    layers or one per MoE layer. KV: ``batch_size`` sequences at ``context`` positions.
    """
    _, cfg = _cfg(model)
    check_choice("dtype", dtype, PRECISIONS)
    check_choice("kv_dtype", kv_dtype, PRECISIONS)
    check_int("batch_size", batch_size, min=1)
    check_int("context", context, min=1)
    parts = configs.param_breakdown(cfg)
    total, _ = configs.count_params(cfg)
    per = configs.dtype_bytes(dtype)
    expert_params = parts["experts"][0]
    touched = None
    if expert_params == 0:
        weights = total * per
    else:
        e, k = cfg["num_local_experts"], cfg["num_experts_per_tok"]
        if load_shares is None:
            touched = scaling.expected_experts_touched(e, k, batch_size)
        else:
            layers = [load_shares] if not isinstance(load_shares[0], (list, tuple)) else list(load_shares)
            for i, s in enumerate(layers):
                if len(s) != e:
                    raise ValueError(f"load_shares[{i}] must have one share per expert ({e}), got {len(s)}")
            touched = sum(experts_touched(s, k, batch_size) for s in layers) / len(layers)
        weights = (total - expert_params) * per + expert_params * per * touched / e
    kv = configs.kv_cache_bytes(cfg, seq_len=context, batch_size=batch_size, dtype=kv_dtype)
    return {"weights": weights, "kv": kv, "total": weights + kv, "experts_touched": touched}


@dataclass
class DecodeEstimate:
    """Roofline estimate of steady decoding for one model, precision, batch and device kind."""

    model: str
    hardware: str
    dtype: str
    batch_size: int
    context: int
    devices: int
    fits: bool
    memory_bytes: float  # weights + KV cache that must be held
    step_bytes: float
    step_flops: float
    memory_s: float
    compute_s: float
    experts_touched: float | None = None
    extra: dict = field(default_factory=dict, repr=False)

    @property
    def step_s(self) -> float:
        return max(self.memory_s, self.compute_s)

    @property
    def bound(self) -> str:
        return "memory" if self.memory_s >= self.compute_s else "compute"

    @property
    def tokens_per_s(self) -> float:
        """Tokens generated per second by the whole batch (all devices together)."""
        return self.batch_size / self.step_s

    @property
    def usd_per_million(self) -> float:
        """Dollars per million generated tokens at the hardware's stated price per device-hour."""
        hw = self.extra["hw"]
        return self.devices * hw.price_per_hour / 3600.0 / self.tokens_per_s * 1e6

    @property
    def joules_per_token(self) -> float:
        """Energy per generated token at the hardware's stated power per device (all devices busy)."""
        return self.devices * self.extra["hw"].power_w / self.tokens_per_s


def decode_estimate(
    model,
    hw: Hardware,
    *,
    dtype: str = "bf16",
    batch_size: int = 1,
    context: int = 1024,
    kv_dtype: str = "bf16",
    mfu: float = scaling.UTILIZATION,
    load_shares=None,
) -> DecodeEstimate:
    """Decode-step time, tokens/s, $/M tokens and J/token of ``model`` on the fewest ``hw`` devices that hold it.

    Weights and KV cache are split evenly over the devices (tensor parallel, communication
    ignored); a model needing more than ``hw.max_devices`` does not fit, and the numbers are
    then what it would do if it did.
    """
    name, cfg = _cfg(model)
    check_type("hw", hw, Hardware)
    check_float("mfu", mfu, min=0, max=1, min_inclusive=False)
    sb = step_bytes(
        cfg, dtype=dtype, batch_size=batch_size, context=context, kv_dtype=kv_dtype, load_shares=load_shares
    )
    held = configs.weight_bytes(cfg, dtype) + sb["kv"]
    devices = scaling.gpus_to_hold(held, memory_per_gpu=hw.memory_bytes, usable_fraction=hw.usable_memory_fraction)
    flops = batch_size * flops_per_token(cfg, context=context)
    return DecodeEstimate(
        model=name,
        hardware=hw.name,
        dtype=dtype,
        batch_size=batch_size,
        context=context,
        devices=devices,
        fits=devices <= hw.max_devices,
        memory_bytes=held,
        step_bytes=sb["total"],
        step_flops=flops,
        memory_s=sb["total"] / (devices * hw.bandwidth),
        compute_s=flops / (devices * hw.peak_flops * mfu),
        experts_touched=sb["experts_touched"],
        extra={"hw": hw},
    )


def speedup(fast, slow, hw: Hardware, *, batch_size: int, same_devices: bool = True, **kw) -> float:
    """Tokens/s of ``fast`` over ``slow`` at ``batch_size`` on ``hw``.

    With ``same_devices`` both get the device count the larger needs (an equal-hardware
    comparison: the ratio then does not depend on how many devices that is).
    """
    a = decode_estimate(fast, hw, batch_size=batch_size, **kw)
    b = decode_estimate(slow, hw, batch_size=batch_size, **kw)
    if not same_devices:
        return a.tokens_per_s / b.tokens_per_s
    n = max(a.devices, b.devices)
    ta = max(a.memory_s * a.devices / n, a.compute_s * a.devices / n)
    tb = max(b.memory_s * b.devices / n, b.compute_s * b.devices / n)
    return tb / ta


def break_even_tokens_per_s(usd_per_million: float, price_per_hour: float) -> float:
    """Tokens/s one device must sell to earn its hourly price at ``usd_per_million`` per million tokens."""
    check_float("usd_per_million", usd_per_million, min=0, min_inclusive=False)
    check_float("price_per_hour", price_per_hour, min=0, min_inclusive=False)
    return price_per_hour / 3600.0 / (usd_per_million / 1e6)


def smallest_batch_for(model, hw: Hardware, tokens_per_s_per_device: float, *, max_batch: int = 4096, **kw):
    """Smallest batch (power of two) at which ``model`` on ``hw`` generates ``tokens_per_s_per_device``
    per device while fitting in ``hw.max_devices`` devices, or None when no batch up to
    ``max_batch`` does (compute runs out, or weights plus KV cache outgrow one server)."""
    check_float("tokens_per_s_per_device", tokens_per_s_per_device, min=0, min_inclusive=False)
    check_int("max_batch", max_batch, min=1)
    b = 1
    while b <= max_batch:
        est = decode_estimate(model, hw, batch_size=b, **kw)
        if not est.fits:  # a bigger batch only needs more memory
            return None
        if est.tokens_per_s / est.devices >= tokens_per_s_per_device:
            return b
        b *= 2
    return None


# --------------------------------------------------------------------------- the comparison


def comparison_rows(
    hw_list, *, models=None, dtype: str = "bf16", batch_size: int = 1, context: int = 1024
) -> list[dict]:
    """One row per model: total/active parameters, weight bytes at bf16/int8/int4, FLOPs/token, KV
    bytes/token (bf16), and per device kind its decode bound (tokens/s) at ``dtype``, devices,
    whether it fits, $/M tokens and J/token."""
    models = list(COMPARED) if models is None else list(models)
    if not models:
        raise ValueError("models must name at least one model")
    if not hw_list:
        raise ValueError("hw_list must name at least one Hardware")
    rows = []
    for m in models:
        name, cfg = _cfg(m)
        total, active = configs.count_params(cfg)
        row = {
            "model": COMPARED.get(name, name),
            "total params (B)": total / 1e9,
            "active params (B)": active / 1e9,
            **{f"weights GB {d}": configs.weight_bytes(cfg, d) / 1e9 for d in ("bf16", "int8", "int4")},
            "GFLOP per token": flops_per_token(cfg, context=context) / 1e9,
            "KV KB per token": configs.kv_cache_bytes(cfg, seq_len=1, dtype="bf16") / 1e3,
        }
        for hw in hw_list:
            est = decode_estimate(cfg, hw, dtype=dtype, batch_size=batch_size, context=context)
            row[f"{hw.name}: tokens/s"] = est.tokens_per_s
            row[f"{hw.name}: devices"] = est.devices if est.fits else f"{est.devices} (does not fit)"
            row[f"{hw.name}: $/M tokens"] = est.usd_per_million
            row[f"{hw.name}: J/token"] = est.joules_per_token
        rows.append(row)
    return rows


def comparison_figure(
    model: str = "mixtral-8x7b",
    dtype: str = "bf16",
    batch_size: int = 1,
    hardware: str = "H100 SXM",
    *,
    machines: dict | None = None,
    context: int = 1024,
):
    """The widget's pure builder: decode tokens/s of every compared model (log scale) on one device kind,
    the chosen model highlighted; the title gives its tokens/s, the line under it US$/M tokens, J/token and
    whether it fits."""
    from course_lib import viz

    machines = {h100().name: h100()} if machines is None else machines
    check_choice("hardware", hardware, machines)
    check_choice("model", model, COMPARED)
    hw = machines[hardware]
    ests = {m: decode_estimate(m, hw, dtype=dtype, batch_size=batch_size, context=context) for m in COMPARED}
    e = ests[model]
    fit = (
        f"fits on {e.devices} device{'s' if e.devices > 1 else ''}" if e.fits else f"does not fit ({e.devices} needed)"
    )
    tps = f"{e.tokens_per_s:,.0f}" if e.tokens_per_s >= 100 else f"{e.tokens_per_s:.3g}"
    # A short title (it must not clip on a phone); the cost figures go in a line under it, which
    # viz.tidy wraps like a subplot title. "US$", not a bare dollar sign (the book reads $…$ as math).
    title = f"{COMPARED[model]}, {dtype}, batch {batch_size}: {tps} tokens/s on {hardware}"
    detail = (
        f"{e.bound}-bound, {fit}<br>US${e.usd_per_million:,.3g} per million tokens, {e.joules_per_token:,.3g} J/token"
    )
    fig = viz.figure(
        title_text=title,
        xaxis=dict(title="decode tokens/s, upper bound (log scale)", type="log"),
        height=400,
    )
    fig.add_annotation(
        text=detail, x=0.5, y=1.0, xref="paper", yref="paper", xanchor="center", yanchor="bottom", showarrow=False
    )
    names = list(COMPARED)
    colours = [viz.PALETTE[1] if m == model else (viz.PALETTE[0] if ests[m].fits else "#BBBBBB") for m in names]
    fig.add_bar(
        y=[COMPARED[m] for m in names],
        x=[ests[m].tokens_per_s for m in names],
        orientation="h",
        marker_color=colours,
        text=[("" if ests[m].fits else "does not fit") for m in names],
        name="tokens/s",
        showlegend=False,
    )
    return fig
