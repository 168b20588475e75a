"""scripts/execute_notebooks.py: how a run is judged, what is cached, what /proc gives — no kernel started."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("execute_notebooks", ROOT / "scripts" / "execute_notebooks.py")
ex = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = ex  # dataclasses look their module up there
_spec.loader.exec_module(ex)

B = ex.BUDGET_S


def report(**kw):
    base = {"notebook": "x.ipynb", "seconds": 30.0, "cpu_s": 40.0, "peak_rss_mb": 800, "error": None}
    return {**base, **kw}


def test_a_quick_notebook_is_ok():
    assert ex.judge(report()) == ex.Verdict("ok", False)
    assert ex.judge(report(), strict=True) == ex.Verdict("ok", False)


@pytest.mark.parametrize("strict", [False, True])
def test_slow_wall_time_is_reported_never_failed(strict):
    # The loaded run: 206.9 s of wall time (25 s idle) must not fail, strict or not.
    v = ex.judge(report(seconds=206.9, cpu_s=50.0), strict=strict)
    assert not v.fails and v.status.startswith("OVER BUDGET") and "wall 207 s" in v.status


def test_cpu_time_fails_only_strict_and_only_past_twice_the_budget():
    over = report(cpu_s=1.5 * B)
    assert not ex.judge(over, strict=True).fails and "CPU 135 s" in ex.judge(over, strict=True).status
    regression = report(cpu_s=2 * B + 1)
    assert not ex.judge(regression).fails and ex.judge(regression).status.startswith("OVER BUDGET")
    v = ex.judge(regression, strict=True)
    assert v.fails and "kernel CPU" in v.status and "regression" in v.status
    assert not ex.judge(report(cpu_s=2 * B), strict=True).fails  # at the limit: not over it


def test_errors_and_memory_always_fail():
    v = ex.judge(report(error="AssertionError: at: assert x"))
    assert v.fails and v.status == "FAILED: AssertionError: at: assert x"
    v = ex.judge(report(peak_rss_mb=ex.BUDGET_MB + 1))
    assert v.fails and "peak memory" in v.status
    assert not ex.judge(report(peak_rss_mb=ex.BUDGET_MB)).fails


def test_missing_measurements_do_not_fail():
    v = ex.judge(report(cpu_s=None, peak_rss_mb=None), strict=True)
    assert v == ex.Verdict("ok", False)


def test_a_cached_report_is_never_judged_again():
    stored = report(seconds=206.9, status="OVER BUDGET (wall 207 s > 90 s; not failed)", failed=False)
    v = ex.cached_verdict(stored)
    assert not v.fails and v.status == stored["status"] + " (cached)"
    assert ex.cached_verdict({"status": "FAILED: boom"}).fails is False


def test_only_a_passing_run_of_the_same_sources_is_reused():
    ok = {"key": "k", "report": report(failed=False), "error": None}
    assert ex.reusable(ok, "k") and ex.reusable(ok, "k", strict=True)
    assert not ex.reusable(ok, "other")
    assert not ex.reusable({**ok, "error": "boom"}, "k")
    assert not ex.reusable({"key": "k", "report": report(failed=True), "error": None}, "k")
    assert not ex.reusable({"key": "k", "report": report(), "error": None}, "k")  # no verdict recorded
    assert not ex.reusable({}, "k")
    # A non-strict run's CPU regression is executed afresh under --strict, not re-judged.
    slow_cpu = {"key": "k", "report": report(cpu_s=2 * B + 1, failed=False), "error": None}
    assert ex.reusable(slow_cpu, "k") and not ex.reusable(slow_cpu, "k", strict=True)


def test_error_line_from_a_coloured_traceback():
    tb = (
        "\x1b[31m------\x1b[39m\n\x1b[31mAssertionError\x1b[39m   Traceback (most recent call last)\n"
        "Cell \x1b[32mIn[7]\x1b[39m, line 2\n      1 speed = 1.1\n"
        "\x1b[32m----> 2\x1b[39m \x1b[38;5;28;01massert\x1b[39;00m speed > \x1b[32m1.3\x1b[39m\n\n"
        "\x1b[31mAssertionError\x1b[39m: "
    )
    assert ex.error_line(tb) == "AssertionError: at: assert speed > 1.3"
    assert ex.error_line("ValueError: bad n") == "ValueError: bad n"
    assert ex.error_line("") == ""


def test_table_shows_wall_cpu_memory_load_and_status():
    rows = [
        report(notebook="a.ipynb", load_start=0.5, load_end=2.25),
        report(notebook="b.ipynb", cpu_s=None, peak_rss_mb=None, load_start=None, load_end=None),
    ]
    text = ex.table(rows, [ex.Verdict("ok", False), ex.Verdict("OVER BUDGET (x) (cached)", False)])
    head, a, b, total = text.splitlines()
    assert head.split()[:4] == ["notebook", "wall", "s", "CPU"] and "peak MB" in head and "load" in head
    assert a.split()[:5] == ["a.ipynb", "30.0", "40.0", "800", "0.50→2.25"] and a.endswith("ok")
    assert "n/a" in b and b.endswith("(cached)")
    assert total.split()[:3] == ["total", "60.0", "40.0"]


def test_cpu_seconds_of_a_process_tree():
    # A child burns >= 0.3 s of CPU, then sleeps: its time counts while it is alive.
    code = (
        "import time, sys\n"
        "t = time.process_time()\n"
        "while time.process_time() - t < 0.3: pass\n"
        "print('done', flush=True); time.sleep(30)"
    )
    before = ex.process_cpu_seconds(os.getpid())
    if before is None:
        pytest.skip("/proc not available")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "done"
        alone = ex.process_cpu_seconds(child.pid)
        tree = ex.process_cpu_seconds(os.getpid())
    finally:
        child.kill()
        child.wait()
    assert alone >= 0.25
    assert tree - before >= 0.25  # the live child is part of this process's tree
    assert ex.process_cpu_seconds(2**22 + 12345) is None  # no such process


def _notebook(tmp_path: Path) -> Path:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 + 1")])
    path = tmp_path / "99_tiny.ipynb"
    nbformat.write(nb, path)
    return path


def test_main_reuses_a_cached_slow_run_without_failing(tmp_path):
    """End to end without a kernel: a stored 206.9 s run is printed (cached) and the run passes, --strict too."""
    path = _notebook(tmp_path)
    key = hashlib.sha256((ex.library_hash() + hashlib.sha256(path.read_bytes()).hexdigest()).encode()).hexdigest()
    out = tmp_path / "out"
    out.mkdir()
    stored = report(
        notebook=path.name,
        seconds=206.9,
        status="OVER BUDGET (wall 207 s > 90 s; not failed)",
        failed=False,
        calibration={"matmuls": 400, "workload_cpu_s": 0.1, "workload_wall_s": 0.1, "probe_best_s": 1e-4},
        machine={"cpu": "test CPU"},
    )
    nb = nbformat.read(path, as_version=4)
    nb.metadata["course_execution"] = {"key": key, "report": stored, "error": None}
    nbformat.write(nb, out / path.name)
    assert ex.main(["--strict", "--out", str(out), str(path)]) == 0
    timings = json.loads((out / "timings.json").read_text())
    (row,) = timings["notebooks"]
    assert row["cached"] and row["seconds"] == 206.9 and row["cpu_s"] == 40.0
    assert timings["machine"] == {"cpu": "test CPU"} and timings["calibration"]["matmuls"] == 400
    assert timings["strict"] is True and timings["total_cpu_s"] == 40.0


# --------------------------------------------------------------------------- make doctor's estimate

_dspec = importlib.util.spec_from_file_location("doctor", ROOT / "scripts" / "doctor.py")
doctor = importlib.util.module_from_spec(_dspec)
sys.modules[_dspec.name] = doctor
_dspec.loader.exec_module(doctor)

NOW = {"matmuls": 400, "workload_cpu_s": 0.1, "workload_wall_s": 0.2, "stretch": 2.0, "probe_best_s": 1e-4}


def test_doctor_scales_recorded_times_by_the_calibration():
    then = {**NOW, "workload_cpu_s": 0.2, "stretch": 4.0}  # recorded on a machine 2x slower, 4x stretched
    timings = {"notebooks": [report(seconds=80.0, cpu_s=40.0, calibration=then)]}
    lines = doctor.estimate(timings, NOW, expected=1)
    assert "80 s wall, 40 s kernel CPU" in lines[0]
    assert "2.0× as fast as" in lines[1] and "×0.50" in lines[1]
    # CPU 40 x 0.5 = 20 s; idle wall 80 x 0.5 / 4 = 10 s; now x2 = 20 s.
    assert "≈ 20 s kernel CPU" in lines[2] and "≈ 0.2 min wall when idle" in lines[2]
    assert "≈ 0.3 min at the current load (wall ×2.0)" in lines[2] and "an estimate" in lines[2]
    assert len(lines) == 3  # all notebooks covered, all calibrated


def test_doctor_does_not_rescale_between_machines_of_one_kind():
    fp = {"cpu": "AMD EPYC", "isa": ["avx2", "fma"], "torch_threads": 2}
    then = {**NOW, "workload_cpu_s": 0.2, "stretch": 4.0}
    timings = {"machine": fp, "notebooks": [report(seconds=80.0, cpu_s=40.0, calibration=then)]}
    lines = doctor.estimate(timings, NOW, current=dict(fp))
    assert "same kind of machine (AMD EPYC, AVX2 only, 2 threads): not rescaled" in lines[1]
    assert "≈ 40 s kernel CPU" in lines[2] and "≈ 0.3 min wall when idle" in lines[2]  # 80 / 4 = 20 s
    other = doctor.estimate(timings, NOW, current={**fp, "isa": ["avx2", "fma", "avx512f"]})
    assert "2.0× as fast as" in other[1]


def test_doctor_says_what_it_could_not_scale():
    timings = {"notebooks": [report(seconds=60.0, cpu_s=None)]}
    lines = doctor.estimate(timings, NOW, expected=9)
    assert "no CPU time" in lines[0]
    assert any("no recorded calibration" in ln for ln in lines)
    assert lines[-1] == "(covers 1 of the 9 notebooks: `make course` records them all)"


def test_doctor_falls_back_to_the_readme_reference():
    total = doctor.readme_reference()
    assert total is not None and total > 0
    lines = doctor.estimate(None, NOW, readme_total=total)
    assert f"{total:.0f} s of wall time" in lines[0] and "×2.0" in lines[1]
    assert "no estimate" in doctor.estimate(None, NOW, readme_total=None)[0]


def test_doctor_calibration_rejects_bad_chunks():
    for bad in (0, -1, 401, 2.5, True):
        with pytest.raises(ValueError, match="chunks"):
            doctor.calibrate(chunks=bad)


def test_doctor_calibration_fields():
    cal = doctor.calibrate(chunks=4)
    assert cal["matmuls"] == doctor.CALIBRATION_MATMULS
    assert cal["workload_cpu_s"] > 0 and cal["workload_wall_s"] > 0 and cal["stretch"] >= 1.0
    assert cal["probe_best_s"] > 0


def test_kernels_run_with_the_network_guard_and_passive_threads(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/somewhere")
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    env = ex.kernel_env()
    parts = env["PYTHONPATH"].split(os.pathsep)
    assert parts[0].endswith("tests/netguard_site") and "/somewhere" in parts
    assert (Path(parts[0]) / "sitecustomize.py").is_file()
    assert env["OMP_WAIT_POLICY"] == "PASSIVE" and env["COURSE_BOOK_BUILD"] == "1"
