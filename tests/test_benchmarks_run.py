"""``make bench`` stores the machine fingerprint with every result (issue 14 item 4)."""

from __future__ import annotations

import json

from benchmarks import run


def test_results_carry_the_machine_and_a_partial_run_keeps_where_older_rows_ran(tmp_path, monkeypatch):
    rows = {"a.one": lambda: [{"benchmark": "a", "variant": "x", "ms": 1.5}]}
    monkeypatch.setattr(run, "discover", lambda: rows)
    assert run.main(["--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    m = results["machine"]
    for key in ("date", "cpu", "isa", "logical_cpus", "torch", "torch_threads", "blas", "omp_wait_policy", "caches"):
        assert key in m, key
    assert "load_average" in m
    entry = results["benchmarks"]["a.one"]
    assert entry["rows"] == rows["a.one"]() and entry["machine"] == run.where(m) and entry["date"] == m["date"]
    md = (tmp_path / "results.md").read_text()
    assert run.fingerprint.machine_line(m) in md and "| x | 1.5 |" in md
    # A filtered re-run keeps the other entries, each still saying where it ran; the header is the new run's.
    old = dict(results["benchmarks"]["a.one"], machine="another CPU · AVX-512 + VNNI · 8 threads")
    (tmp_path / "results.json").write_text(json.dumps({**results, "benchmarks": {"old.one": old}}))
    rows["b.two"] = lambda: [{"benchmark": "b", "variant": "y", "ms": 2.0}]
    assert run.main(["b.two", "--out", str(tmp_path)]) == 0
    again = json.loads((tmp_path / "results.json").read_text())
    assert set(again["benchmarks"]) == {"old.one", "b.two"}
    assert (
        "*Measured" in (tmp_path / "results.md").read_text() and "another CPU" in (tmp_path / "results.md").read_text()
    )
