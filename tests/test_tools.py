"""Chapter 09: the tool-call protocol (cross-checked with jsonschema), the safe calculator, the agent loop."""

from __future__ import annotations

import ast
import json
import time
from fractions import Fraction

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib import tools as T

CALC = T.Registry([T.calculator_tool()])


def call_text(name="calculator", **arguments) -> str:
    return T.format_call(name, arguments)


# --------------------------------------------------------------------------- protocol


def test_format_and_parse_round_trip():
    text = "Let me compute. " + call_text(expression="17*23") + " trailing"
    assert call_text(expression="17*23") == '<call>{"name": "calculator", "arguments": {"expression": "17*23"}}</call>'
    call = T.parse_call(text, CALC)
    assert call == T.ToolCall("calculator", {"expression": "17*23"})
    assert T.parse_call(call.text(), CALC) == call
    assert T.find_call(text) == (16, 16 + len(call.text()))
    assert T.run_call(call, CALC) == "391"


def test_parse_takes_the_first_complete_call():
    text = call_text(expression="1+1") + call_text(expression="2+2")
    assert T.parse_call(text, CALC).arguments == {"expression": "1+1"}


@pytest.mark.parametrize(
    "text, message",
    [
        ("no call here", "no call"),
        ('<call>{"name": "calculator"', "unterminated"),
        ("<call>{name: calculator}</call>", "malformed JSON"),
        ("<call></call>", "malformed JSON"),
        ('<call>{"name": "calculator", "arguments": {"expression": "1"}} extra</call>', "malformed JSON"),
        ('<call>{"name": "calc", "arguments": {}}</call>', "unknown tool 'calc'; known tools: ['calculator']"),
        ('<call>{"name": "calculator", "arguments": {}}</call>', "missing the required argument 'expression'"),
        ('<call>{"name": "calculator", "arguments": {"expression": 5}}</call>', "must be of type string, got integer"),
        ('<call>{"name": "calculator", "arguments": {"expression": "1", "x": 2}}</call>', "unexpected argument 'x'"),
        ('<call>{"name": "calculator", "arguments": "1+1"}</call>', "arguments must be a JSON object"),
        ('<call>{"name": 3, "arguments": {}}</call>', "name must be a string"),
        ('<call>{"arguments": {}}</call>', "no 'name'"),
        ('<call>{"name": "calculator", "args": {}}</call>', "unexpected keys ['args']"),
        ("<call>[1, 2]</call>", "must be a JSON object"),
        ('<call>{"name": "calculator", "name": "calculator"}</call>', "appears twice"),
        ('<call>{"name": "calculator", "arguments": {"expression": NaN}}</call>', "NaN is not a JSON number"),
        ('<call>{"name": "calculator", "arguments": {"expression": "' + "1" * 300 + '"}}</call>', "at most 256"),
    ],
)
def test_malformed_calls_are_refused_with_a_clear_message(text, message):
    with pytest.raises(T.ToolCallError, match=None) as info:
        T.parse_call(text, CALC)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


def test_deep_nesting_and_huge_calls_are_refused():
    deep = T.Registry([T.Tool("echo", "echo", {"type": "object"}, lambda **kw: kw)])
    nested = '<call>{"name": "echo", "arguments": {"x": ' + "[" * 20 + "]" * 20 + "}}</call>"
    with pytest.raises(T.ToolCallError, match="nested too deeply"):
        T.parse_call(nested, deep)
    very = '<call>{"name": "echo", "arguments": {"x": ' + "[" * 4000 + "]" * 4000 + "}}</call>"
    with pytest.raises(T.ToolCallError, match="nested too deeply"):
        T.parse_call(very, deep)
    huge = '<call>{"name": "echo", "arguments": {"x": "' + "a" * 10_000 + '"}}</call>'
    with pytest.raises(T.ToolCallError, match="characters long"):
        T.parse_call(huge, deep)
    big_int = '<call>{"name": "echo", "arguments": {"x": ' + "9" * 5000 + "}}</call>"
    with pytest.raises(T.ToolCallError, match="malformed JSON"):
        T.parse_call(big_int, deep)
    ok = '<call>{"name": "echo", "arguments": {"x": ' + "[" * 7 + "]" * 7 + "}}</call>"
    assert T.parse_call(ok, deep).arguments == {"x": [[[[[[[]]]]]]]}


def test_tool_validates_before_running():
    ran = []
    tool = T.Tool(
        "add",
        "add two integers",
        {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer", "minimum": 0}},
            "required": ["a", "b"],
            "additionalProperties": False,
        },
        lambda a, b: ran.append((a, b)) or a + b,
    )
    assert tool(a=2, b=3) == 5
    with pytest.raises(T.ToolCallError, match="arguments.b must be >= 0"):
        tool(a=2, b=-1)
    with pytest.raises(T.ToolCallError, match="got boolean"):
        tool(a=True, b=1)
    assert ran == [(2, 3)]
    assert tool.schema() == {"name": "add", "description": "add two integers", "parameters": tool.parameters}
    listing = T.Registry([tool]).describe()
    assert json.loads(listing.splitlines()[0]) == tool.schema()


def test_bad_tool_definitions_are_refused():
    with pytest.raises(ValueError, match="unsupported schema keywords"):
        T.Tool("t", "d", {"type": "object", "requried": ["x"]}, print)
    with pytest.raises(ValueError, match="type 'object'"):
        T.Tool("t", "d", {"type": "string"}, print)
    with pytest.raises(ValueError, match="type must be one of"):
        T.Tool("t", "d", {"type": "object", "properties": {"x": {"type": "float"}}}, print)
    with pytest.raises(ValueError, match="name must be an identifier"):
        T.Tool("two words", "d", {"type": "object"}, print)
    with pytest.raises(TypeError, match="fn must be callable"):
        T.Tool("t", "d", {"type": "object"}, "print")
    with pytest.raises(ValueError, match="two tools named"):
        T.Registry([T.calculator_tool(), T.calculator_tool()])


# --------------------------------------------------------------------------- validator vs jsonschema

SCHEMAS = [
    {"type": "object", "properties": {"x": {"type": "string", "maxLength": 3}}, "required": ["x"]},
    {
        "type": "object",
        "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 10}},
        "additionalProperties": False,
    },
    {"type": "object", "properties": {"v": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}}},
    {"type": "object", "properties": {"unit": {"enum": ["m", "km", 1, True]}}, "required": ["unit"]},
    {
        "type": "object",
        "properties": {"xs": {"type": "array", "items": {"type": "integer"}, "maxItems": 3, "minItems": 1}},
    },
    {"type": "object", "properties": {"b": {"type": "boolean"}, "z": {"type": "null"}}},
    {"type": "object", "properties": {"s": {"type": "string", "pattern": "^[a-z]+$", "minLength": 2}}},
    {"type": "object", "additionalProperties": {"type": ["string", "integer"]}},
    {
        "type": "object",
        "properties": {"o": {"type": "object", "properties": {"k": {"type": "string"}}, "required": ["k"]}},
        "additionalProperties": False,
    },
]

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-20, 20)
    | st.floats(-2, 2, allow_nan=False)
    | st.sampled_from([0.0, 1.0, 0.5, 10.0])
    | st.text("abcXY1 ", max_size=5)
    | st.sampled_from(["m", "km", "ab"]),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(list("xnvusbzko") + ["xs", "unit"]), inner, max_size=4)
    ),
    max_leaves=12,
)
ARGS = st.dictionaries(st.sampled_from(["x", "n", "v", "unit", "xs", "b", "z", "s", "o", "k"]), JSON, max_size=3)


@settings(max_examples=300, deadline=None)
@given(schema_index=st.integers(0, len(SCHEMAS) - 1), value=ARGS)
def test_validator_agrees_with_jsonschema(schema_index, value):
    schema = SCHEMAS[schema_index]
    T.check_schema(schema)
    expected = jsonschema.Draft202012Validator(schema).is_valid(value)
    try:
        T.validate(value, schema)
        ours = True
    except T.ToolCallError:
        ours = False
    assert ours == expected, (schema, value)


def test_validator_cross_check_examples():
    schema = SCHEMAS[1]
    for value, ok in [
        ({"n": 3}, True),
        ({"n": 3.0}, True),
        ({"n": 3.5}, False),
        ({"n": True}, False),
        ({"m": 1}, False),
    ]:
        assert jsonschema.Draft202012Validator(schema).is_valid(value) == ok
        if ok:
            T.validate(value, schema)
        else:
            with pytest.raises(T.ToolCallError):
                T.validate(value, schema)


# --------------------------------------------------------------------------- calculator


@pytest.mark.parametrize(
    "expression, expected",
    [
        ("17*23", "391"),
        ("0.1+0.2", "0.3"),
        ("1/3", "0.333333333333"),
        ("2/3", "0.666666666667"),
        ("-7//2", "-4"),
        ("-7 % 3", "2"),
        ("7.5 % 2", "1.5"),
        ("2**-2", "0.25"),
        ("(1 + 2) * -3", "-9"),
        ("+5", "5"),
        ("1.5e3", "1500"),
        ("6/3", "2"),
        ("1/8", "0.125"),
        ("1e-20", "1e-20"),
        ("1/7*1e20", "1.42857142857e19"),
        ("123456789 * 987654321", "121932631112635269"),
        ("2**0.5", "1.41421356237"),
    ],
)
def test_calculator_values(expression, expected):
    assert T.calculate(expression) == expected


def test_calculator_is_exact_where_floats_are_not():
    assert 0.1 + 0.2 != 0.3  # what a float gives
    assert T.evaluate("0.1+0.2") == Fraction(3, 10)
    assert T.calculate("2**200") == str(2**200)
    assert T.calculate("(10**30 + 1) - 10**30") == "1"  # a float loses the 1
    assert T.evaluate("1/3 + 1/6") == Fraction(1, 2)
    assert isinstance(T.evaluate("6/3"), int)


@settings(max_examples=300, deadline=None)
@given(
    a=st.integers(-(10**30), 10**30),
    b=st.integers(-(10**30), 10**30).filter(bool),
    op=st.sampled_from(["+", "-", "*", "/", "//", "%"]),
)
def test_calculator_matches_python_on_integers(a, b, op):
    expr = f"({a}) {op} ({b})"
    exact = {
        "+": a + b,
        "-": a - b,
        "*": a * b,
        "/": Fraction(a, b),
        "//": a // b,
        "%": a % b,
    }[op]
    assert T.evaluate(expr) == exact
    assert T.calculate(expr) == T.format_number(exact)


def balanced(n: int) -> str:
    """``n`` ones summed as a balanced tree: many nodes, little depth."""
    return "1" if n == 1 else f"({balanced(n // 2)}+{balanced(n - n // 2)})"


@pytest.mark.parametrize(
    "expression, message",
    [
        ("9**9**9", "exponent 387420489"),
        ("9**1048", "more than 1000 digits"),
        ("10**999 * 10", "more than 1000 digits"),
        ("2**3322", "more than 1000 digits"),
        ("1e400", "too large"),
        ("1/0", "division by zero"),
        ("1//0", "division by zero"),
        ("1%0", "modulo by zero"),
        ("0**-1", "division by zero"),
        ("(-8)**(1/3)", "not a real number"),
        ("x + 1", "found a name ('x')"),
        ("__import__('os').system('true')", "found a function call"),
        ("abs(-1)", "found a function call ('abs')"),
        ("(1).__class__", "found an attribute"),
        ("[x for x in (1,)]", "found a comprehension"),
        ("lambda: 1", "found a lambda"),
        ("'a' * 3", "only numbers are allowed"),
        ("True + 1", "only numbers are allowed"),
        ("1j * 2", "only numbers are allowed"),
        ("~5", "not allowed"),
        ("5 << 2", "not allowed"),
        ("1 < 2", "found a comparison"),
        ("1 +", "not an arithmetic expression"),
        ("", "empty"),
        ("1" * 300, "at most 256 characters"),
        ("-" * 40 + "1", "nested more than 32"),
        (balanced(64), "more than 100 parts"),
        ("import os", "not an arithmetic expression"),
    ],
)
def test_calculator_refuses(expression, message):
    with pytest.raises(T.CalculatorError) as info:
        T.calculate(expression)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


def test_calculator_refuses_big_powers_before_computing():
    t0 = time.perf_counter()
    for expr in ["9**9**9", "2**10000*2**10000", "(10**999)**10", "99999**99999", "7**9999"]:
        with pytest.raises(T.CalculatorError):
            T.calculate(expr)
    assert time.perf_counter() - t0 < 1.0  # computing any of them would take far longer (or never end)


def test_calculator_never_evaluates_names(monkeypatch):
    monkeypatch.setattr("builtins.eval", lambda *a, **k: pytest.fail("eval was called"))
    assert T.calculate("2+2") == "4"
    with pytest.raises(T.CalculatorError):
        T.calculate("open('x', 'w')")


def test_calculator_walk_allows_only_arithmetic_nodes():
    allowed = {ast.Expression, ast.BinOp, ast.UnaryOp, ast.Constant}
    for expr in ["17*23", "(1+2)*3-4/5", "-2**-3", "7//2 % 3"]:
        kinds = {type(n) for n in ast.walk(ast.parse(expr, mode="eval"))}
        assert kinds - allowed <= {ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.USub}


@pytest.mark.parametrize(
    "value, text",
    [
        (391, "391"),
        (Fraction(1, 3), "0.333333333333"),
        (Fraction(-1, 8), "-0.125"),
        (0.1, "0.1"),
        (Fraction(10**20 + 1, 3), "3.33333333333e19"),
        (Fraction(1, 10**7), "1e-7"),
        (Fraction(123456, 1000), "123.456"),
        (2.0, "2"),
    ],
)
def test_format_number(value, text):
    assert T.format_number(value) == text


def test_format_number_refuses_non_numbers():
    for bad in (True, "1", None, float("nan"), float("inf")):
        with pytest.raises((TypeError, ValueError), match="value"):
            T.format_number(bad)


# --------------------------------------------------------------------------- agent loop


def scripted(*replies):
    """A fake model that returns the given continuations in order, recording what it was asked."""
    seen = []

    def generate(text, max_new_tokens):
        seen.append((text, max_new_tokens))
        return replies[len(seen) - 1]

    generate.seen = seen
    return generate


def test_agent_runs_a_call_and_reads_the_answer():
    gen = scripted(" " + call_text(expression="17*23") + " this is discarded", " 391\nQ: next")
    r = T.run_agent(gen, "Q: what is 17*23?\nA:", CALC)
    assert r.answer == "391" and r.stopped == "answer" and r.steps == 2 and r.calls == 1
    assert gen.seen[1][0] == "Q: what is 17*23?\nA: " + call_text(expression="17*23") + "<result>391</result>"
    assert r.log[0].call == T.ToolCall("calculator", {"expression": "17*23"}) and r.log[0].result == "391"
    assert r.log[1].call is None and r.log[0].seconds >= 0 and r.tool_seconds == r.log[0].seconds
    assert r.tokens_generated == len(" " + call_text(expression="17*23")) + len(
        " 391\nQ: next"
    )  # characters by default
    assert r.transcript.endswith("<result>391</result> 391\nQ: next")


def test_agent_feeds_errors_back_and_respects_limits():
    bad = "<call>" + '{"name": "calculator", "arguments": {"expression": "9**9**9"}}' + "</call>"
    gen = scripted(bad, call_text("nope"), "<call>{oops", " done")
    r = T.run_agent(gen, "Q:", CALC, max_steps=4)
    assert [s.error for s in r.log] == [True, True, True, False]
    assert r.log[0].result.startswith("error: exponent")
    assert r.log[1].result.startswith("error: unknown tool 'nope'")
    assert r.log[2].result.startswith("error: unterminated call")
    assert r.answer == "done" and r.calls == 1  # only the first call parsed (its tool then refused it)

    loop = scripted(*[call_text(expression="1+1")] * 10)
    r = T.run_agent(loop, "Q:", CALC, max_steps=3)
    assert r.stopped == "max_steps" and r.answer is None and r.steps == 3

    r = T.run_agent(scripted(*[call_text(expression="1+1")] * 10), "Q:", CALC, max_new_tokens=64, token_budget=70)
    assert r.stopped == "token_budget" and r.tokens_generated >= 70


def test_agent_token_counts_and_budget_per_step():
    gen = scripted((call_text(expression="2*3"), 12), (" 6", 1))
    r = T.run_agent(gen, "Q:", CALC, max_new_tokens=10, token_budget=15)
    assert r.tokens_generated == 13 and r.answer == "6"
    assert [n for _, n in gen.seen] == [10, 3]  # the second step gets what is left of the budget
    r = T.run_agent(scripted(" 6 and more"), "Q:", CALC, count_tokens=lambda s: len(s.split()))
    assert r.tokens_generated == 3 and r.answer == "6 and more"


def test_agent_checks_its_arguments():
    gen = scripted("x")
    with pytest.raises(TypeError, match="generate"):
        T.run_agent("not callable", "Q", CALC)
    with pytest.raises(ValueError, match="max_steps"):
        T.run_agent(gen, "Q", CALC, max_steps=0)
    with pytest.raises(ValueError, match="token_budget"):
        T.run_agent(gen, "Q", CALC, token_budget=0)
    with pytest.raises(TypeError, match="registry"):
        T.run_agent(gen, "Q", [T.calculator_tool()])
    with pytest.raises(TypeError, match="continuation"):
        T.run_agent(lambda t, n: 5, "Q", CALC)


# --------------------------------------------------------------------------- retrieval tool


class FakeKB:
    def search(self, query, k, method="hybrid"):
        from course_lib.rag import Hit

        hits = [Hit("a", "Alpha", "alpha passage " * 50, 1.0, 1), Hit("b", "Beta", "beta passage", 0.5, 2)]
        return hits[:k]


def test_retrieval_tool_wraps_a_knowledge_base():
    tool = T.retrieval_tool(FakeKB(), k=2, max_chars=30, with_title=True)
    out = tool(query="alpha")
    assert out == ("Alpha: " + "alpha passage " * 50)[:30]
    reg = T.Registry([tool, T.calculator_tool()])
    call = T.parse_call('<call>{"name": "search", "arguments": {"query": "alpha"}}</call>', reg)
    assert T.run_call(call, reg) == out
    with pytest.raises(T.ToolCallError, match="missing the required argument 'query'"):
        T.parse_call('<call>{"name": "search", "arguments": {}}</call>', reg)
    with pytest.raises(TypeError, match="kb"):
        T.retrieval_tool(object())


def test_retrieval_tool_on_a_real_knowledge_base():
    from course_lib import rag

    docs = [
        rag.Document("1", "Rivers", "The Amazon is the largest river by discharge."),
        rag.Document("2", "Mountains", "Everest is the highest mountain above sea level."),
        rag.Document("3", "Deserts", "The Sahara is a hot desert in Africa."),
    ]
    kb = rag.KnowledgeBase(rag.LSAEmbedder([d.text for d in docs] * 3, dim=2, min_df=1))
    kb.add(docs)
    tool = T.retrieval_tool(kb, k=1, method="bm25")
    assert tool(query="highest mountain") == docs[1].text
