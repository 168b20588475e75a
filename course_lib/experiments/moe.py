"""Chapter 02's runs: the dense and MoE patients trained side by side, their figures, expert parallelism.

The algorithm is :mod:`course_lib.moe`; this module *runs* it. :data:`RUNS` are six
patients of one shape (the zoo's tiny patient at context 128) trained with one recipe
(:data:`RUN_TRAIN`): dense, dense with the MoE's total parameters, and top-1 / top-2 MoE
with and without the load-balancing loss at equal FLOPs per token. :func:`build` trains
them and stores curves and router statistics in ``course_lib/zoo_data/moe_runs.json``;
:func:`load_runs` reads it back and :func:`expert_load_figure` /
:func:`token_routing_figure` draw it. :func:`expert_parallel_demo` runs
:func:`course_lib.moe.expert_parallel_forward` in local processes and checks it against
one process.

Commands (deterministic)::

    python -m course_lib.build moe [--jobs 3]                # train the runs -> zoo_data/moe_runs.json
    python -m course_lib.build moe --expert-parallel-demo    # 2 processes, gloo all_to_all, == 1 process
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from plotly.subplots import make_subplots

from course_lib import data, fingerprint, measure
from course_lib.model import ModelConfig, TinyLM
from course_lib.moe import (
    CAPACITY_PROBES,
    MoEMLP,
    RouterRecorder,
    capacity_sweep,
    coefficient_of_variation,
    expert_parallel_forward,
    routing_profile,
    token_routing,
)
from course_lib.paths import ZOO_DIR, atomic_write_bytes, cache_dir, load_json, record_artefact
from course_lib.train import TrainConfig, evaluate, save_checkpoint, train
from course_lib.viz import HEATMAP_SCALE, PALETTE, figure, use_style

#: what ``python -m course_lib.build moe`` writes into course_lib/zoo_data/
OUTPUTS = ("moe_runs.json",)

# --------------------------------------------------------------------------- the chapter's runs

#: The shared model shape of the chapter's runs (the zoo's tiny patient at context 128).
RUN_BASE = dict(vocab_size=4096, d_model=64, n_layers=4, n_heads=4, n_kv_heads=2, max_seq_len=128)
#: name -> ModelConfig overrides. Dense d_ff 176; MoE top-2 experts of 88 and top-1 experts
#: of 176 cost the same FLOPs per token; "dense-wide" has the MoE top-2 run's total parameters.
RUNS: dict[str, dict] = {
    "dense": dict(d_ff=176),
    "dense-wide": dict(d_ff=704),
    "moe-k2-aux": dict(mlp="moe", mlp_options=dict(n_experts=8, top_k=2, d_expert=88)),
    "moe-k2-noaux": dict(mlp="moe", mlp_options=dict(n_experts=8, top_k=2, d_expert=88, aux_loss_coef=0.0)),
    "moe-k1-aux": dict(mlp="moe", mlp_options=dict(n_experts=8, top_k=1, d_expert=176)),
    "moe-k1-noaux": dict(mlp="moe", mlp_options=dict(n_experts=8, top_k=1, d_expert=176, aux_loss_coef=0.0)),
}
RUN_TRAIN = dict(steps=300, batch_size=16, seq_len=128, lr=3e-3, warmup_steps=20, eval_every=25, eval_batches=4, seed=0)
RUNS_FILE = OUTPUTS[0]
POSITION_BUCKET = 8  # positions per bucket in the stored per-position statistics


def run_config(name: str) -> ModelConfig:
    if name not in RUNS:
        raise ValueError(f"unknown run {name!r}; choose one of {list(RUNS)}")
    return ModelConfig(**RUN_BASE, **RUNS[name])


def sample_passages(n: int = 2, n_tokens: int = 40) -> list[list[int]]:
    """The first ``n`` validation articles, cut to ``n_tokens`` tokens (for per-token routing)."""
    tok = data.get_tokenizer()
    return [tok.encode(a.text).ids[:n_tokens] for a in data.articles("val")[:n]]


def build_run(name: str, *, progress: bool = True) -> dict:
    """Train one of :data:`RUNS` with :data:`RUN_TRAIN` and return its record (curves, router stats)."""
    cfg, tcfg = run_config(name), TrainConfig(**RUN_TRAIN)
    tok = data.get_tokenizer(cfg.vocab_size)
    train_ids, val_ids = data.encode_split("train", tok), data.encode_split("val", tok)
    torch.manual_seed(tcfg.seed)
    model = TinyLM(cfg)
    rec = RouterRecorder(model, every=10) if cfg.mlp == "moe" else None

    def callback(step, model, loss):
        if rec is not None:
            rec(step, model, loss)
        if not progress and (step + 1) % 50 == 0:  # a heartbeat when the bar is off (parallel builds)
            print(f"  {name}: step {step + 1}/{tcfg.steps}, loss {loss:.3f}", file=sys.stderr, flush=True)

    hist = train(model, train_ids, val_ids, tcfg, progress=progress, callback=callback, desc=f"moe:{name}")
    val_loss = evaluate(model, val_ids, seq_len=tcfg.seq_len, batch_size=16, max_batches=None)
    out = {
        "config": cfg.to_dict(),
        "params": model.num_params(),
        "active_params": model.num_params(active=True),
        "flops_per_token": model.flops_per_token(tcfg.seq_len)["total"],
        "steps": hist.step,
        "loss": [round(v, 4) for v in hist.loss],
        "val_step": hist.val_step,
        "val_loss": [round(v, 4) for v in hist.val_loss],
        "final_val_loss": round(val_loss, 4),
        "train_seconds": round(hist.seconds, 1),
        "tokens_per_second": round(hist.tokens_per_second),
    }
    save_checkpoint(model, cache_dir("moe") / f"{name}.safetensors", metadata={"run": name})  # for later study
    if rec is not None:
        b = POSITION_BUCKET
        pos = rec.positions()  # (L, T, E)
        pos = pos.view(pos.shape[0], -1, b, pos.shape[-1]).mean(2)  # (L, T/b, E)
        r4 = lambda v: [round(float(x), 4) for x in v]  # noqa: E731
        out["router"] = {
            "steps": rec.steps,
            "fractions": [[r4(f) for f in snap] for snap in rec.fractions],
            "would_drop": [[r4(f) for f in snap] for snap in rec.would_drop],
            "z": [r4(snap) for snap in rec.z],
            "positions": [[r4(row) for row in layer] for layer in pos.tolist()],
            "position_bucket": b,
            "profile": routing_profile(model, val_ids),
            "capacity_sweep": [
                {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}
                for row in capacity_sweep(model, val_ids)
            ],
            "tokens": [
                {"ids": ids, "text": [tok.decode([i]) for i in ids], "experts": token_routing(model, ids)}
                for ids in sample_passages()
            ],
        }
    return out


def _build_worker(name: str, threads: int) -> tuple[str, dict]:
    torch.set_num_threads(threads)
    return name, build_run(name, progress=False)


def build(
    names: list[str] | None = None, *, jobs: int = 1, threads: int = 1, progress: bool = True, path: Path | None = None
) -> dict:
    """Train the runs and write ``zoo_data/moe_runs.json`` (atomically; rewritten after each run).

    Each run uses ``threads`` torch threads (1 by default, so its numbers do not depend on
    the core count); ``jobs`` runs train in parallel processes. Runs of the same recipe
    already in the file are kept, so ``build dense`` refreshes one run.
    """
    names = list(RUNS) if names is None else list(names)
    for v, what in ((jobs, "jobs"), (threads, "threads")):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{what} must be an int >= 1, got {v!r}")
    path = Path(path) if path is not None else ZOO_DIR / RUNS_FILE
    built: dict = {}
    result: dict = {}

    def save(name: str, record: dict, seconds: float) -> None:
        nonlocal result
        built[name] = record
        old = json.loads(path.read_text()) if path.is_file() else {}  # re-read: another build may have added runs
        same_recipe = old.get("base") == RUN_BASE and old.get("train") == RUN_TRAIN
        runs = {**(old.get("runs", {}) if same_recipe else {}), **built}
        print(f"{name}: val loss {record['final_val_loss']} ({seconds:.0f} s)", flush=True)
        result = {
            "command": "python -m course_lib.build moe",
            "base": RUN_BASE,
            "train": RUN_TRAIN,
            "capacity_probes": list(CAPACITY_PROBES),
            "built_with": {"torch": torch.__version__, "threads": threads},
            "machine": fingerprint.machine(),  # which CPU made the seconds (course_lib.fingerprint)
            "runs": {m: runs[m] for m in RUNS if m in runs},
        }
        atomic_write_bytes(path, (json.dumps(result, separators=(",", ":")) + "\n").encode())
        if path.resolve().parent == ZOO_DIR.resolve():
            record_artefact(path, rebuild="python -m course_lib.build moe")

    t0 = time.perf_counter()
    if jobs == 1:
        with measure.num_threads(threads):
            for n in names:
                save(*_build_worker(n, threads), time.perf_counter() - t0)
    else:
        failed = {}
        with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(_build_worker, n, threads): n for n in names}
            for fut in as_completed(futures):
                try:
                    save(*fut.result(), time.perf_counter() - t0)
                except Exception as e:  # keep the other runs going; report at the end
                    failed[futures[fut]] = e
                    print(f"{futures[fut]}: FAILED: {e!r}", file=sys.stderr, flush=True)
        if failed:
            raise RuntimeError(f"runs failed: {sorted(failed)}") from next(iter(failed.values()))
    return result


def load_runs(path: Path | None = None) -> dict:
    """The precomputed runs (``python -m course_lib.build moe`` writes them)."""
    return load_json(RUNS_FILE, path)


# --------------------------------------------------------------------------- figures (pure builders)


def run_name(*, top_k: int, aux: bool) -> str:
    """Name of the precomputed MoE run with this top-k and aux-loss setting."""
    name = f"moe-k{top_k}-{'aux' if aux else 'noaux'}"
    if name not in RUNS:
        raise ValueError(f"no precomputed run for top_k={top_k!r}, aux={aux!r}; runs: {list(RUNS)}")
    return name


def expert_load_figure(runs: dict, *, aux: bool = True, top_k: int = 2, layer: int = 0, cmax: float = 0.5):
    """Heatmaps of the token share per expert: over training (one layer), per layer on
    validation text at the end, and by position in the sequence (one layer)."""
    name = run_name(top_k=top_k, aux=aux)
    if name not in runs["runs"]:
        raise ValueError(f"run {name!r} is not in the precomputed runs; rebuild with python -m course_lib.build moe")
    r = runs["runs"][name]["router"]
    if not r["steps"]:
        raise ValueError(f"run {name!r} recorded no router snapshots (trained for fewer than 10 steps?)")
    n_layers = len(r["profile"]["fractions"])
    if not isinstance(layer, int) or not 0 <= layer < n_layers:
        raise ValueError(f"layer must be an int in [0, {n_layers - 1}], got {layer!r}")
    use_style()
    frac = torch.tensor(r["fractions"])  # (S, L, E)
    e = frac.shape[-1]
    experts = list(range(e))  # numbers on the y axis (titled "expert"): short labels nothing clips
    b = r["position_bucket"]
    pos = torch.tensor(r["positions"][layer])  # (T/b, E)
    final = torch.tensor(r["profile"]["fractions"])  # (L, E)
    cv = coefficient_of_variation(final[layer])
    drop = r["profile"]["would_drop"][layer][list(CAPACITY_PROBES).index(1.25)]
    fig = make_subplots(
        rows=1,
        cols=3,
        column_widths=[0.46, 0.22, 0.32],
        horizontal_spacing=0.08,
        # two short lines each, so three panels side by side stay apart on a phone; they name
        # the layer, so a static twin's slider updates them with the figure (annotations per step)
        subplot_titles=(f"layer {layer}<br>training", "all<br>layers", f"layer {layer}<br>position"),
    )
    hover = "%{x}, expert %{y}: %{z:.1%} of assignments<extra></extra>"
    fig.add_heatmap(
        x=r["steps"], y=experts, z=frac[:, layer].T.tolist(), coloraxis="coloraxis", hovertemplate=hover, row=1, col=1
    )
    fig.add_heatmap(
        x=list(range(n_layers)),
        y=experts,
        z=final.T.tolist(),
        coloraxis="coloraxis",
        hovertemplate=hover,
        row=1,
        col=2,
    )
    fig.add_heatmap(
        x=[i * b for i in range(pos.shape[0])],  # first position of each bucket of b
        y=experts,
        z=pos.T.tolist(),
        coloraxis="coloraxis",
        hovertemplate=hover,
        row=1,
        col=3,
    )
    fig.update_xaxes(title_text="step", nticks=4, row=1, col=1)
    fig.update_xaxes(title_text="layer", tickvals=[0, n_layers - 1], row=1, col=2)  # a narrow panel: the ends
    fig.update_xaxes(title_text="position", nticks=3, row=1, col=3)
    fig.update_yaxes(title_text="expert", dtick=1, row=1, col=1)
    fig.update_yaxes(showticklabels=False, dtick=1, row=1, col=2)
    fig.update_yaxes(showticklabels=False, dtick=1, row=1, col=3)
    fig.update_layout(
        title_text=f"{name}, layer {layer}: load CV {cv:.2f}, drops {drop:.1%} at c = 1.25",
        coloraxis=dict(colorscale=HEATMAP_SCALE, cmin=0, cmax=cmax, colorbar=dict(title="share", tickformat=".0%")),
        height=400,
    )
    return fig


def token_routing_figure(record: dict, *, title: str = "Which expert each token goes to"):
    """Tokens (down) x layers (across), coloured by the first-choice expert, labelled with every choice.

    ``record`` has ``text`` (T token strings) and ``experts`` (L, T, k), as stored by the
    build (``runs[...]["router"]["tokens"][i]``) or returned by :func:`token_routing`.
    """
    text, experts = record["text"], record["experts"]
    if not experts or len(experts[0]) != len(text):
        raise ValueError("record['experts'] must be (layers, tokens, k) with one entry per token of record['text']")
    use_style()
    n_layers, n_tokens = len(experts), len(text)
    n_experts = max(max(max(c) for c in layer) for layer in experts) + 1
    n_colors = max(n_experts, 8)
    # tokens down the page, layers across: cells wide enough for a readable label on a phone
    first = [[experts[layer][t][0] for layer in range(n_layers)] for t in range(n_tokens)]  # (T, L)
    labels = [[" / ".join(str(e) for e in experts[layer][t]) for layer in range(n_layers)] for t in range(n_tokens)]
    scale = []
    for i in range(n_colors):  # a stepped colour scale: one palette colour per expert id
        col = PALETTE[i % len(PALETTE)]
        scale += [[i / n_colors, col], [(i + 1) / n_colors, col]]
    shown = [t.replace(" ", "·").replace("\n", "⏎") for t in text]
    fig = figure(title_text=title, height=160 + 20 * n_tokens)
    fig.add_heatmap(
        z=first,
        x=list(range(n_layers)),
        y=list(range(n_tokens)),  # positions, not token strings: a repeated token keeps its own row
        text=labels,
        texttemplate="%{text}",
        textfont=dict(size=11),
        customdata=[[s] * n_layers for s in shown],
        hovertemplate="token '%{customdata}', layer %{x}: experts %{text}<extra></extra>",
        colorscale=scale,
        zmin=-0.5,
        zmax=n_colors - 0.5,
        colorbar=dict(  # the key: one colour per expert id (the first choice)
            title="first-<br>choice<br>expert",
            tickvals=list(range(n_experts)),
            len=min(1.0, 0.06 * n_experts + 0.1),
            y=1,
            yanchor="top",
        ),
        xgap=1,
        ygap=1,
    )
    fig.update_yaxes(tickmode="array", tickvals=list(range(n_tokens)), ticktext=shown, autorange="reversed")
    fig.update_xaxes(title_text="layer", dtick=1)
    return fig


# --------------------------------------------------------------------------- expert parallelism, in processes


def _demo_layer(seed: int = 0) -> MoEMLP:
    cfg = ModelConfig(
        vocab_size=16, d_model=64, n_layers=1, n_heads=4, d_ff=128, mlp="moe", mlp_options=dict(n_experts=8, top_k=2)
    )
    torch.manual_seed(seed)
    return MoEMLP(cfg, 0).eval()


def _ep_worker(rank: int, world_size: int, init_method: str, n_tokens: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world_size)
    try:
        layer = _demo_layer()
        e_local = layer.n_experts // world_size
        with torch.no_grad():  # keep only this rank's experts: the others are never read
            for lin in (layer.experts.gate_proj, layer.experts.up_proj, layer.experts.down_proj):
                mine = torch.zeros_like(lin.weight)
                mine[rank * e_local : (rank + 1) * e_local] = lin.weight[rank * e_local : (rank + 1) * e_local]
                lin.weight.copy_(mine)
        x = torch.randn(n_tokens, layer.d_model, generator=torch.Generator().manual_seed(1))
        n_local = n_tokens // world_size
        t0 = time.perf_counter()
        with torch.no_grad():
            y, counts = expert_parallel_forward(
                layer, x[rank * n_local : (rank + 1) * n_local], rank=rank, world_size=world_size
            )
        seconds = time.perf_counter() - t0
        gathered = [torch.empty_like(y) for _ in range(world_size)]
        dist.all_gather(gathered, y)
        if rank == 0:
            torch.save({"y": torch.cat(gathered), "counts": counts, "seconds": seconds}, Path(out_dir) / "rank0.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def expert_parallel_demo(*, world_size: int = 2, n_tokens: int = 512) -> dict:
    """Run the expert-parallel layer in ``world_size`` local processes (gloo, 127.0.0.1) and
    compare with the same layer in this process. Returns counts and the max difference."""
    if not isinstance(world_size, int) or world_size < 1 or 8 % world_size:
        raise ValueError(f"world_size must divide the demo's 8 experts (1, 2, 4, 8), got {world_size!r}")
    if not isinstance(n_tokens, int) or n_tokens < world_size or n_tokens % world_size:
        raise ValueError(f"n_tokens must be a positive multiple of world_size, got {n_tokens!r}")
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo0" if sys.platform == "darwin" else "lo")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        mp.spawn(_ep_worker, args=(world_size, f"tcp://127.0.0.1:{port}", n_tokens, tmp), nprocs=world_size)
        wall = time.perf_counter() - t0
        res = torch.load(Path(tmp) / "rank0.pt", weights_only=True)
    layer = _demo_layer()
    x = torch.randn(n_tokens, layer.d_model, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = layer(x)
    return {
        "world_size": world_size,
        "n_tokens": n_tokens,
        "rank0_sent": res["counts"]["sent"],
        "rank0_received": res["counts"]["received"],
        "max_abs_diff": float((res["y"] - ref).abs().max()),
        "forward_seconds": res["seconds"],
        "wall_seconds": wall,
    }


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.build moe", description=__doc__.split("\n")[0])
    parser.add_argument("names", nargs="*", default=list(RUNS), help=f"which runs (default: all of {list(RUNS)})")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained in parallel processes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument(
        "--out", type=Path, default=None, help=f"output file (default: course_lib/zoo_data/{RUNS_FILE})"
    )
    demo = parser.add_argument_group("expert parallelism (instead of the build)")
    demo.add_argument(
        "--expert-parallel-demo", action="store_true", help="run one MoE layer over local gloo processes, == 1 process"
    )
    demo.add_argument("--world-size", type=int, default=2, help="processes of the demo")
    demo.add_argument("--tokens", type=int, default=512, help="tokens of the demo")
    args = parser.parse_args(argv)
    if not args.expert_parallel_demo:
        unknown = [n for n in args.names if n not in RUNS]
        if unknown:
            parser.error(f"unknown runs {unknown}; choose from {list(RUNS)}")
        build(args.names, jobs=args.jobs, threads=args.threads, path=args.out)
        return 0
    res = expert_parallel_demo(world_size=args.world_size, n_tokens=args.tokens)
    print(
        f"expert parallelism: {res['world_size']} processes (gloo on 127.0.0.1), {res['n_tokens']} tokens, top-2 of 8"
    )
    print(f"rank 0 sent {res['rank0_sent']} assignment rows to ranks 0..{res['world_size'] - 1}")
    print(f"rank 0 received {res['rank0_received']} rows from ranks 0..{res['world_size'] - 1}")
    print(f"max |difference| vs one process: {res['max_abs_diff']:.2e}")
    print(
        f"forward on rank 0: {res['forward_seconds'] * 1e3:.1f} ms; wall incl. process start: {res['wall_seconds']:.1f} s"
    )
    ok = res["max_abs_diff"] < 1e-5
    print("same output as one process" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
