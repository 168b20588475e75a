"""Chapter 03's checkers: a right answer passes, wrong ones fail with a message, stubs read as not attempted."""

from __future__ import annotations

import math

import pytest
import torch

from course_lib.exercises import ExerciseFailed, check_dilated_cache, check_reach, check_window_time_prediction

# --------------------------------------------------------------------------- the dilated window cache


class _Ring:
    """The reference solution: a ring of (w - 1)·d + 1 slots, reading every d-th position."""

    def __init__(self, batch_size, n_kv_heads, head_dim, window, dilation, *, slots=None, step=None):
        slots = (window - 1) * dilation + 1 if slots is None else slots
        self.k = torch.zeros(batch_size, n_kv_heads, slots, head_dim)
        self.v = torch.zeros(batch_size, n_kv_heads, slots, head_dim)
        self.slot_pos = torch.full((slots,), -1)
        self.dilation = dilation if step is None else step
        self.pos = 0

    def attend(self, q, k, v):
        slot = self.pos % self.k.shape[2]
        self.k[:, :, slot], self.v[:, :, slot] = k[:, :, 0], v[:, :, 0]
        self.slot_pos[slot] = self.pos
        allowed = (self.slot_pos >= 0) & ((self.pos - self.slot_pos) % self.dilation == 0)
        self.pos += 1
        rep = q.shape[1] // self.k.shape[1]
        keys, values = self.k.repeat_interleave(rep, 1), self.v.repeat_interleave(rep, 1)
        scores = q @ keys.transpose(-2, -1) / math.sqrt(q.shape[-1])
        return scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ values


def test_check_dilated_cache_passes_the_ring():
    assert check_dilated_cache(_Ring).passed


def test_check_dilated_cache_rejects_a_plain_window():
    class PlainWindow(_Ring):  # forgets the dilation: reads every position in the ring
        def __init__(self, batch_size, n_kv_heads, head_dim, window, dilation):
            super().__init__(batch_size, n_kv_heads, head_dim, window, dilation, step=1)

    with pytest.raises(ExerciseFailed, match="dilated window cache: case"):
        check_dilated_cache(PlainWindow)


def test_check_dilated_cache_rejects_a_ring_too_small():
    class TooSmall(_Ring):  # w slots: the keys (w-1)·d back were overwritten long ago
        def __init__(self, batch_size, n_kv_heads, head_dim, window, dilation):
            super().__init__(batch_size, n_kv_heads, head_dim, window, dilation, slots=window)

    with pytest.raises(ExerciseFailed, match="dilated window cache"):
        check_dilated_cache(TooSmall)


def test_check_dilated_cache_rejects_a_cache_that_grows():
    class KeepsEverything:  # right outputs, but memory grows with every token
        def __init__(self, batch_size, n_kv_heads, head_dim, window, dilation):
            self.ks, self.vs, self.window, self.dilation = [], [], window, dilation

        def attend(self, q, k, v):
            from course_lib.attention import dense_attention, dilated_window_mask

            self.ks.append(k)
            self.vs.append(v)
            kk, vv = torch.cat(self.ks, 2), torch.cat(self.vs, 2)
            t = kk.shape[2]
            return dense_attention(q, kk, vv, dilated_window_mask(t, self.window, self.dilation)[-1:])

    with pytest.raises(ExerciseFailed, match="grow|needs keys and values of at most"):
        check_dilated_cache(KeepsEverything)


def test_check_dilated_cache_stub_is_not_attempted():
    class Stub:
        def __init__(self, batch_size, n_kv_heads, head_dim, window, dilation):
            raise NotImplementedError

        def attend(self, q, k, v):
            raise NotImplementedError

    assert check_dilated_cache(Stub).status == "not attempted yet"


def test_check_dilated_cache_missing_return_says_so():
    class NoReturn(_Ring):
        def attend(self, q, k, v):
            super().attend(q, k, v)

    with pytest.raises(ExerciseFailed, match="returned None"):
        check_dilated_cache(NoReturn)


def test_check_dilated_cache_shows_the_learners_error():
    class Broken(_Ring):
        def attend(self, q, k, v):
            return q @ self.k  # wrong shapes: matmul fails

    with pytest.raises(ExerciseFailed, match="RuntimeError"):
        check_dilated_cache(Broken)


# --------------------------------------------------------------------------- reach of stacked dilated windows


def _reach(n_layers, window, dilation, seq_len):
    return min(n_layers * (window - 1), (seq_len - 1) // dilation) + 1


def test_check_reach_passes_the_formula():
    assert check_reach(_reach).passed


def test_check_reach_rejects_ignoring_the_sequence_start():
    with pytest.raises(ExerciseFailed, match="receptive field"):
        check_reach(lambda n_layers, window, dilation, seq_len: n_layers * (window - 1) + 1)


def test_check_reach_rejects_counting_distance_not_positions():
    with pytest.raises(ExerciseFailed):
        check_reach(lambda n_layers, window, dilation, seq_len: min(n_layers * (window - 1) * dilation + 1, seq_len))


def test_check_reach_stub_is_not_attempted():
    def stub(n_layers, window, dilation, seq_len):
        raise NotImplementedError

    assert check_reach(stub).status == "not attempted yet"


def test_check_reach_missing_return_says_so():
    def no_return(n_layers, window, dilation, seq_len):
        _reach(n_layers, window, dilation, seq_len)

    with pytest.raises(ExerciseFailed, match="returned None"):
        check_reach(no_return)


# --------------------------------------------------------------------------- the prediction


def test_check_window_time_prediction_passes_any_positive_prediction():
    result = check_window_time_prediction(lambda: 3.0, 1.9)
    assert result.passed and result.ratio == pytest.approx(1.9 / 3.0)
    assert check_window_time_prediction(30.0, 1.9).passed  # far off still passes: machines differ


def test_check_window_time_prediction_rejects_a_negative_prediction():
    with pytest.raises(ExerciseFailed, match="positive"):
        check_window_time_prediction(-3.0, 1.9)


def test_check_window_time_prediction_rejects_a_non_number():
    with pytest.raises(ExerciseFailed, match="number"):
        check_window_time_prediction(lambda: "three", 1.9)


def test_check_window_time_prediction_stub_is_not_attempted():
    def stub():
        raise NotImplementedError

    assert check_window_time_prediction(stub, 1.9).status == "not attempted yet"


def test_check_window_time_prediction_missing_return_says_so():
    def no_return():
        3.0 / 1.0  # noqa: B018 — the learner forgot `return`

    with pytest.raises(ExerciseFailed, match="returned None"):
        check_window_time_prediction(no_return, 1.9)
