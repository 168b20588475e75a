# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 09 · Tool use: a calculator, a search engine and a sandbox for a very small model
#
# The article says models are increasingly "designed to use tools (calculators, code
# executors, search APIs). The core language model can be smaller." A 0.45 M-parameter model
# cannot multiply two six-digit numbers, nor know an article published after its training;
# a calculator and a search engine can. This chapter builds the runtime that lets a model
# call them — a call protocol, a safe calculator, a sandbox for code — teaches the tiny
# patient to use it, and measures it against a patient seven times its size that answers
# from memory. It also measures what a tool costs: tokens, time, and a new attack surface.
#
# > **What you'll build:** a tool-call protocol and its parser, a calculator that walks the
# > syntax tree instead of calling `eval`, a tour of a sandboxed code runner under attack, an
# > agent loop, and a tiny patient fine-tuned to call a calculator and a search tool.
# > **What you'll learn:** what a small model cannot store or compute, why a parser must
# > refuse malformed calls with clear errors, why `eval` is never a calculator, what a
# > sandbox does and does not protect against, and how much accuracy, time and tokens a
# > tool buys on held-out questions.
# > **What you'll need:** chapters 01 (the patients, decoding) and 08 (the knowledge
# > base). No GPU, no downloads. The fine-tune is precomputed by
# > `python -m course_lib.build tools`; this notebook re-scores it live.

# %% tags=["bootstrap"]
# Setup. On Colab (or any kernel without the course) this installs course_lib first.
import importlib.util
import subprocess
import sys

REPO_URL = "https://github.com/beyond-scale-course/efficient-ai-from-scratch"
COURSE_VERSION = "0.1.0"  # the release this notebook was written for (scripts/pin_bootstrap.py)
if importlib.util.find_spec("course_lib") is None:
    subprocess.check_call(
        [sys.executable, "-m", "pip", "install", "-q", f"beyond-scale-course @ git+{REPO_URL}@v{COURSE_VERSION}"]
    )
if "google.colab" in sys.modules:  # let Colab render ipywidgets
    from google.colab import output

    output.enable_custom_widget_manager()

from course_lib.notebook import start

device = start(seed=0)

# %%
import ast
import json
import time
from fractions import Fraction

import numpy as np
from IPython.display import Markdown, display

from course_lib import claims, data, fingerprint, measure, sandbox, tools, viz, zoo
from course_lib.experiments import tools as runs

tiny, small = zoo.load("tiny"), zoo.load("small")
tool_model = runs.load_tool_model()  # the tiny patient after the fine-tune of section 5
questions = runs.question_set()  # the held-out questions (section 5 says how they are made)
stored = runs.load_results()  # the build's answers to every question, with its machine

# %% [markdown]
# ## 1 · What a small model cannot store or compute
#
# Two kinds of question defeat a small model however well it is trained. **Exact arithmetic
# on many digits**: a language model predicts the next digit from patterns; nothing in its
# weights multiplies. **Facts it never saw**: the patients were trained on the corpus's
# train split; an article of the test split is, for them, knowledge *added after training*.
# Here are both, asked of the tiny patient and of the small one (seven times its parameters),
# each shown three solved examples of the same kind first (*few-shot*, the fairest closed-book
# prompt for a model that was not trained on this format).

# %%
ask = [questions[4], questions[100]]  # one 6-digit product... and one fact from a held-out article
for q in ask:
    prompt = runs.closed_book_prompt(q, runs.shots_for(q.kind))
    got = {p.name: runs.closed_book_answer(p.model, p.tokenizer, prompt)[0] for p in (tiny, small)}
    print(f"{q.text}\n  gold: {q.gold}   tiny: {got['tiny'].strip()!r}   small: {got['small'].strip()!r}\n")
print(
    "the prompt the small patient saw for the second question:\n"
    + runs.closed_book_prompt(ask[1], runs.shots_for("retrieval"))
)

# %% [markdown]
# Neither model is close. Floating point, the other reflex, is not the answer either: a
# double has 53 bits of mantissa, so a product of two 9-digit numbers is already rounded.

# %%
a, b = 123456789, 987654321
print(f"exact: {a * b}\nfloat: {float(a) * float(b):.0f}\nerror: {int(float(a) * float(b)) - a * b}")
assert int(float(a) * float(b)) != a * b

# %% [markdown]
# ## 2 · The protocol: a call in the model's own text
#
# A tool is described by a name, one line of description and its parameters as a
# [JSON schema](https://json-schema.org/). The model calls it by writing one JSON object
# between delimiters in its output; the runtime stops generation at the closing delimiter,
# runs the tool and appends the result, and the model continues reading it:
#
# ```
# Q: Compute "17*23".
# <call>{"name": "calculator", "arguments": {"expression": "17*23"}}</call><result>391</result>391
# ```
#
# Everything up to `</call>` is the model's; `<result>…</result>` is the runtime's. The
# parser is where a runtime protects itself from a model's mistakes: it must find the call,
# parse the JSON, check the tool exists and that the arguments match the schema — and say
# what is wrong in words the model (or a person reading the log) can act on. From scratch,
# for schemas with `type`, `properties`, `required` and `additionalProperties`:

# %%
OPEN, CLOSE = "<call>", "</call>"
JSON_TYPES = {"string": str, "number": (int, float), "integer": int, "boolean": bool, "object": dict}


def parse_call_scratch(text: str, schemas: dict) -> tuple[str, dict]:
    """(name, arguments) of the first complete call in ``text``; ValueError says what is wrong."""
    start = text.find(OPEN)
    end = text.find(CLOSE, start + len(OPEN))
    if start < 0 or end < 0:
        raise ValueError("no complete call")
    try:
        obj = json.loads(text[start + len(OPEN) : end])
    except json.JSONDecodeError as e:
        raise ValueError(f"malformed JSON: {e.msg}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        raise ValueError("a call is an object with a string 'name'")
    if set(obj) - {"name", "arguments"}:
        raise ValueError(f"unexpected keys {sorted(set(obj) - {'name', 'arguments'})}")
    if obj["name"] not in schemas:
        raise ValueError(f"unknown tool {obj['name']!r}")
    schema, args = schemas[obj["name"]], obj.get("arguments", {})
    if not isinstance(args, dict):
        raise ValueError("arguments must be an object")
    for key in schema.get("required", []):
        if key not in args:
            raise ValueError(f"missing argument {key!r}")
    for key, value in args.items():
        if key not in schema["properties"]:
            raise ValueError(f"unexpected argument {key!r}")
        want = JSON_TYPES[schema["properties"][key]["type"]]
        if isinstance(value, bool) and want is not bool or not isinstance(value, want):  # JSON: true is no number
            raise ValueError(f"argument {key!r} must be a {schema['properties'][key]['type']}")
    return obj["name"], args


# %% [markdown]
# `course_lib.tools.parse_call` is the same idea with the rest of JSON schema (enums,
# bounds, lengths, patterns, nested objects and arrays — its tests check it against the
# `jsonschema` package), limits on size and nesting, and duplicate keys and `NaN` refused.
# On valid calls both return the same call; on malformed ones both refuse:

# %%
kb = runs.knowledge_base("test")  # the held-out articles' passages: chapter 08's KnowledgeBase
registry = runs.registry(kb)  # the calculator and search over kb
schemas = {name: tool.parameters for name, tool in registry.items()}
valid = [
    '<call>{"name": "calculator", "arguments": {"expression": "17*23"}}</call>',
    'some text first <call>{"name": "search", "arguments": {"query": "Frida Kahlo"}}</call> and after',
    '<call>{"arguments": {"expression": "2**10"}, "name": "calculator"}</call>',
]
malformed = {
    "no closing delimiter": '<call>{"name": "calculator", "arguments": {"expression": "1+1"}}',
    "not JSON": "<call>{name: calculator}</call>",
    "trailing comma": '<call>{"name": "calculator", "arguments": {"expression": "1",}}</call>',
    "unknown tool": '<call>{"name": "weather", "arguments": {"city": "Oslo"}}</call>',
    "missing argument": '<call>{"name": "search", "arguments": {}}</call>',
    "wrong type": '<call>{"name": "calculator", "arguments": {"expression": 17}}</call>',
    "extra argument": '<call>{"name": "search", "arguments": {"query": "x", "k": 5}}</call>',
    "arguments not an object": '<call>{"name": "search", "arguments": ["x"]}</call>',
}
for text in valid:
    call = tools.parse_call(text, registry)
    assert parse_call_scratch(text, schemas) == (call.name, call.arguments)
rows = []
for what, text in malformed.items():
    try:
        parse_call_scratch(text, schemas)
        raise AssertionError(f"the scratch parser accepted: {what}")
    except ValueError as e:
        mine = str(e)
    try:
        tools.parse_call(text, registry)
        raise AssertionError(f"course_lib accepted: {what}")
    except tools.ToolCallError as e:
        theirs = str(e)
    rows.append({"malformed call": what, "from scratch": mine, "course_lib.tools.parse_call": theirs})
print(f"{len(valid)} valid calls parsed identically; {len(rows)} malformed calls refused by both")
viz.Table(rows, caption="Malformed calls and the errors that come back (in the agent loop: <result>error: …</result>)")

# %% [markdown]
# In the agent loop an error is not an exception that ends the answer: it comes back as
# `<result>error: …</result>`, so a model that can read it may correct itself.
#
# ## 3 · A calculator that never calls `eval`
#
# The obvious calculator is `eval(expression)`. It is also a remote shell: `eval` runs any
# Python, and the expression comes from a model that reads untrusted text. Python's own
# parser shows what such an "expression" really is — we parse it, we never run it:

# %%
attack = "__import__('os').system('rm -rf ~')"
print(ast.dump(ast.parse(attack, mode="eval").body, indent=1)[:600])
kinds = sorted({type(n).__name__ for n in ast.walk(ast.parse(attack, mode="eval"))})
print("node kinds:", kinds)

# %% [markdown]
# A call of a name, an attribute, another call: none of them is arithmetic. A safe calculator
# therefore parses with `ast` and **walks the tree itself**, allowing only numbers and the
# arithmetic operators; anything else is refused before it does anything. Exactness comes
# from `fractions.Fraction`: `0.1` is the rational 1/10, so `0.1 + 0.2` is exactly `0.3`.
# Size comes from checking *before* each operation — a power whose result would have more
# digits than the bound is refused without computing it. From scratch:

# %%
OPS = {
    ast.Add: lambda x, y: x + y,
    ast.Sub: lambda x, y: x - y,
    ast.Mult: lambda x, y: x * y,
    ast.Div: lambda x, y: x / y,
}
MAX_DIGITS_SCRATCH = 1000


def calc_scratch(expression: str) -> Fraction:
    """Exact value of an arithmetic expression: numbers, + - * / ** and unary minus only."""

    def walk(node, depth=0):
        if depth > 32:
            raise ValueError("too deeply nested")
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return Fraction(str(node.value))  # str: 0.1 is 1/10, not the double nearest to it
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = walk(node.operand, depth + 1)
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.BinOp) and type(node.op) in OPS:
            x, y = walk(node.left, depth + 1), walk(node.right, depth + 1)
            if isinstance(node.op, ast.Div) and y == 0:
                raise ValueError("division by zero")
            return OPS[type(node.op)](x, y)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
            x, y = walk(node.left, depth + 1), walk(node.right, depth + 1)
            if y.denominator != 1:
                raise ValueError("only whole exponents")
            if abs(x) > 1 and abs(y) * np.log10(float(abs(x))) > MAX_DIGITS_SCRATCH:  # size first, then compute
                raise ValueError(f"result would have more than {MAX_DIGITS_SCRATCH} digits")
            return x**y.numerator
        raise ValueError(f"not arithmetic: {type(node).__name__}")

    return walk(ast.parse(expression, mode="eval").body)


exprs = ["17*23", "0.1+0.2", "2**100", "-(3-10)*4", "1/3", "123456789*987654321", "2**-3", "7/8+1/8"]
for e in exprs:
    assert tools.format_number(calc_scratch(e)) == tools.calculate(e), e
viz.Table(
    [
        {"expression": e, "calc_scratch": tools.format_number(calc_scratch(e)), "tools.calculate": tools.calculate(e)}
        for e in exprs
    ],
    caption="The from-scratch walk and course_lib's calculator agree (results written by tools.format_number)",
)

# %% [markdown]
# `tools.calculate` adds `//`, `%`, bounds on the expression's length, node count and depth,
# and writes non-integers rounded to a fixed number of significant digits. Its limits, and
# what it says:

# %%
refused = [attack, "9**9**9", "10**2000", "9" * 300, "+".join(["1"] * 100), "x + 1", "[1, 2][0]", "1/0", "abs(-3)"]
rows = []
for e in refused:
    t0 = time.perf_counter()
    try:
        out = tools.calculate(e)
    except tools.CalculatorError as err:
        out = f"refused: {err}"
    rows.append(
        {
            "expression": e if len(e) < 40 else e[:37] + "...",
            "result": out,
            "µs": round((time.perf_counter() - t0) * 1e6),
        }
    )
    assert out.startswith("refused"), e
viz.Table(
    [{k: v for k, v in r.items() if k != "µs"} for r in rows], caption="Refused before anything is computed or run"
)

# %% tags=["nbval-ignore-output"]
print("time to refuse, µs:", {r["expression"]: r["µs"] for r in rows})
n_calc = 2000
t0 = time.perf_counter()
for i in range(n_calc):
    tools.calculate(f"{i}*{i + 7}+{i}/3")
calc_rate = n_calc / (time.perf_counter() - t0)
print(f"the calculator evaluates {calc_rate:,.0f} expressions/s on this machine")

# %% [markdown]
# `9**9**9` has about 370 million digits; the calculator refuses it in microseconds because
# the check comes first. A timeout would have spent its whole budget, and memory, first.
#
# ## 4 · The sandbox: code as a tool, and what it costs in safety
#
# A code tool (PAL, Gao et al. 2023, lets the model write a program and reads what it
# prints) is far more capable than a calculator — and runs whatever the model writes. The
# **threat model**: the snippet is hostile (a model can be steered by text it retrieved); it
# must not write outside its own directory, read the parent's secrets, reach the network,
# leave processes behind, or exhaust the machine. `course_lib.sandbox.run` stacks independent
# layers, so one that fails is not the only thing in the way. The layers in force here:

# %%
layers = sandbox.layers()
print("layers in force on this machine:", ", ".join(layers))
print(sandbox.run("print(sum(i * i for i in range(10)))").stdout)

# %% [markdown]
# What it does **not** protect against, in plain words: a kernel bug (every layer is the same
# kernel — a VM or gVisor is the answer to that); reading files any user may read; filling
# the disk inside its directory up to the per-file limit; competing for the CPU until its
# timeout; and, where the runner is not root, everything the parent's user may do once the
# in-process audit hook is bypassed. A few attacks, run live:

# %%
import os

os.environ["COURSE_DEMO_SECRET"] = "s3cr3t-token-not-for-the-sandbox"
outside = os.path.join(os.path.expanduser("~"), ".course_sandbox_probe")
attacks = {
    "write outside its directory": f"open({outside!r}, 'w').write('pwned')",
    "read the parent's environment": "import os; print(os.environ.get('COURSE_DEMO_SECRET'))",
    "open a socket": "import socket; socket.create_connection(('127.0.0.1', 22), timeout=1)",
    "run a shell command": "import os; os.system('echo hello from the shell')",
    "subprocess": "import subprocess; print(subprocess.run(['id'], capture_output=True).stdout)",
    "call libc through ctypes": "import ctypes; ctypes.CDLL(None).system(b'id')",
    "infinite loop": "while True: pass",
    "huge output": "print('x' * 10**8)",
}
rows, live = [], {}
for what, code in attacks.items():
    r = sandbox.run(code, timeout=1.0, memory_mb=128)
    leaked = "s3cr3t" in r.stdout + r.stderr
    wrote = os.path.exists(outside)
    last = (r.stderr.strip().splitlines() or [""])[-1]
    ok = not leaked and not wrote and (not r.ok or not r.stdout.strip() or r.stdout.strip() == "None")
    live[what] = (r, ok)
    rows.append(
        {"attack": what, "refused": ok, "how": "timed out" if r.timed_out else ("killed" if r.killed else last[:90])}
    )
assert all(ok for _, ok in live.values()), [w for w, (_, ok) in live.items() if not ok]
viz.Table(
    [{k: v for k, v in r.items()} for r in rows], caption="Attacks run live against sandbox.run (timeout 1 s, 128 MB)"
)

# %% tags=["nbval-ignore-output"]
print("seconds per run:", {w: round(r.seconds, 3) for w, (r, _) in live.items()})
rt = measure.interleaved({"print(1+1)": lambda: sandbox.run("print(1+1)")}, warmup=1, repeats=5, min_time=0.5)
print(
    f"sandbox round trip (start, run print(1+1), clean up): {rt['print(1+1)'].median * 1e3:.0f} ms median ({rt.note()})"
)

# %% [markdown]
# Eight attacks prove little: the sandbox is attacked by a corpus of over ten thousand
# inputs — the hand-written escapes above and many more, each wrapped in evasions
# (`getattr` by string, `exec` of base64, threads, `atexit`, signal handlers) and mutated at
# random — with an arena around the runs that watches for files written outside, connections
# received, processes left behind, signals to the parent, memory beyond the limit and
# secrets printed: `python scripts/attack_sandbox.py`. Its numbers:

# %%
from course_lib import paths

corpus_run = json.loads(paths.zoo_file("sandbox_attacks.json").read_text())
alone = corpus_run.get("os_layers_alone")
display(
    Markdown(
        f"Stored run of `python scripts/attack_sandbox.py` ({fingerprint.provenance(corpus_run['machine'])}): "
        f"**{corpus_run['tried']:,}** inputs, **{corpus_run['n_escapes']}** escapes, p50 "
        f"{corpus_run['p50_seconds']} s per input, worst case {corpus_run['worst_seconds']} s against a "
        f"{corpus_run['timeout']} s timeout; layers {', '.join(corpus_run['layers'])}."
        + (
            f" With the audit hook off (the operating-system layers alone): {alone['tried']:,} inputs, "
            f"{alone['n_escapes']} escapes."
            if alone
            else ""
        )
    )
)
assert corpus_run["n_escapes"] == 0 and (alone is None or alone["n_escapes"] == 0)

# %% [markdown]
# ## 5 · Teaching the tiny patient to call tools
#
# **The task.** A fixed question set (version printed below, regenerated from seeds by
# `course_lib.experiments.tools.question_set`):
#
# * *arithmetic* — `Compute "a op b".` with two integers of the same length (2 to 6 digits)
#   and `+`, `-` or `*`; the gold answer is the exact integer;
# * *fresh facts* — `Which number fills the blank in "…"?`: a clip of a passage of a
#   **test-split** article with one number (two digits or more) blanked out; the gold answer
#   is that number. No patient saw these articles in training: they are the knowledge added
#   after training, and the search tool holds them (a knowledge base of their passages, as in
#   chapter 08).
#
# **Scoring rule:** an answer is correct when, stripped of surrounding spaces and one final
# period, it equals the gold string exactly.
#
# **The fine-tune** (`python -m course_lib.build tools`): the tiny patient sees ideal
# transcripts — question, call, result, answer — on *training-split* articles and fresh
# arithmetic, with the loss only on what the model writes: the call and the answer. It
# learns two skills: to write the right call, copying the expression or the clip into it, and
# to copy the answer out of the result. Neither needs a fact or a multiplication table in
# its weights.

# %%
kinds = [q.kind for q in questions]
card = tool_model.meta
print(
    f"question set version {runs.QUESTION_SET_VERSION}: {kinds.count('arithmetic')} arithmetic + {kinds.count('retrieval')} fresh-fact questions"
)
q_show = questions[150]
text, spans = runs.transcript(q_show)
ids, mask = runs.encode_transcript(tool_model.tokenizer, text, spans)
print(text)
print("trained tokens:", "".join(tool_model.tokenizer.decode([i]) if m else "·" for i, m in zip(ids[:-1], mask[:-1])))
print(
    f"\nfine-tune: {card['config']['steps']} steps of {card['config']['batch_size']} transcripts, "
    f"loss {card['loss_curve'][0]:.2f} -> {card['loss_curve'][-1]:.2f}; trained in {card['train_seconds']:.0f} s "
    f"(a busy machine). {fingerprint.provenance(card['machine'])}"
)

# %%
fig = viz.figure(
    title="Fine-tuning the tiny patient to use tools: loss on the tokens it writes",
    xaxis_title="step",
    yaxis_title="cross-entropy (nats per token)",
)
fig.add_scatter(
    x=[25 * i + 12 for i in range(len(card["loss_curve"]))], y=card["loss_curve"], mode="lines+markers", name="loss"
)
fig

# %% [markdown]
# ## 6 · The agent loop on real questions
#
# `tools.run_agent(generate, prompt, registry)` generates until the model closes a call,
# parses and runs it, appends the result and generates again, until the model answers
# without a call, or a step limit or a token budget ends it; every step is logged. The
# model's `generate` is greedy decoding that stops after `</call>` or at end-of-text.


# %%
def agent(patient, q):
    gen = runs.CountingGenerator(patient.model, patient.tokenizer)
    return tools.run_agent(
        gen, q.prompt, registry, max_steps=3, max_new_tokens=runs.MAX_NEW_TOKENS, token_budget=runs.TOKEN_BUDGET
    )


for q in (questions[1], questions[130]):
    res = agent(tool_model, q)
    print(f"--- {q.text}   (gold {q.gold})")
    for i, step in enumerate(res.log, start=1):
        call = f"{step.call.name}({step.call.arguments})" if step.call else "no call"
        print(f"step {i}: wrote {step.text!r}\n        parsed: {call}\n        result: {step.result!r}")
    print(
        f"answer {res.answer!r} -> {'correct' if runs.is_correct(res.answer or '', q.gold) else 'wrong'}; {res.tokens_generated} tokens, stopped: {res.stopped}\n"
    )

# %% [markdown]
# ## 7 · The measured comparison: tiny + tools against a patient seven times larger
#
# Three systems answer every held-out question: the fine-tuned tiny patient with its two
# tools, and the tiny and the small patients closed-book (three solved examples, then the
# question). The build answered all of them; the table is its result, on the machine it
# names. A second, lenient reading counts an answer that merely *contains* the gold number,
# so a closed-book model is not punished for the format alone.

# %%
rows = stored["rows"]
viz.Table(
    [
        {
            "system": r["system"],
            "parameters": r["params"],
            "accuracy": f"{r['accuracy']:.1%}",
            "arithmetic": f"{r['accuracy_arithmetic']:.1%}",
            "fresh facts": f"{r['accuracy_retrieval']:.1%}",
            "lenient": f"{runs.summarize({r['system']: stored['records'][r['system']]}, questions, {r['system']: r['params']})[0]['accuracy_lenient']:.1%}",
            "tokens / answer": r["tokens_per_answer"],
        }
        for r in rows
    ],
    caption=f"All {len(questions)} held-out questions, answered by the build",
)

# %% tags=["nbval-ignore-output"]
print("stored timings:", fingerprint.provenance(stored["machine"]), f"({stored['threads']} thread)")
viz.Table(
    [
        {
            "system": r["system"],
            "ms per answer (median)": round(r["seconds_per_answer"] * 1e3, 1),
            "share in tools": f"{r['tool_share']:.1%}",
        }
        for r in rows
    ],
    caption="Wall time per answer, tools included (the build's run)",
)

# %% [markdown]
# **Re-scored live.** The same three systems on a sample of the questions (every tenth), in
# this kernel:

# %%
sample = questions[::10]
systems, params = runs.systems_for(tool_model)
live_records = runs.answer_all(systems, sample, kb)
live_rows = {r["system"]: r for r in runs.summarize(live_records, sample, params)}
viz.Table(
    [
        {
            "system": s,
            "parameters": r["params"],
            "accuracy (sample)": f"{r['accuracy']:.1%}",
            "tokens / answer": r["tokens_per_answer"],
        }
        for s, r in live_rows.items()
    ],
    caption=f"Live: {len(sample)} questions ({sum(q.kind == 'arithmetic' for q in sample)} arithmetic)",
)

# %%
stored_answers = [stored["records"]["tiny + tools"][i]["answer"] for i in range(0, len(questions), 10)]
agree = np.mean([r["answer"] == a for r, a in zip(live_records["tiny + tools"], stored_answers)])
print(f"live answers identical to the build's on {agree:.0%} of the sample")
tt, sc, tc = (live_rows[s]["accuracy"] for s in ("tiny + tools", "small closed-book", "tiny closed-book"))

# %% [markdown]
# **Where the fresh-fact answers fail.** A search answer needs three copies in a row: the clip
# into the query, the right passage back from the search, and the number out of the passage.
# Counting each stage on the live sample's fresh-fact questions:


# %%
def search_stages(q, rec):
    """(valid search call, query copied exactly, gold passage returned, answer correct) for one answer."""
    try:
        call = tools.parse_call(rec["transcript"], registry)
    except tools.ToolCallError:
        return False, False, False, rec["correct"]
    exact = call.name == runs.SEARCH and call.arguments.get("query") == q.arguments["query"]
    found = tools.format_result(runs.retrieval_result(q.passage)) in rec["transcript"]
    return call.name == runs.SEARCH, exact, found, rec["correct"]


fresh = [search_stages(q, r) for q, r in zip(sample, live_records["tiny + tools"]) if q.kind == "retrieval"]
n_fresh = len(fresh)
valid, exact, found, right = (sum(f[i] for f in fresh) for i in range(4))
right_when_found = sum(f[3] for f in fresh if f[2])
display(
    Markdown(
        f"Of {n_fresh} fresh-fact questions: a valid search call **{valid}**, the clip copied exactly into the query "
        f"**{exact}**, the gold passage returned **{found}**, the answer right **{right}** — "
        f"{right_when_found} of the {found} whose passage came back. The weak link is copying a long, unfamiliar "
        "clip token by token: a 0.45 M model after a short fine-tune drifts back to words it knows, and a wrong "
        "query finds the wrong passage. Arithmetic needs a short copy of digits, which it learned far better."
    )
)

# %% [markdown]
# **Time per answer.** A tool-using answer writes a whole call and reads the result back; a
# closed-book answer writes a few tokens. Side by side, interleaved, on one arithmetic and one
# fresh-fact question, wall time per answer including the tool:

# %% tags=["nbval-ignore-output"]
q_a, q_r = questions[2], questions[120]
variants = {
    "tiny + tools": lambda: [runs.tool_answer(tool_model.model, tool_model.tokenizer, q, registry) for q in (q_a, q_r)],
    "small closed-book": lambda: [runs.closed_answer(small.model, small.tokenizer, q) for q in (q_a, q_r)],
    "tiny closed-book": lambda: [runs.closed_answer(tiny.model, tiny.tokenizer, q) for q in (q_a, q_r)],
}
timing = measure.interleaved(variants, warmup=1, repeats=3, min_time=0.5)
vs_small = measure.compare(timing, "tiny + tools", "small closed-book")
tool_ms = (
    np.mean([runs.tool_answer(tool_model.model, tool_model.tokenizer, q, registry)["tool_seconds"] for q in (q_a, q_r)])
    * 1e3
)
display(
    Markdown(
        f"Per answer (two questions, median of rounds): tiny + tools **{timing['tiny + tools'].median / 2 * 1e3:.0f} ms**, "
        f"small closed-book **{timing['small closed-book'].median / 2 * 1e3:.0f} ms**, tiny closed-book "
        f"**{timing['tiny closed-book'].median / 2 * 1e3:.0f} ms**; the tools themselves take {tool_ms:.1f} ms of "
        f"the tool user's. The tiny patient with tools is {vs_small.phrase}. ({timing.note()})"
    )
)

# %% [markdown]
# ## 8 · The article's claim, checked
#
# T1 says that with tools the core model can be smaller. The test: a model seven times
# smaller, with a calculator and a search tool, against the larger one without, on questions
# that need exact arithmetic or knowledge added after training.

# %%
full = {r["system"]: r for r in rows}
gain = full["tiny + tools"]["accuracy"] - full["small closed-book"]["accuracy"]
ratio = full["small closed-book"]["params"] / full["tiny + tools"]["params"]
status = "holds with a caveat" if gain > 0.05 else "does not hold"
claims.verdict(
    "T1",
    status,
    f"On {len(questions)} held-out questions (exact arithmetic up to 6 digits and numbers from articles added "
    f"after training), the tiny patient fine-tuned to call a calculator and a search tool "
    f"{'beat' if gain > 0.05 else 'did not clearly beat'} a larger model: it answered "
    f"{full['tiny + tools']['accuracy']:.1%} correctly (arithmetic {full['tiny + tools']['accuracy_arithmetic']:.1%}, "
    f"fresh facts {full['tiny + tools']['accuracy_retrieval']:.1%}) against {full['small closed-book']['accuracy']:.1%} "
    f"for the {ratio:.1f}× larger small patient closed-book and {full['tiny closed-book']['accuracy']:.1%} for the "
    f"tiny one closed-book; the caveat is the task: these questions are the ones a tool answers, the tool user "
    f"writes {full['tiny + tools']['tokens_per_answer']:.0f} tokens per answer against "
    f"{full['small closed-book']['tokens_per_answer']:.0f}, and the code tool needs a sandbox.",
)

# %% [markdown]
# ## 9 · Step through a tool-using answer
#
# Pick a question and step through its answer: what the model writes, what the runtime parses,
# what the tool returns, and how the model continues.

# %%
demo_questions = {
    f"{q.text[:48]}…" if len(q.text) > 48 else q.text: q
    for q in (questions[0], questions[3], questions[110], questions[160])
}
demo = {label: agent(tool_model, q) for label, q in demo_questions.items()}
STAGES = ("question", "model writes the call", "runtime parses and runs it", "model answers")


def stages_of(label: str) -> list[tuple[str, str]]:
    res, q = demo[label], demo_questions[label]
    first = res.log[0]
    parsed = f"{first.call.name}({json.dumps(first.call.arguments)})" if first.call else "no call was made"
    answer = res.answer if res.answer is not None else "(no answer)"
    verdict = "correct" if runs.is_correct(answer, q.gold) else f"wrong (gold {q.gold})"
    return [
        ("prompt", q.prompt.strip()),
        ("model", first.text),
        ("runtime", f"parsed: {parsed}\nresult: {first.result}"),
        ("model", f"{res.log[-1].text.strip() if len(res.log) > 1 else answer} -> answer {answer!r}, {verdict}"),
    ]


def step_figure(question: str, step: int):
    shown = stages_of(question)[: step + 1]
    fig = viz.figure(title=f"Step {step}: {STAGES[step]}", height=420)
    fig.add_table(
        columnwidth=[1.5, 4],
        header={"values": ["who", "text"]},
        cells={
            "values": [[w for w, _ in shown], [t.replace("<", "&lt;").replace("\n", "<br>") for _, t in shown]],
            "align": "left",
        },
    )
    return fig


import ipywidgets as widgets

# a selection slider, not a dropdown: the dropdown's caret is an icon font the static site does not ship
viz.interactive(
    step_figure,
    question=widgets.SelectionSlider(options=list(demo_questions), description="question"),
    step=(0, 3, 1),
)

# %%
viz.static_twin(step_figure, {"question": list(demo_questions)[:2], "step": [0, 1, 2, 3]})

# %% [markdown]
# ## Summary
#
# * **A tool is a string protocol.** The model writes a JSON call between delimiters; the
#   runtime parses it against the tool's schema, runs it and appends the result. The parser
#   is the first line of defence: every malformed call gets a clear error.
# * **A calculator must not be `eval`.** Walk the syntax tree, allow numbers and operators,
#   compute exactly with fractions and bound the size *before* computing.
# * **Code tools need a sandbox, in layers** — a separate process, rlimits, an empty
#   environment, a fresh directory, a system-call filter, an unprivileged uid and namespaces
#   where available — and a threat model that says what is still not covered.
# * **A small model plus tools beats a larger one on what tools do.** The tiny patient,
#   fine-tuned to call and copy, answers exact arithmetic and some facts added after training
#   that neither patient can answer from its weights. It pays in tokens and time per answer,
#   and its weak link is copying: a long clip into a search query is harder than a short
#   expression into a calculator call. The verdict above has the numbers.
#
# **What this does not show:** questions that need reasoning across several calls, a model
# that decides *when* a tool is worth calling, or tools on questions the model could answer
# alone; the tiny patient learned one template per tool.
#
# ## Exercise 1 · Add a unit-conversion tool
#
# Write `make_convert_tool()` returning a `tools.Tool` named `convert`: its parameters are a
# JSON schema with `value` (a number) and `from` and `to` (each one of the units in
# `LENGTH_UNITS`: metres per unit), all three required and nothing else allowed; its function
# returns the converted value as text. The checker sends calls through `tools.parse_call` and
# `tools.run_call` as the agent loop does: valid ones must convert, and calls that break the
# schema (a string value, an unknown unit, a missing or extra argument) must be refused by the
# parser — before your function runs.

# %%
from course_lib.exercises import check_answer_time_prediction, check_convert_tool
from course_lib.exercises.ch09 import LENGTH_UNITS

print("metres per unit:", LENGTH_UNITS)


def make_convert_tool() -> tools.Tool:
    raise NotImplementedError  # your code here


check_convert_tool(make_convert_tool)


# %% tags=["solution"] jupyter={"source_hidden": true} cellView="form"
# @title Solution — try the exercise first
def make_convert_tool() -> tools.Tool:
    unit = {"type": "string", "enum": sorted(LENGTH_UNITS)}
    schema = {
        "type": "object",
        "properties": {"value": {"type": "number"}, "from": unit, "to": unit},
        "required": ["value", "from", "to"],
        "additionalProperties": False,
    }

    def convert(value, **units):  # "from" is a Python keyword: take the units as keyword arguments
        return str(value * LENGTH_UNITS[units["from"]] / LENGTH_UNITS[units["to"]])

    return tools.Tool("convert", "Convert a length between units.", schema, convert)


assert check_convert_tool(make_convert_tool).passed
conv = tools.Registry([make_convert_tool()])
print(
    tools.run_call(
        tools.parse_call(tools.format_call("convert", {"value": 26.2, "from": "mi", "to": "km"}), conv), conv
    ),
    "km in a marathon",
)

# %% [markdown]
# ## Exercise 2 · Predict, then measure: how long does one tool-using answer take?
#
# The fine-tuned model answers an arithmetic question by writing a call, then copying the
# result. Using the measured time of one decoded token of the tiny patient (printed below) and
# the number of tokens the answer generates, predict the wall time of the whole answer in
# **milliseconds** *before* running the measurement cell.

# %% tags=["nbval-ignore-output"]
q_pred = questions[3]
per_token = measure.decode_fn(tool_model.model, prompt_len=32, new_tokens=32)
t_tok = measure.interleaved({"decode": per_token}, warmup=1, repeats=3, min_time=0.3)["decode"].median / 32
n_tokens = runs.tool_answer(tool_model.model, tool_model.tokenizer, q_pred, registry)["tokens"]
print(f"one decoded token: {t_tok * 1e3:.2f} ms; the answer to {q_pred.text!r} generates {n_tokens} tokens")


# %%
def predicted_answer_ms() -> float:
    raise NotImplementedError  # your prediction here, in ms


# %% tags=["nbval-ignore-output"]
t_ans = measure.interleaved(
    {"answer": lambda: runs.tool_answer(tool_model.model, tool_model.tokenizer, q_pred, registry)},
    warmup=1,
    repeats=3,
    min_time=0.3,
)
measured_answer_ms = t_ans["answer"].median * 1e3
print(f"measured: {measured_answer_ms:.1f} ms per answer ({t_ans.note()})")
check_answer_time_prediction(predicted_answer_ms, measured_answer_ms)


# %% tags=["solution"] jupyter={"source_hidden": true} cellView="form"
# @title Solution — try the exercise first
def predicted_answer_ms() -> float:
    return n_tokens * t_tok * 1e3  # decode steps only; the calculator's microseconds are negligible


assert check_answer_time_prediction(predicted_answer_ms, measured_answer_ms).passed

# %% [markdown]
# ## Self-check
#
# A short quiz; every answer explains why it is right or wrong. The last question is about
# your machine: its answer is the comparison section 7 measured here.

# %% tags=["nbval-ignore-output"]
from course_lib import quiz

quiz.show("09", measured={"q4": vs_small.word})

# %% tags=["nbval-ignore-output"]
from course_lib import progress

progress.show("09")

# %% [markdown]
# ## References
#
# * Schick et al. (2023), *Toolformer: Language Models Can Teach Themselves to Use Tools*. [arXiv:2302.04761](https://arxiv.org/abs/2302.04761)
# * Yao et al. (2023), *ReAct: Synergizing Reasoning and Acting in Language Models*. [arXiv:2210.03629](https://arxiv.org/abs/2210.03629)
# * Gao et al. (2023), *PAL: Program-aided Language Models*. [arXiv:2211.10435](https://arxiv.org/abs/2211.10435)
# * Lewis et al. (2020), *Retrieval-Augmented Generation for Knowledge-Intensive NLP Tasks*. [arXiv:2005.11401](https://arxiv.org/abs/2005.11401)
# * JSON Schema specification. <https://json-schema.org/specification>
# * Python documentation, *ast — Abstract Syntax Trees* (and the warning on `eval`). <https://docs.python.org/3/library/ast.html>
# * Python documentation, *Audit events* (PEP 578). <https://docs.python.org/3/library/audit_events.html>
# * Linux manual, *seccomp(2)* and *namespaces(7)*. <https://man7.org/linux/man-pages/man2/seccomp.2.html>, <https://man7.org/linux/man-pages/man7/namespaces.7.html>
