r"""Specialist cascades: pay for the big model only when it is needed (chapter 10).

**Cascades.** Several models of very different cost solve one task — here the corpus'
12-class topic classification (``data.Article.label``; the query is the article's extract;
:func:`topic_task`):

==========  ==========================================================  ==================
stage       model                                                       FLOPs per query
==========  ==========================================================  ==================
``bow``     multinomial naive Bayes on hashed BPE uni- and bigrams       a few thousand
``mini32``  all-MiniLM-L6-v2 reading the first 32 tokens + linear head   under a billion
``minilm``  all-MiniLM-L6-v2 reading the whole extract + linear head     a few billion
==========  ==========================================================  ==================

A query goes to the cheapest model first; when that model's **confidence** (max
probability, margin or normalised entropy, :func:`confidence`) is below a threshold
:math:`t \in [0, 1]`, the query is **deferred** to the next model, which is paid for *in
addition* (:func:`run_cascade`). Sweeping :math:`t` traces a cost/accuracy curve
(:func:`sweep`); the points no other point beats form the **frontier**
(:func:`pareto_front`), and :func:`cheapest_for_accuracy` picks the cheapest thresholds
that reach a target accuracy. A **learned router** (:func:`fit_router`) replaces the raw
confidence with a logistic regression that predicts whether the small model is right.
Confidences mean what they say only when the model is **calibrated**
(:func:`reliability`, :func:`expected_calibration_error`); :func:`fit_temperature` is
temperature scaling (Guo et al. 2017). Knobs (temperatures, routers, thresholds) are fit
on **cross-fitted** predictions of the training split (:func:`cross_fit`,
:func:`task_predictions`); the held-out articles only report.

Costs are charged honestly: FLOPs are counted per query from its length
(:func:`bow_flops`, :func:`minilm_flops`, checked against ``torch.utils.flop_counter`` in
the tests), and latency is measured per query at batch size 1 on this machine
(``measure.interleaved``, all models side by side), never read off a cache of
precomputed embeddings.

Speculative decoding, chapter 10's cascade for generation, is :mod:`course_lib.speculative`.

The two MiniLM models' cross-fitted logits (10 head fits, and ~10 k MiniLM passes over the
first 32 tokens of every extract) are precomputed by one deterministic command in
:mod:`course_lib.experiments.cascade`, which also reads them back
(``precomputed_logits``)::

    python -m course_lib.build cascade    # writes course_lib/zoo_data/cascade_logits.safetensors

Naive Bayes, one head on the cached full-length embeddings, calibration, routing and every
sweep run in seconds and are recomputed by the notebook.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from course_lib import data, encoder
from course_lib.checks import check_float, check_int, check_probability

CONFIDENCE_KINDS = ("max_prob", "margin", "entropy")
#: hashed feature space of the bag-of-words model: 4096 BPE unigrams + bigram buckets
BOW_BITS = 18
NB_ALPHA = 0.1  # Laplace smoothing; best cross-fitted training accuracy of {0.01, 0.03, 0.1, 0.3, 1}
MINI_TOKENS = 32  # how much of the extract the middle model reads
HEAD_WEIGHT_DECAY = 1e-4  # L2 on the MiniLM heads; best accuracy of {1e-3, 1e-4, 1e-5} on a training-split fold


# =========================================================================== helpers


def _as_probs(probs, name: str = "probs") -> np.ndarray:
    p = np.asarray(probs.detach().cpu() if torch.is_tensor(probs) else probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"{name} must be (N, K) with K >= 2 classes, got shape {p.shape}")
    if not np.all(np.isfinite(p)) or p.min() < 0 or not np.allclose(p.sum(1), 1, atol=1e-4):
        raise ValueError(f"{name} rows must be probability vectors (>= 0, summing to 1)")
    return p


def _as_labels(labels, n: int, k: int | None = None, name: str = "labels") -> np.ndarray:
    y = np.asarray(labels.cpu() if torch.is_tensor(labels) else labels)
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name} must be {n} integer class indices, got shape {y.shape} dtype {y.dtype}")
    if k is not None and n and (y.min() < 0 or y.max() >= k):
        raise ValueError(f"{name} must be in [0, {k - 1}]")
    return y.astype(np.int64)


def _check_threshold(t, name: str = "threshold") -> float:
    return float(check_probability(name, t))


def softmax(logits, temperature: float = 1.0) -> np.ndarray:
    r"""Row-wise :math:`\mathrm{softmax}(z / T)` in float64 (stable: the row max is subtracted)."""
    check_float("temperature", temperature, min=0, min_inclusive=False)
    z = np.asarray(logits.detach().cpu() if torch.is_tensor(logits) else logits, dtype=np.float64) / temperature
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


# =========================================================================== confidence


def confidence(probs, kind: str = "max_prob") -> np.ndarray:
    r"""How sure a model is of its top answer, one number per query, all in [0, 1].

    * ``max_prob``: :math:`p_{(1)}`, the probability of the predicted class (>= 1/K);
    * ``margin``:   :math:`p_{(1)} - p_{(2)}`, the lead over the runner-up;
    * ``entropy``:  :math:`1 - H(p)/\ln K` with :math:`H(p) = -\sum_c p_c \ln p_c`
      (1 = one-hot, 0 = uniform).
    """
    if kind not in CONFIDENCE_KINDS:
        raise ValueError(f"kind must be one of {CONFIDENCE_KINDS}, got {kind!r}")
    p = _as_probs(probs)
    if kind == "max_prob":
        return p.max(1)
    if kind == "margin":
        top2 = np.sort(p, axis=1)[:, -2:]  # (N, 2) ascending
        return top2[:, 1] - top2[:, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(p > 0, p * np.log(p), 0.0).sum(1)
    return np.clip(1 - h / math.log(p.shape[1]), 0.0, 1.0)


# =========================================================================== calibration


@dataclass
class Reliability:
    """Per-bin statistics of top-label confidence: the data of a reliability diagram."""

    edges: np.ndarray  # (B + 1,) from 0 to 1
    count: np.ndarray  # (B,) queries whose confidence falls in the bin
    accuracy: np.ndarray  # (B,) fraction correct in the bin (nan when empty)
    confidence: np.ndarray  # (B,) mean confidence in the bin (nan when empty)

    @property
    def ece(self) -> float:
        r""":math:`\mathrm{ECE} = \sum_b \frac{n_b}{n}\,|\mathrm{acc}_b - \mathrm{conf}_b|`."""
        m = self.count > 0
        return float((self.count[m] / self.count.sum() * np.abs(self.accuracy[m] - self.confidence[m])).sum())


def reliability(probs, labels, *, n_bins: int = 10) -> Reliability:
    r"""Bin queries by top-label confidence into ``n_bins`` equal-width bins of [0, 1].

    Bin :math:`b` holds confidences in :math:`(b/B, (b+1)/B]` (the first also holds 0) — the
    convention of ``sklearn.calibration.calibration_curve(strategy="uniform")``, which the
    tests check against. A calibrated model has accuracy = confidence in every bin.
    """
    check_int("n_bins", n_bins, min=1)
    p = _as_probs(probs)
    y = _as_labels(labels, len(p), p.shape[1])
    conf, correct = p.max(1), (p.argmax(1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    b = np.searchsorted(edges[1:-1], conf)  # (N,) bin of each query
    count = np.bincount(b, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.bincount(b, weights=correct, minlength=n_bins) / count
        mean_conf = np.bincount(b, weights=conf, minlength=n_bins) / count
    return Reliability(edges, count, acc, mean_conf)


def expected_calibration_error(probs, labels, *, n_bins: int = 10) -> float:
    """ECE of top-label confidence with ``n_bins`` equal-width bins (Naeini et al. 2015; Guo et al. 2017)."""
    return reliability(probs, labels, n_bins=n_bins).ece


def nll(logits, labels, temperature: float = 1.0) -> float:
    r"""Mean negative log-likelihood :math:`-\frac1N\sum_i \log \mathrm{softmax}(z_i/T)_{y_i}` (nats)."""
    z = np.asarray(logits.detach().cpu() if torch.is_tensor(logits) else logits, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"logits must be (N, K), got shape {z.shape}")
    y = _as_labels(labels, len(z), z.shape[1])
    check_float("temperature", temperature, min=0, min_inclusive=False)
    z = z / temperature
    m = z.max(1, keepdims=True)
    lse = (m + np.log(np.exp(z - m).sum(1, keepdims=True)))[:, 0]
    return float(np.mean(lse - z[np.arange(len(y)), y]))


def fit_temperature(logits, labels, *, bounds: tuple[float, float] = (0.01, 1000.0), tol: float = 1e-6) -> float:
    r"""Temperature scaling: the :math:`T > 0` that minimises the NLL of :math:`\mathrm{softmax}(z/T)`.

    One parameter, fitted on held-out (or cross-fitted) predictions; it rescales every
    logit vector, so the argmax — and the accuracy — never change, only the confidence.
    The NLL is convex in :math:`\beta = 1/T` (a log-sum-exp of lines minus a line), hence
    unimodal in :math:`\log T`, and a golden-section search on :math:`\log T` finds it.
    """
    lo, hi = bounds
    if not 0 < lo < hi:
        raise ValueError(f"bounds must satisfy 0 < low < high, got {bounds!r}")
    z = np.asarray(logits.detach().cpu() if torch.is_tensor(logits) else logits, dtype=np.float64)
    _as_labels(labels, len(z), z.shape[1] if z.ndim == 2 else None)
    a, b = math.log(lo), math.log(hi)
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = nll(z, labels, math.exp(c)), nll(z, labels, math.exp(d))
    while b - a > tol:
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = nll(z, labels, math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = nll(z, labels, math.exp(d))
    return math.exp((a + b) / 2)


# =========================================================================== the models


def token_ids(texts: Sequence[str], tokenizer=None, *, max_tokens: int | None = None) -> list[list[int]]:
    """The course BPE token ids of each text (optionally cut to the first ``max_tokens``)."""
    if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
        raise TypeError("texts must be a list of strings")
    tokenizer = data.get_tokenizer() if tokenizer is None else tokenizer
    ids = [e.ids for e in tokenizer.encode_batch(list(texts))]
    return ids if max_tokens is None else [i[:max_tokens] for i in ids]


def bow_features(ids: Sequence[Sequence[int]], *, bits: int = BOW_BITS, vocab_size: int = 4096):
    r"""Hashed bag of uni- and bigrams: flat feature ids and the query each belongs to.

    Unigram :math:`a` is feature :math:`a`; bigram :math:`(a, b)` is hashed (the *hashing
    trick*, Weinberger et al. 2009) into one of :math:`2^{bits} - V` buckets after the
    unigrams with Knuth's multiplicative hash :math:`h = ((aV + b)\cdot 2654435761 \bmod 2^{32})
    \gg (32 - bits)`. Returns ``(features, query)``, both (n_features,) int64; a query with
    T tokens has :math:`2T - 1` features, repeats included (counts).
    """
    if check_int("bits", bits, min=13, max=24) and 2**bits <= vocab_size:
        raise ValueError(f"bits must be an int in [13, 24] with 2**bits > vocab_size, got {bits!r}")
    lens = np.array([len(i) for i in ids], dtype=np.int64)
    if lens.size == 0:
        raise ValueError("ids must not be empty")
    a = np.concatenate([np.asarray(i, dtype=np.uint64) for i in ids]) if lens.sum() else np.zeros(0, np.uint64)
    query = np.repeat(np.arange(len(ids)), lens)
    same = query[:-1] == query[1:]  # consecutive tokens of the same query form a bigram
    h = ((a[:-1] * np.uint64(vocab_size) + a[1:]) * np.uint64(2654435761)) & np.uint64(0xFFFFFFFF)
    bigram = vocab_size + (h >> np.uint64(32 - bits)) % np.uint64(2**bits - vocab_size)
    features = np.concatenate([a, bigram[same]]).astype(np.int64)
    return features, np.concatenate([query, query[:-1][same]])


class NaiveBayesBoW:
    r"""Multinomial naive Bayes over hashed BPE uni- and bigrams: the cheapest specialist.

    Training counts features per class: :math:`\log\theta_{cf} = \log\frac{n_{cf} + \alpha}
    {\sum_{f'} n_{cf'} + \alpha F}`, :math:`\log\pi_c` = log class frequency. A query's
    logits are :math:`\log\pi_c + \sum_{f \in \text{query}} \log\theta_{cf}` — a sum of
    per-feature log-likelihoods that treats features as independent, which makes the model
    fast and accurate, and its probabilities wildly over-confident (chapter 10 §4).
    """

    def __init__(self, *, n_classes: int = 12, bits: int = BOW_BITS, alpha: float = NB_ALPHA, tokenizer=None):
        check_int("n_classes", n_classes, min=2)
        check_float("alpha", alpha, min=0, min_inclusive=False)
        self.n_classes, self.bits, self.alpha = n_classes, bits, alpha
        self.tokenizer = data.get_tokenizer() if tokenizer is None else tokenizer
        self.vocab_size = self.tokenizer.get_vocab_size()
        self.log_theta: np.ndarray | None = None  # (K, F)
        self.log_prior: np.ndarray | None = None  # (K,)

    def features(self, texts: Sequence[str]):
        """``(features, query)`` of :func:`bow_features` for ``texts``."""
        return bow_features(token_ids(texts, self.tokenizer), bits=self.bits, vocab_size=self.vocab_size)

    def fit_features(self, f, q, labels) -> NaiveBayesBoW:
        """Fit on flat features ``f`` of queries ``q`` (indices into ``labels``)."""
        y = np.asarray(labels, dtype=np.int64)
        n_feat = 2**self.bits
        counts = np.bincount(y[q] * n_feat + f, minlength=self.n_classes * n_feat).reshape(self.n_classes, n_feat)
        counts = counts.astype(np.float64) + self.alpha
        self.log_theta = np.log(counts / counts.sum(1, keepdims=True)).astype(np.float32)  # (K, F)
        prior = np.bincount(y[np.unique(q)], minlength=self.n_classes) + 1.0  # add-one: no class impossible
        self.log_prior = np.log(prior / prior.sum())
        return self

    def fit(self, texts: Sequence[str], labels) -> NaiveBayesBoW:
        y = _as_labels(labels, len(texts), self.n_classes)
        f, q = self.features(texts)
        return self.fit_features(f, q, y)

    def logits_from_features(self, f, q, n: int) -> np.ndarray:
        """(n, K) log-joint scores from flat features ``f`` of queries ``q`` in [0, n)."""
        if self.log_theta is None:
            raise ValueError("the model is not fitted yet: call fit(texts, labels) first")
        per_feature = torch.from_numpy(self.log_theta[:, f].T.astype(np.float64))  # (n_features, K)
        out = torch.zeros(n, self.n_classes, dtype=torch.float64).index_add_(0, torch.from_numpy(q), per_feature)
        return out.numpy() + self.log_prior

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        """(N, K) logits (log prior + log likelihood, up to a per-query constant)."""
        f, q = self.features(texts)
        return self.logits_from_features(f, q, len(texts))


def bow_flops(n_tokens, *, n_classes: int = 12) -> np.ndarray:
    r"""FLOPs of naive Bayes on a query of T tokens: :math:`K\,(2T - 1)` additions of
    log-likelihoods plus :math:`K` for the prior (tokenizing and hashing are not FLOPs;
    they show in the measured latency)."""
    t = np.asarray(n_tokens, dtype=np.float64)
    return n_classes * (np.maximum(2 * t - 1, 0) + 1)


@dataclass
class LinearHead:
    r"""A softmax-regression head :math:`z = xW + b` on fixed features (embeddings)."""

    weight: torch.Tensor  # (D, K)
    bias: torch.Tensor  # (K,)

    def logits(self, x) -> np.ndarray:
        x = torch.as_tensor(x, dtype=torch.float32)
        with torch.no_grad():
            return (x @ self.weight + self.bias).double().numpy()

    def flops(self) -> int:
        """Multiply-adds of the head: :math:`2DK`."""
        return 2 * self.weight.numel()


def fit_linear_head(x, labels, *, n_classes: int = 12, weight_decay: float = HEAD_WEIGHT_DECAY, max_iter: int = 200):
    r"""Fit :math:`\min_{W,b} \frac1N\sum_i -\log \mathrm{softmax}(x_iW + b)_{y_i} + \frac{\lambda}{2}\|W\|^2`
    with full-batch L-BFGS (deterministic on CPU; the problem is convex)."""
    x = torch.as_tensor(x, dtype=torch.float32)
    if x.ndim != 2:
        raise ValueError(f"x must be (N, D), got shape {tuple(x.shape)}")
    y = torch.from_numpy(_as_labels(labels, len(x), n_classes))
    check_float("weight_decay", weight_decay, min=0)
    w = torch.zeros(x.shape[1], n_classes, requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + weight_decay / 2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return LinearHead(w.detach(), b.detach())


def cross_fit(fit_predict: Callable, n: int, *, folds: int = 5, seed: int = 0) -> np.ndarray:
    """Out-of-fold predictions: ``fit_predict(train_idx, test_idx) -> (len(test_idx), K)`` per fold.

    Every row is predicted by a model that never saw it, so the result behaves like
    held-out predictions on all ``n`` rows — the data to fit temperatures, routers and
    thresholds on without touching the test set.
    """
    check_int("folds", folds, min=2, max=n)
    fold_of = np.random.default_rng(seed).permutation(n) % folds
    out = None
    for f in range(folds):
        test = np.flatnonzero(fold_of == f)
        pred = np.asarray(fit_predict(np.flatnonzero(fold_of != f), test), dtype=np.float64)
        if out is None:
            out = np.zeros((n, pred.shape[1]))
        out[test] = pred
    return out


def minilm_flops(n_tokens, model=None, *, n_classes: int = 12) -> np.ndarray:
    r"""Forward FLOPs of MiniLM + a linear head on a query of T tokens (after truncation).

    :math:`2\,W\,T` for the encoder's Linear layers (:math:`W` weights; the pooler is not
    used), :math:`4\,L\,d\,T^2` for :math:`QK^\top` and :math:`AV` in :math:`L` layers of
    width :math:`d`, and :math:`2 \cdot 384 K` for the head. Embedding lookups, norms,
    softmax and GELU are not counted (as in ``torch.utils.flop_counter``).
    """
    model = encoder._shared_model() if model is None else model
    lin = sum(m.in_features * m.out_features for m in model.encoder.modules() if isinstance(m, torch.nn.Linear))
    cfg = model.config
    t = np.asarray(n_tokens, dtype=np.float64)
    return 2 * lin * t + 4 * cfg.num_hidden_layers * cfg.hidden_size * t**2 + 2 * cfg.hidden_size * n_classes


def minilm_tokens(texts: Sequence[str], *, max_length: int = 256) -> np.ndarray:
    """How many MiniLM tokens ([CLS] and [SEP] included) each text becomes after truncation."""
    tok = encoder.load_tokenizer()
    return np.array([len(i) for i in tok(list(texts), truncation=True, max_length=max_length)["input_ids"]])


# =========================================================================== the task


@dataclass
class TopicTask:
    """The corpus' topic classification: one query per article (its extract), in
    ``data.load_articles()`` order, with the article-level split of chapter 01."""

    texts: list[str]  # (N,) extracts
    labels: np.ndarray  # (N,) class index into data.TOPICS
    train: np.ndarray  # row indices of the training split (models, temperatures, routers, thresholds)
    heldout: np.ndarray  # row indices of the val + test splits (only ever used to report)


def topic_task() -> TopicTask:
    arts = data.load_articles()
    split = np.array([data.split_of(a.title) for a in arts])
    return TopicTask(
        [a.extract for a in arts],
        np.array([a.label for a in arts], dtype=np.int64),
        np.flatnonzero(split == "train"),
        np.flatnonzero(split != "train"),
    )


def task_predictions(fit_predict: Callable, task: TopicTask, *, folds: int = 5, seed: int = 0) -> np.ndarray:
    """(N, K) logits for every query of ``task``: training rows out-of-fold
    (:func:`cross_fit` inside the training split), held-out rows from a model fitted on the
    whole training split. ``fit_predict(train_rows, predict_rows)`` takes row indices."""
    oof = cross_fit(lambda a, b: fit_predict(task.train[a], task.train[b]), len(task.train), folds=folds, seed=seed)
    out = np.zeros((len(task.labels), oof.shape[1]))
    out[task.train] = oof
    out[task.heldout] = fit_predict(task.train, task.heldout)
    return out


def naive_bayes_predictions(task: TopicTask, *, ids=None, folds: int = 5, seed: int = 0, **kw) -> np.ndarray:
    """:func:`task_predictions` of :class:`NaiveBayesBoW` (features computed once; pass the
    BPE ``ids`` of ``task.texts`` when you have them already)."""
    nb = NaiveBayesBoW(**kw)
    if ids is None:
        f, q = nb.features(task.texts)
    else:
        if len(ids) != len(task.texts):
            raise ValueError(f"ids must hold one token list per query ({len(task.texts)}), got {len(ids)}")
        f, q = bow_features(ids, bits=nb.bits, vocab_size=nb.vocab_size)

    def fit_predict(rows, new_rows):
        member = np.zeros(len(task.labels), dtype=bool)
        member[rows] = True
        m = member[q]
        nb.fit_features(f[m], q[m], task.labels)
        position = np.full(len(task.labels), -1)
        position[new_rows] = np.arange(len(new_rows))
        m = position[q] >= 0
        return nb.logits_from_features(f[m], position[q[m]], len(new_rows))

    return task_predictions(fit_predict, task, folds=folds, seed=seed)


def head_predictions(x, task: TopicTask, *, folds: int = 5, seed: int = 0, **kw) -> np.ndarray:
    """:func:`task_predictions` of a :func:`fit_linear_head` on fixed features ``x`` (N, D)."""
    x = torch.as_tensor(x, dtype=torch.float32)
    if x.shape[0] != len(task.labels):
        raise ValueError(f"x must have one row per query ({len(task.labels)}), got {x.shape[0]}")

    def fit_predict(rows, new_rows):
        return fit_linear_head(x[rows], task.labels[rows], **kw).logits(x[new_rows])

    return task_predictions(fit_predict, task, folds=folds, seed=seed)


# =========================================================================== cost accounting


@dataclass
class QueryCost:
    """What one model costs on each query: FLOPs counted per query, seconds measured."""

    name: str
    flops: np.ndarray  # (N,)
    seconds: np.ndarray  # (N,)

    def __post_init__(self):
        self.flops = np.asarray(self.flops, dtype=np.float64)
        self.seconds = np.broadcast_to(np.asarray(self.seconds, dtype=np.float64), self.flops.shape).copy()
        if self.flops.ndim != 1 or (self.flops < 0).any() or (self.seconds < 0).any():
            raise ValueError(f"cost {self.name!r}: flops must be (N,) and flops, seconds >= 0")

    def __getitem__(self, idx) -> QueryCost:
        return QueryCost(self.name, self.flops[idx], self.seconds[idx])


# =========================================================================== the cascade


@dataclass
class CascadeResult:
    """Who answered each query, what it answered, and what that cost."""

    thresholds: tuple[float, ...]
    stage: np.ndarray  # (N,) index of the model that answered
    prediction: np.ndarray  # (N,)
    flops: np.ndarray  # (N,) FLOPs of every model the query visited
    seconds: np.ndarray  # (N,)
    accuracy: float | None
    n_stages: int

    @property
    def fractions(self) -> np.ndarray:
        """(S,) fraction of the queries each model answered."""
        return np.bincount(self.stage, minlength=self.n_stages) / len(self.stage)

    @property
    def mean_flops(self) -> float:
        return float(self.flops.mean())

    @property
    def mean_seconds(self) -> float:
        return float(self.seconds.mean())


def accept(scores, threshold: float) -> np.ndarray:
    r"""Which queries a stage keeps: :math:`s \ge t`, except :math:`t = 1`, which keeps none.

    So :math:`t = 0` answers everything with this stage and :math:`t = 1` defers everything
    (a float softmax often rounds a confident answer to exactly 1.0, which must not stop
    "large model only" from meaning that).
    """
    t = _check_threshold(threshold)
    s = np.asarray(scores, dtype=np.float64)
    return np.zeros(s.shape, dtype=bool) if t >= 1 else s >= t


def run_cascade(predictions, scores, costs: Sequence[QueryCost], thresholds, labels=None) -> CascadeResult:
    r"""Evaluate an S-stage cascade on N queries.

    ``predictions``: S arrays (N,) of class predictions; ``scores``: S - 1 arrays (N,) in
    [0, 1] (a confidence or a router's probability) — stage :math:`i` keeps a query when
    :func:`accept` says so, otherwise the query moves on; the last stage answers whatever
    reaches it. A query answered at stage :math:`j` costs :math:`\sum_{i \le j} c_i`: a
    deferred query pays for every model it visited.
    """
    n_stages = len(predictions)
    if n_stages < 1 or len(costs) != n_stages:
        raise ValueError(f"need one cost per stage: {n_stages} predictions, {len(costs)} costs")
    if len(scores) != n_stages - 1 or len(thresholds) != n_stages - 1:
        raise ValueError(
            f"an {n_stages}-stage cascade needs {n_stages - 1} scores and thresholds, got {len(scores)} and {len(thresholds)}"
        )
    thresholds = tuple(_check_threshold(t, f"thresholds[{i}]") for i, t in enumerate(thresholds))
    preds = [np.asarray(p) for p in predictions]
    n = len(preds[0])
    if any(p.shape != (n,) for p in preds) or any(np.shape(s) != (n,) for s in scores):
        raise ValueError(f"every prediction and score array must have shape ({n},)")
    if any(c.flops.shape != (n,) for c in costs):
        raise ValueError(f"every cost must cover the same {n} queries")
    stage = np.full(n, n_stages - 1)
    open_ = np.ones(n, dtype=bool)  # still looking for an answer
    for i, (s, t) in enumerate(zip(scores, thresholds)):
        keep = open_ & accept(s, t)
        stage[keep] = i
        open_ &= ~keep
    prediction = np.choose(stage, preds)
    visited = stage[:, None] >= np.arange(n_stages)[None, :]  # (N, S): paid for model i?
    flops = (visited * np.stack([c.flops for c in costs], 1)).sum(1)
    seconds = (visited * np.stack([c.seconds for c in costs], 1)).sum(1)
    acc = None
    if labels is not None:
        acc = float((prediction == _as_labels(labels, n)).mean())
    return CascadeResult(thresholds, stage, prediction, flops, seconds, acc, n_stages)


@dataclass
class Sweep:
    """A cascade evaluated at many threshold settings (one row per setting)."""

    thresholds: np.ndarray  # (M, S-1)
    accuracy: np.ndarray  # (M,)
    flops: np.ndarray  # (M,) mean per query
    seconds: np.ndarray  # (M,) mean per query
    fractions: np.ndarray  # (M, S)

    def cost(self, metric: str = "flops") -> np.ndarray:
        if metric not in ("flops", "seconds"):
            raise ValueError(f"metric must be 'flops' or 'seconds', got {metric!r}")
        return self.flops if metric == "flops" else self.seconds


def sweep(predictions, scores, costs, labels, grid: Sequence[float] | Sequence[Sequence[float]]) -> Sweep:
    """Run the cascade at every threshold in ``grid`` (a list of values used for every stage
    — all combinations — or an explicit list of threshold tuples).

    Same numbers as :func:`run_cascade` at each setting (the tests check), computed from
    per-stage correctness and cumulative costs so a 41 x 41 grid takes a fraction of a second.
    """
    n_thr = len(predictions) - 1
    grid = list(grid)
    combos = grid if grid and isinstance(grid[0], (tuple, list)) else list(itertools.product(grid, repeat=n_thr))
    if not combos:
        raise ValueError("grid must not be empty")
    run_cascade(predictions, scores, costs, combos[0], labels)  # validates every input once
    y = _as_labels(labels, len(predictions[0]))
    n, cols = len(y), np.arange(len(y))
    correct = np.stack([np.asarray(p) == y for p in predictions])  # (S, N)
    cum_flops = np.cumsum(np.stack([c.flops for c in costs]), 0)  # (S, N): cost if answered at stage j
    cum_secs = np.cumsum(np.stack([c.seconds for c in costs]), 0)
    thresholds = np.array([[_check_threshold(t, f"thresholds[{i}]") for i, t in enumerate(c)] for c in combos])
    acc, flops, secs, fractions = [], [], [], []
    for row in thresholds:
        stage = np.full(n, n_thr)
        open_ = np.ones(n, dtype=bool)
        for i, t in enumerate(row):
            keep = open_ & accept(scores[i], t)
            stage[keep] = i
            open_ &= ~keep
        acc.append(correct[stage, cols].mean())
        flops.append(cum_flops[stage, cols].mean())
        secs.append(cum_secs[stage, cols].mean())
        fractions.append(np.bincount(stage, minlength=n_thr + 1) / n)
    return Sweep(
        thresholds.reshape(len(combos), n_thr), np.array(acc), np.array(flops), np.array(secs), np.array(fractions)
    )


def pareto_front(cost, accuracy) -> np.ndarray:
    """Indices of the points no other point beats (cheaper or equal *and* at least as
    accurate, strictly better in one), sorted by cost: the cost/accuracy frontier."""
    c, a = np.asarray(cost, dtype=np.float64), np.asarray(accuracy, dtype=np.float64)
    if c.shape != a.shape or c.ndim != 1:
        raise ValueError("cost and accuracy must be 1-D arrays of the same length")
    order = np.lexsort((-a, c))  # by cost, then by accuracy descending
    front, best = [], -np.inf
    for i in order:
        if a[i] > best:
            front.append(i)
            best = a[i]
    return np.array(front, dtype=np.int64)


def cheapest_for_accuracy(result: Sweep, target: float, *, metric: str = "flops") -> int:
    """Row of ``result`` with the least mean cost among those with accuracy >= ``target``."""
    check_probability("target", target)
    ok = np.flatnonzero(result.accuracy >= target - 1e-12)
    if ok.size == 0:
        raise ValueError(f"no threshold reaches accuracy {target:.4f} (best: {result.accuracy.max():.4f})")
    cost = result.cost(metric)[ok]
    return int(ok[np.lexsort((-result.accuracy[ok], cost))[0]])


def paired_difference(correct_a, correct_b) -> tuple[float, float]:
    r"""Accuracy of A minus accuracy of B on the *same* queries, and its standard error.

    With :math:`d_i = a_i - b_i \in \{-1, 0, 1\}`: :math:`\bar d \pm \mathrm{sd}(d)/\sqrt{n}`.
    Pairing removes the variation shared by both systems (the easy and the impossible
    queries), so it is far tighter than comparing two independent accuracies.
    """
    a, b = np.asarray(correct_a, dtype=np.float64), np.asarray(correct_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError(f"correct_a and correct_b must be 1-D of the same length >= 2, got {a.shape}, {b.shape}")
    d = a - b
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d)))


# =========================================================================== learned router


def router_features(probs, n_tokens=None) -> np.ndarray:
    """(N, F) what the router sees about a query: the small model's top-3 probabilities,
    margin, normalised entropy, the log-odds of its top class, and log length in tokens."""
    p = _as_probs(probs)
    top = -np.sort(-p, axis=1)[:, :3]
    logit_top = np.log(np.clip(top[:, 0], 1e-300, None)) - np.log(np.clip(1 - top[:, 0], 1e-300, None))
    cols = [top, confidence(p, "margin")[:, None], confidence(p, "entropy")[:, None], logit_top[:, None]]
    if n_tokens is not None:
        cols.append(np.log1p(np.asarray(n_tokens, dtype=np.float64))[:, None])
    return np.concatenate(cols, 1)


@dataclass
class Router:
    r"""Logistic regression :math:`P(\text{small model right} \mid x) = \sigma(w^\top \hat x + b)`,
    :math:`\hat x` standardised with the training mean and deviation."""

    mean: np.ndarray
    std: np.ndarray
    weight: np.ndarray
    bias: float

    def predict(self, features) -> np.ndarray:
        z = ((np.asarray(features, dtype=np.float64) - self.mean) / self.std) @ self.weight + self.bias
        return 1 / (1 + np.exp(-z))

    def flops(self) -> int:
        """Standardise, dot product, sigmoid: about :math:`4F` FLOPs."""
        return 4 * len(self.weight)


def fit_router(features, small_correct, *, weight_decay: float = 1e-3, max_iter: int = 200) -> Router:
    """Fit a :class:`Router` on (cross-fitted) features and whether the small model was right."""
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(small_correct)
    if x.ndim != 2 or y.shape != (len(x),):
        raise ValueError(f"features must be (N, F) and small_correct (N,), got {x.shape} and {y.shape}")
    if not np.isin(y, [0, 1]).all() or len(np.unique(y)) < 2:
        raise ValueError("small_correct must hold both 0 and 1 (or False and True)")
    mean, std = x.mean(0), x.std(0) + 1e-12
    xt = torch.from_numpy((x - mean) / std)
    yt = torch.from_numpy(y.astype(np.float64))
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(xt @ w + b, yt) + weight_decay / 2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return Router(mean, std, w.detach().numpy(), float(b.detach()))
