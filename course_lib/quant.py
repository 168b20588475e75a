r"""Quantization (chapter 05): fewer bits per weight, measured honestly.

Built on :mod:`course_lib.quant_primitives` — number formats and the one integer path
(granularity as a block shape, then choose params → quantize → dequantize: :func:`grid_params`,
:func:`encode`, :func:`decode`), packing and the int8 matmul — whose names this module
re-exports (``quant.quantize``, ``quant.FORMATS``, ...). What is here, in the order the chapter
builds it:

* **One small class per scheme**, each a drop-in for ``nn.Linear`` built by ``from_linear``
  (choose params, quantize, store): :class:`QuantLinear` (weight-only, 2/3/4/8 bits, group
  scales), :class:`W8A8Linear` (int8 weights and activations through ``torch._int_mm``) and
  :class:`LLMInt8Linear` (LLM.int8()'s outlier decomposition, Dettmers et al. 2022).
  ``weight_bytes()`` counts packed codes, scales, zero-points and biases, nothing else.
  :class:`QuantEmbedding` does the same for embedding tables.
* **Outliers** — SmoothQuant (Xiao et al. 2023, :func:`smooth_scales`).
* **GPTQ** (Frantar et al. 2023, :func:`gptq_quantize`) and **AWQ** (Lin et al. 2024,
  :func:`awq_search`), written from the papers, with the calibration passes they need
  (:func:`capture_inputs`, :func:`activation_stats`, :func:`collect_hessians`).
* :func:`quantize_model` — any ``nn.Module`` (the patient, MiniLM's BERT) -> a quantized copy
  and a :class:`QuantReport`, swapping layers with :func:`course_lib.model.replace_linears`.
* **QAT** — fake quantization with a straight-through estimator (:func:`prepare_qat`,
  :func:`convert_qat`).

The chapter's expensive runs (the method x bits x group-size grid on the patient and on
MiniLM, W8A8 variants, latency, QAT), the evaluation helpers the notebook uses and the
stored grid's reader are in :mod:`course_lib.experiments.quant`::

    python -m course_lib.build quant    # -> course_lib/zoo_data/quant_grid.json
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.checks import check_bool, check_choice, check_float, check_int, check_tensor, check_type
from course_lib.measure import weight_bytes
from course_lib.model import replace_linears
from course_lib.quant_primitives import (  # noqa: F401 (re-exported: the chapter calls them quant.<name>)
    FORMATS,
    GRANULARITIES,
    SCALE_DTYPE,
    WEIGHT_BITS,
    NumberFormat,
    QTensor,
    as_blocks,
    check_bits,
    check_group_size,
    code_range,
    decode,
    decode_minifloat,
    dequantize,
    encode,
    error_stats,
    fake_quantize,
    format_grid,
    grid_params,
    grid_zero,
    int8_matmul,
    nf4_levels,
    pack_bits,
    pack_int4,
    quantize,
    quantize_activations,
    round_minifloat,
    round_scale,
    round_to_format,
    unpack_bits,
    unpack_int4,
)
from course_lib.viz import Table

METHODS = ("rtn", "gptq", "awq", "w8a8", "llm.int8")

# --------------------------------------------------------------------------- one class per scheme


class QuantLinear(nn.Module):
    r"""Weight-only quantization: a drop-in for ``nn.Linear`` that stores integer weights.

    :math:`W \approx (U - Z) \odot S` with codes :math:`U` packed ``bits`` (2/3/4/8) to a
    byte-stream, one fp16 scale (and a uint8 zero-point when asymmetric) per group of
    ``group_size`` input columns. ``forward`` dequantizes and multiplies in floating point: it
    saves memory, and time only where a fused kernel reads the packed codes directly.

    ``in_scale`` (AWQ, SmoothQuant): a per-input-channel factor :math:`s`; the stored weights
    quantize :math:`W \operatorname{diag}(s)` and ``forward`` divides :math:`x` by :math:`s`.
    :class:`W8A8Linear` and :class:`LLMInt8Linear` are the other schemes; each is built by
    ``from_linear`` the same way (choose params, quantize, store).
    """

    scheme = "weight-only"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bits: int = 4,
        group_size: int | None = None,
        symmetric: bool = False,
        bias: bool = True,
        has_in_scale: bool = False,
    ):
        super().__init__()
        self.in_features = check_int("in_features", in_features, min=1)
        self.out_features = check_int("out_features", out_features, min=1)
        self.bits = check_bits(bits)
        self.group_size = check_group_size(group_size, in_features)
        self.symmetric = bool(symmetric)
        self.tied = False  # True when the codes are an embedding's (counted there)
        ng = in_features // self.group_size
        self.register_buffer("packed", self._empty_codes())
        self.register_buffer("scale", torch.ones(out_features, ng, dtype=SCALE_DTYPE))
        self.register_buffer("zero", None if self.symmetric else torch.zeros(out_features, ng, dtype=torch.uint8))
        self.register_buffer("in_scale", torch.ones(in_features, dtype=SCALE_DTYPE) if has_in_scale else None)
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    def _empty_codes(self) -> torch.Tensor:  # ceil(in * bits / 8) bytes per row: codes packed densely
        return torch.zeros(self.out_features, -(-self.in_features * self.bits // 8), dtype=torch.uint8)

    # -- construction -----------------------------------------------------------------

    @classmethod
    def from_linear(
        cls, linear: nn.Module, *, in_scale: torch.Tensor | None = None, weight: torch.Tensor | None = None, **kw
    ) -> QuantLinear:
        """Round-to-nearest quantization of ``linear`` (or of ``weight``, e.g. AWQ's clipped one).

        ``kw`` are the scheme's settings (``bits``, ``group_size``, ``symmetric`` here). With
        ``in_scale`` the layer computes ``(x / in_scale) @ Q(W * in_scale)^T``.
        """
        check_type("linear", linear, (nn.Linear, FakeQuantLinear), what="an nn.Linear")
        w = (linear.weight if weight is None else weight).detach().float()
        check_tensor("the layer's weight", w, finite=True)
        layer = cls(
            linear.in_features,
            linear.out_features,
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
        qt = quantize(
            w,
            bits=layer.bits,
            symmetric=layer.symmetric,
            granularity="group",
            group_size=layer.group_size,
            fp16_scale=True,
        )
        layer.set_codes(qt.codes.view_as(w), qt.scale.squeeze(-1), qt.zero.squeeze(-1))
        return layer

    def set_codes(self, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> None:
        """Store codes (out, in) in [0, 2^bits), scales and zero-points (out, n_groups)."""
        if codes.shape != (self.out_features, self.in_features):
            raise ValueError(f"codes must be {(self.out_features, self.in_features)}, got {tuple(codes.shape)}")
        self.scale.copy_(scale.reshape(self.scale.shape).to(SCALE_DTYPE))
        self.packed.copy_(self._store(codes))
        if self.zero is not None:
            self.zero.copy_(zero.reshape(self.zero.shape).to(torch.uint8))

    def _store(self, codes: torch.Tensor) -> torch.Tensor:
        return pack_bits(codes, self.bits)

    # -- weights ---------------------------------------------------------------------

    def codes(self) -> torch.Tensor:
        """Unpacked codes (out, in), uint8."""
        return unpack_bits(self.packed, self.bits, self.in_features)

    def dequantized_weight(self) -> torch.Tensor:
        r"""The stored weight :math:`(U - Z) \odot S`, fp32 (out, in) (before any ``in_scale``)."""
        u = self.codes().float().view(self.out_features, -1, self.group_size)
        w = decode(u, self.scale.float().unsqueeze(-1), grid_zero(self.zero, self.bits))
        return w.view(self.out_features, self.in_features)

    def effective_weight(self) -> torch.Tensor:
        """The weight the layer applies to ``x``: ``y = x @ W_eff^T + b`` (weight-only exactly)."""
        w = self.dequantized_weight()
        return w / self.in_scale.float() if self.in_scale is not None else w

    def weight_bytes(self) -> int:
        """Bytes stored: packed codes, fp16 scales, uint8 zero-points, in_scale, bias.

        A head tied to a quantized embedding shares the embedding's codes and counts only its bias.
        """
        parts = [self.bias, self.in_scale] + ([] if self.tied else [self.packed, self.scale, self.zero])
        return sum(t.numel() * t.element_size() for t in parts if t is not None)

    # -- forward ---------------------------------------------------------------------

    def _scale_input(self, x: torch.Tensor) -> torch.Tensor:
        return x / self.in_scale.to(x.dtype) if self.in_scale is not None else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        x = self._scale_input(x)
        return F.linear(x, self.dequantized_weight().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def _describe(self) -> str:
        return "sym" if self.symmetric else "asym"

    def extra_repr(self) -> str:
        g = "channel" if self.group_size == self.in_features else self.group_size
        extra = ", in_scale" if self.in_scale is not None else ""
        return f"{self.in_features} -> {self.out_features}, {self.scheme}, int{self.bits}, group {g}, {self._describe()}{extra}"


class W8A8Linear(QuantLinear):
    r"""int8 weights (symmetric, per output channel) **and** int8 activations (dynamic).

    :math:`y = (X_q W_q^\top)\,s_x s_w^\top + b`: the activations are quantized on every call
    by :func:`quantize_activations` (per token or per tensor, the weights' path), the integer
    product runs through ``torch._int_mm`` (``backend="int_mm"``) or exactly in fp32
    (``"emulated"``). The weight is stored as the signed int8 :math:`U - 128` the kernel reads.
    """

    scheme = "w8a8"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        act_granularity: str = "token",
        backend: str = "int_mm",
        bias: bool = True,
        has_in_scale: bool = False,
    ):
        check_choice("act_granularity", act_granularity, ("token", "tensor"))
        check_choice("backend", backend, ("int_mm", "emulated"))
        super().__init__(
            in_features, out_features, bits=8, group_size=None, symmetric=True, bias=bias, has_in_scale=has_in_scale
        )
        self.act_granularity, self.backend = act_granularity, backend

    def _empty_codes(self) -> torch.Tensor:
        return torch.zeros(self.out_features, self.in_features, dtype=torch.int8)

    def _store(self, codes: torch.Tensor) -> torch.Tensor:
        return (codes - 2 ** (self.bits - 1)).to(torch.int8)

    def codes(self) -> torch.Tensor:
        return (self.packed.to(torch.int16) + 2 ** (self.bits - 1)).to(torch.uint8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        x = self._scale_input(x)
        shape = x.shape
        y = self._matmul(x.reshape(-1, self.in_features).float())  # (M, K) -> (M, N)
        if self.bias is not None:
            y = y + self.bias
        return y.to(x.dtype).reshape(*shape[:-1], self.out_features)

    def _matmul(self, x2: torch.Tensor) -> torch.Tensor:
        xq, sx = quantize_activations(x2, granularity=self.act_granularity)
        return int8_matmul(xq, self.packed, backend=self.backend) * sx * self.scale.float().view(1, -1)

    def _describe(self) -> str:
        return self.act_granularity


class LLMInt8Linear(W8A8Linear):
    """W8A8, except input features whose activations exceed ``threshold`` in any token.

    Those columns are multiplied in floating point with the dequantized int8 weight columns
    (LLM.int8(), Dettmers et al. 2022); ``last_outlier_columns`` says how many the last call kept.
    """

    scheme = "llm.int8"

    def __init__(self, in_features: int, out_features: int, *, threshold: float = 6.0, **kw):
        check_float("threshold", threshold, min=0, min_inclusive=False)
        super().__init__(in_features, out_features, **kw)
        self.threshold = float(threshold)
        self.last_outlier_columns = 0

    def _matmul(self, x2: torch.Tensor) -> torch.Tensor:
        outliers = (x2.abs() > self.threshold).any(0)  # (K,) feature columns with big values
        self.last_outlier_columns = int(outliers.sum())
        y = super()._matmul(x2.masked_fill(outliers, 0.0))  # the regular columns go through int8
        if self.last_outlier_columns:
            w_out = decode(self.packed[:, outliers].float(), self.scale.float(), 0)  # packed holds U - Z
            y = y + x2[:, outliers] @ w_out.t()
        return y


#: The activation-quantizing schemes of :func:`quantize_model`, by method name.
SCHEMES = {"w8a8": W8A8Linear, "llm.int8": LLMInt8Linear}


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
        check_type("embedding", embedding, nn.Embedding)
        w = embedding.weight.detach().float()
        check_tensor("the embedding table", w, finite=True)
        # The rows are quantized as a Linear's. (The proxy's throwaway initialisation draws from
        # the global RNG, as it always has: seeded runs after this call stay reproducible.)
        proxy = nn.Linear(w.shape[1], w.shape[0], bias=False)
        proxy.weight = nn.Parameter(w, requires_grad=False)
        t = QuantLinear.from_linear(proxy, bits=bits, group_size=group_size, symmetric=symmetric)
        self.num_embeddings, self.embedding_dim = w.shape
        self.bits, self.group_size, self.symmetric = t.bits, t.group_size, t.symmetric
        self.padding_idx = embedding.padding_idx
        self.register_buffer("packed", t.packed)
        self.register_buffer("scale", t.scale)
        self.register_buffer("zero", t.zero)

    def _dequant(self, packed, scale, zero):  # rows (..., bytes) -> (..., C)
        u = unpack_bits(packed, self.bits, self.embedding_dim).float()
        u = u.view(*u.shape[:-1], -1, self.group_size)  # (..., n_groups, group)
        return decode(u, scale.float().unsqueeze(-1), grid_zero(zero, self.bits)).flatten(-2)

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
    e = check_type("embedding", embedding, QuantEmbedding)
    check_type("linear", linear, nn.Linear)
    if (linear.out_features, linear.in_features) != (e.num_embeddings, e.embedding_dim):
        raise ValueError(
            f"linear must be ({e.embedding_dim} -> {e.num_embeddings}) to tie to the embedding, "
            f"got ({linear.in_features} -> {linear.out_features})"
        )
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
    check_float("alpha", alpha, min=0, max=1)
    check_tensor("act_absmax", act_absmax, rank=1, floating=True)
    a = act_absmax.float().clamp(min=1e-5)
    w = weight.detach().float().abs().amax(0).clamp(min=1e-5)  # (in,)
    return (a.pow(alpha) / w.pow(1 - alpha)).clamp(min=1e-5)


# --------------------------------------------------------------------------- GPTQ


def hessian(x: torch.Tensor) -> torch.Tensor:
    r"""GPTQ's proxy Hessian of the layer loss :math:`\|XW^\top - X\hat W^\top\|^2`: :math:`H = \tfrac{2}{n} X^\top X`."""
    check_tensor("x", x, rank=(2, 3), floating=True, finite=True)
    if x.numel() == 0:
        raise ValueError(f"x must hold at least one row of activations, got shape {tuple(x.shape)}")
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
    check_bits(bits)
    check_float("damp", damp, min=0, max=1, max_inclusive=False)
    W = check_tensor("the weight", weight.detach(), rank=2, finite=True).double().clone()
    rows, cols = W.shape
    check_tensor("H", H, floating=True, finite=True)
    if H.shape != (cols, cols):
        raise ValueError(f"H must be ({cols}, {cols}) for a weight with {cols} input features, got {tuple(H.shape)}")
    g = check_group_size(group_size, cols)
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
            u = encode(w, s, z, bits=bits, symmetric=symmetric)
            q = decode(u, s, z)
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
    check_bits(bits)
    W = check_tensor("the weight", weight.detach(), rank=2, finite=True).float()
    rows, cols = W.shape
    check_tensor("x", x, floating=True, finite=True)
    if x.dim() < 1 or x.shape[-1] != cols:
        raise ValueError(f"x must have in_features = {cols} as its last dimension, got shape {tuple(x.shape)}")
    x = x.detach().reshape(-1, cols).float()
    if x.shape[0] == 0:
        raise ValueError("x (calibration activations) must not be empty")
    n_grid = check_int("n_grid", n_grid, min=1)
    max_shrink = check_float("max_shrink", max_shrink, min=0, max=1, max_inclusive=False)
    check_bool("symmetric", symmetric)
    check_bool("clip", clip)
    if act_mean is not None:
        check_tensor("act_mean", act_mean, shape=(cols,), floating=True, finite=True)
    g = check_group_size(group_size, cols)
    mean = (x.abs().mean(0) if act_mean is None else act_mean.float()).clamp(min=1e-4)

    def fq(w):  # RTN with fp16 scales, as QuantLinear stores it
        return fake_quantize(w, bits=bits, symmetric=symmetric, granularity="group", group_size=g, fp16_scale=True)

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
            q = decode(encode(cur, sc, z, bits=bits, symmetric=symmetric), sc, z)
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


def _watch_inputs(model: nn.Module, names: list[str], calib, on_input: Callable) -> None:
    """Run the calibration set, calling ``on_input(name, x)`` with what each named module reads."""
    hooks = [model.get_submodule(n).register_forward_pre_hook(lambda m, a, n=n: on_input(n, a[0])) for n in names]
    try:
        run_calibration(model, calib)
    finally:
        for h in hooks:
            h.remove()


def _rows(x: torch.Tensor) -> torch.Tensor:  # (..., features) -> (tokens, features)
    return x.detach().reshape(-1, x.shape[-1])


@torch.no_grad()
def capture_inputs(model: nn.Module, names: list[str], calib, *, max_rows: int | None = None, seed: int = 0):
    """Inputs seen by the named submodules on the calibration set: {name: (n, in_features)}.

    With ``max_rows`` a seeded random subset of that many rows is kept per module; the mean
    |x| per channel is always over all rows (returned as ``{name + ".mean": ...}``).
    """
    check_type("model", model, nn.Module)
    check_int("max_rows", max_rows, min=1, allow_none=True)
    store: dict[str, list] = {n: [] for n in names}
    sums = {n: None for n in names}
    counts = dict.fromkeys(names, 0)

    def on_input(name, x):
        x = _rows(x).float()
        store[name].append(x)
        sums[name] = x.abs().sum(0) if sums[name] is None else sums[name] + x.abs().sum(0)
        counts[name] += x.shape[0]

    _watch_inputs(model, names, calib, on_input)
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

    def on_input(name, x):
        x, st = _rows(x).float().abs(), stats[name]
        st["absmax"] = x.amax(0) if st["absmax"] is None else torch.maximum(st["absmax"], x.amax(0))
        st["sum"] = x.sum(0) if st["sum"] is None else st["sum"] + x.sum(0)
        st["tokens"] += x.shape[0]

    _watch_inputs(model, names, calib, on_input)
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
    _watch_inputs(model, names, _calib_items(calib)[:1], lambda n, x: seen.append((n, id(x))))
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

    def on_input(name, x):
        x = _rows(x).double()
        sums[name] = x.t() @ x if name not in sums else sums[name] + x.t() @ x
        counts[name] += x.shape[0]
        if name == group[-1]:
            raise _Stop

    _watch_inputs(model, group, calib, on_input)
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

    def table(self) -> Table:
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


def _is_qk(name: str) -> bool:
    """Query/key projections: AWQ's reference skips clipping them (errors pass through q·k)."""
    last = name.rsplit(".", 1)[-1]
    return last in ("q_proj", "k_proj", "query", "key")


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

    ``method``: ``"rtn"`` (round to nearest), ``"gptq"``, ``"awq"`` (weight-only
    :class:`QuantLinear`, ``bits`` in 2/3/4/8, ``group_size`` None = per channel), ``"w8a8"``
    (:class:`W8A8Linear`; ``smooth_alpha`` adds SmoothQuant, ``act_granularity`` "token" or
    "tensor") or ``"llm.int8"`` (:class:`LLMInt8Linear`, float outlier columns above
    ``threshold``). ``calib``: token ids (B, T) for a TinyLM, or a list of inputs (tensors or
    keyword dicts) for any model; GPTQ, AWQ and SmoothQuant need it. ``where(name, linear)``
    picks the Linear layers (default: all but ``lm_head``), which
    :func:`course_lib.model.replace_linears` swaps; ``embed_bits`` also quantizes every
    ``nn.Embedding`` (RTN), and a head tied to it shares its codes. Every setting is checked
    before any work starts.
    """
    t0 = time.perf_counter()
    check_type("model", model, nn.Module)
    check_choice("method", method, METHODS)
    if method in SCHEMES:
        if bits != 8:
            raise ValueError(f"method {method!r} uses 8-bit weights and activations: bits must be 8, got {bits!r}")
        group_size = None
    check_bits(bits)
    if embed_bits is not None:
        check_bits(embed_bits, name="embed_bits")
    symmetric = (method in SCHEMES) if symmetric is None else bool(symmetric)
    needs_calib = method in ("gptq", "awq") or (method == "w8a8" and smooth_alpha is not None)
    items = _calib_items(calib) if needs_calib else None
    where = where or _default_where
    chosen = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and where(n, m)]
    if not chosen:
        raise ValueError("no nn.Linear layer matched `where`; nothing to quantize")
    for n, m in chosen:
        g = m.in_features if group_size is None or group_size == -1 else check_int("group_size", group_size)
        if g < 1 or m.in_features % g:
            raise ValueError(
                f"group_size must be None (per channel) or an int >= 1 dividing every layer's in_features; "
                f"{n} has in_features = {m.in_features}, got group_size = {group_size!r}"
            )
        check_tensor(f"layer {n!r}'s weight", m.weight.detach(), finite=True)
    embeds = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Embedding)] if embed_bits else []
    for n, m in embeds:
        if embed_group_size is not None:
            check_group_size(embed_group_size, m.embedding_dim, f"{n}'s embedding_dim", name="embed_group_size")
        check_tensor(f"embedding {n!r}", m.weight.detach(), finite=True)
    scheme = dict(act_granularity=check_choice("act_granularity", act_granularity, ("token", "tensor")))
    scheme["backend"] = check_choice("backend", backend, ("int_mm", "emulated"))
    if method == "llm.int8":
        scheme["threshold"] = check_float("threshold", threshold, min=0, min_inclusive=False)

    before = weight_bytes(model)
    q = copy.deepcopy(model).eval()
    names = [n for n, _ in chosen]
    kw = dict(bits=bits, group_size=group_size, symmetric=symmetric)
    rows: dict[str, dict] = {}

    def report(name, lin, new, H=None, **extra):  # one row of the report; returns the new layer
        w_hat = new.effective_weight()
        r = {"layer": name, "shape": f"{lin.out_features}x{lin.in_features}"}
        r["weight_rel_err"] = error_stats(lin.weight.detach().float(), w_hat)["rel"]
        if H is not None:
            r["output_rel_err"] = _rel_out_err(lin.weight, w_hat, H)
        rows[name] = r | extra
        return new

    with torch.no_grad():
        if method == "gptq":  # group by group: later groups see the earlier ones quantized
            groups = sequential_groups(q, names, items)
            names = [n for group in groups for n in group]
            for group in groups:
                Hs = collect_hessians(q, group, items)

                def make(n, lin, Hs=Hs):
                    H = Hs.get(n, torch.eye(lin.in_features, dtype=torch.float64))  # never called: plain RTN
                    codes, scale, zero = gptq_quantize(lin.weight, H, damp=damp, act_order=act_order, **kw)
                    new = QuantLinear(lin.in_features, lin.out_features, bias=lin.bias is not None, **kw)
                    new = new.to(lin.weight.device)
                    new.set_codes(codes, scale, zero)
                    if lin.bias is not None:
                        new.bias.copy_(lin.bias.detach().float())
                    return report(n, lin, new, H)

                replace_linears(q, make, where=lambda n, m, group=group: n in group)
        else:
            if method == "rtn":

                def make(n, lin):
                    return report(n, lin, QuantLinear.from_linear(lin, **kw))

            elif method == "awq":
                acts = capture_inputs(q, names, items, max_rows=awq_rows)

                def make(n, lin):
                    x = acts[n]
                    s, Ws, alpha = awq_search(
                        lin.weight, x, n_grid=n_grid, clip=clip and not _is_qk(n), act_mean=acts[n + ".mean"], **kw
                    )
                    return report(
                        n, lin, QuantLinear.from_linear(lin, in_scale=s, weight=Ws, **kw), hessian(x), alpha=alpha
                    )

            else:  # w8a8 / llm.int8, SmoothQuant's scales when there is calibration data
                stats = activation_stats(q, names, items) if items is not None else {}

                def make(n, lin):
                    s = smooth_scales(stats[n]["absmax"], lin.weight, alpha=smooth_alpha) if stats else None
                    return report(n, lin, SCHEMES[method].from_linear(lin, in_scale=s, **scheme))

            replace_linears(q, make, where=lambda n, m, chosen=set(names): n in chosen)
        for n, m in embeds:
            new = QuantEmbedding(m, bits=embed_bits, group_size=embed_group_size, symmetric=False)
            table = q.get_submodule(n).weight
            q.set_submodule(n, new)
            replace_linears(q, lambda hn, head, e=new: tied_head(e, head), where=lambda hn, hm, t=table: hm.weight is t)
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
    layers = [rows[n] for n in names]
    seconds = time.perf_counter() - t0
    return q, QuantReport(method, bits, group_size, symmetric, before, weight_bytes(q), seconds, layers, settings)


# --------------------------------------------------------------------------- quantization-aware training


def ste_fake_quant(w: torch.Tensor, *, bits: int, group_size: int | None, symmetric: bool = False) -> torch.Tensor:
    r"""Fake-quantize ``w`` (out, in) in the forward pass, identity in the backward pass.

    :math:`\tilde w = w + \mathrm{sg}(Q(w) - w)`: the value is :math:`Q(w)` (what the deployed
    model computes with) while the gradient flows to :math:`w` as if rounding were the identity
    — the straight-through estimator (Bengio et al. 2013).
    """
    check_tensor("w", w, dims=("out", "in"), floating=True)
    check_bits(bits)
    g = check_group_size(group_size, w.shape[1])
    with torch.no_grad():
        wq = fake_quantize(
            w.detach().float(), bits=bits, symmetric=symmetric, granularity="group", group_size=g, fp16_scale=True
        ).to(w.dtype)
    return w + (wq - w).detach()


class FakeQuantLinear(nn.Module):
    """A Linear that trains in float but computes with its quantized weights (QAT)."""

    def __init__(self, linear: nn.Linear, *, bits: int, group_size: int | None, symmetric: bool = False):
        super().__init__()
        check_bits(bits)
        check_group_size(group_size, linear.in_features)
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
            q.set_submodule(
                name, QuantLinear.from_linear(m, bits=m.bits, group_size=m.group_size, symmetric=m.symmetric)
            )
    return q
