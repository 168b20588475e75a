import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from course_lib.model import (
    ModelConfig,
    RMSNorm,
    TinyLM,
    apply_rope,
    replace_linears,
    rope_cache,
    to_transformers_llama,
)


def test_forward_shapes(tiny_model, tiny_config):
    x = torch.randint(0, tiny_config.vocab_size, (3, 10))
    assert tiny_model(x).shape == (3, 10, tiny_config.vocab_size)


def test_causality(tiny_model, tiny_config):
    """Logits at position t do not change when tokens after t change."""
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, tiny_config.vocab_size, (2, 20), generator=g)
    y = x.clone()
    y[:, 12:] = torch.randint(0, tiny_config.vocab_size, (2, 8), generator=g)
    with torch.no_grad():
        a, b = tiny_model(x), tiny_model(y)
    assert torch.allclose(a[:, :12], b[:, :12], atol=1e-6)
    assert not torch.allclose(a[:, 12:], b[:, 12:])


def test_kv_cache_equals_full_forward(tiny_model, tiny_config):
    x = torch.randint(0, tiny_config.vocab_size, (2, 24))
    with torch.no_grad():
        full = tiny_model(x)
        cache = tiny_model.new_cache(2, 24)
        parts = [tiny_model(x[:, :10], cache=cache), tiny_model(x[:, 10:15], cache=cache)]
        parts += [tiny_model(x[:, t : t + 1], cache=cache) for t in range(15, 24)]
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-5)


def test_generate_with_cache_equals_without(tiny_model, tiny_config):
    x = torch.randint(0, tiny_config.vocab_size, (2, 5))
    a = tiny_model.generate(x, 12)
    b = tiny_model.generate(x, 12, use_cache=False)
    assert torch.equal(a, b) and a.shape == (2, 17) and torch.equal(a[:, :5], x)


def test_sampling_reproducible_and_topk(tiny_model, tiny_config):
    x = torch.zeros(1, 3, dtype=torch.long)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a = tiny_model.generate(x, 10, temperature=1.0, top_k=5, generator=g1)
    b = tiny_model.generate(x, 10, temperature=1.0, top_k=5, generator=g2)
    assert torch.equal(a, b)
    # top_k = 1 is greedy
    assert torch.equal(tiny_model.generate(x, 10, temperature=0.7, top_k=1), tiny_model.generate(x, 10))


def test_gqa_shapes(tiny_config):
    m = TinyLM(tiny_config)
    attn = m.blocks[0].attn
    hd = tiny_config.head_dim
    assert attn.k_proj.weight.shape == (tiny_config.n_kv_heads * hd, tiny_config.d_model)
    assert attn.q_proj.weight.shape == (tiny_config.n_heads * hd, tiny_config.d_model)
    cache = m.new_cache(1, 8)
    assert cache[0].k.shape == (1, tiny_config.n_kv_heads, 8, hd)


def test_param_count_equals_sum_of_numel(tiny_model):
    unique = {id(p): p.numel() for p in tiny_model.parameters()}
    assert tiny_model.num_params() == sum(unique.values())
    untied = TinyLM(ModelConfig(vocab_size=97, d_model=32, n_layers=2, n_heads=4, tie_embeddings=False, max_seq_len=16))
    assert untied.num_params() - untied.num_params(embedding=False) == 2 * 97 * 32


def test_flops_per_token_counts_linears(tiny_model, tiny_config):
    f = tiny_model.flops_per_token(16)
    linear = sum(m.weight.numel() for m in tiny_model.modules() if isinstance(m, nn.Linear))
    assert f["matmul"] == 2 * linear
    assert f["attention"] == 2 * 2 * tiny_config.n_layers * (16 + 1) / 2 * tiny_config.d_model


def test_rmsnorm_formula():
    x = torch.randn(4, 8)
    n = RMSNorm(8, eps=0.0)
    assert torch.allclose(n(x), x / x.pow(2).mean(-1, keepdim=True).sqrt(), atol=1e-6)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 40), st.integers(0, 40))
def test_rope_is_relative(p, q):
    """RoPE: <R_p q, R_q k> depends only on p - q."""
    cos, sin = rope_cache(8, 100)
    torch.manual_seed(0)
    a, b = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    s1 = (apply_rope(a, cos[p], sin[p]) * apply_rope(b, cos[q], sin[q])).sum()
    s2 = (apply_rope(a, cos[p + 7], sin[p + 7]) * apply_rope(b, cos[q + 7], sin[q + 7])).sum()
    assert torch.allclose(s1, s2, atol=1e-4)


def test_matches_transformers_llama(tiny_config):
    """Cross-check: with weights copied in, TinyLM == transformers' LlamaForCausalLM."""
    torch.manual_seed(0)
    m = TinyLM(tiny_config).eval()
    hf = to_transformers_llama(m)  # transformers is a dev dependency: no skip
    x = torch.randint(0, tiny_config.vocab_size, (2, 30))
    with torch.no_grad():
        assert torch.allclose(m(x), hf(x).logits, atol=1e-5)


def test_replace_linears(tiny_model):
    class Marked(nn.Linear):
        pass

    def make(name, lin):
        new = Marked(lin.in_features, lin.out_features, bias=False)
        new.weight.data.copy_(lin.weight.data)
        return new

    x = torch.randint(0, 97, (1, 6))
    before = tiny_model(x)
    names = replace_linears(tiny_model, make)
    assert len(names) == 2 * 7 and "lm_head" not in names
    assert sum(isinstance(m, Marked) for m in tiny_model.modules()) == 14
    assert torch.allclose(tiny_model(x), before)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(d_model=30, n_heads=4), "divisible"),
        (dict(n_kv_heads=3), "n_kv_heads"),
        (dict(vocab_size=0), "vocab_size"),
        (dict(n_layers=-1), "n_layers"),
        (dict(mlp="nope"), "mlp"),
        (dict(attention="nope"), "attention"),
        (dict(d_model=36, n_heads=4), "even"),
    ],
)
def test_config_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(**kwargs)


def test_model_bad_input(tiny_model):
    with pytest.raises(TypeError, match="ModelConfig"):
        TinyLM({"d_model": 4})
    with pytest.raises(ValueError, match="max_seq_len"):
        tiny_model(torch.zeros(1, 49, dtype=torch.long))
    with pytest.raises(ValueError, match="batch, seq_len"):
        tiny_model(torch.zeros(5, dtype=torch.long))
    x = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="max_new_tokens"):
        tiny_model.generate(x, -1)
    with pytest.raises(ValueError, match="top_k"):
        tiny_model.generate(x, 2, temperature=1.0, top_k=0)
    with pytest.raises(ValueError, match="temperature"):
        tiny_model.generate(x, 2, temperature=-1.0)
    with pytest.raises(ValueError, match="exceeds max_seq_len"):
        tiny_model.generate(x, 100)
    with pytest.raises(ValueError, match="seq_len"):
        tiny_model.flops_per_token(0)


def test_to_transformers_llama_rejects_other_modules():
    with pytest.raises(TypeError, match="model must be a TinyLM"):
        to_transformers_llama(nn.Linear(2, 2))
