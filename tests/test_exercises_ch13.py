"""Chapter 13's checkers: a rule beyond the frontier passes, others fail with a message, stubs read as not attempted."""

from __future__ import annotations

import re

import pytest

from course_lib import tools
from course_lib.exercises import ExerciseFailed, check_front_door, check_time_from_flops_prediction
from course_lib.exercises.ch13 import DEFER, FrontierTask, dominated_by, frontier_task, score_rule


def _task() -> FrontierTask:
    """Four items: two arithmetic (the fallback gets one right, at a high cost), two facts (right, cheap)."""
    return FrontierTask(
        prompts=('Compute "12+30".', 'Compute "7*6".', "Which year?", "Which city?"),
        golds=("42", "42", "1990", "Paris"),
        fallback="efficient",
        fallback_correct=(True, False, True, True),
        fallback_cost=(100.0, 100.0, 10.0, 10.0),
        systems={"efficient": (0.75, 55.0), "monolith": (0.5, 400.0), "no tools": (0.5, 10.0)},
    )


def _calculator_rule(prompt: str) -> str:
    m = re.fullmatch(r'Compute "(\d+)([+*])(\d+)"\.', prompt)
    if not m:
        return DEFER
    a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
    return str(a + b if op == "+" else a * b)


def _stub(prompt):
    raise NotImplementedError


def test_dominated_by_counts_equal_points_as_dominated():
    systems = {"a": (0.8, 10.0), "b": (0.6, 2.0)}
    assert dominated_by((0.8, 10.0), systems) == ["a"]
    assert dominated_by((0.7, 5.0), systems) == []  # between the two: on no one's wrong side
    assert sorted(dominated_by((0.5, 20.0), systems)) == ["a", "b"]
    assert dominated_by((0.9, 100.0), systems) == []


def test_score_rule_by_hand():
    r = score_rule(_calculator_rule, _task())
    assert r == {"accuracy": 1.0, "cost": 5.0, "answered": 2, "answered_right": 2, "deferred": 2}
    everything = score_rule(lambda p: DEFER, _task())
    assert everything["accuracy"] == 0.75 and everything["cost"] == 55.0  # the fallback itself


def test_frontier_task_checks_its_fields():
    with pytest.raises(ValueError, match="prompts"):
        FrontierTask((), (), "e", (), (), {"e": (1.0, 1.0)})
    with pytest.raises(ValueError, match="golds"):
        FrontierTask(("a",), (), "e", (True,), (1.0,), {"e": (1.0, 1.0)})
    with pytest.raises(ValueError, match="fallback"):
        FrontierTask(("a",), ("1",), "x", (True,), (1.0,), {"e": (1.0, 1.0)})


def test_check_front_door_passes_a_calculator_front_door():
    assert check_front_door(_calculator_rule, task=_task()).passed


def test_check_front_door_rejects_deferring_everything():
    with pytest.raises(ExerciseFailed, match="not beyond the frontier"):
        check_front_door(lambda prompt: DEFER, task=_task())


def test_check_front_door_rejects_a_rule_that_answers_wrongly():
    def guesses(prompt):  # answers every query with "42": right on two, wrong on the facts
        return "42"

    with pytest.raises(ExerciseFailed, match="answered 4 of 4 queries itself, 2 of them right.*must not cost accuracy"):
        check_front_door(guesses, task=_task())


def test_check_front_door_rejects_a_cheap_rule_that_is_not_better():
    def fifty(prompt):  # right on the first arithmetic item only; the fallback on the others
        return "42" if "12+30" in prompt else DEFER

    task = _task()  # the fallback's 0.75 at 55 FLOPs is matched (0.75) at 30: beyond the frontier, passes
    assert check_front_door(fifty, task=task).passed
    richer = FrontierTask(**{**task.__dict__, "systems": {**task.systems, "oracle": (0.75, 20.0)}})
    with pytest.raises(ExerciseFailed, match="'oracle' reaches 75.0% at 20"):
        check_front_door(fifty, task=richer)


def test_check_front_door_rejects_a_non_string_answer():
    with pytest.raises(ExerciseFailed, match="return the answer as a str"):
        check_front_door(lambda prompt: 42, task=_task())


def test_check_front_door_stub_and_missing_return():
    assert check_front_door(_stub, task=_task()).status == "not attempted yet"
    with pytest.raises(ExerciseFailed, match="forget `return`"):
        check_front_door(lambda prompt: None, task=_task())


def test_check_front_door_refuses_a_bad_task():
    with pytest.raises(TypeError, match="task"):
        check_front_door(_calculator_rule, task={"prompts": []})


def test_the_stored_run_gives_a_task_the_calculator_rule_can_beat():
    task = frontier_task()
    assert task.fallback in task.systems and len(task.prompts) == len(task.golds) > 0
    with pytest.raises(ExerciseFailed, match="not beyond the frontier"):
        check_front_door(lambda prompt: DEFER, task=task)  # the efficient system itself adds nothing

    def calculator_front_door(prompt):  # the notebook's solution: exact arithmetic without the model
        m = re.fullmatch(r'Q: Compute "([0-9+\-*]+)"\.\s*', prompt)
        return tools.calculate(m.group(1)) if m else DEFER

    assert check_front_door(calculator_front_door, task=task).passed


# --------------------------------------------------------------------------- prediction


def test_check_time_from_flops_prediction_reports_the_ratio():
    r = check_time_from_flops_prediction(lambda: 20.0, 5.0)
    assert r.passed and r.ratio == pytest.approx(0.25) and r.unit == "ms"
    assert "fixed cost" in r.explain


def test_check_time_from_flops_prediction_rejects_a_string():
    with pytest.raises(ExerciseFailed, match="number"):
        check_time_from_flops_prediction("20 ms", 5.0)


def test_check_time_from_flops_prediction_stub_is_not_attempted():
    def stub():
        raise NotImplementedError

    assert check_time_from_flops_prediction(stub, 5.0).status == "not attempted yet"


def test_check_time_from_flops_prediction_refuses_a_bad_measurement():
    with pytest.raises(ValueError, match="measured"):
        check_time_from_flops_prediction(20.0, 0.0)
