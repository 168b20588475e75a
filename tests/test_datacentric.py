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

from course_lib import data, zoo
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
