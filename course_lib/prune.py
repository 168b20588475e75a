r"""Pruning (chapter 06): remove weights, neurons and heads, and see what that buys.

Four ways to choose what to remove, and three shapes of what is removed:

* **Magnitude** (Han et al. 2015): drop the weights with the smallest :math:`|W_{ij}|`,
  per layer or with one global threshold.
* **Wanda** (Sun et al. 2023): score :math:`S_{ij} = |W_{ij}|\,\lVert X_j \rVert_2`, where
  :math:`\lVert X_j\rVert_2` is the L2 norm of input feature *j* over calibration tokens, and
  drop the lowest scores **within each output row**. No gradients, no weight update.
* **Random**, the control that says whether a criterion matters at all.
* **Structured**: whole MLP neurons and attention heads, scored by weight norm or by the
  activation-weighted norm of their output, and removed by building **smaller**
  ``nn.Linear`` layers (so the model really gets cheaper).

The shapes: **unstructured** (any weight; a boolean mask, applied by zeroing), **N:M
semi-structured** (at most N non-zeros in every group of M consecutive inputs; 2:4 is what
NVIDIA's sparse tensor cores run, CUDA only), and **structured** (smaller dense layers).
Unstructured zeros make a dense matmul no faster: :class:`CSRLinear` stores them in
compressed sparse rows to show what a sparse kernel costs instead.

Gradual magnitude pruning (Zhu & Gupta 2017) prunes during fine-tuning along a cubic
schedule; :func:`lottery_ticket` replays Frankle & Carbin (2019) on an MLP classifier.

Masks are boolean tensors, ``True`` = keep. Sparsity is the fraction of weights removed.
The chapter's expensive results (a method x sparsity x structure grid on the "small"
patient and on MiniLM, head ablations, fine-tuning and lottery curves) are in
:mod:`course_lib.experiments.prune`, precomputed by one deterministic command::

    python -m course_lib.build prune            # writes course_lib/zoo_data/prune_grid.json
    python -m course_lib.build prune minilm     # rebuild one part (patient, latency, heads, minilm, gmp, lottery)
"""

from __future__ import annotations

import contextlib
import math
import re
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.sparse import to_sparse_semi_structured

from course_lib.checks import check_choice, check_float, check_int, check_probability, check_tensor, check_type
from course_lib.model import replace_linears
from course_lib.train import train

UNSTRUCTURED_METHODS = ("magnitude", "global_magnitude", "wanda", "random")
STRUCTURED_METHODS = ("magnitude", "wanda", "random")

# --------------------------------------------------------------------------- validation


def check_sparsity(sparsity, name: str = "sparsity") -> float:
    """``sparsity`` as a float in [0, 1), or a ValueError naming the argument."""
    return float(check_float(name, sparsity, min=0, max=1, max_inclusive=False))


def check_nm(n, m) -> tuple[int, int]:
    """Validate an N:M pattern: ints with 1 <= N <= M."""
    n, m = check_int("n", n, min=1), check_int("m", m, min=1)
    if n > m:
        raise ValueError(f"N:M needs N <= M (keep N of every M weights), got N={n} > M={m}")
    return n, m


def _n_prune(sparsity: float, size: int) -> int:
    """How many of ``size`` items a sparsity removes: ``round(sparsity * size)``, as torch.nn.utils.prune."""
    return round(sparsity * size)


# --------------------------------------------------------------------------- masks


def magnitude_mask(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    r"""Keep-mask that removes the ``round(s·n)`` entries of smallest :math:`|W_{ij}|` (layer-wise)."""
    sparsity = check_sparsity(sparsity)
    check_tensor("weight", weight)
    return _lowest_k_mask(weight.detach().abs().reshape(-1), _n_prune(sparsity, weight.numel())).view_as(weight)


def _lowest_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """(n,) scores -> keep-mask with the k lowest set False (ties broken by topk, as torch prune)."""
    mask = torch.ones_like(scores, dtype=torch.bool)
    if k > 0:
        mask[torch.topk(scores, k, largest=False).indices] = False
    return mask


def global_magnitude_masks(weights: Mapping[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    r"""One threshold for all tensors: remove the ``round(s·N)`` smallest :math:`|W|` of the union.

    Layers whose weights are small overall lose more than the average.
    """
    sparsity = check_sparsity(sparsity)
    if not isinstance(weights, Mapping) or not weights:
        raise ValueError("weights must be a non-empty dict of name -> tensor")
    for name, w in weights.items():
        check_tensor(f"weights[{name!r}]", w)
    flat = torch.cat([w.detach().abs().reshape(-1).float() for w in weights.values()])
    keep = _lowest_k_mask(flat, _n_prune(sparsity, flat.numel()))
    out, start = {}, 0
    for name, w in weights.items():
        out[name] = keep[start : start + w.numel()].view_as(w)
        start += w.numel()
    return out


def random_mask(weight: torch.Tensor, sparsity: float, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Keep-mask removing ``round(s·n)`` entries chosen uniformly at random (the control)."""
    sparsity = check_sparsity(sparsity)
    check_tensor("weight", weight)
    scores = torch.rand(weight.numel(), generator=generator).to(weight.device)
    return _lowest_k_mask(scores, _n_prune(sparsity, weight.numel())).view_as(weight)


def wanda_scores(weight: torch.Tensor, act_norm: torch.Tensor) -> torch.Tensor:
    r"""Wanda's importance :math:`S_{ij} = |W_{ij}| \cdot \lVert X_j \rVert_2`; weight (out, in), act_norm (in,)."""
    check_tensor("weight", weight, dims=("out", "in"), floating=True)
    check_tensor("act_norm", act_norm, floating=True)
    if act_norm.shape != (weight.shape[1],):
        raise ValueError(f"act_norm must have shape ({weight.shape[1]},) = in_features, got {tuple(act_norm.shape)}")
    return weight.detach().abs() * act_norm.to(weight.device, weight.dtype)[None, :]  # (out, in)


def row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-mask removing the ``round(s·in)`` lowest scores **in every row** (Wanda's comparison group)."""
    sparsity = check_sparsity(sparsity)
    check_tensor("scores", scores, dims=("out", "in"))
    k = _n_prune(sparsity, scores.shape[1])
    mask = torch.ones_like(scores, dtype=torch.bool)
    if k > 0:
        mask.scatter_(1, torch.topk(scores, k, dim=1, largest=False).indices, False)
    return mask


def wanda_mask(weight: torch.Tensor, act_norm: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Wanda: per output row, remove the weights with the lowest :func:`wanda_scores`."""
    return row_mask(wanda_scores(weight, act_norm), sparsity)


def nm_mask(scores: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """N:M keep-mask: in every group of ``m`` consecutive entries of a row, keep the ``n`` highest scores.

    Groups run along the last (input, reduction) dimension, which is what sparse tensor
    cores need: each dot product then skips exactly ``m - n`` of every ``m`` multiplies.
    """
    n, m = check_nm(n, m)
    if scores.dim() != 2 or scores.shape[1] % m:
        raise ValueError(f"scores must be 2-D with in_features divisible by M={m}, got shape {tuple(scores.shape)}")
    groups = scores.detach().reshape(scores.shape[0], -1, m)  # (out, in/M, M)
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(-1, torch.topk(groups, n, dim=-1).indices, True)
    return mask.reshape(scores.shape)


def is_nm_sparse(t: torch.Tensor, n: int = 2, m: int = 4) -> bool:
    """Does every group of ``m`` consecutive entries per row hold at most ``n`` non-zeros (or Trues)?"""
    n, m = check_nm(n, m)
    if t.dim() != 2 or t.shape[1] % m:
        return False
    return bool(((t != 0).reshape(t.shape[0], -1, m).sum(-1) <= n).all())


def sparsity_of(t: torch.Tensor) -> float:
    """Fraction of entries equal to zero (of a weight) or False (of a keep-mask)."""
    if check_tensor("t", t).numel() == 0:
        raise ValueError("t must not be empty: an empty tensor has no sparsity")
    return 1.0 - (t != 0).sum().item() / t.numel()


# --------------------------------------------------------------------------- storage formats


def _check_shape(shape) -> None:
    if not isinstance(shape, (tuple, list, torch.Size)) or len(shape) != 2:
        raise ValueError(f"shape must be (rows, cols), got {shape!r}")
    check_int("shape[0]", shape[0], min=0)
    check_int("shape[1]", shape[1], min=0)


def dense_bytes(shape: tuple[int, int], value_bytes: int = 4) -> int:
    """Bytes of a dense matrix: every entry stored, zeros included."""
    _check_shape(shape)
    check_int("value_bytes", value_bytes, min=1)
    return math.prod(shape) * value_bytes


def csr_bytes(shape: tuple[int, int], nnz: int, value_bytes: int = 4, index_bytes: int = 4) -> int:
    r"""Compressed sparse rows: nnz values + nnz column indices + (rows + 1) row pointers.

    Per kept weight it costs ``value_bytes + index_bytes``: with fp32 values and int32
    indices, CSR is **larger** than dense until more than half the weights are zero.
    """
    _check_shape(shape)
    check_int("nnz", nnz, min=0, max=math.prod(shape))
    check_int("value_bytes", value_bytes, min=1)
    check_int("index_bytes", index_bytes, min=1)
    return nnz * (value_bytes + index_bytes) + (shape[0] + 1) * index_bytes


def nm_bytes(shape: tuple[int, int], n: int = 2, m: int = 4, value_bytes: int = 2) -> int:
    r"""N:M compressed: the ``n/m`` kept values plus a :math:`\lceil\log_2 m\rceil`-bit position each.

    2:4 in fp16 (what sparse tensor cores read): half the values plus 2 bits of metadata
    per kept value, :math:`0.5 \cdot 16 + 0.5 \cdot 2 = 9` bits per weight instead of 16.
    """
    n, m = check_nm(n, m)
    _check_shape(shape)
    check_int("value_bytes", value_bytes, min=1)
    kept = math.prod(shape) * n // m
    return kept * value_bytes + math.ceil(kept * max(1, math.ceil(math.log2(m))) / 8)


@dataclass
class NMCompressed:
    """An N:M sparse matrix in its compressed form: kept values and their in-group positions."""

    values: torch.Tensor  # (out, in·n/m), the kept entries in order
    indices: torch.Tensor  # (out, in·n/m) uint8 in [0, m): position of each kept entry in its group
    shape: tuple[int, int]
    n: int
    m: int

    def packed_indices(self) -> torch.Tensor:
        """The positions packed into ``ceil(log2 m)`` bits each, as the hardware stores them."""
        return pack_bits(self.indices.reshape(-1), max(1, math.ceil(math.log2(self.m))))

    def nbytes(self) -> int:
        return self.values.numel() * self.values.element_size() + self.packed_indices().numel()


def compress_nm(weight: torch.Tensor, n: int = 2, m: int = 4) -> NMCompressed:
    """Split an N:M-sparse (out, in) matrix into kept values and their positions (see :class:`NMCompressed`)."""
    n, m = check_nm(n, m)
    if not is_nm_sparse(weight, n, m):
        raise ValueError(f"weight is not {n}:{m} sparse (some group of {m} has more than {n} non-zeros)")
    out, inp = weight.shape
    groups = weight.detach().reshape(out, inp // m, m)
    # positions of the non-zeros first (in order), then zeros as filler, exactly n per group
    key = (groups == 0).to(torch.int64) * m + torch.arange(m, device=weight.device)
    pos = key.argsort(dim=-1)[..., :n].sort(dim=-1).values  # (out, in/m, n)
    values = groups.gather(-1, pos).reshape(out, -1)
    return NMCompressed(values, pos.to(torch.uint8).reshape(out, -1), (out, inp), n, m)


def decompress_nm(c: NMCompressed) -> torch.Tensor:
    """Rebuild the dense (out, in) matrix from :func:`compress_nm`'s output."""
    out, inp = c.shape
    dense = torch.zeros(out, inp // c.m, c.m, dtype=c.values.dtype, device=c.values.device)
    dense.scatter_(-1, c.indices.long().reshape(out, -1, c.n), c.values.reshape(out, -1, c.n))
    return dense.reshape(out, inp)


def pack_bits(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack small non-negative ints (< 2**bits, bits in {1, 2, 4, 8}) into bytes, low bits first."""
    check_choice("bits", bits, (1, 2, 4, 8))
    check_tensor("values", values)
    per = 8 // bits
    v = values.to(torch.uint8).reshape(-1)
    if v.numel() and int(v.max()) >= 2**bits:
        raise ValueError(f"values must be < 2**bits = {2**bits}")
    v = F.pad(v, (0, (-v.numel()) % per)).reshape(-1, per).to(torch.int32)
    shifts = torch.arange(per, dtype=torch.int32, device=v.device) * bits
    return (v << shifts).sum(-1).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: the first ``count`` values."""
    check_choice("bits", bits, (1, 2, 4, 8))
    check_tensor("packed", packed, rank=1)
    check_int("count", count, min=0, max=packed.numel() * (8 // bits))
    per = 8 // bits
    shifts = torch.arange(per, dtype=torch.int32, device=packed.device) * bits
    return ((packed.to(torch.int32)[:, None] >> shifts) & (2**bits - 1)).reshape(-1)[:count].to(torch.uint8)


def to_semi_structured(weight: torch.Tensor):
    """A 2:4-sparse weight as PyTorch's ``SparseSemiStructuredTensor`` (CUDA, fp16/bf16, Ampere+).

    Raises a clear error on CPU: there is no CPU kernel for the format.
    """
    if weight.device.type != "cuda":
        raise RuntimeError("2:4 semi-structured sparse tensors run only on CUDA GPUs (sm80+); this tensor is on CPU")
    return to_sparse_semi_structured(weight)


@contextlib.contextmanager
def _quiet_sparse():
    """Silence PyTorch's 'sparse CSR is beta' and 'invariant checks disabled' notices (the indices are ours)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)
        warnings.filterwarnings(
            "ignore", message="Sparse invariant checks are implicitly disabled", category=UserWarning
        )
        yield


class CSRLinear(nn.Module):
    """A Linear whose weight is stored as compressed sparse rows and multiplied by a sparse kernel.

    Forward is ``F.linear(x, W_csr, b)`` on the flattened tokens. It computes the same
    function as the masked dense layer, with ``2·nnz`` instead of ``2·in·out`` FLOPs per
    token, but through an irregular memory-access pattern that dense hardware runs poorly.
    """

    def __init__(self, linear: nn.Linear, *, index_dtype: torch.dtype = torch.int32):
        super().__init__()
        check_type("linear", linear, nn.Linear, what="an nn.Linear")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        with _quiet_sparse():
            csr = linear.weight.detach().to_sparse_csr()
        self.register_buffer("crow", csr.crow_indices().to(index_dtype))
        self.register_buffer("col", csr.col_indices().to(index_dtype))
        # the non-zeros are the layer's parameters (so num_params counts what is stored)
        self.values = nn.Parameter(csr.values().clone(), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        self._csr = None

    def weight_csr(self) -> torch.Tensor:
        if self._csr is None or self._csr.device != self.values.device:
            shape = (self.out_features, self.in_features)
            with _quiet_sparse():
                self._csr = torch.sparse_csr_tensor(self.crow, self.col, self.values, shape)
        return self._csr

    @property
    def nnz(self) -> int:
        return self.values.numel()

    def weight_bytes(self) -> int:
        b = sum(t.numel() * t.element_size() for t in (self.crow, self.col, self.values))
        return b + (0 if self.bias is None else self.bias.numel() * self.bias.element_size())

    def forward(self, x):  # (..., in) -> (..., out)
        y = F.linear(x.reshape(-1, self.in_features), self.weight_csr(), self.bias)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, nnz={self.nnz}"


def to_csr(model: nn.Module, *, where: Callable | None = None) -> list[str]:
    """Replace the chosen Linears (default: :func:`default_where`) by :class:`CSRLinear`, in place."""
    return replace_linears(model, lambda name, lin: CSRLinear(lin), where=where or default_where)


# --------------------------------------------------------------------------- which layers, calibration


def default_where(name: str, module: nn.Module) -> bool:
    """Prune every Linear except ``lm_head`` (tied to the embedding) and BERT's unused ``pooler``."""
    return not name.endswith("lm_head") and "pooler" not in name


def prunable_linears(model: nn.Module, where: Callable | None = None) -> dict[str, nn.Linear]:
    """``{name: nn.Linear}`` chosen by ``where(name, module)`` (default :func:`default_where`)."""
    where = where or default_where
    found = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and where(n, m)}
    if not found:
        raise ValueError("no nn.Linear layer matches `where`")
    return found


def _run(model: nn.Module, batch) -> None:
    if isinstance(batch, Mapping):
        model(**batch)
    elif torch.is_tensor(batch):
        model(batch)
    else:
        raise TypeError(f"calibration items must be tensors or dicts of model inputs, got {type(batch).__name__}")


class _StopForward(Exception):
    """Raised by a hook to end a calibration forward pass early (nothing after it is needed)."""


@torch.no_grad()
def activation_norms(
    model: nn.Module, calibration: Iterable, *, names: Iterable[str] | None = None
) -> dict[str, torch.Tensor]:
    r"""L2 norm of every input feature of the chosen Linears over all calibration tokens.

    :math:`\lVert X_j \rVert_2 = \sqrt{\sum_t x_{tj}^2}` for each input column *j*, collected
    with forward hooks while ``model`` runs on ``calibration`` (tensors for a TinyLM, dicts
    of keyword inputs for a ``transformers`` model). Returns ``{name: (in_features,)}``.
    Each pass stops once the last of the chosen layers has run.
    """
    linears = prunable_linears(model) if names is None else {n: model.get_submodule(n) for n in names}
    was_training = model.training
    model.eval()
    try:
        return _collect_norms(linears, [lambda b=b: _run(model, b) for b in calibration])
    finally:
        model.train(was_training)


def _collect_norms(linears: Mapping[str, nn.Linear], passes: Iterable[Callable[[], object]]) -> dict[str, torch.Tensor]:
    """Input-feature L2 norms of ``linears`` over the forward passes ``passes`` (each stops after the last of them)."""
    sums = {n: torch.zeros(m.in_features, dtype=torch.float64, device=m.weight.device) for n, m in linears.items()}
    pending: set[str] = set()

    def hook(name):
        def fn(_module, inputs, _output):
            x = inputs[0].detach()
            sums[name] += x.reshape(-1, x.shape[-1]).double().pow(2).sum(0)
            pending.discard(name)
            if not pending:
                raise _StopForward

        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in linears.items()]
    seen = 0
    try:
        for run in passes:
            pending.update(linears)
            try:
                run()
            except _StopForward:
                pass
            seen += 1
    finally:
        for h in handles:
            h.remove()
    if seen == 0:
        raise ValueError("calibration must hold at least one batch")
    return {n: s.sqrt().float() for n, s in sums.items()}


def _layer_prefix(name: str) -> str:
    """``blocks.3.mlp.up_proj`` -> ``blocks.3``; a name outside a numbered layer is its own prefix."""
    match = re.match(r"^(.*?\.\d+)\.", name)
    return match.group(1) if match else name


def layer_groups(names: Iterable[str]) -> list[list[str]]:
    """Group Linear names by layer (``blocks.3.…`` / ``encoder.layer.3.…``), in model order."""
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(_layer_prefix(n), []).append(n)
    return list(groups.values())


def _chained_blocks(model: nn.Module, groups: list[list[str]], calibration: list) -> tuple | None:
    """The inputs of the first group's block, when the groups can be calibrated block by block; else None.

    Sequential Wanda needs each layer's inputs computed by the layers already pruned. Re-running
    the model from its input for every layer costs L(L+1)/2 layer passes; the reference
    implementation instead keeps the inputs of the current layer and runs only that layer. That is
    exact when every group is one block of the same ``nn.ModuleList``, in order, and each block's
    output is the next block's first input with the other arguments unchanged (TinyLM, BERT).
    This checks it on a real forward pass of the first calibration batch, and returns
    ``(blocks, first, last, group_at, inputs)``: ``inputs`` holds ``(args, kwargs)`` of block
    ``first`` for every calibration batch.
    """
    prefixes = [_layer_prefix(g[0]) for g in groups]
    parents = {p.rpartition(".")[0] for p in prefixes}
    if any(_layer_prefix(n) != p for g, p in zip(groups, prefixes) for n in g) or len(parents) != 1 or "" in parents:
        return None
    if not all(p.rpartition(".")[2].isdigit() for p in prefixes):
        return None
    blocks = model.get_submodule(parents.pop())
    index = [int(p.rpartition(".")[2]) for p in prefixes]
    if not isinstance(blocks, nn.ModuleList) or index != sorted(set(index)) or index[-1] >= len(blocks):
        return None
    first, last = index[0], index[-1]
    calls: dict[int, list] = {i: [] for i in range(first, last + 1)}

    def record(i):
        def pre(_module, args, kwargs):
            calls[i].append([args, kwargs, None])

        def post(_module, _args, _kwargs, output):
            calls[i][-1][2] = output
            if i == last:
                raise _StopForward

        return pre, post

    handles = []
    for i in calls:
        pre, post = record(i)
        handles.append(blocks[i].register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(blocks[i].register_forward_hook(post, with_kwargs=True))
    try:
        try:
            _run(model, calibration[0])
        except _StopForward:
            pass
    finally:
        for h in handles:
            h.remove()
    if any(len(c) != 1 or c[0][2] is None for c in calls.values()):
        return None  # a block was skipped or called twice: not a plain chain
    for i in range(first, last):
        (args, kwargs, out), (nargs, nkwargs, _) = calls[i][0], calls[i + 1][0]
        if not (nargs and (nargs[0] is out or (isinstance(out, tuple) and out and nargs[0] is out[0]))):
            return None  # the next block does not read this block's output as it is
        if len(nargs) != len(args) or any(a is not b for a, b in zip(args[1:], nargs[1:])):
            return None
        if nkwargs.keys() != kwargs.keys() or any(kwargs[k] is not nkwargs[k] for k in kwargs):
            return None
    inputs = [(calls[first][0][0], calls[first][0][1])]
    captured: list = []

    def grab(_module, args, kwargs):
        captured.append((args, kwargs))
        raise _StopForward

    h = blocks[first].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        for batch in calibration[1:]:
            try:
                _run(model, batch)
            except _StopForward:
                pass
    finally:
        h.remove()
    if len(captured) != len(calibration) - 1:
        return None
    group_at = dict(zip(index, groups))
    return blocks, first, last, group_at, inputs + captured


def _wanda_block_by_block(model, linears, groups, calibration, choose) -> dict[str, torch.Tensor] | None:
    """Sequential Wanda running one block at a time on the stored inputs (see :func:`_chained_blocks`); None if unfit."""
    chain = _chained_blocks(model, groups, calibration)
    if chain is None:
        return None
    blocks, first, last, group_at, inputs = chain
    masks = {}
    for i in range(first, last + 1):
        block = blocks[i]
        if i in group_at:
            group = group_at[i]
            norms = _collect_norms(
                {n: linears[n] for n in group}, [lambda a=a, k=k, b=block: b(*a, **k) for a, k in inputs]
            )
            for n in group:
                masks[n] = choose(wanda_scores(linears[n].weight, norms[n]), per_row=True)
                linears[n].weight.mul_(masks[n])
        if i < last:  # the inputs of the next block: this block's outputs, pruned
            outs = [block(*a, **k) for a, k in inputs]
            inputs = [((o if torch.is_tensor(o) else o[0], *a[1:]), k) for o, (a, k) in zip(outs, inputs)]
    return masks


# --------------------------------------------------------------------------- unstructured pruning


@torch.no_grad()
def prune_unstructured(
    model: nn.Module,
    *,
    method: str = "magnitude",
    sparsity: float | None = None,
    pattern: tuple[int, int] | None = None,
    calibration: Iterable | None = None,
    sequential: bool = True,
    where: Callable | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Zero weights of the chosen Linears in place; returns the keep-masks ``{name: (out, in)}``.

    ``method``: ``magnitude`` (per layer), ``global_magnitude``, ``wanda`` (needs
    ``calibration``), ``random``. Give either ``sparsity`` (fraction removed) or an N:M
    ``pattern`` such as ``(2, 4)``. Wanda with ``sequential`` calibrates layer after layer,
    each on the outputs of the layers already pruned, as the reference implementation does (and,
    like it, runs only the current layer on its stored inputs when the layers form a plain chain).
    """
    check_choice("method", method, UNSTRUCTURED_METHODS)
    if (sparsity is None) == (pattern is None):
        raise ValueError("give exactly one of sparsity (a fraction) or pattern (an N:M tuple such as (2, 4))")
    if pattern is not None:
        if not isinstance(pattern, tuple) or len(pattern) != 2:
            raise ValueError(f"pattern must be a tuple (N, M), got {pattern!r}")
        check_nm(*pattern)
        if method == "global_magnitude":
            raise ValueError("global_magnitude has no N:M form: an N:M pattern fixes the count in every group")
    else:
        sparsity = check_sparsity(sparsity)
    if method == "wanda" and calibration is None:
        raise ValueError("method='wanda' needs calibration batches (activations decide the mask)")
    linears = prunable_linears(model, where)
    if pattern is not None:
        for n, m in linears.items():
            if m.in_features % pattern[1]:
                raise ValueError(f"{n}: in_features {m.in_features} is not divisible by M={pattern[1]}")

    def choose(scores: torch.Tensor, per_row: bool) -> torch.Tensor:
        if pattern is not None:
            return nm_mask(scores, *pattern)
        if per_row:
            return row_mask(scores, sparsity)
        return _lowest_k_mask(scores.reshape(-1), _n_prune(sparsity, scores.numel())).view_as(scores)

    masks: dict[str, torch.Tensor] = {}
    if method == "global_magnitude":
        masks = global_magnitude_masks({n: m.weight for n, m in linears.items()}, sparsity)
    elif method in ("magnitude", "random"):
        for n, m in linears.items():
            w = m.weight
            scores = w.abs() if method == "magnitude" else torch.rand(w.shape, generator=generator).to(w.device)
            masks[n] = choose(scores, per_row=False)
    else:  # wanda
        calibration = list(calibration)
        if not calibration:
            raise ValueError("calibration must hold at least one batch")
        groups = layer_groups(linears) if sequential else [list(linears)]
        if sequential and len(groups) > 1:
            was_training = model.training
            model.eval()
            try:
                by_block = _wanda_block_by_block(model, linears, groups, calibration, choose)
            finally:
                model.train(was_training)
            if by_block is not None:
                return by_block
        for group in groups:
            norms = activation_norms(model, calibration, names=group)
            for n in group:
                masks[n] = choose(wanda_scores(linears[n].weight, norms[n]), per_row=True)
                linears[n].weight.mul_(masks[n])
        return masks
    apply_masks(model, masks)
    return masks


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Zero every weight whose mask entry is False (``masks`` from :func:`prune_unstructured`)."""
    for name, mask in masks.items():
        w = model.get_submodule(name).weight
        if mask.shape != w.shape:
            raise ValueError(f"mask for {name} has shape {tuple(mask.shape)}, weight has {tuple(w.shape)}")
        w.mul_(mask.to(w.device))


def sparsity_report(model: nn.Module, *, where: Callable | None = None) -> dict:
    """Sparsity accounting: zeros per chosen Linear, over all of them, and over the whole model.

    Shared tensors (a tied embedding and LM head) are counted once.
    """
    layers = []
    for name, m in prunable_linears(model, where).items():
        zeros = int((m.weight == 0).sum())
        layers.append(
            {
                "layer": name,
                "shape": tuple(m.weight.shape),
                "params": m.weight.numel(),
                "zeros": zeros,
                "sparsity": zeros / m.weight.numel(),
            }
        )
    seen, total, total_zeros = set(), 0, 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
            total_zeros += int((p == 0).sum())
    lin_params = sum(r["params"] for r in layers)
    lin_zeros = sum(r["zeros"] for r in layers)
    return {
        "layers": layers,
        "linear_params": lin_params,
        "linear_zeros": lin_zeros,
        "linear_sparsity": lin_zeros / lin_params,
        "total_params": total,
        "total_zeros": total_zeros,
        "total_sparsity": total_zeros / total,
    }


# --------------------------------------------------------------------------- structured pruning


@dataclass
class LayerSpec:
    """Where one transformer layer keeps its MLP and attention Linears (dotted module names)."""

    index: int
    mlp_in: list[str]  # Linears whose output rows are the MLP neurons (gate and up; BERT: intermediate)
    mlp_out: str  # the Linear whose input columns are the neurons (down; BERT: output.dense)
    attn: str  # the module holding the head counts
    q: str
    kv: list[str]
    o: str


def layer_specs(model: nn.Module) -> list[LayerSpec]:
    """The layers of a course TinyLM (SwiGLU + Attention) or a BERT encoder (MiniLM)."""
    if hasattr(model, "blocks"):
        specs = []
        for i, blk in enumerate(model.blocks):
            p = f"blocks.{i}"
            if not all(isinstance(getattr(blk.mlp, a, None), nn.Linear) for a in ("gate_proj", "up_proj", "down_proj")):
                raise TypeError(f"{p}.mlp is a {type(blk.mlp).__name__}; structured pruning needs a SwiGLU MLP")
            if not hasattr(blk.attn, "n_kv_heads") or not isinstance(getattr(blk.attn, "q_proj", None), nn.Linear):
                raise TypeError(f"{p}.attn is a {type(blk.attn).__name__}; structured pruning needs course Attention")
            specs.append(
                LayerSpec(
                    i,
                    [f"{p}.mlp.gate_proj", f"{p}.mlp.up_proj"],
                    f"{p}.mlp.down_proj",
                    f"{p}.attn",
                    f"{p}.attn.q_proj",
                    [f"{p}.attn.k_proj", f"{p}.attn.v_proj"],
                    f"{p}.attn.o_proj",
                )
            )
        return specs
    layers = getattr(getattr(model, "encoder", None), "layer", None)
    if layers is not None and hasattr(layers[0], "intermediate"):
        return [
            LayerSpec(
                i,
                [f"encoder.layer.{i}.intermediate.dense"],
                f"encoder.layer.{i}.output.dense",
                f"encoder.layer.{i}.attention.self",
                f"encoder.layer.{i}.attention.self.query",
                [f"encoder.layer.{i}.attention.self.key", f"encoder.layer.{i}.attention.self.value"],
                f"encoder.layer.{i}.attention.output.dense",
            )
            for i in range(len(layers))
        ]
    raise TypeError(f"structured pruning knows TinyLM and BERT encoders, not {type(model).__name__}")


def head_layout(model: nn.Module, spec: LayerSpec) -> tuple[int, int, int]:
    """(n_heads, n_kv_heads, head_dim) of one layer, read from its attention module."""
    a = model.get_submodule(spec.attn)
    if hasattr(a, "n_kv_heads"):
        return a.n_heads, a.n_kv_heads, a.head_dim
    return a.num_attention_heads, a.num_attention_heads, a.attention_head_size  # BERT: plain multi-head


def shrink_linear(linear: nn.Linear, keep: torch.Tensor, *, dim: int) -> nn.Linear:
    """A new, smaller Linear keeping output rows (``dim=0``) or input columns (``dim=1``) ``keep``.

    The same operation as ``transformers.pytorch_utils.prune_linear_layer``.
    """
    check_choice("dim", dim, (0, 1))  # 0: outputs, 1: inputs
    keep = torch.as_tensor(keep, dtype=torch.long, device=linear.weight.device)
    w = linear.weight.detach().index_select(dim, keep)
    new = nn.Linear(w.shape[1], w.shape[0], bias=linear.bias is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if linear.bias is not None:
            new.bias.copy_(linear.bias[keep] if dim == 0 else linear.bias)
    return new


def _shrink(model: nn.Module, plan: dict[str, tuple[torch.Tensor, int]]) -> None:
    """Swap each named Linear for its shrunk copy through :func:`replace_linears`."""
    replace_linears(
        model,
        lambda name, lin: shrink_linear(lin, plan[name][0], dim=plan[name][1]),
        where=lambda name, m: name in plan,
    )


def keep_highest(scores: torch.Tensor, amount: float) -> torch.Tensor:
    """Sorted indices of the units to keep: all but the ``round(amount·n)`` lowest scores."""
    amount = check_sparsity(amount, "amount")
    return torch.nonzero(_lowest_k_mask(scores, _n_prune(amount, scores.numel()))).reshape(-1)


def neuron_scores(
    model: nn.Module,
    spec: LayerSpec,
    method: str = "magnitude",
    *,
    act_norms: Mapping[str, torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Importance of each MLP neuron *j* of one layer, (d_ff,).

    ``magnitude``: L2 norm of all the neuron's weights, :math:`\sqrt{\lVert W_{gate}[j,:]\rVert^2 +
    \lVert W_{up}[j,:]\rVert^2 + \lVert W_{down}[:,j]\rVert^2}`. ``wanda``: the norm of the
    neuron's contribution to the layer output over the calibration tokens,
    :math:`\lVert W_{down}[:,j]\, x_j^\top \rVert_F = \lVert W_{down}[:,j]\rVert_2 \, \lVert x_j\rVert_2`
    (exact, because it is an outer product). ``random``: uniform scores.
    """
    down = model.get_submodule(spec.mlp_out).weight.detach()  # (C, d_ff)
    if method == "magnitude":
        sq = down.pow(2).sum(0)
        for name in spec.mlp_in:
            sq = sq + model.get_submodule(name).weight.detach().pow(2).sum(1)
        return sq.sqrt()
    if method == "wanda":
        if act_norms is None or spec.mlp_out not in act_norms:
            raise ValueError(f"method='wanda' needs act_norms with an entry for {spec.mlp_out}")
        return down.norm(dim=0) * act_norms[spec.mlp_out].to(down.device)
    if method == "random":
        return torch.rand(down.shape[1], generator=generator).to(down.device)
    raise ValueError(f"method must be one of {STRUCTURED_METHODS}, got {method!r}")


def head_scores(
    model: nn.Module,
    spec: LayerSpec,
    method: str = "magnitude",
    *,
    act_norms: Mapping[str, torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Importance of each query head *h* of one layer, (n_heads,).

    ``magnitude``: L2 norm of the head's query rows and output-projection columns (its key
    and value rows are shared by a GQA group, so they do not tell heads apart).
    ``wanda``: :math:`\sqrt{\sum_{c \in h} (\lVert W_o[:,c]\rVert_2 \lVert x_c\rVert_2)^2}`, the
    per-channel output norms of the head's slice of the output projection.
    """
    n_heads, _, d = head_layout(model, spec)
    o = model.get_submodule(spec.o).weight.detach()  # (C, H·d)
    if method == "magnitude":
        q = model.get_submodule(spec.q).weight.detach()  # (H·d, C)
        return (q.pow(2).sum(1) + o.pow(2).sum(0)).reshape(n_heads, d).sum(1).sqrt()
    if method == "wanda":
        if act_norms is None or spec.o not in act_norms:
            raise ValueError(f"method='wanda' needs act_norms with an entry for {spec.o}")
        per_channel = o.norm(dim=0) * act_norms[spec.o].to(o.device)  # (H·d,)
        return per_channel.pow(2).reshape(n_heads, d).sum(1).sqrt()
    if method == "random":
        return torch.rand(n_heads, generator=generator).to(o.device)
    raise ValueError(f"method must be one of {STRUCTURED_METHODS}, got {method!r}")


@torch.no_grad()
def remove_neurons(model: nn.Module, spec: LayerSpec, keep: torch.Tensor) -> int:
    """Rebuild one layer's MLP with only the neurons ``keep``; returns the new d_ff."""
    d_ff = model.get_submodule(spec.mlp_out).in_features
    keep = torch.as_tensor(keep, dtype=torch.long).unique()
    if keep.numel() == 0:
        raise ValueError(f"cannot prune every MLP neuron of layer {spec.index} (it has {d_ff})")
    if int(keep.min()) < 0 or int(keep.max()) >= d_ff:
        raise ValueError(f"neuron indices must be in [0, {d_ff}), got {keep.tolist()[:8]}...")
    _shrink(model, {**{n: (keep, 0) for n in spec.mlp_in}, spec.mlp_out: (keep, 1)})
    return keep.numel()


@torch.no_grad()
def remove_heads(model: nn.Module, spec: LayerSpec, heads: Iterable[int]) -> tuple[int, int]:
    """Remove query heads ``heads`` from one layer; returns the new (n_heads, n_kv_heads).

    With grouped-query attention each key/value head serves ``n_heads / n_kv_heads`` query
    heads, and the attention repeats every kv head that many times, so every surviving
    group must keep the **same** number of query heads. A kv head whose whole group is
    removed is removed with it (and the KV cache shrinks).
    """
    n_heads, n_kv, d = head_layout(model, spec)
    heads = sorted({int(h) for h in heads})
    if any(not 0 <= h < n_heads for h in heads):
        raise ValueError(f"heads must be in [0, {n_heads}), got {heads}")
    if len(heads) >= n_heads:
        raise ValueError(f"cannot prune every head of layer {spec.index} (it has {n_heads}); keep at least one")
    group = n_heads // n_kv
    keep_q = [h for h in range(n_heads) if h not in heads]
    kept_per_group = [sum(1 for h in keep_q if h // group == g) for g in range(n_kv)]
    alive = [g for g in range(n_kv) if kept_per_group[g]]
    if len({kept_per_group[g] for g in alive}) != 1:
        raise ValueError(
            f"layer {spec.index}: grouped-query attention needs the same number of query heads in every kept "
            f"group; removing {heads} leaves {kept_per_group} per group of {group}"
        )
    q_rows = torch.cat([torch.arange(h * d, (h + 1) * d) for h in keep_q])
    kv_heads = alive if group > 1 else keep_q
    kv_rows = torch.cat([torch.arange(g * d, (g + 1) * d) for g in kv_heads])
    _shrink(model, {spec.q: (q_rows, 0), spec.o: (q_rows, 1), **{n: (kv_rows, 0) for n in spec.kv}})
    a = model.get_submodule(spec.attn)
    if hasattr(a, "n_kv_heads"):
        a.n_heads, a.n_kv_heads = len(keep_q), len(kv_heads)
    else:  # BERT infers heads from shapes; keep its bookkeeping true
        a.num_attention_heads, a.all_head_size = len(keep_q), len(keep_q) * d
    return len(keep_q), len(kv_heads)


def select_heads(scores: torch.Tensor, amount: float, *, n_kv_heads: int, granularity: str = "head") -> list[int]:
    """Which query heads to remove at a fraction ``amount``, respecting GQA groups.

    ``granularity="head"``: the ``round(amount·g)`` lowest-scoring heads of **every** group of
    ``g`` query heads (plain multi-head attention: the lowest ``round(amount·H)`` heads).
    ``"group"``: the ``round(amount·n_kv)`` groups with the lowest total score, with their kv heads.
    """
    amount = check_sparsity(amount, "head_sparsity")
    check_choice("granularity", granularity, ("head", "group"))
    n_heads = scores.numel()
    group = n_heads // n_kv_heads
    if granularity == "group" or group == 1:
        g_scores = scores.reshape(n_kv_heads, group).pow(2).sum(1)
        k = _n_prune(amount, n_kv_heads)
        if k >= n_kv_heads:
            raise ValueError(f"head_sparsity {amount} would prune every head group of a layer ({n_kv_heads})")
        drop = torch.topk(g_scores, k, largest=False).indices.tolist() if k else []
        return sorted(h for g in drop for h in range(g * group, (g + 1) * group))
    if granularity != "head":
        raise ValueError(f"granularity must be 'head' or 'group', got {granularity!r}")
    k = _n_prune(amount, group)
    if k >= group:
        raise ValueError(f"head_sparsity {amount} would prune every head of a layer (groups of {group})")
    if k == 0:
        return []
    drop = torch.topk(scores.reshape(n_kv_heads, group), k, dim=1, largest=False).indices  # (n_kv, k) in-group
    return sorted((drop + group * torch.arange(n_kv_heads, device=drop.device)[:, None]).reshape(-1).tolist())


@torch.no_grad()
def prune_structured(
    model: nn.Module,
    *,
    mlp_sparsity: float = 0.0,
    head_sparsity: float = 0.0,
    method: str = "magnitude",
    calibration: Iterable | None = None,
    act_norms: Mapping[str, torch.Tensor] | None = None,
    granularity: str = "head",
    generator: torch.Generator | None = None,
) -> list[dict]:
    """Remove a fraction of MLP neurons and attention heads in every layer, in place.

    Each layer keeps its highest-scoring units (:func:`neuron_scores`, :func:`head_scores`)
    and gets new, smaller Linears, so parameters, FLOPs, the KV cache and latency all
    shrink. ``method="wanda"`` needs ``calibration`` batches (or precomputed ``act_norms``).
    Returns one row per layer: the new d_ff, heads and kv heads.
    """
    mlp_sparsity = check_sparsity(mlp_sparsity, "mlp_sparsity")
    head_sparsity = check_sparsity(head_sparsity, "head_sparsity")
    check_choice("method", method, STRUCTURED_METHODS)
    specs = layer_specs(model)
    if method == "wanda" and act_norms is None:
        if calibration is None:
            raise ValueError("method='wanda' needs calibration batches or act_norms")
        act_norms = activation_norms(model, calibration, names=[n for s in specs for n in (s.mlp_out, s.o)])
    plan = []
    for s in specs:  # decide everything first, on the unpruned model
        n_heads, n_kv, _ = head_layout(model, s)
        keep = keep_highest(neuron_scores(model, s, method, act_norms=act_norms, generator=generator), mlp_sparsity)
        if keep.numel() == 0:
            raise ValueError(f"mlp_sparsity {mlp_sparsity} would prune every MLP neuron of layer {s.index}")
        hs = head_scores(model, s, method, act_norms=act_norms, generator=generator)
        plan.append((s, keep, select_heads(hs, head_sparsity, n_kv_heads=n_kv, granularity=granularity)))
    rows = []
    for s, keep, heads in plan:
        d_ff = remove_neurons(model, s, keep) if mlp_sparsity else model.get_submodule(s.mlp_out).in_features
        n_heads, n_kv = remove_heads(model, s, heads) if heads else head_layout(model, s)[:2]
        rows.append({"layer": s.index, "d_ff": d_ff, "heads": n_heads, "kv_heads": n_kv})
    return rows


def structure(model: nn.Module) -> list[dict]:
    """Per layer: MLP width, query heads and kv heads, read from the modules."""
    out = []
    for s in layer_specs(model):
        h, kv, _ = head_layout(model, s)
        out.append({"layer": s.index, "d_ff": model.get_submodule(s.mlp_out).in_features, "heads": h, "kv_heads": kv})
    return out


# --------------------------------------------------------------------------- prune during training


def gmp_sparsity(
    step: int, *, final_sparsity: float, begin_step: int, end_step: int, initial_sparsity: float = 0.0, every: int = 1
) -> float:
    r"""Gradual magnitude pruning schedule (Zhu & Gupta 2017), updated every ``every`` steps.

    :math:`s_t = s_f + (s_i - s_f)\left(1 - \frac{t - t_0}{t_1 - t_0}\right)^3` for
    :math:`t_0 \le t \le t_1`: prune fast while the network has many redundant weights,
    slowly as it approaches the target.
    """
    final_sparsity = check_sparsity(final_sparsity, "final_sparsity")
    initial_sparsity = check_sparsity(initial_sparsity, "initial_sparsity")
    check_int("step", step)
    check_int("every", every, min=1)
    check_int("begin_step", begin_step, min=0)
    check_int("end_step", end_step, min=0)
    if not begin_step < end_step:
        raise ValueError(f"need 0 <= begin_step < end_step, got {begin_step}, {end_step}")
    if step < begin_step:
        return 0.0
    t = min(end_step, begin_step + (step - begin_step) // every * every)
    frac = (t - begin_step) / (end_step - begin_step)
    return final_sparsity + (initial_sparsity - final_sparsity) * (1 - frac) ** 3


def prune_finetune(
    model,
    train_tokens,
    val_tokens,
    cfg,
    *,
    final_sparsity: float,
    schedule: str = "gradual",
    begin_frac: float = 0.0,
    end_frac: float = 0.7,
    every: int = 10,
    where: Callable | None = None,
    progress: bool = False,
):
    """Fine-tune ``model`` while it is pruned by layer-wise magnitude; returns (History, sparsity per step).

    ``schedule="oneshot"`` prunes to ``final_sparsity`` before the first step, then trains with
    the mask fixed (prune, then recover). ``"gradual"`` raises the sparsity along
    :func:`gmp_sparsity` between ``begin_frac`` and ``end_frac`` of the steps, re-choosing
    the smallest weights each time. Pruned weights are re-zeroed after every optimiser step.
    """
    final_sparsity = check_sparsity(final_sparsity, "final_sparsity")
    check_choice("schedule", schedule, ("gradual", "oneshot"))
    check_probability("begin_frac", begin_frac)
    check_probability("end_frac", end_frac)
    check_int("every", every, min=1)
    if not begin_frac < end_frac:
        raise ValueError(f"need 0 <= begin_frac < end_frac <= 1, got {begin_frac}, {end_frac}")
    begin, end = int(begin_frac * cfg.steps), max(int(begin_frac * cfg.steps) + 1, int(end_frac * cfg.steps))
    state = {"masks": {}, "sparsity": 0.0}
    if schedule == "oneshot":
        state["masks"] = prune_unstructured(model, method="magnitude", sparsity=final_sparsity, where=where)
        state["sparsity"] = final_sparsity
    log = []

    def callback(step, m, loss):
        if schedule == "gradual":
            s = gmp_sparsity(step + 1, final_sparsity=final_sparsity, begin_step=begin, end_step=end, every=every)
            if s > state["sparsity"]:
                state["masks"] = prune_unstructured(m, method="magnitude", sparsity=s, where=where)
                state["sparsity"] = s
        apply_masks(m, state["masks"])
        log.append(state["sparsity"])

    hist = train(model, train_tokens, val_tokens, cfg, progress=progress, callback=callback, desc=f"prune:{schedule}")
    return hist, log


def _train_classifier(model, masks, x, y, *, epochs: int, lr: float, batch_size: int, seed: int) -> None:
    """Adam on cross-entropy, mini-batches in a seeded order; masked weights are re-zeroed every step."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(perm), batch_size):
            idx = perm[i : i + batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            apply_masks(model, masks)
    model.eval()


def lottery_ticket(
    features: torch.Tensor,
    labels: torch.Tensor,
    train: torch.Tensor,
    *,
    hidden: tuple[int, ...] = (300, 100),
    rounds: int = 8,
    prune_frac: float = 0.5,
    epochs: int = 8,
    lr: float = 1.2e-3,
    batch_size: int = 60,
    seed: int = 0,
) -> list[dict]:
    """Frankle & Carbin (2019): iterative magnitude pruning with rewinding, on an MLP classifier.

    An MLP ``in -> hidden... -> classes`` (their LeNet-300-100 shape) is trained on the rows
    where ``train`` is True. Each round prunes ``prune_frac`` of the remaining weights of
    every layer by magnitude (half that rate for the output layer, as in the paper),
    **rewinds** the survivors to their initial values and retrains. Controls at every
    round: the same mask with a fresh random init, and a random mask of the same per-layer
    sparsity on the original init. Returns one row per round: the fraction of weights
    remaining and the held-out accuracy of each network.
    """
    prune_frac = check_sparsity(prune_frac, "prune_frac")
    check_int("rounds", rounds, min=1)
    if features.dim() != 2 or labels.shape != (features.shape[0],) or train.shape != labels.shape:
        raise ValueError("features must be (N, D), labels and train (N,)")
    x_tr, y_tr, x_te, y_te = features[train], labels[train], features[~train], labels[~train]
    sizes = (features.shape[1], *hidden, int(labels.max()) + 1)

    def make(init_seed):
        torch.manual_seed(init_seed)
        layers = []
        for a, b in zip(sizes, sizes[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        return nn.Sequential(*layers[:-1])

    def run(init_seed, masks, state=None):
        model = make(init_seed)
        if state is not None:
            model.load_state_dict(state)
        apply_masks(model, masks)
        _train_classifier(model, masks, x_tr, y_tr, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed)
        with torch.no_grad():
            return model, (model(x_te).argmax(1) == y_te).float().mean().item()

    init = make(seed).state_dict()
    names = [n for n, m in make(seed).named_modules() if isinstance(m, nn.Linear)]
    rates = [prune_frac] * (len(names) - 1) + [prune_frac / 2]
    masks = {n: torch.ones_like(init[f"{n}.weight"], dtype=torch.bool) for n in names}
    gen = torch.Generator().manual_seed(seed + 1)
    rows = []
    for r in range(rounds):
        ticket, acc = run(seed, masks, init)
        random_masks = {n: random_mask(m, 1 - m.float().mean().item(), generator=gen) for n, m in masks.items()}
        rows.append(
            {
                "round": r,
                "remaining": sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values()),
                "ticket": acc,
                "reinit": run(seed + 1000 + r, masks)[1],
                "random mask": run(seed, random_masks, init)[1],
            }
        )
        for n, rate in zip(names, rates):  # prune the smallest surviving trained weights of each layer
            w = ticket.get_submodule(n).weight.detach().abs().masked_fill(~masks[n], float("inf"))
            k = round(rate * int(masks[n].sum()))
            masks[n] = masks[n] & _lowest_k_mask(w.reshape(-1), k).view_as(w)
    return rows
