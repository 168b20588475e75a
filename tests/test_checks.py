"""course_lib.checks: each check accepts exactly what it promises, returns it, and refuses the
rest with the documented exception and a message naming the argument, the allowed range and
what was given."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib.checks import (
    ArgumentTypeError,
    check_bool,
    check_callable,
    check_choice,
    check_float,
    check_int,
    check_keys,
    check_probability,
    check_tensor,
    check_type,
    show,
)

bounds = st.one_of(st.none(), st.integers(-50, 50))


@settings(max_examples=200, deadline=None)
@given(value=st.integers(-100, 100), lo=bounds, hi=bounds)
def test_check_int_accepts_exactly_the_range(value, lo, hi):
    inside = (lo is None or value >= lo) and (hi is None or value <= hi)
    if inside:
        assert check_int("k", value, min=lo, max=hi) == value
    else:
        with pytest.raises(ValueError) as info:
            check_int("k", value, min=lo, max=hi)
        assert not isinstance(info.value, TypeError)  # a range error is a plain ValueError
        msg = str(info.value)
        assert msg.startswith("k must be an int") and msg.endswith(f"got {value}")
        for b in (lo, hi):
            if b is not None:
                assert str(b) in msg


def test_check_int_messages():
    with pytest.raises(ValueError, match=r"^k must be an int in \[1, 8\], got 0$"):
        check_int("k", 0, min=1, max=8)
    with pytest.raises(ValueError, match=r"^n must be an int >= 1, got -3$"):
        check_int("n", -3, min=1)
    with pytest.raises(ValueError, match=r"^n must be an int <= 65536, got 70000$"):
        check_int("n", 70000, max=65536)
    with pytest.raises(ValueError, match=r"^top_k must be None or an int >= 1, got 0$"):
        check_int("top_k", 0, min=1, allow_none=True)


@pytest.mark.parametrize("bad", [True, False, 2.0, 2.5, "3", None, [1], float("nan"), torch.tensor(3)])
def test_check_int_refuses_other_types_with_an_error_that_is_both_kinds(bad):
    with pytest.raises(ArgumentTypeError, match=r"^k must be an int >= 1, got ") as info:
        check_int("k", bad, min=1)
    assert isinstance(info.value, TypeError) and isinstance(info.value, ValueError)


def test_check_int_numpy_ints_and_none():
    out = check_int("k", np.int64(4), min=1)
    assert out == 4 and type(out) is int
    assert check_int("k", None, allow_none=True) is None


@settings(max_examples=200, deadline=None)
@given(
    value=st.floats(allow_nan=True, allow_infinity=True),
    lo=st.one_of(st.none(), st.floats(-10, 10)),
    hi=st.one_of(st.none(), st.floats(-10, 10)),
    lo_in=st.booleans(),
    hi_in=st.booleans(),
    finite=st.booleans(),
)
def test_check_float_accepts_exactly_the_range(value, lo, hi, lo_in, hi_in, finite):
    ok = not math.isnan(value) and not (finite and math.isinf(value))
    if lo is not None:
        ok = ok and (value > lo or (lo_in and value == lo))
    if hi is not None:
        ok = ok and (value < hi or (hi_in and value == hi))
    kw = dict(min=lo, max=hi, min_inclusive=lo_in, max_inclusive=hi_in, finite=finite)
    if ok:
        assert check_float("x", value, **kw) is value
    else:
        with pytest.raises(ValueError, match=r"^x must be a (finite )?number") as info:
            check_float("x", value, **kw)
        assert not isinstance(info.value, TypeError)


def test_check_float_messages_and_types():
    with pytest.raises(ValueError, match=r"^lr must be a finite number > 0, got 0$"):
        check_float("lr", 0, min=0, min_inclusive=False)
    with pytest.raises(ValueError, match=r"^lr must be a finite number > 0, got nan$"):
        check_float("lr", float("nan"), min=0, min_inclusive=False)
    with pytest.raises(ValueError, match=r"^noise must be a finite number in \[0, 1\), got 1$"):
        check_float("noise", 1, min=0, max=1, max_inclusive=False)
    with pytest.raises(ValueError, match=r"must be a number >= 0, got -inf"):
        check_float("x", float("-inf"), min=0, finite=False)
    assert check_float("x", float("inf"), min=0, finite=False) == float("inf")
    assert check_float("x", 3, min=0) == 3 and type(check_float("x", 3)) is int  # returned as given
    assert check_float("x", None, allow_none=True) is None
    for bad in (True, "0.1", None, [0.1], torch.tensor(0.1), 1j):
        with pytest.raises(ArgumentTypeError, match=r"^x must be a finite number"):
            check_float("x", bad)


@settings(max_examples=100, deadline=None)
@given(p=st.floats(allow_nan=True, allow_infinity=True))
def test_check_probability(p):
    if 0 <= p <= 1:
        assert check_probability("p", p) == p
    else:
        with pytest.raises(ValueError, match=r"^p must be a finite number in \[0, 1\], got "):
            check_probability("p", p)


def test_check_bool():
    assert check_bool("causal", True) is True and check_bool("causal", False) is False
    assert check_bool("normalize", None, allow_none=True) is None
    for bad in (1, 0, "yes", None, np.bool_(True)):
        with pytest.raises(ArgumentTypeError, match=r"^causal must be a bool, got "):
            check_bool("causal", bad)
    with pytest.raises(TypeError, match=r"^normalize must be None or a bool, got 'no'$"):
        check_bool("normalize", "no", allow_none=True)


def test_check_choice():
    assert check_choice("kind", "b", ("a", "b")) == "b"
    assert check_choice("kind", "x", {"x": 1, "y": 2}) == "x"  # a dict's keys
    with pytest.raises(ValueError, match=r"^kind must be one of \['a', 'b'\], got 'c'$"):
        check_choice("kind", "c", ("a", "b"))
    with pytest.raises(ValueError, match=r"got \['a'\]"):  # unhashable: a clear error, not a TypeError from `in`
        check_choice("kind", ["a"], {"a": 1})
    with pytest.raises(ValueError, match="kind must be one of"):
        check_choice("kind", torch.tensor([1, 2]), (1, 2))


def test_check_type_and_callable():
    assert check_type("n", 3, int) == 3
    with pytest.raises(TypeError, match=r"^config must be a ModelConfig, got dict$"):
        check_type("config", {}, (list,), what="a ModelConfig")
    with pytest.raises(TypeError, match=r"^x must be a int or float, got str$"):
        check_type("x", "1", (int, float))
    assert check_callable("fn", len) is len
    with pytest.raises(TypeError, match=r"^fn must be callable, got int$"):
        check_callable("fn", 3)


def test_check_keys():
    assert check_keys("opts", {"a": 1}, ["a", "b"]) == {"a": 1}
    with pytest.raises(
        ValueError, match=r"^unknown keys in mlp_options: \['n_experst'\]; allowed: \['n_experts', 'top_k'\]$"
    ):
        check_keys("mlp_options", {"n_experst": 4}, ("top_k", "n_experts"))
    with pytest.raises(ValueError, match=r"opts is missing required keys \['b'\]"):
        check_keys("opts", {"a": 1}, ["a", "b"], required=["b"])
    with pytest.raises(TypeError, match=r"^opts must be a dict, got list$"):
        check_keys("opts", [("a", 1)], ["a"])


def test_check_tensor():
    x = torch.zeros(2, 3, 4)
    assert check_tensor("x", x, rank=3, shape=(2, None, 4), dtype=torch.float32, floating=True, finite=True) is x
    assert check_tensor("x", x, rank=(2, 3)) is x
    with pytest.raises(ArgumentTypeError, match=r"^x must be a torch.Tensor, got list$"):
        check_tensor("x", [1, 2])
    with pytest.raises(
        ValueError, match=r"^q must be a 4-D \(batch, heads, seq_len, head_dim\) tensor, got shape \(2, 3, 4\)$"
    ):
        check_tensor("q", x, dims=("batch", "heads", "seq_len", "head_dim"))
    with pytest.raises(ValueError, match=r"^x must be a 1-D or 2-D tensor, got shape \(2, 3, 4\)$"):
        check_tensor("x", x, rank=(1, 2))
    with pytest.raises(ValueError, match=r"^x must have shape \(2, 5, \*\), got \(2, 3, 4\)$"):
        check_tensor("x", x, shape=(2, 5, None))
    with pytest.raises(ArgumentTypeError, match=r"^mask must have dtype torch.bool, got torch.float32$"):
        check_tensor("mask", x, dtype=torch.bool)
    with pytest.raises(ArgumentTypeError, match="idx must have an integer or bool dtype"):
        check_tensor("idx", x, floating=False)
    with pytest.raises(ArgumentTypeError, match="x must have a floating-point dtype, got torch.int64"):
        check_tensor("x", torch.zeros(2, dtype=torch.long), floating=True)
    y = x.clone()
    y[0, 0, 0], y[1, 2, 3] = float("nan"), float("inf")
    with pytest.raises(ValueError, match=r"^x must be finite, got 2 NaN or inf entries$"):
        check_tensor("x", y, finite=True)
    assert check_tensor("x", y) is y  # finiteness only when asked


def test_show_cuts_long_values():
    assert show("a") == "'a'"
    long = show(list(range(1000)))
    assert len(long) == 80 and long.endswith("...")
