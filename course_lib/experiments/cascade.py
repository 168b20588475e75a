"""Chapter 10's stored run: the cross-fitted logits of the two MiniLM specialists.

The algorithm is :mod:`course_lib.cascade`; this module *runs* it where a run is too slow
for the notebook. :func:`build` fits the linear heads of the two MiniLM models
(``mini32`` reads the first :data:`course_lib.cascade.MINI_TOKENS` tokens of each extract,
``minilm`` the whole extract) with :func:`course_lib.cascade.head_predictions` and stores
their (N, 12) logits; :func:`precomputed_logits` reads them back. The 10 head fits and the
~10 k MiniLM passes over the first 32 tokens take minutes on 2 cores; naive Bayes, the
full model's head on the cached embeddings, calibration, routing and every sweep take
seconds and are recomputed by the notebook.

Command (deterministic)::

    python -m course_lib.build cascade    # writes course_lib/zoo_data/cascade_logits.safetensors
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import time

import numpy as np
import torch
from safetensors import safe_open

from course_lib import data, encoder, fingerprint
from course_lib.cascade import HEAD_WEIGHT_DECAY, MINI_TOKENS, head_predictions, topic_task
from course_lib.checks import check_choice
from course_lib.paths import ZOO_DIR, atomic_write_bytes, cache_dir, record_artefact, safetensors_bytes, zoo_file

#: what ``python -m course_lib.build cascade`` writes into course_lib/zoo_data/
OUTPUTS = ("cascade_logits.safetensors",)
COMMAND = "python -m course_lib.build cascade"

#: the precomputed logits: name -> how many tokens the model reads
PRECOMPUTED = {"mini32": MINI_TOKENS, "minilm": 256}


def logits_path():
    return ZOO_DIR / OUTPUTS[0]


def mini32_embeddings(*, batch_size: int = 64) -> torch.Tensor:
    """(N, 384) MiniLM embeddings of the first :data:`MINI_TOKENS` tokens of every extract.

    About 10 k forward passes (minutes on 2 cores), so they are cached in the user cache
    (``course_lib.paths.cache_dir``), keyed by the corpus hash; a miss recomputes them.
    """
    path = cache_dir("cascade") / f"mini{MINI_TOKENS}-{data.CORPUS_SHA256[:16]}.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)
    emb = encoder.embed(topic_task().texts, batch_size=batch_size, max_length=MINI_TOKENS)
    buf = io.BytesIO()
    torch.save(emb, buf)
    atomic_write_bytes(path, buf.getvalue())
    return emb


def build() -> dict:
    """Fit the linear heads of the two MiniLM models (:func:`course_lib.cascade.head_predictions`:
    out-of-fold on training rows, a head fit on all training rows for held-out rows) and
    store their (N, 12) logits, row-max subtracted, as float16 (~0.5 MB for both), with the
    machine's fingerprint.

    ``minilm`` reads the cached full-length embeddings (``encoder.corpus_embeddings``);
    ``mini32`` embeds the first 32 tokens (:func:`mini32_embeddings`). The embeddings
    themselves (3.9 MB each as int8) would not fit the chapter's 1 MB budget.
    """
    task = topic_task()
    t0 = time.perf_counter()
    features = {"mini32": mini32_embeddings(), "minilm": encoder.corpus_embeddings("extract")}
    tensors, meta = {}, {}
    for name, x in features.items():
        z = head_predictions(x, task)
        tensors[name] = torch.from_numpy(z - z.max(1, keepdims=True)).to(torch.float16)
        heldout = task.heldout
        meta[f"{name}_heldout_accuracy"] = f"{(z[heldout].argmax(1) == task.labels[heldout]).mean():.4f}"
    meta.update(
        {
            "what": "logits (row max subtracted) of linear heads on all-MiniLM-L6-v2 embeddings of each extract, "
            "truncated to 32 (mini32) or 256 (minilm) tokens; training rows out-of-fold (5 folds, seed 0), "
            "held-out rows from a head fit on all training rows",
            "n": str(len(task.texts)),
            "weight_decay": str(HEAD_WEIGHT_DECAY),
            "corpus_sha256": data.CORPUS_SHA256,
            "seconds": f"{time.perf_counter() - t0:.1f}",
            "command": COMMAND,
            "machine": json.dumps(fingerprint.machine(), sort_keys=True),  # safetensors metadata is str -> str
        }
    )
    blob = safetensors_bytes(tensors, meta)
    atomic_write_bytes(logits_path(), blob)
    record_artefact(logits_path(), rebuild=COMMAND)
    meta["sha256"] = hashlib.sha256(blob).hexdigest()
    meta["bytes"] = str(len(blob))
    return meta


def precomputed_logits(name: str) -> np.ndarray:
    """(N, 12) logits of ``mini32`` or ``minilm`` (row i = ``data.load_articles()[i]``),
    laid out like :func:`course_lib.cascade.head_predictions` returns them."""
    check_choice("name", name, sorted(PRECOMPUTED))
    path = logits_path()
    if not path.is_file():
        raise FileNotFoundError(f"no {path.name}; build it with:  {COMMAND}")
    with safe_open(str(zoo_file(path.name)), framework="pt") as f:
        meta = f.metadata()
        logits = f.get_tensor(name)
    if meta.get("corpus_sha256") != data.CORPUS_SHA256 or int(meta["n"]) != len(data.load_articles()):
        raise ValueError(f"{path} was built for another corpus; rebuild with  {COMMAND}")
    return logits.double().numpy()


def stored_machine() -> dict | None:
    """The fingerprint of the machine that built the stored logits (None for builds before
    fingerprints were recorded), for ``fingerprint.provenance``."""
    path = logits_path()
    if not path.is_file():
        return None
    with safe_open(str(zoo_file(path.name)), framework="pt") as f:
        raw = f.metadata().get("machine")
    return json.loads(raw) if raw else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.build cascade", description=__doc__.split("\n")[0])
    parser.parse_args(argv)
    print(json.dumps(build()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
