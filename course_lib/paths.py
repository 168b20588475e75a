"""Where the course keeps files: the committed zoo inside the package, and a user cache.

The cache holds things that are cheap to rebuild and machine-specific (encoded token
arrays, tokenizers of non-default sizes, compiled artefacts). It lives in
``$COURSE_LIB_CACHE`` when set, else ``~/.cache/course_lib``. Nothing in it is required to
be present: every entry is rebuilt on a miss.
"""

from __future__ import annotations

import json
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

    if not isinstance(tensors, dict) or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
        raise TypeError("tensors must be a dict of name -> torch.Tensor")
    metadata = metadata or {}
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise TypeError("metadata must map str -> str (the safetensors format stores strings only)")
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
