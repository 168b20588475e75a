"""Chapter 11's live measurement runs: ops timed on the roofline, the profiler, fusion, batch size, wait policy.

:mod:`course_lib.hardware` holds what the chapter teaches and tests — the roofline model,
op costs (FLOPs and minimum bytes), the roof measurements, memory footprints and the
decode bound. This module holds the runs the chapter makes with them on the reader's
machine:

* :func:`standard_ops` / :func:`measure_ops` — the chapter's ops, sized to stream from
  DRAM, timed interleaved (:mod:`course_lib.measure`) and placed on the roofline;
* :func:`profile` — ``torch.profiler`` around any call: top ops (time, FLOPs, memory),
  time per model part (:func:`patient_parts`), and a Chrome trace;
* :func:`fusion_benchmark` — eager vs ``torch.compile``'d RMSNorm and SwiGLU, with compile time;
* :func:`batch_sweep` — latency vs throughput of prefill and decode across batch sizes;
* :func:`wait_policy_experiment` — a small multi-threaded matmul loop under
  ``OMP_WAIT_POLICY=ACTIVE`` and ``PASSIVE``, idle and beside busy processes.

Unlike the other experiments modules it stores nothing (no ``OUTPUTS``): the chapter
measures the machine it runs on, every time. ``python -m course_lib.experiments.hardware``
prints this machine's roofline.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.autograd.profiler import record_function
from torch.profiler import ProfilerActivity
from torch.profiler import profile as torch_profile

from course_lib import measure
from course_lib.checks import check_callable, check_int
from course_lib.hardware import (
    OpCost,
    Placement,
    Roofline,
    attention_cost,
    cpu_info,
    gemv_cost,
    matmul_cost,
    measure_roofline,
    op_traffic,
    place,
    resolve_device,
    rmsnorm_cost,
    softmax_cost,
    swiglu_activation,
    swiglu_cost,
    usable_cpus,
    working_set_bytes,
)
from course_lib.model import RMSNorm
from course_lib.viz import Table

# --------------------------------------------------------------------------- ops on the roofline, timed


def measure_ops(
    ops: dict[str, tuple[OpCost, Callable]], roof: Roofline, *, warmup: int = 1, repeats: int = 5
) -> list[Placement]:
    """Time every ``(cost, fn)`` interleaved (course_lib.measure) and place it on ``roof``."""
    if not ops:
        raise ValueError("ops must not be empty")
    t = measure.interleaved({name: fn for name, (_, fn) in ops.items()}, warmup=warmup, repeats=repeats)
    return [place(cost, t[name].median, roof) for name, (cost, _) in ops.items()]


def standard_ops(
    *, device=None, big_bytes: int | None = None, d_model: int = 4096
) -> dict[str, tuple[OpCost, Callable]]:
    """The chapter's ops, sized so memory-bound ones stream from DRAM (``big_bytes``, > L3).

    Returns ``{label: (cost, fn)}``: matmuls from tiny to large, the decode GEMV at batch 1
    and 16, RMSNorm, softmax, the SwiGLU activation, and attention (SDPA) at prefill and decode.
    """
    dev = resolve_device(device)
    big = working_set_bytes() if big_bytes is None else check_int("big_bytes", big_bytes, min=1)
    d_model = check_int("d_model", d_model, min=1)
    g = torch.Generator().manual_seed(0)

    def rand(*shape):  # uniform: as good as normal for timing, and several times cheaper to draw
        return torch.rand(*shape, generator=g).to(dev)

    ops: dict[str, tuple[OpCost, Callable]] = {}
    for n in (64, 256, 1024):
        a, w = rand(n, n), rand(n, n)
        ops[f"matmul {n}³"] = (matmul_cost(n, n, n, name=f"matmul {n}³"), lambda a=a, w=w: a @ w)
    n_out = max(d_model, big // (4 * d_model))  # weight (n_out, d_model) of ~big bytes
    w = rand(n_out, d_model)
    for batch in (1, 16):
        x = rand(batch, d_model)
        ops[f"decode GEMV, batch {batch}"] = (gemv_cost(d_model, n_out, batch=batch), lambda x=x, w=w: F.linear(x, w))
    rows = max(1, big // (4 * d_model))
    x, gain = rand(rows, d_model), rand(d_model)
    ops["RMSNorm"] = (rmsnorm_cost(rows, d_model), lambda: F.rms_norm(x, (d_model,), gain, 1e-5))
    ops["softmax"] = (softmax_cost(rows, d_model), lambda: torch.softmax(x, dim=-1))
    hidden = d_model
    gate, up = rand(rows // 2, hidden), rand(rows // 2, hidden)
    ops["SwiGLU activation"] = (swiglu_cost(rows // 2, hidden), lambda: F.silu(gate) * up)
    q, k, v = rand(1, 8, 1024, 64), rand(1, 8, 1024, 64), rand(1, 8, 1024, 64)
    ops["attention prefill"] = (
        attention_cost(batch=1, heads=8, q_len=1024, kv_len=1024, head_dim=64, causal=True),
        lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
    )
    kv_len = max(1024, big // (2 * 4 * 8 * 64 * 4))  # K and V of batch 4, 8 heads: ~big bytes
    qd, kd, vd = rand(4, 8, 1, 64), rand(4, 8, kv_len, 64), rand(4, 8, kv_len, 64)
    ops["attention decode"] = (
        attention_cost(batch=4, heads=8, q_len=1, kv_len=kv_len, head_dim=64),
        lambda: F.scaled_dot_product_attention(qd, kd, vd),
    )
    return ops


# --------------------------------------------------------------------------- OpenMP wait policy

#: Values of ``OMP_WAIT_POLICY`` that :func:`wait_policy_experiment` compares.
WAIT_POLICIES = ("ACTIVE", "PASSIVE")

# The child process of the experiment: plain torch (course_lib would set the policy itself),
# one (m, k) @ (k, n) fp32 matmul loop per "run" line on stdin, one JSON line per answer.
# The operands are created at the first run, so no OpenMP team exists before it.
_WAIT_CHILD = r"""
import json, sys, time
import torch
threads, m, k, n, iterations, warmup, max_seconds = json.loads(sys.argv[1])
torch.set_num_threads(threads)
print(json.dumps({"ready": True}), flush=True)
a = w = None
for _ in sys.stdin:
    if a is None:
        g = torch.Generator().manual_seed(0)
        a, w = torch.rand(m, k, generator=g), torch.rand(k, n, generator=g)
    t0 = time.perf_counter()
    for _ in range(warmup):  # untimed; cut short when one matmul takes long (a spinning team under load)
        a @ w
        if time.perf_counter() - t0 > max_seconds / 2:
            break
    done, t0 = 0, time.perf_counter()
    while done < iterations:
        a @ w
        done += 1
        if time.perf_counter() - t0 > max_seconds:
            break
    print(json.dumps({"done": done, "seconds": time.perf_counter() - t0}), flush=True)
"""


def _line_queue(proc) -> queue.Queue:
    """A queue fed with ``proc``'s stdout lines by a daemon thread (None at end of file)."""
    lines: queue.Queue = queue.Queue()

    def pump():
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _answer(proc, lines: queue.Queue, timeout: float) -> dict:
    try:
        line = lines.get(timeout=timeout)
    except queue.Empty:
        raise RuntimeError(f"the wait-policy child did not answer within {timeout} s") from None
    if line is None:
        proc.wait()
        raise RuntimeError(f"the wait-policy child exited ({proc.returncode}): {proc.stderr.read()[-2000:]}")
    return json.loads(line)


def _stop(procs) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
    for p in procs:
        p.wait()


def wait_policy_experiment(
    *,
    policies=WAIT_POLICIES,
    busy=(False, True),
    threads: int = 2,
    shape=(64, 256, 1024),
    iterations: int = 750,
    warmup: int = 20,
    max_seconds: float = 1.0,
    timeout: float = 120.0,
) -> list[dict]:
    """Time a small multi-threaded matmul loop under each OpenMP wait policy, idle and beside busy processes.

    An OpenMP thread that reaches the end of a parallel region waits for the next one. With
    ``OMP_WAIT_POLICY=ACTIVE`` it **spins** (keeps its core busy checking for work); with
    ``PASSIVE`` it **sleeps** in the kernel until woken. GNU libgomp, the OpenMP runtime of
    the PyTorch wheels, documents both (and ``GOMP_SPINCOUNT``, how long the default spins):
    https://gcc.gnu.org/onlinedocs/libgomp/OMP_005fWAIT_005fPOLICY.html. On an idle machine
    spinning saves the microseconds of a wake-up. When other processes want the cores, a
    spinning thread burns the time slice that the thread it waits for (or the other
    process) needs, and a loop of short parallel regions can slow down many times over.

    For each policy a fresh ``python -c`` child (the policy is read once, when OpenMP
    starts) runs ``iterations`` fp32 matmuls of ``shape`` = (m, k, n) on ``threads`` threads
    after ``warmup`` untimed ones. For each entry of ``busy`` it does so on the machine as it
    is (False) or with one ``python -c "while True: pass"`` per usable CPU started beside it
    (True); those are killed right after the loop, and in a ``finally`` whatever happens.
    The children start together, so their torch imports overlap, and run one at a time (each
    exits before the next runs, so a spinning team never disturbs another's loop). A loop
    that would take longer than ``max_seconds`` stops there and its time is extrapolated
    from the matmuls it ran (``extrapolated``), which keeps the experiment short however
    slow the spinning case gets.

    Returns one row per (policy, busy): ``OMP_WAIT_POLICY``, ``busy processes``,
    ``threads``, ``matmuls``, ``matmuls run``, ``seconds`` (for all ``matmuls``),
    ``ms per matmul``, ``extrapolated``, ``load average`` (1 minute, before the loop).
    """
    if isinstance(policies, str) or not isinstance(policies, (tuple, list)) or not policies:
        raise ValueError(f"policies must be a non-empty tuple of values from {WAIT_POLICIES}, got {policies!r}")
    if any(p not in WAIT_POLICIES for p in policies) or len(set(policies)) != len(policies):
        raise ValueError(f"policies must be distinct values from {WAIT_POLICIES}, got {policies!r}")
    if not isinstance(busy, (tuple, list)) or not busy or any(not isinstance(b, bool) for b in busy):
        raise ValueError(f"busy must be a non-empty tuple of bools (False: the machine as it is), got {busy!r}")
    threads, iterations = check_int("threads", threads, min=1), check_int("iterations", iterations, min=1)
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")
    if not isinstance(shape, (tuple, list)) or len(shape) != 3:
        raise ValueError(f"shape must be a tuple (m, k, n) of three ints >= 1, got {shape!r}")
    m, k, n = (check_int("each entry of shape", v, min=1) for v in shape)
    for name, value, hi in (("max_seconds", max_seconds, 60), ("timeout", timeout, 3600)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= hi:
            raise ValueError(f"{name} must be a number of seconds in (0, {hi}], got {value!r}")

    args = json.dumps([threads, m, k, n, iterations, warmup, max_seconds])
    n_busy = usable_cpus()
    children: dict = {}
    busy_procs: list = []
    rows = []
    try:
        for policy in policies:
            env = {**os.environ, "OMP_WAIT_POLICY": policy, "OMP_NUM_THREADS": str(threads)}
            proc = subprocess.Popen(
                [sys.executable, "-c", _WAIT_CHILD, args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            children[policy] = (proc, _line_queue(proc))
        for proc, lines in children.values():
            _answer(proc, lines, timeout)  # {"ready": true}: torch is imported
        for policy, (proc, lines) in children.items():
            for b in busy:
                if b:
                    busy_procs = [
                        subprocess.Popen(
                            [sys.executable, "-c", "while True: pass"],
                            stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                        )
                        for _ in range(n_busy)
                    ]
                    time.sleep(0.1)  # let them start spinning
                load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
                proc.stdin.write("run\n")
                proc.stdin.flush()
                res = _answer(proc, lines, timeout)
                _stop(busy_procs)
                busy_procs = []
                per = res["seconds"] / res["done"]
                rows.append(
                    {
                        "OMP_WAIT_POLICY": policy,
                        "busy processes": n_busy if b else 0,
                        "threads": threads,
                        "matmuls": iterations,
                        "matmuls run": res["done"],
                        "seconds": per * iterations,
                        "ms per matmul": per * 1e3,
                        "extrapolated": res["done"] < iterations,
                        "load average": load,
                    }
                )
            proc.stdin.close()  # the child exits, and a spinning team with it
            proc.wait(timeout=timeout)
    finally:
        _stop(busy_procs)
        _stop([proc for proc, _ in children.values()])
    return rows


# --------------------------------------------------------------------------- profiling


def patient_parts(model) -> dict[str, list[torch.nn.Module]]:
    """The parts of a TinyLM-like model to time separately: embedding, norms, attention, MLP, LM head."""
    if not hasattr(model, "blocks"):
        raise TypeError(f"model must be a TinyLM-like model with .blocks, got {type(model).__name__}")
    parts = {
        "embedding": [model.embed],
        "RMSNorm": [model.norm],
        "attention": [],
        "MLP": [],
        "LM head": [model.lm_head],
    }
    for blk in model.blocks:
        parts["RMSNorm"] += [blk.attn_norm, blk.mlp_norm]
        parts["attention"].append(blk.attn)
        parts["MLP"].append(blk.mlp)
    return parts


@dataclass
class ProfileResult:
    """What ``torch.profiler`` saw, per call of the profiled function."""

    ops: list[dict]  # per op: calls, self ms, share, MFLOPs, GFLOP/s, allocated MB
    parts: dict[str, float]  # label -> ms (inclusive), when labelled modules were given
    total_ms: float
    trace_path: str | None
    flops: float = 0.0  # FLOPs the profiler counted per call (matmuls, convolutions, mul and add)
    matmul_flops: float = 0.0  # of which matrix products (mm, addmm, bmm, baddbmm)

    def table(self, top: int = 10):
        rows = [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in self.ops[:top]]
        return Table(
            rows, caption=f"top {min(top, len(self.ops))} ops by self time, per call ({self.total_ms:.2f} ms in all)"
        )


def _label_hooks(parts: dict[str, list[torch.nn.Module]]):
    handles, stack = [], []
    for label, modules in parts.items():
        for m in modules:

            def pre(_m, _args, label=label):
                rf = record_function(f"## {label}")
                rf.__enter__()
                stack.append(rf)

            def post(_m, _args, _out):
                stack.pop().__exit__(None, None, None)

            handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    return handles


_MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"}
_KINETO_CHATTER = ("USDT:", "STAGE:")  # the profiler backend's start/stop lines, written to fd 2


@contextlib.contextmanager
def _without_profiler_chatter():
    """Hold back the native profiler's start/stop lines on fd 2; pass any other native stderr on.

    Kineto prints time-stamped ``USDT: ... profiler_start`` lines from C++ on every run, which
    would make a notebook's output differ between two executions.
    """
    try:
        saved = os.dup(2)
    except OSError:  # no file descriptor 2: nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            for line in tmp.read().decode(errors="replace").splitlines():
                if line.strip() and not line.startswith(_KINETO_CHATTER):
                    print(line, file=sys.stderr)


def profile(
    fn: Callable,
    *,
    parts: dict[str, list[torch.nn.Module]] | None = None,
    warmup: int = 1,
    repeats: int = 3,
    trace_path: str | os.PathLike | None = None,
) -> ProfileResult:
    """Run ``fn()`` ``repeats`` times under ``torch.profiler`` (after ``warmup`` runs).

    Returns the ops sorted by self time (per call), with the FLOPs the profiler counts for
    matmuls and the memory each op allocated; with ``parts`` (``{label: [modules]}``, e.g.
    :func:`patient_parts`) also the inclusive time of each labelled part. ``trace_path``
    writes a Chrome trace (open it in chrome://tracing or https://ui.perfetto.dev).
    """
    check_callable("fn", fn)
    check_int("warmup", warmup, min=0)
    check_int("repeats", repeats, min=1)
    for _ in range(warmup):
        fn()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    handles = _label_hooks(parts) if parts else []
    try:
        with (
            _without_profiler_chatter(),
            torch_profile(activities=activities, record_shapes=True, profile_memory=True, with_flops=True) as prof,
        ):
            for _ in range(repeats):
                with torch.autograd.profiler.record_function("## total"):
                    fn()
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
    finally:
        for h in handles:
            h.remove()
    events = prof.key_averages()
    total_us = sum(e.cpu_time_total for e in events if e.key == "## total") / repeats
    labels = {f"## {k}": k for k in (parts or {})}
    part_ms = {labels[e.key]: e.cpu_time_total / repeats / 1e3 for e in events if e.key in labels}
    rows = []
    for e in events:
        if e.key.startswith("##") or e.key.startswith("[") or e.self_cpu_time_total <= 0:
            continue
        self_us = e.self_cpu_time_total / repeats
        rows.append(
            {
                "op": e.key,
                "calls": e.count // repeats,
                "self ms": self_us / 1e3,
                "share": f"{self_us / total_us:.1%}" if total_us else "",
                "MFLOPs": e.flops / repeats / 1e6 if e.flops else 0.0,
                "GFLOP/s": (e.flops / repeats) / (self_us * 1e3) if e.flops else 0.0,
                "allocated MB": max(0, e.self_cpu_memory_usage) / repeats / 1e6,
            }
        )
    rows.sort(key=lambda r: -r["self ms"])
    path = None
    if trace_path is not None:
        path = str(trace_path)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(path)
    flops = sum(e.flops for e in events if e.flops and not e.key.startswith("##")) / repeats
    mm_flops = sum(e.flops for e in events if e.flops and e.key in _MATMUL_OPS) / repeats
    return ProfileResult(rows, part_ms, total_us / 1e3, path, flops, mm_flops)


# --------------------------------------------------------------------------- fusion


def fusion_benchmark(
    *, rows: int = 4096, dim: int = 1024, hidden: int = 2816, warmup: int = 2, repeats: int = 7, device=None
) -> list[dict]:
    """Eager (one kernel per op) vs ``torch.compile``'d (fused) RMSNorm and SwiGLU activation.

    The RMSNorm is the patient's own :class:`course_lib.model.RMSNorm` module. Each row has
    the eager and compiled medians (timed interleaved), the speed-up, the first compiled
    call's seconds (tracing + code generation + the C++ compiler), and the traffic: eager
    (:func:`op_traffic`) vs fused minimum (the op's :class:`OpCost` bytes).
    """
    dev = resolve_device(device)
    rows, dim, hidden = check_int("rows", rows, min=1), check_int("dim", dim, min=1), check_int("hidden", hidden, min=1)
    g = torch.Generator().manual_seed(0)
    norm = RMSNorm(dim).to(dev)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5, generator=g)
    x = torch.randn(rows, dim, generator=g).to(dev)
    gate, up = torch.randn(rows, hidden, generator=g).to(dev), torch.randn(rows, hidden, generator=g).to(dev)
    cases = {
        "RMSNorm": (norm, (x,), rmsnorm_cost(rows, dim)),
        "SwiGLU activation": (swiglu_activation, (gate, up), swiglu_cost(rows, hidden)),
    }
    out = []
    for name, (fn, args, cost) in cases.items():
        compiled = torch.compile(fn, dynamic=False, fullgraph=True)
        with torch.no_grad():
            t0 = time.perf_counter()
            fused_y = compiled(*args)
            compile_s = time.perf_counter() - t0
            eager_y = fn(*args)
        if not torch.allclose(fused_y, eager_y, rtol=1e-4, atol=1e-5):
            raise RuntimeError(f"{name}: compiled output differs from eager")
        t = measure.interleaved(
            {
                "eager": torch.no_grad()(lambda fn=fn, a=args: fn(*a)),
                "compiled": torch.no_grad()(lambda c=compiled, a=args: c(*a)),
            },
            warmup=warmup,
            repeats=repeats,
        )
        traffic = op_traffic(fn, *args)
        out.append(
            {
                "op": name,
                "shape": cost.shape,
                "eager ms": t["eager"].median * 1e3,
                "compiled ms": t["compiled"].median * 1e3,
                "speed-up": t["eager"].median / t["compiled"].median,
                "compile s": compile_s,
                "eager kernels": traffic["kernels"],
                "eager MB moved": traffic["bytes"] / 1e6,
                "fused MB moved": cost.bytes / 1e6,
                "traffic ratio": traffic["bytes"] / cost.bytes,
            }
        )
    return out


# --------------------------------------------------------------------------- batch size


def batch_sweep(
    model,
    *,
    batch_sizes=(1, 2, 4, 8, 16, 32),
    prompt_len: int = 64,
    new_tokens: int = 16,
    warmup: int = 1,
    repeats: int = 3,
) -> list[dict]:
    """Latency and throughput of prefill and decode vs batch size (course_lib.measure, interleaved).

    Per batch size B: prefill of B prompts of ``prompt_len`` tokens (latency, tokens/s) and
    ``new_tokens`` decode steps (latency per step, tokens/s = B / step latency). Decoding
    reads all weights per step whatever B is, so until the matmuls turn compute-bound a
    bigger batch buys throughput almost for free; latency per step barely moves.
    """
    if not batch_sizes:
        raise ValueError(f"batch_sizes must be a non-empty sequence of ints >= 1, got {batch_sizes!r}")
    for i, b in enumerate(batch_sizes):
        check_int(f"batch_sizes[{i}]", b, min=1)
    check_int("prompt_len", prompt_len, min=1), check_int("new_tokens", new_tokens, min=1)
    model.eval()
    pre = measure.interleaved(
        {b: measure.prefill_fn(model, prompt_len=prompt_len, batch=b) for b in batch_sizes},
        warmup=warmup,
        repeats=repeats,
    )
    dec = measure.interleaved(
        {b: measure.decode_fn(model, prompt_len=prompt_len, new_tokens=new_tokens, batch=b) for b in batch_sizes},
        warmup=warmup,
        repeats=repeats,
    )
    rows = []
    for b in batch_sizes:
        step = dec[b].median / new_tokens
        rows.append(
            {
                "batch": b,
                "prefill ms": pre[b].median * 1e3,
                "prefill tokens/s": b * prompt_len / pre[b].median,
                "decode ms/step": step * 1e3,
                "decode tokens/s": b / step,
            }
        )
    return rows


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m course_lib.experiments.hardware", description="Measure this machine's roofline."
    )
    parser.add_argument("--device", default=None, help="cpu (default) or cuda")
    args = parser.parse_args(argv)
    for k, v in cpu_info().items():
        print(f"{k:18s} {v}")
    roof = measure_roofline(device=args.device)
    for d, p in roof.peaks.items():
        print(f"peak {d:5s} {p / 1e9:10.1f} GFLOP/s   ridge {roof.ridge(d):8.2f} FLOP/B")
    for k, b in roof.bandwidths.items():
        print(f"{k:10s} {b / 1e9:10.1f} GB/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
