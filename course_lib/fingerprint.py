"""Which machine measured this? A fingerprint stored beside every number the course keeps.

Machines of one kind differ: the CI's 2-core AMD EPYC has been seen with AVX2 only (no
VNNI, bf16 emulated) and with AVX-512 + VNNI + AVX512-BF16, and the two disagree about
whether int8 matmuls are faster than fp32. A learner's laptop differs more, and is rarely
idle. So every precomputed result, every benchmark row and every notebook run records

* the CPU model, cores and threads, the ISA flags that decide matmul speed
  (AVX2, AVX-512, VNNI, BF16, AMX) and the L2/L3 caches;
* memory, the torch build (its BLAS and oneDNN), the OpenMP wait policy;
* the load average when it was taken (a busy machine explains a slow number).

:func:`machine` returns the dict, :func:`machine_line` one printable line,
:func:`same_kind` says whether two fingerprints would time alike (same CPU model, ISA and
thread count) and :func:`provenance` writes the "measured on …; this machine: …" line a
notebook shows beside a stored number.

This module does not import torch at import time (``make doctor`` and the notebook
executor use it); :func:`machine` imports it to read the build.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

#: CPU flags (as /proc/cpuinfo spells them) that decide how fast matmuls run, in the
#: order they are printed. AVX2+FMA: 8-wide fp32; AVX-512F: 16-wide; VNNI: int8 dot
#: products in one instruction; AVX512-BF16: native bf16 dot products; AMX: matrix tiles.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def cpu_flags() -> set[str]:
    """The flags of CPU 0 from /proc/cpuinfo (an empty set where it cannot be read)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_model() -> str:
    """The CPU's marketing name (``model name`` in /proc/cpuinfo), else what platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_bytes() -> dict[str, int]:
    """Sizes of CPU 0's caches from sysfs, ``{"L1d": ..., "L2": ..., "L3": ...}`` (those present)."""
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    sizes: dict[str, int] = {}
    for idx in sorted(base.glob("index*")) if base.is_dir() else []:
        try:
            level = int((idx / "level").read_text())
            kind = (idx / "type").read_text().strip()
            text = (idx / "size").read_text().strip().upper()
        except (OSError, ValueError):
            continue
        if kind == "Instruction":
            continue
        scale = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(text[-1:], 1)
        sizes[f"L{level}{'d' if level == 1 else ''}"] = int(text.rstrip("KMG")) * scale
    return sizes


def physical_cores() -> int | None:
    """Distinct (package, core) pairs in sysfs; None where the topology is not exposed."""
    seen = set()
    for topo in Path("/sys/devices/system/cpu").glob("cpu[0-9]*/topology"):
        try:
            seen.add(((topo / "physical_package_id").read_text(), (topo / "core_id").read_text()))
        except OSError:
            continue
    return len(seen) or None


def memory_bytes() -> tuple[int | None, int | None]:
    """(total, available) memory in bytes from /proc/meminfo."""
    info = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            info[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return None, None
    return info.get("MemTotal"), info.get("MemAvailable")


def load_average() -> tuple[float, float, float] | None:
    """The 1, 5 and 15-minute load averages (runnable processes), None where unknown."""
    try:
        return tuple(round(x, 2) for x in os.getloadavg())
    except OSError:
        return None


def _torch_build() -> dict:
    import torch

    config = torch.__config__.show()
    blas = next((ln.split("=", 1)[1].strip() for ln in config.splitlines() if "BLAS_INFO=" in ln), None)
    blas = blas.split(",")[0] if blas else ("mkl" if torch.backends.mkl.is_available() else "unknown")
    return {
        "torch": torch.__version__.split("+")[0],
        "torch_threads": torch.get_num_threads(),
        "torch_isa": torch.backends.cpu.get_cpu_capability(),
        "blas": blas,
        "onednn": torch.backends.mkldnn.is_available(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def machine() -> dict:
    """The fingerprint: what decides (and explains) a timing on this machine, as a JSON-able dict."""
    flags = cpu_flags()
    total, available = memory_bytes()
    return {
        "cpu": cpu_model(),
        "arch": platform.machine(),
        "logical_cpus": os.cpu_count(),
        "physical_cores": physical_cores(),
        "isa": [f for f in ISA_FLAGS if f in flags],
        "caches": cache_bytes(),
        "memory_gb": None if total is None else round(total / 1e9, 1),
        "memory_available_gb": None if available is None else round(available / 1e9, 1),
        "python": platform.python_version(),
        **_torch_build(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset: OpenMP threads spin while they wait)"),
        "load_average": load_average(),
    }


def isa_summary(fp: dict) -> str:
    """'AVX-512 + VNNI + BF16', 'AVX2 only', ... — the part of the ISA that decides matmul speed."""
    isa = set(fp.get("isa") or ())
    if not isa:
        return "ISA unknown"
    parts = ["AVX-512" if "avx512f" in isa else "AVX2" if "avx2" in isa else "no AVX2"]
    if isa & {"avx512_vnni", "avx_vnni"}:
        parts.append("VNNI")
    if "avx512_bf16" in isa:
        parts.append("BF16")
    if isa & {"amx_bf16", "amx_int8"}:
        parts.append("AMX")
    if len(parts) > 1:
        return " + ".join(parts)
    return "no AVX2" if parts[0] == "no AVX2" else f"{parts[0]} only"


def machine_line(fp: dict | None = None) -> str:
    """One line: CPU, ISA, cores/threads, L3, memory, torch, wait policy, load."""
    fp = machine() if fp is None else fp
    l3 = (fp.get("caches") or {}).get("L3")
    load = fp.get("load_average")
    parts = [
        fp.get("cpu", "unknown CPU"),
        isa_summary(fp),
        f"{fp.get('logical_cpus')} logical CPUs, {fp.get('torch_threads')} torch threads",
        f"L3 {l3 / 2**20:.0f} MiB" if l3 else None,
        f"{fp['memory_gb']} GB RAM" if fp.get("memory_gb") else None,
        f"torch {fp.get('torch')} ({fp.get('torch_isa')}, {fp.get('blas')})",
        f"OMP_WAIT_POLICY={str(fp.get('omp_wait_policy', 'unset')).split(' ')[0]}",
        f"load {load[0]:.2f}" if load else None,
    ]
    return " · ".join(p for p in parts if p)


def same_kind(a: dict | None, b: dict | None) -> bool:
    """Would the two machines time alike? Same CPU model, same matmul ISA, same torch threads."""
    if not a or not b:
        return False
    keys = ("cpu", "isa", "torch_threads")
    return all(a.get(k) == b.get(k) for k in keys)


def provenance(stored: dict | None, current: dict | None = None) -> str:
    """'Measured on …; this machine: … (the same kind | a different kind …)' for a stored number."""
    current = machine() if current is None else current
    here = f"{current.get('cpu')}, {isa_summary(current)}, {current.get('torch_threads')} threads"
    if not stored or not stored.get("cpu"):
        return f"Measured on a machine that was not recorded; this machine: {here}. Compare ratios, not absolute times."
    there = f"{stored.get('cpu')}, {isa_summary(stored)}, {stored.get('torch_threads')} threads"
    verdict = (
        "the same kind, so the stored numbers should be close to what you would measure"
        if same_kind(stored, current)
        else "a different kind: expect other absolute numbers, and check any speed claim live"
    )
    return f"Measured on {there}; this machine: {here} — {verdict}."
