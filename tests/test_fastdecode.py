"""The fast decode path (issue 24): same tokens as the readable model, the kinds it refuses, its cache.

Cross-checks: ``TinyLM.generate`` (greedy tokens identical, tiny and small zoo patients and toy
models with and without GQA), the readable model's logits (prefill, decode, a multi-token
pass in mid-sequence), and speculative decoding on the fast path against the readable target.
"""

from __future__ import annotations

import math

import pytest
import torch

from course_lib import fastdecode, measure
from course_lib import speculative as sd
from course_lib.attention import sparse_config
from course_lib.fastdecode import FastLM, StaticKVCache, fast_decode_fn
from course_lib.model import ModelConfig, TinyLM, replace_linears

PROMPTS = ("The Moon is", "Albert Einstein was a", "Python is a programming", "The French Revolution")


def _toy(n_kv_heads=2, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(vocab_size=97, d_model=48, n_layers=3, n_heads=4, n_kv_heads=n_kv_heads, max_seq_len=64)
    return TinyLM(ModelConfig(**{**cfg, **kw})).eval()


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_fast_greedy_tokens_equal_the_readable_path_on_the_patients(name):
    from course_lib import zoo

    patient = zoo.load(name)
    fast = FastLM(patient.model)
    for text in PROMPTS:
        idx = patient.encode(text)
        assert torch.equal(fast.generate(idx, 48), patient.model.generate(idx, 48)), text


@pytest.mark.parametrize("n_kv_heads", [1, 2, 4])
def test_fast_logits_match_readable_prefill_decode_and_verify(n_kv_heads):
    model = _toy(n_kv_heads)
    fast = FastLM(model)
    x = torch.randint(0, 97, (2, 20), generator=torch.Generator().manual_seed(1))
    ref = model(x)  # uncached, the teaching version
    cache = fast.new_cache(2, 20)
    pieces = [fast(x[:, :9], cache=cache), fast(x[:, 9:10], cache=cache), fast(x[:, 10:], cache=cache)]
    got = torch.cat(pieces, dim=1)  # prefill, one decode step, a 10-token pass mid-sequence
    assert cache.pos == 20
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)
    # and greedy decoding token for token, batch 2
    assert torch.equal(fast.generate(x[:, :5], 30), model.generate(x[:, :5], 30))


@pytest.mark.parametrize("n_kv_heads", [1, 2, 4])
def test_batch1_step_matches_the_general_step_and_the_readable_logits(n_kv_heads):
    """The batch-1 one-token step (_decode_one: scratch rows, bmm attention) against the readable
    model, position by position, and against the general step (batch 2, same sequence twice)."""
    model = _toy(n_kv_heads)
    fast = FastLM(model)
    x = torch.randint(0, 97, (1, 24), generator=torch.Generator().manual_seed(4))
    ref = model(x)
    one, two = fast.new_cache(1), fast.new_cache(2)
    fast(x[:, :3], cache=one), fast(x.expand(2, -1)[:, :3], cache=two)
    steps = [fast(x[:, i : i + 1], cache=one) for i in range(3, 24)]  # 21 batch-1 steps
    general = [fast(x.expand(2, -1)[:, i : i + 1], cache=two) for i in range(3, 24)]
    torch.testing.assert_close(torch.cat(steps, 1), ref[:, 3:], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(torch.cat(steps, 1), torch.cat(general, 1)[:1], atol=1e-5, rtol=1e-4)
    # the cache rows the batch-1 step wrote are the general step's
    torch.testing.assert_close(one.kv[:, 0, :24], two.kv[:, 0, :24], atol=1e-5, rtol=1e-4)


def test_huge_pages_change_where_the_weights_live_not_what_is_computed():
    model = _toy()
    paged, plain = FastLM(model), FastLM(model, huge_pages=False)
    assert plain.huge_pages is False and isinstance(paged.huge_pages, bool)
    for fast in (paged, plain):  # one buffer, starting on a 2 MiB boundary
        assert fast.layers[0][0].data_ptr() % (2 * 2**20) == 0
        assert fast.head_t.data_ptr() + fast.head_t.nbytes <= fast._arena[1].data_ptr() + fast._arena[1].nbytes
    p = torch.randint(0, 97, (1, 5), generator=torch.Generator().manual_seed(5))
    assert torch.equal(paged.generate(p, 30), plain.generate(p, 30))
    with pytest.raises(TypeError, match="huge_pages"):
        FastLM(model, huge_pages=1)


def test_arena_copies_each_tensor_into_one_aligned_buffer():
    ts = [torch.randn(3, 5), torch.randn(7), torch.randn(2, 2, 2)]
    views, _, (_, flat) = fastdecode._arena(ts, huge_pages=False)
    assert [v.shape for v in views] == [t.shape for t in ts]
    assert all(torch.equal(v, t) for v, t in zip(views, ts))
    assert all(v.untyped_storage().data_ptr() == flat.untyped_storage().data_ptr() for v in views)
    assert views[0].data_ptr() % (2 * 2**20) == 0 and views[1].data_ptr() == views[0].data_ptr() + 15 * 4


def test_fast_truncate_then_continue_equals_a_fresh_cache():
    model = _toy()
    fast = FastLM(model)
    x = torch.randint(0, 97, (1, 16), generator=torch.Generator().manual_seed(2))
    cache = fast.new_cache(1, 24)
    fast(x[:, :10], cache=cache)
    fast(torch.randint(0, 97, (1, 5)), cache=cache)  # five tokens later rejected
    sd.rollback(cache, 10)
    assert cache.pos == 10 and sd.cache_length(cache) == 10
    cont = fast(x[:, 10:], cache=cache)
    fresh = fast.new_cache(1, 24)
    torch.testing.assert_close(cont, fast(x, cache=fresh)[:, 10:], atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="length"):
        cache.truncate(17)  # cannot go forward


@pytest.mark.parametrize("k", [1, 3, 6])
def test_speculative_on_the_fast_path_equals_the_readable_target(k):
    target, draft = _toy(), _toy(seed=1, d_model=16, n_layers=1, n_heads=2, n_kv_heads=1)
    prompt = torch.randint(0, 97, (1, 7), generator=torch.Generator().manual_seed(k))
    ref = target.generate(prompt, 30)
    out, _ = sd.speculative_generate(FastLM(target), FastLM(draft), prompt, 30, k=k)
    assert torch.equal(out, ref)
    out, stats = sd.speculative_generate(FastLM(target), sd.PromptLookup(), prompt, 30, k=k)
    assert torch.equal(out, ref) and stats.emitted == 30


@pytest.mark.slow
def test_compiled_step_gives_the_readable_tokens_and_logits():
    """``compile=True``: the static-shape step compiled by inductor (a 1-layer toy keeps the compile short)."""
    model = _toy(n_layers=1)
    fast = FastLM(model, compile=True)
    assert fast.compiled is not None and fast.compile_seconds > 0
    assert fast.new_cache(1, 10).max_len == 64  # static shapes: always max_seq_len positions
    x = torch.randint(0, 97, (1, 20), generator=torch.Generator().manual_seed(3))
    cache = fast.new_cache(1)
    steps = [fast(x[:, :8], cache=cache)] + [fast(x[:, i : i + 1], cache=cache) for i in range(8, 20)]
    torch.testing.assert_close(torch.cat(steps, dim=1), model(x), atol=1e-5, rtol=1e-4)  # 12 compiled steps
    for seed in range(3):
        p = torch.randint(0, 97, (1, 4 + seed), generator=torch.Generator().manual_seed(seed))
        assert torch.equal(fast.generate(p, 40), model.generate(p, 40))
    out, _ = sd.speculative_generate(fast, sd.PromptLookup(), x[:, :6], 30, k=3)  # rollback over the static cache
    assert torch.equal(out, model.generate(x[:, :6], 30))
    with pytest.raises(TypeError, match="compile"):
        FastLM(model, compile="yes")


def test_fast_path_refuses_kinds_it_does_not_implement():
    base = dict(vocab_size=97, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64)
    sparse = TinyLM(sparse_config(ModelConfig(**base), pattern="sliding_window", window=8))
    with pytest.raises(ValueError, match="attention='sparse'"):
        FastLM(sparse)
    moe = TinyLM(ModelConfig(**base, mlp="moe", mlp_options={"n_experts": 4, "top_k": 2}))
    with pytest.raises(ValueError, match="mlp='moe'"):
        FastLM(moe)
    pruned = _toy()
    replace_linears(pruned, lambda name, lin: torch.nn.Sequential(lin), where=lambda n, m: n.endswith("up_proj"))
    with pytest.raises(ValueError, match="up_proj"):
        FastLM(pruned)
    with pytest.raises(TypeError, match="model"):
        FastLM("small")


def test_fast_bad_input():
    fast = FastLM(_toy())
    cache = fast.new_cache(1, 8)
    with pytest.raises(ValueError, match="cannot add"):
        fast(torch.zeros(1, 9, dtype=torch.long), cache=cache)
    with pytest.raises(TypeError, match="cache"):
        fast(torch.zeros(1, 2, dtype=torch.long), cache=[cache])
    with pytest.raises(ValueError, match="max_len"):
        fast.new_cache(1, 65)
    with pytest.raises(ValueError, match="max_seq_len"):
        fast.generate(torch.zeros(1, 60, dtype=torch.long), 5)
    with pytest.raises(ValueError, match="max_new_tokens"):
        fast.generate(torch.zeros(1, 3, dtype=torch.long), -1)
    with pytest.raises(ValueError, match="new_tokens"):
        fast_decode_fn(fast, prompt_len=60, new_tokens=5)


def test_static_cache_and_decode_fn_run():
    fast = FastLM(_toy())
    cache = fast.new_cache(2, 16)
    assert isinstance(cache, StaticKVCache) and cache.max_len == 16
    assert cache.nbytes() == 3 * 2 * 2 * 2 * 16 * 12 * 4  # layers, k/v, batch, kv heads, positions, head_dim, fp32
    setup, run = fast_decode_fn(fast, prompt_len=8, new_tokens=4)
    c = setup()
    assert c.pos == 8
    run(c)
    assert c.pos == 12


def test_readable_vs_fast_rows_and_bound():
    rows = fastdecode.readable_vs_fast(
        {"toy": _toy()}, prompt_len=8, new_tokens=4, bandwidth=1e10, threads=None, warmup=0, repeats=1
    )
    assert [(r["model"], r["path"]) for r in rows] == [("toy", "readable"), ("toy", "fast")]
    assert rows[0]["speedup"] == 1.0 and all(r["identical"] and r["tokens_per_s"] > 0 for r in rows)
    bound = rows[0]["bound_tokens_per_s"]
    assert bound == pytest.approx(1e10 / (rows[0]["step_MB"] * 1e6), rel=1e-9)
    assert rows[1]["fraction_of_bound"] == pytest.approx(rows[1]["tokens_per_s"] / bound)
    assert math.isnan(
        fastdecode.readable_vs_fast({"t": _toy()}, prompt_len=4, new_tokens=2, threads=None, repeats=1)[0][
            "bound_tokens_per_s"
        ]
    )
    with pytest.raises(ValueError, match="models"):
        fastdecode.readable_vs_fast({})
    with pytest.raises(TypeError, match="models"):
        fastdecode.readable_vs_fast({"x": "small"})
    with pytest.raises(TypeError, match="compile"):
        fastdecode.readable_vs_fast({"t": _toy()}, compile=1)


def test_readable_vs_fast_at_another_thread_count_times_the_readable_path_there_too():
    """With the fast path on 1 thread and PyTorch on 2, the readable path is timed at both counts:
    ``speedup`` is against the default, ``speedup_same_threads`` against the readable path on 1 thread."""
    with measure.num_threads(2):
        rows = fastdecode.readable_vs_fast({"toy": _toy()}, prompt_len=8, new_tokens=4, threads=1, warmup=0, repeats=1)
        assert torch.get_num_threads() == 2  # restored after every timed call
    assert [(r["path"], r["threads"]) for r in rows] == [("readable", 2), ("readable, 1 thread", 1), ("fast", 1)]
    readable, same, fast = rows
    assert fast["speedup"] / fast["speedup_same_threads"] == pytest.approx(same["speedup"], rel=1e-9)
    assert readable["speedup"] == 1.0 and readable["speedup_same_threads"] == same["speedup_same_threads"] == 1.0
    assert all(r["identical"] for r in rows)
    with pytest.raises(ValueError, match="threads"):
        fastdecode.readable_vs_fast({"toy": _toy()}, threads=0)
    with pytest.raises(TypeError, match="threads"):
        fastdecode.readable_vs_fast({"toy": _toy()}, threads="fastest")


def test_best_threads_measures_a_candidate_and_the_fast_path_keeps_its_count():
    fast = FastLM(_toy(), threads=1)
    with measure.num_threads(2):
        assert fastdecode.best_threads(fast, candidates=(1, 2), prompt_len=4, new_tokens=2, repeats=1) in (1, 2)
        assert fast.threads == 1  # restored after the measurement
        assert fastdecode.best_threads(fast, candidates=[3]) == 3  # one candidate: nothing to measure
        seen = []
        real = torch.set_num_threads
        try:
            torch.set_num_threads = lambda n: (seen.append(n), real(n))[1]
            fast.generate(torch.zeros(1, 2, dtype=torch.long), 2)
        finally:
            torch.set_num_threads = real
        assert seen == [1, 2] and torch.get_num_threads() == 2  # decoded at 1 thread, then PyTorch's 2 back
    with pytest.raises(ValueError, match="candidates"):
        fastdecode.best_threads(fast, candidates=())
    with pytest.raises(ValueError, match=r"candidates\[1\]"):
        fastdecode.best_threads(fast, candidates=(1, 0))
    with pytest.raises(ValueError, match="threads"):
        FastLM(_toy(), threads=0)


def test_matmuls_fn_runs_the_fast_paths_matmuls_and_the_row_reports_their_share():
    fast = FastLM(_toy())
    calls = []
    real = torch.Tensor.__matmul__
    try:
        torch.Tensor.__matmul__ = lambda a, b: (calls.append(tuple(b.shape)), real(a, b))[1]
        fastdecode.matmuls_fn(fast, new_tokens=2)()
    finally:
        torch.Tensor.__matmul__ = real
    # per token: [v k q] and gate|up per layer (3 layers), then the head
    per_token = [tuple(w.shape) for layer in fast.layers for w in (layer[0], layer[2])] + [tuple(fast.head_t.shape)]
    assert calls == per_token * 2
    rows = fastdecode.readable_vs_fast({"toy": _toy()}, prompt_len=8, new_tokens=4, threads=None, warmup=0, repeats=1)
    fast_row = rows[-1]
    assert fast_row["path"] == "fast" and 0 < fast_row["matmul_ms_per_token"]
    assert fast_row["matmul_share"] == pytest.approx(fast_row["matmul_ms_per_token"] / fast_row["ms_per_token"])
    with pytest.raises(ValueError, match="new_tokens"):
        fastdecode.matmuls_fn(fast, new_tokens=0)
