"""``make doctor``: is this machine ready for the course, how busy is it, how long will it take?

    python scripts/doctor.py

Prints one line per check — the machine fingerprint, the load average against the number
of cores (with the processes keeping it busy), free memory and disk, Python and torch
versions, whether .venv is installed, whether ``OMP_WAIT_POLICY`` is in force, whether the
site and chromium are there — and an **estimate** of the course's time on this machine:
a fixed calibration workload (:func:`calibrate`) is timed now and compared with the same
workload timed when build/timings.json was recorded, and the recorded notebook times are
scaled by the ratio. It informs and never fails: the exit status is always 0.

:func:`calibrate` is also what the notebook executor records beside its timings.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import re
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TIMINGS = ROOT / "build" / "timings.json"
#: Matmuls of (128, 256) @ (256, 256) fp32 on one thread per calibration repeat (~0.1 s of CPU
#: on the CI machine kind). Fixed: the ratio of two calibrations compares machines.
CALIBRATION_MATMULS = 400
BUSY_FRACTION = 0.5  # warn when the 1-minute load average exceeds this fraction of the cores

# The OpenMP wait policy as the caller's environment (the shell, or make) set it, before
# importing course_lib sets its default.
OMP_FROM_ENV = os.environ.get("OMP_WAIT_POLICY")


def calibrate(*, chunks: int = 10) -> dict:
    """Time a fixed single-thread matmul workload, in ``chunks`` pieces: machine speed and load stretch.

    ``workload_cpu_s``: CPU seconds of the whole workload, from its least disturbed chunk
    (the best chunk x ``chunks``): the machine's speed, as free of other work as a busy
    machine allows (cache and memory contention still raise CPU time a little).
    ``stretch``: total wall / total CPU time of the chunks, how much the load stretches wall
    time now (1 on a free core). ``probe_best_s``: course_lib.measure's load probe at its best.
    """
    if isinstance(chunks, bool) or not isinstance(chunks, int) or not 1 <= chunks <= CALIBRATION_MATMULS:
        raise ValueError(f"chunks must be an int in [1, {CALIBRATION_MATMULS}], got {chunks!r}")
    sys.path.insert(0, str(ROOT))
    importlib.import_module("course_lib")  # sets OMP_WAIT_POLICY before torch loads
    import torch

    from course_lib import measure

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    per_chunk = CALIBRATION_MATMULS // chunks
    try:
        g = torch.Generator().manual_seed(0)
        a, w = torch.rand(128, 256, generator=g), torch.rand(256, 256, generator=g)
        a @ w  # warm-up
        cpus, walls = [], []
        for _ in range(chunks):
            c0, t0 = time.process_time(), time.perf_counter()
            for _ in range(per_chunk):
                a @ w
            cpus.append(time.process_time() - c0)
            walls.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    scale = CALIBRATION_MATMULS / per_chunk
    return {
        "matmuls": CALIBRATION_MATMULS,
        "workload_cpu_s": round(min(cpus) * scale, 4),
        "workload_wall_s": round(sum(walls) * scale / chunks, 4),
        "stretch": round(max(1.0, sum(walls) / sum(cpus)), 2) if sum(cpus) > 0 else None,
        "probe_best_s": round(measure.probe_best(), 6),
    }


def _stretch(cal: dict | None) -> float | None:
    """How much the load stretched wall time when ``cal`` was taken (>= 1), None if unknown."""
    if not cal:
        return None
    if cal.get("stretch"):
        return max(1.0, cal["stretch"])
    try:
        return max(1.0, cal["workload_wall_s"] / cal["workload_cpu_s"])
    except (KeyError, TypeError, ZeroDivisionError):
        return None


README_WALL_ROW = "| wall s |"


def readme_reference() -> float | None:
    """The README's idle `make course` total (sum of its "| wall s |" row), None if absent."""
    try:
        for line in (ROOT / "README.md").read_text().splitlines():
            if line.startswith(README_WALL_ROW):
                return float(sum(float(x) for x in re.findall(r"\d+(?:\.\d+)?", line)))
    except OSError:
        pass
    return None


def estimate(
    timings: dict | None,
    now: dict,
    *,
    readme_total: float | None = None,
    expected: int | None = None,
    current: dict | None = None,
) -> list[str]:
    """Lines estimating the course's time here, from recorded timings scaled by the calibration ratio.

    Per notebook: speed ratio r = calibration CPU now / calibration CPU when it ran; kernel
    CPU now ≈ recorded CPU x r; wall on a free machine ≈ recorded wall x r / (the stretch
    then); wall now ≈ that x (the stretch now). A model, not a measurement. When the
    recording machine is of the same kind as ``current`` (fingerprint.same_kind: CPU, ISA,
    threads) r is taken as 1: a calibration differing there is load, not speed.
    """
    from course_lib.fingerprint import same_kind

    same = same_kind((timings or {}).get("machine"), current)
    stretch_now = _stretch(now) or 1.0
    rows = (timings or {}).get("notebooks") or []
    rows = [r for r in rows if r.get("seconds") is not None]
    if not rows:
        if readme_total is None:
            return ["no recorded timings (run `make course`) and no reference in README.md: no estimate"]
        return [
            f"no build/timings.json yet: the README's reference is {readme_total:.0f} s of wall time on an idle "
            "machine of the CI kind (2 cores, not calibrated against this one)",
            f"with the load now stretching wall time ×{stretch_now:.1f}, expect roughly "
            f"{readme_total * stretch_now / 60:.0f} min for the notebooks (an estimate)",
        ]
    cpu = wall_idle = 0.0
    ratios, uncalibrated, no_cpu = [], 0, 0
    for r in rows:
        cal = r.get("calibration") or (timings or {}).get("calibration")
        if cal and cal.get("workload_cpu_s"):
            ratios.append(now["workload_cpu_s"] / cal["workload_cpu_s"])
            ratio = 1.0 if same else ratios[-1]
        else:
            ratio, uncalibrated = 1.0, uncalibrated + 1
        if r.get("cpu_s") is None:
            no_cpu += 1
        cpu += (r.get("cpu_s") or 0.0) * ratio
        wall_idle += r["seconds"] * ratio / (_stretch(cal) or 1.0)
    out = [
        f"recorded in build/timings.json: {len(rows)} notebooks, {sum(r['seconds'] for r in rows):.0f} s wall, "
        + (f"{sum(r.get('cpu_s') or 0 for r in rows):.0f} s kernel CPU" if no_cpu < len(rows) else "no CPU time")
    ]
    if ratios and same:
        out.append(
            f"recorded on the same kind of machine ({isa_free(current)}): not rescaled "
            f"(the calibration differs by ×{statistics.median(ratios):.2f}, which load explains)"
        )
    elif ratios:
        ratio = statistics.median(ratios)
        speed = (
            "about as fast as"
            if abs(ratio - 1) <= 0.15
            else f"{1 / ratio:.1f}× as fast as"
            if ratio < 1
            else f"{ratio:.1f}× slower than"
        )
        out.append(
            f"calibration: this machine is {speed} the one that recorded them "
            f"(×{ratio:.2f} the CPU time for the same {now['matmuls']} matmuls)"
        )
    if uncalibrated:
        out.append(f"{uncalibrated} of them have no recorded calibration: taken as measured, not scaled")
    out.append(
        (f"estimate here: ≈ {cpu:.0f} s kernel CPU; " if no_cpu < len(rows) else "estimate here: ")
        + f"≈ {wall_idle / 60:.1f} min wall when idle, ≈ {wall_idle * stretch_now / 60:.1f} min at the current "
        f"load (wall ×{stretch_now:.1f}) — an estimate from a single-thread calibration loop, not a measurement"
    )
    if expected and len(rows) < expected:
        out.append(f"(covers {len(rows)} of the {expected} notebooks: `make course` records them all)")
    return out


def isa_free(fp: dict | None) -> str:
    """'AMD EPYC, AVX2 only, 2 threads' — what same_kind compares."""
    from course_lib.fingerprint import isa_summary

    fp = fp or {}
    return f"{fp.get('cpu')}, {isa_summary(fp)}, {fp.get('torch_threads')} threads"


def busiest(seconds: float = 0.5, top: int = 3) -> list[tuple[str, int, float]]:
    """The processes using the most CPU over ``seconds``: (command, pid, % of one core)."""

    def sample() -> dict[int, tuple[str, int]]:
        out = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    text = (entry / "stat").read_text()
                    fields = text[text.rindex(")") + 2 :].split()
                    out[int(entry.name)] = (
                        text[text.index("(") + 1 : text.rindex(")")],
                        int(fields[11]) + int(fields[12]),
                    )
                except (OSError, ValueError, IndexError):
                    continue
        return out

    tick = os.sysconf("SC_CLK_TCK")
    a = sample()
    time.sleep(seconds)
    b = sample()
    use = [(b[p][0], p, 100 * (b[p][1] - a[p][1]) / tick / seconds) for p in b if p in a and p != os.getpid()]
    return sorted((u for u in use if u[2] >= 5), key=lambda u: -u[2])[:top]


def line(level: str, text: str) -> None:
    print(f"  {level:5s} {text}", flush=True)


def main() -> int:
    print("make doctor — this machine, how busy it is, and whether the course is set up here\n")
    sys.path.insert(0, str(ROOT))
    from course_lib import fingerprint  # no torch yet

    torch_ok = True
    try:
        fp = fingerprint.machine()
        line("", f"machine: {fingerprint.machine_line(fp)}")
    except Exception as e:  # a broken install must not stop the doctor
        fp, torch_ok = None, False
        line("WARN", f"torch could not be imported ({type(e).__name__}: {e}); run `make venv`")
    cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    if load is None:
        line("?", "load average: not available on this system")
    elif load[0] > BUSY_FRACTION * cores:
        line(
            "WARN",
            f"busy: load average {load[0]:.2f} (1 min), {load[1]:.2f} (5 min) on {cores} logical CPUs — "
            "other work competes with the notebooks: wall times will be longer and close timing calls noisy",
        )
        try:
            for comm, pid, pct in busiest():
                line("", f"    {comm} (pid {pid}) uses {pct:.0f} % of a core")
        except OSError:
            pass
    else:
        line("ok", f"load average {load[0]:.2f} (1 min) on {cores} logical CPUs: quiet enough to time things")

    total, avail = fingerprint.memory_bytes()
    if avail is not None:
        level = "ok" if avail > 4e9 else "WARN"
        line(level, f"memory: {avail / 1e9:.1f} GB available of {total / 1e9:.1f} GB (a notebook may use up to 3 GB)")
    disk = shutil.disk_usage(ROOT)
    line("ok" if disk.free > 3e9 else "WARN", f"disk: {disk.free / 1e9:.1f} GB free of {disk.total / 1e9:.0f} GB")

    line("ok", f"python {platform.python_version()} ({sys.executable})")
    if fp:
        line("ok", f"torch {fp['torch']} · BLAS {fp['blas']} · oneDNN {'yes' if fp['onednn'] else 'no'}")
    venv = ROOT / ".venv"
    if (venv / ".installed").is_file():
        line("ok", ".venv installed (.venv/.installed present)")
    elif venv.is_dir():
        line("WARN", ".venv exists but is not fully installed: run `make venv`")
    else:
        line("WARN", "no .venv: `make venv` (or `make course`) creates it")

    kernel_json = venv / "share" / "jupyter" / "kernels" / "python3" / "kernel.json"
    kernel_policy = None
    if kernel_json.is_file():
        kernel_policy = (json.loads(kernel_json.read_text()).get("env") or {}).get("OMP_WAIT_POLICY")
    if (OMP_FROM_ENV or "").upper() == "PASSIVE":
        line("ok", "OMP_WAIT_POLICY=PASSIVE in this environment: torch's threads sleep instead of spinning")
    else:
        line(
            "WARN",
            f"OMP_WAIT_POLICY is {OMP_FROM_ENV or 'unset'} here (course_lib sets PASSIVE when imported before "
            "torch; the Makefile exports it): spinning threads are many times slower on a busy machine",
        )
    line(
        "ok" if (kernel_policy or "").upper() == "PASSIVE" else "WARN",
        f"notebook kernel spec sets OMP_WAIT_POLICY={kernel_policy}"
        if kernel_policy
        else "the notebook kernel spec does not set OMP_WAIT_POLICY (`make venv` installs one that does)",
    )

    html = ROOT / "book" / "_build" / "html" / "index.html"
    line(
        "ok" if html.is_file() else "-",
        f"site built: {html.relative_to(ROOT)}" if html.is_file() else "site not built yet (`make course`)",
    )
    chromium = Path("/usr/bin/chromium")
    line(
        "ok" if chromium.is_file() else "-",
        "chromium at /usr/bin/chromium (browser tests)"
        if chromium.is_file()
        else "no /usr/bin/chromium: `make browser-deps` (needed by `make test` only)",
    )

    if not torch_ok:
        return 0
    try:
        now = calibrate()
        timings = json.loads(TIMINGS.read_text()) if TIMINGS.is_file() else None
        line(
            "",
            f"calibration: {now['matmuls']} matmuls (one thread): {now['workload_cpu_s']:.3f} s CPU at best, "
            f"wall stretched ×{now['stretch'] or 1:.1f} by the load",
        )
        expected = len(list((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")))
        for text in estimate(timings, now, readme_total=readme_reference(), expected=expected, current=fp):
            line("", text)
    except Exception as e:
        line("?", f"no time estimate ({type(e).__name__}: {e})")
    print("\nSlow? Wall time grows with load; `make course` reports it and never fails for it. Details: README.md.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
