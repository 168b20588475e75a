"""Chapter 05: formats, quantize/dequantize, packing, QuantLinear, GPTQ, AWQ, QAT, quantize_model."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from course_lib import measure, quant, quant_primitives
from course_lib.experiments import quant as quant_runs
from course_lib.model import ModelConfig, TinyLM

# --------------------------------------------------------------------------- formats

#: NF4 levels as published with QLoRA (bitsandbytes' table; Dettmers et al. 2023, appendix).
NF4_PUBLISHED = [
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
]


def test_nf4_levels_follow_the_published_table():
    assert torch.allclose(quant.nf4_levels(), torch.tensor(NF4_PUBLISHED), atol=1e-6)


@pytest.mark.parametrize(
    "name,dtype,n_bits",
    [("fp16", torch.float16, 16), ("bf16", torch.bfloat16, 16), ("fp8_e4m3", torch.float8_e4m3fn, 8)],
)
def test_format_grid_equals_torch_bit_patterns(name, dtype, n_bits):
    ints = torch.arange(-(2 ** (n_bits - 1)), 2 ** (n_bits - 1), dtype=torch.int16 if n_bits == 16 else torch.int8)
    ref = ints.view(dtype).double()
    ref = torch.unique(ref[torch.isfinite(ref)])
    assert torch.equal(quant.format_grid(name), ref)


@pytest.mark.parametrize(
    "name,dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16), ("fp8_e4m3", torch.float8_e4m3fn)]
)
def test_round_to_format_equals_torch_cast(name, dtype):
    torch.manual_seed(0)
    f = quant.FORMATS[name]
    x = torch.cat([torch.randn(4000) * 10.0 ** torch.randint(-9, 3, (4000,)), torch.tensor([0.0, -0.0, 1.0, -3.5])])
    x = x[x.abs() <= f.max_value]
    ours = quant.round_to_format(x, name)
    assert torch.equal(ours, x.to(dtype).float())


def test_format_facts():
    assert quant.FORMATS["fp16"].max_value == 65504
    assert quant.FORMATS["fp8_e4m3"].max_value == 448
    assert math.isclose(quant.FORMATS["bf16"].max_value, torch.finfo(torch.bfloat16).max)
    for f in quant.FORMATS.values():
        assert sum(b for _, b in f.layout()) == f.bits
    assert len(quant.format_grid("int4")) == 16 and len(quant.format_grid("nf4")) == 16
    with pytest.raises(ValueError, match="format"):
        quant.format_grid("fp7")
    with pytest.raises(ValueError, match="2\\^32"):
        quant.format_grid("fp32")


def test_nf4_beats_int4_on_normal_weights():
    torch.manual_seed(0)
    w = torch.randn(64 * 256)
    e_int4 = quant.error_stats(w, quant.round_to_format(w, "int4", block_size=64))["mse"]
    e_nf4 = quant.error_stats(w, quant.round_to_format(w, "nf4", block_size=64))["mse"]
    assert e_nf4 < 0.9 * e_int4


def test_each_bit_adds_about_six_db():
    torch.manual_seed(0)
    w = torch.randn(256, 256)
    sq = [
        quant.error_stats(w, quant.fake_quantize(w, bits=b, granularity="channel", symmetric=True))["sqnr_db"]
        for b in (4, 5, 6, 7, 8)
    ]
    steps = [b - a for a, b in zip(sq, sq[1:])]
    assert all(5.5 < s < 7.0 for s in steps), steps  # 20 log10(2) = 6.02 dB; (2^b - 1) levels give a bit more at low b


# --------------------------------------------------------------------------- quantize / dequantize


@settings(max_examples=60, deadline=None)
@given(
    bits=st.sampled_from([2, 3, 4, 8]),
    symmetric=st.booleans(),
    granularity=st.sampled_from(["tensor", "channel", "group"]),
    rows=st.integers(1, 6),
    groups=st.integers(1, 4),
    scale_exp=st.integers(-6, 4),
    seed=st.integers(0, 10_000),
)
def test_roundtrip_error_is_at_most_half_a_step(bits, symmetric, granularity, rows, groups, scale_exp, seed):
    g = 8
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, groups * g, generator=gen) * 10.0**scale_exp + torch.rand(1, generator=gen) * 10.0**scale_exp
    qt = quant.quantize(x, bits=bits, symmetric=symmetric, granularity=granularity, group_size=g)
    err = (x.view_as(qt.codes) - qt.codes.sub(qt.zero).mul(qt.scale)).abs()
    assert (err <= qt.scale / 2 * (1 + 1e-5) + 1e-12).all()
    lo, hi = quant.code_range(bits, symmetric)
    assert qt.codes.min() >= lo and qt.codes.max() <= hi
    assert torch.equal(qt.dequantize(), quant.dequantize(qt))


def test_per_channel_affine_int8_matches_torch_ao_exactly():
    from torch.ao.quantization.observer import PerChannelMinMaxObserver

    torch.manual_seed(0)
    for _ in range(20):
        w = torch.randn(48, 96) * torch.rand(48, 1) * 3 + torch.randn(48, 1)
        obs = PerChannelMinMaxObserver(ch_axis=0, dtype=torch.quint8, qscheme=torch.per_channel_affine)
        obs(w)
        scale, zero = obs.calculate_qparams()
        ours = quant.quantize(w, bits=8, symmetric=False, granularity="channel")
        assert torch.equal(ours.scale.flatten(), scale)
        assert torch.equal(ours.zero.flatten().long(), zero)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = torch.quantize_per_channel(w, scale, zero, 0, torch.quint8)
        assert torch.equal(ours.codes.view(48, 96).to(torch.uint8), ref.int_repr())
        assert torch.equal(ours.dequantize(), ref.dequantize())


def test_symmetric_int8_codes_match_torch_ao_given_the_scales():
    torch.manual_seed(1)
    w = torch.randn(32, 64)
    ours = quant.quantize(w, bits=8, symmetric=True, granularity="channel")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = torch.quantize_per_channel(w, ours.scale.flatten(), torch.zeros(32, dtype=torch.long), 0, torch.qint8)
    assert torch.equal(ours.int_repr.to(torch.int8), ref.int_repr())


def test_quantize_bad_input():
    with pytest.raises(ValueError, match="bits"):
        quant.quantize(torch.randn(4, 4), bits=1)
    with pytest.raises(ValueError, match="group_size"):
        quant.quantize(torch.randn(4, 10), granularity="group", group_size=4)
    with pytest.raises(ValueError, match="NaN or inf"):
        quant.quantize(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="NaN or inf"):
        quant.quantize(torch.tensor([1.0, float("inf")]))
    with pytest.raises(ValueError, match="granularity"):
        quant.quantize(torch.randn(4), granularity="row")
    with pytest.raises(TypeError):
        quant.quantize(torch.arange(4))


# --------------------------------------------------------------------------- one path for weights and activations


def test_granularity_is_one_block_shape_for_weights_and_activations():
    assert quant_primitives.block_size((48, 96), "tensor") == (48, 96)
    assert quant_primitives.block_size((48, 96), "channel") == (1, 96) == quant_primitives.block_size((48, 96), "token")
    assert quant_primitives.block_size((48, 96), "group", 32) == (1, 32)
    assert quant_primitives.block_size((2, 7, 96), "token") == (1, 1, 96)
    x = torch.randn(6, 64)
    assert quant_primitives.as_blocks(x, (6, 64)).shape == (1, 1, 384)
    assert quant_primitives.as_blocks(x, (1, 16)).shape == (6, 4, 16)
    with pytest.raises(ValueError, match="block_size"):
        quant_primitives.as_blocks(x, (2, 16))
    with pytest.raises(ValueError, match="group_size"):
        quant_primitives.block_size((6, 64), "group")  # a group needs its size
    with pytest.raises(ValueError, match="granularity"):
        quant_primitives.block_size((64,), "channel")


@pytest.mark.parametrize("granularity", ["token", "tensor"])
def test_activations_share_the_weights_granularity_and_scales(granularity):
    torch.manual_seed(0)
    x = torch.randn(9, 40) * 3
    x[:, 3] *= 30
    xq, sx = quant.quantize_activations(x, granularity=granularity)
    qt = quant.quantize(x, bits=8, symmetric=True, granularity=granularity)
    assert xq.dtype == torch.int8 and sx.shape == (9, 1) and xq.abs().max() == 127
    assert torch.equal(sx, qt.scale.reshape(-1, 1).expand(9, 1))  # the same choose-params step
    assert (xq.float() - qt.int_repr).abs().max() <= 1  # rounding may differ at exact ties only
    assert ((quant.decode(xq.float(), sx, 0) - x).abs() <= sx / 2 * (1 + 1e-6)).all()
    with pytest.raises(ValueError, match="act_granularity"):
        quant.quantize_activations(x, granularity="group")


def test_every_scheme_stores_what_quantize_computes():
    torch.manual_seed(0)
    lin, emb = nn.Linear(64, 16), nn.Embedding(10, 64)

    def rtn(w, bits, sym, g):
        return quant.fake_quantize(
            w.detach(), bits=bits, symmetric=sym, granularity="group", group_size=g, fp16_scale=True
        )

    w3 = quant.QuantLinear.from_linear(lin, bits=3, group_size=16)
    assert torch.equal(w3.dequantized_weight(), rtn(lin.weight, 3, False, 16))
    w8 = quant.W8A8Linear.from_linear(lin)
    assert isinstance(w8, quant.QuantLinear) and w8.packed.dtype == torch.int8 and w8.weight_bytes() == 16 * 64 + 16 * 6
    assert torch.equal(w8.dequantized_weight(), rtn(lin.weight, 8, True, 64))
    assert torch.equal(quant.QuantEmbedding(emb, bits=4, group_size=32).weight, rtn(emb.weight, 4, False, 32))


# --------------------------------------------------------------------------- packing


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(1, 8), rows=st.integers(1, 4), n=st.integers(1, 70), seed=st.integers(0, 10_000))
def test_pack_unpack_round_trip(bits, rows, n, seed):
    codes = torch.randint(0, 2**bits, (rows, n), generator=torch.Generator().manual_seed(seed))
    packed = quant.pack_bits(codes, bits)
    assert packed.dtype == torch.uint8 and packed.shape[-1] == math.ceil(n * bits / 8)
    assert torch.equal(quant.unpack_bits(packed, bits, n).long(), codes)


def test_int4_packs_two_codes_per_byte():
    codes = torch.tensor([[1, 2, 15, 0, 7, 9]])
    packed = quant.pack_int4(codes)
    assert packed.tolist() == [[1 | 2 << 4, 15, 7 | 9 << 4]]
    assert torch.equal(quant.unpack_int4(packed).long(), codes)
    assert torch.equal(quant.pack_bits(codes, 4), packed)
    with pytest.raises(ValueError, match="even"):
        quant.pack_int4(torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="\\[0, 15\\]"):
        quant.pack_int4(torch.tensor([16, 2]))


# --------------------------------------------------------------------------- QuantLinear


@pytest.mark.parametrize(
    "bits,group,sym", [(2, 16, False), (3, 32, False), (4, None, True), (8, 16, True), (4, 16, False)]
)
def test_quant_linear_is_a_drop_in(bits, group, sym):
    torch.manual_seed(0)
    lin = nn.Linear(64, 24)
    q = quant.QuantLinear.from_linear(lin, bits=bits, group_size=group, symmetric=sym)
    assert (q.in_features, q.out_features) == (64, 24)
    x = torch.randn(3, 5, 64)
    assert torch.allclose(q(x), nn.functional.linear(x, q.effective_weight(), lin.bias), atol=1e-5)
    ref = quant.fake_quantize(
        lin.weight.detach(), bits=bits, symmetric=sym, granularity="group", group_size=group or 64, fp16_scale=True
    )
    assert torch.allclose(q.effective_weight(), ref)
    # honest bytes: packed codes + fp16 scales + uint8 zero-points + fp32 bias
    g = group or 64
    expected = 24 * math.ceil(64 * bits / 8) + 24 * (64 // g) * (2 + (0 if sym else 1)) + 24 * 4
    assert q.weight_bytes() == expected


def test_weight_bytes_of_a_quantized_model_are_honest():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(1024, 1024, bias=False), nn.ReLU(), nn.Linear(1024, 256, bias=False))
    fp = measure.weight_bytes(m)
    q8, r8 = quant.quantize_model(m, "rtn", 8, None, symmetric=True)
    q4, r4 = quant.quantize_model(m, "rtn", 4, 128)
    assert measure.weight_bytes(q8) == r8.bytes_after and fp == r8.bytes_before
    assert 3.95 < r8.ratio < 4.0  # 1 byte per weight + one fp16 scale per row
    assert r4.ratio == pytest.approx(4 / (0.5 + 3 / 128))  # 4 bits + fp16 scale + uint8 zero per 128


def test_w8a8_int_mm_equals_emulated_and_dequantized_matmul():
    torch.manual_seed(0)
    lin = nn.Linear(256, 96)
    x = torch.randn(7, 256) * 3
    a = quant.W8A8Linear.from_linear(lin, backend="int_mm")
    b = quant.W8A8Linear.from_linear(lin, backend="emulated")
    assert torch.equal(a(x), b(x))  # _int_mm is exact, and so is fp32 on these integers
    xq, sx = quant.quantize_activations(x)
    ref = (xq.float() * sx) @ a.dequantized_weight().t() + lin.bias
    assert torch.allclose(a(x), ref, rtol=1e-5, atol=1e-4)
    exact = lin(x)
    assert (a(x) - exact).norm() / exact.norm() < 0.02
    ints = torch.randint(-127, 128, (5, 300), dtype=torch.int8), torch.randint(-127, 128, (11, 300), dtype=torch.int8)
    assert torch.equal(quant.int8_matmul(*ints), (ints[0].long() @ ints[1].long().t()).float())


def test_w8a8_error_is_close_to_torch_ao_dynamic():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(512, 512))
    x = torch.randn(64, 512)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ao = torch.ao.quantization.quantize_dynamic(m, {nn.Linear}, dtype=torch.qint8)
    ours = quant.W8A8Linear.from_linear(m[0], act_granularity="tensor")
    ref = m(x)
    e_ao = ((ao(x) - ref).norm() / ref.norm()).item()
    e_ours = ((ours(x) - ref).norm() / ref.norm()).item()
    assert e_ours < 1.5 * e_ao and e_ours < 0.02, (e_ours, e_ao)  # ao: per-tensor weights, 7-bit activations
    per_token = quant.W8A8Linear.from_linear(m[0], act_granularity="token")
    assert ((per_token(x) - ref).norm() / ref.norm()).item() <= e_ours


def test_llm_int8_rescues_an_outlier_column():
    torch.manual_seed(0)
    lin = nn.Linear(128, 64)
    x = torch.randn(32, 128)
    x[:, 7] *= 60  # one outlier feature, as in large LMs
    ref = lin(x)
    w8 = quant.W8A8Linear.from_linear(lin, act_granularity="token")
    mixed = quant.LLMInt8Linear.from_linear(lin, threshold=6.0)
    e_w8 = ((w8(x) - ref).norm() / ref.norm()).item()
    e_mixed = ((mixed(x) - ref).norm() / ref.norm()).item()
    assert mixed.last_outlier_columns >= 1 and e_mixed < 0.5 * e_w8
    never = quant.LLMInt8Linear.from_linear(lin, threshold=1e9)
    assert torch.equal(never(x), w8(x)) and never.last_outlier_columns == 0


def test_smoothquant_moves_the_difficulty_into_the_weights():
    torch.manual_seed(0)
    lin = nn.Linear(128, 64)
    x = torch.randn(64, 128)
    x[:, :4] *= 40
    s = quant.smooth_scales(x.abs().amax(0), lin.weight, alpha=0.5)
    assert torch.allclose((x / s) @ (lin.weight * s).t(), x @ lin.weight.t(), rtol=1e-4, atol=1e-3)
    ref = lin(x)
    plain = quant.W8A8Linear.from_linear(lin, act_granularity="tensor")
    smooth = quant.W8A8Linear.from_linear(lin, act_granularity="tensor", in_scale=s)
    e = [((m(x) - ref).norm() / ref.norm()).item() for m in (plain, smooth)]
    assert e[1] < 0.7 * e[0], e
    with pytest.raises(ValueError, match="alpha"):
        quant.smooth_scales(x.abs().amax(0), lin.weight, alpha=1.5)


def test_quant_linear_bad_input():
    lin = nn.Linear(48, 8)
    with pytest.raises(ValueError, match="bits"):
        quant.QuantLinear.from_linear(lin, bits=5)
    with pytest.raises(ValueError, match="group_size.*48"):
        quant.QuantLinear.from_linear(lin, bits=4, group_size=32)
    with pytest.raises(TypeError, match="bits"):
        quant.W8A8Linear.from_linear(lin, bits=4)  # W8A8 is 8-bit by definition: no bits argument
    with pytest.raises(ValueError, match="act_granularity"):
        quant.W8A8Linear.from_linear(lin, act_granularity="channel")
    with pytest.raises(ValueError, match="backend"):
        quant.W8A8Linear.from_linear(lin, backend="cublas")
    with pytest.raises(ValueError, match="threshold"):
        quant.LLMInt8Linear.from_linear(lin, threshold=0.0)
    with torch.no_grad():
        lin.weight[0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf"):
        quant.QuantLinear.from_linear(lin, bits=4)
    with pytest.raises(TypeError):
        quant.QuantLinear.from_linear(nn.Conv1d(2, 2, 1))


# --------------------------------------------------------------------------- GPTQ and AWQ


@pytest.fixture(scope="module")
def patient_acts():
    """Real activations: inputs of the tiny zoo patient's layers on training text."""
    from course_lib import zoo

    model = zoo.load("tiny").model
    names = ["blocks.1.mlp.down_proj", "blocks.2.attn.q_proj"]
    calib = quant_runs.patient_calibration(4, 128)
    held = quant_runs.patient_calibration(4, 128, seed=1)
    a = quant.capture_inputs(model, names, calib)
    b = quant.capture_inputs(model, names, held)
    return model, names, a, b


def _out_err(W, W_hat, X):
    return ((X @ W.t() - X @ W_hat.t()).norm() / (X @ W.t()).norm()).item()


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_gptq_reconstructs_real_layers_better_than_rtn(patient_acts, bits):
    model, names, calib, held = patient_acts
    for n in names:
        lin = model.get_submodule(n)
        W = lin.weight.detach()
        g = 16
        codes, scale, zero = quant.gptq_quantize(W, quant.hessian(calib[n]), bits=bits, group_size=g)
        q = quant.QuantLinear(lin.in_features, lin.out_features, bits=bits, group_size=g, bias=False)
        q.set_codes(codes, scale, zero)
        rtn = quant.QuantLinear.from_linear(lin, bits=bits, group_size=g)
        for X in (calib[n], held[n]):  # on the calibration data and on unseen text
            assert _out_err(W, q.effective_weight(), X) < 0.9 * _out_err(W, rtn.effective_weight(), X)


def test_gptq_with_uncorrelated_inputs_is_rtn():
    torch.manual_seed(0)
    W = torch.randn(16, 32)
    codes, scale, zero = quant.gptq_quantize(W, torch.eye(32) * 2, bits=3, group_size=8)
    ref = quant.quantize(W, bits=3, symmetric=False, granularity="group", group_size=8, fp16_scale=True)
    assert torch.equal(codes.float(), ref.codes.view(16, 32))


def test_gptq_act_order_and_bad_input():
    torch.manual_seed(0)
    X = torch.randn(200, 32) * torch.linspace(0.1, 3, 32)
    W = torch.randn(8, 32)
    H = quant.hessian(X)
    for act_order in (False, True):
        codes, scale, zero = quant.gptq_quantize(W, H, bits=4, group_size=8, act_order=act_order)
        q = ((codes.float().view(8, 4, 8) - zero[..., None]) * scale[..., None]).view(8, 32)
        rtn = quant.fake_quantize(W, bits=4, symmetric=False, granularity="group", group_size=8, fp16_scale=True)
        assert _out_err(W, q, X) < _out_err(W, rtn, X)
    with pytest.raises(ValueError, match="H must be"):
        quant.gptq_quantize(W, torch.eye(5))
    with pytest.raises(ValueError, match="group_size"):
        quant.gptq_quantize(W, H, group_size=5)
    with pytest.raises(ValueError, match="bits"):
        quant.gptq_quantize(W, H, bits=16)


def test_awq_never_worse_than_rtn_on_its_calibration(patient_acts):
    model, names, calib, held = patient_acts
    for n in names:
        lin = model.get_submodule(n)
        W = lin.weight.detach()
        s, Ws, alpha = quant.awq_search(W, calib[n], bits=3, group_size=16)
        awq = quant.QuantLinear.from_linear(lin, bits=3, group_size=16, in_scale=s, weight=Ws)
        rtn = quant.QuantLinear.from_linear(lin, bits=3, group_size=16)
        assert _out_err(W, awq.effective_weight(), calib[n]) <= _out_err(W, rtn.effective_weight(), calib[n])
        assert 0 <= alpha < 1
    # with only alpha = 0 and no clipping, AWQ is plain RTN
    s, Ws, alpha = quant.awq_search(W, calib[n], bits=3, group_size=16, n_grid=1, clip=False)
    assert alpha == 0 and torch.equal(s, torch.ones_like(s))
    with pytest.raises(ValueError, match="empty"):
        quant.awq_search(W, calib[n][:0], bits=3)


# --------------------------------------------------------------------------- quantize_model


@pytest.fixture
def small_lm():
    torch.manual_seed(0)
    return TinyLM(
        ModelConfig(vocab_size=97, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64, max_seq_len=32)
    ).eval()


@pytest.mark.parametrize("method", ["rtn", "gptq", "awq", "w8a8", "llm.int8"])
def test_quantize_model_every_method(small_lm, method):
    calib = torch.randint(0, 97, (4, 32), generator=torch.Generator().manual_seed(0))
    before = {k: v.clone() for k, v in small_lm.state_dict().items()}
    bits = 8 if method in ("w8a8", "llm.int8") else 4
    q, rep = quant.quantize_model(small_lm, method, bits, 16, calib)
    assert all(torch.equal(before[k], v) for k, v in small_lm.state_dict().items())  # original untouched
    assert sum(isinstance(m, quant.QuantLinear) for m in q.modules()) == 2 * 7
    scheme = {"w8a8": quant.W8A8Linear, "llm.int8": quant.LLMInt8Linear}.get(method, quant.QuantLinear)
    assert all(type(m) is scheme for m in q.modules() if isinstance(m, quant.QuantLinear))
    x = torch.randint(0, 97, (2, 20))
    with torch.no_grad():
        ref, out = small_lm(x), q(x)
    assert out.shape == ref.shape and (out - ref).norm() / ref.norm() < 0.1
    assert rep.bytes_after == measure.weight_bytes(q) < rep.bytes_before
    assert len(rep.layers) == 14 and q.flops_per_token(16) == small_lm.flops_per_token(16)


def test_quantize_model_gptq_beats_rtn_in_the_model(small_lm):
    calib = torch.randint(0, 97, (8, 32), generator=torch.Generator().manual_seed(0))
    x = torch.randint(0, 97, (4, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = small_lm(x)
        errs = {m: (quant.quantize_model(small_lm, m, 2, 16, calib)[0](x) - ref).norm().item() for m in ("rtn", "gptq")}
    assert errs["gptq"] < errs["rtn"]


def test_sequential_groups_share_inputs(small_lm):
    names = [n for n, m in small_lm.named_modules() if isinstance(m, nn.Linear) and n != "lm_head"]
    groups = quant.sequential_groups(small_lm, names, torch.randint(0, 97, (1, 8)))
    assert groups[:4] == [
        ["blocks.0.attn.q_proj", "blocks.0.attn.k_proj", "blocks.0.attn.v_proj"],
        ["blocks.0.attn.o_proj"],
        ["blocks.0.mlp.gate_proj", "blocks.0.mlp.up_proj"],
        ["blocks.0.mlp.down_proj"],
    ]


def test_tied_embedding_is_stored_once(small_lm):
    q, rep = quant.quantize_model(small_lm, "rtn", 8, None, embed_bits=8)
    assert isinstance(q.embed, quant.QuantEmbedding) and q.lm_head.tied
    assert q.lm_head.packed is q.embed.packed
    assert q.flops_per_token(16) == small_lm.flops_per_token(16)  # the quantized table is not a Linear
    n_lin = sum(
        m.in_features * m.out_features
        for n, m in small_lm.named_modules()
        if isinstance(m, nn.Linear) and n != "lm_head"
    )
    n_emb = small_lm.embed.weight.numel()
    assert rep.bytes_after < 1.1 * (n_lin + n_emb) + 4 * 32 * 5  # ~1 byte per weight (+ norms)
    assert 3.5 < rep.ratio < 4.0
    idx = torch.randint(0, 97, (3, 5))
    assert torch.allclose(q.embed(idx), q.embed.weight[idx])
    with torch.no_grad():
        assert (q(idx) - small_lm(idx)).norm() / small_lm(idx).norm() < 0.02


def test_quantize_model_bad_input(small_lm):
    calib = torch.randint(0, 97, (2, 16))
    with pytest.raises(ValueError, match="bits"):
        quant.quantize_model(small_lm, "rtn", 5, 16)
    with pytest.raises(ValueError, match="group_size.*in_features = 32"):
        quant.quantize_model(small_lm, "rtn", 4, 24)
    with pytest.raises(ValueError, match="method"):
        quant.quantize_model(small_lm, "hqq", 4, 16)
    for empty in (None, [], torch.zeros(0, 16, dtype=torch.long)):
        with pytest.raises(ValueError, match="calib"):
            quant.quantize_model(small_lm, "gptq", 4, 16, empty)
    with pytest.raises(ValueError, match="bits must be 8"):
        quant.quantize_model(small_lm, "w8a8", 4, None)
    bad = TinyLM(small_lm.config)
    with torch.no_grad():
        bad.blocks[1].mlp.up_proj.weight[3, 3] = float("nan")
    with pytest.raises(ValueError, match="blocks.1.mlp.up_proj.*NaN"):
        quant.quantize_model(bad, "gptq", 4, 16, calib)
    with pytest.raises(ValueError, match="no nn.Linear"):
        quant.quantize_model(small_lm, "rtn", 4, 16, where=lambda n, m: False)


# --------------------------------------------------------------------------- QAT


def test_ste_passes_gradients_straight_through():
    w = torch.randn(8, 16, requires_grad=True)
    y = quant.ste_fake_quant(w, bits=2, group_size=8)
    assert torch.equal(
        y.detach(),
        quant.fake_quantize(w.detach(), bits=2, symmetric=False, granularity="group", group_size=8, fp16_scale=True),
    )
    (y * torch.arange(16.0)).sum().backward()
    assert torch.equal(w.grad, torch.arange(16.0).expand(8, 16))


def test_convert_qat_computes_what_training_simulated(small_lm):
    q = quant.prepare_qat(small_lm, bits=3, group_size=16)
    assert sum(isinstance(m, quant.FakeQuantLinear) for m in q.modules()) == 14
    with torch.no_grad():
        for p in q.parameters():
            p.add_(0.01 * torch.randn_like(p))  # as if trained
    converted = quant.convert_qat(q)
    x = torch.randint(0, 97, (2, 16))
    with torch.no_grad():
        assert torch.allclose(converted(x), q(x), atol=1e-5)
    assert not any(isinstance(m, quant.FakeQuantLinear) for m in converted.modules())


# --------------------------------------------------------------------------- a real model: MiniLM


@pytest.mark.slow
def test_minilm_quantizes_through_the_same_entry_point():
    from course_lib import encoder

    bert = encoder.load_model()  # a dev dependency: its absence fails, never skips
    texts = ["a cat sat on the mat", "quantization makes models smaller", "the history of the Roman Empire"]
    ref = encoder.embed(texts, model=bert)
    q8, rep8 = quant.quantize_model(bert, "rtn", 8, None, symmetric=True, embed_bits=8)
    q4, rep4 = quant.quantize_model(bert, "rtn", 4, 128, embed_bits=4, embed_group_size=128)
    assert 3.8 < rep8.ratio < 4.0 and rep4.ratio > 6
    assert (encoder.embed(texts, model=q8) * ref).sum(1).min() > 0.99
    assert (encoder.embed(texts, model=q4) * ref).sum(1).min() > 0.8


# --------------------------------------------------------------------------- exercises


def test_chapter_05_checkers():
    from course_lib.exercises import ExerciseFailed, check_quantized_bytes, check_rtn_groupwise

    def stub(**kw):
        raise NotImplementedError

    assert check_quantized_bytes(stub).status == "not attempted yet"
    assert check_rtn_groupwise(stub).status == "not attempted yet"

    def qbytes(out_features, in_features, bits, group_size, symmetric, bias):
        groups = 1 if group_size is None else in_features // group_size
        per_row = math.ceil(in_features * bits / 8) + groups * (2 + (0 if symmetric else 1))
        return out_features * per_row + (4 * out_features if bias else 0)

    assert check_quantized_bytes(qbytes).passed
    with pytest.raises(ExerciseFailed):
        check_quantized_bytes(lambda **kw: qbytes(**kw) - 1)

    def rtn(w, bits, group_size):
        return quant.fake_quantize(w, bits=bits, symmetric=False, granularity="group", group_size=group_size)

    assert check_rtn_groupwise(rtn).passed
    with pytest.raises(ExerciseFailed):
        check_rtn_groupwise(lambda w, bits, group_size: rtn(w, bits, group_size) * 1.01)
