# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 04 · Conditional computation: neurons a token can skip, layers it can leave early
#
# A dense model spends the same computation on every token: "the", a name, a number. Chapter
# 02 made the MLP *conditional* by routing each token to a few experts. This chapter does the
# rest: it looks for work a given token does not need, inside the layers that are already
# there. The **width** half asks which MLP neurons are zero for this token, and whether
# skipping them is faster. The **depth** half asks which layers a token can skip or leave early.
# The article claims that layers which "naturally produce many zero activations" allow
# "optimized computation on hardware" (claim A2); here we measure that on one CPU.
#
# > **What you'll build:** activation statistics for any patient, ReLUfication (SiLU → ReLU
# > plus a short fine-tune), thresholded SwiGLU (CATS), a sparse decode MLP that gathers only
# > the active neurons (exact against the dense MLP), a Deja Vu predictor of active neurons,
# > early-exit heads with a confidence rule, and a Mixture-of-Depths block.
# > **What you'll learn:** how few exact zeros a SwiGLU model has, what it costs to create
# > them, why a sparse kernel needs very high sparsity before it beats a dense one at batch 1,
# > how dynamic (per-token) sparsity differs from pruning (static), and how much depth tokens
# > really need.
# > **What you'll need:** chapter 01 (the patient), 02 (routing) and 06 (structured pruning)
# > help; no GPU. The expensive runs (fine-tunes, predictors) are precomputed by
# > `python -m course_lib.build conditional`; the notebook recomputes one point of each.

# %% tags=["bootstrap"]
# Setup. On Colab (or any kernel without the course) this installs course_lib first.
import importlib.util
import subprocess
import sys

REPO_URL = "https://github.com/beyond-scale-course/efficient-ai-from-scratch"
COURSE_VERSION = "0.1.0"  # the release this notebook was written for (scripts/pin_bootstrap.py)
if importlib.util.find_spec("course_lib") is None:
    subprocess.check_call(
        [sys.executable, "-m", "pip", "install", "-q", f"beyond-scale-course @ git+{REPO_URL}@v{COURSE_VERSION}"]
    )
if "google.colab" in sys.modules:  # let Colab render ipywidgets
    from google.colab import output

    output.enable_custom_widget_manager()

from course_lib.notebook import start

device = start(seed=0)

# %%
import math

import numpy as np
import torch
import torch.nn.functional as F
from IPython.display import Markdown, display

from course_lib import claims, conditional, data, fingerprint, measure, train, viz, zoo
from course_lib.experiments import conditional as runs_mod

small, tiny = zoo.load("small"), zoo.load("tiny")
val_ids = data.encode_split("val")
probe = runs_mod.windows("val", 4)  # (4, 128): the validation windows every statistic below uses
stored = runs_mod.load_runs()
print(
    f"small patient: d_model {small.model.config.d_model}, d_ff {small.model.config.d_ff}, "
    f"{small.model.config.n_layers} layers; tiny: d_model {tiny.model.config.d_model}, d_ff {tiny.model.config.d_ff}"
)
print("stored runs:", fingerprint.provenance(stored["machine"]))

# %% [markdown]
# Two patients, each where it fits: the **small** patient's shapes for everything about
# speed (its MLP is the one the sparse kernel is timed on) and for the training-free methods
# (statistics, CATS, predictors); the **tiny** one wherever training costs time
# (the ReLUfication fine-tune).
#
# ## 1 · How sparse is SwiGLU, really?
#
# The MLP of our patients is SwiGLU: $a = \mathrm{SiLU}(W_{gate}x) \odot (W_{up}x)$, then
# $y = W_{down}a$. A neuron $j$ is skippable for this token when $a_j = 0$. SiLU,
# $z\,\sigma(z)$, is zero only at $z = 0$; so we count exact zeros, and also *near* zeros
# $|a_j| \le \tau$, which could be dropped at a small error. From scratch first, for layer 0:
# hook the input of `down_proj` (that *is* $a$) and recompute it from the MLP's input.

# %%
m = small.model
mlp0 = m.blocks[0].mlp
seen = {}
hooks = [
    mlp0.register_forward_pre_hook(lambda mod, args: seen.update(x=args[0])),  # (B, T, C): the MLP's input
    mlp0.down_proj.register_forward_pre_hook(lambda mod, args: seen.update(a=args[0])),  # (B, T, d_ff)
]
with torch.no_grad():
    m(probe)
for h in hooks:
    h.remove()
a_scratch = F.silu(seen["x"] @ mlp0.gate_proj.weight.T) * (seen["x"] @ mlp0.up_proj.weight.T)  # (B, T, d_ff)
acts = conditional.capture_activations(m, probe)  # every layer, hooks removed afterwards
torch.testing.assert_close(a_scratch, seen["a"], rtol=1e-5, atol=1e-6)
assert torch.equal(acts[0], seen["a"])
tau = 0.01
zeros_scratch = [(a == 0).float().mean().item() for a in acts]
small_scratch = [(a.abs() <= tau).float().mean().item() for a in acts]
stats_small = conditional.activation_stats(m, probe, tau=tau)
assert stats_small.zeros == zeros_scratch and stats_small.small == small_scratch
print(f"{probe.numel()} tokens x {acts[0].shape[-1]} neurons per layer: from scratch == conditional.activation_stats")
viz.Table(stats_small.rows(), caption=f"Small patient (SwiGLU): fraction of activations exactly 0 and with |a| ≤ {tau}")

# %%
fig = viz.figure(
    title="Where SwiGLU activations lie: log10 |a| per layer (small patient)",
    xaxis_title="log10 |a|",
    yaxis_title="share of activations",
    barmode="overlay",
)
edges = np.linspace(-8, 1, 61)  # 60 bins of log10 |a|; |a| below 1e-8 lands in the first
centres = (edges[:-1] + edges[1:]) / 2
for i, a in enumerate(acts):
    logs = a.abs().clamp_min(1e-8).log10().flatten().numpy()
    counts, _ = np.histogram(
        np.clip(logs, edges[0], edges[-1]), bins=edges
    )  # bin here: the page gets 60 numbers, not every activation
    fig.add_bar(x=centres, y=counts / counts.sum(), name=f"layer {i}", opacity=0.45, width=edges[1] - edges[0])
fig.add_vline(x=math.log10(tau), line_dash="dash", annotation_text=f"τ = {tau}")
fig.show()
tok_small = stats_small.token_small  # (L, B, T)
display(
    Markdown(
        f"Exact zeros: **{stats_small.mean_zeros:.1%}** of all activations. With τ = {tau}, "
        f"**{stats_small.mean_small:.1%}** are near zero on average, but it varies by token: per token "
        f"the near-zero share ranges from {tok_small.min().item():.0%} to {tok_small.max().item():.0%}. "
        "SwiGLU has a long left tail of *small* activations and almost no exact zeros: "
        "nothing to skip for free."
    )
)

# %% [markdown]
# ## 2 · ReLUfication: make the zeros exact
#
# Mirzadeh et al. (2023), *ReLU Strikes Back*, swap the activation of a trained model for
# ReLU, $\max(z, 0)$, which is exactly 0 for every negative pre-activation, and fine-tune
# briefly to recover. Their stage 2 also puts a ReLU *before* the MLP (after the norm), so the
# up and gate projections see sparse inputs. `conditional.relufy` does the swap in a copy;
# here on the tiny patient, where a fine-tune costs minutes.

# %%
t_model = tiny.model
t_probe = probe[:, :128]
relu_raw = conditional.relufy(t_model)
ppl = lambda model: math.exp(train.evaluate(model, val_ids, seq_len=128, batch_size=16, max_batches=2))  # noqa: E731
dense_t, relu_t = conditional.activation_stats(t_model, t_probe), conditional.activation_stats(relu_raw, t_probe)
viz.Table(
    [
        {
            "tiny patient": "SwiGLU (as trained)",
            "exact zeros": round(dense_t.mean_zeros, 3),
            "perplexity": round(ppl(t_model), 1),
        },
        {
            "tiny patient": "SiLU → ReLU, no fine-tune",
            "exact zeros": round(relu_t.mean_zeros, 3),
            "perplexity": round(ppl(relu_raw), 1),
        },
    ],
    caption="Swapping the activation: zeros for free, perplexity not (2 validation batches)",
)

# %% [markdown]
# The build fine-tuned the MLPs of three copies for the same steps: the ReLU swap, the swap
# plus a ReLU on the MLP input, and — so that extra training is not mistaken for the effect
# of ReLU — the dense SiLU patient itself (a control).

# %%
R = stored["relufication"]
ft = stored["finetune"]
viz.Table(
    [
        {
            "run": name,
            "zeros before": R[name]["before"]["zeros"],
            "ppl before": R[name]["before"]["ppl"],
            "zeros after": R[name]["after"]["zeros"],
            "ppl after": R[name]["after"]["ppl"],
        }
        for name in runs_mod.RELU_RUNS
    ],
    caption=(
        f"Tiny patient, MLPs fine-tuned {ft['steps']} steps of {ft['batch_size']}×{ft['seq_len']} tokens "
        f"(dense patient: ppl {R['dense']['ppl']}); stored by the build"
    ),
)

# %%
relu_ft = runs_mod.relu_patient()  # the stored ReLU fine-tune, recomputed here on the same batches
live = {
    "zeros": conditional.activation_stats(relu_ft, t_probe).mean_zeros,
    "ppl": math.exp(train.evaluate(relu_ft, val_ids, seq_len=128, batch_size=16, max_batches=runs_mod.EVAL_BATCHES)),
}
assert abs(live["zeros"] - R["relu"]["after"]["zeros"]) < 0.01  # fp16-stored weights: a hair's difference
assert abs(live["ppl"] / R["relu"]["after"]["ppl"] - 1) < 0.02
gain = R["relu"]["after"]["ppl"] / R["silu (control)"]["after"]["ppl"] - 1
display(
    Markdown(
        f"Recomputed live: the ReLU patient has **{live['zeros']:.1%}** exact zeros at perplexity "
        f"**{live['ppl']:.1f}** (stored: {R['relu']['after']['zeros']:.1%}, {R['relu']['after']['ppl']}). "
        f"Against the control fine-tuned the same way, ReLU costs {gain:+.1%} perplexity. "
        f"Roughly half the gate pre-activations are negative, so ReLU gives about half zeros. "
        f"The extra ReLU on the MLP input ends at {R['relu + input relu']['after']['zeros']:.1%} zeros and perplexity "
        f"{R['relu + input relu']['after']['ppl']} "
        f"({R['relu + input relu']['after']['ppl'] / R['silu (control)']['after']['ppl'] - 1:+.0%} against the control) "
        f"after our {ft['steps']} steps; the paper fine-tunes for billions of tokens."
    )
)

# %% [markdown]
# ## 3 · CATS: thresholds instead of retraining
#
# Lee et al. (2024), *CATS*, keep SiLU and zero the gate where it is small:
# $\mathrm{thr}_t(g) = g\,[\,|g| > t\,]$, with one $t_\ell$ per layer chosen on calibration
# text so that a target fraction of gate values falls below it — the quantile of $|g|$. No
# training; any sparsity you ask for. One point live (90 % on the small patient), the sweep
# from the build, beside **static** structured pruning of the same fraction of neurons
# (chapter 06: the same neurons removed for every token, keeping the most active ones).

# %%
calib = runs_mod.windows("train", runs_mod.CALIB_WINDOWS)
th90 = conditional.fit_thresholds(m, calib, sparsity=0.9)
cats90 = conditional.thresholded(m, th90)
st90 = conditional.activation_stats(cats90, probe)
cats_rows = stored["cats"]["rows"]
row90 = next(r for r in cats_rows if r["target"] == 0.9)
assert max(abs(a - b) for a, b in zip(th90, row90["thresholds"])) < 1e-4  # the build fitted the same thresholds
ppl90 = math.exp(train.evaluate(cats90, val_ids, seq_len=128, batch_size=16, max_batches=runs_mod.EVAL_BATCHES))
assert abs(ppl90 / row90["ppl"] - 1) < 0.01
print(f"CATS at 90 %: thresholds {[round(t, 3) for t in th90]}")
print(f"zeros on validation text {st90.mean_zeros:.1%} (layers {[round(z, 3) for z in st90.zeros]}), ppl {ppl90:.1f}")

# %%
dense_ppl = stored["cats"]["dense_ppl"]
fig = viz.figure(
    title="Dynamic (CATS) vs static (pruning) sparsity, small patient",
    xaxis_title="fraction of MLP neurons skipped",
    yaxis_title="validation perplexity",
    yaxis_type="log",
)
fig.add_scatter(
    x=[r["zeros"] for r in cats_rows], y=[r["ppl"] for r in cats_rows], mode="lines+markers", name="CATS (per token)"
)
fig.add_scatter(
    x=[r["target"] for r in cats_rows],
    y=[r["static_ppl"] for r in cats_rows],
    mode="lines+markers",
    name="pruned (same for all tokens)",
)
fig.add_scatter(
    x=[cats_rows[0]["target"], cats_rows[-1]["target"]],
    y=[dense_ppl, dense_ppl],
    mode="lines",
    line_dash="dot",
    name=f"dense ({dense_ppl})",
)  # a trace, not add_hline: a line's annotation is misplaced on a log axis
fig.show()
display(
    Markdown(
        f"At 90 % of neurons skipped, CATS raises perplexity from {dense_ppl} to {row90['ppl']} "
        f"(×{row90['ppl'] / dense_ppl:.2f}); removing the same share of neurons for good gives "
        f"{row90['static_ppl']} (×{row90['static_ppl'] / dense_ppl:.1f}). Which neurons a token needs "
        "depends on the token: that is what dynamic sparsity exploits and pruning cannot."
    )
)

# %% [markdown]
# ## 4 · The sparse decode kernel
#
# Skipping a neuron saves work only if the kernel does not read its weights. For one token
# (decode, batch 1) with active set $S$ of $k$ neurons:
#
# $$[g, u] = W_{gate,up}[S]\,x,\qquad a = \sigma(g)\odot u,\qquad y = \sum_{j\in S} a_j\,W_{down}[:, j]$$
#
# Stored neuron-major — row $j$ holds neuron $j$'s gate row, up row and down column — one
# gather fetches the $3kC$ numbers. From scratch, then against the dense MLP with the other
# activations zeroed. (`conditional.SparseDecodeMLP` keeps two tables, gate-and-up and
# down, so that each of its two products reads one contiguous block of memory.)

# %%
W_all = torch.stack([mlp0.gate_proj.weight, mlp0.up_proj.weight, mlp0.down_proj.weight.T], 1).detach()  # (d_ff, 3, C)
x_tok = seen["x"][0, 5]  # (C,): one real token's MLP input
g_full = F.silu(mlp0.gate_proj.weight @ x_tok).detach()
S = g_full.abs().topk(round(0.1 * len(g_full))).indices.sort().values  # the 10 % largest gate values
sel = W_all[S]  # (k, 3, C): the only weights read
gu = sel[:, :2] @ x_tok  # (k, 2)
y_scratch = (F.silu(gu[:, 0]) * gu[:, 1]) @ sel[:, 2]  # (C,)
mask = torch.zeros(len(g_full), dtype=torch.bool)
mask[S] = True
y_masked = conditional.masked_mlp(mlp0, x_tok, mask)
kernel = conditional.SparseDecodeMLP(mlp0)
torch.testing.assert_close(y_scratch, y_masked, rtol=1e-5, atol=1e-6)
torch.testing.assert_close(kernel(x_tok, S), y_masked, rtol=1e-5, atol=1e-6)
print(
    f"gathering {len(S)} of {len(g_full)} neurons == dense MLP with the rest zeroed "
    f"(max |diff| {(kernel(x_tok, S) - y_masked).abs().max().item():.1e})"
)

# %% [markdown]
# Now the time, side by side (`measure.interleaved`): the dense MLP as the patient runs it,
# the sparse kernel at sparsity $s$, and a **statically pruned** MLP of the same width
# (chapter 06), which reads as few weights but gathers nothing. One token is far too little
# work to split over threads on a busy 2-core machine, so all three run on one thread.

# %% tags=["nbval-ignore-output"]
SPARSITIES = [0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99]
sweep = conditional.kernel_sweep(mlp0, SPARSITIES, threads=1, min_time=0.5)
viz.Table(
    [
        {
            "sparsity": r["sparsity"],
            "active neurons": r["k"],
            "dense µs": round(r["dense_us"], 1),
            "sparse µs": round(r["sparse_us"], 1),
            "pruned µs": round(r["pruned_us"], 1),
            "sparse speed-up": round(r["speedup"], 2),
            "pruned speed-up": round(r["pruned_speedup"], 2),
        }
        for r in sweep
    ],
    caption=f"Decode MLP, small patient's layer 0 ({mlp0.gate_proj.in_features}×{mlp0.gate_proj.out_features}); {sweep[-1]['note']}",
)

# %% tags=["nbval-ignore-output"]
fig = viz.figure(
    title="Decode MLP time vs activation sparsity (batch 1, one thread)",
    xaxis_title="activation sparsity",
    yaxis_title="speed-up over the dense MLP",
)
fig.add_scatter(x=SPARSITIES, y=[r["speedup"] for r in sweep], mode="lines+markers", name="sparse kernel (gather)")
fig.add_scatter(x=SPARSITIES, y=[r["pruned_speedup"] for r in sweep], mode="lines+markers", name="pruned, same width")
fig.add_hline(y=1, line_dash="dot", annotation_text="dense")
fig.add_hline(y=3, line_dash="dash", annotation_text="target 3×")
fig.show()
be = conditional.break_even(sweep)
at90 = next(r for r in sweep if r["sparsity"] == 0.9)
floor = next(r for r in sweep if r["sparsity"] == 0.99)
ceiling = floor["dense_us"] / floor["sparse_us"]
display(
    Markdown(
        f"At 90 % sparsity the sparse kernel is **{measure.speed_phrase(at90['speedup'], than='the dense MLP')}** "
        f"(target ≥ 3×); it breaks even at "
        + (f"**{be:.0%}** sparsity" if be is not None else "no measured sparsity")
        + f". Why not more: at 99 % ({floor['k']} neurons) it still takes {floor['sparse_us']:.0f} µs, "
        f"{floor['sparse_us'] / floor['dense_us']:.0%} of the dense MLP's time, so no sparsity gets it past about "
        f"{ceiling:.1f}×: the kernel's tensor operations (gather, two products, activation) cost a fixed time per "
        f"call, and the dense MLP it competes with reads only "
        f"{3 * mlp0.gate_proj.weight.numel() * 4 / 2**20:.1f} MiB (it fits in cache). "
        f"The pruned MLP of the same width is {measure.speed_phrase(at90['pruned_speedup'], than='dense')}: "
        "the difference between the two is the price of the gather (a copy of the active weights) — the "
        "price of choosing the neurons per token."
    )
)

# %% [markdown]
# The fixed cost matters less as the layer grows. The same sweep on a larger MLP with
# random weights (d_model 1024, d_ff 4096), whose weights no longer fit in this CPU's
# last-level cache, at the sparsities that matter:

# %% tags=["nbval-ignore-output"]
torch.manual_seed(0)
big_mlp = conditional.ConditionalMLP(d_model=1024, d_ff=4096).eval()
big_mib = 3 * big_mlp.gate_proj.weight.numel() * 4 / 2**20
l3_mib = fingerprint.machine()["caches"].get("L3", 0) / 2**20
big = conditional.kernel_sweep(big_mlp, [0.5, 0.9, 0.95], threads=1, min_time=0.3)
viz.Table(
    [
        {
            "sparsity": r["sparsity"],
            "dense µs": round(r["dense_us"]),
            "sparse µs": round(r["sparse_us"]),
            "sparse speed-up": round(r["speedup"], 2),
            "pruned speed-up": round(r["pruned_speedup"], 2),
        }
        for r in big
    ],
    caption=f"Decode MLP 1024×4096 ({big_mib:.0f} MiB fp32; L3 {l3_mib:.0f} MiB), random weights; {big[-1]['note']}",
)

# %% tags=["nbval-ignore-output"]
big90 = next(r for r in big if r["sparsity"] == 0.9)
display(
    Markdown(
        f"On the larger MLP the sparse kernel is {measure.speed_phrase(big90['speedup'], than='dense')} at 90 % "
        f"sparsity (the small patient's MLP: {at90['speedup']:.1f}×): the fixed cost per call is the same, the work "
        "it is compared with is not. That is the regime of the papers' models, whose MLPs are hundreds of MiB."
    )
)

# %% [markdown]
# ## 5 · Deja Vu: predict the active neurons
#
# CATS still computes the whole gate $W_{gate}x$ to find out which neurons are active — a
# third of the MLP. Liu et al. (2023), *Deja Vu*, train a small network per layer that
# *predicts* the active set from the layer input, $\hat{S} = \{j : (W_2 W_1 x)_j > 0\}$
# with rank $r \ll C$, so the gate is computed only for $\hat S$ too. A missed active
# neuron costs quality; a false alarm only time. The build trained one rank-16 predictor
# per layer of the CATS-90 % small patient; here we recompute its recall on fresh text.

# %%
P = stored["predictor"]
predictors = runs_mod.load_predictors()
fresh = runs_mod.windows("test", 2)  # text the predictors never saw
xs = conditional.capture_mlp_inputs(cats90, fresh)
rec_rows = []
for i, (blk, x, p) in enumerate(zip(cats90.blocks, xs, predictors)):
    x = x.reshape(-1, x.shape[-1])
    r = conditional.predictor_recall(p.predict(x), conditional.active_mask(blk.mlp, x))
    rec_rows.append(
        {
            "layer": i,
            "recall": round(r["recall"], 3),
            "predicted share": round(r["predicted"], 3),
            "active share": round(r["active"], 3),
            "stored recall (val)": P["layers"][i]["recall"],
        }
    )
viz.Table(rec_rows, caption=f"Rank-{P['rank']} predictors on the CATS-{P['sparsity']:.0%} small patient, test text")
mean_recall = sum(r["recall"] for r in rec_rows) / len(rec_rows)
pred_share = sum(r["predicted share"] for r in rec_rows) / len(rec_rows)
display(
    Markdown(
        f"The predictors find **{mean_recall:.0%}** of the truly active neurons while selecting "
        f"{pred_share:.0%} of all neurons. Running the MLPs on the predicted neurons only raises perplexity from "
        f"{P['cats_ppl']} (CATS alone) to {P['predicted_ppl']} (stored, validation text): the missed neurons matter."
    )
)

# %% [markdown]
# What the predictor saves, per token, on layer 0 (one thread, side by side): the dense MLP;
# CATS's kernel (dense gate, then gather up and down for the active neurons); and Deja Vu
# (predictor, then gather all three for the predicted neurons).

# %% tags=["nbval-ignore-output"]
cats_kernel = conditional.SparseDecodeMLP(cats90.blocks[0].mlp)
p0 = predictors[0]
x1 = xs[0][0, 7]  # (C,)


def deja_vu():
    with torch.no_grad():
        idx = (p0(x1) > 0).nonzero().reshape(-1)
        return cats_kernel._run(x1, idx)


nthreads = torch.get_num_threads()
torch.set_num_threads(1)
try:
    with torch.no_grad():
        tdv = measure.interleaved(
            {
                "dense": lambda: cats90.blocks[0].mlp(x1),
                "CATS kernel": lambda: cats_kernel.forward_thresholded(x1),
                "Deja Vu": deja_vu,
            },
            min_time=0.1,
        )
finally:
    torch.set_num_threads(nthreads)
display(
    Markdown(
        f"CATS kernel: {measure.compare(tdv, 'CATS kernel', 'dense').phrase}; "
        f"Deja Vu: {measure.compare(tdv, 'Deja Vu', 'dense').phrase} ({tdv.note()})."
    )
)

# %% [markdown]
# ## 6 · What activation sparsity buys here: the verdict on A2

# %% tags=["nbval-ignore-output"]
a2_status = "holds with a caveat" if at90["speedup"] > 1 else "does not hold here"
claims.verdict(
    "A2",
    a2_status,
    f"The small SwiGLU patient has {stats_small.mean_zeros:.1%} exact zeros (only {stats_small.mean_small:.0%} "
    f"below |a| ≤ {tau}); ReLUfication of the tiny patient makes {R['relu']['after']['zeros']:.0%} exact zeros "
    f"at {gain:+.0%} perplexity against an equally fine-tuned control, and CATS makes {row90['zeros']:.0%} at "
    f"×{row90['ppl'] / dense_ppl:.2f} perplexity. On this CPU at batch 1 the gather kernel is "
    f"{at90['speedup']:.1f}× the dense MLP at 90 % sparsity (break-even "
    + (f"{be:.0%}" if be is not None else "not reached")
    + f"; at most {ceiling:.1f}× even at 99 %): the zeros must be created, and they pay only at high sparsity.",
)

# %% [markdown]
# ## Early exit: stop when the next token is clear
#
# Everything so far skips *neurons* inside a layer. The other axis is depth: a position
# whose next token is obvious may not need every block. **Early exit** (CALM, Schuster et al., 2022) reads a prediction after each
# block and stops as soon as it is confident enough:
#
# * an **exit head** after block $\ell$: the model's own final norm and (tied) LM head,
#   after a small low-rank adapter $h \mapsto h + B_\ell A_\ell h$ trained to imitate
#   the full model (distillation, the patient frozen; untrained, the adapter is zero and
#   the head is the "logit lens");
# * a **confidence rule** with a threshold $\lambda$: stop when $c > \lambda$, with
#   $c = \max_v p_v$ (`max_prob`), $c = p_{(1)} - p_{(2)}$ (`top2_gap`), or
#   $c = \sigma(u_\ell^\top \mathrm{norm}(h_\ell))$ (`classifier`: a linear probe per exit
#   trained to predict "this exit's top token is the full model's", CALM's third option);
# * the **KV entries** the skipped layers would have written: a later token attends to
#   this one in every layer. We **copy the exit state** as CALM does: the skipped layers
#   write $K, V$ computed from $h_e$, which costs their key/value projections only.
#
# The rule is strict ($c > \lambda$), so $\lambda = 1$ never exits. First the patient's
# depth, and how often each layer's exit already agrees with the full model on validation
# text, before and after training the adapters (`python -m course_lib.build depth`).

# %%
from course_lib import depth
from course_lib.experiments import depth as depth_runs

ee_model = small.model
ee_heads = depth_runs.load_exit_heads()
depth_stored = depth_runs.load_runs()
EE = depth_stored["early_exit"]
n_blocks = ee_model.config.n_layers
ee_ids = depth_runs.sweep_ids()  # (16, 128) validation windows: the ones the stored sweep used
with torch.no_grad():
    ee_states = depth.hidden_states(ee_model, ee_ids)  # n_blocks x (16, 128, C)
    ee_full = ee_model.lm_head(ee_model.norm(ee_states[-1])).argmax(-1)  # (16, 128)
    lens_agree = [
        float((depth.exit_logits(ee_model, h, i).argmax(-1) == ee_full).float().mean()) for i, h in enumerate(ee_states)
    ]
    head_agree = [
        float((depth.exit_logits(ee_model, h, i, heads=ee_heads).argmax(-1) == ee_full).float().mean())
        for i, h in enumerate(ee_states)
    ]
    full_conf = depth.confidence(ee_model.lm_head(ee_model.norm(ee_states[-1])), "max_prob")
print(f"small patient: {n_blocks} blocks; exit heads and sweeps:", fingerprint.provenance(depth_stored["machine"]))
viz.Table(
    [
        {"exit after block": i + 1, "logit lens agrees": round(a, 3), "trained exit agrees": round(b, 3)}
        for i, (a, b) in enumerate(zip(lens_agree, head_agree))
    ],
    caption="Share of validation positions whose exit's top token is the full model's",
)

# %% [markdown]
# The adapters lift every exit, but the early exits still disagree with the full model on
# many tokens, and the full model itself is rarely sure of the next token (its median top
# probability is printed below): a rule that waits for confidence will mostly wait.
#
# **Cross-check.** At $\lambda = 1$ early exit must *be* the full model: the same logits,
# bit for bit, as the full model decoding the same text position by position with its KV
# cache, and the same generated tokens as `generate`.

# %%
print(f"median top probability of the full model on validation text: {float(full_conf.median()):.2f}")
ee_sentence = small.encode("The river Thames flows through London, and the city grew along its banks.")
ee_never = depth.early_exit_forward(ee_model, ee_sentence, threshold=1.0, rule="classifier", heads=ee_heads)
ref_cache = ee_model.new_cache(1, ee_sentence.shape[1])
with torch.no_grad():
    ref = torch.cat([ee_model(ee_sentence[:, j : j + 1], cache=ref_cache) for j in range(ee_sentence.shape[1])], 1)
assert torch.equal(ee_never.logits, ref) and (ee_never.exit_layer == n_blocks - 1).all()
gen_tokens, _ = depth.early_exit_generate(ee_model, ee_sentence[:, :6], 12, threshold=1.0)
assert torch.equal(torch.cat([ee_sentence[:, :6], gen_tokens], 1), ee_model.generate(ee_sentence[:, :6], 12))
print("threshold 1.0 == the full model: logits bit for bit, generated tokens identical")

# %% [markdown]
# **The quality/compute curve.** The build swept thresholds on these validation windows
# for each rule; *blocks run* is the mean share of blocks a token runs, *FLOPs* adds what
# exiting costs (the copied K/V projections and every check). The dashed lines are the
# issue's target (agreement above the horizontal line at a share of the layers left of the
# vertical one). The dashed curves are the patient *trained to exit* (next subsection), each
# judged against its own full depth. Below the figure, the cheapest point of the frozen
# patient that keeps the agreement is recomputed live.

# %%
depth_runs.sweep_figure(depth_stored).show()

# %%
target_agree, target_layers = depth_stored["targets"]["agreement"], depth_stored["targets"]["layers"]
ee_best = {key: depth_runs.best_point(rows) for key, rows in EE["sweeps"].items()}
ee_key = min((k for k in ee_best if ee_best[k]), key=lambda k: ee_best[k]["flops_fraction"])
ee_point, ee_rule = ee_best[ee_key], ee_key.split("/")[0]
ee_threshold = ee_point["threshold"]
ee_use_heads = ee_heads if ee_key.endswith("trained") else None
# that point recomputed live on the same windows (the build used 1 thread: allow float noise)
ee_run = depth.early_exit_forward(ee_model, ee_ids, threshold=ee_threshold, rule=ee_rule, heads=ee_use_heads)
ee_flops = depth.early_exit_flops(
    ee_model, ee_run.exit_layer[:, :-1], heads=ee_use_heads, rule=ee_rule, seq_len=ee_ids.shape[1]
)
EE_AGREEMENT = round(float((ee_run.logits[:, :-1].argmax(-1) == ee_full[:, :-1]).float().mean()), 3)
EE_LAYERS_AT_95 = round(ee_flops["layer_fraction"], 3)
EE_FLOPS_AT_95 = round(ee_flops["fraction"], 3)
assert abs(EE_AGREEMENT - ee_point["agreement"]) < 0.01 and abs(EE_LAYERS_AT_95 - ee_point["layer_fraction"]) < 0.01
viz.Table(
    [
        {
            "rule, exits": depth_runs.SWEEP_NAMES[k],
            "threshold": b["threshold"] if b else "none",
            "blocks run": round(b["layer_fraction"], 3) if b else None,
            "FLOPs": round(b["flops_fraction"], 3) if b else None,
            "agreement": round(b["agreement"], 3) if b else None,
            "perplexity": round(b["ppl"], 1) if b else None,
        }
        for k, b in ee_best.items()
    ],
    caption=f"Per rule, the cheapest stored threshold keeping ≥ {target_agree:.0%} agreement",
)

# %%
reached = EE_LAYERS_AT_95 <= target_layers
display(
    Markdown(
        f"**Target.** The cheapest setting that keeps ≥ {target_agree:.0%} next-token agreement is the "
        f"{depth_runs.SWEEP_NAMES[ee_key]} rule at threshold {ee_threshold:g}: {EE_AGREEMENT:.1%} agreement, "
        f"{EE_LAYERS_AT_95:.0%} of the blocks and {EE_FLOPS_AT_95:.0%} of the FLOPs (recomputed live). "
        + (
            f"That meets the issue's target of ≤ {target_layers:.0%} of the layers."
            if reached
            else f"That misses the issue's target of ≤ {target_layers:.0%} of the layers, and the table above "
            f"says why: even with trained adapters, the exit after block {n_blocks - 1} agrees with the full model "
            f"on only {head_agree[-2]:.0%} of the tokens and the one after block {n_blocks // 2} on "
            f"{head_agree[n_blocks // 2 - 1]:.0%}, so a token that leaves early often leaves with a different "
            f"answer, and a {1 - target_agree:.0%} disagreement budget buys few early exits. The patient is "
            f"also unsure of itself (median top probability {float(full_conf.median()):.2f}): there are few "
            "'obvious' next tokens to exit on. CALM's savings come from models tens of layers deep whose late "
            "layers change the prediction little."
        )
        + " The two softmax rules pay for their checks: each one multiplies the state by the "
        f"{ee_model.config.d_model} × {ee_model.config.vocab_size} LM head, "
        f"{2 * ee_model.config.d_model * ee_model.config.vocab_size / depth.block_flops(ee_model.blocks[0], 128)['total']:.1f}"
        " blocks' worth of FLOPs, so their FLOPs curves lie far right of their blocks-run curves; the probe "
        "rule decides with a dot product and runs the head once, where the token exits."
    )
)


# %% [markdown]
# ### A patient trained to exit (LayerSkip)
#
# The small patient was trained to predict the next token from its *last* block; nothing
# asked its middle blocks to be ready early. **LayerSkip** (Elhoushi et al., 2024) fine-tunes
# a model for exactly that, with two ingredients:
#
# * **layer dropout rising with depth**: in training, block $\ell$ is skipped for a whole
#   sequence with probability $p_\ell = p_{max}\,(2^{\ell/(L-1)} - 1)$ (never the first block,
#   $p_{max}$ for the last). A skipped block leaves the residual stream unchanged, which is
#   exactly the state an exited token leaves for the later blocks' K and V: the model also
#   learns to live with CALM's state copying;
# * an **early-exit loss on every layer** through the model's own norm and LM head (no
#   adapters): $\mathcal L = \sum_\ell \tilde e_\ell \,\mathrm{CE}(\mathrm{LMHead}(\mathrm{norm}(h_\ell)), y)$,
#   with weights $\tilde e_\ell$ that grow with depth.
#
# The build (`python -m course_lib.build depth --part trained`) fine-tunes rank-16 updates
# $W + BA$ of every block's linear layers (`depth.train_for_exit`; stored in fp16, merged
# back by `depth_runs.load_exit_trained()`), then sweeps thresholds as above, with the shared
# head and no adapters. **Agreement is measured against the full depth of the model the
# exits belong to**: for the exit-trained model, against *its own* last block, not the
# original patient's. What the fine-tune costs is the perplexity of its full depth beside
# the original's.

# %%
ls_model = depth_runs.load_exit_trained()
TR = depth_stored["exit_trained"]
with torch.no_grad():
    ls_states = depth.hidden_states(ls_model, ee_ids)  # n_blocks x (16, 128, C)
    ls_top = torch.stack(
        [depth.exit_logits(ls_model, h, i).argmax(-1) for i, h in enumerate(ls_states)]
    )  # (L, 16, 128)
    ls_conf = depth.confidence(depth.exit_logits(ls_model, ls_states[-1], n_blocks - 1), "max_prob")
ls_lens = (ls_top == ls_top[-1]).float().mean((1, 2)).tolist()
assert max(abs(a - b) for a, b in zip(ls_lens, TR["lens_agreement"]["trained"])) < 0.01
# stopping each token at the first block whose top token is the full depth's: what a perfect rule would run
ls_first = (ls_top == ls_top[-1]).float().argmax(0)  # (16, 128), the first agreeing block
LS_ORACLE = round(float((ls_first + 1).float().mean()) / n_blocks, 3)
print("layer dropout per block:", TR["dropout"], " exit-loss weights:", TR["exit_weights"])
print(
    f"fine-tuned: {TR['delta_params']:,} parameters in rank-{TR['train']['rank']} updates, {TR['train']['steps']} steps"
)
viz.Table(
    [
        {
            "exit after block": i + 1,
            "original patient (logit lens)": round(a, 3),
            "exit-trained model": round(b, 3),
        }
        for i, (a, b) in enumerate(zip(lens_agree, ls_lens))
    ],
    caption="Share of validation positions whose exit's top token is the same model's full-depth top token",
)

# %%
ls_best = {rule: depth_runs.best_point(rows) for rule, rows in TR["sweeps"].items()}
ls_rule = min((r for r in ls_best if ls_best[r]), key=lambda r: ls_best[r]["layer_fraction"])
ls_point = ls_best[ls_rule]
# that point recomputed live on the same windows
ls_run = depth.early_exit_forward(ls_model, ee_ids, threshold=ls_point["threshold"], rule=ls_rule)
ls_flops = depth.early_exit_flops(ls_model, ls_run.exit_layer[:, :-1], rule=ls_rule, seq_len=ee_ids.shape[1])
LS_AGREEMENT = round(float((ls_run.logits[:, :-1].argmax(-1) == ls_top[-1][:, :-1]).float().mean()), 3)
LS_LAYERS_AT_95 = round(ls_flops["layer_fraction"], 3)
LS_FLOPS_AT_95 = round(ls_flops["fraction"], 3)
ls_logits = ls_run.logits[:, :-1]
LS_PPL = round(math.exp(float(F.cross_entropy(ls_logits.flatten(0, 1), ee_ids[:, 1:].flatten()))), 1)
assert abs(LS_AGREEMENT - ls_point["agreement"]) < 0.01 and abs(LS_LAYERS_AT_95 - ls_point["layer_fraction"]) < 0.01
assert abs(LS_PPL / ls_point["ppl"] - 1) < 0.01
PPL_FULL = {"original": EE["sweeps"]["max_prob/lens"][0]["ppl"], "exit-trained": TR["sweeps"][ls_rule][0]["ppl"]}
rows_cmp = [("original", depth_runs.SWEEP_NAMES[ee_key], ee_point)] + [
    ("exit-trained", depth_runs.TRAINED_NAMES[r], b) for r, b in ls_best.items()
]
viz.Table(
    [
        {
            "model": m,
            "rule": name,
            "threshold": b["threshold"] if b else "none",
            "blocks run": round(b["layer_fraction"], 3) if b else None,
            "FLOPs": round(b["flops_fraction"], 3) if b else None,
            "agreement": round(b["agreement"], 3) if b else None,
            "perplexity": round(b["ppl"], 1) if b else None,
            "full-depth perplexity": round(PPL_FULL[m], 1),
        }
        for m, name, b in rows_cmp
    ],
    caption=f"The cheapest stored threshold keeping ≥ {target_agree:.0%} agreement with the same model's full depth "
    "(perplexities on the sweep's validation windows)",
)

# %%
ls_reached = LS_LAYERS_AT_95 <= target_layers
ls_cost = PPL_FULL["exit-trained"] / PPL_FULL["original"] - 1
# the frozen patient's fewest blocks at the same agreement, over all its rules (the table above picked by FLOPs)
frozen_key = min((k for k in ee_best if ee_best[k]), key=lambda k: ee_best[k]["layer_fraction"])
FROZEN_LAYERS_AT_95 = ee_best[frozen_key]["layer_fraction"]
ls_moved = LS_LAYERS_AT_95 < FROZEN_LAYERS_AT_95 - 0.005
display(
    Markdown(
        f"**Trained to exit.** The exit-trained patient keeps {LS_AGREEMENT:.1%} agreement with its own full depth "
        f"running {LS_LAYERS_AT_95:.0%} of its blocks ({LS_FLOPS_AT_95:.0%} of the FLOPs; "
        f"{depth_runs.TRAINED_NAMES[ls_rule]}, threshold {ls_point['threshold']:g}), against "
        f"{FROZEN_LAYERS_AT_95:.1%} of the blocks for the frozen patient's rule that runs the fewest "
        f"({depth_runs.SWEEP_NAMES[frozen_key]}): "
        + ("fewer blocks at the same agreement. " if ls_moved else "no saving at this agreement. ")
        + f"Its full depth pays "
        f"{ls_cost:+.1%} perplexity on the same windows ({PPL_FULL['original']:.1f} → {PPL_FULL['exit-trained']:.1f}). "
        + (
            f"That meets the issue's target of ≤ {target_layers:.0%} of the layers."
            if ls_reached
            else f"That still misses the target of ≤ {target_layers:.0%}. The exits did move towards the full depth "
            f"(the exit after block {n_blocks - 1} now agrees on {ls_lens[-2]:.0%} of the tokens, up from "
            f"{lens_agree[-2]:.0%}), and the answer is often there early: a perfect rule, stopping each token at "
            f"the first block whose top token is the full depth's, would run only {LS_ORACLE:.0%} of the blocks "
            f"at 100 % agreement. What is missing is a *rule* that knows which tokens those are. The model is "
            f"rarely sure of its next token (median top probability of its full depth "
            f"{float(ls_conf.median()):.2f}), so a confident early exit and a later change of mind look alike to "
            "a softmax score, and every wrong exit also leaves copied K/V entries that nudge the tokens after it. "
            "LayerSkip continues pre-training for billions of tokens and CALM calibrates its thresholds on models "
            f"tens of layers deep; a few CPU-minutes of low-rank fine-tuning ({TR['train_cpu_seconds']:.0f} s) "
            f"on a {n_blocks}-block patient "
            + (
                "moves the frontier, not all the way."
                if ls_moved
                else "makes the exits agree more often, but not on the tokens a softmax score singles out: "
                "at 95 % agreement the frontier does not move."
            )
        )
    )
)


# %%
# a position's exit decides the token it predicts: charge it to that (next) token
ee_pieces = [small.tokenizer.decode([i]) for i in ee_ids[:, 1:].flatten().tolist()]
by_kind = depth.exits_by_kind(ee_pieces, ee_run.layers_used[:, :-1].flatten(), n_layers=n_blocks)
viz.Table(
    [
        {
            "predicted token": kind,
            "tokens": v["count"],
            "mean blocks run": round(v["mean_layers"], 2),
            "share exiting early": round(v["early_share"], 3),
        }
        for kind, v in by_kind.items()
    ],
    caption=f"Which tokens exit early ({depth_runs.SWEEP_NAMES[ee_key]}, threshold {ee_threshold:g}, validation)",
)

# %%
kind_most = max(by_kind, key=lambda k: by_kind[k]["early_share"])
kind_least = min(by_kind, key=lambda k: by_kind[k]["early_share"])
display(
    Markdown(
        f"The tokens predicted early most often are **{kind_most}s** ({by_kind[kind_most]['early_share']:.0%} of "
        f"them exit before the last block), the least often **{kind_least}s** "
        f"({by_kind[kind_least]['early_share']:.0%}). "
        + (
            "The completion of a split word is *not* easy for this patient's early layers (plausibly because, "
            f"with a {small.model.config.vocab_size}-token vocabulary, a word's first piece starts many words), "
            "and the probe learned to wait for the last block there."
            if kind_least == "word piece"
            else ""
        )
    )
)

# %% [markdown]
# ### A learned exit decision (CALM's classifier)
#
# The exits of the exit-trained model are often right early (the perfect rule above); the
# *decision* is what fails: one global threshold on the top probability cannot tell a right
# early exit from a wrong one. CALM (Schuster et al., 2022) trains a small classifier for
# the decision instead. Ours, `depth.ExitClassifier`, is a logistic regression per block on
# a handful of cheap inputs (`depth.exit_features`):
#
# * from the exit head's distribution: the max probability, the top-2 gap, the entropy, and
#   whether the top token is the one the previous check picked (*consistency*);
# * from the residual stream alone (CALM's *state propagation*, $O(d)$, no head): the cosine
#   of $h_\ell$ with the block's input $h_{\ell-1}$, and the relative size of the update
#   $\lVert h_\ell - h_{\ell-1}\rVert / \lVert h_\ell \rVert$.
#
# It predicts $q_\ell = P(\text{this exit's top token is the full depth's})$ and the token
# stops at the first checked block with $q_\ell > \lambda$. Three variants: every feature at
# every block; every feature checked only after blocks 2 and 4 (half the head products);
# the state signals only (no head until the token exits). **Calibration and validation are
# different text.** The classifiers are fitted on validation-split windows *after* the
# sweep's (teacher-forced, full-depth states); $\lambda$ is the cheapest value of a grid
# whose real early-exit run (K/V copying included) on calibration windows keeps the target
# agreement; the variant is chosen by its calibration cost; only then does the rule run on
# the sweep's validation windows, which neither step saw
# (`python -m course_lib.build depth --part rule`).

# %%
RULE = depth_stored["exit_rule"]
rule_cal = {name: depth_runs.best_point(v["calibration"]) for name, v in RULE["variants"].items()}
rule_name = min(rule_cal, key=lambda n: rule_cal[n]["layer_fraction"])  # chosen on calibration, not validation
rule_clf = depth_runs.load_exit_rule(rule_name, depth_stored)
rule_point = RULE["variants"][rule_name]["validation"]
# the chosen rule recomputed live on the validation windows
rule_run = depth.early_exit_forward(
    ls_model, ee_ids, threshold=rule_point["threshold"], rule="learned", classifier=rule_clf
)
rule_flops = depth.early_exit_flops(
    ls_model, rule_run.exit_layer[:, :-1], rule="learned", classifier=rule_clf, seq_len=ee_ids.shape[1]
)
RULE_AGREEMENT = round(float((rule_run.logits[:, :-1].argmax(-1) == ls_top[-1][:, :-1]).float().mean()), 3)
RULE_LAYERS = round(rule_flops["layer_fraction"], 3)
RULE_FLOPS = round(rule_flops["fraction"], 3)
RULE_PPL = round(math.exp(float(F.cross_entropy(rule_run.logits[:, :-1].flatten(0, 1), ee_ids[:, 1:].flatten()))), 1)
assert abs(RULE_AGREEMENT - rule_point["agreement"]) < 0.01 and abs(RULE_LAYERS - rule_point["layer_fraction"]) < 0.01
assert abs(RULE_PPL / rule_point["ppl"] - 1) < 0.01
print(
    f"fitted on {RULE['fit_windows']} windows, threshold chosen on {RULE['calibration_windows']} of them, "
    f"judged on the sweep's {ee_ids.shape[0]}; build {RULE['cpu_seconds']:.0f} CPU s;",
    fingerprint.provenance(depth_stored["machine"]),
)
viz.Table(
    [
        {
            "rule": depth_runs.TRAINED_NAMES[ls_rule] + " (one threshold)",
            "threshold": ls_point["threshold"],
            "calibration agreement": None,
            "blocks run": round(ls_point["layer_fraction"], 3),
            "FLOPs": round(ls_point["flops_fraction"], 3),
            "agreement": round(ls_point["agreement"], 3),
            "perplexity": round(ls_point["ppl"], 1),
        }
    ]
    + [
        {
            "rule": name,
            "threshold": v["threshold"],
            "calibration agreement": round(rule_cal[name]["agreement"], 3),
            "blocks run": round(v["validation"]["layer_fraction"], 3),
            "FLOPs": round(v["validation"]["flops_fraction"], 3),
            "agreement": round(v["validation"]["agreement"], 3),
            "perplexity": round(v["validation"]["ppl"], 1),
        }
        for name, v in RULE["variants"].items()
    ],
    caption=f"Exit rules of the exit-trained patient on the validation windows (full depth: perplexity "
    f"{PPL_FULL['exit-trained']:.1f}); the softmax rule's threshold is the stored sweep's best, the learned "
    "rules' were chosen on calibration text",
)

# %%
depth_runs.rule_figure(depth_stored, oracle=LS_ORACLE).show()

# %%
rule_by_kind = depth.exits_by_kind(ee_pieces, rule_run.layers_used[:, :-1].flatten(), n_layers=n_blocks)
rule_exit_counts = torch.bincount(rule_run.exit_layer[:, :-1].flatten(), minlength=n_blocks).tolist()
print("tokens leaving after each block:", dict(zip(range(1, n_blocks + 1), rule_exit_counts)))
viz.Table(
    [
        {
            "predicted token": kind,
            "tokens": v["count"],
            "mean blocks run": round(v["mean_layers"], 2),
            "share exiting early": round(v["early_share"], 3),
        }
        for kind, v in rule_by_kind.items()
    ],
    caption=f"Which tokens exit early under the learned rule ({rule_name}, threshold {rule_point['threshold']:g})",
)

# %%
replay = RULE["variants"][rule_name]["replay_calibration"]
# the calibration run at the grid threshold nearest the replay's choice
cal_near = min(RULE["variants"][rule_name]["calibration"], key=lambda r: abs(r["threshold"] - replay["threshold"]))
rule_holds = RULE_LAYERS <= target_layers and RULE_AGREEMENT >= target_agree
exiting = [n for n, v in RULE["variants"].items() if v["threshold"] < 1]  # variants that exit at all
cheapest = min(exiting, key=lambda n: RULE["variants"][n]["validation"]["flops_fraction"])
cheap_v = RULE["variants"][cheapest]["validation"]
state_v = RULE["variants"]["state only"]
state_low = state_v["calibration"][-1]  # the grid's lowest threshold, on calibration
rule_kind_most = max(rule_by_kind, key=lambda k: rule_by_kind[k]["early_share"])
display(
    Markdown(
        f"**The learned rule** ({rule_name}, threshold {rule_point['threshold']:g} chosen on calibration text) "
        f"keeps {RULE_AGREEMENT:.1%} agreement on the validation windows running **{RULE_LAYERS:.1%} of the "
        f"blocks**, against {ls_point['layer_fraction']:.1%} for the best single softmax threshold "
        f"({depth_runs.TRAINED_NAMES[ls_rule]}), at perplexity {RULE_PPL:.1f} (full depth "
        f"{PPL_FULL['exit-trained']:.1f}). "
        + (
            f"The issue's target (≥ {target_agree:.0%} agreement with ≤ {target_layers:.0%} of the layers) **holds**."
            if rule_holds
            else f"The issue's target (≥ {target_agree:.0%} agreement with ≤ {target_layers:.0%} of the layers) "
            f"**does not hold** on this patient: the classifier moves the frontier, not to "
            f"{target_layers:.0%}, while a perfect rule would run {LS_ORACLE:.0%}. "
        )
        + "Three things stand between them. Its inputs do not separate right from wrong exits well enough: "
        f"even replayed on the calibration text from the full-depth states (no copied K/V) it needs "
        f"{replay['layer_fraction']:.1%} of the blocks for the target (threshold {replay['threshold']:g}). "
        f"The real early-exit run is worse than the replay: on the same text at threshold "
        f"{cal_near['threshold']:g} it keeps only {cal_near['agreement']:.1%} agreement, because every exit "
        "leaves copied K/V entries that move the later tokens' states (CALM pays this too), so the threshold "
        "chosen on real runs is higher. And with the head read at every check, the checks cost more than the "
        "blocks they skip: "
        f"{RULE_FLOPS:.0%} of the full model's FLOPs. Checking fewer blocks helps: **{cheapest}** needs "
        f"{cheap_v['flops_fraction']:.0%} of the FLOPs at {cheap_v['agreement']:.1%} agreement "
        f"({cheap_v['layer_fraction']:.0%} of the blocks), still more than the full model. "
        + (
            f"The state signals alone need no head but do not know enough: no threshold of the grid below 1 "
            f"keeps the target on calibration (at {state_low['threshold']:g}, agreement falls to "
            f"{state_low['agreement']:.0%} for {state_low['layer_fraction']:.0%} of the blocks), so that variant "
            "never exits. "
            if state_v["threshold"] == 1
            else f"The state signals alone run {state_v['validation']['layer_fraction']:.0%} of the blocks for "
            f"{state_v['validation']['flops_fraction']:.0%} of the FLOPs. "
        )
        + f"Under the learned rule the predicted tokens that leave early most often are {rule_kind_most} "
        f"tokens ({rule_by_kind[rule_kind_most]['early_share']:.0%} of them exit before the last block)."
    )
)


# %% tags=["nbval-ignore-output"]
ee_prompt = small.encode("The river Thames flows through London, and the")
ee_n = 24
ee_t = measure.interleaved(
    {
        "full model": lambda: ee_model.generate(ee_prompt, ee_n),
        "early exit": lambda: depth.early_exit_generate(
            ee_model, ee_prompt, ee_n, threshold=ee_threshold, rule=ee_rule, heads=ee_use_heads
        ),
    },
    warmup=1,
    repeats=3,
    min_time=0.5,
)
_, ee_layers = depth.early_exit_generate(
    ee_model, ee_prompt, ee_n, threshold=ee_threshold, rule=ee_rule, heads=ee_use_heads
)
ee_cmp = measure.compare(ee_t, "early exit", "full model")
display(
    Markdown(
        f"Greedy decoding at batch 1, {ee_n} tokens: early exit ran "
        f"{float((ee_layers.float() + 1).mean()) / n_blocks:.0%} of the blocks and is {ee_cmp.phrase} "
        f"({ee_t.note()}). "
        + (
            "The blocks it skips show up as time saved."
            if ee_cmp.word == "faster"
            else "At this size a block is a handful of small matrix products, so the per-layer bookkeeping "
            "(a check after every block, the copied K/V of the skipped ones, Python's loop) weighs as much as "
            "the arithmetic it saves."
        )
    )
)

# %% [markdown]
# ## Mixture-of-Depths: let tokens skip a block
#
# Early exit decides *per token, at run time*, how deep to go, so the work per batch is
# unknown in advance. **Mixture-of-Depths** (Raposo et al., 2024) fixes the budget instead:
# a block gets a router $r_i = w^\top x_i$, and of a sequence of $T$ tokens only the top
# $k = \lceil cT \rceil$ by score (capacity $c$) go through it; the others skip it on the
# residual stream. The selected tokens keep their order and their rotary positions, so
# attention among them stays causal. This is chapter 02's **expert-choice** routing with two
# experts, the block and the identity: the block picks its tokens (no load-balancing loss is
# needed, the load is $k$ by construction), and the compute graph has fixed shapes. The
# router learns through a gate on the block's update, $\tilde y = y + (g - 1)(y - x)$ with
# $g = \sigma(r)/\mathrm{sg}[\sigma(r)]$: exactly 1 in value, so capacity 1 is the plain
# block bit for bit, while its gradient tells the router which tokens the block helped.
#
# Top-$k$ over a sequence peeks at future tokens, so this is for training and scoring
# whole sequences; for sampling the paper trains a small causal predictor of the router's
# choice (not built here). Cross-check first, then the stored fine-tunes: the tiny patient
# with blocks 2 and 4 routed (every other block, as in the paper), fine-tuned briefly at
# each capacity.

# %%
mod_tiny = tiny.model
mod_x = mod_tiny.embed(tiny.encode("The river Thames flows through London, and the city grew along its banks."))
mod_t = mod_x.shape[1]
mod_block = depth.MoDBlock(mod_tiny.blocks[1], capacity=1.0)
with torch.no_grad():
    cos, sin = mod_tiny.rope_cos[:mod_t], mod_tiny.rope_sin[:mod_t]
    assert torch.equal(mod_block(mod_x, cos, sin), mod_tiny.blocks[1](mod_x, cos, sin))
print("capacity 1.0 == the plain block, bit for bit")
MOD = depth_stored["mod"]
for r in MOD["runs"]:  # the FLOPs are recomputed live from the model
    if r["capacity"] != "drop":
        live = depth.mod_flops_per_token(
            depth.mod_model(mod_tiny, layers=MOD["layers"], capacity=r["capacity"]), MOD["train"]["seq_len"]
        )
        assert round(live["fraction"], 4) == r["flops_fraction"]
viz.Table(
    [
        {
            "capacity": r["capacity"],
            "FLOPs/token": round(r["flops_fraction"], 3),
            "block FLOPs": round(r["block_flops_fraction"], 3),
            "val loss before": r["val_loss_before"],
            "val loss after": r["val_loss"],
        }
        for r in MOD["runs"]
    ],
    caption=f"Tiny patient, blocks {[i + 1 for i in MOD['layers']]} routed, {MOD['train']['steps']} fine-tuning steps each",
)

# %%
mod_q = next(r for r in MOD["runs"] if r["capacity"] == 0.25)
mod_live = depth.mod_model(mod_tiny, layers=MOD["layers"], capacity=0.25, seed=MOD["train"]["seed"])
mod_hist = train.train(
    mod_live, data.encode_split("train"), None, train.TrainConfig(**{**MOD["train"], "steps": 5}), progress=False
)
# the first steps of the stored capacity-0.25 fine-tune, recomputed (stored with 1 thread: float noise only)
assert max(abs(a - b) for a, b in zip(mod_hist.loss, mod_q["loss"][:5])) < 0.02
print("first 5 fine-tuning losses, live:  ", [round(v, 2) for v in mod_hist.loss])
print("first 5 fine-tuning losses, stored:", [round(v, 2) for v in mod_q["loss"][:5]])
depth_runs.mod_figure(depth_stored).show()

# %%
mod_full = next(r for r in MOD["runs"] if r["capacity"] == 1.0)
mod_drop = next(r for r in MOD["runs"] if r["capacity"] == "drop")
mod_half = next(r for r in MOD["runs"] if r["capacity"] == 0.5)
MOD_FLOPS = {r["capacity"]: r["flops_fraction"] for r in MOD["runs"]}
MOD_LOSS = {r["capacity"]: r["val_loss"] for r in MOD["runs"]}
picked = set(mod_q["sample_selected"])


def bold_runs(pieces, chosen):
    """The text with each run of chosen tokens in **bold** (one pair of stars per run)."""
    out, open_run = [], False
    for j, p in enumerate(pieces):
        p = p.replace("\n", " ")
        if j in chosen and p.strip():
            if not open_run:
                lead = len(p) - len(p.lstrip())
                out.append(p[:lead] + "**")
                p, open_run = p[lead:], True
        elif open_run:
            out.append("**")
            open_run = False
        out.append(p)
    return "".join(out) + ("**" if open_run else "")


pieces = [tiny.tokenizer.decode([i]) for i in mod_q["sample_ids"]]
display(
    Markdown(
        f"At capacity 0.25 the routed blocks cost {mod_q['block_flops_fraction']:.0%} of the blocks' FLOPs, "
        f"but the whole model only drops to {mod_q['flops_fraction']:.0%}: the tiny patient's LM head "
        f"({tiny.model.config.vocab_size} × {tiny.model.config.d_model}) is "
        f"{2 * tiny.model.config.vocab_size * tiny.model.config.d_model / mod_full['dense_flops_per_token']:.0%} "
        f"of its FLOPs and MoD does not touch it. After {MOD['train']['steps']} steps its validation loss is {mod_q['val_loss']:.3f} against "
        f"{mod_full['val_loss']:.3f} for the same fine-tune at capacity 1 "
        f"({mod_q['val_loss'] - mod_full['val_loss']:+.3f} nats) and {mod_drop['val_loss']:.3f} with the two "
        f"blocks removed ({mod_drop['flops_fraction']:.0%} of the FLOPs). "
        + (
            f"Routing a quarter of the tokens beats removing the blocks by "
            f"{mod_drop['val_loss'] - mod_q['val_loss']:.3f} nats"
            if mod_q["val_loss"] < mod_drop["val_loss"]
            else "Routing a quarter of the tokens does no better than removing the blocks"
        )
        + f", and even capacity 0.5 costs {mod_half['val_loss'] - mod_full['val_loss']:+.3f} nats. "
        "A short fine-tune of a patient trained dense cannot teach its blocks to work on a sparse subset of "
        "tokens (their attention now sees only the chosen ones); Raposo et al. train MoD models from scratch, "
        "where the router and the blocks grow up together."
        + "\n\nWhich tokens did the first routed block take (in **bold**) on a validation passage?\n\n> "
        + bold_runs(pieces, picked)
    )
)

# %% [markdown]
# **MoD and MoE.** Chapter 02's router sends each token to $k$ of $E$ experts
# (*token choice*) and needs a balancing loss and a capacity factor, because nothing stops
# every token from choosing the same expert. MoD turns the choice around: the block picks
# its $k$ tokens (*expert choice*), so the load is exact and the shapes are static, at the
# price of causality (a token's fate depends on the scores of later tokens in the
# sequence). Both spend compute per token by a learned score; MoE varies *which* weights a
# token uses, MoD and early exit vary *how many* layers it uses.

# %% [markdown]
# ## Explore: which tokens exit, which neurons fire
#
# Both halves of the chapter in one picture. For a real validation sentence, each column is
# a token, each row a block: the colour is the share of the block's MLP neurons that fire
# ($|a| > 0.1$, from `conditional.capture_activations`), and the cells above a token's exit
# are blank, because early exit never computes them. Move the threshold of the probe rule:
# at 1 every token runs every block; lower, the easy tokens stop early and the title gives
# the resulting share of layers and FLOPs and the agreement with the full model.

# %%
import ipywidgets as widgets

wid_text = data.articles("val")[3].text.split(". ")[0] + "."
wid_ids = small.encode(wid_text)[:, :40]
wid_pieces = [small.tokenizer.decode([i]) for i in wid_ids[0].tolist()]
WID_THRESHOLDS = [1.0, 0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5]
wid_data = depth_runs.exit_widget_data(ee_model, ee_heads, wid_ids, wid_pieces, WID_THRESHOLDS, rule="classifier")


def exit_explorer(threshold=0.8):
    return depth_runs.exit_widget_figure(wid_data, threshold=threshold)


viz.interactive(
    exit_explorer, threshold=widgets.SelectionSlider(options=WID_THRESHOLDS, value=0.8, description="threshold")
)

# %%
viz.static_twin(
    exit_explorer,
    {"threshold": WID_THRESHOLDS},
    step_label=lambda s: f"threshold {s['threshold']:g}",
    start={"threshold": 0.8},
)

# %%
depth_summary = (
    f"Early exit on the {n_blocks}-block small patient keeps {EE_AGREEMENT:.0%} next-token agreement with the full "
    f"model while running {EE_LAYERS_AT_95:.0%} of its blocks ({EE_FLOPS_AT_95:.0%} of its FLOPs, exit checks "
    f"included; target ≤ {target_layers:.0%}); fine-tuned to exit (LayerSkip), it keeps {LS_AGREEMENT:.0%} "
    f"agreement with its own full depth at {LS_LAYERS_AT_95:.0%} of the blocks, for {ls_cost:+.1%} full-depth "
    f"perplexity; a learned exit classifier calibrated on other text keeps {RULE_AGREEMENT:.0%} at "
    f"{RULE_LAYERS:.0%} of the blocks (target {'met' if rule_holds else 'not met'}). Mixture-of-Depths at capacity 0.25 on two of the tiny patient's "
    f"four blocks cuts those blocks' FLOPs to {mod_q['block_flops_fraction']:.0%} "
    f"({MOD_FLOPS[0.25]:.0%} of the whole model's) for {MOD_LOSS[0.25] - MOD_LOSS[1.0]:+.3f} nats of validation "
    f"loss after {MOD['train']['steps']} fine-tuning steps (blocks removed: {MOD_LOSS['drop'] - MOD_LOSS[1.0]:+.3f})."
)
display(Markdown(depth_summary))

# %% [markdown]
# ## Summary
#
# * **Measure before assuming.** A trained SwiGLU has essentially no exact zeros; its
#   small activations are many, but "small" is not "skippable" without a rule.
# * **Zeros can be made.** ReLU gives exact zeros after a short fine-tune (section 2 measured
#   how many); CATS gives any target sparsity without training, at a perplexity price that
#   grows fastest at the high end (section 3's table).
# * **Dynamic beats static on quality.** Skipping 90 % of neurons per token (CATS) costs far
#   less than removing 90 % for good (pruning), because different tokens need different neurons.
# * **A sparse kernel pays only at high sparsity.** The gather copies the active weights and
#   every call has a fixed cost; at batch 1 on a small MLP that fixed cost caps the gain.
# * **Predicting the active set** (Deja Vu) removes the dense gate too, at the price of the
#   neurons it misses.
# * **Depth is conditional too.** Early exit stops a token when a confidence rule says the
#   answer is clear, and owes the skipped layers their KV entries (copied here, as in CALM);
#   how much depth that saves at a given agreement is the quality/compute curve measured
#   above. A model can be *trained* to exit (LayerSkip: layer dropout rising with depth and
#   an exit loss on every layer): its exits agree with its full depth more often, for some
#   perplexity, but a softmax confidence still cannot tell which early answers will stand.
#   A learned decision (CALM's classifier on a few cheap features, its threshold chosen on
#   calibration text, judged on other text) moves the frontier; on this patient it stays
#   well above what a perfect rule would run (the computed sentence above says by how much),
#   and checks that read the LM head cost more FLOPs than the blocks they skip.
#   Mixture-of-Depths fixes the budget instead: a router picks the tokens a block
#   processes — chapter 02's expert choice, with the identity as the second expert.
#
# **What this does not show:** a fused sparse kernel (compiled, one call per MLP), which
# would shrink the fixed cost that caps the gain here, nor activation sparsity at batch > 1,
# where the tokens of a batch together activate most neurons.
#
# ## Exercise 1 · Top-k activation sparsity
#
# CATS keeps the gate values above a fixed threshold, so the number of active neurons varies
# per token. Another rule keeps exactly the `k` largest $|a_j|$ of each token. Write
# `topk_mlp(mlp, x, k)`: for inputs `x` (..., C) and a SwiGLU `mlp`, compute the hidden
# activations $a$, keep the `k` entries of largest magnitude per token (zero the rest), and
# return $W_{down}a$ (..., C).

# %%
from course_lib.exercises import check_sparse_speedup_prediction, check_topk_mlp


def topk_mlp(mlp, x, k):
    raise NotImplementedError  # your code here


check_topk_mlp(topk_mlp)


# %% tags=["solution"] jupyter={"source_hidden": true} cellView="form"
# @title Solution — try the exercise first
def topk_mlp(mlp, x, k):
    a = F.silu(mlp.gate_proj(x)) * mlp.up_proj(x)  # (..., d_ff)
    keep = a.abs().topk(k, dim=-1).indices
    mask = torch.zeros_like(a, dtype=torch.bool).scatter_(-1, keep, True)
    return mlp.down_proj(a * mask)


assert check_topk_mlp(topk_mlp).passed

# %% [markdown]
# ## Exercise 2 · Predict, then measure: the sparse kernel at 95 %
#
# From the sweep of section 4 at 90 % and 99 %, predict the sparse kernel's speed-up over the
# dense MLP at **95 %** sparsity on a fresh measurement *before* running the next cell.
# (Think: which part of the time shrinks with the number of active neurons, which does not?)


# %%
def predicted_speedup_95() -> float:
    raise NotImplementedError  # your prediction here, a ratio (e.g. 1.5)


# %% tags=["nbval-ignore-output"]
measured_95 = conditional.kernel_sweep(mlp0, [0.95], threads=1, min_time=0.1)[0]["speedup"]
print(f"measured: {measured_95:.2f}x")
check_sparse_speedup_prediction(predicted_speedup_95, measured_95)


# %% tags=["solution"] jupyter={"source_hidden": true} cellView="form"
# @title Solution — try the exercise first
def predicted_speedup_95() -> float:
    # time(k) ≈ fixed + per_neuron · k: fit the line through the 90 % and 99 % points
    k90, k99 = at90["k"], floor["k"]
    per = (at90["sparse_us"] - floor["sparse_us"]) / (k90 - k99)
    fixed = floor["sparse_us"] - per * k99
    k95 = round(0.05 * mlp0.gate_proj.out_features)
    return at90["dense_us"] / (fixed + per * k95)


assert check_sparse_speedup_prediction(predicted_speedup_95, measured_95).passed

# %% [markdown]
# ## Exercise 3 · An entropy exit rule
#
# The chapter's softmax rules look at the top one or two probabilities. CALM's paper also
# considers the whole distribution: a token whose next-token distribution has low entropy is
# one the model is sure of. Write `entropy_confidence(logits)` for logits (..., V): with
# $p = \mathrm{softmax}(\text{logits})$, return $c = 1 - H(p)/\ln V$ (...), where
# $H(p) = -\sum_v p_v \ln p_v$; it is 0 for a uniform distribution and near 1 when one token
# takes all the mass, so a threshold on it works like the others.

# %%
from course_lib.exercises import check_entropy_confidence, check_exit_layers_prediction


def entropy_confidence(logits):
    raise NotImplementedError  # your code here


check_entropy_confidence(entropy_confidence)


# %% tags=["solution"] jupyter={"source_hidden": true} cellView="form"
# @title Solution — try the exercise first
def entropy_confidence(logits):
    logp = F.log_softmax(logits.float(), dim=-1)  # stable: no log of a zero probability
    entropy = -(logp.exp() * logp).sum(-1)  # (...)
    return 1 - entropy / math.log(logits.shape[-1])


assert check_entropy_confidence(entropy_confidence).passed

# %% [markdown]
# ## Exercise 4 · Predict, then measure: how deep at threshold 0.3?
#
# The stored sweep of the exit-trained patient (`TR["sweeps"]["max_prob"]`) gives the share
# of blocks run at thresholds 0.35 and 0.25 on the validation windows above. Predict the share
# at **0.3** with the max-probability rule on *other* validation text (the windows that follow),
# before running the next cell.


# %%
def predicted_share_at_03() -> float:
    raise NotImplementedError  # your prediction here, a share of the blocks (e.g. 0.8)


# %%
fresh_ids = depth_runs.windows("val", 20, 128)[16:]  # (4, 128): after the sweep's 16 windows
measured_share = depth.early_exit_forward(ls_model, fresh_ids, threshold=0.3, rule="max_prob").layer_fraction
print(f"measured: {measured_share:.3f} of the blocks")
check_exit_layers_prediction(predicted_share_at_03, measured_share)


# %% tags=["solution"] jupyter={"source_hidden": true} cellView="form"
# @title Solution — try the exercise first
def predicted_share_at_03() -> float:
    rows = {r["threshold"]: r["layer_fraction"] for r in TR["sweeps"]["max_prob"]}
    return (rows[0.35] + rows[0.25]) / 2  # the share moves smoothly with the threshold: interpolate


assert check_exit_layers_prediction(predicted_share_at_03, measured_share).passed

# %% [markdown]
# ## Self-check
#
# A short quiz; every answer explains why it is right or wrong. The last question is about
# your machine: its answer comes from section 4's measurement.

# %% tags=["nbval-ignore-output"]
from course_lib import quiz

q4_key = (
    "3x" if at90["speedup"] >= 3 else ("faster" if measure.speed_word(at90["speedup"]) == "faster" else "not faster")
)
quiz.show("04", measured={"q4": q4_key})

# %% tags=["nbval-ignore-output"]
from course_lib import progress

progress.show("04")

# %% [markdown]
# ## References
#
# * Mirzadeh et al. (2023), *ReLU Strikes Back: Exploiting Activation Sparsity in Large Language Models*. [arXiv:2310.04564](https://arxiv.org/abs/2310.04564)
# * Lee et al. (2024), *CATS: Contextually-Aware Thresholding for Sparsity in Large Language Models*. [arXiv:2404.08763](https://arxiv.org/abs/2404.08763)
# * Liu et al. (2023), *Deja Vu: Contextual Sparsity for Efficient LLMs at Inference Time*. [arXiv:2310.17157](https://arxiv.org/abs/2310.17157)
# * Shazeer (2020), *GLU Variants Improve Transformer*. [arXiv:2002.05202](https://arxiv.org/abs/2002.05202)
# * Li et al. (2023), *The Lazy Neuron Phenomenon: On Emergence of Activation Sparsity in Transformers*. [arXiv:2210.06313](https://arxiv.org/abs/2210.06313)
# * Schuster et al. (2022), *Confident Adaptive Language Modeling* (CALM). [arXiv:2207.07061](https://arxiv.org/abs/2207.07061)
# * Elhoushi et al. (2024), *LayerSkip: Enabling Early Exit Inference and Self-Speculative Decoding*. [arXiv:2404.16710](https://arxiv.org/abs/2404.16710)
# * Hu et al. (2021), *LoRA: Low-Rank Adaptation of Large Language Models*. [arXiv:2106.09685](https://arxiv.org/abs/2106.09685)
# * Raposo et al. (2024), *Mixture-of-Depths: Dynamically allocating compute in transformer-based language models*. [arXiv:2404.02258](https://arxiv.org/abs/2404.02258)
