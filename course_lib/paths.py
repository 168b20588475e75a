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
    if MANIFEST_PATH.parent.is_dir():
        _remove_orphans(MANIFEST_PATH)  # temporaries of a killed record_artefact
    try:
        return json.loads(MANIFEST_PATH.read_text())["files"]
    except FileNotFoundError:
        raise FileNotFoundError(f"{MANIFEST_PATH} is missing: the package is incomplete (reinstall it)") from None
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{MANIFEST_PATH} is corrupt ({e}): reinstall the package") from None


_VERIFIED: dict[tuple, str] = {}  # (path, mtime_ns, size) -> sha256 already checked in this process


def stored_file(name: str, path=None) -> Path:
    """Where to read a build's output: ``path`` when given (a copy the caller built, e.g. with
    ``--out-dir``; it must exist), else the shipped artefact ``name``, checked by :func:`zoo_file`."""
    if path is None:
        return zoo_file(name)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path {path} does not exist (leave path=None for the shipped {name})")
    return path


def load_json(name: str, path=None):
    """The JSON a build stored as ``name`` (or at ``path``): :func:`stored_file`, then parsed."""
    return json.loads(stored_file(name, path).read_text())


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
    if digest != entry["sha256"]:  # (also when a build was killed before it updated the manifest)
        raise ValueError(
            f"{path} does not match its sha256 in {MANIFEST_PATH.name}: it is damaged "
            f"(or a build was interrupted before it updated the manifest); {rebuild}"
        )
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


def verified_sha256(path: Path) -> str:
    """Hex sha256 of ``path``, hashed once per process (again only if the file changes on disk)."""
    st = Path(path).stat()
    key = (str(path), st.st_mtime_ns, st.st_size)
    digest = _VERIFIED.get(key)
    if digest is None:
        digest = _VERIFIED[key] = sha256_file(path)
    return digest


# --------------------------------------------------------------------------- a file and its card, as one unit
#
# A checkpoint and its JSON card (which holds the checkpoint's sha256) must change together.
# Two renames cannot be one atomic step, so the writer makes the card the commit point:
#
#   1. the data is written in full to ``.<name>.pending-<pid>`` (invisible to readers);
#   2. the card, holding the data's sha256, replaces the old card atomically  <- commit;
#   3. the pending file is renamed onto the data path.
#
# Killed before 2: the old pair is untouched, and the dead writer's pending file is deleted
# by the next reader or writer. Killed between 2 and 3: the card names the pending file's
# sha256, so the next reader finishes step 3 (rolls forward) before it checks the pair.


def _pending_files(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f".{path.name}.pending-*"))


def _settle_pair(path: Path, card_sha: str | None) -> None:
    """Finish or discard what writers that no longer run left behind for ``path`` (see above)."""
    _remove_orphans(path)
    for pending in _pending_files(path):
        pid = pending.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid() or _pid_alive(int(pid)):
            continue  # a live writer is still working on it
        current = verified_sha256(path) if path.is_file() else None
        if card_sha is not None and current != card_sha and sha256_file(pending) == card_sha:
            os.replace(pending, path)  # the card was committed; finish the rename
        else:
            pending.unlink(missing_ok=True)


def _fsynced_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_with_card(path: Path, data: bytes, card_path: Path, card: dict, *, rebuild: str | None = None) -> dict:
    """Write ``data`` to ``path`` and ``card`` (plus ``"sha256"`` of ``data``) to ``card_path`` as one unit.

    A reader (:func:`read_with_card`) sees the old pair or the new pair, never a checkpoint
    with a card that refuses it, even if this process is killed at any point. With
    ``rebuild`` (files in ZOO_DIR), both files are then entered in the manifest.
    Returns the card as written.
    """
    path, card_path = Path(path), Path(card_path)
    check_type("data", data, bytes)
    check_type("card", card, dict)
    if path.parent.resolve() != card_path.parent.resolve() or path == card_path:
        raise ValueError(f"path and card_path must be two files in one folder, got {path} and {card_path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    _settle_pair(path, _card_sha_or_none(card_path))
    card = {**card, "sha256": hashlib.sha256(data).hexdigest()}
    text = (json.dumps(card, indent=1) + "\n").encode()
    pending = path.with_name(f".{path.name}.pending-{os.getpid()}")
    try:
        _fsynced_write(pending, data)  # 1. the new data, complete, under a name no reader opens
        atomic_write_bytes(card_path, text)  # 2. commit: the card now names the new data
        os.replace(pending, path)  # 3. the data takes its place
    finally:
        if pending.exists():  # an exception before the commit: the old pair stays
            pending.unlink()
    if rebuild is not None:
        record_artefact(path, rebuild=rebuild)
        record_artefact(card_path, rebuild=rebuild)
    return card


def _card_sha_or_none(card_path: Path) -> str | None:
    try:
        return read_card(card_path)["sha256"]
    except (FileNotFoundError, ValueError):
        return None


def read_card(card_path: Path, *, rebuild: str = "rebuild it") -> dict:
    """The JSON card at ``card_path``; a truncated, non-JSON or sha-less card is a ``ValueError`` naming it."""
    card_path = Path(card_path)
    if not card_path.is_file():
        raise FileNotFoundError(f"no card at {card_path}; {rebuild}")
    try:
        card = json.loads(card_path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{card_path} is not valid JSON (truncated or damaged: {e}); {rebuild}") from None
    sha = card.get("sha256") if isinstance(card, dict) else None
    if not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
        raise ValueError(f"{card_path} has no valid 'sha256' of its file (damaged or not a card); {rebuild}")
    return card


def read_with_card(path: Path, card_path: Path, *, rebuild: str = "rebuild it", verify: bool = True) -> dict:
    """The card of ``path`` after checking that the file's sha256 is the one the card holds.

    Finishes a write that was killed after its commit point first (:func:`write_with_card`).
    A mismatch is a ``ValueError`` naming both files and ``rebuild`` (the command to run).
    """
    path, card_path = Path(path), Path(card_path)
    card = read_card(card_path, rebuild=rebuild)
    _settle_pair(path, card["sha256"])
    _remove_orphans(card_path)
    if not path.is_file():
        raise FileNotFoundError(f"no file at {path} (its card {card_path.name} exists); {rebuild}")
    if verify and verified_sha256(path) != card["sha256"]:
        raise ValueError(
            f"{path} does not match the sha256 in its card {card_path}: one of the two is damaged "
            f"or from another build; {rebuild}"
        )
    return card


def zoo_pair(path: Path, card_path: Path, *, verify: bool = True) -> tuple[Path, dict]:
    """(path, card) of a file and its card, checked against each other and, for files in
    ZOO_DIR, against the manifest (:func:`zoo_file`); a write killed after its commit is
    finished first. ``verify=False`` only reads the card."""
    path, card_path = Path(path), Path(card_path)
    shipped = [p for p in (path, card_path) if p.parent.resolve() == ZOO_DIR.resolve()]
    entries = manifest() if shipped else {}
    entry = entries.get(card_path.name) or entries.get(path.name) or {}
    rebuild = f"rebuild with `{entry['rebuild']}`" if "rebuild" in entry else "rebuild it"
    if not verify:
        return path, read_card(card_path, rebuild=rebuild)
    read_with_card(path, card_path, rebuild=rebuild, verify=False)  # finishes an interrupted write
    for p in shipped:
        zoo_file(p.name)
    return path, read_with_card(path, card_path, rebuild=rebuild)
