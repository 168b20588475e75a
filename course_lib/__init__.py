"""course_lib — the shared library of *Beyond Scale: Efficient AI from Scratch*.

One module per chapter topic (``course_lib.moe`` for chapter 02, ``course_lib.quant`` for
chapter 05, ...) on a small foundation:

* :mod:`course_lib.data`    — the offline Wikipedia-summaries corpus, splits, BPE tokenizer, batches
* :mod:`course_lib.model`   — ``TinyLM``, the Llama-style "patient" every chapter operates on
* :mod:`course_lib.train`   — a deterministic training loop and safetensors checkpoints
* :mod:`course_lib.zoo`     — pretrained patients, built by ``python -m course_lib.zoo build``
* :mod:`course_lib.measure` — timing, memory and the efficiency report card
* :mod:`course_lib.viz`     — one look for every figure, widget wrappers, ``show_source``

Submodules are imported lazily, so ``import course_lib`` is instant and does not import
torch; ``course_lib.model`` (or ``from course_lib import model``) pays torch's import cost.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys

__version__ = "0.1.0"

# torch's OpenMP threads spin (burn a core) while they wait for work. With another busy
# process on a 2-core machine that made a 2-thread matmul loop 14x slower; PASSIVE threads
# sleep instead, at no measurable cost on an idle machine. libgomp reads the variable when
# torch is first imported, so it is set here, before any course module imports torch. A
# value the user set wins. ``notebook.start`` warns when torch was imported first.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
TORCH_IMPORTED_FIRST = "torch" in sys.modules

# The submodules are whatever modules the package holds (not a list to keep in step).
_SUBMODULES = {m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")}


def __getattr__(name: str):
    if name in _SUBMODULES:
        module = importlib.import_module(f"{__name__}.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'course_lib' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_SUBMODULES))
