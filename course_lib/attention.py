r"""Sparse attention: masks you can see, an O(n·w) kernel, and a rolling KV cache (chapter 03).

Causal attention lets query :math:`i` read every key :math:`j \le i`: :math:`n(n+1)/2` score
pairs for a sequence of :math:`n` tokens, so time grows as :math:`n^2`. A **sparse pattern**
keeps only some pairs. Everything here is driven by one object, :class:`SparsePattern`, whose
:meth:`~SparsePattern.allowed` predicate says whether query position ``i`` may read key
position ``j``:

.. math::
    \text{allowed}(i, j) = \big(\text{local}(i, j) \lor \text{global}(i, j) \lor
    \text{random}(i, j)\big) \land (j \le i \text{ if causal})

* **local** — ``sliding_window``: :math:`0 \le i - j < w` (Mistral; bidirectional
  :math:`|i - j| < w`, Longformer); ``dilated``: :math:`i - j = k\,d`, :math:`0 \le k < w`
  (Longformer's dilated window); ``block_sparse``: the window at block granularity, query
  block :math:`I` reads key blocks :math:`I - w/b < J \le I` (Sparse Transformer, BigBird);
  ``dense``: everything.
* **global** — the first ``n_global`` tokens are read by every query and (bidirectional)
  read every key (Longformer, BigBird; StreamingLLM's "attention sinks" when causal).
* **random** — each query block reads ``n_random_blocks`` random earlier key blocks (BigBird).

The same predicate builds the boolean masks you look at (:func:`sliding_window_mask` and
friends, :meth:`SparsePattern.mask`), the block layout the kernel computes
(:meth:`SparsePattern.block_layout`), the ``mask_mod`` of PyTorch's ``flex_attention``, and
the masks of the rolling KV cache — so they cannot disagree.

Implementations (all equal to :func:`dense_attention` with the pattern's mask, to float
tolerance; ``tests/test_attention.py`` checks each against ``F.scaled_dot_product_attention``):

* :func:`dense_attention` — the reference: :math:`\mathrm{softmax}(QK^\top/\sqrt{d} + M)\,V`,
  materialising the :math:`n \times n` scores.
* :func:`block_sparse_attention` — the O(n·w) kernel: cut queries and keys into blocks of
  ``b``; for each query block gather only the key blocks the layout marks active and run
  attention on those (memory :math:`O(n \cdot (w + b))`, never :math:`n^2`). This is the
  BlockMask idea of FlexAttention and of block-sparse GPU kernels, in plain PyTorch.
* :func:`flex_sparse_attention` — the same pattern through ``torch.nn.attention.flex_attention``,
  compiled where ``torch.compile`` works (optional: never required).
* :class:`RollingKVCache` — decoding with a window needs only the last :math:`w` keys: a ring
  buffer of :math:`w` slots (Mistral's rolling buffer cache) plus the global tokens.

:class:`SparseAttention` plugs all this into the patient: ``ModelConfig(attention="sparse",
attention_options={"pattern": "sliding_window", "window": 64, ...})``. Its parameters are
named like :class:`course_lib.model.Attention`'s, so a full-attention checkpoint loads unchanged.

The chapter's runs — the time/memory sweep, and the precomputed results (the tiny recipe
trained with sliding windows; the zoo's full-attention patients with windows switched on) —
are in :mod:`course_lib.experiments.attention`, built by one deterministic command::

    python -m course_lib.build attention      # ~20 min on an idle 2-core CPU -> zoo_data/attention_quality.json
    python -m course_lib.build attention --only "window 16"   # one item (items are cached; run several at once)
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from plotly.subplots import make_subplots

from course_lib import viz
from course_lib.checks import check_bool, check_choice, check_int, check_keys, check_tensor
from course_lib.data import eval_batches
from course_lib.model import Attention, ModelConfig

KINDS = ("dense", "sliding_window", "dilated", "block_sparse")
IMPLS = ("blocked", "masked", "flex")


def _positions(seq_len: int, device=None):
    i = torch.arange(seq_len, device=device)
    return i[:, None], i[None, :]  # queries (T, 1), keys (1, T)


# --------------------------------------------------------------------------- predicates
# Each is a function of broadcastable integer tensors of query positions i and key positions j.


def _causal(i, j):
    return j <= i


def _window(i, j, window: int, causal: bool):
    diff = i - j
    return (diff >= 0) & (diff < window) if causal else diff.abs() < window


def _dilated(i, j, window: int, dilation: int, causal: bool):
    diff = i - j if causal else (i - j).abs()
    return (diff >= 0) & (diff % dilation == 0) & (diff < window * dilation)


def _block_window(i, j, window_blocks: int, block_size: int, causal: bool):
    return _window(i // block_size, j // block_size, window_blocks, causal)


def _global(i, j, n_global: int):
    return (j < n_global) | (i < n_global)


def _in_layout(i, j, layout, block_size: int):
    return layout[i // block_size, j // block_size]


# --------------------------------------------------------------------------- mask builders


def causal_mask(seq_len: int, *, device=None) -> torch.Tensor:
    """(T, T) bool, True where query i may read key j: the lower triangle, j <= i."""
    check_int("seq_len", seq_len, min=1)
    return _causal(*_positions(seq_len, device))


def sliding_window_mask(seq_len: int, window: int, *, causal: bool = True, device=None) -> torch.Tensor:
    """Each query reads the ``window`` most recent keys, itself included: 0 <= i - j < w.

    Bidirectional (``causal=False``): |i - j| < w, i.e. w - 1 keys on each side (Longformer's
    window of size W corresponds to w = W/2 + 1).
    """
    check_int("seq_len", seq_len, min=1)
    check_int("window", window, min=1)
    return _window(*_positions(seq_len, device), window, causal)


def dilated_window_mask(seq_len: int, window: int, dilation: int, *, causal: bool = True, device=None):
    """``window`` keys spaced ``dilation`` apart: i - j in {0, d, 2d, ..., (w-1)d}."""
    check_int("seq_len", seq_len, min=1)
    check_int("window", window, min=1)
    check_int("dilation", dilation, min=1)
    return _dilated(*_positions(seq_len, device), window, dilation, causal)


def global_tokens_mask(seq_len: int, n_global: int, *, device=None) -> torch.Tensor:
    """The rows and columns of the first ``n_global`` tokens (combine with ``|`` and ``&``)."""
    check_int("seq_len", seq_len, min=1)
    check_int("n_global", n_global, min=0, max=seq_len)
    return _global(*_positions(seq_len, device), n_global)


def _check_blocks(seq_len: int, block_size: int) -> int:
    check_int("seq_len", seq_len, min=1)
    check_int("block_size", block_size, min=1)
    if seq_len % block_size:
        raise ValueError(
            f"block_size ({block_size}) must divide seq_len ({seq_len}): blocks tile the sequence "
            f"(pick a seq_len that is a multiple of {block_size})"
        )
    return seq_len // block_size


def random_block_layout(n_blocks: int, n_random: int, *, causal: bool = True, seed: int = 0) -> torch.Tensor:
    """(nb, nb) bool: each query block I reads ``n_random`` random key blocks (BigBird).

    Causal: chosen among the blocks strictly before I (all of them when fewer exist);
    bidirectional: among all blocks but I. Row I depends only on (seed, I), so a layout
    for more blocks extends, never changes, a shorter one (decoding relies on this).
    """
    check_int("n_blocks", n_blocks, min=1)
    check_int("n_random", n_random, min=0)
    return _random_layout(n_blocks, n_random, causal, seed).clone()


@functools.lru_cache(maxsize=64)
def _random_layout(n_blocks: int, n_random: int, causal: bool, seed: int) -> torch.Tensor:
    layout = torch.zeros(n_blocks, n_blocks, dtype=torch.bool)
    if n_random == 0:
        return layout
    for row in range(n_blocks):
        cand = torch.arange(row) if causal else torch.cat([torch.arange(row), torch.arange(row + 1, n_blocks)])
        if len(cand) == 0:
            continue
        g = torch.Generator().manual_seed(seed * 1_000_003 + row)
        layout[row, cand[torch.randperm(len(cand), generator=g)[:n_random]]] = True
    return layout


def random_blocks_mask(
    seq_len: int, block_size: int, n_random: int, *, causal: bool = True, seed: int = 0, device=None
) -> torch.Tensor:
    """Token-level mask of :func:`random_block_layout` (block_size must divide seq_len)."""
    nb = _check_blocks(seq_len, block_size)
    layout = random_block_layout(nb, n_random, causal=causal, seed=seed).to(device)
    return block_sparse_mask(layout, block_size)


def block_local_layout(n_blocks: int, window_blocks: int, *, causal: bool = True) -> torch.Tensor:
    """(nb, nb) bool: query block I reads key blocks I - window_blocks < J <= I."""
    check_int("n_blocks", n_blocks, min=1)
    check_int("window_blocks", window_blocks, min=1)
    i = torch.arange(n_blocks)
    return _window(i[:, None], i[None, :], window_blocks, causal)


def block_sparse_mask(layout: torch.Tensor, block_size: int) -> torch.Tensor:
    """Expand a (nb, nb) block layout to the (nb·b, nb·b) token mask: every entry of a block."""
    if not torch.is_tensor(layout) or layout.dtype != torch.bool or layout.dim() != 2:
        raise TypeError("layout must be a 2-D bool tensor (query blocks x key blocks)")
    check_int("block_size", block_size, min=1)
    return layout.repeat_interleave(block_size, 0).repeat_interleave(block_size, 1)


# --------------------------------------------------------------------------- counting


def causal_pairs(seq_len: int) -> int:
    """Pairs a causal query-key product needs: n(n+1)/2."""
    check_int("seq_len", seq_len, min=1)
    return seq_len * (seq_len + 1) // 2


def sliding_window_pairs(seq_len: int, window: int, *, causal: bool = True) -> int:
    r"""Allowed pairs of a sliding window, in closed form.

    Causal: row i reads :math:`\min(i+1, w)` keys, so the sum is :math:`n(n+1)/2` when
    :math:`w \ge n`, else :math:`w\,n - w(w-1)/2`. Bidirectional: the band
    :math:`|i-j| < w` holds :math:`n + 2\sum_{k=1}^{w'-1}(n-k)` pairs with :math:`w' = \min(w, n)`.
    """
    check_int("seq_len", seq_len, min=1)
    check_int("window", window, min=1)
    n, w = seq_len, min(window, seq_len)
    if causal:
        return w * n - w * (w - 1) // 2
    return n + 2 * ((w - 1) * n - (w - 1) * w // 2)


def dilated_pairs(seq_len: int, window: int, dilation: int) -> int:
    r"""Allowed pairs of a causal dilated window: row i reads :math:`\min(w, \lfloor i/d \rfloor + 1)` keys."""
    check_int("seq_len", seq_len, min=1)
    check_int("window", window, min=1)
    check_int("dilation", dilation, min=1)
    m = min(seq_len, window * dilation)  # rows before the window is full
    q, r = divmod(m, dilation)
    return dilation * q * (q + 1) // 2 + r * (q + 1) + (seq_len - m) * window


def density(mask: torch.Tensor) -> float:
    """Fraction of the n x m score matrix a mask keeps."""
    return mask.sum().item() / mask.numel()


def attention_flops(pairs: int, head_dim: int, n_heads: int = 1) -> int:
    r"""FLOPs of :math:`QK^\top` and :math:`AV` over ``pairs`` (query, key) pairs: 2·2·d per pair and head."""
    return 4 * pairs * head_dim * n_heads


# --------------------------------------------------------------------------- the pattern


@dataclass(frozen=True)
class SparsePattern:
    """Which keys each query reads; see the module docstring for the formula.

    ``window`` counts keys (tokens) and must be a multiple of ``block_size`` for
    ``block_sparse``; ``block_size`` also tiles the sequence for the random blocks and for
    :func:`block_sparse_attention`.
    """

    kind: str = "sliding_window"
    window: int = 64
    dilation: int = 1
    n_global: int = 0
    n_random_blocks: int = 0
    block_size: int = 64
    causal: bool = True
    seed: int = 0

    def __post_init__(self):
        check_choice("pattern", self.kind, KINDS)
        check_int("window", self.window, min=1)
        check_int("dilation", self.dilation, min=1)
        check_int("n_global", self.n_global, min=0)
        check_int("n_random_blocks", self.n_random_blocks, min=0)
        check_int("block_size", self.block_size, min=1)
        check_int("seed", self.seed, min=0)
        check_bool("causal", self.causal)
        if self.dilation > 1 and self.kind != "dilated":
            raise ValueError(
                f"dilation applies to pattern 'dilated' only, got dilation={self.dilation} with {self.kind!r}"
            )
        if self.kind == "block_sparse" and self.window % self.block_size:
            raise ValueError(
                f"block_sparse needs window ({self.window}) to be a multiple of block_size ({self.block_size})"
            )

    # -- construction ---------------------------------------------------------------

    @classmethod
    def from_options(cls, options: dict) -> SparsePattern:
        """From ``ModelConfig.attention_options`` (key ``pattern`` names the kind)."""
        allowed = ["pattern", "impl"] + [k for k in cls.__dataclass_fields__ if k != "kind"]
        opts = check_keys("attention_options", options, allowed)
        opts.pop("impl", None)
        if "pattern" in opts:
            opts["kind"] = opts.pop("pattern")
        return cls(**opts)

    def to_options(self) -> dict:
        d = asdict(self)
        d["pattern"] = d.pop("kind")
        return d

    @property
    def uses_blocks(self) -> bool:
        """True when part of the pattern is defined per block (block-sparse window, random blocks)."""
        return self.kind == "block_sparse" or self.n_random_blocks > 0

    @property
    def lookback(self) -> int | None:
        """Largest i - j the local part reads; None when unbounded (dense, random blocks)."""
        if self.kind == "dense" or self.n_random_blocks > 0:
            return None
        if self.kind == "sliding_window":
            return self.window - 1
        if self.kind == "dilated":
            return (self.window - 1) * self.dilation
        return self.window - 1  # block_sparse: w/b blocks back from the end of a block

    def describe(self) -> str:
        parts = {
            "dense": "dense",
            "sliding_window": f"window {self.window}",
            "dilated": f"window {self.window} x dilation {self.dilation}",
            "block_sparse": f"block-local {self.window // self.block_size} blocks of {self.block_size}",
        }[self.kind]
        if self.n_global:
            parts += f" + {self.n_global} global"
        if self.n_random_blocks:
            parts += f" + {self.n_random_blocks} random blocks of {self.block_size}"
        return parts + ("" if self.causal else " (bidirectional)")

    # -- the predicate -----------------------------------------------------------------

    def check_seq_len(self, seq_len: int) -> None:
        """Raise a ValueError when ``seq_len`` is not a valid length for this pattern."""
        check_int("seq_len", seq_len, min=1)
        if self.n_global > seq_len:
            raise ValueError(f"n_global ({self.n_global}) must be <= seq_len ({seq_len})")

    def n_blocks(self, n_positions: int) -> int:
        return -(-n_positions // self.block_size)

    def random_layout(self, n_positions: int, device=None) -> torch.Tensor | None:
        """The random-block layout covering ``n_positions`` (None without random blocks)."""
        if not self.n_random_blocks:
            return None
        return _random_layout(self.n_blocks(n_positions), self.n_random_blocks, self.causal, self.seed).to(device)

    def allowed(self, i, j, layout=None):
        """Bool tensor: may query position ``i`` read key position ``j`` (broadcastable ints)?

        ``layout`` is :meth:`random_layout` for patterns with random blocks.
        """
        if self.kind == "dense":
            keep = torch.ones_like(i - j, dtype=torch.bool)
        elif self.kind == "sliding_window":
            keep = _window(i, j, self.window, self.causal)
        elif self.kind == "dilated":
            keep = _dilated(i, j, self.window, self.dilation, self.causal)
        else:
            keep = _block_window(i, j, self.window // self.block_size, self.block_size, self.causal)
        if self.n_global:
            keep = keep | _global(i, j, self.n_global)
        if self.n_random_blocks:
            if layout is None:
                raise ValueError("this pattern has random blocks: pass layout=pattern.random_layout(n_positions)")
            keep = keep | _in_layout(i, j, layout, self.block_size)
        return keep & _causal(i, j) if self.causal else keep

    def mask_mod(self, n_positions: int, device=None):
        """``mask_mod(b, h, q_idx, kv_idx)`` for ``flex_attention`` (the same predicate)."""
        layout = self.random_layout(n_positions, device)

        def mask_mod(b, h, q_idx, kv_idx):
            return self.allowed(q_idx, kv_idx, layout)

        return mask_mod

    def mask(self, seq_len: int, *, device=None) -> torch.Tensor:
        """The full (T, T) bool mask — for pictures and the dense reference, O(T²) memory."""
        self.check_seq_len(seq_len)
        return self.allowed(*_positions(seq_len, device), self.random_layout(seq_len, device))

    # -- blocks, counts, FLOPs ---------------------------------------------------------------

    def block_layout(self, seq_len: int, block_size: int | None = None) -> torch.Tensor:
        """(nb, nb) bool: blocks of the score matrix holding at least one allowed pair.

        Computed per block, never per token: a block pair (I, J) covers the position
        differences I·b - J·b + [-(b-1), b-1], so the local part is active when that range
        meets the allowed differences. Exact when b divides T (a superset otherwise, which
        costs time, not correctness: the kernel masks inside blocks).
        """
        check_int("seq_len", seq_len, min=1)
        b = self.block_size if block_size is None else check_int("block_size", block_size, min=1)
        nb = -(-seq_len // b)
        blk = torch.arange(nb)
        I, J = blk[:, None], blk[None, :]  # noqa: E741 (block indices)
        lo, hi = (I - J) * b - (b - 1), (I - J) * b + (b - 1)  # range of i - j inside the block pair
        if self.kind == "dense":
            local = torch.ones(nb, nb, dtype=torch.bool)
        elif self.kind in ("sliding_window", "dilated"):
            d = self.dilation
            m_lo, m_hi = (0 if self.causal else -(self.window - 1)), self.window - 1  # allowed i - j = m·d
            first = torch.maximum(torch.div(lo + d - 1, d, rounding_mode="floor"), torch.tensor(m_lo))
            last = torch.minimum(torch.div(hi, d, rounding_mode="floor"), torch.tensor(m_hi))
            local = first <= last
        else:  # block_sparse: block indices (at the pattern's block size bs) of the pair's extreme positions
            bs, w = self.block_size, self.window // self.block_size
            q_first, k_first = I * b // bs, J * b // bs
            q_last = torch.clamp(I * b + b - 1, max=seq_len - 1) // bs
            k_last = torch.clamp(J * b + b - 1, max=seq_len - 1) // bs
            dmin, dmax = q_first - k_last, q_last - k_first  # range of block differences in the pair
            local = (dmax >= 0) & (dmin < w) if self.causal else (dmax > -w) & (dmin < w)
        keep = local
        if self.n_global:
            keep = keep | (J * b < self.n_global) | (I * b < self.n_global)
        if self.n_random_blocks:
            if b != self.block_size:
                raise ValueError(
                    f"with random blocks the kernel's block_size must be the pattern's ({self.block_size}), got {b}"
                )
            keep = keep | self.random_layout(seq_len)
        if self.causal:
            keep = keep & (J <= I)
        return keep

    def plan(self, seq_len: int, block_size: int | None = None, device=None) -> BlockPlan:
        """The gather plan of :func:`block_sparse_attention` (cached per pattern, length and device)."""
        b = self.block_size if block_size is None else block_size
        plan = _plan(self, seq_len, b)
        if device is None or torch.device(device) == plan.kv_index.device:
            return plan
        return _plan_on(self, seq_len, b, str(torch.device(device)))

    def row_counts(self, seq_len: int) -> torch.Tensor:
        """(T,) int: how many keys each query reads — exact, without the T x T mask.

        Memory O(T·m·b) for m key blocks per query block: O(T·(w + b)) for windows; a
        bidirectional pattern's global rows read every block, which widens m to all of them.
        """
        check_int("seq_len", seq_len, min=1)
        return _plan(self, seq_len, self.block_size).mask.sum(-1).flatten()[:seq_len]

    def pairs(self, seq_len: int) -> int:
        """Allowed (query, key) pairs: closed form for plain causal windows, else counted per block."""
        check_int("seq_len", seq_len, min=1)
        if self.causal and not self.n_global and not self.n_random_blocks:
            if self.kind == "dense":
                return causal_pairs(seq_len)
            if self.kind == "sliding_window":
                return sliding_window_pairs(seq_len, self.window)
            if self.kind == "dilated":
                return dilated_pairs(seq_len, self.window, self.dilation)
        return int(self.row_counts(seq_len).sum())

    def mean_context(self, seq_len: int) -> float:
        """Average number of keys a query reads (what ``TinyLM.flops_per_token`` charges)."""
        return self.pairs(seq_len) / seq_len

    def stats(self, seq_len: int, *, head_dim: int = 64, n_heads: int = 1) -> dict:
        """Pairs, density (of the n² square), and attention FLOPs vs a dense causal kernel."""
        pairs = self.pairs(seq_len)
        dense = causal_pairs(seq_len) if self.causal else seq_len * seq_len
        return {
            "pairs": pairs,
            "density": pairs / seq_len**2,
            "mean_context": pairs / seq_len,
            "flops": attention_flops(pairs, head_dim, n_heads),
            "flops_dense": attention_flops(dense, head_dim, n_heads),
            "flops_vs_dense": pairs / dense,
        }


@dataclass
class BlockPlan:
    """Which key blocks each query block reads (FlexAttention's BlockMask, in plain tensors).

    ``kv_index`` (nb, m): the active key blocks of each query block, padded to the widest
    row m; ``mask`` (nb, b, m·b): allowed (query, gathered key) pairs, padding and
    positions past the sequence excluded. Memory O(n·m·b) = O(n·(w + b)).
    """

    seq_len: int
    block_size: int
    kv_index: torch.Tensor
    kv_count: torch.Tensor
    mask: torch.Tensor

    @functools.cached_property
    def bias(self) -> torch.Tensor:
        """(nb, b, m·b) float: 0 where allowed, -inf elsewhere (added to the scores)."""
        return torch.zeros(self.mask.shape, device=self.mask.device).masked_fill_(~self.mask, float("-inf"))

    @property
    def n_blocks(self) -> int:
        return self.kv_index.shape[0]

    @property
    def keys_per_block(self) -> int:
        return self.kv_index.shape[1] * self.block_size

    def to(self, device) -> BlockPlan:
        return BlockPlan(
            self.seq_len, self.block_size, self.kv_index.to(device), self.kv_count.to(device), self.mask.to(device)
        )


@functools.lru_cache(maxsize=32)
def _plan(pattern: SparsePattern, seq_len: int, b: int) -> BlockPlan:
    layout = pattern.block_layout(seq_len, b)  # (nb, nb)
    nb = layout.shape[0]
    count = layout.sum(1)  # (nb,)
    m = int(count.max())
    order = torch.argsort((~layout).to(torch.int8), dim=1, stable=True)[:, :m]  # active blocks first, ascending
    valid = torch.arange(m)[None, :] < count[:, None]  # (nb, m)
    kpos = (order[:, :, None] * b + torch.arange(b)).reshape(nb, m * b)  # (nb, m·b) key positions
    qpos = torch.arange(nb * b).view(nb, b).clamp(max=seq_len - 1)  # padded queries act as the last one
    keep = pattern.allowed(qpos[:, :, None], kpos[:, None, :], pattern.random_layout(nb * b))
    keep &= (valid.repeat_interleave(b, 1) & (kpos < seq_len))[:, None, :]
    return BlockPlan(seq_len, b, order, count, keep)


@functools.lru_cache(maxsize=8)
def _plan_on(pattern: SparsePattern, seq_len: int, b: int, device: str) -> BlockPlan:
    return _plan(pattern, seq_len, b).to(device)


# --------------------------------------------------------------------------- attention


def _check_qkv(q, k, v) -> tuple[int, int, int, int, int]:
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, t, dims=("batch", "heads", "seq_len", "head_dim"))
    b, h, t, d = q.shape
    if k.shape != v.shape or k.shape[0] != b or k.shape[3] != d:
        raise ValueError(f"k and v must be (batch, kv_heads, seq_len, head_dim) like q {tuple(q.shape)}")
    if h % k.shape[1]:
        raise ValueError(f"query heads ({h}) must be a multiple of key/value heads ({k.shape[1]})")
    return b, h, k.shape[1], t, d


def dense_attention(q, k, v, mask=None, *, scale: float | None = None, return_weights: bool = False):
    r"""Reference attention, everything explicit: :math:`\mathrm{softmax}(QK^\top/\sqrt{d} + M)\,V`.

    q (B, H, T, d); k, v (B, H_kv, S, d) with H a multiple of H_kv (GQA); ``mask`` a bool
    (T, S) tensor (True = may attend) or None. Builds the (B, H, T, S) scores: O(T·S) memory.
    """
    _, h, hkv, _, d = _check_qkv(q, k, v)
    if h != hkv:
        k, v = k.repeat_interleave(h // hkv, dim=1), v.repeat_interleave(h // hkv, dim=1)
    if mask is not None:  # a float or int mask would be read as something else, a wrong size broadcast
        check_tensor("mask", mask, shape=(q.shape[-2], k.shape[-2]), dtype=torch.bool)
    scores = q @ k.transpose(-2, -1) * (scale if scale is not None else 1 / math.sqrt(d))  # (B, H, T, S)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(-1)
    out = weights @ v  # (B, H, T, d)
    return (out, weights) if return_weights else out


def sdpa_attention(q, k, v, mask=None, *, is_causal: bool = False):
    """``F.scaled_dot_product_attention`` with a bool mask and GQA — PyTorch's fused kernel."""
    _, h, hkv, _, _ = _check_qkv(q, k, v)
    if h != hkv:
        k, v = k.repeat_interleave(h // hkv, dim=1), v.repeat_interleave(h // hkv, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)


def block_sparse_attention(q, k, v, pattern: SparsePattern, *, block_size: int | None = None):
    r"""Attention under ``pattern`` without the n x n matrix: O(n·(w + b)) time and memory.

    1. Cut the sequence into nb = ⌈T/b⌉ blocks (padding the tail).
    2. From the block layout, list each query block's active key blocks (``pattern.plan``).
    3. Gather those key/value blocks: (B, H_kv, nb, m·b, d) — m blocks instead of nb.
    4. Per query block: :math:`\mathrm{softmax}(Q_I K_{(I)}^\top/\sqrt{d} + \text{bias}_I)\,V_{(I)}`,
       the bias being 0 where allowed and :math:`-\infty` elsewhere inside the gathered blocks.

    GQA without copies: the H/H_kv query heads sharing a key head are stacked along the
    query axis of their block, since they read the same keys under the same mask.
    """
    bsz, h, hkv, t, d = _check_qkv(q, k, v)
    if k.shape[2] != t:
        raise ValueError(f"block_sparse_attention needs as many keys as queries, got {t} and {k.shape[2]}")
    plan = pattern.plan(t, block_size, q.device)
    b, nb, m, rep = plan.block_size, plan.n_blocks, plan.kv_index.shape[1], h // hkv
    pad = nb * b - t
    if pad:
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
    idx = plan.kv_index.flatten()  # (nb·m,)
    kg = k.view(bsz, hkv, nb, b, d).index_select(2, idx).view(bsz, hkv, nb, m * b, d)  # gathered keys
    vg = v.view(bsz, hkv, nb, b, d).index_select(2, idx).view(bsz, hkv, nb, m * b, d)
    qg = (q / math.sqrt(d)).view(bsz, hkv, rep, nb, b, d).transpose(2, 3).reshape(bsz, hkv, nb, rep * b, d)
    scores = qg @ kg.transpose(-2, -1)  # (B, H_kv, nb, rep·b, m·b)
    scores = scores.view(bsz, hkv, nb, rep, b, m * b).add_(plan.bias.to(q.dtype)[:, None])  # bias (nb, 1, b, m·b)
    y = scores.softmax(-1).view(bsz, hkv, nb, rep * b, m * b) @ vg  # (B, H_kv, nb, rep·b, d)
    y = y.view(bsz, hkv, nb, rep, b, d).transpose(2, 3).reshape(bsz, h, nb * b, d)
    return y[:, :, :t]


def sliding_window_attention(q, k, v, window: int, *, n_global: int = 0, block_size: int = 64):
    """Causal sliding-window (+ global tokens) attention through :func:`block_sparse_attention`."""
    pattern = SparsePattern("sliding_window", window=window, n_global=n_global, block_size=block_size)
    return block_sparse_attention(q, k, v, pattern)


# --------------------------------------------------------------------------- flex_attention (optional)


@functools.lru_cache(maxsize=1)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


@functools.lru_cache(maxsize=16)
def _flex_block_mask(pattern: SparsePattern, seq_len: int, device: str, block: int):
    from torch.nn.attention.flex_attention import create_block_mask

    return create_block_mask(
        pattern.mask_mod(seq_len, device), None, None, seq_len, seq_len, device=device, BLOCK_SIZE=block
    )


def flex_sparse_attention(q, k, v, pattern: SparsePattern, *, compiled: bool = True, block: int = 128):
    """The pattern through ``torch.nn.attention.flex_attention`` (PyTorch >= 2.5).

    ``compiled=True`` runs the torch.compile'd kernel (first call compiles: tens of seconds
    on a CPU); ``compiled=False`` is the eager fallback, slow but handy for checking.
    """
    import warnings

    from torch.nn.attention.flex_attention import flex_attention

    _, h, hkv, t, _ = _check_qkv(q, k, v)
    bm = _flex_block_mask(pattern, t, str(q.device), block)
    fn = _compiled_flex() if compiled else flex_attention
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
        return fn(q, k, v, block_mask=bm, enable_gqa=h != hkv)


def flex_available(*, compiled: bool = True) -> tuple[bool, str]:
    """(works, why): can flex_attention (compiled) run here? Tries a tiny case; never raises."""
    try:
        x = torch.randn(1, 1, 128, 16)
        y = flex_sparse_attention(x, x, x, SparsePattern("sliding_window", window=16), compiled=compiled)
        ref = dense_attention(x, x, x, sliding_window_mask(128, 16))
        if not torch.allclose(y, ref, atol=1e-4):
            return False, "flex_attention ran but disagreed with the reference"
        return True, "ok"
    except Exception as e:  # compiler missing, unsupported platform, old torch ...
        return False, f"{type(e).__name__}: {str(e).strip().splitlines()[0][:160] if str(e).strip() else ''}"


# --------------------------------------------------------------------------- rolling KV cache


class RollingKVCache:
    r"""KV cache for windowed attention: a ring of ``window`` slots plus the global tokens.

    Mistral's rolling buffer: the key of position p lives in slot :math:`p \bmod W`, overwriting
    position :math:`p - W`, which no later query reads. Memory is
    :math:`2 \cdot B \cdot H_{kv} \cdot (W + G) \cdot d` numbers whatever the length decoded.
    ``window`` = the pattern's lookback + 1 (or the whole ``max_len`` for patterns whose
    reach is unbounded: dense, random blocks).
    """

    def __init__(
        self,
        batch_size: int,
        n_kv_heads: int,
        head_dim: int,
        *,
        window: int,
        n_global: int = 0,
        dtype=torch.float32,
        device=None,
    ):
        for name, val, lo in (
            ("batch_size", batch_size, 1),
            ("n_kv_heads", n_kv_heads, 1),
            ("head_dim", head_dim, 1),
            ("window", window, 1),
            ("n_global", n_global, 0),
        ):
            check_int(name, val, min=lo)
        shape = (batch_size, n_kv_heads, window, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.slot_pos = torch.full((window,), -1, dtype=torch.long, device=device)  # position held by each slot
        gshape = (batch_size, n_kv_heads, n_global, head_dim)
        self.gk = torch.zeros(gshape, dtype=dtype, device=device)
        self.gv = torch.zeros(gshape, dtype=dtype, device=device)
        self.pos = 0  # absolute position of the next token
        self.lookback: int | None = None  # the served pattern's reach (None: unbounded), set by attend

    @property
    def window(self) -> int:
        return self.k.shape[2]

    @property
    def n_global(self) -> int:
        return self.gk.shape[2]

    def nbytes(self) -> int:
        return sum(t.nbytes for t in (self.k, self.v, self.gk, self.gv))

    def truncate(self, length: int) -> None:
        r"""Forget every position from ``length`` on (speculative decoding's rollback).

        The global tokens below ``length`` stay; ring slots holding forgotten positions are
        emptied, so the next query cannot read a rejected key. A ring cannot give back what
        it has overwritten: a query at position :math:`L` reads keys back to
        :math:`L - \text{lookback}`, and when the slots of those positions were reused by the
        positions being forgotten, decoding on would be silently wrong — that raises a
        ``ValueError`` instead. With ``window`` = lookback + 1 slots a full ring can roll back
        one position; patterns of unbounded reach keep every position and can roll back to any.
        """
        check_int("length", length, min=0, max=self.pos)
        if length == self.pos:
            return
        reach = length if self.lookback is None else self.lookback
        lo = max(length - reach, self.n_global)  # first position the next query reads from the ring
        need = torch.arange(lo, length, device=self.slot_pos.device)
        missing = need[~torch.isin(need, self.slot_pos)]
        if len(missing):
            raise ValueError(
                f"length {length}: this RollingKVCache holds {self.pos} positions in a ring of {self.window} slots and "
                f"has overwritten position {int(missing[0])}, which the next query reads (lookback {reach}); "
                f"it can roll back at most {max(self.window - reach, 0)} positions once full"
            )
        self.slot_pos[self.slot_pos >= length] = -1
        self.pos = length

    def attend(self, q, k, v, pattern: SparsePattern, layout=None):
        """Attend queries (B, H, t, d) at positions pos..pos+t-1 and store their keys.

        Long inputs go in chunks of at most ``window`` tokens (Mistral's chunked prefill), so
        the scores never exceed (window x (G + 2·window)).
        """
        self.lookback = pattern.lookback
        outs = []
        for s in range(0, q.shape[2], self.window):
            e = s + self.window
            outs.append(self._attend_chunk(q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], pattern, layout))
        return torch.cat(outs, dim=2)

    def _attend_chunk(self, q, k, v, pattern, layout):
        t, dev, g = q.shape[2], q.device, self.n_global
        qpos = torch.arange(self.pos, self.pos + t, device=dev)
        gpos = torch.arange(min(g, self.pos), device=dev)
        ring_pos = torch.where(self.slot_pos >= g, self.slot_pos, -1)  # global positions live in gk, not twice
        kpos = torch.cat([gpos, ring_pos, qpos])  # (S,)
        keys = torch.cat([self.gk[:, :, : len(gpos)], self.k, k], dim=2)  # (B, H_kv, S, d)
        values = torch.cat([self.gv[:, :, : len(gpos)], self.v, v], dim=2)
        mask = pattern.allowed(qpos[:, None], kpos.clamp(min=0)[None, :], layout) & (kpos >= 0)[None, :]
        y = sdpa_attention(q, keys, values, mask)  # (B, H, t, d)
        # store: global tokens forever, the rest in the ring (only the last `window` matter)
        n_g = max(0, min(g, self.pos + t) - self.pos)
        if n_g:
            self.gk[:, :, self.pos : self.pos + n_g] = k[:, :, :n_g]
            self.gv[:, :, self.pos : self.pos + n_g] = v[:, :, :n_g]
        keep = min(t, self.window)
        slots = qpos[-keep:] % self.window
        self.k[:, :, slots] = k[:, :, -keep:]
        self.v[:, :, slots] = v[:, :, -keep:]
        self.slot_pos[slots] = qpos[-keep:]
        self.pos += t
        return y


# --------------------------------------------------------------------------- the patient's layer


class SparseAttention(Attention):
    """Drop-in for :class:`course_lib.model.Attention` with a sparse pattern (chosen by config).

    ``ModelConfig(attention="sparse", attention_options={"pattern": ..., "window": ...,
    "dilation": ..., "n_global": ..., "n_random_blocks": ..., "block_size": ..., "seed": ...,
    "impl": "blocked" | "masked" | "flex"})``. Same parameters (q/k/v/o_proj) as the dense
    layer, so checkpoints move between the two. Random blocks differ per layer (seed +
    layer index). ``impl``: ``blocked`` = :func:`block_sparse_attention` (default, O(n·w)),
    ``masked`` = SDPA with the dense bool mask (O(n²) memory, fast at short lengths),
    ``flex`` = compiled ``flex_attention``.
    """

    def __init__(self, config: ModelConfig, layer_idx: int = 0):
        super().__init__(config, layer_idx)
        pattern, self.impl = self.pattern_of(config)
        self.pattern = replace(pattern, seed=pattern.seed + 1000 * layer_idx)
        self.max_seq_len = config.max_seq_len

    @staticmethod
    def pattern_of(config: ModelConfig) -> tuple[SparsePattern, str]:
        """(pattern, impl) from ``config.attention_options``, checked against the config."""
        opts = dict(config.attention_options)
        impl = check_choice("attention_options['impl']", opts.pop("impl", "blocked"), IMPLS)
        pattern = SparsePattern.from_options(opts)
        if not pattern.causal:
            raise ValueError("a language model's attention must be causal: attention_options['causal'] must be True")
        pattern.check_seq_len(config.max_seq_len)
        return pattern, impl

    @classmethod
    def check_config(cls, config: ModelConfig) -> None:
        """Called when a ``ModelConfig(attention="sparse", ...)`` is made: bad options fail there."""
        cls.pattern_of(config)

    def _layout(self, device):
        return self.pattern.random_layout(self.max_seq_len, device)

    def new_cache(self, batch_size: int, max_len: int, *, dtype=torch.float32, device=None) -> RollingKVCache:
        check_int("max_len", max_len, min=1)
        back = self.pattern.lookback
        window = max_len if back is None else min(back + 1, max_len)
        g = min(self.pattern.n_global, max_len) if back is not None else 0  # unbounded: the ring holds all
        return RollingKVCache(
            batch_size, self.n_kv_heads, self.head_dim, window=window, n_global=g, dtype=dtype, device=device
        )

    def mean_context(self, seq_len: int) -> float:
        """Keys a query reads on average under the pattern (fewer than full attention's (T + 1) / 2)."""
        return self.pattern.mean_context(seq_len)

    def forward(self, x, cos, sin, cache: RollingKVCache | None = None):  # x (B, T, C)
        b, t, _ = x.shape
        q, k, v = self.project(x, cos, sin)  # (B, H, T, d), (B, H_kv, T, d) x 2
        if cache is not None:
            if not isinstance(cache, RollingKVCache):
                raise TypeError(f"SparseAttention needs its own cache (layer.new_cache), got {type(cache).__name__}")
            y = cache.attend(q, k, v, self.pattern, self._layout(x.device))
        elif self.impl == "blocked":
            y = block_sparse_attention(q, k, v, self.pattern)
        elif self.impl == "masked":
            y = sdpa_attention(q, k, v, _cached_mask(self.pattern, t, str(x.device)))
        else:
            y = flex_sparse_attention(q, k, v, self.pattern)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, -1))  # (B, T, C)


@functools.lru_cache(maxsize=8)
def _cached_mask(pattern: SparsePattern, seq_len: int, device: str) -> torch.Tensor:
    return pattern.allowed(*_positions(seq_len, device), pattern.random_layout(seq_len, device))


def sparse_config(config: ModelConfig, **options) -> ModelConfig:
    """A copy of ``config`` with sparse attention: ``sparse_config(cfg, pattern="sliding_window", window=32)``."""
    pattern = SparsePattern.from_options(options)  # validates early
    impl = options.get("impl", "blocked")
    return replace(config, attention="sparse", attention_options={**pattern.to_options(), "impl": impl})


# --------------------------------------------------------------------------- analysis


def receptive_field(mask: torch.Tensor, n_layers: int, *, query: int = -1) -> torch.Tensor:
    r"""(n_layers, T) bool: positions whose information reaches ``query`` after 1..L layers.

    Layer 1 reads the keys in the query's row; each further layer reads the keys of those
    keys: :math:`r_{l+1} = (r_l M) > 0`. A causal window w reaches
    :math:`\min(T, L(w-1)+1)` positions back (Mistral's "theoretical attention span").
    """
    if not torch.is_tensor(mask) or mask.dtype != torch.bool or mask.dim() != 2 or mask.shape[0] != mask.shape[1]:
        raise TypeError("mask must be a square 2-D bool tensor")
    check_int("n_layers", n_layers, min=1)
    t = mask.shape[0]
    check_int("query", query, min=-t, max=t - 1)
    m = mask.float()
    reach = [mask[query]]
    for _ in range(n_layers - 1):
        reach.append((reach[-1].float() @ m) > 0)
    return torch.stack(reach)


@torch.no_grad()
def loss_by_position(model, tokens, *, seq_len: int, batch_size: int = 16, max_batches: int | None = 8) -> torch.Tensor:
    """(seq_len,) mean next-token cross-entropy (nats) at each position of the window."""
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    total, n = torch.zeros(seq_len, dtype=torch.float64), 0
    for x, y in eval_batches(tokens, batch_size, seq_len, max_batches=max_batches):
        logits = model(x.to(dev))
        ce = F.cross_entropy(logits.transpose(1, 2), y.to(dev), reduction="none")  # (B, T)
        total += ce.sum(0).double().cpu()
        n += ce.shape[0]
    model.train(was)
    if n == 0:
        raise ValueError(f"tokens too short for one batch of {batch_size} x {seq_len}")
    return (total / n).float()


# --------------------------------------------------------------------------- the explorer (figure builder)

#: The explorer's presets: the patterns of the papers, at a size you can see.
PRESETS = {
    "dense (causal)": dict(pattern="dense"),
    "sliding window (Mistral)": dict(pattern="sliding_window"),
    "dilated window, d=2 (Longformer)": dict(pattern="dilated", dilation=2),
    "window + 4 global (Longformer)": dict(pattern="sliding_window", n_global=4),
    "window + global + random (BigBird)": dict(pattern="sliding_window", n_global=8, n_random_blocks=2),
    "local blocks (block-sparse)": dict(pattern="block_sparse"),
}


def mask_figure(
    pattern: str = "sliding_window",
    window: int = 16,
    dilation: int = 1,
    n_global: int = 0,
    n_random_blocks: int = 0,
    block_size: int = 8,
    seq_len: int = 128,
    n_layers: int = 4,
    causal: bool = True,
):
    """The attention-mask explorer: the mask, its density and FLOPs, and how far it reaches.

    Left: the (T, T) mask (rows: queries, columns: keys). Right: the receptive field of the
    last token after 1..``n_layers`` layers. A setting the pattern rejects (e.g. a block
    size that does not divide the length) gives a figure saying why, not an exception.
    """
    viz.use_style()
    titles = ["mask: query (row) may read key (column)", "receptive field of the last token, by layer"]
    fig = make_subplots(rows=1, cols=2, column_widths=[0.5, 0.5], subplot_titles=titles, horizontal_spacing=0.12)
    try:
        p = SparsePattern(
            pattern,
            window=window,
            dilation=dilation if pattern == "dilated" else 1,
            n_global=n_global,
            n_random_blocks=n_random_blocks,
            block_size=block_size,
            causal=causal,
        )
        mask = p.mask(seq_len)
    except (ValueError, TypeError) as e:
        fig.update_layout(title_text=f"not a valid pattern: {e}", height=430)
        return fig
    st = p.stats(seq_len)
    reach = receptive_field(mask, n_layers, query=seq_len - 1)
    fig.add_heatmap(
        z=mask.to(torch.uint8).numpy(),
        colorscale=[[0, "#f4f4f4"], [1, viz.PALETTE[0]]],
        showscale=False,
        hovertemplate="query %{y}, key %{x}: %{z}<extra></extra>",
        row=1,
        col=1,
    )
    fig.add_heatmap(
        z=reach.to(torch.uint8).numpy(),
        y=list(range(1, n_layers + 1)),
        colorscale=[[0, "#f4f4f4"], [1, viz.PALETTE[1]]],
        showscale=False,
        hovertemplate="layer %{y}, position %{x}: %{z}<extra></extra>",
        row=1,
        col=2,
    )
    fig.update_yaxes(
        autorange="reversed", title_text="query position", row=1, col=1, scaleanchor="x", constrain="domain"
    )
    fig.update_xaxes(title_text="key position", row=1, col=1, constrain="domain")
    fig.update_yaxes(title_text="layers stacked", dtick=1, row=1, col=2)
    fig.update_xaxes(title_text="position", row=1, col=2)
    n_reach = int(reach[-1].sum())
    # short subplot titles (two lines each) carry the numbers, so they follow a static twin's slider
    fig.layout.annotations[0].text = f"mask<br>FLOPs ×{st['flops_vs_dense']:.2f}"
    fig.layout.annotations[1].text = f"reach, {n_layers} layers<br>{n_reach} of {seq_len}"
    fig.update_layout(title_text=f"{p.describe()}, T={seq_len}: density {st['density']:.1%}", height=460)
    return fig


def preset_figure(preset: str = "sliding window (Mistral)", window: int = 16, *, seq_len: int = 64, n_layers: int = 4):
    """:func:`mask_figure` for one of :data:`PRESETS` (blocks of 8 tokens) — the static twin's builder."""
    check_choice("preset", preset, PRESETS)
    return mask_figure(
        **{**PRESETS[preset], "window": window, "block_size": 8, "seq_len": seq_len, "n_layers": n_layers}
    )
