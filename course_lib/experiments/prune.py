"""Chapter 06's runs: the method x sparsity x structure grid, latency, heads, MiniLM, GMP and the lottery.

The algorithm is :mod:`course_lib.prune`; this module *runs* it. :func:`pruned_patient`
prunes a copy of the "small" patient at one grid point; :func:`build` computes the
chapter's expensive results part by part (:data:`PARTS`) and merges them into
``course_lib/zoo_data/prune_grid.json``; :func:`load_grid` reads it back. The MiniLM part
retrieves each test article's extract from its description (:func:`retrieval_pairs`,
:func:`recall_at_k`)::

    python -m course_lib.build prune            # writes course_lib/zoo_data/prune_grid.json
    python -m course_lib.build prune minilm     # rebuild one part (patient, latency, heads, minilm, gmp, lottery)
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from collections.abc import Iterable

import torch
from torch import nn

from course_lib import data, encoder, fingerprint, measure, zoo
from course_lib.checks import check_int
from course_lib.measure import weight_bytes
from course_lib.notebook import set_seed
from course_lib.paths import ZOO_DIR, atomic_write_bytes, record_artefact, zoo_file
from course_lib.prune import (
    STRUCTURED_METHODS,
    UNSTRUCTURED_METHODS,
    activation_norms,
    csr_bytes,
    dense_bytes,
    head_layout,
    head_scores,
    layer_specs,
    lottery_ticket,
    nm_bytes,
    prunable_linears,
    prune_finetune,
    prune_structured,
    prune_unstructured,
    sparsity_report,
    to_csr,
)
from course_lib.train import TrainConfig, evaluate, train

#: what ``python -m course_lib.build prune`` writes into course_lib/zoo_data/
OUTPUTS = ("prune_grid.json",)
GRID_PATH = ZOO_DIR / OUTPUTS[0]

# --------------------------------------------------------------------------- retrieval with MiniLM


def retrieval_pairs(n: int = 256) -> tuple[list[str], list[str]]:
    """The fixed retrieval task: the first ``n`` test-split articles (by title) that have a description.

    Query *i* is article *i*'s description, its one relevant passage is article *i*'s extract.
    """
    check_int("n", n, min=2)
    arts = sorted((a for a in data.articles("test") if a.description), key=lambda a: a.title)[:n]
    if len(arts) < n:
        raise ValueError(f"only {len(arts)} test articles have a description; n must be <= that")
    return [a.description for a in arts], [a.extract for a in arts]


def recall_at_k(queries: torch.Tensor, docs: torch.Tensor, k: int = 1) -> float:
    """Fraction of queries whose own document (same row) is among the ``k`` most similar."""
    if queries.shape != docs.shape:
        raise ValueError(f"queries and docs must have the same shape, got {tuple(queries.shape)}, {tuple(docs.shape)}")
    check_int("k", k, min=1, max=docs.shape[0])
    sims = queries @ docs.T  # (Q, D) cosine similarities of unit vectors
    own = sims.diagonal()[:, None]
    rank = (sims > own).sum(1)  # documents strictly more similar than the right one
    return (rank < k).float().mean().item()


def minilm_recall(model, queries: list[str], docs: list[str], *, ks=(1, 10), doc_max_length: int = 128) -> dict:
    """Recall@k of (a pruned copy of) MiniLM on description -> extract retrieval."""
    q = encoder.embed(queries, model=model)
    d = encoder.embed(docs, model=model, max_length=doc_max_length)
    return {f"recall@{k}": recall_at_k(q, d, k) for k in ks}


def bert_calibration(texts: Iterable[str], *, n: int = 32, max_length: int = 128, batch_size: int = 8) -> list[dict]:
    """Calibration batches for a BERT encoder: the first ``n`` texts with at least ``max_length`` tokens.

    Each is truncated to exactly ``max_length`` tokens, so the batches need no padding and
    no padding token enters the activation norms.
    """
    check_int("n", n, min=1)
    check_int("max_length", max_length, min=1)
    check_int("batch_size", batch_size, min=1)
    tok = encoder.load_tokenizer()
    rows = []
    for t in texts:
        ids = tok(t, truncation=True, max_length=max_length)["input_ids"]
        if len(ids) == max_length:
            rows.append(ids)
            if len(rows) == n:
                break
    if len(rows) < n:
        raise ValueError(f"only {len(rows)} texts have {max_length} tokens; need n = {n}")
    ids = torch.tensor(rows)  # (n, max_length)
    return [
        {"input_ids": b, "attention_mask": torch.ones_like(b), "token_type_ids": torch.zeros_like(b)}
        for b in ids.split(batch_size)
    ]


# --------------------------------------------------------------------------- the precomputed grid

PATIENT = "small"
SPARSITIES = (0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875)
STRUCTURES = ("unstructured", "N:8", "structured")
EVAL = {"seq_len": 256, "batch_size": 8, "max_batches": 4}  # 8,192 validation tokens per point
CALIB = {"n_seqs": 16, "seq_len": 256, "seed": 1234}  # Wanda's calibration windows (training split)
MINILM = {
    "n_pairs": 256,
    "subset": 64,
    "doc_max_length": 128,
    "calib_texts": 32,
    "sparsities": (0.0, 0.25, 0.5, 0.625, 0.75),
}


def patient_calibration(tokens=None) -> list[torch.Tensor]:
    """Wanda's calibration data for the patient: fixed random windows of the training split."""
    tokens = data.encode_split("train") if tokens is None else tokens
    gen = torch.Generator().manual_seed(CALIB["seed"])
    x, _ = data.random_batch(tokens, CALIB["n_seqs"], CALIB["seq_len"], gen)
    return list(x.split(4))  # four batches of (4, 256)


def eval_loss(model, val_tokens) -> float:
    """The grid's quality measure: validation cross-entropy on the fixed :data:`EVAL` windows."""
    return evaluate(model, val_tokens, **EVAL)


def pruned_patient(
    base, *, method: str, structure: str, sparsity: float, calibration=None, generator_seed: int = 0
) -> nn.Module:
    """A pruned copy of ``base`` at one grid point (``structure`` in :data:`STRUCTURES`)."""
    model = copy.deepcopy(base).eval()
    if sparsity == 0:
        return model
    gen = torch.Generator().manual_seed(generator_seed)
    if structure == "unstructured":
        prune_unstructured(model, method=method, sparsity=sparsity, calibration=calibration, generator=gen)
    elif structure == "N:8":
        n = round(8 * (1 - sparsity))
        if not math.isclose(1 - n / 8, sparsity):
            raise ValueError(f"N:8 reaches sparsities k/8 only, got {sparsity}")
        prune_unstructured(model, method=method, pattern=(n, 8), calibration=calibration, generator=gen)
    elif structure == "structured":
        prune_structured(model, mlp_sparsity=sparsity, method=method, calibration=calibration, generator=gen)
    else:
        raise ValueError(f"structure must be one of {STRUCTURES}, got {structure!r}")
    return model


def _model_bytes(model, structure: str, sparsity: float) -> dict:
    """Storage of a pruned patient in fp32: dense (zeros stored), CSR, N:8 compressed; structured = real."""
    total = weight_bytes(model)
    if structure == "structured":
        return {"dense_mb": total / 1e6}
    linears = prunable_linears(model)
    lin_dense = sum(dense_bytes(tuple(m.weight.shape)) for m in linears.values())
    rest = total - lin_dense
    out = {"dense_mb": total / 1e6}
    out["csr_mb"] = (
        rest + sum(csr_bytes(tuple(m.weight.shape), int((m.weight != 0).sum())) for m in linears.values())
    ) / 1e6
    if structure == "N:8":
        n = round(8 * (1 - sparsity))
        out["nm_mb"] = (rest + sum(nm_bytes(tuple(m.weight.shape), n, 8, 4) for m in linears.values())) / 1e6
    return out


def build_patient(grid: dict, *, progress: bool = True) -> None:
    patient = zoo.load(PATIENT)
    val = data.encode_split("val")
    calib = patient_calibration()
    rows = []
    for structure in STRUCTURES:
        methods = UNSTRUCTURED_METHODS if structure == "unstructured" else STRUCTURED_METHODS
        for method in methods:
            for s in SPARSITIES:
                m = pruned_patient(patient.model, method=method, structure=structure, sparsity=s, calibration=calib)
                loss = eval_loss(m, val)
                rep = sparsity_report(m)
                rows.append(
                    {
                        "structure": structure,
                        "method": method,
                        "sparsity": s,
                        "val_loss": round(loss, 4),
                        "val_ppl": round(math.exp(loss), 2),
                        "params": m.num_params(),
                        "linear_sparsity": round(rep["linear_sparsity"], 4),
                        "gflops_per_token": m.flops_per_token(256)["total"] / 1e9,
                        **{k: round(v, 4) for k, v in _model_bytes(m, structure, s).items()},
                    }
                )
                if progress:
                    print(f"  {structure:12s} {method:16s} {s:.3f}  ppl {rows[-1]['val_ppl']}", flush=True)
    grid["patient"] = {
        "name": PATIENT,
        "sha256": patient.meta["sha256"],
        "eval": EVAL,
        "calibration": CALIB,
        "rows": rows,
    }


def build_latency(grid: dict, *, progress: bool = True) -> None:
    """Prefill and decode latency per (structure, sparsity); magnitude masks (timing ignores which)."""
    base = zoo.load(PATIENT).model
    rows = []
    for s in SPARSITIES:
        variants = {
            "masked dense": pruned_patient(base, method="magnitude", structure="unstructured", sparsity=s),
            "CSR": pruned_patient(base, method="magnitude", structure="unstructured", sparsity=s),
            "structured": pruned_patient(base, method="magnitude", structure="structured", sparsity=s),
        }
        to_csr(variants["CSR"])
        pre = measure.interleaved(
            {k: measure.prefill_fn(m, prompt_len=128) for k, m in variants.items()}, warmup=2, repeats=15
        )
        dec = measure.interleaved(
            {k: measure.decode_fn(m, prompt_len=64, new_tokens=16) for k, m in variants.items()}, warmup=1, repeats=5
        )
        for k in variants:
            rows.append(
                {
                    "structure": k,
                    "sparsity": s,
                    "prefill_ms": round(pre[k].median * 1e3, 3),
                    "decode_ms_per_token": round(dec[k].median / 16 * 1e3, 3),
                }
            )
        if progress:
            print(
                f"  latency {s:.3f}: " + ", ".join(f"{r['structure']} {r['prefill_ms']} ms" for r in rows[-3:]),
                flush=True,
            )
    grid["latency"] = {
        "prefill_tokens": 128,
        "decode": "16 tokens after a 64-token prompt",
        "threads": torch.get_num_threads(),
        "rows": rows,
    }


def build_heads(grid: dict, *, progress: bool = True) -> None:
    """Ablate each query head alone (zero its output-projection columns) and record the loss."""
    base = zoo.load(PATIENT).model
    val = data.encode_split("val")
    calib = patient_calibration()
    specs = layer_specs(base)
    norms = activation_norms(base, calib, names=[s.o for s in specs])
    ablation, mag, act = [], [], []
    for s in specs:
        n_heads, _, d = head_layout(base, s)
        row = []
        for h in range(n_heads):
            m = copy.deepcopy(base)
            with torch.no_grad():
                m.get_submodule(s.o).weight[:, h * d : (h + 1) * d] = 0
            row.append(round(eval_loss(m, val), 4))
        ablation.append(row)
        mag.append([round(v, 5) for v in head_scores(base, s, "magnitude").tolist()])
        act.append([round(v, 5) for v in head_scores(base, s, "wanda", act_norms=norms).tolist()])
        if progress:
            print(f"  heads layer {s.index}: {row}", flush=True)
    grid["heads"] = {
        "base_loss": round(eval_loss(base, val), 4),
        "ablation_loss": ablation,
        "magnitude": mag,
        "wanda": act,
    }


def build_minilm(grid: dict, *, progress: bool = True) -> None:
    base = encoder.load_model()
    queries, docs = retrieval_pairs(MINILM["n_pairs"])
    calib = bert_calibration(
        (a.extract for a in data.articles("train")), n=MINILM["calib_texts"], max_length=MINILM["doc_max_length"]
    )
    sub = MINILM["subset"]
    rows = []
    points = [("unstructured", meth, s) for meth in ("magnitude", "wanda") for s in MINILM["sparsities"]]
    points += [("2:4", meth, 0.5) for meth in ("magnitude", "wanda")]
    points += [("structured", meth, s) for meth in ("magnitude", "wanda") for s in (0.25, 0.5)]
    for structure, method, s in points:
        if s == 0 and method == "wanda":
            continue
        m = copy.deepcopy(base)
        if structure == "unstructured" and s > 0:
            prune_unstructured(m, method=method, sparsity=s, calibration=calib)
        elif structure == "2:4":
            prune_unstructured(m, method=method, pattern=(2, 4), calibration=calib)
        elif structure == "structured":
            prune_structured(m, mlp_sparsity=s, method=method, calibration=calib)
        t0 = time.perf_counter()
        q = encoder.embed(queries, model=m)
        d = encoder.embed(docs, model=m, max_length=MINILM["doc_max_length"])
        rows.append(
            {
                "structure": structure,
                "method": "dense" if s == 0 else method,
                "sparsity": s,
                "recall@1": round(recall_at_k(q, d, 1), 4),
                "recall@10": round(recall_at_k(q, d, 10), 4),
                f"subset{sub}_recall@1": round(recall_at_k(q[:sub], d[:sub], 1), 4),
                "params": sum(p.numel() for p in m.parameters()),
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
        if progress:
            print(f"  minilm {structure} {method} {s}: {rows[-1]}", flush=True)
    grid["minilm"] = {**MINILM, "model": encoder.MODEL_PIP, "rows": rows}


def build_gmp(grid: dict, *, progress: bool = True) -> None:
    """One-shot vs gradual magnitude pruning to 75 %, and the dense model trained as long (the control).

    Fine-tuning uses the zoo recipe's final learning rate, so that the training itself does
    not disturb the converged dense model; curves are evaluated on the :data:`EVAL` windows.
    """
    train_ids, val = data.encode_split("train"), data.encode_split("val")
    n_eval = EVAL["batch_size"] * EVAL["max_batches"] // 4  # the same windows as EVAL, in batches of 4
    cfg = TrainConfig(
        steps=100,
        batch_size=4,
        seq_len=EVAL["seq_len"],
        lr=2e-4,
        warmup_steps=5,
        eval_every=20,
        eval_batches=n_eval,
        seed=7,
    )
    final, schedule = 0.75, {"begin_frac": 0.0, "end_frac": 0.5, "every": 5}
    out = {
        "final_sparsity": final,
        "schedule": schedule,
        "train_config": {k: getattr(cfg, k) for k in ("steps", "batch_size", "seq_len", "lr")},
    }
    base = zoo.load(PATIENT).model
    pruned = pruned_patient(base, method="magnitude", structure="unstructured", sparsity=final)
    out["oneshot_no_finetune_loss"] = round(eval_loss(pruned, val), 4)
    out["dense_loss"] = round(eval_loss(base, val), 4)
    start = {"dense": out["dense_loss"], "oneshot": out["oneshot_no_finetune_loss"], "gradual": out["dense_loss"]}
    for label in ("dense", "oneshot", "gradual"):
        model = zoo.load(PATIENT).model
        t0 = time.perf_counter()
        if label == "dense":
            hist, log = train(model, train_ids, val, cfg, progress=progress, desc="dense"), [0.0] * cfg.steps
        else:
            hist, log = prune_finetune(
                model, train_ids, val, cfg, final_sparsity=final, schedule=label, progress=progress, **schedule
            )
        out[label] = {
            "step": [0] + [s + 1 for s in hist.val_step],
            "val_loss": [start[label]] + [round(v, 4) for v in hist.val_loss],
            "sparsity": [round(v, 4) for v in log],
            "final_loss": round(eval_loss(model, val), 4),
            "seconds": round(time.perf_counter() - t0, 1),
        }
    grid["gmp"] = out


def build_lottery(grid: dict, *, progress: bool = True) -> None:
    """The lottery ticket on the topic task: MiniLM embeddings of the extracts -> 12 topics."""
    arts = data.load_articles()
    labels = torch.tensor([a.label for a in arts])
    train = torch.tensor([data.split_of(a.title) == "train" for a in arts])
    settings = {"hidden": (300, 100), "rounds": 9, "prune_frac": 0.5, "epochs": 8, "lr": 1.2e-3, "batch_size": 60}
    rows = lottery_ticket(encoder.corpus_embeddings("extract"), labels, train, **settings)
    if progress:
        for r in rows:
            print(f"  lottery round {r['round']}: {r}", flush=True)
    grid["lottery"] = {**settings, "n_train": int(train.sum()), "n_heldout": int((~train).sum()), "rows": rows}


PARTS = {
    "patient": build_patient,
    "latency": build_latency,
    "heads": build_heads,
    "minilm": build_minilm,
    "gmp": build_gmp,
    "lottery": build_lottery,
}


def load_grid() -> dict:
    """The precomputed grid (``python -m course_lib.build prune``)."""
    if not GRID_PATH.is_file():
        raise FileNotFoundError(f"no pruning grid at {GRID_PATH}; build it with:  python -m course_lib.build prune")
    return json.loads(zoo_file(GRID_PATH.name).read_text())


def build(parts: Iterable[str] | None = None, *, progress: bool = True) -> dict:
    """Compute the chosen parts (default: all) and merge each into :data:`GRID_PATH` as it finishes."""
    parts = list(parts or PARTS)
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"unknown parts {unknown}; choose from {list(PARTS)}")
    for p in parts:
        set_seed(0)
        t0 = time.perf_counter()
        part: dict = {}
        PARTS[p](part, progress=progress)
        grid = json.loads(GRID_PATH.read_text()) if GRID_PATH.is_file() else {}  # re-read: merge, keep other parts
        grid.update(part)
        grid.setdefault("meta", {}).update(
            {
                "command": "python -m course_lib.build prune",
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "machine": fingerprint.machine(),  # which CPU made the seconds and latencies (course_lib.fingerprint)
            }
        )
        grid["meta"][f"{p}_seconds"] = round(time.perf_counter() - t0, 1)
        atomic_write_bytes(GRID_PATH, (json.dumps(grid, separators=(",", ":")) + "\n").encode())
        record_artefact(GRID_PATH, rebuild="python -m course_lib.build prune")
        print(f"{p}: {grid['meta'][f'{p}_seconds']} s", flush=True)
    return load_grid()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.build prune", description=__doc__.split("\n")[0])
    parser.add_argument("parts", nargs="*", metavar="PART", help=f"which parts (default: all of {list(PARTS)})")
    args = parser.parse_args(argv)
    unknown = [p for p in args.parts if p not in PARTS]
    if unknown:
        parser.error(f"unknown parts {unknown}; choose from {list(PARTS)}")
    build(args.parts or None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
