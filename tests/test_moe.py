"""Mixture of experts: router invariants, capacity, dispatch equality, losses, the layer in a
TinyLM, and cross-checks against transformers' Mixtral (weights copied in)."""

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib import moe
from course_lib.experiments import moe as moe_runs
from course_lib.model import ModelConfig, SwiGLU, TinyLM
from course_lib.train import TrainConfig, load_checkpoint, save_checkpoint, train


def moe_config(**options) -> ModelConfig:
    opts = dict(n_experts=4, top_k=2)
    opts.update(options)
    return ModelConfig(
        vocab_size=97, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=48, mlp="moe", mlp_options=opts
    )


def layer(**options) -> moe.MoEMLP:
    torch.manual_seed(0)
    return moe.MoEMLP(moe_config(**options), 0)


# --------------------------------------------------------------------------- router


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 40), e=st.integers(1, 9), data=st.data())
def test_gate_weights_sum_to_one_and_indices_distinct(n, e, data):
    k = data.draw(st.integers(1, e))
    logits = torch.randn(n, e, generator=torch.Generator().manual_seed(n * 31 + e)) * 3
    weights, experts, probs = moe.top_k_route(logits, k, normalize=True)
    assert weights.shape == experts.shape == (n, k)
    assert torch.allclose(weights.sum(-1), torch.ones(n), atol=1e-6)
    assert (weights >= 0).all()
    assert all(len(set(row)) == k for row in experts.tolist())
    assert torch.allclose(probs.sum(-1), torch.ones(n), atol=1e-6)
    # the chosen experts are the k most probable ones
    kth = probs.gather(1, experts).min(-1).values
    others = probs.masked_fill(torch.zeros_like(probs, dtype=torch.bool).scatter(1, experts, True), -1)
    assert (others.max(-1).values <= kth + 1e-7).all()


def test_renormalised_weights_are_a_softmax_over_the_kept_logits():
    logits = torch.randn(10, 6, generator=torch.Generator().manual_seed(0))
    w, idx, _ = moe.top_k_route(logits, 3)
    assert torch.allclose(w, logits.gather(1, idx).softmax(-1), atol=1e-6)


def test_top1_keeps_the_raw_probability_by_default():
    logits = torch.randn(10, 6, generator=torch.Generator().manual_seed(0))
    w, idx, probs = moe.top_k_route(logits, 1)
    assert torch.allclose(w[:, 0], probs.max(-1).values)
    assert (w < 1).all()


def test_noisy_routing_only_in_training():
    m = layer(noisy=True)
    x = torch.randn(20, 32)
    m.eval()
    assert torch.equal(m.router_logits(x), m.router(x))
    m.train()
    m.generator = torch.Generator().manual_seed(0)
    a = m.router_logits(x)
    m.generator = torch.Generator().manual_seed(0)
    assert torch.equal(a, m.router_logits(x)) and not torch.allclose(a, m.router(x))
    assert m.inactive_params() == 2 * m.experts.params_per_expert() + m.noise.weight.numel()


# --------------------------------------------------------------------------- losses


def test_load_balancing_loss_bounds():
    e, n = 8, 64
    uniform = torch.full((n, e), 1 / e)
    balanced = torch.arange(n).remainder(e)[:, None]
    assert math.isclose(moe.load_balancing_loss(uniform, balanced, e).item(), 1.0, rel_tol=1e-6)
    collapsed = torch.zeros(n, e)
    collapsed[:, 3] = 1
    assert math.isclose(moe.load_balancing_loss(collapsed, torch.full((n, 1), 3), e).item(), e, rel_tol=1e-6)


def test_load_balancing_loss_matches_transformers_mixtral():
    mixtral = pytest.importorskip("transformers.models.mixtral.modeling_mixtral")
    g = torch.Generator().manual_seed(0)
    layers = tuple(torch.randn(50, 8, generator=g) * 2 for _ in range(3))
    for k in (1, 2, 3):
        ours = []
        for logits in layers:
            _, idx, probs = moe.top_k_route(logits, k)
            ours.append((probs, idx))
        # transformers pools the layers' counts and probabilities, and counts f per token (k x ours)
        probs = torch.cat([p for p, _ in ours])
        idx = torch.cat([i for _, i in ours])
        theirs = mixtral.load_balancing_loss_func(layers, 8, k)
        assert torch.allclose(k * moe.load_balancing_loss(probs, idx, 8), theirs, atol=1e-6)


def test_router_z_loss_formula():
    z = torch.randn(7, 5)
    assert torch.allclose(moe.router_z_loss(z), (z.exp().sum(-1).log() ** 2).mean(), atol=1e-5)


# --------------------------------------------------------------------------- capacity


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 60), e=st.integers(2, 8), cf=st.floats(0.1, 3.0), seed=st.integers(0, 10_000))
def test_capacity_respected_with_first_choices_first(n, e, cf, seed):
    k = min(2, e)
    logits = torch.randn(n, e, generator=torch.Generator().manual_seed(seed)) * 2
    r = moe.route(logits, top_k=k, capacity_factor=cf)
    assert r.capacity == math.ceil(cf * n * k / e)
    for ex in range(e):
        chosen = r.experts == ex
        kept = (chosen & r.keep).sum().item()
        assert kept == min(chosen.sum().item(), r.capacity)  # full up to capacity, never beyond
        if (chosen[:, 1] & r.keep[:, 1]).any():  # a second choice got in only if every first choice did
            assert r.keep[chosen[:, 0], 0].all()
    assert math.isclose(r.drop_rate, (~r.keep).sum().item() / (n * k))


def test_capacity_keeps_earlier_tokens_first():
    experts = torch.tensor([[0], [0], [0], [1]])
    keep = moe.capacity_keep(experts, 2, capacity=2)
    assert keep[:, 0].tolist() == [True, True, False, True]


def test_no_capacity_never_drops():
    r = moe.route(torch.randn(30, 4), top_k=2)
    assert r.keep.all() and r.capacity is None and r.drop_rate == 0


# --------------------------------------------------------------------------- dispatch


@pytest.mark.parametrize("cf", [None, 1.0, 0.5])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_naive_grouped_batched_agree(cf, k):
    m = layer(top_k=k, capacity_factor=cf)
    x = torch.randn(57, 32, generator=torch.Generator().manual_seed(k))
    r = moe.route(m.router(x), top_k=k, capacity_factor=cf)
    with torch.no_grad():
        outs = {name: fn(x, r, m.experts) for name, fn in moe.DISPATCH.items()}
    for name in ("grouped", "batched"):
        assert torch.allclose(outs[name], outs["naive"], atol=1e-6), name
    if cf == 0.5:
        assert r.n_dropped > 0  # the comparison included dropped tokens


def test_dispatch_equals_dense_expert_sum():
    """Without capacity, the layer is sum_j w_tj * expert_e(x_t), computed with every expert on every token."""
    m = layer()
    x = torch.randn(25, 32)
    r = moe.route(m.router(x), top_k=2)
    with torch.no_grad():
        every = torch.stack([m.experts.one(e, x) for e in range(4)], 1)  # (N, E, D)
        ref = (every.gather(1, r.experts[..., None].expand(-1, -1, 32)) * r.weights[..., None]).sum(1)
        assert torch.allclose(m(x), ref, atol=1e-6)


@pytest.mark.parametrize("dispatch", moe.DISPATCH_KINDS)
def test_gradients_reach_router_and_experts(dispatch):
    m = layer(dispatch=dispatch, aux_loss_coef=0.0, z_loss_coef=0.0)
    x = torch.randn(2, 9, 32, requires_grad=True)
    m(x).pow(2).sum().backward()
    assert m.router.weight.grad is not None and m.router.weight.grad.abs().sum() > 0
    for p in (m.experts.gate_proj.weight, m.experts.up_proj.weight, m.experts.down_proj.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert x.grad.abs().sum() > 0


def test_aux_loss_gradient_reaches_router():
    m = layer(aux_loss_coef=1.0, z_loss_coef=1.0)
    m(torch.randn(30, 32))
    m.aux_loss.backward()
    assert m.router.weight.grad.abs().sum() > 0


def test_empty_and_single_token_inputs():
    m = layer(capacity_factor=1.0).eval()
    for n in (0, 1):
        x = torch.randn(n, 32)
        for d in moe.DISPATCH_KINDS:
            m.dispatch = d
            assert m(x).shape == (n, 32)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "options, match",
    [
        (dict(top_k=5), "top_k"),
        (dict(top_k=0), "top_k"),
        (dict(n_experts=0), "n_experts"),
        (dict(capacity_factor=0), "capacity_factor"),
        (dict(capacity_factor=-1.0), "capacity_factor"),
        (dict(aux_loss_coef=-0.1), "aux_loss_coef"),
        (dict(d_expert=0), "d_expert"),
        (dict(dispatch="magic"), "dispatch"),
        (dict(layers="some"), "layers"),
        (dict(layers=[7]), "layers"),
        (dict(experts=4), "unknown keys in mlp_options for mlp='moe': \\['experts'\\]"),
    ],
)
def test_bad_options_raise_clear_errors(options, match):
    with pytest.raises(ValueError, match=match):
        TinyLM(moe_config(**options))


def test_bad_types_and_shapes():
    with pytest.raises(TypeError, match="noisy"):
        moe.MoEOptions(noisy="yes")
    with pytest.raises(ValueError, match="hidden size 32"):
        layer()(torch.randn(3, 4, 31))
    with pytest.raises(ValueError, match="top_k"):
        moe.top_k_route(torch.randn(4, 3), 4)
    with pytest.raises(ValueError, match="logits"):
        moe.top_k_route(torch.randn(4), 1)
    with pytest.raises(ValueError, match="capacity_factor"):
        moe.expert_capacity(10, 4, 2, 0.0)
    with pytest.raises(ValueError, match="every"):
        moe.RouterRecorder(TinyLM(moe_config()), every=0)
    with pytest.raises(ValueError, match="no MoE layers"):
        moe.RouterRecorder(TinyLM(ModelConfig(vocab_size=97, d_model=32, n_layers=1, n_heads=4)))


# --------------------------------------------------------------------------- in the patient


def test_tinylm_with_moe_counts_active_params_and_flops():
    dense = TinyLM(ModelConfig(vocab_size=97, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=48, d_ff=64))
    m = TinyLM(moe_config(n_experts=8, top_k=2, d_expert=32))
    per_expert = 3 * 32 * 32
    router = 32 * 8
    assert m.num_params() == dense.num_params() - 2 * 3 * 32 * 64 + 2 * (8 * per_expert + router)
    assert m.num_params(active=True) == dense.num_params() + 2 * router  # top-2 of half-width experts
    f_dense, f_moe = dense.flops_per_token(48)["total"], m.flops_per_token(48)["total"]
    assert f_moe - f_dense == 2 * 2 * router


def test_layers_option_keeps_some_layers_dense():
    m = TinyLM(moe_config(layers="odd"))
    assert isinstance(m.blocks[0].mlp, SwiGLU) and isinstance(m.blocks[1].mlp, moe.MoEMLP)
    assert len(moe.moe_layers(m)) == 1


def test_train_adds_aux_loss_and_recorder_collects(tokenizer):
    from course_lib import data

    ids = data.encode_split("val", tokenizer)[:20_000] % 97
    torch.manual_seed(0)
    m = TinyLM(moe_config(capacity_factor=1.0))
    rec = moe.RouterRecorder(m, every=2)
    train(
        m,
        ids,
        None,
        TrainConfig(steps=6, batch_size=4, seq_len=16, warmup_steps=1, eval_every=0),
        progress=False,
        callback=rec,
    )
    assert rec.steps == [1, 3, 5]
    for snap in rec.fractions:
        assert len(snap) == 2 and all(math.isclose(sum(f), 1.0, rel_tol=1e-9) for f in snap)
    pos = rec.positions()
    assert pos.shape == (2, 48, 4) and torch.allclose(pos[:, :16].sum(-1), torch.ones(2, 16, dtype=torch.float64))
    assert pos[:, 16:].sum() == 0
    assert all(0 <= d <= 1 for snap in rec.drop_rate for d in snap)
    assert all(wd[0] >= wd[1] >= wd[2] for snap in rec.would_drop for wd in snap)  # more capacity, fewer drops
    assert m.aux_loss() is not None and m.aux_loss().item() > 0


def test_stats_only_accumulate_in_training():
    m = layer()
    m.eval()
    m(torch.randn(2, 5, 32))
    assert m.assignments.item() == 0
    m.train()
    m(torch.randn(2, 5, 32))
    assert m.assignments.item() == 20 and m.load.sum().item() == 20


def test_checkpoint_roundtrip_and_deepcopy(tmp_path):
    torch.manual_seed(0)
    m = TinyLM(moe_config(layers=[1], capacity_factor=1.5)).eval()
    x = torch.randint(0, 97, (2, 12))
    path = save_checkpoint(m, tmp_path / "moe.safetensors")
    m2, _ = load_checkpoint(path)
    assert isinstance(m2.blocks[1].mlp, moe.MoEMLP)
    with torch.no_grad():
        assert torch.equal(m(x), m2(x))
        assert torch.equal(m(x), copy.deepcopy(m)(x))


def test_generation_with_kv_cache_works():
    torch.manual_seed(0)
    m = TinyLM(moe_config()).eval()
    x = torch.randint(0, 97, (1, 5))
    assert torch.equal(m.generate(x, 8), m.generate(x, 8, use_cache=False))


# --------------------------------------------------------------------------- transformers cross-checks


def _mixtral_config(transformers, cfg: ModelConfig):
    o = cfg.mlp_options
    return transformers.MixtralConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=o.get("d_expert") or cfg.d_ff,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads,
        max_position_embeddings=cfg.max_seq_len,
        rope_theta=cfg.rope_theta,
        rms_norm_eps=cfg.norm_eps,
        num_local_experts=o["n_experts"],
        num_experts_per_tok=o["top_k"],
        tie_word_embeddings=True,
        sliding_window=None,
        router_jitter_noise=0.0,
    )


def _copy_moe_into_mixtral_block(ours: moe.MoEMLP, block) -> None:
    """Our stacked experts -> transformers' fused layout: gate_up_proj (E, 2F, D), down_proj (E, D, F)."""
    with torch.no_grad():
        block.gate.weight.copy_(ours.router.weight)
        block.experts.gate_up_proj.copy_(torch.cat([ours.experts.gate_proj.weight, ours.experts.up_proj.weight], 1))
        block.experts.down_proj.copy_(ours.experts.down_proj.weight)


@pytest.mark.parametrize("k", [1, 2])
def test_moe_layer_matches_transformers_mixtral_block(k):
    transformers = pytest.importorskip("transformers")
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    cfg = moe_config(n_experts=6, top_k=k, d_expert=40, normalize=True)
    torch.manual_seed(0)
    ours = moe.MoEMLP(cfg, 0).eval()
    hc = _mixtral_config(transformers, cfg)
    hc._experts_implementation = "eager"
    theirs = MixtralSparseMoeBlock(hc).eval()
    _copy_moe_into_mixtral_block(ours, theirs)
    x = torch.randn(3, 11, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = theirs(x.clone())
        for d in moe.DISPATCH_KINDS:
            ours.dispatch = d
            assert torch.allclose(ours(x), expected, atol=1e-6), d


def test_tinylm_moe_matches_transformers_mixtral_model():
    """The whole patient with MoE layers == MixtralForCausalLM with the same weights."""
    transformers = pytest.importorskip("transformers")
    cfg = moe_config(n_experts=4, top_k=2, d_expert=48)
    torch.manual_seed(0)
    m = TinyLM(cfg).eval()
    hf = transformers.MixtralForCausalLM(_mixtral_config(transformers, cfg)).eval()
    rename = {"embed.": "model.embed_tokens.", "blocks.": "model.layers.", "attn_norm": "input_layernorm"}
    rename.update({"mlp_norm": "post_attention_layernorm", ".attn.": ".self_attn."})
    state = {}
    for k, v in m.state_dict().items():
        if ".mlp." in k:
            continue
        for a, b in rename.items():
            k = k.replace(a, b)
        state["model.norm.weight" if k == "norm.weight" else k] = v
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and all(".mlp." in k for k in missing)
    for blk, hf_layer in zip(m.blocks, hf.model.layers):
        _copy_moe_into_mixtral_block(blk.mlp, hf_layer.mlp)
    x = torch.randint(0, cfg.vocab_size, (2, 20))
    with torch.no_grad():
        assert torch.allclose(m(x), hf(x).logits, atol=1e-5)


# --------------------------------------------------------------------------- statistics, runs, parallelism


def test_coefficient_of_variation():
    assert moe.coefficient_of_variation([1, 1, 1, 1]) == 0
    assert math.isclose(moe.coefficient_of_variation([1, 0, 0, 0]), math.sqrt(3))
    with pytest.raises(ValueError):
        moe.coefficient_of_variation([0, 0])


def test_run_configs_have_equal_active_flops():
    flops = {n: TinyLM(moe_runs.run_config(n)).flops_per_token(128)["total"] for n in moe_runs.RUNS}
    for n in ("moe-k2-aux", "moe-k1-aux"):
        assert abs(flops[n] / flops["dense"] - 1) < 0.01
    totals = {n: TinyLM(moe_runs.run_config(n)).num_params() for n in ("dense-wide", "moe-k2-aux")}
    assert abs(totals["dense-wide"] / totals["moe-k2-aux"] - 1) < 0.01
    with pytest.raises(ValueError, match="unknown run"):
        moe_runs.run_config("nope")


def test_precomputed_runs_are_consistent():
    runs = moe_runs.load_runs()
    assert set(runs["runs"]) == set(moe_runs.RUNS)
    for name, r in runs["runs"].items():
        assert r["config"] == moe_runs.run_config(name).to_dict()
        assert len(r["loss"]) == moe_runs.RUN_TRAIN["steps"]
        if "router" in r:
            e = r["config"]["mlp_options"]["n_experts"]
            for snap in r["router"]["fractions"]:
                assert all(len(f) == e and abs(sum(f) - 1) < 1e-3 for f in snap)


@pytest.mark.slow
def test_expert_parallel_equals_one_process():
    res = moe_runs.expert_parallel_demo(world_size=2, n_tokens=64)
    assert res["max_abs_diff"] < 1e-5
    assert sum(res["rank0_sent"]) == 32 * 2  # 32 local tokens x top-2
    with pytest.raises(ValueError, match="world_size"):
        moe_runs.expert_parallel_demo(world_size=3)


def test_capacity_sweep_and_routing_profile(tokenizer):
    from course_lib import data

    ids = data.encode_split("val", tokenizer)[:6_000] % 97
    torch.manual_seed(0)
    m = TinyLM(moe_config(capacity_factor=1.5))
    rows = moe.capacity_sweep(m, ids, (None, 1.0, 0.25), seq_len=16, batch_size=4, max_batches=2)
    assert [r["capacity_factor"] for r in rows] == [None, 1.0, 0.25]
    assert rows[0]["dropped"] == 0 and rows[1]["dropped"] <= rows[2]["dropped"] and rows[2]["dropped"] > 0.4
    assert all(layer.capacity_factor == 1.5 for layer in moe.moe_layers(m))  # restored
    prof = moe.routing_profile(m, ids, seq_len=16, batch_size=4, max_batches=2)
    assert len(prof["fractions"]) == 2 and all(abs(sum(f) - 1) < 1e-9 for f in prof["fractions"])
    assert all(1 / 4 <= p <= 1 for p in prof["token_purity"])
    routed = moe.token_routing(m, ids[:10].tolist())
    assert len(routed) == 2 and len(routed[0]) == 10 and all(len(c) == 2 for c in routed[0])
    with pytest.raises(ValueError, match=r"factors\[0\] must be None or a finite number > 0, got 0"):
        moe.capacity_sweep(m, ids, (0,), seq_len=16, batch_size=4, max_batches=1)


def test_figure_builders_on_precomputed_runs():
    runs = moe_runs.load_runs()
    fig = moe_runs.expert_load_figure(runs, aux=False, top_k=1, layer=3)
    assert len(fig.data) == 3 and "moe-k1-noaux" in fig.layout.title.text
    e = runs["runs"]["moe-k1-noaux"]["config"]["mlp_options"]["n_experts"]
    assert all(len(tr.z) == e for tr in fig.data)  # experts on the y axis
    assert [tr.xaxis for tr in fig.data] == ["x", "x2", "x3"]  # one heatmap per panel, not three stacked in one
    with pytest.raises(ValueError, match="layer"):
        moe_runs.expert_load_figure(runs, layer=9)
    with pytest.raises(ValueError, match="no precomputed run"):
        moe_runs.expert_load_figure(runs, top_k=3)
    record = runs["runs"]["moe-k2-aux"]["router"]["tokens"][0]
    fig = moe_runs.token_routing_figure(record)
    assert len(fig.data) == 1 and len(fig.data[0].z) == len(record["text"])  # one row per token
    assert all(len(row) == len(record["experts"]) for row in fig.data[0].z)  # one column per layer
    with pytest.raises(ValueError, match="one entry per token"):
        moe_runs.token_routing_figure({"text": ["a"], "experts": [[[0, 1], [1, 2]]]})
