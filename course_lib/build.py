"""The one entry point for every expensive, deterministic build of the course.

A chapter's expensive results (training sweeps, calibration grids, fine-tuned readers) are
computed once and stored in ``course_lib/zoo_data/``; notebooks only load them. Each
build is an experiments module, ``course_lib/experiments/<name>.py``, that defines
``OUTPUTS`` (the zoo_data files it writes) and ``main(argv)`` (its command line), plus
the pretrained patients of :mod:`course_lib.zoo`. This module finds them (nothing to
register by hand) and runs one::

    python -m course_lib.build --list            # every build: name, outputs, what it is
    python -m course_lib.build moe --jobs 3      # run one; the rest of the line is its own arguments
    python -m course_lib.build prune --help      # a build's own options

Builds take minutes to hours; each records the command and the machine in what it writes.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

from course_lib import experiments, zoo

PROG = "python -m course_lib.build"


@dataclass(frozen=True)
class Build:
    """One build: its name, the zoo_data files it writes, one line on what it is, and its main."""

    name: str
    outputs: tuple[str, ...]
    summary: str
    main: Callable[[list[str] | None], int]


def _summary(module: ModuleType) -> str:
    doc = (module.__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""


def _zoo_build() -> Build:
    outputs = tuple(p.name for n in zoo.names() for p in (zoo.checkpoint_path(n), zoo.card_path(n)))
    return Build("zoo", outputs, _summary(zoo), zoo.main)


def _encoder_build() -> Build:
    from course_lib import encoder

    outputs = tuple(encoder.cache_path(f).name for f in encoder.CACHED_FIELDS)
    return Build("encoder", outputs, _summary(encoder), lambda argv=None: encoder.main(["build", *(argv or [])]))


def _experiment_names() -> list[str]:
    """The experiments modules' names, sorted (not imported)."""
    return sorted(m.name for m in pkgutil.iter_modules(experiments.__path__) if not m.name.startswith("_"))


def _experiment_build(name: str) -> Build | None:
    """The build of ``course_lib/experiments/<name>.py``, or None when it defines no ``OUTPUTS`` and ``main``."""
    module = importlib.import_module(f"{experiments.__name__}.{name}")
    outputs, main = getattr(module, "OUTPUTS", None), getattr(module, "main", None)
    if outputs is None or not callable(main):
        return None
    if isinstance(outputs, str) or not all(isinstance(o, str) for o in outputs):
        raise TypeError(f"{module.__name__}.OUTPUTS must be a tuple of file names, got {outputs!r}")
    return Build(name, tuple(outputs), _summary(module), main)


def find(name: str) -> Build | None:
    """One build by name (importing only its module), or None when there is no such build."""
    if name == "zoo":
        return _zoo_build()
    if name == "encoder":
        return _encoder_build()
    return _experiment_build(name) if name in _experiment_names() else None


def builds() -> dict[str, Build]:
    """Every build, by name: the experiments modules that define ``OUTPUTS`` and ``main``, then ``zoo``.

    Every experiments module is imported (one that fails to import raises: a build that
    cannot be imported cannot be run either).
    """
    found = {b.name: b for b in map(_experiment_build, _experiment_names()) if b is not None}
    found["encoder"] = _encoder_build()
    found["zoo"] = _zoo_build()
    return found


def list_lines(found: dict[str, Build] | None = None) -> list[str]:
    """One line per build: name, outputs (comma-separated), summary — in aligned columns."""
    found = builds() if found is None else found
    rows = [(b.name, ", ".join(b.outputs), b.summary) for b in found.values()]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    return [f"{name:<{w0}}  {outputs:<{w1}}  {summary}".rstrip() for name, outputs, summary in rows]


def _usage() -> str:
    return (
        f"usage: {PROG} --list\n"
        f"       {PROG} <name> [arguments of that build ...]\n"
        f"       {PROG} <name> --help\n\n"
        f"{__doc__.splitlines()[0]}"
    )


def main(argv: list[str] | None = None) -> int:
    """``--list``, ``-h``/``--help``, or ``<name> [args ...]`` (returns that build's exit code; 2 on misuse)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        print(_usage(), file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help"):
        print(_usage())
        print("\nbuilds:")
        for line in list_lines():
            print(f"  {line}")
        return 0
    if argv[0] == "--list":
        if len(argv) > 1:
            print(f"{PROG} --list takes no arguments, got {argv[1:]}", file=sys.stderr)
            return 2
        for line in list_lines():
            print(line)
        return 0
    name, rest = argv[0], argv[1:]
    chosen = find(name)  # imports only this build's module: another build's state cannot block it
    if chosen is None:
        names = ", ".join(builds())
        print(f"{PROG}: unknown build {name!r}; choose one of: {names} (see {PROG} --list)", file=sys.stderr)
        return 2
    return chosen.main(rest)


if __name__ == "__main__":
    sys.exit(main())
