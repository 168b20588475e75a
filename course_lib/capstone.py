"""The capstone (chapter 13): one task, a monolith and an assembled system, and the metrics that compare them.

The article ends with "The Rise of the System": an orchestrated system of small, specialised
components (a small model, a retriever, a tool, a verifier) instead of one large model, and
benchmarks beyond accuracy: tokens per second per dollar, energy per inference,
time-to-accuracy, carbon. This module holds three things, each in one place:

* **the task** (:func:`task_items`, version :data:`TASK_VERSION`): a fixed, held-out mix of
  four item kinds (:data:`MIX`), each with its prompt, gold answer and scoring rule;
* **the metrics** — small documented functions, each tested against hand arithmetic:
  :func:`accuracy_by_kind`, :func:`latency_percentiles`, :func:`tokens_per_second`,
  :func:`tokens_per_s_per_dollar`, :func:`dollars_per_million_tokens`,
  :func:`cost_per_query_usd`, :func:`energy_per_query_j` (RAPL when the machine has it, else
  CPU-seconds × watts per core, labelled *estimate*), :func:`co2_g_per_1000`,
  :func:`time_to_accuracy` (chapter 07's :func:`course_lib.train.time_to_target`), :func:`pareto` and
  the :func:`report_card`;
* **the systems** as compositions of per-item component records (:func:`configure`): the
  monolith, the efficient system and its ablations (:data:`SYSTEMS`). A component's answer
  to an item is computed once (:mod:`course_lib.experiments.capstone` runs them); every
  system, ablation and configurator setting is then a routing of items to records, which
  is what makes the chapter's configurator instant.

Run the whole comparison on your own machine (a progress bar; writes the report card as
JSON and markdown)::

    python -m course_lib.capstone run --out build/capstone/
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from course_lib import data
from course_lib.cascade import pareto_front, topic_task
from course_lib.checks import check_bool, check_choice, check_float, check_int, check_type
from course_lib.experiments import tools as tool_runs
from course_lib.train import time_to_target

#: bump when the items, the prompts or the scoring rules change
TASK_VERSION = 1
#: the four item kinds, in the order the task lists them
KINDS = ("corpus_fact", "fresh_fact", "arithmetic", "topic")
#: how many items of each kind (the mix); 160 items in all
MIX = {"corpus_fact": 40, "fresh_fact": 40, "arithmetic": 40, "topic": 40}
#: scoring rules: ``exact`` = :func:`course_lib.experiments.tools.is_correct` (exact string after
#: trimming white space and one final ``.``); ``label`` = the same on a topic name
RULES = {"corpus_fact": "exact", "fresh_fact": "exact", "arithmetic": "exact", "topic": "label"}
TASK_SEED = 13
#: a topic item shows the first this-many words of a held-out article's extract
TOPIC_WORDS = 30

# ----------------------------------------------------------------------------- cited defaults

#: on-demand $/hour of a 2-vCPU cloud instance: AWS m7g.large (2 vCPU, Linux, us-east-1) at
#: $0.0816/h, as listed on 2026-06-17 by https://www.factualminds.com/blog/amazon-ec2-on-demand-pricing-instance-families-2026/
#: (a third-party summary of AWS's rate card; an ARM instance, so an approximation for this x86 machine)
PRICE_PER_HOUR = 0.0816
PRICE_SOURCE = (
    "AWS m7g.large (2 vCPU) on-demand, us-east-1, $0.0816/h as of 2026-06-17 — "
    "https://www.factualminds.com/blog/amazon-ec2-on-demand-pricing-instance-families-2026/"
)
#: codecarbon's fallback CPU power (W) for a CPU it cannot identify (``POWER_CONSTANT`` in
#: codecarbon/external/hardware.py, v3.3); "AMD EPYC" without a model number is such a CPU
TDP_W = 85.0
TDP_SOURCE = "codecarbon 3.3 fallback TDP for an unidentified CPU (external/hardware.py POWER_CONSTANT = 85 W)"
#: world-average grid carbon intensity (g CO2 / kWh) bundled with codecarbon 3.3
#: (data/private_infra/carbon_intensity_per_source.json "world_average", which cites the IEA
#: Global Energy & CO2 Status Report 2019: https://www.iea.org/reports/global-energy-co2-status-report-2019/emissions)
GRID_G_PER_KWH = 475.0
GRID_SOURCE = "codecarbon 3.3 world_average 475 g/kWh (IEA Global Energy & CO2 Status Report 2019)"
RAPL_DIR = Path("/sys/class/powercap")


# =============================================================================== the task


@dataclass(frozen=True)
class Item:
    """One task item: ``kind`` (of :data:`KINDS`), ``prompt`` (what every system is given),
    ``gold`` (the answer), ``rule`` (of :data:`RULES`), ``source`` (article title, or ``""``)."""

    id: str
    kind: str
    prompt: str
    gold: str
    rule: str
    source: str = ""
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    def to_dict(self) -> dict:
        return asdict(self)


def topic_text(extract: str) -> str:
    """The topic question of an extract: its first :data:`TOPIC_WORDS` words, quoted."""
    check_type("extract", extract, str)
    snippet = " ".join(extract.split()[:TOPIC_WORDS]).replace('"', "'")
    return f'Which topic is this text about: "{snippet}"?'


def _from_question(q, kind: str) -> Item:
    meta = {"tool": q.tool, "arguments": q.arguments}
    return Item(q.id, kind, q.prompt, q.gold, RULES[kind], q.source, meta)


def task_items(version: int = TASK_VERSION) -> list[Item]:
    """The capstone's held-out items (version :data:`TASK_VERSION`), in :data:`KINDS` order, :data:`MIX` of each.

    * ``corpus_fact``: fill-the-blank numbers from **training-split** articles (the patients
      read them in pretraining; the closed-book shots of chapter 09 are excluded);
    * ``fresh_fact``: the same from **test-split** articles — added to the knowledge base
      after training (chapter 09's :func:`~course_lib.experiments.tools.question_set`);
    * ``arithmetic``: exact integer arithmetic, 2–6 digit operands (chapter 09's);
    * ``topic``: the topic (one of :data:`course_lib.data.TOPICS`) of a held-out article's
      first words (chapter 10's task, val + test split).

    Deterministic: seeded samples of fixed pools, the same list on every call.
    """
    version = check_int("version", version, min=1, max=TASK_VERSION)
    return list(_task_items(version))


@lru_cache(maxsize=1)
def _task_items(version: int) -> tuple[Item, ...]:
    rng = np.random.default_rng(TASK_SEED)
    shots = {q.id for q in tool_runs.shots_for("retrieval")}
    train_facts = [q for q in tool_runs.retrieval_questions("train") if q.id not in shots]
    pick = np.sort(rng.choice(len(train_facts), MIX["corpus_fact"], replace=False))
    corpus = [_from_question(train_facts[i], "corpus_fact") for i in pick.tolist()]
    qs = tool_runs.question_set(n_arithmetic=MIX["arithmetic"], n_retrieval=MIX["fresh_fact"])
    arith = [_from_question(q, "arithmetic") for q in qs if q.kind == "arithmetic"]
    fresh = [_from_question(q, "fresh_fact") for q in qs if q.kind == "retrieval"]
    task = topic_task()
    rows = np.sort(rng.choice(task.heldout, MIX["topic"], replace=False))
    arts = data.load_articles()
    topic = [
        Item(
            f"t-{int(r)}",
            "topic",
            f"Q: {topic_text(task.texts[r])}\n",
            data.TOPICS[int(task.labels[r])],
            RULES["topic"],
            arts[int(r)].title,
            {"row": int(r)},
        )
        for r in rows.tolist()
    ]
    return tuple(corpus + fresh + arith + topic)


def check_items(items) -> list[Item]:
    """``items`` as a non-empty list of :class:`Item` (ValueError naming ``items`` when empty)."""
    if isinstance(items, Item) or not isinstance(items, Sequence):
        raise TypeError(f"items must be a list of capstone.Item, got {type(items).__name__}")
    if len(items) == 0:
        raise ValueError("items must be a non-empty list of capstone.Item, got an empty list")
    for it in items:
        check_type("items", it, Item, what="a list of capstone.Item")
    return list(items)


def mix_of(items) -> dict[str, int]:
    """How many items of each kind (the stated mix)."""
    items = check_items(items)
    return {k: sum(it.kind == k for it in items) for k in KINDS if any(it.kind == k for it in items)}


def score(answer: str, item: Item) -> bool:
    """Apply ``item``'s scoring rule to ``answer`` (both rules: exact match after normalising)."""
    check_type("answer", answer, str)
    check_type("item", item, Item)
    return tool_runs.is_correct(answer, item.gold)


# =============================================================================== metrics


def _array(name: str, values, *, min_len: int = 1) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    if a.ndim != 1 or len(a) < min_len:
        raise ValueError(f"{name} must be a 1-D list of at least {min_len} numbers, got shape {a.shape}")
    if not np.isfinite(a).all() or (a < 0).any():
        raise ValueError(f"{name} must hold finite numbers >= 0")
    return a


def accuracy(correct) -> float:
    """Fraction of items answered correctly: ``sum(correct) / len(correct)``."""
    c = np.asarray(correct, dtype=bool)
    if c.ndim != 1 or len(c) == 0:
        raise ValueError("correct must be a non-empty 1-D list of booleans")
    return float(c.mean())


def accuracy_by_kind(correct, kinds) -> dict[str, float]:
    """Accuracy per item kind plus ``"overall"``: ``{kind: mean(correct[kinds == kind])}``."""
    c = np.asarray(correct, dtype=bool)
    k = np.asarray(kinds)
    if c.shape != k.shape or c.ndim != 1 or len(c) == 0:
        raise ValueError("correct and kinds must be non-empty 1-D lists of the same length")
    out = {kind: float(c[k == kind].mean()) for kind in KINDS if (k == kind).any()}
    out["overall"] = float(c.mean())
    return out


def latency_percentiles(seconds, qs: Sequence[float] = (50, 95)) -> dict[str, float]:
    """Per-query latency percentiles in seconds: ``{"p50": ..., "p95": ...}`` (numpy's linear interpolation)."""
    s = _array("seconds", seconds)
    for q in qs:
        check_float("qs", q, min=0, max=100)
    return {f"p{q:g}": float(np.percentile(s, q)) for q in qs}


def tokens_per_second(tokens, seconds) -> float:
    """Throughput: total tokens / total seconds (tokens/s), over all queries together."""
    t, s = _array("tokens", tokens), _array("seconds", seconds)
    if len(t) != len(s):
        raise ValueError("tokens and seconds must have the same length")
    if s.sum() <= 0:
        raise ValueError("seconds must sum to more than 0")
    return float(t.sum() / s.sum())


def check_price(price_per_hour) -> float:
    return check_float("price_per_hour", price_per_hour, min=0, min_inclusive=False)


def tokens_per_s_per_dollar(tokens_per_s: float, price_per_hour: float = PRICE_PER_HOUR) -> float:
    """The article's *tokens/second per dollar*: throughput divided by the machine's $/hour.

    Unit: (tokens/s) per ($/h). Times 3600 it is tokens per dollar: what one dollar of machine
    time buys at this throughput.
    """
    check_float("tokens_per_s", tokens_per_s, min=0)
    return float(tokens_per_s / check_price(price_per_hour))


def cost_per_query_usd(seconds, price_per_hour: float = PRICE_PER_HOUR) -> float:
    """Mean machine cost of a query in dollars: ``mean(seconds) × price_per_hour / 3600``."""
    return float(_array("seconds", seconds).mean() * check_price(price_per_hour) / 3600)


def dollars_per_million_tokens(tokens, seconds, price_per_hour: float = PRICE_PER_HOUR) -> float:
    """$ per million tokens: ``1e6 × price_per_hour / 3600 / tokens_per_second``."""
    tps = tokens_per_second(tokens, seconds)
    if tps <= 0:
        raise ValueError("tokens must sum to more than 0")
    return float(1e6 * check_price(price_per_hour) / 3600 / tps)


def default_watts_per_core(tdp_w: float = TDP_W, cores: int | None = None) -> float:
    """Power of one busy core (W): the CPU's power ÷ its logical cores, as codecarbon's process mode counts it."""
    check_float("tdp_w", tdp_w, min=0, min_inclusive=False)
    cores = check_int("cores", (os.cpu_count() or 1) if cores is None else cores, min=1)
    return float(tdp_w / cores)


def rapl_energy_uj() -> int | None:
    """Summed package energy counters (µJ) of ``/sys/class/powercap/intel-rapl:*``; None where absent or unreadable."""
    total, found = 0, False
    for p in sorted(RAPL_DIR.glob("intel-rapl:*/energy_uj")) if RAPL_DIR.is_dir() else []:
        if p.parent.name.count(":") != 1:  # packages only (sub-zones are inside them)
            continue
        try:
            total += int(p.read_text())
            found = True
        except (OSError, ValueError):
            return None
    return total if found else None


def energy_per_query_j(cpu_seconds, watts_per_core: float, *, rapl_j: float | None = None) -> dict:
    """Energy per query in joules, and how it was obtained.

    With ``rapl_j`` (the RAPL energy of the whole run, joules) it is that divided by the number
    of queries, labelled ``"measured (RAPL)"``; otherwise ``mean(cpu_seconds) × watts_per_core``,
    labelled ``"estimate"`` — a CPU-second costs the power of one busy core.
    """
    c = _array("cpu_seconds", cpu_seconds)
    w = check_float("watts_per_core", watts_per_core, min=0, min_inclusive=False)
    if rapl_j is not None:
        return {"joules": float(check_float("rapl_j", rapl_j, min=0) / len(c)), "method": "measured (RAPL)"}
    return {"joules": float(c.mean() * w), "method": "estimate"}


def co2_g_per_1000(joules_per_query: float, grid_g_per_kwh: float = GRID_G_PER_KWH) -> float:
    """Grams of CO2 per 1,000 queries: ``1000 × J / 3.6e6 (J per kWh) × g/kWh``."""
    j = check_float("joules_per_query", joules_per_query, min=0)
    g = check_float("grid_g_per_kwh", grid_g_per_kwh, min=0)
    return float(1000 * j / 3.6e6 * g)


def time_to_accuracy(card: dict, target_loss: float) -> dict | None:
    """Time-to-accuracy of a stored patient: optimiser steps, tokens and seconds until its validation loss
    first reached ``target_loss`` — the course's one definition, :func:`course_lib.train.time_to_target`
    (chapter 07), applied to the card's evaluation curve. None when the run never got there.
    """
    check_type("card", card, dict)
    for key in ("curve", "tokens_seen", "train_seconds", "train_config"):
        if key not in card:
            raise ValueError(f"card must be a patient card with the key {key!r}, got keys {sorted(card)}")
    history = {
        "val_step": card["curve"]["step"],
        "val_loss": card["curve"]["val_loss"],
        "tokens_seen": card["tokens_seen"],
        "seconds": card["train_seconds"],
        "steps": card["train_config"]["steps"],
    }
    t = time_to_target(history, target_loss)
    return None if t is None else asdict(t)


def pareto(cost, accuracy) -> list[int]:
    """Indices of the cost/accuracy frontier, cheapest first (:func:`course_lib.cascade.pareto_front`)."""
    return [int(i) for i in pareto_front(cost, accuracy)]


# =============================================================================== systems

#: the components an ablation can remove (``without``'s choices); quantization is chosen by measurement
COMPONENTS = ("router", "topic_classifier", "retrieval", "calculator", "verifier", "quantization")
#: the tool model's variants: (bits, tools available)
BITS = (32, 8)
#: int8 is used only when its mean seconds per tool query are at most this fraction of fp32's at no loss of accuracy
INT8_MUST_SAVE = 0.9


@dataclass(frozen=True)
class SystemConfig:
    """How an assembled system handles an item.

    ``monolith``: every item goes to the small patient closed-book (nothing else used).
    Otherwise: the ``router`` (a naive-Bayes classifier of the query) sends topic questions
    to the ``topic_classifier`` (naive Bayes on the text), which answers when its confidence
    is at least ``threshold`` and else escalates to the small patient (a cascade); every
    other query goes to the tool-tuned tiny model at ``bits`` (32 = fp32, 8 = int8 W8A8) with
    the tools switched on (``retrieval``: the knowledge-base search; ``calculator``); the
    ``verifier`` re-runs the calculator on the model's own call and replaces an answer that
    disagrees with the tool's result. Without a router every query goes to the tool model;
    without a topic classifier topic queries go straight to the small patient.
    """

    monolith: bool = False
    router: bool = True
    topic_classifier: bool = True
    threshold: float = 0.0
    retrieval: bool = True
    calculator: bool = True
    verifier: bool = True
    bits: int = 32

    def __post_init__(self):
        for name in ("monolith", "router", "topic_classifier", "retrieval", "calculator", "verifier"):
            check_bool(name, getattr(self, name))
        check_float("threshold", self.threshold, min=0, max=1.01)
        check_choice("bits", self.bits, BITS)

    @property
    def tool_variant(self) -> str:
        return variant_name(self.bits, calculator=self.calculator, retrieval=self.retrieval)


def variant_name(bits: int, *, calculator: bool, retrieval: bool) -> str:
    """The key of a tool-model component record set, e.g. ``"tools/int8/calculator+search"``."""
    check_choice("bits", bits, BITS)
    names = [n for n, on in (("calculator", calculator), ("search", retrieval)) if on]
    return f"tools/{'fp32' if bits == 32 else 'int8'}/{'+'.join(names) or 'none'}"


def without(base: SystemConfig, component: str) -> SystemConfig:
    """``base`` with one component of :data:`COMPONENTS` removed or, for quantization, flipped (an ablation)."""
    check_choice("component", component, COMPONENTS)
    change = {"quantization": {"bits": 40 - base.bits}}.get(component, {component: False})
    return SystemConfig(**{**asdict(base), **change})


MONOLITH = SystemConfig(monolith=True)


def choose_bits(runs: dict | None) -> int:
    """8 when the int8 tool model is measurably faster (mean seconds ≤ :data:`INT8_MUST_SAVE` × fp32's) and as accurate
    on the items both answered; else 32. Without runs: 32."""
    if runs is None:
        return 32
    a, b = (runs["components"].get(variant_name(bits, calculator=True, retrieval=True)) for bits in BITS)
    if not a or not b:
        return 32
    both = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
    if not both:
        return 32
    secs32, secs8 = (float(np.mean([p[j]["seconds"] for p in both])) for j in (0, 1))
    acc32, acc8 = (sum(p[j]["correct"] for p in both) for j in (0, 1))
    return 8 if secs8 <= INT8_MUST_SAVE * secs32 and acc8 >= acc32 else 32


def systems(runs: dict | None = None) -> dict[str, SystemConfig]:
    """The systems compared: the monolith, the efficient system (int8 only where :func:`choose_bits` says it helps),
    and the efficient system with each of :data:`COMPONENTS` removed in turn (``"− router"``; quantization
    is flipped: ``"− int8"`` or ``"+ int8"``)."""
    eff = SystemConfig(bits=choose_bits(runs))
    out = {"monolith": MONOLITH, "efficient": eff}
    for c in COMPONENTS:
        name = ("− int8" if eff.bits == 8 else "+ int8") if c == "quantization" else f"− {c}"
        out[name] = without(eff, c)
    return out


#: the systems without a run to choose the bits from (the efficient system in fp32)
SYSTEMS = systems()
EFFICIENT = SYSTEMS["efficient"]


def system_config(name_or_config, runs: dict | None = None) -> SystemConfig:
    """A :class:`SystemConfig` from a name of :func:`systems` (or a config, returned as is)."""
    if isinstance(name_or_config, SystemConfig):
        return name_or_config
    table = systems(runs)
    check_choice("system", name_or_config, table)
    return table[name_or_config]


def _zero():
    return {"seconds": 0.0, "cpu_seconds": 0.0, "tokens_in": 0, "tokens_out": 0, "flops": 0.0, "rapl_j": 0.0}


def _add(total: dict, rec: dict) -> None:
    for k in ("seconds", "cpu_seconds", "tokens_in", "tokens_out", "flops"):
        total[k] += rec[k]
    # RAPL joules only when every component on the path was measured with the counters
    r = rec.get("rapl_j")
    total["rapl_j"] = None if r is None or total["rapl_j"] is None else total["rapl_j"] + r


def verify(rec: dict) -> tuple[str, bool]:
    """The verifier: (answer, changed). If the record's last calculator result disagrees with the answer, the result wins."""
    result = rec.get("calculator_result")
    answer = rec["answer"]
    if result is None or tool_runs.normalize(answer) == tool_runs.normalize(result):
        return answer, False
    return result, True


def configure(runs: dict, config, items: Sequence[Item] | None = None) -> list[dict]:
    """Per-item records of a system: answer, correct, cost (seconds, cpu_seconds, tokens, flops) and the path taken.

    ``runs`` is the stored run (:func:`course_lib.experiments.capstone.load_runs`) or a fresh
    one; ``config`` a :class:`SystemConfig` or a name of :func:`systems` (chosen with ``runs``). Costs add up along
    the path: router, then classifier, then (on escalation) the small patient, or the tool
    model, then the verifier.
    """
    check_type("runs", runs, dict)
    cfg = system_config(config, runs)
    items = check_items(items if items is not None else [Item(**d) for d in runs["items"]])
    comp = runs["components"]
    if not cfg.monolith and cfg.tool_variant not in comp:
        raise ValueError(f"runs has no records for the tool variant {cfg.tool_variant!r}")
    out = []
    for i, it in enumerate(items):
        total, path = _zero(), []
        if cfg.monolith:
            rec = comp["monolith"][i]
            _add(total, rec)
            answer, path = rec["answer"], ["small closed-book"]
        else:
            route = "tools"
            if cfg.router:
                r = comp["router"][i]
                _add(total, r)
                path.append("router")
                route = r["route"]
            if route == "topic":
                if cfg.topic_classifier:
                    nb = comp["topic_nb"][i]
                    _add(total, nb)
                    path.append("naive Bayes")
                    answer = nb["answer"]
                if not cfg.topic_classifier or comp["topic_nb"][i]["confidence"] < cfg.threshold:
                    rec = comp["monolith"][i]
                    _add(total, rec)
                    path.append("small closed-book")
                    answer = rec["answer"]
            else:
                rec = comp[cfg.tool_variant][i]
                if rec is None:
                    raise ValueError(f"runs has no {cfg.tool_variant!r} record for item {it.id}")
                _add(total, rec)
                path.append(cfg.tool_variant)
                answer = rec["answer"]
                if cfg.verifier and rec.get("calculator_result") is not None:
                    answer, changed = verify(rec)
                    total["seconds"] += rec.get("verify_seconds", 0.0)
                    total["cpu_seconds"] += rec.get("verify_seconds", 0.0)
                    path.append("verifier (corrected)" if changed else "verifier")
        out.append(
            {"id": it.id, "kind": it.kind, "answer": answer, "correct": score(answer, it), "path": path, **total}
        )
    return out


def summarize(
    records: Sequence[dict],
    *,
    price_per_hour: float = PRICE_PER_HOUR,
    watts_per_core: float | None = None,
    grid_g_per_kwh: float = GRID_G_PER_KWH,
) -> dict:
    """Every metric of one system from its per-item records (see the module docstring for units)."""
    if len(records) == 0:
        raise ValueError("records must be a non-empty list of per-item records")
    check_price(price_per_hour)
    wpc = default_watts_per_core() if watts_per_core is None else watts_per_core
    secs = [r["seconds"] for r in records]
    cpu = [r["cpu_seconds"] for r in records]
    toks = [r["tokens_in"] + r["tokens_out"] for r in records]
    out_toks = [r["tokens_out"] for r in records]
    rapl = [r.get("rapl_j") for r in records]
    energy = energy_per_query_j(cpu, wpc, rapl_j=sum(rapl) if all(x is not None for x in rapl) else None)
    acc = accuracy_by_kind([r["correct"] for r in records], [r["kind"] for r in records])
    tps = tokens_per_second(toks, secs)
    return {
        "accuracy": acc,
        "n": len(records),
        **{f"latency_{k}_s": v for k, v in latency_percentiles(secs).items()},
        "mean_seconds": float(np.mean(secs)),
        "mean_cpu_seconds": float(np.mean(cpu)),
        "flops_per_query": float(np.mean([r["flops"] for r in records])),
        "tokens_per_query": float(np.mean(toks)),
        "tokens_out_per_query": float(np.mean(out_toks)),
        "tokens_per_s": tps,
        "tokens_per_s_per_dollar": tokens_per_s_per_dollar(tps, price_per_hour),
        "dollars_per_million_tokens": dollars_per_million_tokens(toks, secs, price_per_hour),
        "cost_per_query_usd": cost_per_query_usd(secs, price_per_hour),
        "energy_per_query_j": energy["joules"],
        "energy_method": energy["method"],
        "co2_g_per_1000": co2_g_per_1000(energy["joules"], grid_g_per_kwh),
        "mean_seconds_by_kind": _mean_by_kind(records, "seconds"),
        "flops_by_kind": _mean_by_kind(records, "flops"),
        "paths": _path_counts(records),
    }


def _mean_by_kind(records, key: str) -> dict[str, float]:
    """Mean of ``key`` per item kind: which kind makes a system expensive."""
    kinds = [r["kind"] for r in records]
    return {k: float(np.mean([r[key] for r, kk in zip(records, kinds) if kk == k])) for k in KINDS if k in kinds}


def _path_counts(records) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in records:
        key = " → ".join(r["path"])
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


#: the report card's columns: key -> (header, format)
CARD = {
    "overall": ("accuracy", "{:.3f}"),
    "latency_p50_s": ("p50 latency (s)", "{:.3f}"),
    "latency_p95_s": ("p95 latency (s)", "{:.3f}"),
    "flops_per_query": ("MFLOPs / query", "{:.2f}"),
    "tokens_per_s": ("tokens/s", "{:.0f}"),
    "tokens_per_s_per_dollar": ("tokens/s per $/h", "{:,.0f}"),
    "cost_per_query_usd": ("$ / 1k queries", "{:.5f}"),
    "energy_per_query_j": ("J / query", "{:.2f}"),
    "co2_g_per_1000": ("g CO2 / 1k queries", "{:.3f}"),
}


def card_row(name: str, summary: dict) -> dict:
    """One report-card row (formatted strings) of a :func:`summarize` result."""
    row = {"system": name}
    for key, (head, fmt) in CARD.items():
        v = summary["accuracy"]["overall"] if key == "overall" else summary[key]
        if key == "flops_per_query":
            v = v / 1e6
        if key == "cost_per_query_usd":
            v = v * 1000
        if key == "energy_per_query_j":
            head = f"{head} ({summary['energy_method']})"  # an estimate is labelled as one
        row[head] = fmt.format(v)
    for k in KINDS:
        if k in summary["accuracy"]:
            row[f"acc {k}"] = f"{summary['accuracy'][k]:.3f}"
    return row


def report_card(summaries: dict, *, baseline: str = "monolith") -> dict:
    """The report card of several systems: rows, ratios to ``baseline`` (cost metrics), and markdown.

    Returns ``{"rows": [...], "ratios": {name: {metric: value / baseline's}}, "markdown": str}``.
    """
    check_type("summaries", summaries, dict)
    if not summaries:
        raise ValueError("summaries must not be empty")
    check_choice("baseline", baseline, summaries)
    rows = [card_row(n, s) for n, s in summaries.items()]
    base = summaries[baseline]
    ratios = {
        n: {
            k: (s[k] / base[k] if base[k] else float("nan"))
            for k in ("flops_per_query", "mean_seconds", "energy_per_query_j")
        }
        for n, s in summaries.items()
    }
    heads = list(rows[0])
    md = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    md += ["| " + " | ".join(str(r.get(h, "")) for h in heads) + " |" for r in rows]
    return {"rows": rows, "ratios": ratios, "markdown": "\n".join(md) + "\n"}


def verdict_efficiency(summaries: dict, *, efficient: str = "efficient", baseline: str = "monolith") -> dict:
    """The performance target: accuracy ≥ the monolith's at ≤ 1/3 of its cost per query, in counted FLOPs
    *and* in measured wall seconds (CPU seconds reported beside them)."""
    check_type("summaries", summaries, dict)
    check_choice("efficient", efficient, summaries)
    check_choice("baseline", baseline, summaries)
    e, b = summaries[efficient], summaries[baseline]
    flops = e["flops_per_query"] / b["flops_per_query"]
    secs = e["mean_seconds"] / b["mean_seconds"]
    cpu = e["mean_cpu_seconds"] / b["mean_cpu_seconds"]
    acc_ok = e["accuracy"]["overall"] >= b["accuracy"]["overall"]
    return {
        "accuracy_efficient": e["accuracy"]["overall"],
        "accuracy_monolith": b["accuracy"]["overall"],
        "accuracy_ok": bool(acc_ok),
        "flops_ratio": flops,
        "seconds_ratio": secs,
        "cpu_seconds_ratio": cpu,
        "flops_ok": bool(flops <= 1 / 3),
        "seconds_ok": bool(secs <= 1 / 3),
        "met": bool(acc_ok and flops <= 1 / 3 and secs <= 1 / 3),
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m course_lib.capstone run [--out DIR] [--limit N]``: the whole comparison on this machine."""
    from course_lib.experiments import capstone as runs_module

    return runs_module.main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
