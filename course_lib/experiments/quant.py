"""Chapter 05's runs: the method x bits x group-size grid on the patient and on MiniLM, W8A8, latency, QAT.

The algorithm is :mod:`course_lib.quant`; this module *runs* it. The evaluation protocol the
notebook shares with the build — calibration windows (:func:`patient_calibration`,
:func:`minilm_calibration`), the patient's perplexity (:func:`patient_ppl`), MiniLM's
retrieval quality (:func:`minilm_eval`) and a short QAT fine-tune (:func:`qat_finetune`) —
is here, beside :func:`build_grid`, which computes the chapter's trade-off grid
deterministically into ``course_lib/zoo_data/quant_grid.json``, and :func:`load_grid` /
:func:`grid_point`, which read it::

    python -m course_lib.build quant                # both parts -> course_lib/zoo_data/quant_grid.json
    python -m course_lib.build quant patient        # or one part (merged into the file)
    python -m course_lib.build quant latency qat    # only redo the patient's timings / QAT runs

It needs the zoo patient "small" and MiniLM's cached extract embeddings
(``python -m course_lib.encoder build``). Cost on a shared 2-core CPU (the file's
``built_with`` records each part's seconds and machine): ``minilm`` about 7 minutes;
``patient`` (36 configurations evaluated on 32,768 tokens, twelve latency runs, three 100-step
fine-tunes) well over an hour — rebuild its parts separately (``latency``, ``qat``) when only
those change.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time

import torch
from torch import nn

from course_lib import data, encoder, fingerprint, measure, zoo
from course_lib.checks import check_choice
from course_lib.paths import ZOO_DIR, atomic_write_bytes, record_artefact, zoo_file
from course_lib.quant import convert_qat, prepare_qat, quantize_model
from course_lib.train import TrainConfig, train

#: what ``python -m course_lib.build quant`` writes into course_lib/zoo_data/
OUTPUTS = ("quant_grid.json",)
GRID_PATH = ZOO_DIR / OUTPUTS[0]
COMMAND = "python -m course_lib.build quant"

# --------------------------------------------------------------------------- the evaluation protocol

#: Evaluation protocol of the patient: validation windows of 256 tokens, batches of 8.
EVAL = dict(seq_len=256, batch_size=8)
#: Quick evaluation (first 4 batches = 8,192 tokens) the notebook repeats live; the grid also has 16.
QUICK_BATCHES, FULL_BATCHES = 4, 16
PATIENT_GRID = dict(methods=("rtn", "gptq", "awq"), bits=(2, 3, 4, 8), groups=(32, 64, None))
#: MiniLM's grid skips group 32 so that its build stays under ten minutes on two cores.
MINILM_GRID = dict(methods=("rtn", "gptq", "awq"), bits=(2, 3, 4, 8), groups=(64, None))
#: Articles of the test split whose extracts are embedded by each quantized MiniLM (both sides).
N_BOTH, EXTRACT_TOKENS = 100, 128


def patient_calibration(n_seqs: int = 8, seq_len: int = 256, *, seed: int = 0) -> torch.Tensor:
    """Calibration token windows (n_seqs, seq_len), drawn with a seeded generator from the train split."""
    gen = torch.Generator().manual_seed(seed)
    x, _ = data.random_batch(data.encode_split("train"), n_seqs, seq_len, gen)
    return x


@torch.no_grad()
def patient_ppls(model: nn.Module, batches: tuple[int, ...] = (QUICK_BATCHES, FULL_BATCHES)) -> list[float]:
    """Validation perplexities after the first ``b`` batches, for each ``b``, in one pass.

    The arithmetic is :func:`course_lib.train.evaluate`'s (mean of per-batch losses), so each
    value equals ``exp(evaluate(model, val, max_batches=b))``.
    """
    model.eval()
    device = next(model.parameters()).device
    wanted, out, total = sorted(batches), {}, 0.0
    for n, (x, y) in enumerate(data.eval_batches(data.encode_split("val"), max_batches=wanted[-1], **EVAL), start=1):
        total += model.loss(x.to(device), y.to(device)).item()
        if n in wanted:
            out[n] = math.exp(total / n)
    return [out[b] for b in batches]


def patient_ppl(model: nn.Module, *, batches: int = QUICK_BATCHES) -> float:
    """Validation perplexity on the first ``batches`` x 8 windows of 256 tokens."""
    return patient_ppls(model, (batches,))[0]


def minilm_calibration(n_texts: int = 32, length: int = 64) -> list[dict]:
    """MiniLM calibration inputs: train-split extracts cut to ``length`` tokens, no padding.

    Only extracts with at least ``length`` tokens are used, so every batch is full-length and
    no padding token pollutes the statistics.
    """
    tok = encoder.load_tokenizer()
    rows = []
    for a in data.articles("train"):
        ids = tok(a.extract, truncation=True, max_length=length)["input_ids"]
        if len(ids) == length:
            rows.append(ids)
        if len(rows) == n_texts:
            break
    ids = torch.tensor(rows)
    return [
        {"input_ids": b, "attention_mask": torch.ones_like(b), "token_type_ids": torch.zeros_like(b)}
        for b in ids.split(16)
    ]


def retrieval_set():
    """The test split's articles and their row numbers in ``data.load_articles()``."""
    index = {a.title: i for i, a in enumerate(data.load_articles())}
    arts = data.articles("test")
    return arts, torch.tensor([index[a.title] for a in arts])


def recall_at_k(queries: torch.Tensor, docs: torch.Tensor, targets: torch.Tensor, k: int = 5) -> float:
    """Share of queries whose own document is among the ``k`` most cosine-similar ``docs``."""
    top = (queries @ docs.t()).topk(k, dim=1).indices  # (Q, k)
    return (top == targets[:, None]).any(1).float().mean().item()


@torch.no_grad()
def minilm_eval(model: nn.Module, reference: dict | None = None, *, both: bool = True) -> dict:
    """Quality of a (quantized) MiniLM on the corpus' description -> extract retrieval task.

    * ``cosine``: mean cosine similarity of its description embeddings to fp32 MiniLM's;
    * ``recall5_query``: descriptions embedded by this model retrieve among all 10,033 extracts
      embedded by fp32 MiniLM (the cached index: quantize the query encoder, keep the index);
    * ``recall5_both``: the first ``N_BOTH`` test articles, extracts (first 128 tokens) also embedded by
      this model. ``reference`` (from ``minilm_eval(fp32_model)``) supplies the fp32 embeddings.
    """
    arts, rows = retrieval_set()
    q = encoder.embed([a.description or a.title for a in arts], model=model)
    out = {"queries": q, "recall5_query": recall_at_k(q, encoder.corpus_embeddings("extract"), rows)}
    if reference is not None:
        out["cosine"] = (q * reference["queries"]).sum(1).mean().item()
    if both:
        e = encoder.embed([a.extract for a in arts[:N_BOTH]], model=model, max_length=EXTRACT_TOKENS)
        out["recall5_both"] = recall_at_k(q[:N_BOTH], e, torch.arange(N_BOTH))
    return out


def qat_finetune(
    model: nn.Module,
    *,
    bits: int,
    group_size: int | None,
    steps: int = 100,
    lr: float = 1e-4,
    batch_size: int = 8,
    seq_len: int = 128,
    seed: int = 0,
    fake_quant: bool = True,
):
    """Fine-tune a copy of a TinyLM with fake-quantized weights (or, ``fake_quant=False``, in fp32
    as the control) and return (the model, converted to :class:`~course_lib.quant.QuantLinear` when fake-quantized,
    its training history)."""
    torch.manual_seed(seed)
    m = prepare_qat(model, bits=bits, group_size=group_size) if fake_quant else copy.deepcopy(model)
    cfg = TrainConfig(
        steps=steps,
        batch_size=batch_size,
        seq_len=seq_len,
        lr=lr,
        warmup_steps=max(1, steps // 10),
        eval_every=0,
        eval_batches=1,
        seed=seed,
    )
    hist = train(m, data.encode_split("train"), None, cfg, progress=False)
    return (convert_qat(m) if fake_quant else m.eval()), hist


# --------------------------------------------------------------------------- the precomputed grid


def _point(method, bits, group, **kw) -> dict:
    return {"method": method, "bits": bits, "group": "channel" if group is None else group, **kw}


W8A8_VARIANTS = {
    "W8A8 per-token": ("w8a8", dict(act_granularity="token")),
    "W8A8 per-tensor": ("w8a8", dict(act_granularity="tensor")),
    "W8A8 per-tensor + SmoothQuant": ("w8a8", dict(act_granularity="tensor", smooth_alpha=0.5)),
    "LLM.int8()": ("llm.int8", dict()),
}
#: The QAT recipe of the grid: a gentle fine-tune from the zoo checkpoint.
QAT = dict(steps=100, lr=1e-4, batch_size=8, seq_len=128)


def patient_latency(base: nn.Module, *, log=print) -> dict:
    """Prefill (64 tokens) and decode (16 tokens) time of RTN-quantized copies relative to fp32.

    Measured interleaved with the fp32 model on this machine; one entry per "bits/group".
    Timings are the only part of the grid that depends on the machine that built it.
    """
    lat = {}
    for bits in PATIENT_GRID["bits"]:
        for group in PATIENT_GRID["groups"]:
            qm, _ = quantize_model(base, "rtn", bits, group, embed_bits=8)
            variants = {"fp32": base, "q": qm}
            pre = measure.interleaved({k: measure.prefill_fn(m, prompt_len=64) for k, m in variants.items()}, repeats=7)
            dec = measure.interleaved(
                {k: measure.decode_fn(m, prompt_len=64, new_tokens=16) for k, m in variants.items()}, repeats=5
            )
            key = f"{bits}/{'channel' if group is None else group}"
            lat[key] = {
                "prefill_ratio": pre["q"].median / pre["fp32"].median,
                "decode_ratio": dec["q"].median / dec["fp32"].median,
                "prefill_ms": pre["q"].median * 1e3,
                "decode_ms_per_token": dec["q"].median / 16 * 1e3,
            }
            log(key, lat[key])
    return lat


def patient_qat(base: nn.Module, *, log=print) -> list[dict]:
    """QAT at 2 and 3 bits (group 64) against RTN, with a control: the same fine-tuning in fp32,
    then RTN — so 'more training' and 'training through the quantizer' are told apart."""
    ctrl, _ = qat_finetune(base, bits=8, group_size=None, fake_quant=False, **QAT)
    rows = []
    for bits in (2, 3):
        rtn, _ = quantize_model(base, "rtn", bits, 64)
        tuned, hist = qat_finetune(base, bits=bits, group_size=64, **QAT)
        ctrl_q, _ = quantize_model(ctrl, "rtn", bits, 64)
        row = {
            "bits": bits,
            "group": 64,
            **QAT,
            "tokens": QAT["steps"] * QAT["batch_size"] * QAT["seq_len"],
            "rtn_ppl": patient_ppls(rtn, (FULL_BATCHES,))[0],
            "qat_ppl": patient_ppls(tuned, (FULL_BATCHES,))[0],
            "fp32_finetuned_ppl": patient_ppls(ctrl, (FULL_BATCHES,))[0],
            "fp32_finetuned_then_rtn_ppl": patient_ppls(ctrl_q, (FULL_BATCHES,))[0],
            "train_seconds": round(hist.seconds, 1),
        }
        log(row)
        rows.append(row)
    return rows


def build_patient(name: str = "small", *, log=print) -> dict:
    """The patient's part of the grid: every method x bits x group, W8A8 variants, latency, QAT."""
    torch.manual_seed(0)
    base = zoo.load(name).model.eval()
    calib = patient_calibration()
    ppl, ppl_quick = patient_ppls(base, (FULL_BATCHES, QUICK_BATCHES))
    out = {
        "name": name,
        "params": base.num_params(),
        "fp32": {"bytes": measure.weight_bytes(base), "ppl": ppl, "ppl_quick": ppl_quick},
    }
    log(f"patient {name} fp32: {out['fp32']}")
    points = []
    for method in PATIENT_GRID["methods"]:
        for bits in PATIENT_GRID["bits"]:
            for group in PATIENT_GRID["groups"]:
                qm, rep = quantize_model(base, method, bits, group, calib, embed_bits=8)
                ppl, ppl_quick = patient_ppls(qm, (FULL_BATCHES, QUICK_BATCHES))
                pt = _point(
                    method,
                    bits,
                    group,
                    bytes=rep.bytes_after,
                    ratio=rep.ratio,
                    ppl=ppl,
                    ppl_quick=ppl_quick,
                    seconds=round(rep.seconds, 2),
                )
                log(pt)
                points.append(pt)
    out["points"] = points
    lat = patient_latency(base, log=log)
    out["latency"] = lat
    out["w8a8"] = []
    for label, (method, kw) in W8A8_VARIANTS.items():
        qm, rep = quantize_model(base, method, 8, None, calib, backend="emulated", **kw)
        out["w8a8"].append({"variant": label, "ppl": patient_ppls(qm, (FULL_BATCHES,))[0], "bytes": rep.bytes_after})
        log(out["w8a8"][-1])
    out["qat"] = patient_qat(base, log=log)
    return out


def build_minilm(*, log=print) -> dict:
    """MiniLM's part of the grid: every method x bits x group, and the W8A8 variants."""
    torch.manual_seed(0)
    bert = encoder.load_model()
    calib = minilm_calibration()
    ref = minilm_eval(bert)
    fp = {k: v for k, v in ref.items() if k != "queries"} | {"bytes": measure.weight_bytes(bert), "cosine": 1.0}
    out = {"fp32": fp, "n_queries": len(retrieval_set()[0]), "n_both": N_BOTH, "extract_tokens": EXTRACT_TOKENS}
    log(f"MiniLM fp32: {fp}")
    points = []
    for method in MINILM_GRID["methods"]:
        for bits in MINILM_GRID["bits"]:
            for group in MINILM_GRID["groups"]:
                qm, rep = quantize_model(bert, method, bits, group, calib, embed_bits=8)
                ev = minilm_eval(qm, ref)
                pt = _point(
                    method,
                    bits,
                    group,
                    bytes=rep.bytes_after,
                    ratio=rep.ratio,
                    cosine=ev["cosine"],
                    recall5_query=ev["recall5_query"],
                    recall5_both=ev["recall5_both"],
                    seconds=round(rep.seconds, 2),
                )
                log(pt)
                points.append(pt)
    out["points"] = points
    out["w8a8"] = []
    for label, (method, kw) in W8A8_VARIANTS.items():
        qm, rep = quantize_model(bert, method, 8, None, calib, backend="emulated", **kw)
        ev = minilm_eval(qm, ref)
        out["w8a8"].append(
            {"variant": label, "bytes": rep.bytes_after}
            | {k: ev[k] for k in ("cosine", "recall5_query", "recall5_both")}
        )
        log(out["w8a8"][-1])
    return out


BUILD_PARTS = ("patient", "minilm", "latency", "qat")


def build_grid(parts=("patient", "minilm"), *, log=print) -> dict:
    """Compute (parts of) the chapter's trade-off grid, deterministically, and merge into the file.

    Each part is merged into whatever the file holds when the part is done, so the two parts can
    be built by two processes at once. Each part records its torch, threads, seconds and machine
    (:func:`course_lib.fingerprint.machine`); the parts that time things (``patient``,
    ``latency``) also set the grid's ``machine``, which the notebook shows beside the stored
    latency ratios.
    """
    for part in parts:
        check_choice("parts", part, BUILD_PARTS)
    for part in parts:
        t0 = time.perf_counter()
        if part in ("latency", "qat"):  # redo one piece of the patient part (which must exist)
            base = zoo.load(load_grid()["patient"]["name"]).model.eval()
            result = patient_latency(base, log=log) if part == "latency" else patient_qat(base, log=log)
        else:
            result = build_patient(log=log) if part == "patient" else build_minilm(log=log)
        grid = json.loads(GRID_PATH.read_text()) if GRID_PATH.is_file() else {}
        if part in ("latency", "qat"):
            grid["patient"][part] = result
        else:
            grid[part] = result
        grid["command"] = COMMAND
        grid["eval"] = {
            "seq_len": EVAL["seq_len"],
            "batch_size": EVAL["batch_size"],
            "quick_batches": QUICK_BATCHES,
            "full_batches": FULL_BATCHES,
        }
        machine = fingerprint.machine()
        if part in ("patient", "latency"):
            grid["machine"] = machine  # the machine behind the stored timings
        grid.setdefault("built_with", {})[part] = {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "seconds": round(time.perf_counter() - t0),
            "machine": machine,
        }
        atomic_write_bytes(GRID_PATH, (json.dumps(grid, indent=1) + "\n").encode())
        record_artefact(GRID_PATH, rebuild=COMMAND)
    return grid


def load_grid() -> dict:
    """The precomputed grid (see :func:`build_grid`); raises with the build command when missing."""
    if not GRID_PATH.is_file():
        raise FileNotFoundError(f"no quantization grid at {GRID_PATH}; build it with:  {COMMAND}")
    return json.loads(zoo_file(GRID_PATH.name).read_text())


def grid_point(grid: dict, model: str, method: str, bits: int, group) -> dict:
    """The grid entry of one configuration (``group`` an int or ``"channel"``/None)."""
    g = "channel" if group in (None, -1, "channel") else group
    for p in grid[model]["points"]:
        if p["method"] == method and p["bits"] == bits and p["group"] == g:
            return p
    raise ValueError(f"no grid point for {model}: {method}, {bits} bits, group {group!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n")[0])
    parser.add_argument(
        "parts",
        nargs="*",
        metavar="PART",
        help=f"which parts (default: patient and minilm; any of {list(BUILD_PARTS)})",
    )
    args = parser.parse_args(argv)
    unknown = [p for p in args.parts if p not in BUILD_PARTS]
    if unknown:
        parser.error(f"unknown parts {unknown}; choose from {list(BUILD_PARTS)}")
    t0 = time.perf_counter()
    build_grid(tuple(args.parts) or ("patient", "minilm"))
    print(f"wrote {GRID_PATH} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
