"""Chapter 07's training runs: equal-compute training on the raw, deduplicated and filtered crawl, a synthetic skill, curriculum, distillation.

The algorithms are :mod:`course_lib.datacentric`; this module *runs* them, all on the tiny
patient's model config (:data:`MODEL`, 4 blocks of width 64) with short runs (sequences of
128 tokens, batches of 16), validation loss on the **clean held-out articles** (the
corpus' validation split, :func:`course_lib.data.encode_split`), and the course's one
definition of time-to-accuracy, :func:`course_lib.train.time_to_target`.

* **equal** — the same token budget (:data:`EQUAL_TRAIN`: steps x batch x length), the
  same config and seed, on three versions of the crawl's *training-split* documents
  (:func:`course_lib.datacentric.build_crawl`, documents whose source article is in the
  training split): ``raw`` (everything), ``dedup`` (exact dedup, then MinHash/LSH near
  dedup at Jaccard 0.5 on 5-word shingles) and ``filtered`` (``dedup`` minus what the
  Gopher/C4-style heuristic rules flag or the perplexity filter flags: the tiny patient's
  loss above the 95th percentile of its loss on clean validation articles). The target
  loss is the *highest* final validation loss of the three (:data:`TARGET_RULE`: a loss
  every arm reaches by the end), and each arm's tokens-to-target is measured. Then the
  memorisation check: greedy continuation of :data:`MEMO_PREFIX` tokens reproducing the
  next :data:`MEMO_SUFFIX` verbatim (:func:`course_lib.datacentric.regurgitation_rate`),
  on articles the raw crawl holds at least :data:`MANY_COPIES` times versus articles it
  holds once, for each arm's final model. Every arm is trained again with seeds
  :data:`EQUAL_SEEDS` (the seed sets the initialisation and the batch order, as in the
  curriculum part; no memorisation check) so the filtered-vs-raw difference can be judged
  against its own seed-to-seed spread (``seed_runs``, ``seed_summary``).
* **synthetic** — the tiny *patient* (pretrained) trained on for :data:`SYNTH_TRAIN` with
  a share of the tokens replaced by programmatic examples "Q: What is the topic of
  <title>?\\nA: <topic>." from training-split articles (:data:`SYNTH_SHARES`; share 0 =
  the same tokens spent on more crawl); accuracy of naming the topic of held-out
  (validation) titles by ranking the 12 topics (:func:`course_lib.datacentric.topic_accuracy`).
* **curriculum** — the same documents (clean training articles, a seeded sample filling
  the budget) read once in order, easiest first by the patient's loss
  (:func:`course_lib.datacentric.difficulty_order`), against random orders; seeds
  :data:`CURRICULUM_SEEDS` (the seed sets the initialisation and the random order).
* **distill** — the tiny config from scratch, :data:`DISTILL_TRAIN` steps on the training
  split, trained on data alone versus on the small patient's soft targets
  (:func:`course_lib.datacentric.distillation_objective`, :data:`DISTILL_TEMPERATURE`,
  :data:`DISTILL_ALPHA`), equal steps and batches: validation loss and top-1 agreement
  with the teacher.

Commands (deterministic for a thread count; about 12 CPU-minutes with 2 threads before the equal part's extra
seeds, measured on a busy 2-core machine; the equal part with its seeds alone took 682 CPU s, 444 s wall, idle)::

    python -m course_lib.build datacentric                  # -> zoo_data/datacentric_runs.json
    python -m course_lib.build datacentric --part equal     # one part (repeatable); the others are kept

:func:`short_run` recomputes the first steps of the stored data-alone distillation run
live (a few CPU seconds) for comparison with the stored curve.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from course_lib import data, fingerprint, measure, zoo
from course_lib import datacentric as dc
from course_lib.checks import check_int
from course_lib.model import TinyLM
from course_lib.paths import ZOO_DIR, atomic_write_bytes, load_json, record_artefact
from course_lib.train import TrainConfig, evaluate, time_to_target, train

#: what ``python -m course_lib.build datacentric`` writes into course_lib/zoo_data/
OUTPUTS = ("datacentric_runs.json",)
RUNS_FILE = OUTPUTS[0]
COMMAND = "python -m course_lib.build datacentric"
PARTS = ("equal", "synthetic", "curriculum", "distill")

#: the model every run trains: the tiny patient's config
MODEL = zoo.RECIPES["tiny"][0]
_RUN = dict(batch_size=16, seq_len=128, eval_batches=4)
EQUAL_TRAIN = TrainConfig(steps=120, lr=3e-3, warmup_steps=12, eval_every=12, seed=0, **_RUN)
EQUAL_ARMS = ("raw", "dedup", "filtered")
#: extra seeds of the equal arms (seed 0 is ``runs``): model init and batch order both varied, no memorisation check
EQUAL_SEEDS = (1, 2)
TARGET_RULE = "the highest final validation loss of the three arms (a loss every arm reaches by its last step)"
NEAR_DEDUP = dict(threshold=0.5, num_perm=128, bands=32, rows=4, k=5)
PERPLEXITY_QUANTILE = 0.95
MANY_COPIES = 10
MEMO_PREFIX, MEMO_SUFFIX, MEMO_DOCS = 32, 16, 48

SYNTH_TRAIN = TrainConfig(steps=50, lr=2e-3, warmup_steps=5, eval_every=0, seed=0, **_RUN)
SYNTH_SHARES = (0.0, 0.2, 0.5)
SYNTH_EVAL_TITLES = 150

CURRICULUM_TRAIN = TrainConfig(steps=60, lr=3e-3, warmup_steps=6, eval_every=10, seed=0, **_RUN)
CURRICULUM_SEEDS = (0, 1, 2)
CURRICULUM_ARMS = ("random", "easy_to_hard")

DISTILL_TRAIN = TrainConfig(steps=60, lr=3e-3, warmup_steps=6, eval_every=10, seed=0, **_RUN)
DISTILL_TEACHER = "small"
DISTILL_TEMPERATURE, DISTILL_ALPHA = 2.0, 0.5


def _r(x, digits: int = 4):
    return None if x is None else round(float(x), digits)


def new_model(seed: int) -> TinyLM:
    """A freshly initialised model of :data:`MODEL` (``torch.manual_seed(seed)`` first)."""
    torch.manual_seed(seed)
    return TinyLM(MODEL)


def run_record(hist, cfg: TrainConfig, **extra) -> dict:
    """What is stored of a run: its validation curve (every evaluation), the training loss
    every 5th step, tokens and seconds, and ``time_to_target``'s inputs."""
    return {
        "steps": len(hist.step),
        "tokens_per_step": cfg.tokens_per_step,
        "tokens_seen": hist.tokens_seen,
        "seconds": _r(hist.seconds, 2),
        "val_step": list(hist.val_step),
        "val_tokens": [(s + 1) * cfg.tokens_per_step for s in hist.val_step],
        "val_loss": [_r(v) for v in hist.val_loss],
        "final_val_loss": _r(hist.final_val_loss),
        "loss_step": hist.step[::5],
        "loss": [_r(v) for v in hist.loss[::5]],
        **extra,
    }


def _patient(model: TinyLM, tokenizer) -> SimpleNamespace:
    """What the datacentric measures need of a patient: ``.model`` and ``.tokenizer``."""
    return SimpleNamespace(model=model.eval(), tokenizer=tokenizer)


# --------------------------------------------------------------------------- 1. equal compute


def crawl_arms(crawl: dc.Crawl, *, progress: bool = True) -> dict:
    """The three training sets (indices into the crawl, training split only) and the filters' record."""
    train_idx = np.flatnonzero(crawl.mask(splits=["train"]))
    texts = [crawl.docs[i].text for i in train_idx]
    labels = crawl.labels[train_idx]
    exact = dc.exact_dedup(texts)
    kept = np.flatnonzero(exact.keep)
    near = dc.near_dedup([texts[i] for i in kept], **NEAR_DEDUP)
    dedup = kept[near.keep]
    heur = dc.heuristic_filter([texts[i] for i in dedup])
    patient = zoo.load("tiny")
    threshold = dc.perplexity_threshold(patient, quantile=PERPLEXITY_QUANTILE)
    ppl = np.zeros(len(dedup), dtype=bool)
    rest = np.flatnonzero(~heur)
    ppl[rest] = dc.perplexity_scores([texts[dedup[i]] for i in rest], patient) > threshold
    flagged = heur | ppl
    filtered = dedup[~flagged]
    lab = labels[dedup]
    filt = {
        name: asdict(dc.precision_recall(f, lab, positive=("low_quality", "near_dup", "exact_dup")))
        for name, f in (("heuristic", heur), ("perplexity", ppl), ("either", flagged))
    }
    if progress:
        print(f"  crawl: {len(texts)} training-split docs, {len(dedup)} after dedup, {len(filtered)} after filters")
    composition = {
        arm: {lbl: int((labels[idx] == lbl).sum()) for lbl in dc.LABELS}
        for arm, idx in (("raw", np.arange(len(texts))), ("dedup", dedup), ("filtered", filtered))
    }
    return {
        "index": {"raw": train_idx, "dedup": train_idx[dedup], "filtered": train_idx[filtered]},
        "composition": composition,
        "filters": {
            "dedup": f"exact (normalised text) then near: MinHash/LSH {NEAR_DEDUP}",
            "quality": (
                "heuristic rules (Gopher/C4 style, HeuristicRules defaults) OR perplexity above the "
                f"{PERPLEXITY_QUANTILE} quantile of the tiny patient's loss on clean validation articles "
                f"({threshold:.4f} nats/token), applied to the deduplicated documents"
            ),
            "perplexity_threshold": _r(threshold),
            "precision_recall_on_dedup": filt,
        },
    }


def memorisation_groups(crawl: dc.Crawl, tokenizer) -> dict[str, list[int]]:
    """Source articles (training split, >= prefix + suffix tokens) the raw crawl holds
    ``>= MANY_COPIES`` times (``"many"``) and exactly once with no near duplicate (``"once"``)."""
    copies = np.bincount(crawl.sources[crawl.labels == "exact_dup"], minlength=crawl.n_articles)
    near = np.bincount(crawl.sources[crawl.labels == "near_dup"], minlength=crawl.n_articles)
    clean = [d for d in crawl.docs if d.label == "clean" and d.split == "train"]
    ntok = {d.source: len(e.ids) for d, e in zip(clean, tokenizer.encode_batch([d.text for d in clean]))}
    ok = [d.source for d in clean if ntok[d.source] >= MEMO_PREFIX + MEMO_SUFFIX]
    many = [s for s in ok if copies[s] + 1 >= MANY_COPIES]
    once = [s for s in ok if copies[s] == 0 and near[s] == 0]
    rng = np.random.default_rng(0)
    pick = lambda xs: sorted(rng.choice(xs, size=min(MEMO_DOCS, len(xs)), replace=False).tolist())  # noqa: E731
    return {"many": pick(many), "once": pick(once), "copies": {int(s): int(copies[s]) + 1 for s in many}}


def build_equal(progress: bool = True) -> dict:
    crawl = dc.build_crawl()
    tok = data.get_tokenizer()
    arms = crawl_arms(crawl, progress=progress)
    val = data.encode_split("val")
    groups = memorisation_groups(crawl, tok)
    by_source = {d.source: d.text for d in crawl.docs if d.label == "clean"}
    memo_texts = {g: [by_source[s] for s in groups[g]] for g in ("many", "once")}
    cfg = EQUAL_TRAIN
    runs = {}
    for arm in EQUAL_ARMS:
        docs = dc.encode_docs([crawl.docs[i].text for i in arms["index"][arm]], tok)
        stream = dc.token_stream(docs)
        model = new_model(cfg.seed)
        hist = train(
            model,
            None,
            val,
            cfg,
            batch_at=dc.random_batches(stream, batch_size=cfg.batch_size, seq_len=cfg.seq_len, seed=cfg.seed),
            progress=progress,
            desc=f"equal:{arm}",
        )
        p = _patient(model, tok)
        memo = {}
        for g, texts in memo_texts.items():
            rate = dc.regurgitation_rate(texts, p, prefix_tokens=MEMO_PREFIX, suffix_tokens=MEMO_SUFFIX)
            memo[g] = {"rate": _r(rate.mean()), "n": len(texts), "mean_loss": _r(dc.perplexity_scores(texts, p).mean())}
        runs[arm] = run_record(hist, cfg, docs=len(docs), tokens_available=int(len(stream)), memorisation=memo)
        if progress:
            print(f"  {arm}: final val {runs[arm]['final_val_loss']}, memorisation {memo}", flush=True)
    seed_runs: dict[str, list] = {arm: [] for arm in EQUAL_ARMS}
    for seed in EQUAL_SEEDS:
        c = TrainConfig(**{**asdict(cfg), "seed": seed})
        for arm in EQUAL_ARMS:
            stream = dc.token_stream(dc.encode_docs([crawl.docs[i].text for i in arms["index"][arm]], tok))
            hist = train(
                new_model(seed),
                None,
                val,
                c,
                batch_at=dc.random_batches(stream, batch_size=c.batch_size, seq_len=c.seq_len, seed=seed),
                progress=progress,
                desc=f"equal:{arm}:{seed}",
            )
            seed_runs[arm].append(
                {
                    "seed": seed,
                    "final_val_loss": _r(hist.final_val_loss),
                    "val_loss": [_r(v) for v in hist.val_loss],
                    "seconds": _r(hist.seconds, 2),
                }
            )
            if progress:
                print(f"  equal {arm} seed {seed}: final val {hist.final_val_loss:.4f}", flush=True)
    finals = {arm: [runs[arm]["final_val_loss"]] + [r["final_val_loss"] for r in seed_runs[arm]] for arm in EQUAL_ARMS}
    diffs = [f - r for f, r in zip(finals["filtered"], finals["raw"])]
    seed_summary = {
        arm: {"mean": _r(np.mean(v)), "min": _r(min(v)), "max": _r(max(v)), "n": len(v)} for arm, v in finals.items()
    } | {
        "difference": {
            "per_seed": [_r(d) for d in diffs],
            "mean": _r(np.mean(diffs)),
            "min": _r(min(diffs)),
            "max": _r(max(diffs)),
        }
    }
    target = max(runs[a]["final_val_loss"] for a in EQUAL_ARMS)
    for arm in EQUAL_ARMS:
        t = time_to_target(runs[arm], target)
        runs[arm]["to_target"] = (
            None if t is None else {"steps": _r(t.steps, 2), "tokens": round(t.tokens), "seconds": _r(t.seconds, 2)}
        )
    return {
        "train": asdict(cfg),
        "crawl": {"sha256": crawl.sha256(), "config": asdict(crawl.config), "docs": len(crawl)},
        "composition": arms["composition"],
        "filters": arms["filters"],
        "target": {"rule": TARGET_RULE, "loss": target},
        "memorisation": {
            "prefix_tokens": MEMO_PREFIX,
            "suffix_tokens": MEMO_SUFFIX,
            "many_copies": MANY_COPIES,
            "copies_of_many": sorted(groups["copies"].values(), reverse=True),
        },
        "runs": runs,
        "seeds": [cfg.seed, *EQUAL_SEEDS],
        "seed_runs": seed_runs,
        "seed_summary": seed_summary,
    }


# --------------------------------------------------------------------------- 2. synthetic skill


def build_synthetic(progress: bool = True) -> dict:
    cfg = SYNTH_TRAIN
    tok = data.get_tokenizer()
    train_arts = data.articles("train")
    eval_arts = data.articles("val")[:SYNTH_EVAL_TITLES]
    crawl_docs = dc.encode_docs([a.text for a in train_arts], tok)
    synth_texts = dc.synthetic_topic_examples(train_arts, n=20000, seed=0)
    synth_docs = dc.encode_docs(synth_texts, tok)
    val = data.encode_split("val")
    need = cfg.steps * cfg.tokens_per_step + 1
    before = zoo.load("tiny").model
    acc0, _ = dc.topic_accuracy(before, eval_arts, tokenizer=tok)
    truth = [a.topic for a in eval_arts]
    majority = max(set(truth), key=truth.count)
    out = {
        "train": asdict(cfg),
        "patient": "tiny",
        "example": synth_texts[0],
        "n_eval_titles": len(eval_arts),
        "majority_topic": majority,
        "majority_share": _r(truth.count(majority) / len(truth)),
        "before": {
            "accuracy": _r(acc0),
            "val_loss": _r(evaluate(before, val, seq_len=cfg.seq_len, max_batches=cfg.eval_batches)),
        },
        "runs": [],
    }
    for share in SYNTH_SHARES:
        stream, is_synth = dc.mixed_stream(crawl_docs, synth_docs, n_tokens=need, extra_share=share, seed=0)
        model = zoo.load("tiny").model
        hist = train(
            model,
            None,
            val,
            cfg,
            batch_at=dc.sequential_batches(stream, batch_size=cfg.batch_size, seq_len=cfg.seq_len, steps=cfg.steps),
            progress=progress,
            desc=f"synthetic:{share}",
        )
        acc, pred = dc.topic_accuracy(model, eval_arts, tokenizer=tok)
        read = int(is_synth[: need - 1].sum())
        out["runs"].append(
            {
                "share": share,
                "synthetic_tokens": read,
                "crawl_tokens": need - 1 - read,
                "accuracy": _r(acc),
                "predicted_topics": len(set(pred.tolist())),
                "val_loss": _r(hist.final_val_loss),
                "seconds": _r(hist.seconds, 2),
            }
        )
        if progress:
            print(f"  synthetic share {share}: accuracy {acc:.3f}, val {hist.final_val_loss:.4f}", flush=True)
    return out


# --------------------------------------------------------------------------- 3. curriculum


def curriculum_docs(cfg: TrainConfig, tok) -> tuple[list[np.ndarray], np.ndarray]:
    """A seeded sample of clean training articles filling the budget, and the patient's loss on each."""
    arts = data.articles("train")
    docs = dc.encode_docs([a.text for a in arts], tok)
    need = cfg.steps * cfg.tokens_per_step + 1
    order = np.random.default_rng(0).permutation(len(arts))
    cum = np.cumsum([len(docs[i]) + 1 for i in order])
    chosen = order[: int(np.searchsorted(cum, need)) + 1]
    texts = [arts[i].text for i in chosen]
    scores = dc.perplexity_scores(texts, zoo.load("tiny"))
    return [docs[i] for i in chosen], scores


def build_curriculum(progress: bool = True) -> dict:
    cfg = CURRICULUM_TRAIN
    tok = data.get_tokenizer()
    val = data.encode_split("val")
    docs, scores = curriculum_docs(cfg, tok)
    runs: dict[str, list] = {arm: [] for arm in CURRICULUM_ARMS}
    for seed in CURRICULUM_SEEDS:
        for arm in CURRICULUM_ARMS:
            order = (
                dc.difficulty_order(scores)
                if arm == "easy_to_hard"
                else np.random.default_rng(seed).permutation(len(docs))
            )
            stream = dc.token_stream(docs, order)
            c = TrainConfig(**{**asdict(cfg), "seed": seed})
            hist = train(
                new_model(seed),
                None,
                val,
                c,
                batch_at=dc.sequential_batches(stream, batch_size=c.batch_size, seq_len=c.seq_len, steps=c.steps),
                progress=progress,
                desc=f"curriculum:{arm}:{seed}",
            )
            runs[arm].append(run_record(hist, c, seed=seed))
            if progress:
                print(f"  curriculum {arm} seed {seed}: final val {hist.final_val_loss:.4f}", flush=True)
    finals = {arm: [r["final_val_loss"] for r in runs[arm]] for arm in CURRICULUM_ARMS}
    diffs = [e - r for e, r in zip(finals["easy_to_hard"], finals["random"])]
    return {
        "train": asdict(cfg),
        "score": "the tiny patient's mean loss on the document's first 64 tokens (perplexity_scores)",
        "docs": len(docs),
        "seeds": list(CURRICULUM_SEEDS),
        "runs": runs,
        "summary": {arm: {"mean": _r(np.mean(v)), "min": _r(min(v)), "max": _r(max(v))} for arm, v in finals.items()}
        | {"difference": {"per_seed": [_r(d) for d in diffs], "mean": _r(np.mean(diffs))}},
    }


# --------------------------------------------------------------------------- 4. distillation


def distill_run(
    kind: str, *, stop_after: int | None = None, progress: bool = True, teacher=None
) -> tuple[TinyLM, object]:
    """One distillation-part run: ``kind`` "data" (cross-entropy) or "distilled" (soft targets of the small patient)."""
    if kind not in ("data", "distilled"):
        raise ValueError(f"kind must be 'data' or 'distilled', got {kind!r}")
    cfg = DISTILL_TRAIN
    train_ids, val = data.encode_split("train"), data.encode_split("val")
    loss_fn = None
    if kind == "distilled":
        teacher = zoo.load(DISTILL_TEACHER).model if teacher is None else teacher
        loss_fn = dc.distillation_objective(teacher, temperature=DISTILL_TEMPERATURE, alpha=DISTILL_ALPHA)
    model = new_model(cfg.seed)
    hist = train(
        model,
        None,
        val,
        cfg,
        batch_at=dc.random_batches(train_ids, batch_size=cfg.batch_size, seq_len=cfg.seq_len, seed=cfg.seed),
        loss_fn=loss_fn,
        stop_after=stop_after,
        progress=progress,
        desc=f"distill:{kind}",
    )
    return model, hist


def build_distill(progress: bool = True) -> dict:
    cfg = DISTILL_TRAIN
    val = data.encode_split("val")
    teacher = zoo.load(DISTILL_TEACHER).model.eval()
    runs = {}
    for kind in ("data", "distilled"):
        model, hist = distill_run(kind, progress=progress, teacher=teacher)
        agree = dc.top1_agreement(
            model, teacher, val, seq_len=cfg.seq_len, batch_size=cfg.batch_size, max_batches=cfg.eval_batches
        )
        runs[kind] = run_record(hist, cfg, agreement=_r(agree))
        if progress:
            print(f"  distill {kind}: final val {hist.final_val_loss:.4f}, agreement {agree:.4f}", flush=True)
    return {
        "train": asdict(cfg),
        "teacher": DISTILL_TEACHER,
        "teacher_val_loss": _r(
            evaluate(teacher, val, seq_len=cfg.seq_len, batch_size=cfg.batch_size, max_batches=cfg.eval_batches)
        ),
        "temperature": DISTILL_TEMPERATURE,
        "alpha": DISTILL_ALPHA,
        "runs": runs,
    }


BUILDERS = {
    "equal": build_equal,
    "synthetic": build_synthetic,
    "curriculum": build_curriculum,
    "distill": build_distill,
}


def build(*, parts=PARTS, progress: bool = True, threads: int = 2, path: Path | None = None) -> dict:
    """Run ``parts`` and write ``datacentric_runs.json`` atomically after each one (the other parts' sections kept)."""
    parts = list(parts)
    for part in parts:
        if part not in PARTS:
            raise ValueError(f"parts must be chosen from {list(PARTS)}, got {part!r}")
    check_int("threads", threads, min=1)
    path = Path(path) if path is not None else ZOO_DIR / RUNS_FILE
    result: dict = {}
    with measure.num_threads(threads):
        for part in parts:
            t0, c0 = time.perf_counter(), time.process_time()
            section = BUILDERS[part](progress)
            section["build_seconds"] = _r(time.perf_counter() - t0, 1)
            section["build_cpu_seconds"] = _r(time.process_time() - c0, 1)
            section["threads"] = threads
            old = json.loads(path.read_text()) if path.is_file() else {}
            result = {
                "command": COMMAND,
                "machine": fingerprint.machine(),
                "built_with": {"torch": torch.__version__, "threads": threads},
                "model_config": MODEL.to_dict(),
                **{p: old.get(p) for p in PARTS},
                part: section,
            }
            atomic_write_bytes(path, (json.dumps(result, separators=(",", ":")) + "\n").encode())
            if path.resolve().parent == ZOO_DIR.resolve():
                record_artefact(path, rebuild=COMMAND)
            if progress:
                print(
                    f"  part {part}: {section['build_seconds']} s wall, {section['build_cpu_seconds']} s CPU",
                    flush=True,
                )
    return result


def load_runs(path: Path | None = None) -> dict:
    """The stored runs (``python -m course_lib.build datacentric`` writes them)."""
    return load_json(RUNS_FILE, path)


def short_run(steps: int = 10, *, stored: dict | None = None, progress: bool = False) -> dict:
    """The first ``steps`` steps of the stored data-alone distillation run, recomputed now.

    Same config, seed, batches and learning-rate schedule as the stored run (it stops early
    with :func:`course_lib.train.train`'s ``stop_after``). Returns the live
    training losses at the stored ``loss_step`` points below ``steps`` and the live
    validation losses at the stored ``val_step`` points below ``steps`` (one every
    ``DISTILL_TRAIN.eval_every`` = 10 steps), each beside the stored value, and the largest
    absolute difference over both (zero for the same thread count as the build; float
    rounding apart otherwise). Cost: ``steps`` training steps of the tiny config at 16 x 128
    tokens, plus one validation pass per 10 steps (4 batches).
    """
    cfg = DISTILL_TRAIN
    check_int("steps", steps, min=1, max=cfg.steps)
    stored = load_runs() if stored is None else stored
    ref = stored["distill"]["runs"]["data"]
    _, hist = distill_run("data", stop_after=steps, progress=progress)
    loss_step = [s for s in ref["loss_step"] if s < steps]
    live_loss = [_r(hist.loss[s]) for s in loss_step]
    old_loss = [ref["loss"][ref["loss_step"].index(s)] for s in loss_step]
    val_step = list(hist.val_step)
    live_val = [_r(v) for v in hist.val_loss]
    old_val = [ref["val_loss"][ref["val_step"].index(s)] for s in val_step]
    diffs = [abs(a - b) for a, b in zip(live_loss + live_val, old_loss + old_val)]
    return {
        "steps": steps,
        "loss_step": loss_step,
        "loss": live_loss,
        "stored_loss": old_loss,
        "val_step": val_step,
        "val_loss": live_val,
        "stored_val_loss": old_val,
        "max_abs_diff": _r(max(diffs), 6),
        "seconds": _r(hist.seconds, 2),
        "threads": torch.get_num_threads(),
        "stored_threads": stored["distill"]["threads"],
    }


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the stored runs used 2)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--part", choices=PARTS, action="append", help="run only this part (repeatable; default all)")
    args = parser.parse_args(argv)
    t0, c0 = time.perf_counter(), time.process_time()
    build(parts=args.part or PARTS, progress=not args.quiet, threads=args.threads)
    print(f"wrote {RUNS_FILE} in {time.perf_counter() - t0:.0f} s ({time.process_time() - c0:.0f} CPU s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
