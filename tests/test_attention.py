"""Chapter 03: sparse attention masks, the blocked kernel, the rolling KV cache, SparseAttention."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from course_lib import attention as A
from course_lib.attention import SparsePattern
from course_lib.experiments import attention as attention_runs
from course_lib.model import ModelConfig, TinyLM, causal_mask

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def qkv(b=1, h=4, hkv=2, t=32, d=8, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(b, n, t, d, generator=g, dtype=dtype) for n in (h, hkv, hkv))


@st.composite
def patterns(draw, causal=None):
    kind = draw(st.sampled_from(A.KINDS))
    block = draw(st.sampled_from([2, 4, 8]))
    window = block * draw(st.integers(1, 4)) if kind == "block_sparse" else draw(st.integers(1, 12))
    return SparsePattern(
        kind,
        window=window,
        dilation=draw(st.integers(1, 4)) if kind == "dilated" else 1,
        n_global=draw(st.integers(0, 3)),
        n_random_blocks=draw(st.integers(0, 2)),
        block_size=block,
        causal=draw(st.booleans()) if causal is None else causal,
        seed=draw(st.integers(0, 5)),
    )


# --------------------------------------------------------------------------- masks


def test_causal_mask_is_the_lower_triangle_and_matches_the_model():
    m = A.causal_mask(9)
    assert torch.equal(m, torch.ones(9, 9, dtype=torch.bool).tril())
    assert torch.equal(m, causal_mask(9, 9))
    assert A.causal_pairs(9) == m.sum() == 45


@given(t=st.integers(1, 40), w=st.integers(1, 50))
@FAST
def test_sliding_window_rows_are_the_last_w_keys(t, w):
    m = A.sliding_window_mask(t, w)
    for i in range(t):
        assert m[i].nonzero().flatten().tolist() == list(range(max(0, i - w + 1), i + 1))
    assert not m.triu(1).any()  # causal
    assert A.sliding_window_pairs(t, w) == m.sum()
    bi = A.sliding_window_mask(t, w, causal=False)
    assert torch.equal(bi, bi.T) and torch.equal(bi.tril(), m)
    assert A.sliding_window_pairs(t, w, causal=False) == bi.sum()


@given(t=st.integers(1, 40), w=st.integers(1, 8), d=st.integers(1, 5))
@FAST
def test_dilated_window_keys_are_spaced_by_the_dilation(t, w, d):
    m = A.dilated_window_mask(t, w, d)
    for i in range(t):
        assert m[i].nonzero().flatten().tolist() == [
            j for j in range(t) if j <= i and (i - j) % d == 0 and i - j < w * d
        ]
    assert A.dilated_pairs(t, w, d) == m.sum()
    assert torch.equal(A.dilated_window_mask(t, w, 1), A.sliding_window_mask(t, w))


def test_global_rows_and_columns_are_full():
    g = A.global_tokens_mask(12, 3)
    assert g[:, :3].all() and g[:3, :].all() and not g[3:, 3:].any()
    p = SparsePattern("sliding_window", window=2, n_global=3, block_size=4)
    m = p.mask(12)
    assert torch.equal(m[:, :3], A.causal_mask(12)[:, :3])  # every query reads the global tokens (causally)
    assert torch.equal(m[:3], A.causal_mask(12)[:3])  # global tokens read their whole past
    bi = SparsePattern("sliding_window", window=2, n_global=3, causal=False, block_size=4).mask(12)
    assert bi[:, :3].all() and bi[:3, :].all()


def test_random_blocks_are_seeded_causal_and_prefix_consistent():
    lay = A.random_block_layout(10, 2, seed=1)
    assert not lay.triu().any()  # strictly earlier blocks
    assert lay.sum(1).tolist() == [min(i, 2) for i in range(10)]
    assert torch.equal(A.random_block_layout(10, 2, seed=1), lay)
    assert not torch.equal(A.random_block_layout(10, 2, seed=2), lay)
    assert torch.equal(A.random_block_layout(16, 2, seed=1)[:10, :10], lay)  # decoding relies on this
    bi = A.random_block_layout(10, 3, causal=False, seed=0)
    assert bi.sum(1).eq(3).all() and not bi.diagonal().any()
    m = A.random_blocks_mask(40, 4, 2, seed=1)
    assert torch.equal(m, A.block_sparse_mask(lay, 4))


def test_block_sparse_mask_expands_the_layout():
    lay = A.block_local_layout(4, 2)
    assert lay.tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]]
    m = A.block_sparse_mask(lay, 3)
    assert m.shape == (12, 12) and m.sum() == lay.sum() * 9
    p = SparsePattern("block_sparse", window=6, block_size=3)
    assert torch.equal(p.mask(12), m & A.causal_mask(12))


@given(p=patterns(), t=st.integers(1, 48))
@FAST
def test_counts_layout_and_formulas_agree_with_the_mask(p, t):
    p = SparsePattern(**{**p.__dict__, "n_global": min(p.n_global, t)})
    m = p.mask(t)
    assert m.diagonal().all(), "every query reads itself"
    assert torch.equal(p.row_counts(t), m.sum(1))
    assert p.pairs(t) == m.sum()
    assert math.isclose(p.mean_context(t), m.sum().item() / t)
    s = p.stats(t, head_dim=16, n_heads=2)
    assert math.isclose(s["density"], A.density(m)) and s["flops"] == A.attention_flops(int(m.sum()), 16, 2)
    # the block layout: exact when blocks tile the length, never missing an allowed pair
    b = p.block_size
    nb = -(-t // b)
    padded = torch.zeros(nb * b, nb * b, dtype=torch.bool)
    padded[:t, :t] = m
    exact = padded.view(nb, b, nb, b).any(3).any(1)
    layout = p.block_layout(t)
    assert not (exact & ~layout).any()
    if t % b == 0:
        assert torch.equal(layout, exact)


# --------------------------------------------------------------------------- attention


def test_dense_reference_equals_sdpa_with_the_same_bool_mask():
    q, k, v = qkv(b=2, h=4, hkv=1, t=24, d=16)
    for m in (A.causal_mask(24), A.sliding_window_mask(24, 5), SparsePattern("dilated", window=3, dilation=4).mask(24)):
        ref = A.dense_attention(q, k, v, m)
        sdpa = F.scaled_dot_product_attention(q, k.expand(-1, 4, -1, -1), v.expand(-1, 4, -1, -1), attn_mask=m)
        torch.testing.assert_close(ref, sdpa)
    torch.testing.assert_close(A.dense_attention(q, k, v, A.causal_mask(24)), A.sdpa_attention(q, k, v, is_causal=True))
    out, w = A.dense_attention(q, k, v, A.sliding_window_mask(24, 5), return_weights=True)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, 24, dtype=w.dtype))
    assert (w[..., ~A.sliding_window_mask(24, 5)] == 0).all()


@given(
    p=patterns(),
    t=st.integers(1, 40),
    heads=st.sampled_from([(1, 1), (2, 1), (4, 2), (3, 3)]),
    d=st.sampled_from([4, 8]),
)
@FAST
def test_blocked_kernel_equals_dense_and_sdpa(p, t, heads, d):
    q, k, v = qkv(b=2, h=heads[0], hkv=heads[1], t=t, d=d, seed=t)
    m = p.allowed(*A._positions(t), p.random_layout(t))  # the predicate, also for n_global > t
    ref = A.dense_attention(q, k, v, m)
    torch.testing.assert_close(A.block_sparse_attention(q, k, v, p), ref)
    torch.testing.assert_close(A.sdpa_attention(q, k, v, m), ref)


def test_blocked_kernel_block_size_override_and_convenience_wrapper():
    q, k, v = qkv(t=50)
    ref = A.dense_attention(q, k, v, SparsePattern("sliding_window", window=7, n_global=2).mask(50))
    for b in (1, 3, 16, 64):
        torch.testing.assert_close(
            A.block_sparse_attention(q, k, v, SparsePattern(window=7, n_global=2), block_size=b), ref
        )
    torch.testing.assert_close(A.sliding_window_attention(q, k, v, 7, n_global=2, block_size=8), ref)


def test_blocked_kernel_gradients_match_the_reference():
    p = SparsePattern("sliding_window", window=6, n_global=1, block_size=4)
    q, k, v = (x.requires_grad_() for x in qkv(t=21))
    A.block_sparse_attention(q, k, v, p).square().sum().backward()
    grads = [x.grad.clone() for x in (q, k, v)]
    for x in (q, k, v):
        x.grad = None
    A.dense_attention(q, k, v, p.mask(21)).square().sum().backward()
    for g, x in zip(grads, (q, k, v)):
        torch.testing.assert_close(g, x.grad)


def test_blocked_kernel_memory_is_linear_in_length():
    """The plan holds T·(w + O(b)) entries, never T²: the kernel cannot build the n x n matrix."""
    p = SparsePattern("sliding_window", window=64, block_size=32)
    for t in (1024, 8192):
        plan = p.plan(t)
        assert plan.mask.numel() <= t * (64 + 2 * 32)
        assert plan.keys_per_block <= 64 + 2 * 32
    q, k, v = qkv(t=4096, h=1, hkv=1, d=8, dtype=torch.float32)
    ref = A.sdpa_attention(q, k, v, p.mask(4096))
    torch.testing.assert_close(A.block_sparse_attention(q, k, v, p), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_flex_attention_agrees_when_available():
    ok, why = A.flex_available(compiled=False)
    assert isinstance(ok, bool) and isinstance(why, str)
    if not ok:
        pytest.skip(f"flex_attention unavailable here: {why}")
    p = SparsePattern("sliding_window", window=20, n_global=3, n_random_blocks=1, block_size=16)
    q, k, v = qkv(t=128, h=4, hkv=2, d=16, dtype=torch.float32)
    y = A.flex_sparse_attention(q, k, v, p, compiled=False)
    torch.testing.assert_close(y, A.dense_attention(q, k, v, p.mask(128)), atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- model integration


def sparse_cfg(**opts):
    base = ModelConfig(vocab_size=61, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=48)
    return A.sparse_config(base, **opts)


def test_config_builds_sparse_attention_with_the_dense_parameter_names(tiny_model):
    cfg = sparse_cfg(pattern="sliding_window", window=64, n_global=0)
    torch.manual_seed(0)
    model = TinyLM(cfg).eval()
    assert all(isinstance(b.attn, A.SparseAttention) for b in model.blocks)
    full = TinyLM(ModelConfig(**{**cfg.to_dict(), "attention": "full", "attention_options": {}})).eval()
    assert model.state_dict().keys() == full.state_dict().keys()
    full.load_state_dict(model.state_dict())
    x = torch.randint(0, 61, (2, 48), generator=torch.Generator().manual_seed(0))
    # a window as long as the context is full attention: same weights, same logits
    torch.testing.assert_close(model(x), full(x), atol=1e-5, rtol=1e-5)


def test_a_full_checkpoint_loads_into_a_sparse_model(tmp_path):
    from course_lib.train import load_checkpoint, save_checkpoint

    cfg = ModelConfig(vocab_size=61, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=48)
    torch.manual_seed(0)
    full = TinyLM(cfg).eval()
    path = save_checkpoint(full, tmp_path / "full.safetensors")
    sparse = TinyLM(A.sparse_config(cfg, window=8)).eval()
    from course_lib.train import load_state, read_checkpoint

    _, state, _ = read_checkpoint(path)
    load_state(sparse, state)
    x = torch.randint(0, 61, (1, 48), generator=torch.Generator().manual_seed(1))
    y_full, y_sparse = full(x), sparse(x)
    torch.testing.assert_close(y_sparse[:, :8], y_full[:, :8], atol=1e-5, rtol=1e-5)  # inside the window: identical
    assert not torch.allclose(y_sparse[:, 20:], y_full[:, 20:], atol=1e-3)  # beyond it: a different model
    assert load_checkpoint(path)[0].config.attention == "full"


@pytest.mark.parametrize(
    "opts",
    [
        dict(pattern="sliding_window", window=8, block_size=8),
        dict(pattern="sliding_window", window=5, n_global=3, block_size=4),
        dict(pattern="dilated", window=4, dilation=3, block_size=8),
        dict(pattern="block_sparse", window=16, block_size=8, n_global=1),
        dict(pattern="sliding_window", window=6, n_random_blocks=2, block_size=8),
        dict(pattern="dense", block_size=16),
    ],
    ids=lambda o: "-".join(f"{v}" for v in o.values()),
)
def test_rolling_cache_decoding_equals_the_full_forward(opts):
    """Token by token, in chunks, and through generate: the cache gives the full pass's logits."""
    torch.manual_seed(0)
    model = TinyLM(sparse_cfg(**opts)).eval()
    x = torch.randint(0, 61, (2, 48), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = model(x)
        cache = model.new_cache(2, 48)
        steps = torch.cat([model(x[:, i : i + 1], cache=cache) for i in range(48)], dim=1)
        torch.testing.assert_close(steps, ref, atol=1e-5, rtol=1e-5)
        cache = model.new_cache(2, 48)
        chunks = torch.cat(
            [model(x[:, :19], cache=cache), model(x[:, 19:21], cache=cache), model(x[:, 21:], cache=cache)], 1
        )
        torch.testing.assert_close(chunks, ref, atol=1e-5, rtol=1e-5)
    masked = TinyLM(sparse_cfg(**opts, impl="masked")).eval()
    masked.load_state_dict(model.state_dict())
    torch.testing.assert_close(masked(x), ref, atol=1e-5, rtol=1e-5)
    prompt = x[:1, :10]
    assert torch.equal(model.generate(prompt, 30), model.generate(prompt, 30, use_cache=False)[:, :40])


def test_rolling_cache_memory_is_bounded_by_the_window():
    cfg = sparse_cfg(pattern="sliding_window", window=8, n_global=2, block_size=8)
    attn = TinyLM(cfg).blocks[0].attn
    small, big = attn.new_cache(1, 48), attn.new_cache(1, 100_000)
    per_slot = 2 * cfg.n_kv_heads * cfg.head_dim * 4  # keys and values, fp32
    assert small.nbytes() == big.nbytes() == (8 + 2) * per_slot
    dense_cache = TinyLM(ModelConfig(**{**cfg.to_dict(), "attention": "full", "attention_options": {}})).new_cache(
        1, 48
    )
    assert dense_cache[0].nbytes() == 48 * per_slot
    unbounded = TinyLM(sparse_cfg(pattern="sliding_window", window=8, n_random_blocks=1, block_size=8)).blocks[0].attn
    assert unbounded.new_cache(1, 48).window == 48  # random blocks may reach anywhere: keep everything


def test_mean_context_feeds_flops_per_token():
    cfg = sparse_cfg(pattern="sliding_window", window=8, block_size=8)
    model = TinyLM(cfg)
    mc = A.sliding_window_pairs(48, 8) / 48
    assert math.isclose(model.blocks[0].attn.mean_context(48), mc)
    f = model.flops_per_token(48)
    assert math.isclose(f["attention"], 4 * cfg.n_layers * mc * cfg.n_heads * cfg.head_dim)
    dense = TinyLM(ModelConfig(**{**cfg.to_dict(), "attention": "full", "attention_options": {}})).flops_per_token(48)
    assert f["attention"] < dense["attention"] and f["matmul"] == dense["matmul"]


def test_loss_by_position_averages_to_the_evaluate_loss():
    from course_lib.train import evaluate

    torch.manual_seed(0)
    model = TinyLM(sparse_cfg(window=8, block_size=8))
    tokens = torch.randint(0, 61, (2000,), generator=torch.Generator().manual_seed(0)).numpy()
    pos = A.loss_by_position(model, tokens, seq_len=32, batch_size=4, max_batches=3)
    assert pos.shape == (32,)
    assert math.isclose(
        pos.mean().item(), evaluate(model, tokens, seq_len=32, batch_size=4, max_batches=3), rel_tol=1e-5
    )


# --------------------------------------------------------------------------- analysis and figures


@given(t=st.integers(2, 64), w=st.integers(1, 10), layers=st.integers(1, 6))
@FAST
def test_receptive_field_of_a_window_grows_by_w_minus_one_per_layer(t, w, layers):
    reach = A.receptive_field(A.sliding_window_mask(t, w), layers)
    assert reach.shape == (layers, t)
    for layer in range(layers):
        n = min(t, (layer + 1) * (w - 1) + 1)
        assert reach[layer].nonzero().flatten().tolist() == list(range(t - n, t))


def test_mask_figure_and_its_static_twin():
    from course_lib import viz

    fig = A.mask_figure("sliding_window", window=8, n_global=2, n_random_blocks=1, block_size=8, seq_len=64)
    assert len(fig.data) == 2 and fig.data[0].z.shape == (64, 64)
    assert "density" in fig.layout.title.text
    bad = A.mask_figure("block_sparse", window=8, block_size=6, seq_len=64)
    assert len(bad.data) == 0 and "not a valid pattern" in bad.layout.title.text
    twin = viz.static_twin(
        A.mask_figure, {"pattern": ["dense", "dilated"], "window": [4, 8]}, fixed=dict(dilation=2, seq_len=32)
    )
    assert len(twin.layout.sliders[0].steps) == 4


def test_measure_scaling_rows():
    rows = attention_runs.measure_scaling(
        (256,), window=32, block_size=32, n_heads=1, head_dim=8, repeats=1, with_reference=True
    )
    assert {r["variant"] for r in rows} == {
        "SDPA causal (dense)",
        "SDPA + mask (dense)",
        "blocked sparse (ours)",
        "explicit softmax (dense)",
    }
    assert all(r["ms"] > 0 for r in rows)


def test_precomputed_quality_matches_the_current_recipe():
    from course_lib import zoo

    q = attention_runs.load_quality()  # committed in zoo_data: a missing file is a failure, not a skip
    mcfg, tcfg = zoo.RECIPES["tiny"]
    assert q["model_config"] == mcfg.to_dict() and q["train_config"]["steps"] == tcfg.steps
    assert set(q["variants"]) == set(attention_runs.QUALITY_VARIANTS) and set(q["switched_on"]) == set(
        attention_runs.SWITCH_PATIENTS
    )
    assert q["zoo_sha256"] == {p: zoo.card(p)["sha256"] for p in attention_runs.SWITCH_PATIENTS}
    runs = list(q["variants"].values()) + [r for p in q["switched_on"].values() for r in p.values()]
    for v in runs:
        assert len(v["loss_by_position"]) == tcfg.seq_len
        assert abs(sum(v["loss_by_position"]) / tcfg.seq_len - v["val_loss"]) < 1e-3
    # the zoo patient evaluated as is: the same number, whether listed as trained or as switched on
    assert abs(q["variants"]["full"]["val_loss"] - q["switched_on"]["tiny"]["full"]["val_loss"]) < 2e-4


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: A.sliding_window_mask(8, 0), "window must be an int >= 1"),
        (lambda: A.sliding_window_mask(0, 4), "seq_len must be an int >= 1"),
        (lambda: A.causal_mask(-1), "seq_len"),
        (lambda: A.dilated_window_mask(8, 2, 0), "dilation"),
        (lambda: A.random_blocks_mask(10, 4, 1), "block_size \\(4\\) must divide seq_len \\(10\\)"),
        (lambda: A.global_tokens_mask(4, 5), "n_global must be an int in \\[0, 4\\]"),
        (lambda: SparsePattern(n_global=9).mask(8), "n_global \\(9\\) must be <= seq_len \\(8\\)"),
        (lambda: SparsePattern("spiral"), "pattern must be one of"),
        (lambda: SparsePattern(window=0), "window"),
        (lambda: SparsePattern(dilation=2), "dilation applies to pattern 'dilated' only"),
        (lambda: SparsePattern("block_sparse", window=10, block_size=4), "multiple of block_size"),
        (lambda: SparsePattern.from_options({"windw": 3}), "unknown keys in attention_options: \\['windw'\\]"),
        (lambda: A.sliding_window_pairs(5, 0), "window"),
        (lambda: A.receptive_field(A.causal_mask(4), 0), "n_layers"),
        (lambda: A.receptive_field(A.causal_mask(4), 1, query=4), "query must be an int in \\[-4, 3\\], got 4"),
        (lambda: A.block_sparse_attention(*qkv(t=8)[:2], qkv(t=9)[2], SparsePattern()), "k and v"),
        (lambda: A.block_sparse_attention(*qkv(h=3, hkv=2), SparsePattern()), "multiple of key/value heads"),
        (lambda: TinyLM(sparse_cfg(window=8, causal=False)), "must be causal"),
        (lambda: TinyLM(sparse_cfg(window=8, impl="cuda")), "impl"),
        (lambda: A.RollingKVCache(1, 1, 4, window=0), "window"),
    ],
)
def test_bad_input_raises_a_clear_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_type_errors():
    with pytest.raises(TypeError, match="layout must be a 2-D bool tensor"):
        A.block_sparse_mask(torch.ones(2, 2), 2)
    with pytest.raises(TypeError, match="square 2-D bool"):
        A.receptive_field(torch.ones(3, 3), 2)
    with pytest.raises(TypeError, match="causal must be a bool"):
        SparsePattern(causal=1)
    with pytest.raises(TypeError, match="own cache"):
        model = TinyLM(sparse_cfg(window=8))
        model(
            torch.zeros(1, 2, dtype=torch.long),
            cache=[b.attn.__class__.__mro__[1](model.config).new_cache(1, 8) for b in model.blocks],
        )
