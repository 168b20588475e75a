"""Tests for course_lib.prune: masks, N:M, storage formats, structured surgery, schedules.

Cross-checks against the reference libraries: ``torch.nn.utils.prune`` (l1_unstructured,
global_unstructured, ln_structured) and ``transformers.pytorch_utils.prune_linear_layer``.
"""

import copy
import math

import pytest
import torch
import torch.nn.utils.prune as tprune
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from course_lib import prune as P
from course_lib.experiments import prune as prune_runs
from course_lib.model import ModelConfig, TinyLM


def _linear(out=24, inp=32, seed=0, bias=False):
    torch.manual_seed(seed)
    return nn.Linear(inp, out, bias=bias)


def _lm(seed=0, **kw):
    cfg = dict(vocab_size=97, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=48, d_ff=48)
    cfg.update(kw)
    torch.manual_seed(seed)
    m = TinyLM(ModelConfig(**cfg)).eval()
    with torch.no_grad():  # break the symmetric init so that every unit has a distinct norm
        for p in m.parameters():
            if p.dim() == 2:
                p.mul_(torch.rand_like(p) + 0.5)
    return m


def _idx(model, b=2, t=12, seed=1):
    return torch.randint(0, model.config.vocab_size, (b, t), generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- unstructured masks


@settings(max_examples=40, deadline=None)
@given(out=st.integers(1, 20), inp=st.integers(1, 40), s=st.floats(0, 0.999))
def test_magnitude_mask_exact_sparsity(out, inp, s):
    w = torch.randn(out, inp, generator=torch.Generator().manual_seed(out * 100 + inp))
    mask = P.magnitude_mask(w, s)
    assert mask.dtype == torch.bool and mask.shape == w.shape
    assert int((~mask).sum()) == round(s * w.numel())
    if (~mask).any() and mask.any():  # every removed weight is no larger than every kept one
        assert w.abs()[~mask].max() <= w.abs()[mask].min()


@pytest.mark.parametrize("s", [0.0, 0.1, 0.33, 0.5, 0.9, 0.99])
def test_layerwise_magnitude_equals_torch_l1_unstructured(s):
    lin = _linear(seed=3)
    ours = P.magnitude_mask(lin.weight, s)
    tprune.l1_unstructured(lin, "weight", amount=s)
    assert torch.equal(ours, lin.weight_mask.bool())


def test_model_magnitude_pruning_matches_torch_per_layer():
    model, ref = _lm(), _lm()
    masks = P.prune_unstructured(model, method="magnitude", sparsity=0.6)
    for name, lin in P.prunable_linears(ref).items():
        tprune.l1_unstructured(lin, "weight", amount=0.6)
        assert torch.equal(masks[name], lin.weight_mask.bool()), name
        assert torch.equal(model.get_submodule(name).weight, lin.weight), name
    assert "lm_head" not in masks  # tied to the embedding, left alone


def test_global_magnitude_equals_torch_global_unstructured():
    model, ref = _lm(seed=2), _lm(seed=2)
    ours = P.prune_unstructured(model, method="global_magnitude", sparsity=0.7)
    lins = P.prunable_linears(ref)
    tprune.global_unstructured([(m, "weight") for m in lins.values()], pruning_method=tprune.L1Unstructured, amount=0.7)
    for name, lin in lins.items():
        assert torch.equal(ours[name], lin.weight_mask.bool()), name
    per_layer = [P.sparsity_of(m) for m in ours.values()]
    assert max(per_layer) - min(per_layer) > 0.05  # a global threshold prunes layers unevenly
    assert P.sparsity_report(model)["linear_zeros"] == round(0.7 * sum(m.numel() for m in ours.values()))


def test_random_mask_is_exact_and_seeded():
    w = torch.randn(30, 40)
    a = P.random_mask(w, 0.4, generator=torch.Generator().manual_seed(0))
    b = P.random_mask(w, 0.4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and int((~a).sum()) == 480


@settings(max_examples=30, deadline=None)
@given(out=st.integers(1, 12), inp=st.integers(1, 30), s=st.floats(0, 0.999))
def test_row_mask_prunes_the_same_count_in_every_row(out, inp, s):
    scores = torch.rand(out, inp, generator=torch.Generator().manual_seed(inp))
    mask = P.row_mask(scores, s)
    assert ((~mask).sum(1) == round(s * inp)).all()


# --------------------------------------------------------------------------- Wanda


def test_activation_norms_match_the_definition():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    batches = [torch.randn(5, 8), torch.randn(3, 8)]
    norms = P.activation_norms(net, batches, names=["0", "2"])
    x = torch.cat(batches)
    assert torch.allclose(norms["0"], x.norm(dim=0), atol=1e-5)
    assert torch.allclose(norms["2"], torch.relu(net[0](x)).norm(dim=0), atol=1e-5)
    calls = []
    net[2].register_forward_hook(lambda *a: calls.append(1))
    first = P.activation_norms(net, batches, names=["0"])  # stops each pass after layer 0
    assert torch.allclose(first["0"], norms["0"]) and not calls
    assert net.training  # the model's mode is restored


def test_wanda_scores_and_mask():
    w = torch.randn(6, 10)
    a = torch.rand(10) + 0.1
    assert torch.allclose(P.wanda_scores(w, a), w.abs() * a)
    # with equal activation norms Wanda is per-row magnitude pruning
    assert torch.equal(P.wanda_mask(w, torch.ones(10), 0.5), P.row_mask(w.abs(), 0.5))


def test_wanda_depends_on_activations():
    torch.manual_seed(0)
    w = torch.randn(8, 16)
    norms = torch.ones(16)
    before = P.wanda_mask(w, norms, 0.5)
    j = int((~before).sum(0).argmax())  # the input channel pruned in the most rows
    norms[j] = 100.0  # make that input feature large (an "outlier" channel)
    after = P.wanda_mask(w, norms, 0.5)
    assert not torch.equal(before, after)
    assert after[:, j].all()  # its weights are now kept in every row
    assert P.magnitude_mask(w, 0.5).equal(P.magnitude_mask(w, 0.5))  # magnitude cannot see it


def test_wanda_on_a_model_calibrates_on_real_inputs():
    model = _lm()
    calib = [_idx(model, seed=s) for s in range(3)]
    masks = P.prune_unstructured(model, method="wanda", sparsity=0.5, calibration=calib)
    for name, m in P.prunable_linears(model).items():
        assert ((m.weight == 0).sum(1) >= round(0.5 * m.in_features)).all(), name
        assert not (m.weight[~masks[name]] != 0).any(), name  # every masked weight is zero
    # scaling the embedding rows of the calibration tokens changes the activations, hence the masks
    other = _lm()
    with torch.no_grad():
        other.embed.weight[:, 0] *= 50
    masks2 = P.prune_unstructured(other, method="wanda", sparsity=0.5, calibration=calib)
    assert not torch.equal(masks["blocks.0.attn.q_proj"], masks2["blocks.0.attn.q_proj"])


def test_wanda_one_shot_equals_sequential_for_the_first_layer():
    a, b = _lm(), _lm()
    calib = [_idx(a)]
    ma = P.prune_unstructured(a, method="wanda", sparsity=0.5, calibration=calib, sequential=True)
    mb = P.prune_unstructured(b, method="wanda", sparsity=0.5, calibration=calib, sequential=False)
    assert all(torch.equal(ma[n], mb[n]) for n in ma if n.startswith("blocks.0."))
    assert any(not torch.equal(ma[n], mb[n]) for n in ma if n.startswith("blocks.1."))


def _wanda_by_definition(model, calib, sparsity):
    """Sequential Wanda as defined: each layer's norms from a full pass through the layers already pruned."""
    masks = {}
    with torch.no_grad():
        for group in P.layer_groups(P.prunable_linears(model)):
            norms = P.activation_norms(model, calib, names=group)
            for n in group:
                masks[n] = P.wanda_mask(model.get_submodule(n).weight, norms[n], sparsity)
                model.get_submodule(n).weight.mul_(masks[n])
    return masks


class _Rescaled(nn.Module):
    """Numbered blocks in a ModuleList, but the model rescales between them: not a plain chain of blocks."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8)) for _ in range(3))

    def forward(self, x):
        for block in self.blocks:
            x = 2 * block(x) + x
        return x


@pytest.mark.parametrize("make", [lambda: _lm(n_layers=4), _Rescaled], ids=["tinylm", "rescaled"])
def test_sequential_wanda_equals_its_definition(make):
    """Block by block on stored inputs (TinyLM) or re-run from the input (no plain chain): the same masks."""
    a, b = make(), make()
    tiny = isinstance(a, TinyLM)
    calib = [_idx(a, seed=s) for s in range(3)] if tiny else [torch.randn(4, 8) for _ in range(3)]
    calls = []
    hooks = [m.register_forward_hook(lambda *_: calls.append(1)) for m in P.prunable_linears(a).values()]
    masks = P.prune_unstructured(a, method="wanda", sparsity=0.5, calibration=calib)
    for h in hooks:
        h.remove()
    expected = _wanda_by_definition(b, calib, 0.5)
    assert masks.keys() == expected.keys()
    assert all(torch.equal(masks[n], expected[n]) for n in masks)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    # Linear calls: one pass of the first batch checks for a plain chain of blocks (k·L); then block by block,
    # per layer its norms and (but the last) its pruned outputs; by definition, layer i re-runs layers 0..i on
    # every batch, n·k·L(L+1)/2 in all
    n, n_layers = len(calib), len(a.blocks)
    k = len(masks) // n_layers
    by_block, by_definition = n * (2 * n_layers - 1), n * n_layers * (n_layers + 1) // 2
    assert len(calls) == k * (n_layers + (by_block if tiny else by_definition))


def test_sequential_wanda_needs_a_calibration_batch():
    with pytest.raises(ValueError, match="calibration"):
        P.prune_unstructured(_lm(), method="wanda", sparsity=0.5, calibration=[])


# --------------------------------------------------------------------------- N:M


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 8), m=st.integers(1, 8), rows=st.integers(1, 6), groups=st.integers(1, 6))
def test_nm_mask_property(n, m, rows, groups):
    if n > m:
        with pytest.raises(ValueError, match="N <= M"):
            P.nm_mask(torch.rand(rows, groups * m), n, m)
        return
    scores = torch.rand(rows, groups * m, generator=torch.Generator().manual_seed(n * 10 + m))
    mask = P.nm_mask(scores, n, m)
    assert (mask.reshape(rows, groups, m).sum(-1) == n).all()
    assert P.is_nm_sparse(mask, n, m)
    kept = scores.reshape(rows, groups, m).masked_fill(~mask.reshape(rows, groups, m), float("inf")).amin(-1)
    dropped = scores.reshape(rows, groups, m).masked_fill(mask.reshape(rows, groups, m), -1).amax(-1)
    assert (kept >= dropped).all()  # the n largest of each group are the ones kept


def test_model_two_four_pruning_and_compressed_format():
    model = _lm()
    P.prune_unstructured(model, method="magnitude", pattern=(2, 4))
    w = model.blocks[0].mlp.up_proj.weight.detach()
    assert P.is_nm_sparse(w, 2, 4) and P.sparsity_of(w) == 0.5
    c = P.compress_nm(w, 2, 4)
    assert c.values.shape == (w.shape[0], w.shape[1] // 2)
    assert torch.equal(P.decompress_nm(c), w)
    assert c.nbytes() == P.nm_bytes(tuple(w.shape), 2, 4, value_bytes=4)
    half = P.compress_nm(w.half(), 2, 4)
    assert half.nbytes() == P.nm_bytes(tuple(w.shape), 2, 4, value_bytes=2) == w.numel() * 9 // 8
    with pytest.raises(ValueError, match="not 2:4 sparse"):
        P.compress_nm(torch.ones(4, 8), 2, 4)


@settings(max_examples=30, deadline=None)
@given(bits=st.sampled_from([1, 2, 4, 8]), count=st.integers(0, 50))
def test_pack_bits_round_trip(bits, count):
    v = torch.randint(0, 2**bits, (count,), generator=torch.Generator().manual_seed(count))
    packed = P.pack_bits(v, bits)
    assert packed.numel() == math.ceil(count * bits / 8)
    assert torch.equal(P.unpack_bits(packed, bits, count), v.to(torch.uint8))


def test_semi_structured_is_cuda_only():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present; the CPU error path does not apply")
    with pytest.raises(RuntimeError, match="only on CUDA"):
        P.to_semi_structured(torch.zeros(64, 64))


# --------------------------------------------------------------------------- CSR


def test_csr_linear_computes_the_masked_layer_and_counts_its_bytes():
    lin = _linear(out=16, inp=24, bias=True)
    P.apply_masks(nn.ModuleDict({"l": lin}), {"l": P.magnitude_mask(lin.weight, 0.75)})
    csr = P.CSRLinear(lin)
    x = torch.randn(2, 5, 24)
    assert torch.allclose(csr(x), lin(x), atol=1e-5)
    nnz = int((lin.weight != 0).sum())
    assert csr.nnz == nnz
    assert csr.weight_bytes() == P.csr_bytes((16, 24), nnz) + 16 * 4
    assert P.csr_bytes((100, 100), 5000) > P.dense_bytes((100, 100))  # at 50 % CSR is larger than dense


def test_to_csr_model_generates_the_same_tokens():
    model = _lm()
    P.prune_unstructured(model, method="magnitude", sparsity=0.8)
    sparse = copy.deepcopy(model)
    names = P.to_csr(sparse)
    assert names and all(isinstance(sparse.get_submodule(n), P.CSRLinear) for n in names)
    x = _idx(model)
    assert torch.allclose(sparse(x), model(x), atol=1e-4)
    assert torch.equal(sparse.generate(x[:1, :4], 6), model.generate(x[:1, :4], 6))


# --------------------------------------------------------------------------- structured


def test_shrink_linear_equals_transformers_prune_linear_layer():
    from transformers.pytorch_utils import prune_linear_layer

    lin = _linear(out=10, inp=12, bias=True)
    keep = torch.tensor([0, 3, 4, 9])
    for dim in (0, 1):
        ours, ref = P.shrink_linear(lin, keep, dim=dim), prune_linear_layer(lin, keep, dim=dim)
        assert torch.equal(ours.weight, ref.weight) and torch.equal(ours.bias, ref.bias)


@pytest.mark.parametrize("amount", [0.25, 0.5, 0.8])
def test_l2_structured_selection_matches_torch_ln_structured(amount):
    lin = _linear(out=20, inp=8, seed=4)
    keep = P.keep_highest(lin.weight.norm(dim=1), amount)
    tprune.ln_structured(lin, "weight", amount=amount, n=2, dim=0)
    assert torch.equal(keep, torch.nonzero(lin.weight_mask[:, 0]).reshape(-1))


def test_neuron_magnitude_scores_pick_what_ln_structured_picks():
    model = _lm(seed=5)
    spec = P.layer_specs(model)[1]
    mlp = model.blocks[1].mlp
    scores = P.neuron_scores(model, spec, "magnitude")
    joint = nn.Linear(1, 1, bias=False)  # one row per neuron: [gate_j, up_j, down_:,j]
    joint.weight = nn.Parameter(
        torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight.T], 1).detach()
    )
    tprune.ln_structured(joint, "weight", amount=0.5, n=2, dim=0)
    assert torch.equal(P.keep_highest(scores, 0.5), torch.nonzero(joint.weight_mask[:, 0]).reshape(-1))


@pytest.mark.parametrize("method", ["magnitude", "wanda"])
def test_removing_zero_importance_neurons_leaves_outputs_unchanged(method):
    model = _lm()
    dead = [1, 5, 6, 20, 33, 40]  # 6 of 48 = 12.5 %
    with torch.no_grad():
        for blk in model.blocks:
            blk.mlp.down_proj.weight[:, dead] = 0
            if method == "magnitude":  # magnitude looks at all three matrices
                blk.mlp.gate_proj.weight[dead] = 0
                blk.mlp.up_proj.weight[dead] = 0
    x = _idx(model)
    before = model(x)
    rows = P.prune_structured(model, mlp_sparsity=0.125, method=method, calibration=[x])
    assert all(r["d_ff"] == 42 for r in rows)
    assert all(blk.mlp.down_proj.in_features == 42 for blk in model.blocks)
    assert torch.allclose(model(x), before, atol=1e-5)


@pytest.mark.parametrize("granularity, heads", [("head", [0, 3]), ("group", [2, 3])])
def test_removing_zero_importance_heads_leaves_outputs_unchanged(granularity, heads):
    model = _lm()  # 4 query heads in 2 GQA groups of 2; head_dim 8
    with torch.no_grad():
        for blk in model.blocks:
            for h in heads:
                blk.attn.o_proj.weight[:, h * 8 : (h + 1) * 8] = 0
            if granularity == "group":  # make the group's own weights the smallest too
                blk.attn.q_proj.weight[16:] *= 1e-3
    x = _idx(model)
    before = model(x)
    P.prune_structured(model, head_sparsity=0.5, method="wanda", calibration=[x], granularity=granularity)
    kv = 2 if granularity == "head" else 1
    assert [(b.attn.n_heads, b.attn.n_kv_heads) for b in model.blocks] == [(2, kv), (2, kv)]
    assert torch.allclose(model(x), before, atol=1e-5)
    # generation with the KV cache still works and agrees with recomputing without a cache
    prompt = x[:1, :5]
    assert torch.equal(model.generate(prompt, 8), model.generate(prompt, 8, use_cache=False))
    assert model.new_cache(1, 16)[0].k.shape[1] == kv


def test_structured_pruning_keeps_params_and_flops_true():
    model = _lm()
    P.prune_structured(model, mlp_sparsity=0.5, head_sparsity=0.5, method="magnitude")
    assert [r["d_ff"] for r in P.structure(model)] == [24, 24]
    # params: the same as a model built with d_ff = 24, minus the removed heads' q and o weights
    ref = TinyLM(ModelConfig(vocab_size=97, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=48, d_ff=24))
    removed_heads = 2 * 2 * (2 * 32 * 8)  # layers x heads x (q rows + o columns) x head_dim
    assert model.num_params() == ref.num_params() - removed_heads
    flops = model.flops_per_token(40)
    assert flops["matmul"] == 2 * sum(
        m.in_features * m.out_features for m in model.modules() if isinstance(m, nn.Linear)
    )
    assert flops["attention"] == 2 * 2 * 2 * (41 / 2) * 2 * 8  # layers x context x heads x head_dim
    assert flops["attention"] == ref.flops_per_token(40)["attention"] / 2


def test_structured_random_and_bad_heads():
    model = _lm()
    spec = P.layer_specs(model)[0]
    with pytest.raises(ValueError, match="every head"):
        P.remove_heads(model, spec, [0, 1, 2, 3])
    with pytest.raises(ValueError, match="same number of query heads"):
        P.remove_heads(model, spec, [0])  # groups of 2: would leave 1 and 2
    with pytest.raises(ValueError, match="every head"):
        P.prune_structured(model, head_sparsity=0.9)
    with pytest.raises(ValueError, match="every MLP neuron"):
        P.prune_structured(model, mlp_sparsity=0.999)
    with pytest.raises(ValueError, match="granularity"):
        P.select_heads(torch.rand(4), 0.5, n_kv_heads=2, granularity="layer")
    rows = P.prune_structured(model, mlp_sparsity=0.25, method="random", generator=torch.Generator().manual_seed(0))
    assert [r["d_ff"] for r in rows] == [36, 36]


def test_structured_requires_known_layers():
    with pytest.raises(TypeError, match="knows TinyLM and BERT"):
        P.layer_specs(nn.Sequential(nn.Linear(2, 2)))
    moe = _lm()
    moe.blocks[0].mlp = nn.Identity()
    with pytest.raises(TypeError, match="SwiGLU"):
        P.layer_specs(moe)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("s", [-0.1, 1.0, 1.5, "0.5", True, None, float("nan")])
def test_bad_sparsity_is_rejected(s):
    with pytest.raises(ValueError, match=r"sparsity must be a finite number in \[0, 1\)"):
        P.magnitude_mask(torch.randn(4, 4), s)


def test_bad_arguments_name_themselves():
    model = _lm()
    with pytest.raises(ValueError, match="N <= M"):
        P.prune_unstructured(model, pattern=(5, 4))
    with pytest.raises(ValueError, match="exactly one"):
        P.prune_unstructured(model, sparsity=0.5, pattern=(2, 4))
    with pytest.raises(ValueError, match="method must be one of"):
        P.prune_unstructured(model, method="biggest", sparsity=0.5)
    with pytest.raises(ValueError, match="needs calibration"):
        P.prune_unstructured(model, method="wanda", sparsity=0.5)
    with pytest.raises(ValueError, match="no N:M form"):
        P.prune_unstructured(model, method="global_magnitude", pattern=(2, 4))
    with pytest.raises(ValueError, match="divisible by M=3"):
        P.prune_unstructured(model, pattern=(1, 3))
    with pytest.raises(ValueError, match="n must be an int"):
        P.nm_mask(torch.rand(2, 4), 0, 4)
    with pytest.raises(ValueError, match="act_norm must have shape"):
        P.wanda_scores(torch.rand(3, 4), torch.rand(5))
    with pytest.raises(ValueError, match="mask for"):
        P.apply_masks(model, {"blocks.0.mlp.up_proj": torch.ones(2, 2, dtype=torch.bool)})
    with pytest.raises(TypeError, match="calibration items"):
        P.activation_norms(model, [[1, 2, 3]])
    with pytest.raises(ValueError, match="at least one batch"):
        P.activation_norms(model, [])
    with pytest.raises(ValueError, match="k must be an int"):
        prune_runs.recall_at_k(torch.eye(3), torch.eye(3), 4)


# --------------------------------------------------------------------------- schedules and training


def test_gmp_schedule():
    kw = dict(final_sparsity=0.8, begin_step=10, end_step=110)
    values = [P.gmp_sparsity(t, **kw) for t in range(150)]
    assert values[0] == 0 and values[9] == 0 and values[110] == pytest.approx(0.8) and values[149] == pytest.approx(0.8)
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert P.gmp_sparsity(60, **kw) == pytest.approx(0.8 * (1 - 0.5**3))  # cubic: 7/8 of the way at half time
    assert P.gmp_sparsity(65, **kw, every=10) == P.gmp_sparsity(60, **kw)
    with pytest.raises(ValueError, match="begin_step < end_step"):
        P.gmp_sparsity(0, final_sparsity=0.5, begin_step=5, end_step=5)


@pytest.mark.parametrize("schedule", ["gradual", "oneshot"])
def test_prune_finetune_ends_at_the_target_sparsity(schedule):
    from course_lib.train import TrainConfig

    model = _lm()
    tokens = torch.randint(0, 97, (4000,), generator=torch.Generator().manual_seed(0)).numpy().astype("uint16")
    cfg = TrainConfig(steps=12, batch_size=2, seq_len=16, warmup_steps=2, eval_every=6, eval_batches=1)
    hist, log = P.prune_finetune(model, tokens, tokens, cfg, final_sparsity=0.6, schedule=schedule, every=2)
    assert len(log) == 12 and log[-1] == pytest.approx(0.6)
    assert all(b >= a for a, b in zip(log, log[1:]))
    rep = P.sparsity_report(model)
    assert rep["linear_zeros"] >= sum(round(0.6 * r["params"]) for r in rep["layers"])
    assert len(hist.val_loss) == 2


def test_lottery_ticket_rounds():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(240, 16, generator=gen)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()  # 3 classes
    train = torch.arange(240) < 180
    rows = P.lottery_ticket(x, y, train, hidden=(32, 16), rounds=3, prune_frac=0.5, epochs=6, lr=1e-2, batch_size=30)
    assert [r["round"] for r in rows] == [0, 1, 2]
    sizes = [16 * 32, 32 * 16, 16 * 3]  # weights per layer; the output layer prunes at half the rate
    expected = sum(round(n * 0.5) for n in sizes[:2]) + (sizes[2] - round(0.25 * sizes[2]))
    assert rows[0]["remaining"] == 1.0 and rows[1]["remaining"] == pytest.approx(expected / sum(sizes))
    assert all(0 <= r[k] <= 1 for r in rows for k in ("ticket", "reinit", "random mask"))
    assert rows[0]["ticket"] > 0.6  # the dense network learns the task
    with pytest.raises(ValueError, match="rounds must be"):
        P.lottery_ticket(x, y, train, rounds=0)


# --------------------------------------------------------------------------- retrieval


def test_recall_at_k():
    q = torch.eye(4)
    d = torch.eye(4)[[0, 2, 1, 3]]  # queries 1 and 2 point at each other's document
    assert prune_runs.recall_at_k(q, torch.eye(4), 1) == 1.0
    assert prune_runs.recall_at_k(q, d, 1) == 0.5
    assert prune_runs.recall_at_k(q, d, 4) == 1.0


@pytest.fixture(scope="module")
def minilm():
    from course_lib import encoder

    return encoder.load_model()  # a dev dependency: its absence fails, never skips


def test_minilm_unstructured_and_structured(minilm):
    from course_lib import encoder

    texts = ["Paris is the capital of France.", "Cells divide by mitosis and meiosis in eukaryotes.", "Too short."]
    calib = prune_runs.bert_calibration(texts, n=2, max_length=8, batch_size=1)
    assert [c["input_ids"].shape for c in calib] == [(1, 8), (1, 8)]
    with pytest.raises(ValueError, match="only 2 texts"):
        prune_runs.bert_calibration(texts, n=3, max_length=8)
    m = copy.deepcopy(minilm)
    P.prune_unstructured(m, method="wanda", sparsity=0.5, calibration=calib)
    rep = P.sparsity_report(m)
    assert rep["linear_sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert not any("pooler" in r["layer"] for r in rep["layers"])
    # head removal in BERT equals zeroing the head's output-projection columns
    a, b = copy.deepcopy(minilm), copy.deepcopy(minilm)
    spec = P.layer_specs(a)[3]
    d = P.head_layout(a, spec)[2]
    with torch.no_grad():
        a.get_submodule(spec.o).weight[:, 2 * d : 3 * d] = 0
    assert P.remove_heads(b, spec, [2]) == (11, 11)
    x = calib[0]
    assert torch.allclose(a(**x).last_hidden_state, b(**x).last_hidden_state, atol=1e-5)
    assert b.get_submodule(spec.attn).all_head_size == 11 * d
    rows = P.prune_structured(b, mlp_sparsity=0.5, method="wanda", calibration=calib)
    assert all(r["d_ff"] == 768 for r in rows)
    e = encoder.embed(["a small test"], model=b)
    assert e.shape == (1, 384) and torch.isfinite(e).all()


# --------------------------------------------------------------------------- the committed grid


def test_grid_is_small_and_consistent():
    assert sum(p.stat().st_size for p in prune_runs.GRID_PATH.parent.glob("prune_*")) <= 1_000_000
    grid = prune_runs.load_grid()
    rows = grid["patient"]["rows"]
    for r in rows:
        if r["structure"] == "unstructured":
            assert r["linear_sparsity"] == pytest.approx(r["sparsity"], abs=1e-3)
    dense = [r for r in rows if r["sparsity"] == 0]
    assert len({r["val_loss"] for r in dense}) == 1  # every method starts from the same model
