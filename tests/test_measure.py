import math
import time

import pytest
import torch

from course_lib import measure
from course_lib.model import ModelConfig, TinyLM


def test_interleaved_orders_and_counts():
    calls = []
    t = measure.interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, warmup=1, repeats=4)
    assert len(t["a"].samples) == len(t["b"].samples) == 4
    assert calls[2:] == ["a", "b", "b", "a", "a", "b", "b", "a"]  # rotating start: drift is shared


def test_speedups_detect_a_clearly_slower_function():
    t = measure.interleaved({"fast": lambda: None, "slow": lambda: time.sleep(0.01)}, warmup=0, repeats=3)
    s = measure.speedups(t, "slow")
    assert s["slow"] == 1.0 and s["fast"] > 5


def test_setup_is_not_timed():
    t = measure.time_fn(lambda state: None, setup=lambda: time.sleep(0.02), warmup=0, repeats=3)
    assert t < 0.01


def test_peak_memory_sees_a_large_allocation():
    peak = measure.peak_memory(lambda: torch.ones(40_000_000))  # 160 MB
    if peak is None:
        pytest.skip("peak memory not available on this platform")
    assert 140e6 < peak < 400e6


def test_weight_bytes_counts_shared_once_and_custom():
    m = TinyLM(ModelConfig(vocab_size=97, d_model=32, n_layers=1, n_heads=4, max_seq_len=16))
    assert measure.weight_bytes(m) == 4 * m.num_params()

    class Packed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("q", torch.zeros(100, dtype=torch.uint8))

        def weight_bytes(self):
            return 7

    m.blocks[0].mlp.down_proj = Packed()
    expected = 4 * (m.num_params()) + 7
    assert measure.weight_bytes(m) == expected


def test_report_card_fields_and_ratios():
    torch.manual_seed(0)
    a = TinyLM(ModelConfig(vocab_size=97, d_model=32, n_layers=1, n_heads=4, max_seq_len=64))
    b = TinyLM(ModelConfig(vocab_size=97, d_model=64, n_layers=2, n_heads=4, max_seq_len=64))
    tokens = torch.randint(0, 97, (3000,)).numpy()
    r = measure.report_card(
        {"a": a, "b": b},
        val_tokens=tokens,
        eval_seq_len=16,
        eval_batches=2,
        prompt_len=8,
        new_tokens=4,
        warmup=1,
        repeats=2,
    )
    ca = r.cards["a"]
    assert ca["params"] == a.num_params() and ca["weight_mb"] == pytest.approx(4 * a.num_params() / 1e6)
    assert 50 < ca["val_ppl"] < 200  # an untrained model is near uniform over 97 tokens
    assert r.ratio("b", "params") == pytest.approx(b.num_params() / a.num_params())
    assert r.ratio("a", "params") == 1.0
    assert all(math.isfinite(c["decode_tok_s"]) and c["decode_tok_s"] > 0 for c in r.cards.values())
    html = r._repr_html_()
    assert "b ÷ a" in html and "decode tokens/s" in html
    assert set(r.to_dict()) == {"baseline", "settings", "cards"}


def test_bad_input():
    with pytest.raises(ValueError, match="repeats"):
        measure.interleaved({"a": lambda: None}, repeats=0)
    with pytest.raises(ValueError, match="warmup"):
        measure.interleaved({"a": lambda: None}, warmup=-1)
    with pytest.raises(TypeError, match="callable"):
        measure.interleaved({"a": 3})
    with pytest.raises(ValueError, match="empty"):
        measure.interleaved({})
    with pytest.raises(ValueError, match="baseline"):
        measure.speedups({"a": measure.Timing([1.0])}, "b")
    m = TinyLM(ModelConfig(vocab_size=97, d_model=32, n_layers=1, n_heads=4, max_seq_len=16))
    with pytest.raises(ValueError, match="baseline"):
        measure.report_card({"m": m}, baseline="x")
    with pytest.raises(TypeError, match="TinyLM-like"):
        measure.report_card({"m": torch.nn.Linear(2, 2)})
    with pytest.raises(ValueError, match="max_seq_len"):
        measure.decode_fn(m, prompt_len=10, new_tokens=10)
