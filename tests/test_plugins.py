"""The plug-in contracts of model.py: every registered attention and MLP kind builds the patient
and runs forward, cached decode and FLOP counting; options are checked when the config is made;
an attention module that lacks what the model calls is refused when it is built."""

import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from course_lib import moe, zoo
from course_lib.model import (
    ATTENTION_CONTRACT,
    ATTENTION_REGISTRY,
    MLP_REGISTRY,
    Attention,
    ModelConfig,
    SwiGLU,
    TinyLM,
    register_attention,
)

#: options that make each kind small enough to test quickly; a kind not listed gets {}
EXAMPLE_OPTIONS = {
    "sparse": dict(pattern="sliding_window", window=8, block_size=8),
    "moe": dict(n_experts=4, top_k=2, layers="odd"),
}
PATIENT = zoo.RECIPES["tiny"][0]  # the zoo's tiny patient: its shape, fresh weights


def patient(attention: str, mlp: str) -> TinyLM:
    cfg = replace(
        PATIENT,
        attention=attention,
        attention_options=EXAMPLE_OPTIONS.get(attention, {}),
        mlp=mlp,
        mlp_options=EXAMPLE_OPTIONS.get(mlp, {}),
    )
    torch.manual_seed(0)
    return TinyLM(cfg).eval()


KINDS = [(a, m) for a in sorted(ATTENTION_REGISTRY) for m in sorted(MLP_REGISTRY)]


def test_the_registries_hold_the_course_kinds():
    assert {"full", "sparse"} <= set(ATTENTION_REGISTRY) and {"swiglu", "moe"} <= set(MLP_REGISTRY)
    assert len(KINDS) >= 4


@pytest.mark.parametrize("attention, mlp", KINDS)
def test_every_kind_runs_forward_cached_decode_and_flops(attention, mlp):
    model = patient(attention, mlp)
    for block in model.blocks:
        assert all(hasattr(block.attn, a) for a in ATTENTION_CONTRACT)
    x = torch.randint(0, PATIENT.vocab_size, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(x)  # (B, T, V)
        assert full.shape == (2, 40, PATIENT.vocab_size) and torch.isfinite(full).all()
        cache = model.new_cache(2, 40)
        parts = [model(x[:, :24], cache=cache)]  # prefill, then one token at a time
        parts += [model(x[:, t : t + 1], cache=cache) for t in range(24, 40)]
    assert torch.allclose(torch.cat(parts, 1), full, atol=1e-4)
    assert torch.equal(model.generate(x[:, :6], 10), model.generate(x[:, :6], 10, use_cache=False))

    t = 40
    f = model.flops_per_token(t)
    heads, d = PATIENT.n_heads, PATIENT.head_dim
    contexts = [b.attn.mean_context(t) for b in model.blocks]
    assert f["total"] == f["matmul"] + f["attention"]
    assert math.isclose(f["attention"], 4 * sum(c * heads * d for c in contexts))
    if attention == "full":
        assert contexts == [(t + 1) / 2] * PATIENT.n_layers
    else:  # a pattern reads at most what full attention reads
        assert all(0 < c <= (t + 1) / 2 for c in contexts)
    norms = sum(p.numel() for n, p in model.named_parameters() if n.endswith("norm.weight"))
    untied = model.embed.weight.numel() * (not PATIENT.tie_embeddings)  # the lookup is free; lm_head is not
    assert f["matmul"] == 2 * (model.num_params(active=True) - norms - untied)  # inactive experts not counted


def test_moe_factory_keeps_unlisted_layers_dense():
    model = patient("full", "moe")  # layers="odd"
    kinds = [type(b.mlp) for b in model.blocks]
    assert kinds == [SwiGLU, moe.MoEMLP] * (PATIENT.n_layers // 2)
    assert type(moe.MoEMLP(model.config, 0)) is moe.MoEMLP  # the class itself never returns another class
    assert type(moe.moe_mlp(model.config, 0)) is SwiGLU


def test_a_model_built_twice_is_identical():
    for attention, mlp in KINDS:
        a, b = patient(attention, mlp), patient(attention, mlp)
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --------------------------------------------------------------------------- checked when the config is made


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(mlp="moe", mlp_options={"n_experst": 4}), r"unknown keys in mlp_options for mlp='moe': \['n_experst'\]"),
        (dict(mlp="moe", mlp_options={"n_experts": 4, "top_k": 5}), r"top_k must be an int in \[1, 4\], got 5"),
        (dict(mlp="moe", mlp_options={"layers": [9]}), r"layers \[9\] do not exist in a model with n_layers = 4"),
        (dict(mlp="moe", mlp_options={"aux_loss_coef": float("nan")}), "aux_loss_coef must be a finite number"),
        (dict(mlp="swiglu", mlp_options={"n_experts": 4}), r"unknown keys in mlp_options for mlp='swiglu'"),
        (dict(attention="full", attention_options={"window": 8}), r"attention_options for attention='full'"),
        (dict(attention="sparse", attention_options={"windw": 8}), r"unknown keys in attention_options: \['windw'\]"),
        (dict(attention="sparse", attention_options={"impl": "cuda"}), r"attention_options\['impl'\] must be one of"),
        (dict(attention="sparse", attention_options={"n_global": 300}), r"n_global \(300\) must be <= seq_len"),
        (dict(attention="sparse", attention_options={"causal": False}), "must be causal"),
    ],
)
def test_bad_plugin_options_fail_when_the_config_is_made(kwargs, match):
    with pytest.raises(ValueError, match=match) as info:
        ModelConfig(**PATIENT.to_dict() | kwargs)
    if "unknown keys" in match:  # the allowed keys are listed, so a typo shows what was meant
        assert "allowed:" in str(info.value)


def test_moe_config_and_the_allowed_keys():
    cfg = moe.moe_config(PATIENT, n_experts=4, top_k=1)
    assert cfg.mlp == "moe" and cfg.mlp_options == {"n_experts": 4, "top_k": 1}
    assert moe.moe_options(cfg) == moe.MoEOptions(n_experts=4, top_k=1)
    with pytest.raises(ValueError, match="'n_experts'"):  # the error lists the allowed keys
        moe.moe_config(PATIENT, n_experst=4)
    with pytest.raises(TypeError, match="config must be a ModelConfig"):
        moe.moe_config({"d_model": 64}, n_experts=4)


class _NoMeanContext(nn.Module):
    """An attention that forgets part of the contract."""

    def __init__(self, config, layer_idx=0):
        super().__init__()
        self.inner = Attention(config, layer_idx)

    def forward(self, x, cos, sin, cache=None):
        return self.inner(x, cos, sin, cache)

    def new_cache(self, *args, **kwargs):
        return self.inner.new_cache(*args, **kwargs)


def test_an_attention_without_the_contract_is_refused_at_build_time():
    register_attention("incomplete", _NoMeanContext)
    try:
        cfg = replace(PATIENT, attention="incomplete")  # no check_config: options pass through
        with pytest.raises(TypeError, match=r"without \['mean_context', 'n_heads', 'head_dim'\]"):
            TinyLM(cfg)
    finally:
        del ATTENTION_REGISTRY["incomplete"]
