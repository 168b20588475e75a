"""``make stress``: the most load-sensitive notebooks, executed with one busy process per core beside them.

    python scripts/stress.py [--busy N] [notebooks/05_quantization.ipynb ...]

A learner's machine is never idle. This starts ``N`` (default: one per logical CPU)
processes running ``while True: pass``, executes the notebooks afresh (``--force``) into
build/stress/ (so build/executed, the book's pages, is untouched), then kills the busy
processes — always, also when the run fails or is interrupted: each runs in its own
process group, is killed with it in a ``finally``, and asks the kernel to kill it should
this script die first (Linux ``PR_SET_PDEATHSIG``).

It fails only as ``make course`` does: for a cell error (an assertion that does not hold
under load included) or memory over the budget, never for time. It prints the executor's
table of wall and CPU seconds, then each notebook's wall and CPU time against the last
unloaded run recorded in build/timings.json, when there is one.

The notebooks: 05 and 06, the two whose wall time grew most under load in the runs reported
in issue 14 (06: 25 s idle, 207 s loaded with spinning threads; 05: under 60 s idle, 127 s
loaded). ``stress_ratios`` in build/stress/timings.json lets a later run re-choose them.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "build" / "stress"
NOTEBOOKS = ("notebooks/05_quantization.ipynb", "notebooks/06_pruning.ipynb")
BUSY_CODE = "while True: pass"


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def start_busy(n: int) -> list[subprocess.Popen]:
    """``n`` processes spinning a core each, each the leader of its own process group."""
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= 256:
        raise ValueError(f"busy must be an int in [0, 256], got {n!r}")
    procs = []
    for _ in range(n):
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", BUSY_CODE],
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
                stdin=subprocess.DEVNULL,
            )
        )
    return procs


def stop_busy(procs: list[subprocess.Popen]) -> None:
    """Kill each busy process's group and reap it (idempotent)."""
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()


def _raise_exit(signum, _frame):
    raise SystemExit(128 + signum)  # so the finally below runs on SIGTERM / SIGHUP


def compare(stress: dict, reference: dict | None) -> list[str]:
    """Lines: each notebook's loaded wall/CPU time against the reference (unloaded) run's."""
    ref = {r["notebook"]: r for r in (reference or {}).get("notebooks", [])}
    lines = []
    for r in stress.get("notebooks", []):
        base = ref.get(r["notebook"])
        if not base or not base.get("seconds") or not r.get("seconds"):
            lines.append(f"{r['notebook']:34s} no unloaded run recorded in build/timings.json to compare with")
            continue
        cpu = (
            f"CPU {base['cpu_s']:.1f} → {r['cpu_s']:.1f} s (×{r['cpu_s'] / base['cpu_s']:.2f})"
            if base.get("cpu_s") and r.get("cpu_s")
            else "CPU not recorded for both"
        )
        lines.append(
            f"{r['notebook']:34s} wall {base['seconds']:.1f} → {r['seconds']:.1f} s "
            f"(×{r['seconds'] / base['seconds']:.2f}); {cpu}"
        )
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("notebooks", nargs="*", default=list(NOTEBOOKS))
    ap.add_argument("--busy", type=int, default=os.cpu_count() or 1, help="busy processes (default: one per CPU)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_exit)
    cmd = [sys.executable, str(ROOT / "scripts" / "execute_notebooks.py"), "--force", "--out", str(args.out)]
    procs: list[subprocess.Popen] = []
    try:
        procs = start_busy(args.busy)
        time.sleep(1.0)
        dead = [p.pid for p in procs if p.poll() is not None]
        if dead:
            print(f"stress: busy processes {dead} ended at once; not a stress run", file=sys.stderr)
            return 1
        load = os.getloadavg()[0]
        print(
            f"stress: {len(procs)} busy processes ({BUSY_CODE!r}, one per logical CPU unless --busy) beside "
            f"{', '.join(Path(n).stem for n in args.notebooks)}; load average now {load:.2f}",
            flush=True,
        )
        rc = subprocess.run(cmd + [str(ROOT / n) for n in args.notebooks], cwd=ROOT).returncode
    finally:
        stop_busy(procs)
    print(f"stress: {len(procs)} busy processes stopped")
    stress_json = args.out / "timings.json"
    if stress_json.is_file():
        timings = ROOT / "build" / "timings.json"
        reference = json.loads(timings.read_text()) if timings.is_file() else None
        stress = json.loads(stress_json.read_text())
        print("\nunder load vs the last `make course` run (build/timings.json):")
        for line in compare(stress, reference):
            print("  " + line)
        stress["busy_processes"] = len(procs)
        stress["stress_ratios"] = {
            r["notebook"]: round(r["seconds"] / ref["seconds"], 2)
            for r in stress.get("notebooks", [])
            for ref in (reference or {}).get("notebooks", [])
            if ref["notebook"] == r["notebook"] and ref.get("seconds") and r.get("seconds")
        }
        stress_json.write_text(json.dumps(stress, indent=1) + "\n")
    print("stress: " + ("passed (time is reported, not judged)" if rc == 0 else f"FAILED (exit {rc})"))
    return rc


if __name__ == "__main__":
    sys.exit(main())
