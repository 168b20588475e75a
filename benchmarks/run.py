"""Run the course benchmarks: ``make bench`` (or ``python -m benchmarks.run [name ...]``).

Every ``benchmarks/bench_<topic>.py`` defines functions ``bench_<what>()`` that return a
list of result rows (dicts with at least ``benchmark``, ``variant`` and measured metrics).
The runner calls them all (or those whose name contains a filter), then writes

* ``benchmarks/results.json`` — machine, versions, date, and every row;
* ``benchmarks/results.md``   — the same as markdown tables, one per benchmark.

Speed numbers are medians of interleaved runs (course_lib.measure), so compare ratios
within a table; absolute values belong to the machine in the header.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import sys
import time
from pathlib import Path

from course_lib import fingerprint  # first: sets OMP_WAIT_POLICY before a benchmark imports torch

HERE = Path(__file__).resolve().parent


def discover() -> dict[str, callable]:
    found = {}
    for path in sorted(HERE.glob("bench_*.py")):
        module = importlib.import_module(f"benchmarks.{path.stem}")
        for name in sorted(dir(module)):
            if name.startswith("bench_") and callable(getattr(module, name)):
                found[f"{path.stem[6:]}.{name[6:]}"] = getattr(module, name)
    return found


def machine() -> dict:
    """The machine fingerprint (course_lib.fingerprint) and the date: stored with every result."""
    return {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), **fingerprint.machine()}


def where(m: dict) -> str:
    """The fingerprint line without the load average (which differs between any two runs)."""
    return fingerprint.machine_line({**m, "load_average": None})


def to_markdown(results: dict) -> str:
    m = results["machine"]
    header = fingerprint.machine_line(m)
    lines = [
        "# Benchmark results",
        "",
        f"Measured {m.get('date', 'at an unrecorded date')} on {header}"
        + (f", GPU {m['cuda']}" if m.get("cuda") else ", no GPU")
        + ". Regenerate with `make bench`; compare ratios within a table, not absolute times across machines.",
        "",
    ]
    for name, entry in results["benchmarks"].items():
        rows = entry["rows"]
        cols = list(dict.fromkeys(k for r in rows for k in r if k != "benchmark"))
        lines += [f"## {name}", "", entry.get("doc", ""), ""]
        if entry.get("machine") and entry["machine"] != where(m):  # kept from an earlier run elsewhere
            lines += [f"*Measured {entry.get('date', '')} on {entry['machine']}.*", ""]
        lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in rows:
            cells = []
            for c in cols:
                v = r.get(c, "")
                cells.append(f"{v:,.4g}" if isinstance(v, float) else str(v))
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", f"*{entry['seconds']:.1f} s to run*", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("filters", nargs="*", help="run only benchmarks whose name contains one of these")
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args(argv)
    benches = discover()
    chosen = {n: f for n, f in benches.items() if not args.filters or any(s in n for s in args.filters)}
    if not chosen:
        print(f"no benchmark matches {args.filters}; have {list(benches)}", file=sys.stderr)
        return 2
    path = args.out / "results.json"
    results = json.loads(path.read_text()) if path.is_file() and args.filters else {"benchmarks": {}}
    results["machine"] = machine()
    for name, fn in chosen.items():
        print(f"running {name} ...", flush=True)
        t0 = time.perf_counter()
        rows = fn()
        results["benchmarks"][name] = {
            "doc": (fn.__doc__ or "").strip().split("\n")[0],
            "rows": rows,
            "seconds": round(time.perf_counter() - t0, 1),
            # A later partial run (`python -m benchmarks.run <filter>`) keeps this entry: say where it ran.
            "machine": where(results["machine"]),
            "date": results["machine"]["date"],
        }
    results["benchmarks"] = dict(sorted(results["benchmarks"].items()))
    path.write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "results.md").write_text(to_markdown(results))
    print(to_markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
