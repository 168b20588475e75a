"""Chapter 08's runs: the reader fine-tuned from the tiny patient, the quoting reader, and the query cache.

The algorithm is :mod:`course_lib.rag`; this module *runs* it. The task is *description →
its article* (:func:`eval_queries`); :func:`corpus_vectors` and :func:`query_vectors` give
its MiniLM embeddings from the committed caches. :func:`build_reader` fine-tunes the tiny
patient into a :class:`course_lib.rag.Reader` on training-split articles only
(:class:`ReaderConfig`, :func:`reader_examples`, :func:`finetune_reader`) and writes it with
its card; :func:`load_reader` loads it back and checks its sha256.

:func:`build_quoter` fine-tunes that reader once more, on the same training-split articles,
into the **quoting reader** (issue 24, chapter 10): asked with :func:`course_lib.rag.quote_prompt`
it answers with its supporting passage, copied verbatim — an answer that copies a long span
of its context, the case prompt-lookup speculative decoding is made for
(:class:`QuoterConfig`, the same :func:`reader_examples` and :func:`finetune_reader` with
``task="quote"``); :func:`load_quoter` loads it back::

    python -m course_lib.build rag             # writes course_lib/zoo_data/rag_reader.*, rag_quoter.*, rag_queries.*
    python -m course_lib.build rag quoter      # one part (queries, reader, quoter)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from tqdm.auto import tqdm

from course_lib import data, encoder, fingerprint, measure, paths, zoo
from course_lib.checks import check_choice
from course_lib.model import TinyLM
from course_lib.paths import ZOO_DIR, atomic_write_bytes, safetensors_bytes
from course_lib.rag import (
    PASSAGE_WORDS,
    BM25Index,
    MiniLMEmbedder,
    Reader,
    passage_of,
    quote_prompt,
    reader_prompt,
    tokenize,
)
from course_lib.train import TrainConfig, checkpoint_bytes, load_state, lr_at, make_optimizer, read_checkpoint

#: what ``python -m course_lib.build rag`` writes into course_lib/zoo_data/
OUTPUTS = (
    "rag_reader.safetensors",
    "rag_reader.json",
    "rag_queries.safetensors",
    "rag_quoter.safetensors",
    "rag_quoter.json",
)
READER_PATH, READER_CARD, QUERIES_PATH, QUOTER_PATH, QUOTER_CARD = (ZOO_DIR / name for name in OUTPUTS)
PARTS = ("queries", "reader", "quoter")  # in build order: the quoter is fine-tuned from the reader
#: what a reader answers with: the article's title (chapter 08) or its passage, quoted (issue 24)
TASKS = ("title", "quote")

# --------------------------------------------------------------------------- the reader's training run


@dataclass
class ReaderConfig:
    """How the reader is fine-tuned from the tiny patient (``python -m course_lib.build rag``).

    Every training-split article with a description gives a closed-book example and one
    with its own passage; with ``distractors > 0`` also one with its passage among that
    many others (BM25 neighbours from the training split, shuffled) — off by default, as
    those long prompts would triple the training cost. Loss on the answer tokens only.
    ``closed_weight`` scales how often a batch is closed-book (relative to its share of
    the examples): copying a title out of a passage is what a 0.4 M-parameter model can
    learn in a few minutes, so most steps go to it (with 1000 steps split evenly, the
    tiny reader had not yet learned to copy: 0.6% exact match even with the right passage).
    """

    base: str = "tiny"
    steps: int = 2500
    batch_size: int = 32
    lr: float = 3e-3
    closed_weight: float = 0.33
    warmup_steps: int = 50
    weight_decay: float = 0.0
    distractors: int = 0
    passage_words: int = PASSAGE_WORDS
    seed: int = 0
    task: str = "title"  # what the answer is (TASKS): the title, or the passage quoted (QuoterConfig)


@dataclass
class QuoterConfig(ReaderConfig):
    """How the quoting reader is fine-tuned from chapter 08's reader (``python -m course_lib.build rag quoter``).

    The same articles and split as the reader, one example per training article: its
    passage (:func:`quote_passage`) in :func:`course_lib.rag.quote_prompt`, the answer that
    passage verbatim. No closed-book examples (there is nothing to quote without a
    passage). The reader starts far from quoting (about 5.7 nats per answer token) and a
    0.4 M-parameter model must get every one of ~50 copied tokens right for an exact
    quote, so the loss keeps falling for the whole run (measured here: 600 steps gave 37 %
    exact quotes on test articles); batches of 16 keep the run within ten minutes of one
    busy core. Its exact-quote rate on test articles is in the card.
    """

    base: str = "rag_reader"
    task: str = "quote"
    steps: int = 1500
    batch_size: int = 16
    lr: float = 3e-3
    warmup_steps: int = 30


def quote_passage(article, passage_words: int = PASSAGE_WORDS) -> str:
    """The passage the quoting reader is shown and quotes: the opening of the article's ``text``
    (:func:`course_lib.rag.passage_of`), which begins with its title, so the quote also answers
    the question."""
    return passage_of(article.text, passage_words)


def reader_examples(
    articles: Sequence,
    *,
    task: str = "title",
    distractors: int = 2,
    passage_words: int = PASSAGE_WORDS,
    seed: int = 0,
) -> list[tuple[str, str, str]]:
    """(prompt, answer, kind) training examples from ``articles`` only (kinds: closed, gold, mixed).

    ``task="title"`` (chapter 08's reader): :func:`course_lib.rag.reader_prompt`, the answer
    the article's title, closed-book or from its extract's opening. ``task="quote"`` (the
    quoting reader): :func:`course_lib.rag.quote_prompt` with :func:`quote_passage`, the
    answer that passage itself; no closed-book kind. Distractor passages are the BM25
    neighbours (description as query) among the same ``articles``, so no other article's
    text reaches the reader during training.
    """
    check_choice("task", task, TASKS)
    arts = [a for a in articles if a.description]
    if not arts:
        raise ValueError("articles must contain at least one article with a description")
    quote = task == "quote"
    if quote:
        passages = [quote_passage(a, passage_words) for a in arts]
    else:
        passages = [passage_of(a.extract, passage_words) for a in arts]
    prompt = quote_prompt if quote else reader_prompt
    bm25 = BM25Index.from_tokens([tokenize(a.extract) for a in arts]) if distractors else None
    rng = np.random.default_rng(seed)
    out = []
    for i, a in enumerate(arts):
        answer = passages[i] if quote else a.title
        if not quote:
            out.append((reader_prompt(a.description), answer, "closed"))
        out.append((prompt(a.description, [passages[i]]), answer, "gold"))
        if distractors:
            near = [j for j in bm25.search(tokenize(a.description), distractors + 1)[0].tolist() if j != i]
            group = [i, *near[:distractors]]
            rng.shuffle(group)
            out.append((prompt(a.description, [passages[j] for j in group]), answer, "mixed"))
    return out


def finetune_reader(reader: Reader, examples: Sequence[tuple[str, str, str]], cfg: ReaderConfig, *, progress=True):
    """Fine-tune ``reader.model`` in place (AdamW, warm-up + cosine, as :mod:`course_lib.train`); returns losses.

    Each batch draws from one kind of example (closed, gold, mixed), picked in proportion
    to its count, so the prompts in a batch have similar lengths and little padding.
    """
    tcfg = TrainConfig(
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        seq_len=reader.model.config.max_seq_len,
        lr=cfg.lr,
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        seed=cfg.seed,
    )
    opt = make_optimizer(reader.model, tcfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    kinds = sorted({e[2] for e in examples})
    buckets = [torch.tensor([i for i, e in enumerate(examples) if e[2] == k]) for k in kinds]
    weights = torch.tensor(
        [len(b) * (cfg.closed_weight if k == "closed" else 1.0) for k, b in zip(kinds, buckets)], dtype=torch.float
    )
    reader.model.train()
    losses = []
    bar = None
    if progress:
        bar = tqdm(total=cfg.steps, desc="reader", mininterval=2.0)
    for step in range(cfg.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, tcfg)
        bucket = buckets[int(torch.multinomial(weights, 1, generator=gen))]  # one kind per batch: similar lengths
        idx = bucket[torch.randint(0, len(bucket), (cfg.batch_size,), generator=gen)].tolist()
        loss = reader.loss([examples[i][:2] for i in idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(reader.model.parameters(), tcfg.grad_clip)
        opt.step()
        losses.append(loss.item())
        if bar is not None:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}", refresh=False)
            bar.update(1)
    if bar is not None:
        bar.close()
    reader.model.eval()
    return losses


# --------------------------------------------------------------------------- corpus task and artefacts


def eval_queries(split: str = "test") -> tuple[np.ndarray, list[str]]:
    """The task *description → its article* on one split: (article rows, descriptions).

    Rows index :func:`data.load_articles`; articles without a description are skipped.
    """
    check_choice("split", split, data.SPLITS)
    arts = data.load_articles()
    rows = [i for i, a in enumerate(arts) if a.description and data.split_of(a.title) == split]
    return np.asarray(rows, dtype=np.int64), [arts[i].description for i in rows]


def corpus_vectors(embedder) -> torch.Tensor:
    """Every article's extract embedded: MiniLM from the committed cache, another embedder live."""
    if isinstance(embedder, MiniLMEmbedder):
        return embedder.corpus_vectors()
    return embedder.embed([a.extract for a in data.load_articles()])


def query_vectors(embedder, split: str = "test") -> torch.Tensor:
    """The split's descriptions embedded (Q, dim): MiniLM's from ``rag_queries.safetensors``, else live."""
    rows, texts = eval_queries(split)
    if not isinstance(embedder, MiniLMEmbedder):
        return embedder.embed(texts)
    if not QUERIES_PATH.is_file():
        raise FileNotFoundError(f"no query cache at {QUERIES_PATH}; build it with:  python -m course_lib.build rag")
    with safe_open(str(paths.zoo_file(QUERIES_PATH.name)), framework="pt") as f:
        meta = f.metadata()
        q, s, cached_rows = (f.get_tensor(k) for k in ("q", "scale", "rows"))
    if meta.get("corpus_sha256") != data.CORPUS_SHA256 or meta.get("split") != split:
        raise ValueError(f"{QUERIES_PATH} holds another corpus or split; rebuild with  python -m course_lib.build rag")
    if not np.array_equal(cached_rows.numpy(), rows):
        raise ValueError(
            f"{QUERIES_PATH} does not match the current split; rebuild with  python -m course_lib.build rag"
        )
    return F.normalize(q.float() * s, dim=-1)


def build_query_cache(split: str = "test") -> dict:
    """Embed the split's descriptions with MiniLM once and store them as int8 (a few hundred kB)."""
    rows, texts = eval_queries(split)
    t0 = time.perf_counter()
    emb = encoder.embed(texts)
    q, s = encoder.quantize_rows(emb)
    meta = {
        "split": split,
        "n": str(len(rows)),
        "corpus_sha256": data.CORPUS_SHA256,
        "model": encoder.MODEL_PIP,
        "seconds": f"{time.perf_counter() - t0:.1f}",
        "max_abs_error": f"{(q.float() * s - emb).abs().max().item():.2e}",
        "machine": json.dumps(fingerprint.machine()),  # which CPU made the seconds (course_lib.fingerprint)
        "command": "python -m course_lib.build rag",
    }
    atomic_write_bytes(QUERIES_PATH, safetensors_bytes({"q": q, "scale": s, "rows": torch.as_tensor(rows)}, meta))
    paths.record_artefact(QUERIES_PATH, rebuild="python -m course_lib.build rag")
    return meta


#: the longest quote the quoting reader writes (tokens; the training passages reach about 140,
#: 99 % are under 85): a prompt keeps its last max_seq_len - this tokens
QUOTE_ANSWER_TOKENS = 96


def _load_finetuned(path, card_path, *, what: str, command: str, verify: bool, **reader_kw) -> Reader:
    """A fine-tuned reader checkpoint (fp16 on disk, fp32 in memory) with its card, checked."""
    if not path.is_file() or not card_path.is_file():
        raise FileNotFoundError(f"the {what} is not built; run:  {command}")
    card = paths.zoo_pair(path, card_path, verify=verify)[1]  # manifest + card sha256, clear errors
    config, state, _ = read_checkpoint(path)
    model = load_state(TinyLM(config), {k: v.float() for k, v in state.items()}, source=str(path)).eval()
    tokenizer = data.get_tokenizer(config.vocab_size)
    if data.tokenizer_sha256(tokenizer) != card["tokenizer_sha256"]:
        raise ValueError(f"the {what} was trained with another tokenizer; rebuild it with  {command}")
    reader = Reader(model, tokenizer, **reader_kw)
    reader.card = card
    return reader


def load_reader(*, verify: bool = True) -> Reader:
    """The committed reader (fp16 on disk, fp32 in memory) with the course tokenizer; checks its sha256."""
    return _load_finetuned(
        READER_PATH, READER_CARD, what="reader", command="python -m course_lib.build rag", verify=verify
    )


def load_quoter(*, verify: bool = True) -> Reader:
    """The committed quoting reader (:func:`build_quoter`): a :class:`course_lib.rag.Reader` that, asked
    with :func:`course_lib.rag.quote_prompt`, answers with its passage verbatim (up to
    :data:`QUOTE_ANSWER_TOKENS` tokens); checks its sha256 against its card and the manifest."""
    return _load_finetuned(
        QUOTER_PATH,
        QUOTER_CARD,
        what="quoting reader",
        command="python -m course_lib.build rag quoter",
        verify=verify,
        max_answer_tokens=QUOTE_ANSWER_TOKENS,
    )


def quote_accuracy(quoter: Reader, rows: Sequence[int], *, passage_words: int = PASSAGE_WORDS) -> float:
    """Exact-quote rate on articles ``rows``: how often greedy decoding of :func:`course_lib.rag.quote_prompt`
    (the article's :func:`quote_passage`) writes that passage verbatim, then end-of-text."""
    arts = data.load_articles()
    passages = [quote_passage(arts[r], passage_words) for r in rows]
    prompts = [quote_prompt(arts[r].description, [p]) for r, p in zip(rows, passages)]
    return float(quoter.exact_match(prompts, passages).mean())


def reader_accuracy(reader: Reader, rows: Sequence[int], passages: Sequence[Sequence[str]] | None) -> float:
    """Exact-match accuracy on articles ``rows``: closed-book when ``passages`` is None."""
    arts = data.load_articles()
    prompts = [reader_prompt(arts[r].description, () if passages is None else passages[i]) for i, r in enumerate(rows)]
    return float(reader.exact_match(prompts, [arts[r].title for r in rows]).mean())


def _fp16_checkpoint(model, metadata: dict) -> bytes:
    """The checkpoint bytes of ``model`` in fp16 (half the bytes); the model is left in fp32 but
    rounded through fp16, so it is evaluated exactly as it will be loaded."""
    model.half()
    blob = checkpoint_bytes(model, metadata=metadata)
    model.float()
    return blob


def _eval_rows(arts) -> tuple[np.ndarray, np.ndarray]:
    """Rows a reader's card is measured on: every test query's article, and 500 training articles (seeded)."""
    test_rows, _ = eval_queries("test")
    train_rows = np.asarray([i for i, a in enumerate(arts) if a.description and data.split_of(a.title) == "train"])
    return test_rows, train_rows[np.random.default_rng(0).choice(len(train_rows), 500, replace=False)]


def build_reader(cfg: ReaderConfig | None = None, *, progress: bool = True) -> dict:
    """Fine-tune the patient into the reader on training-split articles; write checkpoint and card."""
    cfg = cfg or ReaderConfig()
    torch.manual_seed(cfg.seed)
    patient = zoo.load(cfg.base)
    reader = Reader(patient.model, patient.tokenizer)
    train_articles = data.articles("train")
    examples = reader_examples(
        train_articles, distractors=cfg.distractors, passage_words=cfg.passage_words, seed=cfg.seed
    )
    t0 = time.perf_counter()
    losses = finetune_reader(reader, examples, cfg, progress=progress)
    seconds = time.perf_counter() - t0
    blob = _fp16_checkpoint(reader.model, {"rag_reader": asdict(cfg)})  # written with its card below
    arts = data.load_articles()
    test_rows, train_sample = _eval_rows(arts)
    oracle = [[passage_of(arts[r].extract, cfg.passage_words)] for r in test_rows]
    card = {
        "config": asdict(cfg),
        "base_patient_sha256": patient.meta["sha256"],
        "tokenizer_sha256": data.tokenizer_sha256(patient.tokenizer),
        "examples": len(examples),
        "train_articles": len(train_articles),
        "train_seconds": round(seconds, 1),
        "loss_curve": [round(float(np.mean(losses[i : i + 50])), 4) for i in range(0, len(losses), 50)],
        "accuracy": {
            "closed_book_test": reader_accuracy(reader, test_rows, None),
            "closed_book_train_sample": reader_accuracy(reader, train_sample, None),
            "oracle_passage_test": reader_accuracy(reader, test_rows, oracle),
        },
        "train_sample_rows": train_sample.tolist(),
        "torch": torch.__version__,
        "machine": fingerprint.machine(),  # which CPU made train_seconds (course_lib.fingerprint)
        "command": "python -m course_lib.build rag",
        "sha256": hashlib.sha256(blob).hexdigest(),
    }
    paths.write_with_card(READER_PATH, blob, READER_CARD, card, rebuild="python -m course_lib.build rag")  # one unit
    return card


def build_quoter(cfg: QuoterConfig | None = None, *, progress: bool = True) -> dict:
    """Fine-tune chapter 08's reader into the quoting reader on training-split articles; write checkpoint and card.

    The card holds the exact-quote rate (:func:`quote_accuracy`) on every test article with a
    description and on 500 training articles, measured in fp16 exactly as it is stored, the
    reader it started from (its sha256), and the seconds and CPU seconds of the fine-tuning.
    """
    cfg = cfg or QuoterConfig()
    if cfg.task != "quote":
        raise ValueError(f"cfg.task must be 'quote' for the quoting reader, got {cfg.task!r}")
    torch.manual_seed(cfg.seed)
    base = load_reader()
    quoter = Reader(base.model, base.tokenizer, max_answer_tokens=QUOTE_ANSWER_TOKENS)
    train_articles = data.articles("train")
    examples = reader_examples(
        train_articles, task="quote", distractors=cfg.distractors, passage_words=cfg.passage_words, seed=cfg.seed
    )
    t0, c0 = time.perf_counter(), time.process_time()
    # one thread: batches this small gain little from a second, and on a shared machine its
    # OpenMP spin-waits cost more than they give (measured: several times the CPU seconds)
    with measure.num_threads(1):
        losses = finetune_reader(quoter, examples, cfg, progress=progress)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    blob = _fp16_checkpoint(quoter.model, {"rag_quoter": asdict(cfg)})  # written with its card below
    test_rows, train_sample = _eval_rows(data.load_articles())
    card = {
        "config": asdict(cfg),
        "base_reader_sha256": base.card["sha256"],
        "tokenizer_sha256": data.tokenizer_sha256(base.tokenizer),
        "examples": len(examples),
        "train_articles": len(train_articles),
        "train_seconds": round(seconds, 1),
        "train_cpu_seconds": round(cpu_seconds, 1),
        "train_threads": 1,
        "loss_curve": [round(float(np.mean(losses[i : i + 50])), 4) for i in range(0, len(losses), 50)],
        "accuracy": {
            "exact_quote_test": quote_accuracy(quoter, test_rows, passage_words=cfg.passage_words),
            "exact_quote_train_sample": quote_accuracy(quoter, train_sample, passage_words=cfg.passage_words),
        },
        "test_articles": len(test_rows),
        "torch": torch.__version__,
        "machine": fingerprint.machine(),  # which CPU made train_seconds (course_lib.fingerprint)
        "command": "python -m course_lib.build rag quoter",
        "sha256": hashlib.sha256(blob).hexdigest(),
    }
    paths.write_with_card(QUOTER_PATH, blob, QUOTER_CARD, card, rebuild="python -m course_lib.build rag quoter")
    return card


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.build rag", description=__doc__.split("\n")[0])
    parser.add_argument("parts", nargs="*", metavar="PART", help=f"which parts (default: all of {list(PARTS)})")
    args = parser.parse_args(argv)
    unknown = [p for p in args.parts if p not in PARTS]
    if unknown:
        parser.error(f"unknown parts {unknown}; choose from {list(PARTS)}")
    parts = args.parts or list(PARTS)
    if "queries" in parts:
        print(json.dumps(build_query_cache()))
    if "reader" in parts:
        card = build_reader()
        print(json.dumps({k: card[k] for k in ("examples", "train_seconds", "accuracy", "sha256")}))
    if "quoter" in parts:
        card = build_quoter()
        print(
            json.dumps({k: card[k] for k in ("examples", "train_seconds", "train_cpu_seconds", "accuracy", "sha256")})
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
