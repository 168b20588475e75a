r"""Hardware-aware design: this machine's roofline, where the time goes, and what fits (chapter 11).

Every kernel is limited either by arithmetic or by memory traffic. The **roofline model**
(Williams, Waterman & Patterson, 2009) says an op that performs :math:`F` FLOPs while
moving :math:`Q` bytes between memory and the chip, i.e. with **arithmetic intensity**
:math:`I = F / Q` FLOPs per byte, can at best run at

.. math::

    P(I) = \min\big(P_{\text{peak}},\; I \cdot B\big)

where :math:`P_{\text{peak}}` is the machine's peak FLOP/s (per number format) and
:math:`B` its memory bandwidth in bytes/s. The **ridge point** :math:`I^* = P_{\text{peak}}/B`
separates memory-bound ops (:math:`I < I^*`) from compute-bound ones.

This module measures both roofs live on the reader's machine — nothing is typed in:

* :func:`peak_flops` — large matmuls in fp32 / bf16 / fp16, and int8 through ``torch._int_mm``;
* :func:`memory_bandwidth` — STREAM-style kernels (McCalpin, 1995): read, copy and triad,
  on arrays several times larger than the last-level cache;
* op costs (:func:`matmul_cost`, :func:`attention_cost`, :func:`rmsnorm_cost`,
  :func:`softmax_cost`, :func:`swiglu_cost`), each a FLOP count and the *minimum* bytes
  the op must move, and :func:`place` to put a timed op on the roofline;
* :func:`op_traffic` — the bytes an *unfused* (eager) function moves, op by op;
* :func:`footprint` / :func:`edge_fit` — weights + KV cache + activations of real models
  (through :mod:`course_lib.configs`), and which fit in 1, 4 or 8 GiB at which precision;
* :func:`decode_bound` — decoding one token must read every active weight once, so
  :math:`\text{tokens/s} \le B \cdot \text{batch} / \text{bytes per step}`.

The chapter's live runs with these — ops timed on the roofline, the profiler, fusion,
batch size and the OpenMP wait policy — are in :mod:`course_lib.experiments.hardware`;
``python -m course_lib.experiments.hardware`` prints this machine's roofline. Nothing here is
precomputed: the chapter measures the machine it runs on.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from course_lib import configs, fingerprint, measure
from course_lib.checks import check_callable, check_choice, check_float, check_int, check_type

# --------------------------------------------------------------------------- dtypes

_TORCH_DTYPES = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "int8": torch.int8,
}
#: Formats whose peak :func:`peak_flops` can measure (int8 as int8 x int8 -> int32).
MATMUL_DTYPES = tuple(_TORCH_DTYPES)


def _dtype_name(dtype) -> str:
    """'fp32' | 'bf16' | 'fp16' | 'int8' | 'int4' from a name or a torch dtype."""
    if isinstance(dtype, torch.dtype):
        for name, td in _TORCH_DTYPES.items():
            if td == dtype:
                return name
        raise ValueError(f"dtype must be one of {list(_TORCH_DTYPES.values())}, got {dtype}")
    configs.dtype_bytes(dtype)  # raises a clear ValueError for unknown names
    return dtype


def bytes_per_element(dtype) -> float:
    """Bytes per stored value (a name from :data:`course_lib.configs.DTYPE_BYTES` or a torch dtype)."""
    return configs.dtype_bytes(_dtype_name(dtype))


def _pos_int(name: str, value) -> int:
    """A count: an int >= 1 (:func:`course_lib.checks.check_int`)."""
    return check_int(name, value, min=1)


def resolve_device(device) -> torch.device:
    """``device`` (None: cpu) as a torch.device; ValueError unless cpu, or cuda where one is available."""
    device = torch.device("cpu" if device is None else device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but no CUDA device is available")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device}")
    return device


# --------------------------------------------------------------------------- the machine


def llc_bytes() -> int | None:
    """Size of the last-level cache of CPU 0 in bytes (course_lib.fingerprint); None where unknown."""
    caches = fingerprint.cache_bytes()
    return caches[max(caches)] if caches else None


def cpu_info() -> dict:
    """What decides this CPU's roofs: model, cores, torch's vector ISA, matmul-relevant flags, L3."""
    fp = fingerprint.machine()
    llc = llc_bytes()
    return {
        "cpu": fp["cpu"],
        "logical cpus": fp["logical_cpus"],
        "torch threads": fp["torch_threads"],
        "torch vector ISA": fp["torch_isa"],
        "matmul ISA flags": ", ".join(fp["isa"]) or "unknown",
        "L3 cache (MiB)": None if llc is None else llc / 2**20,
    }


def working_set_bytes(*, factor: int = 4, floor: int = 64 * 2**20, cap: int = 256 * 2**20) -> int:
    """Array size for DRAM measurements: ``factor`` x the L3 cache, within [floor, cap].

    An array that fits in cache measures the cache, not DRAM. Four times the L3 is enough
    to evict it; the cap keeps peak memory (three arrays for a triad) within budget.
    """
    llc = llc_bytes() or 32 * 2**20
    return int(min(cap, max(floor, factor * llc)))


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS exposes one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# --------------------------------------------------------------------------- op costs


@dataclass(frozen=True)
class OpCost:
    """An op's work and its minimum memory traffic: ``intensity = flops / bytes``."""

    name: str
    shape: str
    flops: int
    bytes: int
    dtype: str = "fp32"

    @property
    def intensity(self) -> float:
        """Arithmetic intensity in FLOPs per byte."""
        return self.flops / self.bytes


def matmul_cost(m: int, k: int, n: int, *, dtype="fp32", name: str | None = None) -> OpCost:
    r"""(m, k) @ (k, n): :math:`F = 2mkn`, :math:`Q = (mk + kn)\,b_{in} + mn\,b_{out}`.

    Each operand read once and the result written once: the least traffic any kernel
    needs. int8 inputs produce int32 outputs (4 bytes), as ``torch._int_mm`` does.
    With :math:`m = k = n` the intensity grows like :math:`n/3` per byte-per-element.
    """
    m, k, n = _pos_int("m", m), _pos_int("k", k), _pos_int("n", n)
    dt = _dtype_name(dtype)
    b_in = bytes_per_element(dt)
    b_out = 4 if dt == "int8" else b_in
    nbytes = math.ceil((m * k + k * n) * b_in + m * n * b_out)
    return OpCost(name or "matmul", f"({m}×{k}) @ ({k}×{n})", 2 * m * k * n, nbytes, dt)


def gemv_cost(k: int, n: int, *, batch: int = 1, dtype="fp32", name: str | None = None) -> OpCost:
    r"""The matmul of decoding: ``batch`` token vectors times a (k, n) weight matrix.

    With :math:`m = \text{batch} \ll k, n` the weight dominates the bytes, so
    :math:`I \approx 2\,\text{batch} / b` FLOPs per byte: batch 1 in fp32 is 0.5.
    """
    check_int("batch", batch, min=1)  # named here: matmul_cost would call it m
    return matmul_cost(batch, k, n, dtype=dtype, name=name or f"decode GEMV, batch {batch}")


def _causal_pairs(q_len: int, kv_len: int) -> int:
    """Query-key pairs a causal mask keeps, queries being the last ``q_len`` of ``kv_len`` positions."""
    offset = kv_len - q_len
    return sum(min(kv_len, offset + i + 1) for i in range(q_len))


def attention_cost(
    *,
    batch: int,
    heads: int,
    q_len: int,
    kv_len: int,
    head_dim: int,
    kv_heads: int | None = None,
    causal: bool = False,
    fused: bool = True,
    dtype="fp32",
) -> OpCost:
    r"""softmax(Q Kᵀ / √d) V for ``batch`` x ``heads``.

    FLOPs (the two matmuls; softmax is :func:`softmax_cost`): :math:`4\,B H\,P\,d`, with
    :math:`P = T_q T_k` query-key pairs, or only those the causal mask keeps.
    Bytes when **fused** (FlashAttention, SDPA): read Q, K, V once and write O,
    :math:`(2 B H T_q d + 2 B H_{kv} T_k d)\,b`. **Unfused**, the (B, H, T_q, T_k) score
    matrix is also written, read by the softmax, written again and read by the second
    matmul: :math:`+\,4 B H T_q T_k\,b` — that term is what fusion removes.
    """
    batch, heads, q_len = _pos_int("batch", batch), _pos_int("heads", heads), _pos_int("q_len", q_len)
    kv_len, head_dim = _pos_int("kv_len", kv_len), _pos_int("head_dim", head_dim)
    kv_heads = heads if kv_heads is None else _pos_int("kv_heads", kv_heads)
    if heads % kv_heads:
        raise ValueError(f"kv_heads ({kv_heads}) must divide heads ({heads})")
    if q_len > kv_len:
        raise ValueError(f"q_len ({q_len}) must be <= kv_len ({kv_len}): queries are the last q_len positions")
    b = bytes_per_element(dtype)
    pairs = _causal_pairs(q_len, kv_len) if causal else q_len * kv_len
    flops = 4 * batch * heads * pairs * head_dim
    values = 2 * batch * heads * q_len * head_dim + 2 * batch * kv_heads * kv_len * head_dim
    if not fused:
        values += 4 * batch * heads * q_len * kv_len
    kind = "prefill" if q_len > 1 else "decode"
    shape = f"B{batch} H{heads}/{kv_heads} Tq{q_len} Tk{kv_len} d{head_dim}" + (" causal" if causal else "")
    return OpCost(
        f"attention {kind}" + ("" if fused else " (unfused)"), shape, flops, math.ceil(values * b), _dtype_name(dtype)
    )


def rmsnorm_cost(rows: int, dim: int, *, dtype="fp32") -> OpCost:
    r"""RMSNorm over (rows, dim): :math:`y = x / \sqrt{\tfrac1C \sum x^2 + \epsilon} \odot g`.

    FLOPs, one per arithmetic op (rsqrt counted as one): square, add, scale, gain per
    element (:math:`4NC`) and divide, add ε, rsqrt per row (:math:`3N`). Bytes: read x and
    g, write y — :math:`(2NC + C)\,b`. Intensity ≈ 2 / b: memory-bound on every machine.
    """
    rows, dim = _pos_int("rows", rows), _pos_int("dim", dim)
    b = bytes_per_element(dtype)
    return OpCost(
        "RMSNorm",
        f"({rows}×{dim})",
        4 * rows * dim + 3 * rows,
        math.ceil((2 * rows * dim + dim) * b),
        _dtype_name(dtype),
    )


def softmax_cost(rows: int, dim: int, *, dtype="fp32") -> OpCost:
    r"""Row softmax over (rows, dim): max, subtract, exp, sum, divide — :math:`5NC` FLOPs; bytes :math:`2NC\,b`."""
    rows, dim = _pos_int("rows", rows), _pos_int("dim", dim)
    b = bytes_per_element(dtype)
    return OpCost("softmax", f"({rows}×{dim})", 5 * rows * dim, math.ceil(2 * rows * dim * b), _dtype_name(dtype))


def swiglu_cost(rows: int, hidden: int, *, dtype="fp32") -> OpCost:
    r"""The SwiGLU activation :math:`\mathrm{SiLU}(g) \odot u` on (rows, hidden) gate and up.

    SiLU as :math:`g / (1 + e^{-g})` is negate, exp, add, divide (4), times u (1):
    :math:`5NH` FLOPs. Bytes: read g and u, write the result — :math:`3NH\,b`.
    """
    rows, hidden = _pos_int("rows", rows), _pos_int("hidden", hidden)
    b = bytes_per_element(dtype)
    return OpCost(
        "SwiGLU activation",
        f"({rows}×{hidden})",
        5 * rows * hidden,
        math.ceil(3 * rows * hidden * b),
        _dtype_name(dtype),
    )


_STREAM = {"read": (1, 0), "copy": (2, 0), "triad": (3, 2)}  # kind -> (arrays moved, FLOPs per element)


def stream_cost(kind: str, n: int, *, dtype="fp32") -> OpCost:
    """STREAM kernels on ``n`` elements: read (``sum(b)``), copy (``a = b``), triad (``a = b + s·c``)."""
    check_choice("kind", kind, list(_STREAM))
    n = _pos_int("n", n)
    arrays, fl = _STREAM[kind]
    return OpCost(
        f"STREAM {kind}", f"{n:,} values", fl * n, math.ceil(arrays * n * bytes_per_element(dtype)), _dtype_name(dtype)
    )


# --------------------------------------------------------------------------- measuring the roofs


@dataclass
class Peak:
    """Best matmul throughput of one format, and every size tried (n, FLOP/s)."""

    dtype: str
    flops_per_s: float
    n: int
    tried: list[tuple[int, float]]
    device: str = "cpu"


def _square_operands(dtype: str, n: int, device: torch.device):
    g = torch.Generator(device=device).manual_seed(n)  # drawn where they are used: no host-to-device copy
    if dtype == "int8":
        a, w = (torch.randint(-128, 128, (n, n), dtype=torch.int8, generator=g, device=device) for _ in range(2))
    else:
        a, w = (torch.rand(n, n, generator=g, device=device).to(_TORCH_DTYPES[dtype]) for _ in range(2))
    return a, w.t()  # the weight as nn.Linear stores it, (out, in), used as x @ Wᵀ


def _best_seconds(fn: Callable, *, warmup: int, repeats: int) -> float:
    """Fastest of ``repeats`` timed calls after ``warmup`` (course_lib.measure).

    A roof is the best the machine can do; interference only ever slows a run down, so the
    fastest sample is the estimate of the roof (STREAM, too, reports its best rate).
    """
    return min(measure.interleaved({"fn": fn}, warmup=warmup, repeats=repeats)["fn"].samples)


def _matmul(dtype: str):
    return torch._int_mm if dtype == "int8" else torch.mm


def peak_flops(
    dtype="fp32",
    *,
    device=None,
    min_n: int = 128,
    max_n: int | None = None,
    max_call_s: float = 0.5,
    short_s: float = 0.1,
    repeats: int = 3,
) -> Peak:
    r"""Peak matmul FLOP/s of ``dtype`` (int8: int8 x int8 -> int32 ops/s via ``torch._int_mm``).

    Square (n, n) @ (n, n) products of growing n (doubling from ``min_n`` up to ``max_n``),
    each timed as the best of ``repeats`` (see :func:`_best_seconds`). The search stops when
    a product took long enough to trust (``short_s``) and the next size, at the best rate
    seen so far, would take more than ``max_call_s``: a format this CPU only emulates (bf16
    without AVX512-BF16 or AMX, say) stops at small sizes and costs seconds, not minutes,
    while a fast one is measured where its kernels are at their best. A call shorter than
    ``short_s`` says little (on a busy machine a small multithreaded product can take tens
    of milliseconds of waiting), so the next size is always tried. The peak is the best
    :math:`2n^3 / t` seen.
    """
    dt, dev = _dtype_name(dtype), resolve_device(device)
    check_choice("dtype", dt, MATMUL_DTYPES)
    max_n = max_n if max_n is not None else (8192 if dev.type == "cuda" else 2048)
    min_n, max_n = _pos_int("min_n", min_n), _pos_int("max_n", max_n)
    if min_n < 32 or min_n % 8 or max_n < min_n:
        raise ValueError(f"need 32 <= min_n <= max_n with min_n a multiple of 8, got min_n={min_n}, max_n={max_n}")
    check_float("short_s", short_s, min=0, min_inclusive=False)
    check_float("max_call_s", max_call_s, min=0, min_inclusive=False)
    if short_s > max_call_s:
        raise ValueError(f"short_s ({short_s}) must be <= max_call_s ({max_call_s})")
    mm, tried, n = _matmul(dt), [], min_n
    while n <= max_n:
        a, w = _square_operands(dt, n, dev)
        seconds = _best_seconds(lambda a=a, w=w: mm(a, w), warmup=1, repeats=repeats)
        tried.append((n, 2 * n**3 / seconds))
        n *= 2
        if seconds >= short_s and 2 * n**3 / max(rate for _, rate in tried) > max_call_s:
            break  # a trustworthy timing, and the next size would take too long
    best_n, best = max(tried, key=lambda t: t[1])
    return Peak(dt, best, best_n, tried, str(dev))


@dataclass
class Bandwidth:
    """Memory bandwidth of one STREAM kernel, counted as STREAM does (no write-allocate)."""

    kind: str
    bytes_per_s: float
    array_bytes: int
    seconds: float
    device: str = "cpu"


def _stream_kernel(kind: str, n: int, device: torch.device):
    a = torch.zeros(n, device=device)  # zeros() touches every page, so no page faults are timed
    b = torch.ones(n, device=device)
    c = torch.full((n,), 0.5, device=device)
    if kind == "read":
        return lambda: b.sum()
    if kind == "copy":
        return lambda: a.copy_(b)
    return lambda: torch.add(b, c, alpha=3.0, out=a)  # triad: a = b + 3·c


def memory_bandwidth(
    kind: str = "triad", *, array_bytes: int | None = None, device=None, repeats: int = 5
) -> Bandwidth:
    """Bytes/s of a STREAM kernel on fp32 arrays of ``array_bytes`` each (default: :func:`working_set_bytes`), best of ``repeats``.

    read ``sum(b)`` moves one array, copy ``a = b`` two, triad ``a = b + s·c`` three. A
    write that misses the cache usually also reads the line first (write-allocate); like
    STREAM we do not count that, so copy and triad can read lower than a pure read.
    """
    check_choice("kind", kind, list(_STREAM))
    dev = resolve_device(device)
    array_bytes = working_set_bytes() if array_bytes is None else _pos_int("array_bytes", array_bytes)
    n = max(1, array_bytes // 4)
    fn = _stream_kernel(kind, n, dev)
    seconds = _best_seconds(fn, warmup=1, repeats=_pos_int("repeats", repeats))
    moved = stream_cost(kind, n).bytes
    return Bandwidth(kind, moved / seconds, n * 4, seconds, str(dev))


@dataclass
class Residency:
    """Whether a working set of ``nbytes`` stays in the cache between passes (:func:`cache_residency`)."""

    nbytes: int
    bytes_per_s: float  # reading a buffer of nbytes over and over, best of the repeats
    dram_bytes_per_s: float  # the rate it is compared with: memory past every cache

    @property
    def ratio(self) -> float:
        return self.bytes_per_s / self.dram_bytes_per_s

    @property
    def in_cache(self) -> bool:
        """Read at least twice as fast as from DRAM: served by a cache, not by memory."""
        return self.ratio > 2


def cache_residency(nbytes: int, dram_bytes_per_s: float, *, device=None, repeats: int = 3) -> Residency:
    """Does a working set of ``nbytes`` (a model's weights, say) stay in the cache from one pass to the next?

    Measured, not read off the cache size: on a shared machine (a cloud VM, a laptop with a
    browser open) a process keeps only part of the last-level cache, and that part changes
    with what the neighbours do. A buffer of ``nbytes`` is read over and over
    (:func:`memory_bandwidth`, ``"read"``); if that runs more than twice as fast as
    ``dram_bytes_per_s`` (a rate measured on arrays past every cache), the working set is
    served by a cache. A decode step that reads every weight once per token streams them
    from memory when ``in_cache`` is False.
    """
    nbytes = _pos_int("nbytes", nbytes)
    check_float("dram_bytes_per_s", dram_bytes_per_s, min=0, min_inclusive=False)
    rate = memory_bandwidth("read", array_bytes=nbytes, device=device, repeats=repeats).bytes_per_s
    return Residency(nbytes, rate, float(dram_bytes_per_s))


@dataclass
class Roofline:
    """Measured roofs: peak FLOP/s per format and bandwidth per STREAM kernel (bytes/s)."""

    peaks: dict[str, float]
    bandwidths: dict[str, float]
    device: str = "cpu"
    details: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        if not self.peaks or not self.bandwidths:
            raise ValueError("a roofline needs at least one peak and one bandwidth")
        for label, v in {**self.peaks, **self.bandwidths}.items():
            check_float(f"roof {label!r}", v, min=0, min_inclusive=False)

    @property
    def bandwidth(self) -> float:
        """The memory roof: the best of the STREAM kernels measured."""
        return max(self.bandwidths.values())

    def peak(self, dtype="fp32") -> float:
        dt = _dtype_name(dtype)
        if dt not in self.peaks:
            raise ValueError(f"no peak measured for {dt!r}; have {list(self.peaks)}")
        return self.peaks[dt]

    def ridge(self, dtype="fp32") -> float:
        """Intensity (FLOPs/byte) where the bandwidth slope meets the compute roof."""
        return self.peak(dtype) / self.bandwidth

    def attainable(self, intensity: float, dtype="fp32") -> float:
        """:math:`\\min(P_{peak}, I \\cdot B)` in FLOP/s."""
        check_float("intensity", intensity, min=0, min_inclusive=False, finite=False)  # inf: no bytes moved
        return min(self.peak(dtype), intensity * self.bandwidth)

    def to_dict(self) -> dict:
        return {"peaks": self.peaks, "bandwidths": self.bandwidths, "device": self.device}


def measure_roofline(
    *, dtypes=("fp32", "bf16", "int8"), kinds=("read", "copy", "triad"), device=None, array_bytes=None, repeats=3
) -> Roofline:
    """Measure this machine's roofs: :func:`peak_flops` per format, :func:`memory_bandwidth` per kernel."""
    dev = resolve_device(device)
    if not dtypes or not kinds:
        raise ValueError("dtypes and kinds must be non-empty")
    peaks = {_dtype_name(d): peak_flops(d, device=dev, repeats=repeats) for d in dtypes}
    bws = {k: memory_bandwidth(k, array_bytes=array_bytes, device=dev, repeats=max(repeats, 3)) for k in kinds}
    return Roofline(
        {d: p.flops_per_s for d, p in peaks.items()},
        {k: b.bytes_per_s for k, b in bws.items()},
        str(dev),
        {"peaks": peaks, "bandwidths": bws},
    )


# --------------------------------------------------------------------------- ops on the roofline


@dataclass
class Placement:
    """A timed op on the roofline: achieved FLOP/s against what its intensity allows."""

    name: str
    shape: str
    dtype: str
    intensity: float
    achieved: float  # FLOP/s
    attainable: float  # FLOP/s, min(peak, I·B)
    bound: str  # "memory" or "compute"
    seconds: float

    @property
    def fraction(self) -> float:
        """Achieved / attainable: how close to its roof the op runs."""
        return self.achieved / self.attainable

    @property
    def bytes_per_s(self) -> float:
        return self.achieved / self.intensity


def place(cost: OpCost, seconds: float, roof: Roofline) -> Placement:
    """Put an op that took ``seconds`` on ``roof`` (against the ceiling of its own format)."""
    check_type("cost", cost, OpCost, what="an OpCost")
    check_float("seconds", seconds, min=0, min_inclusive=False)
    dtype = cost.dtype if cost.dtype in roof.peaks else "fp32"
    bound = "memory" if cost.intensity * roof.bandwidth < roof.peak(dtype) else "compute"
    achieved = cost.flops / seconds
    return Placement(
        cost.name,
        cost.shape,
        cost.dtype,
        cost.intensity,
        achieved,
        roof.attainable(cost.intensity, dtype),
        bound,
        seconds,
    )


# --------------------------------------------------------------------------- the figure


_SIDES = (
    "top center",
    "bottom center",
    "middle right",
    "middle left",
    "top right",
    "bottom left",
    "top left",
    "bottom right",
)


def _label_sides(
    xs, ys, labels, *, x_range, y_range, avoid=(), width_px=260.0, height_px=270.0, font_px=10.0
) -> list[str]:
    """A text position for each point's label so that labels and markers do not overlap (greedy, log-log axes).

    Positions are estimated in pixels for a narrow plot area (a phone's column), where crowding
    is worst: the book's page at 390 px gives the plot area 268 x 280 px (measured in chromium),
    and the defaults stay a little inside that. A label is about 0.62 x ``font_px`` per character
    wide and 1.5 x ``font_px`` high, placed 7 px from its marker, with 3 px of clearance. Each
    label, in order of intensity, takes the first side of :data:`_SIDES` that touches no marker,
    no label already placed and no edge of the plot; else the least crowded one, where a pixel cut
    off by the plot's edge counts ten times a pixel of overlap (a cut label cannot be read at all).
    ``avoid``: (x, y) of other markers the labels must not cover (the figure's predicted points).
    """

    def to_px(v, rng, size):
        a, b = math.log10(rng[0]), math.log10(rng[1])
        return (math.log10(v) - a) / (b - a) * size if b > a else size / 2

    def px_of(x, y):
        return to_px(x, x_range, width_px), height_px - to_px(y, y_range, height_px)

    pts = [px_of(x, y) for x, y in zip(xs, ys)]
    boxes = [(px - 5, py - 5, px + 5, py + 5) for px, py in pts]  # the markers
    boxes += [(px - 7, py - 7, px + 7, py + 7) for px, py in (px_of(x, y) for x, y in avoid)]

    def box(i, side):
        (px, py), w, h = pts[i], 0.62 * font_px * len(labels[i]), 1.5 * font_px
        vert, horiz = side.split()
        x0 = {"center": px - w / 2, "right": px + 7, "left": px - 7 - w}[horiz]
        y0 = {"top": py - 7 - h, "bottom": py + 7, "middle": py - h / 2}[vert]
        pad = 3.0  # clearance: the width estimate is rough, and two labels must not touch
        return (x0 - pad, y0 - pad, x0 + w + pad, y0 + h + pad)

    def overlap(a, b):
        return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))

    def outside(a):  # area of a label that leaves the plot (it would be cut by the panel)
        inside = max(0.0, min(a[2], width_px) - max(a[0], 0.0)) * max(0.0, min(a[3], height_px) - max(a[1], 0.0))
        return (a[2] - a[0]) * (a[3] - a[1]) - inside

    sides = [""] * len(xs)
    for i in sorted(range(len(xs)), key=lambda j: (xs[j], ys[j])):
        costs = [
            (sum(overlap(box(i, s), b) for b in boxes) + 10 * outside(box(i, s)), k, s) for k, s in enumerate(_SIDES)
        ]
        _, _, best = min(costs)
        sides[i] = best
        boxes.append(box(i, best))
    return sides


def roofline_figure(
    roof: Roofline,
    placements: list[Placement] = (),
    *,
    predicted: list[OpCost] = (),
    dtypes=None,
    title: str | None = None,
):
    """Log-log roofline: one ceiling per format, the bandwidth slope, measured ops as dots.

    Hovering a dot shows the op, its shape, intensity, achieved GFLOP/s and the fraction of
    its roof. ``predicted`` costs are drawn as hollow diamonds *on* the roof (what their
    intensity allows), for exploring shapes without timing them.
    """
    from course_lib.viz import PALETTE, figure

    dtypes = list(roof.peaks) if dtypes is None else [_dtype_name(d) for d in dtypes]
    intensities = [p.intensity for p in placements] + [c.intensity for c in predicted]
    ridges = [roof.ridge(d) for d in dtypes]
    lo = min([0.05] + [i / 2 for i in intensities] + [r / 10 for r in ridges])
    hi = max([1000.0] + [i * 2 for i in intensities] + [r * 10 for r in ridges])
    xs = [lo * (hi / lo) ** (i / 200) for i in range(201)]
    fig = figure(
        title_text=title or f"Roofline of this machine ({roof.device})",
        xaxis=dict(type="log", title="FLOPs per byte moved"),
        yaxis=dict(type="log", title="GFLOP/s (int8: GOP/s)"),
        height=520,
        hovermode="closest",
    )
    for i, d in enumerate(dtypes):
        ys = [roof.attainable(x, d) / 1e9 for x in xs]
        fig.add_scatter(
            x=xs,
            y=ys,
            mode="lines",
            name=f"roof {d}: {roof.peak(d) / 1e9:,.0f} GFLOP/s",  # short: the legend must not crowd the plot
            line=dict(color=PALETTE[i % len(PALETTE)], width=2, dash="solid" if d == "fp32" else "dash"),
            hovertemplate=(
                f"<b>{d} roof</b><br>peak {roof.peak(d) / 1e9:,.1f} GFLOP/s, ridge {roof.ridge(d):.3g} FLOP/B"
                "<br>intensity %{x:.3g} FLOP/B: at most %{y:,.2f} GFLOP/s<extra></extra>"
            ),
        )
    on_roof = [
        (c.intensity, roof.attainable(c.intensity, c.dtype if c.dtype in roof.peaks else "fp32") / 1e9)
        for c in predicted
    ]
    if placements:
        all_y = [y for tr in fig.data for y in tr.y] + [p.achieved / 1e9 for p in placements]
        sides = _label_sides(
            [p.intensity for p in placements],
            [p.achieved / 1e9 for p in placements],
            [p.name for p in placements],
            x_range=(lo, hi),
            y_range=(min(v for v in all_y if v > 0), max(all_y)),
            avoid=on_roof,
        )
        fig.add_scatter(
            x=[p.intensity for p in placements],
            y=[p.achieved / 1e9 for p in placements],
            mode="markers+text",
            text=[p.name for p in placements],
            textposition=sides,
            textfont=dict(size=10),
            name="measured ops",
            marker=dict(size=10, color=[PALETTE[3] if p.bound == "memory" else PALETTE[2] for p in placements]),
            customdata=[[p.shape, p.dtype, p.fraction * 100, p.bound, p.attainable / 1e9] for p in placements],
            hovertemplate=(
                "<b>%{text}</b><br>shape %{customdata[0]} %{customdata[1]}<br>intensity %{x:.3g} FLOP/B"
                "<br>achieved %{y:,.2f} GFLOP/s of %{customdata[4]:,.1f} (%{customdata[2]:.0f} %)"
                "<br>%{customdata[3]}-bound<extra></extra>"
            ),
        )
    if predicted:
        fig.add_scatter(
            x=[x for x, _ in on_roof],
            y=[y for _, y in on_roof],
            mode="markers",
            name="predicted",
            marker=dict(size=13, symbol="diamond-open", color=PALETTE[4], line=dict(width=2)),
            text=[c.name for c in predicted],
            customdata=[[c.shape] for c in predicted],
            hovertemplate="<b>%{text}</b><br>%{customdata[0]}<br>intensity %{x:.3g} FLOP/B<br>at most %{y:,.2f} GFLOP/s<extra></extra>",
        )
    return fig


# --------------------------------------------------------------------------- fusion


class _Traffic(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts, for every aten op that runs, the bytes of its tensor inputs and outputs."""

    def __init__(self):
        super().__init__()
        self.ops: list[tuple[str, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.is_view:  # views (transpose, expand, reshape of a contiguous tensor) move nothing
            flat = torch.utils._pytree.tree_leaves((args, kwargs or {}, out))
            moved = sum(t.numel() * t.element_size() for t in flat if isinstance(t, torch.Tensor))
            self.ops.append((func.name().split("::")[-1], moved))
        return out


def op_traffic(fn: Callable, *args, **kwargs) -> dict:
    """Bytes an eager ``fn(*args)`` moves if every op reads its inputs from and writes its output to memory.

    Eager PyTorch runs one kernel per op, and each intermediate of a large tensor goes out
    to memory and back. Summing every op's input and output bytes (a TorchDispatchMode sees
    each aten op) gives that traffic; a fused kernel needs only the function's own inputs
    and outputs. Returns ``{"bytes", "ops": [(op, bytes)], "kernels"}``.
    """
    check_callable("fn", fn)
    mode = _Traffic()
    with torch.no_grad(), mode:
        fn(*args, **kwargs)
    return {"bytes": sum(b for _, b in mode.ops), "ops": mode.ops, "kernels": len(mode.ops)}


def swiglu_activation(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """SiLU(gate) ⊙ up, as the patient's SwiGLU computes it between its matmuls: (N, H), (N, H) -> (N, H)."""
    return F.silu(gate) * up


# --------------------------------------------------------------------------- memory budgets


def _config(config) -> tuple[str, dict]:
    if isinstance(config, str):
        return config, configs.get(config)
    if isinstance(config, dict):
        return config.get("name", "config"), config
    raise TypeError(f"config must be a model name or a Hugging Face-style dict, got {type(config).__name__}")


def activation_bytes(config, *, tokens: int, batch_size: int = 1, dtype: str = "fp16") -> int:
    r"""Peak transient memory of inference, one layer live at a time (a modelling estimate).

    While ``tokens`` positions of ``batch_size`` sequences pass through a layer, the widest
    moment is the MLP: the residual stream and its normed copy (:math:`2d`) plus the gate
    and up projections of the :math:`k` experts a token uses (:math:`2kf`), per position;
    attention is assumed fused (no :math:`T \times T` scores), earlier layers' activations
    freed, and only the last position's logits kept, in fp32:

    .. math:: A = B\,T\,(2d + 2kf)\,b + 4\,B\,V
    """
    _, cfg = _config(config)
    configs.count_params(cfg)  # validates the config
    tokens, batch_size = _pos_int("tokens", tokens), _pos_int("batch_size", batch_size)
    d, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    k = cfg.get("num_experts_per_tok") or 1
    return math.ceil(batch_size * tokens * (2 * d + 2 * k * f) * configs.dtype_bytes(dtype) + 4 * batch_size * v)


@dataclass
class Footprint:
    """Inference memory of one model at one precision and context, in bytes."""

    model: str
    weight_dtype: str
    kv_dtype: str
    seq_len: int
    batch_size: int
    weights: int
    kv_cache: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.activations

    def to_dict(self) -> dict:
        return {**asdict(self), "total": self.total}


def footprint(
    config,
    *,
    weight_dtype: str = "fp16",
    kv_dtype: str = "fp16",
    seq_len: int = 4096,
    batch_size: int = 1,
    group_size: int | None = None,
    prefill_chunk: int | None = None,
    act_dtype: str = "fp16",
) -> Footprint:
    """Weights (:func:`configs.weight_bytes`) + KV cache (:func:`configs.kv_cache_bytes`) + activations.

    ``config`` is a name in :data:`configs.MODELS` or a Hugging Face-style dict. Activations
    are :func:`activation_bytes` for a prefill of ``prefill_chunk`` tokens (default: the
    whole ``seq_len`` at once; chunked prefill is one way to shrink them).
    """
    name, cfg = _config(config)
    chunk = seq_len if prefill_chunk is None else _pos_int("prefill_chunk", prefill_chunk)
    if chunk > seq_len:
        raise ValueError(f"prefill_chunk ({chunk}) must be <= seq_len ({seq_len})")
    return Footprint(
        name,
        weight_dtype,
        kv_dtype,
        seq_len,
        batch_size,
        configs.weight_bytes(cfg, weight_dtype, group_size=group_size),
        configs.kv_cache_bytes(cfg, seq_len=seq_len, batch_size=batch_size, dtype=kv_dtype),
        activation_bytes(cfg, tokens=chunk, batch_size=batch_size, dtype=act_dtype),
    )


GIB = 2**30


def edge_fit(
    models=("phi-3-mini", "mistral-7b", "llama-2-7b", "mixtral-8x7b"),
    *,
    dtypes=("fp16", "int8", "int4"),
    budgets_gib=(1, 4, 8),
    seq_len: int = 4096,
    kv_dtype: str = "fp16",
    group_size: int | None = 128,
) -> list[dict]:
    """Which models fit in which memory budget at which weight precision (one row per model x dtype).

    int8/int4 weights carry one fp16 scale per ``group_size`` inputs (set None for none);
    the KV cache stays in ``kv_dtype``. A model "fits" when its :func:`footprint` total is
    at most the budget — before the OS, the runtime and the app take their share.
    """
    if not budgets_gib:
        raise ValueError(f"budgets_gib must be a non-empty sequence of positive numbers, got {budgets_gib!r}")
    for i, b in enumerate(budgets_gib):
        check_float(f"budgets_gib[{i}]", b, min=0, min_inclusive=False)
    rows = []
    for m in models:
        for dt in dtypes:
            fp = footprint(
                m,
                weight_dtype=dt,
                kv_dtype=kv_dtype,
                seq_len=seq_len,
                group_size=group_size if dt in ("int8", "int4") else None,
            )
            row = {
                "model": fp.model,
                "weights": dt,
                "weights GiB": fp.weights / GIB,
                "KV cache GiB": fp.kv_cache / GIB,
                "activations GiB": fp.activations / GIB,
                "total GiB": fp.total / GIB,
            }
            row.update({f"fits {b} GiB": "yes" if fp.total <= b * GIB else "no" for b in budgets_gib})
            rows.append(row)
    return rows


def bits_to_fit(
    config, budget_bytes: int, *, seq_len: int = 4096, kv_dtype: str = "fp16", prefill_chunk: int | None = None
) -> float:
    """Bits per weight at which ``config`` fits ``budget_bytes`` with its KV cache and activations.

    :math:`8\\,(\\text{budget} - \\text{KV} - \\text{activations}) / N`; zero or negative
    means no quantization fits: the cache and activations alone exceed the budget.
    """
    _pos_int("budget_bytes", budget_bytes)
    fp = footprint(config, weight_dtype="int8", kv_dtype=kv_dtype, seq_len=seq_len, prefill_chunk=prefill_chunk)
    total, _ = configs.count_params(_config(config)[1])
    return 8 * (budget_bytes - fp.kv_cache - fp.activations) / total


# --------------------------------------------------------------------------- the decode bound


def decode_bound(bytes_per_step: float, bandwidth: float, *, batch_size: int = 1) -> float:
    r"""Upper bound on decode tokens/s: :math:`\text{batch} \cdot B / \text{bytes per step}`.

    Each decode step produces one token per sequence and must stream every active weight
    (and each sequence's KV cache) from memory at least once.
    """
    check_float("bytes_per_step", bytes_per_step, min=0, min_inclusive=False)
    check_float("bandwidth", bandwidth, min=0, min_inclusive=False)  # bytes/s
    return _pos_int("batch_size", batch_size) * bandwidth / bytes_per_step


def patient_step_bytes(model, *, context: int, batch_size: int = 1) -> int:
    """Bytes one decode step of a TinyLM must read: all weights (measure.weight_bytes) + the KV cache at ``context``."""
    if not hasattr(model, "config") or not hasattr(model, "new_cache"):
        raise TypeError(f"model must be a TinyLM-like model, got {type(model).__name__}")
    context, batch_size = _pos_int("context", context), _pos_int("batch_size", batch_size)
    c = model.config
    if context > c.max_seq_len:
        raise ValueError(f"context must be <= max_seq_len ({c.max_seq_len}), got {context}")
    elem = model.embed.weight.element_size()
    kv = 2 * c.n_layers * batch_size * c.n_kv_heads * context * c.head_dim * elem
    return measure.weight_bytes(model) + kv


def config_step_bytes(
    config,
    *,
    dtype: str = "fp16",
    context: int = 4096,
    batch_size: int = 1,
    kv_dtype: str = "fp16",
    group_size: int | None = None,
) -> int:
    """Bytes one decode step of a published model reads: its *active* weights + the KV cache at ``context``.

    Active weights are ``weight_bytes x active / total`` (for an MoE, the experts a token
    uses; at batch > 1 different tokens may use different experts, so this is a lower bound).
    ``group_size`` adds the scales of group-wise int8/int4 weights (:func:`configs.weight_bytes`).
    """
    _, cfg = _config(config)
    total, active = configs.count_params(cfg)
    weights = configs.weight_bytes(cfg, dtype, group_size=group_size) * active / total
    return math.ceil(weights + configs.kv_cache_bytes(cfg, seq_len=context, batch_size=batch_size, dtype=kv_dtype))
