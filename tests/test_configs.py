"""course_lib.configs: published parameter counts, memory arithmetic, and a cross-check
against Hugging Face ``transformers`` models built from the same configs."""

from __future__ import annotations

import math

import pytest
import torch

from course_lib import configs
from course_lib.model import ModelConfig, TinyLM

# ----------------------------------------------------------------------------- published counts


def test_llama2_7b_total_matches_published_count():
    total, active = configs.count_params(configs.get("llama-2-7b"))
    assert total == 6_738_415_616
    assert active == total


def test_mixtral_total_and_active_match_published_counts():
    total, active = configs.count_params(configs.get("mixtral-8x7b"))
    assert total == 46_702_792_704
    assert active == 12_879_925_248


@pytest.mark.parametrize(
    "name, total",
    [
        ("mistral-7b", 7_241_732_096),  # HF safetensors metadata "7.24B"
        ("llama-3-8b", 8_030_261_248),  # "8.03B"
        ("llama-2-70b", 68_976_648_192),  # "69B"
        ("llama-3.1-405b", 405_853_388_800),  # "406B"
        ("phi-3-mini", 3_821_079_552),  # "3.82B"
    ],
)
def test_dense_totals(name, total):
    assert configs.count_params(configs.get(name)) == (total, total)


def test_mixtral_8x22b_rounds_to_published_141b_and_39b_active():
    # https://mistral.ai/news/mixtral-8x22b: "39B active parameters out of 141B"
    total, active = configs.count_params(configs.get("mixtral-8x22b"))
    assert round(total / 1e9) == 141 and round(active / 1e9) == 39


def test_gpt3_within_half_a_percent_of_published_175b():
    cfg = configs.get("gpt-3-175b")
    total, active = configs.count_params(cfg)
    assert total == active
    assert abs(total / cfg["published_params"]["total"] - 1) < 0.005


def test_glam_reconstruction_matches_both_published_rounded_totals():
    cfg = configs.get("glam-1.2t")
    total, active = configs.count_params(cfg)
    assert round(total / 1e11) / 10 == 1.2  # "1.2T"
    assert round(active / 1e8) / 10 == 96.6  # "96.6B activated"
    # the experts carry almost everything, and a token sees about 8 % of the weights
    parts = configs.param_breakdown(cfg)
    assert parts["experts"][0] / total > 0.9
    assert 0.07 < active / total < 0.09


def test_every_model_has_a_source_and_counts():
    for name in configs.names():
        cfg = configs.get(name)
        assert cfg["source"].startswith("https://")
        total, active = configs.count_params(cfg)
        assert 0 < active <= total


# ----------------------------------------------------------------------------- cross-check: transformers


def _hf_count(config_cls, **kwargs) -> int:
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config_cls(**kwargs))
    return sum(p.numel() for p in model.parameters())  # shared (tied) tensors once


def _hf_kwargs(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if k not in ("source", "architecture", "published_params")}


TINY = dict(
    vocab_size=97,
    hidden_size=48,
    intermediate_size=80,
    num_hidden_layers=3,
    num_attention_heads=6,
    num_key_value_heads=2,
    max_position_embeddings=64,
)


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("family", ["llama", "mistral", "mixtral", "phi3"])
def test_count_matches_transformers_on_small_configs(family, tie):
    import transformers

    cls = {
        "llama": transformers.LlamaConfig,
        "mistral": transformers.MistralConfig,
        "mixtral": transformers.MixtralConfig,
        "phi3": transformers.Phi3Config,
    }[family]
    cfg = dict(TINY, tie_word_embeddings=tie)
    if family == "mixtral":
        cfg.update(num_local_experts=4, num_experts_per_tok=2)
    total, active = configs.count_params(cfg)
    extra = {"pad_token_id": 0} if family == "phi3" else {}  # Phi-3's default pad id 32000 > our vocab
    assert total == _hf_count(cls, **cfg, **extra)
    if family != "mixtral":
        assert active == total


def test_mixtral_8x7b_full_size_matches_transformers_on_meta_device():
    from transformers import MixtralConfig

    cfg = configs.get("mixtral-8x7b")
    assert configs.count_params(cfg)[0] == _hf_count(MixtralConfig, **_hf_kwargs(cfg))


def test_gpt3_layout_matches_transformers_gpt2():
    """GPT-3 is GPT-2's architecture; check the plain-MLP, bias, LayerNorm, learned-position layout."""
    from transformers import GPT2Config

    cfg = dict(configs.get("gpt-3-175b"), vocab_size=101, hidden_size=64, intermediate_size=256)
    cfg.update(
        num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4, head_dim=16, max_position_embeddings=32
    )
    ref = _hf_count(GPT2Config, vocab_size=101, n_embd=64, n_inner=256, n_layer=3, n_head=4, n_positions=32)
    assert configs.count_params(cfg)[0] == ref


def test_count_matches_the_course_patient():
    for mc in [
        ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4),
        ModelConfig(vocab_size=80, d_model=48, n_layers=3, n_heads=6, n_kv_heads=2, tie_embeddings=False),
    ]:
        assert configs.count_params(configs.from_model_config(mc)) == (TinyLM(mc).num_params(),) * 2


def test_active_count_by_hand_for_moe_every_other_layer():
    cfg = dict(TINY, num_key_value_heads=6, tie_word_embeddings=True, num_local_experts=8, num_experts_per_tok=2)
    cfg["architecture"] = {"mlp": "gated", "expert_mlp": "plain", "moe_every": 2}
    d, f, V = 48, 80, 97
    attn, norms = 4 * d * d, (2 * 3 + 1) * d
    dense, expert = 3 * d * f, 2 * d * f
    # 3 layers, moe_every=2 -> 1 MoE layer, 2 dense layers
    total = V * d + 3 * attn + 2 * dense + 8 * expert + d * 8 + norms
    active = V * d + 3 * attn + 2 * dense + 2 * expert + d * 8 + norms
    assert configs.count_params(cfg) == (total, active)


# ----------------------------------------------------------------------------- bytes


def test_weight_bytes_by_dtype():
    cfg = configs.get("llama-2-7b")
    n = 6_738_415_616
    assert configs.weight_bytes(cfg) == 2 * n
    assert configs.weight_bytes(cfg, "fp32") == 4 * n
    assert configs.weight_bytes(cfg, "bf16") == 2 * n
    assert configs.weight_bytes(cfg, "int8") == n
    assert configs.weight_bytes(cfg, "int4") == n // 2


def test_int4_group_scales_by_hand():
    cfg = dict(TINY, num_key_value_heads=6, tie_word_embeddings=True)
    d, f, V, L = 48, 80, 97, 3
    n = configs.count_params(cfg)[0]
    g = 32
    # rows x ceil(cols / g) fp16 scales for every matrix (cols = input features)
    scales = V * math.ceil(d / g) + L * (4 * d * math.ceil(d / g) + 2 * f * math.ceil(d / g) + d * math.ceil(f / g))
    assert configs.weight_bytes(cfg, "int4", group_size=g) == math.ceil(n / 2) + 2 * scales
    # Llama-2-7B at group 128: every dimension divides, so scales are exactly n_matrix / 128
    llama = configs.get("llama-2-7b")
    matrix_params = 6_738_415_616 - (2 * 32 + 1) * 4096
    assert configs.weight_bytes(llama, "int4", group_size=128) == 6_738_415_616 // 2 + 2 * matrix_params // 128


def test_kv_cache_bytes_by_hand():
    llama = configs.get("llama-2-7b")
    # 2 (K and V) x 32 layers x 32 heads x 128 dims x 4096 positions x 2 bytes = 2 GiB
    assert configs.kv_cache_bytes(llama, seq_len=4096) == 2 * 32 * 32 * 128 * 4096 * 2 == 2**31
    assert configs.kv_cache_bytes(llama, seq_len=10, batch_size=3, dtype="fp32") == 2 * 32 * 32 * 128 * 10 * 3 * 4
    mistral = configs.get("mistral-7b")  # GQA: 8 KV heads -> a quarter of Llama-2's cache per token
    assert configs.kv_cache_bytes(mistral, seq_len=4096) == 2**31 // 4
    assert configs.kv_cache_bytes(mistral, seq_len=32768, rolling_buffer=True) == configs.kv_cache_bytes(
        mistral, seq_len=4096
    )
    assert configs.kv_cache_bytes(mistral, seq_len=100, rolling_buffer=True) == configs.kv_cache_bytes(
        mistral, seq_len=100
    )
    assert configs.kv_cache_bytes(llama, seq_len=3, dtype="int4") == 2 * 32 * 32 * 128 * 3 // 2


def test_kv_cache_bytes_matches_transformers_cache():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = dict(TINY, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**cfg)).eval()
    ids = torch.randint(0, 97, (2, 11))
    with torch.no_grad():
        cache = model(ids, use_cache=True).past_key_values
    nbytes = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    assert configs.kv_cache_bytes(cfg, seq_len=11, batch_size=2, dtype="fp32") == nbytes


# ----------------------------------------------------------------------------- bad input


def test_get_returns_a_copy_and_rejects_unknown_names():
    a = configs.get("mixtral-8x7b")
    a["hidden_size"] = 1
    assert configs.get("mixtral-8x7b")["hidden_size"] == 4096
    with pytest.raises(ValueError, match="name must be one of .*'llama-2-7b'.*, got 'gpt-5'"):
        configs.get("gpt-5")
    with pytest.raises(TypeError):
        configs.get(7)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"hidden_size": None}, "missing required key 'hidden_size'"),
        ({"num_hidden_layers": 0}, r"num_hidden_layers'\] must be an int >= 1, got 0"),
        ({"vocab_size": -5}, r"vocab_size'\] must be an int >= 1, got -5"),
        ({"intermediate_size": 11.5}, "must be an int"),
        ({"num_key_value_heads": 5}, "multiple of num_key_value_heads"),
        ({"num_experts_per_tok": 9}, "must be <= num_local_experts"),
        ({"tie_word_embeddings": "no"}, "must be a bool"),
        ({"architecture": {"mlp": "moe"}}, r"architecture\['mlp'\] must be one of"),
        ({"architecture": {"activation": "gelu"}}, r"unknown keys in config\['architecture'\]: \['activation'\]"),
        ({"architecture": {"moe_every": 0}}, "moe_every"),
    ],
)
def test_bad_configs_raise_clear_errors(change, match):
    cfg = configs.get("mixtral-8x7b")
    for key, value in change.items():
        if value is None:
            del cfg[key]
        else:
            cfg[key] = value
    with pytest.raises(ValueError, match=match):
        configs.count_params(cfg)


def test_moe_without_top_k_is_an_error():
    cfg = configs.get("mixtral-8x7b")
    del cfg["num_experts_per_tok"]
    with pytest.raises(ValueError, match="missing required key 'num_experts_per_tok'"):
        configs.count_params(cfg)


def test_bad_memory_arguments():
    cfg = configs.get("llama-2-7b")
    with pytest.raises(TypeError):
        configs.count_params([1, 2])
    with pytest.raises(ValueError, match="dtype must be one of"):
        configs.weight_bytes(cfg, "fp8")
    with pytest.raises(ValueError, match="group_size only applies"):
        configs.weight_bytes(cfg, "fp16", group_size=128)
    with pytest.raises(ValueError, match="group_size must be an int >= 1"):
        configs.weight_bytes(cfg, "int4", group_size=0)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="seq_len must be an int >= 1"):
            configs.kv_cache_bytes(cfg, seq_len=bad)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        configs.kv_cache_bytes(cfg, seq_len=8, batch_size=0)
    with pytest.raises(TypeError):
        configs.kv_cache_bytes(cfg, 8)  # seq_len is keyword-only
