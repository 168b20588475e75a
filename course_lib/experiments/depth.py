"""Chapter 04's depth runs: trained exit heads and the early-exit sweep on the small patient, Mixture-of-Depths fine-tunes of the tiny one.

The algorithms are :mod:`course_lib.depth`; this module *runs* them.

* **Early exit** (small patient, 6 blocks): :func:`course_lib.depth.train_exit_heads`
  fits one rank-:data:`EXIT_RANK` adapter per exit to the frozen patient on
  :data:`EXIT_TRAIN` training tokens (stored in fp16, ~120 KB); then
  :func:`course_lib.depth.exit_sweep` measures layers used, FLOPs, next-token agreement
  with the full model and perplexity on :data:`SWEEP_SEQS` validation windows for each
  threshold, both rules, with and without the trained adapters.
* **A patient trained to exit** (LayerSkip, Elhoushi et al. 2024): the small patient gets
  rank-16 updates of every block's linear layers (:data:`TRAINED`; stored in fp16, ~650 KB,
  merged back by :func:`load_exit_trained`), fine-tuned with layer dropout rising with depth
  and the early-exit loss on every layer through the shared head; then the same sweep on it,
  with the shared head and no adapters, and its validation perplexity beside the original's.
  Agreement is always against the full depth of the model the exits belong to.
* **A learned exit decision** (CALM's classifier) for the exit-trained patient
  (:data:`RULE_VARIANTS`): per-block logistic regressions on cheap exit features, fitted on
  calibration windows of the val split that the sweep never sees, the threshold chosen on
  calibration early-exit runs, then judged on the sweep's windows (:func:`build_rule`;
  a few KB of coefficients in the JSON, a few CPU-minutes).
* **Mixture-of-Depths** (tiny patient, 4 blocks): blocks :data:`MOD_LAYERS` (every other,
  as Raposo et al.) become MoD blocks at each of :data:`MOD_CAPACITIES` and the model is
  fine-tuned :data:`MOD_TRAIN` steps; capacity 1 is the control (the same fine-tune with
  every token routed), ``"drop"`` removes the two blocks (the capacity-0 limit).

Commands (deterministic; about 25 CPU-minutes in all, about 5 of them the exit-trained patient and
4 the learned exit rule)::

    python -m course_lib.build depth                 # -> zoo_data/depth_runs.json and the two .safetensors
    python -m course_lib.build depth --part exit     # only the exit heads and the sweep
    python -m course_lib.build depth --part trained  # only the exit-trained patient and its sweep
    python -m course_lib.build depth --part mod      # only the MoD fine-tunes (the parts can run at once)
    python -m course_lib.build depth --part rule     # only the learned exit rule of the exit-trained patient
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from safetensors.torch import load

from course_lib import data, depth, fingerprint, measure, zoo
from course_lib.paths import (
    ZOO_DIR,
    atomic_write_bytes,
    load_json,
    record_artefact,
    safetensors_bytes,
    stored_file,
)
from course_lib.train import TrainConfig, evaluate, train

#: what ``python -m course_lib.build depth`` writes into course_lib/zoo_data/
OUTPUTS = ("depth_runs.json", "depth_exit_heads.safetensors", "depth_exit_trained.safetensors")
RUNS_FILE, HEADS_FILE, TRAINED_FILE = OUTPUTS
COMMAND = "python -m course_lib.build depth"

EXIT_PATIENT = "small"
EXIT_RANK = 32
#: training windows of the exit adapters: (sequences, length), the train split from the start
EXIT_DATA = (96, 128)
EXIT_TRAIN = dict(steps=200, batch_tokens=512, lr=2e-3, seed=0)
#: validation windows of the sweep: (sequences, length) from the start of the val split
SWEEP_SEQS = (16, 128)
THRESHOLDS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1)
#: the swept (rule, heads) pairs: the logit lens (untrained exits) as the baseline, then trained exits
SWEEPS = (("max_prob", "lens"), ("max_prob", "trained"), ("top2_gap", "trained"), ("classifier", "trained"))
#: the agreement early exit must keep (the issue's target) and the layer share it may use
TARGET_AGREEMENT, TARGET_LAYERS = 0.95, 0.70

#: the small patient fine-tuned to exit (LayerSkip: layer dropout + early-exit loss, rank-16 updates)
TRAINED = dict(
    rank=16, steps=150, batch_size=16, seq_len=128, lr=3e-3, max_dropout=0.8, exit_scale=16.0, exit_tokens=512, seed=0
)
#: the thresholds swept on the exit-trained patient (finer at the low end, where it exits)
TRAINED_THRESHOLDS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.45, 0.4, 0.35, 0.3, 0.25, 0.2, 0.15, 0.1)
#: its sweeps: the shared head, no adapters (LayerSkip's point: the model itself learned to exit)
TRAINED_SWEEPS = ("max_prob", "top2_gap")
#: validation batches (16 x 128 tokens) for the perplexity before / after the exit fine-tune
TRAINED_EVAL_BATCHES = 8

#: the learned exit decision on the exit-trained patient (CALM's classifier): its variants
#: (name -> ExitClassifier options): every block with all features; the head-reading
#: features checked only after blocks 2 and 4 (fewer head products); the state signals only
RULE_VARIANTS = {
    "learned": {},
    "learned, every other block": {"check_layers": [1, 3]},
    "state only": {"features": ["state_cos", "state_change"]},
}
#: calibration text, disjoint from the sweep's validation windows: (windows to fit the
#: classifiers on, windows of the early-exit runs that choose the threshold), both taken
#: from the val split right after :data:`SWEEP_SEQS`
RULE_FIT_SEQS, RULE_CAL_SEQS = 160, 24
#: thresholds tried on the calibration runs and swept on validation for the frontier
RULE_THRESHOLDS = (1.0, 0.97, 0.95, 0.93, 0.91, 0.89, 0.87, 0.85, 0.8, 0.7)

MOD_PATIENT = "tiny"
MOD_LAYERS = (1, 3)
MOD_CAPACITIES = (1.0, 0.5, 0.25, 0.125)
MOD_TRAIN = dict(steps=100, batch_size=16, seq_len=128, lr=1e-3, warmup_steps=10, eval_every=0, eval_batches=8, seed=0)
MOD_EVAL_BATCHES = 8


def windows(split: str, n: int, length: int) -> torch.Tensor:
    """The first ``n * length`` tokens of a split as (n, length) windows."""
    ids = data.encode_split(split)
    if n * length > len(ids):
        raise ValueError(f"split {split!r} has {len(ids)} tokens, fewer than {n} x {length}")
    return torch.from_numpy(ids[: n * length].astype("int64")).view(n, length)


def sweep_ids() -> torch.Tensor:
    return windows("val", *SWEEP_SEQS)


def calibration_ids(n: int) -> torch.Tensor:
    """``n`` validation-split windows right after the sweep's (never the text the rule is judged on)."""
    first, length = SWEEP_SEQS
    return windows("val", first + n, length)[first:]


def _round(row: dict, digits: int = 4) -> dict:
    return {k: round(v, digits) if isinstance(v, float) else v for k, v in row.items()}


def best_point(rows: list[dict], *, agreement: float = TARGET_AGREEMENT) -> dict | None:
    """The sweep row with the fewest layers among those keeping ``agreement`` (None if none does)."""
    ok = [r for r in rows if r["agreement"] >= agreement]
    return min(ok, key=lambda r: (r["layer_fraction"], -r["agreement"])) if ok else None


def build_exit(progress: bool = True) -> tuple[dict, depth.ExitHeads]:
    """Train the exit adapters and sweep thresholds; returns (record, heads)."""
    p = zoo.load(EXIT_PATIENT)
    model = p.model.eval()
    t0 = time.perf_counter()
    heads, hist = depth.train_exit_heads(model, windows("train", *EXIT_DATA), rank=EXIT_RANK, **EXIT_TRAIN)
    heads = heads.half().float()  # what is stored is what is measured
    train_s = time.perf_counter() - t0
    ids = sweep_ids()
    sweeps = {}
    for rule, name in SWEEPS:
        rows = depth.exit_sweep(model, ids, THRESHOLDS, rule=rule, heads=heads if name == "trained" else None)
        sweeps[f"{rule}/{name}"] = [_round(r) for r in rows]
        if progress:
            best = best_point(rows)
            print(f"  {rule}/{name}: best at >= {TARGET_AGREEMENT}: {best and _round(best)}", flush=True)
    record = {
        "patient": EXIT_PATIENT,
        "rank": EXIT_RANK,
        "data": list(EXIT_DATA),
        "train": EXIT_TRAIN,
        "train_loss": [round(v, 4) for v in hist[:: max(1, len(hist) // 60)]] + [round(hist[-1], 4)],
        "train_seconds": round(train_s, 1),
        "sweep_seqs": list(SWEEP_SEQS),
        "thresholds": list(THRESHOLDS),
        "sweeps": sweeps,
    }
    return record, heads


def lens_agreement(model, ids) -> list[float]:
    """Per block, the share of positions of ``ids`` (B, T) whose exit there (shared head, no
    adapter, teacher-forced) predicts the same next token as the same model's full depth."""
    with torch.no_grad():
        hs = depth.hidden_states(model, ids)
        full = depth.exit_logits(model, hs[-1], len(hs) - 1).argmax(-1)
        return [float((depth.exit_logits(model, h, i).argmax(-1) == full).float().mean()) for i, h in enumerate(hs)]


def build_trained(progress: bool = True) -> tuple[dict, dict]:
    """Fine-tune the small patient to exit early (LayerSkip) and sweep thresholds on it.

    Agreement is measured against the full depth of the *exit-trained* model (the model the
    exits belong to); the perplexity of both models on the same validation windows says what
    the fine-tune cost. Returns (record, the fp16 low-rank delta to store).
    """
    p = zoo.load(EXIT_PATIENT)
    base = p.model.eval()
    val_ids = data.encode_split("val")
    t0 = time.process_time()
    model, delta, hist = depth.train_for_exit(base, data.encode_split("train"), progress=progress, **TRAINED)
    train_cpu = time.process_time() - t0
    ids = sweep_ids()
    loss = {
        name: evaluate(m, val_ids, seq_len=TRAINED["seq_len"], batch_size=16, max_batches=TRAINED_EVAL_BATCHES)
        for name, m in (("base", base), ("trained", model))
    }
    sweeps = {}
    for rule in TRAINED_SWEEPS:
        rows = depth.exit_sweep(model, ids, TRAINED_THRESHOLDS, rule=rule)
        sweeps[rule] = [_round(r) for r in rows]
        if progress:
            best = best_point(rows)
            print(f"  exit-trained {rule}: best at >= {TARGET_AGREEMENT}: {best and _round(best)}", flush=True)
    every = max(1, len(hist) // 60)
    record = {
        "patient": EXIT_PATIENT,
        "train": TRAINED,
        "dropout": [round(v, 4) for v in depth.layer_dropout_rates(base.config.n_layers, TRAINED["max_dropout"])],
        "exit_weights": [round(v, 4) for v in depth.exit_loss_weights(base.config.n_layers, TRAINED["exit_scale"])],
        "train_loss": {"step": list(range(0, len(hist), every)), "per_layer": hist[::every]},
        "train_cpu_seconds": round(train_cpu, 1),
        "delta_params": sum(v.numel() for v in delta.values()),
        "val_loss": {k: round(v, 4) for k, v in loss.items()},
        "val_ppl": {k: round(math.exp(v), 2) for k, v in loss.items()},
        "lens_agreement": {
            "base": [round(v, 4) for v in lens_agreement(base, ids)],
            "trained": [round(v, 4) for v in lens_agreement(model, ids)],
        },
        "thresholds": list(TRAINED_THRESHOLDS),
        "sweeps": sweeps,
    }
    return record, delta


def build_rule(model, progress: bool = True) -> dict:
    """Fit CALM-style exit classifiers on the exit-trained patient, choose each one's threshold
    on calibration text, and judge it on the sweep's validation windows.

    Per variant of :data:`RULE_VARIANTS`: the classifier is fitted on :data:`RULE_FIT_SEQS`
    windows (teacher-forced features, :func:`course_lib.depth.fit_exit_classifier`); the
    threshold is the cheapest of :data:`RULE_THRESHOLDS` whose *real* early-exit run (KV
    copying included) on :data:`RULE_CAL_SEQS` other windows keeps the target agreement; the
    replayed teacher-forced choice (:func:`course_lib.depth.calibrate_exit_threshold`) is
    stored beside it, to show what state copying costs. Then the validation sweep (the same
    windows as the stored ones) gives the frontier and the chosen point's numbers.
    ``model`` is the exit-trained patient (:func:`load_exit_trained`).
    """
    t0 = time.process_time()
    fit_ids = calibration_ids(RULE_FIT_SEQS)
    cal_ids = fit_ids[:RULE_CAL_SEQS]  # the threshold runs: a subset of the calibration text
    val = sweep_ids()
    variants = {}
    for name, options in RULE_VARIANTS.items():
        clf = depth.fit_exit_classifier(model, fit_ids, **options)
        x, y = depth.exit_classifier_data(model, fit_ids, clf)
        replay = depth.calibrate_exit_threshold(clf, x, y, target=TARGET_AGREEMENT)
        cal_rows = depth.exit_sweep(model, cal_ids, RULE_THRESHOLDS, rule="learned", classifier=clf)
        chosen = best_point(cal_rows)
        val_rows = depth.exit_sweep(model, val, RULE_THRESHOLDS, rule="learned", classifier=clf)
        point = next(r for r in val_rows if r["threshold"] == chosen["threshold"])
        variants[name] = {
            "options": options,
            "classifier": clf.to_dict(),
            "replay_calibration": _round(replay),
            "calibration": [_round({k: v for k, v in r.items() if k != "exit_counts"}) for r in cal_rows],
            "threshold": chosen["threshold"],
            "validation": _round(point),
            "sweep": [_round(r) for r in val_rows],
        }
        if progress:
            print(f"  rule {name}: threshold {chosen['threshold']} -> validation {_round(point)}", flush=True)
    return {
        "patient": EXIT_PATIENT,
        "model": "exit_trained",
        "fit_windows": RULE_FIT_SEQS,
        "calibration_windows": RULE_CAL_SEQS,
        "thresholds": list(RULE_THRESHOLDS),
        "variants": variants,
        "cpu_seconds": round(time.process_time() - t0, 1),
    }


def load_exit_rule(name: str = "learned", stored: dict | None = None) -> depth.ExitClassifier:
    """The stored exit classifier of variant ``name`` (:data:`RULE_VARIANTS`)."""
    stored = load_runs() if stored is None else stored
    if not stored.get("exit_rule"):
        raise ValueError(f"no exit_rule section in {RUNS_FILE}: run {COMMAND} --part rule")
    variants = stored["exit_rule"]["variants"]
    if name not in variants:
        raise ValueError(f"name must be one of {list(variants)}, got {name!r}")
    return depth.ExitClassifier.from_dict(variants[name]["classifier"])


class _Skip(torch.nn.Module):
    """A block removed: the residual stream passes unchanged (MoD's capacity-0 limit)."""

    def __init__(self, block):
        super().__init__()
        self.attn = block.attn  # the model reads attention shapes from its blocks

    def forward(self, x, cos, sin, cache=None):
        return x


def mod_run(capacity: float | str, *, progress: bool = True) -> dict:
    """Fine-tune the tiny patient with :data:`MOD_LAYERS` routed at ``capacity`` (or dropped)."""
    p = zoo.load(MOD_PATIENT)
    cfg = TrainConfig(**MOD_TRAIN)
    train_ids, val_ids = data.encode_split("train"), data.encode_split("val")
    if capacity == "drop":
        model = depth.mod_model(p.model, layers=list(MOD_LAYERS), capacity=1.0)
        for i in MOD_LAYERS:
            model.blocks[i] = _Skip(model.blocks[i].block)
        flops = depth.mod_flops_per_token(p.model, cfg.seq_len)
        dropped = sum(depth.block_flops(p.model.blocks[i], cfg.seq_len)["total"] for i in MOD_LAYERS)
        blocks = flops["dense"] - 2 * p.model.lm_head.in_features * p.model.lm_head.out_features
        flops["total"] -= dropped
        flops["fraction"] = flops["total"] / flops["dense"]
        flops["block_fraction"] = (blocks - dropped) / blocks
    else:
        model = depth.mod_model(p.model, layers=list(MOD_LAYERS), capacity=capacity, seed=cfg.seed)
        flops = depth.mod_flops_per_token(model, cfg.seq_len)
    torch.manual_seed(cfg.seed)
    before = evaluate(model, val_ids, seq_len=cfg.seq_len, batch_size=16, max_batches=MOD_EVAL_BATCHES)
    hist = train(model, train_ids, None, cfg, progress=progress, desc=f"mod:{capacity}")
    after = evaluate(model, val_ids, seq_len=cfg.seq_len, batch_size=16, max_batches=MOD_EVAL_BATCHES)
    out = {
        "capacity": capacity,
        "flops_fraction": round(flops["fraction"], 4),
        "block_flops_fraction": round(flops["block_fraction"], 4),
        "flops_per_token": round(flops["total"]),
        "dense_flops_per_token": round(flops["dense"]),
        "val_loss_before": round(before, 4),
        "val_loss": round(after, 4),
        "loss": [round(v, 4) for v in hist.loss],
        "train_seconds": round(hist.seconds, 1),
    }
    if capacity != "drop":  # which tokens the first routed block picks on a validation passage
        ids = windows("val", 1, 48)
        with torch.no_grad():
            model(ids)
        out["sample_ids"] = ids[0].tolist()
        out["sample_selected"] = model.blocks[MOD_LAYERS[0]].last_selected[0].tolist()
    return out


PARTS = ("exit", "mod", "trained", "rule")


def build(*, parts=PARTS, progress: bool = True, threads: int = 1, path: Path | None = None) -> dict:
    """Run ``parts`` ("exit": adapters + sweep; "mod": the MoD fine-tunes; "trained": the
    exit fine-tune + its sweep; "rule": the learned exit decision on the exit-trained patient) and write ``depth_runs.json`` (and, for "exit",
    ``depth_exit_heads.safetensors``; for "trained", ``depth_exit_trained.safetensors``) atomically.

    A part rewrites its own section of the JSON and keeps the others', so the parts can
    run in separate processes (``--part exit`` / ``--part mod`` / ``--part trained``).
    """
    parts = list(parts)
    for part in parts:
        if part not in PARTS:
            raise ValueError(f"parts must be chosen from {list(PARTS)}, got {part!r}")
    path = Path(path) if path is not None else ZOO_DIR / RUNS_FILE
    heads_path = path.parent / HEADS_FILE
    trained_path = path.parent / TRAINED_FILE
    sections = {}
    with measure.num_threads(threads):
        if "exit" in parts:
            sections["early_exit"], heads = build_exit(progress)
            state = {k: v.detach().half().contiguous() for k, v in heads.state_dict().items()}
            atomic_write_bytes(heads_path, safetensors_bytes(state, {"command": COMMAND, "rank": str(EXIT_RANK)}))
        if "trained" in parts:
            sections["exit_trained"], delta = build_trained(progress)
            meta = {"command": COMMAND, "patient": EXIT_PATIENT, "train": json.dumps(TRAINED)}
            atomic_write_bytes(trained_path, safetensors_bytes(delta, meta))
        if "rule" in parts:  # after "trained": the rule belongs to the exit-trained patient
            if "trained" in parts:
                ls_model = depth.apply_exit_delta(zoo.load(EXIT_PATIENT).model, delta).eval()
            else:
                ls_model = load_exit_trained(None if path.resolve().parent == ZOO_DIR.resolve() else trained_path)
            sections["exit_rule"] = build_rule(ls_model, progress)
        if "mod" in parts:
            mod = []
            for c in (*MOD_CAPACITIES, "drop"):
                mod.append(mod_run(c, progress=progress))
                if progress:
                    print(f"  MoD capacity {c}: val loss {mod[-1]['val_loss']}, FLOPs x{mod[-1]['flops_fraction']}")
            sections["mod"] = {"patient": MOD_PATIENT, "layers": list(MOD_LAYERS), "train": MOD_TRAIN, "runs": mod}
    for section in sections.values():  # the parts may be built apart, with different thread counts
        section["threads"] = threads
    old = json.loads(path.read_text()) if path.is_file() else {}  # re-read: the other part may have written
    result = {
        "command": COMMAND,
        "machine": fingerprint.machine(),
        "built_with": {"torch": torch.__version__, "threads": threads},
        "early_exit": old.get("early_exit"),
        "mod": old.get("mod"),
        "exit_trained": old.get("exit_trained"),
        "exit_rule": old.get("exit_rule"),
        "targets": {"agreement": TARGET_AGREEMENT, "layers": TARGET_LAYERS},
        **sections,
    }
    atomic_write_bytes(path, (json.dumps(result, separators=(",", ":")) + "\n").encode())
    if path.resolve().parent == ZOO_DIR.resolve():
        if "exit" in parts:
            record_artefact(heads_path, rebuild=COMMAND)
        if "trained" in parts:
            record_artefact(trained_path, rebuild=COMMAND)
        record_artefact(path, rebuild=COMMAND)
    return result


def load_runs(path: Path | None = None) -> dict:
    """The stored depth runs (``python -m course_lib.build depth`` writes them)."""
    return load_json(RUNS_FILE, path)


def load_exit_heads(path: Path | None = None) -> depth.ExitHeads:
    """The trained exit adapters of the small patient (fp16 on disk, float32 here)."""
    path = stored_file(HEADS_FILE, path)
    state = {k: v.float() for k, v in load(path.read_bytes()).items()}
    cfg = zoo.RECIPES[EXIT_PATIENT][0]
    heads = depth.ExitHeads(cfg.d_model, cfg.n_layers - 1, rank=EXIT_RANK)
    heads.load_state_dict(state)
    return heads.eval()


def load_exit_trained(path: Path | None = None):
    """The small patient fine-tuned to exit early: its stored fp16 low-rank update merged into
    the zoo's small patient (:func:`course_lib.depth.apply_exit_delta`); a plain TinyLM."""
    path = stored_file(TRAINED_FILE, path)
    return depth.apply_exit_delta(zoo.load(EXIT_PATIENT).model, load(path.read_bytes())).eval()


# --------------------------------------------------------------------------- figures (pure builders)

#: legend names of the stored sweeps
SWEEP_NAMES = {
    "max_prob/lens": "max prob, logit lens",
    "max_prob/trained": "max prob, trained exits",
    "top2_gap/trained": "top-2 gap, trained exits",
    "classifier/trained": "probe, trained exits",
}
#: legend names of the sweeps on the exit-trained patient (agreement with its own full depth)
TRAINED_NAMES = {"max_prob": "max prob, LayerSkip-trained", "top2_gap": "top-2 gap, LayerSkip-trained"}


def _sweep_lines(stored: dict) -> list[tuple[str, str, list[dict]]]:
    """(key, legend name, rows) of every stored sweep: the frozen patient's, then the exit-trained one's."""
    lines = [(k, name, stored["early_exit"]["sweeps"][k]) for k, name in SWEEP_NAMES.items()]
    trained = stored.get("exit_trained")
    if trained:
        lines += [(f"{k}/exit-trained", name, trained["sweeps"][k]) for k, name in TRAINED_NAMES.items()]
    return lines


def sweep_figure(stored: dict):
    """Agreement with the full model against the share of layers (left) and of FLOPs (right)
    used, one line per stored sweep (the exit-trained model's dashed, each judged against its
    own full depth); the dashed grey lines are the issue's targets."""
    from plotly.subplots import make_subplots

    from course_lib.viz import PALETTE, use_style

    use_style()
    targets = stored["targets"]
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, subplot_titles=("blocks run", "FLOPs, exit checks included"))
    for (key, label, rows), colour in zip(_sweep_lines(stored), PALETTE):
        dash = "dash" if key.endswith("exit-trained") else "solid"
        for col, field in ((1, "layer_fraction"), (2, "flops_fraction")):
            _frontier(fig, rows, field, col, label=label, group=key, colour=colour, dash=dash, share=".2f")
            fig.add_vline(x=targets["layers"], line=dict(color="grey", dash="dash"), row=1, col=col)
            fig.add_hline(y=targets["agreement"], line=dict(color="grey", dash="dash"), row=1, col=col)
    fig.update_xaxes(title_text="share of the full model")
    fig.update_yaxes(title_text="agreement with the full model", row=1, col=1)
    fig.update_layout(title="Early exit on the small patient: quality against compute", height=440)
    return fig


def _frontier(fig, rows, field: str, col: int, *, label: str, group: str, colour: str, dash: str, share: str):
    """One sweep's agreement against ``field`` (a share of the full model) in column ``col``."""
    fig.add_scatter(
        x=[r[field] for r in rows],
        y=[r["agreement"] for r in rows],
        mode="lines+markers",
        name=label,
        legendgroup=group,
        showlegend=col == 1,
        line=dict(color=colour, dash=dash),
        customdata=[r["threshold"] for r in rows],
        hovertemplate=f"threshold %{{customdata}}<br>share %{{x:{share}}}<br>agreement %{{y:.3f}}<extra>{label}</extra>",
        row=1,
        col=col,
    )


def rule_figure(stored: dict, *, oracle: float | None = None):
    """The learned exit rules' validation frontiers (solid; the point each chose on calibration
    ringed) beside the softmax rules of the same exit-trained patient (dashed): agreement
    with its full depth against the share of blocks (left) and of FLOPs, checks included
    (right). ``oracle``: the blocks a perfect rule would run, drawn at 100 % agreement."""
    from plotly.subplots import make_subplots

    from course_lib.viz import PALETTE, use_style

    use_style()
    targets = stored["targets"]
    old = [(TRAINED_NAMES[k], rows, "dash") for k, rows in stored["exit_trained"]["sweeps"].items()]
    new = [(name, v["sweep"], "solid") for name, v in stored["exit_rule"]["variants"].items()]
    chosen = {name: v["validation"] for name, v in stored["exit_rule"]["variants"].items()}
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, subplot_titles=("blocks run", "FLOPs, exit checks included"))
    for (label, rows, dash), colour in zip(old + new, PALETTE):
        for col, field in ((1, "layer_fraction"), (2, "flops_fraction")):
            _frontier(fig, rows, field, col, label=label, group=label, colour=colour, dash=dash, share=".3f")
            if label in chosen:
                fig.add_scatter(
                    x=[chosen[label][field]],
                    y=[chosen[label]["agreement"]],
                    mode="markers",
                    marker=dict(color=colour, size=14, symbol="circle-open", line=dict(width=2)),
                    name=f"{label}: threshold chosen on calibration",
                    legendgroup=label,
                    showlegend=False,
                    hovertemplate=f"chosen on calibration: threshold {chosen[label]['threshold']:g}<extra></extra>",
                    row=1,
                    col=col,
                )
            fig.add_vline(x=targets["layers"], line=dict(color="grey", dash="dash"), row=1, col=col)
            fig.add_hline(y=targets["agreement"], line=dict(color="grey", dash="dash"), row=1, col=col)
    if oracle is not None:
        fig.add_scatter(
            x=[oracle],
            y=[1.0],
            mode="markers",
            marker=dict(color="black", size=12, symbol="star"),
            name="a perfect rule",
            row=1,
            col=1,
        )
    fig.update_xaxes(title_text="share of the full depth")
    fig.update_yaxes(title_text="agreement with the full depth", row=1, col=1)
    fig.update_layout(title="Exit rules of the exit-trained patient on validation text", height=460)
    return fig


def mod_figure(stored: dict):
    """Validation loss after the short fine-tune against the FLOPs share, per capacity."""
    from course_lib.viz import PALETTE, figure

    runs = stored["mod"]["runs"]
    fig = figure(
        title="Mixture-of-Depths on the tiny patient: loss against compute",
        xaxis_title="FLOPs per token, share of the dense model",
        yaxis_title="validation loss (nats)",
        height=400,
    )
    routed = [r for r in runs if r["capacity"] != "drop"]
    fig.add_scatter(  # the curve; each run is its own legend entry (no point labels to collide)
        x=[r["flops_fraction"] for r in routed],
        y=[r["val_loss"] for r in routed],
        mode="lines",
        line=dict(color="grey", width=1),
        showlegend=False,
        hoverinfo="skip",
    )
    for r, colour in zip(routed, PALETTE):
        fig.add_scatter(
            x=[r["flops_fraction"]],
            y=[r["val_loss"]],
            mode="markers",
            name=f"capacity {r['capacity']:g}",
            marker=dict(color=colour, size=10),
        )
    for r in runs:
        if r["capacity"] == "drop":
            fig.add_scatter(
                x=[r["flops_fraction"]],
                y=[r["val_loss"]],
                mode="markers",
                name="two blocks removed",
                marker=dict(color=PALETTE[7], size=11, symbol="x"),
            )
    return fig


# --------------------------------------------------------------------------- the widget's data and figure


def exit_widget_data(model, heads, ids, pieces: list[str], thresholds, *, rule: str = "max_prob", tau: float = 0.1):
    """Everything the threshold widget draws, precomputed for one sentence ``ids`` (1, T).

    Per threshold: each token's exit layer, the FLOPs share and the agreement with the full
    model; once: the share of MLP neurons that *fire* (:math:`|a| > \\tau`) per layer and
    token, from :func:`course_lib.conditional.capture_activations` on the full model (the
    layers an exited token skips are never computed, so the figure blanks them).
    """
    from course_lib import conditional

    with torch.no_grad():
        full = model(ids)[0].argmax(-1)  # (T,)
    acts = conditional.capture_activations(model, ids)  # L x (1, T, d_ff)
    firing = torch.stack([(a[0].abs() > tau).float().mean(-1) for a in acts])  # (L, T)
    per = {}
    for thr in thresholds:
        r = depth.early_exit_forward(model, ids, threshold=thr, rule=rule, heads=heads)
        fl = depth.early_exit_flops(model, r.exit_layer, heads=heads, rule=rule, seq_len=ids.shape[1])
        per[float(thr)] = {
            "exit_layer": r.exit_layer[0].tolist(),
            "flops_fraction": fl["fraction"],
            "layer_fraction": fl["layer_fraction"],
            "agreement": float((r.logits[0].argmax(-1) == full).float().mean()),
        }
    return {"pieces": list(pieces), "firing": firing.tolist(), "tau": tau, "rule": rule, "per": per}


def exit_widget_figure(wd: dict, *, threshold: float):
    """Heatmap: layers (rows) x tokens (columns), colour = share of MLP neurons firing; the
    layers a token skips after its exit are blank. The title gives FLOPs and agreement."""
    import plotly.graph_objects as go

    from course_lib.viz import HEATMAP_SCALE, figure

    key = min(wd["per"], key=lambda t: abs(float(t) - threshold))
    point = wd["per"][key]
    firing = wd["firing"]
    n_layers, t = len(firing), len(wd["pieces"])
    z = [[firing[layer][j] if layer <= point["exit_layer"][j] else None for j in range(t)] for layer in range(n_layers)]
    shown = [p.strip() or ("↵" if "\n" in p else "␣") for p in wd["pieces"]]  # newlines and spaces made visible
    labels = [f"{j}:{p}" for j, p in enumerate(shown)]
    fig = figure(
        title=(
            f"threshold {float(key):g}: {point['layer_fraction']:.0%} of the layers, "
            f"{point['flops_fraction']:.0%} of the FLOPs, {point['agreement']:.0%} agreement"
        ),
        xaxis_title="token",
        yaxis_title="block",
        height=360,
    )
    fig.add_trace(
        go.Heatmap(
            z=z,
            x=labels,
            y=[str(i + 1) for i in range(n_layers)],
            colorscale=HEATMAP_SCALE,
            zmin=0,
            zmax=1,
            colorbar=dict(title=f"firing<br>|a|>{wd['tau']:g}"),
            hovertemplate="token %{x}<br>block %{y}<br>firing %{z:.0%}<extra></extra>",
            hoverongaps=False,
        )
    )
    fig.update_xaxes(tickangle=-60)
    return fig


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: numbers independent of cores)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--part", choices=PARTS, action="append", help="run only this part (repeatable; default all)")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    build(parts=args.part or PARTS, progress=not args.quiet, threads=args.threads)
    print(f"wrote {RUNS_FILE} (and the part's weights) in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
