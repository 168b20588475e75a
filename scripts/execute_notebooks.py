"""Execute the notebooks into build/executed/, with a cache, and report time and memory.

    python scripts/execute_notebooks.py [notebooks/01_baseline.ipynb ...]   (default: all)

Each notebook runs top to bottom in a fresh kernel started in notebooks/, with
``COURSE_BOOK_BUILD=1`` so figures are emitted for the book. The executed copy goes to
build/executed/ (the book's pages; never back into notebooks/, which are committed without
outputs). A notebook is executed again only when its source, the library, the zoo data or
this script changed: the hash of all of them is stored in the executed copy.

Prints a table of seconds and kernel peak memory per notebook, writes build/timings.json,
and exits 1 when a notebook fails, exceeds its memory budget (3 GB), or takes more than
twice its time budget (design §9: 90 s). Wall time depends on how busy the machine is, so
a notebook between one and two budgets is flagged OVER BUDGET in the table (and in
timings.json) without failing the run; twice the budget is a regression no load explains.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "build" / "executed"
BUDGET_S = 90.0
BUDGET_MB = 3000
FAIL_FACTOR = 2.0  # fail at this multiple of the time budget


def library_hash() -> str:
    """Everything besides the notebook that can change its outputs."""
    h = hashlib.sha256()
    files = sorted((ROOT / "course_lib").rglob("*.py")) + sorted((ROOT / "course_lib" / "zoo_data").glob("*"))
    for f in files + [Path(__file__)]:
        if f.is_file() and "__pycache__" not in f.parts:
            h.update(str(f.relative_to(ROOT)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def kernel_peak_rss(client: NotebookClient) -> int | None:
    """VmHWM of the kernel process, read from /proc before the kernel shuts down (Linux)."""
    try:
        pid = client.km.provisioner.process.pid
        text = Path(f"/proc/{pid}/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+) kB", text).group(1)) * 1024
    except Exception:
        return None


def execute(path: Path, key: str, timeout: int) -> dict:
    out = OUT / path.name
    if out.is_file():
        old = nbformat.read(out, as_version=4)
        meta = old.metadata.get("course_execution", {})
        if meta.get("key") == key and not meta.get("error"):
            return {**meta["report"], "cached": True}
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    t0 = time.perf_counter()
    error, peak = None, None
    try:
        with client.setup_kernel(env={**os.environ, "COURSE_BOOK_BUILD": "1"}):
            for index, cell in enumerate(nb.cells):
                client.execute_cell(cell, index)
            peak = kernel_peak_rss(client)
        client.set_widgets_metadata()
    except CellExecutionError as e:
        lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
        error = lines[-1][:300] if lines else "cell failed"
    seconds = time.perf_counter() - t0
    report = {
        "notebook": path.name,
        "seconds": round(seconds, 1),
        "peak_rss_mb": None if peak is None else round(peak / 1e6),
        "error": error,
    }
    nb.metadata["course_execution"] = {"key": key, "report": report, "error": error}
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    nbformat.write(nb, tmp)
    os.replace(tmp, out)
    return {**report, "cached": False}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("notebooks", nargs="*", type=Path)
    ap.add_argument("--timeout", type=int, default=600, help="per-cell timeout (s)")
    ap.add_argument("--force", action="store_true", help="ignore the cache")
    args = ap.parse_args(argv)
    paths = args.notebooks or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    lib = library_hash()
    rows = []
    for p in paths:
        p = p.resolve()
        key = hashlib.sha256((lib + hashlib.sha256(p.read_bytes()).hexdigest()).encode()).hexdigest()
        if args.force:
            key += "-forced"
        print(f"executing {p.name} ...", flush=True)
        rows.append(execute(p, key, args.timeout))
    print(f"\n{'notebook':34s} {'seconds':>8s} {'peak MB':>8s}  status")
    for r in rows:
        over = r["seconds"] > BUDGET_S or (r["peak_rss_mb"] or 0) > BUDGET_MB
        status = f"FAILED: {r['error']}" if r["error"] else ("OVER BUDGET" if over else "ok")
        status += " (cached)" if r["cached"] else ""
        print(f"{r['notebook']:34s} {r['seconds']:8.1f} {str(r['peak_rss_mb']):>8s}  {status}")
    total = sum(r["seconds"] for r in rows)
    print(f"{'total':34s} {total:8.1f}   (budgets: {BUDGET_S:.0f} s and {BUDGET_MB} MB per notebook, 900 s in all)")
    (ROOT / "build").mkdir(exist_ok=True)
    (ROOT / "build" / "timings.json").write_text(
        json.dumps(
            {"budget_s": BUDGET_S, "budget_mb": BUDGET_MB, "notebooks": rows, "total_s": round(total, 1)}, indent=1
        )
    )
    bad = [
        r for r in rows if r["error"] or r["seconds"] > FAIL_FACTOR * BUDGET_S or (r["peak_rss_mb"] or 0) > BUDGET_MB
    ]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
