"""Chapter 03's runs: the attention time/memory sweep and the full-vs-window quality experiment.

The algorithm is :mod:`course_lib.attention`; this module *runs* it. :func:`measure_scaling`
times dense SDPA against the blocked sliding-window kernel as the sequence grows (the
notebook runs it live). :func:`build` trains the zoo's tiny recipe with sliding windows
(:data:`QUALITY_VARIANTS`) and evaluates the zoo's full-attention patients with a window
switched on (:data:`SWITCH_PATIENTS`); :func:`load_quality` reads the stored result::

    python -m course_lib.build attention      # ~20 min on an idle 2-core CPU -> zoo_data/attention_quality.json
    python -m course_lib.build attention --only "window 16"   # one item (items are cached; run several at once)
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import hashlib
import json
import sys
import time
from dataclasses import asdict

import torch

from course_lib import data, fingerprint, zoo
from course_lib.attention import (
    SparsePattern,
    block_sparse_attention,
    dense_attention,
    loss_by_position,
    sdpa_attention,
    sparse_config,
)
from course_lib.measure import interleaved, peak_memory
from course_lib.model import TinyLM
from course_lib.paths import ZOO_DIR, atomic_write_bytes, cache_dir, load_json, record_artefact
from course_lib.train import evaluate, train

#: what ``python -m course_lib.build attention`` writes into course_lib/zoo_data/
OUTPUTS = ("attention_quality.json",)
QUALITY_FILE = OUTPUTS[0]

# --------------------------------------------------------------------------- measuring


def scaling_variants(q, k, v, pattern: SparsePattern, *, with_reference: bool = False) -> dict:
    """The functions the time/memory sweep compares at one length (each returns the output)."""
    t = q.shape[2]
    variants = {
        "SDPA causal (dense)": lambda: sdpa_attention(q, k, v, is_causal=True),
        "SDPA + mask (dense)": lambda: sdpa_attention(q, k, v, pattern.mask(t)),
        "blocked sparse (ours)": lambda: block_sparse_attention(q, k, v, pattern),
    }
    if with_reference:
        variants["explicit softmax (dense)"] = lambda: dense_attention(q, k, v, pattern.mask(t))
    return variants


def exact_rss_peaks() -> bool:
    """Make the process's peak RSS see every large allocation (Linux/glibc; else a no-op).

    glibc serves frees of up to 32 MB back from its heap and keeps them resident, so a
    second call that needs 20 MB shows no RSS growth and :func:`course_lib.measure.peak_memory`
    reads 0. Fixing the mmap threshold at 64 kB (``mallopt(M_MMAP_THRESHOLD)``) makes each
    large tensor its own mapping, returned on free: every call then pays, and shows, its
    own memory. Process-wide and permanent; it costs page faults, not correctness.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-3, 64 * 1024))  # M_MMAP_THRESHOLD = -3
    except (OSError, AttributeError):
        return False


@torch.no_grad()
def measure_scaling(
    lengths=(1024, 2048, 4096, 8192),
    *,
    window: int = 256,
    block_size: int = 64,
    n_heads: int = 2,
    head_dim: int = 64,
    with_reference: bool = False,
    reference_max: int = 4096,
    repeats: int = 3,
    single_above: int = 4096,
    seed: int = 0,
) -> list[dict]:
    """Time and peak memory of dense SDPA vs sliding-window attention, batch 1, per length.

    Times are medians of ``repeats`` interleaved calls after a warm-up round (above
    ``single_above`` tokens, where a call takes seconds, two timed rounds and no time
    filling — never one un-warmed call). The explicit-softmax reference
    (``with_reference``) runs up to ``reference_max`` tokens: its n² scores need GBs beyond.
    Peak memory is measured with :func:`course_lib.measure.peak_memory` around one more
    call of each variant — it counts everything the call allocates, the mask included (see
    :func:`exact_rss_peaks`).
    """
    exact_rss_peaks()
    pattern = SparsePattern("sliding_window", window=window, block_size=block_size)
    rows = []
    gen = torch.Generator().manual_seed(seed)
    for t in lengths:
        q, k, v = (torch.randn(1, n_heads, t, head_dim, generator=gen) for _ in range(3))
        variants = scaling_variants(q, k, v, pattern, with_reference=with_reference and t <= reference_max)
        pattern.plan(t)  # the block plan is built once per length, like flex's create_block_mask
        big = t > single_above
        timings = interleaved(variants, warmup=1, repeats=2 if big else repeats, min_time=0 if big else 0.2)
        for name, fn in variants.items():
            peak = peak_memory(fn)
            rows.append(
                {
                    "seq_len": t,
                    "variant": name,
                    "ms": timings[name].median * 1e3,
                    "peak_mb": None if peak is None else peak / 1e6,
                }
            )
    return rows


# --------------------------------------------------------------------------- build: quality experiment

#: Variants of the "tiny" zoo recipe, same steps, batches and seed (name -> attention options).
#: "full" is the zoo's own tiny patient (trained by ``python -m course_lib.zoo build tiny``).
QUALITY_VARIANTS = {
    "full": None,
    "window 64": dict(pattern="sliding_window", window=64, block_size=16),
    "window 16": dict(pattern="sliding_window", window=16, block_size=16),
}


def _recipe_key(mcfg, tcfg, tok_sha: str, opts) -> str:
    blob = json.dumps([mcfg.to_dict(), asdict(tcfg), tok_sha, opts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


#: Zoo patients whose full-attention weights are evaluated with a window switched on (no retraining).
SWITCH_PATIENTS = ("tiny", "small")
SWITCH_WINDOWS = (16, 64)


def _switched_on(patient, val_ids, seq_len: int) -> dict:
    """Loss by position of a full-attention patient, as is and with each window switched on."""
    out = {}
    for w in (None, *SWITCH_WINDOWS):
        model = patient.model
        if w is not None:
            model = TinyLM(sparse_config(patient.model.config, window=w, block_size=16)).eval()
            model.load_state_dict(patient.model.state_dict())
        pos = loss_by_position(model, val_ids, seq_len=seq_len, batch_size=16, max_batches=None)
        out["full" if w is None else f"window {w}"] = {
            "val_loss": round(pos.mean().item(), 4),
            "loss_by_position": [round(x, 4) for x in pos.tolist()],
        }
    return out


def build(names: list[str] | None = None, *, progress: bool = True) -> dict | None:
    """Train the tiny recipe with each windowed variant; evaluate them and the zoo's patients.

    Items: the :data:`QUALITY_VARIANTS` (trained with the window from the start; "full" is
    the zoo's tiny patient) and ``switched on: <patient>`` (the zoo's full-attention
    patients with windows of :data:`SWITCH_WINDOWS` switched on, no retraining). Each item
    is cached (``course_lib`` cache, keyed by recipe and checkpoint), so items can be built
    by separate processes (``python -m course_lib.build attention --only "window 16"``). Once all exist, writes
    ``zoo_data/attention_quality.json``: validation loss on the whole validation split, the
    loss at each position of the 256-token window, and the training curves.
    """
    items = list(QUALITY_VARIANTS) + [f"switched on: {p}" for p in SWITCH_PATIENTS]
    names = items if not names else names
    unknown = set(names) - set(items)
    if unknown:
        raise ValueError(f"unknown items {sorted(unknown)}; choose from {items}")
    mcfg, tcfg = zoo.RECIPES["tiny"]
    tok = data.get_tokenizer(mcfg.vocab_size)
    tok_sha = data.tokenizer_sha256(tok)
    train_ids, val_ids = data.encode_split("train", tok), data.encode_split("val", tok)
    full = zoo.load("tiny")
    if full.meta["model_config"] != mcfg.to_dict() or full.meta["train_config"] != asdict(tcfg) | {
        "betas": list(tcfg.betas)
    }:
        raise ValueError(
            "the zoo's tiny patient was built with another recipe: run  python -m course_lib.zoo build tiny"
        )
    cache = cache_dir("attention_quality")
    shas = {p: zoo.card(p)["sha256"] for p in SWITCH_PATIENTS}

    def path_of(item: str):
        if item.startswith("switched on: "):
            patient = item.removeprefix("switched on: ")
            return cache / f"switched-{patient}-{shas[patient][:12]}-{tok_sha[:8]}.json"
        return cache / f"{_recipe_key(mcfg, tcfg, tok_sha, QUALITY_VARIANTS[item])}-{full.meta['sha256'][:8]}.json"

    for name in names:
        if path_of(name).is_file():
            continue
        t0 = time.perf_counter()
        if name.startswith("switched on: "):
            result = _switched_on(zoo.load(name.removeprefix("switched on: ")), val_ids, tcfg.seq_len)
            atomic_write_bytes(path_of(name), json.dumps(result).encode())
            if progress:
                print(f"{name}: { ({k: v['val_loss'] for k, v in result.items()}) }", flush=True)
            continue
        opts = QUALITY_VARIANTS[name]
        if opts is None:
            model, curve = full.model, full.meta["curve"]
        else:
            torch.manual_seed(tcfg.seed)  # the same initial weights and batches as the zoo patient
            model = TinyLM(sparse_config(mcfg, **opts))
            hist = train(model, train_ids, val_ids, tcfg, progress=progress, desc=f"attention:{name}")
            curve = {"step": hist.val_step, "val_loss": [round(x, 4) for x in hist.val_loss]}
        val = evaluate(model, val_ids, seq_len=tcfg.seq_len, batch_size=16, max_batches=None)
        pos = loss_by_position(model, val_ids, seq_len=tcfg.seq_len, batch_size=16, max_batches=None)
        result = {
            "attention_options": model.config.attention_options,
            "val_loss": round(val, 4),
            "loss_by_position": [round(x, 4) for x in pos.tolist()],
            "curve": curve,
            "seconds": round(time.perf_counter() - t0, 1),
            "threads": torch.get_num_threads(),
            "machine": fingerprint.machine(),  # which CPU made the seconds (course_lib.fingerprint)
            "mean_context": round(
                model.blocks[0].attn.mean_context(tcfg.seq_len) if opts else (tcfg.seq_len + 1) / 2, 2
            ),
        }
        atomic_write_bytes(path_of(name), json.dumps(result).encode())
        if progress:
            print(f"{name}: val loss {val:.4f}", flush=True)
    missing = [item for item in items if not path_of(item).is_file()]
    if missing:
        print(f"not written yet: {missing} not built", flush=True)
        return None
    out = {
        "model_config": mcfg.to_dict(),
        "train_config": asdict(tcfg),
        "zoo_sha256": shas,
        "tokenizer_sha256": tok_sha,
        "variants": {name: json.loads(path_of(name).read_text()) for name in QUALITY_VARIANTS},
        "switched_on": {p: json.loads(path_of(f"switched on: {p}").read_text()) for p in SWITCH_PATIENTS},
        "torch": torch.__version__,
        "command": "python -m course_lib.build attention",
    }
    atomic_write_bytes(ZOO_DIR / QUALITY_FILE, (json.dumps(out, indent=1) + "\n").encode())
    record_artefact(ZOO_DIR / QUALITY_FILE, rebuild="python -m course_lib.build attention")
    return out


def load_quality() -> dict:
    """The precomputed full-vs-window training results (``python -m course_lib.build attention``)."""
    return load_json(QUALITY_FILE)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.build attention", description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--only", action="append", help="build only this item (repeatable); the JSON is written once all exist"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t = time.perf_counter()
    if build(args.only) is not None:
        print(f"wrote {QUALITY_FILE} in {time.perf_counter() - t:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
