"""Loaded by pytest for every test path (unit tests, notebooks under nbval, browser tests).

Installs the network guard in this process and, through ``sitecustomize`` on PYTHONPATH,
in every Python it starts — notebook kernels included — so nothing in the course can
quietly reach the network.
"""

from __future__ import annotations

import os
from pathlib import Path

from course_lib import netguard

_SITE = str(Path(__file__).resolve().parent / "tests" / "netguard_site")

netguard.install()
os.environ["PYTHONPATH"] = os.pathsep.join(
    [_SITE] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != _SITE]
)
# Checkers and quizzes run by tests and nbval record progress in build/, not in the home directory.
os.environ["COURSE_PROGRESS"] = str(Path(__file__).resolve().parent / "build" / "progress.json")
for var, value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(var, value)
