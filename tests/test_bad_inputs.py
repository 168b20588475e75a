"""Bad inputs to the public API raise a ValueError or TypeError that names the argument.

One table: each row is a call a learner could plausibly make (a wrong type, an empty input,
NaN or inf, zero or a negative size, k > n, an unknown name, a wrong rank or dtype) and the
argument the error message must name. Families of bad values are generated per argument
kind (a positive int, a probability, a choice...), so every checked argument meets the
whole family. Everything is small and CPU-only: the file runs in a few seconds.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from course_lib import attention, cascade, data, measure, model, moe, prune, quant, rag, speculative, train
from course_lib import quant_primitives as qp

NAN, INF = float("nan"), float("inf")

# families of bad values, by what the argument should be
POS_INT = (0, -3, 2.5, "4", True, None, NAN)
NONNEG_INT = (-1, 2.5, "4", True, None)
PROB = (-0.1, 1.5, NAN, INF, "0.5", True, None)
SPARSITY = (-0.1, 1.0, 1.5, NAN, INF, "0.5", True, None)  # [0, 1)
POS_FLOAT = (0, -1.0, NAN, INF, "1", True, None)
NONNEG_FLOAT = (-1e-3, NAN, INF, "1", True, None)
CHOICE = ("nope", "", None, 7)
BOOL = ("yes", 1, None)
NOT_A_TENSOR = ([[1.0, 2.0]], "x", None)

CASES: list = []


def _short(v) -> str:
    text = repr(v)
    return text if len(text) <= 20 else text[:17] + "..."


def case(module: str, arg: str, call, label: str | None = None) -> None:
    """One bad call; its error message must contain ``arg``."""
    CASES.append(pytest.param(arg, call, id=f"{module}.{label or arg}#{len(CASES)}"))


def family(module: str, arg: str, values, make, label: str | None = None) -> None:
    """``make(v)`` for every bad value ``v`` of a family."""
    for v in values:
        case(module, arg, lambda v=v: make(v), f"{label or arg}={_short(v)}")


# --------------------------------------------------------------------------- small fixtures

torch.manual_seed(0)
W = torch.randn(8, 16)
W3 = torch.randn(2, 8, 16)
X = torch.randn(32, 16)
TINY = model.ModelConfig(vocab_size=300, d_model=16, n_layers=1, n_heads=2, max_seq_len=32)


def tiny_model() -> model.TinyLM:
    torch.manual_seed(0)
    return model.TinyLM(TINY).eval()


LM = tiny_model()
IDS = torch.randint(0, 300, (1, 8))
TEXTS = [
    "The river flows north through the old town.",
    "A tower stands in the town square near the river.",
    "The old tower has a bell and a clock.",
    "Trains cross the river on a stone bridge.",
    "The bridge and the tower are older than the town.",
    "A clock on the bridge shows the time to the trains.",
]
LSA = rag.LSAEmbedder(TEXTS, dim=3, min_df=1)
KB = rag.KnowledgeBase(LSA)
KB.add([rag.Document("a", "A", TEXTS[0]), rag.Document("b", "B", TEXTS[1])])
BM = rag.BM25Index.from_tokens([rag.tokenize(t) for t in TEXTS])
EX = rag.ExactIndex(4)
EX.add(torch.nn.functional.normalize(torch.randn(10, 4), dim=-1))
IVF = rag.IVFIndex(4, 2)
IVF.train(torch.randn(10, 4))
IVF.add(torch.randn(10, 4))
Q4 = torch.randn(3, 4)

PROBS = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.3, 0.4, 0.3]])
LABELS = np.array([0, 2, 1])
LOGITS = np.log(PROBS)

# =========================================================================== rag

family("rag", "text", (None, 3, ["a b"], b"text"), lambda v: rag.tokenize(v))
family("rag", "text", (None, 3, ["a b"]), lambda v: rag.split_sentences(v))
family("rag", "max_words", POS_INT, lambda v: rag.chunk("One. Two.", max_words=v))
family("rag", "overlap", (-1, 2.5, "1", None), lambda v: rag.chunk("One two three.", overlap=v))
case("rag", "overlap", lambda: rag.chunk("one two three", max_words=3, overlap=3, by="word"), "overlap>=max_words")
family("rag", "by", CHOICE, lambda v: rag.chunk("One.", by=v))
family("rag", "k1", (-0.5, 11, NAN, INF, "1.2", True, None), lambda v: rag.BM25Index(k1=v))
family("rag", "b", PROB, lambda v: rag.BM25Index(b=v))
family("rag", "idf", CHOICE, lambda v: rag.BM25Index(idf=v))
family("rag", "epsilon", NONNEG_FLOAT, lambda v: rag.BM25Index(epsilon=v))
family("rag", "docs", ("a b c", None, 3), lambda v: rag.BM25Index().add(v))
case("rag", "document", lambda: rag.BM25Index().add(["a b", "c"]), "docs-of-strings")
family("rag", "k", POS_INT, lambda v: BM.search(["river"], v), "BM25.search.k")
family("rag", "k", POS_INT, lambda v: BM.search_many([["river"]], v), "BM25.search_many.k")
case("rag", "query", lambda: BM.scores("river"), "BM25.scores.str")
case("rag", "empty", lambda: rag.BM25Index().scores(["river"]), "BM25.scores.empty")
case("rag", "ids", lambda: rag.BM25Index.from_tokens([["a"]]).delete([5]), "BM25.delete.range")
case("rag", "deleted", lambda: _deleted_twice(), "BM25.delete.twice")
family("rag", "texts", ("one text", [], None), lambda v: rag.LSAEmbedder(v), "LSAEmbedder.texts")
family("rag", "dim", POS_INT, lambda v: rag.LSAEmbedder(TEXTS, dim=v), "LSAEmbedder.dim")
family("rag", "min_df", POS_INT, lambda v: rag.LSAEmbedder(TEXTS, min_df=v), "LSAEmbedder.min_df")
family("rag", "texts", ("a text", None), lambda v: LSA.embed(v), "LSAEmbedder.embed")
family("rag", "prefer", CHOICE, lambda v: rag.get_embedder(TEXTS, prefer=v))
family("rag", "dim", POS_INT, lambda v: rag.ExactIndex(v), "ExactIndex.dim")
family("rag", "vectors", (torch.randn(4), torch.randn(2, 5), torch.ones(2, 4, dtype=torch.long)), lambda v: EX.add(v))
case("rag", "vectors", lambda: EX.add(torch.full((1, 4), NAN)), "ExactIndex.add.nan")
family("rag", "k", POS_INT, lambda v: EX.search(Q4, v), "ExactIndex.search.k")
family("rag", "batch_size", POS_INT, lambda v: EX.search(Q4, 2, batch_size=v), "ExactIndex.search.batch_size")
case("rag", "queries", lambda: EX.search(torch.zeros(0, 4), 2), "ExactIndex.search.no-queries")
case("rag", "queries", lambda: EX.search(torch.randn(4), 2), "ExactIndex.search.1d")
case("rag", "queries", lambda: EX.search(torch.randn(2, 3), 2), "ExactIndex.search.dim")
case("rag", "queries", lambda: EX.search(torch.full((1, 4), INF), 2), "ExactIndex.search.inf")
case("rag", "ids", lambda: rag.ExactIndex(2).delete([0]), "ExactIndex.delete")
case("rag", "empty", lambda: rag.ExactIndex(4).search(Q4, 1), "ExactIndex.search.empty-index")
family("rag", "k", (0, -1, 11, 2.5, "2", True), lambda v: rag.kmeans(torch.randn(10, 4), v), "kmeans.k")
family("rag", "iters", NONNEG_INT, lambda v: rag.kmeans(torch.randn(10, 4), 2, iters=v), "kmeans.iters")
family("rag", "spherical", BOOL, lambda v: rag.kmeans(torch.randn(10, 4), 2, spherical=v), "kmeans.spherical")
case("rag", "x", lambda: rag.kmeans(torch.randn(10), 2), "kmeans.1d")
family("rag", "dim", POS_INT, lambda v: rag.IVFIndex(v, 2), "IVFIndex.dim")
family("rag", "nlist", POS_INT, lambda v: rag.IVFIndex(4, v), "IVFIndex.nlist")
family("rag", "nprobe", (0, 3, -1, 1.5, "1", None), lambda v: IVF.search(Q4, 2, nprobe=v), "IVFIndex.nprobe")
family("rag", "k", POS_INT, lambda v: IVF.search(Q4, v), "IVFIndex.search.k")
case("rag", "train", lambda: rag.IVFIndex(4, 2).add(Q4), "IVFIndex.add.untrained")
case("rag", "nlist", lambda: rag.IVFIndex(4, 8).train(torch.randn(3, 4)), "IVFIndex.train.few")
case("rag", "either", lambda: rag.IVFIndex(4, 2).train(Q4, centroids=Q4[:2]), "IVFIndex.train.both")
case("rag", "rankings", lambda: rag.reciprocal_rank_fusion([]), "rrf.empty")
case("rag", "rankings", lambda: rag.reciprocal_rank_fusion("abc"), "rrf.str")
family("rag", "k", NONNEG_FLOAT, lambda v: rag.reciprocal_rank_fusion([[1, 2]], k=v), "rrf.k")
family("rag", "top", (0, -1, 1.5, "2", True), lambda v: rag.reciprocal_rank_fusion([[1, 2]], top=v), "rrf.top")
case("rag", "twice", lambda: rag.reciprocal_rank_fusion([[1, 1]]), "rrf.twice")
case("rag", "rows", lambda: rag.fuse_many(np.zeros((2, 3), int), np.zeros((3, 3), int)), "fuse_many.rows")
case("rag", "ranked", lambda: rag.ranks_of(np.zeros(3, int), [1, 2, 3]), "ranks_of.1d")
case("rag", "gold", lambda: rag.ranks_of(np.zeros((3, 2), int), [1, 2]), "ranks_of.gold")
case("rag", "ranks", lambda: rag.retrieval_metrics([]), "metrics.empty")
case("rag", "ranks", lambda: rag.retrieval_metrics(np.ones((2, 2))), "metrics.2d")
family(
    "rag",
    "ranks",
    ([0, 1, 2], [0.5, 2], [NAN, 1], [-1, 1]),
    lambda v: rag.retrieval_metrics(np.array(v)),
    "metrics.ranks",
)
family("rag", "ks", (0, -1, 1.5, "5", True), lambda v: rag.retrieval_metrics(np.array([1.0, 2.0]), ks=(v,)))
family("rag", "embedder", (None, object(), "minilm"), lambda v: rag.KnowledgeBase(v))
family("rag", "max_words", (0, -1, 2.5, "8"), lambda v: rag.KnowledgeBase(LSA, chunk_words=v), "KB.chunk_words")
family("rag", "overlap", (-1, "1"), lambda v: rag.KnowledgeBase(LSA, chunk_words=8, chunk_overlap=v), "KB.overlap")
family("rag", "k1", (-1, NAN, "1"), lambda v: rag.KnowledgeBase(LSA, k1=v), "KB.k1")
family("rag", "b", (-1, 2, NAN, "1"), lambda v: rag.KnowledgeBase(LSA, b=v), "KB.b")
case("rag", "docs", lambda: KB.add([]), "KB.add.empty")
family("rag", "docs", ("text", 3, [("id", "t", "x")]), lambda v: KB.add(v), "KB.add.type")
case("rag", "id", lambda: KB.add(rag.Document("", "t", "some text")), "KB.add.empty-id")
case("rag", "text", lambda: KB.add(rag.Document("z", "t", "   ")), "KB.add.blank")
family("rag", "doc_ids", (3, None), lambda v: KB.delete(v), "KB.delete.type")
case("rag", "already present", lambda: KB.add(rag.Document("a", "A", "again")), "KB.add.dup")
case("rag", "vectors", lambda: KB.add(rag.Document("z", "Z", "x y"), vectors=torch.randn(2, 3)), "KB.add.vectors")
case("rag", "tokens", lambda: KB.add(rag.Document("z", "Z", "x y"), tokens=["x y"]), "KB.add.tokens")
family("rag", "k", POS_INT, lambda v: KB.search("river", v), "KB.search.k")
family("rag", "method", CHOICE, lambda v: KB.search("river", 1, method=v), "KB.search.method")
family("rag", "depth", POS_INT, lambda v: KB.search("river", 1, depth=v), "KB.search.depth")
family("rag", "query", ("", "   ", None, 3, ["river"]), lambda v: KB.search(v, 1), "KB.search.query")
case("rag", "empty", lambda: rag.KnowledgeBase(LSA).search("river"), "KB.search.empty")
family("rag", "description", (None, 3, ["d"]), lambda v: rag.reader_prompt(v))
case("rag", "passages", lambda: rag.reader_prompt("d", "one passage"), "reader_prompt.passages")


def _deleted_twice():
    index = rag.BM25Index.from_tokens([["a"], ["b"]])
    index.delete([0])
    index.delete([0])


# =========================================================================== cascade

family("cascade", "temperature", POS_FLOAT, lambda v: cascade.softmax(LOGITS, v), "softmax.temperature")
family("cascade", "temperature", POS_FLOAT, lambda v: cascade.nll(LOGITS, LABELS, v), "nll.temperature")
case("cascade", "logits", lambda: cascade.nll(LOGITS[0], LABELS), "nll.1d")
family(
    "cascade", "labels", ([0, 1], [0, 1, 3], [0, -1, 1], [0.5, 1, 2]), lambda v: cascade.nll(LOGITS, v), "nll.labels"
)
family("cascade", "kind", CHOICE, lambda v: cascade.confidence(PROBS, v))
family(
    "cascade",
    "probs",
    (PROBS[0], PROBS * 2, -PROBS, np.ones((3, 1))),
    lambda v: cascade.confidence(v),
    "confidence.probs",
)
family("cascade", "n_bins", POS_INT, lambda v: cascade.reliability(PROBS, LABELS, n_bins=v))
family(
    "cascade", "n_bins", POS_INT, lambda v: cascade.expected_calibration_error(PROBS, LABELS, n_bins=v), "ece.n_bins"
)
family("cascade", "labels", ([0, 1], [0, 1, 3]), lambda v: cascade.reliability(PROBS, v), "reliability.labels")
family("cascade", "bounds", ((0, 1), (2, 1), (-1, 5)), lambda v: cascade.fit_temperature(LOGITS, LABELS, bounds=v))
family("cascade", "texts", ("a text", None), lambda v: cascade.token_ids(v))
family("cascade", "bits", (12, 25, 2.5, "18", None), lambda v: cascade.bow_features([[1, 2]], bits=v))
case("cascade", "ids", lambda: cascade.bow_features([]), "bow_features.empty")
family("cascade", "n_classes", (1, 0, 2.5, "12", True), lambda v: cascade.NaiveBayesBoW(n_classes=v))
family("cascade", "alpha", POS_FLOAT, lambda v: cascade.NaiveBayesBoW(alpha=v))
case("cascade", "fit", lambda: cascade.NaiveBayesBoW().logits_from_features(None, None, 1), "NB.unfitted")
case("cascade", "x", lambda: cascade.fit_linear_head(np.zeros(4), [0, 1, 0, 1]), "fit_linear_head.1d")
family(
    "cascade",
    "weight_decay",
    NONNEG_FLOAT,
    lambda v: cascade.fit_linear_head(np.zeros((4, 2)), [0, 1, 0, 1], n_classes=2, weight_decay=v),
)
family(
    "cascade",
    "folds",
    (1, 0, 11, 2.5, "5"),
    lambda v: cascade.cross_fit(lambda a, b: np.zeros((len(b), 2)), 10, folds=v),
)
family("cascade", "threshold", PROB, lambda v: cascade.accept(PROBS.max(1), v), "accept.threshold")
family("cascade", "target", PROB, lambda v: cascade.cheapest_for_accuracy(None, v), "cheapest.target")
case("cascade", "cost and accuracy", lambda: cascade.pareto_front([1, 2], [0.5]), "pareto.len")
case("cascade", "correct_a", lambda: cascade.paired_difference([1, 0, 1], [1, 0]), "paired.len")
case("cascade", "correct_a", lambda: cascade.paired_difference([1], [1]), "paired.short")
case("cascade", "features", lambda: cascade.fit_router(np.zeros(4), [0, 1, 0, 1]), "fit_router.1d")
case("cascade", "small_correct", lambda: cascade.fit_router(np.zeros((4, 2)), [1, 1, 1, 1]), "fit_router.one-class")


def _toy_cascade():
    preds = [np.array([0, 1, 2]), np.array([0, 2, 1])]
    scores = [np.array([0.9, 0.2, 0.5])]
    costs = [cascade.QueryCost("s", np.ones(3), np.ones(3)), cascade.QueryCost("b", np.ones(3) * 9, np.ones(3))]
    return preds, scores, costs


family(
    "cascade",
    "thresholds[0]",
    PROB,
    lambda v: cascade.run_cascade(*_toy_cascade(), [v], LABELS),
    "run_cascade.thresholds",
)
case(
    "cascade",
    "cost",
    lambda: cascade.run_cascade(_toy_cascade()[0], _toy_cascade()[1], _toy_cascade()[2][:1], [0.5]),
    "run_cascade.costs",
)
family("cascade", "metric", CHOICE, lambda v: cascade.Sweep(*(np.zeros((1, 1)),) * 5).cost(v), "Sweep.metric")
case("cascade", "grid", lambda: cascade.sweep(*_toy_cascade(), LABELS, []), "sweep.empty")

# =========================================================================== prune

# chapter 04, width half (course_lib.conditional)
from course_lib import conditional  # noqa: E402

CMLP = conditional.ConditionalMLP(d_model=16, d_ff=24)
family("conditional", "sparsity", SPARSITY, lambda v: conditional.fit_thresholds(LM, IDS, sparsity=v), "fit_thresholds")
family("conditional", "sparsity", SPARSITY, lambda v: conditional.kernel_variants(CMLP, v), "kernel_variants")
family("conditional", "tau", NONNEG_FLOAT, lambda v: conditional.activation_stats(LM, IDS, tau=v), "activation_stats")
family("conditional", "input_relu", BOOL, lambda v: conditional.relufy(LM, input_relu=v), "relufy")
family("conditional", "activation", CHOICE, lambda v: conditional.ConditionalMLP(d_model=8, d_ff=8, activation=v))
family("conditional", "threshold", NONNEG_FLOAT, lambda v: conditional.ConditionalMLP(d_model=8, d_ff=8, threshold=v))
family(
    "conditional",
    "idx",
    (torch.tensor([24]), torch.tensor([-1]), torch.tensor([0.5]), [0]),
    lambda v: conditional.SparseDecodeMLP(CMLP)(torch.randn(16), v),
    "SparseDecodeMLP.idx",
)
family(
    "conditional",
    "x",
    (torch.randn(2, 16), torch.randn(8), [0.0] * 16),
    lambda v: conditional.SparseDecodeMLP(CMLP)(v, torch.tensor([0])),
    "SparseDecodeMLP.x",
)
family("conditional", "rank", POS_INT, lambda v: conditional.SparsityPredictor(16, 24, v), "SparsityPredictor.rank")
family(
    "conditional",
    "budget",
    (0.0, 1.5, NAN, "0.5"),
    lambda v: conditional.SparsityPredictor(16, 24).predict(torch.randn(16), budget=v),
    "predict.budget",
)
family(
    "conditional",
    "ids",
    (torch.zeros(4, dtype=torch.long), torch.zeros(1, 4)),
    lambda v: conditional.capture_activations(LM, v),
    "capture.ids",
)

family("prune", "sparsity", SPARSITY, lambda v: prune.magnitude_mask(W, v), "magnitude_mask")
family("prune", "weight", NOT_A_TENSOR, lambda v: prune.magnitude_mask(v, 0.5), "magnitude_mask.weight")
family("prune", "sparsity", SPARSITY, lambda v: prune.random_mask(W, v), "random_mask")
family("prune", "sparsity", SPARSITY, lambda v: prune.global_magnitude_masks({"w": W}, v), "global.sparsity")
family("prune", "weights", ({}, None, [W]), lambda v: prune.global_magnitude_masks(v, 0.5), "global.weights")
case("prune", "weights['w']", lambda: prune.global_magnitude_masks({"w": [1.0]}, 0.5), "global.not-tensor")
family(
    "prune", "weight", (torch.randn(16), W3, W.long()), lambda v: prune.wanda_scores(v, torch.ones(16)), "wanda.weight"
)
family(
    "prune",
    "act_norm",
    (torch.ones(8), torch.ones(16, 1), [1.0] * 16),
    lambda v: prune.wanda_scores(W, v),
    "wanda.act_norm",
)
family("prune", "sparsity", SPARSITY, lambda v: prune.wanda_mask(W, torch.ones(16), v), "wanda_mask")
family("prune", "scores", (torch.randn(16), W3), lambda v: prune.row_mask(v, 0.5), "row_mask.scores")
family("prune", "n", (0, -1, 2.5, "2", True, None), lambda v: prune.nm_mask(W, v, 4), "nm_mask.n")
family("prune", "m", (0, -1, 2.5, "4", True, None), lambda v: prune.nm_mask(W, 2, v), "nm_mask.m")
case("prune", "N <= M", lambda: prune.nm_mask(W, 4, 2), "nm_mask.n>m")
case("prune", "M=3", lambda: prune.nm_mask(W, 1, 3), "nm_mask.divisible")
family("prune", "n", (0, "2"), lambda v: prune.is_nm_sparse(W, v, 4), "is_nm_sparse.n")
family("prune", "t", (torch.zeros(0), [1, 0]), lambda v: prune.sparsity_of(v), "sparsity_of")
family("prune", "shape", ((4,), (4, 4, 4), "4x4", None), lambda v: prune.dense_bytes(v), "dense_bytes.shape")
family("prune", "shape[0]", (-1, 2.5), lambda v: prune.dense_bytes((v, 4)), "dense_bytes.rows")
family("prune", "value_bytes", POS_INT, lambda v: prune.dense_bytes((4, 4), v), "dense_bytes.value_bytes")
family("prune", "nnz", (-1, 17, 2.5, "3", None), lambda v: prune.csr_bytes((4, 4), v), "csr_bytes.nnz")
family("prune", "index_bytes", POS_INT, lambda v: prune.csr_bytes((4, 4), 3, 4, v), "csr_bytes.index_bytes")
family("prune", "n", (0, "2"), lambda v: prune.nm_bytes((4, 8), v), "nm_bytes.n")
family("prune", "value_bytes", (0, -2, "2"), lambda v: prune.nm_bytes((4, 8), 2, 4, v), "nm_bytes.value_bytes")
case("prune", "not 2:4 sparse", lambda: prune.compress_nm(torch.ones(4, 8)), "compress_nm.dense")
family(
    "prune", "bits", (0, 3, 16, "4", None), lambda v: prune.pack_bits(torch.zeros(4, dtype=torch.uint8), v), "pack_bits"
)
case("prune", "values", lambda: prune.pack_bits(torch.full((4,), 9), 2), "pack_bits.range")
case("prune", "values", lambda: prune.pack_bits([1, 2], 2), "pack_bits.list")
family(
    "prune",
    "count",
    (-1, 9, 2.5, None),
    lambda v: prune.unpack_bits(torch.zeros(2, dtype=torch.uint8), 2, v),
    "unpack_bits",
)
family("prune", "linear", (nn.Conv1d(2, 2, 1), W, None), lambda v: prune.CSRLinear(v))
family(
    "prune",
    "method",
    CHOICE,
    lambda v: prune.prune_unstructured(tiny_model(), method=v, sparsity=0.5),
    "unstructured.method",
)
family(
    "prune",
    "sparsity",
    SPARSITY[:-1],
    lambda v: prune.prune_unstructured(tiny_model(), sparsity=v),
    "unstructured.sparsity",
)
case("prune", "sparsity", lambda: prune.prune_unstructured(tiny_model()), "unstructured.neither")
case(
    "prune",
    "sparsity",
    lambda: prune.prune_unstructured(tiny_model(), sparsity=0.5, pattern=(2, 4)),
    "unstructured.both",
)
family(
    "prune", "pattern", ((2,), [2, 4], "2:4"), lambda v: prune.prune_unstructured(LM, pattern=v), "unstructured.pattern"
)
case("prune", "n", lambda: prune.prune_unstructured(LM, pattern=(0, 4)), "unstructured.pattern-n")
case("prune", "calibration", lambda: prune.prune_unstructured(LM, method="wanda", sparsity=0.5), "unstructured.wanda")
case("prune", "where", lambda: prune.prunable_linears(LM, lambda n, m: False), "prunable_linears.none")
case("prune", "calibration", lambda: prune.activation_norms(LM, []), "activation_norms.empty")
case("prune", "calibration items", lambda: prune.activation_norms(LM, ["text"]), "activation_norms.items")
family(
    "prune",
    "dim",
    (2, -1, "0", None),
    lambda v: prune.shrink_linear(nn.Linear(4, 4), torch.tensor([0, 1]), dim=v),
    "shrink_linear.dim",
)
family("prune", "amount", SPARSITY, lambda v: prune.keep_highest(torch.randn(8), v), "keep_highest.amount")
family(
    "prune",
    "head_sparsity",
    SPARSITY,
    lambda v: prune.select_heads(torch.randn(4), v, n_kv_heads=2),
    "select_heads.amount",
)
family("prune", "granularity", CHOICE, lambda v: prune.select_heads(torch.randn(4), 0.5, n_kv_heads=2, granularity=v))
family(
    "prune", "mlp_sparsity", SPARSITY, lambda v: prune.prune_structured(tiny_model(), mlp_sparsity=v), "structured.mlp"
)
family(
    "prune",
    "head_sparsity",
    SPARSITY,
    lambda v: prune.prune_structured(tiny_model(), head_sparsity=v),
    "structured.heads",
)
family(
    "prune",
    "method",
    CHOICE,
    lambda v: prune.prune_structured(tiny_model(), mlp_sparsity=0.5, method=v),
    "structured.method",
)
case("prune", "knows TinyLM and BERT", lambda: prune.layer_specs(nn.Linear(2, 2)), "layer_specs.type")
_GMP = dict(final_sparsity=0.5, begin_step=0, end_step=10)
family(
    "prune", "final_sparsity", SPARSITY, lambda v: prune.gmp_sparsity(3, **{**_GMP, "final_sparsity": v}), "gmp.final"
)
family("prune", "every", POS_INT, lambda v: prune.gmp_sparsity(3, **_GMP, every=v), "gmp.every")
family(
    "prune",
    "begin_step",
    (-1, 2.5, "0", None),
    lambda v: prune.gmp_sparsity(3, **{**_GMP, "begin_step": v}),
    "gmp.begin",
)
case("prune", "begin_step < end_step", lambda: prune.gmp_sparsity(3, **{**_GMP, "begin_step": 10}), "gmp.order")
family("prune", "step", (2.5, "3", None), lambda v: prune.gmp_sparsity(v, **_GMP), "gmp.step")
_LT = (torch.randn(20, 4), torch.randint(0, 2, (20,)), torch.arange(20) < 15)
family("prune", "rounds", POS_INT, lambda v: prune.lottery_ticket(*_LT, rounds=v), "lottery.rounds")
family("prune", "prune_frac", SPARSITY, lambda v: prune.lottery_ticket(*_LT, prune_frac=v), "lottery.prune_frac")
case("prune", "features", lambda: prune.lottery_ticket(torch.randn(20), *_LT[1:]), "lottery.features")

# =========================================================================== quant_primitives

family("quant_primitives", "format", CHOICE, lambda v: qp.format_grid(v), "format_grid")
family("quant_primitives", "format", CHOICE, lambda v: qp.round_to_format(W, v), "round_to_format.name")
family(
    "quant_primitives", "x", NOT_A_TENSOR + (W.long(),), lambda v: qp.round_to_format(v, "int4"), "round_to_format.x"
)
family(
    "quant_primitives",
    "block_size",
    (0, -1, 3, 2.5, "4"),
    lambda v: qp.round_to_format(W, "int4", block_size=v),
    "round_to_format.block",
)
family("quant_primitives", "bits", (1, 9, 5, 2.5, "4", True, None), lambda v: qp.check_bits(v), "check_bits")
family(
    "quant_primitives",
    "group_size",
    (0, -2, 5, 2.5, "4", True),
    lambda v: qp.check_group_size(v, 16),
    "check_group_size",
)
family("quant_primitives", "granularity", CHOICE, lambda v: qp.block_size((4, 16), v), "block_size.granularity")
case("quant_primitives", "granularity", lambda: qp.block_size((16,), "channel"), "block_size.1d")
family("quant_primitives", "group_size", (0, 5, None), lambda v: qp.block_size((4, 16), "group", v), "block_size.group")
family("quant_primitives", "x", NOT_A_TENSOR + (W.long(),), lambda v: qp.quantize(v), "quantize.x")
family("quant_primitives", "bits", (1, 9, 2.5, "8", None), lambda v: qp.quantize(W, bits=v), "quantize.bits")
family("quant_primitives", "granularity", CHOICE, lambda v: qp.quantize(W, granularity=v), "quantize.granularity")
case("quant_primitives", "x", lambda: qp.quantize(torch.zeros(0, 4)), "quantize.empty")
case("quant_primitives", "x", lambda: qp.quantize(torch.tensor([1.0, NAN])), "quantize.nan")
case("quant_primitives", "x", lambda: qp.quantize(torch.tensor([1.0, INF])), "quantize.inf")
family("quant_primitives", "act_granularity", CHOICE, lambda v: qp.quantize_activations(X, granularity=v))
family(
    "quant_primitives",
    "x",
    (torch.randn(16), W3, X.long()),
    lambda v: qp.quantize_activations(v),
    "quantize_activations.x",
)
case("quant_primitives", "x_hat", lambda: qp.error_stats(W, W[:2]), "error_stats.shape")
case("quant_primitives", "even", lambda: qp.pack_int4(torch.zeros(3, dtype=torch.uint8)), "pack_int4.odd")
case("quant_primitives", "[0, 15]", lambda: qp.pack_int4(torch.full((4,), 16, dtype=torch.uint8)), "pack_int4.range")
family(
    "quant_primitives",
    "bits",
    (0, 9, "4", None),
    lambda v: qp.pack_bits(torch.zeros(4, dtype=torch.uint8), v),
    "pack_bits.bits",
)
family(
    "quant_primitives",
    "bits",
    (0, 9, "4", None),
    lambda v: qp.unpack_bits(torch.zeros(4, dtype=torch.uint8), v, 4),
    "unpack_bits.bits",
)
family(
    "quant_primitives",
    "backend",
    CHOICE,
    lambda v: qp.int8_matmul(torch.zeros(2, 4, dtype=torch.int8), torch.zeros(3, 4, dtype=torch.int8), backend=v),
)
family(
    "quant_primitives",
    "a",
    (torch.zeros(2, 4), torch.zeros(4, dtype=torch.int8), [[1]]),
    lambda v: qp.int8_matmul(v, torch.zeros(3, 4, dtype=torch.int8), backend="emulated"),
    "int8_matmul.a",
)
case(
    "quant_primitives",
    "b_t",
    lambda: qp.int8_matmul(
        torch.zeros(2, 4, dtype=torch.int8), torch.zeros(3, 5, dtype=torch.int8), backend="emulated"
    ),
    "int8_matmul.K",
)

# =========================================================================== quant

family("quant", "in_features", POS_INT, lambda v: quant.QuantLinear(v, 8), "QuantLinear.in")
family("quant", "out_features", POS_INT, lambda v: quant.QuantLinear(16, v), "QuantLinear.out")
family("quant", "bits", (1, 5, 9, 2.5, "4", None), lambda v: quant.QuantLinear(16, 8, bits=v), "QuantLinear.bits")
family("quant", "group_size", (0, 5, 2.5, "8"), lambda v: quant.QuantLinear(16, 8, group_size=v), "QuantLinear.group")
family("quant", "act_granularity", CHOICE, lambda v: quant.W8A8Linear(16, 8, act_granularity=v))
family("quant", "backend", CHOICE, lambda v: quant.W8A8Linear(16, 8, backend=v), "W8A8Linear.backend")
family("quant", "threshold", POS_FLOAT, lambda v: quant.LLMInt8Linear(16, 8, threshold=v))
family("quant", "embedding", (nn.Linear(4, 4), None), lambda v: quant.QuantEmbedding(v))
family("quant", "alpha", PROB, lambda v: quant.smooth_scales(torch.ones(16), W, alpha=v), "smooth_scales.alpha")
family("quant", "act_absmax", (torch.ones(16, 1), [1.0] * 16), lambda v: quant.smooth_scales(v, W), "smooth_scales.act")
family(
    "quant",
    "x",
    (torch.randn(16), X.long(), torch.zeros(0, 16), torch.full((2, 16), NAN)),
    lambda v: quant.hessian(v),
    "hessian",
)
_H = quant.hessian(X)
family(
    "quant",
    "H",
    (torch.eye(8), torch.eye(16)[None], torch.eye(16).long()),
    lambda v: quant.gptq_quantize(W, v),
    "gptq.H",
)
family("quant", "bits", (1, 9, "4", None), lambda v: quant.gptq_quantize(W, _H, bits=v), "gptq.bits")
family("quant", "damp", (-0.1, 1.0, NAN, "0.01"), lambda v: quant.gptq_quantize(W, _H, damp=v), "gptq.damp")
family("quant", "group_size", (0, 5, "8"), lambda v: quant.gptq_quantize(W, _H, group_size=v), "gptq.group")
case("quant", "weight", lambda: quant.gptq_quantize(torch.full((8, 16), NAN), _H), "gptq.nan-weight")
family(
    "quant",
    "x",
    (torch.randn(32, 8), torch.randn(4, 32), torch.full((4, 16), NAN), X.long(), torch.zeros(0, 16), [[1.0] * 16]),
    lambda v: quant.awq_search(W, v),
    "awq.x",
)
family("quant", "n_grid", POS_INT, lambda v: quant.awq_search(W, X, n_grid=v), "awq.n_grid")
family("quant", "max_shrink", (-0.1, 1.0, NAN, "0.5"), lambda v: quant.awq_search(W, X, max_shrink=v), "awq.max_shrink")
family(
    "quant",
    "act_mean",
    (torch.ones(8), torch.full((16,), NAN)),
    lambda v: quant.awq_search(W, X, act_mean=v),
    "awq.act_mean",
)
family("quant", "clip", BOOL, lambda v: quant.awq_search(W, X, clip=v), "awq.clip")
family("quant", "bits", (1, 9, "4"), lambda v: quant.awq_search(W, X, bits=v), "awq.bits")
family("quant", "model", (None, "tiny", W), lambda v: quant.quantize_model(v), "quantize_model.model")
family("quant", "method", CHOICE, lambda v: quant.quantize_model(tiny_model(), v), "quantize_model.method")
family(
    "quant",
    "bits",
    (1, 9, 2.5, "4", None),
    lambda v: quant.quantize_model(tiny_model(), "rtn", v),
    "quantize_model.bits",
)
family(
    "quant",
    "group_size",
    (0, 5, 2.5, "8"),
    lambda v: quant.quantize_model(tiny_model(), "rtn", 4, v),
    "quantize_model.group",
)
family(
    "quant",
    "calib",
    (None, [], torch.zeros(0, 4, dtype=torch.long)),
    lambda v: quant.quantize_model(tiny_model(), "gptq", 4, 16, v),
    "quantize_model.calib",
)
case("quant", "where", lambda: quant.quantize_model(tiny_model(), where=lambda n, m: False), "quantize_model.where")
family(
    "quant",
    "embed_bits",
    (1, 9, "8"),
    lambda v: quant.quantize_model(tiny_model(), embed_bits=v),
    "quantize_model.embed_bits",
)
family("quant", "w", (torch.randn(16), W.long()), lambda v: quant.ste_fake_quant(v, bits=4, group_size=None), "ste.w")
family("quant", "bits", (1, "4"), lambda v: quant.ste_fake_quant(W, bits=v, group_size=None), "ste.bits")
family(
    "quant",
    "bits",
    (1, "4"),
    lambda v: quant.FakeQuantLinear(nn.Linear(16, 8), bits=v, group_size=None),
    "FakeQuantLinear.bits",
)
family(
    "quant",
    "max_rows",
    (0, -1, 2.5, "4"),
    lambda v: quant.capture_inputs(LM, ["blocks.0.mlp.up_proj"], IDS, max_rows=v),
    "capture.max_rows",
)
case(
    "quant",
    "linear",
    lambda: quant.tied_head(quant.QuantEmbedding(nn.Embedding(10, 16)), nn.Linear(16, 9)),
    "tied_head.shape",
)

# =========================================================================== speculative

_P = torch.softmax(torch.randn(3, 10), -1)
_Qd = torch.softmax(torch.randn(2, 10), -1)
family(
    "speculative",
    "p",
    (_P[0], [[0.5, 0.5]], _P.long(), torch.full((3, 10), NAN)),
    lambda v: speculative.verify(v, _Qd, [1, 2]),
    "verify.p",
)
family("speculative", "q", (_Qd[0], _Qd.long()), lambda v: speculative.verify(_P, v, [1, 2]), "verify.q")
case("speculative", "p", lambda: speculative.verify(_P, _Qd, [1]), "verify.k")
case("speculative", "p and q", lambda: speculative.verify(-_P, _Qd, [1, 2]), "verify.negative")
family("speculative", "drafted[0]", (-1, 10, 2.5, "1"), lambda v: speculative.verify(_P, _Qd, [v, 2]), "verify.drafted")
family(
    "speculative",
    "target_logits",
    (torch.randn(3), torch.randn(2, 10), torch.ones(3, 10, dtype=torch.long)),
    lambda v: speculative.verify_greedy(v, [1, 2]),
    "verify_greedy.logits",
)
family(
    "speculative",
    "drafted[1]",
    (-1, 10),
    lambda v: speculative.verify_greedy(torch.randn(3, 10), [1, v]),
    "verify_greedy.drafted",
)
family("speculative", "alpha", PROB, lambda v: speculative.expected_tokens_per_round(v, 4), "expected_tokens.alpha")
family("speculative", "k", POS_INT, lambda v: speculative.expected_tokens_per_round(0.5, v), "expected_tokens.k")
family("speculative", "k", POS_INT, lambda v: speculative.prompt_lookup([1, 2, 1], v), "prompt_lookup.k")
family("speculative", "max_ngram", POS_INT, lambda v: speculative.PromptLookup(max_ngram=v), "PromptLookup.max_ngram")
family("speculative", "k", POS_INT, lambda v: speculative.break_even_alpha(v, 0.1, 1.2), "break_even_alpha.k")
family("speculative", "cost_ratio", NONNEG_FLOAT, lambda v: speculative.break_even_alpha(2, v, 1.2), "break_even.c")
family(
    "speculative",
    "cost_ratio",
    NONNEG_FLOAT,
    lambda v: speculative.expected_speedup(0.5, 4, v),
    "expected_speedup.cost",
)
family(
    "speculative",
    "verify_cost",
    POS_FLOAT,
    lambda v: speculative.expected_speedup(0.5, 4, 0.1, verify_cost=v),
    "expected_speedup.verify",
)
case("speculative", "p and q", lambda: speculative.acceptance_probability(_P, _Qd), "acceptance_probability.shape")
family(
    "speculative", "length", (-1, 2.5, "1", None), lambda v: speculative.rollback(LM.new_cache(1), v), "rollback.length"
)
case("speculative", "truncate", lambda: speculative.rollback([object()], 0), "rollback.cache")
family(
    "speculative",
    "k (draft length)",
    POS_INT,
    lambda v: speculative.speculative_generate(LM, LM, IDS, 4, k=v),
    "generate.k",
)
family(
    "speculative",
    "max_new_tokens",
    NONNEG_INT,
    lambda v: speculative.speculative_generate(LM, LM, IDS, v),
    "generate.max_new",
)
family(
    "speculative",
    "temperature",
    NONNEG_FLOAT,
    lambda v: speculative.speculative_generate(LM, LM, IDS, 4, temperature=v),
    "generate.temperature",
)
family(
    "speculative",
    "top_k",
    (0, -1, 2.5, "4"),
    lambda v: speculative.speculative_generate(LM, LM, IDS, 4, top_k=v),
    "generate.top_k",
)
family(
    "speculative",
    "idx",
    (IDS[0], torch.zeros(1, 0, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long)),
    lambda v: speculative.speculative_generate(LM, LM, v, 4),
    "generate.idx",
)
case("speculative", "max_seq_len", lambda: speculative.speculative_generate(LM, LM, IDS, 100), "generate.too-long")
family(
    "speculative",
    "target",
    (None, "model", nn.Linear(2, 2)),
    lambda v: speculative.speculative_generate(v, LM, IDS, 4),
    "generate.target",
)
case(
    "speculative",
    "vocab",
    lambda: speculative.speculative_generate(
        LM, model.TinyLM(model.ModelConfig(vocab_size=301, d_model=16, n_layers=1, n_heads=2)), IDS, 4
    ),
    "generate.vocab",
)
case("speculative", "prompts", lambda: speculative.speculative_benchmark(LM, LM, []), "benchmark.empty")

# =========================================================================== foundation modules (cheap)

for _field in ("vocab_size", "d_model", "n_layers", "n_heads", "max_seq_len"):
    family("model", _field, POS_INT, lambda v, f=_field: model.ModelConfig(**{f: v}), f"ModelConfig.{_field}")
family(
    "model",
    "n_kv_heads",
    (0, 3, 5, "2"),
    lambda v: model.ModelConfig(n_heads=4, n_kv_heads=v),
    "ModelConfig.n_kv_heads",
)
family("model", "rope_theta", POS_FLOAT, lambda v: model.ModelConfig(rope_theta=v))
family("model", "norm_eps", POS_FLOAT, lambda v: model.ModelConfig(norm_eps=v))
family("model", "tie_embeddings", BOOL, lambda v: model.ModelConfig(tie_embeddings=v))
family("model", "mlp", CHOICE, lambda v: model.ModelConfig(mlp=v))
family("model", "attention", CHOICE, lambda v: model.ModelConfig(attention=v))
case("model", "n_heads", lambda: model.ModelConfig(d_model=30, n_heads=4), "ModelConfig.divisible")
case("model", "config", lambda: model.TinyLM({"vocab_size": 10}), "TinyLM.config")
family("model", "idx", (IDS[0], IDS.float(), [[1, 2]]), lambda v: LM(v), "TinyLM.idx")
family("model", "max_new_tokens", NONNEG_INT, lambda v: LM.generate(IDS, v), "generate.max_new")
family("model", "temperature", NONNEG_FLOAT, lambda v: LM.generate(IDS, 2, temperature=v), "generate.temperature")
family("model", "top_k", (0, -1, 2.5, "4"), lambda v: LM.generate(IDS, 2, top_k=v), "generate.top_k")
family("model", "use_cache", BOOL, lambda v: LM.generate(IDS, 2, use_cache=v), "generate.use_cache")
case("model", "ModelConfig", lambda: model.ModelConfig.from_dict({"n_layerz": 2}), "from_dict.typo")

family(
    "data",
    "fractions",
    ((0.5, 0.5), "abc", None, (0.5, 0.6, -0.1), (NAN, 0.5, 0.5), (0.5, 0.4, 0.2)),
    lambda v: data.split_of("x", fractions=v),
)
_TOK = np.arange(200)
family(
    "data", "batch_size", POS_INT, lambda v: data.random_batch(_TOK, v, 8, torch.Generator()), "random_batch.batch_size"
)
family("data", "seq_len", POS_INT, lambda v: data.random_batch(_TOK, 2, v, torch.Generator()), "random_batch.seq_len")
family(
    "data",
    "max_batches",
    (-1, 2.5, "2"),
    lambda v: list(data.eval_batches(_TOK, 2, 8, max_batches=v)),
    "eval_batches.max",
)
family(
    "data", "vocab_size", (257, 70000, 2.5, "4096"), lambda v: data.train_tokenizer(v, texts=["a b"]), "train_tokenizer"
)

family("train", "lr", POS_FLOAT, lambda v: train.TrainConfig(lr=v))
family("train", "weight_decay", NONNEG_FLOAT, lambda v: train.TrainConfig(weight_decay=v))
family("train", "grad_clip", NONNEG_FLOAT, lambda v: train.TrainConfig(grad_clip=v))
family("train", "min_lr_ratio", PROB, lambda v: train.TrainConfig(min_lr_ratio=v))
family("train", "betas", ("0.9", None), lambda v: train.TrainConfig(betas=v))
family("train", "seed", (2.5, "0", None), lambda v: train.TrainConfig(seed=v))

family(
    "measure", "warmup", NONNEG_INT, lambda v: measure.interleaved({"a": lambda: None}, warmup=v), "interleaved.warmup"
)
family(
    "measure", "repeats", POS_INT, lambda v: measure.interleaved({"a": lambda: None}, repeats=v), "interleaved.repeats"
)
family(
    "measure",
    "min_time",
    (-1, 61, NAN, "0.2"),
    lambda v: measure.interleaved({"a": lambda: None}, min_time=v),
    "interleaved.min_time",
)
family("measure", "speedup", POS_FLOAT, lambda v: measure.speed_word(v), "speed_word")
family("measure", "noise", (-0.1, 1.0, NAN, "0.1"), lambda v: measure.speed_word(2.0, noise=v), "speed_word.noise")
family("measure", "speedup", POS_FLOAT, lambda v: measure.speed_phrase(v), "speed_phrase")
case("measure", "sizes", lambda: measure.growth([1], [1]), "growth.short")
family("measure", "sizes[0]", (0, -1, NAN, "1"), lambda v: measure.growth([v, 2], [1, 2]), "growth.sizes")
family("measure", "costs[1]", (0, -1, INF), lambda v: measure.growth([1, 2], [1, v]), "growth.costs")

for _field, _bad in (
    ("n_experts", POS_INT),
    ("aux_loss_coef", NONNEG_FLOAT),
    ("z_loss_coef", NONNEG_FLOAT),
    ("noisy", BOOL),
    ("dispatch", CHOICE),
):
    family("moe", _field, _bad, lambda v, f=_field: moe.MoEOptions(**{f: v}), f"MoEOptions.{_field}")
family("moe", "top_k", (0, 9, 2.5, "2"), lambda v: moe.MoEOptions(n_experts=8, top_k=v), "MoEOptions.top_k")
family("moe", "capacity_factor", (0, -1, NAN, "1"), lambda v: moe.MoEOptions(capacity_factor=v), "MoEOptions.capacity")
case("moe", "mlp_options", lambda: moe.moe_config(TINY, n_experst=4), "moe_config.typo")
family("moe", "logits", (torch.randn(8), [[1.0]]), lambda v: moe.top_k_route(v, 2), "top_k_route.logits")
family("moe", "top_k", (0, 5, "2"), lambda v: moe.top_k_route(torch.randn(6, 4), v), "top_k_route.top_k")
family("moe", "n_tokens", (-1, 2.5), lambda v: moe.expert_capacity(v, 4, 2, 1.0), "capacity.n_tokens")
family("moe", "capacity_factor", (0, -1, NAN), lambda v: moe.expert_capacity(16, 4, 2, v), "capacity.factor")

family("attention", "seq_len", POS_INT, lambda v: attention.causal_mask(v), "causal_mask")
family("attention", "window", POS_INT, lambda v: attention.sliding_window_mask(8, v), "sliding_window_mask")
family("attention", "dilation", POS_INT, lambda v: attention.dilated_window_mask(8, 2, v), "dilated_window_mask")
family("attention", "n_global", (-1, 9, 2.5), lambda v: attention.global_tokens_mask(8, v), "global_tokens_mask")
family(
    "attention",
    "block_size",
    POS_INT,
    lambda v: attention.block_sparse_mask(torch.ones(2, 2, dtype=torch.bool), v),
    "block_sparse_mask",
)
family("attention", "pattern", CHOICE, lambda v: attention.SparsePattern(kind=v), "SparsePattern.kind")
family("attention", "window", POS_INT, lambda v: attention.SparsePattern(window=v), "SparsePattern.window")
family("attention", "causal", BOOL, lambda v: attention.SparsePattern(causal=v), "SparsePattern.causal")
family(
    "attention",
    "n_layers",
    POS_INT,
    lambda v: attention.receptive_field(attention.causal_mask(8), v),
    "receptive_field.n_layers",
)
family(
    "attention",
    "query",
    (8, -9, 2.5),
    lambda v: attention.receptive_field(attention.causal_mask(8), 2, query=v),
    "receptive_field.query",
)
family("attention", "preset", CHOICE, lambda v: attention.preset_figure(v), "preset_figure")


# chapter 04, the depth half: early exit and Mixture-of-Depths
def _depth():
    from course_lib import depth

    return depth


_EE = model.TinyLM(model.ModelConfig(vocab_size=50, d_model=16, n_layers=3, n_heads=2, max_seq_len=16)).eval()
_EE_IDS = torch.zeros(1, 4, dtype=torch.long)
family("depth", "threshold", PROB, lambda v: _depth().early_exit_forward(_EE, _EE_IDS, threshold=v))
family("depth", "threshold", PROB, lambda v: _depth().early_exit_generate(_EE, _EE_IDS, 2, threshold=v), "generate")
family("depth", "rule", CHOICE, lambda v: _depth().early_exit_forward(_EE, _EE_IDS, threshold=0.5, rule=v))
family(
    "depth",
    "min_layer",
    (-1, 3, 2.5, "1", True),
    lambda v: _depth().early_exit_forward(_EE, _EE_IDS, threshold=0.5, min_layer=v),
)
family("depth", "layer", (-1, 3, 2.5, "1", True, None), lambda v: _depth().exit_logits(_EE, torch.randn(1, 16), v))
family(
    "depth",
    "capacity",
    (0, -0.5, 1.5, NAN, INF, "0.5", True, None),
    lambda v: _depth().MoDBlock(_EE.blocks[0], capacity=v),
)
family("depth", "layers", (-1, 3, 2.5, "1"), lambda v: _depth().mod_model(_EE, layers=[v], capacity=0.5))
family("depth", "seq_len", POS_INT, lambda v: _depth().mod_tokens(v, 0.5))
_EE_TEXT = torch.arange(64) % 7
family(
    "depth",
    "max_dropout",
    SPARSITY,
    lambda v: _depth().train_for_exit(_EE, _EE_TEXT, seq_len=8, max_dropout=v),
    "train_for_exit",
)
family("depth", "exit_scale", NONNEG_FLOAT, lambda v: _depth().train_for_exit(_EE, _EE_TEXT, seq_len=8, exit_scale=v))
family("depth", "rank", (0, 17, 2.5, "4", True), lambda v: _depth().train_for_exit(_EE, _EE_TEXT, seq_len=8, rank=v))
family("depth", "max_rate", SPARSITY, lambda v: _depth().layer_dropout_rates(4, v))
family("depth", "scale", NONNEG_FLOAT, lambda v: _depth().exit_loss_weights(4, v))


@pytest.mark.parametrize("arg, call", CASES)
def test_bad_input_names_the_argument(arg, call):
    with pytest.raises((ValueError, TypeError)) as info:
        call()
    assert arg.lower() in str(info.value).lower(), f"the message does not name {arg!r}: {info.value}"


def test_table_is_broad():
    """Every module of the table has cases, and the table stays broad (no silent shrinking)."""
    modules = {p.id.split(".")[0] for p in CASES}
    assert {"rag", "cascade", "prune", "quant", "quant_primitives", "speculative"} <= modules
    assert {"model", "data", "train", "measure", "moe", "attention"} <= modules
    assert len(CASES) >= 500 and not math.isnan(len(CASES))


# =========================================================================== issue 15 item 3, named cases (audit)
# Token ids outside the vocabulary, an empty prompt and a non-bool or wrong-size attention mask
# reached F.embedding, a reshape or masked_fill and failed there (IndexError / RuntimeError).
_OUT_OF_VOCAB = (torch.tensor([[3, 300]]), torch.tensor([[-1, 2]]))
family("model", "vocab_size", _OUT_OF_VOCAB, lambda v: LM(v), "TinyLM.idx.out-of-vocab")
case("model", "idx", lambda: LM(torch.zeros(1, 0, dtype=torch.long)), "TinyLM.idx.empty")
case(
    "train",
    "vocab_size",
    lambda: train.train(
        model.TinyLM(TINY),
        torch.full((400,), 300),
        None,
        train.TrainConfig(steps=1, batch_size=2, seq_len=8),
        progress=False,
    ),
    "train.out-of-vocab",
)
case(
    "train",
    "vocab_size",
    lambda: train.evaluate(LM, torch.full((400,), 300), seq_len=8, batch_size=2),
    "evaluate.vocab",
)
_Q = torch.randn(1, 2, 8, 4)
family(
    "attention",
    "mask",
    (torch.ones(8, 8), torch.ones(8, 8, dtype=torch.long), torch.ones(4, 4, dtype=torch.bool), [[True]]),
    lambda v: attention.dense_attention(_Q, _Q, _Q, v),
    "dense_attention.mask",
)


def _patient():
    from course_lib import zoo

    return zoo.Patient("audit", LM, data.get_tokenizer(), {})


family("zoo", "prompt", ("", 3, None), lambda v: _patient().complete(v), "Patient.complete")


# =========================================================================== chapter 09: tools and the sandbox
from course_lib import sandbox, tools  # noqa: E402

_CALC = tools.Registry([tools.calculator_tool()])
_NOOP = lambda text, n: "done"  # noqa: E731


def _call(body: str) -> str:
    return tools.CALL_OPEN + body + tools.CALL_CLOSE


family("tools", "expression", (None, 3, b"1+1", ["1"]), lambda v: tools.calculate(v), "calculate.type")
case("tools", "exponent", lambda: tools.calculate("9**9**9"), "calculate.huge-power")
case("tools", "digits", lambda: tools.calculate("10**999*10"), "calculate.huge-product")
case("tools", "digits", lambda: tools.calculate("9**1048"), "calculate.huge-result")
case("tools", "nested", lambda: tools.calculate("-" * 40 + "1"), "calculate.deep")
case("tools", "expression", lambda: tools.calculate("1" * 300), "calculate.long")
family("tools", "value", (True, "1", None, NAN, INF), lambda v: tools.format_number(v), "format_number")
family("tools", "text", (None, 3, b"<call>"), lambda v: tools.parse_call(v, _CALC), "parse_call.text")
family(
    "tools",
    "registry",
    ([], "calculator", None),
    lambda v: tools.parse_call("<call>{}</call>", v),
    "parse_call.registry",
)
case("tools", "JSON", lambda: tools.parse_call(_call("{name: 1}"), _CALC), "parse_call.non-json")
case("tools", "JSON", lambda: tools.parse_call(_call('{"name": "calculator", "arguments": NaN}'), _CALC), "nan")
case("tools", "tool", lambda: tools.parse_call(_call('{"name": "calc", "arguments": {}}'), _CALC), "unknown-tool")
case(
    "tools", "expression", lambda: tools.parse_call(_call('{"name": "calculator", "arguments": {}}'), _CALC), "missing"
)
case(
    "tools",
    "expression",
    lambda: tools.parse_call(_call('{"name": "calculator", "arguments": {"expression": 17}}'), _CALC),
    "parse_call.wrong-type",
)
case(
    "tools",
    "nested",
    lambda: tools.parse_call(_call('{"name": "calculator", "arguments": {"x": ' + "[" * 50 + "]" * 50 + "}}"), _CALC),
    "parse_call.deep",
)
case(
    "tools",
    "digits",
    lambda: tools.parse_call(_call('{"name": "calculator", "arguments": {"expression": ' + "9" * 5000 + "}}"), _CALC),
    "parse_call.huge-number",
)
family(
    "tools", "parameters", ("x", None, {"type": "string"}), lambda v: tools.Tool("t", "d", v, print), "Tool.parameters"
)
family("tools", "name", (3, None, "two words"), lambda v: tools.Tool(v, "d", {"type": "object"}, print), "Tool.name")
family("tools", "max_steps", POS_INT, lambda v: tools.run_agent(_NOOP, "Q", _CALC, max_steps=v), "run_agent.max_steps")
family("tools", "max_new_tokens", POS_INT, lambda v: tools.run_agent(_NOOP, "Q", _CALC, max_new_tokens=v))
family("tools", "token_budget", POS_INT, lambda v: tools.run_agent(_NOOP, "Q", _CALC, token_budget=v))
family("tools", "generate", (None, "model", 3), lambda v: tools.run_agent(v, "Q", _CALC), "run_agent.generate")
family("tools", "prompt", (None, 3, b"Q"), lambda v: tools.run_agent(_NOOP, v, _CALC), "run_agent.prompt")
family("sandbox", "code", (None, 3, b"print(1)"), lambda v: sandbox.run(v), "run.code")
family("sandbox", "timeout", (0, -1.0, NAN, INF, "1", True, None, 601), lambda v: sandbox.run("pass", timeout=v))
family("sandbox", "memory_mb", POS_INT, lambda v: sandbox.run("pass", memory_mb=v))
family("sandbox", "max_output", POS_INT, lambda v: sandbox.run("pass", max_output=v))
family("sandbox", "processes", POS_INT, lambda v: sandbox.run("pass", processes=v))
family("sandbox", "open_files", POS_INT, lambda v: sandbox.run("pass", open_files=v))
family("sandbox", "audit_hook", BOOL, lambda v: sandbox.run("pass", audit_hook=v))
family("sandbox", "seccomp", BOOL, lambda v: sandbox.run("pass", seccomp=v))

from course_lib.experiments import tools as tool_runs  # noqa: E402

family("experiments.tools", "n", (-1, 2.5, "4", None), lambda v: tool_runs.arithmetic_questions(v), "questions.n")
family("experiments.tools", "op", CHOICE, lambda v: tool_runs.arithmetic_question(1, v, 2), "arithmetic_question.op")
family("experiments.tools", "split", CHOICE, lambda v: tool_runs.retrieval_questions(v), "retrieval_questions.split")
family("experiments.tools", "kind", CHOICE, lambda v: tool_runs.shots_for(v), "shots_for.kind")
family("experiments.tools", "answer", (None, 3, b"1"), lambda v: tool_runs.normalize(v), "normalize")


# =========================================================================== chapter 07: data-centric (data side)
from course_lib import datacentric as dcn  # noqa: E402

_BAD_TEXTS = ("a text", None, 3, [], ["ok", 3], [b"bytes"])
family("datacentric", "text", (None, 3, b"x"), lambda v: dcn.normalize(v), "normalize")
family("datacentric", "k", POS_INT, lambda v: dcn.shingles("a b c d", k=v), "shingles.k")
family("datacentric", "text", ("", "!!", None), lambda v: dcn.shingles(v), "shingles.text")
family("datacentric", "k", POS_INT, lambda v: dcn.shingle_sets(["a b c"], k=v), "shingle_sets.k")
family("datacentric", "texts", (*_BAD_TEXTS, [""], ["ok", "!!"]), lambda v: dcn.shingle_sets(v), "shingle_sets")
family("datacentric", "texts", _BAD_TEXTS, lambda v: dcn.exact_dedup(v), "exact_dedup")
family("datacentric", "normalized", BOOL, lambda v: dcn.exact_dedup(["a"], normalized=v), "exact_dedup.normalized")
family("datacentric", "num_perm", (*POS_INT, 5000), lambda v: dcn.MinHasher(v), "MinHasher.num_perm")
family("datacentric", "seed", (-1, 2.5, "1", None, True), lambda v: dcn.MinHasher(8, seed=v), "MinHasher.seed")
family(
    "datacentric",
    "sets",
    ("x", np.zeros((2, 3)), [], [np.array([1]), np.array([], np.uint32)]),
    lambda v: dcn.MinHasher(8).signatures_from_sets(v),
    "signatures_from_sets",
)
family("datacentric", "threshold", PROB, lambda v: dcn.near_dedup(["a b"], threshold=v), "near_dedup.threshold")
family("datacentric", "bands", POS_INT, lambda v: dcn.near_dedup(["a b"], bands=v), "near_dedup.bands")
family("datacentric", "rows", POS_INT, lambda v: dcn.near_dedup(["a b"], rows=v), "near_dedup.rows")
family("datacentric", "bands", ((16, 4), (32, 3), (128, 2)), lambda v: dcn.near_dedup(["a b"], bands=v[0], rows=v[1]))
family("datacentric", "verify", CHOICE, lambda v: dcn.near_dedup(["a b"], verify=v), "near_dedup.verify")
family("datacentric", "texts", _BAD_TEXTS, lambda v: dcn.near_dedup(v), "near_dedup.texts")
family("datacentric", "bands", POS_INT, lambda v: dcn.candidate_probability(0.5, v, 4), "candidate_probability")
family("datacentric", "rows", POS_INT, lambda v: dcn.candidate_probability(0.5, 4, v), "candidate_probability")
family("datacentric", "s", (-0.1, 1.5, NAN, INF), lambda v: dcn.candidate_probability(v, 4, 4), "candidate_probability")
family("datacentric", "bands", POS_INT, lambda v: dcn.lsh_threshold(v, 4), "lsh_threshold")
family("datacentric", "threshold", PROB, lambda v: dcn.choose_bands(16, v), "choose_bands")
family("datacentric", "fn_weight", PROB, lambda v: dcn.choose_bands(16, 0.5, fn_weight=v), "choose_bands")
family("datacentric", "bands", POS_INT, lambda v: dcn.LSHIndex(v, 4), "LSHIndex")
family("datacentric", "rows", POS_INT, lambda v: dcn.LSHIndex(4, v), "LSHIndex")
family(
    "datacentric",
    "signatures",
    (np.zeros((2, 7), np.uint32), np.zeros((2, 8)), [[1.5]], np.zeros((2, 2, 8), np.uint32)),
    lambda v: dcn.LSHIndex(2, 4).add(v),
    "LSHIndex.add",
)
family("datacentric", "signatures", (np.zeros(7, np.uint32),), lambda v: dcn.LSHIndex(2, 4).query(v), "query")
family("datacentric", "sig_a", (np.zeros((2, 3)), np.zeros(0)), lambda v: dcn.estimate_jaccard(v, np.zeros(3)))
case("datacentric", "a and b", lambda: dcn.jaccard(set(), []), "jaccard.empty")
family("datacentric", "dup_fraction", PROB, lambda v: dcn.CrawlConfig(dup_fraction=v))
family("datacentric", "zipf_a", (1, 0.5, NAN, INF, "2", True, None), lambda v: dcn.CrawlConfig(zipf_a=v))
family("datacentric", "max_copies", POS_INT, lambda v: dcn.CrawlConfig(max_copies=v))
family("datacentric", "near_dup_fraction", PROB, lambda v: dcn.CrawlConfig(near_dup_fraction=v))
family("datacentric", "low_quality_per_kind", NONNEG_INT, lambda v: dcn.CrawlConfig(low_quality_per_kind=v))
family("datacentric", "edit_rate", (0, 0.6, NAN, "0.1", None, True), lambda v: dcn.CrawlConfig(edit_rate=v))
family("datacentric", "sampler", CHOICE, lambda v: dcn.CrawlConfig(sampler=v))
family("datacentric", "sample_temperature", POS_FLOAT, lambda v: dcn.CrawlConfig(sample_temperature=v))
family("datacentric", "sample_tokens", (*POS_INT, 201), lambda v: dcn.CrawlConfig(sample_tokens=v))
family("datacentric", "seed", NONNEG_INT, lambda v: dcn.CrawlConfig(seed=v), "CrawlConfig.seed")
family("datacentric", "config", ("cfg", 3, {}), lambda v: dcn.build_crawl(v), "build_crawl.config")
family("datacentric", "articles", ([], [3]), lambda v: dcn.build_crawl(articles=v), "build_crawl.articles")
family("datacentric", "min_words", NONNEG_INT, lambda v: dcn.HeuristicRules(min_words=v))
family(
    "datacentric",
    "max_top_ngram_frac",
    ((0.1,), (0.1, 0.2, 1.5), "x", None),
    lambda v: dcn.HeuristicRules(max_top_ngram_frac=v),
)
family("datacentric", "require_terminal_punct", BOOL, lambda v: dcn.HeuristicRules(require_terminal_punct=v))
family("datacentric", "rules", ("r", 3, {}), lambda v: dcn.heuristic_flags(["a b"], v), "heuristic_flags.rules")
family("datacentric", "texts", _BAD_TEXTS, lambda v: dcn.heuristic_flags(v), "heuristic_flags.texts")
family("datacentric", "texts", _BAD_TEXTS, lambda v: dcn.perplexity_scores(v), "perplexity_scores.texts")
family("datacentric", "max_tokens", (0, 256, 2.5, "8", None), lambda v: dcn.perplexity_scores(["a"], max_tokens=v))
family("datacentric", "batch_size", POS_INT, lambda v: dcn.perplexity_scores(["a"], batch_size=v))
family("datacentric", "quantile", PROB, lambda v: dcn.perplexity_threshold(quantile=v))
family(
    "datacentric",
    "is_noise",
    (np.array([1, 0]), np.array([True, True]), [True]),
    lambda v: dcn.train_quality_classifier(["a b", "c d"], v),
)
family(
    "datacentric",
    "flagged",
    (np.array([1, 0]), np.array([[True, False]])),
    lambda v: dcn.precision_recall(v, np.array(["clean", "clean"])),
)
family(
    "datacentric",
    "labels",
    (np.array(["clean"]), np.array(["clean"] * 3)),
    lambda v: dcn.precision_recall(np.array([True, False]), v),
)
family(
    "datacentric",
    "positive",
    ("clean", []),
    lambda v: dcn.precision_recall(np.array([True]), np.array(["clean"]), positive=v),
)
family(
    "datacentric",
    "mask",
    (np.array([1]), np.array([True, False])),
    lambda v: dcn.precision_recall(np.array([True]), np.array(["clean"]), mask=v),
)
family("datacentric", "kinds", (np.array(["a", "b"]),), lambda v: dcn.flagged_by_kind(np.array([True]), v))
family("datacentric", "n", POS_INT, lambda v: dcn.synthetic_topic_examples(n=v), "synthetic.n")
family("datacentric", "seed", NONNEG_INT, lambda v: dcn.synthetic_topic_examples(seed=v), "synthetic.seed")
family("datacentric", "scores", ([], [[1.0]], [NAN], [1.0, INF]), lambda v: dcn.difficulty_order(v))
family("datacentric", "reverse", BOOL, lambda v: dcn.difficulty_order([1.0], reverse=v))
family(
    "datacentric",
    "temperature",
    POS_FLOAT,
    lambda v: dcn.distillation_loss(torch.zeros(2, 3), torch.zeros(2, 3), temperature=v),
)
family("datacentric", "student_logits", NOT_A_TENSOR, lambda v: dcn.distillation_loss(v, torch.zeros(2, 3)))
family(
    "datacentric",
    "teacher_logits",
    (torch.zeros(2, 4), torch.zeros(2, 3, dtype=torch.long), None),
    lambda v: dcn.distillation_loss(torch.zeros(2, 3), v),
)
family("datacentric", "prefix_tokens", (*POS_INT, 201), lambda v: dcn.regurgitation_rate(["a"], prefix_tokens=v))
family("datacentric", "suffix_tokens", (*POS_INT, 56), lambda v: dcn.regurgitation_rate(["a"], suffix_tokens=v))
family("datacentric", "texts", _BAD_TEXTS, lambda v: dcn.regurgitation_rate(v), "regurgitation_rate.texts")
family("datacentric", "field", CHOICE, lambda v: dcn.natural_near_duplicates(field=v), "natural.field")
family("datacentric", "threshold", PROB, lambda v: dcn.natural_near_duplicates(threshold=v), "natural.threshold")
case("datacentric", "bands", lambda: dcn.natural_near_duplicates(bands=4), "natural.bands-without-rows")

# --------------------------------------------------------------------------- chapter 13: the capstone

from course_lib import capstone as cap  # noqa: E402

family("capstone", "price_per_hour", POS_FLOAT, lambda v: cap.tokens_per_s_per_dollar(10.0, v))
family("capstone", "price_per_hour", POS_FLOAT, lambda v: cap.cost_per_query_usd([1.0], v), "cost.price_per_hour")
family("capstone", "items", ([], [1], None, "x"), lambda v: cap.mix_of(v))
family("capstone", "component", CHOICE, lambda v: cap.without(cap.EFFICIENT, v))
family("capstone", "system", CHOICE, lambda v: cap.system_config(v))
family("capstone", "bits", (16, 4, "8", None), lambda v: cap.SystemConfig(bits=v))
family("capstone", "threshold", (-0.1, 2.0, NAN, "0.5", None), lambda v: cap.SystemConfig(threshold=v))
family("capstone", "watts_per_core", POS_FLOAT, lambda v: cap.energy_per_query_j([1.0], v))
family("capstone", "cpu_seconds", ([], [NAN], [-1.0], [[1.0]]), lambda v: cap.energy_per_query_j(v, 10.0))
family("capstone", "grid_g_per_kwh", NONNEG_FLOAT, lambda v: cap.co2_g_per_1000(1.0, v))
family("capstone", "seconds", ([], [NAN], [-1.0], [[1.0]]), lambda v: cap.latency_percentiles(v))
family("capstone", "version", (0, 2, "1", None), lambda v: cap.task_items(version=v))
family("capstone", "tdp_w", POS_FLOAT, lambda v: cap.default_watts_per_core(v))
family("capstone", "cores", (0, -3, 2.5, "4", True, NAN), lambda v: cap.default_watts_per_core(85.0, v))
