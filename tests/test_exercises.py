"""The exercise mechanism (course_lib.exercises.core): checkers that explain, predictions, progress.

Chapter checkers have their own tests in tests/test_exercises_chNN.py; the meta-test at the
end proves each exported checker has a test that a wrong answer is rejected, and the
generic tests run every exported checker on a missing ``return``, a stub and a crash.
"""

from __future__ import annotations

import ast
import inspect
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import course_lib.exercises as exercises
import course_lib.exercises.core as core
from course_lib import progress
from course_lib.exercises.core import (
    CheckResult,
    ExerciseFailed,
    check_prediction,
    compare,
    prediction_word,
    run_cases,
)

TESTS = Path(__file__).resolve().parent
CHECKERS = sorted(n for n in exercises.__all__ if n.startswith("check_"))


def _takes_only_fn(name: str) -> bool:
    """A coded exercise's checker takes the learner's function alone (prediction checkers take more)."""
    params = inspect.signature(getattr(exercises, name)).parameters.values()
    return (
        len([p for p in params if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]) == 1
    )


CODE_CHECKERS = [n for n in CHECKERS if n != "check_prediction" and _takes_only_fn(n)]


@pytest.fixture(autouse=True)
def progress_file(tmp_path, monkeypatch):
    p = tmp_path / "progress.json"
    monkeypatch.setenv("COURSE_PROGRESS", str(p))
    monkeypatch.setattr(progress, "_warned", False)
    return p


def entries(p: Path) -> dict:
    return json.loads(p.read_text())["chapters"]


def one(fn, expected, *, rel=1e-6, kwargs=None, **kw):
    return run_cases("03 · test exercise", fn, [(kwargs or {"x": 1}, expected)], rel=rel, **kw)


# --------------------------------------------------------------------------- outcomes


def test_passes_and_counts_cases():
    r = run_cases("03 · double", lambda x: 2 * x, [({"x": i}, 2 * i) for i in range(4)])
    assert r.passed and r.cases == 4 and r.status == "passed"
    assert "✓" in repr(r) and "4 cases" in repr(r) and "03 · double" in r._repr_html_()


def test_stub_is_not_attempted_yet():
    def stub(x):
        raise NotImplementedError

    r = one(stub, 1)
    assert not r.passed and r.status == "not attempted yet"
    assert "fill in the stub" in repr(r)


def test_missing_return_says_so():
    def forgot(x):
        x * 2

    with pytest.raises(ExerciseFailed, match=r"returned None — did you forget `return`\?"):
        one(forgot, 2)


def test_none_is_a_right_answer_when_expected():
    assert one(lambda x: None, None).passed
    with pytest.raises(ExerciseFailed, match="expected None, got 3"):
        one(lambda x: 3, None)


def test_learners_exception_is_shown_with_its_case_and_line():
    def crashes(x):
        return {"a": 1}["b"]

    with pytest.raises(ExerciseFailed) as info:
        run_cases("03 · lookup", crashes, [({"x": 1}, 1), ({"x": 2}, 2)])
    msg = str(info.value)
    assert "case 1 of 2 (x=1)" in msg and "KeyError: 'b'" in msg
    assert 'return {"a": 1}["b"]' in msg, "the learner's own line is quoted"
    assert isinstance(info.value.__cause__, KeyError), "the learner's exception is chained"


def _checker_wrapper():
    """``lambda **kw: float(fn(**kw))`` as a chapter checker writes it (its code lives in course_lib)."""
    namespace = {}
    where = str(Path(core.__file__).with_name("_wrapper_for_tests.py"))
    exec(compile("def wrap(fn):\n    return lambda **kw: float(fn(**kw))\n", where, "exec"), namespace)
    return namespace["wrap"]


def test_none_inside_a_checker_wrapper_still_says_return():
    def forgot(x):
        pass

    with pytest.raises(ExerciseFailed, match=r"case 1 of 1 \(x=1\): your function returned None — did you forget"):
        run_cases("03 · wrapped", _checker_wrapper()(forgot), [({"x": 1}, 1.0)])


def test_an_answer_the_checker_cannot_use_is_not_blamed_on_the_learners_code():
    with pytest.raises(ExerciseFailed, match=r"could not use your function's answer \(ValueError: could not convert"):
        run_cases("03 · wrapped", _checker_wrapper()(lambda x: "abc"), [({"x": 1}, 1.0)])


def test_convert_applies_after_the_none_check():
    assert one(lambda x: torch.tensor(2.0), 2.0, convert=float).passed
    with pytest.raises(ExerciseFailed, match="did you forget `return`"):
        one(lambda x: None, 2.0, convert=float)
    with pytest.raises(ExerciseFailed, match="not the kind of answer expected"):
        one(lambda x: "two", 2.0, convert=float)


def test_exercise_failed_from_inside_passes_through():
    def wrapper(x):
        raise ExerciseFailed("03 · custom: the new MLP has 5 weights")

    with pytest.raises(ExerciseFailed, match="^03 · custom: the new MLP has 5 weights$"):
        one(wrapper, 1)


def test_bad_checker_arguments():
    with pytest.raises(TypeError, match="pass the function itself"):
        run_cases("03 · x", 3.0, [({}, 1)])
    with pytest.raises(ValueError, match="at least one"):
        run_cases("03 · x", lambda: 1, [])


# --------------------------------------------------------------------------- tensors: shape and dtype before values


def test_column_vs_flat_fails_on_shape_not_by_broadcasting():
    # (3,) against (3, 1) would broadcast to (3, 3) and pass allclose for equal values
    with pytest.raises(ExerciseFailed, match=r"shape: expected \(3, 1\), got \(3,\)"):
        one(lambda x: torch.ones(3), torch.ones(3, 1))
    with pytest.raises(ExerciseFailed, match=r"shape: expected \(3,\), got \(3, 1\)"):
        one(lambda x: torch.ones(3, 1), torch.ones(3))


def test_dtype_is_named():
    with pytest.raises(ExerciseFailed, match="dtype: expected float32, got float64"):
        one(lambda x: torch.zeros(2, dtype=torch.float64), torch.zeros(2))
    with pytest.raises(ExerciseFailed, match="dtype: expected bool, got int64"):
        one(lambda x: torch.ones(2, dtype=torch.long), torch.ones(2, dtype=torch.bool))


def test_values_report_max_difference_and_first_index():
    expected = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    got = expected.clone()
    got[1, 0] += 0.5
    got[1, 1] -= 2.0
    with pytest.raises(ExerciseFailed) as info:
        one(lambda x: got, expected)
    msg = str(info.value)
    assert "2 of 4 values differ" in msg and "max abs difference 2" in msg
    assert "index (1, 0): got 3.5, expected 3" in msg


def test_tolerance_is_relative_and_absolute():
    assert one(lambda x: torch.tensor([1.0 + 1e-7]), torch.tensor([1.0])).passed
    assert one(lambda x: torch.tensor([1.0 + 1e-4]), torch.tensor([1.0]), rel=1e-3).passed
    with pytest.raises(ExerciseFailed):
        one(lambda x: torch.tensor([1.0 + 1e-4]), torch.tensor([1.0]), rel=1e-6)


def test_bool_masks_report_differing_entries():
    expected = torch.tensor([True, False, True])
    with pytest.raises(ExerciseFailed, match=r"1 of 3 entries differ; the first at index \(1,\): got True"):
        one(lambda x: torch.tensor([True, True, True]), expected)


def test_tensor_expected_but_other_types_given():
    with pytest.raises(ExerciseFailed, match="expected a torch tensor, got a numpy array"):
        one(lambda x: np.zeros(2, dtype=np.float32), torch.zeros(2))
    with pytest.raises(ExerciseFailed, match=r"expected a torch tensor of shape \(2,\), got a list"):
        one(lambda x: [0.0, 0.0], torch.zeros(2))


def test_numpy_arrays_shape_kind_values():
    e = np.arange(6.0).reshape(2, 3)
    assert one(lambda x: e.copy(), e).passed
    with pytest.raises(ExerciseFailed, match=r"shape: expected \(2, 3\), got \(6,\)"):
        one(lambda x: e.ravel(), e)
    with pytest.raises(ExerciseFailed, match="dtype: expected float64 .floating point., got int64 .integer."):
        one(lambda x: e.astype(np.int64), e)
    with pytest.raises(ExerciseFailed, match="max abs difference 1"):
        one(lambda x: e + np.eye(2, 3), e)
    with pytest.raises(ExerciseFailed, match="expected a numpy array, got a torch tensor"):
        one(lambda x: torch.from_numpy(e), e)


# --------------------------------------------------------------------------- numbers, bools, sequences


def test_numbers_and_zero_dim_tensors():
    assert one(lambda x: 2, 2.0).passed
    assert one(lambda x: torch.tensor(2.0), 2.0).passed, "a 0-d tensor answers a number"
    assert one(lambda x: np.float64(2.0), 2.0).passed
    with pytest.raises(ExerciseFailed, match=r"got 2\.5, expected 2 \(abs difference 0\.5"):
        one(lambda x: 2.5, 2)
    with pytest.raises(ExerciseFailed, match=r"expected a single number, got a tensor of shape \(3,\)"):
        one(lambda x: torch.ones(3), 1.0)
    with pytest.raises(ExerciseFailed, match="expected a number .2., got a str: '2'"):
        one(lambda x: "2", 2)
    with pytest.raises(ExerciseFailed, match="got nan, expected 1"):
        one(lambda x: float("nan"), 1.0)
    assert one(lambda x: float("nan"), float("nan")).passed


def test_bools_are_compared_exactly():
    assert one(lambda x: True, True).passed
    assert one(lambda x: np.bool_(False), False).passed
    with pytest.raises(ExerciseFailed, match="got True, expected False"):
        one(lambda x: True, False)
    with pytest.raises(ExerciseFailed, match=r"expected a bool \(True\), got a number: 1"):
        one(lambda x: 1, True)
    with pytest.raises(ExerciseFailed, match="expected a number"):
        one(lambda x: True, 1)


def test_sequences_by_length_then_elementwise():
    assert one(lambda x: [1, 2.0, torch.ones(2)], (1, 2, torch.ones(2))).passed
    with pytest.raises(ExerciseFailed, match="expected 3 items, got 2"):
        one(lambda x: (1, 2), (1, 2, 3))
    with pytest.raises(ExerciseFailed, match=r"item \[1\]: got 5, expected 2"):
        one(lambda x: [1, 5, 3], [1, 2, 3])
    with pytest.raises(ExerciseFailed, match=r"item \[0\]: shape: expected \(2,\), got \(3,\)"):
        one(lambda x: [torch.ones(3)], [torch.ones(2)])
    with pytest.raises(ExerciseFailed, match="expected a list of 2 items, got a number"):
        one(lambda x: 3, [1, 2])


def test_dicts_by_keys_then_values():
    assert compare({"a": 1, "b": [2]}, {"b": [2], "a": 1}) is None
    assert "missing ['b']" in compare({"a": 1}, {"a": 1, "b": 2})
    assert "['a']: got 2, expected 1" in compare({"a": 2}, {"a": 1})


def test_messages_describe_tensor_arguments_briefly():
    with pytest.raises(ExerciseFailed) as info:
        run_cases("03 · t", lambda w: w, [({"w": torch.zeros(100, 200)}, torch.ones(100, 200))])
    assert "w=tensor of shape (100, 200), float32" in str(info.value)
    assert len(str(info.value)) < 400


# --------------------------------------------------------------------------- progress


def test_every_outcome_is_recorded(progress_file):
    def stub(x):
        raise NotImplementedError

    one(stub, 1)
    e = entries(progress_file)["03"]["exercise:03 · test exercise"]
    assert e["status"] == "not attempted" and e["attempts"] == 0
    with pytest.raises(ExerciseFailed):
        one(lambda x: 2, 1)
    e = entries(progress_file)["03"]["exercise:03 · test exercise"]
    assert e["status"] == "failed" and e["attempts"] == 1 and not e["ever_passed"]
    one(lambda x: 1, 1)
    one(stub, 1)  # a fresh copy of the notebook runs the stub again: the pass is kept
    e = entries(progress_file)["03"]["exercise:03 · test exercise"]
    assert e["status"] == "passed" and e["attempts"] == 2 and e["ever_passed"]


def test_chapter_comes_from_the_checker_module(progress_file):
    namespace = {"__name__": "course_lib.exercises.ch07", "run_cases": run_cases}
    exec("def check_double(fn):\n    return run_cases('doubling', fn, [({'x': 2}, 4)])", namespace)
    assert namespace["check_double"](lambda x: 2 * x).passed
    assert "exercise:doubling" in entries(progress_file)["07"], "a checker in chNN.py records under NN"
    run_cases("11 · by name", lambda: 1, [({}, 1)])
    assert "exercise:11 · by name" in entries(progress_file)["11"], "else the 'NN ·' prefix of the name"


def test_unwritable_progress_file_never_fails_a_checker(tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv("COURSE_PROGRESS", str(blocker / "progress.json"))  # parent is a file
    with pytest.warns(UserWarning, match="cannot write the progress file"):
        assert one(lambda x: 1, 1).passed


# --------------------------------------------------------------------------- predictions


@pytest.mark.parametrize(
    "ratio, word",
    [(1.0, "close"), (1.5, "close"), (1 / 1.4, "close"), (2.3, "right order of magnitude"),
     (1 / 9, "right order of magnitude"), (12.0, "off by 12×"), (1 / 40, "off by 40×")],
)  # fmt: skip
def test_prediction_words(ratio, word):
    assert prediction_word(ratio) == word


def test_prediction_passes_whatever_the_value_and_explains(progress_file):
    r = check_prediction("05 · predict int8", 10.0, 23.0, unit="ms", explain="Dispatch overhead dominates.")
    assert r.passed and r.ratio == pytest.approx(2.3) and r.word == "right order of magnitude"
    text = repr(r)
    assert "you predicted 10 ms" in text and "measured 23 ms" in text and "2.3×" in text
    assert "Dispatch overhead dominates." in text and "Dispatch overhead dominates." in r._repr_html_()
    far = check_prediction("05 · predict int8", 1000, 23.0, unit="ms", explain="")
    assert far.passed and far.word == "off by 43×"
    e = entries(progress_file)["05"]["prediction:05 · predict int8"]
    assert e["status"] == "passed" and e["score"] == pytest.approx(0.023)


def test_prediction_not_attempted():
    def stub():
        raise NotImplementedError

    for predicted in (None, stub):
        r = check_prediction("05 · p", predicted, 3.0, unit="s", explain="x")
        assert r.status == "not attempted yet" and not r.passed and "write your prediction above" in repr(r)
    assert check_prediction("05 · p", lambda: 4.0, 3.0, unit="s", explain="x").ratio == pytest.approx(0.75)
    assert check_prediction("05 · p", torch.tensor(4.0), 3.0, unit="s", explain="x").passed


@pytest.mark.parametrize(
    "bad, message",
    [(-2.0, "must be a positive number"), (0, "must be a positive number"), (float("nan"), "must be a finite"),
     (float("inf"), "must be a finite"), ("fast", "must be a number"), (True, "must be a number"),
     ([1.0], "must be a number")],
)  # fmt: skip
def test_check_prediction_rejects_an_invalid_prediction(bad, message, progress_file):
    with pytest.raises(ExerciseFailed, match=message):
        check_prediction("05 · p", bad, 3.0, unit="ms", explain="x")
    assert entries(progress_file)["05"]["prediction:05 · p"]["status"] == "failed"


def test_check_prediction_rejects_a_crashing_prediction_function():
    with pytest.raises(ExerciseFailed, match="ZeroDivisionError"):
        check_prediction("05 · p", lambda: 1 / 0, 3.0, unit="ms", explain="x")


@pytest.mark.parametrize("measured", [0.0, -1.0, float("nan"), "3", None])
def test_prediction_needs_a_real_measurement(measured):
    with pytest.raises(ValueError, match="measured must be a finite number > 0"):
        check_prediction("05 · p", 1.0, measured, unit="ms", explain="x")


def test_check_result_is_backwards_compatible():
    r = CheckResult("00 · x", "passed", 3)
    assert r.passed and not r.is_prediction and repr(r) == "✓ 00 · x: passed (3 cases)"


# --------------------------------------------------------------------------- every exported checker


def _test_names() -> set[str]:
    names = set()
    for f in TESTS.rglob("test_*.py"):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test_"):
                names.add(node.name)
    return names


@pytest.mark.parametrize("name", CHECKERS)
def test_every_checker_has_a_test_that_rejects_a_wrong_answer(name):
    """Issue #18: `make test` proves every checker rejects a wrong answer (tests/test_exercises_chNN.py)."""
    found = [t for t in _test_names() if name in t and "rejects" in t]
    assert found, f"no test under tests/ named test_{name}_rejects_...: write one that gives a wrong answer"


@pytest.mark.parametrize("name", CODE_CHECKERS)
def test_every_checker_explains_a_missing_return_a_stub_and_a_crash(name, progress_file):
    checker = getattr(exercises, name)

    def forgot(*args, **kwargs):
        pass

    def stub(*args, **kwargs):
        raise NotImplementedError

    def crashes(*args, **kwargs):
        raise ValueError("learner's own mistake")

    with pytest.raises(ExerciseFailed, match="did you forget `return`"):
        checker(forgot)
    assert checker(stub).status == "not attempted yet"
    with pytest.raises(ExerciseFailed, match="ValueError: learner's own mistake") as info:
        checker(crashes)
    assert re.match(r"\d\d · ", str(info.value)), "the message starts with the exercise's name"
    assert isinstance(info.value.__cause__, ValueError)
    recorded = entries(progress_file)
    module_chapter = checker.__module__.rsplit("ch", 1)[-1]
    assert module_chapter in recorded, f"{name} records under chapter {module_chapter}"
