r"""Quantization (chapter 05): fewer bits per weight, measured honestly.

What is here, in the order the chapter builds it:

* **Number formats** — fp32, bf16, fp16, simulated fp8 (e4m3), int8, int4, nf4: bit layouts,
  every representable value (:func:`format_grid`), and rounding to a format
  (:func:`round_minifloat`, :func:`round_to_format`).
* **Integer quantization** — symmetric (absmax) and asymmetric (zero-point) grids per tensor,
  per output channel or per group of input columns: :func:`quantize` returns codes, scales and
  zero-points; ``dequantize`` maps back; :func:`error_stats` says how far.
  A value :math:`x` becomes the code :math:`u = \mathrm{clamp}(\lfloor x/s + z\rceil, 0, 2^b-1)`
  and comes back as :math:`\hat x = (u - z)\,s`; inside the clipping range
  :math:`|x - \hat x| \le s/2`.
* **Packing** — :func:`pack_int4` (two codes per byte) and :func:`pack_bits` (any width, so
  3-bit weights really take 3 bits).
* :class:`QuantLinear` — a drop-in for ``nn.Linear``: weight-only 2/3/4/8-bit with group scales,
  W8A8 through ``torch._int_mm`` (int8 x int8 -> int32), and LLM.int8()'s outlier decomposition.
  ``weight_bytes()`` counts packed codes, scales, zero-points and biases, nothing else.
  :class:`QuantEmbedding` does the same for embedding tables.
* **Outliers** — LLM.int8() (Dettmers et al. 2022) and SmoothQuant (Xiao et al. 2023,
  :func:`smooth_scales`).
* **GPTQ** (Frantar et al. 2023, :func:`gptq_quantize`) and **AWQ** (Lin et al. 2024,
  :func:`awq_search`), written from the papers.
* :func:`quantize_model` — any ``nn.Module`` (the patient, MiniLM's BERT) -> a quantized copy
  and a :class:`QuantReport`.
* **QAT** — fake quantization with a straight-through estimator (:func:`prepare_qat`,
  :func:`convert_qat`).

The chapter's trade-off grid (method x bits x group size on the patient and on MiniLM, W8A8
variants, latency, QAT) is expensive, so it is precomputed deterministically::

    python -m course_lib.quant build                # both parts -> course_lib/zoo_data/quant_grid.json
    python -m course_lib.quant build patient        # or one part (merged into the file)
    python -m course_lib.quant build latency qat    # only redo the patient's timings / QAT runs

It needs the zoo patient "small" and MiniLM's cached extract embeddings
(``python -m course_lib.encoder build``); :func:`load_grid` reads the result. Cost on a shared
2-core CPU (the file's ``built_with`` records each part's seconds): ``minilm`` about 7 minutes;
``patient`` (36 configurations evaluated on 32,768 tokens, twelve latency runs, three 100-step
fine-tunes) well over an hour — rebuild its parts separately (``latency``, ``qat``) when only
those change.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.paths import ZOO_DIR, atomic_write_bytes

GRID_PATH = ZOO_DIR / "quant_grid.json"
WEIGHT_BITS = (2, 3, 4, 8)
METHODS = ("rtn", "gptq", "awq", "w8a8", "llm.int8")
GRANULARITIES = ("tensor", "channel", "group")
#: Scales are stored in fp16, as GPTQ/AWQ checkpoints do; values are clamped into its range.
SCALE_DTYPE = torch.float16
_FP16_TINY = 2.0**-14  # smallest normal fp16
_FP16_MAX = 65504.0

# --------------------------------------------------------------------------- number formats


@dataclass(frozen=True)
class NumberFormat:
    """A number format: how many bits, and how they are spent.

    ``kind`` is ``"float"`` (sign, exponent, mantissa), ``"int"`` (a uniform grid that needs a
    scale) or ``"lookup"`` (16 fixed levels that need a scale: NF4).
    """

    name: str
    bits: int
    kind: str
    exponent_bits: int = 0
    mantissa_bits: int = 0
    ieee_specials: bool = True  # exponent all-ones = inf/NaN (IEEE); e4m3 "fn" keeps it for numbers
    note: str = ""

    @property
    def bias(self) -> int:
        return 2 ** (self.exponent_bits - 1) - 1 if self.kind == "float" else 0

    @property
    def max_value(self) -> float:
        """Largest finite value (floats) or largest code magnitude (symmetric ints)."""
        if self.kind == "int":
            return float(2 ** (self.bits - 1) - 1)
        if self.kind == "lookup":
            return 1.0
        top_exp = 2**self.exponent_bits - 1 - (1 if self.ieee_specials else 0)
        frac = 2 - 2.0 ** (-self.mantissa_bits) * (1 if self.ieee_specials else 2)
        return 2.0 ** (top_exp - self.bias) * frac

    def layout(self) -> list[tuple[str, int]]:
        """Bit fields from the most significant bit: ``[("sign", 1), ("exponent", 8), ...]``."""
        if self.kind == "float":
            return [("sign", 1), ("exponent", self.exponent_bits), ("mantissa", self.mantissa_bits)]
        if self.kind == "int":
            return [("two's complement integer", self.bits)]
        return [("index into 16 levels", self.bits)]


FORMATS: dict[str, NumberFormat] = {
    "fp32": NumberFormat("fp32", 32, "float", 8, 23, note="IEEE 754 single"),
    "bf16": NumberFormat("bf16", 16, "float", 8, 7, note="fp32's range, 3 significant digits"),
    "fp16": NumberFormat("fp16", 16, "float", 5, 10, note="IEEE 754 half"),
    "fp8_e4m3": NumberFormat("fp8_e4m3", 8, "float", 4, 3, ieee_specials=False, note="OCP FP8 E4M3 (no inf)"),
    "int8": NumberFormat("int8", 8, "int", note="needs a scale"),
    "int4": NumberFormat("int4", 4, "int", note="needs a scale"),
    "nf4": NumberFormat("nf4", 4, "lookup", note="QLoRA's NormalFloat4, needs a scale"),
}


def _format(name: str) -> NumberFormat:
    if name not in FORMATS:
        raise ValueError(f"format must be one of {sorted(FORMATS)}, got {name!r}")
    return FORMATS[name]


def nf4_levels() -> torch.Tensor:
    r"""The 16 NormalFloat4 levels of QLoRA (Dettmers et al. 2023), computed from their recipe.

    Quantiles of :math:`\mathcal N(0,1)` at evenly spaced probabilities from
    :math:`\delta = 0.9677083` to 1/2 — 8 positive, 7 negative, and an exact zero — scaled into
    [-1, 1]. Equal-probability bins suit normally distributed weights better than a uniform grid.
    """
    normal = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
    offset = 0.9677083
    pos = normal.icdf(torch.linspace(offset, 0.5, 9, dtype=torch.float64)[:-1])  # 8 values > 0
    neg = -normal.icdf(torch.linspace(offset, 0.5, 8, dtype=torch.float64)[:-1])  # 7 values < 0
    levels = torch.cat([pos, torch.zeros(1, dtype=torch.float64), neg]).sort().values
    return (levels / levels.max()).float()


def decode_minifloat(pattern: torch.Tensor, *, exponent_bits: int, mantissa_bits: int, ieee_specials: bool = True):
    r"""Value of each bit pattern (ints) in a sign/exponent/mantissa format, from the definition.

    Normal: :math:`(-1)^s\,2^{e - \text{bias}}\,(1 + m/2^M)`; subnormal (:math:`e = 0`):
    :math:`(-1)^s\,2^{1-\text{bias}}\,m/2^M`. Exponent all ones is inf/NaN for IEEE formats;
    e4m3 ("fn") uses it for numbers and keeps only S.1111.111 as NaN.
    """
    p = pattern.to(torch.int64)
    m_mask, e_mask = 2**mantissa_bits - 1, 2**exponent_bits - 1
    m = (p & m_mask).double()
    e = (p >> mantissa_bits) & e_mask
    s = (p >> (mantissa_bits + exponent_bits)) & 1
    bias = 2 ** (exponent_bits - 1) - 1
    normal = torch.pow(2.0, (e - bias).double()) * (1 + m / 2**mantissa_bits)
    sub = 2.0 ** (1 - bias) * m / 2**mantissa_bits
    v = torch.where(e == 0, sub, normal) * torch.where(s == 1, -1.0, 1.0)
    if ieee_specials:
        v = torch.where(e == e_mask, torch.where(m == 0, torch.inf, torch.nan) * torch.where(s == 1, -1.0, 1.0), v)
    else:
        v = torch.where((e == e_mask) & (m == m_mask), torch.nan, v)
    return v


def format_grid(name: str) -> torch.Tensor:
    """Every finite value a format can represent, sorted (float64).

    Integer formats give their codes (to be multiplied by a scale), nf4 its 16 levels. fp32 has
    2^32 patterns and raises; use :func:`round_to_format` instead.
    """
    f = _format(name)
    if f.kind == "int":
        q = 2 ** (f.bits - 1)
        return torch.arange(-q, q, dtype=torch.float64)
    if f.kind == "lookup":
        return nf4_levels().double()
    if f.bits > 16:
        raise ValueError(f"{name} has 2^{f.bits} bit patterns; format_grid enumerates formats of <= 16 bits")
    v = decode_minifloat(
        torch.arange(2**f.bits),
        exponent_bits=f.exponent_bits,
        mantissa_bits=f.mantissa_bits,
        ieee_specials=f.ieee_specials,
    )
    return torch.unique(v[torch.isfinite(v)])  # sorted; +0 and -0 are one value


def round_minifloat(x: torch.Tensor, *, exponent_bits: int, mantissa_bits: int, max_value: float) -> torch.Tensor:
    r"""Round to the nearest value of a float format (ties to even), saturating at ``max_value``.

    Inside binade :math:`[2^e, 2^{e+1})` the spacing is :math:`2^{e-M}`; below the smallest
    normal exponent :math:`1 - \text{bias}` the spacing stays :math:`2^{1-\text{bias}-M}`
    (subnormals). So :math:`\hat x = \mathrm{round}(x / 2^{e-M})\,2^{e-M}`.
    """
    x = x.float()
    bias = 2 ** (exponent_bits - 1) - 1
    e = torch.floor(torch.log2(x.abs())).clamp(min=1 - bias)  # log2(0) = -inf -> subnormal spacing
    quantum = torch.pow(2.0, e - mantissa_bits)
    y = torch.round(x / quantum) * quantum
    return torch.where(torch.isnan(x), x, y.clamp(-max_value, max_value))


def round_to_format(x: torch.Tensor, name: str, *, block_size: int | None = None) -> torch.Tensor:
    """``x`` as the format would store it, back in fp32 (simulated where torch has no dtype).

    Float formats round element by element. int8/int4/nf4 need a scale: absmax over the whole
    tensor, or over consecutive blocks of ``block_size`` values (QLoRA uses 64).
    """
    f = _format(name)
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise TypeError("x must be a floating-point tensor")
    x = x.float()
    if f.kind == "float":
        if name == "fp32":
            return x.clone()
        return round_minifloat(x, exponent_bits=f.exponent_bits, mantissa_bits=f.mantissa_bits, max_value=f.max_value)
    flat = x.reshape(-1)
    n = flat.numel()
    b = n if block_size is None else block_size
    if not isinstance(b, int) or b < 1 or n % b:
        raise ValueError(f"block_size must be an int >= 1 dividing x.numel() = {n}, got {block_size!r}")
    blocks = flat.view(-1, b)
    absmax = blocks.abs().amax(1, keepdim=True).clamp(min=1e-12)
    if f.kind == "int":
        qmax = 2 ** (f.bits - 1) - 1
        out = torch.round(blocks / absmax * qmax).clamp(-qmax, qmax) * absmax / qmax
    else:
        levels = nf4_levels().to(x.device)
        idx = (blocks / absmax).unsqueeze(-1).sub(levels).abs().argmin(-1)  # nearest level
        out = levels[idx] * absmax
    return out.view_as(x)


# --------------------------------------------------------------------------- integer quantization


def _check_bits(bits, allowed=WEIGHT_BITS, name="bits") -> None:
    if not isinstance(bits, int) or isinstance(bits, bool) or bits not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {bits!r}")


def _check_finite(t: torch.Tensor, what: str) -> None:
    if not torch.isfinite(t).all():
        raise ValueError(f"{what} contains NaN or inf values; quantization needs finite numbers")


def round_scale(scale: torch.Tensor) -> torch.Tensor:
    """Round scales to their fp16 storage (inside fp16's normal range), returned as fp32."""
    return scale.clamp(_FP16_TINY, _FP16_MAX).to(SCALE_DTYPE).float()


def grid_params(xg: torch.Tensor, *, bits: int, symmetric: bool, fp16_scale: bool = False):
    r"""Scale and zero-point of each group: ``xg`` is (..., g), the last dim one group.

    Symmetric (absmax): :math:`s = \max|x| / (2^{b-1}-1)`, zero fixed at :math:`2^{b-1}`, so the
    codes :math:`1..2^b-1` mean :math:`-(2^{b-1}-1)..(2^{b-1}-1)` steps (0 exactly representable).
    Asymmetric: the range :math:`[\min(x,0), \max(x,0)]` is cut into :math:`2^b - 1` steps,
    :math:`s = (\max - \min)/(2^b-1)`, :math:`z = \mathrm{round}(-\min/s)`. Returns (s, z) with
    a trailing dim of 1.
    """
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        scale = xg.abs().amax(-1, keepdim=True) / qmax
        scale = round_scale(scale) if fp16_scale else scale.clamp(min=torch.finfo(torch.float32).eps)
        zero = torch.full_like(scale, 2 ** (bits - 1))
    else:
        qmax = 2**bits - 1
        lo = xg.amin(-1, keepdim=True).clamp(max=0)
        hi = xg.amax(-1, keepdim=True).clamp(min=0)
        scale = (hi - lo) / qmax
        scale = round_scale(scale) if fp16_scale else scale.clamp(min=torch.finfo(torch.float32).eps)
        zero = torch.clamp(-torch.round(lo / scale), 0, qmax)
    return scale, zero


def code_range(bits: int, symmetric: bool) -> tuple[int, int]:
    """Smallest and largest code: symmetric grids leave code 0 unused (a balanced grid)."""
    return (1, 2**bits - 1) if symmetric else (0, 2**bits - 1)


def encode(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, *, bits: int, symmetric: bool) -> torch.Tensor:
    r"""Codes :math:`u = \mathrm{clamp}(\mathrm{round}(x \cdot s^{-1} + z))` (same rounding as torch.ao)."""
    lo, hi = code_range(bits, symmetric)
    return torch.clamp(torch.round(x * (1.0 / scale) + zero), lo, hi)


def _groups(x: torch.Tensor, granularity: str, group_size: int | None) -> torch.Tensor:
    """View a tensor as (rows, n_groups, group): one scale per (row, group)."""
    if granularity == "tensor":
        return x.reshape(1, 1, -1)
    if x.dim() != 2:
        raise ValueError(f"granularity {granularity!r} needs a 2-D weight (out, in), got shape {tuple(x.shape)}")
    rows, cols = x.shape
    if granularity == "channel":
        return x.reshape(rows, 1, cols)
    if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 1 or cols % group_size:
        raise ValueError(f"group_size must be an int >= 1 dividing the {cols} input features, got {group_size!r}")
    return x.reshape(rows, cols // group_size, group_size)


@dataclass
class QTensor:
    """A quantized tensor: integer ``codes`` with ``scale`` and ``zero`` per group.

    ``codes`` has the shape of the original tensor viewed as (rows, n_groups, group);
    ``dequantize()`` gives back the original shape.
    """

    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    bits: int
    symmetric: bool
    shape: tuple

    def dequantize(self) -> torch.Tensor:
        return ((self.codes - self.zero) * self.scale).reshape(self.shape)

    @property
    def int_repr(self) -> torch.Tensor:
        """Signed integers (codes minus zero-point), shaped like the original tensor."""
        return (self.codes - self.zero).reshape(self.shape)


def quantize(
    x: torch.Tensor,
    *,
    bits: int = 8,
    symmetric: bool = True,
    granularity: str = "tensor",
    group_size: int | None = None,
    fp16_scale: bool = False,
) -> QTensor:
    """Round-to-nearest quantization of ``x`` per tensor, per output channel (row) or per group.

    ``granularity="group"`` cuts each row into groups of ``group_size`` consecutive input
    columns. ``fp16_scale`` rounds the scales to fp16 first (how :class:`QuantLinear` stores them).
    """
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise TypeError("x must be a floating-point tensor")
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    _check_bits(bits, (2, 3, 4, 5, 6, 7, 8))
    if x.numel() == 0:
        raise ValueError("x must not be empty")
    _check_finite(x, "x")
    xg = _groups(x.float(), granularity, group_size)
    scale, zero = grid_params(xg, bits=bits, symmetric=symmetric, fp16_scale=fp16_scale)
    codes = encode(xg, scale, zero, bits=bits, symmetric=symmetric)
    return QTensor(codes, scale, zero, bits, symmetric, tuple(x.shape))


def dequantize(qt: QTensor) -> torch.Tensor:
    r""":math:`\hat x = (u - z)\,s`, in the original shape."""
    return qt.dequantize()


def fake_quantize(x: torch.Tensor, **kw) -> torch.Tensor:
    """``dequantize(quantize(x, **kw))``: the values a quantized model really computes with."""
    return quantize(x, **kw).dequantize().to(x.dtype)


def error_stats(x: torch.Tensor, x_hat: torch.Tensor) -> dict:
    r"""How far ``x_hat`` is from ``x``: MSE, max |error|, relative error, and SQNR in dB.

    :math:`\mathrm{SQNR} = 10\log_{10}(\sum x^2 / \sum (x - \hat x)^2)`; each extra bit of a
    uniform grid adds about :math:`20\log_{10}2 \approx 6.02` dB.
    """
    if x.shape != x_hat.shape:
        raise ValueError(f"x and x_hat must have the same shape, got {tuple(x.shape)} and {tuple(x_hat.shape)}")
    x, x_hat = x.double(), x_hat.double()
    err = x - x_hat
    signal, noise = x.pow(2).sum().item(), err.pow(2).sum().item()
    return {
        "mse": err.pow(2).mean().item(),
        "max_abs": err.abs().max().item(),
        "rel": math.sqrt(noise / signal) if signal > 0 else float("nan"),
        "sqnr_db": 10 * math.log10(signal / noise) if noise > 0 else float("inf"),
    }


# --------------------------------------------------------------------------- packing


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """Two 4-bit codes per byte along the last dim: byte = low | high << 4. Last dim must be even."""
    if codes.shape[-1] % 2:
        raise ValueError(f"the last dimension must be even to pack two codes per byte, got {codes.shape[-1]}")
    c = codes.to(torch.uint8)
    if (c > 15).any():
        raise ValueError("int4 codes must lie in [0, 15]")
    return c[..., 0::2] | (c[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: (..., n/2) bytes -> (..., n) codes (uint8)."""
    return torch.stack([packed & 0xF, packed >> 4], dim=-1).flatten(-2)


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack ``bits``-bit codes (0 .. 2^bits-1) densely along the last dim into bytes.

    The codes are cut into bit planes, padded to a whole number of bytes, and read eight bits
    at a time (little-endian). n codes take ``ceil(n * bits / 8)`` bytes; for 4 bits the layout
    equals :func:`pack_int4`.
    """
    _check_bits(bits, (1, 2, 3, 4, 5, 6, 7, 8))
    c = codes.to(torch.int64)
    if (c < 0).any() or (c >= 2**bits).any():
        raise ValueError(f"{bits}-bit codes must lie in [0, {2**bits - 1}]")
    if bits == 8:
        return c.to(torch.uint8)
    if bits == 4 and c.shape[-1] % 2 == 0:
        return pack_int4(c)
    planes = (c.unsqueeze(-1) >> torch.arange(bits, device=c.device)) & 1  # (..., n, bits)
    stream = planes.flatten(-2)  # (..., n * bits), LSB first
    stream = F.pad(stream, (0, (-stream.shape[-1]) % 8))
    weights = 1 << torch.arange(8, device=c.device)
    return (stream.view(*stream.shape[:-1], -1, 8) * weights).sum(-1).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: bytes -> the first ``n`` codes along the last dim (uint8).

    Widths that fill whole bytes (1, 2, 4 bits) and 3 bits (8 codes per 3 bytes) take fast
    paths with shifts; every path reads the same little-endian bit stream.
    """
    _check_bits(bits, (1, 2, 3, 4, 5, 6, 7, 8))
    if bits == 8:
        return packed[..., :n]
    if bits == 4 and n % 2 == 0:
        return unpack_int4(packed)[..., :n]
    if bits in (1, 2) and n % (8 // bits) == 0:  # whole bytes of 8 / bits codes: shift them out
        shifts = torch.arange(0, 8, bits, device=packed.device, dtype=torch.uint8)
        return ((packed.unsqueeze(-1) >> shifts) & (2**bits - 1)).flatten(-2)
    if bits == 3 and n % 8 == 0:  # 8 codes in 3 bytes: read them as one 24-bit word
        b = packed.to(torch.int32).view(*packed.shape[:-1], -1, 3)
        word = b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16)
        shifts = torch.arange(0, 24, 3, device=packed.device, dtype=torch.int32)
        return ((word.unsqueeze(-1) >> shifts) & 7).flatten(-2).to(torch.uint8)
    stream = (packed.to(torch.int64).unsqueeze(-1) >> torch.arange(8, device=packed.device)) & 1
    stream = stream.flatten(-2)[..., : n * bits].view(*packed.shape[:-1], n, bits)
    return (stream << torch.arange(bits, device=packed.device)).sum(-1).to(torch.uint8)


# --------------------------------------------------------------------------- int8 matmul


def int8_matmul(a: torch.Tensor, b_t: torch.Tensor, *, backend: str = "int_mm") -> torch.Tensor:
    r"""int8 (M, K) x int8 (N, K)^T -> int32-valued (M, N), exactly.

    ``"int_mm"`` calls ``torch._int_mm`` (int32 accumulation; fast where the CPU has int8 dot
    product instructions, e.g. AVX-512 VNNI / AMX, and on GPUs; on CUDA it needs M > 16 and K, N
    multiples of 8, so we pad). ``"emulated"`` multiplies the same integers in fp32, exact while
    :math:`K \cdot 127^2 < 2^{24}` (K <= 1040) and within fp32 rounding beyond.
    """
    if a.dtype != torch.int8 or b_t.dtype != torch.int8:
        raise TypeError(f"int8_matmul needs int8 inputs, got {a.dtype} and {b_t.dtype}")
    if backend == "emulated":
        return a.float() @ b_t.float().t()
    if backend != "int_mm":
        raise ValueError(f"backend must be 'int_mm' or 'emulated', got {backend!r}")
    m, k = a.shape
    n = b_t.shape[0]
    if a.is_cuda:  # cuBLAS int8 GEMM shape rules
        pm, pk, pn = max(17, m), -(-k // 8) * 8, -(-n // 8) * 8
        a = F.pad(a, (0, pk - k, 0, pm - m))
        b_t = F.pad(b_t, (0, pk - k, 0, pn - n))
        return torch._int_mm(a, b_t.t())[:m, :n].float()
    return torch._int_mm(a, b_t.t()).float()


def quantize_activations(x: torch.Tensor, *, granularity: str = "token"):
    r"""Dynamic symmetric int8 of activations x (M, K): one scale per row (token) or per tensor.

    :math:`s = \max|x| / 127`, :math:`q = \mathrm{round}(x/s)`. Returns (int8 q, fp32 scale (M, 1)).
    """
    if granularity == "token":
        amax = x.abs().amax(-1, keepdim=True)
    elif granularity == "tensor":
        amax = x.abs().amax().expand(x.shape[0], 1)
    else:
        raise ValueError(f"act_granularity must be 'token' or 'tensor', got {granularity!r}")
    scale = (amax / 127).clamp(min=1e-12)
    return torch.clamp(torch.round(x / scale), -127, 127).to(torch.int8), scale


# --------------------------------------------------------------------------- QuantLinear


class QuantLinear(nn.Module):
    r"""A drop-in for ``nn.Linear`` that stores integer weights.

    Modes:

    * ``"weight"`` (weight-only, bits 2/3/4/8): :math:`W \approx (U - Z) \odot S` with codes
      :math:`U` packed ``bits`` to a byte-stream, one fp16 scale (and a uint8 zero-point when
      asymmetric) per group of ``group_size`` input columns. ``forward`` dequantizes and
      multiplies in floating point: it saves memory, and time only where a fused kernel reads
      the packed codes directly.
    * ``"w8a8"``: int8 weights (per output channel) **and** int8 activations (dynamic, per token or
      per tensor): :math:`y = (X_q W_q^\top)\,s_x s_w^\top + b`, the integer product through
      ``torch._int_mm``.
    * ``"llm.int8"``: W8A8, except input features whose activations exceed ``threshold`` in any
      token; those columns are multiplied in floating point (LLM.int8(), Dettmers et al. 2022).

    ``in_scale`` (AWQ, SmoothQuant): a per-input-channel factor :math:`s`; the stored weights
    quantize :math:`W \operatorname{diag}(s)` and ``forward`` divides :math:`x` by :math:`s`.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bits: int = 4,
        group_size: int | None = None,
        symmetric: bool = False,
        mode: str = "weight",
        bias: bool = True,
        act_granularity: str = "token",
        threshold: float = 6.0,
        backend: str = "int_mm",
        has_in_scale: bool = False,
    ):
        super().__init__()
        if mode not in ("weight", "w8a8", "llm.int8"):
            raise ValueError(f"mode must be 'weight', 'w8a8' or 'llm.int8', got {mode!r}")
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if mode == "weight":
            _check_bits(bits)
        elif bits != 8:
            raise ValueError(f"mode {mode!r} stores int8 weights: bits must be 8, got {bits!r}")
        group_size = in_features if group_size in (None, -1) or mode != "weight" else group_size
        if (
            not isinstance(group_size, int)
            or isinstance(group_size, bool)
            or group_size < 1
            or in_features % group_size
        ):
            raise ValueError(
                f"group_size must be None (per channel) or an int >= 1 dividing in_features = {in_features}, got {group_size!r}"
            )
        if act_granularity not in ("token", "tensor"):
            raise ValueError(f"act_granularity must be 'token' or 'tensor', got {act_granularity!r}")
        if backend not in ("int_mm", "emulated"):
            raise ValueError(f"backend must be 'int_mm' or 'emulated', got {backend!r}")
        if not threshold > 0:
            raise ValueError(f"threshold must be > 0, got {threshold!r}")
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.group_size, self.mode = bits, group_size, mode
        self.symmetric = True if mode != "weight" else bool(symmetric)
        self.act_granularity, self.threshold, self.backend = act_granularity, float(threshold), backend
        self.tied = False  # True when the codes are an embedding's (counted there)
        ng = in_features // group_size
        if mode == "weight":
            nbytes = -(-in_features * bits // 8)  # ceil(in * bits / 8): codes packed densely per row
            self.register_buffer("packed", torch.zeros(out_features, nbytes, dtype=torch.uint8))
        else:
            self.register_buffer("packed", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(out_features, ng, dtype=SCALE_DTYPE))
        self.register_buffer("zero", None if self.symmetric else torch.zeros(out_features, ng, dtype=torch.uint8))
        self.register_buffer("in_scale", torch.ones(in_features, dtype=SCALE_DTYPE) if has_in_scale else None)
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self.last_outlier_columns = 0  # llm.int8: how many columns the last forward kept in float

    # -- construction -----------------------------------------------------------------

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        *,
        bits: int = 4,
        group_size: int | None = None,
        symmetric: bool = False,
        mode: str = "weight",
        in_scale: torch.Tensor | None = None,
        weight: torch.Tensor | None = None,
        **kw,
    ) -> QuantLinear:
        """Round-to-nearest quantization of ``linear`` (or of ``weight``, e.g. AWQ's clipped one).

        With ``in_scale`` the layer computes ``(x / in_scale) @ Q(W * in_scale)^T``.
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        w = (linear.weight if weight is None else weight).detach().float()
        _check_finite(w, "the layer's weight")
        layer = cls(
            linear.in_features,
            linear.out_features,
            bits=bits,
            group_size=group_size,
            symmetric=symmetric,
            mode=mode,
            bias=linear.bias is not None,
            has_in_scale=in_scale is not None,
            **kw,
        ).to(w.device)
        if in_scale is not None:
            s = round_scale(in_scale.detach().float().to(w.device))
            layer.in_scale.copy_(s.to(SCALE_DTYPE))
            if weight is None:
                w = w * s
        if linear.bias is not None:
            layer.bias.copy_(linear.bias.detach().float())
        g = layer.group_size
        wg = w.view(layer.out_features, -1, g)
        scale, zero = grid_params(wg, bits=layer.bits, symmetric=layer.symmetric, fp16_scale=True)
        codes = encode(wg, scale, zero, bits=layer.bits, symmetric=layer.symmetric).view_as(w)
        layer.set_codes(codes, scale.squeeze(-1), zero.squeeze(-1))
        return layer

    def set_codes(self, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> None:
        """Store codes (out, in) in [0, 2^bits), scales and zero-points (out, n_groups)."""
        if codes.shape != (self.out_features, self.in_features):
            raise ValueError(f"codes must be {(self.out_features, self.in_features)}, got {tuple(codes.shape)}")
        self.scale.copy_(scale.reshape(self.scale.shape).to(SCALE_DTYPE))
        if self.mode == "weight":
            self.packed.copy_(pack_bits(codes, self.bits))
            if self.zero is not None:
                self.zero.copy_(zero.reshape(self.zero.shape).to(torch.uint8))
        else:
            self.packed.copy_((codes - 2 ** (self.bits - 1)).to(torch.int8))

    # -- weights ---------------------------------------------------------------------

    def codes(self) -> torch.Tensor:
        """Unpacked codes (out, in), uint8."""
        if self.mode == "weight":
            return unpack_bits(self.packed, self.bits, self.in_features)
        return (self.packed.to(torch.int16) + 2 ** (self.bits - 1)).to(torch.uint8)

    def dequantized_weight(self) -> torch.Tensor:
        r"""The stored weight :math:`(U - Z) \odot S`, fp32 (out, in) (before any ``in_scale``)."""
        if self.mode != "weight":
            return self.packed.float() * self.scale.float()
        u = self.codes().float().view(self.out_features, -1, self.group_size)
        z = 2.0 ** (self.bits - 1) if self.zero is None else self.zero.float().unsqueeze(-1)
        return ((u - z) * self.scale.float().unsqueeze(-1)).view(self.out_features, self.in_features)

    def effective_weight(self) -> torch.Tensor:
        """The weight the layer applies to ``x``: ``y = x @ W_eff^T + b`` (weight-only modes exactly)."""
        w = self.dequantized_weight()
        return w / self.in_scale.float() if self.in_scale is not None else w

    def weight_bytes(self) -> int:
        """Bytes stored: packed codes, fp16 scales, uint8 zero-points, in_scale, bias.

        A head tied to a quantized embedding shares the embedding's codes and counts only its bias.
        """
        parts = [self.bias, self.in_scale] + ([] if self.tied else [self.packed, self.scale, self.zero])
        return sum(t.numel() * t.element_size() for t in parts if t is not None)

    # -- forward ---------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        if self.in_scale is not None:
            x = x / self.in_scale.to(x.dtype)
        if self.mode == "weight":
            return F.linear(
                x, self.dequantized_weight().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype)
            )
        shape = x.shape
        x2 = x.reshape(-1, self.in_features).float()  # (M, K)
        w_scale = self.scale.float().view(1, -1)  # (1, N)
        if self.mode == "llm.int8":
            outliers = (x2.abs() > self.threshold).any(0)  # (K,) feature columns with big values
            self.last_outlier_columns = int(outliers.sum())
            x_reg = x2.masked_fill(outliers, 0.0)  # the regular columns go through int8
            xq, sx = self._quant_x(x_reg)
            y = int8_matmul(xq, self.packed, backend=self.backend) * sx * w_scale
            if self.last_outlier_columns:
                w_out = self.packed[:, outliers].float() * self.scale.float()  # dequantized int8 columns
                y = y + x2[:, outliers] @ w_out.t()
        else:
            xq, sx = self._quant_x(x2)
            y = int8_matmul(xq, self.packed, backend=self.backend) * sx * w_scale
        if self.bias is not None:
            y = y + self.bias
        return y.to(x.dtype).reshape(*shape[:-1], self.out_features)

    def _quant_x(self, x2):
        return quantize_activations(x2, granularity=self.act_granularity)

    def extra_repr(self) -> str:
        g = "channel" if self.group_size == self.in_features else self.group_size
        kind = f"{'sym' if self.symmetric else 'asym'}" if self.mode == "weight" else self.act_granularity
        extra = ", in_scale" if self.in_scale is not None else ""
        return f"{self.in_features} -> {self.out_features}, {self.mode}, int{self.bits}, group {g}, {kind}{extra}"


class QuantEmbedding(nn.Module):
    """An ``nn.Embedding`` with rows stored as packed integer codes (weight-only, RTN).

    Each row (one token's vector) is quantized like a row of a :class:`QuantLinear`: cut into
    groups of ``group_size`` with their own fp16 scale (and uint8 zero-point). A lookup gathers
    the codes of the requested rows and dequantizes only those.
    """

    def __init__(
        self, embedding: nn.Embedding, *, bits: int = 8, group_size: int | None = None, symmetric: bool = False
    ):
        super().__init__()
        if not isinstance(embedding, nn.Embedding):
            raise TypeError(f"embedding must be an nn.Embedding, got {type(embedding).__name__}")
        w = embedding.weight.detach().float()
        _check_finite(w, "the embedding table")
        proxy = nn.Linear(w.shape[1], w.shape[0], bias=False)  # quantize the rows as a Linear's
        proxy.weight = nn.Parameter(w, requires_grad=False)
        t = QuantLinear.from_linear(proxy, bits=bits, group_size=group_size, symmetric=symmetric)
        self.num_embeddings, self.embedding_dim = w.shape
        self.bits, self.group_size, self.symmetric = t.bits, t.group_size, t.symmetric
        self.padding_idx = embedding.padding_idx
        self.register_buffer("packed", t.packed)
        self.register_buffer("scale", t.scale)
        self.register_buffer("zero", t.zero)

    def _dequant(self, packed, scale, zero):  # rows (..., bytes) -> (..., C)
        codes = unpack_bits(packed, self.bits, self.embedding_dim).float()
        g = self.group_size
        z = 2.0 ** (self.bits - 1) if zero is None else zero.float().repeat_interleave(g, -1)
        return (codes - z) * scale.float().repeat_interleave(g, -1)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized table (for code that reads ``.weight``)."""
        return self._dequant(self.packed, self.scale, self.zero)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:  # (...) -> (..., C)
        return self._dequant(self.packed[idx], self.scale[idx], None if self.zero is None else self.zero[idx])

    def weight_bytes(self) -> int:
        """Packed codes, fp16 scales and uint8 zero-points."""
        return sum(t.numel() * t.element_size() for t in (self.packed, self.scale, self.zero) if t is not None)

    def extra_repr(self) -> str:
        g = "row" if self.group_size == self.embedding_dim else self.group_size
        return f"{self.num_embeddings} x {self.embedding_dim}, int{self.bits}, group {g}"


def tied_head(embedding: QuantEmbedding, linear: nn.Linear) -> QuantLinear:
    """An output layer tied to a quantized embedding: it reuses the embedding's codes.

    Its ``weight_bytes()`` counts only its bias: the codes are counted once, by the embedding.
    """
    e = embedding
    head = QuantLinear(
        e.embedding_dim, e.num_embeddings, bits=e.bits, group_size=e.group_size, symmetric=e.symmetric, bias=False
    )
    head.packed, head.scale, head.zero = e.packed, e.scale, e.zero  # the same tensors, not copies
    head.tied = True
    if linear.bias is not None:
        head.bias = linear.bias.detach().float().clone()
    return head


# --------------------------------------------------------------------------- outliers


def smooth_scales(act_absmax: torch.Tensor, weight: torch.Tensor, *, alpha: float = 0.5) -> torch.Tensor:
    r"""SmoothQuant's per-input-channel factors :math:`s_j = \max|X_j|^\alpha / \max|W_j|^{1-\alpha}`.

    Dividing activations by :math:`s` and multiplying weight columns by it leaves
    :math:`XW^\top` unchanged but moves the outliers' difficulty from activations into the
    weights: ``alpha`` = 0 leaves activations alone, 1 makes them flat.
    """
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    a = act_absmax.float().clamp(min=1e-5)
    w = weight.detach().float().abs().amax(0).clamp(min=1e-5)  # (in,)
    return (a.pow(alpha) / w.pow(1 - alpha)).clamp(min=1e-5)


# --------------------------------------------------------------------------- GPTQ


def hessian(x: torch.Tensor) -> torch.Tensor:
    r"""GPTQ's proxy Hessian of the layer loss :math:`\|XW^\top - X\hat W^\top\|^2`: :math:`H = \tfrac{2}{n} X^\top X`."""
    x = x.reshape(-1, x.shape[-1]).double()
    return (2 / x.shape[0]) * (x.t() @ x)


def gptq_quantize(
    weight: torch.Tensor,
    H: torch.Tensor,
    *,
    bits: int = 4,
    group_size: int | None = None,
    symmetric: bool = False,
    damp: float = 0.01,
    block_size: int = 128,
    act_order: bool = False,
):
    r"""GPTQ (Frantar et al. 2023): quantize a weight column by column, fixing later columns.

    Minimises :math:`\|XW^\top - X\hat W^\top\|^2` given :math:`H = \tfrac2n X^\top X`. For
    column :math:`j` in order: quantize it, then spread its error over the columns not yet
    quantized, :math:`W_{:,>j} \mathrel{-}= \frac{w_j - q_j}{[H^{-1}]_{jj}} [H^{-1}]_{j,>j}`
    (Optimal Brain Quantization). Tricks from the paper: :math:`H^{-1}` rows come from the upper
    Cholesky factor of :math:`H^{-1}` (stable, computed once); dampening
    :math:`H + \lambda\,\mathrm{mean}(\mathrm{diag} H) I`; updates applied lazily per block of
    columns; group scales found when the sweep reaches each group (from the updated weights);
    optional ``act_order`` (columns with the largest :math:`H_{jj}` first; groups then fixed
    up front from the original weights). Returns (codes (out, in), scale, zero (out, n_groups)).
    """
    _check_bits(bits)
    if not 0 <= damp < 1:
        raise ValueError(f"damp must be in [0, 1), got {damp!r}")
    W = weight.detach().double().clone()
    rows, cols = W.shape
    _check_finite(W, "the weight")
    if H.shape != (cols, cols):
        raise ValueError(f"H must be ({cols}, {cols}) for a weight with {cols} input features, got {tuple(H.shape)}")
    g = cols if group_size in (None, -1) else group_size
    if not isinstance(g, int) or g < 1 or cols % g:
        raise ValueError(f"group_size must be None or an int >= 1 dividing in_features = {cols}, got {group_size!r}")
    H = H.detach().double().clone()
    dead = torch.diag(H) == 0  # inputs that are always zero: their weights do not matter
    H[dead, dead] = 1
    W[:, dead] = 0
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(cols)
    ng = cols // g
    scale = torch.zeros(rows, ng, dtype=torch.float64)
    zero = torch.zeros(rows, ng, dtype=torch.float64)
    if act_order or g == cols:  # groups fixed from the original weights
        s, z = grid_params(W.view(rows, ng, g), bits=bits, symmetric=symmetric, fp16_scale=True)
        scale, zero = s.squeeze(-1), z.squeeze(-1)
    W, H = W[:, perm], H[perm][:, perm]
    H += damp * torch.mean(torch.diag(H)) * torch.eye(cols, dtype=torch.float64)
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)  # rows of H^-1
    block = g * max(1, block_size // g) if g < cols else block_size  # a group never spans two blocks
    codes = torch.zeros(rows, cols, dtype=torch.float64)
    lo, hi = code_range(bits, symmetric)
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        W1, Err1, U1 = W[:, i1:i2].clone(), torch.zeros(rows, i2 - i1, dtype=torch.float64), U[i1:i2, i1:i2]
        for i in range(i2 - i1):
            j = i1 + i  # position in the (permuted) sweep
            grp = int(perm[j]) // g
            if not act_order and g < cols and j % g == 0:  # first column of a group: its grid
                s, z = grid_params(W1[:, i : i + g], bits=bits, symmetric=symmetric, fp16_scale=True)
                scale[:, grp], zero[:, grp] = s.squeeze(-1), z.squeeze(-1)
            s, z = scale[:, grp], zero[:, grp]
            w = W1[:, i]
            u = torch.clamp(torch.round(w * (1.0 / s) + z), lo, hi)
            q = (u - z) * s
            codes[:, j] = u
            err = (w - q) / U1[i, i]
            W1[:, i:] -= err.unsqueeze(1) * U1[i, i:].unsqueeze(0)  # compensate inside the block
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]  # lazy update of every later column
    out = torch.empty_like(codes)
    out[:, perm] = codes
    return out.to(torch.uint8), scale.float(), zero.float()


# --------------------------------------------------------------------------- AWQ


def awq_search(
    weight: torch.Tensor,
    x: torch.Tensor,
    *,
    bits: int = 4,
    group_size: int | None = None,
    symmetric: bool = False,
    n_grid: int = 20,
    clip: bool = True,
    max_shrink: float = 0.5,
    act_mean: torch.Tensor | None = None,
):
    r"""AWQ (Lin et al. 2024): protect the weights that meet large activations, by scaling.

    Salient input channels are those with large mean :math:`|x_j|`. Scaling column :math:`j` of
    :math:`W` by :math:`s_j > 1` (and the input by :math:`1/s_j`) shrinks its relative rounding
    error. Search :math:`s = \bar{|x|}^{\alpha}` (normalised) over :math:`\alpha \in \{0, 1/n, ..\}`
    for the smallest output error :math:`\|XW^\top - (X/s)\,Q(W\operatorname{diag}s)^\top\|^2` on
    calibration activations ``x`` (n, in); :math:`\alpha = 0` is plain RTN, so AWQ never does worse
    on them. Then (``clip``) shrink each group's range by the factor in :math:`1, 0.95, ..,`
    ``1 - max_shrink`` that minimises that group's output error. Returns
    (in_scale (in,), the clipped, scaled weight (out, in), best alpha).
    """
    _check_bits(bits)
    W = weight.detach().float()
    _check_finite(W, "the weight")
    rows, cols = W.shape
    x = x.reshape(-1, cols).float()
    if x.shape[0] == 0:
        raise ValueError("x (calibration activations) must not be empty")
    g = cols if group_size in (None, -1) else group_size
    if not isinstance(g, int) or g < 1 or cols % g:
        raise ValueError(f"group_size must be None or an int >= 1 dividing in_features = {cols}, got {group_size!r}")
    mean = (x.abs().mean(0) if act_mean is None else act_mean.float()).clamp(min=1e-4)

    def fq(w):  # RTN with fp16 scales, as QuantLinear stores it
        wg = w.view(rows, -1, g)
        s, z = grid_params(wg, bits=bits, symmetric=symmetric, fp16_scale=True)
        return ((encode(wg, s, z, bits=bits, symmetric=symmetric) - z) * s).view(rows, cols)

    ref = x @ W.t()
    best = (math.inf, None, None)
    for i in range(n_grid):
        alpha = i / n_grid
        s = mean.pow(alpha)
        s = round_scale(s / (s.max() * s.min()).sqrt())
        err = (ref - (x / s) @ fq(W * s).t()).pow(2).mean().item()
        if err < best[0]:
            best = (err, s, alpha)
    _, s, alpha = best
    Ws = W * s
    if clip:
        xs = (x / s).view(x.shape[0], -1, g)  # (n, ng, g)
        wg = Ws.view(rows, -1, g)  # (out, ng, g)
        ref_g = torch.einsum("ngk,ogk->ong", xs, wg)  # (out, n, ng): each group's share of each output
        amax = wg.abs().amax(-1, keepdim=True)
        best_err = torch.full((rows, wg.shape[1], 1), math.inf)
        best_max = amax.clone()
        for i in range(int(max_shrink * n_grid)):
            m = amax * (1 - i / n_grid)
            cur = torch.maximum(torch.minimum(wg, m), -m)
            sc, z = grid_params(cur, bits=bits, symmetric=symmetric, fp16_scale=True)
            q = (encode(cur, sc, z, bits=bits, symmetric=symmetric) - z) * sc
            err = (torch.einsum("ngk,ogk->ong", xs, q) - ref_g).pow(2).mean(1).unsqueeze(-1)  # (out, ng, 1)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_max = torch.where(better, m, best_max)
        Ws = torch.maximum(torch.minimum(wg, best_max), -best_max).view(rows, cols)
    return s, Ws, alpha


# --------------------------------------------------------------------------- running calibration


class _Stop(Exception):
    """Raised by a hook to end a calibration forward pass early."""


def _calib_items(calib) -> list:
    if calib is None:
        raise ValueError("calib must be given: token ids (B, T), or a non-empty list of model inputs")
    if torch.is_tensor(calib):
        if calib.numel() == 0:
            raise ValueError("calib must not be empty")
        if calib.dim() != 2:
            raise ValueError(f"calib token ids must be (batch, seq_len), got shape {tuple(calib.shape)}")
        return list(calib.split(8))
    if isinstance(calib, (list, tuple)):
        if not calib:
            raise ValueError("calib must not be empty")
        return list(calib)
    raise TypeError(f"calib must be a tensor of token ids or a list of inputs, got {type(calib).__name__}")


@torch.no_grad()
def run_calibration(model: nn.Module, calib) -> None:
    """Feed every calibration input through ``model`` (a hook may stop a pass early)."""
    device = next(model.parameters()).device
    for item in _calib_items(calib):
        try:
            if isinstance(item, dict):
                model(**{k: v.to(device) for k, v in item.items()})
            else:
                model(item.to(device))
        except _Stop:
            pass


@torch.no_grad()
def capture_inputs(model: nn.Module, names: list[str], calib, *, max_rows: int | None = None, seed: int = 0):
    """Inputs seen by the named submodules on the calibration set: {name: (n, in_features)}.

    With ``max_rows`` a seeded random subset of that many rows is kept per module; the mean
    |x| per channel is always over all rows (returned as ``{name + ".mean": ...}``).
    """
    store: dict[str, list] = {n: [] for n in names}
    sums = {n: None for n in names}
    counts = dict.fromkeys(names, 0)
    hooks = []

    def make(name):
        def hook(mod, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            store[name].append(x)
            sums[name] = x.abs().sum(0) if sums[name] is None else sums[name] + x.abs().sum(0)
            counts[name] += x.shape[0]

        return hook

    for n in names:
        hooks.append(model.get_submodule(n).register_forward_pre_hook(make(n)))
    try:
        run_calibration(model, calib)
    finally:
        for h in hooks:
            h.remove()
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for n in names:
        x = torch.cat(store[n])
        if max_rows is not None and x.shape[0] > max_rows:
            x = x[torch.randperm(x.shape[0], generator=gen)[:max_rows].sort().values]
        out[n] = x
        out[n + ".mean"] = sums[n] / counts[n]
    return out


@torch.no_grad()
def activation_stats(model: nn.Module, names: list[str], calib) -> dict[str, dict]:
    """Per-input-channel statistics of what each named module reads on the calibration set.

    ``{name: {"absmax": (in,), "mean_abs": (in,), "tokens": n}}``: the max and mean of
    :math:`|x_j|` over all tokens. Outlier features show up as a few channels whose absmax
    dwarfs the rest; SmoothQuant's scales use the absmax.
    """
    stats = {n: {"absmax": None, "sum": None, "tokens": 0} for n in names}

    def make(name):
        def hook(mod, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float().abs()
            st = stats[name]
            st["absmax"] = x.amax(0) if st["absmax"] is None else torch.maximum(st["absmax"], x.amax(0))
            st["sum"] = x.sum(0) if st["sum"] is None else st["sum"] + x.sum(0)
            st["tokens"] += x.shape[0]

        return hook

    hooks = [model.get_submodule(n).register_forward_pre_hook(make(n)) for n in names]
    try:
        run_calibration(model, calib)
    finally:
        for h in hooks:
            h.remove()
    return {
        n: {"absmax": st["absmax"], "mean_abs": st["sum"] / max(st["tokens"], 1), "tokens": st["tokens"]}
        for n, st in stats.items()
        if st["tokens"]
    }


@torch.no_grad()
def sequential_groups(model: nn.Module, names: list[str], calib) -> list[list[str]]:
    """Layers in the order a forward pass reaches them, grouped when they share one input.

    q/k/v read the same normalised hidden state, gate/up too: GPTQ quantizes each such group
    from one pass, then the next group sees the already-quantized layers' outputs.
    """
    seen: list[tuple[str, int]] = []
    hooks = [
        model.get_submodule(n).register_forward_pre_hook(lambda m, a, n=n: seen.append((n, id(a[0])))) for n in names
    ]
    try:
        run_calibration(model, _calib_items(calib)[:1])
    finally:
        for h in hooks:
            h.remove()
    groups: list[list[str]] = []
    last, done = None, set()
    for n, key in seen:
        if n in done:
            continue
        done.add(n)
        if groups and key == last:
            groups[-1].append(n)
        else:
            groups.append([n])
        last = key
    groups += [[n] for n in names if n not in done]  # never called: still quantized (RTN-like H)
    return groups


@torch.no_grad()
def collect_hessians(model: nn.Module, group: list[str], calib) -> dict[str, torch.Tensor]:
    r""":math:`H = \tfrac2n X^\top X` of each layer in ``group`` (they share one input).

    Each calibration pass stops right after the group's last layer has read its input, so the
    cost is the forward pass up to that point, not the whole model.
    """
    sums: dict[str, torch.Tensor] = {}
    counts = dict.fromkeys(group, 0)

    def make(name, last):
        def hook(mod, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            sums[name] = x.t() @ x if name not in sums else sums[name] + x.t() @ x
            counts[name] += x.shape[0]
            if last:
                raise _Stop

        return hook

    hooks = [
        model.get_submodule(n).register_forward_pre_hook(make(n, i == len(group) - 1)) for i, n in enumerate(group)
    ]
    try:
        run_calibration(model, calib)
    finally:
        for h in hooks:
            h.remove()
    return {n: (2 / counts[n]) * sums[n] for n in sums}


# --------------------------------------------------------------------------- quantize_model


@dataclass
class QuantReport:
    """What :func:`quantize_model` did: settings, bytes before and after, per-layer errors."""

    method: str
    bits: int
    group_size: int | None
    symmetric: bool
    bytes_before: int
    bytes_after: int
    seconds: float
    layers: list[dict] = field(default_factory=list)
    settings: dict = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """How many times smaller the weights got (all of the model's weights, scales included)."""
        return self.bytes_before / self.bytes_after

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__} | {"ratio": self.ratio}

    def table(self):
        from course_lib.viz import Table

        return Table(
            [{k: (round(v, 5) if isinstance(v, float) else v) for k, v in row.items()} for row in self.layers],
            caption=f"{self.method}, {self.bits} bits, group {self.group_size or 'channel'}: "
            f"{self.bytes_before / 1e6:.2f} MB -> {self.bytes_after / 1e6:.2f} MB (x{self.ratio:.2f}), {self.seconds:.1f} s",
        )

    def __repr__(self) -> str:
        return (
            f"QuantReport({self.method}, {self.bits} bits, group {self.group_size or 'channel'}, "
            f"{len(self.layers)} layers, {self.bytes_before:,} -> {self.bytes_after:,} bytes, x{self.ratio:.2f})"
        )


def _default_where(name: str, m: nn.Module) -> bool:
    return not name.endswith("lm_head")


def _rel_out_err(W: torch.Tensor, W_hat: torch.Tensor, H: torch.Tensor) -> float:
    r""":math:`\mathrm{tr}(\Delta H \Delta^\top) / \mathrm{tr}(W H W^\top)`: relative layer-output error from H."""
    D = (W - W_hat).double()
    W = W.double()
    return float(((D @ H) * D).sum() / ((W @ H) * W).sum().clamp(min=1e-30))


def quantize_model(
    model: nn.Module,
    method: str = "rtn",
    bits: int = 4,
    group_size: int | None = 128,
    calib=None,
    *,
    symmetric: bool | None = None,
    where: Callable | None = None,
    embed_bits: int | None = None,
    embed_group_size: int | None = None,
    damp: float = 0.01,
    act_order: bool = False,
    n_grid: int = 20,
    clip: bool = True,
    awq_rows: int = 512,
    smooth_alpha: float | None = None,
    act_granularity: str = "token",
    threshold: float = 6.0,
    backend: str = "int_mm",
) -> tuple[nn.Module, QuantReport]:
    """A quantized copy of ``model`` (the original is untouched) and a :class:`QuantReport`.

    ``method``: ``"rtn"`` (round to nearest), ``"gptq"``, ``"awq"`` (weight-only, ``bits`` in
    2/3/4/8, ``group_size`` None = per channel), ``"w8a8"`` (int8 weights and activations;
    ``smooth_alpha`` adds SmoothQuant, ``act_granularity`` "token" or "tensor") or
    ``"llm.int8"`` (W8A8 with float outlier columns above ``threshold``). ``calib``: token ids
    (B, T) for a TinyLM, or a list of inputs (tensors or keyword dicts) for any model; GPTQ,
    AWQ and SmoothQuant need it. ``where(name, linear)`` picks the Linear layers (default: all
    but ``lm_head``); ``embed_bits`` also quantizes every ``nn.Embedding`` (RTN), and a head tied
    to it shares its codes. Every setting is checked before any work starts.
    """
    t0 = time.perf_counter()
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method in ("w8a8", "llm.int8"):
        if bits != 8:
            raise ValueError(f"method {method!r} uses 8-bit weights and activations: bits must be 8, got {bits!r}")
        group_size = None
    _check_bits(bits)
    if embed_bits is not None:
        _check_bits(embed_bits, name="embed_bits")
    symmetric = (method in ("w8a8", "llm.int8")) if symmetric is None else bool(symmetric)
    needs_calib = method in ("gptq", "awq") or (method == "w8a8" and smooth_alpha is not None)
    items = _calib_items(calib) if needs_calib else None
    where = where or _default_where
    chosen = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and where(n, m)]
    if not chosen:
        raise ValueError("no nn.Linear layer matched `where`; nothing to quantize")
    for n, m in chosen:
        g = m.in_features if group_size in (None, -1) else group_size
        if not isinstance(g, int) or isinstance(g, bool) or g < 1 or m.in_features % g:
            raise ValueError(
                f"group_size must be None (per channel) or an int >= 1 dividing every layer's in_features; "
                f"{n} has in_features = {m.in_features}, got group_size = {group_size!r}"
            )
        _check_finite(m.weight, f"layer {n!r}'s weight")
    embeds = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Embedding)] if embed_bits else []
    for n, m in embeds:
        eg = embed_group_size
        if eg is not None and (not isinstance(eg, int) or eg < 1 or m.embedding_dim % eg):
            raise ValueError(f"embed_group_size must divide {n}'s embedding_dim = {m.embedding_dim}, got {eg!r}")
        _check_finite(m.weight, f"embedding {n!r}")

    from course_lib.measure import weight_bytes

    before = weight_bytes(model)
    q = copy.deepcopy(model).eval()
    names = [n for n, _ in chosen]
    kw = dict(bits=bits, group_size=group_size, symmetric=symmetric)
    layers: list[dict] = []

    def put(name, new):
        parent, _, child = name.rpartition(".")
        setattr(q.get_submodule(parent) if parent else q, child, new)

    def row(name, lin, new, out_err=None):
        w = lin.weight.detach().float()
        r = {
            "layer": name,
            "shape": f"{lin.out_features}x{lin.in_features}",
            "weight_rel_err": error_stats(w, new.effective_weight())["rel"],
        }
        if out_err is not None:
            r["output_rel_err"] = out_err
        layers.append(r)

    with torch.no_grad():
        if method == "rtn":
            for n in names:
                lin = q.get_submodule(n)
                new = QuantLinear.from_linear(lin, **kw)
                row(n, lin, new)
                put(n, new)
        elif method == "gptq":
            for group in sequential_groups(q, names, items):
                Hs = collect_hessians(q, group, items)
                for n in group:
                    lin = q.get_submodule(n)
                    cols = lin.in_features
                    H = Hs.get(n, torch.eye(cols, dtype=torch.float64))  # a layer never called: plain RTN
                    codes, scale, zero = gptq_quantize(lin.weight, H, damp=damp, act_order=act_order, **kw)
                    new = QuantLinear(cols, lin.out_features, bias=lin.bias is not None, **kw).to(lin.weight.device)
                    new.set_codes(codes, scale, zero)
                    if lin.bias is not None:
                        new.bias.copy_(lin.bias.detach().float())
                    row(n, lin, new, _rel_out_err(lin.weight, new.effective_weight(), H))
                    put(n, new)
        elif method == "awq":
            acts = capture_inputs(q, names, items, max_rows=awq_rows)
            for n in names:
                lin = q.get_submodule(n)
                x = acts[n]
                s, Ws, alpha = awq_search(
                    lin.weight, x, n_grid=n_grid, clip=clip and not _is_qk(n), act_mean=acts[n + ".mean"], **kw
                )
                new = QuantLinear.from_linear(lin, in_scale=s, weight=Ws, **kw)
                H = hessian(x)
                r = _rel_out_err(lin.weight, new.effective_weight(), H)
                row(n, lin, new, r)
                layers[-1]["alpha"] = alpha
                put(n, new)
        else:  # w8a8 / llm.int8
            stats = activation_stats(q, names, items) if items is not None else {}
            for n in names:
                lin = q.get_submodule(n)
                extra = dict(mode=method, act_granularity=act_granularity, threshold=threshold, backend=backend)
                s = smooth_scales(stats[n]["absmax"], lin.weight, alpha=smooth_alpha) if stats else None
                new = QuantLinear.from_linear(lin, bits=8, in_scale=s, **extra)
                row(n, lin, new)
                put(n, new)
        for n, m in embeds:
            new = QuantEmbedding(m, bits=embed_bits, group_size=embed_group_size, symmetric=False)
            tied = [
                hn
                for hn, hm in q.named_modules()
                if isinstance(hm, nn.Linear) and hm.weight is q.get_submodule(n).weight
            ]
            put(n, new)
            for hn in tied:
                put(hn, tied_head(new, q.get_submodule(hn)))
    after = weight_bytes(q)
    settings = dict(
        embed_bits=embed_bits,
        damp=damp,
        act_order=act_order,
        n_grid=n_grid,
        clip=clip,
        smooth_alpha=smooth_alpha,
        act_granularity=act_granularity,
        threshold=threshold,
        backend=backend,
    )
    return q, QuantReport(
        method, bits, group_size, symmetric, before, after, time.perf_counter() - t0, layers, settings
    )


def _is_qk(name: str) -> bool:
    """Query/key projections: AWQ's reference skips clipping them (errors pass through q·k)."""
    last = name.rsplit(".", 1)[-1]
    return last in ("q_proj", "k_proj", "query", "key")


# --------------------------------------------------------------------------- quantization-aware training


def ste_fake_quant(w: torch.Tensor, *, bits: int, group_size: int | None, symmetric: bool = False) -> torch.Tensor:
    r"""Fake-quantize ``w`` (out, in) in the forward pass, identity in the backward pass.

    :math:`\tilde w = w + \mathrm{sg}(Q(w) - w)`: the value is :math:`Q(w)` (what the deployed
    model computes with) while the gradient flows to :math:`w` as if rounding were the identity
    — the straight-through estimator (Bengio et al. 2013).
    """
    g = w.shape[1] if group_size in (None, -1) else group_size
    with torch.no_grad():
        wg = w.detach().float().view(w.shape[0], -1, g)
        s, z = grid_params(wg, bits=bits, symmetric=symmetric, fp16_scale=True)
        wq = ((encode(wg, s, z, bits=bits, symmetric=symmetric) - z) * s).view_as(w).to(w.dtype)
    return w + (wq - w).detach()


class FakeQuantLinear(nn.Module):
    """A Linear that trains in float but computes with its quantized weights (QAT)."""

    def __init__(self, linear: nn.Linear, *, bits: int, group_size: int | None, symmetric: bool = False):
        super().__init__()
        _check_bits(bits)
        g = linear.in_features if group_size in (None, -1) else group_size
        if not isinstance(g, int) or g < 1 or linear.in_features % g:
            raise ValueError(f"group_size must divide in_features = {linear.in_features}, got {group_size!r}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.bits, self.group_size, self.symmetric = bits, group_size, symmetric
        self.weight = nn.Parameter(linear.weight.detach().clone())
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone())

    def forward(self, x):
        w = ste_fake_quant(self.weight, bits=self.bits, group_size=self.group_size, symmetric=self.symmetric)
        return F.linear(x, w, self.bias)

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}, fake int{self.bits}, group {self.group_size or 'channel'}"


def prepare_qat(
    model: nn.Module, *, bits: int, group_size: int | None, symmetric: bool = False, where: Callable | None = None
) -> nn.Module:
    """A copy of ``model`` whose chosen Linear layers fake-quantize their weights (train it)."""
    from course_lib.model import replace_linears

    q = copy.deepcopy(model)
    replace_linears(
        q,
        lambda n, m: FakeQuantLinear(m, bits=bits, group_size=group_size, symmetric=symmetric),
        where=where or _default_where,
    )
    return q


@torch.no_grad()
def convert_qat(model: nn.Module) -> nn.Module:
    """Replace every :class:`FakeQuantLinear` by the :class:`QuantLinear` it was simulating."""
    q = copy.deepcopy(model).eval()
    for name, m in list(q.named_modules()):
        if isinstance(m, FakeQuantLinear):
            lin = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
            lin.weight.copy_(m.weight)
            if m.bias is not None:
                lin.bias.copy_(m.bias)
            new = QuantLinear.from_linear(lin, bits=m.bits, group_size=m.group_size, symmetric=m.symmetric)
            parent, _, child = name.rpartition(".")
            setattr(q.get_submodule(parent) if parent else q, child, new)
    return q


# --------------------------------------------------------------------------- the chapter's measurements

#: Evaluation protocol of the patient: validation windows of 256 tokens, batches of 8.
EVAL = dict(seq_len=256, batch_size=8)
#: Quick evaluation (first 4 batches = 8,192 tokens) the notebook repeats live; the grid also has 16.
QUICK_BATCHES, FULL_BATCHES = 4, 16
PATIENT_GRID = dict(methods=("rtn", "gptq", "awq"), bits=(2, 3, 4, 8), groups=(32, 64, None))
#: MiniLM's grid skips group 32 so that its build stays under ten minutes on two cores.
MINILM_GRID = dict(methods=("rtn", "gptq", "awq"), bits=(2, 3, 4, 8), groups=(64, None))
#: Articles of the test split whose extracts are embedded by each quantized MiniLM (both sides).
N_BOTH, EXTRACT_TOKENS = 100, 128


def patient_calibration(n_seqs: int = 8, seq_len: int = 256, *, seed: int = 0) -> torch.Tensor:
    """Calibration token windows (n_seqs, seq_len), drawn with a seeded generator from the train split."""
    from course_lib import data

    gen = torch.Generator().manual_seed(seed)
    x, _ = data.random_batch(data.encode_split("train"), n_seqs, seq_len, gen)
    return x


@torch.no_grad()
def patient_ppls(model: nn.Module, batches: tuple[int, ...] = (QUICK_BATCHES, FULL_BATCHES)) -> list[float]:
    """Validation perplexities after the first ``b`` batches, for each ``b``, in one pass.

    The arithmetic is :func:`course_lib.train.evaluate`'s (mean of per-batch losses), so each
    value equals ``exp(evaluate(model, val, max_batches=b))``.
    """
    from course_lib import data

    model.eval()
    device = next(model.parameters()).device
    wanted, out, total = sorted(batches), {}, 0.0
    for n, (x, y) in enumerate(data.eval_batches(data.encode_split("val"), max_batches=wanted[-1], **EVAL), start=1):
        total += model.loss(x.to(device), y.to(device)).item()
        if n in wanted:
            out[n] = math.exp(total / n)
    return [out[b] for b in batches]


def patient_ppl(model: nn.Module, *, batches: int = QUICK_BATCHES) -> float:
    """Validation perplexity on the first ``batches`` x 8 windows of 256 tokens."""
    return patient_ppls(model, (batches,))[0]


def minilm_calibration(n_texts: int = 32, length: int = 64) -> list[dict]:
    """MiniLM calibration inputs: train-split extracts cut to ``length`` tokens, no padding.

    Only extracts with at least ``length`` tokens are used, so every batch is full-length and
    no padding token pollutes the statistics.
    """
    from course_lib import data, encoder

    tok = encoder.load_tokenizer()
    rows = []
    for a in data.articles("train"):
        ids = tok(a.extract, truncation=True, max_length=length)["input_ids"]
        if len(ids) == length:
            rows.append(ids)
        if len(rows) == n_texts:
            break
    ids = torch.tensor(rows)
    return [
        {"input_ids": b, "attention_mask": torch.ones_like(b), "token_type_ids": torch.zeros_like(b)}
        for b in ids.split(16)
    ]


def retrieval_set():
    """The test split's articles and their row numbers in ``data.load_articles()``."""
    from course_lib import data

    index = {a.title: i for i, a in enumerate(data.load_articles())}
    arts = data.articles("test")
    return arts, torch.tensor([index[a.title] for a in arts])


def recall_at_k(queries: torch.Tensor, docs: torch.Tensor, targets: torch.Tensor, k: int = 5) -> float:
    """Share of queries whose own document is among the ``k`` most cosine-similar ``docs``."""
    top = (queries @ docs.t()).topk(k, dim=1).indices  # (Q, k)
    return (top == targets[:, None]).any(1).float().mean().item()


@torch.no_grad()
def minilm_eval(model: nn.Module, reference: dict | None = None, *, both: bool = True) -> dict:
    """Quality of a (quantized) MiniLM on the corpus' description -> extract retrieval task.

    * ``cosine``: mean cosine similarity of its description embeddings to fp32 MiniLM's;
    * ``recall5_query``: descriptions embedded by this model retrieve among all 10,033 extracts
      embedded by fp32 MiniLM (the cached index: quantize the query encoder, keep the index);
    * ``recall5_both``: the first ``N_BOTH`` test articles, extracts (first 128 tokens) also embedded by
      this model. ``reference`` (from ``minilm_eval(fp32_model)``) supplies the fp32 embeddings.
    """
    from course_lib import encoder

    arts, rows = retrieval_set()
    q = encoder.embed([a.description or a.title for a in arts], model=model)
    out = {"queries": q, "recall5_query": recall_at_k(q, encoder.corpus_embeddings("extract"), rows)}
    if reference is not None:
        out["cosine"] = (q * reference["queries"]).sum(1).mean().item()
    if both:
        e = encoder.embed([a.extract for a in arts[:N_BOTH]], model=model, max_length=EXTRACT_TOKENS)
        out["recall5_both"] = recall_at_k(q[:N_BOTH], e, torch.arange(N_BOTH))
    return out


def qat_finetune(
    model: nn.Module,
    *,
    bits: int,
    group_size: int | None,
    steps: int = 100,
    lr: float = 1e-4,
    batch_size: int = 8,
    seq_len: int = 128,
    seed: int = 0,
    fake_quant: bool = True,
):
    """Fine-tune a copy of a TinyLM with fake-quantized weights (or, ``fake_quant=False``, in fp32
    as the control) and return (the model, converted to :class:`QuantLinear` when fake-quantized,
    its training history)."""
    from course_lib import data
    from course_lib.train import TrainConfig, train

    torch.manual_seed(seed)
    m = prepare_qat(model, bits=bits, group_size=group_size) if fake_quant else copy.deepcopy(model)
    cfg = TrainConfig(
        steps=steps,
        batch_size=batch_size,
        seq_len=seq_len,
        lr=lr,
        warmup_steps=max(1, steps // 10),
        eval_every=0,
        eval_batches=1,
        seed=seed,
    )
    hist = train(m, data.encode_split("train"), None, cfg, progress=False)
    return (convert_qat(m) if fake_quant else m.eval()), hist


# --------------------------------------------------------------------------- the precomputed grid


def _point(method, bits, group, **kw) -> dict:
    return {"method": method, "bits": bits, "group": "channel" if group is None else group, **kw}


W8A8_VARIANTS = {
    "W8A8 per-token": ("w8a8", dict(act_granularity="token")),
    "W8A8 per-tensor": ("w8a8", dict(act_granularity="tensor")),
    "W8A8 per-tensor + SmoothQuant": ("w8a8", dict(act_granularity="tensor", smooth_alpha=0.5)),
    "LLM.int8()": ("llm.int8", dict()),
}
#: The QAT recipe of the grid: a gentle fine-tune from the zoo checkpoint.
QAT = dict(steps=100, lr=1e-4, batch_size=8, seq_len=128)


def patient_latency(base: nn.Module, *, log=print) -> dict:
    """Prefill (64 tokens) and decode (16 tokens) time of RTN-quantized copies relative to fp32.

    Measured interleaved with the fp32 model on this machine; one entry per "bits/group".
    Timings are the only part of the grid that depends on the machine that built it.
    """
    from course_lib import measure

    lat = {}
    for bits in PATIENT_GRID["bits"]:
        for group in PATIENT_GRID["groups"]:
            qm, _ = quantize_model(base, "rtn", bits, group, embed_bits=8)
            variants = {"fp32": base, "q": qm}
            pre = measure.interleaved({k: measure.prefill_fn(m, prompt_len=64) for k, m in variants.items()}, repeats=7)
            dec = measure.interleaved(
                {k: measure.decode_fn(m, prompt_len=64, new_tokens=16) for k, m in variants.items()}, repeats=5
            )
            key = f"{bits}/{'channel' if group is None else group}"
            lat[key] = {
                "prefill_ratio": pre["q"].median / pre["fp32"].median,
                "decode_ratio": dec["q"].median / dec["fp32"].median,
                "prefill_ms": pre["q"].median * 1e3,
                "decode_ms_per_token": dec["q"].median / 16 * 1e3,
            }
            log(key, lat[key])
    return lat


def patient_qat(base: nn.Module, *, log=print) -> list[dict]:
    """QAT at 2 and 3 bits (group 64) against RTN, with a control: the same fine-tuning in fp32,
    then RTN — so 'more training' and 'training through the quantizer' are told apart."""
    ctrl, _ = qat_finetune(base, bits=8, group_size=None, fake_quant=False, **QAT)
    rows = []
    for bits in (2, 3):
        rtn, _ = quantize_model(base, "rtn", bits, 64)
        tuned, hist = qat_finetune(base, bits=bits, group_size=64, **QAT)
        ctrl_q, _ = quantize_model(ctrl, "rtn", bits, 64)
        row = {
            "bits": bits,
            "group": 64,
            **QAT,
            "tokens": QAT["steps"] * QAT["batch_size"] * QAT["seq_len"],
            "rtn_ppl": patient_ppls(rtn, (FULL_BATCHES,))[0],
            "qat_ppl": patient_ppls(tuned, (FULL_BATCHES,))[0],
            "fp32_finetuned_ppl": patient_ppls(ctrl, (FULL_BATCHES,))[0],
            "fp32_finetuned_then_rtn_ppl": patient_ppls(ctrl_q, (FULL_BATCHES,))[0],
            "train_seconds": round(hist.seconds, 1),
        }
        log(row)
        rows.append(row)
    return rows


def build_patient(name: str = "small", *, log=print) -> dict:
    """The patient's part of the grid: every method x bits x group, W8A8 variants, latency, QAT."""
    from course_lib import measure, zoo

    torch.manual_seed(0)
    base = zoo.load(name).model.eval()
    calib = patient_calibration()
    ppl, ppl_quick = patient_ppls(base, (FULL_BATCHES, QUICK_BATCHES))
    out = {
        "name": name,
        "params": base.num_params(),
        "fp32": {"bytes": measure.weight_bytes(base), "ppl": ppl, "ppl_quick": ppl_quick},
    }
    log(f"patient {name} fp32: {out['fp32']}")
    points = []
    for method in PATIENT_GRID["methods"]:
        for bits in PATIENT_GRID["bits"]:
            for group in PATIENT_GRID["groups"]:
                qm, rep = quantize_model(base, method, bits, group, calib, embed_bits=8)
                ppl, ppl_quick = patient_ppls(qm, (FULL_BATCHES, QUICK_BATCHES))
                pt = _point(
                    method,
                    bits,
                    group,
                    bytes=rep.bytes_after,
                    ratio=rep.ratio,
                    ppl=ppl,
                    ppl_quick=ppl_quick,
                    seconds=round(rep.seconds, 2),
                )
                log(pt)
                points.append(pt)
    out["points"] = points
    lat = patient_latency(base, log=log)
    out["latency"] = lat
    out["w8a8"] = []
    for label, (method, kw) in W8A8_VARIANTS.items():
        qm, rep = quantize_model(base, method, 8, None, calib, backend="emulated", **kw)
        out["w8a8"].append({"variant": label, "ppl": patient_ppls(qm, (FULL_BATCHES,))[0], "bytes": rep.bytes_after})
        log(out["w8a8"][-1])
    out["qat"] = patient_qat(base, log=log)
    return out


def build_minilm(*, log=print) -> dict:
    """MiniLM's part of the grid: every method x bits x group, and the W8A8 variants."""
    from course_lib import encoder, measure

    torch.manual_seed(0)
    bert = encoder.load_model()
    calib = minilm_calibration()
    ref = minilm_eval(bert)
    fp = {k: v for k, v in ref.items() if k != "queries"} | {"bytes": measure.weight_bytes(bert), "cosine": 1.0}
    out = {"fp32": fp, "n_queries": len(retrieval_set()[0]), "n_both": N_BOTH, "extract_tokens": EXTRACT_TOKENS}
    log(f"MiniLM fp32: {fp}")
    points = []
    for method in MINILM_GRID["methods"]:
        for bits in MINILM_GRID["bits"]:
            for group in MINILM_GRID["groups"]:
                qm, rep = quantize_model(bert, method, bits, group, calib, embed_bits=8)
                ev = minilm_eval(qm, ref)
                pt = _point(
                    method,
                    bits,
                    group,
                    bytes=rep.bytes_after,
                    ratio=rep.ratio,
                    cosine=ev["cosine"],
                    recall5_query=ev["recall5_query"],
                    recall5_both=ev["recall5_both"],
                    seconds=round(rep.seconds, 2),
                )
                log(pt)
                points.append(pt)
    out["points"] = points
    out["w8a8"] = []
    for label, (method, kw) in W8A8_VARIANTS.items():
        qm, rep = quantize_model(bert, method, 8, None, calib, backend="emulated", **kw)
        ev = minilm_eval(qm, ref)
        out["w8a8"].append(
            {"variant": label, "bytes": rep.bytes_after}
            | {k: ev[k] for k in ("cosine", "recall5_query", "recall5_both")}
        )
        log(out["w8a8"][-1])
    return out


BUILD_PARTS = ("patient", "minilm", "latency", "qat")


def build_grid(parts=("patient", "minilm"), *, log=print) -> dict:
    """Compute (parts of) the chapter's trade-off grid, deterministically, and merge into the file.

    Each part is merged into whatever the file holds when the part is done, so the two parts can
    be built by two processes at once.
    """
    for part in parts:
        if part not in BUILD_PARTS:
            raise ValueError(f"parts must be among {BUILD_PARTS}, got {part!r}")
    for part in parts:
        t0 = time.perf_counter()
        if part in ("latency", "qat"):  # redo one piece of the patient part (which must exist)
            from course_lib import zoo

            base = zoo.load(load_grid()["patient"]["name"]).model.eval()
            result = patient_latency(base, log=log) if part == "latency" else patient_qat(base, log=log)
        else:
            result = build_patient(log=log) if part == "patient" else build_minilm(log=log)
        grid = json.loads(GRID_PATH.read_text()) if GRID_PATH.is_file() else {}
        if part in ("latency", "qat"):
            grid["patient"][part] = result
        else:
            grid[part] = result
        grid["command"] = "python -m course_lib.quant build"
        grid["eval"] = {
            "seq_len": EVAL["seq_len"],
            "batch_size": EVAL["batch_size"],
            "quick_batches": QUICK_BATCHES,
            "full_batches": FULL_BATCHES,
        }
        grid.setdefault("built_with", {})[part] = {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "seconds": round(time.perf_counter() - t0),
        }
        atomic_write_bytes(GRID_PATH, (json.dumps(grid, indent=1) + "\n").encode())
    return grid


def load_grid() -> dict:
    """The precomputed grid (see :func:`build_grid`); raises with the build command when missing."""
    if not GRID_PATH.is_file():
        raise FileNotFoundError(
            f"no quantization grid at {GRID_PATH}; build it with:  python -m course_lib.quant build"
        )
    return json.loads(GRID_PATH.read_text())


def grid_point(grid: dict, model: str, method: str, bits: int, group) -> dict:
    """The grid entry of one configuration (``group`` an int or ``"channel"``/None)."""
    g = "channel" if group in (None, -1, "channel") else group
    for p in grid[model]["points"]:
        if p["method"] == method and p["bits"] == bits and p["group"] == g:
            return p
    raise ValueError(f"no grid point for {model}: {method}, {bits} bits, group {group!r}")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] != ["build"] or any(a not in BUILD_PARTS for a in argv[1:]):
        print("usage: python -m course_lib.quant build [patient] [minilm] [latency] [qat]", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    build_grid(tuple(argv[1:]) or ("patient", "minilm"))
    print(f"wrote {GRID_PATH} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
