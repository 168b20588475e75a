"""course_lib.scaling: formulas against hand-computed values, the closed-form optimum against
a numerical optimiser (scipy), the patient's FLOP count against PyTorch's FLOP counter,
the power-law fit on synthetic data, and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from course_lib import configs, scaling
from course_lib.model import ModelConfig, TinyLM

# ----------------------------------------------------------------------------- training FLOPs


def test_six_n_d_by_hand():
    assert scaling.training_flops(1e9, 2e10) == 1.2e20
    # GPT-3 as counted by configs, on its 300B tokens (Brown et al. 2020): ~3.14e23 FLOPs (their Table D.1)
    n = configs.count_params(configs.get("gpt-3-175b"))[0]
    assert scaling.training_flops(n, 300e9) == pytest.approx(3.14e23, rel=0.01)
    # Llama 3 405B on 15.6T tokens: the paper's 3.8e25 FLOPs
    assert scaling.training_flops(405e9, 15.6e12) == pytest.approx(3.8e25, rel=0.01)
    arr = scaling.training_flops(np.array([1.0, 2.0]), 3.0)
    assert arr.tolist() == [18.0, 36.0]


def test_patient_flops_match_pytorch_flop_counter():
    torch.manual_seed(0)
    model = TinyLM(ModelConfig(vocab_size=256, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32))
    exact = scaling.patient_training_flops(model, n_tokens=1, seq_len=32)
    measured = scaling.measured_training_flops(model, batch_size=2, seq_len=32)
    assert measured == exact["matmul"]  # forward + backward = 3 x forward matmuls, exactly
    assert exact["exact"] == exact["matmul"] + exact["attention"]
    # 6N differs from the matmul count only by the norm weights (no matmul) — and misses attention
    norms = (2 * 2 + 1) * 32
    assert exact["six_n_d"] - exact["matmul"] == 6 * norms


# ----------------------------------------------------------------------------- loss law


def test_chinchilla_loss_by_hand():
    n, d = 70e9, 1.4e12  # Chinchilla itself
    by_hand = 1.69 + 406.4 / n**0.34 + 410.7 / d**0.28
    assert scaling.chinchilla_loss(n, d) == pytest.approx(by_hand, rel=1e-12)
    assert scaling.chinchilla_loss(np.array([n, 2 * n]), d).shape == (2,)
    assert scaling.chinchilla_loss(1e30, 1e30) == pytest.approx(1.69, abs=1e-3)  # E: the irreducible loss


@pytest.mark.parametrize("law", [scaling.CHINCHILLA, scaling.BESIROGLU])
@pytest.mark.parametrize("compute", [1e18, 5.76e23, 3.8e25])
def test_compute_optimal_closed_form_matches_numerical_minimum(law, compute):
    from scipy.optimize import minimize_scalar

    n, d = scaling.compute_optimal(compute, law=law)
    assert 6 * n * d == pytest.approx(compute, rel=1e-12)
    res = minimize_scalar(
        lambda log_n: law.loss(math.exp(log_n), compute / (6 * math.exp(log_n))),
        bounds=(math.log(n) - 5, math.log(n) + 5),
        method="bounded",
        options={"xatol": 1e-10},
    )
    assert math.exp(res.x) == pytest.approx(n, rel=1e-3)


def test_compute_optimal_by_hand_formula():
    a, b, A, B = 0.34, 0.28, 406.4, 410.7
    g = (a * A / (b * B)) ** (1 / (a + b))
    c = 1e24
    n, d = scaling.compute_optimal(c)
    assert n == pytest.approx(g * (c / 6) ** (b / (a + b)), rel=1e-12)
    assert d == pytest.approx((c / 6) ** (a / (a + b)) / g, rel=1e-12)


def test_twenty_tokens_rule():
    n, d = scaling.tokens_per_param_rule(6 * 20 * 70e9**2)
    assert n == pytest.approx(70e9) and d == pytest.approx(1.4e12)


# ----------------------------------------------------------------------------- cost, energy, CO2


def test_cost_energy_co2_by_hand():
    hours = scaling.gpu_hours(3.8e25, peak_flops=989e12, utilization=0.4)
    assert hours == pytest.approx(3.8e25 / (989e12 * 0.4 * 3600))
    assert scaling.energy_kwh(1000, gpu_power_w=700, pue=1.1) == pytest.approx(770.0)
    assert scaling.co2_kg(770.0, grid_kg_per_kwh=0.429) == pytest.approx(330.33)
    run = scaling.training_cost(
        1e21,
        peak_flops=1e15,
        utilization=0.5,
        price_per_gpu_hour=3.0,
        gpu_power_w=500,
        pue=1.2,
        grid_kg_per_kwh=0.5,
        n_gpus=10,
    )
    h = 1e21 / (1e15 * 0.5 * 3600)
    assert run["gpu_hours"] == pytest.approx(h)
    assert run["dollars"] == pytest.approx(3 * h)
    assert run["kwh"] == pytest.approx(h * 0.5 * 1.2)
    assert run["co2_kg"] == pytest.approx(h * 0.5 * 1.2 * 0.5)
    assert run["days"] == pytest.approx(h / 10 / 24)


def test_every_default_has_a_source():
    for name, a in scaling.ASSUMPTIONS.items():
        assert a["source"] == "assumption" or a["source"].startswith("https://"), name
        assert a["value"] > 0 and a["unit"] and a["what"]


def test_sensitivity_rows_sorted_by_swing():
    rows = scaling.sensitivity(
        scaling.training_cost,
        {"flops": 1e24, "utilization": 0.4, "price_per_gpu_hour": 2.0},
        {"utilization": (0.2, 0.6), "price_per_gpu_hour": (1.0, 3.0)},
        key="dollars",
    )
    assert [r["assumption"] for r in rows] == ["utilization", "price_per_gpu_hour"]
    base = scaling.training_cost(1e24)["dollars"]
    util = rows[0]
    assert util["at_low"] == pytest.approx(2 * base) and util["at_high"] == pytest.approx(base * 0.4 / 0.6)
    with pytest.raises(ValueError, match="not an argument"):
        scaling.sensitivity(scaling.training_cost, {"flops": 1e24}, {"pue": (1.0, 2.0)}, key="kwh")
    with pytest.raises(ValueError, match="key 'euros'"):
        scaling.sensitivity(scaling.training_cost, {"flops": 1e24}, {}, key="euros")


# ----------------------------------------------------------------------------- inference


def test_inference_flops_and_experts_touched():
    assert scaling.inference_flops_per_token(7e9) == 14e9
    assert scaling.inference_flops_per_token(1e6, context=100, n_layers=2, attn_width=64) == 2e6 + 4 * 2 * 100 * 64
    assert scaling.expected_experts_touched(8, 2, 1) == pytest.approx(2.0)
    assert scaling.expected_experts_touched(64, 2, 2) == pytest.approx(64 * (1 - (62 / 64) ** 2))
    assert scaling.expected_experts_touched(8, 2, 1000) == pytest.approx(8.0)
    # Monte Carlo check of the formula
    gen = torch.Generator().manual_seed(0)
    picks = torch.stack([torch.randperm(16, generator=gen)[:2] for _ in range(4 * 4000)]).view(4000, 4, 2)
    distinct = np.mean([len(set(p.flatten().tolist())) for p in picks])
    assert distinct == pytest.approx(scaling.expected_experts_touched(16, 2, 4), rel=0.02)


def test_decode_bytes_dense_and_moe():
    mixtral = configs.get("mixtral-8x7b")
    total, active = configs.count_params(mixtral)
    assert scaling.decode_bytes_per_step(mixtral) == pytest.approx(2 * active)  # batch 1: only 2 of 8 experts
    assert scaling.decode_bytes_per_step(mixtral, batch_size=512) == pytest.approx(2 * total, rel=1e-6)
    llama = configs.get("llama-2-7b")
    assert scaling.decode_bytes_per_step(llama, dtype="int4") == configs.weight_bytes(llama, "int4")


def test_query_cost_small_dense_model_is_memory_bound_by_hand():
    phi = configs.get("phi-3-mini")
    q = scaling.query_cost(phi, prompt_tokens=50, output_tokens=100)
    w = configs.weight_bytes(phi)
    assert q["gpus"] == 1
    assert q["decode_bound"] == "memory"
    assert q["decode_ms_per_token"] == pytest.approx(w / 3.35e12 * 1e3)
    prefill = max(50 * 2 * 3_821_079_552 / (989e12 * 0.4), w / 3.35e12)
    assert q["latency_s"] == pytest.approx(prefill + 100 * w / 3.35e12)
    assert q["dollars_per_query"] == pytest.approx(q["latency_s"] / 3600 * 2.0)
    # a batch shares the weight reads: cost per query falls
    assert scaling.query_cost(phi, batch_size=32)["dollars_per_query"] < q["dollars_per_query"] / 10


def test_gpus_to_hold():
    assert scaling.gpus_to_hold(72e9) == 1
    assert scaling.gpus_to_hold(72e9 + 1) == 2
    assert scaling.gpus_to_hold(2e12, memory_per_gpu=80e9, usable_fraction=1.0) == 25


# ----------------------------------------------------------------------------- power-law fit


def test_fit_recovers_a_known_law():
    n = np.array([1e3, 3e3, 1e4, 3e4, 1e5, 3e5])
    y = 2.0 + 50.0 * n**-0.4
    fit = scaling.fit_power_law(n, y)
    assert fit.E == pytest.approx(2.0, rel=1e-3)
    assert fit.alpha == pytest.approx(0.4, rel=1e-3)
    assert fit.A == pytest.approx(50.0, rel=1e-2)
    assert fit.r2 > 0.999999 and fit.rmse < 1e-6
    pure = scaling.fit_power_law(n, 7.0 * n**-0.3, offset=False)
    assert pure.E == 0 and pure.alpha == pytest.approx(0.3) and pure.A == pytest.approx(7.0)
    assert fit.predict(1e6) == pytest.approx(2.0 + 50.0 * 1e6**-0.4, rel=1e-4)


def test_fit_with_noise_is_close_and_r2_below_one():
    rng = np.random.default_rng(0)
    n = np.geomspace(1e3, 1e6, 5)
    y = 3.0 + 20.0 * n**-0.3 + rng.normal(0, 0.01, size=5)
    fit = scaling.fit_power_law(n, y)
    assert 0.9 < fit.r2 < 1.0
    assert abs(fit.predict(1e4) - (3.0 + 20.0 * 1e4**-0.3)) < 0.05


def test_fit_bad_input():
    with pytest.raises(ValueError, match="at least 4 points"):
        scaling.fit_power_law([1, 2, 3], [3.0, 2.0, 1.0])
    with pytest.raises(ValueError, match="same length"):
        scaling.fit_power_law([1, 2, 3, 4], [3.0, 2.0, 1.0])
    with pytest.raises(ValueError, match="n_params"):
        scaling.fit_power_law([0, 2, 3, 4], [4.0, 3.0, 2.0, 1.0])


def test_tiny_sweep_runs_and_reports():
    from course_lib.train import TrainConfig

    gen = np.random.default_rng(0)
    ids = gen.integers(0, 64, size=5000).astype(np.uint16)
    cfgs = [ModelConfig(vocab_size=64, d_model=d, n_layers=1, n_heads=2, max_seq_len=16) for d in (8, 16)]
    tc = TrainConfig(steps=3, batch_size=2, seq_len=16, warmup_steps=1, eval_every=0, eval_batches=1)
    rows = scaling.run_sweep(ids, ids, model_configs=cfgs, train_config=tc)
    assert [r["d_model"] for r in rows] == [8, 16]
    assert all(r["tokens"] == 3 * 2 * 16 and r["val_loss"] > 0 and r["train_flops"] > 0 for r in rows)
    assert len(scaling.sweep_configs()) == 5
    with pytest.raises(ValueError, match="beyond a model's vocab_size 64"):
        scaling.run_sweep(ids.astype(np.int64) + 100, ids, model_configs=cfgs, train_config=tc)
    assert scaling.sweep_train_config(scaling.sweep_configs()[0]).lr == pytest.approx(6e-3)  # lr ~ 1 / width
    assert all(c.vocab_size == 256 for c in scaling.sweep_configs())


def test_sweep_trains_at_its_thread_count_and_restores_it():
    from course_lib.train import TrainConfig

    ids = np.random.default_rng(0).integers(0, 64, size=2000).astype(np.int64)
    cfgs = [ModelConfig(vocab_size=64, d_model=8, n_layers=1, n_heads=2, max_seq_len=16)]
    tc = TrainConfig(steps=2, batch_size=2, seq_len=16, warmup_steps=1, eval_every=0, eval_batches=1)
    before = torch.get_num_threads()
    assert scaling.SWEEP_THREADS == 1
    (row,) = scaling.run_sweep(ids, ids, model_configs=cfgs, train_config=tc)
    assert row["threads"] == scaling.SWEEP_THREADS and torch.get_num_threads() == before
    (row,) = scaling.run_sweep(ids, ids, model_configs=cfgs, train_config=tc, threads=None)
    assert row["threads"] == before
    with pytest.raises(ValueError, match="threads"):
        scaling.run_sweep(ids, ids, model_configs=cfgs, train_config=tc, threads=0)
    with pytest.raises(TypeError, match="threads"):
        scaling.run_sweep(ids, ids, model_configs=cfgs, train_config=tc, threads=1.5)
    assert torch.get_num_threads() == before


def test_byte_tokens_round_trip():
    from course_lib import data

    ids = scaling.byte_tokens("val")
    assert ids.dtype == np.int64 and ids.min() >= 0 and ids.max() < 256
    first = data.articles("val")[0].text
    assert bytes(ids[: len(first.encode())].astype(np.uint8)).decode() == first


# ----------------------------------------------------------------------------- widget


def test_budget_summary_and_figure():
    s = scaling.budget_summary(1e24)
    n, d = scaling.compute_optimal(1e24)
    assert s["n_params"] == n and s["loss"] == pytest.approx(scaling.chinchilla_loss(n, d))
    assert s["dollars"] == pytest.approx(scaling.training_cost(1e24)["dollars"])
    fig = scaling.budget_figure(24.0, 2.0, 0.4, 0.429)
    assert len(fig.data) == 3 and "N* =" in fig.layout.title.text
    # the optimum marker is the lowest point of the iso-FLOP curve
    assert fig.data[1].y[0] <= min(fig.data[0].y) + 1e-9
    from course_lib import viz

    twin = viz.static_twin(scaling.budget_figure, {"log10_compute": [22.0, 24.0]})
    assert len(twin.data) == 6 and len(twin.layout.sliders[0].steps) == 2


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf")])
def test_non_positive_quantities_raise(bad):
    with pytest.raises(ValueError, match="compute must be"):
        scaling.compute_optimal(bad)
    with pytest.raises(ValueError, match="n_params must be"):
        scaling.training_flops(bad, 1e9)
    with pytest.raises(ValueError, match="n_tokens must be"):
        scaling.chinchilla_loss(1e9, bad)
    with pytest.raises(ValueError, match="flops must be"):
        scaling.gpu_hours(bad)


def test_out_of_range_assumptions_raise():
    with pytest.raises(ValueError, match=r"utilization must be a finite number in \(0, 1\], got 1.5"):
        scaling.gpu_hours(1e20, utilization=1.5)
    with pytest.raises(ValueError, match="utilization"):
        scaling.training_cost(1e20, utilization=0)
    with pytest.raises(ValueError, match=r"pue must be a finite number >= 1, got 0.9"):
        scaling.energy_kwh(10, pue=0.9)
    with pytest.raises(ValueError, match="grid_kg_per_kwh"):
        scaling.co2_kg(10, grid_kg_per_kwh=-0.1)
    with pytest.raises(TypeError, match="compute must be a finite number > 0, got '1e24'"):
        scaling.compute_optimal("1e24")
    with pytest.raises(ValueError, match="top_k"):
        scaling.expected_experts_touched(4, 5, 1)
    with pytest.raises(ValueError, match="output_tokens"):
        scaling.query_cost(configs.get("phi-3-mini"), output_tokens=0)
    with pytest.raises(ValueError, match="missing required key"):
        scaling.query_cost({"hidden_size": 8})
