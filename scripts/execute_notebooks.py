"""Execute notebooks into build/executed/ and print how long each took and its peak memory.

    python scripts/execute_notebooks.py notebooks/01_baseline.ipynb [...]

Each notebook runs in a fresh kernel from the notebooks/ folder; the executed copy (with
outputs) goes to build/executed/, never back into notebooks/ (those are committed without
outputs). Exit status 1 when any notebook fails or exceeds the per-notebook budget.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parent.parent
BUDGET_S = 90.0  # design §9: each notebook <= 90 s on a 2-core CPU


def kernel_peak_rss(client: NotebookClient) -> int | None:
    """VmHWM of the kernel process, read from /proc before the kernel shuts down."""
    try:
        pid = client.km.provisioner.process.pid
        text = Path(f"/proc/{pid}/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+) kB", text).group(1)) * 1024
    except Exception:  # not Linux, or the kernel is gone
        return None


def execute(path: Path, out_dir: Path, timeout: int) -> dict:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    t0 = time.perf_counter()
    error, peak = None, None
    try:
        with client.setup_kernel():
            for index, cell in enumerate(nb.cells):
                client.execute_cell(cell, index)
            peak = kernel_peak_rss(client)
    except CellExecutionError as e:
        error = str(e).strip().splitlines()[-1][:200]
    seconds = time.perf_counter() - t0
    out_dir.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out_dir / path.name)
    return {
        "notebook": path.name,
        "seconds": round(seconds, 1),
        "peak_rss_mb": None if peak is None else round(peak / 1e6),
        "error": error,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("notebooks", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=ROOT / "build" / "executed")
    ap.add_argument("--timeout", type=int, default=600, help="per-cell timeout (s)")
    args = ap.parse_args(argv)
    rows = []
    for nb in args.notebooks:
        print(f"executing {nb} ...", flush=True)
        rows.append(execute(nb.resolve(), args.out, args.timeout))
    total = sum(r["seconds"] for r in rows)
    print(f"\n{'notebook':34s} {'seconds':>8s} {'peak MB':>8s}  status")
    for r in rows:
        status = "FAILED: " + r["error"] if r["error"] else ("over budget" if r["seconds"] > BUDGET_S else "ok")
        print(f"{r['notebook']:34s} {r['seconds']:8.1f} {str(r['peak_rss_mb']):>8s}  {status}")
    print(f"{'total':34s} {total:8.1f}")
    (args.out.parent / "timings.json").write_text(
        json.dumps({"budget_s": BUDGET_S, "notebooks": rows, "total_s": round(total, 1)}, indent=1)
    )
    bad = [r for r in rows if r["error"] or r["seconds"] > BUDGET_S]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
