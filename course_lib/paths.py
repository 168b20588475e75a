"""Where the course keeps files: the committed zoo inside the package, and a user cache.

The cache holds things that are cheap to rebuild and machine-specific (encoded token
arrays, tokenizers of non-default sizes, compiled artefacts). It lives in
``$COURSE_LIB_CACHE`` when set, else ``~/.cache/course_lib``. Nothing in it is required to
be present: every entry is rebuilt on a miss.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
#: Pretrained patients, their tokenizer and precomputed grids ship inside the package.
ZOO_DIR = PACKAGE_DIR / "zoo_data"


def cache_dir(*parts: str) -> Path:
    """Return (and create) a folder under the course cache."""
    root = Path(os.environ.get("COURSE_LIB_CACHE", Path.home() / ".cache" / "course_lib"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename.

    A crash or an exception mid-write leaves the old file (or none), never half a file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
