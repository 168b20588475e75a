"""Chapter 11: roofline, op costs, profiling, fusion traffic, memory budgets, decode bound."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

from course_lib import configs, hardware, measure
from course_lib.experiments import hardware as hardware_runs
from course_lib.model import ModelConfig, RMSNorm, TinyLM, causal_mask

ROOF = hardware.Roofline({"fp32": 100e9, "int8": 400e9}, {"read": 10e9, "copy": 8e9})


# --------------------------------------------------------------------------- op costs, by hand


def test_matmul_cost_by_hand():
    c = hardware.matmul_cost(2, 3, 4)
    assert (c.flops, c.bytes) == (2 * 2 * 3 * 4, (6 + 12 + 8) * 4)
    c8 = hardware.matmul_cost(2, 3, 4, dtype="int8")  # int8 in, int32 out
    assert c8.bytes == (6 + 12) * 1 + 8 * 4
    c16 = hardware.matmul_cost(1024, 1024, 1024, dtype=torch.float16)
    assert c16.intensity == pytest.approx(2 * 1024**3 / (3 * 1024**2 * 2))  # n/3 FLOPs per byte in fp16


def test_gemv_intensity_tends_to_two_batch_over_bytes():
    c = hardware.gemv_cost(4096, 4096, batch=1, dtype="fp16")
    assert c.flops == 2 * 4096 * 4096 and c.bytes == (4096 + 4096 * 4096 + 4096) * 2
    assert c.intensity == pytest.approx(1.0, rel=1e-3)  # 2 FLOPs per 2-byte weight
    assert hardware.gemv_cost(4096, 4096, batch=8).intensity == pytest.approx(8 * 2 / 4, rel=0.01)


def test_attention_cost_by_hand():
    full = hardware.attention_cost(batch=2, heads=4, q_len=16, kv_len=16, head_dim=8)
    assert full.flops == 4 * 2 * 4 * 16 * 16 * 8
    assert full.bytes == (2 * 2 * 4 * 16 * 8 + 2 * 2 * 4 * 16 * 8) * 4
    causal = hardware.attention_cost(batch=2, heads=4, q_len=16, kv_len=16, head_dim=8, causal=True)
    assert causal.flops == 4 * 2 * 4 * (16 * 17 // 2) * 8
    gqa = hardware.attention_cost(batch=1, heads=8, q_len=1, kv_len=100, head_dim=4, kv_heads=2)
    assert gqa.bytes == (2 * 8 * 1 * 4 + 2 * 2 * 100 * 4) * 4 and gqa.name == "attention decode"
    unfused = hardware.attention_cost(batch=2, heads=4, q_len=16, kv_len=16, head_dim=8, fused=False)
    assert unfused.bytes - full.bytes == 4 * 2 * 4 * 16 * 16 * 4  # the score matrix, twice written and read


def test_elementwise_costs_by_hand():
    r = hardware.rmsnorm_cost(3, 5)
    assert (r.flops, r.bytes) == (4 * 15 + 3 * 3, (2 * 15 + 5) * 4)
    s = hardware.softmax_cost(3, 5, dtype="bf16")
    assert (s.flops, s.bytes) == (75, 2 * 15 * 2)
    g = hardware.swiglu_cost(3, 5)
    assert (g.flops, g.bytes) == (75, 3 * 15 * 4)
    t = hardware.stream_cost("triad", 10)
    assert (t.flops, t.bytes) == (20, 120)


def test_matmul_flops_match_torch_flop_counter():
    a, b = torch.randn(7, 13), torch.randn(13, 5)
    with FlopCounterMode(display=False) as fc:
        a @ b
    assert fc.get_total_flops() == hardware.matmul_cost(7, 13, 5).flops


def test_attention_flops_match_torch_flop_counter():
    q, k, v = torch.randn(2, 4, 6, 8), torch.randn(2, 4, 10, 8), torch.randn(2, 4, 10, 8)
    with FlopCounterMode(display=False) as fc:
        (q @ k.transpose(-2, -1) / math.sqrt(8)).softmax(-1) @ v  # the two matmuls of attention
    assert fc.get_total_flops() == hardware.attention_cost(batch=2, heads=4, q_len=6, kv_len=10, head_dim=8).flops


@settings(max_examples=40, deadline=None)
@given(q_len=st.integers(1, 40), extra=st.integers(0, 40))
def test_causal_pairs_match_the_model_mask(q_len, extra):
    kv_len = q_len + extra
    assert hardware._causal_pairs(q_len, kv_len) == int(causal_mask(q_len, kv_len).sum())


@settings(max_examples=50, deadline=None)
@given(m=st.integers(1, 5000), k=st.integers(1, 5000), n=st.integers(1, 5000), scale=st.integers(2, 8))
def test_matmul_intensity_properties(m, k, n, scale):
    c = hardware.matmul_cost(m, k, n)
    assert c.intensity == pytest.approx(hardware.matmul_cost(n, k, m).intensity)  # symmetric in m, n
    assert hardware.matmul_cost(scale * m, k, n).intensity >= c.intensity  # a bigger batch never lowers it
    assert c.intensity < min(m, k, n) / 2  # bounded by the smallest dimension: 2mkn / (4(mk+kn+mn))
    attainable = ROOF.attainable(c.intensity)
    assert attainable <= ROOF.peak("fp32") and attainable <= c.intensity * ROOF.bandwidth * (1 + 1e-12)


# --------------------------------------------------------------------------- the roofline object


def test_roofline_by_hand():
    assert ROOF.bandwidth == 10e9 and ROOF.ridge() == 10.0 and ROOF.ridge("int8") == 40.0
    assert ROOF.attainable(1.0) == 10e9 and ROOF.attainable(100.0) == 100e9
    p = hardware.place(hardware.OpCost("x", "", flops=10**9, bytes=10**9), 0.5, ROOF)
    assert (p.achieved, p.attainable, p.bound) == (2e9, 10e9, "memory")
    assert p.fraction == pytest.approx(0.2) and p.bytes_per_s == pytest.approx(2e9)
    big = hardware.place(hardware.matmul_cost(1024, 1024, 1024, dtype="int8"), 0.01, ROOF)
    assert big.bound == "compute" and big.attainable == 400e9  # placed against the int8 ceiling


def test_roofline_figure_has_ceilings_points_and_hover():
    pl = [hardware.place(hardware.matmul_cost(64, 64, 64), 1e-4, ROOF)]
    fig = hardware.roofline_figure(ROOF, pl, predicted=[hardware.gemv_cost(64, 64, batch=4)])
    names = [t.name for t in fig.data]
    assert sum(n.startswith("roof") for n in names) == 2 and "measured ops" in names
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.type == "log"
    assert "achieved" in fig.data[2].hovertemplate and list(fig.data[2].text) == ["matmul"]


# --------------------------------------------------------------------------- live measurements


def test_peak_flops_positive_and_finite():
    for dt in ("fp32", "bf16", "int8"):
        p = hardware.peak_flops(dt, min_n=64, max_n=128, repeats=1)
        assert math.isfinite(p.flops_per_s) and p.flops_per_s > 0 and p.n in (64, 128)
        assert p.tried and all(f > 0 for _, f in p.tried)


def test_bandwidth_positive_and_finite():
    for kind in ("read", "copy", "triad"):
        b = hardware.memory_bandwidth(kind, array_bytes=8 * 2**20, repeats=2)
        assert math.isfinite(b.bytes_per_s) and b.bytes_per_s > 0 and b.array_bytes == 8 * 2**20


def test_cache_residency_compares_the_working_sets_read_rate_with_the_given_dram_rate():
    """The decision is the measured ratio against the rate given, not the cache size (no timing asserted:
    the DRAM rates given are far below and far above anything a read can reach)."""
    small = hardware.cache_residency(256 * 2**10, dram_bytes_per_s=1.0, repeats=2)
    assert small.nbytes == 256 * 2**10 and small.bytes_per_s > 0
    assert small.ratio == small.bytes_per_s and small.in_cache  # any real rate is > 2 B/s
    assert not hardware.cache_residency(256 * 2**10, dram_bytes_per_s=1e18, repeats=2).in_cache


def test_bandwidth_bound_op_stays_under_its_bound():
    """A GEMV streaming a weight bigger than the L3 cache cannot beat the memory roof."""
    size = hardware.working_set_bytes(factor=2, floor=32 * 2**20, cap=128 * 2**20)
    d = 1024
    w, x = torch.randn(size // (4 * d), d), torch.randn(1, d)
    cost = hardware.gemv_cost(d, w.shape[0])
    kernels = {k: hardware._stream_kernel(k, size // 4, torch.device("cpu")) for k in ("read", "copy", "triad")}
    t = measure.interleaved({**kernels, "gemv": lambda: F.linear(x, w)}, warmup=1, repeats=5)  # same drift for all
    roof = hardware.Roofline(
        {"fp32": 1e15}, {k: hardware.stream_cost(k, size // 4).bytes / t[k].median for k in kernels}
    )
    p = hardware.place(cost, t["gemv"].median, roof)
    assert p.bound == "memory" and 0 < p.fraction < 1.5, p


def test_measure_ops_places_every_op():
    a = torch.randn(32, 32)
    ops = {"mm": (hardware.matmul_cost(32, 32, 32), lambda: a @ a)}
    (p,) = hardware_runs.measure_ops(ops, ROOF, warmup=1, repeats=2)
    assert p.name == "matmul" and p.achieved > 0 and p.intensity == ops["mm"][0].intensity


def test_standard_ops_costs_describe_their_functions():
    ops = hardware_runs.standard_ops(big_bytes=2**20, d_model=64)
    for name, (cost, fn) in ops.items():
        out = fn()
        assert cost.flops > 0 and cost.bytes > 0 and out.numel() > 0, name
    gemv_cost, gemv = ops["decode GEMV, batch 1"]
    assert gemv().shape[-1] == int(gemv_cost.shape.split("×")[-1].rstrip(")"))


# --------------------------------------------------------------------------- profiler


def test_profile_counts_matmul_flops_and_writes_a_trace(tmp_path, capfd):
    a, b = torch.randn(64, 32), torch.randn(32, 48)
    res = hardware_runs.profile(lambda: a @ b, repeats=2, trace_path=tmp_path / "t.json")
    assert "profiler_start" not in capfd.readouterr().err  # the backend's time-stamped chatter is held back
    mm = next(r for r in res.ops if r["op"] == "aten::mm")
    assert mm["calls"] == 1 and mm["MFLOPs"] * 1e6 == pytest.approx(hardware.matmul_cost(64, 32, 48).flops)
    assert "traceEvents" in json.loads((tmp_path / "t.json").read_text())
    assert res.total_ms > 0 and len(res.table(3).rows) <= 3


def test_profile_times_model_parts(tiny_model):
    x = torch.randint(0, tiny_model.config.vocab_size, (2, 16))
    parts = hardware_runs.patient_parts(tiny_model)
    res = hardware_runs.profile(lambda: tiny_model(x), parts=parts, repeats=2)
    assert set(res.parts) == set(parts) and all(v > 0 for v in res.parts.values())
    # the profiler's own FLOP count of the linear layers = 2 x weights x tokens (model.flops_per_token)
    assert res.matmul_flops == pytest.approx(x.numel() * tiny_model.flops_per_token(16)["matmul"])
    assert res.flops > res.matmul_flops  # it also counts the elementwise mul and add
    assert sum(res.parts.values()) <= res.total_ms * 1.05  # parts are disjoint and inside the total


# --------------------------------------------------------------------------- fusion


def test_eager_swiglu_traffic_by_hand():
    g, u = torch.randn(8, 16), torch.randn(8, 16)
    t = hardware.op_traffic(hardware.swiglu_activation, g, u)
    # silu reads g, writes s; mul reads s and u, writes y: 5 arrays vs the fused 3
    assert t["kernels"] == 2 and t["bytes"] == 5 * 8 * 16 * 4
    assert t["bytes"] / hardware.swiglu_cost(8, 16).bytes == pytest.approx(5 / 3)


def test_eager_rmsnorm_moves_several_times_the_fused_minimum():
    n, c = 32, 64
    t = hardware.op_traffic(RMSNorm(c), torch.randn(n, c))
    fused = hardware.rmsnorm_cost(n, c).bytes
    # pow (read NC, write NC), mean (NC -> N), + eps (N -> N), rsqrt (N -> N), x * r (NC + N -> NC), * g (NC + C -> NC)
    assert t["kernels"] == 6 and t["bytes"] == (7 * n * c + 6 * n + c) * 4
    assert t["bytes"] > 3 * fused


def test_op_traffic_ignores_views():
    x = torch.randn(4, 6)
    assert hardware.op_traffic(lambda: x.t().reshape(6, 4))["bytes"] == 0


@pytest.mark.slow
def test_fusion_benchmark_small():
    rows = hardware_runs.fusion_benchmark(rows=64, dim=32, hidden=48, warmup=1, repeats=2)
    assert [r["op"] for r in rows] == ["RMSNorm", "SwiGLU activation"]
    for r in rows:
        assert r["eager ms"] > 0 and r["compiled ms"] > 0 and r["compile s"] > 0 and r["traffic ratio"] > 1


# --------------------------------------------------------------------------- batch sweep


def test_batch_sweep(tiny_model):
    rows = hardware_runs.batch_sweep(tiny_model, batch_sizes=(1, 4), prompt_len=8, new_tokens=4, warmup=0, repeats=1)
    assert [r["batch"] for r in rows] == [1, 4]
    for r in rows:
        assert r["decode tokens/s"] == pytest.approx(r["batch"] / (r["decode ms/step"] / 1e3))
        assert r["prefill tokens/s"] == pytest.approx(r["batch"] * 8 / (r["prefill ms"] / 1e3))


# --------------------------------------------------------------------------- memory budgets


def test_footprint_llama_by_hand():
    fp = hardware.footprint("llama-2-7b", weight_dtype="fp16", seq_len=4096)
    assert fp.weights == 6_738_415_616 * 2
    assert fp.kv_cache == 2 * 32 * 32 * 128 * 4096 * 2 == 2 * 2**30  # 2 GiB of fp16 keys and values
    assert fp.activations == 4096 * (2 * 4096 + 2 * 11008) * 2 + 4 * 32000
    assert fp.total == fp.weights + fp.kv_cache + fp.activations
    chunked = hardware.footprint("llama-2-7b", seq_len=4096, prefill_chunk=512)
    assert chunked.activations == 512 * (2 * 4096 + 2 * 11008) * 2 + 4 * 32000


def test_footprint_goes_through_configs():
    cfg = configs.get("mixtral-8x7b")
    fp = hardware.footprint(cfg, weight_dtype="int4", group_size=128, seq_len=1000, batch_size=2, kv_dtype="int8")
    assert fp.weights == configs.weight_bytes(cfg, "int4", group_size=128)
    assert fp.kv_cache == configs.kv_cache_bytes(cfg, seq_len=1000, batch_size=2, dtype="int8")
    assert fp.activations == 2 * 1000 * (2 * 4096 + 2 * 2 * 14336) * 2 + 4 * 2 * 32000  # top-2 experts


def test_edge_fit_and_bits_to_fit():
    rows = hardware.edge_fit(("phi-3-mini",), dtypes=("fp16", "int4"), budgets_gib=(1, 4))
    fp16, int4 = rows
    assert fp16["fits 4 GiB"] == "no" and int4["fits 4 GiB"] == "yes" and int4["fits 1 GiB"] == "no"
    assert int4["total GiB"] * hardware.GIB == pytest.approx(
        hardware.footprint("phi-3-mini", weight_dtype="int4", group_size=128).total
    )
    budget = 2**30
    bits = hardware.bits_to_fit("phi-3-mini", budget, seq_len=512)
    fp = hardware.footprint("phi-3-mini", seq_len=512)
    total, _ = configs.count_params(configs.get("phi-3-mini"))
    assert bits == pytest.approx(8 * (budget - fp.kv_cache - fp.activations) / total)
    assert 0 < bits < 4  # int4 is not enough for 1 GiB


# --------------------------------------------------------------------------- decode bound


def test_decode_bound_by_hand():
    assert hardware.decode_bound(1e9, 10e9) == 10.0
    assert hardware.decode_bound(1e9, 10e9, batch_size=4) == 40.0


def test_patient_step_bytes_match_real_caches():
    cfg = ModelConfig(vocab_size=97, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, max_seq_len=48)
    model = TinyLM(cfg)
    want = measure.weight_bytes(model) + sum(c.nbytes() for c in model.new_cache(3, 40))
    assert hardware.patient_step_bytes(model, context=40, batch_size=3) == want


def test_config_step_bytes():
    cfg = configs.get("llama-2-7b")
    assert hardware.config_step_bytes(cfg, context=100) == configs.weight_bytes(cfg) + configs.kv_cache_bytes(
        cfg, seq_len=100
    )
    mix = configs.get("mixtral-8x7b")
    total, active = configs.count_params(mix)
    assert hardware.config_step_bytes(mix, context=1) == math.ceil(
        configs.weight_bytes(mix) * active / total + configs.kv_cache_bytes(mix, seq_len=1)
    )


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: hardware.matmul_cost(0, 3, 4), "m must be"),
        (lambda: hardware.gemv_cost(4, 4, batch=0), "batch must be"),
        (lambda: hardware.matmul_cost(2, 3, 4, dtype="fp8"), "dtype must be"),
        (lambda: hardware.attention_cost(batch=1, heads=6, q_len=1, kv_len=4, head_dim=8, kv_heads=4), "kv_heads"),
        (lambda: hardware.attention_cost(batch=1, heads=4, q_len=5, kv_len=4, head_dim=8), "q_len"),
        (lambda: hardware.stream_cost("scale", 10), "kind must be"),
        (lambda: hardware.memory_bandwidth("scale"), "kind must be"),
        (lambda: hardware.peak_flops("int4"), "dtype must be"),
        (lambda: hardware.peak_flops("fp32", min_n=100), "min_n"),
        (lambda: hardware.peak_flops("fp32", max_call_s=0.01, short_s=0.1), "short_s"),
        (lambda: hardware.peak_flops("fp32", device="cuda:0" if not torch.cuda.is_available() else "meta"), "device"),
        (lambda: hardware.Roofline({"fp32": -1.0}, {"read": 1.0}), "roof 'fp32' must be a finite number > 0"),
        (lambda: ROOF.attainable(0.0), "intensity"),
        (lambda: ROOF.peak("bf16"), "no peak measured"),
        (lambda: hardware.place(hardware.matmul_cost(2, 2, 2), 0.0, ROOF), "seconds"),
        (lambda: hardware.footprint("gpt-5"), "name must be one of .*, got 'gpt-5'"),
        (lambda: hardware.footprint("llama-2-7b", seq_len=10, prefill_chunk=20), "prefill_chunk"),
        (lambda: hardware.footprint("llama-2-7b", weight_dtype="fp4"), "dtype must be"),
        (lambda: hardware.edge_fit(budgets_gib=(0,)), "budgets_gib"),
        (lambda: hardware.decode_bound(0, 1e9), "bytes_per_step"),
        (lambda: hardware.decode_bound(1e9, float("inf")), "bandwidth"),
        (lambda: hardware.decode_bound(1e9, 1e9, batch_size=0), "batch_size"),
        (lambda: hardware.cache_residency(0, 1e9), "nbytes"),
        (lambda: hardware.cache_residency(2**20, 0.0), "dram_bytes_per_s"),
        (lambda: hardware.cache_residency(2**20, float("nan")), "dram_bytes_per_s"),
        (lambda: hardware_runs.profile(lambda: None, repeats=0), "repeats"),
    ],
)
def test_bad_input_raises_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_bad_types_raise_type_error(tiny_model):
    with pytest.raises(TypeError, match="cost must be an OpCost"):
        hardware.place("matmul", 1.0, ROOF)
    with pytest.raises(TypeError, match="fn must be callable"):
        hardware_runs.profile(42)
    with pytest.raises(TypeError, match="config must be"):
        hardware.footprint(7)
    with pytest.raises(TypeError, match="TinyLM-like"):
        hardware.patient_step_bytes(torch.nn.Linear(2, 2), context=1)
    with pytest.raises(ValueError, match="batch_sizes"):
        hardware_runs.batch_sweep(tiny_model, batch_sizes=(0,))
    with pytest.raises(ValueError, match="context"):
        hardware.patient_step_bytes(tiny_model, context=tiny_model.config.max_seq_len + 1)


def test_cpu_info_and_working_set():
    info = hardware.cpu_info()
    assert info["torch threads"] == torch.get_num_threads() and info["torch vector ISA"]
    llc = hardware.llc_bytes()
    assert llc is None or llc > 0
    ws = hardware.working_set_bytes()
    assert 64 * 2**20 <= ws <= 256 * 2**20


# --------------------------------------------------------------------------- OpenMP wait policy


def _experiment_children() -> list[int]:
    """Live processes started by this one that run the wait-policy child or a busy loop (Linux /proc)."""
    me, found = os.getpid(), []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmd = (stat.parent / "cmdline").read_bytes().decode(errors="replace")
        except (OSError, IndexError):
            continue
        if int(fields[1]) == me and fields[0] != "Z" and ("while True: pass" in cmd or "max_seconds" in cmd):
            found.append(int(stat.parent.name))
    return found


def test_wait_policy_experiment_rows_and_cleanup():
    rows = hardware_runs.wait_policy_experiment(
        policies=("PASSIVE",), busy=(False, True), shape=(8, 16, 32), iterations=30, warmup=2, max_seconds=2.0
    )
    assert [(r["OMP_WAIT_POLICY"], r["busy processes"]) for r in rows] == [
        ("PASSIVE", 0),
        ("PASSIVE", hardware.usable_cpus()),
    ]
    for r in rows:  # structure and positivity only: speed depends on the machine and its load
        assert r["threads"] == 2 and r["matmuls"] == 30 and 1 <= r["matmuls run"] <= 30
        assert r["seconds"] > 0 and r["ms per matmul"] > 0 and math.isfinite(r["seconds"])
        assert r["extrapolated"] == (r["matmuls run"] < 30)
        assert r["seconds"] == pytest.approx(r["ms per matmul"] / 1e3 * r["matmuls"])
    if Path("/proc/self/stat").exists():
        assert _experiment_children() == []  # the busy loops and the child were stopped


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(policies="PASSIVE"), "policies"),
        (dict(policies=("SPIN",)), "policies"),
        (dict(policies=("ACTIVE", "ACTIVE")), "policies"),
        (dict(busy=()), "busy"),
        (dict(busy=(0, 1)), "busy"),
        (dict(threads=0), "threads"),
        (dict(iterations=0), "iterations"),
        (dict(warmup=-1), "warmup"),
        (dict(shape=(64, 256)), "shape"),
        (dict(shape=(64, 0, 8)), "shape"),
        (dict(max_seconds=0), "max_seconds"),
        (dict(timeout=-1), "timeout"),
    ],
)
def test_wait_policy_experiment_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        hardware_runs.wait_policy_experiment(**kwargs)


def test_live_runs_are_not_a_build_and_have_a_command(capsys):
    """Chapter 11 measures live: its runs module stores nothing, so course_lib.build does not list it."""
    from course_lib import build

    assert not hasattr(hardware_runs, "OUTPUTS") and build.find("hardware") is None
    with pytest.raises(SystemExit) as e:
        hardware_runs.main(["--help"])
    assert e.value.code == 0 and "roofline" in capsys.readouterr().out


def test_label_sides_keep_labels_inside_the_plot_and_off_other_markers():
    from course_lib.hardware import _label_sides

    rng = dict(x_range=(0.01, 1000.0), y_range=(0.1, 100.0))
    # a long label on a point near the right edge: placed to the left, not cut by the edge
    (side,) = _label_sides([500.0], [1.0], ["decode GEMV, batch 16"], **rng)
    assert side.endswith("left"), side
    # near the top edge: placed below
    (side,) = _label_sides([1.0], [95.0], ["matmul 1024"], **rng)
    assert side.startswith("bottom"), side
    # a marker to avoid right above the point: its label goes elsewhere
    free = _label_sides([1.0], [1.0], ["softmax"], **rng)
    blocked = _label_sides([1.0], [1.0], ["softmax"], avoid=[(1.0, 1.3)], **rng)
    assert free[0].startswith("top") and not blocked[0].startswith("top"), (free, blocked)
    # two points at the same place get different sides
    a, b = _label_sides([1.0, 1.0], [1.0, 1.0], ["RMSNorm", "softmax"], **rng)
    assert a != b
