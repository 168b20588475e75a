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

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from course_lib import measure
from course_lib.checks import check_float, check_int, check_tensor
from course_lib.model import decode_tokens, token_probs

# --------------------------------------------------------------------------- the caches


def cache_length(cache: list) -> int:
    """How many positions a model's per-layer cache holds (every layer holds the same)."""
    lengths = {c.pos for c in cache}
    if len(lengths) != 1:
        raise ValueError(f"the layers of one cache must hold the same number of positions, got {sorted(lengths)}")
    return lengths.pop()


def rollback(cache: list, length: int) -> None:
    """Forget every cached position from ``length`` on, in every layer's cache.

    Each cache kind knows how to forget: it implements ``truncate(length)``
    (:meth:`course_lib.model.KVCache.truncate` moves its fill mark back;
    :meth:`course_lib.attention.RollingKVCache.truncate` also empties the ring slots it
    wrote for the forgotten positions, and refuses when those slots had already
    overwritten positions the next query reads).
    """
    check_int("length", length, min=0)
    for i, c in enumerate(cache):
        if not callable(getattr(c, "truncate", None)):
            raise TypeError(f"cache[{i}] ({type(c).__name__}) must implement truncate(length) to be rolled back")
    for c in cache:
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
    def accept_counts(self) -> list[int]:
        """(k+1,) rounds that accepted exactly 0, 1, ..., k drafted tokens (gpt-fast's histogram)."""
        counts = [0] * (self.k + 1)
        for a in self.accepted_per_round:
            counts[a] += 1
        return counts


# --------------------------------------------------------------------------- one round, the loop


def _check_pair(target, draft) -> None:
    for name, m in (("target", target), ("draft", draft)):
        if not (hasattr(m, "config") and hasattr(m, "new_cache")):
            raise TypeError(f"{name} must be a TinyLM-like model (config, new_cache, forward(idx, cache=))")
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
    d_len = cache_length(draft_cache)
    feed = torch.tensor([tokens[d_len:]], device=device)  # what the draft's cache lacks (>= 1 token)
    drafted, q = decode_tokens(
        draft, feed, draft_cache, k, temperature=temperature, top_k=top_k, generator=generator, return_probs=not greedy
    )  # (1, k), (1, k, V) or None
    drafted = drafted[0].tolist()
    t_len = cache_length(target_cache)
    verify_feed = torch.tensor([tokens[t_len:] + drafted], device=device)
    logits = target(verify_feed, cache=target_cache)[0, -(k + 1) :]  # (k+1, V)
    if greedy:
        n, nxt = _verify_greedy(logits, drafted)
    else:
        p = token_probs(logits, temperature=temperature, top_k=top_k)  # (k+1, V)
        n, nxt = _verify(p, q[0] if k else p[:0], drafted, generator)
    new = drafted[:n] + [nxt]
    length = len(tokens) + n  # positions the caches may keep: all but the last new token
    rollback(target_cache, length)
    rollback(draft_cache, min(cache_length(draft_cache), length))
    return new, n


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
    the last rounds so nothing is drafted past the end. Greedy output equals
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
    limit = min(target.config.max_seq_len, draft.config.max_seq_len)
    if goal > limit:
        raise ValueError(f"prompt + max_new_tokens = {goal} exceeds max_seq_len = {limit}")
    tokens = idx[0].tolist()
    stats = SpeculativeStats(k)
    target_cache, draft_cache = target.new_cache(1, goal), draft.new_cache(1, goal)
    while len(tokens) < goal:
        kk = min(k, goal - len(tokens) - 1)  # never draft past the end
        sampling = dict(temperature=temperature, top_k=top_k, generator=generator)
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
    (k+1)-token verify pass / target 1-token step, and ``c_flops``, the same ratio counted in FLOPs."""
    _check_pair(target, draft)
    gen = torch.Generator().manual_seed(0)
    dev = target.embed.weight.device
    prompt = torch.randint(0, target.config.vocab_size, (1, context), generator=gen).to(dev)
    step = torch.randint(0, target.config.vocab_size, (1, k + 1), generator=gen).to(dev)

    def variant(model, n):
        @torch.no_grad()
        def setup():
            cache = model.new_cache(1, context + k + 1)
            model(prompt, cache=cache)
            return cache

        @torch.no_grad()
        def run(cache):
            model(step[:, :n], cache=cache)

        return setup, run

    t = measure.interleaved(
        {"target": variant(target, 1), "draft": variant(draft, 1), "verify": variant(target, k + 1)},
        warmup=warmup,
        repeats=repeats,
    )
    base = t["target"].median
    flops = draft.flops_per_token(context + 1)["total"] / target.flops_per_token(context + 1)["total"]
    return {
        "c": t["draft"].median / base,
        "v": t["verify"].median / base,
        "c_flops": flops,
        "target_step_s": base,
        "draft_step_s": t["draft"].median,
    }


def speculative_benchmark(
    target,
    draft,
    prompts: Sequence,
    *,
    ks: Sequence[int] = (1, 2, 4),
    new_tokens: int = 48,
    warmup: int = 1,
    repeats: int = 3,
) -> list[dict]:
    """Greedy speculative decoding against ``target.generate``, side by side.

    For each draft length ``k``: the acceptance rate and tokens per target pass over all
    ``prompts`` (each (1, T)), whether every output equals the target's own greedy output,
    and the speed-up, timed interleaved (each timed call decodes every prompt).
    Returns one row per variant, the plain target first.
    """
    if not prompts:
        raise ValueError("prompts must not be empty")
    reference = [target.generate(p, new_tokens) for p in prompts]
    rows = [{"variant": "target alone", "k": 0, "acceptance": float("nan"), "tokens_per_pass": 1.0, "identical": True}]
    for k in ks:
        outs = [speculative_generate(target, draft, p, new_tokens, k=k) for p in prompts]
        acc = sum(s.accepted for _, s in outs) / sum(s.drafted for _, s in outs)
        rounds = sum(s.rounds for _, s in outs)
        rows.append(
            {
                "variant": f"speculative k={k}",
                "k": k,
                "acceptance": acc,
                "tokens_per_pass": len(prompts) * new_tokens / rounds,
                "identical": all(torch.equal(o, r) for (o, _), r in zip(outs, reference)),
            }
        )
    fns = {"target alone": lambda: [target.generate(p, new_tokens) for p in prompts]}
    for k in ks:
        fns[f"speculative k={k}"] = lambda k=k: [
            speculative_generate(target, draft, p, new_tokens, k=k) for p in prompts
        ]
    t = measure.interleaved(fns, warmup=warmup, repeats=repeats)
    n_tokens = len(prompts) * new_tokens
    for r in rows:
        r["tokens_per_s"] = n_tokens / t[r["variant"]].median
        r["speedup"] = t["target alone"].median / t[r["variant"]].median
    return rows
