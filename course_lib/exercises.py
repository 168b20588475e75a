"""Checkers for the exercises at the end of each chapter.

Every exercise is a stub the reader fills in (it raises ``NotImplementedError`` until
then) and a checker here that runs it against cases computed by the course's own, tested
code. A checker reports one of three things:

* ``not attempted yet`` — the stub still raises ``NotImplementedError`` (no error, so a
  notebook with untouched stubs still runs top to bottom);
* ``passed`` — every case agrees;
* a :class:`ExerciseFailed` error that names the first case that disagrees and both values.

Solution cells (tagged ``solution``, hidden in the book) end with
``assert check_...(fn).passed`` so CI proves every solution passes its checker.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from course_lib.checks import check_callable


class ExerciseFailed(AssertionError):
    """The reader's function disagrees with the reference on a case."""


@dataclass
class CheckResult:
    exercise: str
    status: str  # "passed" | "not attempted yet"
    cases: int = 0

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def __repr__(self) -> str:
        mark = "✓" if self.passed else "…"
        detail = f" ({self.cases} cases)" if self.passed else " — fill in the stub above, then run this cell again"
        return f"{mark} {self.exercise}: {self.status}{detail}"

    def _repr_html_(self) -> str:
        colour = "#009E73" if self.passed else "#E69F00"
        return f'<p style="color:{colour};font-weight:600">{self!r}</p>'


def _close(a, b, rel: float) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=rel, abs_tol=rel)
    try:
        import torch

        if torch.is_tensor(a) or torch.is_tensor(b):
            return torch.allclose(
                torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64), rtol=rel, atol=rel
            )
    except ImportError:
        pass
    return a == b


def run_cases(exercise: str, fn: Callable, cases: list[tuple[dict, object]], *, rel: float = 1e-6) -> CheckResult:
    """Call ``fn(**kwargs)`` for each ``(kwargs, expected)``; see the module doc for outcomes."""
    check_callable(f"{exercise}: your answer (pass the function itself, not its result)", fn)
    for kwargs, expected in cases:
        try:
            got = fn(**kwargs)
        except NotImplementedError:
            return CheckResult(exercise, "not attempted yet")
        if not _close(got, expected, rel):
            raise ExerciseFailed(f"{exercise}: for {kwargs} you returned {got!r}, expected {expected!r}")
    return CheckResult(exercise, "passed", len(cases))


# ---------------------------------------------------------------- chapter 01: baseline


def check_kv_cache_bytes(fn: Callable) -> CheckResult:
    """01 — ``fn(config, seq_len, batch_size, bytes_per_value)``: bytes of a full KV cache.

    Reference: allocate a real cache with :meth:`TinyLM.new_cache` and count its bytes.
    """
    import torch

    from course_lib.model import ModelConfig, TinyLM

    cases = []
    for cfg, seq, batch, dtype in [
        (
            ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=4, max_seq_len=64),
            64,
            1,
            torch.float32,
        ),
        (
            ModelConfig(vocab_size=64, d_model=48, n_layers=3, n_heads=6, n_kv_heads=2, max_seq_len=40),
            40,
            3,
            torch.float32,
        ),
        (
            ModelConfig(vocab_size=64, d_model=64, n_layers=1, n_heads=8, n_kv_heads=1, max_seq_len=32),
            17,
            2,
            torch.float16,
        ),
    ]:
        model = TinyLM(cfg).to(dtype)
        expected = sum(c.nbytes() for c in model.new_cache(batch, seq))
        cases.append(
            (dict(config=cfg, seq_len=seq, batch_size=batch, bytes_per_value=torch.finfo(dtype).bits // 8), expected)
        )
    return run_cases("01 · KV-cache bytes", fn, cases)


# ---------------------------------------------------------------- chapter 00: scaling wall
# (chapter 00 checkers go here)


def check_compute_optimal(fn: Callable) -> CheckResult:
    """00 — ``fn(compute) -> (N, D)``: the Chinchilla-optimal split of a FLOP budget.

    Reference: :func:`course_lib.scaling.compute_optimal` (Hoffmann et al. 2022, eq. 4).
    """
    import torch

    from course_lib import scaling

    check_callable("00 · compute-optimal split: your answer (pass the function itself, not its result)", fn)

    def as_pair(**kwargs):
        return torch.tensor([float(v) for v in fn(**kwargs)], dtype=torch.float64)

    cases = [
        (dict(compute=c), torch.tensor(scaling.compute_optimal(c), dtype=torch.float64))
        for c in (1e19, 5.76e23, 3.8e25, 1e27)
    ]
    return run_cases("00 · compute-optimal split", as_pair, cases, rel=1e-6)


def check_decode_latency(fn: Callable) -> CheckResult:
    """00 — ``fn(config, bandwidth, dtype) -> ms``: the batch-1 decode floor, active weight bytes / bandwidth.

    Reference: :func:`course_lib.scaling.decode_bytes_per_step` at batch size 1.
    """
    from course_lib import configs, scaling

    cases = []
    for name, bandwidth, dtype in [
        ("llama-2-7b", 3.35e12, "fp16"),
        ("mixtral-8x7b", 3.35e12, "fp16"),
        ("phi-3-mini", 1.0e11, "int4"),
        ("glam-1.2t", 4.8e12, "int8"),
    ]:
        cfg = configs.get(name)
        expected = scaling.decode_bytes_per_step(cfg, batch_size=1, dtype=dtype) / bandwidth * 1e3
        cases.append((dict(config=cfg, bandwidth=bandwidth, dtype=dtype), expected))
    return run_cases("00 · decode latency floor", fn, cases, rel=1e-6)


# ---------------------------------------------------------------- chapter 02: mixture of experts
# (chapter 02 checkers go here)


def _moe_routing_cases():
    """Router outputs (probs (N, E), experts (N, k)) for the chapter 02 checkers."""
    import torch

    from course_lib.moe import top_k_route

    out = []
    for seed, (n, e, k, scale) in enumerate(
        [(1, 2, 1, 1.0), (16, 4, 1, 1.0), (33, 8, 2, 3.0), (50, 6, 3, 0.2), (64, 8, 2, 10.0)]
    ):
        logits = torch.randn(n, e, generator=torch.Generator().manual_seed(seed)) * scale
        _, experts, probs = top_k_route(logits, k)
        out.append((probs, experts, e))
    return out


def check_load_balancing_loss(fn: Callable) -> CheckResult:
    """02 — ``fn(probs, experts, n_experts)``: the Switch balance loss ``E · Σ_i f_i · P_i``.

    Reference: :func:`course_lib.moe.load_balancing_loss` (f over the N·k assignments).
    """
    from course_lib.moe import load_balancing_loss

    cases = [
        (dict(probs=p, experts=x, n_experts=e), float(load_balancing_loss(p, x, e))) for p, x, e in _moe_routing_cases()
    ]
    return run_cases("02 · load-balancing loss", lambda **kw: float(fn(**kw)), cases, rel=1e-5)


def check_capacity_keep(fn: Callable) -> CheckResult:
    """02 — ``fn(experts, n_experts, capacity)``: which assignments fit (bool (N, k)).

    Reference: :func:`course_lib.moe.capacity_keep` (first choices queue before second ones).
    """
    from course_lib.moe import capacity_keep

    cases = []
    for _, x, e in _moe_routing_cases():
        n, k = x.shape
        for cap in sorted({1, max(1, n * k // e), n * k}):
            cases.append((dict(experts=x, n_experts=e, capacity=cap), capacity_keep(x, e, cap)))
    return run_cases("02 · expert capacity", fn, cases)


# ---------------------------------------------------------------- chapter 03: sparse attention
# (chapter 03 checkers go here)


def check_window_pairs(fn: Callable) -> CheckResult:
    """03 — ``fn(seq_len, window)``: (query, key) pairs a causal sliding window keeps.

    Reference: count the True entries of the mask built by ``course_lib.attention``.
    """
    from course_lib.attention import sliding_window_mask

    cases = [
        (dict(seq_len=t, window=w), int(sliding_window_mask(t, w).sum()))
        for t, w in [(1, 1), (8, 1), (8, 3), (10, 10), (10, 25), (64, 16), (257, 32), (1000, 999)]
    ]
    return run_cases("03 · sliding-window pairs", fn, cases)


def check_reach(fn: Callable) -> CheckResult:
    """03 — ``fn(n_layers, window, dilation, seq_len)``: positions that can influence the last token.

    Reference: the receptive field of a stack of dilated-window layers, propagated through
    the real masks by ``course_lib.attention.receptive_field``.
    """
    from course_lib.attention import dilated_window_mask, receptive_field

    cases = []
    for layers, w, d, t in [(1, 4, 1, 32), (3, 4, 1, 32), (4, 8, 1, 20), (2, 3, 2, 40), (3, 5, 3, 64), (6, 4, 4, 50)]:
        expected = int(receptive_field(dilated_window_mask(t, w, d), layers)[-1].sum())
        cases.append((dict(n_layers=layers, window=w, dilation=d, seq_len=t), expected))
    return run_cases("03 · receptive field of stacked windows", fn, cases)


# ---------------------------------------------------------------- chapter 05: quantization
# (chapter 05 checkers go here)


def check_quantized_bytes(fn: Callable) -> CheckResult:
    """05 — ``fn(out_features, in_features, bits, group_size, symmetric, bias)``: bytes of a QuantLinear.

    Reference: the ``weight_bytes()`` of a real :class:`course_lib.quant.QuantLinear` (packed
    codes, fp16 scales, uint8 zero-points when asymmetric, fp32 bias). ``group_size`` None =
    one group per output row.
    """
    from course_lib.quant import QuantLinear

    cases = []
    for out_f, in_f, bits, g, sym, bias in [
        (64, 128, 4, 32, False, False),
        (96, 256, 8, None, True, True),
        (10, 72, 3, 24, False, True),
        (384, 1536, 2, 128, True, False),
        (7, 9, 4, None, False, False),
    ]:
        layer = QuantLinear(in_f, out_f, bits=bits, group_size=g, symmetric=sym, bias=bias)
        kwargs = dict(out_features=out_f, in_features=in_f, bits=bits, group_size=g, symmetric=sym, bias=bias)
        cases.append((kwargs, layer.weight_bytes()))
    return run_cases("05 · bytes of a quantized layer", fn, cases)


def check_rtn_groupwise(fn: Callable) -> CheckResult:
    """05 — ``fn(w, bits, group_size)``: asymmetric round-to-nearest per group, dequantized.

    Reference: :func:`course_lib.quant.fake_quantize` with ``symmetric=False``,
    ``granularity="group"`` (fp32 scales).
    """
    import torch

    from course_lib.quant import fake_quantize

    gen = torch.Generator().manual_seed(5)
    cases = []
    for rows, cols, bits, g in [(4, 16, 4, 8), (8, 64, 2, 32), (3, 12, 3, 4), (5, 32, 8, 16)]:
        w = torch.randn(rows, cols, generator=gen) + torch.rand(rows, 1, generator=gen)
        expected = fake_quantize(w, bits=bits, symmetric=False, granularity="group", group_size=g)
        cases.append((dict(w=w.clone(), bits=bits, group_size=g), expected))
    return run_cases("05 · group-wise RTN", fn, cases, rel=1e-5)


# ---------------------------------------------------------------- chapter 06: pruning
# (chapter 06 checkers go here)


def check_nm_mask(fn: Callable) -> CheckResult:
    """06 — ``fn(weight, n, m)``: the N:M keep-mask by magnitude (True = keep).

    Reference: :func:`course_lib.prune.nm_mask` on ``|weight|`` (the ``n`` largest of every
    ``m`` consecutive inputs in each row).
    """
    import torch

    from course_lib.prune import nm_mask

    cases = []
    for shape, n, m, seed in [((4, 8), 2, 4, 0), ((3, 16), 1, 4, 1), ((5, 16), 4, 8, 2), ((2, 6), 2, 2, 3)]:
        w = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
        cases.append((dict(weight=w, n=n, m=m), nm_mask(w.abs(), n, m)))
    return run_cases("06 · N:M mask", fn, cases)


def check_remove_neurons(fn: Callable) -> CheckResult:
    """06 — ``fn(mlp, keep) -> smaller SwiGLU`` keeping only the hidden units ``keep``.

    Checked two ways: the new module has ``3 · d_model · len(keep)`` weights, and its output
    equals the original MLP's with every other neuron's contribution removed.
    """
    import copy

    import torch
    import torch.nn.functional as F

    from course_lib.model import SwiGLU

    def run(d_model, d_ff, keep, seed):
        torch.manual_seed(seed)
        mlp = SwiGLU(d_model=d_model, d_ff=d_ff)
        x = torch.randn(2, 3, d_model, generator=torch.Generator().manual_seed(seed))
        small = fn(copy.deepcopy(mlp), torch.tensor(keep))
        n = sum(p.numel() for p in small.parameters())
        if n != 3 * d_model * len(keep):
            raise ExerciseFailed(
                f"06 · remove neurons: the new MLP has {n} weights, expected 3 x {d_model} x {len(keep)}"
            )
        with torch.no_grad():
            return small(x)

    cases = []
    for d_model, d_ff, keep, seed in [(8, 16, [0, 3, 4, 9, 15], 0), (16, 40, list(range(0, 40, 3)), 1), (4, 6, [5], 2)]:
        torch.manual_seed(seed)
        mlp = SwiGLU(d_model=d_model, d_ff=d_ff)
        x = torch.randn(2, 3, d_model, generator=torch.Generator().manual_seed(seed))
        k = torch.tensor(keep)
        with torch.no_grad():
            h = F.silu(x @ mlp.gate_proj.weight[k].T) * (x @ mlp.up_proj.weight[k].T)  # (2, 3, len(keep))
            expected = h @ mlp.down_proj.weight[:, k].T
        cases.append((dict(d_model=d_model, d_ff=d_ff, keep=keep, seed=seed), expected))
    return run_cases("06 · remove MLP neurons", run, cases, rel=1e-5)


# ---------------------------------------------------------------- chapter 08: retrieval-augmented generation


def check_rrf(fn: Callable) -> CheckResult:
    """08 — ``fn(rankings, k)``: reciprocal rank fusion, fused ids best first (ties: smaller id).

    Reference: :func:`course_lib.rag.reciprocal_rank_fusion` on random rankings, including
    lists of different lengths, documents found by one list only, and a large and a zero ``k``.
    """
    import random

    from course_lib.rag import reciprocal_rank_fusion

    rng = random.Random(8)
    cases = [(dict(rankings=[[3, 1, 2], [1, 3, 4]], k=60), None), (dict(rankings=[[5, 6]], k=0), None)]
    for _ in range(6):
        n_lists, pool = rng.randint(2, 4), list(range(rng.randint(5, 30)))
        rankings = [rng.sample(pool, rng.randint(1, len(pool))) for _ in range(n_lists)]
        cases.append((dict(rankings=rankings, k=rng.choice([0, 1, 10, 60])), None))
    cases = [(kw, reciprocal_rank_fusion(kw["rankings"], k=kw["k"])[0].tolist()) for kw, _ in cases]

    def as_list(rankings, k):
        return [int(d) for d in fn(rankings=[list(r) for r in rankings], k=k)]

    return run_cases("08 · reciprocal rank fusion", as_list, cases)


# ---------------------------------------------------------------- chapter 10: cascades
# (chapter 10 checkers go here)


def check_expected_calibration_error(fn: Callable) -> CheckResult:
    """10 — ``fn(probs, labels, n_bins) -> float``: ECE of top-label confidence, equal-width bins.

    Reference: :func:`course_lib.cascade.expected_calibration_error` on random (N, K)
    probabilities with labels that make some bins over- and some under-confident.
    """
    import numpy as np

    from course_lib import cascade

    cases = []
    for seed, n, k, scale, n_bins in [
        (0, 300, 4, 2.0, 10),
        (1, 1000, 12, 4.0, 15),
        (2, 50, 3, 0.5, 5),
        (3, 400, 2, 8.0, 10),
    ]:
        rng = np.random.default_rng(seed)
        probs = cascade.softmax(rng.normal(size=(n, k)) * scale)
        labels = np.where(rng.random(n) < 0.6, probs.argmax(1), rng.integers(0, k, n))
        cases.append(
            (
                dict(probs=probs, labels=labels, n_bins=n_bins),
                cascade.expected_calibration_error(probs, labels, n_bins=n_bins),
            )
        )
    return run_cases("10 · expected calibration error", fn, cases, rel=1e-9)


def check_acceptance_probability(fn: Callable) -> CheckResult:
    """10 — ``fn(p, q) -> float``: probability that a token drafted from ``q`` passes speculative sampling against ``p``.

    Reference: :func:`course_lib.speculative.acceptance_probability`, :math:`\\sum_x \\min(p(x), q(x))`.
    """
    import numpy as np

    from course_lib import speculative

    cases = []
    for seed, v, conc in [(0, 5, 1.0), (1, 50, 0.3), (2, 2, 5.0)]:
        rng = np.random.default_rng(seed)
        p, q = rng.dirichlet(np.ones(v) * conc), rng.dirichlet(np.ones(v) * conc)
        cases.append((dict(p=p, q=q), speculative.acceptance_probability(p, q)))
    same = np.full(8, 1 / 8)
    cases += [(dict(p=same, q=same), 1.0), (dict(p=np.array([1.0, 0.0]), q=np.array([0.0, 1.0])), 0.0)]
    return run_cases("10 · acceptance probability", fn, cases, rel=1e-9)


# ---------------------------------------------------------------- chapter 11: hardware-aware design
# (chapter 11 checkers go here)


def check_decode_attention_intensity(fn: Callable) -> CheckResult:
    """11 — ``fn(kv_len, heads, kv_heads, head_dim, bytes_per_element)``: FLOPs per byte of one
    decode step of attention (one new query per head attending to ``kv_len`` cached positions).

    FLOPs: the two matmuls, 4 x heads x kv_len x head_dim. Bytes (fused): read q, the cached
    K and V of the ``kv_heads`` key/value heads, write the output. Reference:
    :func:`course_lib.hardware.attention_cost` with batch 1 and q_len 1.
    """
    from course_lib.hardware import attention_cost

    dtypes = {4: "fp32", 2: "fp16", 1: "int8"}
    cases = []
    for kv_len, heads, kv_heads, head_dim in [(4096, 32, 32, 128), (4096, 32, 8, 128), (100, 6, 2, 32), (1, 4, 1, 8)]:
        for b in (4, 2, 1):
            cost = attention_cost(
                batch=1, heads=heads, q_len=1, kv_len=kv_len, head_dim=head_dim, kv_heads=kv_heads, dtype=dtypes[b]
            )
            kw = dict(kv_len=kv_len, heads=heads, kv_heads=kv_heads, head_dim=head_dim, bytes_per_element=b)
            cases.append((kw, cost.intensity))
    return run_cases("11 · decode attention intensity", fn, cases, rel=1e-9)


def check_ridge_batch(fn: Callable) -> CheckResult:
    """11 — ``fn(k, n, peak_flops, bandwidth, bytes_per_element)``: the smallest batch m that makes
    an (m, k) @ (k, n) matmul compute-bound on a machine with those roofs (None if none up to k·n does).

    Reference: the first m whose :func:`course_lib.hardware.matmul_cost` intensity reaches
    the ridge point ``peak_flops / bandwidth``, found by search.
    """
    from course_lib.hardware import matmul_cost

    def reference(k, n, peak, bw, b):
        ridge, dtype = peak / bw, {4: "fp32", 2: "fp16"}[b]
        lo, hi = 1, k * n
        if matmul_cost(hi, k, n, dtype=dtype).intensity < ridge:
            return None
        while lo < hi:  # intensity grows with m: bisect for the first m that reaches the ridge
            mid = (lo + hi) // 2
            lo, hi = (mid + 1, hi) if matmul_cost(mid, k, n, dtype=dtype).intensity < ridge else (lo, mid)
        return lo

    machines = [(50e9, 10e9), (1e12, 100e9), (989e12, 3.35e12), (20e9, 40e9)]  # the last: ridge below 1
    cases = [
        (dict(k=k, n=n, peak_flops=p, bandwidth=bw, bytes_per_element=b), reference(k, n, p, bw, b))
        for k, n in [(4096, 4096), (4096, 14336), (192, 512)]
        for p, bw in machines
        for b in (4, 2)
    ]
    cases.append((dict(k=64, n=64, peak_flops=1e15, bandwidth=1e9, bytes_per_element=4), None))  # never compute-bound
    return run_cases("11 · smallest compute-bound batch", fn, cases)


# ---------------------------------------------------------------- chapter 12: case studies


def _c12_number(exercise: str, fn: Callable) -> Callable:
    """Wrap a learner's function for chapter 12's checkers: a clear message for a missing
    ``return``, a non-number, or an exception raised inside it (``NotImplementedError`` passes
    through, so the stub reads *not attempted yet*)."""

    def call(**kwargs):
        try:
            got = fn(**kwargs)
        except NotImplementedError:
            raise
        except Exception as e:  # the learner's own error, shown as the checker's message
            raise ExerciseFailed(f"{exercise}: for {kwargs} your function raised {type(e).__name__}: {e}") from e
        if got is None:
            raise ExerciseFailed(f"{exercise}: your function returned None — did you forget `return`?")
        if isinstance(got, bool) or not isinstance(got, (int, float)) or not math.isfinite(got):
            raise ExerciseFailed(f"{exercise}: for {kwargs} expected a finite number, got {got!r}")
        return float(got)

    return call


def check_p_all_experts(fn: Callable) -> CheckResult:
    """12 — ``fn(n_experts, top_k, batch_size)``: probability that ``batch_size`` tokens, each choosing
    ``top_k`` distinct experts uniformly, together touch every expert.

    Reference: exact enumeration of every batch for the small cases (each token's choice is one
    of C(E, k) equally likely sets), and the inclusion–exclusion sum for the larger ones,
    which the enumeration confirms where both run.
    """
    import itertools
    from math import comb

    def enumerate_exact(e, k, b):
        sets = list(itertools.combinations(range(e), k))
        hit = sum(1 for batch in itertools.product(sets, repeat=b) if len(set().union(*batch)) == e)
        return hit / len(sets) ** b

    def inclusion_exclusion(e, k, b):
        return sum((-1) ** j * comb(e, j) * (comb(e - j, k) / comb(e, k)) ** b for j in range(e + 1))

    small = [(2, 1, 1), (2, 1, 3), (4, 2, 2), (4, 1, 4), (5, 2, 3), (3, 3, 1), (6, 2, 4)]
    for e, k, b in small:  # the reference checked against brute force
        assert abs(enumerate_exact(e, k, b) - inclusion_exclusion(e, k, b)) < 1e-12
    cases = [(dict(n_experts=e, top_k=k, batch_size=b), enumerate_exact(e, k, b)) for e, k, b in small]
    cases += [
        (dict(n_experts=e, top_k=k, batch_size=b), inclusion_exclusion(e, k, b))
        for e, k, b in [(8, 2, 1), (8, 2, 4), (8, 2, 8), (8, 2, 32), (64, 2, 64), (64, 2, 512), (16, 4, 10)]
    ]
    return run_cases(
        "12 · probability a batch reads every expert", _c12_number("12 · every expert", fn), cases, rel=1e-9
    )


def check_speedup_ceiling(fn: Callable) -> CheckResult:
    """12 — ``fn(fast, slow, batch_size)``: the most a decode step of ``fast`` can beat ``slow`` on equal
    hardware: max(weight bytes per step ratio (bf16, uniform routing, no KV cache), active-parameter ratio).

    Reference: :func:`course_lib.cases.step_bytes` and :func:`course_lib.configs.count_params`.
    """
    from course_lib import cases as case_studies
    from course_lib import configs

    def reference(fast, slow, b):
        w = [case_studies.step_bytes(c, dtype="bf16", batch_size=b)["weights"] for c in (fast, slow)]
        return max(w[1] / w[0], configs.count_params(slow)[1] / configs.count_params(fast)[1])

    pairs = [("mixtral-8x7b", "llama-2-70b"), ("glam-1.2t", "gpt-3-175b"), ("phi-3-mini", "llama-2-7b")]
    cases = []
    for fast, slow in pairs:
        for b in (1, 3, 8, 64):
            f, s = case_studies.config(fast), case_studies.config(slow)
            cases.append((dict(fast=f, slow=s, batch_size=b), reference(f, s, b)))
    return run_cases("12 · speed-up ceiling", _c12_number("12 · speed-up ceiling", fn), cases, rel=1e-9)
