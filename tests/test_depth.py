"""Early exit and Mixture-of-Depths (course_lib.depth): exactness at the limits, the KV copy, bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from course_lib import depth
from course_lib.experiments import depth as depth_runs
from course_lib.model import ModelConfig, TinyLM, apply_rope

CFG = ModelConfig(vocab_size=97, d_model=32, n_layers=4, n_heads=4, n_kv_heads=2, max_seq_len=64)


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    m = TinyLM(CFG).eval()
    m.reset_parameters(std=0.2)  # larger weights: peaked distributions, so some tokens do exit
    return m


def ids(b=3, t=20, seed=1):
    return torch.randint(0, CFG.vocab_size, (b, t), generator=torch.Generator().manual_seed(seed))


def reference_decode(model, idx):
    """The full model, one position at a time with a KV cache (the same path a decoder takes)."""
    cache = model.new_cache(idx.shape[0], idx.shape[1])
    with torch.no_grad():
        return torch.cat([model(idx[:, j : j + 1], cache=cache) for j in range(idx.shape[1])], 1)


# --------------------------------------------------------------------------- confidence and heads


def test_confidence_rules_by_hand():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]]))
    assert torch.allclose(depth.confidence(logits, "max_prob"), torch.tensor([0.5, 0.8]))
    assert torch.allclose(depth.confidence(logits, "top2_gap"), torch.tensor([0.2, 0.7]))


def test_untrained_heads_are_the_logit_lens(lm):
    h = torch.randn(2, 5, CFG.d_model)
    heads = depth.ExitHeads(CFG.d_model, CFG.n_layers - 1)
    lens = lm.lm_head(lm.norm(h))
    assert torch.equal(depth.exit_logits(lm, h, 1, heads=heads), lens)
    low = depth.ExitHeads(CFG.d_model, CFG.n_layers - 1, rank=4)
    assert torch.equal(depth.exit_logits(lm, h, 0, heads=low), lens)
    # the last layer's exit is the model's own head, adapter or not
    assert torch.equal(depth.exit_logits(lm, h, CFG.n_layers - 1, heads=heads), lens)


def test_hidden_states_end_in_the_model_output(lm):
    x = ids()
    hs = depth.hidden_states(lm, x)
    assert len(hs) == CFG.n_layers and hs[0].shape == (3, 20, CFG.d_model)
    assert torch.allclose(lm.lm_head(lm.norm(hs[-1])), lm(x), atol=1e-6)


def test_training_exit_heads_brings_exits_closer_to_the_model(lm):
    x = ids(4, 32, seed=2)
    heads, hist = depth.train_exit_heads(lm, x, steps=60, batch_tokens=64, lr=1e-2)
    assert len(hist) == 60 and hist[-1] < 0.8 * hist[0]
    assert all(p.requires_grad for p in lm.parameters())  # the patient is handed back as it was
    hs = depth.hidden_states(lm, x)
    target = F.softmax(lm(x), -1)
    kl = lambda lg: F.kl_div(F.log_softmax(lg, -1), target, reduction="batchmean")  # noqa: E731
    with torch.no_grad():
        assert kl(depth.exit_logits(lm, hs[1], 1, heads=heads)) < kl(depth.exit_logits(lm, hs[1], 1))


# --------------------------------------------------------------------------- early exit


def test_threshold_one_is_the_full_model_exactly(lm, fitted):
    x = ids()
    heads = depth.ExitHeads(CFG.d_model, CFG.n_layers - 1, rank=4)
    for rule in depth.CONFIDENCE_RULES:
        r = depth.early_exit_forward(lm, x, threshold=1.0, rule=rule, heads=heads, classifier=fitted)
        assert torch.equal(r.logits, reference_decode(lm, x))  # bit for bit, same decode path
        assert (r.exit_layer == CFG.n_layers - 1).all() and r.layer_fraction == 1.0
    with torch.no_grad():
        full = lm(x)  # one parallel forward: equal up to float rounding, same tokens
    assert torch.allclose(r.logits, full, atol=1e-5) and torch.equal(r.logits.argmax(-1), full.argmax(-1))


def test_threshold_one_generates_the_full_models_tokens(lm):
    prompt = ids(2, 6, seed=3)
    tokens, layers = depth.early_exit_generate(lm, prompt, 10, threshold=1.0)
    assert torch.equal(torch.cat([prompt, tokens], 1), lm.generate(prompt, 10))
    assert (layers == CFG.n_layers - 1).all()


def test_low_threshold_exits_early_and_costs_less(lm):
    x = ids()
    r = depth.early_exit_forward(lm, x, threshold=0.0)
    assert (r.exit_layer == 0).all()  # every confidence is > 0
    r2 = depth.early_exit_forward(lm, x, threshold=0.2, min_layer=1)
    assert (r2.exit_layer >= 1).all()
    assert 0 < r2.layer_fraction < 1  # the random model is confident on some tokens only
    ff = depth.early_exit_flops(lm, r2.exit_layer, min_layer=1, seq_len=20)
    assert 0 < ff["fraction"] and ff["layer_fraction"] == pytest.approx(r2.layer_fraction)
    # per exited token the logits are the exit head's on the state it exited with
    assert (r2.confidence[r2.exit_layer < CFG.n_layers - 1] > 0.2).all()


def test_exited_tokens_write_copied_kv_in_skipped_layers(lm):
    """CALM's state copying: a skipped layer's cache holds K, V computed from the exit state."""
    x = ids(1, 12, seed=4)
    r = depth.early_exit_forward(lm, x, threshold=0.15, min_layer=1)
    exits = r.exit_layer[0]
    assert (exits < CFG.n_layers - 1).any() and (exits == CFG.n_layers - 1).any()
    # rebuild each exited token's exit state by running its blocks on the early-exit cache
    for j in torch.nonzero(exits < CFG.n_layers - 1).flatten().tolist()[:3]:
        e = int(exits[j])
        cache = lm.new_cache(1, 12)
        r0 = depth.early_exit_forward(lm, x[:, :j], threshold=0.15, min_layer=1, cache=cache)
        assert torch.equal(r0.exit_layer[0], exits[:j])
        cos, sin = lm.rope_cos[j : j + 1], lm.rope_sin[j : j + 1]
        h = lm.embed(x[:, j : j + 1])
        with torch.no_grad():
            for layer in range(e + 1):
                h = lm.blocks[layer](h, cos, sin, cache[layer])
            for layer in range(e + 1, CFG.n_layers):
                attn = lm.blocks[layer].attn
                hn = lm.blocks[layer].attn_norm(h)
                k = attn.k_proj(hn).view(1, 1, attn.n_kv_heads, attn.head_dim).transpose(1, 2)
                v = attn.v_proj(hn).view(1, 1, attn.n_kv_heads, attn.head_dim).transpose(1, 2)
                k = apply_rope(k, cos, sin)
                assert torch.allclose(r.cache[layer].k[:, :, j : j + 1], k, atol=1e-6)
                assert torch.allclose(r.cache[layer].v[:, :, j : j + 1], v, atol=1e-6)
        assert torch.allclose(r.logits[0, j], depth.exit_logits(lm, h, e)[0, 0], atol=1e-5)


def test_batch_rows_are_independent(lm):
    """A row's exits do not depend on the other rows (the masked batch = one row at a time)."""
    x = ids(3, 16, seed=5)
    r = depth.early_exit_forward(lm, x, threshold=0.15, min_layer=1)
    for i in range(3):
        ri = depth.early_exit_forward(lm, x[i : i + 1], threshold=0.15, min_layer=1)
        assert torch.equal(ri.exit_layer[0], r.exit_layer[i])
        assert torch.allclose(ri.logits[0], r.logits[i], atol=1e-5)


def test_flops_accounting_by_hand(lm):
    per = [depth.block_flops(b, 10) for b in lm.blocks]
    head = 2 * CFG.d_model * CFG.vocab_size
    full_layers = torch.full((5,), CFG.n_layers - 1)
    ff = depth.early_exit_flops(lm, full_layers, min_layer=CFG.n_layers - 1, seq_len=10)
    assert ff["early_exit"] == pytest.approx(ff["full"]) and ff["fraction"] == pytest.approx(1.0)
    first = depth.early_exit_flops(lm, torch.zeros(4, dtype=torch.long), seq_len=10)
    want = per[0]["total"] + sum(p["kv"] for p in per[1:]) + head  # one block, copied K/V, one check
    assert first["early_exit"] == pytest.approx(want) and first["layer_fraction"] == pytest.approx(1 / CFG.n_layers)
    assert first["head_fraction"] == pytest.approx(head / want)
    assert per[0]["kv"] == 2 * 2 * CFG.d_model * CFG.n_kv_heads * CFG.head_dim


def test_exit_sweep_is_monotone_at_the_ends(lm):
    rows = depth.exit_sweep(lm, ids(2, 16), [1.0, 0.0])
    assert rows[0]["agreement"] == 1.0 and rows[0]["layer_fraction"] == 1.0
    assert rows[1]["layer_fraction"] == 1 / CFG.n_layers and rows[1]["flops_fraction"] < 1
    assert sum(rows[0]["exit_counts"]) == 2 * 15 and math.isfinite(rows[1]["ppl"])


def test_token_kinds():
    pieces = ["The", " river", " Th", "ames", ",", " and", " London", " 1879"]
    kinds = [depth.token_kind(p, first=i == 0) for i, p in enumerate(pieces)]
    assert kinds == [
        "function word",
        "other word",
        "capitalised word",
        "word piece",
        "punctuation",
        "function word",
        "capitalised word",
        "other word",
    ]
    table = depth.exits_by_kind(pieces[1:], torch.tensor([2, 3, 4, 1, 1, 6, 2]), n_layers=6)
    assert table["function word"] == {"count": 1, "mean_layers": 1.0, "early_share": 1.0}
    assert table["capitalised word"] == {"count": 2, "mean_layers": 4.5, "early_share": 0.5}
    assert list(table) == ["word piece", "punctuation", "function word", "capitalised word", "other word"]


# --------------------------------------------------------------------------- Mixture-of-Depths


def test_mod_capacity_one_is_the_plain_block_exactly(lm):
    x = lm.embed(ids(2, 24))
    cos, sin = lm.rope_cos[:24], lm.rope_sin[:24]
    block = lm.blocks[1]
    mod = depth.MoDBlock(block, capacity=1.0)
    with torch.no_grad():
        assert torch.equal(mod(x, cos, sin), block(x, cos, sin))
    m2 = depth.mod_model(lm, layers=[1, 3], capacity=1.0)
    with torch.no_grad():
        assert torch.equal(m2(ids()), lm(ids()))
    assert isinstance(lm.blocks[1], type(block))  # the original is untouched


def test_mod_routes_only_the_top_tokens(lm):
    torch.manual_seed(0)
    x = lm.embed(ids(2, 16))
    cos, sin = lm.rope_cos[:16], lm.rope_sin[:16]
    block = lm.blocks[0]
    mod = depth.MoDBlock(block, capacity=0.25)
    with torch.no_grad():
        y = mod(x, cos, sin)
        pick = mod.last_selected  # (2, 4)
        assert pick.shape == (2, 4) and torch.equal(pick, pick.sort(-1).values)
        scores = mod.router(x).squeeze(-1)
        for i in range(2):
            assert set(pick[i].tolist()) == set(scores[i].topk(4).indices.tolist())
            skipped = [j for j in range(16) if j not in pick[i].tolist()]
            assert torch.equal(y[i, skipped], x[i, skipped])  # the rest ride the residual
            # the chosen tokens: the block on the short sequence, each at its own position
            want = block(x[i : i + 1, pick[i]], cos[pick[i]], sin[pick[i]])
            assert torch.allclose(y[i, pick[i]], want[0], atol=1e-5)


def test_mod_router_learns_through_the_gate(lm):
    m = depth.mod_model(lm, layers=[1], capacity=0.5)
    x = ids(2, 16)
    loss = m.loss(x[:, :-1], x[:, 1:])
    loss.backward()
    g = m.blocks[1].router.weight.grad
    assert g is not None and g.abs().sum() > 0
    with pytest.raises(ValueError, match="cache"):
        m.generate(x[:, :4], 2)


def test_mod_flops(lm):
    for c, k in ((1.0, 16), (0.5, 8), (0.125, 2), (0.01, 1)):
        assert depth.mod_tokens(16, c) == k
    m = depth.mod_model(lm, layers=[0, 2], capacity=0.5)
    f = depth.mod_flops_per_token(m, 16)
    per = depth.block_flops(lm.blocks[0], 16)["total"]
    half = 0.5 * depth.block_flops(lm.blocks[0], 8)["total"] + 2 * CFG.d_model
    assert f["dense"] - f["total"] == pytest.approx(2 * (per - half))
    assert depth.mod_flops_per_token(depth.mod_model(lm, layers=[0], capacity=1.0), 16)["fraction"] > 1  # router


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("cap", [0, -0.5, 1.5, float("nan"), "0.5", None])
def test_capacity_refused(lm, cap):
    with pytest.raises((ValueError, TypeError), match="capacity"):
        depth.MoDBlock(lm.blocks[0], capacity=cap)
    with pytest.raises((ValueError, TypeError), match="capacity"):
        depth.mod_model(lm, layers=[0], capacity=cap)


@pytest.mark.parametrize("thr", [float("nan"), -0.1, 1.1, float("inf"), "0.9", None])
def test_threshold_refused(lm, thr):
    with pytest.raises((ValueError, TypeError), match="threshold"):
        depth.early_exit_forward(lm, ids(1, 4), threshold=thr)
    with pytest.raises((ValueError, TypeError), match="threshold"):
        depth.exit_sweep(lm, ids(1, 4), [0.5, thr])


@pytest.mark.parametrize("layer", [-1, CFG.n_layers, 2.5, "1"])
def test_exit_layer_refused(lm, layer):
    with pytest.raises((ValueError, TypeError), match="layer"):
        depth.exit_logits(lm, torch.randn(1, CFG.d_model), layer)
    with pytest.raises((ValueError, TypeError), match="min_layer"):
        depth.early_exit_forward(lm, ids(1, 4), threshold=0.5, min_layer=layer)
    with pytest.raises((ValueError, TypeError), match="layers"):
        depth.mod_model(lm, layers=[layer], capacity=0.5)


def test_other_bad_input(lm):
    with pytest.raises(ValueError, match="rule"):
        depth.confidence(torch.randn(2, 5), "entropy")
    with pytest.raises(ValueError, match="heads"):
        depth.early_exit_forward(lm, ids(1, 4), threshold=0.5, heads=depth.ExitHeads(CFG.d_model, 2))
    with pytest.raises(TypeError, match="model"):
        depth.early_exit_forward("small", ids(1, 4), threshold=0.5)
    with pytest.raises(ValueError, match="exit_layer"):
        depth.early_exit_flops(lm, torch.tensor([CFG.n_layers]))
    with pytest.raises(TypeError, match="layers"):
        depth.mod_model(lm, layers=1, capacity=0.5)
    with pytest.raises(ValueError, match="max_new_tokens"):
        depth.early_exit_generate(lm, ids(1, 4), 0, threshold=0.5)


def test_classifier_rule_uses_the_probes(lm):
    x = ids(2, 16, seed=6)
    heads, _ = depth.train_exit_heads(lm, ids(4, 32, seed=2), rank=4, steps=20, batch_tokens=64, lr=1e-2)
    r1 = depth.early_exit_forward(lm, x, threshold=1.0, rule="classifier", heads=heads)
    assert torch.equal(r1.logits, reference_decode(lm, x))
    with torch.no_grad():  # force the layer-1 probe to say "stop": every token exits there
        heads.probes[1].bias.fill_(50.0)
        heads.probes[0].bias.fill_(-50.0)
    r = depth.early_exit_forward(lm, x, threshold=0.5, rule="classifier", heads=heads)
    assert (r.exit_layer == 1).all()
    hs = depth.hidden_states(lm, x[:, :1])  # position 0 has no context: its state is the same in any run
    assert torch.allclose(r.logits[:, 0], depth.exit_logits(lm, hs[1], 1, heads=heads)[:, 0], atol=1e-5)
    # FLOPs: two probe checks and one exit head, against two full head checks under a softmax rule
    f_cls = depth.early_exit_flops(lm, r.exit_layer, heads=heads, rule="classifier", seq_len=16)
    f_max = depth.early_exit_flops(lm, r.exit_layer, heads=heads, rule="max_prob", seq_len=16)
    head = 2 * CFG.d_model * CFG.vocab_size + heads.flops_per_exit()
    assert f_max["early_exit"] - f_cls["early_exit"] == pytest.approx(2 * head - (head + 2 * heads.flops_per_probe()))
    with pytest.raises(ValueError, match="heads"):
        depth.early_exit_forward(lm, x, threshold=0.5, rule="classifier")


# --------------------------------------------------------------------------- the learned exit decision (CALM's classifier)


@pytest.fixture(scope="module")
def fitted(lm):
    """A classifier with all features fitted on random text of the random model."""
    torch.set_num_threads(1)
    return depth.fit_exit_classifier(lm, ids(8, 32, seed=11))


def test_exit_features_by_hand():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]]))
    h = torch.tensor([[1.0, 0.0], [3.0, 4.0]])
    h_prev = torch.tensor([[1.0, 1.0], [3.0, 4.0]])
    f = depth.exit_features(h, h_prev, logits, torch.tensor([0, 0]))
    entropy = -(torch.tensor([0.5, 0.3, 0.2]) * torch.tensor([0.5, 0.3, 0.2]).log()).sum()
    want = torch.tensor(
        [
            [0.5, 0.2, float(entropy), 1.0, 2**-0.5, 1.0],
            [0.8, 0.7, float(-(0.2 * math.log(0.1) + 0.8 * math.log(0.8))), 0.0, 1.0, 0.0],
        ]
    )
    assert torch.allclose(f, want, atol=1e-5)
    assert depth.exit_features(h, h_prev, logits)[:, 3].eq(0).all()  # no earlier check: not consistent
    cheap = depth.exit_features(h, h_prev, features=["state_change", "state_cos"])  # no logits needed
    assert torch.allclose(cheap, want[:, [5, 4]], atol=1e-6)


def test_classifier_fit_separates_a_learnable_label():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 2, generator=g)
    y = (x[:, 0] - 0.5 * x[:, 1] > 0).float()
    clf = depth.ExitClassifier(3, features=["state_cos", "state_change"], check_layers=[1]).fit({1: x}, {1: y})
    p = clf.prob(1, x)
    assert ((p > 0.5).float() == y).float().mean() > 0.95
    w = clf.params[1]["weight"]
    assert w[0] > 0 > w[1]  # the signs of the rule that made the labels
    again = depth.ExitClassifier.from_dict(json.loads(json.dumps(clf.to_dict())))
    assert torch.equal(again.prob(1, x), p)  # what is stored is what is measured


def test_learned_rule_at_position_zero_matches_the_teacher_forced_replay(lm, fitted):
    """Without context (one position) the run's states are the full depth's, so the exits the
    real run takes are the ones simulate_exits replays from exit_classifier_data."""
    x = ids(40, 1, seed=12)
    feats, labels = depth.exit_classifier_data(lm, x, fitted)
    for thr in (0.3, 0.5, 0.7):
        r = depth.early_exit_forward(lm, x, threshold=thr, rule="learned", classifier=fitted)
        replay = depth.simulate_exits(fitted, feats, labels, [thr])[0]
        assert replay["layer_fraction"] == pytest.approx(r.layer_fraction)
        full = lm(x).argmax(-1)
        assert replay["agreement"] == pytest.approx(float((r.logits.argmax(-1) == full).float().mean()))


def test_learned_rule_checks_only_its_blocks_and_counts_its_flops(lm):
    x = ids(2, 10, seed=13)
    for features, uses_head in ((depth.EXIT_FEATURES, True), (["state_cos", "state_change"], False)):
        clf = depth.fit_exit_classifier(lm, ids(4, 16, seed=14), features=features, check_layers=[1, 2])
        assert clf.uses_head == uses_head
        with torch.no_grad():  # force: never stop after block 2 (1), always after block 3 (2)
            clf.params[1]["bias"].fill_(-50.0)
            clf.params[2]["bias"].fill_(50.0)
        r = depth.early_exit_forward(lm, x, threshold=0.5, rule="learned", classifier=clf)
        assert (r.exit_layer == 2).all()
        hs = depth.hidden_states(lm, x[:, :1])
        assert torch.allclose(r.logits[:, 0], depth.exit_logits(lm, hs[2], 2)[:, 0], atol=1e-5)
        f = depth.early_exit_flops(lm, r.exit_layer, rule="learned", classifier=clf, seq_len=10)
        per = [depth.block_flops(b, 10) for b in lm.blocks]
        head = 2 * CFG.d_model * CFG.vocab_size
        check = clf.check_flops(CFG.d_model, CFG.vocab_size)
        checks = 2 * (check + head) if uses_head else 2 * check + head  # two checks; the head at each, or once
        want = sum(p["total"] for p in per[:3]) + per[3]["kv"] + checks
        assert f["early_exit"] == pytest.approx(want)
    # the calibrated threshold keeps the target on the calibration data
    feats, labels = depth.exit_classifier_data(lm, ids(4, 16, seed=14), clf)
    point = depth.calibrate_exit_threshold(clf, feats, labels, target=0.9)
    assert point["agreement"] >= 0.9 and 0 <= point["threshold"] <= 1


def test_learned_rule_bad_input(lm, fitted):
    x = ids(1, 4)
    with pytest.raises(ValueError, match="classifier"):
        depth.early_exit_forward(lm, x, threshold=0.5, rule="learned")
    with pytest.raises(ValueError, match="classifier is not fitted"):
        depth.early_exit_forward(lm, x, threshold=0.5, rule="learned", classifier=depth.ExitClassifier(CFG.n_layers))
    with pytest.raises(ValueError, match="not fitted"):
        depth.ExitClassifier(CFG.n_layers).prob(0, torch.zeros(6))
    with pytest.raises(TypeError, match="classifier"):
        depth.early_exit_forward(lm, x, threshold=0.5, rule="learned", classifier="probe")
    for thr in (float("nan"), 1.5):
        with pytest.raises(ValueError, match="threshold"):
            depth.early_exit_forward(lm, x, threshold=thr, rule="learned", classifier=fitted)
    for bad in ([CFG.n_layers - 1], [-1], [0, 0]):
        with pytest.raises(ValueError, match="check_layers"):
            depth.ExitClassifier(CFG.n_layers, check_layers=bad)
    with pytest.raises(TypeError, match="check_layers"):
        depth.ExitClassifier(CFG.n_layers, check_layers=1)
    with pytest.raises(ValueError, match="features"):
        depth.ExitClassifier(CFG.n_layers, features=["max_prob", "logit"])
    with pytest.raises(ValueError, match="layer"):
        fitted.prob(CFG.n_layers - 1, torch.zeros(6))
    with pytest.raises(ValueError, match="logits"):
        depth.exit_features(torch.ones(2, 3), torch.ones(2, 3), features=["entropy"])
    with pytest.raises(ValueError, match="target"):
        depth.calibrate_exit_threshold(fitted, *depth.exit_classifier_data(lm, ids(2, 8), fitted), target=float("nan"))
    with pytest.raises(ValueError, match="classifier is for"):
        depth.early_exit_forward(
            lm,
            x,
            threshold=0.5,
            rule="learned",
            classifier=depth.ExitClassifier.from_dict({**fitted.to_dict(), "n_layers": CFG.n_layers + 1}),
        )


# --------------------------------------------------------------------------- the runs module (figures, widget, stored files)


def _fake_stored():
    row = lambda t, lf, ff, ag: {"threshold": t, "layer_fraction": lf, "flops_fraction": ff, "agreement": ag}  # noqa: E731
    sweep = [row(1.0, 1.0, 1.0, 1.0), row(0.8, 0.9, 1.4, 0.97), row(0.5, 0.6, 1.1, 0.9)]
    mod = [
        {"capacity": c, "flops_fraction": f, "val_loss": v}
        for c, f, v in ((1.0, 1.0, 4.5), (0.5, 0.8, 4.6), (0.25, 0.7, 4.7), ("drop", 0.6, 5.0))
    ]
    return {
        "early_exit": {"sweeps": {k: sweep for k in depth_runs.SWEEP_NAMES}},
        "mod": {"runs": mod},
        "targets": {"agreement": 0.95, "layers": 0.7},
    }


def test_best_point_keeps_the_agreement():
    rows = _fake_stored()["early_exit"]["sweeps"]["max_prob/lens"]
    assert depth_runs.best_point(rows)["threshold"] == 0.8
    assert depth_runs.best_point(rows, agreement=0.5)["threshold"] == 0.5
    assert depth_runs.best_point(rows, agreement=1.01) is None


def test_figures_draw_the_stored_runs():
    st = _fake_stored()
    fig = depth_runs.sweep_figure(st)
    assert len(fig.data) == 2 * len(depth_runs.SWEEP_NAMES)
    assert list(fig.data[1].x) == [1.0, 1.4, 1.1]  # the FLOPs panel
    st["exit_trained"] = {"sweeps": {k: st["early_exit"]["sweeps"]["max_prob/lens"] for k in depth_runs.TRAINED_NAMES}}
    fig = depth_runs.sweep_figure(st)  # the exit-trained model's curves are added, dashed
    assert len(fig.data) == 2 * (len(depth_runs.SWEEP_NAMES) + len(depth_runs.TRAINED_NAMES))
    assert fig.data[-1].line.dash == "dash" and fig.data[0].line.dash == "solid"
    assert fig.data[-1].name == depth_runs.TRAINED_NAMES["top2_gap"]
    fig = depth_runs.mod_figure(st)
    assert list(fig.data[0].x) == [1.0, 0.8, 0.7] and list(fig.data[-1].y) == [5.0]
    assert [tr.name for tr in fig.data[1:]] == ["capacity 1", "capacity 0.5", "capacity 0.25", "two blocks removed"]


def test_widget_blanks_the_skipped_layers(lm):
    x = ids(1, 10, seed=7)
    pieces = [f" t{i}" for i in range(10)]
    wd = depth_runs.exit_widget_data(lm, None, x, pieces, [1.0, 0.15], rule="max_prob")
    assert wd["per"][1.0]["exit_layer"] == [CFG.n_layers - 1] * 10 and wd["per"][1.0]["agreement"] == 1.0
    fig = depth_runs.exit_widget_figure(wd, threshold=0.15)
    z = fig.data[0].z
    exits = wd["per"][0.15]["exit_layer"]
    for j, e in enumerate(exits):
        assert all(z[layer][j] is None for layer in range(e + 1, CFG.n_layers))
        assert all(0 <= z[layer][j] <= 1 for layer in range(e + 1))
    assert "threshold 0.15" in fig.layout.title.text
    want = depth.early_exit_flops(lm, torch.tensor(exits), seq_len=10)["fraction"]
    assert wd["per"][0.15]["flops_fraction"] == pytest.approx(want)


def test_build_refuses_unknown_parts():
    with pytest.raises(ValueError, match="parts"):
        depth_runs.build(parts=["exits"])


def test_build_restores_the_thread_count_when_a_part_fails(tmp_path, monkeypatch):
    before = torch.get_num_threads()
    threads = 2 if before == 1 else 1  # another count than the current one, so restoring it is observable

    def fail(progress):
        assert torch.get_num_threads() == threads  # the part runs at the build's thread count
        raise RuntimeError("part failed")

    monkeypatch.setattr(depth_runs, "build_exit", fail)
    with pytest.raises(RuntimeError, match="part failed"):
        depth_runs.build(parts=["exit"], threads=threads, path=tmp_path / "runs.json")
    assert torch.get_num_threads() == before and not (tmp_path / "runs.json").exists()


def test_sweep_batches_thresholds_like_separate_runs(lm):
    x = ids(2, 12, seed=8)
    rows = depth.exit_sweep(lm, x, [0.3, 0.15, 1.0], min_layer=1)
    for row in rows:
        r = depth.early_exit_forward(lm, x, threshold=row["threshold"], min_layer=1)
        counts = torch.bincount(r.exit_layer[:, :-1].flatten(), minlength=CFG.n_layers).tolist()
        assert counts == row["exit_counts"]


# --------------------------------------------------------------------------- training a model to exit (LayerSkip)


def test_layer_dropout_rises_from_zero_to_the_maximum():
    rates = depth.layer_dropout_rates(5, 0.4)
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.4)
    assert all(a < b for a, b in zip(rates, rates[1:]))
    assert rates[2] == pytest.approx(0.4 * (2**0.5 - 1))  # p_max (2^{l/(L-1)} - 1)
    assert depth.layer_dropout_rates(1, 0.4) == [0.0]


def test_exit_loss_weights_by_hand():
    # e = s * sum_{i<=l} i for the exits, L-1 + s * sum_{i<=L-2} i for the last layer: [0, 1, 3, 6] / 10
    assert depth.exit_loss_weights(4, 1.0) == pytest.approx([0.0, 0.1, 0.3, 0.6])
    assert depth.exit_loss_weights(4, 0.0) == pytest.approx([0.0, 0.0, 0.0, 1.0])  # plain training
    w = depth.exit_loss_weights(6, 4.0)
    assert sum(w) == pytest.approx(1.0) and all(a <= b for a, b in zip(w, w[1:]))


def test_layerskip_loss_without_dropout_or_exits_is_the_model_loss(lm):
    x = ids(2, 12, seed=3)
    y = ids(2, 12, seed=4)
    gen = torch.Generator().manual_seed(0)
    n = CFG.n_layers
    with torch.no_grad():
        loss, per = depth.layerskip_loss(
            lm, x, y, drop=[0.0] * n, weights=depth.exit_loss_weights(n, 0.0), exit_tokens=8, generator=gen
        )
        assert float(loss) == pytest.approx(float(lm.loss(x, y)), rel=1e-6)
        assert all(math.isnan(v) for v in per[:-1])
        # every block dropped for every sequence: the embedding read by the head
        loss, _ = depth.layerskip_loss(
            lm, x, y, drop=[1.0] * n, weights=depth.exit_loss_weights(n, 0.0), exit_tokens=8, generator=gen
        )
        want = F.cross_entropy(lm.lm_head(lm.norm(lm.embed(x))).flatten(0, 1), y.flatten())
        assert float(loss) == pytest.approx(float(want), rel=1e-6)


def test_zero_delta_is_the_model_and_delta_is_merged(lm):
    names = [n for n, _ in depth._block_linears(lm)]
    lin = dict(depth._block_linears(lm))
    zero = {}
    for n in names:
        zero[f"{n}.a"] = torch.randn(2, lin[n].in_features).half()
        zero[f"{n}.b"] = torch.zeros(lin[n].out_features, 2).half()
    same = depth.apply_exit_delta(lm, zero)
    x = ids(1, 10, seed=5)
    with torch.no_grad():
        assert torch.equal(same(x), lm(x))
    one = {
        f"{names[0]}.a": torch.ones(1, lin[names[0]].in_features),
        f"{names[0]}.b": torch.ones(lin[names[0]].out_features, 1),
    }
    moved = depth.apply_exit_delta(lm, one)
    assert torch.equal(dict(depth._block_linears(moved))[names[0]].weight, lin[names[0]].weight + 1)
    assert torch.equal(dict(depth._block_linears(moved))[names[1]].weight, lin[names[1]].weight)  # the rest untouched
    with pytest.raises(ValueError, match="delta"):
        depth.apply_exit_delta(lm, {"blocks.0.nope.a": torch.ones(1, 1)})
    with pytest.raises(ValueError, match="delta factors"):
        depth.apply_exit_delta(lm, {f"{names[0]}.a": torch.ones(1, 3), f"{names[0]}.b": torch.ones(3, 1)})


def test_train_for_exit_teaches_the_exits_and_keeps_the_model_frozen(lm):
    # a text the early layers can learn: a fixed cycle of tokens
    text = torch.arange(3000) % 13
    before = {k: v.clone() for k, v in lm.state_dict().items()}
    model, delta, hist = depth.train_for_exit(
        lm, text, rank=4, steps=40, batch_size=4, seq_len=16, lr=1e-2, max_dropout=0.3, exit_scale=2.0, exit_tokens=32
    )
    assert all(torch.equal(v, lm.state_dict()[k]) for k, v in before.items())  # the input model is untouched
    assert isinstance(model, TinyLM) and all(v.dtype == torch.float16 for v in delta.values())
    assert len(delta) == 2 * len(depth._block_linears(lm))
    for layer in range(1, CFG.n_layers):  # every exit with a weight learned (the cycle is easy)
        assert sum(h[layer] for h in hist[-5:]) < sum(h[layer] for h in hist[:5])
    rebuilt = depth.apply_exit_delta(lm, delta)  # what is stored is what is measured
    assert all(torch.equal(v, rebuilt.state_dict()[k]) for k, v in model.state_dict().items())
    r = depth.early_exit_forward(model, text[:12][None], threshold=1.0)  # still a plain TinyLM
    assert (r.exit_layer == CFG.n_layers - 1).all()


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"rank": 0}, "rank"),
        ({"max_dropout": 1.0}, "max_dropout"),
        ({"exit_scale": -1.0}, "exit_scale"),
        ({"seq_len": 1}, "seq_len"),
        ({"steps": 0}, "steps"),
    ],
)
def test_train_for_exit_rejects_bad_settings(lm, kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        depth.train_for_exit(lm, torch.arange(100) % 7, **{"seq_len": 16, **kw})


def test_stored_exit_trained_model_loads_and_is_reported():
    stored = depth_runs.load_runs()
    section = stored.get("exit_trained")
    assert section is not None, "depth_runs.json lacks exit_trained: python -m course_lib.build depth --part trained"
    model = depth_runs.load_exit_trained()
    assert section["delta_params"] == sum(
        m.in_features * depth_runs.TRAINED["rank"] + m.out_features * depth_runs.TRAINED["rank"]
        for _, m in depth._block_linears(model)
    )
    for rule in depth_runs.TRAINED_SWEEPS:
        rows = section["sweeps"][rule]
        assert rows[0]["threshold"] == 1.0 and rows[0]["agreement"] == 1.0 and rows[0]["layer_fraction"] == 1.0
        assert [r["threshold"] for r in rows] == list(depth_runs.TRAINED_THRESHOLDS)
    assert section["lens_agreement"]["trained"][-1] == 1.0


def test_stored_exit_rule_is_calibrated_apart_from_validation():
    stored = depth_runs.load_runs()
    section = stored.get("exit_rule")
    assert section is not None, "depth_runs.json lacks exit_rule: python -m course_lib.build depth --part rule"
    assert set(section["variants"]) == set(depth_runs.RULE_VARIANTS)
    for name, v in section["variants"].items():
        clf = depth_runs.load_exit_rule(name, stored)
        assert clf.fitted and v["threshold"] in depth_runs.RULE_THRESHOLDS
        # the threshold is the cheapest calibration run keeping the target, chosen without validation
        assert v["threshold"] == depth_runs.best_point(v["calibration"])["threshold"]
        assert v["validation"]["threshold"] == v["threshold"]
        assert v["sweep"][0]["threshold"] == 1.0 and v["sweep"][0]["agreement"] == 1.0
    # the fit windows lie after the sweep's validation windows, never on them
    cal = depth_runs.calibration_ids(2)
    n, t = depth_runs.SWEEP_SEQS
    assert torch.equal(cal, depth_runs.windows("val", n + 2, t)[n:])


def test_rule_figure_draws_old_and_new_frontiers():
    st = _fake_stored()
    rows = st["early_exit"]["sweeps"]["max_prob/lens"]
    st["exit_trained"] = {"sweeps": {k: rows for k in depth_runs.TRAINED_NAMES}}
    st["exit_rule"] = {"variants": {"learned": {"sweep": rows, "validation": rows[1], "threshold": 0.8}}}
    fig = depth_runs.rule_figure(st, oracle=0.5)
    names = [tr.name for tr in fig.data]
    assert names[:2] == [depth_runs.TRAINED_NAMES["max_prob"]] * 2 and fig.data[0].line.dash == "dash"
    learned = [tr for tr in fig.data if tr.name == "learned"]
    assert len(learned) == 2 and learned[0].line.dash == "solid" and list(learned[1].x) == [1.0, 1.4, 1.1]
    ringed = [tr for tr in fig.data if tr.name.startswith("learned: threshold")]
    assert [list(tr.x) for tr in ringed] == [[0.9], [1.4]]  # the chosen point, in both panels
    assert fig.data[-1].name == "a perfect rule" and list(fig.data[-1].x) == [0.5]


def test_classifier_fit_matches_scikit_learns_logistic_regression():
    """Cross-check: the same L2-regularised objective solved by scikit-learn (lbfgs).

    Ours minimises mean BCE + l2·||w||² on standardised features (the bias unpenalised);
    scikit-learn minimises ½||w||² + C·Σ BCE, the same optimum for C = 1 / (2·l2·N)."""
    sklearn = pytest.importorskip("sklearn.linear_model")
    g = torch.Generator().manual_seed(1)
    x = torch.randn(600, 3, generator=g) * torch.tensor([1.0, 3.0, 0.2]) + torch.tensor([0.5, -1.0, 2.0])
    logit = 1.5 * x[:, 0] - 0.4 * x[:, 1] + 2.0 * x[:, 2] - 3.5
    y = (torch.rand(600, generator=g) < torch.sigmoid(logit)).float()  # noisy labels: a finite optimum
    l2 = 1e-2
    clf = depth.ExitClassifier(4, features=["max_prob", "top2_gap", "entropy"], check_layers=[2])
    clf.fit({2: x}, {2: y}, l2=l2, steps=200)
    z = ((x - x.mean(0)) / x.std(0)).double().numpy()
    ref = sklearn.LogisticRegression(C=1 / (2 * l2 * len(y)), tol=1e-10, max_iter=10_000).fit(z, y.numpy())
    p = clf.params[2]
    torch.testing.assert_close(p["weight"].double(), torch.from_numpy(ref.coef_[0]), atol=2e-4, rtol=1e-3)
    assert float(p["bias"]) == pytest.approx(float(ref.intercept_[0]), abs=2e-4)
