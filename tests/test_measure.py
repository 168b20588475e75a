import math
import os
import time

import pytest
import torch

from course_lib import measure
from course_lib.model import ModelConfig, TinyLM


def test_interleaved_orders_and_counts():
    calls = []
    variants = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    t = measure.interleaved(variants, warmup=1, repeats=4, min_time=0, probe=False)
    assert len(t["a"].samples) == len(t["b"].samples) == 4 == t.rounds
    assert calls[2:] == ["a", "b", "b", "a", "a", "b", "b", "a"]  # rotating start: drift is shared


def test_min_time_adds_rounds_for_a_fast_function_only():
    # A no-op takes microseconds: 0.5 s of rounds is far more than `repeats` (capped at MAX_ROUNDS).
    fast = measure.interleaved({"f": lambda: None}, warmup=1, repeats=3, min_time=0.5, probe=False)
    assert 3 < fast.rounds <= measure.MAX_ROUNDS and len(fast["f"].samples) == fast.rounds
    # A 20 ms sleep fills 0.05 s in ceil(0.05 / >=0.02) <= 3 rounds: `repeats` decides.
    slow = measure.interleaved({"s": lambda: time.sleep(0.02)}, warmup=1, repeats=3, min_time=0.05, probe=False)
    assert slow.rounds == 3 and len(slow["s"].samples) == 3


def test_load_fields_and_note():
    t = measure.interleaved({"f": lambda: None}, warmup=1, repeats=5, min_time=0)
    assert t.threads == torch.get_num_threads() and t.rounds == 5
    assert t.load >= 1.0  # the probe's median over its best: never faster than its best
    if t.others is not None:  # Linux: other processes' cores decide
        assert t.others >= 0 and t.noisy == (t.others > measure.others_threshold(t.threads) or t.starved)
    assert t.note().startswith(f"median of {t.rounds} interleaved rounds, {t.threads} thread")
    quiet = measure.Timings({"f": measure.Timing([1.0])})
    quiet.rounds, quiet.threads, quiet.others = 7, 2, 0.1
    assert not quiet.noisy and quiet.note() == "median of 7 interleaved rounds, 2 threads"
    busy = measure.Timings({"f": measure.Timing([1.0])})
    busy.rounds, busy.threads, busy.others = 7, os.cpu_count(), 1.2
    assert busy.noisy and "1.2 CPU cores" in busy.note()
    probe_only = measure.Timings({"f": measure.Timing([1.0])})  # off Linux: the probe decides
    probe_only.rounds, probe_only.threads, probe_only.load = 7, 1, 3.0
    assert probe_only.noisy and "busy" in probe_only.note() and "×3.0" in probe_only.note()


def test_a_starved_run_is_noisy():
    # one thread beside two busy processes on two cores: the others' ~1.3 cores stay under the
    # threshold (1.5), but this process got only ~0.67 of a core
    t = measure.Timings({"f": measure.Timing([1.0])})
    t.rounds, t.threads, t.others, t.own = 7, 1, 1.33, 0.67
    assert t.starved and t.noisy and "0.67 of a core" in t.note() and "1.3 CPU cores" in t.note()
    t.own = 1.0
    assert not t.starved and t.noisy == (1.33 > measure.others_threshold(1))
    t.own = None  # unknown (off Linux, or a run too short for clock ticks): not judged
    assert not t.starved
    assert measure._own_cores((0, 0), (0, 5), measure.MIN_OWN_SECONDS / 2) is None
    assert measure._own_cores((0, 0), (0, 50), 1.0) == pytest.approx(50 / measure._CLK_TCK)


def test_cpu_ticks_count_the_children_this_process_waited_for():
    import subprocess
    import sys

    before = measure._cpu_ticks()
    if before is None:
        pytest.skip("no /proc here")
    spin = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass"
    subprocess.run([sys.executable, "-c", spin], check=True)
    after = measure._cpu_ticks()
    assert (after[1] - before[1]) / measure._CLK_TCK >= 0.25  # the child's 0.3 s of CPU counts as ours


def test_others_threshold_leaves_spare_cores():
    n = os.cpu_count()
    assert measure.others_threshold(n) == 0.5 and measure.others_threshold(max(1, n - 2)) >= 0.5


def _fake_busy_machine(monkeypatch):
    """/proc/stat readings in which other processes keep every core busy."""
    ticks = iter(range(0, 10**12, 10**7))
    monkeypatch.setattr(measure, "_cpu_ticks", lambda: (next(ticks), 0))


def test_no_probe_and_no_proc_means_no_reading(monkeypatch):
    monkeypatch.setattr(measure, "_cpu_ticks", lambda: None)
    t = measure.interleaved({"f": lambda: None}, warmup=0, repeats=2, min_time=0, probe=False)
    assert t.load == 1.0 and t.others is None and not t.noisy and not t.remeasured


def test_a_noisy_run_is_measured_again(monkeypatch):
    _fake_busy_machine(monkeypatch)
    calls = []
    t = measure.interleaved({"f": lambda: calls.append(1)}, warmup=1, repeats=3, min_time=0)
    assert t.noisy and t.remeasured
    assert len(calls) == 1 + 3 + 3  # warm-up, the first run, the second run (no second warm-up)
    assert "CPU cores" in t.note()
    once = measure.interleaved({"f": lambda: None}, warmup=1, repeats=3, min_time=0, remeasure=False)
    assert once.noisy and not once.remeasured


def test_compare_three_ways():
    base = measure.Timing([1.0, 1.0, 1.0, 1.0, 1.0])
    t = measure.Timings(
        {
            "base": base,
            "half": measure.Timing([0.5] * 5),
            "double": measure.Timing([2.0] * 5),
            "close": measure.Timing([0.97] * 5),
        }
    )
    fast = measure.compare(t, "half", "base")
    assert fast.speedup == pytest.approx(2.0) and fast.word == "faster" and fast.phrase == "2.0× faster than base"
    slow = measure.compare(t, "double", "base")
    assert slow.word == "slower" and slow.phrase == "2.0× slower than base"
    close = measure.compare(t, "close", "base")
    assert close.word == "within noise" and close.phrase.startswith("as fast as base (×1.03")
    assert close.noise == measure.MIN_NOISE  # zero spread: the minimum band
    # A disturbed run earns a band of at least 25 %: 1.2x is then within noise.
    t["x"] = measure.Timing([1 / 1.2] * 5)
    assert measure.compare(t, "x", "base").word == "faster"
    t.load = 2 * measure.NOISY_LOAD
    assert measure.compare(t, "x", "base").word == "within noise"
    with pytest.raises(ValueError, match=r"variant must be one of \['base', .*'x'\], got 'nope'"):
        measure.compare(t, "nope", "base")


def test_noise_band_follows_the_spread():
    wide = measure.Timing([0.5, 0.8, 1.0, 1.2, 1.5])
    assert measure.noise_band(wide) == pytest.approx(wide.spread) and wide.spread > measure.MIN_NOISE
    assert measure.noise_band(measure.Timing([1.0, 2.0])) == measure.MIN_NOISE  # spread is nan below 4 samples
    wild = measure.Timing([0.1, 0.2, 1.0, 3.0, 5.0])  # heavy load: the IQR exceeds the median
    assert wild.spread > 1 and measure.noise_band(wild) == measure.MAX_NOISE
    t = measure.Timings({"base": wild, "x": measure.Timing([1.5] * 5)})
    assert measure.compare(t, "x", "base").word == "within noise"  # a verdict, not a ValueError


def test_speed_word_and_phrase():
    assert measure.speed_word(1.5) == "faster"
    assert measure.speed_word(1 / 1.5) == "slower"
    assert measure.speed_word(1.05) == "within noise"
    assert measure.speed_word(1.05, noise=0.01) == "faster"
    assert measure.speed_word(1.5, noise=0.6) == "within noise"
    assert measure.speed_phrase(2.34, than="fp32") == "2.3× faster than fp32"
    assert measure.speed_phrase(0.25, than="fp32") == "4.0× slower than fp32"
    assert measure.speed_phrase(24.69, than="fp32") == "25× faster than fp32"
    assert measure.speed_phrase(0.97) == "as fast as the baseline (×0.97, within noise)"
    assert measure.speed_phrase(3.0) == "3.0× faster"


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), "2", None])
def test_speed_word_rejects_bad_speedups(bad):
    with pytest.raises(ValueError, match="speedup"):
        measure.speed_word(bad)
    with pytest.raises(ValueError, match="speedup"):
        measure.speed_phrase(bad)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 2, "0.1"])
def test_speed_word_rejects_bad_noise(bad):
    with pytest.raises(ValueError, match="noise"):
        measure.speed_word(1.5, noise=bad)


def test_growth_words():
    n = [64, 128, 256, 512, 1024]
    flat = measure.growth(n, [5.0, 5.1, 4.9, 5.0, 5.05])
    assert flat.word == "flat" and abs(flat.exponent) < 0.05
    lin = measure.growth(n, [3 * x for x in n])
    assert lin.word == "grows about linearly" and lin.exponent == pytest.approx(1.0)
    quad = measure.growth(n, [x * x + 0.0 for x in n])
    assert quad.word == "grows about quadratically" and quad.exponent == pytest.approx(2.0)
    assert measure.growth(n, [x**3 for x in n]).word == "grows like n^3.0"
    assert measure.growth(n, [1 / x for x in n]).word == "falls (like n^-1.0)"
    # The decode timings (10.5, 8.9, 8.7, 26.4 ms per token) are not "nearly flat".
    assert measure.growth([128, 256, 512, 1024], [10.5, 8.9, 8.7, 26.4]).word != "flat"
    assert measure.growth([1, 2], [1, 2], flat_below=1.5).word == "flat"


def test_growth_rejects_bad_input():
    with pytest.raises(ValueError, match="sizes and costs"):
        measure.growth([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="sizes and costs"):
        measure.growth([1], [1])
    with pytest.raises(ValueError, match=r"costs\[0\] must be a finite number > 0, got 0"):
        measure.growth([1, 2], [0, 1])
    with pytest.raises(ValueError, match=r"sizes\[1\] must be a finite number > 0, got -2"):
        measure.growth([1, -2], [1, 1])
    with pytest.raises(ValueError, match=r"costs\[1\] must be a finite number > 0, got nan"):
        measure.growth([1, 2], [1, float("nan")])
    with pytest.raises(ValueError, match="not all be equal"):
        measure.growth([4, 4, 4], [1, 2, 3])


def test_speedups_detect_a_clearly_slower_function():
    t = measure.interleaved({"fast": lambda: None, "slow": lambda: time.sleep(0.01)}, warmup=0, repeats=3)
    s = measure.speedups(t, "slow")
    assert s["slow"] == 1.0 and s["fast"] > 5


def test_setup_is_not_timed():
    t = measure.time_fn(lambda state: None, setup=lambda: time.sleep(0.02), warmup=0, repeats=3, min_time=0)
    assert t < 0.01


def test_peak_memory_sees_a_large_allocation():
    peak = measure.peak_memory(lambda: torch.ones(40_000_000))  # 160 MB
    if peak is None:
        pytest.skip("peak memory not available on this platform")
    assert 140e6 < peak < 400e6


def test_peak_memory_sees_a_small_allocation_that_reuses_freed_memory():
    # Freed memory stays resident in the C heap; without returning it to the OS first the
    # resident-set peak of a later, smaller allocation read 0 (a small model's generate()).
    for _ in range(3):
        torch.ones(2_000_000).add_(1)  # 8 MB allocated and freed: the heap keeps it
    peak = measure.peak_memory(lambda: torch.ones(500_000) + 1)  # two 2 MB tensors alive at once
    if peak is None:
        pytest.skip("peak memory not available on this platform")
    if measure._LIBC.get("trim") is None:
        pytest.skip("no malloc_trim (not glibc): freed heap memory cannot be handed back")
    assert 3.5e6 < peak < 40e6


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
    assert measure.threads_phrase(torch.get_num_threads()) in r.settings_text()  # the caption names the thread count
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
    for bad in (-1, 61, "0.2", True):
        with pytest.raises(ValueError, match="min_time"):
            measure.interleaved({"a": lambda: None}, min_time=bad)
    with pytest.raises(ValueError, match="baseline"):
        measure.speedups({"a": measure.Timing([1.0])}, "b")
    m = TinyLM(ModelConfig(vocab_size=97, d_model=32, n_layers=1, n_heads=4, max_seq_len=16))
    with pytest.raises(ValueError, match="baseline"):
        measure.report_card({"m": m}, baseline="x")
    with pytest.raises(TypeError, match="TinyLM-like"):
        measure.report_card({"m": torch.nn.Linear(2, 2)})
    with pytest.raises(ValueError, match="max_seq_len"):
        measure.decode_fn(m, prompt_len=10, new_tokens=10)


def test_num_threads_sets_and_restores_the_count_even_when_the_block_raises():
    before = torch.get_num_threads()
    with measure.num_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError, match="boom"), measure.num_threads(1):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before
    with measure.num_threads(None):  # None: PyTorch's setting, untouched
        assert torch.get_num_threads() == before
    for bad, err in ((0, ValueError), (1.5, TypeError)):
        with pytest.raises(err, match="n"), measure.num_threads(bad):
            pass


def test_threads_phrase_counts_threads():
    assert measure.threads_phrase(1) == "1 thread" and measure.threads_phrase(2) == "2 threads"
