r"""Data-centric efficiency (chapter 07, the data side): a labelled noisy crawl, dedup, filters.

Tokens are compute (chapter 00: training costs about :math:`6ND` FLOPs for :math:`N`
parameters and :math:`D` tokens), so every redundant or useless token removed from a
training set is compute saved. This module builds the pieces that decide *which* tokens to
keep, and measures each against ground truth.

**The noisy crawl** (:func:`build_crawl`). Real web crawls have no labels, so we make one
whose labels are known because we built it, deterministically from the course corpus
(:func:`course_lib.data.load_articles`). Every :class:`CrawlDoc` carries its ``label``, a
finer ``kind`` and the ``source`` article it was derived from:

===============  =====================================================================
label            kinds
===============  =====================================================================
``clean``        ``original``: each of the 10,033 articles, exactly once
``exact_dup``    ``copy`` (verbatim) and ``copy_reformatted`` (whitespace, line endings,
                 case: equal after :func:`normalize`); copy counts are Zipf-distributed
                 (:math:`P(c) \propto c^{-a}`), the heavy tail Lee et al. (2022) found
``near_dup``     ``boilerplate`` (site header and footer), ``edit`` (typos, inserted and
                 deleted words), ``reorder`` (the extract's sentences rotated)
``low_quality``  ``keyword_spam``, ``seo_template``, ``random_chars``, ``truncated``
                 (a few words cut mid-sentence), ``model_sample`` (the tiny patient
                 sampled at a high temperature, or an untrained one)
===============  =====================================================================

Documents are in *crawl order*: each article gets a random publication time and every
derived document a later one (a page cannot be copied before it exists), so "keep the
first of each duplicate group" keeps the clean original — the labels and the usual dedup
rule agree by construction. Same config, same bytes (:meth:`Crawl.sha256`; the model
samples, like every sampled output in the course, for the same torch thread count).

**Exact dedup** (:func:`exact_dedup`): hash the normalised text (Unicode NFKC, case-folded,
whitespace collapsed) and keep the first document of each hash.

**Near dedup: MinHash + LSH, from scratch.** A document is the set :math:`S` of its word
:math:`k`-shingles (:func:`shingles`; hashed to 32 bits by :func:`shingle_sets`). The
Jaccard similarity :math:`J(A, B) = |A \cap B| / |A \cup B|` is what we want; comparing all
pairs is :math:`O(n^2)`. MinHash (Broder 1997): for a random permutation :math:`\pi` of the
shingle universe, :math:`P[\min \pi(A) = \min \pi(B)] = J(A, B)`, because the smallest
element of :math:`A \cup B` under :math:`\pi` is equally likely to be any of them and the
minima agree exactly when it lies in :math:`A \cap B`. A signature keeps the minima under
:math:`P` permutations; the fraction of equal entries estimates :math:`J` with standard
error :math:`\sqrt{J(1-J)/P}` (:func:`estimate_jaccard`). True random permutations of
:math:`2^{32}` values are too big to store, so each is replaced by a hash from a small
family (:class:`MinHasher`): a fixed avalanche (MurmurHash3's 32-bit finaliser) and then
:math:`h_i(x) = (a_i x + b_i) \bmod 2^{32}` with random odd :math:`a_i` — an affine map
that is a bijection of :math:`[0, 2^{32})` (odd :math:`a_i` is invertible mod
:math:`2^{32}`), so it is a permutation, drawn from a 2-universal family (Carter & Wegman
1979). This is datasketch 2.0's ``affine32`` scheme, with the same seeding, so our
signatures equal datasketch's bit for bit (the tests check it).

LSH banding (:class:`LSHIndex`) cuts a signature into :math:`b` bands of :math:`r` rows
(:math:`b r = P`) and makes two documents *candidates* when all :math:`r` rows of at least
one band agree. For a pair of similarity :math:`s` one band agrees with probability
:math:`s^r`, so the pair is a candidate with probability

.. math:: P(\text{candidate} \mid s) = 1 - (1 - s^r)^b,

an S-curve (:func:`candidate_probability`) that rises steeply near
:math:`t \approx (1/b)^{1/r}` (:func:`lsh_threshold`). Candidates are then verified with
the exact Jaccard of their shingle sets (or the MinHash estimate) and joined into clusters
(:func:`near_dedup`, union-find); the first document of a cluster is kept.

**Quality filters.** :func:`heuristic_flags` applies Gopher/C4-style rules (Rae et al.
2021, App. A; Raffel et al. 2020): word count, mean word length, symbol and digit ratios,
share of words with a letter, stop-word presence, repeated lines, the share of characters
in the most frequent 2–4-gram and in repeated 5–10-grams, and a terminal punctuation
rule. :func:`perplexity_scores` scores every document with the tiny patient (mean
next-token loss of its first tokens), as CCNet (Wenzek et al. 2020) scores a crawl with a
language model trained on Wikipedia — our patient was trained on these articles, which is
exactly CCNet's situation. :func:`train_quality_classifier` is a bag-of-n-grams linear
model (:class:`QualityClassifier`: logistic regression on hashed BPE uni- and bigram
frequencies) trained to separate noise from clean text, on documents whose source article
is in the training split. :func:`precision_recall` scores any filter against the labels.

**The corpus' own near duplicates** (:func:`natural_near_duplicates`): the articles are
distinct pages, but some are written from a template ("Pope X was head of the Catholic
Church and ..."). Such pairs are far less similar than the crawl's planted near
duplicates, so the crawl's dedup threshold does not touch them (the tests check that no
clean original is removed); short shingles and a low threshold find them, and a notebook
can show them. Were any above the threshold, a dedup would remove them and the labels
would count it as a false positive.

**Data-side tools for the training chapter**: :func:`synthetic_topic_examples` (programmatic
examples of a skill the patient lacks: naming an article's topic), :func:`difficulty_order`
(curriculum orders), :func:`distillation_loss` (soft-target KL, Hinton et al. 2015) and
:func:`regurgitation_rate` (verbatim continuation of a document's prefix, the memorisation
measure of Carlini et al. 2021 / Lee et al. 2022).

**Training on the data** (the chapter's currency is compute to a target validation loss,
:func:`course_lib.train.time_to_target`): :func:`encode_docs` and :func:`token_stream` lay
documents out as :func:`course_lib.data.encode_split` does; :func:`course_lib.train.train`
takes the batches chosen by the caller (``batch_at``) —
:func:`random_batches` reproduces its own random windows bit for bit, :func:`sequential_batches` reads a
stream once in order (a curriculum is an ordering of the stream) — and an optional
``loss_fn`` (:func:`distillation_objective`: Hinton et al.'s mix of hard and soft targets;
:func:`top1_agreement` with the teacher); :func:`mixed_stream` mixes a share of synthetic
documents into the crawl and marks their tokens; :func:`topic_accuracy` measures the
synthetic skill as a 12-way multiple choice. The runs themselves (equal compute on the raw,
deduplicated and filtered crawl with memorisation, the synthetic skill, curriculum,
distillation) are ``course_lib/experiments/datacentric.py``
(``python -m course_lib.build datacentric``).

Costs to plan for: the perplexity filter is the slowest piece of the data side (a forward
pass per document: score a sample, or cache the scores in a build), and fitting
:class:`QualityClassifier` on the whole crawl takes L-BFGS tens of passes over the sparse
features.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
import unicodedata
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from course_lib import data, zoo
from course_lib.cascade import bow_features
from course_lib.checks import (
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_probability,
    check_tensor,
    check_type,
)
from course_lib.model import TinyLM
from course_lib.rag import STOPWORDS, split_sentences

LABELS = ("clean", "exact_dup", "near_dup", "low_quality")
NEAR_DUP_KINDS = ("boilerplate", "edit", "reorder")
LOW_QUALITY_KINDS = ("keyword_spam", "seo_template", "random_chars", "truncated", "model_sample")
SAMPLERS = ("tiny", "untrained")
VERIFY = ("exact", "minhash")

# --------------------------------------------------------------------------- argument helpers


def _check_texts(name: str, texts, *, allow_empty_list: bool = False) -> list[str]:
    """A list/tuple of strings (not one string), non-empty unless allowed."""
    if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
        raise TypeError(f"{name} must be a list of strings, got {type(texts).__name__}")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"{name}[{i}] must be a str, got {type(t).__name__}")
    if not texts and not allow_empty_list:
        raise ValueError(f"{name} must not be empty")
    return list(texts)


# =========================================================================== the crawl


@dataclass(frozen=True)
class CrawlDoc:
    """One document of the crawl with its ground truth.

    ``doc_id`` is its position in crawl order; ``label`` one of :data:`LABELS`; ``kind``
    the generator that made it; ``source`` the index (into the articles the crawl was
    built from) of the article it was derived from; ``split`` that article's split.
    """

    doc_id: int
    text: str
    label: str
    kind: str
    source: int
    split: str

    @property
    def is_noise(self) -> bool:
        """Anything a curator would rather not train on: every label but ``clean``."""
        return self.label != "clean"


@dataclass(frozen=True)
class CrawlConfig:
    """How the crawl is made (every field is checked when the config is made).

    ``dup_fraction`` of the articles get exact copies, ``min(zipf(zipf_a), max_copies)``
    each; ``near_dup_fraction`` of the articles get one near duplicate each (the three
    kinds in equal numbers); ``low_quality_per_kind`` documents of each low-quality kind;
    ``edit_rate`` is the share of words an ``edit`` near duplicate changes; model samples
    are ``sample_tokens`` tokens from ``sampler`` at ``sample_temperature``.
    """

    seed: int = 0
    dup_fraction: float = 0.1
    zipf_a: float = 2.0
    max_copies: int = 100
    near_dup_fraction: float = 0.1
    low_quality_per_kind: int = 250
    edit_rate: float = 0.05
    sampler: str = "tiny"
    sample_temperature: float = 1.5
    sample_tokens: int = 48

    def __post_init__(self):
        check_int("seed", self.seed, min=0)
        check_probability("dup_fraction", self.dup_fraction)
        check_float("zipf_a", self.zipf_a, min=1, min_inclusive=False)
        check_int("max_copies", self.max_copies, min=1)
        check_probability("near_dup_fraction", self.near_dup_fraction)
        check_int("low_quality_per_kind", self.low_quality_per_kind, min=0)
        check_float("edit_rate", self.edit_rate, min=0, max=0.5, min_inclusive=False)
        check_choice("sampler", self.sampler, SAMPLERS)
        check_float("sample_temperature", self.sample_temperature, min=0, max=10, min_inclusive=False)
        check_int("sample_tokens", self.sample_tokens, min=1, max=200)


@dataclass(frozen=True)
class Crawl:
    """The crawl: documents in crawl order and the config that made them."""

    docs: tuple[CrawlDoc, ...]
    config: CrawlConfig
    n_articles: int = 0

    def __len__(self) -> int:
        return len(self.docs)

    @property
    def texts(self) -> list[str]:
        return [d.text for d in self.docs]

    @property
    def labels(self) -> np.ndarray:
        """(n,) label strings."""
        return np.array([d.label for d in self.docs])

    @property
    def kinds(self) -> np.ndarray:
        return np.array([d.kind for d in self.docs])

    @property
    def sources(self) -> np.ndarray:
        return np.array([d.source for d in self.docs], dtype=np.int64)

    def mask(self, *, labels: Sequence[str] = (), kinds: Sequence[str] = (), splits: Sequence[str] = ()) -> np.ndarray:
        """(n,) bool: documents whose label, kind and split are among those given (empty = any)."""
        for name, values, allowed in (("labels", labels, LABELS), ("splits", splits, data.SPLITS)):
            for v in values:
                check_choice(name, v, allowed)
        out = np.ones(len(self.docs), dtype=bool)
        for attr, values in (("label", labels), ("kind", kinds), ("split", splits)):
            if values:
                out &= np.array([getattr(d, attr) in values for d in self.docs])
        return out

    def composition(self) -> dict[str, dict[str, int]]:
        """label -> kind -> number of documents (labels and kinds in a fixed order)."""
        order = {"clean": ("original",), "exact_dup": ("copy", "copy_reformatted")}
        order |= {"near_dup": NEAR_DUP_KINDS, "low_quality": LOW_QUALITY_KINDS}
        out: dict[str, dict[str, int]] = {}
        for label in LABELS:
            counts = {k: sum(1 for d in self.docs if d.label == label and d.kind == k) for k in order[label]}
            out[label] = {k: v for k, v in counts.items() if v}
        return out

    def to_bytes(self) -> bytes:
        """A canonical serialisation (config + every document): equal crawls, equal bytes."""
        rows = [[d.doc_id, d.label, d.kind, d.source, d.split, d.text] for d in self.docs]
        blob = {"config": asdict(self.config), "n_articles": self.n_articles, "docs": rows}
        return json.dumps(blob, ensure_ascii=False, separators=(",", ":")).encode()

    def sha256(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()


_SITES = ("WikiMirror", "InfoPedia Online", "KnowledgeHub", "FactFinder", "EduPortal", "TopicWorld")
_MONTHS = ("January", "March", "May", "July", "September", "November")
_HEADERS = (
    "{site} | Home | Topics | {topic} | Search\n",
    "Skip to content\n{site} - the free online reference\nMenu: Home > {topic} > Articles\n",
    "Welcome to {site}! Sign in | Register | Help\n",
)
_FOOTERS = (
    "\nRetrieved from {site}. This page was last edited on {day} {month} {year}.",
    "\nShare this: Facebook | Twitter | Email | Print\nCopyright {year} {site}. All rights reserved.",
    "\nText is available under a Creative Commons licence; additional terms may apply. "
    "Privacy policy | About {site} | Disclaimers | Contact us",
)
_FILLERS = ("the", "a", "also", "very", "really", "quite", "then", "often")
_SEO_LINES = (
    "Looking for {t}? You have come to the right place!",
    "Best {t} deals of {year} - click here!",
    "Top 10 facts about {t} you will not believe.",
    "Buy {t} online at the lowest price. Free shipping on {kw}!",
    "Everything about {t}, {kw} and {topic} in one place.",
    "Click here to read more about {t}.",
    "{t} {kw} {t} {kw} cheap {kw} best {t}",
    "Subscribe to our newsletter for more {topic} news and {kw} tips.",
    "Read our complete {t} guide for {year}.",
)
_RANDOM_ALPHABET = np.array(list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789#$%&*+-=/<>@^_~|"))


def _keywords(article: data.Article, n: int = 5) -> list[str]:
    """The article's most frequent content words (length >= 4, not a stop word), ties by first use."""
    words = [w for w in _WORD.findall(article.text.lower()) if len(w) >= 4 and w not in STOPWORDS and w.isalpha()]
    counts: dict[str, int] = {}
    for w in words:
        counts[w] = counts.get(w, 0) + 1
    ranked = sorted(counts, key=lambda w: -counts[w])  # stable: first use breaks ties
    return ranked[:n] or [article.title.lower()]


def _reformat(text: str, rng: np.random.Generator) -> str:
    """Whitespace, line-ending and case changes that :func:`normalize` undoes."""
    op = int(rng.integers(4))
    if op == 0:
        return text.replace("\n", "\r\n") + "\r\n"
    if op == 1:
        return text.replace(" ", "  ", int(rng.integers(1, 6)))
    if op == 2:
        head, _, rest = text.partition("\n")
        return head.upper() + "\n" + rest
    return "  " + text.replace("\n", " \n") + "\t"


def _boilerplate(article: data.Article, rng: np.random.Generator) -> str:
    site = _SITES[int(rng.integers(len(_SITES)))]
    fill = dict(site=site, topic=article.topic, day=int(rng.integers(1, 29)), year=int(rng.integers(2015, 2025)))
    fill["month"] = _MONTHS[int(rng.integers(len(_MONTHS)))]
    head = _HEADERS[int(rng.integers(len(_HEADERS)))].format(**fill)
    foot = _FOOTERS[int(rng.integers(len(_FOOTERS)))].format(**fill)
    return head + article.text + foot


def _edit(text: str, rate: float, rng: np.random.Generator) -> str:
    """Change ``max(1, round(rate * words))`` words: typo (swap two letters), delete, insert or duplicate."""
    words = text.split(" ")
    n = max(1, round(rate * len(words)))
    where = set(rng.choice(len(words), size=min(n, len(words)), replace=False).tolist())
    out: list[str] = []
    for i, w in enumerate(words):
        if i not in where:
            out.append(w)
            continue
        op = int(rng.integers(4))
        if op == 0 and len(w) >= 4:  # typo: swap two interior letters
            j = int(rng.integers(1, len(w) - 2))
            out.append(w[:j] + w[j + 1] + w[j] + w[j + 2 :])
        elif op == 1 and "\n" not in w:  # delete the word
            continue
        elif op == 2:  # insert a filler word before it
            out += [_FILLERS[int(rng.integers(len(_FILLERS)))], w]
        else:  # duplicate it
            out += [w, w]
    return " ".join(out)


def _reorder(article: data.Article, rng: np.random.Generator) -> str | None:
    """The extract's sentences rotated by 1..n-1 places (None when there is only one sentence)."""
    sents = split_sentences(article.extract)
    if len(sents) < 2:
        return None
    r = int(rng.integers(1, len(sents)))
    extract = " ".join(sents[r:] + sents[:r])
    head = article.text[: len(article.text) - len(article.extract)]
    return head + extract


def _keyword_spam(article: data.Article, rng: np.random.Generator) -> str:
    kws = _keywords(article) + article.title.lower().split()[:3]
    n = int(rng.integers(40, 150))
    words = [kws[int(i)] for i in rng.integers(len(kws), size=n)]
    for i in range(0, n, int(rng.integers(5, 12))):
        words[i] = words[i] + ","
    return "Tags: " + " ".join(words)


def _seo(article: data.Article, rng: np.random.Generator) -> str:
    kw = _keywords(article, 3)
    lines = []
    for i in rng.integers(len(_SEO_LINES), size=int(rng.integers(6, 14))):
        fill = dict(t=article.title, topic=article.topic, year=int(rng.integers(2015, 2025)))
        fill["kw"] = kw[int(rng.integers(len(kw)))]
        lines.append(_SEO_LINES[int(i)].format(**fill))
    return "\n".join(lines)


def _random_chars(article: data.Article, rng: np.random.Generator) -> str:
    n = int(np.clip(len(article.text), 100, 1500))
    chars = _RANDOM_ALPHABET[rng.integers(len(_RANDOM_ALPHABET), size=n)]
    chars[rng.random(n) < 0.15] = " "
    return "".join(chars.tolist()).strip() or "x"


def _truncated(article: data.Article, rng: np.random.Generator) -> str:
    words = article.text.split()
    frag = " ".join(words[: int(rng.integers(3, 12))])
    if rng.random() < 0.5 and len(frag) > 8:
        frag = frag[: -int(rng.integers(1, 4))]  # cut inside the last word
    return frag


def _model_samples(arts: list[data.Article], config: CrawlConfig) -> list[str]:
    """``title + "\\n"`` continued by the sampler, all prompts in one batch.

    Prompts are cut to their last 8 tokens and left-padded with ``<|endoftext|>`` (the
    document separator the patient saw before every article), so one ``generate`` call of
    ``sample_tokens`` steps makes every sample (sampled with the Gumbel-max trick from a
    seeded generator, faster than ``torch.multinomial`` over the 4096-token vocabulary).
    """
    patient = zoo.load("tiny")
    model, tok = patient.model, patient.tokenizer
    if config.sampler == "untrained":
        state = torch.random.get_rng_state()
        torch.manual_seed(config.seed)
        model = TinyLM(zoo.RECIPES["tiny"][0]).eval()
        torch.random.set_rng_state(state)
    gen = torch.Generator().manual_seed(config.seed)
    eot = tok.token_to_id(data.EOT)
    width = 8
    prompts = [tok.encode(a.title + "\n").ids[-width:] for a in arts]
    idx = torch.tensor([[eot] * (width - len(p)) + p for p in prompts], dtype=torch.long)  # (B, 8)
    out = []
    with torch.inference_mode():  # Gumbel-max sampling: argmax(z / T + g), g ~ Gumbel(0, 1), is softmax sampling
        cache = model.new_cache(len(idx), width + config.sample_tokens)
        logits = model(idx, cache=cache)[:, -1]  # (B, V)
        for _ in range(config.sample_tokens):
            u = torch.rand(logits.shape, generator=gen).clamp_(min=1e-12)
            nxt = (logits / config.sample_temperature - torch.log(-torch.log(u))).argmax(-1, keepdim=True)  # (B, 1)
            out.append(nxt)
            logits = model(nxt, cache=cache)[:, -1]
    ids = torch.cat([idx, *out], dim=1)
    return [tok.decode([t for t in seq if t != eot]).strip() or "x" for seq in ids.tolist()]


def build_crawl(config: CrawlConfig | None = None, *, articles: Sequence[data.Article] | None = None) -> Crawl:
    """Build the labelled noisy crawl (see the module docstring); deterministic in ``config.seed``.

    ``articles`` defaults to the whole corpus; tests pass a few hundred. ``source`` indexes
    into ``articles``. Takes a few seconds for the whole corpus (the model samples are one
    batched generation per prompt length with the tiny patient).
    """
    config = CrawlConfig() if config is None else check_type("config", config, CrawlConfig)
    arts = list(data.load_articles() if articles is None else articles)
    if not arts:
        raise ValueError("articles must not be empty")
    for i, a in enumerate(arts):
        check_type(f"articles[{i}]", a, data.Article)
    n = len(arts)
    rng = np.random.default_rng(config.seed)
    splits = [data.split_of(a.title) for a in arts]
    t_pub = rng.random(n)
    rows: list[tuple[float, str, str, str, int]] = [(t_pub[i], arts[i].text, "clean", "original", i) for i in range(n)]

    def later(src: int) -> float:
        return float(t_pub[src] + rng.random())

    # exact duplicates: a Zipf number of copies for a random dup_fraction of the articles
    dup_src = np.sort(rng.choice(n, size=round(config.dup_fraction * n), replace=False))
    copies = np.minimum(rng.zipf(config.zipf_a, size=len(dup_src)), config.max_copies)
    for src, c in zip(dup_src.tolist(), copies.tolist()):
        for _ in range(c):
            if rng.random() < 0.5:
                rows.append((later(src), arts[src].text, "exact_dup", "copy", src))
            else:
                rows.append((later(src), _reformat(arts[src].text, rng), "exact_dup", "copy_reformatted", src))

    # near duplicates: one per chosen article, the kinds in equal numbers
    n_near = round(config.near_dup_fraction * n)
    multi = [i for i, a in enumerate(arts) if len(split_sentences(a.extract)) >= 2]
    per_kind = [n_near // 3 + (k < n_near % 3) for k in range(3)]
    for kind, m in zip(NEAR_DUP_KINDS, per_kind):
        pool = multi if kind == "reorder" else range(n)
        srcs = np.sort(rng.choice(np.asarray(pool), size=min(m, len(pool)), replace=False)).tolist()
        for src in srcs:
            a = arts[src]
            if kind == "boilerplate":
                text = _boilerplate(a, rng)
            elif kind == "edit":
                text = _edit(a.text, config.edit_rate, rng)
            else:
                text = _reorder(a, rng) or _edit(a.text, config.edit_rate, rng)
            if normalize(text) == normalize(a.text):  # e.g. a rotation of identical sentences
                text = _edit(text, config.edit_rate, rng)
            rows.append((later(src), text, "near_dup", kind, src))

    # low quality
    m = config.low_quality_per_kind
    makers = {"keyword_spam": _keyword_spam, "seo_template": _seo, "random_chars": _random_chars}
    makers["truncated"] = _truncated
    for kind in LOW_QUALITY_KINDS:
        if m == 0:
            break
        srcs = np.sort(rng.choice(n, size=min(m, n), replace=False)).tolist()
        if kind == "model_sample":
            texts = _model_samples([arts[s] for s in srcs], config)
        else:
            texts = [makers[kind](arts[s], rng) for s in srcs]
        rows += [(later(s), t, "low_quality", kind, s) for s, t in zip(srcs, texts)]

    order = sorted(range(len(rows)), key=lambda j: (rows[j][0], j))
    docs = tuple(
        CrawlDoc(
            doc_id=pos, text=rows[j][1], label=rows[j][2], kind=rows[j][3], source=rows[j][4], split=splits[rows[j][4]]
        )
        for pos, j in enumerate(order)
    )
    return Crawl(docs=docs, config=config, n_articles=n)


# =========================================================================== exact dedup

_WS = re.compile(r"\s+")
_WORD = re.compile(r"\w+")


def normalize(text: str) -> str:
    """Unicode NFKC, case-folded, every whitespace run one space, stripped: what exact dedup compares."""
    check_type("text", text, str)
    return _WS.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


@dataclass(frozen=True)
class DedupResult:
    """``keep[i]``: document ``i`` is the first of its group; ``group[i]``: index of that first document."""

    keep: np.ndarray
    group: np.ndarray

    @property
    def n_removed(self) -> int:
        return int((~self.keep).sum())


def exact_dedup(texts: Sequence[str], *, normalized: bool = True) -> DedupResult:
    """Keep the first document of each (normalised) text: one 16-byte BLAKE2b digest per document.

    A hash table of digests is :math:`O(n)`; the digest is long enough that a collision
    between different texts has probability about :math:`n^2 / 2^{129}` (never, here).
    """
    texts = _check_texts("texts", texts)
    check_bool("normalized", normalized)
    first: dict[bytes, int] = {}
    group = np.empty(len(texts), dtype=np.int64)
    for i, t in enumerate(texts):
        key = hashlib.blake2b((normalize(t) if normalized else t).encode(), digest_size=16).digest()
        group[i] = first.setdefault(key, i)
    return DedupResult(keep=group == np.arange(len(texts)), group=group)


# =========================================================================== shingles and MinHash


def words(text: str) -> list[str]:
    """The word tokens shingles are made of: ``\\w+`` runs of the NFKC, case-folded text."""
    check_type("text", text, str)
    return _WORD.findall(unicodedata.normalize("NFKC", text).casefold())


def shingles(text: str, *, k: int = 5) -> set[tuple[str, ...]]:
    """The set of word ``k``-grams (the reference; :func:`shingle_sets` is the fast hashed form).

    A text with fewer than ``k`` words is one shingle (all its words), so every text with a
    word has a non-empty set.
    """
    check_int("k", k, min=1)
    w = words(text)
    if not w:
        raise ValueError("text must contain at least one word")
    if len(w) < k:
        return {tuple(w)}
    return {tuple(w[i : i + k]) for i in range(len(w) - k + 1)}


_FNV_OFFSET, _FNV_PRIME = np.uint32(2166136261), np.uint32(16777619)


class _WordHashes(dict):
    """word -> CRC-32 of its UTF-8 bytes, computed once per distinct word (``map(h.__getitem__, words)`` runs in C)."""

    def __missing__(self, word: str) -> int:
        h = self[word] = zlib.crc32(word.encode())
        return h


def _ranges(starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """The concatenation of ``arange(s, s + l)`` for each (s, l), without a Python loop."""
    total = int(lens.sum())
    return np.repeat(starts - np.cumsum(lens) + lens, lens) + np.arange(total)


def _shingle_flat(texts: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
    """All documents' unique shingle hashes, concatenated (sorted within each document), and (n+1,) offsets."""
    cache = _WordHashes()
    per_doc: list[list[int]] = []
    for i, t in enumerate(texts):
        w = words(t)
        if not w:
            raise ValueError(f"texts[{i}] must contain at least one word (texts must not hold empty documents)")
        per_doc.append(list(map(cache.__getitem__, w)))
    lens = np.fromiter(map(len, per_doc), dtype=np.int64, count=len(per_doc))
    flat = np.fromiter(itertools.chain.from_iterable(per_doc), dtype=np.uint32, count=int(lens.sum()))
    starts = np.cumsum(lens) - lens
    width = np.minimum(lens, k)  # a short document is one shingle of all its words
    n_sh = lens - width + 1  # (n,) shingles per document
    sh_start = _ranges(starts, n_sh)
    sh_width = np.repeat(width, n_sh)
    x = np.full(len(sh_start), _FNV_OFFSET, dtype=np.uint32)
    for j in range(k):
        live = sh_width > j
        x[live] = (x[live] ^ flat[sh_start[live] + j]) * _FNV_PRIME
    doc = np.repeat(np.arange(len(texts), dtype=np.uint64), n_sh)
    key = np.sort((doc << np.uint64(32)) | x.astype(np.uint64))  # by document, then hash
    key = key[np.r_[True, key[1:] != key[:-1]]]  # unique
    hashes = (key & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    counts = np.bincount((key >> np.uint64(32)).astype(np.int64), minlength=len(texts))
    return hashes, np.concatenate([[0], np.cumsum(counts)])


def shingle_sets(texts: Sequence[str], *, k: int = 5) -> list[np.ndarray]:
    r"""Each text's word ``k``-shingles as a sorted array of unique 32-bit hashes.

    A word hashes to its CRC-32 (cached per distinct word); a shingle :math:`(w_1..w_k)`
    to the FNV-1a-style fold :math:`x \leftarrow (x \oplus h(w_j)) \cdot 16777619 \bmod 2^{32}`,
    computed for every shingle of every document at once with numpy. Two distinct shingles
    collide with probability about :math:`2^{-32}` per pair — a handful among the crawl's
    million shingles, far below the MinHash error.
    """
    texts = _check_texts("texts", texts)
    check_int("k", k, min=1)
    flat, offsets = _shingle_flat(texts, k)
    return np.split(flat, offsets[1:-1])


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finaliser: a fixed bijection that spreads every input bit over the output."""
    h = h.astype(np.uint32)
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


class MinHasher:
    r"""MinHash signatures with ``num_perm`` hash permutations :math:`h_i(x) = (a_i\,f(x) + b_i) \bmod 2^{32}`.

    :math:`f` is MurmurHash3's finaliser (a fixed bijection), :math:`a_i` odd and
    :math:`b_i` uniform, drawn from ``numpy.random.RandomState(seed)`` exactly as
    datasketch's ``MinHash(num_perm, seed, scheme="affine32")`` draws them; the signature of
    a set :math:`S` is :math:`\big(\min_{x \in S} h_i(x)\big)_{i=1..P}`.
    """

    def __init__(self, num_perm: int = 128, *, seed: int = 1):
        self.num_perm = check_int("num_perm", num_perm, min=1, max=4096)
        self.seed = check_int("seed", seed, min=0, max=2**32 - 1)
        gen = np.random.RandomState(seed)
        self.a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)  # odd
        self.b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint64).astype(np.uint32)

    def signatures_from_sets(self, sets: Sequence[np.ndarray], *, chunk: int = 1 << 15) -> np.ndarray:
        """(n, num_perm) uint32 signatures of hashed shingle sets (each a non-empty 1-D integer array)."""
        if isinstance(sets, np.ndarray) or not isinstance(sets, (list, tuple)):
            raise TypeError(f"sets must be a list of 1-D integer arrays, got {type(sets).__name__}")
        check_int("chunk", chunk, min=1)
        lens = np.array([len(s) for s in sets], dtype=np.int64)
        if len(sets) == 0:
            raise ValueError("sets must not be empty")
        if (lens == 0).any():
            raise ValueError(f"sets[{int(np.argmin(lens))}] is empty: every document needs at least one shingle")
        flat = _fmix32(np.concatenate([np.asarray(s).astype(np.uint32) for s in sets]))  # (N,)
        offsets = np.concatenate([[0], np.cumsum(lens)])
        out = np.empty((len(sets), self.num_perm), dtype=np.uint32)
        d0 = 0
        while d0 < len(sets):  # documents in chunks of about `chunk` shingles: (N_c, P) at a time
            d1 = max(d0 + 1, int(np.searchsorted(offsets, offsets[d0] + chunk, side="right")) - 1)
            d1 = min(d1, len(sets))
            v = flat[offsets[d0] : offsets[d1], None] * self.a + self.b  # (N_c, P), wraps mod 2^32
            out[d0:d1] = np.minimum.reduceat(v, offsets[d0:d1] - offsets[d0], axis=0)
            d0 = d1
        return out

    def signatures(self, texts: Sequence[str], *, k: int = 5) -> np.ndarray:
        """(n, num_perm) signatures of the texts' word ``k``-shingles."""
        return self.signatures_from_sets(shingle_sets(texts, k=k))


def jaccard(a, b) -> float:
    """Exact Jaccard similarity :math:`|A \\cap B| / |A \\cup B|` of two sets or 1-D arrays of unique values."""
    sa = a if isinstance(a, (set, frozenset)) else set(np.asarray(a).tolist())
    sb = b if isinstance(b, (set, frozenset)) else set(np.asarray(b).tolist())
    if not sa and not sb:
        raise ValueError("a and b must not both be empty")
    return len(sa & sb) / len(sa | sb)


def estimate_jaccard(sig_a, sig_b) -> np.ndarray | float:
    """Fraction of equal signature entries (row-wise for 2-D input): an unbiased estimate of Jaccard.

    Each entry agrees with probability :math:`J`, independently for ideal permutations, so
    the estimate has standard error :math:`\\sqrt{J(1-J)/P}`.
    """
    a, b = np.asarray(sig_a), np.asarray(sig_b)
    if a.shape != b.shape or a.ndim not in (1, 2) or a.shape[-1] == 0:
        raise ValueError(f"sig_a and sig_b must have the same 1-D or 2-D shape, got {a.shape} and {b.shape}")
    est = (a == b).mean(axis=-1)
    return float(est) if a.ndim == 1 else est


def candidate_probability(s, bands: int, rows: int):
    """The LSH S-curve :math:`1 - (1 - s^r)^b`: probability that a pair of Jaccard ``s`` becomes a candidate."""
    check_int("bands", bands, min=1)
    check_int("rows", rows, min=1)
    arr = np.asarray(s, dtype=np.float64)
    if not np.all(np.isfinite(arr)) or arr.min(initial=0) < 0 or arr.max(initial=0) > 1:
        raise ValueError(f"s must be in [0, 1], got {s!r}")
    p = 1 - (1 - arr**rows) ** bands
    return float(p) if np.ndim(s) == 0 else p


def lsh_threshold(bands: int, rows: int) -> float:
    """:math:`(1/b)^{1/r}`: about where the S-curve is steepest (candidate probability near 1 - 1/e)."""
    check_int("bands", bands, min=1)
    check_int("rows", rows, min=1)
    return (1 / bands) ** (1 / rows)


def choose_bands(num_perm: int, threshold: float, *, fn_weight: float = 0.5) -> tuple[int, int]:
    """``(bands, rows)`` with ``bands * rows <= num_perm`` minimising weighted false-positive and -negative areas.

    False-positive area :math:`\\int_0^t P(s)\\,ds`, false-negative area
    :math:`\\int_t^1 (1 - P(s))\\,ds`, weighted ``1 - fn_weight`` and ``fn_weight`` — the
    rule datasketch's ``MinHashLSH`` uses to pick its parameters.
    """
    check_int("num_perm", num_perm, min=1)
    check_probability("threshold", threshold)
    check_probability("fn_weight", fn_weight)
    best, best_cost = (1, num_perm), math.inf
    lo, hi = np.linspace(0, threshold, 201), np.linspace(threshold, 1, 201)
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp = np.trapezoid(candidate_probability(lo, b, r), lo)
            fn = np.trapezoid(1 - candidate_probability(hi, b, r), hi)
            cost = (1 - fn_weight) * fp + fn_weight * fn
            if cost < best_cost - 1e-15:
                best, best_cost = (b, r), cost
    return best


def _check_band_shape(bands: int, rows: int, num_perm: int) -> None:
    if bands * rows != num_perm:
        raise ValueError(f"bands * rows must equal num_perm, got bands={bands}, rows={rows}, num_perm={num_perm}")


_FNV64_OFFSET, _FNV64_PRIME = np.uint64(0xCBF29CE484222325), np.uint64(0x100000001B3)


def _fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser (a bijection of 64-bit integers)."""
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> np.uint64(33))
    h = h * np.uint64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> np.uint64(33))


def _pairs_in_runs(keys: np.ndarray, n: int) -> np.ndarray:
    """Codes ``i * n + j`` (i < j) of every pair of positions whose ``keys`` are equal, vectorised."""
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    starts = np.flatnonzero(np.r_[True, sk[1:] != sk[:-1]])
    sizes = np.diff(np.r_[starts, len(sk)])
    run = np.repeat(np.arange(len(starts)), sizes)
    later = sizes[run] - 1 - (np.arange(len(sk)) - starts[run])  # members after this one in its run
    a = np.repeat(np.arange(len(sk)), later)
    b = a + 1 + (np.arange(len(a)) - np.repeat(np.cumsum(later) - later, later))
    i, j = order[a], order[b]
    return np.minimum(i, j) * n + np.maximum(i, j)


class LSHIndex:
    r"""Banded LSH over MinHash signatures (``bands`` × ``rows`` = the signature length).

    Each band's ``rows`` values are folded into one 64-bit bucket key (FNV-1a over the
    values, then MurmurHash3's finaliser); two different bands collide with probability
    :math:`2^{-64}`, so "same key" is "same rows" for every practical purpose. Buckets are
    kept as sorted key arrays per band: :meth:`query` is a binary search per band
    (:math:`O(b \log n)`), :meth:`candidate_pairs` one sort per band.
    """

    def __init__(self, bands: int, rows: int):
        self.bands = check_int("bands", bands, min=1)
        self.rows = check_int("rows", rows, min=1)
        self.keys = np.zeros((0, bands), dtype=np.uint64)  # (n, b)
        self._sorted: tuple[np.ndarray, np.ndarray] | None = None  # per band: sorted keys (b, n), ids (b, n)

    @property
    def n(self) -> int:
        return len(self.keys)

    def _check_sigs(self, signatures, rank: int) -> np.ndarray:
        sig = np.asarray(signatures)
        if sig.ndim != rank or sig.dtype.kind not in "ui":
            raise ValueError(f"signatures must be a {rank}-D integer array, got shape {sig.shape} dtype {sig.dtype}")
        if sig.shape[-1] != self.bands * self.rows:
            raise ValueError(
                f"signatures must have bands * rows = {self.bands * self.rows} entries (num_perm), got {sig.shape[-1]}"
            )
        return sig

    def band_keys(self, signatures) -> np.ndarray:
        """(m, bands) uint64 bucket keys of (m, bands * rows) signatures."""
        sig = self._check_sigs(signatures, 2).astype(np.uint64).reshape(-1, self.bands, self.rows)  # (m, b, r)
        key = np.full(sig.shape[:2], _FNV64_OFFSET, dtype=np.uint64)
        for j in range(self.rows):
            key = (key ^ sig[:, :, j]) * _FNV64_PRIME
        return _fmix64(key)

    def add(self, signatures) -> np.ndarray:
        """Insert (m, bands * rows) signatures; returns their ids (consecutive from the current size)."""
        keys = self.band_keys(signatures)
        ids = np.arange(self.n, self.n + len(keys))
        self.keys = np.concatenate([self.keys, keys])
        self._sorted = None
        return ids

    def query(self, signature) -> np.ndarray:
        """Sorted ids of every inserted document sharing at least one band with ``signature`` (bands * rows,)."""
        q = self.band_keys(self._check_sigs(signature, 1)[None])[0]  # (b,)
        if self._sorted is None:
            order = np.argsort(self.keys, axis=0, kind="stable").T  # (b, n)
            self._sorted = (np.take_along_axis(self.keys.T, order, axis=1), order)
        sk, ids = self._sorted
        found = [
            ids[band, np.searchsorted(sk[band], q[band]) : np.searchsorted(sk[band], q[band], "right")]
            for band in range(self.bands)
        ]
        return np.unique(np.concatenate(found)).astype(np.int64)

    def candidate_pairs(self) -> np.ndarray:
        """(P, 2) sorted unique pairs ``i < j`` that share at least one band's bucket."""
        if self.n < 2:
            return np.zeros((0, 2), dtype=np.int64)
        code = np.unique(np.concatenate([_pairs_in_runs(self.keys[:, b], self.n) for b in range(self.bands)]))
        return np.stack([code // self.n, code % self.n], axis=1)


def pair_jaccard(flat: np.ndarray, offsets: np.ndarray, pairs: np.ndarray, *, chunk: int = 1 << 20) -> np.ndarray:
    """(P,) exact Jaccard of document pairs, from concatenated per-document unique hashes and offsets.

    Vectorised: for a chunk of pairs, both documents' hashes are tagged with the pair's
    number and sorted; equal neighbours are the intersection.
    """
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    lens = np.diff(offsets)
    out = np.empty(len(pairs))
    p0 = 0
    while p0 < len(pairs):
        size = lens[pairs[p0:, 0]] + lens[pairs[p0:, 1]]
        p1 = p0 + max(1, int(np.searchsorted(np.cumsum(size), chunk)))
        i, j = pairs[p0:p1, 0], pairs[p0:p1, 1]
        li, lj = lens[i], lens[j]
        pid = np.concatenate([np.repeat(np.arange(len(i)), li), np.repeat(np.arange(len(i)), lj)]).astype(np.uint64)
        h = np.concatenate([flat[_ranges(offsets[i], li)], flat[_ranges(offsets[j], lj)]]).astype(np.uint64)
        key = np.sort((pid << np.uint64(32)) | h)
        same = key[1:] == key[:-1]
        inter = np.bincount((key[1:][same] >> np.uint64(32)).astype(np.int64), minlength=len(i))
        out[p0:p1] = inter / (li + lj - inter)
        p0 = p1
    return out


def _clusters(n: int, pairs: np.ndarray) -> np.ndarray:
    """Union-find: ``root[i]`` = smallest index of ``i``'s connected component."""
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for i, j in pairs.tolist():
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    return np.array([find(i) for i in range(n)], dtype=np.int64)


@dataclass(frozen=True)
class NearDupResult:
    """Candidates from LSH, the pairs verified at ``>= threshold`` with their Jaccard, clusters and the keep mask."""

    candidates: np.ndarray  # (C, 2)
    pairs: np.ndarray  # (P, 2) verified
    similarity: np.ndarray  # (P,)
    cluster: np.ndarray  # (n,) smallest index of the cluster
    keep: np.ndarray  # (n,) bool: first document of its cluster
    signatures: np.ndarray = field(repr=False)  # (n, num_perm)

    @property
    def n_removed(self) -> int:
        return int((~self.keep).sum())


def near_dedup(
    texts: Sequence[str],
    *,
    threshold: float = 0.5,
    num_perm: int = 128,
    bands: int = 32,
    rows: int = 4,
    k: int = 5,
    seed: int = 1,
    verify: str = "exact",
) -> NearDupResult:
    """Near-duplicate removal: shingle, MinHash, LSH candidates, verify at ``threshold``, cluster, keep first.

    ``verify="exact"`` checks each candidate pair's exact Jaccard on the hashed shingle
    sets; ``"minhash"`` uses the signature estimate (faster, noisier).
    """
    texts = _check_texts("texts", texts)
    check_probability("threshold", threshold)
    check_int("num_perm", num_perm, min=1, max=4096)
    check_int("bands", bands, min=1)
    check_int("rows", rows, min=1)
    _check_band_shape(bands, rows, num_perm)
    check_choice("verify", verify, VERIFY)
    flat, offsets = _shingle_flat(texts, k)
    sig = MinHasher(num_perm, seed=seed).signatures_from_sets(np.split(flat, offsets[1:-1]))
    index = LSHIndex(bands, rows)
    index.add(sig)
    cand = index.candidate_pairs()
    if verify == "minhash":
        sim = (sig[cand[:, 0]] == sig[cand[:, 1]]).mean(axis=1) if len(cand) else np.zeros(0)
    else:
        sim = pair_jaccard(flat, offsets, cand)
    ok = sim >= threshold
    pairs = cand[ok]
    cluster = _clusters(len(texts), pairs)
    return NearDupResult(
        candidates=cand,
        pairs=pairs,
        similarity=sim[ok],
        cluster=cluster,
        keep=cluster == np.arange(len(texts)),
        signatures=sig,
    )


@dataclass(frozen=True)
class NearDupPair:
    """Two articles (indices into ``data.load_articles()``) and their exact shingle Jaccard."""

    i: int
    j: int
    jaccard: float


def natural_near_duplicates(
    *,
    threshold: float = 0.25,
    field: str = "extract",
    k: int = 3,
    num_perm: int = 128,
    bands: int | None = None,
    rows: int | None = None,
) -> list[NearDupPair]:
    """The corpus' own near duplicates (template-like articles), most similar first.

    ``field`` is ``"extract"`` (the summary, where templates show) or ``"text"`` (title,
    description and extract — what the crawl holds). The articles are distinct pages, so
    their similarities are low (the tests and the chapter measure how low); short
    shingles (``k = 3``) and a low threshold find the template-like pairs. Bands and rows
    default to :func:`choose_bands` for the threshold.
    """
    check_choice("field", field, ("extract", "text"))
    check_probability("threshold", threshold)
    if (bands is None) != (rows is None):
        raise ValueError(f"bands and rows must be given together, got bands={bands}, rows={rows}")
    if bands is None:
        bands, rows = choose_bands(num_perm, threshold)
        num_perm = bands * rows
    texts = [getattr(a, field) for a in data.load_articles()]
    res = near_dedup(texts, threshold=threshold, k=k, num_perm=num_perm, bands=bands, rows=rows)
    found = [NearDupPair(int(i), int(j), round(float(s), 6)) for (i, j), s in zip(res.pairs.tolist(), res.similarity)]
    return sorted(found, key=lambda p: (-p.jaccard, p.i, p.j))


# =========================================================================== quality filters

#: Gopher's stop words: a document of natural English has at least two of them.
GOPHER_STOPWORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})
_TERMINAL = (".", "!", "?", '"', "'", ")", "”", "’")


@dataclass(frozen=True)
class HeuristicRules:
    """Thresholds of the rule filter (Gopher, Rae et al. 2021 App. A, unless noted).

    Gopher asks for at least 50 words; our clean documents are summaries and many are
    shorter, so the default is lower (``min_words``; the tests measure what 50 would cost).
    """

    min_words: int = 20
    max_words: int = 100_000
    min_mean_word_len: float = 3.0
    max_mean_word_len: float = 10.0
    max_symbol_ratio: float = 0.1  # '#' and ellipses per word
    max_digit_ratio: float = 0.25  # digits per character (not Gopher)
    min_alpha_words: float = 0.8  # share of words with a letter
    min_stopwords: int = 2
    max_dup_line_frac: float = 0.3
    max_dup_line_char_frac: float = 0.2
    max_top_ngram_frac: tuple[float, float, float] = (0.2, 0.18, 0.16)  # n = 2, 3, 4
    max_dup_ngram_frac: tuple[float, ...] = (0.15, 0.14, 0.13, 0.12, 0.11, 0.10)  # n = 5..10
    require_terminal_punct: bool = True  # C4: the last line ends like a sentence

    def __post_init__(self):
        check_int("min_words", self.min_words, min=0)
        check_int("max_words", self.max_words, min=self.min_words)
        check_float("min_mean_word_len", self.min_mean_word_len, min=0)
        check_float("max_mean_word_len", self.max_mean_word_len, min=self.min_mean_word_len)
        for name in ("max_symbol_ratio", "max_digit_ratio", "min_alpha_words", "max_dup_line_frac"):
            check_probability(name, getattr(self, name))
        check_probability("max_dup_line_char_frac", self.max_dup_line_char_frac)
        check_int("min_stopwords", self.min_stopwords, min=0)
        for name, n in (("max_top_ngram_frac", 3), ("max_dup_ngram_frac", 6)):
            v = getattr(self, name)
            if not isinstance(v, tuple) or len(v) != n:
                raise ValueError(f"{name} must be a tuple of {n} fractions, got {v!r}")
            for x in v:
                check_probability(name, x)
        check_bool("require_terminal_punct", self.require_terminal_punct)


RULE_NAMES = (
    "word_count",
    "mean_word_length",
    "symbol_ratio",
    "digit_ratio",
    "alpha_words",
    "stopwords",
    "dup_lines",
    "top_ngram",
    "dup_ngram",
    "terminal_punct",
)


def _ngram_stats(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Gopher's repetition statistics of every document at once: ``top`` (n, 3) and ``dup`` (n, 6).

    Words are lower-cased ``\\w+`` tokens; an n-gram's characters are the sum of its words'
    lengths, and both fractions are over all word characters of the document.
    ``top[:, n-2]`` (n = 2, 3, 4): characters in all occurrences of the most frequent
    n-gram (0 when no n-gram repeats; ties: the one that occurs first).
    ``dup[:, n-5]`` (n = 5..10): characters of words covered by a *repeat* (second or later
    occurrence) of some n-gram; overlapping repeats count once.
    An n-gram is a 64-bit polynomial hash of its word ids keyed with its document
    (collisions: about :math:`2^{-64}` per pair).
    """
    cache = _WordHashes()
    ids: list[int] = []
    lens: list[int] = []
    doc_len = []
    for t in texts:
        w = _WORD.findall(t.lower())
        ids += map(cache.__getitem__, w)
        lens += map(len, w)
        doc_len.append(len(w))
    n_docs = len(texts)
    top = np.zeros((n_docs, 3))
    dup = np.zeros((n_docs, 6))
    if not ids:
        return top, dup
    wid = np.asarray(ids, dtype=np.uint64)  # CRC-32 of each word
    wlen = np.asarray(lens, dtype=np.int64)
    dl = np.asarray(doc_len, dtype=np.int64)
    doc = np.repeat(np.arange(n_docs), dl)
    pos = np.arange(len(wid)) - np.repeat(np.cumsum(dl) - dl, dl)  # position inside its document
    safe_total = np.maximum(np.bincount(doc, weights=wlen, minlength=n_docs), 1)
    csum = np.concatenate([[0], np.cumsum(wlen)])
    salt = _fmix64(doc.astype(np.uint64) + np.uint64(1))  # keys differ between documents
    h = wid + np.uint64(1)
    mult = np.uint64(1_000_003)
    for n in range(2, 11):
        h = h[:-1] * mult + wid[n - 1 :] + np.uint64(1)  # hash of the n-gram starting at each word
        m = len(h)
        valid = pos[:m] + n <= dl[doc[:m]]
        s = np.flatnonzero(valid)
        if len(s) == 0:
            continue
        d = doc[s]
        key = h[s] ^ salt[s]
        order = np.argsort(key)
        sk = key[order]
        starts = np.flatnonzero(np.r_[True, sk[1:] != sk[:-1]])
        sizes = np.diff(np.r_[starts, len(sk)])
        count = np.empty(len(s), dtype=np.int64)
        count[order] = np.repeat(sizes, sizes)  # occurrences of each position's n-gram in its document
        first = np.minimum.reduceat(order, starts)  # earliest position of each distinct n-gram
        chars = csum[s + n] - csum[s]
        if n <= 4:
            best = np.zeros(n_docs, dtype=np.int64)
            np.maximum.at(best, d, count)
            is_top = (count == best[d]) & (count >= 2)
            # the first position (in text order) holding a most frequent n-gram
            first_top = np.full(n_docs, -1, dtype=np.int64)
            cand = np.flatnonzero(is_top)[::-1]  # assigning in reverse leaves the earliest
            first_top[d[cand]] = cand
            hit = first_top >= 0
            top[hit, n - 2] = (count[first_top[hit]] * chars[first_top[hit]]) / safe_total[hit]
        else:
            repeat = np.ones(len(s), dtype=bool)
            repeat[first] = False  # the first occurrence of an n-gram is not a repeat
            diff = np.zeros(len(wid) + 1, dtype=np.int64)
            np.add.at(diff, s[repeat], 1)
            np.add.at(diff, s[repeat] + n, -1)
            covered = np.cumsum(diff)[:-1] > 0
            dup[:, n - 5] = np.bincount(doc, weights=wlen * covered, minlength=n_docs) / safe_total
    return top, dup


_HAS_LETTER = re.compile(r"\S*[^\W\d_]\S*")
_DIGIT = re.compile(r"\d")


def heuristic_features(texts: Sequence[str]) -> dict[str, np.ndarray]:
    """Per-document statistics the rules threshold (each an (n,) array; the n-gram ones (n, 3) and (n, 6))."""
    texts = _check_texts("texts", texts)
    out: dict[str, list] = {k: [] for k in ("n_words", "mean_word_len", "symbol_ratio", "digit_ratio", "alpha_words")}
    out |= {"stopwords": [], "dup_line_frac": [], "dup_line_char_frac": [], "terminal_punct": []}
    for t in texts:
        w = t.split()
        nw = len(w)
        out["n_words"].append(nw)
        out["mean_word_len"].append(sum(map(len, w)) / nw if nw else 0.0)
        symbols = t.count("#") + t.count("...") + t.count("\u2026")
        out["symbol_ratio"].append(symbols / max(nw, 1))
        out["digit_ratio"].append(len(_DIGIT.findall(t)) / max(len(t), 1))
        out["alpha_words"].append(len(_HAS_LETTER.findall(t)) / max(nw, 1))
        out["stopwords"].append(len(GOPHER_STOPWORDS.intersection(_WORD.findall(t.lower()))))
        lines = [ln.strip() for ln in t.splitlines() if ln.strip()]
        seen: set[str] = set()
        dup_n = dup_c = 0
        for ln in lines:
            if ln in seen:
                dup_n += 1
                dup_c += len(ln)
            seen.add(ln)
        out["dup_line_frac"].append(dup_n / max(len(lines), 1))
        out["dup_line_char_frac"].append(dup_c / max(sum(map(len, lines)), 1))
        out["terminal_punct"].append(bool(lines) and lines[-1].endswith(_TERMINAL))
    feats = {k: np.asarray(v) for k, v in out.items()}
    feats["top_ngram_frac"], feats["dup_ngram_frac"] = _ngram_stats(texts)
    return feats


def heuristic_flags(texts: Sequence[str], rules: HeuristicRules | None = None) -> dict[str, np.ndarray]:
    """Rule name -> (n,) bool, True where the document *fails* the rule (see :data:`RULE_NAMES`)."""
    rules = HeuristicRules() if rules is None else check_type("rules", rules, HeuristicRules)
    f = heuristic_features(texts)
    nw = f["n_words"]
    return {
        "word_count": (nw < rules.min_words) | (nw > rules.max_words),
        "mean_word_length": (f["mean_word_len"] < rules.min_mean_word_len)
        | (f["mean_word_len"] > rules.max_mean_word_len),
        "symbol_ratio": f["symbol_ratio"] > rules.max_symbol_ratio,
        "digit_ratio": f["digit_ratio"] > rules.max_digit_ratio,
        "alpha_words": f["alpha_words"] < rules.min_alpha_words,
        "stopwords": f["stopwords"] < rules.min_stopwords,
        "dup_lines": (f["dup_line_frac"] > rules.max_dup_line_frac)
        | (f["dup_line_char_frac"] > rules.max_dup_line_char_frac),
        "top_ngram": (f["top_ngram_frac"] > np.asarray(rules.max_top_ngram_frac)).any(axis=1),
        "dup_ngram": (f["dup_ngram_frac"] > np.asarray(rules.max_dup_ngram_frac)).any(axis=1),
        "terminal_punct": ~f["terminal_punct"] if rules.require_terminal_punct else np.zeros(len(nw), dtype=bool),
    }


def heuristic_filter(texts: Sequence[str], rules: HeuristicRules | None = None) -> np.ndarray:
    """(n,) bool: the document fails at least one rule."""
    flags = heuristic_flags(texts, rules)
    return np.logical_or.reduce(list(flags.values()))


def perplexity_scores(texts: Sequence[str], patient=None, *, max_tokens: int = 64, batch_size: int = 64) -> np.ndarray:
    r"""(n,) mean next-token loss (nats/token) of each text's first ``max_tokens`` tokens under the patient.

    The input is ``<|endoftext|>`` followed by the tokens, so even a one-token document has
    one prediction: :math:`\bar\ell = -\frac{1}{T}\sum_t \log p(x_t \mid x_{<t})`;
    perplexity is :math:`e^{\bar\ell}`. Texts are sorted by length and right-padded in
    batches (a causal model never sees the padding of a position before it).
    """
    texts = _check_texts("texts", texts)
    check_int("max_tokens", max_tokens, min=1, max=255)
    check_int("batch_size", batch_size, min=1)
    patient = zoo.load("tiny") if patient is None else patient
    tok, model = patient.tokenizer, patient.model
    eot = tok.token_to_id(data.EOT)
    ids = [[eot] + e.ids[:max_tokens] for e in tok.encode_batch(texts)]
    for i, x in enumerate(ids):
        if len(x) < 2:
            raise ValueError(f"texts[{i}] has no tokens (texts must not hold empty documents)")
    order = np.argsort([len(x) for x in ids], kind="stable")
    out = np.empty(len(texts))
    device = next(model.parameters()).device
    with torch.inference_mode():
        for b0 in range(0, len(order), batch_size):
            rows = order[b0 : b0 + batch_size]
            t = max(len(ids[i]) for i in rows)
            batch = torch.full((len(rows), t), eot, dtype=torch.long)
            mask = torch.zeros(len(rows), t - 1, dtype=torch.bool)
            for r, i in enumerate(rows):
                batch[r, : len(ids[i])] = torch.tensor(ids[i])
                mask[r, : len(ids[i]) - 1] = True
            batch = batch.to(device)
            logits = model(batch[:, :-1]).float()  # (B, T-1, V)
            nll = F.cross_entropy(logits.transpose(1, 2), batch[:, 1:], reduction="none").cpu()  # (B, T-1)
            out[rows] = ((nll * mask).sum(1) / mask.sum(1)).double().numpy()
    return out


def perplexity_threshold(patient=None, *, quantile: float = 0.95, max_tokens: int = 64) -> float:
    """The ``quantile`` of the patient's loss on the held-out clean articles (val split).

    Flagging documents above it flags about ``1 - quantile`` of clean unseen text by
    construction: the threshold is set by clean data, never by looking at the noise.
    """
    check_probability("quantile", quantile)
    scores = perplexity_scores([a.text for a in data.articles("val")], patient, max_tokens=max_tokens)
    return float(np.quantile(scores, quantile))


class QualityClassifier:
    r"""Logistic regression on hashed BPE uni- and bigram frequencies: a small linear quality classifier.

    A document's features are the counts of its token unigrams and hashed bigrams
    (:func:`course_lib.cascade.bow_features`, the hashing trick) divided by their total, so
    a long and a short document weigh alike; the score is :math:`z = w^\top x + b` and
    :math:`p(\text{noise} \mid x) = \sigma(z)`. Training minimises the class-balanced
    logistic loss plus :math:`\lambda \lVert w \rVert^2` with full-batch L-BFGS on a
    sparse feature matrix (fastText-style quality classifiers are the same model with
    learned embeddings).
    """

    def __init__(self, *, bits: int = 18, weight_decay: float = 1e-5, steps: int = 60, tokenizer=None):
        self.bits = check_int("bits", bits, min=13, max=24)
        self.weight_decay = check_float("weight_decay", weight_decay, min=0)
        self.steps = check_int("steps", steps, min=1)
        self.tokenizer = data.get_tokenizer() if tokenizer is None else tokenizer
        self.w: torch.Tensor | None = None  # (2**bits,)
        self.b = 0.0

    def features(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The sparse feature matrix as (row, feature, value) triples: relative n-gram frequencies."""
        texts = _check_texts("texts", texts)
        ids = [e.ids or [0] for e in self.tokenizer.encode_batch(texts)]
        f, q = bow_features(ids, bits=self.bits, vocab_size=self.tokenizer.get_vocab_size())
        per_doc = np.bincount(q, minlength=len(texts)).astype(np.float32)
        return torch.from_numpy(q), torch.from_numpy(f), torch.from_numpy(1.0 / per_doc[q])

    @staticmethod
    def _logits(feats, w: torch.Tensor, b: torch.Tensor, n: int) -> torch.Tensor:
        q, f, val = feats
        return torch.zeros(n).index_add(0, q, val * w[f]) + b  # (n,) = X w + b, O(nnz)

    def fit(self, texts: Sequence[str], is_noise) -> QualityClassifier:
        texts = _check_texts("texts", texts)
        y = np.asarray(is_noise)
        if y.shape != (len(texts),) or y.dtype != bool:
            raise ValueError(
                f"is_noise must be a bool array of length {len(texts)}, got shape {y.shape} dtype {y.dtype}"
            )
        if y.all() or not y.any():
            raise ValueError("is_noise must contain both classes")
        x = self.features(texts)
        n = len(texts)
        target = torch.from_numpy(y.astype(np.float32))
        pos_weight = torch.tensor(float((~y).sum() / y.sum()))  # balance the classes
        w = torch.zeros(2**self.bits, requires_grad=True)
        b = torch.zeros(1, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], lr=1, max_iter=self.steps, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            z = self._logits(x, w, b, n)  # (n,)
            loss = F.binary_cross_entropy_with_logits(z, target, pos_weight=pos_weight)
            loss = loss + self.weight_decay * w.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        self.w, self.b = w.detach(), float(b.detach())
        return self

    def scores(self, texts: Sequence[str]) -> np.ndarray:
        """(n,) log-odds that each text is noise."""
        if self.w is None:
            raise ValueError("the classifier is not fitted yet: call fit(texts, is_noise) first")
        with torch.no_grad():
            z = self._logits(self.features(texts), self.w, torch.tensor(self.b), len(texts))
        return z.numpy().astype(np.float64)


def train_quality_classifier(texts: Sequence[str], is_noise, **options) -> QualityClassifier:
    """A :class:`QualityClassifier` fit to separate noise (``is_noise`` True) from clean text."""
    return QualityClassifier(**options).fit(texts, is_noise)


def classifier_scores(model: QualityClassifier, texts: Sequence[str]) -> np.ndarray:
    """(n,) log-odds that each text is noise (flag where > 0)."""
    check_type("model", model, QualityClassifier)
    return model.scores(texts)


@dataclass(frozen=True)
class PrecisionRecall:
    """Counts and rates of a filter against the labels (over the documents in the mask)."""

    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def precision(self) -> float:
        """Of what was flagged, the share that is really positive (1.0 when nothing was flagged)."""
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        """Of the positives, the share flagged (1.0 when there are none)."""
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    @property
    def flagged(self) -> int:
        return self.tp + self.fp


def precision_recall(flagged, labels, *, positive: Sequence[str] = ("low_quality",), mask=None) -> PrecisionRecall:
    """Precision and recall of a filter's ``flagged`` (n,) bool against ground-truth ``labels`` (n,).

    A document is positive when its label is in ``positive`` (labels may be :data:`LABELS`
    or kinds); only documents where ``mask`` is True count.
    """
    flagged = np.asarray(flagged)
    labels = np.asarray(labels)
    if flagged.dtype != bool or flagged.ndim != 1:
        raise ValueError(f"flagged must be a 1-D bool array, got shape {flagged.shape} dtype {flagged.dtype}")
    if labels.shape != flagged.shape:
        raise ValueError(f"labels must have the shape of flagged {flagged.shape}, got {labels.shape}")
    if isinstance(positive, str) or not positive:
        raise ValueError(f"positive must be a non-empty list of labels, got {positive!r}")
    m = np.ones(len(flagged), dtype=bool) if mask is None else np.asarray(mask)
    if m.shape != flagged.shape or m.dtype != bool:
        raise ValueError(f"mask must be a bool array of shape {flagged.shape}, got {m.shape} {m.dtype}")
    pos = np.isin(labels, list(positive))
    f, p = flagged[m], pos[m]
    return PrecisionRecall(
        tp=int((f & p).sum()), fp=int((f & ~p).sum()), fn=int((~f & p).sum()), tn=int((~f & ~p).sum())
    )


def flagged_by_kind(flagged, kinds) -> dict[str, float]:
    """Kind -> share of that kind's documents flagged (what a filter catches, and what it wrongly removes)."""
    flagged, kinds = np.asarray(flagged, dtype=bool), np.asarray(kinds)
    if flagged.shape != kinds.shape:
        raise ValueError(f"kinds must have the shape of flagged {flagged.shape}, got {kinds.shape}")
    return {str(k): float(flagged[kinds == k].mean()) for k in dict.fromkeys(kinds.tolist())}


# =========================================================================== data-side tools for training


def synthetic_topic_examples(
    articles: Sequence[data.Article] | None = None, *, n: int = 1000, seed: int = 0
) -> list[str]:
    """``n`` programmatic examples of a skill the corpus never states: naming an article's topic.

    ``"Q: What is the topic of {title}?\\nA: {topic}."`` — sampled with replacement from
    ``articles`` (default: the training split) with ``numpy.random.default_rng(seed)``.
    """
    check_int("n", n, min=1)
    check_int("seed", seed, min=0)
    arts = list(data.articles("train") if articles is None else articles)
    if not arts:
        raise ValueError("articles must not be empty")
    rng = np.random.default_rng(seed)
    return [f"Q: What is the topic of {arts[i].title}?\nA: {arts[i].topic}." for i in rng.integers(len(arts), size=n)]


def difficulty_order(scores, *, reverse: bool = False) -> np.ndarray:
    """Indices ordering documents from easiest (lowest score) to hardest, ties by index (a curriculum)."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or len(s) == 0 or not np.isfinite(s).all():
        raise ValueError(f"scores must be a non-empty 1-D array of finite numbers, got shape {s.shape}")
    check_bool("reverse", reverse)
    order = np.argsort(s, kind="stable")
    return np.argsort(-s, kind="stable") if reverse else order


def distillation_loss(student_logits, teacher_logits, *, temperature: float = 2.0) -> torch.Tensor:
    r"""Soft-target loss :math:`T^2 \cdot \mathrm{KL}(p_T \,\|\, q_T)` averaged over positions (Hinton et al. 2015).

    :math:`p_T = \mathrm{softmax}(z_t / T)` (teacher), :math:`q_T = \mathrm{softmax}(z_s / T)`
    (student), :math:`\mathrm{KL} = \sum_v p_T(v)(\log p_T(v) - \log q_T(v))`; the :math:`T^2`
    keeps the gradient's scale independent of :math:`T`. Logits are (..., V).
    """
    check_tensor("student_logits", student_logits, floating=True)
    check_tensor("teacher_logits", teacher_logits, floating=True)
    if student_logits.shape != teacher_logits.shape or student_logits.dim() < 1:
        raise ValueError(
            f"teacher_logits must have the shape of student_logits {tuple(student_logits.shape)}, "
            f"got {tuple(teacher_logits.shape)}"
        )
    check_float("temperature", temperature, min=0, min_inclusive=False)
    v = student_logits.shape[-1]
    log_q = F.log_softmax(student_logits.reshape(-1, v).float() / temperature, dim=-1)
    log_p = F.log_softmax(teacher_logits.reshape(-1, v).float() / temperature, dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)  # (positions,)
    return kl.mean() * temperature**2


def regurgitation_rate(
    texts: Sequence[str], patient=None, *, prefix_tokens: int = 32, suffix_tokens: int = 16
) -> np.ndarray:
    """(n,) bool: greedy decoding from each text's first ``prefix_tokens`` tokens reproduces the next ``suffix_tokens``.

    Texts shorter than ``prefix_tokens + suffix_tokens`` tokens are refused. Its mean is the
    verbatim memorisation rate (Carlini et al. 2021; Lee et al. 2022 compare it for
    duplicated and unduplicated documents).
    """
    texts = _check_texts("texts", texts)
    check_int("prefix_tokens", prefix_tokens, min=1, max=200)
    check_int("suffix_tokens", suffix_tokens, min=1, max=55)
    patient = zoo.load("tiny") if patient is None else patient
    need = prefix_tokens + suffix_tokens
    ids = [e.ids for e in patient.tokenizer.encode_batch(texts)]
    for i, x in enumerate(ids):
        if len(x) < need:
            raise ValueError(f"texts[{i}] has {len(x)} tokens; need prefix_tokens + suffix_tokens = {need}")
    x = torch.tensor([s[:need] for s in ids], dtype=torch.long)  # (n, need)
    with torch.inference_mode():
        out = patient.model.generate(x[:, :prefix_tokens], suffix_tokens)  # greedy
    return (out[:, prefix_tokens:] == x[:, prefix_tokens:]).all(dim=1).numpy()


# =========================================================================== training on the data


def encode_docs(texts: Sequence[str], tokenizer=None) -> list[np.ndarray]:
    """Each text's token ids (uint16 arrays; the course tokenizer by default)."""
    texts = _check_texts("texts", texts)
    tokenizer = data.get_tokenizer() if tokenizer is None else tokenizer
    return [np.asarray(e.ids, dtype=np.uint16) for e in tokenizer.encode_batch(texts)]


def token_stream(docs: Sequence[np.ndarray], order=None) -> np.ndarray:
    """The documents' ids joined in ``order`` (default: as given), each followed by ``<|endoftext|>`` (id 0).

    This is how :func:`course_lib.data.encode_split` lays out a split, so a stream of the
    clean training articles in corpus order equals ``encode_split("train")``.
    """
    if isinstance(docs, np.ndarray) or not isinstance(docs, (list, tuple)) or not docs:
        raise TypeError(f"docs must be a non-empty list of 1-D id arrays, got {type(docs).__name__}")
    idx = np.arange(len(docs)) if order is None else np.asarray(order)
    if idx.ndim != 1 or idx.dtype.kind not in "iu" or (len(idx) and (idx.min() < 0 or idx.max() >= len(docs))):
        raise ValueError(f"order must be a 1-D array of indices in [0, {len(docs) - 1}], got {idx!r:.80}")
    eot = np.zeros(1, dtype=np.uint16)
    return np.concatenate([p for i in idx for p in (np.asarray(docs[i], dtype=np.uint16), eot)])


def random_batches(tokens, *, batch_size: int, seq_len: int, seed: int):
    """``batch_at(step) -> (x, y)``: random windows drawn exactly as :func:`course_lib.train.train` draws them.

    One ``torch.Generator`` seeded with ``seed`` feeds :func:`course_lib.data.random_batch`,
    so calling it for steps 0, 1, 2, ... gives ``train``'s batches for ``TrainConfig(seed=seed)``.
    """
    check_int("batch_size", batch_size, min=1)
    check_int("seq_len", seq_len, min=1)
    check_int("seed", seed)
    gen = torch.Generator().manual_seed(seed)
    nxt = [0]

    def batch_at(step: int):
        if step != nxt[0]:
            raise ValueError(f"step must be {nxt[0]} (random batches are drawn in order), got {step}")
        nxt[0] += 1
        return data.random_batch(tokens, batch_size, seq_len, gen)

    return batch_at


def sequential_batches(tokens, *, batch_size: int, seq_len: int, steps: int):
    r"""``batch_at(step) -> (x, y)``: consecutive, non-overlapping windows of ``tokens``, in order.

    Step :math:`s` reads windows :math:`sB, \dots, sB + B - 1` of length ``seq_len`` (+1 for
    the targets): the stream is read once, front to back, which is what a curriculum needs
    (the order of the stream *is* the order of training). The stream must hold
    ``steps * batch_size * seq_len + 1`` tokens.
    """
    check_int("batch_size", batch_size, min=1)
    check_int("seq_len", seq_len, min=1)
    check_int("steps", steps, min=1)
    arr = np.asarray(tokens)
    need = steps * batch_size * seq_len + 1
    if arr.ndim != 1 or len(arr) < need:
        raise ValueError(
            f"tokens must be a 1-D stream of at least steps * batch_size * seq_len + 1 = {need} ids, got {arr.shape}"
        )
    t = torch.from_numpy(arr[:need].astype(np.int64))
    offsets = torch.arange(seq_len + 1)

    def batch_at(step: int):
        check_int("step", step, min=0, max=steps - 1)
        starts = (torch.arange(batch_size) + step * batch_size) * seq_len
        w = t[starts[:, None] + offsets]  # (B, T+1)
        return w[:, :-1], w[:, 1:]

    return batch_at


def distillation_objective(teacher: TinyLM, *, temperature: float = 2.0, alpha: float = 0.5):
    r"""``loss_fn(student, x, y)`` for :func:`course_lib.train.train`'s ``loss_fn``: Hinton et al.'s mix of hard and soft targets.

    :math:`\mathcal{L} = \alpha\,\mathrm{CE}(z_s, y) + (1 - \alpha)\,T^2\,\mathrm{KL}(p_T \,\|\, q_T)`
    (:func:`distillation_loss`); ``alpha = 0`` trains on the teacher's soft targets alone.
    The teacher runs in inference mode (no gradient, its weights never change).
    """
    check_type("teacher", teacher, TinyLM)
    check_float("temperature", temperature, min=0, min_inclusive=False)
    check_probability("alpha", alpha)
    teacher.eval()

    def loss_fn(student, x, y):
        with torch.inference_mode():
            t_logits = teacher(x)  # (B, T, V)
        s_logits = student(x)  # (B, T, V)
        soft = distillation_loss(s_logits, t_logits.clone(), temperature=temperature)
        if alpha == 0:
            return soft
        hard = F.cross_entropy(s_logits.reshape(-1, s_logits.shape[-1]).float(), y.reshape(-1))
        return alpha * hard + (1 - alpha) * soft

    return loss_fn


@torch.no_grad()
def top1_agreement(
    student: TinyLM, teacher: TinyLM, tokens, *, seq_len: int = 128, batch_size: int = 16, max_batches: int | None = 8
) -> float:
    """Share of positions where the student's most likely next token is the teacher's (consecutive windows of ``tokens``)."""
    check_type("student", student, TinyLM)
    check_type("teacher", teacher, TinyLM)
    student.eval()
    teacher.eval()
    same = total = 0
    for x, _ in data.eval_batches(tokens, batch_size, seq_len, max_batches=max_batches):
        same += int((student(x).argmax(-1) == teacher(x).argmax(-1)).sum())
        total += x.numel()
    if total == 0:
        raise ValueError(f"tokens too short for one batch of {batch_size} x {seq_len}")
    return same / total


def topic_prompt(title: str) -> str:
    """The question of :func:`synthetic_topic_examples` without its answer: ``"Q: What is the topic of {title}?\\nA:"``."""
    check_type("title", title, str)
    return f"Q: What is the topic of {title}?\nA:"


TOPIC_SCORES = ("first", "mean", "sum")


@torch.no_grad()
def answer_scores(
    model: TinyLM, questions: Sequence[Sequence[int]], answers: Sequence[Sequence[int]], *, score: str = "first"
) -> np.ndarray:
    r"""(len(questions), len(answers)) log-likelihood scores of each candidate answer after each question.

    The course's one rule for a closed multiple choice (:func:`topic_accuracy` uses it, and
    so does chapter 13's monolith): ``questions`` and ``answers`` are token-id lists, answer
    :math:`a` after question :math:`q` scores ``"first"`` :math:`\log p(a_1 \mid q)`,
    ``"sum"`` :math:`\sum_j \log p(a_j \mid q, a_{<j})` or ``"mean"`` (the sum / len(a)).
    With ``"first"`` one forward pass over each question gives every answer's score (the
    next-token distribution after :math:`q`); ``"sum"``/``"mean"`` run question + answer for
    each pair. Rows are batched by length (256 a batch, right-padded); the prediction is
    ``scores.argmax(1)``.
    """
    check_type("model", model, TinyLM)
    questions, answers = [list(q) for q in questions], [list(a) for a in answers]
    if not questions or not all(questions):
        raise ValueError("questions must be a non-empty list of non-empty token-id lists")
    if not answers or not all(answers):
        raise ValueError("answers must be a non-empty list of non-empty token-id lists")
    check_choice("score", score, TOPIC_SCORES)
    if score == "first" and len({ans[0] for ans in answers}) < len(answers):
        raise ValueError("answers must begin with different tokens for score='first'; use score='mean' or 'sum'")
    rows, spans = [], []
    for q in questions:
        for ans in [answers[0][:1]] if score == "first" else answers:
            rows.append(q + ans)
            spans.append((len(q), len(ans)))
    device = next(model.parameters()).device
    model.eval()
    n_cols = len(answers)
    scores = np.empty((len(questions), n_cols))
    first = torch.tensor([ans[0] for ans in answers])
    order = np.argsort([len(r) for r in rows], kind="stable")
    per_row = 1 if score == "first" else n_cols
    for b0 in range(0, len(order), 256):
        idx = order[b0 : b0 + 256]
        t = max(len(rows[i]) for i in idx)
        batch = torch.zeros(len(idx), t, dtype=torch.long)
        for r, i in enumerate(idx):
            batch[r, : len(rows[i])] = torch.tensor(rows[i])
        logp = F.log_softmax(model(batch[:, :-1].to(device)).float(), dim=-1).cpu()  # (b, t-1, V)
        for r, i in enumerate(idx):
            start, n = spans[i]
            row, col = divmod(int(i), per_row)
            if score == "first":
                scores[row] = logp[r, start - 1, first].double().numpy()  # (answers,)
                continue
            lp = logp[r, torch.arange(start - 1, start - 1 + n), batch[r, start : start + n]]  # (n,)
            scores[row, col] = float(lp.sum()) / (n if score == "mean" else 1)
    return scores


@torch.no_grad()
def topic_accuracy(
    model: TinyLM,
    articles: Sequence[data.Article],
    *,
    tokenizer=None,
    topics: Sequence[str] = data.TOPICS,
    score: str = "first",
) -> tuple[float, np.ndarray]:
    r"""(accuracy, predictions): the model names each article's topic by ranking the candidate answers.

    The question is :math:`q` = ``<|endoftext|>`` + :func:`topic_prompt` (the format of
    :func:`synthetic_topic_examples`), an answer :math:`a(c)` = the tokens of " c." for
    topic :math:`c`; the prediction is the best-scoring topic (a multiple choice: no free
    generation to parse; the scores are :func:`answer_scores`). ``score``:

    * ``"first"`` (default): :math:`\log p(a_1(c) \mid q)`, the answer the model would
      start to write. The 12 topics begin with 12 different tokens, so this ranks the
      topics without favouring short answers (checked: topics sharing a first token are
      refused).
    * ``"sum"``: :math:`\sum_j \log p(a_j(c) \mid q, a_{<j})`, the whole answer's
      log-probability — biased towards answers of few tokens ("People." is 2 tokens,
      "Society and social sciences." 9), which an untrained continuation pays for.
    * ``"mean"``: the sum divided by the answer's length.

    ``predictions`` are indices into ``topics``.
    """
    check_type("model", model, TinyLM)
    arts = list(articles) if isinstance(articles, (list, tuple)) else None
    if not arts:
        raise ValueError("articles must be a non-empty list of data.Article")
    for i, a in enumerate(arts):
        check_type(f"articles[{i}]", a, data.Article)
    topics = _check_texts("topics", list(topics))
    check_choice("score", score, TOPIC_SCORES)
    tokenizer = data.get_tokenizer() if tokenizer is None else tokenizer
    eot = tokenizer.token_to_id(data.EOT)
    answers = [tokenizer.encode(f" {c}.").ids for c in topics]
    if score == "first" and len({ans[0] for ans in answers}) < len(answers):
        raise ValueError("topics must begin with different tokens for score='first'; use score='mean' or 'sum'")
    questions = [[eot] + tokenizer.encode(topic_prompt(a.title)).ids for a in arts]
    scores = answer_scores(model, questions, answers, score=score)
    pred = scores.argmax(1)
    truth = np.array([topics.index(a.topic) if a.topic in topics else -1 for a in arts])
    return float((pred == truth).mean()), pred


def mixed_stream(
    docs: Sequence[np.ndarray], extra: Sequence[np.ndarray], *, n_tokens: int, extra_share: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(stream, is_extra): about ``n_tokens`` tokens of which a share ``extra_share`` come from ``extra``.

    Documents are taken in a seeded random order from each pool until each pool's share of
    ``n_tokens`` is filled (the last document of a pool may overshoot), then the chosen
    documents of both pools are shuffled together and joined with ``<|endoftext|>``.
    ``is_extra`` (bool, one per token) marks the tokens of ``extra`` documents (their
    ``<|endoftext|>`` included), so the share actually read is counted, not assumed.
    """
    check_int("n_tokens", n_tokens, min=1)
    check_probability("extra_share", extra_share)
    check_int("seed", seed, min=0)
    for name, pool in (("docs", docs), ("extra", extra)):
        if isinstance(pool, np.ndarray) or not isinstance(pool, (list, tuple)) or not pool:
            raise TypeError(f"{name} must be a non-empty list of 1-D id arrays, got {type(pool).__name__}")
    rng = np.random.default_rng(seed)
    chosen: list[tuple[np.ndarray, bool]] = []
    for pool, want, flag in ((docs, n_tokens * (1 - extra_share), False), (extra, n_tokens * extra_share, True)):
        got = 0
        for i in rng.permutation(len(pool)):
            if got >= want:
                break
            chosen.append((np.asarray(pool[i], dtype=np.uint16), flag))
            got += len(pool[i]) + 1
        if got < want:
            raise ValueError(f"{'extra' if flag else 'docs'} holds {got} tokens, fewer than the {want:.0f} asked for")
    order = rng.permutation(len(chosen))
    stream = token_stream([chosen[i][0] for i in order])
    is_extra = np.concatenate([np.full(len(chosen[i][0]) + 1, chosen[i][1]) for i in order])
    return stream, is_extra


__all__ = [
    "LABELS",
    "NEAR_DUP_KINDS",
    "LOW_QUALITY_KINDS",
    "CrawlDoc",
    "CrawlConfig",
    "Crawl",
    "build_crawl",
    "normalize",
    "exact_dedup",
    "DedupResult",
    "words",
    "shingles",
    "shingle_sets",
    "MinHasher",
    "jaccard",
    "estimate_jaccard",
    "candidate_probability",
    "lsh_threshold",
    "choose_bands",
    "LSHIndex",
    "pair_jaccard",
    "near_dedup",
    "NearDupResult",
    "NearDupPair",
    "natural_near_duplicates",
    "HeuristicRules",
    "RULE_NAMES",
    "heuristic_features",
    "heuristic_flags",
    "heuristic_filter",
    "perplexity_scores",
    "perplexity_threshold",
    "QualityClassifier",
    "train_quality_classifier",
    "classifier_scores",
    "PrecisionRecall",
    "precision_recall",
    "flagged_by_kind",
    "synthetic_topic_examples",
    "difficulty_order",
    "distillation_loss",
    "regurgitation_rate",
    "encode_docs",
    "token_stream",
    "random_batches",
    "sequential_batches",
    "distillation_objective",
    "top1_agreement",
    "topic_prompt",
    "TOPIC_SCORES",
    "answer_scores",
    "topic_accuracy",
    "mixed_stream",
]
