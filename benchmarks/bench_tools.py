"""Chapter 09: tool use — safe-calculator calls/s, sandbox start-to-result latency, agent answer latency.

The issue's targets: the calculator evaluates >= 50,000 expressions/s; the sandbox's round
trip (start, run ``print(1+1)``, clean up) has a p50 <= 100 ms on 2 cores. Calculator rates
are given per wall second (interleaved medians) and per CPU second of this process (what
a busy machine's other work does not change); sandbox latencies are wall times of single
calls, p50 and p95, with the load average beside them (on a busy 2-core machine they grow
with the load).
"""

from __future__ import annotations

import os
import statistics
import time

from course_lib import measure, sandbox, tools

#: Expressions like those the chapter's model writes (products and sums of multi-digit
#: numbers), plus decimals, division and powers.
EXPRESSIONS = [
    "17*23",
    "482+937",
    "9031-4477",
    "123*456",
    "76543*21",
    "0.1+0.2",
    "355/113",
    "2**64-1",
    "(3+4)*5-6/7",
    "1.5*4",
    "7//2+7%2",
    "99*99",
]
N_CALC = 2000
N_SANDBOX = 30


def _calc_batch():
    for e in EXPRESSIONS * (N_CALC // len(EXPRESSIONS)):
        tools.calculate(e)


def bench_calculator() -> list[dict]:
    """Expressions evaluated per second: the safe calculator alone and through the call protocol."""
    reg = tools.Registry([tools.calculator_tool()])
    calls = [tools.format_call("calculator", {"expression": e}) for e in EXPRESSIONS]
    n = len(EXPRESSIONS) * (N_CALC // len(EXPRESSIONS))

    def through_protocol():
        for c in calls * (N_CALC // len(EXPRESSIONS)):
            tools.run_call(tools.parse_call(c, reg), reg)

    t = measure.interleaved({"calculate": _calc_batch, "parse_call + run_call": through_protocol}, repeats=5)
    rows = []
    for name, fn in (("calculate", _calc_batch), ("parse_call + run_call", through_protocol)):
        c0 = time.process_time()
        fn()
        cpu = time.process_time() - c0
        rows.append(
            {
                "benchmark": "safe calculator",
                "variant": name,
                "expressions/s (wall)": round(n / t[name].median),
                "expressions/s (CPU)": round(n / cpu),
                "spread": round(t[name].spread, 3),
                "note": t.note(),
            }
        )
    return rows


def _latencies(n: int, **kw) -> tuple[list[float], list[float]]:
    """Sorted wall seconds and CPU seconds (the runner's process and the snippet's) of ``n`` round trips."""
    sandbox.run("pass", **kw)  # warm the page cache
    wall, cpu = [], []
    for _ in range(n):
        r = sandbox.run("print(1+1)", **kw)
        assert r.stdout == "2\n", r.stderr
        wall.append(r.seconds)
        cpu.append(r.cpu_seconds)
    return sorted(wall), sorted(cpu)


def bench_sandbox() -> list[dict]:
    """Start-to-result latency of ``print(1+1)``: every layer, and without namespaces/uid/seccomp/hook."""
    variants = {
        "all layers here": {},
        "no namespaces": {"namespaces": False},
        "rlimits + hook only": {"namespaces": False, "drop_privileges": False, "seccomp": False},
    }
    rows = []
    for name, kw in variants.items():
        load0 = os.getloadavg()[0]
        lat, cpu = _latencies(N_SANDBOX, **kw)
        rows.append(
            {
                "benchmark": "sandbox round trip",
                "variant": name,
                "p50 ms": round(1e3 * statistics.median(lat), 1),
                "p95 ms": round(1e3 * lat[int(0.95 * (len(lat) - 1))], 1),
                "best ms": round(1e3 * lat[0], 1),
                "child CPU ms p50": round(1e3 * statistics.median(cpu), 1),
                "runs": len(lat),
                "load avg": round((load0 + os.getloadavg()[0]) / 2, 1),
                "layers": ",".join(sandbox.run("pass", **kw).layers),
            }
        )
    return rows


def bench_agent() -> list[dict]:
    """Seconds per answer of :func:`tools.run_agent`: the loop with a scripted model (protocol + tool
    cost only), and with the tiny patient generating (its own greedy text; untrained for tools, so
    this is the model's share of the latency)."""
    reg = tools.Registry([tools.calculator_tool(), tools.python_tool()])
    call = tools.format_call("calculator", {"expression": "76543*21"})
    code_call = tools.format_call("python", {"code": "print(76543*21)"})

    def scripted(first):
        def generate(text, n):
            return first if tools.RESULT_OPEN not in text else " 1607403\n"

        return generate

    rows = []
    for name, gen in (
        ("scripted model, calculator", scripted(call)),
        ("scripted model, python sandbox", scripted(code_call)),
    ):
        lat = []
        for _ in range(10):
            t0 = time.perf_counter()
            r = tools.run_agent(gen, "Q: 76543*21?\nA:", reg)
            lat.append(time.perf_counter() - t0)
            assert r.answer == "1607403"
        rows.append(
            {
                "benchmark": "agent answer latency",
                "variant": name,
                "p50 ms": round(1e3 * statistics.median(lat), 2),
                "tool ms": round(1e3 * r.tool_seconds, 2),
                "tokens": r.tokens_generated,
            }
        )
    from course_lib import zoo

    patient = zoo.load("tiny")

    def generate(text, n):
        idx = patient.encode(text)
        out = patient.model.generate(idx, n)[0, idx.shape[1] :]
        return patient.decode(out), int(out.numel())

    lat = []
    for _ in range(3):
        t0 = time.perf_counter()
        r = tools.run_agent(generate, "Q: what is 76543*21?\nA:", reg, max_new_tokens=16)
        lat.append(time.perf_counter() - t0)
    rows.append(
        {
            "benchmark": "agent answer latency",
            "variant": "tiny patient (untrained for tools), 16 new tokens",
            "p50 ms": round(1e3 * statistics.median(lat), 2),
            "tool ms": round(1e3 * r.tool_seconds, 2),
            "tokens": r.tokens_generated,
        }
    )
    return rows
