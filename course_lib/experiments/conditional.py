"""Chapter 04's runs (width half): ReLUfication fine-tunes, the CATS sweep, static pruning, Deja Vu predictors.

The algorithm is :mod:`course_lib.conditional`; this module *runs* it and stores results:

* **ReLUfication** on the ``tiny`` patient (training cost matters): SiLU -> ReLU (and ReLU
  on the MLP input too), each fine-tuned for :data:`FINETUNE` (the MLPs only), beside a
  control that fine-tunes the dense SiLU MLPs the same way, so extra training is not
  mistaken for the effect of ReLU. Perplexity and sparsity before and after.
* **CATS** on the ``small`` patient (no training): thresholds fitted on calibration text for
  each target sparsity of :data:`TARGETS`, the sparsity reached on validation text and the
  perplexity; beside it **static** structured pruning of the same fraction of neurons
  (chapter 06's operation, keeping the neurons most active on the calibration text).
* **Deja Vu** predictors (rank :data:`PREDICTOR_RANK`) for the CATS patient at
  :data:`PREDICTOR_SPARSITY`: recall of the truly active neurons and the perplexity when the
  MLPs run on the predicted neurons only.

Command (deterministic, ~5-10 min on 2 busy cores)::

    python -m course_lib.build conditional      # -> zoo_data/conditional_runs.json, conditional_weights.safetensors
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from course_lib import conditional as cond
from course_lib import data, fingerprint, prune, zoo
from course_lib.paths import ZOO_DIR, atomic_write_bytes, load_json, record_artefact, safetensors_bytes, zoo_file
from course_lib.train import TrainConfig, evaluate

#: what ``python -m course_lib.build conditional`` writes into course_lib/zoo_data/
OUTPUTS = ("conditional_runs.json", "conditional_weights.safetensors")
COMMAND = "python -m course_lib.build conditional"

#: the ReLUfication fine-tune (MLPs only) of the tiny patient
FINETUNE = dict(steps=150, batch_size=16, seq_len=128, lr=1e-3, warmup_steps=10, eval_every=50, eval_batches=4, seed=0)
#: the ReLUfication variants: name -> relufy options (None: the dense SiLU control)
RELU_RUNS = {"silu (control)": None, "relu": dict(input_relu=False), "relu + input relu": dict(input_relu=True)}
#: CATS target sparsities (fraction of gate values zeroed on the calibration text)
TARGETS = (0.5, 0.7, 0.8, 0.9, 0.95)
PREDICTOR_SPARSITY = 0.9
PREDICTOR_RANK = 16
#: calibration and evaluation sizes: windows of SEQ tokens
CALIB_WINDOWS, EVAL_WINDOWS, SEQ = 16, 8, 128
EVAL_BATCHES = 4  # batches of 16 x 128 validation tokens for perplexity


def windows(split: str, n: int, seq_len: int = SEQ) -> torch.Tensor:
    """The first ``n`` consecutive windows of ``seq_len`` tokens of ``split``, (n, seq_len) long."""
    ids = data.encode_split(split)[: n * seq_len].astype("int64")
    return torch.as_tensor(ids).reshape(n, seq_len)


def ppl(model, val_ids, *, max_batches: int = EVAL_BATCHES) -> float:
    return math.exp(evaluate(model, val_ids, seq_len=SEQ, batch_size=16, max_batches=max_batches))


def _r(x: float, d: int = 4) -> float:
    return round(float(x), d)


# --------------------------------------------------------------------------- ReLUfication (tiny)


def relufication(*, progress: bool = True) -> tuple[dict, dict]:
    """Fine-tune each of :data:`RELU_RUNS` from the tiny patient; returns (records, relu MLP weights)."""
    base = zoo.load("tiny").model
    train_ids, val_ids = data.encode_split("train"), data.encode_split("val")
    probe = windows("val", 4)
    out, weights = {}, {}
    for name, opts in RELU_RUNS.items():
        torch.manual_seed(0)
        model = cond._as_conditional(base) if opts is None else cond.relufy(base, **opts)
        before = {"ppl": _r(ppl(model, val_ids), 2), "zeros": _r(cond.activation_stats(model, probe).mean_zeros)}
        hist = cond.finetune_mlp(model, train_ids, val_ids, TrainConfig(**FINETUNE), progress=progress)
        st = cond.activation_stats(model, probe, tau=0.01)
        out[name] = {
            "before": before,
            "after": {"ppl": _r(ppl(model, val_ids), 2), "zeros": _r(st.mean_zeros), "small": _r(st.mean_small)},
            "zeros_per_layer": [_r(z) for z in st.zeros],
            "val_step": hist.val_step,
            "val_ppl": [_r(math.exp(v), 2) for v in hist.val_loss],
            "seconds": round(hist.seconds, 1),
        }
        if name == "relu":
            weights = {
                k: v.detach().half() for k, v in model.state_dict().items() if ".mlp." in k and "threshold" not in k
            }
        print(f"relufication {name}: {out[name]['before']} -> {out[name]['after']}", file=sys.stderr, flush=True)
    out["dense"] = {"ppl": _r(ppl(base, val_ids), 2), "zeros": _r(cond.activation_stats(base, probe).mean_zeros)}
    return out, weights


def relu_patient() -> torch.nn.Module:
    """The tiny patient ReLUfied and fine-tuned by the build (its MLP weights from zoo_data)."""
    from safetensors.torch import load_file

    model = cond.relufy(zoo.load("tiny").model)
    state = load_file(zoo_file(OUTPUTS[1]))
    mlp = {k[len("relu.") :]: v.float() for k, v in state.items() if k.startswith("relu.")}
    missing, unexpected = model.load_state_dict(mlp, strict=False)
    if unexpected or any(".mlp." in k and "threshold" not in k for k in missing):
        raise ValueError(f"{OUTPUTS[1]} does not hold the relu MLP weights; rebuild with {COMMAND}")
    return model.eval()


# --------------------------------------------------------------------------- CATS and static pruning (small)


def static_keep(model, calib: torch.Tensor, sparsity: float) -> list[torch.Tensor]:
    """Per layer, the neurons a static pruning keeps: the most active on average (mean |a|)."""
    acts = cond.capture_activations(model, calib)
    return [prune.keep_highest(a.abs().mean((0, 1)), sparsity) for a in acts]


def statically_pruned(model, keeps: list[torch.Tensor]):
    """A copy of ``model`` with each MLP shrunk to the neurons ``keeps[l]`` (chapter 06)."""
    import copy

    new = copy.deepcopy(model)
    for spec, keep in zip(prune.layer_specs(new), keeps):
        prune.remove_neurons(new, spec, keep)
    return new.eval()


def cats_sweep() -> dict:
    """CATS and static pruning of the small patient at each of :data:`TARGETS`."""
    base = zoo.load("small").model
    calib, probe = windows("train", CALIB_WINDOWS), windows("val", 4)
    val_ids = data.encode_split("val")
    rows = []
    for s in TARGETS:
        th = cond.fit_thresholds(base, calib, sparsity=s)
        m = cond.thresholded(base, th)
        st = cond.activation_stats(m, probe)
        pruned = statically_pruned(base, static_keep(base, calib, s))
        rows.append(
            {
                "target": s,
                "thresholds": [_r(t, 5) for t in th],
                "zeros": _r(st.mean_zeros),
                "zeros_per_layer": [_r(z) for z in st.zeros],
                "ppl": _r(ppl(m, val_ids), 2),
                "static_ppl": _r(ppl(pruned, val_ids), 2),
            }
        )
        print(
            f"cats {s}: {rows[-1]['zeros']} zeros, ppl {rows[-1]['ppl']}, static {rows[-1]['static_ppl']}",
            file=sys.stderr,
            flush=True,
        )
    return {"dense_ppl": _r(ppl(base, val_ids), 2), "rows": rows}


# --------------------------------------------------------------------------- Deja Vu (small, CATS)


def predictors(sparsity: float = PREDICTOR_SPARSITY, rank: int = PREDICTOR_RANK) -> tuple[dict, dict]:
    """Train one predictor per layer of the CATS small patient; recall and perplexity."""
    base = zoo.load("small").model
    calib, test = windows("train", CALIB_WINDOWS), windows("val", 4)
    model = cond.thresholded(base, cond.fit_thresholds(base, calib, sparsity=sparsity))
    val_ids = data.encode_split("val")
    xs, xt = cond.capture_mlp_inputs(model, calib), cond.capture_mlp_inputs(model, test)
    preds, layers = [], []
    for blk, x, x_test in zip(model.blocks, xs, xt):
        x, x_test = x.reshape(-1, x.shape[-1]), x_test.reshape(-1, x_test.shape[-1])
        p = cond.train_predictor(x, cond.active_mask(blk.mlp, x), rank=rank, pos_weight=3.0)
        truth = cond.active_mask(blk.mlp, x_test)
        layers.append({k: _r(v) for k, v in cond.predictor_recall(p.predict(x_test), truth).items()})
        preds.append(p)
    res = {
        "sparsity": sparsity,
        "rank": rank,
        "layers": layers,
        "cats_ppl": _r(ppl(model, val_ids), 2),
        "predicted_ppl": _r(ppl(cond.with_predictors(model, preds), val_ids), 2),
        "thresholds": [_r(float(b.mlp.threshold), 5) for b in model.blocks],
    }
    weights = {f"predictor.{i}.{k}": v.detach().half() for i, p in enumerate(preds) for k, v in p.state_dict().items()}
    print(f"predictors: {res['cats_ppl']} -> {res['predicted_ppl']}", file=sys.stderr, flush=True)
    return res, weights


def load_predictors() -> list[cond.SparsityPredictor]:
    """The stored predictors of the CATS small patient, one per layer."""
    from safetensors.torch import load_file

    state = load_file(zoo_file(OUTPUTS[1]))
    out = []
    for i in range(zoo.card("small")["model_config"]["n_layers"]):
        sd = {k.split(".", 2)[2]: v.float() for k, v in state.items() if k.startswith(f"predictor.{i}.")}
        p = cond.SparsityPredictor(sd["down.weight"].shape[1], sd["up.weight"].shape[0], sd["down.weight"].shape[0])
        p.load_state_dict(sd)
        out.append(p.eval())
    return out


# --------------------------------------------------------------------------- build and read


def build(*, out_dir: Path | None = None, progress: bool = True) -> dict:
    """Run everything and write :data:`OUTPUTS` (atomically, with the machine fingerprint)."""
    out_dir = Path(out_dir) if out_dir is not None else ZOO_DIR
    torch.manual_seed(0)
    t0 = time.perf_counter()
    relu, relu_w = relufication(progress=progress)
    cats = cats_sweep()
    dv, dv_w = predictors()
    result = {
        "relufication": relu,
        "finetune": FINETUNE,
        "cats": cats,
        "predictor": dv,
        "build_seconds": round(time.perf_counter() - t0, 1),
        "command": COMMAND,
        "machine": fingerprint.machine(),
    }
    runs, wts = out_dir / OUTPUTS[0], out_dir / OUTPUTS[1]
    tensors = {**{f"relu.{k}": v for k, v in relu_w.items()}, **dv_w}
    atomic_write_bytes(wts, safetensors_bytes(tensors, {"command": COMMAND}))
    atomic_write_bytes(runs, (json.dumps(result, separators=(",", ":")) + "\n").encode())
    if out_dir.resolve() == ZOO_DIR.resolve():
        record_artefact(wts, rebuild=COMMAND)
        record_artefact(runs, rebuild=COMMAND)
    return result


def load_runs() -> dict:
    """The stored results of :func:`build`."""
    return load_json(OUTPUTS[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", type=Path, default=None, help="where to write (default: course_lib/zoo_data)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    res = build(out_dir=args.out_dir, progress=not args.no_progress)
    print(f"built in {res['build_seconds']} s -> {', '.join(OUTPUTS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
