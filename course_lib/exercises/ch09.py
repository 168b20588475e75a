"""Chapter 09 (tool use): the checkers for its exercises."""

from __future__ import annotations

from collections.abc import Callable

from course_lib.exercises.core import CheckResult, ExerciseFailed, check_prediction, run_cases

#: metres per unit, for the unit-conversion exercise (international mile, foot and inch)
LENGTH_UNITS = {"m": 1.0, "km": 1000.0, "mi": 1609.344, "ft": 0.3048, "in": 0.0254}

_REFUSED = "refused with ToolCallError"


def _call(arguments: dict) -> str:
    from course_lib import tools

    return tools.format_call("convert", arguments)


def check_convert_tool(make_tool: Callable) -> CheckResult:
    """09 — ``make_tool()`` returns a :class:`course_lib.tools.Tool` named ``convert`` that converts lengths.

    Its schema takes ``value`` (a number), ``from`` and ``to`` (one of :data:`LENGTH_UNITS`),
    all required and nothing else; the tool returns the converted value as text (anything
    ``float`` reads). The checker sends calls through :func:`course_lib.tools.parse_call` and
    :func:`course_lib.tools.run_call`, as the agent loop does: valid calls must give the
    reference value (relative tolerance 1e-9), and calls that break the schema (a string
    value, an unknown unit, a missing or an extra argument) must be refused by the parser,
    before the tool runs.
    """
    from course_lib import tools

    exercise = "09 · a unit-conversion tool"

    def run(call: str):
        try:
            tool = make_tool()
        except NotImplementedError:
            raise
        except Exception as e:
            raise ExerciseFailed(f"{exercise}: make_tool() raised {type(e).__name__}: {e}") from e
        if tool is None:
            raise ExerciseFailed(f"{exercise}: make_tool() returned None — did you forget `return`?")
        if not isinstance(tool, tools.Tool):
            raise ExerciseFailed(f"{exercise}: make_tool() must return a tools.Tool, got {type(tool).__name__}")
        if tool.name != "convert":
            raise ExerciseFailed(f"{exercise}: the tool must be named 'convert', got {tool.name!r}")
        registry = tools.Registry([tool])
        try:
            parsed = tools.parse_call(call, registry)
        except tools.ToolCallError:
            return _REFUSED
        out = tools.run_call(parsed, registry)
        try:
            return float(out)
        except ValueError:
            raise ExerciseFailed(f"{exercise}: for {call} the tool returned {out!r}, which is not a number") from None

    good = [
        (3.0, "km", "m"),
        (1.0, "mi", "ft"),
        (12.0, "in", "ft"),
        (5280.0, "ft", "mi"),
        (0.5, "m", "in"),
        (7, "m", "m"),
    ]
    cases = [
        (dict(call=_call({"value": v, "from": a, "to": b})), v * LENGTH_UNITS[a] / LENGTH_UNITS[b]) for v, a, b in good
    ]
    bad = [
        {"value": "3", "from": "km", "to": "m"},  # a string, not a number
        {"value": 1, "from": "parsec", "to": "m"},  # not one of the units
        {"value": 1, "from": "km"},  # "to" missing
        {"value": 1, "from": "km", "to": "m", "round": 2},  # an argument the schema does not have
        {"value": True, "from": "km", "to": "m"},  # a boolean is not a number in JSON schema
    ]
    cases += [(dict(call=_call(arguments)), _REFUSED) for arguments in bad]
    cases.append((dict(call='<call>{"name": "convert", "arguments": {"value": 1,}}</call>'), _REFUSED))  # bad JSON
    return run_cases(exercise, run, cases, rel=1e-9)


def check_answer_time_prediction(predicted, measured: float) -> CheckResult:
    """09 — the learner's predicted wall time (ms) of one tool-using answer to an arithmetic question.

    ``predicted``: a number or a function of no arguments returning one; ``measured``: the
    median the notebook just timed, in ms. Never fails on the value (machines differ); it
    reports how far *tokens generated × time per decoded token + the tool's time* was from
    the measurement, and why it misses.
    """
    return check_prediction(
        "09 · time of one tool-using answer",
        predicted,
        measured,
        unit="ms",
        explain=(
            "Tokens × time per token counts the decode steps, but a tool-using answer also pays what the simple "
            "model leaves out: two prefills (the question, then the context with the result appended, re-encoded "
            "from text), the tokenizer's encode and decode on every step, parsing and validating the call, and "
            "the agent loop's bookkeeping. For a 0.45 M-parameter model a decode step is so cheap that these "
            "fixed costs are a large share; the calculator itself takes microseconds."
        ),
    )
