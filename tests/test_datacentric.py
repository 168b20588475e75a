"""Chapter 07 (data side): the labelled crawl, exact and near dedup, quality filters.

Cross-checks: MinHash signatures and LSH candidates against ``datasketch`` (same hash
family and bands: identical), exact dedup against a set of normalised strings, pair Jaccard
against Python sets, the MinHash estimate against exact Jaccard within its standard error,
LSH candidate rates against the S-curve, filters on hand-made documents, distillation loss
against ``torch.nn.functional.kl_div``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from course_lib import data, train, zoo
from course_lib import datacentric as dc

SMALL = dict(low_quality_per_kind=12, near_dup_fraction=0.15, dup_fraction=0.1)


@pytest.fixture(scope="module")
def arts():
    return list(data.load_articles()[:300])


@pytest.fixture(scope="module")
def crawl(arts):
    return dc.build_crawl(dc.CrawlConfig(**SMALL), articles=arts)


@pytest.fixture(scope="module")
def patient():
    return zoo.load("tiny")


# --------------------------------------------------------------------------- the crawl


def test_crawl_labels_are_consistent(crawl, arts):
    docs = crawl.docs
    assert [d.doc_id for d in docs] == list(range(len(docs)))
    clean = [d for d in docs if d.label == "clean"]
    assert sorted(d.source for d in clean) == list(range(len(arts)))  # each article exactly once
    assert all(d.text == arts[d.source].text and d.kind == "original" for d in clean)
    position = {d.source: d.doc_id for d in clean}
    kinds = {"exact_dup": {"copy", "copy_reformatted"}, "near_dup": set(dc.NEAR_DUP_KINDS)}
    kinds["low_quality"] = set(dc.LOW_QUALITY_KINDS)
    for d in docs:
        assert d.label in dc.LABELS and d.split == data.split_of(arts[d.source].title)
        if d.label == "clean":
            continue
        assert d.kind in kinds[d.label]
        assert d.doc_id > position[d.source], "a derived document is crawled after its source"
        src = arts[d.source].text
        if d.label == "exact_dup":
            assert dc.normalize(d.text) == dc.normalize(src)
            assert (d.text == src) == (d.kind == "copy")
        if d.label == "near_dup":
            assert dc.normalize(d.text) != dc.normalize(src)
    comp = crawl.composition()
    assert sum(sum(v.values()) for v in comp.values()) == len(crawl)
    assert sum(comp["near_dup"].values()) == round(0.15 * len(arts))
    assert all(comp["low_quality"][k] == 12 for k in dc.LOW_QUALITY_KINDS)


def test_crawl_is_deterministic(crawl, arts):
    again = dc.build_crawl(dc.CrawlConfig(**SMALL), articles=arts)
    assert again.to_bytes() == crawl.to_bytes() and again.sha256() == crawl.sha256()
    other = dc.build_crawl(dc.CrawlConfig(**SMALL, seed=1), articles=arts)
    assert other.sha256() != crawl.sha256()


def test_crawl_zipf_copies_are_heavy_tailed(arts):
    c = dc.build_crawl(dc.CrawlConfig(dup_fraction=1.0, near_dup_fraction=0, low_quality_per_kind=0), articles=arts)
    copies = np.bincount(c.sources[c.labels == "exact_dup"], minlength=len(arts))
    assert copies.min() >= 1 and copies.max() <= 100
    # Zipf(2): P(1) = 1/zeta(2) = 0.61; the mean is pulled up by the tail
    assert 0.5 < (copies == 1).mean() < 0.72 and copies.mean() > 1.5


def test_crawl_mask(crawl):
    m = crawl.mask(labels=["low_quality"], kinds=["truncated"])
    assert m.sum() == 12 and set(crawl.kinds[m]) == {"truncated"}
    assert crawl.mask(splits=["train"]).sum() + crawl.mask(splits=["val", "test"]).sum() == len(crawl)


# --------------------------------------------------------------------------- exact dedup


def test_exact_dedup_matches_a_set_of_normalised_strings(crawl):
    texts = crawl.texts
    res = dc.exact_dedup(texts)
    norm = [dc.normalize(t) for t in texts]
    assert res.keep.sum() == len(set(norm))
    kept = [n for n, k in zip(norm, res.keep) if k]
    assert len(kept) == len(set(kept))
    assert all(norm[i] == norm[g] and g <= i for i, g in enumerate(res.group))
    pr = dc.precision_recall(~res.keep, crawl.labels, positive=["exact_dup"])
    assert pr.precision == 1.0 and pr.recall == 1.0  # the labels and "keep first" agree
    raw = dc.exact_dedup(texts, normalized=False)
    assert raw.keep.sum() == len(set(texts)) and raw.n_removed < res.n_removed  # reformatted copies survive
    assert not raw.keep[crawl.kinds == "copy"].any()


def test_normalize():
    assert dc.normalize("  Hello\r\n  WORLD\t") == "hello world"
    assert dc.normalize("ﬁne") == "fine"  # NFKC folds the ligature


# --------------------------------------------------------------------------- shingles and MinHash


def test_shingle_hashes_agree_with_python_sets(crawl):
    texts = crawl.texts[:120]
    sets = dc.shingle_sets(texts, k=5)
    ref = [dc.shingles(t, k=5) for t in texts]
    assert [len(s) for s in sets] == [len(r) for r in ref]  # no hash collisions at this size
    assert all((np.diff(s.astype(np.int64)) > 0).all() for s in sets)  # sorted, unique
    rng = np.random.default_rng(0)
    for i, j in rng.integers(len(texts), size=(60, 2)):
        assert dc.jaccard(sets[i], sets[j]) == pytest.approx(len(ref[i] & ref[j]) / len(ref[i] | ref[j]))
    assert dc.shingles("one two", k=5) == {("one", "two")}  # a short text is one shingle


def test_pair_jaccard_matches_sets(crawl):
    texts = crawl.texts[:200]
    flat, offsets = dc._shingle_flat(texts, 5)
    sets = np.split(flat, offsets[1:-1])
    rng = np.random.default_rng(1)
    pairs = np.sort(rng.integers(len(texts), size=(300, 2)), axis=1)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    got = dc.pair_jaccard(flat, offsets, pairs, chunk=2000)  # several chunks
    want = [dc.jaccard(sets[i], sets[j]) for i, j in pairs]
    np.testing.assert_allclose(got, want)


def test_minhash_equals_datasketch_bit_for_bit(crawl):
    datasketch = pytest.importorskip("datasketch")
    sets = dc.shingle_sets(crawl.texts[:40])
    ours = dc.MinHasher(64, seed=3).signatures_from_sets(sets)
    for s, sig in zip(sets, ours):
        m = datasketch.MinHash(num_perm=64, seed=3, hashfunc=int)
        m.update_batch(s.tolist())
        np.testing.assert_array_equal(sig, m.hashvalues)


def test_lsh_candidates_equal_datasketch(crawl):
    datasketch = pytest.importorskip("datasketch")
    texts = crawl.texts
    sig = dc.MinHasher(128, seed=1).signatures(texts)
    ours = dc.LSHIndex(32, 4)
    ours.add(sig)
    lsh = datasketch.MinHashLSH(num_perm=128, params=(32, 4))
    for i, s in enumerate(sig):
        lsh.insert(i, datasketch.MinHash(num_perm=128, seed=1, hashvalues=s, scheme="affine32"))
    for i in range(0, len(texts), 7):
        theirs = sorted(lsh.query(datasketch.MinHash(num_perm=128, seed=1, hashvalues=sig[i], scheme="affine32")))
        assert ours.query(sig[i]).tolist() == theirs


def test_lsh_query_and_pairs_match_brute_force(crawl):
    sig = dc.MinHasher(32, seed=1).signatures(crawl.texts[:400])
    index = dc.LSHIndex(8, 4)
    index.add(sig[:200])
    index.add(sig[200:])  # two adds: ids continue
    bands = sig.reshape(len(sig), 8, 4)
    share = (bands[:, None] == bands[None]).all(-1).any(-1)  # (n, n)
    for i in range(0, 400, 37):
        assert index.query(sig[i]).tolist() == np.flatnonzero(share[i]).tolist()
    i, j = np.nonzero(np.triu(share, 1))
    np.testing.assert_array_equal(index.candidate_pairs(), np.stack([i, j], 1))


def _sets_with_jaccard(rng, n_pairs: int, size: int = 100):
    """Pairs of fresh random uint32 sets of ``size`` elements each, overlap o -> J = o / (2 size - o)."""
    overlap = rng.integers(0, size + 1, n_pairs)
    a_sets, b_sets = [], []
    for o in overlap:
        vals = rng.choice(2**32 - 1, size=2 * size - o, replace=False).astype(np.uint32)
        a_sets.append(np.sort(vals[:size]))
        b_sets.append(np.sort(vals[size - o :]))
    return a_sets, b_sets, overlap / (2 * size - overlap)


def test_minhash_estimate_within_its_standard_error():
    """|estimate - J| <= 4 sigma + 1/P for every pair, and the z-scores have variance about 1."""
    rng = np.random.default_rng(0)
    a, b, jac = _sets_with_jaccard(rng, 400)
    p = 128
    mh = dc.MinHasher(p, seed=7)
    est = dc.estimate_jaccard(mh.signatures_from_sets(a), mh.signatures_from_sets(b))
    sigma = np.sqrt(jac * (1 - jac) / p)
    assert (np.abs(est - jac) <= 4 * sigma + 1 / p).all()
    inner = (jac > 0.05) & (jac < 0.95)
    z = (est - jac)[inner] / sigma[inner]
    assert 0.7 < float(np.mean(z**2)) < 1.3  # the binomial variance J(1-J)/P, empirically
    assert abs(float(np.mean(est - jac))) < 0.01  # unbiased


def test_lsh_candidate_rate_follows_the_s_curve():
    rng = np.random.default_rng(1)
    a, b, jac = _sets_with_jaccard(rng, 1500)
    bands, rows = 16, 4
    mh = dc.MinHasher(bands * rows, seed=2)
    sa, sb = mh.signatures_from_sets(a), mh.signatures_from_sets(b)
    cand = (sa.reshape(-1, bands, rows) == sb.reshape(-1, bands, rows)).all(-1).any(-1)
    p = dc.candidate_probability(jac, bands, rows)
    for lo in np.arange(0, 1, 0.2):  # per Jaccard bin: observed candidates vs the S-curve's expectation
        m = (jac >= lo) & (jac < lo + 0.2)
        expected, sd = p[m].sum(), math.sqrt((p[m] * (1 - p[m])).sum())
        assert abs(cand[m].sum() - expected) <= 4 * sd + 2, (lo, cand[m].sum(), expected)


def test_s_curve_and_threshold():
    assert dc.candidate_probability(0.0, 20, 5) == 0.0 and dc.candidate_probability(1.0, 20, 5) == 1.0
    s = np.linspace(0, 1, 101)
    assert (np.diff(dc.candidate_probability(s, 20, 5)) >= 0).all()
    t = dc.lsh_threshold(20, 5)
    assert t == pytest.approx(20 ** (-1 / 5))
    assert dc.candidate_probability(t, 20, 5) == pytest.approx(1 - (1 - 1 / 20) ** 20)
    b, r = dc.choose_bands(128, 0.5)
    assert b * r <= 128 and abs(dc.lsh_threshold(b, r) - 0.5) < 0.15


def test_near_dedup_finds_the_labelled_near_duplicates(crawl):
    texts = crawl.texts
    res = dc.near_dedup(texts, threshold=0.5)
    assert (res.similarity >= 0.5).all() and (res.pairs[:, 0] < res.pairs[:, 1]).all()
    sets = dc.shingle_sets(texts)
    for (i, j), s in list(zip(res.pairs.tolist(), res.similarity))[:50]:
        assert dc.jaccard(sets[i], sets[j]) == pytest.approx(s)
    pr = dc.precision_recall(~res.keep, crawl.labels, positive=["exact_dup", "near_dup"])
    assert pr.recall > 0.9 and pr.precision > 0.9
    assert res.keep[crawl.labels == "clean"].mean() > 0.98  # originals come first and are kept
    fast = dc.near_dedup(texts, threshold=0.5, verify="minhash")
    assert abs(fast.n_removed - res.n_removed) <= 0.05 * res.n_removed


def test_natural_near_duplicates_are_real():
    found = dc.natural_near_duplicates(threshold=0.3)
    arts = data.load_articles()
    assert found, "the corpus has template-like articles"
    assert all(p.jaccard >= 0.3 and p.i < p.j for p in found)
    assert [p.jaccard for p in found] == sorted((p.jaccard for p in found), reverse=True)
    top = found[0]
    assert dc.jaccard(dc.shingles(arts[top.i].extract, k=3), dc.shingles(arts[top.j].extract, k=3)) == pytest.approx(
        top.jaccard, abs=0.01
    )


# --------------------------------------------------------------------------- quality filters

GOOD = (
    "The river flows north through the old town and into the sea. It was used for trade with the "
    "cities of the coast for many centuries, and the bridges that cross it are among the oldest in the "
    "region. Today the river is a popular place for walking and fishing."
)


def test_heuristic_rules_on_hand_made_documents():
    docs = {
        "good": GOOD,
        "spam": "buy cheap shoes " * 30,
        "random": "7# 9$ 1@ 00 ~~~ %%a 12-3 ++ " * 10,
        "lines": "Home\nHome\nHome\nContact us\nHome\n" + GOOD,
        "short": "The river flows north",
        "digits": "Call 555 0199 2231 8812 or 555 0100 3321 9921 now to order the item with the code 88291.",
        "hashes": "#tag #news #sale #deal #best #top #new #hot " * 4 + GOOD,
    }
    flags = dc.heuristic_flags(list(docs.values()))
    row = {name: {rule for rule, v in flags.items() if v[i]} for i, name in enumerate(docs)}
    assert row["good"] == set()
    assert {"top_ngram", "dup_ngram", "stopwords", "terminal_punct"} <= row["spam"]
    assert {"alpha_words", "stopwords"} <= row["random"]
    assert "dup_lines" in row["lines"]
    assert {"word_count", "terminal_punct"} <= row["short"]
    assert "digit_ratio" in row["digits"]
    assert "symbol_ratio" in row["hashes"]
    assert dc.heuristic_filter(list(docs.values())).tolist() == [False] + [True] * 6
    lenient = dc.HeuristicRules(min_words=0, require_terminal_punct=False)
    assert "word_count" not in {r for r, v in dc.heuristic_flags(["The river flows north"], lenient).items() if v[0]}


def test_ngram_statistics_by_hand():
    feats = dc.heuristic_features(["a b a b a b", "one two three four five one two three four five six"])
    # doc 0: "a b" occurs 3 times = 6 of 6 word characters
    assert feats["top_ngram_frac"][0, 0] == pytest.approx(1.0)
    # doc 1: the 5-gram "one two three four five" repeats once: its 19 characters of 41
    assert feats["dup_ngram_frac"][1, 0] == pytest.approx(19 / 41)
    assert feats["dup_ngram_frac"][1, 1] == 0.0  # no repeated 6-gram


def test_precision_recall_by_hand():
    flagged = np.array([True, True, False, False, True, False])
    labels = np.array(["low_quality", "clean", "low_quality", "clean", "near_dup", "clean"])
    pr = dc.precision_recall(flagged, labels)
    assert (pr.tp, pr.fp, pr.fn, pr.tn) == (1, 2, 1, 2)
    assert pr.precision == pytest.approx(1 / 3) and pr.recall == pytest.approx(0.5)
    assert pr.f1 == pytest.approx(2 * (1 / 3) * 0.5 / (1 / 3 + 0.5))
    pr2 = dc.precision_recall(flagged, labels, positive=["low_quality", "near_dup"], mask=labels != "clean")
    assert (pr2.tp, pr2.fp, pr2.fn, pr2.tn) == (2, 0, 1, 0)
    assert dc.flagged_by_kind(flagged, labels) == {"low_quality": 0.5, "clean": 1 / 3, "near_dup": 1.0}


def test_filters_on_the_small_crawl(crawl):
    flags = dc.heuristic_filter(crawl.texts)
    by_kind = dc.flagged_by_kind(flags, crawl.kinds)
    assert by_kind["random_chars"] == 1.0 and by_kind["truncated"] == 1.0 and by_kind["keyword_spam"] == 1.0
    assert by_kind["original"] < 0.2


def test_perplexity_scores_batched_equal_one_by_one(crawl, patient):
    texts = [crawl.texts[i] for i in range(0, 60, 6)]
    batched = dc.perplexity_scores(texts, patient, batch_size=4)
    eot = patient.tokenizer.token_to_id(data.EOT)
    for t, got in zip(texts, batched):
        ids = torch.tensor([[eot] + patient.tokenizer.encode(t).ids[:64]])
        with torch.no_grad():
            loss = F.cross_entropy(patient.model(ids[:, :-1])[0], ids[0, 1:])
        assert got == pytest.approx(float(loss), abs=1e-4)


def test_perplexity_separates_clean_from_noise(crawl, patient):
    m = crawl.mask(kinds=["random_chars", "model_sample"]) | (crawl.mask(kinds=["original"]) & (crawl.sources < 60))
    texts = [t for t, keep in zip(crawl.texts, m) if keep]
    kinds = crawl.kinds[m]
    s = dc.perplexity_scores(texts, patient)
    assert np.median(s[kinds == "original"]) + 1 < np.median(s[kinds == "random_chars"])
    assert np.median(s[kinds == "original"]) < np.median(s[kinds == "model_sample"])


def test_quality_classifier_generalises_to_held_out_articles(arts):
    c = dc.build_crawl(dc.CrawlConfig(low_quality_per_kind=40, near_dup_fraction=0.1), articles=arts)
    train = c.mask(splits=["train"])
    noise = c.labels == "low_quality"
    texts = c.texts
    model = dc.train_quality_classifier([t for t, m in zip(texts, train) if m], noise[train])
    flagged = dc.classifier_scores(model, texts) > 0
    pr = dc.precision_recall(flagged, c.labels, mask=~train)
    assert pr.tp + pr.fn > 0 and pr.recall > 0.7 and pr.precision > 0.8
    clean_train = c.mask(kinds=["original"], splits=["train"])
    assert flagged[clean_train].mean() < 0.05


# --------------------------------------------------------------------------- data-side tools


def test_distillation_loss_matches_kl_div():
    torch.manual_seed(0)
    s, t = torch.randn(3, 5, 11), torch.randn(3, 5, 11)
    for temp in (1.0, 2.0, 4.0):
        want = (
            F.kl_div(
                F.log_softmax(s.reshape(-1, 11) / temp, -1),
                F.log_softmax(t.reshape(-1, 11) / temp, -1),
                log_target=True,
                reduction="batchmean",
            )
            * temp**2
        )
        assert float(dc.distillation_loss(s, t, temperature=temp)) == pytest.approx(float(want), rel=1e-5)
    assert float(dc.distillation_loss(t, t)) == pytest.approx(0.0, abs=1e-6)


def test_synthetic_examples_and_curriculum(arts):
    ex = dc.synthetic_topic_examples(arts, n=20, seed=3)
    assert ex == dc.synthetic_topic_examples(arts, n=20, seed=3) and len(ex) == 20
    titles = {a.title: a.topic for a in arts}
    for e in ex:
        q, a = e.split("\nA: ")
        assert titles[q.removeprefix("Q: What is the topic of ").removesuffix("?")] + "." == a
    order = dc.difficulty_order([3.0, 1.0, 2.0, 1.0])
    assert order.tolist() == [1, 3, 2, 0]
    assert dc.difficulty_order([3.0, 1.0, 2.0], reverse=True).tolist() == [0, 2, 1]


def test_regurgitation_rate(patient):
    texts = [a.text for a in data.articles("train")[:8] if len(patient.tokenizer.encode(a.text).ids) >= 48]
    got = dc.regurgitation_rate(texts, patient)
    assert got.dtype == bool and got.shape == (len(texts),)
    rng = np.random.default_rng(0)
    noise = ["".join(rng.choice(list("abcdefgh "), size=400)) for _ in range(4)]
    assert not dc.regurgitation_rate(noise, patient).any()


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: dc.shingles("a b c", k=0), "k"),
        (lambda: dc.shingle_sets(["a b", ""]), "texts"),
        (lambda: dc.shingle_sets("a b"), "texts"),
        (lambda: dc.shingle_sets(["a", 3]), "texts[1]"),
        (lambda: dc.near_dedup(["a b c"], bands=10, rows=4, num_perm=128), "bands"),
        (lambda: dc.near_dedup(["a b c"], threshold=1.5), "threshold"),
        (lambda: dc.near_dedup(["a b c"], threshold=-0.1), "threshold"),
        (lambda: dc.LSHIndex(4, 4).add(np.zeros((3, 15), np.uint32)), "num_perm"),
        (lambda: dc.exact_dedup([]), "texts"),
        (lambda: dc.exact_dedup([b"bytes"]), "texts[0]"),
        (lambda: dc.candidate_probability(1.2, 4, 4), "s"),
        (lambda: dc.CrawlConfig(edit_rate=0), "edit_rate"),
        (lambda: dc.CrawlConfig(sampler="big"), "sampler"),
        (lambda: dc.precision_recall(np.array([1, 0]), np.array(["clean", "clean"])), "flagged"),
        (lambda: dc.precision_recall(np.array([True]), np.array(["clean"]), positive="clean"), "positive"),
        (lambda: dc.estimate_jaccard(np.zeros(4), np.zeros(5)), "sig_a"),
        (lambda: dc.distillation_loss(torch.zeros(2, 3), torch.zeros(2, 4)), "teacher_logits"),
        (lambda: dc.MinHasher(16).signatures_from_sets([np.array([1, 2]), np.array([], np.uint32)]), "sets[1]"),
    ],
)
def test_bad_input_names_the_argument(call, name):
    with pytest.raises((ValueError, TypeError)) as info:
        call()
    assert name in str(info.value)


# --------------------------------------------------------------------------- the training half: time to target


def _history(**kw):
    from course_lib.train import History

    base = dict(step=list(range(10)), val_step=[1, 4, 9], val_loss=[6.0, 5.0, 4.0], tokens_seen=1000, seconds=20.0)
    return History(**{**base, **kw})


def test_time_to_target_by_hand():
    from course_lib.train import time_to_target

    h = _history()  # evaluations after 2, 5 and 10 steps; 100 tokens and 2 s per step
    t = time_to_target(h, 5.5)  # halfway from (2 steps, 6.0) to (5 steps, 5.0): 2 + 3 * 0.5 = 3.5 steps
    assert (t.steps, t.tokens, t.seconds) == (3.5, 350.0, 7.0)
    t = time_to_target(h, 4.25)  # from (5, 5.0) to (10, 4.0): 5 + 5 * 0.75 = 8.75
    assert (t.steps, t.tokens, t.seconds) == (8.75, 875.0, 17.5)
    assert time_to_target(h, 4.0).steps == 10.0  # reached exactly at the last evaluation
    assert time_to_target(h, 7.0).steps == 2.0  # the first evaluation is already below: its step
    assert time_to_target(h, 3.9) is None  # never reached
    # a stored run (a dict with the step count) gives the same answer as the History
    stored = {"val_step": [1, 4, 9], "val_loss": [6.0, 5.0, 4.0], "tokens_seen": 1000, "seconds": 20.0, "steps": 10}
    assert time_to_target(stored, 5.5) == time_to_target(h, 5.5)
    # the first crossing counts, not a later dip
    bumpy = _history(val_step=[1, 4, 9], val_loss=[6.0, 4.0, 5.0])
    assert time_to_target(bumpy, 4.5).steps == 2 + 3 * 0.75


@pytest.mark.parametrize(
    "history, target, name",
    [
        (_history(), 0.0, "target_loss"),
        (_history(), float("nan"), "target_loss"),
        (_history(), "5", "target_loss"),
        ([6.0, 5.0], 5.0, "history"),
        (_history(val_step=[], val_loss=[]), 5.0, "history"),
        (_history(val_step=[1, 4], val_loss=[6.0, 5.0, 4.0]), 5.0, "history"),
        (_history(val_step=[4, 1, 9]), 5.0, "history['val_step']"),
        (_history(val_step=[1, 4, 10]), 5.0, "history['val_step']"),
        (_history(val_loss=[6.0, float("nan"), 4.0]), 5.0, "history['val_loss']"),
        ({"val_step": [1], "val_loss": [5.0], "tokens_seen": 10, "seconds": 1.0}, 5.0, "history['steps']"),
        ({"val_step": [1], "val_loss": [5.0], "steps": 2}, 5.0, "history"),
    ],
)
def test_time_to_target_bad_input(history, target, name):
    from course_lib.train import time_to_target

    with pytest.raises((ValueError, TypeError)) as info:
        time_to_target(history, target)
    assert name in str(info.value)


# --------------------------------------------------------------------------- the training half: streams and the loop

TOY = np.random.default_rng(0).integers(1, 97, 6000).astype(np.uint16)


def _toy_model(seed=0):
    from course_lib.model import ModelConfig, TinyLM

    torch.manual_seed(seed)
    return TinyLM(ModelConfig(vocab_size=97, d_model=32, n_layers=2, n_heads=4, max_seq_len=32))


def _toy_cfg(**kw):
    from course_lib.train import TrainConfig

    return TrainConfig(
        **{**dict(steps=8, batch_size=4, seq_len=16, warmup_steps=2, eval_every=4, eval_batches=2), **kw}
    )


def test_train_with_random_batches_equals_train_bit_for_bit(one_thread):
    from course_lib.train import train

    cfg = _toy_cfg(seed=3)
    a = train(_toy_model(), TOY, TOY[:1000], cfg, progress=False)
    batches = dc.random_batches(TOY, batch_size=4, seq_len=16, seed=3)
    b = train(_toy_model(), None, TOY[:1000], cfg, progress=False, batch_at=batches)
    assert a.loss == b.loss and a.val_loss == b.val_loss and a.val_step == b.val_step and a.lr == b.lr
    assert b.tokens_seen == 8 * 4 * 16
    # stop_after: the first steps of the same run (same schedule), evaluated at the same points
    batches = dc.random_batches(TOY, batch_size=4, seq_len=16, seed=3)
    c = train(_toy_model(), None, TOY[:1000], cfg, progress=False, batch_at=batches, stop_after=4)
    assert c.loss == a.loss[:4] and c.val_step == [3] and c.val_loss == a.val_loss[:1]


def test_sequential_batches_read_the_stream_in_order():
    batch_at = dc.sequential_batches(TOY, batch_size=3, seq_len=10, steps=5)
    xs, ys = zip(*(batch_at(s) for s in range(5)))
    x, y = torch.cat(xs), torch.cat(ys)  # (15, 10)
    assert x.reshape(-1).tolist() == TOY[:150].tolist()
    assert y.reshape(-1).tolist() == TOY[1:151].tolist()
    with pytest.raises(ValueError, match="step"):
        batch_at(5)
    with pytest.raises(ValueError, match="tokens"):
        dc.sequential_batches(TOY[:150], batch_size=3, seq_len=10, steps=5)  # needs 151
    rb = dc.random_batches(TOY, batch_size=2, seq_len=8, seed=0)
    rb(0)
    with pytest.raises(ValueError, match="step"):
        rb(2)  # random batches are drawn in order


def test_token_stream_is_the_split_layout():
    arts = data.articles("train")[:5]
    docs = dc.encode_docs([a.text for a in arts])
    assert np.array_equal(dc.token_stream(docs), data.encode_split("train")[: sum(len(d) + 1 for d in docs)])
    s = dc.token_stream(docs, [2, 0])
    assert np.array_equal(s, np.concatenate([docs[2], [0], docs[0], [0]]))
    with pytest.raises(ValueError, match="order"):
        dc.token_stream(docs, [5])
    with pytest.raises(TypeError, match="docs"):
        dc.token_stream(np.zeros(4, np.uint16))


def test_mixed_stream_counts_the_share():
    docs = [np.full(30, 5, np.uint16)] * 100
    extra = [np.full(9, 7, np.uint16)] * 400
    for share in (0.0, 0.25, 0.5):
        stream, is_extra = dc.mixed_stream(docs, extra, n_tokens=2000, extra_share=share, seed=1)
        assert stream.shape == is_extra.shape and len(stream) >= 2000
        assert np.array_equal(stream[is_extra & (stream != 0)], np.full(int((is_extra & (stream != 0)).sum()), 7))
        assert abs(is_extra.mean() - share) < 0.03
    again = dc.mixed_stream(docs, extra, n_tokens=2000, extra_share=0.25, seed=1)
    assert np.array_equal(again[0], dc.mixed_stream(docs, extra, n_tokens=2000, extra_share=0.25, seed=1)[0])
    with pytest.raises(ValueError, match="extra"):
        dc.mixed_stream(docs, extra[:2], n_tokens=2000, extra_share=0.5)


def test_distillation_objective_mixes_hard_and_soft_targets():
    teacher, student = _toy_model(1), _toy_model(2)
    x, y = dc.sequential_batches(TOY, batch_size=2, seq_len=16, steps=1)(0)
    with torch.no_grad():
        ce = student.loss(x, y)
        soft = dc.distillation_loss(student(x), teacher(x), temperature=3.0)
        hard_only = dc.distillation_objective(teacher, alpha=1.0)(student, x, y)
        soft_only = dc.distillation_objective(teacher, alpha=0.0, temperature=3.0)(student, x, y)
        mix = dc.distillation_objective(teacher, alpha=0.25, temperature=3.0)(student, x, y)
    assert float(hard_only) == pytest.approx(float(ce), rel=1e-5)
    assert float(soft_only) == pytest.approx(float(soft), rel=1e-5)
    assert float(mix) == pytest.approx(0.25 * float(ce) + 0.75 * float(soft), rel=1e-5)
    before = [p.clone() for p in teacher.parameters()]
    loss = dc.distillation_objective(teacher)(student, x, y)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters()) and student.embed.weight.grad is not None
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters()))


def test_top1_agreement():
    a, b = _toy_model(1), _toy_model(2)
    assert dc.top1_agreement(a, a, TOY, seq_len=16, batch_size=4, max_batches=2) == 1.0
    got = dc.top1_agreement(a, b, TOY, seq_len=16, batch_size=4, max_batches=2)
    with torch.no_grad():
        x = torch.from_numpy(TOY[: 8 * 16].astype(np.int64)).view(8, 16)
        want = float((a(x).argmax(-1) == b(x).argmax(-1)).float().mean())
    assert got == pytest.approx(want)


@pytest.mark.parametrize("score", dc.TOPIC_SCORES)
def test_topic_accuracy_equals_a_naive_loop(patient, score):
    arts = data.articles("val")[:3]
    topics = data.TOPICS[:4]
    acc, pred = dc.topic_accuracy(patient.model, arts, topics=topics, score=score)
    tok = patient.tokenizer
    for a, p in zip(arts, pred):
        scores = []
        for c in topics:
            q = [0] + tok.encode(dc.topic_prompt(a.title)).ids
            ans = tok.encode(f" {c}.").ids
            assert tok.encode(dc.topic_prompt(a.title) + f" {c}.").ids == q[1:] + ans  # the prompt tokenises alone
            with torch.no_grad():
                logp = F.log_softmax(patient.model(torch.tensor([q + ans])[:, :-1])[0], -1)
            each = [float(logp[len(q) - 1 + j, t]) for j, t in enumerate(ans)]
            scores.append({"first": each[0], "sum": sum(each), "mean": sum(each) / len(each)}[score])
        assert p == int(np.argmax(scores))
    truth = [topics.index(a.topic) if a.topic in topics else -1 for a in arts]
    assert acc == pytest.approx(np.mean(np.array(truth) == pred))


def test_topic_accuracy_sum_favours_short_answers(patient):
    # "People." is the one 2-token answer: summed log-probabilities pick it for every title
    arts = data.articles("val")[:20]
    _, pred = dc.topic_accuracy(patient.model, arts, score="sum")
    assert set(pred.tolist()) == {data.TOPICS.index("People")}
    with pytest.raises(ValueError, match="topics"):
        dc.topic_accuracy(patient.model, arts[:1], topics=["Physics", "Physical sciences"])  # same first token


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: dc.encode_docs("text"), "texts"),
        (lambda: dc.random_batches(TOY, batch_size=0, seq_len=8, seed=0), "batch_size"),
        (lambda: dc.sequential_batches(TOY, batch_size=2, seq_len=8, steps=0), "steps"),
        (lambda: train.train(_toy_model(), None, None, _toy_cfg()), "train_tokens"),
        (lambda: train.train(_toy_model(), None, None, _toy_cfg(), batch_at="batches"), "batch_at"),
        (
            lambda: train.train(_toy_model(), None, None, _toy_cfg(), batch_at=lambda s: None, stop_after=9),
            "stop_after",
        ),
        (lambda: train.train(_toy_model(), None, None, _toy_cfg(), batch_at=lambda s: None, loss_fn=3), "loss_fn"),
        (lambda: dc.distillation_objective(_toy_model(), alpha=1.5), "alpha"),
        (lambda: dc.distillation_objective(_toy_model(), temperature=0), "temperature"),
        (lambda: dc.distillation_objective("small"), "teacher"),
        (lambda: dc.top1_agreement(_toy_model(), "t", TOY), "teacher"),
        (lambda: dc.topic_prompt(3), "title"),
        (lambda: dc.topic_accuracy(_toy_model(), []), "articles"),
        (lambda: dc.topic_accuracy(_toy_model(), ["a title"]), "articles[0]"),
        (lambda: dc.topic_accuracy(_toy_model(), data.articles("val")[:1], score="max"), "score"),
        (lambda: dc.mixed_stream([TOY], [TOY], n_tokens=10, extra_share=1.5), "extra_share"),
        (lambda: dc.mixed_stream([TOY], [], n_tokens=10, extra_share=0.5), "extra"),
    ],
)
def test_training_half_bad_input(call, name):
    with pytest.raises((ValueError, TypeError)) as info:
        call()
    assert name in str(info.value)


# --------------------------------------------------------------------------- the stored runs


@pytest.fixture(scope="module")
def stored():
    from course_lib.experiments import datacentric as xdc

    return xdc.load_runs()


def _check_run(r):
    for key in ("steps", "tokens_per_step", "tokens_seen", "seconds", "val_step", "val_tokens", "val_loss"):
        assert key in r, key
    assert r["tokens_seen"] == r["steps"] * r["tokens_per_step"]
    assert len(r["val_step"]) == len(r["val_loss"]) == len(r["val_tokens"]) >= 2
    assert r["val_step"][-1] == r["steps"] - 1 and r["final_val_loss"] == r["val_loss"][-1]
    assert all(0 < v < 9 for v in r["val_loss"])


def test_stored_runs_have_the_schema(stored):
    from course_lib.experiments import datacentric as xdc
    from course_lib.paths import zoo_file
    from course_lib.train import time_to_target

    assert zoo_file(xdc.RUNS_FILE).stat().st_size < 300_000
    assert stored["command"] == xdc.COMMAND and "cpu" in stored["machine"]
    eq = stored["equal"]
    assert set(eq["runs"]) == set(xdc.EQUAL_ARMS)
    finals = [eq["runs"][a]["final_val_loss"] for a in xdc.EQUAL_ARMS]
    assert eq["target"]["loss"] == max(finals)  # the stated rule
    for r in eq["runs"].values():
        _check_run(r)
        t = time_to_target(r, eq["target"]["loss"])
        assert t is not None and r["to_target"]["tokens"] == round(t.tokens)  # every arm reaches the target
        assert set(r["memorisation"]) == {"many", "once"}
        assert all(0 <= m["rate"] <= 1 and m["n"] > 0 for m in r["memorisation"].values())
    assert eq["seeds"] == [eq["train"]["seed"], *xdc.EQUAL_SEEDS]
    assert set(eq["seed_runs"]) == set(xdc.EQUAL_ARMS)
    ss = eq["seed_summary"]
    finals_by_arm = {}
    for a in xdc.EQUAL_ARMS:
        extra = eq["seed_runs"][a]
        assert [r["seed"] for r in extra] == list(xdc.EQUAL_SEEDS)
        for r in extra:
            assert len(r["val_loss"]) == len(eq["runs"][a]["val_loss"]) and r["final_val_loss"] == r["val_loss"][-1]
            assert all(0 < v < 9 for v in r["val_loss"]) and r["seconds"] > 0
        v = [eq["runs"][a]["final_val_loss"]] + [r["final_val_loss"] for r in extra]  # seed 0 first
        finals_by_arm[a] = v
        assert ss[a]["n"] == len(v) == len(eq["seeds"])
        assert (ss[a]["min"], ss[a]["max"]) == (min(v), max(v)) and abs(ss[a]["mean"] - np.mean(v)) < 1e-4
    # a new seed gives a different run (init and batch order both vary)
    assert len(set(finals_by_arm["raw"])) == len(finals_by_arm["raw"])
    d = ss["difference"]
    want = [f - r for f, r in zip(finals_by_arm["filtered"], finals_by_arm["raw"])]
    assert np.allclose(d["per_seed"], want, atol=1e-4) and len(d["per_seed"]) == len(eq["seeds"])
    assert abs(d["mean"] - np.mean(want)) < 1e-4 and d["min"] == min(d["per_seed"]) and d["max"] == max(d["per_seed"])
    comp = eq["composition"]
    assert comp["raw"]["clean"] == comp["dedup"]["clean"] >= comp["filtered"]["clean"]  # dedup keeps every original
    assert comp["raw"]["exact_dup"] > 0 and comp["dedup"]["exact_dup"] == 0
    syn = stored["synthetic"]
    totals = {r["synthetic_tokens"] + r["crawl_tokens"] for r in syn["runs"]}
    assert len(totals) == 1 and syn["runs"][0]["share"] == 0 and syn["runs"][0]["synthetic_tokens"] == 0
    assert all(0 <= r["accuracy"] <= 1 for r in syn["runs"]) and 0 <= syn["before"]["accuracy"] <= 1
    cur = stored["curriculum"]
    assert set(cur["runs"]) == set(xdc.CURRICULUM_ARMS)
    for runs in cur["runs"].values():
        assert [r["seed"] for r in runs] == cur["seeds"]
        for r in runs:
            _check_run(r)
    dis = stored["distill"]
    assert set(dis["runs"]) == {"data", "distilled"}
    for r in dis["runs"].values():
        _check_run(r)
        assert 0 <= r["agreement"] <= 1
    assert dis["runs"]["data"]["steps"] == dis["runs"]["distilled"]["steps"]  # equal steps


def test_short_run_reproduces_the_stored_curve(stored, one_thread):
    from course_lib.experiments import datacentric as xdc

    r = xdc.short_run(2, stored=stored)  # two steps: the stored training loss at step 0
    assert r["loss_step"] == [0] and r["val_step"] == []
    tol = 0 if stored["distill"]["threads"] == 1 else 1e-3  # other thread counts add in another order
    assert r["max_abs_diff"] <= tol
    with pytest.raises(ValueError, match="steps"):
        xdc.short_run(0, stored=stored)
    with pytest.raises(ValueError, match="steps"):
        xdc.short_run(xdc.DISTILL_TRAIN.steps + 1, stored=stored)
