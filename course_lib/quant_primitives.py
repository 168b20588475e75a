r"""Quantization primitives (chapter 05): number formats and the one integer quantization path.

:mod:`course_lib.quant` builds the chapter's layers and methods on what is here (and
re-exports it, so ``quant.quantize`` is this module's :func:`quantize`), the way torchao's
``quantization/quant_primitives.py`` sits under its quantizers:

* **Number formats** — fp32, bf16, fp16, simulated fp8 (e4m3), int8, int4, nf4: bit layouts,
  every representable value (:func:`format_grid`), and rounding to a format
  (:func:`round_minifloat`, :func:`round_to_format`).
* **One integer path, for weights and activations alike.** A *granularity* — per tensor, per
  channel (a weight's output row), per token (an activation's row) or per group of
  ``group_size`` consecutive columns — is one block shape (:func:`block_size`); a tensor is
  viewed as (rows, groups, group) by :func:`as_blocks`, and then it is always
  **choose params → quantize → dequantize**: :func:`grid_params` (scale and zero-point per
  group), :func:`encode` (the codes), :func:`decode` (the one dequantize formula).
  :func:`quantize` runs them on a tensor and returns a :class:`QTensor`;
  :func:`quantize_activations` is the same path for W8A8's inputs. A value :math:`x` becomes
  the code :math:`u = \mathrm{clamp}(\lfloor x/s + z\rceil, u_{\min}, 2^b-1)` and comes back
  as :math:`\hat x = (u - z)\,s`; inside the clipping range :math:`|x - \hat x| \le s/2`.
  Symmetric grids fix :math:`z = 2^{b-1}`, so codes are always unsigned and :math:`u - z` is
  the signed integer an int8 kernel multiplies.
* **Packing** — :func:`pack_int4` (two codes per byte) and :func:`pack_bits` (any width, so
  3-bit weights really take 3 bits); :func:`int8_matmul` (int8 x int8 -> int32).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from course_lib.checks import check_choice, check_int, check_tensor

WEIGHT_BITS = (2, 3, 4, 8)
#: One vocabulary for weights and activations: "channel" and "token" are both one scale per row.
GRANULARITIES = ("tensor", "channel", "token", "group")
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
    return FORMATS[check_choice("format", name, sorted(FORMATS))]


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
    tensor, or over consecutive blocks of ``block_size`` values (QLoRA uses 64). The integer
    formats go through :func:`fake_quantize` (symmetric, one scale per block).
    """
    f = _format(name)
    check_tensor("x", x, floating=True)
    x = x.float()
    if f.kind == "float":
        if name == "fp32":
            return x.clone()
        return round_minifloat(x, exponent_bits=f.exponent_bits, mantissa_bits=f.mantissa_bits, max_value=f.max_value)
    flat = x.reshape(-1)
    n = flat.numel()
    b = n if block_size is None else check_int("block_size", block_size)
    if b < 1 or n % b:
        raise ValueError(f"block_size must be an int >= 1 dividing x.numel() = {n}, got {block_size!r}")
    blocks = flat.view(-1, b)
    if f.kind == "int":
        return fake_quantize(blocks, bits=f.bits, symmetric=True, granularity="channel").view_as(x)
    absmax = blocks.abs().amax(1, keepdim=True).clamp(min=1e-12)
    levels = nf4_levels().to(x.device)
    idx = (blocks / absmax).unsqueeze(-1).sub(levels).abs().argmin(-1)  # nearest level
    return (levels[idx] * absmax).view_as(x)


# --------------------------------------------------------------------------- one quantization path


def check_bits(bits, allowed=WEIGHT_BITS, name="bits") -> int:
    """``bits`` if it is one of ``allowed`` (an int, not a bool), else a ValueError."""
    return check_choice(name, check_int(name, bits), allowed)


def check_group_size(group_size, n: int, what: str = "in_features", name: str = "group_size") -> int:
    """The group size of a row of ``n`` values: ``n`` for None or -1 (one group per row)."""
    g = n if group_size is None or group_size == -1 else check_int(name, group_size)
    if g < 1 or n % g:
        raise ValueError(
            f"{name} must be None (one group per row) or an int >= 1 dividing {what} = {n}, got {group_size!r}"
        )
    return g


def block_size(shape, granularity: str, group_size: int | None = None) -> tuple[int, ...]:
    """The block of a tensor that shares one scale (torchao's ``block_size``), from a granularity.

    For a (rows, cols) weight or a (..., features) activation: ``"tensor"`` -> the whole shape;
    ``"channel"`` (a weight's output row) and ``"token"`` (an activation's row) -> ``(1, ..., cols)``;
    ``"group"`` -> ``(1, ..., group_size)``, consecutive columns of one row.
    """
    shape = tuple(shape)
    check_choice("granularity", granularity, GRANULARITIES)
    if granularity == "tensor":
        return shape
    if len(shape) < 2:
        raise ValueError(f"granularity {granularity!r} needs rows of features (>= 2 dims), got shape {shape}")
    cols = shape[-1]
    if granularity == "group" and group_size in (None, -1):
        raise ValueError(f"granularity 'group' needs a group_size >= 1 dividing the {cols} columns, got {group_size!r}")
    g = cols if granularity != "group" else check_group_size(group_size, cols, "the number of columns")
    return (1,) * (len(shape) - 1) + (g,)


def as_blocks(x: torch.Tensor, block: tuple[int, ...]) -> torch.Tensor:
    """View ``x`` as (rows, n_groups, group): one scale per (row, group) block of shape ``block``.

    Blocks are either the whole tensor or runs of consecutive values along the last dim.
    """
    block = tuple(block)
    if block == tuple(x.shape):
        return x.reshape(1, 1, -1)
    if len(block) != x.dim() or any(b != 1 for b in block[:-1]) or x.shape[-1] % block[-1]:
        raise ValueError(
            f"block_size must be x's shape {tuple(x.shape)} (one block) or (1, ..., 1, g) with g dividing "
            f"{x.shape[-1]}, got {block}"
        )
    return x.reshape(-1, x.shape[-1] // block[-1], block[-1])


def round_scale(scale: torch.Tensor) -> torch.Tensor:
    """Round scales to their fp16 storage (inside fp16's normal range), returned as fp32."""
    return scale.clamp(_FP16_TINY, _FP16_MAX).to(SCALE_DTYPE).float()


def grid_params(xg: torch.Tensor, *, bits: int, symmetric: bool, fp16_scale: bool = False):
    r"""Choose the params: scale and zero-point of each group; ``xg`` is (..., g), the last dim one group.

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


def encode(x: torch.Tensor, scale: torch.Tensor, zero, *, bits: int, symmetric: bool) -> torch.Tensor:
    r"""Quantize: codes :math:`u = \mathrm{clamp}(\mathrm{round}(x \cdot s^{-1} + z))` (same rounding as torch.ao)."""
    lo, hi = code_range(bits, symmetric)
    return torch.clamp(torch.round(x * (1.0 / scale) + zero), lo, hi)


def decode(codes: torch.Tensor, scale, zero) -> torch.Tensor:
    r"""Dequantize: :math:`\hat x = (u - z)\,s` — the one place this formula is written.

    ``zero`` may be a tensor or a number (``0`` for an int8 tensor that already holds
    :math:`u - z`); codes, scales and zero-points broadcast.
    """
    return (codes - zero) * scale


def grid_zero(zero: torch.Tensor | None, bits: int):
    """Stored zero-points as a float column, or a symmetric grid's fixed :math:`2^{b-1}` (not stored)."""
    return 2.0 ** (bits - 1) if zero is None else zero.float().unsqueeze(-1)


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
        return decode(self.codes, self.scale, self.zero).reshape(self.shape)

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
    """Round-to-nearest quantization of ``x`` per tensor, per channel/token (row) or per group.

    ``granularity="group"`` cuts each row into groups of ``group_size`` consecutive columns
    (:func:`block_size`). ``fp16_scale`` rounds the scales to fp16 first (how the layers store
    them). Choose params (:func:`grid_params`), then quantize (:func:`encode`); the
    :class:`QTensor` dequantizes (:func:`decode`).
    """
    check_tensor("x", x, floating=True)
    check_choice("granularity", granularity, GRANULARITIES)
    check_bits(bits, (2, 3, 4, 5, 6, 7, 8))
    if x.numel() == 0:
        raise ValueError("x must not be empty")
    check_tensor("x", x, finite=True)
    xg = as_blocks(x.float(), block_size(x.shape, granularity, group_size))
    scale, zero = grid_params(xg, bits=bits, symmetric=symmetric, fp16_scale=fp16_scale)
    codes = encode(xg, scale, zero, bits=bits, symmetric=symmetric)
    return QTensor(codes, scale, zero, bits, symmetric, tuple(x.shape))


def dequantize(qt: QTensor) -> torch.Tensor:
    r""":math:`\hat x = (u - z)\,s`, in the original shape."""
    return qt.dequantize()


def fake_quantize(x: torch.Tensor, **kw) -> torch.Tensor:
    """``dequantize(quantize(x, **kw))``: the values a quantized model really computes with."""
    return quantize(x, **kw).dequantize().to(x.dtype)


def quantize_activations(x: torch.Tensor, *, granularity: str = "token"):
    r"""Dynamic symmetric int8 of activations x (M, K), one scale per row (token) or per tensor.

    The weights' granularity (:func:`block_size`) and scales (:func:`grid_params`, 8 bits,
    symmetric: :math:`s = \max|x| / 127`); the codes are the signed :math:`u - z =
    \mathrm{round}(x/s)` an int8 kernel reads, and :func:`decode` with zero 0 maps them back.
    The one difference from :func:`encode` is the rounding: :math:`x/s` rounded before the
    zero-point, as every stored W8A8 result was computed — :func:`encode`'s
    :math:`x \cdot s^{-1} + z` moves about 5 in a million of the chapter's activation codes,
    enough to change the notebook's W8A8 errors in their fourth digit.
    Returns (int8 (M, K), fp32 scale (M, 1)). Only cheap checks: it runs in every W8A8 forward.
    """
    check_choice("act_granularity", granularity, ("token", "tensor"))
    check_tensor("x", x, dims=("tokens", "features"), floating=True)
    xg = as_blocks(x, block_size(x.shape, granularity))  # (M, 1, K) per token, (1, 1, M*K) per tensor
    scale, _ = grid_params(xg, bits=8, symmetric=True)
    q = torch.clamp(torch.round(xg / scale), -127, 127).to(torch.int8).view(x.shape)
    return q, scale.view(-1, 1).expand(x.shape[0], 1)


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
    check_bits(bits, (1, 2, 3, 4, 5, 6, 7, 8))
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
    check_bits(bits, (1, 2, 3, 4, 5, 6, 7, 8))
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
    check_choice("backend", backend, ("int_mm", "emulated"))
    check_tensor("a", a, rank=2, dtype=torch.int8)
    check_tensor("b_t", b_t, rank=2, dtype=torch.int8)
    if a.shape[1] != b_t.shape[1]:
        raise ValueError(f"a (M, K) and b_t (N, K) must share K, got shapes {tuple(a.shape)} and {tuple(b_t.shape)}")
    if backend == "emulated":
        return a.float() @ b_t.float().t()
    m, k = a.shape
    n = b_t.shape[0]
    if a.is_cuda:  # cuBLAS int8 GEMM shape rules
        pm, pk, pn = max(17, m), -(-k // 8) * 8, -(-n // 8) * 8
        a = F.pad(a, (0, pk - k, 0, pm - m))
        b_t = F.pad(b_t, (0, pk - k, 0, pn - n))
        return torch._int_mm(a, b_t.t())[:m, :n].float()
    return torch._int_mm(a, b_t.t()).float()
