"""The first cell of every notebook: seeds, threads, the machine, device, the course look.

``device = start(seed=0)`` makes a run repeatable (Python, NumPy and torch seeded), sets
the thread count deliberately (:func:`choose_threads`), prints the machine's fingerprint
in one line (so a reader comparing numbers knows whose machine made them, and whether it
was busy), and picks the GPU when there is one; the course never needs one.
"""

from __future__ import annotations

import os
import platform
import random


def set_seed(seed: int = 0) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    import numpy as np
    import torch

    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (readers use the global NumPy RNG)
    torch.manual_seed(seed)


def pick_device(prefer: str | None = None):
    """``cuda`` when available (or ``prefer`` when given), else ``cpu``."""
    import torch

    if prefer is not None:
        if prefer not in ("cpu", "cuda"):
            raise ValueError(f"prefer must be 'cpu' or 'cuda', got {prefer!r}")
        if prefer == "cuda" and not torch.cuda.is_available():
            raise ValueError("prefer='cuda' but no CUDA device is available")
        return torch.device(prefer)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def choose_threads() -> int:
    """Threads for torch: ``COURSE_THREADS`` if set, else every CPU this process may use.

    The CPUs this process may run on (its affinity mask, which containers and ``taskset``
    narrow) rather than the machine's count: more threads than CPUs only queue. A busy
    laptop still gets all of them; with ``OMP_WAIT_POLICY=PASSIVE`` (set by importing
    course_lib) waiting threads sleep instead of spinning, so sharing the cores costs
    little. Results are deterministic for a given thread count.
    """
    value = os.environ.get("COURSE_THREADS")
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"COURSE_THREADS must be an int >= 1, got {value!r}")
        return int(value)
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def environment() -> dict:
    """What this run executes on: versions, threads, device."""
    import torch

    import course_lib

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "course_lib": course_lib.__version__,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
    }


def start(seed: int = 0, *, quiet: bool = False, prefer: str | None = None):
    """Seed, threads, style, report the machine; returns the torch device to use."""
    import warnings

    import torch

    import course_lib
    from course_lib.fingerprint import machine, machine_line
    from course_lib.viz import use_style

    if course_lib.TORCH_IMPORTED_FIRST and os.environ.get("OMP_WAIT_POLICY") == "PASSIVE":
        warnings.warn(
            "torch was imported before course_lib, so OMP_WAIT_POLICY=PASSIVE may not be in force: "
            "OpenMP threads may spin and timings suffer when the machine is busy. Restart the kernel "
            "and run the setup cell first (or export OMP_WAIT_POLICY=PASSIVE).",
            stacklevel=2,
        )
    set_seed(seed)
    torch.set_num_threads(choose_threads())
    use_style()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    device = pick_device(prefer)
    if not quiet:
        print(f"{machine_line(machine())} · device {device} · seed {seed}")
    return device
