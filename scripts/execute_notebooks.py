"""Execute the notebooks into build/executed/, with a cache, and report time, CPU and memory.

    python scripts/execute_notebooks.py [--strict] [--force] [--out DIR] [notebooks/01_baseline.ipynb ...]

Each notebook runs top to bottom in a fresh kernel started in notebooks/, with
``COURSE_BOOK_BUILD=1`` so figures are emitted for the book. The executed copy goes to
build/executed/ (the book's pages; never back into notebooks/, which are committed without
outputs; ``--out`` writes elsewhere, as ``make stress`` does). A notebook is executed again
only when its source, the library, the zoo data or this script changed: the hash of all of
them is stored in the executed copy, with the report of that run.

Per notebook it records the wall seconds, the **kernel's CPU time** (user + system time of
the kernel process and its children, read from /proc just before the kernel shuts down),
the kernel's peak memory, and the load average when it started and ended; the table shows
them and build/timings.json stores them with the machine fingerprint and a calibration
(``make doctor`` scales them to estimate the course time on another machine).

Judging (design §9: 90 s and 3 GB per notebook). A busy machine inflates wall time, so
wall time never fails a run: over the budget it is flagged OVER BUDGET. A run fails for a
cell error or memory over 3 GB; with ``--strict`` (``make test``) also for kernel CPU time
over twice the budget, a regression no load explains (CPU time does not grow with load once
the OpenMP threads sleep instead of spinning). A report taken from the cache is printed
with its stored verdict, marked "(cached)", and is never judged again: only a run that
passed is cached, so a failure is executed afresh next time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "build" / "executed"
TIMINGS = ROOT / "build" / "timings.json"  # for the default --out; elsewhere <out>/timings.json
BUDGET_S = 90.0
BUDGET_MB = 3000
CPU_FAIL_FACTOR = 2.0  # --strict fails kernel CPU time above this multiple of the budget


# --------------------------------------------------------------------------- judging (pure)


@dataclass(frozen=True)
class Verdict:
    """What the table says about one notebook, and whether it fails the run."""

    status: str
    fails: bool


def judge(report: dict, *, strict: bool = False) -> Verdict:
    """The verdict on a freshly executed notebook's report (never called on a cached one).

    Fails for an error, for peak memory over ``BUDGET_MB`` and, when ``strict``, for kernel
    CPU time over ``CPU_FAIL_FACTOR`` x ``BUDGET_S``. Wall time or CPU time over the budget
    only flags OVER BUDGET: a slow or busy machine is reported, not failed.
    """
    if report.get("error"):
        return Verdict(f"FAILED: {report['error']}", True)
    peak, cpu, wall = report.get("peak_rss_mb"), report.get("cpu_s"), report.get("seconds")
    if peak is not None and peak > BUDGET_MB:
        return Verdict(f"FAILED: peak memory {peak} MB > {BUDGET_MB} MB", True)
    if strict and cpu is not None and cpu > CPU_FAIL_FACTOR * BUDGET_S:
        return Verdict(f"FAILED: kernel CPU {cpu:.0f} s > {CPU_FAIL_FACTOR:g} x {BUDGET_S:.0f} s (a regression)", True)
    over = [f"{what} {v:.0f} s" for what, v in (("wall", wall), ("CPU", cpu)) if v is not None and v > BUDGET_S]
    if over:
        return Verdict(f"OVER BUDGET ({', '.join(over)} > {BUDGET_S:.0f} s; not failed)", False)
    return Verdict("ok", False)


def cached_verdict(report: dict) -> Verdict:
    """A cached report keeps the verdict stored when it ran, marked "(cached)"; it never fails the run."""
    return Verdict(f"{report.get('status', 'ok')} (cached)", False)


def reusable(meta: dict, key: str, *, strict: bool = False) -> bool:
    """May the stored execution (``course_execution`` metadata) stand in for running the notebook?

    Only a run of the same sources (``key``) that passed its own judgment is reused. Under
    ``strict`` a run whose CPU time would fail the strict check (it was recorded by a
    non-strict ``make course``) is executed again rather than judged again.
    """
    report = meta.get("report") or {}
    if meta.get("key") != key or meta.get("error") or report.get("failed", True):
        return False
    cpu = report.get("cpu_s")
    return not (strict and cpu is not None and cpu > CPU_FAIL_FACTOR * BUDGET_S)


# --------------------------------------------------------------------------- measuring the kernel


def library_hash() -> str:
    """Everything besides the notebook that can change its outputs."""
    h = hashlib.sha256()
    files = sorted((ROOT / "course_lib").rglob("*.py")) + sorted((ROOT / "course_lib" / "zoo_data").glob("*"))
    for f in files + [Path(__file__)]:
        if f.is_file() and "__pycache__" not in f.parts:
            h.update(str(f.relative_to(ROOT)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def error_line(traceback: str) -> str:
    """The exception line of a cell's traceback, with the failing source line (``---->``) when shown."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", traceback)  # the traceback's colours
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines:
        return ""
    where = [ln for ln in lines if ln.startswith("---->") or ln.startswith("->")]
    at = re.sub(r"^-*>\s*\d*\s*", "", where[-1]) if where else ""
    return (lines[-1] + (f" at: {at}" if at and at not in lines[-1] else ""))[:300]


def _kernel_pid(client: NotebookClient) -> int | None:
    try:
        return client.km.provisioner.process.pid
    except Exception:
        return None


def kernel_peak_rss(client: NotebookClient) -> int | None:
    """VmHWM of the kernel process, read from /proc before the kernel shuts down (Linux)."""
    try:
        text = Path(f"/proc/{_kernel_pid(client)}/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+) kB", text).group(1)) * 1024
    except Exception:
        return None


def _stat_fields(pid: int) -> list[str]:
    """Fields of /proc/<pid>/stat after the command name (which may hold spaces and parentheses)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of ``pid``, its live descendants and its reaped children (Linux /proc).

    /proc/<pid>/stat fields 14-17 (utime, stime, cutime, cstime) in clock ticks; live
    children are found by their parent pid, since they are not in cutime until reaped.
    """
    try:
        tick = os.sysconf("SC_CLK_TCK")
        parents: dict[int, int] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    parents[int(entry.name)] = int(_stat_fields(int(entry.name))[1])
                except (OSError, ValueError, IndexError):
                    continue
        tree, frontier = {pid}, [pid]
        while frontier:
            p = frontier.pop()
            kids = [c for c, pp in parents.items() if pp == p and c not in tree]
            tree.update(kids)
            frontier += kids
        if pid not in parents:
            return None  # no such process
        ticks = 0
        for p in tree:
            try:
                f = _stat_fields(p)
            except OSError:
                continue  # ended between the scan and now
            ticks += sum(int(x) for x in f[11:15])  # utime, stime, cutime, cstime
        return ticks / tick
    except (OSError, ValueError, IndexError):
        return None


def kernel_cpu_seconds(client: NotebookClient) -> float | None:
    pid = _kernel_pid(client)
    return None if pid is None else process_cpu_seconds(pid)


def load1() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


_CONTEXT: dict = {}


def run_context() -> dict:
    """The machine fingerprint and a calibration, taken once per invocation that executes something.

    Imports torch in this process (``course_lib`` is imported first, so the OpenMP wait
    policy is set before it); skipped entirely when every notebook comes from the cache.
    """
    if not _CONTEXT:
        sys.path.insert(0, str(ROOT))
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from doctor import calibrate

        import course_lib  # noqa: F401  (sets OMP_WAIT_POLICY before torch loads)
        from course_lib import fingerprint

        _CONTEXT["machine"] = fingerprint.machine()
        _CONTEXT["calibration"] = calibrate()
    return _CONTEXT


def kernel_env() -> dict:
    """The kernel's environment: figures for the book, threads that sleep, and the network guard.

    ``tests/netguard_site`` on PYTHONPATH makes the kernel's Python install
    course_lib.netguard at start-up (its sitecustomize), so a notebook that reaches the
    network fails here as it would under pytest. Subprocesses a notebook starts inherit
    the variable, but a non-Python one is outside the guard.
    """
    site = str(ROOT / "tests" / "netguard_site")
    path = [site] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != site]
    return {
        **os.environ,
        "COURSE_BOOK_BUILD": "1",
        # the solutions CI runs are not the learner's progress: keep them out of the home directory
        "COURSE_PROGRESS": str(ROOT / "build" / "progress.json"),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
        "PYTHONPATH": os.pathsep.join(path),
    }


def execute(path: Path, key: str, timeout: int, *, out_dir: Path = OUT, strict: bool = False) -> dict:
    """Run one notebook (or take its passing cached run); returns its report with ``cached``."""
    out = out_dir / path.name
    if out.is_file():
        meta = nbformat.read(out, as_version=4).metadata.get("course_execution", {})
        if reusable(meta, key, strict=strict):
            return {**meta["report"], "cached": True}
    context = run_context()
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    load_start, t0 = load1(), time.perf_counter()
    error, peak, cpu = None, None, None
    try:
        with client.setup_kernel(env=kernel_env()):
            try:
                for index, cell in enumerate(nb.cells):
                    client.execute_cell(cell, index)
            finally:  # read the kernel before it shuts down, also after a failed cell
                peak, cpu = kernel_peak_rss(client), kernel_cpu_seconds(client)
        client.set_widgets_metadata()
    except (CellExecutionError, CellTimeoutError, DeadKernelError) as e:
        error = error_line(str(e)) or f"cell failed ({type(e).__name__})"
    seconds = time.perf_counter() - t0
    report = {
        "notebook": path.name,
        "seconds": round(seconds, 1),
        "cpu_s": None if cpu is None else round(cpu, 1),
        "peak_rss_mb": None if peak is None else round(peak / 1e6),
        "load_start": load_start,
        "load_end": load1(),
        "error": error,
        "calibration": context["calibration"],
        "machine": context["machine"],
    }
    verdict = judge(report, strict=strict)
    report.update(status=verdict.status, failed=verdict.fails, strict=strict)
    nb.metadata["course_execution"] = {"key": key, "report": report, "error": error}
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    nbformat.write(nb, tmp)
    os.replace(tmp, out)
    return {**report, "cached": False}


# --------------------------------------------------------------------------- the table


def _num(v, fmt: str = "8.1f") -> str:
    return format(v, fmt) if isinstance(v, (int, float)) else format("n/a", ">" + fmt.split(".")[0].rstrip("d"))


def table(rows: list[dict], verdicts: list[Verdict]) -> str:
    """The closing table: wall s, CPU s, peak MB, load start→end, status."""
    lines = [f"{'notebook':34s} {'wall s':>8s} {'CPU s':>8s} {'peak MB':>8s} {'load':>13s}  status"]
    for r, v in zip(rows, verdicts):
        load = f"{_num(r.get('load_start'), '.2f')}→{_num(r.get('load_end'), '.2f')}"
        lines.append(
            f"{r['notebook']:34s} {_num(r.get('seconds'))} {_num(r.get('cpu_s'))} "
            f"{_num(r.get('peak_rss_mb'), '8.0f')} {load:>13s}  {v.status}"
        )
    wall = sum(r.get("seconds") or 0 for r in rows)
    cpu = sum(r.get("cpu_s") or 0 for r in rows)
    lines.append(
        f"{'total':34s} {wall:8.1f} {cpu:8.1f}   (budgets: {BUDGET_S:.0f} s and {BUDGET_MB} MB per notebook; "
        f"wall time is reported, not judged)"
    )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("notebooks", nargs="*", type=Path)
    ap.add_argument("--timeout", type=int, default=600, help="per-cell timeout (s)")
    ap.add_argument("--force", action="store_true", help="ignore the cache")
    ap.add_argument("--out", type=Path, default=OUT, help="directory for the executed copies (default build/executed)")
    ap.add_argument(
        "--strict",
        action="store_true",
        help=f"also fail a notebook whose kernel CPU time exceeds {CPU_FAIL_FACTOR:g} x {BUDGET_S:.0f} s (make test)",
    )
    args = ap.parse_args(argv)
    out_dir = args.out.resolve()
    paths = args.notebooks or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    lib = library_hash()
    rows = []
    for p in paths:
        p = p.resolve()
        key = hashlib.sha256((lib + hashlib.sha256(p.read_bytes()).hexdigest()).encode()).hexdigest()
        if args.force:
            key += "-forced"
        print(f"executing {p.name} ...", flush=True)
        rows.append(execute(p, key, args.timeout, out_dir=out_dir, strict=args.strict))
    verdicts = [cached_verdict(r) if r["cached"] else judge(r, strict=args.strict) for r in rows]
    print()
    print(table(rows, verdicts))
    fresh = [r for r in rows if not r["cached"]]
    latest = fresh[-1] if fresh else (rows[-1] if rows else {})
    summary = {
        "budget_s": BUDGET_S,
        "budget_mb": BUDGET_MB,
        "cpu_fail_factor": CPU_FAIL_FACTOR,
        "strict": args.strict,
        "machine": latest.get("machine"),  # of the latest run that produced a row
        "calibration": latest.get("calibration"),
        "notebooks": [{k: v for k, v in r.items() if k != "machine"} for r in rows],
        "total_s": round(sum(r.get("seconds") or 0 for r in rows), 1),
        "total_cpu_s": round(sum(r.get("cpu_s") or 0 for r in rows), 1),
    }
    timings = TIMINGS if out_dir == OUT.resolve() else out_dir / "timings.json"
    timings.parent.mkdir(parents=True, exist_ok=True)
    tmp = timings.with_suffix(".tmp")
    tmp.write_text(json.dumps(summary, indent=1) + "\n")
    os.replace(tmp, timings)
    bad = [r["notebook"] for r, v in zip(rows, verdicts) if v.fails]
    if bad:
        print(f"failed: {', '.join(bad)}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
