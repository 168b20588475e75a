"""Checkers for the exercises at the end of each chapter: the mechanism every chapter shares.

Every exercise is a stub the reader fills in (it raises ``NotImplementedError`` until
then) and a checker that runs it against cases computed by the course's own, tested
code. A checker reports one of three things:

* ``not attempted yet`` — the stub still raises ``NotImplementedError`` (no error, so a
  notebook with untouched stubs still runs top to bottom);
* ``passed`` — every case agrees;
* an :class:`ExerciseFailed` error that says what is wrong, in the reader's terms: the case,
  and then either the reader's own exception (type, message, line), a missing ``return``,
  a wrong type, a wrong shape or dtype (named before any value is compared, so a ``(3,)``
  answer never passes for a ``(3, 1)`` one by broadcasting), or the values with their
  largest difference.

:func:`check_prediction` is the other kind of exercise: the reader predicts a measurement
from a simple model before the next cell measures it. Machines differ, so it never fails on
the value; it reports how far off the model was and why.

Every outcome is recorded in the reader's local progress file (:mod:`course_lib.progress`);
a file that cannot be written never makes a checker fail.

Solution cells (tagged ``solution``, collapsed in Lab, Colab and the book) end with
``assert check_...(fn).passed`` so CI proves every solution passes its checker.
"""

from __future__ import annotations

import html
import inspect
import math
import numbers
import re
import sysconfig
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from course_lib.checks import check_callable, check_type


class ExerciseFailed(AssertionError):
    """The reader's function disagrees with the reference on a case (the message says how)."""


@dataclass
class CheckResult:
    """What a checker found. ``passed`` is what a solution cell asserts.

    For a prediction exercise (:func:`check_prediction`) ``predicted``, ``measured``,
    ``unit``, ``ratio`` (measured / predicted), ``word`` and ``explain`` are filled in.
    """

    exercise: str
    status: str  # "passed" | "not attempted yet"
    cases: int = 0
    predicted: float | None = None
    measured: float | None = None
    unit: str = ""
    ratio: float | None = None
    word: str = ""
    explain: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def is_prediction(self) -> bool:
        return self.ratio is not None

    def __repr__(self) -> str:
        mark = "✓" if self.passed else "…"
        if not self.passed:
            todo = "write your prediction above" if self.unit else "fill in the stub above"
            return f"{mark} {self.exercise}: {self.status} — {todo}, then run this cell again"
        if self.is_prediction:
            return (
                f"{mark} {self.exercise}: you predicted {_num(self.predicted)} {self.unit}, this machine measured "
                f"{_num(self.measured)} {self.unit}: measured / predicted = {_num(self.ratio)}× — {self.word}. "
                f"{self.explain}"
            ).rstrip()
        return f"{mark} {self.exercise}: {self.status} ({self.cases} cases)"

    def _repr_html_(self) -> str:
        colour = "#009E73" if self.passed else "#E69F00"
        if self.is_prediction:
            head = (
                f"✓ {self.exercise}: you predicted {_num(self.predicted)} {self.unit}, this machine measured "
                f"{_num(self.measured)} {self.unit}: measured / predicted = {_num(self.ratio)}× — {self.word}."
            )
            why = f'<p style="margin-top:0.2em">{html.escape(self.explain)}</p>' if self.explain else ""
            return f'<div><p style="color:{colour};font-weight:600;margin-bottom:0">{html.escape(head)}</p>{why}</div>'
        return f'<p style="color:{colour};font-weight:600">{html.escape(repr(self))}</p>'


# --------------------------------------------------------------------------- describing values


def _num(x) -> str:
    """A number for a message: ints with digit groups, floats to 4 significant digits."""
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, numbers.Integral):
        return f"{int(x):,}"
    if isinstance(x, numbers.Real):
        return f"{float(x):.4g}"
    return repr(x)


def _is_tensor(x) -> bool:
    return type(x).__module__.startswith("torch") and type(x).__name__ in ("Tensor", "Parameter")


def _is_array(x) -> bool:
    return type(x).__module__ == "numpy" and type(x).__name__ == "ndarray"


def _is_number(x) -> bool:
    return isinstance(x, numbers.Number) and not isinstance(x, (bool, complex)) and not _is_bool(x)


def _is_bool(x) -> bool:
    return isinstance(x, bool) or (type(x).__module__ == "numpy" and type(x).__name__ in ("bool", "bool_"))


def _shape(x) -> tuple:
    return tuple(int(d) for d in x.shape)


def _describe(x, limit: int = 60) -> str:
    """A short description of an argument or an answer: tensors by shape and dtype, not values."""
    if _is_tensor(x):
        return f"tensor of shape {_shape(x)}, {str(x.dtype).replace('torch.', '')}"
    if _is_array(x):
        return f"array of shape {_shape(x)}, {x.dtype}"
    if isinstance(x, (list, tuple)) and len(x) > 8:
        return f"{type(x).__name__} of {len(x)} items"
    text = repr(x)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


def _describe_case(kwargs: Mapping) -> str:
    return ", ".join(f"{k}={_describe(v, 40)}" for k, v in kwargs.items())


def _type_name(x) -> str:
    if _is_tensor(x):
        return "a torch tensor"
    if _is_array(x):
        return "a numpy array"
    if _is_bool(x):
        return "a bool"
    if _is_number(x):
        return "a number"
    if x is None:
        return "None"
    return f"a {type(x).__name__}"


# --------------------------------------------------------------------------- comparing


def _close_numbers(a: float, b: float, rel: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=rel, abs_tol=rel)


def _compare_tensors(got, expected, rel: float, where: str) -> str | None:
    import torch

    if not _is_tensor(got):
        if _is_array(got):
            return f"{where}expected a torch tensor, got a numpy array (torch.from_numpy converts it)"
        return f"{where}expected a torch tensor of shape {_shape(expected)}, got {_type_name(got)}: {_describe(got)}"
    if _shape(got) != _shape(expected):
        return (
            f"{where}shape: expected {_shape(expected)}, got {_shape(got)} "
            "(values are compared only once the shapes agree; no broadcasting)"
        )
    if got.dtype != expected.dtype:
        e, g = str(expected.dtype).replace("torch.", ""), str(got.dtype).replace("torch.", "")
        return f"{where}dtype: expected {e}, got {g} (shape {_shape(got)} is right)"
    if got.numel() == 0:
        return None
    if expected.dtype == torch.bool:
        diff = got != expected
        if bool(diff.any()):
            idx = tuple(int(i) for i in diff.nonzero()[0])
            return (
                f"{where}{int(diff.sum())} of {got.numel()} entries differ; the first at index {idx}: "
                f"got {bool(got[idx])}, expected {bool(expected[idx])}"
            )
        return None
    g = got.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    bad = ~torch.isclose(g, e, rtol=rel, atol=rel, equal_nan=True)
    if not bool(bad.any()):
        return None
    diff = (g - e).abs().nan_to_num(nan=math.inf)
    idx = tuple(int(i) for i in bad.nonzero()[0])
    return (
        f"{where}{int(bad.sum())} of {got.numel()} values differ (tolerance {rel:g}); max abs difference "
        f"{float(diff.max()):.4g}; the first at index {idx}: got {float(g[idx]):.6g}, expected {float(e[idx]):.6g}"
    )


def _compare_arrays(got, expected, rel: float, where: str) -> str | None:
    import numpy as np

    if _is_tensor(got):
        return f"{where}expected a numpy array, got a torch tensor (.numpy() converts it)"
    if not _is_array(got):
        return f"{where}expected a numpy array of shape {_shape(expected)}, got {_type_name(got)}: {_describe(got)}"
    if _shape(got) != _shape(expected):
        return (
            f"{where}shape: expected {_shape(expected)}, got {_shape(got)} "
            "(values are compared only once the shapes agree; no broadcasting)"
        )
    kinds = {"b": "bool", "i": "integer", "u": "integer", "f": "floating point", "c": "complex"}
    ke, kg = kinds.get(expected.dtype.kind, str(expected.dtype)), kinds.get(got.dtype.kind, str(got.dtype))
    if ke != kg:
        return f"{where}dtype: expected {expected.dtype} ({ke}), got {got.dtype} ({kg}) (shape {_shape(got)} is right)"
    if got.size == 0:
        return None
    if ke in ("bool", "integer") or expected.dtype.kind not in "fc":
        diff = got != expected
        if diff.any():
            idx = tuple(int(i) for i in np.argwhere(diff)[0])
            return (
                f"{where}{int(diff.sum())} of {got.size} entries differ; the first at index {idx}: "
                f"got {got[idx]!r}, expected {expected[idx]!r}"
            )
        return None
    g, e = got.astype(np.float64), expected.astype(np.float64)
    bad = ~np.isclose(g, e, rtol=rel, atol=rel, equal_nan=True)
    if not bad.any():
        return None
    diff = np.nan_to_num(np.abs(g - e), nan=np.inf)
    idx = tuple(int(i) for i in np.argwhere(bad)[0])
    return (
        f"{where}{int(bad.sum())} of {got.size} values differ (tolerance {rel:g}); max abs difference "
        f"{float(diff.max()):.4g}; the first at index {idx}: got {float(g[idx]):.6g}, expected {float(e[idx]):.6g}"
    )


def _scalar(x):
    """A 0-d tensor or array as a Python number (so ``torch.tensor(3.0)`` answers a number); else ``x``."""
    if (_is_tensor(x) or _is_array(x)) and len(x.shape) == 0:
        return x.item()
    return x


def compare(got, expected, rel: float = 1e-6, where: str = "") -> str | None:
    """``None`` when ``got`` agrees with ``expected``, else what differs, in words.

    Tensors and arrays: type, then shape, then dtype, then values (``rel`` as relative and
    absolute tolerance); numbers (ints, floats, 0-d tensors) within ``rel``; bools exactly;
    lists and tuples by length, then element by element; dicts by keys, then value by value;
    anything else with ``==``.
    """
    if expected is None:
        return None if got is None else f"{where}expected None, got {_describe(got)}"
    if _is_tensor(expected):
        return _compare_tensors(got, expected, rel, where)
    if _is_array(expected):
        return _compare_arrays(got, expected, rel, where)
    if _is_bool(expected):
        got = _scalar(got)
        if not _is_bool(got):
            return f"{where}expected a bool ({bool(expected)}), got {_type_name(got)}: {_describe(got)}"
        return None if bool(got) == bool(expected) else f"{where}got {bool(got)}, expected {bool(expected)}"
    if _is_number(expected):
        got = _scalar(got)
        if _is_tensor(got) or _is_array(got):
            return f"{where}expected a single number, got a {_describe(got)}"
        if not _is_number(got):
            return f"{where}expected a number ({_num(expected)}), got {_type_name(got)}: {_describe(got)}"
        if _close_numbers(float(got), float(expected), rel):
            return None
        return (
            f"{where}got {_num(got)}, expected {_num(expected)} "
            f"(abs difference {abs(float(got) - float(expected)):.4g}, tolerance {rel:g})"
        )
    if isinstance(expected, (list, tuple)):
        if not isinstance(got, (list, tuple)):
            return (
                f"{where}expected a {type(expected).__name__} of {len(expected)} items, "
                f"got {_type_name(got)}: {_describe(got)}"
            )
        if len(got) != len(expected):
            return f"{where}expected {len(expected)} items, got {len(got)}: {_describe(got)}"
        for i, (g, e) in enumerate(zip(got, expected)):
            problem = compare(g, e, rel, f"{where}item [{i}]: ")
            if problem:
                return problem
        return None
    if isinstance(expected, Mapping):
        if not isinstance(got, Mapping):
            return f"{where}expected a dict, got {_type_name(got)}: {_describe(got)}"
        if set(got) != set(expected):
            missing, extra = sorted(map(str, set(expected) - set(got))), sorted(map(str, set(got) - set(expected)))
            return f"{where}keys differ: missing {missing}, unexpected {extra}"
        for k in expected:
            problem = compare(got[k], expected[k], rel, f"{where}[{k!r}]: ")
            if problem:
                return problem
        return None
    return None if got == expected else f"{where}got {_describe(got)}, expected {_describe(expected)}"


# --------------------------------------------------------------------------- running a checker


_NONE_MESSAGE = "your function returned None — did you forget `return`?"


_PACKAGE_DIR = str(Path(__file__).resolve().parent.parent)


def _learner_frames(e: BaseException) -> list:
    """The traceback frames of ``e`` that are the learner's code (not course_lib, not an installed library)."""
    libs = {sysconfig.get_paths()[k] for k in ("purelib", "platlib", "stdlib")}
    out = []
    for f in traceback.extract_tb(e.__traceback__):
        name = str(f.filename)
        if name.startswith(_PACKAGE_DIR) or any(name.startswith(lib) for lib in libs):
            continue
        out.append(f)
    return out


def _learner_line(e: BaseException) -> str:
    """' (line 4: `return x @ w`)' for the innermost frame of the learner's own code, or ''."""
    frames = _learner_frames(e)
    if not frames:
        return ""
    f = frames[-1]
    code = (f.line or "").strip()
    return f" (line {f.lineno}: `{code}`)" if code else f" (line {f.lineno})"


def _learner_error(case: str, e: Exception) -> ExerciseFailed:
    """The checker's message for an exception raised while running the learner's function."""
    about_none = "NoneType" in str(e)
    if _learner_frames(e):
        hint = f" — {_NONE_MESSAGE}" if about_none else ""
        return ExerciseFailed(f"{case}: your function raised {type(e).__name__}: {e}{_learner_line(e)}{hint}")
    # no frame of the learner's code: the checker's own handling of the answer failed
    if about_none:
        return ExerciseFailed(
            f"{case}: {_NONE_MESSAGE} (the checker could not use the answer: {type(e).__name__}: {e})"
        )
    return ExerciseFailed(f"{case}: the checker could not use your function's answer ({type(e).__name__}: {e})")


def _chapter(exercise: str) -> str:
    """The chapter an exercise belongs to: the calling ``course_lib.exercises.chNN`` module, else
    the exercise name's ``NN ·`` prefix, else ``"other"``."""
    frame = inspect.currentframe()
    try:
        while frame is not None:
            m = re.fullmatch(r"course_lib\.exercises\.ch(\d\d)", frame.f_globals.get("__name__", ""))
            if m:
                return m.group(1)
            frame = frame.f_back
    finally:
        del frame
    m = re.match(r"\s*(\d\d)\b", exercise)
    return m.group(1) if m else "other"


def _record(chapter: str, kind: str, item: str, *, passed: bool | None, score: float | None = None) -> None:
    """Record an outcome in the progress file; never lets a problem with the file reach the learner."""
    try:
        from course_lib import progress

        progress.record(chapter, kind, item, passed=passed, score=score)
    except Exception as e:  # progress.record warns itself; this is the last line of defence
        import warnings

        warnings.warn(f"could not record progress ({type(e).__name__}: {e})", stacklevel=3)


def run_cases(
    exercise: str,
    fn: Callable,
    cases: list[tuple[dict, object]],
    *,
    rel: float = 1e-6,
    convert: Callable | None = None,
) -> CheckResult:
    """Call ``fn(**kwargs)`` for each ``(kwargs, expected)``; see the module doc for the outcomes.

    ``convert``, when given, is applied to the learner's answer after the ``None`` check and
    before the comparison (e.g. ``float`` for an answer that may be a 0-d tensor); an answer
    it cannot convert fails with a message naming the answer. Prefer it to wrapping ``fn``
    in a lambda: a wrapper turns a missing ``return`` into a confusing ``TypeError``.
    """
    check_type("exercise", exercise, str)
    check_callable(f"{exercise}: your answer (pass the function itself, not its result)", fn)
    check_type("cases", cases, list, what="a list of (kwargs, expected) pairs")
    if not cases:
        raise ValueError("cases must hold at least one (kwargs, expected) pair, got an empty list")
    if convert is not None:
        check_callable("convert", convert)
    chapter = _chapter(exercise)
    n = len(cases)
    try:
        for i, (kwargs, expected) in enumerate(cases):
            case = f"{exercise}: case {i + 1} of {n} ({_describe_case(kwargs)})"
            try:
                got = fn(**kwargs)
            except NotImplementedError:
                _record(chapter, "exercise", exercise, passed=None)
                return CheckResult(exercise, "not attempted yet")
            except ExerciseFailed:
                raise
            except Exception as e:  # the learner's own error, shown as the checker's message
                raise _learner_error(case, e) from e
            if got is None and expected is not None:
                raise ExerciseFailed(f"{case}: {_NONE_MESSAGE}")
            if convert is not None and got is not None:
                try:
                    got = convert(got)
                except Exception as e:
                    raise ExerciseFailed(
                        f"{case}: your function returned {_type_name(got)} ({_describe(got)}), which is not "
                        f"the kind of answer expected ({type(e).__name__}: {e})"
                    ) from e
            problem = compare(got, expected, rel)
            if problem:
                raise ExerciseFailed(f"{case}: {problem}")
    except ExerciseFailed:
        _record(chapter, "exercise", exercise, passed=False)
        raise
    _record(chapter, "exercise", exercise, passed=True)
    return CheckResult(exercise, "passed", n)


# --------------------------------------------------------------------------- predictions


def prediction_word(ratio: float) -> str:
    """How close a prediction was, from ``measured / predicted``: 'close' within 1.5×, 'right order
    of magnitude' within 10×, else 'off by N×' (N rounded, in whichever direction)."""
    if not (isinstance(ratio, numbers.Real) and math.isfinite(ratio) and ratio > 0):
        raise ValueError(f"ratio must be a finite number > 0, got {ratio!r}")
    factor = max(ratio, 1 / ratio)
    if factor <= 1.5:
        return "close"
    if factor < 10:
        return "right order of magnitude"
    return f"off by {factor:.0f}×"


def check_prediction(
    exercise: str,
    predicted,
    measured: float,
    *,
    unit: str,
    explain: str,
    chapter: str | None = None,
) -> CheckResult:
    """Compare the learner's ``predicted`` value with the ``measured`` one; never fails on the value.

    ``predicted`` is a number, ``None`` (not attempted yet), or a function of no arguments
    returning one (a stub raising ``NotImplementedError`` reads as not attempted yet).
    Machines differ, so any positive prediction passes; the result reports
    ``measured / predicted`` with a word from :func:`prediction_word` and ``explain``: why a
    simple model misses (dispatch overhead, caches, ...). A prediction that is not a
    positive finite number fails with :class:`ExerciseFailed`. ``measured`` comes from the
    notebook's own measurement (a ``ValueError`` when it is not a positive finite number).
    """
    check_type("exercise", exercise, str)
    check_type("unit", unit, str)
    check_type("explain", explain, str)
    if isinstance(measured, bool) or not isinstance(measured, numbers.Real) or not (math.isfinite(measured)):
        raise ValueError(f"measured must be a finite number > 0, got {measured!r}")
    if measured <= 0:
        raise ValueError(f"measured must be a finite number > 0, got {measured!r}")
    chapter = chapter if chapter is not None else _chapter(exercise)
    if callable(predicted):
        try:
            predicted = predicted()
        except NotImplementedError:
            predicted = NotImplemented  # the stub: not attempted yet
        except Exception as e:
            _record(chapter, "prediction", exercise, passed=False)
            raise ExerciseFailed(
                f"{exercise}: your prediction function raised {type(e).__name__}: {e}{_learner_line(e)}"
            ) from e
        if predicted is None:  # a function that ran and forgot its return
            _record(chapter, "prediction", exercise, passed=False)
            raise ExerciseFailed(f"{exercise}: {_NONE_MESSAGE}")
        if predicted is NotImplemented:
            predicted = None
    if predicted is None:
        _record(chapter, "prediction", exercise, passed=None)
        return CheckResult(exercise, "not attempted yet", unit=unit, explain=explain)
    predicted = _scalar(predicted)
    problem = None
    if _is_bool(predicted) or not _is_number(predicted):
        problem = f"your prediction must be a number (in {unit}), got {_type_name(predicted)}: {_describe(predicted)}"
    elif not math.isfinite(float(predicted)):
        problem = f"your prediction must be a finite number (in {unit}), got {predicted!r}"
    elif predicted <= 0:
        problem = f"your prediction must be a positive number (in {unit}), got {_num(predicted)}"
    if problem:
        _record(chapter, "prediction", exercise, passed=False)
        raise ExerciseFailed(f"{exercise}: {problem}")
    predicted, measured = float(predicted), float(measured)
    ratio = measured / predicted
    _record(chapter, "prediction", exercise, passed=True, score=ratio)
    return CheckResult(
        exercise,
        "passed",
        1,
        predicted=predicted,
        measured=measured,
        unit=unit,
        ratio=ratio,
        word=prediction_word(ratio),
        explain=explain,
    )
