"""Argument checks shared by every module: one line per argument, one wording.

Every public function of ``course_lib`` validates what it is given, so a learner's mistake
fails at the call that made it, with a message that names the argument, says what is
allowed and shows what was given::

    k = check_int("k", k, min=1, max=n)          # ValueError: k must be an int in [1, 8], got 0
    lr = check_float("lr", lr, min=0, min_inclusive=False)  # ... must be a finite number > 0, got nan
    p = check_probability("p", p)                # ... must be a finite number in [0, 1], got 1.5
    kind = check_choice("kind", kind, KINDS)     # ... must be one of ['a', 'b'], got 'c'
    causal = check_bool("causal", causal)        # ... must be a bool, got 'yes'
    q = check_tensor("q", q, dims=("batch", "heads", "seq_len", "head_dim"), floating=True)

Each check returns the value, so checking and assigning is one line.

Which exception:

* a value of the right type outside the allowed range or set is a ``ValueError``;
* a value of the wrong type (a str for an int, a float tensor for a bool mask) is an
  :class:`ArgumentTypeError`, which is a ``TypeError`` *and* a ``ValueError``: the course's
  older checks raised ``ValueError`` for "must be an int" and code that catches that keeps
  working (numpy's ``AxisError`` is a ``ValueError`` and an ``IndexError`` the same way).

``bool`` is not accepted as an int or a number (``True`` is a Python int, but passing it as
a count or a learning rate is always a mistake).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong type: a ``TypeError`` that is also a ``ValueError``."""


def show(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, for an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _num(x) -> str:
    return str(x) if isinstance(x, numbers.Integral) else f"{x:g}"


def _bounds(min, max, min_inclusive: bool, max_inclusive: bool) -> str:
    """'in [1, 8]', '>= 1', '< 1', ... ('' when unbounded)."""
    if min is not None and max is not None:
        return f"in {'[' if min_inclusive else '('}{_num(min)}, {_num(max)}{']' if max_inclusive else ')'}"
    if min is not None:
        return f"{'>=' if min_inclusive else '>'} {_num(min)}"
    if max is not None:
        return f"{'<=' if max_inclusive else '<'} {_num(max)}"
    return ""


def _expected(what: str, bounds: str, allow_none: bool) -> str:
    return ("None or " if allow_none else "") + what + (f" {bounds}" if bounds else "")


def check_int(name: str, value, *, min: int | None = None, max: int | None = None, allow_none: bool = False):
    """``value`` as an int in [min, max] (either bound optional); None passes when ``allow_none``.

    Any integral number (Python or numpy) but not a bool; returned as a Python int.
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ArgumentTypeError(
            f"{name} must be {_expected('an int', _bounds(min, max, True, True), allow_none)}, got {show(value)}"
        )
    value = int(value)
    expected = _expected("an int", _bounds(min, max, True, True), allow_none)
    if (min is not None and value < min) or (max is not None and value > max):
        raise ValueError(f"{name} must be {expected}, got {value}")
    return value


def check_float(
    name: str,
    value,
    *,
    min: float | None = None,
    max: float | None = None,
    min_inclusive: bool = True,
    max_inclusive: bool = True,
    finite: bool = True,
    allow_none: bool = False,
):
    """``value`` as a real number within the bounds; NaN and ±inf refused unless ``finite=False``.

    Ints are accepted (``lr=1`` is a number); bools are not. The value is returned as given
    (an int stays an int, so nothing downstream changes).
    """
    what = "a finite number" if finite else "a number"
    expected = _expected(what, _bounds(min, max, min_inclusive, max_inclusive), allow_none)
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ArgumentTypeError(f"{name} must be {expected}, got {show(value)}")
    x = float(value)
    if math.isnan(x) or (finite and math.isinf(x)):
        raise ValueError(f"{name} must be {expected}, got {show(value)}")
    if min is not None and (x < min or (x == min and not min_inclusive)):
        raise ValueError(f"{name} must be {expected}, got {show(value)}")
    if max is not None and (x > max or (x == max and not max_inclusive)):
        raise ValueError(f"{name} must be {expected}, got {show(value)}")
    return value


def check_probability(name: str, value, *, allow_none: bool = False):
    """A finite number in [0, 1] (a probability or a fraction)."""
    return check_float(name, value, min=0, max=1, allow_none=allow_none)


def check_bool(name: str, value, *, allow_none: bool = False):
    """``value`` if it is a bool (or None when ``allow_none``), else an :class:`ArgumentTypeError`."""
    if (value is None and allow_none) or isinstance(value, bool):
        return value
    raise ArgumentTypeError(f"{name} must be {_expected('a bool', '', allow_none)}, got {show(value)}")


def check_choice(name: str, value, choices: Iterable):
    """``value`` if it is one of ``choices`` (a list, a tuple, a dict's keys...), else a ValueError."""
    choices = list(choices)
    try:
        ok = value in choices
    except (TypeError, RuntimeError):  # unhashable against dict keys; a tensor's `==` is elementwise
        ok = False
    if not ok:
        raise ValueError(f"{name} must be one of {choices}, got {show(value)}")
    return value


def check_type(name: str, value, types: type | tuple[type, ...], *, what: str | None = None):
    """``value`` if ``isinstance(value, types)``, else a TypeError naming the expected type."""
    if not isinstance(value, types):
        if what is None:
            names = [t.__name__ for t in (types if isinstance(types, tuple) else (types,))]
            what = "a " + " or ".join(names)
        raise TypeError(f"{name} must be {what}, got {type(value).__name__}")
    return value


def check_callable(name: str, value) -> Callable:
    """``value`` if it can be called (pass the function itself, not its result)."""
    if not callable(value):
        raise TypeError(f"{name} must be callable, got {type(value).__name__}")
    return value


def check_keys(name: str, mapping, allowed: Collection[str], *, required: Iterable[str] = ()) -> dict:
    """A dict with keys among ``allowed`` and every ``required`` key present; returns a copy.

    The error lists the unknown keys and the allowed ones, so a typo such as ``n_experst``
    shows what was meant.
    """
    if not isinstance(mapping, Mapping):
        raise ArgumentTypeError(f"{name} must be a dict, got {type(mapping).__name__}")
    unknown = sorted(set(mapping) - set(allowed), key=str)
    if unknown:
        raise ValueError(f"unknown keys in {name}: {unknown}; allowed: {sorted(allowed)}")
    missing = [k for k in required if k not in mapping]
    if missing:
        raise ValueError(f"{name} is missing required keys {missing}")
    return dict(mapping)


def check_tensor(
    name: str,
    value,
    *,
    rank: int | tuple[int, ...] | None = None,
    dims: tuple[str, ...] | None = None,
    shape: tuple[int | None, ...] | None = None,
    dtype=None,
    floating: bool | None = None,
    finite: bool = False,
):
    """``value`` if it is a ``torch.Tensor`` of the given rank, shape and dtype.

    ``rank``: the number of dimensions (or a tuple of allowed ones); ``dims`` names them,
    e.g. ``("batch", "seq_len")``, which sets the rank and goes into the message; ``shape``:
    the exact shape, ``None`` for a free dimension; ``dtype``: one dtype or a tuple;
    ``floating``: True for a floating-point dtype, False for an integer or bool one;
    ``finite``: refuse NaN and ±inf. Wrong type or dtype: :class:`ArgumentTypeError`;
    wrong rank, shape or values: ``ValueError``.
    """
    import torch

    if not torch.is_tensor(value):
        raise ArgumentTypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if dims is not None:
        rank = len(dims)
    if shape is not None:
        rank = len(shape)
    if rank is not None:
        ranks = rank if isinstance(rank, tuple) else (rank,)
        if value.dim() not in ranks:
            described = " or ".join(f"{r}-D" for r in ranks) + (f" ({', '.join(dims)})" if dims else "")
            raise ValueError(f"{name} must be a {described} tensor, got shape {tuple(value.shape)}")
    if shape is not None and any(s is not None and s != v for s, v in zip(shape, value.shape)):
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name} must have shape {want}, got {tuple(value.shape)}")
    if dtype is not None:
        dtypes = dtype if isinstance(dtype, tuple) else (dtype,)
        if value.dtype not in dtypes:
            want = " or ".join(str(d) for d in dtypes)
            raise ArgumentTypeError(f"{name} must have dtype {want}, got {value.dtype}")
    if floating is not None and value.is_floating_point() != floating:
        kind = "a floating-point" if floating else "an integer or bool"
        raise ArgumentTypeError(f"{name} must have {kind} dtype, got {value.dtype}")
    if finite and value.is_floating_point():
        bad = int((~torch.isfinite(value)).sum())
        if bad:
            raise ValueError(f"{name} must be finite, got {bad} NaN or inf entries")
    return value
