"""Chapter 04, width half: activation statistics, ReLUfication, CATS, the sparse decode kernel, Deja Vu."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib import conditional as cond
from course_lib import zoo
from course_lib.model import ModelConfig, SwiGLU, TinyLM
from course_lib.train import TrainConfig

CFG = ModelConfig(vocab_size=64, d_model=16, n_layers=2, n_heads=2, d_ff=40, max_seq_len=32)


def fresh(**kw) -> TinyLM:
    torch.manual_seed(0)
    return TinyLM(ModelConfig(**{**CFG.to_dict(), **kw})).eval()


def ids(b=2, t=12, seed=1):
    return torch.randint(0, CFG.vocab_size, (b, t), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def tiny():
    return zoo.load("tiny").model.eval()


# --------------------------------------------------------------------------- statistics


def test_capture_matches_a_hand_written_loop_and_removes_its_hooks():
    model, x = fresh(), ids()
    acts = cond.capture_activations(model, x)
    h = model.embed(x)
    cos, sin = model.rope_cos[: x.shape[1]], model.rope_sin[: x.shape[1]]
    for i, blk in enumerate(model.blocks):  # the forward, written out
        h = h + blk.attn(blk.attn_norm(h), cos, sin)
        n = blk.mlp_norm(h)
        a = F.silu(blk.mlp.gate_proj(n)) * blk.mlp.up_proj(n)
        torch.testing.assert_close(acts[i], a.detach())
        h = h + blk.mlp.down_proj(a)
    assert all(not m._forward_pre_hooks for m in model.modules())
    assert [a.shape for a in acts] == [(2, 12, CFG.d_ff)] * CFG.n_layers


def test_stats_match_a_loop_over_every_value():
    model = cond.relufy(fresh())
    x = ids()
    acts = cond.capture_activations(model, x)
    s = cond.activation_stats(model, x, tau=0.05)
    for layer, a in enumerate(acts):
        vals = a.flatten().tolist()
        assert s.zeros[layer] == pytest.approx(sum(v == 0 for v in vals) / len(vals))
        assert s.small[layer] == pytest.approx(sum(abs(v) <= 0.05 for v in vals) / len(vals))
        b, t = 1, 7
        row = a[b, t].tolist()
        assert s.token_zeros[layer, b, t].item() == pytest.approx(sum(v == 0 for v in row) / len(row))
    assert s.token_zeros.shape == (CFG.n_layers, 2, 12)
    assert all(z > 0.2 for z in s.zeros)  # ReLU: exact zeros
    assert cond.activation_stats(fresh(), x).mean_zeros == 0  # SiLU: none


def test_capture_refuses_an_mlp_without_down_proj():
    model = fresh(mlp="moe", mlp_options=dict(n_experts=2, top_k=1))
    with pytest.raises(TypeError, match="down_proj"):
        cond.capture_activations(model, ids())


# --------------------------------------------------------------------------- the layer, ReLUfication


def test_conditional_defaults_are_swiglu_exactly():
    model = fresh()
    same = cond._as_conditional(model)
    x = ids()
    with torch.no_grad():
        assert torch.equal(same(x), model(x))


def test_relufy_swaps_the_activation_and_keeps_the_weights():
    model = fresh()
    r = cond.relufy(model, input_relu=True)
    assert r.config.mlp == "conditional" and r.config.mlp_options == {"activation": "relu", "input_relu": True}
    assert torch.equal(r.blocks[0].mlp.gate_proj.weight, model.blocks[0].mlp.gate_proj.weight)
    x = torch.randn(3, CFG.d_model)
    mlp = r.blocks[1].mlp
    xr = F.relu(x)
    torch.testing.assert_close(mlp(x), mlp.down_proj(F.relu(mlp.gate_proj(xr)) * mlp.up_proj(xr)))
    assert model.config.mlp == "swiglu"  # the original is untouched


def test_finetune_mlp_changes_only_the_mlps():
    model = cond.relufy(fresh())
    before = copy.deepcopy(model.state_dict())
    data = torch.randint(0, CFG.vocab_size, (2000,), generator=torch.Generator().manual_seed(0)).numpy()
    cond.finetune_mlp(model, data, None, TrainConfig(steps=2, batch_size=2, seq_len=16, warmup_steps=0, eval_every=0))
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".mlp." in k for k in changed)
    assert all(p.requires_grad for p in model.parameters())


# --------------------------------------------------------------------------- CATS


def test_thresholds_hit_the_target_on_the_first_layer_and_zero_is_the_identity():
    model, x = fresh(), ids(4, 16)
    th = cond.fit_thresholds(model, x, sparsity=0.7)
    cats = cond.thresholded(model, th)
    s = cond.activation_stats(cats, x)
    assert s.zeros[0] == pytest.approx(0.7, abs=0.01)  # layer 0 sees the calibration inputs unchanged
    assert all(0.5 < z < 0.9 for z in s.zeros)
    zero = cond.thresholded(model, cond.fit_thresholds(model, x, sparsity=0.0))
    with torch.no_grad():
        assert torch.equal(zero(x), model(x))


# --------------------------------------------------------------------------- the sparse decode kernel


@settings(max_examples=25, deadline=None)
@given(k=st.integers(0, 40), seed=st.integers(0, 2**16), act=st.sampled_from(["silu", "relu"]), inp=st.booleans())
def test_sparse_kernel_equals_the_masked_dense_mlp(k, seed, act, inp):
    torch.manual_seed(seed)
    mlp = cond.ConditionalMLP(d_model=16, d_ff=40, activation=act, input_relu=inp)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(16, generator=gen)
    idx = torch.randperm(40, generator=gen)[:k]
    mask = torch.zeros(40, dtype=torch.bool)
    mask[idx] = True
    torch.testing.assert_close(cond.SparseDecodeMLP(mlp)(x, idx), cond.masked_mlp(mlp, x, mask), rtol=1e-5, atol=1e-6)


def test_sparse_kernel_on_real_inputs_and_the_cats_path(tiny):
    base = tiny
    x_ids = torch.as_tensor(zoo.load("tiny").encode("The river flows through the old town to the sea.")).reshape(1, -1)
    cats = cond.thresholded(base, cond.fit_thresholds(base, x_ids, sparsity=0.8))
    xs = cond.capture_mlp_inputs(cats, x_ids)
    for blk, plain, x in zip(cats.blocks, base.blocks, xs):
        kern, kern_plain = cond.SparseDecodeMLP(blk.mlp), cond.SparseDecodeMLP(plain.mlp)
        for t in range(x.shape[1]):
            tok = x[0, t]
            with torch.no_grad():
                dense = blk.mlp(tok)
            mask = blk.mlp.gate(tok) != 0  # the CATS decision, used as the active set of the plain MLP
            torch.testing.assert_close(kern.forward_thresholded(tok), dense, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(cond.masked_mlp(blk.mlp, tok, mask), dense, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(
                kern_plain(tok, mask.nonzero().reshape(-1)), cond.masked_mlp(plain.mlp, tok, mask), rtol=1e-5, atol=1e-6
            )
    full = torch.arange(base.config.d_ff)
    mlp = base.blocks[0].mlp
    with torch.no_grad():
        torch.testing.assert_close(cond.SparseDecodeMLP(mlp)(xs[0][0, 0], full), mlp(xs[0][0, 0]), rtol=1e-5, atol=1e-6)


def test_pruned_mlp_is_the_dense_mlp_with_the_other_neurons_zeroed():
    torch.manual_seed(0)
    mlp = SwiGLU(d_model=16, d_ff=40).eval()
    keep = torch.tensor([1, 5, 6, 30])
    mask = torch.zeros(40, dtype=torch.bool)
    mask[keep] = True
    x = torch.randn(3, 16)
    with torch.no_grad():
        torch.testing.assert_close(cond.pruned_mlp(mlp, keep)(x), cond.masked_mlp(mlp, x, mask), rtol=1e-5, atol=1e-6)


def test_kernel_variants_compute_the_same_kind_of_thing_and_break_even_interpolates():
    torch.manual_seed(0)
    mlp = SwiGLU(d_model=16, d_ff=40).eval()
    v = cond.kernel_variants(mlp, 0.9)
    assert v["k"] == 4 and {"dense", "sparse", "pruned"} <= set(v)
    assert v["dense"]().shape == (1, 16) and v["sparse"]().shape == (16,) and v["pruned"]().shape == (1, 16)
    rows = [{"sparsity": 0.5, "speedup": 0.5}, {"sparsity": 0.9, "speedup": 1.5}, {"sparsity": 0.0, "speedup": 0.2}]
    assert cond.break_even(rows) == pytest.approx(0.7)
    assert cond.break_even([{"sparsity": 0.5, "speedup": 0.9}]) is None
    assert cond.break_even([{"sparsity": 0.1, "speedup": 1.2}]) == 0.0
    sweep = cond.kernel_sweep(mlp, [0.5], min_time=0.0)
    assert sweep[0]["k"] == 20 and sweep[0]["speedup"] > 0 and torch.get_num_threads() >= 1


# --------------------------------------------------------------------------- Deja Vu


def test_predictor_learns_a_low_rank_rule_and_recall_is_counted():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(512, 8, generator=gen)
    w = torch.randn(8, 2, generator=gen) @ torch.randn(2, 24, generator=gen)  # a rank-2 truth
    active = x @ w > 0.5
    p = cond.train_predictor(x, active, rank=4, steps=300, lr=3e-2)
    r = cond.predictor_recall(p.predict(x), active)
    assert r["recall"] > 0.9 and r["active"] == pytest.approx(active.float().mean().item())
    pred = torch.tensor([[True, False, True, False]])
    truth = torch.tensor([[True, True, False, False]])
    assert cond.predictor_recall(pred, truth) == {"recall": 0.5, "predicted": 0.5, "active": 0.5}
    assert p.predict(x, budget=0.25).sum(-1).eq(6).all()


def test_with_predictors_that_keep_everything_is_the_model():
    model, x = fresh(), ids()
    preds = []
    for _ in range(CFG.n_layers):
        p = cond.SparsityPredictor(CFG.d_model, CFG.d_ff, rank=2)
        with torch.no_grad():
            p.up.bias.fill_(1e3)  # every logit > 0: every neuron predicted
        preds.append(p)
    with torch.no_grad():
        torch.testing.assert_close(cond.with_predictors(model, preds)(x), model(x))
    assert cond.activation_stats(cond.with_predictors(model, preds), x).mean_zeros == 0  # hooks still find down_proj


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("bad", [1.0, -0.1, math.nan, 1.5, "0.5", None])
def test_sparsity_outside_0_1_is_refused(bad):
    with pytest.raises((ValueError, TypeError), match="sparsity"):
        cond.fit_thresholds(fresh(), ids(), sparsity=bad)
    with pytest.raises((ValueError, TypeError), match="sparsity"):
        cond.kernel_variants(SwiGLU(d_model=8, d_ff=16), bad)


@pytest.mark.parametrize(
    "options, word",
    [
        ({"activation": "gelu"}, "activation"),
        ({"threshold": math.nan}, "threshold"),
        ({"threshold": -1.0}, "threshold"),
        ({"threshold": [0.1]}, "threshold"),
        ({"input_relu": "yes"}, "input_relu"),
        ({"treshold": 0.1}, "treshold"),
    ],
)
def test_bad_options_fail_when_the_config_is_made(options, word):
    with pytest.raises((ValueError, TypeError), match=word):
        ModelConfig(**{**CFG.to_dict(), "mlp": "conditional", "mlp_options": options})


def test_bad_arguments_name_themselves():
    mlp = cond.ConditionalMLP(d_model=8, d_ff=16)
    k = cond.SparseDecodeMLP(mlp)
    with pytest.raises(ValueError, match="idx"):
        k(torch.randn(8), torch.tensor([0, 16]))
    with pytest.raises(ValueError, match="x must be one token"):
        k(torch.randn(2, 8), torch.tensor([0]))
    with pytest.raises(TypeError, match="idx"):
        k(torch.randn(8), torch.tensor([0.0]))
    with pytest.raises(ValueError, match="tau"):
        cond.activation_stats(fresh(), ids(), tau=-1)
    with pytest.raises(ValueError, match="tau"):
        cond.activation_stats(fresh(), ids(), tau=math.nan)
    with pytest.raises(ValueError, match="mask"):
        cond.masked_mlp(mlp, torch.randn(8), torch.ones(5, dtype=torch.bool))
    with pytest.raises(TypeError, match="model"):
        cond.capture_activations(mlp, ids())
    with pytest.raises(ValueError, match="ids"):
        cond.capture_activations(fresh(), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="thresholds"):
        cond.thresholded(fresh(), [0.1])
    with pytest.raises(ValueError, match="threshold"):
        cond.thresholded(fresh(), [0.1, math.nan])
    with pytest.raises(ValueError, match="budget"):
        cond.SparsityPredictor(8, 16).predict(torch.randn(8), budget=0.0)
    with pytest.raises(ValueError, match="predictors"):
        cond.with_predictors(fresh(), [cond.SparsityPredictor(CFG.d_model, CFG.d_ff)])
    with pytest.raises(ValueError, match="rank"):
        cond.SparsityPredictor(8, 16, rank=0)


def test_the_buffered_gather_gives_the_same_result_and_reuses_its_buffer():
    torch.manual_seed(0)
    mlp = cond.ConditionalMLP(d_model=16, d_ff=40, threshold=0.05)
    plain, buffered = cond.SparseDecodeMLP(mlp), cond.SparseDecodeMLP(mlp)
    buffered.BUFFER_FROM = 0  # every gather through the preallocated buffers
    x = torch.randn(16)
    for k in (40, 7, 1):
        idx = torch.randperm(40, generator=torch.Generator().manual_seed(k))[:k]
        torch.testing.assert_close(buffered(x, idx), plain(x, idx), rtol=0, atol=0)
    torch.testing.assert_close(buffered.forward_thresholded(x), plain.forward_thresholded(x), rtol=0, atol=0)
    assert buffered._buf_gu.shape == (40, 32) and buffered._buf_down.shape == (40, 16)
