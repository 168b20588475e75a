"""Retrieval-augmented generation from scratch (chapter 08).

A language model keeps what it knows in its weights (*parametric* memory): to learn a new
fact it must be trained again, and a small model holds few facts. Retrieval keeps the
facts in an index beside the model (*non-parametric* memory): adding a document is an
insert, deleting one is a delete, and the model only has to *read*. This module builds
every part of that pipeline on the course corpus:

* **text** — :func:`tokenize` (lower-cased words, stop-words out) and :func:`chunk`
  (sentences or words, with overlap);
* **BM25** — :class:`BM25Index`, an inverted index scored with Okapi BM25
  (Robertson & Zaragoza 2009); ``k1`` and ``b`` are arguments, documents can be added and
  deleted; the ``okapi`` idf equals ``rank_bm25``'s (tests check);
* **dense** — :func:`get_embedder` gives all-MiniLM-L6-v2 from :mod:`course_lib.encoder`,
  or, announced, a TF-IDF + SVD (LSA) embedder when MiniLM is not installed;
  :class:`ExactIndex` (a matrix product and top-k, equal to faiss ``IndexFlatIP``) and
  :class:`IVFIndex` (a k-means coarse quantizer and ``nprobe`` lists, as faiss ``IndexIVFFlat``);
* **hybrid** — :func:`reciprocal_rank_fusion` (Cormack et al. 2009);
* **evaluation** — :func:`ranks_of`, :func:`retrieval_metrics` (recall@k, MRR) on the
  corpus task *description → its article*;
* **knowledge base** — :class:`KnowledgeBase`: documents, chunks, both indexes, and a
  versioned, checksummed, atomically written file; add and delete without a rebuild;
* **reader** — the course patient fine-tuned to answer *"which article does this
  description describe?"* closed-book or from retrieved passages (:class:`Reader`).

The corpus task (*description → its article*), the reader's fine-tuning run and the
evaluation queries' MiniLM embeddings are in :mod:`course_lib.experiments.rag`, precomputed
by one deterministic command (the reader is trained on training-split articles only)::

    python -m course_lib.build rag     # writes course_lib/zoo_data/rag_reader.* and rag_queries.safetensors
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors

from course_lib import encoder
from course_lib.checks import (
    check_choice,
    check_float,
    check_int,
    check_keys,
    check_probability,
    check_type,
)
from course_lib.data import EOT
from course_lib.paths import atomic_write_bytes, safetensors_bytes
from course_lib.rag_index import ExactIndex, IVFIndex, _as_matrix, kmeans  # noqa: F401 (re-exported)

# --------------------------------------------------------------------------- text

#: A short English stop-word list (articles, pronouns, auxiliaries, prepositions): words
#: that occur in most documents and carry no topic. BM25's idf already down-weights them;
#: removing them also shrinks the index and speeds up scoring.
STOPWORDS = frozenset(
    """a an and are as at be been being but by can could did do does for from had has have he her hers
    him his how i if in into is it its itself me my no nor not of on or our ours she so than that the
    their theirs them then there these they this those to too us was we were what when where which who
    whom why will with would you your yours""".split()
)
_WORD = re.compile(r"\w+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")


def tokenize(text: str, *, stopwords: bool = True) -> list[str]:
    """Lower-cased word tokens (Unicode letters and digits); stop-words dropped unless ``stopwords=False``."""
    check_type("text", text, str)
    words = _WORD.findall(text.lower())
    return [w for w in words if w not in STOPWORDS] if stopwords else words


def split_sentences(text: str) -> list[str]:
    """Split at ``. ! ?`` followed by space and a capital or digit (abbreviations may split wrongly)."""
    check_type("text", text, str)
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]


def chunk(text: str, *, max_words: int = 64, overlap: int = 0, by: str = "sentence") -> list[str]:
    """Cut ``text`` into passages of at most ``max_words`` words.

    ``by="word"``: windows of ``max_words`` words, each starting ``max_words - overlap``
    words after the previous one (``0 <= overlap < max_words``).
    ``by="sentence"``: whole sentences packed greedily while they fit; the next passage
    starts ``overlap`` sentences before the previous one ended (context carried across the
    cut). A single sentence longer than ``max_words`` is cut into word windows.
    An empty or blank text has no passages.
    """
    check_int("max_words", max_words, min=1)
    check_choice("by", by, ("sentence", "word"))
    check_int("overlap", overlap, min=0, max=max_words - 1 if by == "word" else None)
    if by == "word":
        words = text.split()
        step = max_words - overlap
        starts = range(0, max(1, len(words) - overlap), step)
        return [" ".join(words[s : s + max_words]) for s in starts if words[s : s + max_words]]
    units: list[list[str]] = []  # sentences as word lists, over-long ones cut into windows
    for sentence in split_sentences(text):
        w = sentence.split()
        units += [w[i : i + max_words] for i in range(0, len(w), max_words)]
    chunks, start = [], 0
    while start < len(units):
        end, n = start, 0
        while end < len(units) and n + len(units[end]) <= max_words:
            n += len(units[end])
            end += 1
        chunks.append(" ".join(" ".join(u) for u in units[start:end]))
        if end == len(units):
            break
        start = max(start + 1, end - overlap)  # always move forward
    return chunks


# --------------------------------------------------------------------------- BM25


def _check_k(k, name: str = "k") -> int:
    return check_int(name, k, min=1)


def _topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the ``k`` largest scores, best first (ties: lower index first)."""
    k = min(k, len(scores))
    if k < len(scores):
        part = np.argpartition(-scores, k - 1)[:k]
    else:
        part = np.arange(len(scores))
    order = part[np.lexsort((part, -scores[part]))]
    return order, scores[order]


class BM25Index:
    r"""An inverted index scored with Okapi BM25.

    For a query :math:`q` and document :math:`d` of length :math:`|d|`:

    .. math::
        \mathrm{BM25}(q, d) = \sum_{t \in q} \mathrm{idf}(t)\,
        \frac{f_{t,d}\,(k_1 + 1)}{f_{t,d} + k_1\,(1 - b + b\,|d| / \mathrm{avgdl})}

    :math:`f_{t,d}` counts term :math:`t` in :math:`d`; :math:`k_1` saturates repeated
    terms, :math:`b` normalises by length. With :math:`n_t` documents containing :math:`t`
    out of :math:`N`, ``idf="lucene"`` is :math:`\ln(1 + \frac{N - n_t + 0.5}{n_t + 0.5})`
    (always positive; Lucene, Elasticsearch), and ``idf="okapi"`` is
    :math:`\ln\frac{N - n_t + 0.5}{n_t + 0.5}` with negative values replaced by
    ``epsilon`` times the mean idf, exactly as ``rank_bm25.BM25Okapi``. A query term
    repeated counts once per repetition (as in rank_bm25).

    Storage is **postings**: for each term, the documents containing it and the counts.
    They live in *segments* (sorted arrays); :meth:`add` writes a new small segment and
    merges segments when there are many, as Lucene does, so an insert never rebuilds the
    index. :meth:`delete` marks documents dead. Statistics (:math:`N`, avgdl, :math:`n_t`)
    count live documents only and are applied at query time.
    """

    MAX_SEGMENTS = 8

    def __init__(self, *, k1: float = 1.2, b: float = 0.75, idf: str = "lucene", epsilon: float = 0.25):
        check_float("k1", k1, min=0, max=10)
        check_probability("b", b)
        check_choice("idf", idf, ("lucene", "okapi"))
        check_float("epsilon", epsilon, min=0)
        self.k1, self.b, self.idf_kind, self.epsilon = float(k1), float(b), idf, float(epsilon)
        self.vocab: dict[str, int] = {}
        self.df = np.zeros(0, dtype=np.int64)  # live documents containing each term
        self.doc_len = np.zeros(0, dtype=np.int64)
        self.alive = np.zeros(0, dtype=bool)
        self._doc_terms: list[np.ndarray] = []  # per document: its distinct term ids (for delete)
        self._segments: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (terms, docs, tf) sorted by term
        self._stats = None  # (idf, length normalisation) cached between updates

    # -- building ---------------------------------------------------------------------

    @classmethod
    def from_tokens(cls, docs: Sequence[Sequence[str]], **kw) -> BM25Index:
        """An index of already tokenized documents (ids 0 .. len(docs) - 1)."""
        index = cls(**kw)
        index.add(docs)
        return index

    def add(self, docs: Sequence[Sequence[str]]) -> np.ndarray:
        """Append tokenized documents; returns their ids (consecutive)."""
        if isinstance(docs, str) or not isinstance(docs, (list, tuple)):
            raise TypeError("docs must be a list of token lists")
        if any(isinstance(d, str) or not isinstance(d, (list, tuple)) for d in docs):
            raise TypeError("each document must be a list of tokens (strings); tokenize text first")
        first = len(self.doc_len)
        self._stats = None
        terms, docs_col, tfs, lengths = [], [], [], []
        for i, tokens in enumerate(docs):
            counts = Counter(tokens)
            ids = np.fromiter((self.vocab.setdefault(t, len(self.vocab)) for t in counts), dtype=np.int32)
            terms.append(ids)
            docs_col.append(np.full(len(ids), first + i, dtype=np.int32))
            tfs.append(np.fromiter(counts.values(), dtype=np.int32, count=len(counts)))
            lengths.append(len(tokens))
        if len(self.df) < len(self.vocab):
            self.df = np.concatenate([self.df, np.zeros(len(self.vocab) - len(self.df), dtype=np.int64)])
        if docs:
            t = np.concatenate(terms)
            np.add.at(self.df, t, 1)
            self._doc_terms += terms
            self.doc_len = np.concatenate([self.doc_len, np.asarray(lengths, dtype=np.int64)])
            self.alive = np.concatenate([self.alive, np.ones(len(docs), dtype=bool)])
            self._segments.append(self._sorted_segment(t, np.concatenate(docs_col), np.concatenate(tfs)))
            if len(self._segments) > self.MAX_SEGMENTS:
                self._merge()
        return np.arange(first, first + len(docs))

    @staticmethod
    def _sorted_segment(terms, docs, tfs):
        order = np.lexsort((docs, terms))  # by term, then by document
        return terms[order], docs[order], tfs[order]

    def _merge(self) -> None:
        """Merge all segments into one, dropping postings of deleted documents."""
        t, d, f = (np.concatenate([s[i] for s in self._segments]) for i in range(3))
        keep = self.alive[d]
        self._segments = [self._sorted_segment(t[keep], d[keep], f[keep])]

    def delete(self, ids: Iterable[int]) -> None:
        """Mark documents as deleted: they score nothing and leave the statistics."""
        ids = np.unique(np.asarray(list(ids), dtype=np.int64))
        bad = ids[(ids < 0) | (ids >= len(self.alive))]
        if len(bad):
            raise ValueError(f"ids must be in [0, {len(self.alive) - 1}], got {bad[:5].tolist()}")
        dead = ids[~self.alive[ids]]
        if len(dead):
            raise ValueError(f"documents {dead[:5].tolist()} are already deleted")
        for i in ids:
            np.subtract.at(self.df, self._doc_terms[i], 1)
        self.alive[ids] = False
        self._stats = None

    # -- statistics -------------------------------------------------------------------

    @property
    def n_docs(self) -> int:
        """Live documents."""
        return int(self.alive.sum())

    @property
    def avgdl(self) -> float:
        n = self.n_docs
        return float(self.doc_len[self.alive].sum() / n) if n else 0.0

    def idf(self) -> np.ndarray:
        """idf of every term in the vocabulary, from the live documents (see the class doc)."""
        n, df = self.n_docs, self.df.astype(np.float64)
        if self.idf_kind == "lucene":
            return np.log1p((n - df + 0.5) / (df + 0.5))
        raw = np.log(n - df + 0.5) - np.log(df + 0.5)
        present = df > 0  # rank_bm25 averages over the terms it has seen
        eps = self.epsilon * raw[present].mean() if present.any() else 0.0
        return np.where(raw < 0, eps, raw)

    @property
    def n_postings(self) -> int:
        """(term, document) entries stored, deleted documents' included until a merge."""
        return sum(len(s[0]) for s in self._segments)

    def nbytes(self) -> int:
        """Bytes of the postings (term, document, count per entry) and per-document arrays."""
        postings = sum(a.nbytes for s in self._segments for a in s)
        return postings + self.doc_len.nbytes + self.alive.nbytes + self.df.nbytes

    # -- scoring ----------------------------------------------------------------------

    def scores(self, query: Sequence[str]) -> np.ndarray:
        """BM25 score of every document (N,) for a tokenized query; deleted documents get -inf."""
        if isinstance(query, str):
            raise TypeError("query must be a list of tokens; use tokenize(text) first")
        if self.n_docs == 0:
            raise ValueError("the index is empty: add documents before searching")
        if self._stats is None:  # recomputed only after an add or a delete
            norm = self.k1 * (1 - self.b + self.b * self.doc_len / (self.avgdl or 1.0))  # (N,)
            self._stats = (self.idf(), norm)
        idf, norm = self._stats
        out = np.zeros(len(self.doc_len), dtype=np.float64)
        for term, times in Counter(query).items():
            tid = self.vocab.get(term)
            if tid is None:
                continue
            for terms, docs, tfs in self._segments:
                lo, hi = np.searchsorted(terms, [tid, tid + 1])
                d, f = docs[lo:hi], tfs[lo:hi]
                out[d] += times * idf[tid] * f * (self.k1 + 1) / (f + norm[d])
        out[~self.alive] = -np.inf
        return out

    def search(self, query: Sequence[str], k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """(ids, scores) of the ``k`` best live documents, best first."""
        k = min(_check_k(k), max(self.n_docs, 1))
        return _topk(self.scores(query), k)

    def search_many(self, queries: Sequence[Sequence[str]], k: int = 10) -> np.ndarray:
        """Ids (Q, k) of the ``k`` best documents for each query."""
        k = min(_check_k(k), max(self.n_docs, 1))
        return np.stack([self.search(q, k)[0] for q in queries]) if queries else np.zeros((0, k), dtype=np.int64)


# --------------------------------------------------------------------------- dense embeddings


class FallbackEmbedderWarning(UserWarning):
    """MiniLM is not installed; dense retrieval runs on the TF-IDF + SVD (LSA) fallback."""


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 through :mod:`course_lib.encoder`: (N, 384) unit vectors."""

    name = "all-MiniLM-L6-v2"
    dim = 384

    @property
    def fingerprint(self) -> str:
        return f"minilm:{encoder.MODEL_PIP}:{self.dim}"

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        return encoder.embed(list(texts))

    def corpus_vectors(self, rows: Sequence[int] | None = None) -> torch.Tensor:
        """The committed cache of every article's extract (rows of :func:`data.load_articles`)."""
        emb = encoder.corpus_embeddings("extract")
        return F.normalize(emb if rows is None else emb[torch.as_tensor(rows, dtype=torch.long)], dim=-1)


class LSAEmbedder:
    r"""Latent semantic analysis (Deerwester et al. 1990): TF-IDF projected on its top singular vectors.

    TF-IDF row of a text: :math:`x_t = (1 + \ln f_t)\,\mathrm{idf}_t` with
    :math:`\mathrm{idf}_t = \ln\frac{1 + N}{1 + n_t} + 1`, L2-normalised. Fitting takes
    the ``dim`` leading right singular vectors :math:`V_k` of the corpus matrix
    (randomised SVD, seeded); a text's embedding is :math:`x V_k`, L2-normalised. Words
    that never co-occur in the fitting corpus stay unrelated: it is the course's fallback
    when MiniLM is missing, not its equal.
    """

    name = "TF-IDF + SVD (LSA)"

    def __init__(self, texts: Sequence[str], *, dim: int = 256, min_df: int = 2, seed: int = 0):
        if isinstance(texts, str) or not texts:
            raise ValueError("texts must be a non-empty list of strings")
        check_int("dim", dim, min=1)
        check_int("min_df", min_df, min=1)
        docs = [Counter(tokenize(t)) for t in texts]
        df = Counter(w for d in docs for w in d)
        self.vocab = {w: i for i, w in enumerate(sorted(w for w, n in df.items() if n >= min_df))}
        if not self.vocab:
            raise ValueError(f"no word occurs in >= min_df={min_df} texts; lower min_df or give more texts")
        n = len(texts)
        self.idf = torch.tensor([math.log((1 + n) / (1 + df[w])) + 1 for w in self.vocab], dtype=torch.float32)
        self.dim = min(dim, len(self.vocab), n)
        x = self._tfidf(docs)  # (n, V) sparse
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            _, _, v = torch.svd_lowrank(x, q=self.dim, niter=4)
        self.components = v  # (V, dim)
        h = hashlib.sha256("\x00".join(texts).encode())
        h.update(f"{dim}:{min_df}:{seed}".encode())
        self._fingerprint = f"lsa:{h.hexdigest()[:16]}:{self.dim}"

    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    def _tfidf(self, docs: list[Counter]) -> torch.Tensor:
        rows, cols, vals = [], [], []
        for r, counts in enumerate(docs):
            for w, f in counts.items():
                c = self.vocab.get(w)
                if c is not None:
                    rows.append(r)
                    cols.append(c)
                    vals.append((1 + math.log(f)) * self.idf[c].item())
        shape = (len(docs), len(self.vocab))
        x = torch.sparse_coo_tensor([rows, cols], torch.tensor(vals), shape, check_invariants=False).coalesce()
        norms = torch.zeros(len(docs)).index_add_(0, x.indices()[0], x.values() ** 2).sqrt().clamp(min=1e-12)
        return torch.sparse_coo_tensor(x.indices(), x.values() / norms[x.indices()[0]], shape, check_invariants=False)

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
            raise TypeError("texts must be a list of strings")
        x = self._tfidf([Counter(tokenize(t)) for t in texts])
        return F.normalize(torch.sparse.mm(x, self.components), dim=-1)  # (N, dim)


def get_embedder(fallback_texts: Sequence[str] | None = None, *, prefer: str = "minilm"):
    """MiniLM when installed (and ``prefer="minilm"``); otherwise an announced LSA fallback.

    The fallback must be fitted: pass ``fallback_texts`` (the corpus). A
    :class:`FallbackEmbedderWarning` says which embedder runs and how to get MiniLM.
    """
    check_choice("prefer", prefer, ("minilm", "lsa"))
    if prefer == "minilm" and encoder.is_available():
        return MiniLMEmbedder()
    if fallback_texts is None:
        raise ValueError("MiniLM is not used, so the LSA fallback needs fallback_texts to fit on")
    if prefer == "minilm":
        warnings.warn(
            f"MiniLM is not installed: dense retrieval uses the TF-IDF + SVD (LSA) fallback, which is weaker. "
            f"Install MiniLM with:  pip install {encoder.MODEL_PIP}",
            FallbackEmbedderWarning,
            stacklevel=2,
        )
    return LSAEmbedder(fallback_texts)


# --------------------------------------------------------------------------- fusion and metrics


def reciprocal_rank_fusion(rankings: Sequence[Sequence[int]], *, k: int = 60, top: int | None = None):
    r"""Fuse ranked lists (Cormack, Clarke & Büttcher 2009): :math:`s(d) = \sum_r \frac{1}{k + \mathrm{rank}_r(d)}`.

    Ranks start at 1; a document missing from a list gets nothing from it. Only ranks are
    used, so BM25 scores and cosine similarities need no calibration against each other.
    Returns (ids, scores) best first, ties broken by the smaller id; ``top`` cuts the list.
    """
    if isinstance(rankings, (str, bytes)) or not isinstance(rankings, (list, tuple)) or not rankings:
        raise ValueError("rankings must be a non-empty list of ranked id lists")
    check_float("k", k, min=0)
    if top is not None:
        top = _check_k(top, "top")
    fused: dict[int, float] = {}
    for ranking in rankings:
        ranking = [int(d) for d in ranking if int(d) >= 0]  # -1 pads a short list (faiss, IVF)
        if len(set(ranking)) != len(ranking):
            raise ValueError("a ranking lists a document twice")
        for rank, doc in enumerate(ranking, start=1):
            fused[doc] = fused.get(doc, 0.0) + 1.0 / (k + rank)
    order = sorted(fused, key=lambda d: (-fused[d], d))[:top]
    return np.asarray(order, dtype=np.int64), np.asarray([fused[d] for d in order])


def fuse_many(*rankings: np.ndarray, k: int = 60, top: int = 10) -> np.ndarray:
    """RRF row by row for several (Q, K) rank matrices -> (Q, top) ids, padded with -1."""
    n = {len(r) for r in rankings}
    if len(n) != 1:
        raise ValueError(f"every ranking matrix needs the same number of rows, got {sorted(n)}")
    out = np.full((n.pop(), top), -1, dtype=np.int64)
    for i, rows in enumerate(zip(*rankings)):
        ids, _ = reciprocal_rank_fusion([np.asarray(r) for r in rows], k=k, top=top)
        out[i, : len(ids)] = ids
    return out


def ranks_of(ranked: np.ndarray, gold: Sequence[int]) -> np.ndarray:
    """1-based rank of each query's gold id in its row of ``ranked`` (Q, K); ``inf`` when absent."""
    ranked = np.asarray(torch.as_tensor(ranked).cpu() if torch.is_tensor(ranked) else ranked)
    gold = np.asarray(gold)
    if ranked.ndim != 2 or gold.shape != (len(ranked),):
        raise ValueError(f"ranked must be (Q, K) and gold (Q,), got {ranked.shape} and {gold.shape}")
    hit = ranked == gold[:, None]  # (Q, K)
    return np.where(hit.any(1), hit.argmax(1) + 1, np.inf)


def retrieval_metrics(ranks: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    r"""recall@k = fraction of queries whose article is in the top k; MRR = mean of 1/rank (0 if absent).

    With one relevant article per query, recall@k is also the hit rate at k. MRR is over
    the depth of the ranking that produced ``ranks`` (MRR@K).
    """
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.ndim != 1 or not len(ranks):
        raise ValueError("ranks must be a non-empty 1-D array")
    if not (ranks >= 1).all():  # also catches NaN
        raise ValueError(f"ranks must be 1-based (>= 1, inf when absent), got {ranks[~(ranks >= 1)][:5].tolist()}")
    out = {f"recall@{_check_k(k, 'ks')}": float(np.mean(ranks <= k)) for k in ks}
    out["mrr"] = float(np.mean(1.0 / ranks))
    return out


# --------------------------------------------------------------------------- knowledge base


@dataclass(frozen=True)
class Document:
    """A document of the knowledge base: a unique id, a title and its text."""

    id: str
    title: str
    text: str


@dataclass
class Hit:
    """One retrieved passage: its document, which chunk, the text, and the retriever's score."""

    doc_id: str
    title: str
    passage: str
    score: float
    rank: int
    chunk: int = 0


class StaleKnowledgeBaseError(RuntimeError):
    """A save refused because another handle changed the file since this one loaded or saved it."""


def _kb_digest(header: dict, docs_json: bytes, vectors: bytes) -> str:
    """sha256 over every header field but the digest itself (settings included), the documents and the vectors."""
    meta = json.dumps({k: v for k, v in header.items() if k != "sha256"}, sort_keys=True).encode()
    return hashlib.sha256(len(meta).to_bytes(8, "little") + meta + docs_json + b"\0" + vectors).hexdigest()


def _path_key(path: Path) -> str:
    return str(Path(path).resolve())


def _file_digest(path: Path) -> str | None:
    """sha256 of the file's bytes, None when there is no file."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


@contextmanager
def _folder_lock(path: Path):
    """An exclusive lock on ``path``'s folder for the check-then-write of :meth:`KnowledgeBase.save`.

    ``flock`` on the folder itself leaves no lock file behind; where ``fcntl`` does not
    exist (Windows) the stale check still runs, unserialised.
    """
    folder = Path(path).parent
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


class KnowledgeBase:
    """Documents, their passages, a BM25 index and a dense index, kept in step; persistent.

    * :meth:`add` chunks and embeds only the new documents and appends them to both
      indexes; :meth:`delete` removes documents from both. Nothing is rebuilt or retrained.
    * :meth:`search` ranks passages with ``method="bm25"``, ``"dense"`` or ``"hybrid"``
      (reciprocal rank fusion of the two).
    * :meth:`save` writes one safetensors file — the passages' vectors, the documents as
      UTF-8 JSON, and a header with the format name and version, the embedder's
      fingerprint, the chunking and BM25 settings and a sha256 over all of it (settings,
      documents, vectors) — atomically (a crash mid-write leaves the previous file).
      :meth:`load` refuses, with a ``ValueError`` that says why, a file that is truncated or
      altered anywhere, of another format or a newer version, or built with another
      embedder. The BM25 postings are derived data: rebuilt on load.
    * :meth:`open` binds the base to a file: it loads it when it exists, and every
      successful ``add``/``delete`` is then saved at once (write-through). Input is checked
      before anything changes, so a rejected ``add`` leaves memory and file as they were;
      a save that fails rolls memory back too, so memory and file never disagree.
    * Two handles on one file never lose a document: a save over a file that another
      handle changed since this one loaded or saved it raises
      :class:`StaleKnowledgeBaseError` (reload, then apply the change again).

    ``chunk_words=None`` keeps each document as one passage (as the corpus' cached
    embeddings do); a number cuts documents with :func:`chunk` by sentences.
    """

    FORMAT = "course_lib.rag.KnowledgeBase"
    VERSION = 2  # 2: the sha256 covers the header (settings) too; version 1 files still load

    def __init__(
        self,
        embedder,
        *,
        chunk_words: int | None = None,
        chunk_overlap: int = 0,
        k1: float = 1.2,
        b: float = 0.75,
    ):
        if not hasattr(embedder, "embed") or not hasattr(embedder, "fingerprint"):
            raise TypeError("embedder must have .embed(texts), .dim and .fingerprint (see get_embedder)")
        if chunk_words is not None:
            chunk("", max_words=chunk_words, overlap=chunk_overlap)  # validates the settings
        self.embedder = embedder
        self.config = {"chunk_words": chunk_words, "chunk_overlap": chunk_overlap, "k1": k1, "b": b}
        self.docs: dict[str, Document] = {}
        self.bm25 = BM25Index(k1=k1, b=b)
        self.dense = ExactIndex(embedder.dim)
        self.rows: dict[str, list[int]] = {}  # doc id -> its passages' rows in both indexes
        self.row_doc: list[str] = []  # row -> doc id
        self.row_text: list[str] = []
        self.row_chunk: list[int] = []
        self.path: Path | None = None
        self._on_disk: dict[str, str | None] = {}  # file -> sha256 of what this handle last read or wrote there

    def __len__(self) -> int:
        return len(self.docs)

    def __contains__(self, doc_id: str) -> bool:
        return doc_id in self.docs

    def passages(self, doc: Document) -> list[str]:
        if self.config["chunk_words"] is None:
            return [doc.text]
        return chunk(doc.text, max_words=self.config["chunk_words"], overlap=self.config["chunk_overlap"])

    # -- updates ----------------------------------------------------------------------

    def add(self, docs, *, vectors=None, tokens=None, _normalized: bool = False) -> int:
        """Add documents (a :class:`Document` or a list); returns the passages added.

        ``vectors`` (one row per passage, L2-normalised here) skips embedding, e.g. from
        the corpus cache; ``tokens`` (one :func:`tokenize` list per passage) skips tokenizing.
        """
        if isinstance(docs, (str, bytes)) or not isinstance(docs, (Document, Iterable)):
            raise TypeError(f"docs must be a Document or a list of Documents, got {type(docs).__name__}")
        docs = [docs] if isinstance(docs, Document) else list(docs)
        if not docs:
            raise ValueError("docs must not be empty")
        for d in docs:
            if not isinstance(d, Document):
                raise TypeError(f"docs must be Document objects, got {type(d).__name__}")
            if not isinstance(d.id, str) or not d.id:
                raise ValueError(f"a document id must be a non-empty str, got {d.id!r}")
            if not isinstance(d.text, str) or not d.text.strip():
                raise ValueError(f"document {d.id!r} has no text")
        ids = [d.id for d in docs]
        counts = Counter(ids)
        dup = sorted({i for i, n in counts.items() if n > 1} | {i for i in counts if i in self.docs})
        if dup:
            raise ValueError(f"document ids already present or repeated: {dup[:5]} (delete them first)")
        passages = [(d, i, p) for d in docs for i, p in enumerate(self.passages(d))]
        texts = [p for _, _, p in passages]
        vecs = _as_matrix(self.embedder.embed(texts) if vectors is None else vectors, self.embedder.dim)
        if not _normalized:
            vecs = F.normalize(vecs, dim=-1)
        if len(vecs) != len(texts):
            raise ValueError(f"vectors has {len(vecs)} rows, the documents have {len(texts)} passages")
        tokens = [tokenize(t) for t in texts] if tokens is None else list(tokens)
        if len(tokens) != len(texts) or any(isinstance(t, str) for t in tokens):
            raise ValueError(f"tokens must be one token list per passage ({len(texts)}), got {len(tokens)} items")
        # everything checked: now change state (rolled back if the write-through save fails)
        undo = self._snapshot()
        rows = self.bm25.add(tokens)
        self.dense.add(vecs)
        for (d, i, p), r in zip(passages, rows.tolist()):
            self.rows.setdefault(d.id, []).append(r)
            self.row_doc.append(d.id)
            self.row_text.append(p)
            self.row_chunk.append(i)
        for d in docs:
            self.docs[d.id] = d
        self._commit(undo)
        return len(texts)

    def delete(self, doc_ids) -> int:
        """Delete documents by id (a str or a list); returns the passages removed."""
        if not isinstance(doc_ids, (str, Iterable)):
            raise TypeError(f"doc_ids must be a document id (str) or a list of ids, got {type(doc_ids).__name__}")
        doc_ids = [doc_ids] if isinstance(doc_ids, str) else list(doc_ids)
        missing = [i for i in doc_ids if i not in self.docs]
        if missing:
            raise KeyError(f"no documents with ids {missing[:5]}")
        rows = [r for i in dict.fromkeys(doc_ids) for r in self.rows[i]]
        undo = self._snapshot()
        self.bm25.delete(rows)
        self.dense.delete(rows)
        for i in dict.fromkeys(doc_ids):
            del self.docs[i], self.rows[i]
        self._commit(undo)
        return len(rows)

    def _snapshot(self):
        """What :meth:`_rollback` needs to undo one ``add`` or ``delete`` (None when not bound to a file).

        Cheap: ``add`` only appends (new arrays, new dict keys, longer lists) and ``delete``
        only clears flags, so lengths, references and copies of the flag and count arrays suffice.
        """
        if self.path is None:
            return None
        bm, dn = self.bm25, self.dense
        return {
            "bm25": (len(bm.vocab), bm.df.copy(), bm.doc_len, bm.alive.copy(), len(bm._doc_terms), list(bm._segments)),
            "dense": (dn.vectors, dn.alive.clone()),
            "kb": (dict(self.docs), dict(self.rows), len(self.row_doc)),
        }

    def _rollback(self, undo) -> None:
        n_vocab, bm_df, bm_len, bm_alive, n_terms, segments = undo["bm25"]
        bm = self.bm25
        while len(bm.vocab) > n_vocab:  # new terms were appended last
            bm.vocab.popitem()
        bm.df, bm.doc_len, bm.alive, bm._segments, bm._stats = bm_df, bm_len, bm_alive, segments, None
        del bm._doc_terms[n_terms:]
        self.dense.vectors, self.dense.alive = undo["dense"]
        self.docs, self.rows, n_rows = undo["kb"]
        del self.row_doc[n_rows:], self.row_text[n_rows:], self.row_chunk[n_rows:]

    # -- search -----------------------------------------------------------------------

    def search(self, query: str, k: int = 5, *, method: str = "hybrid", depth: int = 100, rrf_k: int = 60) -> list[Hit]:
        """The ``k`` best passages for a text query. Hybrid fuses the top ``depth`` of each retriever."""
        k = _check_k(k)
        check_choice("method", method, ("bm25", "dense", "hybrid"))
        check_int("depth", depth, min=1)
        if not isinstance(query, str) or not query.strip():
            raise ValueError("query must be a non-empty str")
        if not self.docs:
            raise ValueError("the knowledge base is empty: add documents first")
        n = max(k, depth) if method == "hybrid" else k
        if method in ("bm25", "hybrid"):
            b_ids, b_scores = self.bm25.search(tokenize(query), n)
        if method in ("dense", "hybrid"):
            d_scores, d_ids = self.dense.search(self.embedder.embed([query]), n)
            d_ids, d_scores = d_ids[0].numpy(), d_scores[0].numpy()
        if method == "bm25":
            ids, scores = b_ids, b_scores
        elif method == "dense":
            ids, scores = d_ids, d_scores
        else:
            ids, scores = reciprocal_rank_fusion([b_ids, d_ids], k=rrf_k, top=k)
        return [
            Hit(self.row_doc[r], self.docs[self.row_doc[r]].title, self.row_text[r], float(s), rank, self.row_chunk[r])
            for rank, (r, s) in enumerate(zip(ids.tolist()[:k], scores.tolist()[:k]), start=1)
        ]

    def nbytes(self) -> dict[str, int]:
        """What the index holds: text (UTF-8), BM25 postings, dense vectors (float32)."""
        live = [r for rows in self.rows.values() for r in rows]
        return {
            "text": sum(len(self.row_text[r].encode()) for r in live),
            "bm25": self.bm25.nbytes(),
            "vectors": len(live) * self.embedder.dim * 4,
        }

    # -- persistence ------------------------------------------------------------------

    def _live_rows(self) -> list[int]:
        return [r for d in self.docs for r in self.rows[d]]

    def to_bytes(self) -> bytes:
        docs_json = json.dumps([[d.id, d.title, d.text] for d in self.docs.values()], ensure_ascii=False).encode()
        vectors = self.dense.vectors[self._live_rows()].contiguous()
        header = {
            "format": self.FORMAT,
            "version": str(self.VERSION),
            "embedder": self.embedder.fingerprint,
            "dim": str(self.embedder.dim),
            "config": json.dumps(self.config, sort_keys=True),
            "n_docs": str(len(self.docs)),
            "n_passages": str(len(vectors)),
        }
        header["sha256"] = _kb_digest(header, docs_json, vectors.numpy().tobytes())
        tensors = {"vectors": vectors, "docs": torch.frombuffer(bytearray(docs_json), dtype=torch.uint8)}
        return safetensors_bytes(tensors, header)

    def save(self, path) -> Path:
        """Write the base to ``path`` atomically (the old file survives any failure).

        A file this handle loaded or saved before must not have changed since: if another
        handle (another notebook, another process) saved to it in between, the save is
        refused with :class:`StaleKnowledgeBaseError` rather than silently dropping the other
        writer's documents. Writers to one folder are serialised by a lock, so the check and
        the write are one step.
        """
        path = Path(path)
        data = self.to_bytes()
        key = _path_key(path)
        with _folder_lock(path):
            if key in self._on_disk:
                now = _file_digest(path)
                if now != self._on_disk[key]:
                    raise StaleKnowledgeBaseError(
                        f"{path} changed since this knowledge base loaded or saved it (another handle or process "
                        "wrote to it); saving would lose that writer's documents. Reload it with "
                        "KnowledgeBase.open(path, embedder) (or .load) and apply your change again."
                    )
            atomic_write_bytes(path, data)
        self._on_disk[key] = hashlib.sha256(data).hexdigest()
        return path

    def _commit(self, undo=None) -> None:
        """Write-through save of a bound base; on failure memory goes back to ``undo``'s state."""
        if self.path is None:
            return
        try:
            self.save(self.path)
        except BaseException:
            if undo is not None:
                self._rollback(undo)
            raise

    @classmethod
    def load(cls, path, embedder) -> KnowledgeBase:
        """Read a base written by :meth:`save`; every check runs before anything is built.

        Any damage — a truncated file, a flipped byte in the documents, the vectors, the
        settings or the header — raises a ``ValueError`` that says why.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no knowledge base at {path}")
        raw = path.read_bytes()
        try:
            n = int.from_bytes(raw[:8], "little")
            header = json.loads(raw[8 : 8 + n]).get("__metadata__") or {}
            tensors = load_safetensors(raw)
            if not isinstance(header, dict) or not all(isinstance(v, str) for v in header.values()):
                raise ValueError("the header's metadata is not a str -> str map")
        except (SafetensorError, ValueError, UnicodeDecodeError, AttributeError, TypeError, OverflowError) as e:
            raise ValueError(f"{path} is not a readable knowledge-base file (truncated or corrupt?): {e}") from e
        if header.get("format") != cls.FORMAT:
            raise ValueError(f"{path} is not a {cls.FORMAT} file (format: {header.get('format')!r})")
        version = header.get("version", "")
        if not version.isdigit() or int(version) > cls.VERSION:
            raise ValueError(
                f"{path} has format version {version!r}; this course_lib reads versions <= {cls.VERSION}: upgrade course_lib"
            )
        vectors, docs_raw = tensors.get("vectors"), tensors.get("docs")
        if vectors is None or docs_raw is None or vectors.dim() != 2 or docs_raw.dim() != 1:
            raise ValueError(f"{path} lacks its 'vectors' or 'docs' tensor")
        if vectors.dtype != torch.float32 or docs_raw.dtype != torch.uint8:
            raise ValueError(f"{path} is corrupt: its tensors have dtypes {vectors.dtype} and {docs_raw.dtype}")
        docs_json = docs_raw.numpy().tobytes()
        vec_bytes = vectors.numpy().tobytes()
        if int(version) == 1:  # version 1 checksummed documents and vectors only
            digest = hashlib.sha256(docs_json + vec_bytes).hexdigest()
        else:
            digest = _kb_digest(header, docs_json, vec_bytes)
        if digest != header.get("sha256"):
            raise ValueError(f"{path} is corrupt: its content does not match the sha256 in its header")
        if header.get("embedder") != embedder.fingerprint:
            raise ValueError(
                f"{path} was built with embedder {header.get('embedder')!r}, not {embedder.fingerprint!r}: "
                "its vectors and your queries would not be comparable. Load it with the same embedder or rebuild it."
            )
        if vectors.shape[1:] != (embedder.dim,) or str(embedder.dim) != header.get("dim"):
            raise ValueError(f"{path} holds vectors of shape {tuple(vectors.shape)}, embedder dim is {embedder.dim}")
        try:
            config = json.loads(header["config"])
            check_keys("config", config, ("chunk_words", "chunk_overlap", "k1", "b"))
            kb = cls(embedder, **config)
            docs = [Document(*d) for d in json.loads(docs_json)]
            if not all(isinstance(f, str) for d in docs for f in (d.id, d.title, d.text)):
                raise ValueError("a document's id, title or text is not a str")
        except (KeyError, TypeError, ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"{path} is corrupt: its settings or documents do not parse: {e}") from e
        if docs:
            kb.add(docs, vectors=vectors, _normalized=True)  # stored rows are unit already
        elif len(vectors):
            raise ValueError(f"{path} holds vectors but no documents")
        kb._on_disk[_path_key(path)] = hashlib.sha256(raw).hexdigest()
        return kb

    @classmethod
    def open(cls, path, embedder, **config) -> KnowledgeBase:
        """A base bound to ``path``: loaded when the file exists, created (empty) otherwise.

        Later ``add`` and ``delete`` calls save it at once. A bad existing file raises and
        is left untouched.
        """
        path = Path(path)
        existed = path.exists()
        kb = cls.load(path, embedder) if existed else cls(embedder, **config)
        if existed and config and any(kb.config.get(k) != v for k, v in config.items()):
            raise ValueError(f"{path} was built with {kb.config}, you asked for {config}")
        if not existed:
            kb._on_disk[_path_key(path)] = None  # expect no file: another handle creating it first is a conflict
        kb.path = path
        return kb


# --------------------------------------------------------------------------- the reader

#: Words of an article's opening kept as its passage in the reader's prompt.
PASSAGE_WORDS = 32


def passage_of(text: str, max_words: int = PASSAGE_WORDS) -> str:
    """The passage a reader sees for a document: its first sentence-chunk of ``max_words`` words."""
    parts = chunk(text, max_words=max_words, by="sentence")
    return parts[0] if parts else ""


def reader_prompt(description: str, passages: Sequence[str] = ()) -> str:
    """The reader's input: numbered passages (none when closed-book), then the question.

    ``[1] <passage>\\n[2] <passage>\\nQ: <description>\\nA:`` — the answer follows as
    `` <title>`` and ends with the tokenizer's end-of-text token.
    """
    check_type("description", description, str)
    if isinstance(passages, str):
        raise TypeError("passages must be a list of strings")
    lines = [f"[{i}] {p}" for i, p in enumerate(passages, start=1)]
    return "\n".join([*lines, f"Q: {description}", "A:"])


def quote_prompt(description: str, passages: Sequence[str]) -> str:
    """The quoting reader's input: :func:`reader_prompt`'s numbered passages and question, cued ``Quote:``.

    ``[1] <passage>\\nQ: <description>\\nQuote:`` — the answer follows as `` <passage>``, the
    supporting passage copied verbatim, then end-of-text. A distinct cue (not ``A:``) so one
    model can tell "name the title" from "quote the passage" (issue 24: an answer that copies
    a long span of its context is what prompt-lookup speculative decoding is made for). A
    quote needs something to quote: at least one passage.
    """
    check_type("description", description, str)
    if isinstance(passages, str) or not isinstance(passages, Sequence):
        raise TypeError(f"passages must be a list of strings, got {type(passages).__name__}")
    if not passages:
        raise ValueError("passages must hold at least one passage to quote (a quote needs a source)")
    for i, p in enumerate(passages):
        check_type(f"passages[{i}]", p, str)
    return reader_prompt(description, passages)[: -len("A:")] + "Quote:"


class Reader:
    """A patient that answers a description with an article title, closed-book or from passages."""

    def __init__(self, model, tokenizer, *, max_answer_tokens: int = 24):
        self.model, self.tokenizer = model, tokenizer
        self.eot = tokenizer.token_to_id(EOT)
        self.max_answer_tokens = max_answer_tokens

    def encode(self, prompt: str, answer: str | None = None) -> tuple[list[int], int]:
        """Token ids of prompt (+ `` answer`` + end-of-text) and the prompt's length.

        A prompt too long for the model keeps its last tokens (the question is at the end).
        """
        p = self.tokenizer.encode(prompt).ids
        a = [] if answer is None else self.tokenizer.encode(" " + answer).ids + [self.eot]
        room = self.model.config.max_seq_len - max(len(a), self.max_answer_tokens if answer is None else 0)
        if room < 1:
            raise ValueError(
                f"answer of {len(a)} tokens leaves no room for a prompt in {self.model.config.max_seq_len}"
            )
        p = p[-room:]
        return p + a, len(p)

    @torch.no_grad()
    def answer(self, description: str, passages: Sequence[str] = ()) -> str:
        """Greedy decoding with a KV cache until end-of-text (or ``max_answer_tokens``)."""
        ids, _ = self.encode(reader_prompt(description, passages))
        device = next(self.model.parameters()).device
        cache = self.model.new_cache(1, len(ids) + self.max_answer_tokens)
        logits = self.model(torch.tensor([ids], device=device), cache=cache)[:, -1]
        out: list[int] = []
        for _ in range(self.max_answer_tokens):
            nxt = int(logits.argmax(-1))
            if nxt == self.eot:
                break
            out.append(nxt)
            logits = self.model(torch.tensor([[nxt]], device=device), cache=cache)[:, -1]
        return self.tokenizer.decode(out).strip()

    def _batch(self, pairs: Sequence[tuple[str, str]]):
        """Right-padded inputs (B, T) and targets (B, T) with -100 except on answer tokens."""
        enc = [self.encode(p, a) for p, a in pairs]
        t = max(len(ids) for ids, _ in enc) - 1
        x = torch.full((len(enc), t), self.eot, dtype=torch.long)
        y = torch.full((len(enc), t), -100, dtype=torch.long)
        for i, (ids, n_prompt) in enumerate(enc):
            ids_t = torch.tensor(ids)
            x[i, : len(ids) - 1] = ids_t[:-1]
            y[i, n_prompt - 1 : len(ids) - 1] = ids_t[n_prompt:]  # predict the answer and its end
        device = next(self.model.parameters()).device
        return x.to(device), y.to(device)

    @torch.no_grad()
    def exact_match(self, prompts: Sequence[str], answers: Sequence[str], *, batch_size: int = 64) -> np.ndarray:
        """Whether greedy decoding would produce exactly `` answer`` then end-of-text, per example (bool).

        Computed in one teacher-forced pass: greedy decoding outputs the answer iff the
        argmax at every answer position is the answer's next token (and then end-of-text).
        """
        if len(prompts) != len(answers):
            raise ValueError(f"prompts ({len(prompts)}) and answers ({len(answers)}) differ in length")
        was = self.model.training
        self.model.eval()
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths pad less
        correct = np.zeros(len(prompts), dtype=bool)
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            x, y = self._batch([(prompts[i], answers[i]) for i in idx])
            logits, targets = self._answer_logits(x, y)  # (A, V), (A,) at answer positions only
            wrong = torch.zeros(len(idx), dtype=torch.long, device=x.device)
            wrong.index_add_(0, torch.nonzero(y != -100)[:, 0], (logits.argmax(-1) != targets).long())
            correct[idx] = (wrong == 0).cpu().numpy()
        self.model.train(was)
        return correct

    def _answer_logits(self, x, y):
        """Logits (A, V) and targets (A,) at the answer positions only.

        The same computation as ``TinyLM.forward`` (tests check), but the vocabulary
        projection — most of a tiny model's FLOPs — runs on the few answer positions
        instead of every prompt position.
        """
        m = self.model
        t = x.shape[1]
        h = m.embed(x)  # (B, T, C)
        for block in m.blocks:
            h = block(h, m.rope_cos[:t], m.rope_sin[:t])
        keep = y != -100  # (B, T)
        return m.lm_head(m.norm(h[keep])), y[keep]

    def loss(self, pairs: Sequence[tuple[str, str]]) -> torch.Tensor:
        """Mean cross-entropy of the answer tokens given the prompts."""
        logits, targets = self._answer_logits(*self._batch(pairs))
        return F.cross_entropy(logits, targets)
