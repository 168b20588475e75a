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
# # 13 · Capstone: an efficient system against a monolith, scored with the new metrics
#
# The article ends with "the rise of the system": an orchestrated set of specialized
# components — "small LLM, retriever, tool, verifier" — instead of one all-powerful
# monolith, judged by new benchmarks: "tokens/second per dollar, energy per inference, and
# time-to-accuracy", with the carbon footprint as a standard reported number. Every part of
# such a system was built in an earlier chapter. This chapter puts them together, runs the
# system and a monolith side by side on the same held-out questions, and scores both with
# those metrics, each defined once in `course_lib.capstone`.
#
# > **What you'll build:** a router in front of a topic classifier, the tool-tuned tiny
# > patient with a calculator and a search tool, int8 weights where they help, and a
# > calculator that re-checks arithmetic; the monolith it competes with; ablations that
# > remove one component at a time; a report card with accuracy per item kind, latency
# > p50/p95, tokens/s per dollar, joules and grams of CO2 per query; the Pareto figure; and a
# > configurator that recombines the components from stored per-item results.
# > **What you'll learn:** what each component buys and on which queries, why FLOPs and
# > seconds disagree for small models, how an energy number is measured or estimated (and
# > how to label it), and what to measure before trusting a system on your own workload.
# > **What you'll need:** chapters 05 (quantization), 08 (retrieval), 09 (tools) and 10
# > (cascades); chapter 00 for the cost and carbon arithmetic. No GPU, no downloads; the
# > notebook runs a small live subset and loads the stored full run, within the course's
# > 90-second budget on a 2-core CPU.

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
import numpy as np
import torch
from IPython.display import Markdown, display
from plotly.subplots import make_subplots

from course_lib import capstone as cap
from course_lib import claims, data, fingerprint, measure, viz, zoo
from course_lib.experiments import capstone as cap_runs
from course_lib.experiments import tools as tool_runs

KIND_NAMES = {
    "corpus_fact": "corpus facts",
    "fresh_fact": "fresh facts",
    "arithmetic": "arithmetic",
    "topic": "topic",
}

# %% [markdown]
# ## 1 · The task, and why it needs a system
#
# One fixed, held-out question set (`course_lib.capstone.task_items`, versioned), four kinds of
# item, each with its gold answer and its scoring rule:
#
# * **corpus facts** — a number blanked out of a passage of a *training-split* article: the
#   patients read these articles in pretraining, so the answer is somewhere in their data;
# * **fresh facts** — the same from *test-split* articles, which no patient ever saw: knowledge
#   added after training, as a company adds documents every day (chapter 09's question set);
# * **arithmetic** — exact integer `+`, `-`, `*` of two operands of equal length (chapter 09's);
# * **topic** — which of the corpus' topics a held-out article's first words are about
#   (chapter 10's task): easy for a cheap classifier.
#
# Scoring: an answer is right when, with white space and one final period removed, it equals the
# gold string exactly.

# %%
items = cap.task_items()
mix = cap.mix_of(items)
kinds = np.array([it.kind for it in items])
print(
    f"task version {cap.TASK_VERSION}: {len(items)} items — "
    + ", ".join(f"{KIND_NAMES[k]} {n}" for k, n in mix.items())
    + f"; arithmetic operands of {min(tool_runs.DIGITS)} to {max(tool_runs.DIGITS)} digits, "
    f"{len(data.TOPICS)} topics"
)
viz.Table(
    [
        {"kind": KIND_NAMES[k], "prompt": ex.prompt.strip(), "gold": ex.gold, "scoring rule": ex.rule}
        for k in mix
        for ex in [next(it for it in items if it.kind == k)]
    ],
    caption="One item of each kind (the first of the kind in the task)",
)

# %% [markdown]
# No single small model does all four. A closed-book model must *store* facts (a few million
# parameters store few), cannot store facts that arrived after training at all, and does
# arithmetic from memorised patterns, not exactly. A large model stores more and still has the
# other two problems — and it pays its full cost on the easy topic questions too. A system sends
# each kind to the part that is good at it.
#
# ## 2 · Assembling the system from the course's parts
#
# | component | what it does here | built in |
# |---|---|---|
# | **router** | naive Bayes on the query's words: a topic question, or a question for the tool model? | [chapter 10](10_cascades.ipynb) |
# | **topic classifier** (the cascade's cheap stage) | naive Bayes over the corpus' topics; below a confidence *threshold* the query escalates to the small patient | [chapter 10](10_cascades.ipynb) |
# | **small LLM** | the tiny patient, fine-tuned to call tools | [chapter 09](09_tool_use.ipynb), trained as in [chapter 01](01_baseline.ipynb) |
# | **retriever** | hybrid search (BM25 + dense) over a knowledge base of passages | [chapter 08](08_rag.ipynb) |
# | **tool** | the calculator that never calls `eval` | [chapter 09](09_tool_use.ipynb) |
# | **verifier** | re-runs the model's calculator call and replaces an answer that disagrees with the result | [chapter 09](09_tool_use.ipynb) |
# | **quantization** | int8 weights and activations for the tool model, used only where it measurably helps | [chapter 05](05_quantization.ipynb) |
#
# The **monolith** is the largest patient, closed-book, in fp32: the small patient (chapter
# 01). For facts and arithmetic it writes its answer after a few solved examples of the item's
# kind; for a topic question it gets its best closed-book shot, a closed choice: it picks the
# topic whose name it finds most likely after the question (one forward pass, the rule
# [chapter 07](07_data_centric.ipynb) uses to test a skill). Pruning (chapter 06) is
# left out: chapter 06 measured that unstructured zeros bring no speed on this CPU, and the
# tool model is already the smallest part.
#
# Every component answers every item once (`python -m course_lib.build capstone`); a *system*
# is then a routing of items through component records, with the costs adding up along the
# path. That is the whole of the system's logic:

# %%
viz.show_source(cap.configure)

# %%
stored = cap_runs.load_runs()
assert stored["task_version"] == cap.TASK_VERSION and [d["id"] for d in stored["items"]] == [it.id for it in items]
systems = cap.systems(stored)
EFF = systems["efficient"]
fp = stored["footprint"]
viz.Table(
    [
        {
            "part": name,
            "in memory (kB)": "—" if f.get("weight_bytes") is None else f"{f['weight_bytes'] / 1e3:,.0f}",
            "on disk (kB)": "—" if f.get("disk_bytes") is None else f"{f['disk_bytes'] / 1e3:,.0f}",
        }
        for name, f in fp.items()
    ],
    caption=f"Footprint of every part (stored run). The efficient system's tool model runs at {EFF.bits} bits.",
)

# %% [markdown]
# ## 3 · A live run beside the stored full run
#
# The stored run answered all items with every component on the machine it names. Here a
# few items run live through both systems, with the function that made the stored run
# (`cap_runs.run`, restricted to the two systems): the parts are loaded, each component makes
# its records (answer, seconds, CPU seconds, tokens, counted FLOPs), and `cap.configure` routes
# them. One torch thread, one query at a time, as in the stored run. The live items are
# arithmetic and topic questions: a fact question would make the system index its whole
# knowledge base first, which takes longer than this notebook's budget; the stored run has
# every kind.

# %%
LIVE_KINDS, PER_KIND = ("arithmetic", "topic"), 3
live_idx = [i for k in LIVE_KINDS for i in np.flatnonzero(kinds == k)[:: mix[k] // PER_KIND][:PER_KIND].tolist()]
live_items = [items[i] for i in live_idx]
# the parts are loaded (the patients, naive Bayes fitted on training-split prompts, the tools) and every
# component the two systems use answers every item: the same function that made the stored run
live = cap_runs.run(live_items, only=("monolith", "efficient"), progress=False)
small, tool_model = zoo.load("small"), tool_runs.load_tool_model()  # the two language models, for their sizes
live_recs = {name: cap.configure(live, name) for name in ("monolith", "efficient")}
stored_recs = {name: cap.configure(stored, systems[name]) for name in systems}
viz.Table(
    [
        {
            "kind": KIND_NAMES[it.kind],
            "gold": it.gold,
            "monolith": live_recs["monolith"][j]["answer"],
            "efficient system": live_recs["efficient"][j]["answer"],
            "path": " → ".join(live_recs["efficient"][j]["path"]),
        }
        for j, it in enumerate(live_items)
    ],
    caption=f"Live: {len(live_items)} items, answered in this kernel",
)

# %%
same = {
    name: sum(r["answer"] == stored_recs[name][i]["answer"] for r, i in zip(live_recs[name], live_idx))
    for name in live_recs
}
for name, n in same.items():
    differ = sorted(
        {
            KIND_NAMES[it.kind]
            for it, r, i in zip(live_items, live_recs[name], live_idx)
            if r["answer"] != stored_recs[name][i]["answer"]
        }
    )
    print(
        f"{name}: {n} of {len(live_items)} live answers identical to the stored run's"
        + (f" (different: {', '.join(differ)})" if differ else "")
    )

# %% tags=["nbval-ignore-output"]
live_sum = {name: cap.summarize(recs) for name, recs in live_recs.items()}
stored_sub = {name: cap.summarize([stored_recs[name][i] for i in live_idx]) for name in live_recs}
print(fingerprint.provenance(stored["machine"], live["machine"]))
viz.Table(
    [
        {
            "system": name,
            "run": run,
            "ms / query (mean)": round(s["mean_seconds"] * 1e3, 1),
            "p50 (ms)": round(s["latency_p50_s"] * 1e3, 1),
            "p95 (ms)": round(s["latency_p95_s"] * 1e3, 1),
            "MFLOPs / query": round(s["flops_per_query"] / 1e6, 2),
        }
        for name in live_sum
        for run, s in (("live, this machine", live_sum[name]), ("stored, same items", stored_sub[name]))
    ],
    caption="The same items, live here and in the stored run",
)

# %% [markdown]
# ## 4 · The comparison: accuracy, cost, latency, money, energy, carbon
#
# The stored run, all items. The money and energy figures rest on stated assumptions,
# printed with the table: a price per hour for a machine of this class, the power of a busy
# core, and a grid's carbon intensity. Each is a parameter of the metric function; the
# defaults are cited in `course_lib.capstone`. Without RAPL counters the energy is CPU-seconds
# × watts per busy core, labelled *estimate*; `tests/test_capstone.py` checks that estimate
# against codecarbon's offline tracker on the same workload.

# %%
S = stored["systems"]
d = stored["defaults"]
mono, eff = S["monolith"], S["efficient"]
energy_label = "J / query" + (" (estimate)" if eff["energy_method"] == "estimate" else " (RAPL)")


def comparison_rows(names):
    return [
        {
            "system": n,
            **{KIND_NAMES[k]: f"{S[n]['accuracy'][k]:.0%}" for k in mix},
            "overall": f"{S[n]['accuracy']['overall']:.1%}",
            "MFLOPs / query": f"{S[n]['flops_per_query'] / 1e6:.2f}",
            "ms / query": f"{S[n]['mean_seconds'] * 1e3:.0f}",
            "p50 / p95 (ms)": f"{S[n]['latency_p50_s'] * 1e3:.0f} / {S[n]['latency_p95_s'] * 1e3:.0f}",
            "tokens/s per USD/h": f"{S[n]['tokens_per_s_per_dollar']:,.0f}",
            "USD / M tokens": f"{S[n]['dollars_per_million_tokens']:.3f}",
            energy_label: f"{S[n]['energy_per_query_j']:.2f}",
            "g CO2 / 1k queries": f"{S[n]['co2_g_per_1000']:.3f}",
        }
        for n in names
    ]


viz.Table(comparison_rows(["monolith", "efficient"]), caption=f"All {len(items)} items (stored run)")

# %%
print(f"price: {d['price_source']}")
print(f"power: {d['watts_per_core']:.2f} W per busy core = {d['tdp_source']} ÷ the cores; energy: {d['energy_method']}")
print(f"grid: {d['grid_source']}")

# %% [markdown]
# **Time-to-accuracy** is a training metric: the seconds a trained part needed to reach a fixed
# quality target (chapter 07's definition), read off the stored training curves.

# %%
tta = stored.get("time_to_accuracy", {})
viz.Table(
    [
        {
            "trained part": name,
            "target": r.get("target_val_loss", r.get("target", "—")),
            "seconds to target": "—" if r.get("seconds") is None else f"{r['seconds']:,.0f}",
            "training seconds in all": "—" if r.get("total_seconds") is None else f"{r['total_seconds']:,.0f}",
            "note": r.get("note", r.get("metric", "")),
        }
        for name, r in tta.items()
    ],
    caption="Time-to-accuracy of the trained parts (stored curves; CPU training on the machine each names)",
)

# %%
t = stored["target"]
worse = [k for k in mix if eff["accuracy"][k] < mono["accuracy"][k]]
better = [k for k in mix if eff["accuracy"][k] > mono["accuracy"][k]]
display(
    Markdown(
        f"The efficient system answers **{eff['accuracy']['overall']:.1%}** of the items against the monolith's "
        f"**{mono['accuracy']['overall']:.1%}**, with **{t['flops_ratio']:.3f}×** its counted FLOPs per query and "
        f"**{t['seconds_ratio']:.2f}×** its measured time per query. "
        + (
            "It meets the issue's target (as accurate, at most a third of both costs)."
            if t["met"]
            else "It misses the issue's target (as accurate, at most a third of *both* costs): "
            + (
                f"accuracy is lower on {', '.join(KIND_NAMES[k] for k in worse)}; "
                if eff["accuracy"]["overall"] < mono["accuracy"]["overall"]
                else ""
            )
            + (
                f"measured time does not follow FLOPs, because a tool-using answer writes {eff['tokens_out_per_query']:.0f} "
                f"tokens per query against the monolith's {mono['tokens_out_per_query']:.0f}, and every token pays a "
                f"decode step's fixed costs on a tiny model. "
                if t["seconds_ratio"] > 1 / 3
                else ""
            )
        )
        + (f"By kind it is more accurate on {', '.join(KIND_NAMES[k] for k in better)}" if better else "By kind")
        + (f" and less accurate on {', '.join(KIND_NAMES[k] for k in worse)}." if worse else ".")
        + (
            f" The monolith answers none of the {len(items)} items right: a {small.model.num_params() / 1e6:.1f} M-parameter "
            "model with a few solved examples in its prompt continues the text instead of answering (its live answers "
            "in section 3)."
            if mono["accuracy"]["overall"] == 0
            else f" The monolith answers {mono['accuracy']['overall']:.1%} of the {len(items)} items right."
        )
    )
)

# %% [markdown]
# **Which kind keeps the time up?** The same costs per item kind, from the stored per-item
# records:

# %%
per_kind = {
    name: {
        k: (
            np.mean([r["seconds"] for r in stored_recs[name] if r["kind"] == k]),
            np.mean([r["flops"] for r in stored_recs[name] if r["kind"] == k]),
            np.mean([r["tokens_out"] for r in stored_recs[name] if r["kind"] == k]),
        )
        for k in mix
    }
    for name in ("monolith", "efficient")
}
viz.Table(
    [
        {
            "kind": KIND_NAMES[k],
            "monolith ms": f"{per_kind['monolith'][k][0] * 1e3:.0f}",
            "efficient ms": f"{per_kind['efficient'][k][0] * 1e3:.0f}",
            "time ×": f"{per_kind['efficient'][k][0] / per_kind['monolith'][k][0]:.2f}",
            "FLOPs ×": f"{per_kind['efficient'][k][1] / per_kind['monolith'][k][1]:.3f}",
            "tokens written (monolith / efficient)": f"{per_kind['monolith'][k][2]:.0f} / {per_kind['efficient'][k][2]:.0f}",
        }
        for k in mix
    ],
    caption="Per query, by kind (stored run, means); × = efficient ÷ monolith",
)

# %%
slow = [k for k in mix if per_kind["efficient"][k][0] > per_kind["monolith"][k][0] / 3]
fast = [k for k in mix if k not in slow]
if slow:  # the slow kinds together: efficient ÷ monolith, FLOPs and seconds
    fl_slow, tm_slow = (
        sum(per_kind["efficient"][k][j] for k in slow) / sum(per_kind["monolith"][k][j] for k in slow) for j in (1, 0)
    )
display(
    Markdown(
        (
            f"Within a third of the monolith's time: {', '.join(KIND_NAMES[k] for k in fast) or 'no kind'}; above it: "
            f"{', '.join(KIND_NAMES[k] for k in slow) or 'no kind'}. "
        )
        + (
            "The slow kinds are the ones the tool model answers: it writes a call, reads the result back in a second "
            "prefill and writes the answer, each token a decode step of a model so small that a step's fixed cost "
            f"(Python, operator dispatch) outweighs its arithmetic — on these kinds {fl_slow:.2f}× the FLOPs cost "
            f"{tm_slow:.2f}× the time."
            if slow
            else ""
        )
    )
)

# %% [markdown]
# ## 5 · Ablations: what each component buys
#
# Each row removes one component from the efficient system and keeps the rest (quantization
# is flipped instead: the system without int8, or with it when int8 did not pay). Accuracy per
# kind shows *where* a component pays; the cost columns show what it costs.

# %%
ablations = [n for n in S if n not in ("monolith", "efficient")]
viz.Table(comparison_rows(["efficient", *ablations]), caption="The efficient system and its ablations (stored run)")

# %%
lines = []
for n in ablations:
    delta = {k: S[n]["accuracy"][k] - eff["accuracy"][k] for k in mix}  # change against the efficient system
    where = [f"{KIND_NAMES[k]} {v * 100:+.0f}" for k, v in delta.items() if abs(v) >= 0.005]
    lines.append(
        f"* **{n}**: accuracy {S[n]['accuracy']['overall']:.1%} "
        f"({(S[n]['accuracy']['overall'] - eff['accuracy']['overall']) * 100:+.1f} points"
        + (f"; by kind: {', '.join(where)}" if where else "; no kind changes")
        + f"), FLOPs per query ×{S[n]['flops_per_query'] / eff['flops_per_query']:.2f}, "
        f"time per query ×{S[n]['mean_seconds'] / eff['mean_seconds']:.2f} of the efficient system's."
    )
removed = [n for n in ablations if n.startswith("− ")]
most = max(removed, key=lambda n: eff["accuracy"]["overall"] - S[n]["accuracy"]["overall"])
idle = [n[2:] for n in removed if S[n]["accuracy"]["overall"] >= eff["accuracy"]["overall"]]
lines.append(
    f"\nThe component that buys the most is the **{most[2:]}** "
    f"({(eff['accuracy']['overall'] - S[most]['accuracy']['overall']) * 100:.1f} points overall)"
    + (f"; removing {', '.join(idle)} costs no accuracy on this item mix." if idle else ".")
)
display(Markdown("\n".join(lines)))

# %% [markdown]
# ## 6 · The report card and the Pareto figure
#
# The report card puts every system in one table (`cap.report_card`, also written as markdown
# by `python -m course_lib.capstone run`). The Pareto figure plots accuracy against cost per
# query, counted (FLOPs) and measured (seconds); the grey points are every setting of the
# configurator below.

# %%
viz.Table(stored["report_card"]["rows"], caption="Report card (stored run; money and energy at the stated assumptions)")

# %%
grid = stored["grid"]
SYMBOLS = ["square", "diamond", "triangle-up", "triangle-down", "cross", "x", "star"]


def pareto_figure():
    fig = make_subplots(
        rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.06, subplot_titles=["counted", "measured"]
    )
    for col, key, scale in ((1, "flops_per_query", 1e-6), (2, "mean_seconds", 1e3)):
        fig.add_scatter(
            x=[g[key] * scale for g in grid],
            y=[g["accuracy"]["overall"] for g in grid],
            mode="markers",
            marker=dict(color="lightgrey", size=7),
            name="configurator settings",
            showlegend=col == 1,
            row=1,
            col=col,
        )
        names = list(S)
        cost = [S[n][key] * scale for n in names]
        acc = [S[n]["accuracy"]["overall"] for n in names]
        front = cap.pareto(cost, acc)
        fig.add_scatter(
            x=[cost[i] for i in front],
            y=[acc[i] for i in front],
            mode="lines",
            line=dict(color=viz.PALETTE[0], dash="dot"),
            name="frontier of the systems",
            showlegend=col == 1,
            row=1,
            col=col,
        )
        for j, n in enumerate(names):
            colour = {"monolith": viz.PALETTE[3], "efficient": viz.PALETTE[2]}.get(n, viz.PALETTE[1])
            symbol = SYMBOLS[ablations.index(n) % len(SYMBOLS)] if n in ablations else "circle"
            fig.add_scatter(
                x=[cost[j]],
                y=[acc[j]],
                mode="markers",
                marker=dict(color=colour, symbol=symbol, size=13 if n in ("monolith", "efficient") else 10),
                name=n,
                legendgroup=n,
                showlegend=col == 1,
                row=1,
                col=col,
            )
    fig.update_xaxes(type="log", title_text="MFLOPs per query", row=1, col=1)
    fig.update_xaxes(type="log", title_text="ms per query", row=1, col=2)
    fig.update_yaxes(title_text="accuracy (all items)", row=1, col=1)
    fig.update_layout(height=460, title_text="Accuracy against cost per query: systems and ablations")
    return fig


pareto_figure()

# %% [markdown]
# ## 7 · Explore: configure the system
#
# Switch the tools on and off, move the cascade's threshold (a topic query whose classifier
# confidence is below it escalates to the small patient; the highest setting, above 1, sends
# every one) and pick the tool model's precision. Each setting is a routing of the stored
# per-item records, so the figure redraws at once: accuracy per kind against the monolith's,
# and the costs as a multiple of the monolith's.

# %%
GRID = {(g["retrieval"], g["calculator"], g["threshold"], g["bits"]): g for g in grid}
THRESHOLDS = sorted({g["threshold"] for g in grid})
COSTS = {
    "ms/query": "mean_seconds",
    "FLOPs/query": "flops_per_query",
    "USD/M tokens": "dollars_per_million_tokens",
    "J/query": "energy_per_query_j",
    "g CO2/1k q": "co2_g_per_1000",
}


def configurator(retrieval: bool = True, calculator: bool = True, threshold: float = 0.0, bits: int = 8):
    """One configurator setting: accuracy per kind (bars) against the monolith's (◆); costs ÷ the monolith's."""
    g = GRID[(retrieval, calculator, threshold, bits)]
    fig = make_subplots(
        rows=2,
        cols=1,
        row_heights=[0.5, 0.5],
        vertical_spacing=0.2,
        subplot_titles=["accuracy by kind: this setting (bars), the monolith (◆)", "cost ÷ the monolith's (dotted: ⅓)"],
    )
    keys = [*mix, "overall"]
    cats = [KIND_NAMES.get(k, k) for k in keys]
    fig.add_bar(x=cats, y=[g["accuracy"][k] for k in keys], marker_color=viz.PALETTE[2], row=1, col=1)
    fig.add_scatter(
        x=cats,
        y=[mono["accuracy"][k] for k in keys],
        mode="markers",
        marker=dict(symbol="diamond", size=12, color=viz.PALETTE[3]),
        row=1,
        col=1,
    )
    ratios = [g[key] / mono[key] for key in COSTS.values()]
    fig.add_bar(
        y=list(COSTS),
        x=ratios,
        orientation="h",
        marker_color=[viz.PALETTE[2] if r <= 1 / 3 else viz.PALETTE[1] for r in ratios],
        row=2,
        col=1,
    )
    fig.add_vline(x=1 / 3, line_dash="dot", row=2, col=1)
    fig.add_vline(x=1, line_color="grey", row=2, col=1)
    fig.update_yaxes(range=[0, 1.05], title_text="accuracy", row=1, col=1)
    fig.update_xaxes(type="log", title_text="× the monolith", row=2, col=1)
    tools_on = " + ".join(n for n, on in (("search", retrieval), ("calculator", calculator)) if on) or "no tools"
    fig.update_layout(
        height=620,
        showlegend=False,
        title_text=f"{tools_on}, threshold {threshold:g}, {'int8' if bits == 8 else 'fp32'}: "
        f"accuracy {g['accuracy']['overall']:.1%} (monolith {mono['accuracy']['overall']:.1%})",
    )
    return fig


configurator(bits=EFF.bits)

# %% tags=["nbval-ignore-output"]
import ipywidgets as widgets

viz.interactive(
    configurator,
    retrieval=widgets.Checkbox(value=True, description="search"),
    calculator=widgets.Checkbox(value=True, description="calculator"),
    threshold=widgets.SelectionSlider(options=THRESHOLDS, value=THRESHOLDS[0], description="threshold"),
    bits=widgets.ToggleButtons(options=[32, 8], value=EFF.bits, description="bits"),
)

# %%
viz.static_twin(
    configurator,
    {"retrieval": [True, False], "calculator": [True, False], "threshold": THRESHOLDS, "bits": [32, 8]},
    step_label=lambda c: (
        f"{'search' if c['retrieval'] else 'no search'} · {'calculator' if c['calculator'] else 'no calculator'}"
        f" · threshold {c['threshold']:g} · {'fp32' if c['bits'] == 32 else 'int8'}"
    ),
    start={"retrieval": True, "calculator": True, "threshold": THRESHOLDS[0], "bits": EFF.bits},
)

# %% [markdown]
# The slider steps through all 40 settings: search and calculator on or off, the cascade's
# threshold, and the tool model's number format.
#
# ## 8 · The article's claims, checked
#
# Four claims of the article's last section are about systems and how to score them. Each
# verdict below is chosen by code from the stored run's numbers.

# %%
has_gpu = torch.cuda.is_available()
largest = max(small.model.num_params(), tool_model.model.num_params())
unused = {"monolith", "tool model int8" if EFF.bits == 32 else "tool model fp32"}  # not on the system's paths
system_bytes = sum(f.get("weight_bytes") or 0 for name, f in fp.items() if name not in unused)
tune = tta.get("tool fine-tune", {})
pre = tta.get("tiny patient pretraining", {})
claims.verdict(
    "Y1",
    "cannot be checked" if not has_gpu or largest < 1e9 else "holds with a caveat",
    f"This run has {'a GPU' if has_gpu else 'no GPU'} and its largest model has {largest / 1e6:.1f} M parameters, "
    "so it says nothing about state-of-the-art models on a single GPU; what it does show is the other end of the "
    f"claim: the whole efficient system — {system_bytes / 1e6:.1f} MB of weights, "
    "indexes and tables — runs on a 2-core CPU"
    + (f", the tool fine-tune took {tune['total_seconds']:.0f} s of CPU training" if tune.get("total_seconds") else "")
    + (
        f", and the tiny patient reached its target validation loss in {pre['seconds']:.0f} s of pretraining."
        if pre.get("seconds") is not None
        else "."
    ),
)

# %%
acc_ok = eff["accuracy"]["overall"] >= mono["accuracy"]["overall"]
cheap = t["flops_ratio"] <= 1 / 3, t["seconds_ratio"] <= 1 / 3
status_y3 = "holds" if acc_ok and all(cheap) else "holds with a caveat" if acc_ok and any(cheap) else "does not hold"
claims.verdict(
    "Y3",
    status_y3,
    f"On {len(items)} held-out items the system of a router, a {tool_model.model.num_params() / 1e6:.2f} M tool model, "
    f"a retriever, a calculator and a verifier answered {eff['accuracy']['overall']:.1%} against "
    f"{mono['accuracy']['overall']:.1%} for the {small.model.num_params() / 1e6:.1f} M monolith closed-book, at "
    f"{t['flops_ratio']:.3f}× its FLOPs per query, {'and' if cheap[1] else 'but'} "
    f"{measure.speed_phrase(1 / t['seconds_ratio'], than='the monolith')} "
    "in measured time per query on the machine that ran it; other caveats are the scale and the task: tiny patients, "
    "and items chosen so that each kind has a component that fits it.",
)

# %%
by = {
    "tokens/s per dollar": max(S, key=lambda n: S[n]["tokens_per_s_per_dollar"]),
    "cost per query": min(S, key=lambda n: S[n]["cost_per_query_usd"]),
}
agree_rank = by["tokens/s per dollar"] == by["cost per query"]
per_right = {n: S[n]["cost_per_query_usd"] / S[n]["accuracy"]["overall"] for n in S if S[n]["accuracy"]["overall"] > 0}
best_right = min(per_right, key=per_right.get)
measured_energy = eff["energy_method"] != "estimate"
claims.verdict(
    "Y4",
    "holds" if agree_rank and measured_energy else "holds with a caveat",
    f"All three are computable and reported here: tokens/s per dollar ({eff['tokens_per_s_per_dollar']:,.0f} for "
    f"the system against {mono['tokens_per_s_per_dollar']:,.0f}), energy per query ({eff['energy_per_query_j']:.2f} "
    f"against {mono['energy_per_query_j']:.2f} J, {eff['energy_method']}) and time-to-accuracy of the trained parts; "
    + (
        f"tokens/s per dollar and cost per query both rank {by['cost per query']} best"
        if agree_rank
        else f"but tokens/s per dollar ranks {by['tokens/s per dollar']} best and cost per query ranks "
        f"{by['cost per query']} best, because systems write different numbers of tokens per answer: report cost "
        "per query beside it"
    )
    + (
        f"; neither counts correct answers: per correct answer {best_right} is cheapest "
        f"({per_right[best_right] * 1000:.4f} US dollars per 1,000 right answers)"
        + ("" if mono["accuracy"]["overall"] > 0 else ", and the monolith has none")
    )
    + ("; an energy estimate is only as good as its power model." if not measured_energy else "."),
)

# %%
# g CO2 per kWh over the life cycle, as bundled with codecarbon (data/private_infra/carbon_intensity_per_source.json):
# hydroelectricity 26 (World Nuclear Association's comparison), coal 995 (responsibleproblemsolving/energy-usage)
grids = {"hydroelectricity": 26.0, "world average": d["grid_g_per_kwh"], "coal": 995.0}
co2 = {name: cap.co2_g_per_1000(eff["energy_per_query_j"], g) for name, g in grids.items()}
claims.verdict(
    "Y5",
    "cannot be checked",
    "Whether carbon becomes a standard metric is a forecast about practice, not a measurement; what this chapter "
    f"shows is what reporting it takes: the system's {co2['world average']:.4f} g CO2 per 1,000 queries rests on an "
    f"energy {eff['energy_method']} and a grid intensity, and the source of the electricity alone moves it from "
    f"{co2['hydroelectricity']:.4f} g (hydroelectricity, {grids['hydroelectricity']:g} g/kWh) to {co2['coal']:.4f} g "
    f"(coal, {grids['coal']:g} g/kWh; codecarbon's bundled life-cycle figures).",
)

# %% [markdown]
# ## 9 · What to measure on your own workload
#
# The numbers above belong to this task, these patients and the machine that ran them. The
# method carries over; the numbers do not. Before trusting a system on your own traffic:
#
# * **Your item mix.** Sample real queries, label their kinds, and report accuracy *per kind*
#   with the mix stated: a component that buys a lot on a kind that is rare in your traffic buys
#   little overall (section 5).
# * **The tail, not the mean.** Report p95 (or p99) latency per query; a system with tool calls
#   and retrieval has a long tail that a mean hides.
# * **Both costs.** FLOPs per query say what a query needs on hardware kept busy; seconds per
#   query say what it costs on yours, one query at a time. They disagree most for small models
#   (exercise 2).
# * **Energy with a meter.** Read the CPU's RAPL counters (`/sys/class/powercap/intel-rapl*`
#   on Linux; `perf stat -e power/energy-pkg/`), `nvidia-smi --query-gpu=power.draw` on a GPU,
#   or a wall-socket meter. Without one, say "estimate" and state the power model, as this
#   chapter does.
# * **Your grid and your price.** Grid carbon intensity varies several-fold between regions and
#   hours; a price per hour is paid whether the machine is busy or not: divide by your real
#   utilisation.
# * **Time-to-accuracy for what you train**, measured to a fixed target, not loss at a fixed
#   step count.
# * **A busy machine.** Measure with the load you will run beside, and repeat: the course's
#   timing protocol (`measure.interleaved`) reports rounds and whether the machine was busy.

# %% [markdown]
# ## Summary
#
# * **A system is a routing.** Each kind of query goes to the part that fits it: a classifier
#   for the easy ones, a search for knowledge the weights do not hold, a calculator for exact
#   arithmetic, a verifier where a check is cheap. The course built every part; the system is
#   a few lines of routing (`cap.configure`).
# * **Score it per kind.** Overall accuracy hides where a component pays; the ablations show
#   what each buys, and only on the kinds that need it.
# * **Two costs, not one.** Counted FLOPs fall far more than measured seconds for tiny models:
#   fixed per-token costs, tool calls and searches dominate. Report both, with p95 latency.
# * **Money, energy and carbon are assumptions times measurements.** Tokens/s per dollar needs
#   a price and full utilisation; energy needs a meter (RAPL) or a stated power model; carbon
#   needs the grid's intensity. State each, as the report card does.
# * **When not to build a system:** when the traffic has one kind of query a single model does
#   well, or when the glue (routing errors, a long tail of tool latency, more parts to operate)
#   costs more than the model it replaces.
#
# **What this does not show:** large models, GPUs or batched serving. Every number is from two
# tiny patients on a CPU, one query at a time.

# %% [markdown]
# ## Exercise 1 · Add a component that beats the frontier
#
# Add a component **in front of** the efficient system: a rule that reads the prompt and
# either answers the query itself, or returns `DEFER` to hand it on to the system (which then
# answers as in the stored run). What the rule answers is scored with the item's scoring rule
# and costs no model FLOPs. The checker passes when the combined system is at least as
# accurate as the efficient system alone and lies **beyond the frontier** of every stored
# system (monolith, efficient system, ablations, configurator settings): none of them is at
# least as accurate at a cost per query (FLOPs) at most as high. Hint: look at the prompts
# of section 1 — one kind has a fixed format, and chapter 09 has a tool that answers it
# exactly.

# %%
from course_lib.exercises import check_front_door, check_time_from_flops_prediction
from course_lib.exercises.ch13 import DEFER


def front_door(prompt: str) -> str:
    raise NotImplementedError  # your rule here: an answer, or DEFER


check_front_door(front_door)


# %% tags=["solution"] jupyter={"source_hidden": true} cellView="form"
# @title Solution — try the exercise first
def front_door(prompt: str) -> str:
    import re

    from course_lib import tools

    m = re.fullmatch(r'Q: Compute "([0-9+\-*]+)"\.\s*', prompt)
    return tools.calculate(m.group(1)) if m else DEFER


assert check_front_door(front_door).passed
from course_lib.exercises.ch13 import frontier_task, score_rule

fd = score_rule(front_door, frontier_task())
print(
    f"with the front door: {fd['accuracy']:.1%} at {fd['cost'] / 1e6:.3f} MFLOPs per query "
    f"({fd['answered']} answered by the rule, all {'right' if fd['answered_right'] == fd['answered'] else 'but some right'}); "
    f"the efficient system: {eff['accuracy']['overall']:.1%} at {eff['flops_per_query'] / 1e6:.3f}"
)

# %% [markdown]
# ## Exercise 2 · Predict, then measure: is time proportional to FLOPs?
#
# Section 3 timed the efficient system live on a few items and counted the FLOPs of both
# systems on them. If time were proportional to FLOPs, the monolith would take the efficient
# system's time per query times the FLOPs ratio. Write that prediction, in **milliseconds**
# per query, from the efficient system's live numbers — `live_sum["efficient"]` and the FLOPs of
# `live_sum["monolith"]` (keys `"mean_seconds"`, `"flops_per_query"`) — *before* you look at the
# monolith's measured time; the next cell compares.


# %%
def predicted_monolith_ms() -> float:
    raise NotImplementedError  # your prediction here, in ms


# %% tags=["nbval-ignore-output"]
measured_monolith_ms = live_sum["monolith"]["mean_seconds"] * 1e3  # section 3's live run, the same items
print(f"monolith, measured live: {measured_monolith_ms:.1f} ms per query")
check_time_from_flops_prediction(predicted_monolith_ms, measured_monolith_ms)


# %% tags=["solution"] jupyter={"source_hidden": true} cellView="form"
# @title Solution — try the exercise first
def predicted_monolith_ms() -> float:
    e, m = live_sum["efficient"], live_sum["monolith"]
    return e["mean_seconds"] * 1e3 * m["flops_per_query"] / e["flops_per_query"]


assert check_time_from_flops_prediction(predicted_monolith_ms, measured_monolith_ms).passed

# %% [markdown]
# ## References
#
# * Zaharia et al. (2024), *The Shift from Models to Compound AI Systems*, BAIR blog. <https://bair.berkeley.edu/blog/2024/02/18/compound-ai-systems/>
# * Chen, Zaharia & Zou (2023), *FrugalGPT: How to Use Large Language Models While Reducing Cost and Improving Performance*. [arXiv:2305.05176](https://arxiv.org/abs/2305.05176)
# * Lewis et al. (2020), *Retrieval-Augmented Generation for Knowledge-Intensive NLP Tasks*. [arXiv:2005.11401](https://arxiv.org/abs/2005.11401)
# * Schick et al. (2023), *Toolformer: Language Models Can Teach Themselves to Use Tools*. [arXiv:2302.04761](https://arxiv.org/abs/2302.04761)
# * Dettmers et al. (2022), *LLM.int8(): 8-bit Matrix Multiplication for Transformers at Scale*. [arXiv:2208.07339](https://arxiv.org/abs/2208.07339)
# * Coleman et al. (2017), *DAWNBench: An End-to-End Deep Learning Benchmark and Competition* (time-to-accuracy). <https://dawn.cs.stanford.edu/benchmark/papers/nips17-dawnbench.pdf>
# * Reddi et al. (2020), *MLPerf Inference Benchmark*. [arXiv:1911.02549](https://arxiv.org/abs/1911.02549)
# * Strubell, Ganesh & McCallum (2019), *Energy and Policy Considerations for Deep Learning in NLP*. [arXiv:1906.02243](https://arxiv.org/abs/1906.02243)
# * Henderson et al. (2020), *Towards the Systematic Reporting of the Energy and Carbon Footprints of Machine Learning*. [arXiv:2002.05651](https://arxiv.org/abs/2002.05651)
# * Lacoste et al. (2019), *Quantifying the Carbon Emissions of Machine Learning*. [arXiv:1910.09700](https://arxiv.org/abs/1910.09700)
# * Patterson et al. (2021), *Carbon Emissions and Large Neural Network Training*. [arXiv:2104.10350](https://arxiv.org/abs/2104.10350)
# * David et al. (2010), *RAPL: Memory Power Estimation and Capping*. [doi:10.1145/1840845.1840883](https://doi.org/10.1145/1840845.1840883)
# * CodeCarbon documentation (methodology: CPU power when no counter is available). <https://mlco2.github.io/codecarbon/methodology.html>

# %% [markdown]
# ## Self-check
#
# A short quiz; every answer explains why it is right or wrong. The last question is about
# your machine: its answer comes from section 3's live run.

# %% tags=["nbval-ignore-output"]
from course_lib import quiz

third = live_sum["efficient"]["mean_seconds"] <= live_sum["monolith"]["mean_seconds"] / 3
quiz.show("13", measured={"q5": "yes" if third else "no"})

# %% tags=["nbval-ignore-output"]
from course_lib import progress

progress.show("13")
