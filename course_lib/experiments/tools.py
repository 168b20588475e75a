"""Chapter 09's runs: the tool-use question set, the tiny patient fine-tuned to call tools, and the comparison.

The protocol, the calculator, the sandbox and the agent loop are :mod:`course_lib.tools`;
this module *runs* them on a fixed task.

**The question set** (version :data:`QUESTION_SET_VERSION`, regenerated deterministically
from seeds; nothing random at import):

* *arithmetic* — ``Compute "4821*37".``: two integers of the same number of digits
  (:data:`DIGITS`: 2 to 6) joined by ``+``, ``-`` or ``*``; the gold answer is the exact
  integer, written in decimal digits (a leading ``-`` when negative).
* *fresh facts* — ``Which number fills the blank in "... won ____ medals ..."?``: a clip of
  up to :data:`CLIP_BEFORE` words before and :data:`CLIP_AFTER` words after a number (two or
  more digits) in a passage of an article, the number replaced by ``____``; the gold
  answer is that number. The evaluation questions come from the **test split** of the
  corpus (:func:`course_lib.data.articles`): every patient was pretrained on the train
  split only, so for them these articles were *added to the knowledge base after training*.
  The fine-tune's retrieval examples come from the train split.

**Scoring rule**: an answer is correct when, with surrounding white space and a final
``.`` removed, it equals the gold string exactly (``378`` ≠ ``378.0`` ≠ ``0378``).

**The fine-tune** (:class:`ToolTuneConfig`, :func:`build`): the tiny patient (0.45 M
parameters) learns to write a calculator or retrieval call and then copy the tool's result
into its answer; the loss is on the tokens the model writes (the call, the answer and its
end-of-text), never on the question or the tool's result. The closed-book baselines (the
tiny and the small patient) answer from a few solved examples in their prompt
(:func:`closed_book_prompt`). The build stores the fine-tuned weights in fp16 with a card
and a results file: accuracy, tokens generated and seconds per answer for the three
systems on the held-out questions, with the machine's fingerprint::

    python -m course_lib.build tools          # writes course_lib/zoo_data/tools_model.* and tools_results.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
import torch
from tqdm.auto import tqdm

from course_lib import data, fingerprint, measure, paths, tools, zoo
from course_lib.checks import check_choice, check_int, check_type
from course_lib.model import TinyLM
from course_lib.paths import ZOO_DIR
from course_lib.rag import Document, KnowledgeBase, LSAEmbedder, Reader, chunk
from course_lib.train import TrainConfig, checkpoint_bytes, load_state, lr_at, make_optimizer, read_checkpoint

#: what ``python -m course_lib.build tools`` writes into course_lib/zoo_data/
OUTPUTS = ("tools_model.safetensors", "tools_model.json", "tools_results.json")
MODEL_PATH, MODEL_CARD, RESULTS_PATH = (ZOO_DIR / name for name in OUTPUTS)
COMMAND = "python -m course_lib.build tools"

#: bump when the questions, the prompts or the scoring rule change
QUESTION_SET_VERSION = 1
KINDS = ("arithmetic", "retrieval")
DIGITS = (2, 3, 4, 5, 6)
OPS = ("+", "-", "*")
#: the knowledge base's passages: sentence chunks of at most this many words (short: the model's context is 256 tokens)
PASSAGE_WORDS = 16
CLIP_BEFORE, CLIP_AFTER = 6, 3
BLANK = "____"
#: the search tool's name and its result limit (characters), as :func:`registry` builds it
SEARCH, RESULT_CHARS = "search", 400
MAX_PER_ARTICLE = 3
EVAL_SEED, TRAIN_SEED = 1, 0
#: decoding limits: new tokens per generation, per answer, and the room kept free for an answer
MAX_NEW_TOKENS, TOKEN_BUDGET, MIN_ROOM = 80, 160, 16
#: the patients' context (tokens): a question's whole tool-using answer must fit in it
CONTEXT = 256
#: a number the model must copy: two or more digits, not part of a word, a decimal or a range
NUMBER = re.compile(r"(?<![\w.,/\-–])\d{2,}(?![\w/\-–]|[.,]\d)")

# --------------------------------------------------------------------------- the question set


@dataclass(frozen=True)
class Question:
    """One question: its text, the gold answer, and the call a tool user should make.

    ``source`` is the article title for a retrieval question (``""`` for arithmetic);
    ``passage`` is the knowledge-base passage holding the answer; ``answer_text`` is the
    gold answer as it is written in that passage (with its leading space, if any), which
    is what a model that copies tokens produces.
    """

    id: str
    kind: str
    text: str
    gold: str
    tool: str
    arguments: dict
    source: str = ""
    passage: str = ""
    answer_text: str = ""

    @property
    def prompt(self) -> str:
        """What every system is given: ``Q: <question>`` and a newline."""
        return f"Q: {self.text}\n"


def arithmetic_question(a: int, op: str, b: int, *, qid: str = "") -> Question:
    """The question ``Compute "a op b".`` with its exact gold answer (Python integers)."""
    check_type("a", a, int)
    check_type("b", b, int)
    check_choice("op", op, OPS)
    expr = f"{a}{op}{b}"
    gold = {"+": a + b, "-": a - b, "*": a * b}[op]
    return Question(qid or expr, "arithmetic", f'Compute "{expr}".', str(gold), "calculator", {"expression": expr})


def arithmetic_questions(
    n: int, *, seed: int = EVAL_SEED, digits: Sequence[int] = DIGITS, exclude=()
) -> list[Question]:
    """``n`` arithmetic questions, cycling through ``digits`` (both operands that many digits).

    ``exclude`` (expressions) keeps the training questions apart from the evaluation ones.
    """
    check_int("n", n, min=0)
    check_int("seed", seed, min=0)
    if not digits or any(not isinstance(d, int) or d < 1 or d > 18 for d in digits):
        raise ValueError(f"digits must be a non-empty list of ints in [1, 18], got {digits!r}")
    rng = np.random.default_rng(seed)
    out, seen = [], set(exclude)
    while len(out) < n:
        d = digits[len(out) % len(digits)]
        a, b = (int(rng.integers(10 ** (d - 1), 10**d)) for _ in range(2))
        op = OPS[int(rng.integers(len(OPS)))]
        q = arithmetic_question(a, op, b, qid=f"a{seed}-{len(out)}")
        if q.arguments["expression"] in seen:
            continue
        seen.add(q.arguments["expression"])
        out.append(q)
    return out


def passages_of(extract: str) -> list[str]:
    """The knowledge base's passages of an article (:func:`course_lib.rag.chunk`, sentences, ≤ :data:`PASSAGE_WORDS` words)."""
    return chunk(extract, max_words=PASSAGE_WORDS, by="sentence")


def _clip(passage: str, start: int, end: int) -> tuple[str, str]:
    """(clip with the blank, the answer as written) around the number at ``passage[start:end]``."""
    left = passage[:start].split(" ")[-(CLIP_BEFORE + 1) :]
    right = passage[end:].split(" ")[: CLIP_AFTER + 1]
    clip = " ".join(left) + BLANK + " ".join(right)
    lead = " " if start > 0 and passage[start - 1] == " " else ""
    return clip.replace('"', "'").replace("\\", "/").strip(), lead + passage[start:end]


def retrieval_questions(split: str, *, max_per_article: int = MAX_PER_ARTICLE) -> list[Question]:
    """Fill-the-blank questions on the numbers of ``split``'s articles (see :func:`_retrieval_questions`)."""
    check_choice("split", split, data.SPLITS)
    check_int("max_per_article", max_per_article, min=1)
    return list(_retrieval_questions(split, max_per_article))


@lru_cache(maxsize=8)
def _retrieval_questions(split: str, max_per_article: int) -> tuple[Question, ...]:
    return _questions_from(data.articles(split), max_per_article)


def _questions_from(articles: Sequence, max_per_article: int) -> tuple[Question, ...]:
    """Fill-the-blank questions on the numbers of ``articles``, at most ``max_per_article`` each, in order.

    Every number of two or more digits in an article's passages (in order) gives one
    question; the call a tool user should make searches the knowledge base for the clip.
    Kept only when the whole ideal tool-using answer (:func:`transcript`) fits the
    patients' context of :data:`CONTEXT` tokens in the course tokenizer.
    """
    tokenizer = data.get_tokenizer()
    out = []
    for art in articles:
        k = 0
        for p_idx, passage in enumerate(passages_of(art.extract)):
            for m in NUMBER.finditer(passage):
                if k == max_per_article:
                    break
                clip, answer_text = _clip(passage, m.start(), m.end())
                text = f'Which number fills the blank in "{clip}"?'
                qid = f"r-{hashlib.sha256(f'{art.title}|{p_idx}|{m.start()}'.encode()).hexdigest()[:12]}"
                q = Question(
                    qid, "retrieval", text, m.group(), SEARCH, {"query": clip}, art.title, passage, answer_text
                )
                if len(encode_transcript(tokenizer, *transcript(q))[0]) <= CONTEXT:
                    out.append(q)
                    k += 1
    return tuple(out)


def question_set(*, n_arithmetic: int = 100, n_retrieval: int = 200) -> list[Question]:
    """The held-out evaluation questions (version :data:`QUESTION_SET_VERSION`): arithmetic, then test-split facts.

    The retrieval questions are a seeded sample of :func:`retrieval_questions` on the test
    split, in a fixed order; the arithmetic ones come from seed :data:`EVAL_SEED`.
    """
    check_int("n_arithmetic", n_arithmetic, min=0)
    check_int("n_retrieval", n_retrieval, min=0)
    fresh = retrieval_questions("test")
    if n_retrieval > len(fresh):
        raise ValueError(f"n_retrieval must be an int in [0, {len(fresh)}], got {n_retrieval}")
    pick = np.sort(np.random.default_rng(EVAL_SEED).choice(len(fresh), n_retrieval, replace=False))
    return arithmetic_questions(n_arithmetic, seed=EVAL_SEED) + [fresh[i] for i in pick.tolist()]


def normalize(answer: str) -> str:
    """The scoring rule's normal form: surrounding white space and one final ``.`` removed."""
    check_type("answer", answer, str)
    s = answer.strip()
    return s[:-1].rstrip() if s.endswith(".") else s


def is_correct(answer: str, gold: str) -> bool:
    """Exact match after :func:`normalize` (no partial credit, no numeric tolerance)."""
    return normalize(answer) == normalize(gold)


def contains_gold(answer: str, gold: str) -> bool:
    """A lenient second reading: the gold number appears anywhere in the answer, not inside a longer number.

    It forgives a closed-book model that knows the fact but not the answer format.
    """
    check_type("answer", answer, str)
    check_type("gold", gold, str)
    return re.search(rf"(?<![\d.]){re.escape(normalize(gold))}(?![\d]|\.\d)", answer) is not None


# --------------------------------------------------------------------------- transcripts and prompts


def call_text(q: Question) -> str:
    """The call a tool user writes for ``q``: :func:`course_lib.tools.format_call`."""
    return tools.format_call(q.tool, q.arguments)


def retrieval_result(passage: str) -> str:
    """What the search tool of :func:`registry` returns when it finds ``passage`` (its text, cut to the limit)."""
    return passage[:RESULT_CHARS]


def transcript(q: Question) -> tuple[str, list[tuple[int, int]]]:
    """The whole ideal tool-using answer of ``q`` and the character spans the model writes.

    ``prompt + call + <result>…</result> + answer``: the spans are the call and the answer
    (the loss is on them only). The result is what the tool returns for the gold passage.
    """
    if q.kind == "arithmetic":
        result, answer = q.gold, q.gold
    else:
        result, answer = retrieval_result(q.passage), q.answer_text
    call = call_text(q)
    head = q.prompt
    s1 = (len(head), len(head) + len(call))
    mid = head + call + tools.format_result(result)
    s2 = (len(mid), len(mid) + len(answer))
    return mid + answer, [s1, s2]


def closed_book_prompt(q: Question, shots: Sequence[Question]) -> str:
    """A few solved questions of the same kind, then ``q``: ``Q: …\\nA: <gold>\\n`` each, ending ``A:``."""
    lines = [f"{s.prompt}A: {s.gold}\n" for s in shots]
    return "".join(lines) + q.prompt + "A:"


def shots_for(kind: str, n: int = 3) -> list[Question]:
    """The closed-book examples: the first ``n`` training questions of ``kind`` (never evaluated)."""
    check_choice("kind", kind, KINDS)
    check_int("n", n, min=0, max=8)
    return list(_shots(kind, n))


@lru_cache(maxsize=4)
def _shots(kind: str, n: int) -> tuple[Question, ...]:
    if kind == "arithmetic":
        return tuple(arithmetic_questions(n, seed=TRAIN_SEED, digits=(2, 3, 4)))
    return _questions_from(data.articles("train")[: 20 * n + 20], MAX_PER_ARTICLE)[
        :n
    ]  # = retrieval_questions("train")[:n]


# --------------------------------------------------------------------------- decoding


@torch.no_grad()
def greedy(
    model: TinyLM, tokenizer, text: str, max_new_tokens: int, *, stop: Sequence[str] = (), min_room: int = MIN_ROOM
) -> tuple[str, int]:
    """Greedy continuation of ``text`` with a KV cache: (new text, tokens generated).

    Stops at end-of-text, once any string of ``stop`` appears in the new text, or after
    ``max_new_tokens`` — or when the context is full: a text longer than
    ``max_seq_len - min_room`` tokens keeps its last tokens (the question is at the start,
    so the model should never need that).
    """
    check_int("max_new_tokens", max_new_tokens, min=1)
    check_int("min_room", min_room, min=1, max=model.config.max_seq_len - 1)
    eot = tokenizer.token_to_id(data.EOT)
    ids = tokenizer.encode(text).ids[-(model.config.max_seq_len - min_room) :]
    budget = min(max_new_tokens, model.config.max_seq_len - len(ids))
    device = next(model.parameters()).device
    cache = model.new_cache(1, len(ids) + budget)
    logits = model(torch.tensor([ids], device=device), cache=cache)[:, -1]
    out: list[int] = []
    for _ in range(budget):
        nxt = int(logits.argmax(-1))
        if nxt == eot:
            break
        out.append(nxt)
        if stop and any(s in tokenizer.decode(out) for s in stop):
            break
        if len(out) < budget:
            logits = model(torch.tensor([[nxt]], device=device), cache=cache)[:, -1]
    return tokenizer.decode(out), len(out)


class CountingGenerator:
    """``generate(text, max_new_tokens) -> (str, tokens)`` for :func:`course_lib.tools.run_agent`.

    Stops a continuation after a complete call (so the runtime can answer it) or at
    end-of-text.
    """

    def __init__(self, model: TinyLM, tokenizer):
        self.model, self.tokenizer = model, tokenizer
        self.tokens = 0

    def __call__(self, text: str, max_new_tokens: int) -> tuple[str, int]:
        new, n = greedy(self.model, self.tokenizer, text, max_new_tokens, stop=(tools.CALL_CLOSE,))
        self.tokens += n
        return new, n


def closed_book_answer(model: TinyLM, tokenizer, prompt: str, *, max_new_tokens: int = 12) -> tuple[str, int]:
    """A closed-book answer to a :func:`closed_book_prompt`: greedy, the first line; (answer, tokens generated)."""
    new, n = greedy(model, tokenizer, prompt, max_new_tokens, stop=("\n",))
    return new.split("\n")[0], n


# --------------------------------------------------------------------------- the knowledge base tool


def knowledge_base(split: str = "test") -> KnowledgeBase:
    """A knowledge base of ``split``'s articles (one document per article, :data:`PASSAGE_WORDS`-word passages).

    Dense retrieval uses the LSA embedder fitted on these articles (no download, a second
    to build); the tool's hybrid search fuses it with BM25.
    """
    check_choice("split", split, data.SPLITS)
    arts = data.articles(split)
    kb = KnowledgeBase(LSAEmbedder([a.extract for a in arts]), chunk_words=PASSAGE_WORDS)
    kb.add([Document(a.title, a.title, a.extract) for a in arts])
    return kb


def registry(kb: KnowledgeBase) -> tools.Registry:
    """The two tools the fine-tuned model knows: the calculator and retrieval over ``kb``."""
    return tools.Registry([tools.calculator_tool(), tools.retrieval_tool(kb, k=1, max_chars=RESULT_CHARS, name=SEARCH)])


# --------------------------------------------------------------------------- the fine-tune


@dataclass
class ToolTuneConfig:
    """How the tiny patient is fine-tuned to use tools (``python -m course_lib.build tools``).

    Each batch mixes arithmetic questions (fresh from a seeded generator, never an
    evaluation expression) and fill-the-blank questions on training-split articles, in
    proportion ``arithmetic_share``. AdamW with warm-up and cosine decay (as
    :mod:`course_lib.train`); loss on the call and the answer tokens only.
    """

    base: str = "tiny"
    steps: int = 900
    batch_size: int = 32
    lr: float = 3e-3
    warmup_steps: int = 30
    weight_decay: float = 0.0
    arithmetic_share: float = 0.5
    seed: int = 0


def encode_transcript(tokenizer, text: str, spans: Sequence[tuple[int, int]]) -> tuple[list[int], list[bool]]:
    """Token ids of ``text`` plus end-of-text, and which tokens are trained (they start inside ``spans``)."""
    enc = tokenizer.encode(text)
    mask = [any(a <= s < b for a, b in spans) for s, _ in enc.offsets]
    return [*enc.ids, tokenizer.token_to_id(data.EOT)], [*mask, True]


def _batch(tokenizer, items, max_len: int):
    """Inputs (B, T) and targets (B, T), -100 where no loss; right-padded with end-of-text."""
    eot = tokenizer.token_to_id(data.EOT)
    enc = [encode_transcript(tokenizer, *transcript(q)) for q in items]
    enc = [(ids[-max_len - 1 :], m[-max_len - 1 :]) for ids, m in enc]
    t = max(len(ids) for ids, _ in enc) - 1
    x = torch.full((len(enc), t), eot, dtype=torch.long)
    y = torch.full((len(enc), t), -100, dtype=torch.long)
    for i, (ids, m) in enumerate(enc):
        ids_t = torch.tensor(ids)
        x[i, : len(ids) - 1] = ids_t[:-1]
        keep = torch.tensor(m[1:])
        y[i, : len(ids) - 1] = torch.where(keep, ids_t[1:], torch.full_like(ids_t[1:], -100))
    return x, y


def finetune(model: TinyLM, tokenizer, cfg: ToolTuneConfig, *, progress: bool = True) -> list[float]:
    """Fine-tune ``model`` in place to write tool calls and copy results; returns the losses."""
    tcfg = TrainConfig(
        steps=cfg.steps,
        batch_size=cfg.batch_size,
        seq_len=model.config.max_seq_len,
        lr=cfg.lr,
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        seed=cfg.seed,
    )
    reader = Reader(model, tokenizer)  # its answer-positions-only loss (same computation as TinyLM.forward)
    opt = make_optimizer(model, tcfg)
    rng = np.random.default_rng(cfg.seed)
    facts = retrieval_questions("train")
    exclude = {q.arguments["expression"] for q in arithmetic_questions(200, seed=EVAL_SEED)}
    n_arith = round(cfg.batch_size * cfg.arithmetic_share)
    arith = arithmetic_questions(cfg.steps * n_arith + 10, seed=TRAIN_SEED + 100, exclude=exclude)
    model.train()
    losses: list[float] = []
    bar = tqdm(total=cfg.steps, desc="tools", mininterval=2.0) if progress else None
    for step in range(cfg.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, tcfg)
        items = arith[step * n_arith : (step + 1) * n_arith]
        items += [facts[i] for i in rng.integers(0, len(facts), cfg.batch_size - n_arith).tolist()]
        x, y = _batch(tokenizer, items, model.config.max_seq_len)
        logits, targets = reader._answer_logits(x, y)
        loss = torch.nn.functional.cross_entropy(logits, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
        opt.step()
        losses.append(loss.item())
        if bar is not None:
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", refresh=False)
            bar.update(1)
    if bar is not None:
        bar.close()
    model.eval()
    return losses


# --------------------------------------------------------------------------- answering and scoring


def tool_answer(model: TinyLM, tokenizer, q: Question, reg: tools.Registry) -> dict:
    """``q`` answered by the tool-using model through :func:`course_lib.tools.run_agent`.

    Returns the answer, whether it is correct, the tokens generated, the wall seconds of
    the whole answer (generation and tools) and the seconds spent inside tools, and the
    transcript.
    """
    gen = CountingGenerator(model, tokenizer)
    t0 = time.perf_counter()
    res = tools.run_agent(gen, q.prompt, reg, max_steps=3, max_new_tokens=MAX_NEW_TOKENS, token_budget=TOKEN_BUDGET)
    seconds = time.perf_counter() - t0
    answer = res.answer or ""
    return {
        "answer": answer,
        "correct": is_correct(answer, q.gold),
        "tokens": res.tokens_generated,
        "seconds": seconds,
        "tool_seconds": res.tool_seconds,
        "calls": res.calls,
        "stopped": res.stopped,
        "transcript": res.transcript,
    }


def closed_answer(model: TinyLM, tokenizer, q: Question) -> dict:
    """``q`` answered closed-book (few-shot prompt, greedy, first line), in the same record as :func:`tool_answer`."""
    prompt = closed_book_prompt(q, shots_for(q.kind))  # the solved examples are given, not timed
    t0 = time.perf_counter()
    answer, n = closed_book_answer(model, tokenizer, prompt)
    seconds = time.perf_counter() - t0
    return {
        "answer": answer,
        "correct": is_correct(answer, q.gold),
        "tokens": n,
        "seconds": seconds,
        "tool_seconds": 0.0,
        "calls": 0,
        "stopped": "answer",
        "transcript": "",
    }


#: the three systems of the comparison: (label, patient, with tools)
SYSTEMS = (("tiny + tools", "tools", True), ("small closed-book", "small", False), ("tiny closed-book", "tiny", False))


def answer_all(systems: dict, questions: Sequence[Question], kb: KnowledgeBase, *, progress: bool = False) -> dict:
    """Every question answered by every system: ``{label: [record, ...]}``.

    ``systems`` maps a label to ``(model, tokenizer, with_tools)``. The systems take turns
    question by question (interleaved), so a busy machine slows all of them alike.
    """
    check_type("systems", systems, dict)
    reg = registry(kb)
    out: dict[str, list[dict]] = {label: [] for label in systems}
    for q in tqdm(questions, desc="answers", disable=not progress, mininterval=2.0):
        for label, (model, tokenizer, with_tools) in systems.items():
            rec = tool_answer(model, tokenizer, q, reg) if with_tools else closed_answer(model, tokenizer, q)
            out[label].append(rec)
    return out


def summarize(records: dict, questions: Sequence[Question], params: dict) -> list[dict]:
    """One row per system: accuracy (all, arithmetic, retrieval), parameters, tokens and seconds per answer.

    Seconds per answer is the median over questions of the whole answer's wall time,
    tools included; ``tool_share`` is the fraction of that time spent inside tools;
    ``accuracy_lenient`` counts an answer that merely contains the gold (:func:`contains_gold`).
    """
    kinds = np.array([q.kind for q in questions])
    rows = []
    for label, recs in records.items():
        correct = np.array([r["correct"] for r in recs], dtype=bool)
        lenient = np.array([contains_gold(r["answer"], q.gold) for r, q in zip(recs, questions)], dtype=bool)
        secs = np.array([r["seconds"] for r in recs])
        row = {
            "system": label,
            "params": int(params[label]),
            "accuracy": round(float(correct.mean()), 4),
            **{f"accuracy_{k}": round(float(correct[kinds == k].mean()), 4) for k in KINDS if (kinds == k).any()},
            "accuracy_lenient": round(float(lenient.mean()), 4),
            "tokens_per_answer": round(float(np.mean([r["tokens"] for r in recs])), 2),
            "seconds_per_answer": round(float(np.median(secs)), 5),
            "tool_share": round(float(sum(r["tool_seconds"] for r in recs) / max(secs.sum(), 1e-12)), 4),
            "n": len(recs),
        }
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- stored artefacts


def load_tool_model(*, verify: bool = True) -> zoo.Patient:
    """The committed tool-using model (fp16 on disk, fp32 in memory) as a :class:`course_lib.zoo.Patient`."""
    if not MODEL_PATH.is_file() or not MODEL_CARD.is_file():
        raise FileNotFoundError(f"the tool-using model is not built; run:  {COMMAND}")
    card = paths.zoo_pair(MODEL_PATH, MODEL_CARD, verify=verify)[1]
    config, state, _ = read_checkpoint(MODEL_PATH)
    model = load_state(TinyLM(config), {k: v.float() for k, v in state.items()}, source=str(MODEL_PATH)).eval()
    tokenizer = data.get_tokenizer(config.vocab_size)
    if data.tokenizer_sha256(tokenizer) != card["tokenizer_sha256"]:
        raise ValueError(f"the tool-using model was trained with another tokenizer; rebuild it:  {COMMAND}")
    return zoo.Patient("tools", model, tokenizer, card)


def load_results() -> dict:
    """The stored comparison (``tools_results.json``): rows, per-question records, config, machine."""
    if not RESULTS_PATH.is_file():
        raise FileNotFoundError(f"no results at {RESULTS_PATH}; run:  {COMMAND}")
    return json.loads(paths.zoo_file(RESULTS_PATH.name).read_text())


def systems_for(tool_model: zoo.Patient | None = None) -> dict:
    """The three systems of :data:`SYSTEMS` loaded: ``{label: (model, tokenizer, with_tools)}``, and their parameter counts."""
    loaded = {"tools": tool_model or load_tool_model()}
    systems, params = {}, {}
    for label, name, with_tools in SYSTEMS:
        p = loaded.get(name) or zoo.load(name)
        systems[label] = (p.model, p.tokenizer, with_tools)
        params[label] = p.model.num_params()
    return systems, params


def build(cfg: ToolTuneConfig | None = None, *, progress: bool = True) -> dict:
    """Fine-tune the tiny patient to use tools, answer the held-out questions with all three systems, write it all."""
    cfg = cfg or ToolTuneConfig()
    with measure.num_threads(1):  # a 0.45 M model gains nothing from a second thread; the timings say 1 thread
        return _build(cfg, progress=progress)


def _build(cfg: ToolTuneConfig, *, progress: bool) -> dict:
    torch.manual_seed(cfg.seed)
    patient = zoo.load(cfg.base)
    t0 = time.perf_counter()
    losses = finetune(patient.model, patient.tokenizer, cfg, progress=progress)
    train_seconds = time.perf_counter() - t0
    patient.model.half()  # stored in fp16 (half the bytes); evaluated exactly as it will be loaded
    blob = checkpoint_bytes(patient.model, metadata={"tools": asdict(cfg)})
    patient.model.float()
    card = {
        "config": asdict(cfg),
        "question_set_version": QUESTION_SET_VERSION,
        "base_patient_sha256": patient.meta["sha256"],
        "tokenizer_sha256": data.tokenizer_sha256(patient.tokenizer),
        "train_seconds": round(train_seconds, 1),
        "loss_curve": [round(float(np.mean(losses[i : i + 25])), 4) for i in range(0, len(losses), 25)],
        "torch": torch.__version__,
        "machine": fingerprint.machine(),  # which CPU made train_seconds (course_lib.fingerprint)
        "command": COMMAND,
    }
    card = paths.write_with_card(MODEL_PATH, blob, MODEL_CARD, card, rebuild=COMMAND)
    return evaluate_and_store(zoo.Patient("tools", patient.model.eval(), patient.tokenizer, card), progress=progress)


def evaluate_and_store(tool_model: zoo.Patient | None = None, *, progress: bool = True) -> dict:
    """Answer the held-out questions with the three systems of :data:`SYSTEMS`; write ``tools_results.json``."""
    tool_model = tool_model or load_tool_model()
    questions = question_set()
    systems, params = systems_for(tool_model)
    t1 = time.perf_counter()
    records = answer_all(systems, questions, knowledge_base("test"), progress=progress)
    results = {
        "question_set_version": QUESTION_SET_VERSION,
        "questions": [q.id for q in questions],
        "rows": summarize(records, questions, params),
        "records": {
            label: [{k: r[k] for k in ("answer", "correct", "tokens", "seconds", "tool_seconds")} for r in recs]
            for label, recs in records.items()
        },
        "model_sha256": tool_model.meta["sha256"],
        "train_seconds": tool_model.meta["train_seconds"],
        "eval_seconds": round(time.perf_counter() - t1, 1),
        "threads": torch.get_num_threads(),
        "machine": fingerprint.machine(),  # which CPU made the seconds (course_lib.fingerprint)
        "command": COMMAND,
    }
    paths.atomic_write_bytes(RESULTS_PATH, (json.dumps(results, indent=1) + "\n").encode())
    paths.record_artefact(RESULTS_PATH, rebuild=COMMAND)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=ToolTuneConfig.steps, help="fine-tuning steps")
    parser.add_argument(
        "--results-only", action="store_true", help="re-answer the questions with the stored model (no fine-tuning)"
    )
    args = parser.parse_args(argv)
    if args.results_only:
        with measure.num_threads(1):
            results = evaluate_and_store()
    else:
        results = build(ToolTuneConfig(steps=check_int("steps", args.steps, min=1)))
    print(json.dumps({k: results[k] for k in ("rows", "train_seconds", "eval_seconds", "model_sha256")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
