"""Chapter 13's run: every component answers the capstone items once; systems are routings of those records.

The task, the metrics and the system definitions are :mod:`course_lib.capstone`; this module
*runs* the components on the items, one query at a time (batch 1, one torch thread, the
components interleaved item by item so a busy machine slows all of them alike):

* ``monolith`` — the small patient (3.1 M parameters), closed-book, fp32, given its best
  closed-book shot: a topic item (a closed set of 12 answers) is a multiple choice — the
  topic whose answer is most likely after the question, chapter 07's rule
  (:func:`course_lib.datacentric.answer_scores`, as :func:`~course_lib.datacentric.topic_accuracy`);
  fact and arithmetic items are free generation after a few solved examples of the item's
  kind (chapter 09's :func:`closed_book_prompt`, the format ch09 evaluated it with);
* ``router`` — naive Bayes (chapter 10's :class:`~course_lib.cascade.NaiveBayesBoW`, two
  classes) trained on training-split prompts: is this a topic question or a tool question?
* ``topic_nb`` — naive Bayes over the 12 topics, trained on the first words of the
  training-split articles; its answer and confidence (max probability);
* ``tools/<fp32|int8>/<tools>`` — chapter 09's tool-tuned tiny patient (0.45 M parameters),
  fp32 or int8 (chapter 05's W8A8), with the calculator and/or the knowledge-base search
  (chapter 08: BM25 + LSA hybrid over the training and test articles), through
  :func:`course_lib.tools.run_agent`.

Each record holds the answer, correctness, wall and CPU seconds, tokens in (every prefill,
tool results included) and out, counted forward FLOPs, and the tools called. A variant
without a tool gives the same greedy transcript as one with it until the model calls that
tool, so a record is reused across variants whenever the model never called a tool whose
availability differs (exact, not an approximation); only the others are re-run.

Command (deterministic answers; the timings are this machine's)::

    python -m course_lib.build capstone        # writes course_lib/zoo_data/capstone_runs.json
    python -m course_lib.capstone refresh      # recomputes its summaries from the stored records
    python -m course_lib.capstone rebuild --component monolith --kinds topic   # re-runs one component's records
    python -m course_lib.capstone run --out build/capstone/   # your machine's report card
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from course_lib import capstone as cap
from course_lib import data, fingerprint, measure, paths, tools, zoo
from course_lib.cascade import NaiveBayesBoW, bow_flops, softmax, token_ids
from course_lib.checks import check_choice, check_int
from course_lib.datacentric import answer_scores
from course_lib.experiments import tools as tool_runs
from course_lib.measure import weight_bytes
from course_lib.paths import ZOO_DIR
from course_lib.rag import Document, KnowledgeBase, LSAEmbedder

#: what ``python -m course_lib.build capstone`` writes into course_lib/zoo_data/
OUTPUTS = ("capstone_runs.json",)
RUNS_PATH = ZOO_DIR / OUTPUTS[0]
COMMAND = "python -m course_lib.build capstone"
#: the configurator's grid: cascade thresholds (naive Bayes confidence below which a topic query escalates)
THRESHOLDS = (0.0, 0.5, 0.9, 0.99, 1.01)
ROUTES = ("topic", "tools")
TOPIC_SHOTS = 3


# ----------------------------------------------------------------------------- the parts


def knowledge_base() -> KnowledgeBase:
    """The system's knowledge base: every training and test article (the test ones are the *fresh* knowledge).

    Chapter 09's passages (:data:`~course_lib.experiments.tools.PASSAGE_WORDS`-word sentence
    chunks) and LSA embedder, over both splits.
    """
    arts = data.articles("train") + data.articles("test")
    kb = KnowledgeBase(LSAEmbedder([a.extract for a in arts]), chunk_words=tool_runs.PASSAGE_WORDS)
    kb.add([Document(a.title, a.title, a.extract) for a in arts])
    return kb


def _train_prompts() -> tuple[list[str], list[int], list[str], list[int]]:
    """Training-split prompts: (router texts, router labels 0=topic 1=tools, topic texts, topic labels)."""
    arts = data.articles("train")
    topic = [cap.topic_text(a.extract) for a in arts]
    labels = [a.label for a in arts]
    facts = [q.text for q in tool_runs.retrieval_questions("train")[:3000]]
    arith = [q.text for q in tool_runs.arithmetic_questions(3000, seed=tool_runs.TRAIN_SEED)]
    router_texts = topic + facts + arith
    return router_texts, [0] * len(topic) + [1] * (len(facts) + len(arith)), topic, labels


@lru_cache(maxsize=1)
def classifiers() -> tuple[NaiveBayesBoW, NaiveBayesBoW]:
    """(router, topic classifier): naive Bayes fitted on training-split prompts (seconds)."""
    rt, rl, tt, tl = _train_prompts()
    router = NaiveBayesBoW(n_classes=2).fit(rt, rl)
    topic = NaiveBayesBoW(n_classes=len(data.TOPICS)).fit(tt, tl)
    return router, topic


def topic_shots() -> list[cap.Item]:
    """The monolith's solved topic examples: the first training articles of three different topics."""
    out, seen = [], set()
    for a in data.articles("train"):
        if a.label not in seen:
            seen.add(a.label)
            out.append(
                cap.Item(f"shot-{a.title}", "topic", f"Q: {cap.topic_text(a.extract)}\n", data.TOPICS[a.label], "label")
            )
        if len(out) == TOPIC_SHOTS:
            break
    return out


def shots(kind: str) -> list:
    return (
        topic_shots() if kind == "topic" else tool_runs.shots_for("arithmetic" if kind == "arithmetic" else "retrieval")
    )


class _FlopCounter:
    """Counted forward FLOPs of a model processing a sequence of T tokens with a KV cache: T × flops_per_token(T)."""

    def __init__(self, model):
        self.model, self.cache = model, {}

    def __call__(self, n_tokens: int) -> float:
        if n_tokens <= 0:
            return 0.0
        if n_tokens not in self.cache:
            self.cache[n_tokens] = float(n_tokens * self.model.flops_per_token(n_tokens)["total"])
        return self.cache[n_tokens]


class _Generator(tool_runs.CountingGenerator):
    """Chapter 09's generator, also counting the tokens each call prefills and the FLOPs."""

    def __init__(self, model, tokenizer, flops: _FlopCounter):
        super().__init__(model, tokenizer)
        self.flop_counter, self.tokens_in, self.flops = flops, 0, 0.0

    def __call__(self, text: str, max_new_tokens: int):
        n_in = min(len(self.tokenizer.encode(text).ids), self.model.config.max_seq_len - tool_runs.MIN_ROOM)
        new, n = super().__call__(text, max_new_tokens)
        self.tokens_in += n_in
        self.flops += self.flop_counter(n_in + n)
        return new, n


def _rapl_since(start_uj: int | None) -> float | None:
    """Joules the RAPL package counters advanced since ``start_uj`` (None without RAPL; a counter wrap reads as None)."""
    now = cap.rapl_energy_uj()
    if start_uj is None or now is None or now < start_uj:
        return None
    return (now - start_uj) / 1e6


class LazyKnowledgeBase:
    """:func:`knowledge_base`, built on the first search (half a minute of CPU): a run whose model never
    searches (arithmetic and topic items only) never pays for it."""

    def __init__(self):
        self.kb: KnowledgeBase | None = None
        self.build_seconds = self.build_cpu_seconds = 0.0  # subtracted from the query that triggered the build

    def search(self, query: str, k: int = 5, **kw):
        if self.kb is None:
            t0, c0 = time.perf_counter(), time.process_time()
            self.kb = knowledge_base()
            self.build_seconds, self.build_cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
        return self.kb.search(query, k, **kw)


def _search_flops(kb: LazyKnowledgeBase) -> float:
    """Counted FLOPs of one dense search: a (passages × dim) matrix times the query vector (BM25 postings not counted)."""
    if kb.kb is None:
        return 0.0
    return float(2 * len(kb.kb.row_text) * kb.kb.embedder.dim)


def tool_record(model, tokenizer, item: cap.Item, registry, flops: _FlopCounter, kb: LazyKnowledgeBase) -> dict:
    """``item`` answered by the tool model through :func:`course_lib.tools.run_agent` with ``registry``."""
    gen = _Generator(model, tokenizer, flops)
    built_before = kb.kb is not None
    t0, c0, e0 = time.perf_counter(), time.process_time(), cap.rapl_energy_uj()
    res = tools.run_agent(
        gen,
        item.prompt,
        registry,
        max_steps=3,
        max_new_tokens=tool_runs.MAX_NEW_TOKENS,
        token_budget=tool_runs.TOKEN_BUDGET,
    )
    seconds, cpu, rapl = time.perf_counter() - t0, time.process_time() - c0, _rapl_since(e0)
    tool_seconds = res.tool_seconds
    if not built_before and kb.kb is not None:  # this query built the knowledge base: that is setup, not the query
        seconds, cpu, tool_seconds, rapl = (
            seconds - kb.build_seconds,
            cpu - kb.build_cpu_seconds,
            tool_seconds - kb.build_seconds,
            None,
        )
    answer = res.answer or ""
    called = [s.call.name for s in res.log if s.call is not None]
    calc = [s for s in res.log if s.call is not None and s.call.name == "calculator" and not s.error]
    rec = {
        "answer": answer,
        "correct": cap.score(answer, item),
        "seconds": seconds,
        "cpu_seconds": cpu,
        "rapl_j": rapl,
        "tokens_in": gen.tokens_in,
        "tokens_out": res.tokens_generated,
        "flops": gen.flops + _search_flops(kb) * called.count(tool_runs.SEARCH),
        "called": called,
        "tool_seconds": tool_seconds,
        "calculator_result": None,
        "verify_seconds": 0.0,
    }
    if calc:
        expr = calc[-1].call.arguments["expression"]
        t0 = time.perf_counter()
        rec["calculator_result"] = tools.calculate(expr)  # the verifier's re-check: run the call again
        rec["verify_seconds"] = time.perf_counter() - t0
    return rec


def topic_choice(model, tokenizer, prompt: str) -> tuple[str, int]:
    """The monolith's topic answer: (the topic of :data:`course_lib.data.TOPICS` it ranks first, question tokens).

    The question is ``<|endoftext|>`` + ``prompt`` + ``"A:"`` (zero-shot, the format of
    :func:`course_lib.datacentric.topic_accuracy`); each topic ``c`` answers ``" c."`` and is
    scored by the log-probability of its first token (the 12 topics begin with 12 different
    tokens) — :func:`course_lib.datacentric.answer_scores`, ``score="first"``. That is ONE
    forward pass over the question, unbatched: the next-token distribution after it scores
    all 12 continuations at once; nothing is generated. On 120 training articles zero-shot and
    three solved examples scored alike (3/120), so the cheaper zero-shot prompt is used.
    """
    q = [tokenizer.token_to_id(data.EOT)] + tokenizer.encode(prompt + "A:").ids
    if len(q) >= model.config.max_seq_len:
        raise ValueError(f"prompt must fit the model's context of {model.config.max_seq_len} tokens, got {len(q)}")
    scores = answer_scores(model, [q], _topic_answers(tokenizer), score="first")[0]
    return data.TOPICS[int(np.argmax(scores))], len(q)


@lru_cache(maxsize=2)
def _topic_answer_ids(tokenizer) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(tokenizer.encode(f" {c}.").ids) for c in data.TOPICS)


def _topic_answers(tokenizer) -> list[list[int]]:
    return [list(a) for a in _topic_answer_ids(tokenizer)]


def monolith_record(patient, item: cap.Item, flops: _FlopCounter) -> dict:
    """``item`` answered closed-book by ``patient``: a topic item by :func:`topic_choice` (ranking the 12
    topics), any other by greedy free generation after a few solved examples of its kind (first line).

    Timed from the prompt's tokenisation to the answer; FLOPs counted as T × flops_per_token(T)
    for the T tokens processed (the question, plus the generated ones when it generates).
    Free generation keeps chapter 09's few-shot format: two other closed-book prompts, tried on
    training-split questions outside the task, did no better (a cloze — the clip's text up to
    the blank, the leading number of the continuation: 0/30 facts; ``"a op b = c"`` lines:
    0/20 arithmetic; the few-shot format also 0 on both).
    """
    if item.kind == "topic":
        t0, c0, e0 = time.perf_counter(), time.process_time(), cap.rapl_energy_uj()
        answer, n_in = topic_choice(patient.model, patient.tokenizer, item.prompt)
        seconds, cpu, rapl = time.perf_counter() - t0, time.process_time() - c0, _rapl_since(e0)
        return {
            "answer": answer,
            "correct": cap.score(answer, item),
            "seconds": seconds,
            "cpu_seconds": cpu,
            "rapl_j": rapl,
            "tokens_in": n_in,
            "tokens_out": 0,  # chosen, not written
            "flops": flops(n_in),
        }
    prompt = tool_runs.closed_book_prompt(item, shots(item.kind))
    n_in = min(len(patient.tokenizer.encode(prompt).ids), patient.model.config.max_seq_len - tool_runs.MIN_ROOM)
    t0, c0, e0 = time.perf_counter(), time.process_time(), cap.rapl_energy_uj()
    answer, n = tool_runs.closed_book_answer(patient.model, patient.tokenizer, prompt)
    seconds, cpu, rapl = time.perf_counter() - t0, time.process_time() - c0, _rapl_since(e0)
    return {
        "answer": answer,
        "correct": cap.score(answer, item),
        "seconds": seconds,
        "cpu_seconds": cpu,
        "rapl_j": rapl,
        "tokens_in": n_in,
        "tokens_out": n,
        "flops": flops(n_in + n),
    }


def nb_record(nb: NaiveBayesBoW, text: str, names: tuple[str, ...]) -> dict:
    """Naive Bayes on one query, timed: the predicted name, its probability, the cost."""
    t0, c0, e0 = time.perf_counter(), time.process_time(), cap.rapl_energy_uj()
    logits = nb.logits([text])
    probs = softmax(logits)[0]
    seconds, cpu, rapl = time.perf_counter() - t0, time.process_time() - c0, _rapl_since(e0)
    k = int(np.argmax(probs))
    n_tok = len(token_ids([text], nb.tokenizer)[0])
    return {
        "answer": names[k],
        "confidence": float(probs[k]),
        "seconds": seconds,
        "cpu_seconds": cpu,
        "rapl_j": rapl,
        "tokens_in": n_tok,
        "tokens_out": 0,
        "flops": float(bow_flops(n_tok, n_classes=nb.n_classes)),
    }


def quantized(model):
    """The tool model's linears in int8 (chapter 05's W8A8: int8 weights and per-token int8 activations)."""
    from course_lib.quant import quantize_model

    qmodel, _ = quantize_model(model, "w8a8", bits=8)
    return qmodel.eval()


# ----------------------------------------------------------------------------- planning and running


def grid_configs() -> list[dict]:
    """The configurator's settings: retrieval × calculator × threshold × bits (router, classifier, verifier on)."""
    return [
        {"retrieval": r, "calculator": c, "threshold": t, "bits": b}
        for r in (True, False)
        for c in (True, False)
        for t in THRESHOLDS
        for b in cap.BITS
    ]


def _all_configs(only: tuple[str, ...] | None = None) -> list[cap.SystemConfig]:
    """Every config a run must support: all systems at both bits and the grid, or just the systems named in ``only``."""
    table = cap.systems(None)
    if only is not None:
        return [cap.system_config(name) for name in only]
    both = [table, {n: cap.without(c, "quantization") for n, c in table.items()}]
    return [c for t in both for c in t.values()] + [cap.SystemConfig(**g) for g in grid_configs()]


def _needed(routes: list[str], only: tuple[str, ...] | None = None) -> dict[str, list[int]]:
    """Which tool-variant records each item needs, given the router's routes."""
    need: dict[str, set[int]] = {}
    for cfg in _all_configs(only):
        if cfg.monolith:
            continue
        for i, route in enumerate(routes):
            if route == "tools" or not cfg.router:
                need.setdefault(cfg.tool_variant, set()).add(i)
    return {v: sorted(s) for v, s in need.items()}


def _tools_of(variant: str) -> set[str]:
    names = variant.split("/")[2]
    return set() if names == "none" else set(names.split("+"))


def _reusable(rec: dict, have: set[str], want: set[str]) -> bool:
    """A record made with tools ``have`` is exactly the one ``want`` would make if no call touched a tool in only one of them."""
    return not any((name in have) != (name in want) for name in rec["called"])


def run(items: list[cap.Item] | None = None, *, only: tuple[str, ...] | None = None, progress: bool = True) -> dict:
    """Answer ``items`` (default: the whole task) with every component; the stored run's dict.

    ``only`` (names of :func:`course_lib.capstone.systems`, e.g. ``("monolith", "efficient")``)
    runs just the components those systems use — a live subset for the notebook; the grid
    and the other systems are then left out of the result.
    """
    items = cap.check_items(items if items is not None else cap.task_items())
    if only is not None:
        only = tuple(only)
        for name in only:
            cap.system_config(name)  # ValueError naming "system" for an unknown one
    with measure.num_threads(1):  # batch-1 queries on tiny models: one thread, as chapter 09 measured
        return _run(items, only=only, progress=progress)


def _run(items: list[cap.Item], *, only: tuple[str, ...] | None, progress: bool) -> dict:
    t_start = time.perf_counter()
    torch.manual_seed(0)
    small = zoo.load("small")
    tool_model = tool_runs.load_tool_model()
    int8 = only is None or any(cap.system_config(n).bits == 8 for n in only)
    models = {32: tool_model.model, **({8: quantized(tool_model.model)} if int8 else {})}
    tokenizer = tool_model.tokenizer
    flops = {"small": _FlopCounter(small.model), **{b: _FlopCounter(m) for b, m in models.items()}}
    kb = LazyKnowledgeBase()
    full = tool_runs.registry(kb)
    registries = {
        name: tools.Registry([full[n] for n in ("calculator", tool_runs.SEARCH) if n in want])
        for name, want in (
            (v, _tools_of(f"tools/fp32/{v}")) for v in ("calculator+search", "calculator", "search", "none")
        )
    }
    router, topic = classifiers()
    setup_seconds = time.perf_counter() - t_start

    comp: dict[str, list] = {"router": [], "topic_nb": [], "monolith": []}
    for it in items:
        r = nb_record(router, it.prompt.strip()[3:], ROUTES)  # the question without "Q: "
        r["route"] = r.pop("answer")
        comp["router"].append(r)
        comp["topic_nb"].append(nb_record(topic, it.prompt.strip()[3:], data.TOPICS))
    need = _needed([r["route"] for r in comp["router"]], only)
    order = sorted(need, key=lambda v: (v.split("/")[1], -len(_tools_of(v))))  # full tool set first, per bits
    for v in order:
        comp[v] = [None] * len(items)
    reran = {v: 0 for v in order}
    bar = tqdm(total=len(items), desc="capstone", disable=not progress, mininterval=2.0)
    for i, it in enumerate(items):
        comp["monolith"].append(monolith_record(small, it, flops["small"]))
        for v in order:
            if i not in need[v]:
                continue
            bits = 32 if v.split("/")[1] == "fp32" else 8
            want = _tools_of(v)
            done = [u for u in order if u.split("/")[1] == v.split("/")[1] and comp[u][i] is not None]
            src = next((u for u in done if _reusable(comp[u][i], _tools_of(u), want)), None)
            if src is not None:
                comp[v][i] = {**comp[src][i], "reused_from": src}
            else:
                reg = registries[v.split("/")[2]]
                comp[v][i] = tool_record(models[bits], tokenizer, it, reg, flops[bits], kb)
                reran[v] += 1
        bar.update(1)
    bar.close()
    wall = time.perf_counter() - t_start
    setup_seconds += kb.build_seconds
    return _assemble(items, comp, reran, small, tool_model, models, kb, setup_seconds, wall, only=only)


def footprint(small, tool_model, models, kb) -> dict:
    """Bytes in memory (weights, indexes, classifier tables) and on disk of every component."""
    router, topic = classifiers()
    kb = kb.kb  # None when no query searched
    kb_bytes = int(kb.dense.vectors.nbytes) if kb is not None and hasattr(kb.dense, "vectors") else None
    return {
        "monolith": {
            "weight_bytes": weight_bytes(small.model),
            "disk_bytes": zoo.checkpoint_path("small").stat().st_size,
        },
        "tool model fp32": {
            "weight_bytes": weight_bytes(models[32]),
            "disk_bytes": tool_runs.MODEL_PATH.stat().st_size,
        },
        "tool model int8": {"weight_bytes": weight_bytes(models[8]) if 8 in models else None, "disk_bytes": None},
        "router (naive Bayes)": {
            "weight_bytes": int(router.log_theta.nbytes + router.log_prior.nbytes),
            "disk_bytes": None,
        },
        "topic classifier (naive Bayes)": {
            "weight_bytes": int(topic.log_theta.nbytes + topic.log_prior.nbytes),
            "disk_bytes": None,
        },
        "knowledge base (dense vectors)": {
            "weight_bytes": kb_bytes,
            "disk_bytes": None,
            "passages": None if kb is None else len(kb.row_text),
        },
    }


def summaries(runs: dict, **metric_kw) -> dict:
    """:func:`course_lib.capstone.summarize` of every system of :func:`course_lib.capstone.systems` (bits chosen from ``runs``)."""
    return {name: cap.summarize(cap.configure(runs, cfg), **metric_kw) for name, cfg in cap.systems(runs).items()}


def grid_summaries(runs: dict, **metric_kw) -> list[dict]:
    """The configurator's precomputed rows: each grid setting with its summary (no per-path detail)."""
    out = []
    for g in grid_configs():
        s = cap.summarize(cap.configure(runs, cap.SystemConfig(**g)), **metric_kw)
        s.pop("paths")
        out.append({**g, **s})
    return out


def _round(x):
    if isinstance(x, float):
        return round(x, 7) if abs(x) < 1e3 else round(x, 1)
    if isinstance(x, dict):
        return {k: _round(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_round(v) for v in x]
    return x


def _assemble(items, comp, reran, small, tool_model, models, kb, setup_seconds, wall, *, only=None) -> dict:
    runs = {
        "task_version": cap.TASK_VERSION,
        "mix": cap.mix_of(items),
        "items": [it.to_dict() for it in items],
        "components": comp,
        "reran": reran,
    }
    _derive(runs, only=only)
    runs["footprint"] = footprint(small, tool_model, models, kb)
    runs["time_to_accuracy"] = time_to_accuracy_of_parts(tool_model.meta)
    runs["setup_seconds"] = setup_seconds
    runs["wall_seconds"] = wall
    runs["threads"] = 1
    runs["machine"] = fingerprint.machine()
    runs["command"] = COMMAND
    return _round(runs)


def _derive(runs: dict, *, only=None, cores: int | None = None) -> dict:
    """Fill in everything computed from the per-item records: summaries, grid, report card, target, defaults."""
    wpc = cap.default_watts_per_core(cap.TDP_W, cores)
    kw = {"price_per_hour": cap.PRICE_PER_HOUR, "watts_per_core": wpc, "grid_g_per_kwh": cap.GRID_G_PER_KWH}
    if only is None:
        runs["systems"] = summaries(runs, **kw)
        runs["grid"] = grid_summaries(runs, **kw)
    else:
        runs["systems"] = {n: cap.summarize(cap.configure(runs, cap.system_config(n)), **kw) for n in only}
        runs["grid"] = []
    runs["efficient_bits"] = cap.choose_bits(runs)
    base = "monolith" if "monolith" in runs["systems"] else next(iter(runs["systems"]))
    runs["report_card"] = cap.report_card(runs["systems"], baseline=base)
    has_both = {"monolith", "efficient"} <= set(runs["systems"])
    runs["target"] = cap.verdict_efficiency(runs["systems"]) if has_both else None
    methods = {s["energy_method"] for s in runs["systems"].values()}
    runs["defaults"] = {
        "price_per_hour": cap.PRICE_PER_HOUR,
        "price_source": cap.PRICE_SOURCE,
        "tdp_w": cap.TDP_W,
        "tdp_source": cap.TDP_SOURCE,
        "watts_per_core": wpc,
        "grid_g_per_kwh": cap.GRID_G_PER_KWH,
        "grid_source": cap.GRID_SOURCE,
        "energy_method": "estimate" if methods == {"estimate"} else "measured (RAPL)",
    }
    return runs


#: the components :func:`rebuild` can re-run alone (the tool variants depend on each other's reuse)
REBUILDABLE = ("monolith", "router", "topic_nb")


def rebuild(component: str, *, kinds: tuple[str, ...] | None = None, progress: bool = True) -> dict:
    """Re-run one component of :data:`REBUILDABLE` on the stored items (only those of ``kinds``, default all),
    keep every other record, refresh the derived fields and rewrite the stored run.

    For a change in how one component answers some kinds of items: every other record
    (answers and measured costs) stays as stored. The re-run records are timed alone (one
    torch thread), not interleaved with the other components as in :func:`build`, so on a
    busy machine their wall seconds are measured under a different load — re-run only the
    kinds whose method changed. (The monolith's topic rule, 2026-12-01: its unchanged fact
    and arithmetic records, re-run alone, gave the same answers and FLOPs in 0.37× the stored
    wall seconds and 0.85× the CPU seconds, so only ``kinds=("topic",)`` was re-run.)
    """
    check_choice("component", component, REBUILDABLE)
    if kinds is not None:
        kinds = tuple(kinds)
        for k in kinds:
            check_choice("kinds", k, cap.KINDS)
    runs = load_runs()
    every = [cap.Item(**d) for d in runs["items"]]
    redo = [i for i, it in enumerate(every) if kinds is None or it.kind in kinds]
    if not redo:
        raise ValueError(f"kinds must name a kind the stored run has, got {kinds}")
    items = [every[i] for i in redo]
    with measure.num_threads(1):
        torch.manual_seed(0)
        if component == "monolith":
            small = zoo.load("small")
            counter = _FlopCounter(small.model)
            recs = [monolith_record(small, it, counter) for it in tqdm(items, desc=component, disable=not progress)]
        else:
            router, topic = classifiers()
            nb, names = (router, ROUTES) if component == "router" else (topic, data.TOPICS)
            recs = [nb_record(nb, it.prompt.strip()[3:], names) for it in items]
            if component == "router":
                for r in recs:
                    r["route"] = r.pop("answer")
    for i, rec in zip(redo, recs):
        runs["components"][component][i] = rec
    return refresh(runs)


def refresh(runs: dict | None = None) -> dict:
    """Recompute every derived field of the stored run from its per-item records (no model is run) and rewrite it.

    For a change in a metric's definition or a default: the answers and measured costs stay as stored.
    ``runs`` (default: the stored run) is what :func:`rebuild` passes after replacing a component.
    """
    runs = load_runs() if runs is None else runs
    _derive(runs, cores=runs["machine"].get("logical_cpus"))
    runs["time_to_accuracy"] = time_to_accuracy_of_parts()
    runs = _round(runs)
    _write(runs)
    return runs


def _write(runs: dict) -> None:
    paths.atomic_write_bytes(RUNS_PATH, (json.dumps(runs, indent=None, separators=(",", ":")) + "\n").encode())
    paths.record_artefact(RUNS_PATH, rebuild=COMMAND)


def time_to_accuracy_of_parts(tool_card: dict | None = None) -> dict:
    """Time-to-accuracy of the trained parts (:func:`course_lib.capstone.time_to_accuracy`, chapter 07's definition).

    The two patients' pretraining runs, to the same target: the validation loss the tiny
    patient ends at (the higher of the two final losses, so both reach it). The tool
    fine-tune stores a training-loss curve only (no validation evaluations), so it reports
    its total training seconds and no time-to-accuracy.
    """
    cards = {name: zoo.card(name) for name in ("tiny", "small")}
    target = max(c["curve"]["val_loss"][-1] for c in cards.values())
    out = {
        f"{name} patient pretraining": {
            "target_val_loss": target,
            **(cap.time_to_accuracy(c, target) or {"steps": None, "tokens": None, "seconds": None}),
            "total_seconds": c["train_seconds"],
            "built_with": c.get("built_with"),
        }
        for name, c in cards.items()
    }
    tool_card = tool_card or tool_runs.load_tool_model().meta
    out["tool fine-tune"] = {
        "total_seconds": tool_card.get("train_seconds"),
        "note": "training-loss curve only (no validation evaluations): no time-to-accuracy",
        "machine": tool_card.get("machine"),
    }
    return out


# ----------------------------------------------------------------------------- stored run


def build(*, progress: bool = True) -> dict:
    """Run every component on the whole task and write ``capstone_runs.json`` (with the machine's fingerprint)."""
    runs = run(progress=progress)
    _write(runs)
    return runs


def load_runs() -> dict:
    """The stored full run (``capstone_runs.json``): items, per-item component records, summaries, grid, machine."""
    return paths.load_json(RUNS_PATH.name)


def write_report(runs: dict, out: Path) -> tuple[Path, Path]:
    """Write the report card as ``report_card.json`` (the whole run) and ``report_card.md`` into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    j, m = out / "report_card.json", out / "report_card.md"
    paths.atomic_write_bytes(j, (json.dumps(runs, indent=1) + "\n").encode())
    t = runs["target"]
    md = [
        "# Capstone report card",
        "",
        f"Machine: {fingerprint.machine_line(runs['machine'])}",
        f"Items: {runs['mix']} (task version {runs['task_version']})",
        f"Price: {runs['defaults']['price_source']}",
        f"Energy: {runs['defaults']['energy_method']}, {runs['defaults']['watts_per_core']:.1f} W per busy core "
        f"({runs['defaults']['tdp_source']})",
        f"Grid: {runs['defaults']['grid_source']}",
        "",
        runs["report_card"]["markdown"],
    ]
    if t is not None:
        md.append(
            f"Efficient vs monolith: accuracy {t['accuracy_efficient']:.3f} vs {t['accuracy_monolith']:.3f}, "
            f"FLOPs ×{t['flops_ratio']:.3f}, wall seconds ×{t['seconds_ratio']:.3f}, "
            f"CPU seconds ×{t['cpu_seconds_ratio']:.3f}; target (≤ 1/3 FLOPs and seconds, accuracy ≥) met: {t['met']}"
        )
    paths.atomic_write_bytes(m, ("\n".join(md) + "\n").encode())
    return j, m


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.capstone", description=__doc__.split("\n")[0])
    parser.add_argument("action", nargs="?", default="build", choices=("run", "build", "refresh", "rebuild"))
    parser.add_argument("--component", default="monolith", choices=REBUILDABLE, help="what `rebuild` re-runs")
    parser.add_argument("--kinds", nargs="+", default=None, choices=cap.KINDS, help="only items of these kinds")
    parser.add_argument("--out", default="build/capstone", help="where `run` writes report_card.json/.md")
    parser.add_argument("--limit", type=int, default=None, help="only the first N items of each kind")
    parser.add_argument("--only", nargs="+", default=None, help="only these systems (e.g. monolith efficient)")
    args = parser.parse_args(argv)
    if args.action in ("build", "refresh", "rebuild"):
        runs = {"build": build, "refresh": refresh, "rebuild": lambda: rebuild(args.component, kinds=args.kinds)}[
            args.action
        ]()
        print(runs["report_card"]["markdown"])
        print(json.dumps({"target": runs["target"], "wall_seconds": runs["wall_seconds"]}))
        return 0
    items = cap.task_items()
    if args.limit is not None:
        n = check_int("limit", args.limit, min=1)
        items = [it for k in cap.KINDS for it in [x for x in items if x.kind == k][:n]]
    runs = run(items, only=args.only)
    j, m = write_report(runs, Path(args.out))
    print(runs["report_card"]["markdown"])
    print(f"wrote {j} and {m}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
