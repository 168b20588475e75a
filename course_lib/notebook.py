"""The first cell of every notebook: seeds, versions, device, the course look.

``device = start(seed=0)`` makes a run repeatable (Python, NumPy and torch seeded), prints
what it runs on (so a reader comparing numbers knows whose machine made them), and picks
the GPU when there is one; the course never needs one.
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
    """Seed, style, report the environment; returns the torch device to use."""
    from course_lib.viz import use_style

    set_seed(seed)
    use_style()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    device = pick_device(prefer)
    if not quiet:
        env = environment()
        print(" | ".join(f"{k} {v}" for k, v in env.items()) + f" | device {device} | seed {seed}")
    return device
