"""Chapter 09's checkers: a right answer passes, wrong ones fail with a message, stubs read as not attempted."""

from __future__ import annotations

import pytest

from course_lib import tools
from course_lib.exercises import ExerciseFailed, check_answer_time_prediction, check_convert_tool
from course_lib.exercises.ch09 import LENGTH_UNITS

UNIT = {"type": "string", "enum": sorted(LENGTH_UNITS)}
SCHEMA = {
    "type": "object",
    "properties": {"value": {"type": "number"}, "from": UNIT, "to": UNIT},
    "required": ["value", "from", "to"],
    "additionalProperties": False,
}


def _convert(value, **units):
    return str(value * LENGTH_UNITS[units["from"]] / LENGTH_UNITS[units["to"]])


def _tool(schema=SCHEMA, fn=_convert, name="convert"):
    return lambda: tools.Tool(name, "Convert a length between units.", schema, fn)


def _stub():
    raise NotImplementedError


def test_check_convert_tool_passes_a_right_tool():
    assert check_convert_tool(_tool()).passed


def test_check_convert_tool_stub_is_not_attempted():
    assert check_convert_tool(_stub).status == "not attempted yet"


def test_check_convert_tool_rejects_a_schema_without_enum():
    loose = {**SCHEMA, "properties": {**SCHEMA["properties"], "from": {"type": "string"}}}
    with pytest.raises(ExerciseFailed):  # the unknown unit reaches the function (KeyError), not the parser
        check_convert_tool(_tool(loose))


def test_check_convert_tool_rejects_extra_arguments_allowed():
    with pytest.raises(ExerciseFailed, match="refused"):
        check_convert_tool(_tool({**SCHEMA, "additionalProperties": True}, fn=lambda value, **u: _convert(value, **u)))


def test_check_convert_tool_rejects_a_wrong_factor():
    def feet_wrong(value, **units):
        factors = {**LENGTH_UNITS, "ft": 0.3}
        return str(value * factors[units["from"]] / factors[units["to"]])

    with pytest.raises(ExerciseFailed, match="expected"):
        check_convert_tool(_tool(fn=feet_wrong))


def test_check_convert_tool_rejects_a_wrong_name_and_a_non_tool():
    with pytest.raises(ExerciseFailed, match="named 'convert'"):
        check_convert_tool(_tool(name="units"))
    with pytest.raises(ExerciseFailed, match="tools.Tool"):
        check_convert_tool(lambda: _convert)


def test_check_convert_tool_rejects_a_missing_return_and_text_output():
    with pytest.raises(ExerciseFailed, match="forget `return`"):
        check_convert_tool(lambda: None)
    with pytest.raises(ExerciseFailed, match="not a number"):
        check_convert_tool(_tool(fn=lambda value, **u: f"{_convert(value, **u)} metres"))


def test_check_answer_time_prediction_reports_and_never_fails_on_the_value():
    r = check_answer_time_prediction(10.0, 40.0)
    assert r.passed and r.ratio == pytest.approx(4.0) and "prefill" in r.explain
    assert check_answer_time_prediction(_stub, 40.0).status == "not attempted yet"


def test_check_answer_time_prediction_rejects_a_non_positive_prediction():
    with pytest.raises(ExerciseFailed, match="positive"):
        check_answer_time_prediction(-1.0, 40.0)
    with pytest.raises(ValueError, match="measured"):
        check_answer_time_prediction(1.0, 0.0)
