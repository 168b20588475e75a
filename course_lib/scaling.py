r"""The scaling wall (chapter 00): FLOPs, loss laws, dollars, energy, CO2 and latency.

Every number this module produces rests on assumptions, and every assumption is a keyword
argument with a stated default and its source (:data:`ASSUMPTIONS` lists them all), so a
notebook can show how the answer moves when an assumption does.

Training compute (Kaplan et al. 2020, §2.1): a dense transformer with :math:`N` parameters
spends about :math:`2N` FLOPs per token forward and :math:`4N` backward, so

.. math:: C \approx 6\,N\,D \quad\text{FLOPs for } D \text{ training tokens.}

Loss (Hoffmann et al. 2022, "Chinchilla", eq. 2 and approach 3):

.. math:: L(N, D) = E + \frac{A}{N^{\alpha}} + \frac{B}{D^{\beta}}

and minimising it under :math:`C = 6ND` gives, in closed form (their eq. 4),

.. math::

    N_{opt}(C) = G\,\Big(\frac{C}{6}\Big)^{a},\quad D_{opt}(C) = G^{-1}\Big(\frac{C}{6}\Big)^{b},
    \quad a = \frac{\beta}{\alpha+\beta},\; b = \frac{\alpha}{\alpha+\beta},\;
    G = \Big(\frac{\alpha A}{\beta B}\Big)^{\frac{1}{\alpha+\beta}}.

Cost: GPU-hours :math:`= C / (\text{peak} \cdot u \cdot 3600)` at utilisation (MFU)
:math:`u`; dollars = GPU-hours x price; energy = GPU-hours x power x PUE; CO2 = energy x
grid intensity.

Inference: a forward pass costs :math:`2N_{active}` FLOPs per token. Generating one token
at a time must read every active weight from memory once per step, so a decode step takes
at least ``weight bytes read / memory bandwidth`` — at batch 1 that bound, not the FLOPs,
sets the latency.

The mini scaling law (:func:`run_sweep`, :func:`fit_power_law`) trains a few patients of
increasing size on one token budget and fits :math:`L(N) = E + A / N^{\alpha}`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from course_lib import configs
from course_lib.checks import ArgumentTypeError, check_float, check_int

# --------------------------------------------------------------------------- assumptions

#: Every default this module uses, with its unit and source. Notebooks print this table.
ASSUMPTIONS: dict[str, dict] = {
    "peak_flops": {
        "value": 989e12,
        "unit": "FLOP/s per GPU",
        "what": "NVIDIA H100 SXM dense BF16 tensor-core peak (1,979 TFLOP/s is the 2:4-sparse figure)",
        "source": "https://www.nvidia.com/en-us/data-center/h100/",
    },
    "bandwidth": {
        "value": 3.35e12,
        "unit": "bytes/s per GPU",
        "what": "H100 SXM HBM3 memory bandwidth",
        "source": "https://www.nvidia.com/en-us/data-center/h100/",
    },
    "memory_per_gpu": {
        "value": 80e9,
        "unit": "bytes per GPU",
        "what": "H100 SXM memory",
        "source": "https://www.nvidia.com/en-us/data-center/h100/",
    },
    "utilization": {
        "value": 0.40,
        "unit": "fraction of peak (MFU)",
        "what": "Llama 3 405B training reached 38-43 % BF16 model-FLOPs utilisation on 8-16K H100s",
        "source": "https://arxiv.org/abs/2407.21783",
    },
    "price_per_gpu_hour": {
        "value": 2.0,
        "unit": "USD per GPU-hour",
        "what": "the rental price DeepSeek-V3's report assumes for an H800 GPU-hour",
        "source": "https://arxiv.org/abs/2412.19437",
    },
    "gpu_power_w": {
        "value": 700.0,
        "unit": "W per GPU",
        "what": "H100 SXM maximum power (TDP); Meta's Llama 3.1 card counts training energy at this TDP",
        "source": "https://www.nvidia.com/en-us/data-center/h100/",
    },
    "pue": {
        "value": 1.1,
        "unit": "facility energy / IT energy",
        "what": "power usage effectiveness of the cloud datacentre Patterson et al. assume for GPT-3",
        "source": "https://arxiv.org/abs/2104.10350",
    },
    "grid_kg_per_kwh": {
        "value": 0.429,
        "unit": "kg CO2e per kWh",
        "what": "grid carbon intensity Patterson et al. use for GPT-3's training (a US average)",
        "source": "https://arxiv.org/abs/2104.10350",
    },
    "usable_memory_fraction": {
        "value": 0.9,
        "unit": "fraction",
        "what": "share of GPU memory given to weights (the rest: KV cache, activations) — a course assumption",
        "source": "assumption",
    },
}


def _default(name: str) -> float:
    return ASSUMPTIONS[name]["value"]


PEAK_FLOPS = _default("peak_flops")
BANDWIDTH = _default("bandwidth")
MEMORY_PER_GPU = _default("memory_per_gpu")
UTILIZATION = _default("utilization")
PRICE_PER_GPU_HOUR = _default("price_per_gpu_hour")
GPU_POWER_W = _default("gpu_power_w")
PUE = _default("pue")
GRID_KG_PER_KWH = _default("grid_kg_per_kwh")
USABLE_MEMORY_FRACTION = _default("usable_memory_fraction")


def _check(name: str, value, *, low: float = 0.0, high: float = math.inf, low_inclusive: bool = False):
    """``value``, a finite number in the range (default > 0) or an array of them (the estimates
    vectorise): :func:`~course_lib.checks.check_float`'s rule and wording, element by element."""
    bounds = dict(min=low, max=None if math.isinf(high) else high, min_inclusive=low_inclusive)
    if not isinstance(value, np.ndarray):
        return check_float(name, value, **bounds)
    if value.dtype.kind not in "iuf":
        raise ArgumentTypeError(f"{name} must be a number or an array of numbers, got an array of {value.dtype}")
    arr = value.astype(float)
    ok = np.isfinite(arr) & (arr >= low if low_inclusive else arr > low) & (arr <= high)
    if not ok.all():
        check_float(name, arr[~ok].flat[0].item(), **bounds)  # raises, naming the first bad element
    return value


# --------------------------------------------------------------------------- training FLOPs


def training_flops(n_params, n_tokens):
    """:math:`C = 6ND`: forward (2N) plus backward (4N) FLOPs per token, times tokens."""
    _check("n_params", n_params)
    _check("n_tokens", n_tokens)
    return 6.0 * n_params * n_tokens


def patient_training_flops(model, *, n_tokens: int, seq_len: int) -> dict:
    """Exact training FLOPs of a course ``TinyLM``: 3 x its forward count (backward = 2 x forward).

    Returns ``{"exact", "matmul", "attention", "six_n_d"}`` for ``n_tokens`` tokens in
    windows of ``seq_len``; ``six_n_d`` uses the model's total parameter count.
    """
    _check("n_tokens", n_tokens)
    fwd = model.flops_per_token(seq_len)
    return {
        "exact": 3.0 * fwd["total"] * n_tokens,
        "matmul": 3.0 * fwd["matmul"] * n_tokens,
        "attention": 3.0 * fwd["attention"] * n_tokens,
        "six_n_d": training_flops(model.num_params(), n_tokens),
    }


def measured_training_flops(model, *, batch_size: int = 2, seq_len: int = 32, seed: int = 0) -> float:
    """FLOPs per token of one forward + backward pass, counted by ``torch.utils.flop_counter``.

    PyTorch's counter sees the matrix multiplies; on CPU it does not count the fused
    attention kernel, so compare it with the ``matmul`` part of :func:`patient_training_flops`.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, model.config.vocab_size, (batch_size, seq_len), generator=gen)
    with FlopCounterMode(display=False) as counter:
        model.loss(x, x).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / (batch_size * seq_len)


# --------------------------------------------------------------------------- loss laws


@dataclass(frozen=True)
class LossLaw:
    """Parameters of :math:`L(N, D) = E + A/N^\\alpha + B/D^\\beta` (nats per token) and their source."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    source: str = ""

    def loss(self, n_params, n_tokens):
        _check("n_params", n_params)
        _check("n_tokens", n_tokens)
        n, d = np.asarray(n_params, dtype=float), np.asarray(n_tokens, dtype=float)
        out = self.E + self.A / n**self.alpha + self.B / d**self.beta
        return float(out) if out.ndim == 0 else out


#: Hoffmann et al. 2022, approach 3 (§3.3), the values as printed in the paper.
CHINCHILLA = LossLaw(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28, source="https://arxiv.org/abs/2203.15556")
#: Besiroglu et al. 2024 refit the same functional form to data read off Hoffmann's plots
#: and found the printed fit inconsistent with Hoffmann's own approaches 1 and 2.
BESIROGLU = LossLaw(E=1.8172, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658, source="https://arxiv.org/abs/2404.10102")


def chinchilla_loss(n_params, n_tokens, *, law: LossLaw = CHINCHILLA):
    """Predicted pre-training loss (nats/token on Hoffmann's MassiveText) for N parameters and D tokens."""
    return law.loss(n_params, n_tokens)


def compute_optimal(compute, *, law: LossLaw = CHINCHILLA) -> tuple[float, float]:
    """Closed-form loss-minimising ``(N, D)`` with :math:`6ND = C` (Hoffmann et al. eq. 4)."""
    _check("compute", compute)
    a, b = law.alpha, law.beta
    g = (a * law.A / (b * law.B)) ** (1.0 / (a + b))
    n = g * (compute / 6.0) ** (b / (a + b))
    d = (compute / 6.0) ** (a / (a + b)) / g
    return n, d


def tokens_per_param_rule(compute, *, ratio: float = 20.0) -> tuple[float, float]:
    """The rule of thumb: train on ``ratio`` tokens per parameter (~20 for Chinchilla, 1.4T / 70B).

    With :math:`D = rN` and :math:`C = 6ND`: :math:`N = \\sqrt{C / 6r}`, :math:`D = rN`.
    """
    _check("compute", compute)
    _check("ratio", ratio)
    n = math.sqrt(compute / (6.0 * ratio))
    return n, ratio * n


# --------------------------------------------------------------------------- cost, energy, CO2


def gpu_hours(flops, *, peak_flops: float = PEAK_FLOPS, utilization: float = UTILIZATION):
    """GPU-hours to do ``flops`` at ``utilization`` x ``peak_flops`` (the MFU convention)."""
    _check("flops", flops)
    _check("peak_flops", peak_flops)
    _check("utilization", utilization, high=1.0)
    return flops / (peak_flops * utilization * 3600.0)


def energy_kwh(gpu_hours_, *, gpu_power_w: float = GPU_POWER_W, pue: float = PUE):
    """Facility energy: GPU-hours x average power per GPU x PUE (datacentre overhead), in kWh."""
    _check("gpu_hours", gpu_hours_, low_inclusive=True)
    _check("gpu_power_w", gpu_power_w)
    _check("pue", pue, low=1.0, low_inclusive=True)
    return gpu_hours_ * gpu_power_w / 1000.0 * pue


def co2_kg(kwh, *, grid_kg_per_kwh: float = GRID_KG_PER_KWH):
    """Emissions of ``kwh`` at a grid intensity (kg CO2e per kWh; 0 for a fully carbon-free supply)."""
    _check("kwh", kwh, low_inclusive=True)
    _check("grid_kg_per_kwh", grid_kg_per_kwh, low_inclusive=True)
    return kwh * grid_kg_per_kwh


def training_cost(
    flops: float,
    *,
    peak_flops: float = PEAK_FLOPS,
    utilization: float = UTILIZATION,
    price_per_gpu_hour: float = PRICE_PER_GPU_HOUR,
    gpu_power_w: float = GPU_POWER_W,
    pue: float = PUE,
    grid_kg_per_kwh: float = GRID_KG_PER_KWH,
    n_gpus: int | None = None,
) -> dict:
    """GPU-hours, dollars, kWh, kg CO2e (and days on ``n_gpus`` GPUs) for a training run of ``flops``."""
    _check("price_per_gpu_hour", price_per_gpu_hour, low_inclusive=True)
    hours = gpu_hours(flops, peak_flops=peak_flops, utilization=utilization)
    kwh = energy_kwh(hours, gpu_power_w=gpu_power_w, pue=pue)
    out = {
        "flops": flops,
        "gpu_hours": hours,
        "dollars": hours * price_per_gpu_hour,
        "kwh": kwh,
        "co2_kg": co2_kg(kwh, grid_kg_per_kwh=grid_kg_per_kwh),
    }
    if n_gpus is not None:
        _check("n_gpus", n_gpus)
        out["days"] = hours / n_gpus / 24.0
    return out


def sensitivity(fn, base: dict, ranges: dict[str, tuple[float, float]], *, key: str) -> list[dict]:
    """One-at-a-time sensitivity: ``fn(**base)[key]`` with each argument set to its low and high value.

    Returns rows ``{"assumption", "low", "high", "at_low", "at_high", "swing"}`` sorted by
    swing (|at_high - at_low|), largest first — the data of a tornado chart.
    """
    if key not in fn(**base):
        raise ValueError(f"key {key!r} is not in the result of {fn.__name__}")
    rows = []
    for name, (lo, hi) in ranges.items():
        if name not in base:
            raise ValueError(f"ranges names {name!r}, which is not an argument in base ({sorted(base)})")
        at_lo = fn(**{**base, name: lo})[key]
        at_hi = fn(**{**base, name: hi})[key]
        rows.append(
            {"assumption": name, "low": lo, "high": hi, "at_low": at_lo, "at_high": at_hi, "swing": abs(at_hi - at_lo)}
        )
    return sorted(rows, key=lambda r: -r["swing"])


# --------------------------------------------------------------------------- inference


def inference_flops_per_token(n_active, *, context: int = 0, n_layers: int = 0, attn_width: int = 0) -> float:
    """Forward FLOPs for one token: :math:`2N_{active}` plus attention :math:`4\\,L\\,c\\,w` over ``context`` c.

    ``attn_width`` w is heads x head_dim; :math:`QK^\\top` and :math:`AV` cost :math:`2cw` each per layer.
    """
    _check("n_active", n_active)
    for name, v in (("context", context), ("n_layers", n_layers), ("attn_width", attn_width)):
        _check(name, v, low_inclusive=True)
    return 2.0 * n_active + 4.0 * n_layers * context * attn_width


def expected_experts_touched(num_experts: int, top_k: int, batch_size: int) -> float:
    """Expected distinct experts one MoE layer reads for ``batch_size`` tokens, under uniform routing.

    Each token picks ``top_k`` of ``num_experts``; an expert is missed by one token with
    probability :math:`1 - k/E`, so :math:`E\\,(1 - (1 - k/E)^B)` are touched on average.
    """
    check_int("num_experts", num_experts, min=1)
    check_int("top_k", top_k, min=1, max=num_experts)
    check_int("batch_size", batch_size, min=1)
    return num_experts * (1.0 - (1.0 - top_k / num_experts) ** batch_size)


def gpus_to_hold(
    n_bytes, *, memory_per_gpu: float = MEMORY_PER_GPU, usable_fraction: float = USABLE_MEMORY_FRACTION
) -> int:
    """Smallest number of GPUs whose usable memory holds ``n_bytes`` of weights."""
    _check("n_bytes", n_bytes)
    _check("memory_per_gpu", memory_per_gpu)
    _check("usable_fraction", usable_fraction, high=1.0)
    return max(1, math.ceil(n_bytes / (memory_per_gpu * usable_fraction)))


def decode_bytes_per_step(config: dict, *, batch_size: int = 1, dtype: str = "fp16") -> float:
    """Weight bytes one decode step reads: all shared weights, plus the experts the batch touches."""
    parts = configs.param_breakdown(config)
    total, _ = configs.count_params(config)
    per = configs.dtype_bytes(dtype)
    experts_total = parts["experts"][0]
    if experts_total == 0:
        return total * per
    e, k = config["num_local_experts"], config["num_experts_per_tok"]
    touched = expected_experts_touched(e, k, batch_size)
    return (total - experts_total) * per + experts_total * per * touched / e


def query_cost(
    config: dict,
    *,
    prompt_tokens: int = 50,
    output_tokens: int = 100,
    batch_size: int = 1,
    dtype: str = "fp16",
    peak_flops: float = PEAK_FLOPS,
    bandwidth: float = BANDWIDTH,
    utilization: float = UTILIZATION,
    memory_per_gpu: float = MEMORY_PER_GPU,
    usable_fraction: float = USABLE_MEMORY_FRACTION,
    price_per_gpu_hour: float = PRICE_PER_GPU_HOUR,
    gpu_power_w: float = GPU_POWER_W,
    pue: float = PUE,
) -> dict:
    """Roofline estimate of one query (prompt in, answer out) on the fewest GPUs that hold the weights.

    Each phase takes the larger of its compute time (FLOPs / (GPUs x peak x utilisation))
    and its memory time (bytes read / (GPUs x bandwidth)); weights are split evenly
    across the GPUs (tensor parallel, communication ignored — so this is a lower bound).
    A batch of ``batch_size`` queries shares every weight read; costs are per query.
    KV-cache traffic is ignored (small for short queries).
    """
    for name, v in (("prompt_tokens", prompt_tokens), ("output_tokens", output_tokens), ("batch_size", batch_size)):
        check_int(name, v, min=1)
    _check("bandwidth", bandwidth)
    _check("utilization", utilization, high=1.0)
    total, active = configs.count_params(config)
    weights = configs.weight_bytes(config, dtype)
    n_gpus = gpus_to_hold(weights, memory_per_gpu=memory_per_gpu, usable_fraction=usable_fraction)
    compute_rate = n_gpus * peak_flops * utilization  # FLOP/s of the group
    read_rate = n_gpus * bandwidth  # bytes/s of the group
    flops_tok = inference_flops_per_token(active)
    prefill_s = max(batch_size * prompt_tokens * flops_tok / compute_rate, weights / read_rate)
    step_bytes = decode_bytes_per_step(config, batch_size=batch_size, dtype=dtype)
    step_compute = batch_size * flops_tok / compute_rate
    step_memory = step_bytes / read_rate
    decode_step_s = max(step_compute, step_memory)
    latency = prefill_s + output_tokens * decode_step_s
    gpu_seconds = n_gpus * latency / batch_size
    hours = gpu_seconds / 3600.0
    return {
        "params_total": total,
        "params_active": active,
        "weight_bytes": weights,
        "gpus": n_gpus,
        "prefill_s": prefill_s,
        "decode_ms_per_token": decode_step_s * 1e3,
        "decode_bound": "memory" if step_memory >= step_compute else "compute",
        "latency_s": latency,
        "gpu_seconds_per_query": gpu_seconds,
        "dollars_per_query": hours * price_per_gpu_hour,
        "wh_per_query": hours * gpu_power_w * pue,
        "dollars_per_1k_tokens": hours * price_per_gpu_hour / output_tokens * 1000.0,
    }


# --------------------------------------------------------------------------- the mini scaling law


@dataclass
class PowerLawFit:
    """A fitted :math:`L(N) = E + A N^{-\\alpha}` (``E = 0`` for the pure power law)."""

    E: float
    A: float
    alpha: float
    n: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)

    def predict(self, n):
        n = np.asarray(n, dtype=float)
        out = self.E + self.A * n ** (-self.alpha)
        return float(out) if out.ndim == 0 else out

    @property
    def residuals(self) -> np.ndarray:
        return np.asarray(self.loss) - self.predict(self.n)

    @property
    def rmse(self) -> float:
        return float(np.sqrt(np.mean(self.residuals**2)))

    @property
    def r2(self) -> float:
        y = np.asarray(self.loss)
        return float(1.0 - np.sum(self.residuals**2) / np.sum((y - y.mean()) ** 2))


def fit_power_law(n_params, losses, *, offset: bool = True) -> PowerLawFit:
    """Least-squares fit of :math:`L(N) = E + A N^{-\\alpha}` to measured (N, loss) points.

    With ``offset=False`` it fits the pure power law :math:`L = A N^{-\\alpha}`, a straight
    line in log-log space. With an offset (3 parameters) it needs at least 4 points to
    leave a degree of freedom; the fit starts from the pure law and keeps
    :math:`0 \\le E < \\min L`, :math:`A > 0`, :math:`0 < \\alpha < 3`.
    """
    n = np.asarray(n_params, dtype=float)
    y = np.asarray(losses, dtype=float)
    if n.ndim != 1 or n.shape != y.shape:
        raise ValueError(f"n_params and losses must be 1-D and the same length, got {n.shape} and {y.shape}")
    need = 4 if offset else 2
    if len(n) < need:
        raise ValueError(
            f"need at least {need} points to fit {'E + A/N^alpha' if offset else 'A/N^alpha'}, got {len(n)}"
        )
    _check("n_params", n)
    _check("losses", y)
    slope, intercept = np.polyfit(np.log(n), np.log(y), 1)
    pure = PowerLawFit(E=0.0, A=float(np.exp(intercept)), alpha=float(-slope), n=n.tolist(), loss=y.tolist())
    if not offset:
        return pure
    from scipy.optimize import curve_fit

    def model(log_n, e, log_a, alpha):
        return e + np.exp(log_a - alpha * log_n)

    best = None
    for e0 in (0.0, 0.5 * y.min(), 0.9 * y.min()):  # a few starts; keep the best
        a0 = max(y.max() - e0, 1e-6) * n.min() ** max(pure.alpha, 0.05)
        try:
            p, _ = curve_fit(
                model,
                np.log(n),
                y,
                p0=(e0, math.log(a0), max(pure.alpha, 0.05)),
                bounds=([0.0, -50.0, 1e-4], [y.min() * (1 - 1e-9), 50.0, 3.0]),
                maxfev=20000,
            )
        except RuntimeError:
            continue
        sse = float(np.sum((model(np.log(n), *p) - y) ** 2))
        if best is None or sse < best[0]:
            best = (sse, p)
    if best is None:
        raise ValueError("the power-law fit did not converge; check that loss falls with N")
    e, log_a, alpha = best[1]
    return PowerLawFit(E=float(e), A=float(math.exp(log_a)), alpha=float(alpha), n=n.tolist(), loss=y.tolist())


def byte_tokens(split: str = "train") -> np.ndarray:
    """The corpus split as UTF-8 bytes (token ids 0..255), articles separated by a blank line.

    The mini scaling law trains on bytes, not BPE tokens: with 256 "tokens" the output
    layer is cheap, so nearly all compute goes into the transformer blocks, and models
    learn enough within a few hundred steps for their size to matter. Loss is then in
    nats per byte. Returned as int64 so batching does not copy the array each step.
    """
    from course_lib import data

    text = "\n\n".join(a.text for a in data.articles(split))
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)


SWEEP_STEPS = 500
#: Learning rate of the width-32 patient; others get ``SWEEP_LR_AT_32 * 32 / d_model``.
SWEEP_LR_AT_32 = 3e-3
#: (d_model, n_layers, n_heads) of the mini scaling law's patients.
SWEEP_SHAPES = [(16, 1, 2), (24, 2, 2), (32, 2, 2), (48, 3, 3), (64, 4, 4)]
#: torch threads while the sweep trains. Its matrices (width <= 64, 512 tokens a step) are
#: too small for a second thread to pay for its synchronisation: on the course's 2-core CI
#: machine (AMD EPYC, AVX2, 2026-12-02) the whole sweep took 61.6 s of CPU / 61.7 s wall on
#: 1 thread against 81.1 s / 67.3 s on 2, with the same losses.
SWEEP_THREADS = 1


def sweep_configs(shapes=None):
    """The patients of the mini scaling law: byte-level TinyLMs, widths 16 -> 64, 1 -> 4 layers."""
    from course_lib.model import ModelConfig

    shapes = SWEEP_SHAPES if shapes is None else shapes
    return [ModelConfig(vocab_size=256, d_model=d, n_layers=nl, n_heads=h, max_seq_len=64) for d, nl, h in shapes]


def sweep_train_config(model_config=None, *, steps: int = SWEEP_STEPS):
    """One data budget for every size: ``steps`` x 8 x 64 bytes, the same schedule and seed.

    The learning rate falls as 1 / width (``SWEEP_LR_AT_32 x 32 / d_model``), the scaling
    muP prescribes for Adam on hidden matrices (Yang et al. 2022), applied here to all
    parameters for simplicity. With one learning rate for all, the widest patient trains
    too slowly for this short budget and the smallest too cautiously.
    """
    from course_lib.train import TrainConfig

    d = 32 if model_config is None else model_config.d_model
    return TrainConfig(
        steps=steps,
        batch_size=8,
        seq_len=64,
        lr=SWEEP_LR_AT_32 * 32 / d,
        warmup_steps=10,
        eval_every=0,
        eval_batches=64,
        seed=0,
    )


def run_sweep(
    train_ids, val_ids, *, model_configs=None, train_config=None, seed: int = 0, threads: int | None = SWEEP_THREADS
) -> list[dict]:
    """Train each config from the same seed on the same tokens; one row of measurements per size.

    ``train_config``: None (each size gets :func:`sweep_train_config` for its width), one
    ``TrainConfig`` for all, or a function ``model_config -> TrainConfig``. ``threads``:
    torch's thread count while training (:data:`SWEEP_THREADS`; None leaves the current
    one); each row records it, since the seconds and tokens per second depend on it.
    """
    import time

    import torch

    from course_lib.measure import num_threads
    from course_lib.model import TinyLM
    from course_lib.train import train

    threads = check_int("threads", threads, min=1, allow_none=True)
    train_ids = np.asarray(train_ids, dtype=np.int64)  # once, not every step
    val_ids = np.asarray(val_ids, dtype=np.int64)
    model_configs = model_configs if model_configs is not None else sweep_configs()
    if train_config is None:
        train_config = sweep_train_config
    if not model_configs:
        raise ValueError("model_configs must name at least one ModelConfig")
    top = int(max(train_ids.max(), val_ids.max()))
    small_vocab = [c.vocab_size for c in model_configs if c.vocab_size <= top]
    if small_vocab:
        raise ValueError(f"token ids reach {top}, beyond a model's vocab_size {min(small_vocab)}; use matching tokens")
    rows = []
    for cfg in model_configs:
        torch.manual_seed(seed)
        model = TinyLM(cfg)
        tcfg = train_config(cfg) if callable(train_config) else train_config
        with num_threads(threads):
            n_threads = torch.get_num_threads()
            t0 = time.perf_counter()
            hist = train(model, train_ids, val_ids, tcfg, progress=False)
            seconds = time.perf_counter() - t0
        flops = patient_training_flops(model, n_tokens=hist.tokens_seen, seq_len=tcfg.seq_len)
        rows.append(
            {
                "d_model": cfg.d_model,
                "n_layers": cfg.n_layers,
                "lr": tcfg.lr,
                "params": model.num_params(),
                "params_non_embedding": model.num_params(embedding=False),
                "tokens": hist.tokens_seen,
                "train_flops": flops["exact"],
                "val_loss": hist.final_val_loss,
                "seconds": seconds,
                "tokens_per_second": hist.tokens_seen / seconds,
                "threads": n_threads,
            }
        )
    return rows


# --------------------------------------------------------------------------- the widget


def budget_summary(
    compute: float,
    *,
    price_per_gpu_hour: float = PRICE_PER_GPU_HOUR,
    utilization: float = UTILIZATION,
    grid_kg_per_kwh: float = GRID_KG_PER_KWH,
    law: LossLaw = CHINCHILLA,
    **hardware,
) -> dict:
    """Compute budget -> Chinchilla-optimal N and D, predicted loss, dollars, kWh, kg CO2e."""
    n, d = compute_optimal(compute, law=law)
    cost = training_cost(
        compute,
        utilization=utilization,
        price_per_gpu_hour=price_per_gpu_hour,
        grid_kg_per_kwh=grid_kg_per_kwh,
        **hardware,
    )
    return {"n_params": n, "n_tokens": d, "tokens_per_param": d / n, "loss": law.loss(n, d), **cost}


def _si(x: float, unit: str = "") -> str:
    for factor, prefix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= factor:
            return f"{x / factor:.3g}{prefix}{unit}"
    return f"{x:.3g}{unit}"


def budget_figure(
    log10_compute: float = 24.0,
    price_per_gpu_hour: float = PRICE_PER_GPU_HOUR,
    utilization: float = UTILIZATION,
    grid_kg_per_kwh: float = GRID_KG_PER_KWH,
):
    """The widget's pure builder: the iso-FLOP loss curve at budget 10^log10_compute, with the optimum.

    Title: optimal N and D, predicted loss, dollars, MWh and tonnes CO2e under the settings.
    """
    from course_lib import viz

    _check("log10_compute", log10_compute)
    compute = 10.0**log10_compute
    s = budget_summary(
        compute, price_per_gpu_hour=price_per_gpu_hour, utilization=utilization, grid_kg_per_kwh=grid_kg_per_kwh
    )
    n_grid = s["n_params"] * np.logspace(-1.5, 1.5, 121)
    losses = CHINCHILLA.loss(n_grid, compute / (6.0 * n_grid))
    rule_n, rule_d = tokens_per_param_rule(compute)
    title = (  # three short lines, so the bill stays legible on a phone
        f"1e{log10_compute:g} FLOPs → N* = {_si(s['n_params'])}, D* = {_si(s['n_tokens'])} tokens<br>"
        f"loss {s['loss']:.3f}; US${_si(s['dollars'])}, {_si(s['kwh'] / 1e3)} MWh, {_si(s['co2_kg'] / 1e3)} t CO2e<br>"
        f"at US${price_per_gpu_hour:g}/GPU-h, MFU {utilization:.0%}, {grid_kg_per_kwh:g} kg/kWh"
    )
    fig = viz.figure(
        title_text=title,
        xaxis=dict(title="parameters N (log scale)", type="log"),
        yaxis=dict(title="predicted loss (nats/token)"),
        height=460,
    )
    fig.add_scatter(x=n_grid, y=losses, mode="lines", name="same compute, other N (D = C/6N)")
    fig.add_scatter(
        x=[s["n_params"]], y=[s["loss"]], mode="markers", marker=dict(size=12), name="compute-optimal (Chinchilla fit)"
    )
    fig.add_scatter(
        x=[rule_n],
        y=[CHINCHILLA.loss(rule_n, rule_d)],
        mode="markers",
        marker=dict(size=10, symbol="diamond"),
        name="20 tokens per parameter",
    )
    return fig
