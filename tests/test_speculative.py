"""Chapter 10: speculative decoding — one round, the loop, the statistics, the cache rollback.

Cross-checks: transformers' assisted generation (speculative greedy decoding), scipy's
chi-square (the sampled output follows the target's exact distribution), and uncached
greedy decoding for every attention kind the patient can be built with.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from course_lib import data
from course_lib import speculative as sd
from course_lib.attention import sparse_config
from course_lib.model import (
    ModelConfig,
    TinyLM,
    decode_tokens,
    sample_next,
    to_transformers_llama,
    token_probs,
)


def _toy_pair(vocab=97, seed=0, scale=1.0):
    torch.manual_seed(seed)
    t = TinyLM(ModelConfig(vocab_size=vocab, d_model=48, n_layers=3, n_heads=4, n_kv_heads=2, max_seq_len=64)).eval()
    d = TinyLM(ModelConfig(vocab_size=vocab, d_model=16, n_layers=1, n_heads=2, max_seq_len=64)).eval()
    if scale != 1.0:  # sharper, more different distributions for the statistical tests
        with torch.no_grad():
            for m in (t, d):
                m.embed.weight.mul_(scale)
    return t, d


@pytest.mark.parametrize("k", [1, 2, 3, 5, 8])
def test_speculative_greedy_equals_target_greedy(k):
    target, draft = _toy_pair()
    prompt = torch.randint(0, 97, (1, 7), generator=torch.Generator().manual_seed(k))
    out, stats = sd.speculative_generate(target, draft, prompt, 30, k=k)
    assert torch.equal(out, target.generate(prompt, 30))
    assert stats.emitted == 30 and stats.accepted + stats.rounds == 30 and stats.drafted <= k * stats.rounds
    # the draft drafting for itself is always right: k + 1 tokens per target pass
    same, s2 = sd.speculative_generate(target, target, prompt, 30, k=k)
    assert torch.equal(same, out) and s2.acceptance_rate == 1.0


def test_speculative_greedy_on_the_zoo_patients():
    from course_lib import zoo

    tiny, small = zoo.load("tiny"), zoo.load("small")  # committed patients
    idx = small.encode("The Eiffel Tower is")
    out, stats = sd.speculative_generate(small.model, tiny.model, idx, 40, k=4)
    assert torch.equal(out, small.model.generate(idx, 40))
    assert 0 < stats.acceptance_rate < 1


def test_speculative_greedy_matches_transformers_assisted_generation():
    pytest.importorskip("transformers")
    target, draft = _toy_pair()
    prompt = torch.randint(0, 97, (1, 6), generator=torch.Generator().manual_seed(11))
    ours, _ = sd.speculative_generate(target, draft, prompt, 24, k=4)
    hf_t, hf_d = to_transformers_llama(target), to_transformers_llama(draft)
    ref = hf_t.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        assistant_model=hf_d,
        do_sample=False,
        max_new_tokens=24,
        min_new_tokens=24,
    )
    assert torch.equal(ours, ref)


def test_verify_step_emits_the_target_distribution_and_accepts_sum_min():
    """One step, k = 1: P(accept) = sum_x min(p, q) and the emitted token ~ p exactly."""
    from scipy.stats import chisquare

    g = torch.Generator().manual_seed(0)
    p = torch.tensor([[0.5, 0.3, 0.15, 0.05, 0.0], [0.2, 0.2, 0.2, 0.2, 0.2]])
    q = torch.tensor([[0.1, 0.1, 0.4, 0.2, 0.2]])
    n_trials, counts, accepted = 8_000, torch.zeros(5), 0
    for _ in range(n_trials):
        x = int(torch.multinomial(q[0], 1, generator=g))
        n, nxt = sd.verify(p, q, [x], generator=g)
        accepted += n
        counts[x if n else nxt] += 1  # the first emitted token
    alpha = torch.minimum(p[0], q[0]).sum().item()
    assert abs(accepted / n_trials - alpha) < 4 * math.sqrt(alpha * (1 - alpha) / n_trials)
    m = p[0] > 0
    assert counts[~m].sum() == 0  # never emits what the target rules out
    assert chisquare(counts[m].numpy(), p[0][m].numpy() * n_trials).pvalue > 1e-3


def _exact_sequence_probs(model, prompt, n_new, vocab):
    """P(x_1..x_n | prompt) for every continuation, by enumeration: (vocab ** n_new,)."""
    import itertools

    seqs = list(itertools.product(range(vocab), repeat=n_new))
    full = torch.cat([prompt.expand(len(seqs), -1), torch.tensor(seqs)], 1)
    with torch.no_grad():
        logp = torch.log_softmax(model(full), -1)  # (S, T, V)
    t0 = prompt.shape[1]
    lp = sum(logp[:, t0 - 1 + i].gather(1, full[:, t0 + i : t0 + i + 1])[:, 0] for i in range(n_new))
    return lp.exp(), seqs


def test_speculative_sampling_preserves_the_target_distribution():
    """Statistical test on a toy vocabulary (fixed seed): speculative samples of 2 tokens
    follow the target's exact distribution (chi-square); samples from the draft alone do
    not (the test has power)."""
    from scipy.stats import chisquare

    vocab, n_new, n_runs = 5, 2, 1500
    target, draft = _toy_pair(vocab=vocab, seed=3, scale=2.0)
    prompt = torch.tensor([[1, 3]])
    p_exact, seqs = _exact_sequence_probs(target, prompt, n_new, vocab)
    q_exact, _ = _exact_sequence_probs(draft, prompt, n_new, vocab)
    assert 0.5 * (p_exact - q_exact).abs().sum() > 0.2  # the draft is a genuinely different model
    index = {s: i for i, s in enumerate(seqs)}
    g = torch.Generator().manual_seed(1234)
    spec, own = torch.zeros(len(seqs)), torch.zeros(len(seqs))
    rates = []
    for _ in range(n_runs):
        out, stats = sd.speculative_generate(target, draft, prompt, n_new, k=2, temperature=1.0, generator=g)
        spec[index[tuple(out[0, 2:].tolist())]] += 1
        rates.append(stats.acceptance_rate)
        own[index[tuple(draft.generate(prompt, n_new, temperature=1.0, generator=g)[0, 2:].tolist())]] += 1
    keep = p_exact * n_runs >= 5  # cells expected fewer than 5 times are merged into one

    def cells(x):
        x = x.double()
        return torch.cat([x[keep], x[~keep].sum(0, keepdim=True)] if (~keep).any() else [x[keep]]).numpy()

    expected = cells(p_exact) * n_runs
    assert chisquare(cells(spec), expected / expected.sum() * n_runs).pvalue > 1e-3
    assert chisquare(cells(own), expected / expected.sum() * n_runs).pvalue < 1e-6
    assert 0.05 < np.nanmean(rates) < 0.95


def test_sampling_with_top_k_never_leaves_the_target_top_k():
    target, draft = _toy_pair(vocab=97, seed=1, scale=5.0)
    prompt = torch.tensor([[4, 5, 6]])
    g = torch.Generator().manual_seed(0)
    out, _ = sd.speculative_generate(target, draft, prompt, 20, k=3, temperature=0.8, top_k=3, generator=g)
    with torch.no_grad():
        logits = target(out[:, :-1])[0, 2:]  # (20, V) the target's logits before each new token
    top = logits.topk(3, dim=-1).indices
    assert (top == out[0, 3:, None]).any(-1).all()


def test_expected_tokens_per_round_formula_and_simulation():
    rng = np.random.default_rng(0)
    for alpha, k in [(0.3, 1), (0.6, 4), (0.9, 8)]:
        sim = []
        for _ in range(20_000):
            n = 0
            while n < k and rng.random() < alpha:
                n += 1
            sim.append(n + 1)
        assert abs(np.mean(sim) - sd.expected_tokens_per_round(alpha, k)) < 0.05
    assert sd.expected_tokens_per_round(1.0, 4) == 5 and sd.expected_tokens_per_round(0.0, 4) == 1
    assert math.isclose(sd.expected_speedup(0.0, 3, 0.0), 1.0)
    with pytest.raises(ValueError, match="alpha"):
        sd.expected_tokens_per_round(1.2, 3)
    with pytest.raises(ValueError, match="k must be"):
        sd.expected_tokens_per_round(0.5, 0)


# --------------------------------------------------------------------------- one round, the statistics


def test_one_round_keeps_the_cache_invariant():
    """A round emits 1..k+1 tokens, the target's cache then holds all tokens but the last, and
    the draft's at most that; the round's tokens are the target's greedy continuation."""
    target, draft = _toy_pair()
    tokens = [3, 1, 4, 1, 5]
    t_cache, d_cache = target.new_cache(1, 40), draft.new_cache(1, 40)
    reference = target.generate(torch.tensor([tokens]), 20)[0].tolist()
    for _ in range(4):
        new, n = sd.speculative_round(target, draft, tokens, t_cache, d_cache, 3)
        assert 1 <= len(new) == n + 1 <= 4
        tokens = tokens + new
        assert sd.cache_length(t_cache) == len(tokens) - 1 and sd.cache_length(d_cache) <= len(tokens) - 1
    assert tokens == reference[: len(tokens)]


def test_stats_per_position_and_histogram():
    s = sd.SpeculativeStats(3)
    for drafted, accepted in [(3, 0), (3, 1), (3, 3), (3, 2), (1, 1)]:
        s.record(drafted, accepted)
    assert (s.rounds, s.drafted, s.accepted, s.emitted) == (5, 13, 7, 12)
    assert s.accept_counts == [1, 2, 1, 1]
    # position 0: drafted in 5 rounds, kept in 4; position 1: reached in 3 of the rounds
    # that drafted it (accepted >= 1), kept in 2; position 2: reached in 2, kept in 1
    assert s.acceptance_by_position == [4 / 5, 2 / 3, 1 / 2]
    assert math.isclose(s.acceptance_rate, 7 / 13) and math.isclose(s.tokens_per_round, 12 / 5)
    assert all(math.isnan(x) for x in sd.SpeculativeStats(2).acceptance_by_position)


def test_the_draft_drafting_for_itself_accepts_every_position():
    target, _ = _toy_pair()
    prompt = torch.tensor([[5, 6, 7]])
    _, s = sd.speculative_generate(target, target, prompt, 20, k=4)  # 4 rounds of 4 drafted + 1
    assert s.acceptance_by_position == [1.0] * 4 and s.tokens_per_round == 5.0
    assert s.accept_counts == [0, 0, 0, 0, 4]


# --------------------------------------------------------------------------- the one sampler


def test_sample_next_draws_from_token_probs_and_decode_equals_generate():
    torch.manual_seed(0)
    logits = torch.randn(3, 50) * 3
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    probs = token_probs(logits, temperature=0.7, top_k=5)
    assert torch.allclose(probs.sum(-1), torch.ones(3)) and ((probs > 0).sum(-1) == 5).all()
    a = sample_next(logits, temperature=0.7, top_k=5, generator=g1)
    assert torch.equal(a, torch.multinomial(probs, 1, generator=g2))
    assert torch.equal(sample_next(logits), logits.argmax(-1, keepdim=True))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        token_probs(logits, temperature=0.0)
    target, _ = _toy_pair()
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    for kw in ({}, {"temperature": 0.9, "top_k": 10}):
        outs = []
        for cache in (target.new_cache(2, 13), None):
            new, probs = decode_tokens(
                target, prompt, cache, 10, generator=torch.Generator().manual_seed(1), return_probs=True, **kw
            )
            outs.append(new)
            assert new.shape == (2, 10) and (probs is None) == (not kw)
            if kw:  # each drawn token had probability > 0 under the distribution returned for it
                assert probs.shape == (2, 10, 97) and (probs.gather(2, new[..., None]) > 0).all()
        ref = target.generate(prompt, 10, generator=torch.Generator().manual_seed(1), **kw)
        assert torch.equal(torch.cat([prompt, outs[0]], 1), ref) and torch.equal(outs[0], outs[1])


# --------------------------------------------------------------------------- the caches' truncate


def test_kv_cache_truncate_then_continue_equals_a_fresh_cache():
    target, _ = _toy_pair()
    x = torch.randint(0, 97, (1, 12), generator=torch.Generator().manual_seed(2))
    cache = target.new_cache(1, 32)
    with torch.no_grad():
        target(x, cache=cache)
        sd.rollback(cache, 8)  # forget positions 8..11
        assert sd.cache_length(cache) == 8
        y = target(x[:, 8:10], cache=cache)
        assert torch.allclose(y, target(x[:, :10])[:, 8:], atol=1e-5)
    for bad in (20, -1, 1.5, True):
        with pytest.raises(ValueError, match="length must be an int in"):
            cache[0].truncate(bad)
    with pytest.raises(TypeError, match="must implement truncate"):
        sd.rollback([object()], 0)
    with pytest.raises(ValueError, match="length must be an int >= 0"):
        sd.rollback(cache, -2)


def _sparse_target(**options):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=97, d_model=48, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64)
    return TinyLM(sparse_config(cfg, **options)).eval()


def test_rolling_cache_truncate_forgets_rejected_keys():
    """The decode-speed issue's bug: a rejected position's key stayed in its ring slot and was
    read beside the accepted one. After truncate, decoding on equals the uncached model."""
    model = _sparse_target(pattern="sliding_window", window=6)  # ring of 6 slots, lookback 5
    x = torch.randint(0, 97, (1, 30), generator=torch.Generator().manual_seed(4))
    rejected = torch.randint(0, 97, (1, 3), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        full = model(x)  # (1, 30, V), no cache
        # (accepted, rejected): a full ring rolls back one position; one not yet full, any number
        for keep, n_rejected in [(19, 1), (2, 3), (12, 1)]:
            cache = model.new_cache(1, 30)
            model(x[:, :keep], cache=cache)
            model(rejected[:, :n_rejected], cache=cache)  # written, then taken back
            sd.rollback(cache, keep)
            assert all((c.slot_pos < keep).all() for c in cache)
            y = model(x[:, keep : keep + 3], cache=cache)
            assert torch.allclose(y, full[:, keep : keep + 3], atol=1e-5)


def test_rolling_cache_refuses_to_truncate_past_what_it_overwrote():
    model = _sparse_target(pattern="sliding_window", window=6)  # ring of 6 slots, lookback 5
    x = torch.randint(0, 97, (1, 20), generator=torch.Generator().manual_seed(5))
    cache = model.new_cache(1, 30)
    with torch.no_grad():
        model(x, cache=cache)
    with pytest.raises(ValueError, match="has overwritten position 13.*roll back at most 1"):
        sd.rollback(cache, 18)
    assert sd.cache_length(cache) == 20  # nothing half-done
    with pytest.raises(ValueError, match="length must be an int in \\[0, 20\\]"):
        cache[0].truncate(21)
    # a pattern of unbounded reach keeps every position: any rollback works
    dense = _sparse_target(pattern="dense")
    cache = dense.new_cache(1, 30)
    with torch.no_grad():
        dense(x, cache=cache)
        sd.rollback(cache, 7)
        assert torch.allclose(dense(x[:, 7:9], cache=cache), dense(x[:, :9])[:, 7:], atol=1e-5)


ATTENTION_KINDS = {
    "full": None,
    "sparse dense": dict(pattern="dense"),
    "sliding window": dict(pattern="sliding_window", window=16),
    "dilated": dict(pattern="dilated", window=8, dilation=2),
    "window + global": dict(pattern="sliding_window", window=16, n_global=4),
    "block sparse": dict(pattern="block_sparse", window=16, block_size=8),
    "random blocks": dict(pattern="sliding_window", window=16, n_random_blocks=1, block_size=16),
}


@pytest.fixture(scope="module")
def patients():
    from course_lib import zoo

    return zoo.load("tiny"), zoo.load("small")  # committed patients: a draft that really disagrees


def _small_with(small, options):
    """The small patient's weights under another attention kind (chapter 03's switch)."""
    if options is None:
        return small.model
    model = TinyLM(sparse_config(small.model.config, **options)).eval()
    model.load_state_dict(small.model.state_dict())
    return model


@pytest.mark.parametrize("kind", list(ATTENTION_KINDS))
def test_speculative_greedy_equals_uncached_greedy_for_every_attention_kind(kind, patients):
    """k = 1 rolls the target back at most one position, which every cache kind can do; the
    output must equal the target's uncached greedy decoding, with rejections along the way."""
    tiny, small = patients
    target = _small_with(small, ATTENTION_KINDS[kind])
    prompt = small.encode("The Eiffel Tower is")
    reference = target.generate(prompt, 28, use_cache=False)
    assert torch.equal(target.generate(prompt, 28), reference)
    out, stats = sd.speculative_generate(target, tiny.model, prompt, 28, k=1)
    assert torch.equal(out, reference) and 0 < stats.accepted < stats.drafted


def test_speculative_with_a_window_target_refuses_long_rollbacks(patients):
    """With k = 4 a rejection can take back more than a full ring can give: a ValueError,
    never a silently different continuation (the decode-speed issue's bug)."""
    tiny, small = patients
    target = _small_with(small, ATTENTION_KINDS["sliding window"])
    with pytest.raises(ValueError, match="RollingKVCache .* has overwritten"):
        sd.speculative_generate(target, tiny.model, small.encode("The Eiffel Tower is"), 40, k=4)
    # a pattern of unbounded reach keeps every key in its ring: any k works
    target = _small_with(small, ATTENTION_KINDS["random blocks"])
    prompt = small.encode("The Moon is")
    out, stats = sd.speculative_generate(target, tiny.model, prompt, 24, k=4)
    assert torch.equal(out, target.generate(prompt, 24)) and stats.accepted < stats.drafted


def test_speculative_bad_input():
    target, draft = _toy_pair()
    other = TinyLM(ModelConfig(vocab_size=50, d_model=16, n_layers=1, n_heads=2, max_seq_len=64))
    x = torch.tensor([[1, 2, 3]])
    for k in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match=r"k \(draft length\) must be an int >= 1"):
            sd.speculative_generate(target, draft, x, 5, k=k)
    with pytest.raises(ValueError, match="draft vocab_size = 50, target vocab_size = 97"):
        sd.speculative_generate(target, other, x, 5)
    with pytest.raises(ValueError, match="exceeds max_seq_len"):
        sd.speculative_generate(target, draft, x, 62)
    with pytest.raises(ValueError, match=r"idx must be a \(1, T\)"):
        sd.speculative_generate(target, draft, torch.tensor([[1], [2]]), 5)
    with pytest.raises(TypeError, match="TinyLM-like"):
        sd.speculative_generate(target, torch.nn.Linear(2, 2), x, 5)
    with pytest.raises(ValueError, match="temperature must be a finite number >= 0"):
        sd.speculative_generate(target, draft, x, 5, temperature=-1.0)
    with pytest.raises(ValueError, match="top_k must be None or an int >= 1"):
        sd.speculative_generate(target, draft, x, 5, temperature=1.0, top_k=0)
    with pytest.raises(ValueError, match="cost_ratio"):
        sd.expected_speedup(0.5, 2, -1.0)


def test_step_costs_and_benchmark_on_toy_models():
    target, draft = _toy_pair()
    sc = sd.step_costs(target, draft, context=8, k=3, warmup=1, repeats=3)
    assert sc["c"] > 0 and sc["v"] > 0 and 0 < sc["c_flops"] < 1  # the draft is the smaller model
    assert set(sc) == {"c", "v", "c_flops", "target_step_s", "draft_step_s"}
    assert sc["draft_step_s"] == pytest.approx(sc["c"] * sc["target_step_s"])  # one timing, two readings
    lk = sd.step_costs(target, sd.PromptLookup(), context=8, k=2, warmup=0, repeats=1)  # cost_curve's lookup c
    assert lk["c_flops"] == 0.0 and lk["c"] > 0
    prompts = [torch.tensor([[1, 2, 3]]), torch.tensor([[7, 8]])]
    rows = sd.speculative_benchmark(target, draft, prompts, ks=(1, 3), new_tokens=10, warmup=0, repeats=1)
    assert [r["k"] for r in rows] == [0, 1, 3] and all(r["identical"] for r in rows)
    assert rows[0]["speedup"] == 1.0 and all(r["tokens_per_s"] > 0 for r in rows)
    assert all(1 <= r["tokens_per_pass"] <= r["k"] + 1 for r in rows[1:])


# --------------------------------------------------------------------------- prompt lookup, α done right, break-even


def test_prompt_lookup_copies_what_followed_the_latest_longest_match():
    toks = [5, 1, 2, 3, 9, 9, 7, 1, 2, 3, 8, 6, 4, 2, 3]
    # suffix (2, 3): occurs at 2..3 (then 9 9 7 ...) and at 8..9 (then 8 6 4 ...); with max_ngram 3 the
    # suffix (4, 2, 3) never occurred before, so the longest match is 2 long and the latest one wins
    assert sd.prompt_lookup(toks, 3) == [8, 6, 4]
    # a 3-gram match beats a later 2-gram one
    toks3 = [7, 2, 3, 40, 41, 0, 2, 3, 50, 7, 2, 3]
    assert sd.prompt_lookup(toks3, 2) == [40, 41]
    assert sd.prompt_lookup(toks3, 2, max_ngram=2) == [50, 7]
    assert sd.prompt_lookup([1, 2, 3], 4) == [] and sd.prompt_lookup([4], 2) == []
    assert sd.prompt_lookup([1, 2, 1], 4) == [2, 1]  # the copy may run into the suffix itself
    assert sd.prompt_lookup([1, 2, 9, 2], 3, min_ngram=2) == []  # only a 1-gram match
    assert sd.prompt_lookup(torch.tensor([3, 4, 3]), 1) == [4]
    for bad in (dict(k=0), dict(k=2, max_ngram=0), dict(k=2, max_ngram=2, min_ngram=3)):
        with pytest.raises(ValueError, match="k|ngram"):
            sd.prompt_lookup([1, 2, 1], **bad)


@pytest.mark.parametrize("k", [1, 3, 8])
def test_prompt_lookup_speculative_equals_target_greedy_and_accepts_copies(k):
    target, _ = _toy_pair()
    prompt = torch.randint(0, 97, (1, 5), generator=torch.Generator().manual_seed(k))
    ref = target.generate(prompt, 24)
    out, stats = sd.speculative_generate(target, sd.PromptLookup(), prompt, 24, k=k)
    assert torch.equal(out, ref) and stats.emitted == 24
    # a prompt that already holds the target's own continuation: the lookup drafts it and the target keeps it
    echo = torch.cat([ref, prompt], dim=1)
    out2, s2 = sd.speculative_generate(target, sd.PromptLookup(), echo, 20, k=k)
    assert torch.equal(out2, target.generate(echo, 20))
    assert s2.alpha > 0.8 and s2.tokens_per_round > 1.5


def test_prompt_lookup_sampling_preserves_the_target_distribution():
    """A lookup draft's q is one-hot: speculative sampling still emits exactly the target's p."""
    from scipy import stats as st

    target, _ = _toy_pair(vocab=11, scale=2.0)
    prompt = torch.tensor([[1, 2, 3, 1, 2]])  # the lookup proposes 3 after ... 1 2
    with torch.no_grad():
        p = token_probs(target(prompt)[0, -1], temperature=1.0).double().numpy()
    assert 0.02 < p[3] < 0.98  # the drafted token is sometimes accepted, sometimes not
    g = torch.Generator().manual_seed(0)
    counts, drafted = np.zeros(11), 0
    for _ in range(600):  # two new tokens: the first round drafts one token (3) and verifies it
        out, s = sd.speculative_generate(target, sd.PromptLookup(), prompt, 2, k=1, temperature=1.0, generator=g)
        counts[int(out[0, 5])] += 1
        drafted += s.drafted_per_round[0]
    assert drafted == 600
    keep = p * 600 > 5
    expected = p[keep] * 600
    assert st.chisquare(counts[keep], expected * counts[keep].sum() / expected.sum()).pvalue > 1e-3


def test_alpha_counts_only_the_positions_a_round_reached():
    s = sd.SpeculativeStats(4)
    for drafted, accepted in [(4, 0), (4, 4), (4, 1), (2, 2)]:
        s.record(drafted, accepted)
    # trials: round 1 one (rejected), round 2 four (kept), round 3 two (1 kept, 1 rejected), round 4 two kept
    assert math.isclose(s.alpha, 7 / (7 + 2))
    assert math.isclose(s.acceptance_rate, 7 / 14)  # counts positions never tried as failures
    # i.i.d. simulation: alpha recovers the true rate, accepted/drafted underestimates it
    rng = np.random.default_rng(0)
    sim = sd.SpeculativeStats(6)
    for _ in range(4000):
        n = 0
        while n < 6 and rng.random() < 0.7:
            n += 1
        sim.record(6, n)
    assert abs(sim.alpha - 0.7) < 0.02 and sim.acceptance_rate < 0.6
    predicted = sd.expected_tokens_per_round(sim.alpha, 6)
    assert abs(predicted - sim.tokens_per_round) < 0.05
    assert abs(sd.expected_tokens_from_positions(sim.acceptance_by_position) - sim.tokens_per_round) < 1e-9
    assert math.isnan(sd.SpeculativeStats(2).alpha)


def test_expected_tokens_from_positions_and_break_even():
    assert sd.expected_tokens_from_positions([0.5, 0.5, 0.5]) == pytest.approx(sd.expected_tokens_per_round(0.5, 3))
    assert sd.expected_tokens_from_positions([1.0, 0.5, float("nan")]) == pytest.approx(1 + 1 + 0.5)
    assert sd.expected_tokens_from_positions([]) == 1.0
    with pytest.raises(ValueError, match=r"acceptance_by_position\[1\]"):
        sd.expected_tokens_from_positions([0.5, 1.5])
    for k, c, v in [(1, 0.0, 1.3), (4, 0.1, 1.5), (8, 0.05, 2.0)]:
        a = sd.break_even_alpha(k, c, v)
        assert 0 < a < 1 and sd.expected_speedup(a, k, c, verify_cost=v) == pytest.approx(1.0, abs=1e-9)
        assert sd.expected_speedup(min(a + 0.05, 1), k, c, verify_cost=v) > 1
    assert sd.break_even_alpha(2, 0.0, 1.0) == 0.0  # a free draft and a free verify always pay
    assert math.isnan(sd.break_even_alpha(2, 1.0, 1.0))  # 2c + v = 3 = k + 1: cannot pay even at alpha = 1
    with pytest.raises(ValueError, match="verify_cost"):
        sd.break_even_alpha(2, 0.1, 0.0)


def test_cost_curve_measures_v_for_every_k():
    target, draft = _toy_pair()
    cc = sd.cost_curve(target, draft, ks=(1, 3), context=8, warmup=1, repeats=3)
    assert sorted(cc["v"]) == [1, 3] and all(v > 0 for v in cc["v"].values())
    assert cc["c"] > 0 and 0 < cc["c_flops"] < 1 and cc["target_step_s"] > 0
    lk = sd.cost_curve(target, sd.PromptLookup(), ks=(2,), context=8, warmup=1, repeats=3)
    assert lk["c_flops"] == 0.0 and lk["c"] > 0
    alone = sd.cost_curve(target, ks=(2,), context=8, warmup=0, repeats=1)
    assert math.isnan(alone["c"])
    with pytest.raises(ValueError, match="ks"):
        sd.cost_curve(target, ks=())
    with pytest.raises(ValueError, match="context"):
        sd.cost_curve(target, ks=(4,), context=60)


def test_reader_copy_prompts_hold_the_answer_in_the_passage_and_decode_exactly():
    from course_lib import data
    from course_lib.experiments.rag import load_reader
    from course_lib.fastdecode import FastLM

    reader = load_reader()
    prompts = sd.reader_copy_prompts(reader, 2, first=3)
    for p, a in zip(prompts, data.articles("test")[3:5], strict=True):
        text = reader.tokenizer.decode(p[0].tolist())
        assert text.startswith(f"[1] {a.title} ") and text.endswith(f"Q: {a.description}\nA:")  # the answer, in [1]
    out, stats = sd.speculative_generate(FastLM(reader.model), sd.PromptLookup(), prompts[0], 8, k=3)
    assert torch.equal(out, reader.model.generate(prompts[0], 8)) and stats.emitted == 8
    for p in sd.reader_copy_prompts(reader, 2, copied_only=True):  # greedy answers that quote [1]'s opening
        new = reader.model.generate(p, 12)[0, p.shape[1] :].tolist()
        answer = reader.tokenizer.decode(new[: new.index(reader.eot)]).strip()
        assert answer and reader.tokenizer.decode(p[0].tolist()).startswith(f"[1] {answer} ")
    with pytest.raises(ValueError, match="n must be"):
        sd.reader_copy_prompts(reader, 0)
    with pytest.raises(TypeError, match="copied_only"):
        sd.reader_copy_prompts(reader, 1, copied_only="yes")
    with pytest.raises(ValueError, match="first"):
        sd.reader_copy_prompts(reader, 1, first=10**6)
    with pytest.raises(TypeError, match="reader"):
        sd.reader_copy_prompts(reader.model, 1)


def test_reader_copy_prompts_bad_task_and_answer_tokens():
    from course_lib.experiments.rag import load_reader

    reader = load_reader()
    prompts, lengths = sd.reader_copy_prompts(reader, 2, first=3, answer_tokens=True)
    assert [p.shape for p in prompts] == [p.shape for p in sd.reader_copy_prompts(reader, 2, first=3)]
    for n, a in zip(lengths, data.articles("test")[3:5], strict=True):
        assert n == len(reader.tokenizer.encode(" " + a.title).ids) + 1  # the title and its end-of-text
    with pytest.raises(ValueError, match="task"):
        sd.reader_copy_prompts(reader, 1, task="summary")
    with pytest.raises(TypeError, match="answer_tokens"):
        sd.reader_copy_prompts(reader, 1, answer_tokens=1)


def _quoter_built() -> bool:
    from course_lib.experiments.rag import QUOTER_CARD

    return QUOTER_CARD.is_file()


quoter_built = pytest.mark.skipif(
    not _quoter_built(),
    reason="quoting reader not built (python -m course_lib.build rag quoter)",
)


@quoter_built
@pytest.mark.parametrize("k", [2, 4, 8])
def test_prompt_lookup_on_the_quoter_equals_plain_greedy(k):
    from course_lib.experiments.rag import load_quoter, quote_passage
    from course_lib.fastdecode import FastLM

    quoter = load_quoter()
    prompts, lengths = sd.reader_copy_prompts(quoter, 3, task="quote", copied_only=True, answer_tokens=True)
    fast = FastLM(quoter.model)
    for p, n in zip(prompts, lengths, strict=True):
        text = quoter.tokenizer.decode(p[0].tolist())
        assert text.startswith("[1] ") and text.endswith("\nQuote:")
        plain = quoter.model.generate(p, n + 4)  # past the end-of-text too: equality must not depend on it
        out, stats = sd.speculative_generate(fast, sd.PromptLookup(), p, n + 4, k=k)
        assert torch.equal(out, plain) and torch.equal(out, fast.generate(p, n + 4)) and stats.emitted == n + 4
        new = out[0, p.shape[1] :].tolist()
        assert new[n - 1] == quoter.eot  # copied_only: the quote, then end-of-text exactly where its length says
        assert stats.tokens_per_round > 2  # a quote lets the lookup draft most of it
    arts = [a for a in data.articles("test") if quote_passage(a) in quoter.tokenizer.decode(prompts[0][0].tolist())]
    assert arts, "the quote prompt shows its article's passage"


@quoter_built
def test_quote_prompts_bad_input():
    from course_lib.experiments.rag import load_quoter

    quoter = load_quoter()
    with pytest.raises(ValueError, match="n must be"):
        sd.reader_copy_prompts(quoter, 0, task="quote")
    with pytest.raises(ValueError, match="first"):
        sd.reader_copy_prompts(quoter, 1, task="quote", first=-1)
    with pytest.raises(ValueError, match="split"):
        sd.reader_copy_prompts(quoter, 1, task="quote", split="dev")
    with pytest.raises(TypeError, match="reader"):
        sd.reader_copy_prompts(quoter.model, 1, task="quote")
    with pytest.raises(ValueError, match="task"):
        sd.reader_copy_prompts(quoter, 1, task="Quote")


def test_benchmark_decodes_new_tokens_per_prompt():
    target, _ = _toy_pair()
    prompts = [torch.tensor([[1, 2, 3, 1, 2]]), torch.tensor([[7, 8, 9]])]
    kw = dict(ks=(2,), warmup=0, repeats=1)
    rows, pooled = sd.speculative_benchmark(
        target, sd.PromptLookup(), prompts, new_tokens=[5, 9], return_stats=True, **kw
    )
    assert pooled[2].emitted == 14 and rows[1]["identical"]
    assert rows[1]["tokens_per_pass"] == 14 / pooled[2].rounds
    with pytest.raises(ValueError, match="one count per prompt"):
        sd.speculative_benchmark(target, sd.PromptLookup(), prompts, new_tokens=[5], **kw)
    with pytest.raises(TypeError, match="new_tokens"):
        sd.speculative_benchmark(target, sd.PromptLookup(), prompts, new_tokens="5", **kw)
    with pytest.raises(ValueError, match=r"new_tokens\[1\]"):
        sd.break_even_table(target, sd.PromptLookup(), prompts, ks=(2,), new_tokens=[5, 0], repeats=1)


def test_benchmark_checking_round_is_the_warm_up(monkeypatch):
    """Every timed call runs once to check its output; that run is the warm-up, not a second one."""
    target, draft = _toy_pair()
    prompts = [torch.tensor([[1, 2, 3]]), torch.tensor([[7, 8]])]
    seen, interleaved = {}, sd.measure.interleaved

    def spy(fns, **kw):
        seen.update(kw)
        return interleaved(fns, **kw)

    monkeypatch.setattr(sd.measure, "interleaved", spy)
    rows = sd.speculative_benchmark(target, draft, prompts, ks=(2,), new_tokens=6, warmup=1, repeats=2)
    assert seen["warmup"] == 0 and seen["min_time"] == 0 and seen["repeats"] == 2  # no second warm-up round
    assert rows[1]["identical"] and rows[1]["speedup"] > 0
    sd.speculative_benchmark(target, draft, prompts, ks=(2,), new_tokens=6, warmup=3, repeats=2)
    assert seen["warmup"] == 2  # the checking round is the first of three
    with pytest.raises(ValueError, match="warmup"):
        sd.speculative_benchmark(target, draft, prompts, ks=(2,), new_tokens=6, warmup=-1)
    with pytest.raises(ValueError, match="repeats"):
        sd.speculative_benchmark(target, draft, prompts, ks=(2,), new_tokens=6, repeats=0)


def test_loop_overhead_is_a_ratio_of_plain_steps():
    target, _ = _toy_pair()
    prompts = [torch.tensor([[1, 2, 3, 1, 2]]), torch.tensor([[7, 8, 9]])]
    o = sd.loop_overhead(target, prompts, new_tokens=[6, 4], repeats=1)
    assert math.isfinite(o) and o >= 0
    assert sd._NoDraft().propose([1, 2, 1, 2], 3) == []  # the loop with no draft: plain greedy, one token a round
    out, stats = sd.speculative_generate(target, sd._NoDraft(), prompts[0], 6, k=3)
    assert torch.equal(out, target.generate(prompts[0], 6)) and stats.rounds == 6
    with pytest.raises(ValueError, match="prompts"):
        sd.loop_overhead(target, [])
    with pytest.raises(ValueError, match="one count per prompt"):
        sd.loop_overhead(target, prompts, new_tokens=[3])


def test_break_even_table_predicts_from_the_rounds_as_drafted():
    target, draft = _toy_pair()
    prompts = [torch.tensor([[1, 2, 3, 1, 2]]), torch.tensor([[7, 8, 9]])]
    for d in (draft, sd.PromptLookup()):
        rows = sd.break_even_table(target, d, prompts, ks=(1, 3), new_tokens=10, repeats=1)
        assert [r["k"] for r in rows] == [0, 1, 3] and all(r["identical"] for r in rows)
        for r in rows[1:]:
            assert 0 <= r["drafted/round"] <= r["k"] and r["predicted (rounds as drafted)"] > 0
            assert r["v(k)"] > 0 and r["c"] > 0
    with pytest.raises(ValueError, match="prompts"):
        sd.break_even_table(target, draft, [])


def test_add_loop_overhead_charges_it_once_per_round():
    rows = [
        {"k": 0, "predicted (rounds as drafted)": 1.0, "tokens_per_pass": 1.0},
        {"k": 4, "predicted (rounds as drafted)": 2.0, "tokens_per_pass": 3.0},
    ]
    assert sd.add_loop_overhead(rows, 0.5) is rows
    # a token cost 1/2 step; a round of 3 tokens adds 0.5 step: 1 / (0.5 + 0.5 / 3) = 1.5
    assert rows[1]["predicted + loop overhead"] == pytest.approx(1.5)
    assert rows[0]["predicted + loop overhead"] == 1.0 and rows[1]["loop overhead"] == 0.5
    assert sd.add_loop_overhead([dict(rows[1])], 0.0)[0]["predicted + loop overhead"] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="overhead"):
        sd.add_loop_overhead(rows, -0.1)
