"""Where the course keeps files: the committed zoo inside the package, and a user cache.

The cache holds things that are cheap to rebuild and machine-specific (encoded token
arrays, tokenizers of non-default sizes, compiled artefacts). It lives in
``$COURSE_LIB_CACHE`` when set, else ``~/.cache/course_lib``. Nothing in it is required to
be present: every entry is rebuilt on a miss.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from course_lib.checks import check_tensor, check_type

PACKAGE_DIR = Path(__file__).resolve().parent
#: Pretrained patients, their tokenizer and precomputed grids ship inside the package.
ZOO_DIR = PACKAGE_DIR / "zoo_data"
#: sha256, size and rebuild command of every file in ZOO_DIR (checked on load by :func:`zoo_file`).
MANIFEST_PATH = ZOO_DIR / "MANIFEST.json"


def cache_dir(*parts: str) -> Path:
    """Return (and create) a folder under the course cache."""
    root = Path(os.environ.get("COURSE_LIB_CACHE", Path.home() / ".cache" / "course_lib"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _remove_orphans(path: Path) -> None:
    """Delete ``.<name>.tmp-<pid>`` files next to ``path`` left by writers that no longer run."""
    for tmp in path.parent.glob(f".{path.name}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename.

    A crash or an exception mid-write leaves the old file (or none), never half a file.
    A writer killed mid-write (SIGKILL runs no cleanup) leaves its temporary file behind;
    the next write to the same path removes temporaries whose process is gone.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphans(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


#: torch dtype -> safetensors dtype tag (the format's names)
_SAFETENSORS_DTYPES = {
    "torch.float64": "F64", "torch.float32": "F32", "torch.float16": "F16", "torch.bfloat16": "BF16",
    "torch.int64": "I64", "torch.int32": "I32", "torch.int16": "I16", "torch.int8": "I8",
    "torch.uint8": "U8", "torch.bool": "BOOL",
}  # fmt: skip


def safetensors_bytes(tensors: dict, metadata: dict[str, str] | None = None) -> bytes:
    """Serialise ``tensors`` as a safetensors file whose bytes depend only on the content.

    ``safetensors.torch.save`` keeps the metadata in a hash map, so saving the same thing
    twice gives different bytes (and checksums) from one process to the next. This writes
    the format's own layout with sorted keys: an 8-byte little-endian header length, the
    JSON header padded with spaces to a multiple of 8, then each tensor's bytes in name
    order. ``safetensors.torch.load`` / ``safe_open`` read it as usual.
    """
    import torch

    check_type("tensors", tensors, dict, what="a dict of name -> torch.Tensor")
    for name, t in tensors.items():
        check_tensor(f"tensors[{name!r}]", t)
    metadata = check_type("metadata", metadata or {}, dict)
    for k, v in metadata.items():  # the safetensors format stores strings only
        check_type("metadata keys", k, str)
        check_type(f"metadata[{k!r}]", v, str)
    header: dict = {"__metadata__": dict(sorted(metadata.items()))} if metadata else {}
    blobs, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        tag = _SAFETENSORS_DTYPES.get(str(t.dtype))
        if tag is None:
            raise TypeError(f"tensor {name!r} has dtype {t.dtype}, not one of {sorted(_SAFETENSORS_DTYPES)}")
        data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": tag, "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + b"".join(blobs)


# --------------------------------------------------------------------------- the zoo manifest


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            h.update(block)
    return h.hexdigest()


def manifest() -> dict[str, dict]:
    """``{file name: {"sha256", "bytes", "rebuild"}}`` for every shipped artefact in ZOO_DIR."""
    try:
        return json.loads(MANIFEST_PATH.read_text())["files"]
    except FileNotFoundError:
        raise FileNotFoundError(f"{MANIFEST_PATH} is missing: the package is incomplete (reinstall it)") from None
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{MANIFEST_PATH} is corrupt ({e}): reinstall the package") from None


_VERIFIED: dict[tuple, str] = {}  # (path, mtime_ns, size) -> sha256 already checked in this process


def zoo_file(name: str) -> Path:
    """The path of shipped artefact ``name`` after checking its size and sha256 against the manifest.

    A missing, truncated or altered file raises ``ValueError`` naming the file and the
    command that rebuilds it, instead of loading different weights or numbers silently.
    A file is hashed once per process (again if it changes on disk).
    """
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise ValueError(f"name must be a file name in {ZOO_DIR}, got {name!r}")
    entry = manifest().get(name)
    if entry is None:
        raise ValueError(f"{name!r} is not a shipped artefact; the manifest lists {sorted(manifest())}")
    path = ZOO_DIR / name
    rebuild = f"rebuild it with `{entry['rebuild']}` or reinstall the package"
    if not path.is_file():
        raise ValueError(f"{path} is missing: {rebuild}")
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size)
    if st.st_size != entry["bytes"]:
        raise ValueError(f"{path} has {st.st_size:,} bytes, expected {entry['bytes']:,}: it is damaged; {rebuild}")
    digest = _VERIFIED.get(key) or sha256_file(path)
    if digest != entry["sha256"]:
        raise ValueError(f"{path} does not match its sha256 in {MANIFEST_PATH.name}: it is damaged; {rebuild}")
    _VERIFIED[key] = digest
    return path


def record_artefact(path: Path, *, rebuild: str) -> None:
    """Enter ``path`` (a file just written into ZOO_DIR) in the manifest with its sha256 and rebuild command."""
    path = Path(path)
    if path.parent.resolve() != ZOO_DIR.resolve() or not path.is_file():
        raise ValueError(f"path must be an existing file in {ZOO_DIR}, got {path}")
    if not isinstance(rebuild, str) or not rebuild.startswith("python "):
        raise ValueError(f"rebuild must be the command that rebuilds the file ('python -m ...'), got {rebuild!r}")
    files = manifest() if MANIFEST_PATH.is_file() else {}
    files[path.name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size, "rebuild": rebuild}
    text = json.dumps({"files": dict(sorted(files.items()))}, indent=1) + "\n"
    atomic_write_bytes(MANIFEST_PATH, text.encode())
