"""Measuring efficiency honestly: one timing protocol, peak memory, the report card (chapter 01).

Every chapter, benchmark and test times code through this module, with one protocol:

* **Warm up, then fill a minimum time.** The first calls pay for allocation and kernel
  selection and are discarded. Then whole rounds run until at least ``min_time`` seconds
  and ``repeats`` rounds have passed (like :func:`timeit.Timer.autorange`): a 50 µs op gets
  thousands of samples, a 2 s one gets ``repeats``. We report the **median** and the
  spread (relative interquartile range), never one un-warmed call.
* **Side by side, interleaved.** Variants are timed A B C A B C ... in one run (the order
  rotating each round), so a machine that slows down mid-measurement hurts every variant
  alike, and we report *ratios* to a baseline, never absolute claims.
* **Other work, detected.** Around the run we read how much CPU time the whole machine
  (including a hypervisor's steal) and this process used (Linux ``/proc/stat`` and
  ``/proc/self/stat``): the difference is the cores *other* processes took meanwhile. When
  that leaves our threads short of cores, or this process itself got less than 0.8 of a
  core (its one thread shared a core), the run is "noisy": it is measured once more and
  the calmer run kept, and if it is still disturbed the result says so (``Timings.noisy``,
  ``Timings.note()``), so prose generated from it can say so too. Each round also times a
  small reference matmul (a load probe, compared with its best rate in this process); off
  Linux that probe decides. We tried the probe alone first: on an idle 2-core machine it
  read ×1.6–4 its best between other kernels (threads waking, caches refilled) and on a
  busy one as little as ×1.25, so it cannot tell the two apart; the CPU accounting can.
* **Words from numbers.** :func:`compare` and :func:`speed_phrase` turn two timings into
  "2.3× faster", "1.4× slower" or "within noise" — three ways, with the noise band taken
  from the measured spread — and :func:`growth` turns a size sweep into "flat", "grows
  about linearly", "grows about quadratically" from the fitted exponent. A notebook never
  types such a word over a timing.
* **Memory measured, not estimated.** On CPU we reset and read the process's peak resident
  set size (Linux ``/proc/self/clear_refs`` + ``VmHWM``), after handing the heap's free
  pages back to the OS (glibc ``malloc_trim``) so that a small allocation is not served
  from pages already resident; on CUDA, the allocator's peak.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import math
import os
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from course_lib.checks import check_choice, check_float, check_int
from course_lib.viz import Table

# --------------------------------------------------------------------------- timing

#: A run whose load probe ran this many times slower than its best is "noisy".
NOISY_LOAD = 1.5
#: Ratios within this relative band of 1 are "within noise" even when the spread is tiny.
MIN_NOISE = 0.10
#: The widest noise band: a run whose spread exceeds the median (heavy load) still gets a verdict.
MAX_NOISE = 0.90
#: Most rounds one measurement takes, however short the functions.
MAX_ROUNDS = 1000
#: A run in which this process (with the child processes it waited for) got less than this
#: many cores is "noisy" too: its threads waited for a core (see :attr:`Timings.noisy`). Here a
#: timing on an idle machine used 0.95-1.09 cores (1 and 2 threads, a sandbox round trip); a
#: one-thread timing beside two busy processes on two cores, 0.72.
MIN_OWN_CORES = 0.8
#: The shortest run whose own-CPU share is judged: CPU time is counted in clock ticks
#: (10 ms each on Linux), too coarse for shorter runs.
MIN_OWN_SECONDS = 0.25


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _time_once(fn: Callable, setup: Callable | None) -> float:
    state = setup() if setup is not None else None
    _sync()
    t0 = time.perf_counter()
    fn(state) if setup is not None else fn()
    _sync()
    return time.perf_counter() - t0


@dataclass
class Timing:
    """Samples of one variant, in seconds."""

    samples: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def best(self) -> float:
        return min(self.samples)

    @property
    def spread(self) -> float:
        """Relative interquartile range, a noise gauge (0.05 = ±2.5 % around the median); nan below 4 samples."""
        if len(self.samples) < 4:
            return float("nan")
        q = statistics.quantiles(self.samples, n=4)
        return (q[2] - q[0]) / self.median


class Timings(dict):
    """``{variant: Timing}`` plus how the run went: threads, other work on the machine, re-measured."""

    threads: int = 1
    rounds: int = 0
    others: float | None = None  # CPU cores other processes used during the run (None: unknown)
    own: float | None = None  # CPU cores this process and its waited-for children used (None: unknown / too short)
    load: float = 1.0  # probe median / the best probe time this process has seen
    remeasured: bool = False

    @property
    def starved(self) -> bool:
        """This process got less than :data:`MIN_OWN_CORES` of a core during the run.

        A timing loop keeps at least one thread running, so on a quiet machine it uses about a
        core or more. Less means its threads waited for a core: what a one-thread timing beside
        two busy processes on two cores looks like, where the others' share alone (about 1.3
        cores) stays under :func:`others_threshold` (1.5).
        """
        return self.own is not None and self.own < MIN_OWN_CORES

    @property
    def noisy(self) -> bool:
        """True when other work competed for the cores this run's threads needed.

        On Linux: other processes (and the hypervisor's steal) used more cores than were
        left over beyond our threads, by over half a core (:func:`others_threshold`), or this
        process was :attr:`starved`. Elsewhere: the load probe ran more than NOISY_LOAD x its best.
        """
        if self.others is not None:
            return self.others > others_threshold(self.threads) or self.starved
        return self.load > NOISY_LOAD

    def note(self) -> str:
        """One line for a caption: rounds, threads, and whether the machine was busy."""
        if not self.noisy:
            busy = ""
        elif self.others is not None and not self.starved:
            busy = f"; other processes used {self.others:.1f} CPU cores meanwhile, so treat close calls as noise"
        elif self.others is not None:
            busy = (
                f"; other processes used {self.others:.1f} CPU cores meanwhile and this one got only "
                f"{self.own:.2f} of a core, so treat close calls as noise"
            )
        else:
            busy = f"; the machine was busy (probe ×{self.load:.1f} slower than its best), treat close calls as noise"
        return f"median of {self.rounds} interleaved rounds, {threads_phrase(self.threads)}{busy}"


# --------------------------------------------------------------------------- other work on the machine

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_ticks() -> tuple[int, int] | None:
    """(busy ticks of the whole machine, including steal; CPU ticks of this process and of the
    child processes it has waited for, e.g. a sandbox run), or None off Linux."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    busy = sum(fields[:8]) - idle  # user nice system idle iowait irq softirq steal (guest is inside user)
    return busy, sum(int(v) for v in own[11:15])  # utime + stime (all threads) + cutime + cstime


def others_threshold(threads: int) -> float:
    """Cores other processes may use before they compete with ``threads`` of ours: the spare ones + 0.5."""
    return max(0.5, (os.cpu_count() or 1) - threads + 0.5)


def _others_cores(before, after, seconds: float) -> float | None:
    if before is None or after is None or seconds <= 0:
        return None
    busy, own = after[0] - before[0], after[1] - before[1]
    return max(0.0, (busy - own) / _CLK_TCK / seconds)


def _own_cores(before, after, seconds: float) -> float | None:
    """Cores this process (and its waited-for children) used; None off Linux or for a run under MIN_OWN_SECONDS."""
    if before is None or after is None or seconds < MIN_OWN_SECONDS:
        return None
    return (after[1] - before[1]) / _CLK_TCK / seconds


# The load probe: a (64, 256) @ (256, 256) fp32 matmul, ~8 MFLOP, ~0.1-1 ms on a laptop core.
_PROBE: dict = {}


def _probe_fn() -> Callable:
    if "fn" not in _PROBE:
        g = torch.Generator().manual_seed(0)
        a, w = torch.rand(64, 256, generator=g), torch.rand(256, 256, generator=g)
        _PROBE["fn"] = lambda: a @ w
        _PROBE["best"] = min(_time_once(_PROBE["fn"], None) for _ in range(20))
    return _PROBE["fn"]


def probe_best() -> float:
    """The fastest the load probe has run in this process, in seconds (measures it the first time)."""
    _probe_fn()
    return _PROBE["best"]


def _normalise(variants: dict) -> dict:
    if not isinstance(variants, dict) or not variants:
        raise ValueError("variants must be a non-empty dict {name: fn or (setup, fn)}")
    norm = {}
    for name, v in variants.items():
        setup, fn = v if isinstance(v, tuple) else (None, v)
        if not callable(fn) or (setup is not None and not callable(setup)):
            raise TypeError(f"variant {name!r} must be a callable or a (setup, fn) pair of callables")
        norm[name] = (setup, fn)
    return norm


def _run(norm: dict, *, warmup: int, repeats: int, min_time: float, probe: bool) -> Timings:
    names = list(norm)
    round_s = 0.0
    for _ in range(max(warmup, 1) if min_time > 0 else warmup):  # >= 1 warm-up round sizes the run
        round_s = sum(_time_once(norm[n][1], norm[n][0]) for n in names)
    rounds = repeats if round_s <= 0 else max(repeats, min(MAX_ROUNDS, math.ceil(min_time / round_s)))
    samples: dict[str, list[float]] = {n: [] for n in names}
    probes = []
    pfn = _probe_fn() if probe else None
    ticks, t0 = _cpu_ticks(), time.perf_counter()
    for r in range(rounds):
        for n in names[r % len(names) :] + names[: r % len(names)]:
            samples[n].append(_time_once(norm[n][1], norm[n][0]))
        if pfn is not None:
            probes.append(_time_once(pfn, None))
    out = Timings({n: Timing(s) for n, s in samples.items()})
    out.threads, out.rounds = torch.get_num_threads(), rounds
    after, seconds = _cpu_ticks(), time.perf_counter() - t0
    out.others, out.own = _others_cores(ticks, after, seconds), _own_cores(ticks, after, seconds)
    if probes:
        _PROBE["best"] = min(_PROBE["best"], min(probes))
        out.load = statistics.median(probes) / _PROBE["best"]
    return out


def interleaved(
    variants: dict,
    *,
    warmup: int = 2,
    repeats: int = 7,
    min_time: float = 0.2,
    probe: bool = True,
    remeasure: bool = True,
) -> Timings:
    """Time several variants round-robin; each value is ``fn`` or ``(setup, fn)`` (setup untimed).

    At least ``warmup`` rounds are discarded, then at least ``repeats`` rounds are kept and
    more until ``min_time`` seconds are filled (``min_time=0``: exactly ``repeats``). Every
    round runs each variant once, rotating the starting variant, so drift is shared, and
    times the load probe once (``probe=False`` skips it). A noisy run is measured once more
    (``remeasure``) and the calmer of the two kept. Returns :class:`Timings`.
    """
    check_int("warmup", warmup, min=0)
    check_int("repeats", repeats, min=1)
    check_float("min_time", min_time, min=0, max=60)  # seconds
    norm = _normalise(variants)
    out = _run(norm, warmup=warmup, repeats=repeats, min_time=min_time, probe=probe)
    if probe and remeasure and out.noisy:
        again = _run(norm, warmup=0, repeats=repeats, min_time=min_time, probe=probe)
        if again.others is None:
            calmer = again.load < out.load
        else:  # a run that is no longer noisy wins; else the one other processes disturbed less
            calmer = not again.noisy or again.others < out.others
        out = again if calmer else out
        out.remeasured = True
    return out


def threads_phrase(n: int) -> str:
    """``"1 thread"``, ``"2 threads"``: a thread count for prose and captions."""
    return f"{n} thread{'s' if n != 1 else ''}"


@contextlib.contextmanager
def num_threads(n: int | None):
    """Run the ``with`` block at ``n`` intra-op threads (``None``: leave PyTorch's setting), then restore the count.

    Thread count is a process-wide setting in PyTorch; this is the one place the course
    changes it for a block and puts it back, even when the block raises.
    """
    if n is None:
        yield
        return
    n = check_int("n", n, min=1)
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def time_fn(fn: Callable, *, setup: Callable | None = None, warmup: int = 2, repeats: int = 7, **kw) -> float:
    """Median seconds of ``fn()`` (or ``fn(setup())`` with the setup untimed) under the protocol."""
    return interleaved({"fn": (setup, fn) if setup else fn}, warmup=warmup, repeats=repeats, **kw)["fn"].median


def speedups(timings: dict[str, Timing], baseline: str) -> dict[str, float]:
    """``median(baseline) / median(variant)``: above 1 means faster than the baseline."""
    base = timings[check_choice("baseline", baseline, timings)].median
    return {n: base / t.median for n, t in timings.items()}


# --------------------------------------------------------------------------- words from numbers


def noise_band(*timings: Timing) -> float:
    """Relative band inside which a ratio of these timings is "within noise": mean spread, within [MIN_NOISE, MAX_NOISE]."""
    spreads = [t.spread for t in timings if isinstance(t, Timing) and not math.isnan(t.spread)]
    return min(MAX_NOISE, max(MIN_NOISE, statistics.fmean(spreads) if spreads else MIN_NOISE))


def speed_word(speedup: float, *, noise: float = MIN_NOISE) -> str:
    """'faster', 'slower' or 'within noise' for ``speedup`` = baseline time / variant time."""
    check_float("speedup", speedup, min=0, min_inclusive=False)
    check_float("noise", noise, min=0, max=1, max_inclusive=False)
    if speedup > 1 + noise:
        return "faster"
    if speedup < 1 / (1 + noise):
        return "slower"
    return "within noise"


def speed_phrase(speedup: float, *, than: str = "", noise: float = MIN_NOISE) -> str:
    """'2.3× faster than X', '1.4× slower than X' or 'as fast as X (×0.97, within noise)'."""
    word = speed_word(speedup, noise=noise)
    tail = f" than {than}" if than else ""
    if word == "within noise":
        return f"as fast as {than or 'the baseline'} (×{speedup:.2f}, within noise)"
    x = speedup if word == "faster" else 1 / speedup
    return f"{x:.1f}× {word}{tail}" if x < 10 else f"{x:.0f}× {word}{tail}"


@dataclass(frozen=True)
class Comparison:
    """A variant against a baseline, timed in one run: speed-up, noise band, verdict and phrase."""

    variant: str
    baseline: str
    speedup: float  # baseline median / variant median
    noise: float
    word: str  # 'faster' | 'slower' | 'within noise'
    phrase: str


def compare(timings: dict, variant: str, baseline: str) -> Comparison:
    """Compare two entries of one :func:`interleaved` run; the noise band comes from their spreads."""
    check_choice("variant", variant, timings)
    check_choice("baseline", baseline, timings)
    s = timings[baseline].median / timings[variant].median
    noise = noise_band(timings[variant], timings[baseline])
    if getattr(timings, "noisy", False):
        noise = max(noise, 0.25)  # a disturbed run earns a wider band
    return Comparison(
        variant, baseline, s, noise, speed_word(s, noise=noise), speed_phrase(s, than=baseline, noise=noise)
    )


@dataclass(frozen=True)
class Growth:
    """How a cost grows with a size: the fitted exponent k of cost ∝ size^k, and its word."""

    exponent: float
    word: str


def growth(sizes, costs, *, flat_below: float = 0.25) -> Growth:
    r"""Least-squares slope of :math:`\log c` against :math:`\log n`, and a word for it.

    ``|k| < flat_below`` is "flat"; k near 1 "grows about linearly", near 2 "grows about
    quadratically" (within ±0.25); anything else is stated as the exponent.
    """
    sizes, costs = list(sizes), list(costs)
    if len(sizes) != len(costs) or len(sizes) < 2:
        raise ValueError(
            f"sizes and costs must be equal-length sequences of >= 2 values, got {len(sizes)} and {len(costs)}"
        )
    for name, values in (("sizes", sizes), ("costs", costs)):
        for i, v in enumerate(values):
            check_float(f"{name}[{i}]", v, min=0, min_inclusive=False)
    xs, ys = [math.log(v) for v in sizes], [math.log(v) for v in costs]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        raise ValueError("sizes must not all be equal")
    k = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    if abs(k) < flat_below:
        word = "flat"
    elif abs(k - 1) <= 0.25:
        word = "grows about linearly"
    elif abs(k - 2) <= 0.25:
        word = "grows about quadratically"
    elif k < 0:
        word = f"falls (like n^{k:.1f})"
    else:
        word = f"grows like n^{k:.1f}"
    return Growth(k, word)


# --------------------------------------------------------------------------- memory


_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _rss_peak_bytes() -> int | None:
    try:
        return int(re.search(r"VmHWM:\s+(\d+) kB", _STATUS.read_text()).group(1)) * 1024
    except (OSError, AttributeError):
        return None


def _rss_bytes() -> int | None:
    try:
        return int(re.search(r"VmRSS:\s+(\d+) kB", _STATUS.read_text()).group(1)) * 1024
    except (OSError, AttributeError):
        return None


_LIBC: dict = {}  # glibc's malloc_trim, looked up once


def _release_free_heap() -> None:
    """Return the C heap's free pages to the OS (glibc ``malloc_trim(0)``); a no-op elsewhere.

    Without it, memory a model freed earlier stays resident, a later allocation reuses it,
    and the resident-set high-water mark cannot see anything smaller than what is already
    resident: a small model's generate() then reads as 0 MB.
    """
    if "trim" not in _LIBC:
        try:
            _LIBC["trim"] = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):  # not glibc (macOS, musl, Windows)
            _LIBC["trim"] = None
    if _LIBC["trim"] is not None:
        _LIBC["trim"](0)


def peak_memory(fn: Callable, *, device: str | torch.device | None = None) -> int | None:
    """Extra bytes at the peak of ``fn()`` above the memory in use when it started.

    CUDA: ``torch.cuda.max_memory_allocated``. CPU on Linux: the resident-set high-water
    mark, reset before the call after the heap's free pages are returned to the OS
    (:func:`_release_free_heap`), so allocations reusing freed memory are counted too; it
    counts whole 4 kB pages. Returns None where neither is available (macOS, Windows).
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated(device) - before
    _release_free_heap()
    try:
        _CLEAR_REFS.write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    except OSError:
        return None
    before = _rss_bytes()
    fn()
    peak = _rss_peak_bytes()
    return None if peak is None or before is None else max(0, peak - before)


# --------------------------------------------------------------------------- model accounting


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes needed to store the weights, shared tensors once.

    A module that stores weights its own way (a quantized Linear with packed ints, scales
    and zero-points) reports them through a ``weight_bytes()`` method, and its own
    parameters and buffers are then not counted again.
    """
    seen: set[int] = set()
    total = 0
    custom = [m for m in model.modules() if m is not model and hasattr(m, "weight_bytes")]
    skip = {id(t) for m in custom for t in list(m.parameters()) + list(m.buffers())}
    total += sum(m.weight_bytes() for m in custom)
    tensors = list(model.parameters()) + [b for n, b in model.named_buffers() if not n.startswith("rope_")]
    for t in tensors:
        if id(t) in seen or id(t) in skip:
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
    return total


def _prompt(model, batch: int, length: int):
    gen = torch.Generator().manual_seed(0)
    dev = next(model.parameters()).device
    return torch.randint(0, model.config.vocab_size, (batch, length), generator=gen).to(dev)


def prefill_fn(model, *, prompt_len: int, batch: int = 1):
    """A (setup, run) pair timing one prompt pass that fills a fresh KV cache."""
    x = _prompt(model, batch, prompt_len)

    def setup():
        return model.new_cache(batch, prompt_len)

    @torch.no_grad()
    def run(cache):
        model(x, cache=cache)

    return setup, run


def decode_fn(model, *, prompt_len: int, new_tokens: int, batch: int = 1):
    """A (setup, run) pair timing ``new_tokens`` single-token decode steps after a prompt."""
    if prompt_len + new_tokens > model.config.max_seq_len:
        raise ValueError(
            f"prompt_len + new_tokens = {prompt_len + new_tokens} exceeds max_seq_len {model.config.max_seq_len}"
        )
    x = _prompt(model, batch, prompt_len)
    steps = _prompt(model, batch, new_tokens)

    @torch.no_grad()
    def setup():
        cache = model.new_cache(batch, prompt_len + new_tokens)
        model(x, cache=cache)
        return cache

    @torch.no_grad()
    def run(cache):
        for i in range(new_tokens):
            model(steps[:, i : i + 1], cache=cache)

    return setup, run


# --------------------------------------------------------------------------- report card

CARD_FIELDS = {
    "params": ("parameters", "{:,.0f}"),
    "active_params": ("active params / token", "{:,.0f}"),
    "weight_mb": ("weights (MB)", "{:.2f}"),
    "gflops_per_token": ("GFLOPs / token (fwd)", "{:.4f}"),
    "val_ppl": ("val perplexity", "{:.2f}"),
    "prefill_ms": ("prefill latency (ms)", "{:.2f}"),
    "prefill_tok_s": ("prefill tokens/s", "{:,.0f}"),
    "decode_ms_per_token": ("decode ms / token", "{:.3f}"),
    "decode_tok_s": ("decode tokens/s", "{:,.0f}"),
    "peak_mem_mb": ("peak memory, generate (MB)", "{:.1f}"),
}
# For each metric: does a larger value mean better? (for the ratio row's reading)
_HIGHER_IS_BETTER = {"prefill_tok_s", "decode_tok_s"}


class Report:
    """Report cards of one or more variants, measured in one run, with ratios to a baseline.

    ``report.cards[name]`` is a plain dict per variant, ``report.to_dict()`` everything,
    and the object renders as a table in a notebook (variant rows, then "× baseline" rows).
    """

    def __init__(self, cards: dict[str, dict], baseline: str, settings: dict):
        self.cards, self.baseline, self.settings = cards, baseline, settings

    def ratio(self, name: str, metric: str) -> float:
        """``metric`` of ``name`` divided by the baseline's."""
        b = self.cards[self.baseline][metric]
        v = self.cards[name][metric]
        return float("nan") if b in (None, 0) or v is None else v / b

    def to_dict(self) -> dict:
        return {"baseline": self.baseline, "settings": self.settings, "cards": self.cards}

    def table(self) -> Table:
        metrics = [m for m in CARD_FIELDS if any(c.get(m) is not None for c in self.cards.values())]
        rows = []
        for name, c in self.cards.items():
            row = {"variant": name}
            for m in metrics:
                v = c.get(m)
                row[CARD_FIELDS[m][0]] = (
                    "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else CARD_FIELDS[m][1].format(v)
                )
            rows.append(row)
        for name in self.cards:
            if name == self.baseline:
                continue
            row = {"variant": f"{name} ÷ {self.baseline}"}
            for m in metrics:
                r = self.ratio(name, m)
                row[CARD_FIELDS[m][0]] = "" if math.isnan(r) else f"×{r:.2f}"
            rows.append(row)
        return Table(rows, caption=f"Report card (baseline: {self.baseline}; {self.settings_text()})")

    def settings_text(self) -> str:
        s = self.settings
        rounds = s.get("rounds", s["repeats"])
        busy = "; the machine was busy: treat close calls as noise" if s.get("busy") else ""
        threads = f", {threads_phrase(s['threads'])}" if s.get("threads") else ""
        return (
            f"prompt {s['prompt_len']} tokens, decode {s['new_tokens']} tokens, batch 1, "
            f"median of {rounds} rounds{threads}, {s['device']}{busy}"
        )

    def _repr_html_(self) -> str:
        return self.table()._repr_html_()

    def __repr__(self) -> str:
        return self.table().to_text()


def report_card(
    variants: dict | torch.nn.Module,
    *,
    baseline: str | None = None,
    val_tokens=None,
    eval_seq_len: int = 128,
    eval_batches: int = 8,
    prompt_len: int = 64,
    new_tokens: int = 32,
    warmup: int = 2,
    repeats: int = 5,
    memory: bool = True,
) -> Report:
    """Measure the efficiency report card of one model or of several variants side by side.

    ``variants`` is a model or ``{name: model}``; ``baseline`` names the row the ratios are
    taken against (default: the first). Quality is validation perplexity on ``val_tokens``
    (omitted when None). Latencies are measured interleaved across variants.
    """
    from course_lib.train import evaluate

    if isinstance(variants, torch.nn.Module):
        variants = {"model": variants}
    if not variants:
        raise ValueError("variants must not be empty")
    for name, m in variants.items():
        if not hasattr(m, "config") or not hasattr(m, "new_cache"):
            raise TypeError(f"variant {name!r} must be a TinyLM-like model (config, new_cache), got {type(m).__name__}")
    baseline = check_choice("baseline", baseline or next(iter(variants)), variants)
    check_int("prompt_len", prompt_len, min=1)
    check_int("new_tokens", new_tokens, min=1)

    cards: dict[str, dict] = {}
    for name, m in variants.items():
        m.eval()
        flops = m.flops_per_token(prompt_len + new_tokens)["total"]
        cards[name] = {
            "params": m.num_params(),
            "active_params": m.num_params(active=True),
            "weight_mb": weight_bytes(m) / 1e6,
            "gflops_per_token": flops / 1e9,
            "val_ppl": None,
        }
        if val_tokens is not None:
            with torch.no_grad():
                cards[name]["val_ppl"] = math.exp(
                    evaluate(m, val_tokens, seq_len=eval_seq_len, batch_size=8, max_batches=eval_batches)
                )
    pre = interleaved(
        {n: prefill_fn(m, prompt_len=prompt_len) for n, m in variants.items()}, warmup=warmup, repeats=repeats
    )
    dec = interleaved(
        {n: decode_fn(m, prompt_len=prompt_len, new_tokens=new_tokens) for n, m in variants.items()},
        warmup=warmup,
        repeats=repeats,
    )
    for name, m in variants.items():
        c = cards[name]
        c["prefill_ms"] = pre[name].median * 1e3
        c["prefill_tok_s"] = prompt_len / pre[name].median
        c["decode_ms_per_token"] = dec[name].median / new_tokens * 1e3
        c["decode_tok_s"] = new_tokens / dec[name].median
        c["peak_mem_mb"] = None
        if memory:
            x = _prompt(m, 1, prompt_len)
            peak = peak_memory(lambda m=m, x=x: m.generate(x, new_tokens))
            c["peak_mem_mb"] = None if peak is None else peak / 1e6
    dev = next(next(iter(variants.values())).parameters()).device
    settings = {
        "prompt_len": prompt_len,
        "new_tokens": new_tokens,
        "repeats": repeats,
        "rounds": min(pre.rounds, dec.rounds),
        "busy": pre.noisy or dec.noisy,
        "warmup": warmup,
        "device": str(dev),
        "threads": torch.get_num_threads(),
    }
    return Report(cards, baseline, settings)
