"""Chapter 13: the capstone's metrics against hand arithmetic, the energy estimate against codecarbon,
the task's determinism, the composition of systems from per-item records, and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from course_lib import capstone as cap
from course_lib import data

# --------------------------------------------------------------------------- metrics vs hand arithmetic


def test_accuracy_by_kind_by_hand():
    correct = [True, False, True, True, False]
    kinds = ["arithmetic", "arithmetic", "topic", "topic", "fresh_fact"]
    acc = cap.accuracy_by_kind(correct, kinds)
    assert acc == {"fresh_fact": 0.0, "arithmetic": 0.5, "topic": 1.0, "overall": 3 / 5}
    assert cap.accuracy([True, True, False, False]) == 0.5


def test_latency_percentiles_by_hand():
    # numpy's linear interpolation on [1, 2, 3, 4]: p50 at rank 1.5 -> 2.5; p95 at rank 2.85 -> 3.85
    p = cap.latency_percentiles([4.0, 1.0, 3.0, 2.0])
    assert p["p50"] == pytest.approx(2.5)
    assert p["p95"] == pytest.approx(3.85)


def test_throughput_price_and_cost_by_hand():
    tps = cap.tokens_per_second([100, 300], [1.0, 3.0])
    assert tps == pytest.approx(100.0)  # 400 tokens in 4 s
    assert cap.tokens_per_s_per_dollar(100.0, 0.5) == pytest.approx(200.0)
    # 1e6 tokens at 100 tokens/s take 1e4 s = 2.777.. h at $0.36/h = $1.00
    assert cap.dollars_per_million_tokens([100, 300], [1.0, 3.0], 0.36) == pytest.approx(1.0)
    # mean 2 s at $3.60/h = $0.002
    assert cap.cost_per_query_usd([1.0, 3.0], 3.6) == pytest.approx(0.002)


def test_energy_and_co2_by_hand():
    assert cap.default_watts_per_core(80.0, 4) == 20.0
    e = cap.energy_per_query_j([0.5, 1.5], 10.0)
    assert e == {"joules": pytest.approx(10.0), "method": "estimate"}  # mean 1 CPU-s x 10 W
    assert cap.energy_per_query_j([1.0, 1.0], 10.0, rapl_j=30.0) == {"joules": 15.0, "method": "measured (RAPL)"}
    # 36 J per query x 1000 = 36 kJ = 0.01 kWh; at 475 g/kWh -> 4.75 g
    assert cap.co2_g_per_1000(36.0, 475.0) == pytest.approx(4.75)


def test_rapl_reader_is_none_or_a_count():
    v = cap.rapl_energy_uj()
    assert v is None or (isinstance(v, int) and v >= 0)


def test_time_to_accuracy_by_hand_is_chapter_07s_definition():
    # evaluations after 2, 4, 6 of 10 steps at losses 3, 2, 1; target 1.5 is crossed halfway from 4 to 6 steps
    card = {
        "curve": {"step": [1, 3, 5], "val_loss": [3.0, 2.0, 1.0]},
        "tokens_seen": 1000,
        "train_seconds": 100.0,
        "train_config": {"steps": 10},
    }
    assert cap.time_to_accuracy(card, 1.5) == {"steps": 5.0, "tokens": 500.0, "seconds": 50.0}
    assert cap.time_to_accuracy(card, 0.5) is None
    with pytest.raises(ValueError, match="card"):
        cap.time_to_accuracy({"curve": {}}, 1.0)


def test_time_to_accuracy_of_the_patients():
    from course_lib.experiments import capstone as capx

    t = capx.time_to_accuracy_of_parts({"train_seconds": 1.0})
    tiny, small = t["tiny patient pretraining"], t["small patient pretraining"]
    assert tiny["target_val_loss"] == small["target_val_loss"]
    for part in (tiny, small):
        assert 0 < part["seconds"] <= part["total_seconds"] * (1 + 1e-9)
    assert tiny["seconds"] == pytest.approx(tiny["total_seconds"])  # the target is where the tiny patient ends


def test_pareto_by_hand():
    cost = [1.0, 2.0, 3.0, 1.5, 4.0]
    acc = [0.2, 0.5, 0.4, 0.1, 0.9]
    assert cap.pareto(cost, acc) == [0, 1, 4]  # 3 is beaten by 0, 2 by 1


def test_defaults_are_cited():
    assert cap.PRICE_PER_HOUR > 0 and "http" in cap.PRICE_SOURCE
    assert cap.GRID_G_PER_KWH > 0 and "IEA" in cap.GRID_SOURCE
    assert cap.TDP_W > 0 and "codecarbon" in cap.TDP_SOURCE


def test_grid_default_is_codecarbons_world_average():
    import json
    from pathlib import Path

    import codecarbon

    f = Path(codecarbon.__file__).parent / "data" / "private_infra" / "carbon_intensity_per_source.json"
    assert json.loads(f.read_text())["world_average"] == cap.GRID_G_PER_KWH
    from codecarbon.external import hardware

    assert hardware.POWER_CONSTANT == cap.TDP_W


# --------------------------------------------------------------------------- energy vs codecarbon

#: the estimate and codecarbon's offline tracker must agree this closely on the same workload
CODECARBON_TOLERANCE = 0.25


CODECARBON_RUN = r"""
import json, time
import torch
from course_lib import capstone as cap, netguard

netguard.install()
blocked, is_local = [], netguard._is_local
netguard._is_local = lambda host: is_local(host) or blocked.append(host) or False
from codecarbon import OfflineEmissionsTracker

torch.set_num_threads(1)


def tracked(seconds):
    tracker = OfflineEmissionsTracker(country_iso_code="USA", save_to_file=False, log_level="error",
        tracking_mode="process", force_cpu_power=cap.TDP_W, force_mode_cpu_load=True,
        measure_power_secs=1, allow_multiple_runs=True)
    a = torch.randn(256, 256)
    tracker.start()
    c0 = time.process_time()
    while time.process_time() - c0 < seconds:  # matmuls release the GIL: the tracker's thread keeps sampling
        a = torch.tanh(a @ a)
    cpu = time.process_time() - c0
    tracker.stop()
    return tracker, cpu


tracked(0.3)  # a first, discarded run (see the test's docstring)
tracker, cpu = tracked(1.5)
print(json.dumps({"cpu": cpu, "theirs": tracker.final_emissions_data.cpu_energy * 3.6e6, "blocked": blocked}))
"""


def test_energy_estimate_matches_codecarbon_offline_tracker():
    """The same CPU-bound workload, measured by codecarbon's offline tracker (process mode, CPU-load
    power at the same TDP) and by our CPU-seconds × watts-per-core estimate; no network touched.

    It runs in a fresh interpreter, after one short discarded tracker run: inside pytest, or as
    the first run of a process, codecarbon's process-mode CPU load read 2-20x our estimate now
    and then (measured: 124-1758 J against 43-85 J, once 238 W at an 85 W TDP); run this way it
    agreed within 2 % in 10 of 10 runs."""
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", CODECARBON_RUN], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    ours = cap.energy_per_query_j([got["cpu"]], cap.default_watts_per_core())["joules"]
    theirs = got["theirs"]
    assert ours > 0 and theirs > 0
    assert abs(ours - theirs) / theirs < CODECARBON_TOLERANCE, (ours, theirs)
    assert got["blocked"] == [], f"codecarbon's offline tracker tried the network: {got['blocked']}"


# --------------------------------------------------------------------------- the task


@pytest.fixture(scope="module")
def items():
    return cap.task_items()


def test_task_is_deterministic_and_states_its_mix(items):
    again = cap.task_items()
    assert [it.to_dict() for it in items] == [it.to_dict() for it in again]
    assert cap.mix_of(items) == cap.MIX
    assert len({it.id for it in items}) == len(items)
    assert [it.kind for it in items] == sorted((it.kind for it in items), key=cap.KINDS.index)


def test_every_gold_passes_its_own_rule_and_kinds_are_what_they_say(items):
    train = {a.title for a in data.articles("train")}
    test = {a.title for a in data.articles("test")}
    for it in items:
        assert it.rule == cap.RULES[it.kind]
        assert cap.score(it.gold, it) and cap.score(f" {it.gold}.", it)
        assert it.prompt.startswith("Q: ") and it.prompt.endswith("\n")
        if it.kind == "corpus_fact":
            assert it.source in train
        elif it.kind == "fresh_fact":
            assert it.source in test
        elif it.kind == "topic":
            assert it.gold in data.TOPICS and it.source not in train
        else:
            assert str(eval(it.meta["arguments"]["expression"])) == it.gold  # plain integer arithmetic


def test_task_version_is_checked():
    with pytest.raises(ValueError, match="version"):
        cap.task_items(version=2)


# --------------------------------------------------------------------------- composing systems


def _rec(answer, seconds=1.0, flops=100.0, **kw):
    return {
        "answer": answer,
        "correct": False,
        "seconds": seconds,
        "cpu_seconds": seconds / 2,
        "tokens_in": 10,
        "tokens_out": 2,
        "flops": flops,
        **kw,
    }


def _toy_runs():
    """Three items: an arithmetic one the tool model gets wrong but calls the calculator right, a topic
    one naive Bayes answers with confidence 0.8, and a fresh fact the tool model gets right."""
    items = [
        cap.Item("a", "arithmetic", 'Q: Compute "2+3".\n', "5", "exact"),
        cap.Item("t", "topic", 'Q: Which topic is this text about: "x"?\n', "Geography", "label"),
        cap.Item("f", "fresh_fact", 'Q: Which number fills the blank in "y ____"?\n', "42", "exact"),
    ]
    tool = [
        _rec("6", 2.0, 300.0, called=["calculator"], calculator_result="5", verify_seconds=0.01),
        _rec("", 2.0, 300.0, called=[], calculator_result=None, verify_seconds=0.0),
        _rec("42", 3.0, 400.0, called=["search"], calculator_result=None, verify_seconds=0.0),
    ]
    comp = {
        "router": [
            {**_rec("", 0.001, 1.0), "route": "tools"},
            {**_rec("", 0.001, 1.0), "route": "topic"},
            {**_rec("", 0.001, 1.0), "route": "tools"},
        ],
        "topic_nb": [{**_rec("Arts", 0.002, 5.0), "confidence": 0.8} for _ in range(3)],
        "monolith": [_rec("5", 1.0, 1000.0), _rec("Arts", 1.0, 1000.0), _rec("7", 1.0, 1000.0)],
    }
    comp["topic_nb"][1]["answer"] = "Geography"
    for bits in cap.BITS:
        for calc in (True, False):
            for ret in (True, False):
                comp[cap.variant_name(bits, calculator=calc, retrieval=ret)] = tool
    return {"items": [it.to_dict() for it in items], "components": comp}


def test_monolith_and_efficient_paths_and_costs():
    runs = _toy_runs()
    mono = cap.configure(runs, "monolith")
    assert [r["correct"] for r in mono] == [True, False, False]
    assert [r["flops"] for r in mono] == [1000.0] * 3
    eff = cap.configure(runs, "efficient")
    assert [r["answer"] for r in eff] == ["5", "Geography", "42"]  # the verifier fixed "6"
    assert eff[0]["path"] == ["router", "tools/fp32/calculator+search", "verifier (corrected)"]
    assert eff[1]["path"] == ["router", "naive Bayes"]
    assert eff[0]["flops"] == 1.0 + 300.0 and eff[1]["flops"] == 1.0 + 5.0
    assert eff[0]["seconds"] == pytest.approx(0.001 + 2.0 + 0.01)
    s = cap.summarize(eff, watts_per_core=10.0)
    assert s["accuracy"]["overall"] == 1.0
    assert s["flops_per_query"] == pytest.approx((301 + 6 + 401) / 3)
    assert s["energy_per_query_j"] == pytest.approx(np.mean([r["cpu_seconds"] for r in eff]) * 10.0)


def test_energy_uses_rapl_only_when_every_component_on_every_path_had_it():
    runs = _toy_runs()
    assert cap.summarize(cap.configure(runs, "efficient"), watts_per_core=10.0)["energy_method"] == "estimate"
    for recs in runs["components"].values():
        for r in recs:
            r["rapl_j"] = 2.0
    recs = cap.configure(runs, "efficient")
    assert [r["rapl_j"] for r in recs] == [4.0, 4.0, 4.0]  # router + one component each
    s = cap.summarize(recs, watts_per_core=10.0)
    assert s["energy_method"] == "measured (RAPL)" and s["energy_per_query_j"] == pytest.approx(4.0)


def test_ablations_remove_one_component_each():
    runs = _toy_runs()
    no_verifier = cap.configure(runs, "− verifier")
    assert no_verifier[0]["answer"] == "6"
    escalate = cap.configure(runs, cap.SystemConfig(threshold=0.9))  # 0.8 < 0.9: the small patient answers
    assert escalate[1]["answer"] == "Arts" and escalate[1]["path"] == ["router", "naive Bayes", "small closed-book"]
    assert escalate[1]["flops"] == 1.0 + 5.0 + 1000.0
    no_router = cap.configure(runs, "− router")
    assert no_router[1]["path"][0].startswith("tools/")
    table = cap.systems()
    assert set(table) == {"monolith", "efficient", "+ int8"} | {f"− {c}" for c in cap.COMPONENTS if c != "quantization"}
    assert cap.without(cap.EFFICIENT, "retrieval").tool_variant == "tools/fp32/calculator"
    assert cap.without(cap.EFFICIENT, "quantization").bits == 8


def test_report_card_and_target():
    runs = _toy_runs()
    sums = {n: cap.summarize(cap.configure(runs, n), watts_per_core=10.0) for n in ("monolith", "efficient")}
    card = cap.report_card(sums)
    assert [r["system"] for r in card["rows"]] == ["monolith", "efficient"]
    assert card["ratios"]["monolith"]["flops_per_query"] == 1.0
    assert "| monolith |" in card["markdown"]
    t = cap.verdict_efficiency(sums)
    assert t["flops_ratio"] == pytest.approx(sums["efficient"]["flops_per_query"] / 1000.0)
    assert t["accuracy_ok"] and t["flops_ok"]
    assert t["met"] == (t["seconds_ratio"] <= 1 / 3)


def test_choose_bits_prefers_int8_only_when_it_is_faster_and_as_accurate():
    runs = _toy_runs()
    assert cap.choose_bits(runs) == 32  # same records: not faster
    full8 = cap.variant_name(8, calculator=True, retrieval=True)
    runs["components"][full8] = [{**r, "seconds": r["seconds"] / 2} for r in runs["components"][full8]]
    assert cap.choose_bits(runs) == 8
    assert cap.systems(runs)["efficient"].bits == 8 and "− int8" in cap.systems(runs)


# --------------------------------------------------------------------------- bad input


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="price_per_hour"):
        cap.tokens_per_s_per_dollar(10.0, 0.0)
    with pytest.raises(ValueError, match="price_per_hour"):
        cap.cost_per_query_usd([1.0], -1.0)
    with pytest.raises(ValueError, match="items"):
        cap.mix_of([])
    with pytest.raises(ValueError, match="items"):
        cap.configure(_toy_runs(), "efficient", [])
    with pytest.raises(ValueError, match="component"):
        cap.without(cap.EFFICIENT, "reranker")
    with pytest.raises(ValueError, match="system"):
        cap.configure(_toy_runs(), "giant")
    with pytest.raises(ValueError, match="seconds"):
        cap.latency_percentiles([])
    with pytest.raises(ValueError, match="watts_per_core"):
        cap.energy_per_query_j([1.0], 0.0)
    with pytest.raises(ValueError, match="bits"):
        cap.SystemConfig(bits=4)
    with pytest.raises(ValueError, match="threshold"):
        cap.SystemConfig(threshold=2.0)
    with pytest.raises(TypeError, match="items"):
        cap.check_items([1, 2])


# --------------------------------------------------------------------------- the stored run


@pytest.fixture(scope="module")
def stored():
    from course_lib.experiments import capstone as capx

    return capx.load_runs()  # shipped: a missing or damaged file fails (paths.zoo_file), never skips


def test_stored_run_is_complete_and_consistent(stored, items):
    from course_lib.experiments import capstone as capx

    assert stored["task_version"] == cap.TASK_VERSION
    assert [it["id"] for it in stored["items"]] == [it.id for it in items]
    n = len(items)
    for name in ("router", "topic_nb", "monolith"):
        assert len(stored["components"][name]) == n
    for rec, it in zip(stored["components"]["monolith"], items):
        assert rec["correct"] == cap.score(rec["answer"], it)
        if it.kind == "topic":  # a choice among the topics, not free generation
            assert rec["answer"] in data.TOPICS and rec["tokens_out"] == 0
    # every summary is recomputed from the per-item records
    again = capx.summaries(stored, watts_per_core=stored["defaults"]["watts_per_core"])
    for name, s in stored["systems"].items():
        assert s["accuracy"]["overall"] == pytest.approx(again[name]["accuracy"]["overall"], abs=1e-6)
        assert s["flops_per_query"] == pytest.approx(again[name]["flops_per_query"], rel=1e-5)
    assert len(stored["grid"]) == len(capx.grid_configs())
    assert stored["machine"]["cpu"] and stored["command"] == capx.COMMAND
    assert math.isfinite(stored["target"]["flops_ratio"])


def test_live_run_reproduces_the_stored_answers(stored):
    """A live run of the monolith and the efficient system on one arithmetic and one topic item: the same
    greedy answers as the stored run, consistent scoring, and no knowledge base built (nothing searched)."""
    from course_lib.experiments import capstone as capx

    items = [cap.Item(**d) for d in stored["items"]]
    sub = [next(it for it in items if it.kind == k) for k in ("arithmetic", "topic")]
    live = capx.run(sub, only=("monolith", "efficient"), progress=False)
    assert set(live["systems"]) == {"monolith", "efficient"} and live["grid"] == []
    ids = [it.id for it in items]
    for name in ("monolith", "topic_nb"):
        for rec, it in zip(live["components"][name], sub):
            assert rec["answer"] == stored["components"][name][ids.index(it.id)]["answer"]
    tool = live["components"]["tools/fp32/calculator+search"]
    assert (
        tool[0] is not None
        and tool[0]["answer"] == stored["components"]["tools/fp32/calculator+search"][ids.index(sub[0].id)]["answer"]
    )
    for rec in live["components"]["monolith"] + [tool[0]]:
        assert rec["flops"] > 0 and rec["tokens_in"] > 0 and rec["seconds"] > 0
    assert live["footprint"]["knowledge base (dense vectors)"]["passages"] is None
    assert live["target"]["flops_ratio"] < 1


def test_benchmark_rows_come_from_the_run(stored, monkeypatch):
    from benchmarks import bench_capstone
    from course_lib.experiments import capstone as capx

    monkeypatch.setattr(capx, "run", lambda **kw: stored)
    rows = bench_capstone.bench_report_card()
    assert [r["variant"] for r in rows[:-1]] == list(stored["systems"])
    eff = next(r for r in rows if r["variant"] == "efficient")
    assert eff["acc overall"] == round(stored["systems"]["efficient"]["accuracy"]["overall"], 3)
    assert rows[-1]["met"] == stored["target"]["met"]


# --------------------------------------------------------------------------- the monolith's topic rule


def test_monolith_topic_rule_picks_the_argmax_topic(monkeypatch):
    """The monolith answers a topic item by ranking the 12 topics with chapter 07's scorer: the prompt's
    question tokens go in, the topic with the highest score comes out (a hand-built score row)."""
    from course_lib.experiments import capstone as capx

    tok = data.get_tokenizer()
    seen = {}

    def fake_scores(model, questions, answers, *, score):
        seen.update(questions=questions, answers=answers, score=score)
        row = np.full(len(answers), -5.0)
        row[7] = -1.0  # the one best answer
        row[2] = -1.5
        return row[None, :]

    monkeypatch.setattr(capx, "answer_scores", fake_scores)

    class _Cfg:
        max_seq_len = 256

    model = type("M", (), {"config": _Cfg()})()
    prompt = 'Q: Which topic is this text about: "A river runs through the valley"?\n'
    answer, n_in = capx.topic_choice(model, tok, prompt)
    assert answer == data.TOPICS[7]
    assert seen["score"] == "first"
    assert seen["questions"] == [[tok.token_to_id(data.EOT)] + tok.encode(prompt + "A:").ids]
    assert n_in == len(seen["questions"][0])
    assert seen["answers"] == [tok.encode(f" {c}.").ids for c in data.TOPICS]


def test_monolith_topic_record_is_the_argmax_of_a_naive_loop():
    """On a real patient: the record's answer is the topic whose first answer token is most likely after the
    question (a plain loop, no batching), nothing is generated, and FLOPs are one pass over the question."""
    import torch
    import torch.nn.functional as F

    from course_lib import zoo
    from course_lib.experiments import capstone as capx

    tiny = zoo.load("tiny")
    tok = tiny.tokenizer
    it = cap.Item(
        "t-x", "topic", 'Q: Which topic is this text about: "The violin is a string instrument"?\n', "Arts", "label"
    )
    counter = capx._FlopCounter(tiny.model)
    rec = capx.monolith_record(tiny, it, counter)
    q = [tok.token_to_id(data.EOT)] + tok.encode(it.prompt + "A:").ids
    with torch.no_grad():
        logp = F.log_softmax(tiny.model(torch.tensor([q]))[0, -1].float(), -1)
    best = max(data.TOPICS, key=lambda c: float(logp[tok.encode(f" {c}.").ids[0]]))
    assert rec["answer"] == best and rec["correct"] == (best == "Arts")
    assert rec["tokens_in"] == len(q) and rec["tokens_out"] == 0
    assert rec["flops"] == counter(len(q)) > 0
    assert rec["seconds"] > 0


def test_rebuild_refuses_an_unknown_component():
    from course_lib.experiments import capstone as capx

    with pytest.raises(ValueError, match="component"):
        capx.rebuild("tools/fp32/none", progress=False)
