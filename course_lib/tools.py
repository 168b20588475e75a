"""Tool use from scratch (chapter 09): a call protocol, a safe calculator, tools, an agent loop.

A small language model cannot store every fact nor compute exact arithmetic on many
digits; a *tool* can. The model writes a call into its own output, the runtime runs the
tool and writes the result back into the context, and the model continues reading it
(Toolformer, Schick et al. 2023; ReAct, Yao et al. 2023; PAL, Gao et al. 2023). This
module is that runtime:

* **the protocol** — a call is one JSON object between delimiters in the model's text::

      <call>{"name": "calculator", "arguments": {"expression": "17*23"}}</call><result>391</result>

  the model writes everything up to ``</call>``; the runtime appends ``<result>...</result>``.
  A :class:`Tool` has a name, a description and its parameters as a JSON-schema object;
  :func:`parse_call` finds the first complete call and validates it with :func:`validate`
  (a small JSON-schema validator written here: ``type`` string/number/integer/boolean/
  object/array/null, ``properties``, ``required``, ``additionalProperties``, ``items``,
  ``enum``, ``minimum``/``maximum`` (and exclusive), ``minLength``/``maxLength``,
  ``minItems``/``maxItems``, ``pattern``; the tests check it agrees with the ``jsonschema``
  package). Every problem is a :class:`ToolCallError` with a message the model (or a
  person) can act on: no call, an unterminated call, malformed JSON, an unknown tool
  (naming the known ones), a missing or extra argument, a wrong type, nesting too deep.
* **the safe calculator** — :func:`calculate` parses with :mod:`ast` and walks the tree,
  allowing only numbers, ``+ - * / // % **`` and unary ``+ -`` (no names, attributes,
  calls, comprehensions — and never ``eval``). Arithmetic is exact: integers stay
  integers, decimals become exact rationals (``0.1`` is 1/10, so ``0.1 + 0.2`` is ``0.3``),
  division gives a :class:`fractions.Fraction`. Before each operation the size of its
  result is bounded (:data:`MAX_DIGITS` digits, exponents up to :data:`MAX_EXPONENT`, at
  most :data:`MAX_NODES` nodes and :data:`MAX_DEPTH` levels, :data:`MAX_EXPRESSION_CHARS`
  characters), so ``9**9**9`` is refused in microseconds instead of computed for hours.
  :func:`format_number` writes an integer exactly and any other rational as a decimal
  rounded to :data:`SIGNIFICANT_DIGITS` significant digits.
* **tools** — :func:`calculator_tool`, :func:`retrieval_tool` (chapter 08's
  :class:`~course_lib.rag.KnowledgeBase` behind the same protocol) and :func:`python_tool`
  (code run in :mod:`course_lib.sandbox`, a separate, limited process).
* **the agent loop** — :func:`run_agent` generates, stops at ``</call>``, parses, runs the
  tool (an error becomes ``<result>error: ...</result>``, so the model can read it),
  appends the result and generates again, until the model answers without a call, or a
  step limit or a token budget stops it; every step is logged.
"""

from __future__ import annotations

import ast
import json
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Context, Decimal
from fractions import Fraction

from course_lib.checks import check_bool, check_callable, check_choice, check_int, check_type

# --------------------------------------------------------------------------- the protocol

CALL_OPEN = "<call>"
CALL_CLOSE = "</call>"
RESULT_OPEN = "<result>"
RESULT_CLOSE = "</result>"

#: The longest call body (the JSON between the delimiters) the parser reads, in characters.
MAX_CALL_CHARS = 8192
#: The deepest nesting of objects and arrays allowed in a call's arguments.
MAX_NESTING = 8

_TYPES = ("string", "number", "integer", "boolean", "object", "array", "null")
_SCHEMA_KEYS = frozenset(
    {
        "type",
        "description",
        "title",
        "default",
        "examples",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "enum",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "minLength",
        "maxLength",
        "minItems",
        "maxItems",
        "pattern",
    }
)


class ToolCallError(ValueError):
    """A call that cannot be run: no call, bad JSON, an unknown tool, arguments that break the schema."""


class CalculatorError(ValueError):
    """An expression the safe calculator refuses: not arithmetic, too big, or undefined (x/0)."""


@dataclass(frozen=True)
class ToolCall:
    """A parsed, validated call: the tool's name and its arguments (a dict)."""

    name: str
    arguments: dict

    def text(self) -> str:
        """The call as the model writes it: ``<call>{"name": ..., "arguments": {...}}</call>``."""
        return format_call(self.name, self.arguments)


def format_call(name: str, arguments: Mapping) -> str:
    """``<call>{"name": name, "arguments": arguments}</call>`` (JSON with ``json.dumps``' default spacing)."""
    check_type("name", name, str)
    check_type("arguments", arguments, Mapping, what="a dict")
    return CALL_OPEN + json.dumps({"name": name, "arguments": dict(arguments)}, ensure_ascii=False) + CALL_CLOSE


def format_result(result: str) -> str:
    """``<result>result</result>``: what the runtime appends after a call."""
    check_type("result", result, str)
    return RESULT_OPEN + result + RESULT_CLOSE


def _type_name(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list | tuple):
        return "array"
    return type(value).__name__


def _is_type(value, kind: str) -> bool:
    """JSON-schema's types: a bool is not a number, and an integral float (1.0) is an integer."""
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "null":
        return value is None
    if kind == "object":
        return isinstance(value, Mapping)
    if kind == "array":
        return isinstance(value, list | tuple)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if kind == "number":
        return True
    return isinstance(value, int) or (math.isfinite(value) and float(value).is_integer())  # integer


def check_schema(schema, *, where: str = "parameters", _depth: int = 0) -> dict:
    """``schema`` if it is a JSON schema this module can validate against; else a ValueError.

    Unknown keywords are refused rather than ignored (a misspelt ``"requried"`` would
    otherwise silently validate nothing).
    """
    if not isinstance(schema, Mapping):
        raise TypeError(f"{where} must be a JSON-schema dict, got {type(schema).__name__}")
    if _depth > MAX_NESTING + 2:
        raise ValueError(f"{where}: the schema is nested more than {MAX_NESTING + 2} levels")
    unknown = sorted(set(schema) - _SCHEMA_KEYS)
    if unknown:
        raise ValueError(f"{where}: unsupported schema keywords {unknown}; supported: {sorted(_SCHEMA_KEYS)}")
    kinds = schema.get("type")
    if kinds is not None:
        for kind in [kinds] if isinstance(kinds, str) else kinds:
            if kind not in _TYPES:
                raise ValueError(f"{where}: type must be one of {list(_TYPES)}, got {kind!r}")
    for key in ("properties",):
        if key in schema:
            props = schema[key]
            if not isinstance(props, Mapping):
                raise TypeError(f"{where}.{key} must be a dict")
            for name, sub in props.items():
                check_schema(sub, where=f"{where}.{key}.{name}", _depth=_depth + 1)
    if "required" in schema:
        req = schema["required"]
        if not isinstance(req, list | tuple) or not all(isinstance(r, str) for r in req):
            raise TypeError(f"{where}.required must be a list of names")
    extra = schema.get("additionalProperties", True)
    if not isinstance(extra, bool):
        check_schema(extra, where=f"{where}.additionalProperties", _depth=_depth + 1)
    if "items" in schema:
        check_schema(schema["items"], where=f"{where}.items", _depth=_depth + 1)
    if "enum" in schema and not isinstance(schema["enum"], list | tuple):
        raise TypeError(f"{where}.enum must be a list")
    if "pattern" in schema:
        re.compile(schema["pattern"])
    return dict(schema)


_SCALARS = (str, int, float, bool, type(None))


def _depth_of(value, limit: int, depth: int = 0) -> int:
    """Nesting depth of objects/arrays (a scalar is 0), stopping once past ``limit``."""
    if depth > limit or type(value) in _SCALARS:
        return depth
    if isinstance(value, Mapping):
        return max((_depth_of(v, limit, depth + 1) for v in value.values()), default=depth + 1)
    if isinstance(value, list | tuple):
        return max((_depth_of(v, limit, depth + 1) for v in value), default=depth + 1)
    return depth


def validate(value, schema: Mapping, *, path: str = "arguments") -> None:
    """Raise :class:`ToolCallError` naming the first place where ``value`` breaks ``schema``.

    Checks, in order: nesting depth (at most :data:`MAX_NESTING`), ``type``, ``enum``,
    numeric bounds, string length and ``pattern`` (``re.search``, as JSON schema),
    then for objects the ``required`` names, ``additionalProperties`` and each property,
    and for arrays their length and ``items``.
    """
    if path == "arguments" and _depth_of(value, MAX_NESTING) > MAX_NESTING:
        raise ToolCallError(f"{path} are nested too deeply (more than {MAX_NESTING} levels of objects/arrays)")
    _validate(value, schema, path)


def _validate(value, schema: Mapping, path: str) -> None:
    kinds = schema.get("type")
    if kinds is not None:
        ok = _is_type(value, kinds) if type(kinds) is str else any(_is_type(value, k) for k in kinds)
        if not ok:
            want = kinds if type(kinds) is str else " or ".join(kinds)
            raise ToolCallError(f"{path} must be of type {want}, got {_type_name(value)} {_short(value)}")
    if "enum" in schema and not any(_json_equal(value, e) for e in schema["enum"]):
        raise ToolCallError(f"{path} must be one of {list(schema['enum'])}, got {_short(value)}")
    if type(value) is str:  # the common case first (a dict's isinstance check is slow)
        _validate_str(value, schema, path)
        return
    if _is_type(value, "number"):
        lo, hi = schema.get("minimum"), schema.get("maximum")
        xlo, xhi = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
        if lo is not None and value < lo:
            raise ToolCallError(f"{path} must be >= {lo}, got {value}")
        if hi is not None and value > hi:
            raise ToolCallError(f"{path} must be <= {hi}, got {value}")
        if xlo is not None and value <= xlo:
            raise ToolCallError(f"{path} must be > {xlo}, got {value}")
        if xhi is not None and value >= xhi:
            raise ToolCallError(f"{path} must be < {xhi}, got {value}")
    if isinstance(value, str):
        _validate_str(value, schema, path)
    if isinstance(value, Mapping):
        missing = [k for k in schema.get("required", ()) if k not in value]
        if missing:
            raise ToolCallError(f"{path} is missing the required argument {missing[0]!r}")
        props = schema.get("properties", {})
        extra_schema = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in props:
                _validate(item, props[key], f"{path}.{key}")
            elif extra_schema is False:
                allowed = sorted(props)
                raise ToolCallError(f"{path} has an unexpected argument {key!r}; allowed: {allowed}")
            elif isinstance(extra_schema, Mapping):
                _validate(item, extra_schema, f"{path}.{key}")
    if isinstance(value, list | tuple):
        n = len(value)
        if "maxItems" in schema and n > schema["maxItems"]:
            raise ToolCallError(f"{path} must have at most {schema['maxItems']} items, got {n}")
        if "minItems" in schema and n < schema["minItems"]:
            raise ToolCallError(f"{path} must have at least {schema['minItems']} items, got {n}")
        if "items" in schema:
            for i, item in enumerate(value):
                _validate(item, schema["items"], f"{path}[{i}]")


def _validate_str(value: str, schema: Mapping, path: str) -> None:
    n = len(value)
    if "maxLength" in schema and n > schema["maxLength"]:
        raise ToolCallError(f"{path} must be at most {schema['maxLength']} characters, got {n}")
    if "minLength" in schema and n < schema["minLength"]:
        raise ToolCallError(f"{path} must be at least {schema['minLength']} characters, got {n}")
    if "pattern" in schema and not re.search(schema["pattern"], value):
        raise ToolCallError(f"{path} must match the pattern {schema['pattern']!r}, got {_short(value)}")


def _json_equal(a, b) -> bool:
    """JSON equality: numbers compare by value (1 == 1.0), but a bool equals only a bool."""
    na = isinstance(a, int | float) and not isinstance(a, bool)
    nb = isinstance(b, int | float) and not isinstance(b, bool)
    if na or nb:
        return na and nb and a == b
    return _type_name(a) == _type_name(b) and a == b


def _short(value, limit: int = 40) -> str:
    text = json.dumps(value, ensure_ascii=False) if _type_name(value) in _TYPES else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class Tool:
    """A tool the model may call: ``name``, a one-line ``description``, ``parameters`` (JSON schema), ``fn``.

    ``parameters`` is a JSON-schema object, e.g. ``{"type": "object", "properties":
    {"expression": {"type": "string", "maxLength": 256}}, "required": ["expression"],
    "additionalProperties": False}``; ``fn(**arguments)`` does the work. Calling the tool,
    ``tool(**arguments)``, validates the arguments first, so ``fn`` only sees valid ones.
    """

    name: str
    description: str
    parameters: dict
    fn: Callable

    def __post_init__(self):
        check_type("name", self.name, str)
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", self.name):
            raise ValueError(f"name must be an identifier of at most 64 characters, got {self.name!r}")
        check_type("description", self.description, str)
        self.parameters = check_schema(self.parameters)
        if self.parameters.get("type") != "object":
            raise ValueError(f"parameters must be a schema of type 'object', got type {self.parameters.get('type')!r}")
        check_callable("fn", self.fn)

    def schema(self) -> dict:
        """The tool as a model is shown it: ``{"name", "description", "parameters"}``."""
        return {"name": self.name, "description": self.description, "parameters": self.parameters}

    def __call__(self, **arguments):
        validate(arguments, self.parameters)
        return self.fn(**arguments)


class Registry(Mapping):
    """The tools a model may call, by name; :meth:`describe` is the listing for a prompt."""

    def __init__(self, tools: Iterable[Tool] | Mapping[str, Tool]):
        if isinstance(tools, Mapping):
            tools = list(tools.values())
        if isinstance(tools, Tool):
            tools = [tools]
        self._tools: dict[str, Tool] = {}
        for tool in tools:
            check_type("tools", tool, Tool, what="a list of Tool")
            if tool.name in self._tools:
                raise ValueError(f"tools has two tools named {tool.name!r}")
            self._tools[tool.name] = tool

    def __getitem__(self, name: str) -> Tool:
        return self._tools[name]

    def __iter__(self):
        return iter(self._tools)

    def __len__(self) -> int:
        return len(self._tools)

    def __repr__(self) -> str:
        return f"Registry({list(self._tools)})"

    def describe(self) -> str:
        """One JSON line per tool (name, description, parameters), then how to call one."""
        lines = [json.dumps(t.schema(), ensure_ascii=False) for t in self._tools.values()]
        example = format_call("NAME", {"ARGUMENT": "VALUE"})
        return "\n".join([*lines, f"To call a tool write {example}; the result follows as {format_result('...')}."])


def find_call(text: str) -> tuple[int, int] | None:
    """``(start, end)`` of the first complete ``<call>...</call>`` in ``text`` (end past the close), or None."""
    start = text.find(CALL_OPEN)
    if start < 0:
        return None
    close = text.find(CALL_CLOSE, start + len(CALL_OPEN))
    if close < 0:
        return None
    return start, close + len(CALL_CLOSE)


def _no_duplicates(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise ToolCallError(f"malformed JSON: the key {key!r} appears twice")
        out[key] = value
    return out


def _no_constant(name: str):
    raise ToolCallError(f"malformed JSON: {name} is not a JSON number")


def parse_call(text: str, registry: Mapping[str, Tool]) -> ToolCall:
    """The first complete call in ``text``, validated against its tool's schema; else :class:`ToolCallError`.

    The body between ``<call>`` and ``</call>`` must be a JSON object ``{"name": str,
    "arguments": object}`` (``arguments`` may be left out when the tool takes none), at most
    :data:`MAX_CALL_CHARS` characters, without duplicate keys, NaN or Infinity, and nested at
    most :data:`MAX_NESTING` levels.
    """
    check_type("text", text, str)
    if not isinstance(registry, Mapping):
        raise TypeError(f"registry must be a Registry or a dict of Tool, got {type(registry).__name__}")
    start = text.find(CALL_OPEN)
    if start < 0:
        raise ToolCallError(f"no call: the text has no {CALL_OPEN}")
    close = text.find(CALL_CLOSE, start + len(CALL_OPEN))
    if close < 0:
        raise ToolCallError(f"unterminated call: {CALL_OPEN} without {CALL_CLOSE}")
    body = text[start + len(CALL_OPEN) : close]
    if len(body) > MAX_CALL_CHARS:
        raise ToolCallError(f"the call is {len(body)} characters long; at most {MAX_CALL_CHARS} are read")
    try:
        obj = json.loads(body, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except RecursionError:
        raise ToolCallError(f"the call is nested too deeply (more than {MAX_NESTING} levels)") from None
    except json.JSONDecodeError as e:
        raise ToolCallError(f"malformed JSON in the call: {e.msg} at character {e.pos}") from None
    except ValueError as e:  # e.g. an integer literal past Python's digit limit
        if isinstance(e, ToolCallError):
            raise
        raise ToolCallError(f"malformed JSON in the call: {e}") from None
    if not isinstance(obj, dict):
        raise ToolCallError(f"the call must be a JSON object with 'name' and 'arguments', got {_type_name(obj)}")
    extra = sorted(set(obj) - {"name", "arguments"})
    if extra:
        raise ToolCallError(f"the call has unexpected keys {extra}; a call has 'name' and 'arguments'")
    if "name" not in obj:
        raise ToolCallError("the call has no 'name'")
    name = obj["name"]
    if not isinstance(name, str):
        raise ToolCallError(f"the call's name must be a string, got {_type_name(name)}")
    if name not in registry:
        raise ToolCallError(f"unknown tool {name!r}; known tools: {sorted(registry)}")
    arguments = obj.get("arguments", {})
    if not isinstance(arguments, dict):
        raise ToolCallError(f"arguments must be a JSON object, got {_type_name(arguments)}")
    validate(arguments, registry[name].parameters)
    return ToolCall(name, arguments)


def run_call(call: ToolCall, registry: Mapping[str, Tool]) -> str:
    """Run a parsed call and return its result as text (``str`` of what the tool returned)."""
    out = registry[call.name](**call.arguments)
    return out if isinstance(out, str) else str(out)


# --------------------------------------------------------------------------- the safe calculator

#: Longest expression read, in characters.
MAX_EXPRESSION_CHARS = 256
#: Most AST nodes and deepest nesting of an expression.
MAX_NODES = 100
MAX_DEPTH = 32
#: Most decimal digits of any operand or result (numerator and denominator each).
MAX_DIGITS = 1000
#: Largest |exponent| of ``**`` (also bounded by the result's digits).
MAX_EXPONENT = 10_000
#: Significant digits of a non-integer result.
SIGNIFICANT_DIGITS = 12

_CONTEXT = Context(prec=SIGNIFICANT_DIGITS)
_MAX_BITS = math.ceil(MAX_DIGITS * math.log2(10))
_LOG2_10 = math.log2(10)


def _too_big(x) -> bool:
    """More than MAX_DIGITS decimal digits in x (numerator or denominator); exact near the bound."""
    if isinstance(x, int):
        n = x.bit_length()
        if n <= _MAX_BITS - 4:
            return False
        return n > _MAX_BITS + 1 or len(str(abs(x))) > MAX_DIGITS
    return _too_big(x.numerator) or _too_big(x.denominator)


def _bits(x) -> int:
    """Bits of the largest of numerator and denominator (an upper bound on log2)."""
    if isinstance(x, int):
        return x.bit_length()
    return max(x.numerator.bit_length(), x.denominator.bit_length())


def _norm(x):
    """A Fraction with denominator 1 becomes an int (ints are faster and print exactly)."""
    if isinstance(x, Fraction) and x.denominator == 1:
        return x.numerator
    return x


def _check_size(x, what: str):
    if _too_big(x):
        raise CalculatorError(f"{what} has more than {MAX_DIGITS} digits")
    return x


def _div(a, b):
    if b == 0:
        raise CalculatorError("division by zero")
    if isinstance(a, int) and isinstance(b, int):
        q, r = divmod(a, b)
        return q if r == 0 else Fraction(a, b)
    return _norm(Fraction(a) / b)


def _floordiv(a, b):
    if b == 0:
        raise CalculatorError("division by zero (//)")
    return a // b


def _mod(a, b):
    if b == 0:
        raise CalculatorError("modulo by zero (%)")
    return _norm(a % b)


def _pow(a, b):
    if isinstance(b, Fraction):  # a fractional exponent: irrational in general, so a float result
        if a < 0:
            raise CalculatorError("a negative number to a fractional power is not a real number")
        if _bits(a) > 1000 or _bits(b) > 64:
            raise CalculatorError("operands of a fractional power are too large")
        try:
            y = float(a) ** float(b)
        except OverflowError:
            raise CalculatorError(f"the result has more than {MAX_DIGITS} digits") from None
        if not math.isfinite(y):
            raise CalculatorError(f"the result has more than {MAX_DIGITS} digits")
        return _norm(Fraction(repr(y)))
    if abs(b) > MAX_EXPONENT:
        raise CalculatorError(f"exponent {b} is outside [-{MAX_EXPONENT}, {MAX_EXPONENT}]")
    if a == 0 and b < 0:
        raise CalculatorError("zero to a negative power (division by zero)")
    if a not in (0, 1, -1) and abs(b) * max(_bits(a) - 1, 1) > _MAX_BITS + 4:
        raise CalculatorError(f"the result of a power would have more than {MAX_DIGITS} digits")
    if b < 0:
        return _norm(Fraction(1) / (Fraction(a) ** -b))
    return a**b


_BINOPS = {
    ast.Add: lambda a, b: _norm(a + b),
    ast.Sub: lambda a, b: _norm(a - b),
    ast.Mult: lambda a, b: _norm(a * b),
    ast.Div: _div,
    ast.FloorDiv: _floordiv,
    ast.Mod: _mod,
    ast.Pow: _pow,
}
_SYMBOL = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%", ast.Pow: "**"}

_WHAT = {
    ast.Name: "a name",
    ast.Call: "a function call",
    ast.Attribute: "an attribute",
    ast.Subscript: "an index",
    ast.Compare: "a comparison",
    ast.BoolOp: "a boolean operator",
    ast.Lambda: "a lambda",
    ast.ListComp: "a comprehension",
    ast.GeneratorExp: "a comprehension",
    ast.SetComp: "a comprehension",
    ast.DictComp: "a comprehension",
    ast.IfExp: "a conditional",
    ast.JoinedStr: "a string",
    ast.List: "a list",
    ast.Tuple: "a tuple",
    ast.Dict: "a dict",
    ast.Set: "a set",
    ast.NamedExpr: "an assignment",
    ast.Starred: "a starred expression",
}


class _Walker:
    __slots__ = ("nodes",)

    def __init__(self):
        self.nodes = 0

    def eval(self, node, depth: int):
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise CalculatorError(f"the expression has more than {MAX_NODES} parts")
        if depth > MAX_DEPTH:
            raise CalculatorError(f"the expression is nested more than {MAX_DEPTH} levels")
        kind = type(node)
        if kind is ast.Constant:
            v = node.value
            if type(v) is int:
                return v if v.bit_length() <= _MAX_BITS - 4 else _check_size(v, "a number")
            if type(v) is float:
                if not math.isfinite(v):
                    raise CalculatorError("a number is too large")
                n, d = Decimal(repr(v)).as_integer_ratio()  # the decimal as written, exactly: 0.1 -> 1/10
                return _check_size(n if d == 1 else Fraction(n, d), "a number")
            raise CalculatorError(f"only numbers are allowed, found {type(v).__name__} {v!r:.20}")
        if kind is ast.BinOp:
            op = _BINOPS.get(type(node.op))
            if op is None:
                raise CalculatorError(f"operator {type(node.op).__name__} is not allowed; allowed: + - * / // % **")
            a = self.eval(node.left, depth + 1)
            b = self.eval(node.right, depth + 1)
            if type(a) is int and type(b) is int and a.bit_length() < 1000 and b.bit_length() < 1000:
                kind = type(node.op)  # small integers: + - * cannot overflow the digit bound
                if kind is ast.Add:
                    return a + b
                if kind is ast.Sub:
                    return a - b
                if kind is ast.Mult:
                    return a * b
            if type(node.op) is ast.Mult and _bits(a) + _bits(b) > _MAX_BITS + 8:
                raise CalculatorError(f"the result of * would have more than {MAX_DIGITS} digits")
            return _check_size(op(a, b), "the result")
        if kind is ast.UnaryOp:
            v = self.eval(node.operand, depth + 1)
            if type(node.op) is ast.USub:
                return -v
            if type(node.op) is ast.UAdd:
                return v
            raise CalculatorError(f"operator {type(node.op).__name__} is not allowed; allowed: unary + and -")
        what = _WHAT.get(kind, type(node).__name__)
        if kind is ast.Name:
            what += f" ({node.id!r:.30})"
        elif kind is ast.Call and type(node.func) is ast.Name:
            what += f" ({node.func.id!r:.30})"
        raise CalculatorError(f"only numbers and + - * / // % ** are allowed, found {what}")


def evaluate(expression: str) -> int | Fraction:
    """The exact value of an arithmetic expression: an int or a Fraction; :class:`CalculatorError` if refused."""
    check_type("expression", expression, str)
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise CalculatorError(f"expression must be at most {MAX_EXPRESSION_CHARS} characters, got {len(expression)}")
    if not expression.strip():
        raise CalculatorError("expression is empty")
    try:
        tree = compile(expression.strip(), "<calculator>", "eval", ast.PyCF_ONLY_AST, dont_inherit=True)
    except SyntaxError as e:
        raise CalculatorError(f"not an arithmetic expression: {e.msg}") from None
    except (RecursionError, MemoryError, ValueError):
        raise CalculatorError(f"the expression is nested more than {MAX_DEPTH} levels") from None
    return _Walker().eval(tree.body, 0)


def format_number(value) -> str:
    """An int exactly; any other rational as a decimal rounded to :data:`SIGNIFICANT_DIGITS` digits.

    Plain notation for magnitudes from 1e-6 to 1e15, scientific (``1.5e-20``) outside;
    trailing zeros dropped (``1/8`` is ``0.125``, ``1/3`` is ``0.333333333333``). A float
    is read as the decimal it prints as (``0.1`` is 1/10).
    """
    if isinstance(value, bool) or not isinstance(value, int | float | Fraction):
        raise TypeError(f"value must be an int, float or Fraction, got {type(value).__name__}")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"value must be finite, got {value}")
        value = Fraction(*Decimal(repr(value)).as_integer_ratio())
    if isinstance(value, int) or value.denominator == 1:
        return str(int(value))
    d = _CONTEXT.divide(Decimal(value.numerator), Decimal(value.denominator)).normalize(_CONTEXT)
    if d == 0:
        return "0"
    exp = d.adjusted()
    if -6 <= exp < 15:
        text = format(d, "f")
        return text.rstrip("0").rstrip(".") if "." in text else text
    mantissa, _, e = format(d, "e").partition("e")
    if "." in mantissa:
        mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(e)}"


def calculate(expression: str) -> str:
    """Evaluate arithmetic safely and exactly; the result as text (see :func:`format_number`).

    ``calculate("17*23") == "391"``, ``calculate("0.1+0.2") == "0.3"``,
    ``calculate("2**100")`` is exact, ``calculate("9**9**9")`` raises :class:`CalculatorError`
    (the exponent 387420489 is past :data:`MAX_EXPONENT`) without computing anything big.
    """
    return format_number(evaluate(expression))


CALCULATOR_PARAMETERS = {
    "type": "object",
    "properties": {
        "expression": {
            "type": "string",
            "description": "arithmetic on numbers with + - * / // % ** and parentheses",
            "minLength": 1,
            "maxLength": MAX_EXPRESSION_CHARS,
        }
    },
    "required": ["expression"],
    "additionalProperties": False,
}


def calculator_tool() -> Tool:
    """The safe calculator as a tool: ``{"expression": str}`` -> the exact result as text."""
    return Tool(
        "calculator",
        "Evaluate an arithmetic expression exactly (integers, decimals, + - * / // % ** and parentheses).",
        CALCULATOR_PARAMETERS,
        calculate,
    )


# --------------------------------------------------------------------------- retrieval and python tools


def retrieval_tool(
    kb, k: int = 1, *, method: str = "hybrid", max_chars: int = 400, with_title: bool = False, name: str = "search"
) -> Tool:
    """Chapter 08's knowledge base as a tool: ``{"query": str}`` -> the ``k`` best passages' text.

    ``kb`` is a :class:`course_lib.rag.KnowledgeBase` (anything with ``search(query, k,
    method=)`` returning hits with ``.passage`` and ``.title``). Passages are joined by
    newlines, each prefixed with its title when ``with_title``; the whole result is cut to
    ``max_chars`` characters (a model's context is short).
    """
    if not callable(getattr(kb, "search", None)):
        raise TypeError(f"kb must be a KnowledgeBase (with .search), got {type(kb).__name__}")
    k = check_int("k", k, min=1, max=20)
    max_chars = check_int("max_chars", max_chars, min=1)
    check_choice("method", method, ("bm25", "dense", "hybrid"))
    check_bool("with_title", with_title)

    def search(query: str) -> str:
        if not query.strip():
            raise ToolCallError("arguments.query must not be blank")
        hits = kb.search(query, k, method=method)
        parts = [f"{h.title}: {h.passage}" if with_title else h.passage for h in hits]
        return "\n".join(parts)[:max_chars]

    params = {
        "type": "object",
        "properties": {"query": {"type": "string", "description": "what to look up", "minLength": 1, "maxLength": 256}},
        "required": ["query"],
        "additionalProperties": False,
    }
    return Tool(name, "Search the knowledge base of articles; returns the best passage.", params, search)


def python_tool(*, timeout: float = 2.0, memory_mb: int = 256, max_output: int = 2000, **options) -> Tool:
    """Python code run in :func:`course_lib.sandbox.run` (a separate, limited process) as a tool.

    ``{"code": str}`` -> what the code printed; a non-zero exit adds the last line of its
    stderr as ``error: ...``; a timeout says so. ``options`` go to :func:`course_lib.sandbox.run`.
    """
    from course_lib import sandbox

    sandbox.check_options(timeout=timeout, memory_mb=memory_mb, max_output=max_output, **options)

    def run_python(code: str) -> str:
        r = sandbox.run(code, timeout=timeout, memory_mb=memory_mb, max_output=max_output, **options)
        out = r.stdout
        if r.timed_out:
            return (out + f"\nerror: timed out after {timeout:g} s").strip()
        if r.returncode != 0:
            last = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
            msg = last[-1] if last else f"exit status {r.returncode}"
            return (out + f"\nerror: {msg}").strip()
        return out.rstrip("\n")

    params = {
        "type": "object",
        "properties": {"code": {"type": "string", "description": "Python source; print the answer", "maxLength": 4000}},
        "required": ["code"],
        "additionalProperties": False,
    }
    return Tool("python", "Run a short Python program in a sandbox and return what it prints.", params, run_python)


# --------------------------------------------------------------------------- the agent loop


@dataclass
class AgentStep:
    """One generation of the loop: the text generated (up to and including ``</call>`` when a call was
    made), the parsed call (None when there was none or it failed to parse), the result text fed back
    (None when no call), the tool's wall seconds, the tokens this generation counted, and whether the
    result is an error."""

    text: str
    call: ToolCall | None
    result: str | None
    seconds: float
    tokens: int
    error: bool = False


@dataclass
class AgentResult:
    """What :func:`run_agent` returns.

    ``answer``: the final text after the last result, up to the first stop string
    (None when the loop stopped before an answer); ``steps``: generations made;
    ``log``: an :class:`AgentStep` per generation; ``tokens_generated``: total;
    ``tool_seconds``: wall time spent inside tools; ``stopped``: ``"answer"``,
    ``"max_steps"`` or ``"token_budget"``; ``transcript``: prompt + everything appended.
    """

    answer: str | None
    steps: int
    log: list[AgentStep]
    tokens_generated: int
    tool_seconds: float
    stopped: str
    transcript: str = ""
    calls: int = field(default=0)


def run_agent(
    generate: Callable,
    prompt: str,
    registry: Mapping[str, Tool],
    *,
    max_steps: int = 4,
    max_new_tokens: int = 64,
    token_budget: int = 512,
    count_tokens: Callable[[str], int] | None = None,
    stop: tuple[str, ...] = ("\n",),
) -> AgentResult:
    """Generate, run tool calls, feed their results back, until the model answers.

    ``generate(text, max_new_tokens)`` continues ``text``; it returns the continuation as a
    ``str``, or ``(str, n_tokens)`` when it knows how many tokens it generated. It should
    stop after ``</call>`` when it can (a sampler with a stop string); whatever follows the
    first complete call is discarded, as a runtime that stops at ``</call>`` would never
    have produced it.

    Tokens: ``n_tokens`` when ``generate`` returns it (the honest count of what was
    computed, discarded text included); otherwise ``count_tokens(kept_text)`` (pass the
    model's tokenizer, e.g. ``lambda s: len(patient.encode(s))``); otherwise the number of
    characters kept (a stand-in: one character per token). Each generation gets
    ``min(max_new_tokens, token_budget - tokens_so_far)`` new tokens.

    Per generation (a *step*): if the text holds a complete call, it is parsed and run and
    ``text + <result>...</result>`` is appended (a :class:`ToolCallError` or a tool's
    ``ValueError`` becomes ``<result>error: message</result>``); an unterminated call
    (``<call>`` without ``</call>``) is appended with an error result too. A text without
    ``<call>`` is the answer: cut at the first ``stop`` string and stripped. The loop ends
    with the answer, after ``max_steps`` generations, or when the token budget is spent.
    """
    check_callable("generate", generate)
    check_type("prompt", prompt, str)
    if not isinstance(registry, Mapping):
        raise TypeError(f"registry must be a Registry or a dict of Tool, got {type(registry).__name__}")
    max_steps = check_int("max_steps", max_steps, min=1, max=64)
    max_new_tokens = check_int("max_new_tokens", max_new_tokens, min=1)
    token_budget = check_int("token_budget", token_budget, min=1)
    if count_tokens is not None:
        check_callable("count_tokens", count_tokens)
    if isinstance(stop, str) or not all(isinstance(s, str) and s for s in stop):
        raise TypeError("stop must be a tuple of non-empty strings")

    context, log = prompt, []
    tokens, tool_seconds, calls = 0, 0.0, 0
    answer, stopped = None, "max_steps"
    for _ in range(max_steps):
        left = token_budget - tokens
        if left <= 0:
            stopped = "token_budget"
            break
        out = generate(context, min(max_new_tokens, left))
        n_reported = None
        if isinstance(out, tuple):
            out, n_reported = out
            n_reported = check_int("n_tokens returned by generate", n_reported, min=0)
        check_type("the continuation returned by generate", out, str)
        span = find_call(out)
        kept = out[: span[1]] if span else out
        n = n_reported if n_reported is not None else (count_tokens(kept) if count_tokens else len(kept))
        tokens += n
        if span is None and CALL_OPEN not in out:
            cut = min([i for i in (kept.find(s) for s in stop) if i >= 0], default=len(kept))
            answer = kept[:cut].strip()
            context += kept
            log.append(AgentStep(kept, None, None, 0.0, n))
            stopped = "answer"
            break
        call, error = None, False
        t0 = time.perf_counter()
        try:
            call = parse_call(kept, registry)
            calls += 1
            result = run_call(call, registry)
        except (ValueError, TypeError, ArithmeticError) as e:  # ToolCallError, CalculatorError, a tool's own
            result, error = f"error: {e}", True
        seconds = time.perf_counter() - t0
        tool_seconds += seconds
        result = result.replace(RESULT_CLOSE, "")  # a result cannot close its own delimiter early
        context += kept + format_result(result)
        log.append(AgentStep(kept, call, result, seconds, n, error))
    else:
        stopped = "max_steps"
    if stopped == "max_steps" and tokens >= token_budget:
        stopped = "token_budget"
    return AgentResult(answer, len(log), log, tokens, tool_seconds, stopped, context, calls)
