r"""Speculative decoding: a cheap draft proposes, the target verifies several tokens in one pass (chapter 10).

Leviathan et al. 2023; Chen et al. 2023. One **round** (:func:`speculative_round`):

1. the *draft* proposes :math:`k` tokens with the ordinary decode loop
   (:func:`course_lib.model.decode_tokens`, one position at a time through its KV cache);
2. the *target* scores the last emitted token and the :math:`k` proposals in **one**
   forward pass through its own KV cache;
3. accept/reject: greedily (:func:`verify_greedy`: keep drafted tokens while they equal the
   target's argmax) or by speculative sampling (:func:`verify`: keep :math:`x_i` with
   probability :math:`\min(1, p_i(x_i)/q_i(x_i))`, and at the first rejection draw from the
   residual :math:`\mathrm{norm}(\max(0, p_i - q_i))`); either way one token of the
   target's own follows the accepted ones;
4. both caches forget what was written for rejected tokens (:func:`rollback`, which calls
   each layer cache's ``truncate(length)``: a cache kind that cannot forget that far — a
   rolling window that has overwritten what the next query reads — raises a ``ValueError``
   instead of decoding wrongly).

:func:`speculative_generate` calls rounds until ``max_new_tokens`` are out and keeps the
statistics (:class:`SpeculativeStats`: acceptance per draft position, tokens per round).
Greedy output equals the target's greedy output; sampled output is distributed exactly as
the target's own sampling, because both draw through the one sampler the model's
``generate`` uses (:func:`course_lib.model.token_probs`, temperature and top-k).

Whether it pays is a cost model: a round costs :math:`k` draft steps and one verify pass,
:math:`kc + v` target steps, and yields :math:`\frac{1 - \alpha^{k+1}}{1 - \alpha}` tokens when
each draft token is accepted with probability :math:`\alpha`
(:func:`expected_tokens_per_round`, :func:`expected_speedup`); :func:`step_costs` measures
:math:`c` and :math:`v` and :func:`speculative_benchmark` measures the real thing. The
structure follows gpt-fast's ``generate.py`` (one function per round, a loop around it,
the draft decoded by the same loop as plain generation).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from course_lib import measure
from course_lib.checks import check_float, check_int, check_tensor
from course_lib.model import decode_tokens, token_probs

# --------------------------------------------------------------------------- the caches


def _layers(cache) -> list:
    """A cache as a list: the readable model's is one cache per layer; the fast path's
    (:class:`course_lib.fastdecode.StaticKVCache`) is one object for every layer."""
    return cache if isinstance(cache, (list, tuple)) else [cache]


def cache_length(cache) -> int:
    """How many positions a model's cache holds (every layer holds the same)."""
    lengths = {c.pos for c in _layers(cache)}
    if len(lengths) != 1:
        raise ValueError(f"the layers of one cache must hold the same number of positions, got {sorted(lengths)}")
    return lengths.pop()


def rollback(cache, length: int) -> None:
    """Forget every cached position from ``length`` on, in every layer's cache.

    Each cache kind knows how to forget: it implements ``truncate(length)``
    (:meth:`course_lib.model.KVCache.truncate` moves its fill mark back;
    :meth:`course_lib.attention.RollingKVCache.truncate` also empties the ring slots it
    wrote for the forgotten positions, and refuses when those slots had already
    overwritten positions the next query reads; the fast path's
    :meth:`course_lib.fastdecode.StaticKVCache.truncate` moves its one fill mark back).
    """
    check_int("length", length, min=0)
    layers = _layers(cache)
    for i, c in enumerate(layers):
        if not callable(getattr(c, "truncate", None)):
            raise TypeError(f"cache[{i}] ({type(c).__name__}) must implement truncate(length) to be rolled back")
    for c in layers:
        c.truncate(length)


# --------------------------------------------------------------------------- accept / reject


def _check_drafted(drafted, vocab: int) -> None:
    for i, t in enumerate(drafted.tolist() if torch.is_tensor(drafted) else drafted):
        check_int(f"drafted[{i}]", t, min=0, max=vocab - 1)


def verify(p, q, drafted, *, generator=None) -> tuple[int, int]:
    r"""Speculative sampling's accept/reject step (Leviathan et al. 2023, Chen et al. 2023).

    ``p`` (k+1, V): the target's distributions after the prefix and after each drafted
    token; ``q`` (k, V): the draft's distributions the ``drafted`` tokens (k,) were
    sampled from. Token :math:`x_i` is accepted with probability
    :math:`\min(1, p_i(x_i)/q_i(x_i))`; at the first rejection the next token is drawn from
    the residual :math:`\mathrm{norm}(\max(0, p_i - q_i))`; if all :math:`k` pass, a bonus
    token comes from :math:`p_k`. The emitted token is then distributed exactly as
    :math:`p_i` — whatever :math:`q` is. Returns (number accepted, the next token).
    """
    check_tensor("p", p, dims=("k+1", "vocab"), floating=True, finite=True)
    check_tensor("q", q, dims=("k", "vocab"), floating=True, finite=True)
    k = len(drafted)
    if p.shape[0] != k + 1 or q.shape[0] != k or (k and p.shape[1] != q.shape[1]):
        raise ValueError(
            f"p must be (k+1, V) and q (k, V) for k = {k} drafted tokens, got {tuple(p.shape)}, {tuple(q.shape)}"
        )
    if (p < 0).any() or (q < 0).any():
        raise ValueError("p and q must be probability distributions (no negative entries); pass softmax(logits)")
    _check_drafted(drafted, p.shape[1])
    return _verify(p, q, drafted, generator)


def _verify(p, q, drafted, generator) -> tuple[int, int]:
    """:func:`verify` without the argument checks (the decoding loop's inputs are its own)."""
    k = len(drafted)
    n = 0
    if k:
        x = torch.as_tensor(drafted, device=p.device)
        rows = torch.arange(k, device=p.device)
        u = torch.rand(k, generator=generator, device=p.device)
        ok = u * q[rows, x] < p[rows, x]  # u < p/q without dividing by a tiny q
        n = k if bool(ok.all()) else int((~ok).int().argmax())
    if n == k:
        dist = p[k]
    else:
        residual = (p[n] - q[n]).clamp(min=0)
        dist = residual if residual.sum() > 0 else p[n]
    return n, int(torch.multinomial(dist / dist.sum(), 1, generator=generator))


def verify_greedy(target_logits, drafted) -> tuple[int, int]:
    """Greedy verification: keep drafted tokens while they equal the target's argmax, then
    emit the target's own argmax. target_logits (k+1, V). Returns (number accepted, next token)."""
    check_tensor("target_logits", target_logits, dims=("k+1", "vocab"), floating=True)
    if target_logits.shape[0] != len(drafted) + 1:
        raise ValueError(
            f"target_logits must have k+1 = {len(drafted) + 1} rows for {len(drafted)} drafted tokens, "
            f"got {target_logits.shape[0]}"
        )
    _check_drafted(drafted, target_logits.shape[1])
    return _verify_greedy(target_logits, drafted)


def _verify_greedy(target_logits, drafted) -> tuple[int, int]:
    best = target_logits.argmax(-1).tolist()  # (k+1,)
    n = 0
    while n < len(drafted) and drafted[n] == best[n]:
        n += 1
    return n, best[n]


# --------------------------------------------------------------------------- statistics


@dataclass
class SpeculativeStats:
    """What one speculative generation did, round by round."""

    k: int
    drafted_per_round: list[int] = field(default_factory=list)  # tokens the draft proposed (<= k)
    accepted_per_round: list[int] = field(default_factory=list)  # of those, kept by the target

    def record(self, drafted: int, accepted: int) -> None:
        self.drafted_per_round.append(drafted)
        self.accepted_per_round.append(accepted)

    @property
    def rounds(self) -> int:
        """Target forward passes (one per round)."""
        return len(self.accepted_per_round)

    @property
    def drafted(self) -> int:
        return sum(self.drafted_per_round)

    @property
    def accepted(self) -> int:
        return sum(self.accepted_per_round)

    @property
    def emitted(self) -> int:
        """Tokens out: the accepted ones plus one of the target's own per round."""
        return self.accepted + self.rounds

    @property
    def acceptance_rate(self) -> float:
        """Fraction of drafted tokens the target kept."""
        return self.accepted / self.drafted if self.drafted else float("nan")

    @property
    def tokens_per_round(self) -> float:
        """Tokens emitted per target forward pass (1 for plain decoding)."""
        return self.emitted / self.rounds if self.rounds else float("nan")

    @property
    def acceptance_by_position(self) -> list[float]:
        r"""(k,) for draft position i: P(token i accepted | tokens 0..i-1 accepted and token i drafted).

        Under the i.i.d. model of :func:`expected_tokens_per_round` every entry is
        :math:`\alpha`; a draft that drifts from the target falls with i (nan where no round
        reached the position)."""
        out = []
        for i in range(self.k):
            reached = sum(1 for d, a in zip(self.drafted_per_round, self.accepted_per_round) if d > i and a >= i)
            kept = sum(1 for a in self.accepted_per_round if a > i)
            out.append(kept / reached if reached else float("nan"))
        return out

    @property
    def alpha(self) -> float:
        r"""The i.i.d. model's :math:`\alpha`, estimated properly: accepted / (accepted + rejections).

        Each draft position the target *reaches* is one accept/reject trial; positions after a
        rejection are never tried. ``acceptance_rate`` (accepted / drafted) counts those untried
        positions as failures and so underestimates :math:`\alpha` for k > 1; this is the
        pooled per-position acceptance (the maximum-likelihood :math:`\alpha` of the
        truncated-geometric model), so :func:`expected_tokens_per_round` of it matches the
        measured tokens per round when acceptance does not drift with position."""
        rejections = sum(1 for d, a in zip(self.drafted_per_round, self.accepted_per_round) if a < d)
        trials = self.accepted + rejections
        return self.accepted / trials if trials else float("nan")

    @property
    def accept_counts(self) -> list[int]:
        """(k+1,) rounds that accepted exactly 0, 1, ..., k drafted tokens (gpt-fast's histogram)."""
        counts = [0] * (self.k + 1)
        for a in self.accepted_per_round:
            counts[a] += 1
        return counts


# --------------------------------------------------------------------------- prompt lookup: a draft that costs nothing


def prompt_lookup(tokens: Sequence[int], k: int, *, max_ngram: int = 3, min_ngram: int = 1) -> list[int]:
    r"""Draft by copying (prompt-lookup decoding, Saxena 2023): up to ``k`` tokens that followed
    the latest earlier occurrence of the sequence's last :math:`n` tokens.

    The longest suffix :math:`n \le` ``max_ngram`` that occurred before wins (the latest
    occurrence of it); no earlier occurrence of even the last ``min_ngram`` tokens proposes
    nothing (``[]``), and the round is then an ordinary decode step. It costs a scan of the
    token list and no model at all, and is accepted when the output copies its context —
    a reader quoting its passage, code editing code, a summary repeating names.
    """
    k = check_int("k", k, min=1)
    max_ngram = check_int("max_ngram", max_ngram, min=1)
    min_ngram = check_int("min_ngram", min_ngram, min=1, max=max_ngram)
    toks = tokens.tolist() if torch.is_tensor(tokens) else list(tokens)
    return _lookup(toks, k, max_ngram, min_ngram)


def _lookup(toks: list[int], k: int, max_ngram: int, min_ngram: int) -> list[int]:
    """:func:`prompt_lookup` without the checks: scan back for earlier ends of the last token."""
    n = len(toks)
    if n < 2:
        return []
    last = toks[-1]
    best_len, best_end = 0, -1
    for j in range(n - 2, -1, -1):  # j: an earlier position holding the last token, latest first
        if toks[j] != last:
            continue
        m = 1
        while m < max_ngram and j - m >= 0 and toks[j - m] == toks[n - 1 - m]:
            m += 1
        if m > best_len:
            best_len, best_end = m, j
            if m == max_ngram:
                break
    if best_len < min_ngram:
        return []
    return toks[best_end + 1 : best_end + 1 + k]


class PromptLookup:
    """The prompt-lookup draft as a drafter for :func:`speculative_generate` (no model, no cache).

    ``speculative_generate(target, PromptLookup(), idx, n, k=4)``: each round drafts up to
    ``k`` tokens with :func:`prompt_lookup` (fewer, or none, when the context has no match).
    """

    def __init__(self, *, max_ngram: int = 3, min_ngram: int = 1):
        self.max_ngram = check_int("max_ngram", max_ngram, min=1)
        self.min_ngram = check_int("min_ngram", min_ngram, min=1, max=max_ngram)

    def propose(self, tokens: list[int], k: int) -> list[int]:
        return _lookup(tokens, k, self.max_ngram, self.min_ngram)

    def __repr__(self) -> str:
        return f"PromptLookup(max_ngram={self.max_ngram}, min_ngram={self.min_ngram})"


# --------------------------------------------------------------------------- one round, the loop


def _check_pair(target, draft) -> None:
    pair = (("target", target),) if isinstance(draft, PromptLookup) else (("target", target), ("draft", draft))
    for name, m in pair:
        if not (hasattr(m, "config") and hasattr(m, "new_cache")):
            raise TypeError(f"{name} must be a TinyLM-like model (config, new_cache, forward(idx, cache=))")
    if isinstance(draft, PromptLookup):
        return
    if target.config.vocab_size != draft.config.vocab_size:
        raise ValueError(
            f"draft and target must share a vocabulary: draft vocab_size = {draft.config.vocab_size}, "
            f"target vocab_size = {target.config.vocab_size}"
        )


@torch.no_grad()
def speculative_round(
    target,
    draft,
    tokens: list[int],
    target_cache: list,
    draft_cache: list,
    k: int,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    generator=None,
) -> tuple[list[int], int]:
    r"""One round of speculative decoding after the sequence ``tokens``; returns
    ``(new tokens, number of drafted tokens accepted)`` — 1 to k + 1 new tokens.

    ``draft`` is a model (with ``draft_cache``) or a :class:`PromptLookup` (``draft_cache``
    None), which may propose fewer than ``k`` tokens; ``target`` a ``TinyLM`` or a
    :class:`course_lib.fastdecode.FastLM`.

    Invariant, before and after: each cache holds a prefix of ``tokens`` that lacks at least
    the last token; what a cache lacks is fed at the start of its next forward. The draft
    proposes ``k`` tokens (:func:`course_lib.model.decode_tokens`, its distributions kept
    when sampling); the target runs **one** forward over what its cache lacks plus the
    ``k`` proposals, giving its (k+1, V) logits at the proposals' positions; :func:`verify`
    (sampling) or :func:`verify_greedy` (``temperature = 0``) accepts :math:`n \le k` and
    adds one token; :func:`rollback` then truncates the target's cache to
    ``len(tokens) + n`` (every new token but the last) and the draft's to at most that.
    """
    device = target.embed.weight.device
    greedy = temperature == 0
    if isinstance(draft, PromptLookup):
        drafted, q = draft.propose(tokens, k), None
    else:
        d_len = cache_length(draft_cache)
        feed = torch.tensor([tokens[d_len:]], device=device)  # what the draft's cache lacks (>= 1 token)
        drafted, q = decode_tokens(
            draft,
            feed,
            draft_cache,
            k,
            temperature=temperature,
            top_k=top_k,
            generator=generator,
            return_probs=not greedy,
        )  # (1, k), (1, k, V) or None
        drafted = drafted[0].tolist()
    new, n = _target_round(target, tokens, target_cache, drafted, q, temperature, top_k, generator)
    if draft_cache is not None:
        rollback(draft_cache, min(cache_length(draft_cache), len(tokens) + n))
    return new, n


def _target_round(target, tokens, target_cache, drafted, q, temperature, top_k, generator):
    """The target's half of a round: one verify pass over ``drafted``, accept/reject, roll back.

    ``q`` (1, k, V) are the draft's distributions when sampling; None for a lookup draft,
    whose distribution is the one-hot of each copied token."""
    device = target.embed.weight.device
    k = len(drafted)
    t_len = cache_length(target_cache)
    verify_feed = torch.tensor([tokens[t_len:] + drafted], device=device)
    logits = target(verify_feed, cache=target_cache)[0, -(k + 1) :]  # (k+1, V)
    if temperature == 0:
        n, nxt = _verify_greedy(logits, drafted)
    else:
        p = token_probs(logits, temperature=temperature, top_k=top_k)  # (k+1, V)
        if q is None:
            q = torch.nn.functional.one_hot(torch.tensor([drafted], dtype=torch.long), p.shape[-1]).float()
            q = q.to(device)
        n, nxt = _verify(p, q[0] if k else p[:0], drafted, generator)
    rollback(target_cache, len(tokens) + n)  # positions the cache may keep: all but the last new token
    return drafted[:n] + [nxt], n


@torch.no_grad()
def speculative_generate(
    target,
    draft,
    idx,
    max_new_tokens: int,
    *,
    k: int = 4,
    temperature: float = 0.0,
    top_k: int | None = None,
    generator=None,
):
    r"""Continue ``idx`` (1, T) by ``max_new_tokens`` tokens with speculative decoding.

    Calls :func:`speculative_round` until the tokens are out, drafting fewer than ``k`` in
    the last rounds so nothing is drafted past the end. ``draft`` is a smaller model or a
    :class:`PromptLookup`; ``target`` a ``TinyLM`` or its fast twin
    (:class:`course_lib.fastdecode.FastLM`), both decoded through their KV caches. Greedy output equals
    ``target.generate(idx, max_new_tokens)``; sampled output is distributed as the target's
    sampling with the same ``temperature`` and ``top_k``.
    Returns ``(tokens (1, T + max_new_tokens), SpeculativeStats)``.
    """
    _check_pair(target, draft)
    k = check_int("k (draft length)", k, min=1)
    max_new_tokens = check_int("max_new_tokens", max_new_tokens, min=0)
    temperature = check_float("temperature", temperature, min=0)
    top_k = check_int("top_k", top_k, min=1, allow_none=True)
    if not torch.is_tensor(idx) or idx.dim() != 2 or idx.shape[0] != 1 or idx.shape[1] < 1:
        raise ValueError(f"idx must be a (1, T) tensor of token ids with T >= 1, got {getattr(idx, 'shape', idx)!r}")
    goal = idx.shape[1] + max_new_tokens
    lookup = isinstance(draft, PromptLookup)
    limit = target.config.max_seq_len if lookup else min(target.config.max_seq_len, draft.config.max_seq_len)
    if goal > limit:
        raise ValueError(f"prompt + max_new_tokens = {goal} exceeds max_seq_len = {limit}")
    tokens = idx[0].tolist()
    stats = SpeculativeStats(k)
    target_cache = target.new_cache(1, goal)
    draft_cache = None if lookup else draft.new_cache(1, goal)
    sampling = dict(temperature=temperature, top_k=top_k, generator=generator)
    while len(tokens) < goal:
        kk = min(k, goal - len(tokens) - 1)  # never draft past the end
        if lookup:
            drafted = draft.propose(tokens, kk) if kk else []
            new, n = _target_round(target, tokens, target_cache, drafted, None, temperature, top_k, generator)
            kk = len(drafted)
        else:
            new, n = speculative_round(target, draft, tokens, target_cache, draft_cache, kk, **sampling)
        tokens += new
        stats.record(kk, n)
    return torch.tensor([tokens], device=idx.device), stats


# --------------------------------------------------------------------------- does it pay?


def expected_tokens_per_round(alpha: float, k: int) -> float:
    r"""Tokens per target pass when each draft token is accepted with probability
    :math:`\alpha` independently: :math:`\frac{1 - \alpha^{k+1}}{1 - \alpha}` (Leviathan et al. 2023, eq. 1)."""
    a = float(check_float("alpha", alpha, min=0, max=1))
    k = check_int("k", k, min=1)
    return float(k + 1) if a == 1 else (1 - a ** (k + 1)) / (1 - a)


def expected_speedup(alpha: float, k: int, cost_ratio: float, *, verify_cost: float = 1.0) -> float:
    r"""Predicted speed-up over plain decoding: :math:`\frac{1 - \alpha^{k+1}}{(1 - \alpha)(k c + v)}`,
    where :math:`c` = draft step time / target step time and :math:`v` = the target's
    :math:`k{+}1`-token verify pass / its 1-token step (1 when it is memory- or overhead-bound)."""
    check_float("cost_ratio", cost_ratio, min=0)
    check_float("verify_cost", verify_cost, min=0, min_inclusive=False)
    return expected_tokens_per_round(alpha, k) / (k * cost_ratio + verify_cost)


def acceptance_probability(p, q) -> float:
    r"""Probability that one token drafted from :math:`q` is accepted when the target's
    distribution is :math:`p`: :math:`\beta = \sum_x q(x)\min(1, p(x)/q(x)) = \sum_x \min(p(x), q(x))`,
    i.e. one minus the total-variation distance (Leviathan et al. 2023, section 3.5)."""
    p, q = torch.as_tensor(p, dtype=torch.float64), torch.as_tensor(q, dtype=torch.float64)
    if p.shape != q.shape or p.ndim != 1:
        raise ValueError(f"p and q must be 1-D distributions of the same size, got {tuple(p.shape)}, {tuple(q.shape)}")
    return float(torch.minimum(p, q).sum())


def step_costs(target, draft, *, context: int = 32, k: int = 4, warmup: int = 2, repeats: int = 7) -> dict:
    """Measured ingredients of :func:`expected_speedup`, interleaved, batch 1, after ``context``
    cached tokens: ``c`` = draft 1-token step / target 1-token step, ``v`` = target
    (k+1)-token verify pass / target 1-token step, and ``c_flops``, the same ratio counted in FLOPs.

    :func:`cost_curve` at the one draft length ``k`` (the same timed calls), with ``v`` a number."""
    cc = cost_curve(target, draft, ks=(check_int("k", k, min=1),), context=context, warmup=warmup, repeats=repeats)
    return {
        "c": cc["c"],
        "v": cc["v"][k],
        "c_flops": cc["c_flops"],
        "target_step_s": cc["target_step_s"],
        "draft_step_s": cc["draft_step_s"],
    }


def _forward_timer(model, prompt, step, n: int):
    """A (setup, run) pair for :func:`course_lib.measure.interleaved`: setup fills a fresh
    cache with ``prompt`` (untimed), run times one ``n``-token forward (``step[:, :n]``) after it."""

    @torch.no_grad()
    def setup():
        cache = model.new_cache(1, prompt.shape[1] + n)
        model(prompt, cache=cache)
        return cache

    @torch.no_grad()
    def run(cache):
        model(step[:, :n], cache=cache)

    return setup, run


def cost_curve(
    target, draft=None, *, ks: Sequence[int] = (1, 2, 4, 8), context: int = 32, warmup: int = 2, repeats: int = 7
) -> dict:
    r"""The verify cost :math:`v(k)` for **every** ``k`` and the draft's cost ratio :math:`c`, in one interleaved run.

    At batch 1 after ``context`` cached tokens: ``v[k]`` = the target's (k+1)-token pass /
    its 1-token step (a different call for each k: it is not k + 1, and not 1 either);
    ``c`` = a draft step / a target step — a model's 1-token step, or for a
    :class:`PromptLookup` one ``propose`` over ``context`` tokens — and ``c_flops`` the
    same ratio in FLOPs (0 for a lookup). ``draft=None`` measures ``v`` only (``c`` nan).
    Returns ``{"v": {k: v(k)}, "c", "c_flops", "target_step_s", "draft_step_s"}``.
    """
    ks = sorted({check_int("k", k, min=1) for k in ks})
    if not ks:
        raise ValueError("ks must name at least one draft length k >= 1")
    if draft is not None:
        _check_pair(target, draft)
    check_int("context", context, min=1, max=target.config.max_seq_len - max(ks) - 1)
    gen = torch.Generator().manual_seed(0)
    dev = target.embed.weight.device
    prompt = torch.randint(0, target.config.vocab_size, (1, context), generator=gen).to(dev)
    step = torch.randint(0, target.config.vocab_size, (1, max(ks) + 1), generator=gen).to(dev)
    variants = {
        "step": _forward_timer(target, prompt, step, 1),
        **{f"verify {k}": _forward_timer(target, prompt, step, k + 1) for k in ks},
    }
    if isinstance(draft, PromptLookup):
        toks = prompt[0].tolist()
        variants["draft"] = lambda: draft.propose(toks, max(ks))
    elif draft is not None:
        variants["draft"] = _forward_timer(draft, prompt, step, 1)
    t = measure.interleaved(variants, warmup=warmup, repeats=repeats)
    base = t["step"].median
    if draft is None:
        c_flops = float("nan")
    elif isinstance(draft, PromptLookup):
        c_flops = 0.0
    else:
        c_flops = draft.flops_per_token(context + 1)["total"] / target.flops_per_token(context + 1)["total"]
    return {
        "v": {k: t[f"verify {k}"].median / base for k in ks},
        "c": t["draft"].median / base if draft is not None else float("nan"),
        "c_flops": c_flops,
        "target_step_s": base,
        "draft_step_s": t["draft"].median if draft is not None else float("nan"),
    }


def break_even_alpha(k: int, cost_ratio: float, verify_cost: float) -> float:
    r"""The smallest acceptance :math:`\alpha` at which :func:`expected_speedup` reaches 1.

    Speculative decoding pays only when :math:`\frac{1-\alpha^{k+1}}{1-\alpha} > kc + v`;
    the left side grows with :math:`\alpha` from 1 to :math:`k + 1`, so the break-even is
    found by bisection; ``nan`` when even :math:`\alpha = 1` cannot pay (:math:`kc + v \ge k + 1`).
    """
    k = check_int("k", k, min=1)
    cost = check_float("cost_ratio", cost_ratio, min=0) * k + check_float(
        "verify_cost", verify_cost, min=0, min_inclusive=False
    )
    if cost >= k + 1:
        return float("nan")
    if cost <= 1:
        return 0.0
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if expected_tokens_per_round(mid, k) < cost else (lo, mid)
    return hi


def expected_tokens_from_positions(acceptance_by_position: Sequence[float]) -> float:
    r"""Tokens per round predicted from the per-position acceptance :math:`a_0, \dots, a_{k-1}`:
    :math:`1 + \sum_{j=1}^{k} \prod_{i<j} a_i` (a round reaches position j only if all
    before it were accepted). With every :math:`a_i = \alpha` this is
    :func:`expected_tokens_per_round`; unlike it, this stays right when acceptance drifts
    with the position (:attr:`SpeculativeStats.acceptance_by_position`)."""
    total, reach = 1.0, 1.0
    for i, a in enumerate(acceptance_by_position):
        if isinstance(a, float) and math.isnan(a):  # no round reached this position
            break
        a = check_float(f"acceptance_by_position[{i}]", a, min=0, max=1)
        reach *= a
        total += reach
    return total


def _per_prompt(name: str, value, n: int) -> list[int]:
    """``value`` (one int >= 1, or one per prompt) as a list of ``n`` ints."""
    if isinstance(value, numbers.Integral):  # (a bool is refused by check_int)
        return [check_int(name, value, min=1)] * n
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{name} must be an int or a sequence of ints (one per prompt), got {type(value).__name__}")
    if len(value) != n:
        raise ValueError(f"{name} must hold one count per prompt ({n}), got {len(value)}")
    return [check_int(f"{name}[{i}]", v, min=1) for i, v in enumerate(value)]


def speculative_benchmark(
    target,
    draft,
    prompts: Sequence,
    *,
    ks: Sequence[int] = (1, 2, 4),
    new_tokens: int | Sequence[int] = 48,
    warmup: int = 1,
    repeats: int = 3,
    return_stats: bool = False,
):
    """Greedy speculative decoding against ``target.generate``, side by side.

    For each draft length ``k``: the acceptance rate (accepted / drafted), the i.i.d.
    model's α estimated properly (:attr:`SpeculativeStats.alpha`), the tokens per
    pass predicted from the per-position acceptance and the measured tokens per target pass
    over all ``prompts`` (each (1, T)), whether every output equals the target's own greedy output,
    and the speed-up, timed interleaved (each timed call decodes every prompt).
    ``new_tokens`` is one count for every prompt or one per prompt (e.g. each answer's
    length, :func:`reader_copy_prompts` with ``answer_tokens``).
    Returns one row per variant, the plain target first (and, with ``return_stats``, also
    ``{k: SpeculativeStats}`` pooling every prompt's rounds).

    The checking round — the plain target's outputs, then each k's, compared — makes every
    timed call once, so it is the first of the ``warmup`` rounds (0 and 1 both mean it alone).
    Then exactly ``repeats`` rounds are timed (``min_time=0``): one round decodes every prompt
    with every variant, so no extra rounds are needed to fill the protocol's minimum time.
    """
    if not prompts:
        raise ValueError("prompts must not be empty")
    warmup = check_int("warmup", warmup, min=0)
    repeats = check_int("repeats", repeats, min=1)
    news = _per_prompt("new_tokens", new_tokens, len(prompts))
    reference = [target.generate(p, n) for p, n in zip(prompts, news)]  # the checking round: every variant once
    outs_by_k = {k: [speculative_generate(target, draft, p, n, k=k) for p, n in zip(prompts, news)] for k in ks}
    pooled_by_k = {}
    rows = [
        {
            "variant": "target alone",
            "k": 0,
            "acceptance": float("nan"),
            "alpha": float("nan"),
            "tokens/pass from per-position acceptance": 1.0,
            "tokens_per_pass": 1.0,
            "identical": True,
        }
    ]
    for k, outs in outs_by_k.items():
        pooled = SpeculativeStats(k)  # every prompt's rounds together
        for _, st in outs:
            pooled.drafted_per_round += st.drafted_per_round
            pooled.accepted_per_round += st.accepted_per_round
        pooled_by_k[k] = pooled
        acc = pooled.acceptance_rate
        rounds = pooled.rounds
        rows.append(
            {
                "variant": f"speculative k={k}",
                "k": k,
                "acceptance": acc,
                "alpha": pooled.alpha,
                "tokens/pass from per-position acceptance": expected_tokens_from_positions(
                    pooled.acceptance_by_position
                ),
                "tokens_per_pass": sum(news) / rounds,
                "identical": all(torch.equal(o, r) for (o, _), r in zip(outs, reference)),
            }
        )
    fns = {"target alone": lambda: [target.generate(p, n) for p, n in zip(prompts, news)]}
    for k in ks:
        fns[f"speculative k={k}"] = lambda k=k: [
            speculative_generate(target, draft, p, n, k=k) for p, n in zip(prompts, news)
        ]
    t = measure.interleaved(fns, warmup=max(warmup - 1, 0), repeats=repeats, min_time=0)
    n_tokens = sum(news)
    for r in rows:
        r["tokens_per_s"] = n_tokens / t[r["variant"]].median
        r["speedup"] = t["target alone"].median / t[r["variant"]].median
    return (rows, pooled_by_k) if return_stats else rows


def rag_copy_prompts(encode, n: int = 6, *, first: int = 100, words: int = 3) -> list:
    """The RAG-copy task: chapter 08's reader prompts, each followed by the start of a quote of its passage.

    For ``n`` articles from ``first`` on: ``reader_prompt(description, [passage])`` (the
    passage is the article's opening, :func:`course_lib.rag.passage_of`) then ``"\\n[1] "``
    and the passage's first ``words`` words — an answer that restates its source, the case
    prompt lookup is made for *if* the model copies. ``encode`` maps text to a (1, T)
    tensor (a zoo patient's ``encode``). Returns the list of prompts.
    """
    from course_lib import data, rag

    check_int("n", n, min=1)
    check_int("first", first, min=0)
    check_int("words", words, min=1)
    arts = data.load_articles()[first : first + n]
    out = []
    for a in arts:
        passage = rag.passage_of(a.text)
        out.append(encode(rag.reader_prompt(a.description, [passage]) + "\n[1] " + " ".join(passage.split()[:words])))
    return out


def reader_copy_prompts(
    reader,
    n: int = 6,
    *,
    split: str = "test",
    first: int = 0,
    copied_only: bool = False,
    task: str = "title",
    answer_tokens: bool = False,
):
    """The RAG-copy task with a target trained to copy: a reader on its own prompts.

    For ``n`` articles of ``split`` from ``first`` on, the prompt of ``task``, encoded by
    ``reader.encode``:

    * ``"title"`` — chapter 08's reader (:func:`course_lib.experiments.rag.load_reader`) on
      :func:`course_lib.rag.reader_prompt` with the article's passage
      (:func:`course_lib.rag.passage_of`): the answer is the article's title, which is how
      its passage begins, so a reader that reads copies the opening words of ``[1]`` — a
      3–5-token answer, too short to amortise a verify pass;
    * ``"quote"`` — the quoting reader (:func:`course_lib.experiments.rag.load_quoter`) on
      :func:`course_lib.rag.quote_prompt` with :func:`course_lib.experiments.rag.quote_passage`:
      the answer is the whole passage, copied — the long copied span prompt lookup is made for.

    With ``copied_only`` only articles whose greedy answer *is* the expected one (the title,
    or the passage verbatim, then end-of-text) are kept (:meth:`course_lib.rag.Reader.exact_match`).
    ``reader`` is a :class:`course_lib.rag.Reader`. Returns the (1, T) prompts; with
    ``answer_tokens`` also, per prompt, the tokens its expected answer takes with its
    end-of-text (`` answer`` then end-of-text, as :meth:`course_lib.rag.Reader.encode`
    writes it): how many new tokens decode that answer and stop.
    """
    from course_lib import data

    if not (callable(getattr(reader, "encode", None)) and callable(getattr(reader, "exact_match", None))):
        raise TypeError(f"reader must be a course_lib.rag.Reader (encode, exact_match), got {type(reader).__name__}")
    if task not in COPY_TASKS:
        raise ValueError(f"task must be one of {list(COPY_TASKS)}, got {task!r}")
    pool = data.articles(split)
    check_int("first", first, min=0, max=len(pool) - 1)
    check_int("n", n, min=1, max=len(pool) - first)
    for name, flag in (("copied_only", copied_only), ("answer_tokens", answer_tokens)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
    device = reader.model.embed.weight.device
    out, lengths = [], []
    for s in range(first, len(pool), 64 if copied_only else n):
        arts = pool[s : s + (64 if copied_only else n)]
        texts, answers = zip(*(_copy_task(a, task) for a in arts))
        keep = reader.exact_match(list(texts), list(answers)) if copied_only else [True] * len(arts)
        for t, a, k in zip(texts, answers, keep):
            if k:
                out.append(torch.tensor([reader.encode(t)[0]], device=device))
                ids, n_prompt = reader.encode(t, a)
                lengths.append(len(ids) - n_prompt)  # `` answer`` and its end-of-text
        if len(out) >= n:
            return (out[:n], lengths[:n]) if answer_tokens else out[:n]
    raise ValueError(
        f"only {len(out)} of {split!r}'s articles from {first} on are answered by copying; n must be <= that"
    )


#: the RAG-copy tasks of :func:`reader_copy_prompts`: the answer is the title, or the passage quoted
COPY_TASKS = ("title", "quote")


def _copy_task(article, task: str) -> tuple[str, str]:
    """(prompt, expected answer) of one article for :func:`reader_copy_prompts`."""
    from course_lib import rag

    if task == "quote":
        from course_lib.experiments.rag import quote_passage

        passage = quote_passage(article)
        return rag.quote_prompt(article.description, [passage]), passage
    return rag.reader_prompt(article.description, [rag.passage_of(article.text)]), article.title


class _NoDraft(PromptLookup):
    """A lookup that never proposes: each round is one plain step, taken through the speculative loop."""

    def propose(self, tokens: list[int], k: int) -> list[int]:
        return []


def loop_overhead(target, prompts: Sequence, *, new_tokens: int | Sequence[int] = 48, repeats: int = 3) -> float:
    r"""The speculative loop's own cost per round, in plain decode steps: a round that drafts nothing, timed
    against ``target.generate`` side by side (interleaved), minus one (0 when it is not slower).

    :func:`cost_curve`'s :math:`c` and :math:`v(k)` time one forward each; a round also builds its
    inputs, checks the drafts and rolls the cache back, in Python. With this :math:`o` a round
    costs :math:`kc + v(k) + o` steps, which is what a target whose step is a millisecond or
    so feels (gpt-fast hides it inside a compiled step)."""
    if not prompts:
        raise ValueError("prompts must not be empty")
    news = _per_prompt("new_tokens", new_tokens, len(prompts))
    draft = _NoDraft()
    t = measure.interleaved(
        {
            "plain": lambda: [target.generate(p, n) for p, n in zip(prompts, news)],
            "loop, no draft": lambda: [speculative_generate(target, draft, p, n, k=1) for p, n in zip(prompts, news)],
        },
        warmup=1,
        repeats=check_int("repeats", repeats, min=1),
    )
    return max(0.0, t["loop, no draft"].median / t["plain"].median - 1)


def add_loop_overhead(rows: list[dict], overhead: float) -> list[dict]:
    r"""Add ``"predicted + loop overhead"`` to :func:`break_even_table`'s rows: the prediction from the
    rounds as drafted, with the loop's own cost ``overhead`` (:func:`loop_overhead`, in plain steps)
    charged once per round — :math:`1 / (1/s + o / \text{tokens per pass})`. Returns ``rows``."""
    overhead = check_float("overhead", overhead, min=0)
    for r in rows:
        r["loop overhead"] = overhead
        r["predicted + loop overhead"] = (
            1 / (1 / r["predicted (rounds as drafted)"] + overhead / r["tokens_per_pass"]) if r["k"] else 1.0
        )
    return rows


def break_even_table(
    target,
    draft,
    prompts: Sequence,
    *,
    ks: Sequence[int] = (1, 2, 4, 8),
    new_tokens: int | Sequence[int] = 48,
    repeats: int = 3,
) -> list[dict]:
    r"""Measured speed-up next to the break-even rule, per ``k``: :func:`speculative_benchmark`
    (tokens/s, acceptance, identical output) with :func:`cost_curve`'s :math:`c` and
    :math:`v(k)` measured at the prompts' length, the predicted speed-up
    :math:`\frac{1-\alpha^{k+1}}{(1-\alpha)(kc + v(k))}` from the properly pooled
    :math:`\alpha`, the prediction from the measured tokens per pass, and the break-even
    :math:`\alpha` (:func:`break_even_alpha`), and the prediction from the rounds as they ran
    (``predicted (rounds as drafted)``: each round costs its drafts and :math:`v` of the number
    it drafted — what matters for a lookup, which often drafts fewer than k, or none).
    ``target`` is a model or its fast twin; ``draft`` a model or a :class:`PromptLookup`;
    ``new_tokens`` one count for every prompt or one per prompt.
    """
    if not prompts:
        raise ValueError("prompts must not be empty")
    _per_prompt("new_tokens", new_tokens, len(prompts))  # bad input refused before anything is timed
    context = max(1, round(sum(p.shape[1] for p in prompts) / len(prompts)))
    context = min(context, target.config.max_seq_len - max(ks) - 1)
    # a lookup drafts 0..k tokens per round, so its rounds need v at every length up to k
    v_ks = range(1, max(ks) + 1) if isinstance(draft, PromptLookup) else ks
    cc = cost_curve(target, draft, ks=v_ks, context=context, warmup=1, repeats=repeats + 4)
    rows, pooled = speculative_benchmark(
        target, draft, prompts, ks=ks, new_tokens=new_tokens, repeats=repeats, return_stats=True
    )
    v = {0: 1.0, **cc["v"]}  # a round that drafted nothing is one plain step
    for r in rows:
        k = r["k"]
        r["c"] = cc["c"]
        r["c_flops"] = cc["c_flops"]
        r["v(k)"] = v[k] if k else 1.0
        if k:
            st = pooled[k]
            r["drafted/round"] = st.drafted / st.rounds
            r["acceptance by position"] = [round(a, 3) for a in st.acceptance_by_position]
            # every round as it ran: its drafts (a lookup pays c once per round) and v of what it drafted
            lookup = isinstance(draft, PromptLookup)
            cost = sum((cc["c"] if lookup else d * cc["c"]) + v[d] for d in st.drafted_per_round)
            r["predicted (rounds as drafted)"] = st.emitted / cost
            cost = k * cc["c"] + cc["v"][k]
            a = r["alpha"]
            r["predicted (α, c, v(k))"] = (
                float("nan") if math.isnan(a) else expected_speedup(a, k, cc["c"], verify_cost=cc["v"][k])
            )
            r["predicted (tokens/pass, c, v(k))"] = r["tokens_per_pass"] / cost
            r["break-even α"] = break_even_alpha(k, cc["c"], cc["v"][k])
        else:
            r["predicted (α, c, v(k))"] = r["predicted (tokens/pass, c, v(k))"] = 1.0
            r["predicted (rounds as drafted)"] = 1.0
            r["drafted/round"] = 0.0
            r["acceptance by position"] = []
            r["break-even α"] = float("nan")
    return rows
