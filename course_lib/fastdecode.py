r"""The fast decode path: the same patient, decoded with as little work per token as we can (issue 24).

:class:`course_lib.model.TinyLM` is the *readable* model: one ``nn.Module`` per idea, a
KV cache that appends, GQA by copying each key/value head ``n_heads / n_kv_heads`` times.
At batch 1 on a CPU that clarity costs most of the time: chapter 11 measures that the
matmuls are a small part of a decode step and the rest is Python and PyTorch dispatch —
dozens of small ops per layer, each a few microseconds before any arithmetic happens.

:class:`FastLM` is built **from** a readable model (same weights, nothing retrained) and
computes the same function with fewer, larger ops — gpt-fast's recipe, without a GPU:

* **a static KV cache written by position** (:class:`StaticKVCache`): one tensor per layer
  holding keys and values, allocated once; a step writes its keys at ``pos`` and reads
  ``[:pos+1]``. Rolling back (speculative decoding) is moving ``pos``: a rejected key is
  overwritten by the next write and never read before that;
* **no copy of the cache for GQA**: for one new token the query heads are reshaped into
  ``n_kv_heads`` groups of ``n_heads / n_kv_heads`` rows, and each group attends to *its*
  key/value head as if its rows were queries — no ``repeat_interleave`` of the cache, no
  mask (one token sees every cached position);
* **no materialised mask** at prefill (``is_causal``); only a multi-token verify pass in the
  middle of a sequence slices a causal mask computed once (tiled over the query groups);
* **fused projections**: Q, K, V and the two RoPE "rotate-half" images of Q and K are one
  matmul (rotate-half is a signed permutation of output rows, so it can be folded into the
  weights: the rotated copies are extra weight bytes read per step, traded for fewer operators per
  layer), and gate/up is one matmul; weights are concatenated once, at build time;
* **fewer ops**: ``F.rms_norm``, residual adds fused into ``addmm``, the whole step in one
  function with no module calls and no argument checks inside the loop;
* **opt-in, compiled** (``FastLM(model, compile=True)``): the one-token step written with
  static shapes — the key/value written at a position *tensor* with ``index_copy_``, the
  attention over the whole static cache with the causal mask's row at that position — and
  compiled once by ``torch.compile`` (inductor, C++ wrapper, ``fullgraph``, no dynamic
  shapes), so a step is one call into generated C++ instead of dozens of PyTorch ops. It
  costs a compile (``compile_seconds``, measured: minutes on a busy two-core machine) and
  its attention reads all ``max_seq_len`` positions, so it can pay only over many tokens,
  if at all: :func:`readable_vs_fast` with ``compile=True`` (``benchmarks decode``) measures
  the step side by side and the tokens after which the compile is won back. The notebooks
  stay eager.

Greedy tokens are identical to ``TinyLM.generate`` (tests check, over several prompts, for
the tiny and small patients); the logits agree to float rounding, not bit for bit, because
a fused matmul may sum in another order. Only the kinds it implements are accepted — dense
attention (``attention="full"``) and the SwiGLU MLP with plain ``nn.Linear`` weights; any
other kind (sparse attention, MoE, a quantized or pruned layer) gets a ``ValueError``
naming it, rather than a silently different model.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from course_lib.checks import check_float, check_int, check_tensor, check_type
from course_lib.model import SwiGLU, TinyLM, _sample

#: the attention and MLP kinds :class:`FastLM` implements (anything else is refused)
SUPPORTED = {"attention": ("full",), "mlp": ("swiglu",)}


class StaticKVCache:
    """Keys and values of every layer in one pre-allocated tensor, written by position.

    ``kv`` is (n_layers, 2, B, H_kv, max_len, d). ``pos`` is the number of positions
    filled; :meth:`truncate` moves it back (speculative decoding's rollback): entries beyond
    ``pos`` are never read, and the next step overwrites them.
    """

    def __init__(self, n_layers: int, batch_size: int, n_kv_heads: int, max_len: int, head_dim: int, *, dtype, device):
        self.kv = torch.zeros((n_layers, 2, batch_size, n_kv_heads, max_len, head_dim), dtype=dtype, device=device)
        self.pos = 0

    @property
    def max_len(self) -> int:
        return self.kv.shape[4]

    def truncate(self, length: int) -> None:
        """Forget every position from ``length`` on (any length back to 0)."""
        self.pos = check_int("length", length, min=0, max=self.pos)

    def nbytes(self) -> int:
        return self.kv.nbytes


def _rotate_rows(w: torch.Tensor, n_heads: int, head_dim: int) -> torch.Tensor:
    """Rows of ``w`` (n_heads·d, C) such that ``x @ out.T`` = rotate_half of ``x @ w.T`` per head."""
    w = w.view(n_heads, head_dim, -1)
    half = head_dim // 2
    return torch.cat([-w[:, half:], w[:, :half]], dim=1).reshape(n_heads * head_dim, -1)


class FastLM:
    """A decode-only twin of a :class:`~course_lib.model.TinyLM`: same weights, fused, fewer ops.

    ``FastLM(model)`` copies the weights once (fused); later changes to ``model`` are not
    seen. ``forward(idx, cache=)`` / ``fast(idx, cache=)`` returns logits (B, T, V) like the
    readable model (a cache is required: this path decodes), ``new_cache`` allocates a
    :class:`StaticKVCache` and :meth:`generate` decodes. It has ``config``,
    ``flops_per_token`` and ``embed`` of the readable model, so the speculative decoder and
    the benchmarks take either.

    ``compile=True`` also compiles the one-token step (:meth:`_decode_static`, see the module
    docstring) and runs it once at batch 1, so the compile happens here and its wall time is
    ``compile_seconds`` (shorter when inductor's on-disk cache already holds this graph from
    an earlier process: measured cold, it is the full price); one-token steps on a cache of ``max_seq_len`` positions (what
    :meth:`generate` and :meth:`new_cache` allocate when compiled) then take the compiled
    step; multi-token passes (prefill, a speculative verify) stay eager. Another batch size
    compiles again on its first step.
    """

    def __init__(self, model: TinyLM, *, compile: bool = False):
        check_type("model", model, TinyLM)
        if not isinstance(compile, bool):
            raise TypeError(f"compile must be a bool, got {type(compile).__name__}")
        c = model.config
        for what, kind in (("attention", c.attention), ("mlp", c.mlp)):
            if kind not in SUPPORTED[what]:
                raise ValueError(
                    f"FastLM implements {what} kinds {list(SUPPORTED[what])}; this model has {what}={kind!r} "
                    "— decode it with the readable path (model.generate)"
                )
        for name, m in model.named_modules():
            if name.endswith(("_proj", "lm_head")) and type(m) is not nn.Linear:
                raise ValueError(
                    f"FastLM fuses plain nn.Linear weights; layer {name!r} is a {type(m).__name__} "
                    "(quantized or pruned?) — decode it with the readable path (model.generate)"
                )
        self.model, self.config = model, c
        self.embed = model.embed
        self.n_layers, self.h, self.hkv, self.d = c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim
        self.rep = self.h // self.hkv
        self.eps = c.norm_eps
        self.layers = []
        with torch.no_grad():
            for blk in model.blocks:
                a, mlp = blk.attn, blk.mlp
                assert isinstance(mlp, SwiGLU)
                wqkv = torch.cat(
                    [
                        a.q_proj.weight,
                        a.k_proj.weight,
                        a.v_proj.weight,
                        _rotate_rows(a.q_proj.weight, self.h, self.d),
                        _rotate_rows(a.k_proj.weight, self.hkv, self.d),
                    ]
                )
                self.layers.append(
                    (
                        blk.attn_norm.weight.detach().clone(),
                        wqkv.t().contiguous(),  # (C, 2(H+H_kv)d + H_kv d): x @ w, no transpose per step
                        a.o_proj.weight.t().contiguous(),
                        blk.mlp_norm.weight.detach().clone(),
                        torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).t().contiguous(),
                        mlp.down_proj.weight.t().contiguous(),
                    )
                )
            self.norm_w = model.norm.weight.detach().clone()
            self.embed_w = model.embed.weight.detach()
            self.head_t = model.lm_head.weight.t().contiguous()
            self.cos, self.sin = model.rope_cos.clone(), model.rope_sin.clone()
            n = c.max_seq_len
            self.causal = torch.ones(n, n, dtype=torch.bool, device=self.cos.device).tril()
        self.qk = (self.h + self.hkv) * self.d  # width of the q|k block (and of its rotated image)
        self.dff = c.d_ff
        self.compiled, self.compile_seconds = None, 0.0
        if compile:
            self.compiled = torch.compile(
                self._decode_static, fullgraph=True, dynamic=False, options={"cpp_wrapper": True}
            )
            start = time.perf_counter()
            cache = self.new_cache(1)
            with torch.inference_mode():
                self.compiled(torch.zeros((1, 1), dtype=torch.long), torch.zeros(1, dtype=torch.long), cache.kv)
            self.compile_seconds = time.perf_counter() - start

    # -- the API the decoders use -------------------------------------------------------

    def flops_per_token(self, seq_len: int | None = None) -> dict:
        return self.model.flops_per_token(seq_len)

    def new_cache(self, batch_size: int, max_len: int | None = None) -> StaticKVCache:
        """A :class:`StaticKVCache` for ``batch_size`` sequences of at most ``max_len`` positions
        (``max_seq_len`` when None, and always when compiled: the compiled step's shapes are static)."""
        max_len = self.config.max_seq_len if max_len is None else max_len
        check_int("batch_size", batch_size, min=1)
        check_int("max_len", max_len, min=1, max=self.config.max_seq_len)
        if self.compiled is not None:
            max_len = self.config.max_seq_len
        w = self.embed_w
        return StaticKVCache(self.n_layers, batch_size, self.hkv, max_len, self.d, dtype=w.dtype, device=w.device)

    def __call__(self, idx, *, cache: StaticKVCache):
        return self.forward(idx, cache=cache)

    def forward(self, idx, *, cache: StaticKVCache):
        """idx (B, T) -> logits (B, T, V), continuing from ``cache.pos`` and filling the cache."""
        check_tensor("idx", idx, dims=("batch", "seq_len"), floating=False)
        check_type("cache", cache, StaticKVCache)
        b, t = idx.shape
        if cache.pos + t > cache.max_len or b != cache.kv.shape[2]:
            raise ValueError(
                f"cache holds batch {cache.kv.shape[2]} x {cache.max_len} positions; "
                f"cannot add ({b}, {t}) tokens at position {cache.pos}"
            )
        with torch.inference_mode():
            return self._step(idx, cache, all_logits=True)

    # -- the step ------------------------------------------------------------------------

    def _step(self, idx, cache: StaticKVCache, *, all_logits: bool):
        """One forward over ``idx`` (B, T) at positions ``cache.pos ...``; no checks (the loop's own inputs)."""
        b, t = idx.shape
        start = cache.pos
        end = start + t
        if t == 1 and self.compiled is not None and cache.max_len == self.config.max_seq_len:
            out = self.compiled(idx, torch.tensor([start], device=idx.device), cache.kv)  # (B, V)
            cache.pos = end
            return out.view(b, 1, -1) if all_logits else out
        h, hkv, d, rep, qk, eps = self.h, self.hkv, self.d, self.rep, self.qk, self.eps
        cos, sin = self.cos[start:end], self.sin[start:end]  # (T, d)
        x = self.embed_w[idx.reshape(-1)]  # (B·T, C)
        mask = None if t == 1 or start == 0 else self.causal[start:end, :end].repeat(self.rep, 1)
        for i, (n1, wqkv, wo, n2, wgu, wd) in enumerate(self.layers):
            z = F.rms_norm(x, n1.shape, n1, eps) @ wqkv  # (B·T, [q k v rot(q) rot(k)])
            z = z.view(b, t, -1)
            # RoPE on q and k at once: x cos + rotate_half(x) sin, rotate_half precomputed in the weights
            qkr = (z[..., :qk].view(b, t, h + hkv, d) * cos[:, None]).addcmul_(
                z[..., qk + hkv * d :].view(b, t, h + hkv, d), sin[:, None]
            )  # (B, T, H + H_kv, d)
            kv = cache.kv[i]  # (2, B, H_kv, L, d)
            kv[0, :, :, start:end] = qkr[:, :, h:].transpose(1, 2)
            kv[1, :, :, start:end] = z[..., qk : qk + hkv * d].view(b, t, hkv, d).transpose(1, 2)
            keys, values = kv[0, :, :, :end], kv[1, :, :, :end]  # (B, H_kv, end, d): views, no copy
            if t == 1:  # GQA by grouping: the rep query heads of a kv head are its "queries"
                y = F.scaled_dot_product_attention(qkr[:, 0, :h].view(b, hkv, rep, d), keys, values)
            elif mask is None:  # prefill from position 0: causal without a mask
                q = qkr[:, :, :h].transpose(1, 2)  # (B, H, T, d)
                y = F.scaled_dot_product_attention(q, keys, values, is_causal=True, enable_gqa=rep > 1)
                y = y.transpose(1, 2)  # (B, T, H, d)
            else:  # a verify pass mid-sequence: grouped queries, the causal rows tiled per group
                q = qkr[:, :, :h].reshape(b, t, hkv, rep, d).permute(0, 2, 3, 1, 4).reshape(b, hkv, rep * t, d)
                y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)  # (B, H_kv, rep·T, d)
                y = y.view(b, hkv, rep, t, d).permute(0, 3, 1, 2, 4)  # (B, T, H_kv, rep, d)
            x = torch.addmm(x, y.reshape(b * t, h * d), wo)
            g = F.rms_norm(x, n2.shape, n2, eps) @ wgu  # (B·T, 2·d_ff)
            x = torch.addmm(x, F.silu(g[:, : self.dff]).mul_(g[:, self.dff :]), wd)
        cache.pos = end
        if not all_logits:
            x = x.view(b, t, -1)[:, -1]
        out = F.rms_norm(x, self.norm_w.shape, self.norm_w, eps) @ self.head_t
        return out.view(b, t, -1) if all_logits else out  # (B, T, V) or (B, V)

    def _decode_static(self, tok, pos, kv_all):
        """One token per sequence with static shapes, for ``torch.compile``: tok (B, 1) at
        position ``pos`` (a (1,) tensor, not a Python int, so one graph serves every position),
        ``kv_all`` the whole :class:`StaticKVCache` tensor. Same arithmetic as :meth:`_step`,
        but the new key/value go in with ``index_copy_`` and each query attends to all
        ``max_len`` cached positions through the causal mask's row ``pos`` (positions not yet
        written get weight exactly 0). Returns logits (B, V); the caller moves ``cache.pos``."""
        b = tok.shape[0]
        h, hkv, d, rep, qk, eps = self.h, self.hkv, self.d, self.rep, self.qk, self.eps
        cos, sin = self.cos[pos], self.sin[pos]  # (1, d)
        mask = self.causal[pos, : kv_all.shape[4]]  # (1, L): True up to and including pos
        x = self.embed_w[tok.reshape(-1)]  # (B, C)
        for i, (n1, wqkv, wo, n2, wgu, wd) in enumerate(self.layers):
            z = F.rms_norm(x, n1.shape, n1, eps) @ wqkv
            qkr = z[:, :qk].view(b, h + hkv, d) * cos + z[:, qk + hkv * d :].view(b, h + hkv, d) * sin
            kv = kv_all[i]  # (2, B, H_kv, L, d)
            kv[0].index_copy_(2, pos, qkr[:, h:].unsqueeze(2))
            kv[1].index_copy_(2, pos, z[:, qk : qk + hkv * d].view(b, hkv, 1, d))
            y = F.scaled_dot_product_attention(qkr[:, :h].view(b, hkv, rep, d), kv[0], kv[1], attn_mask=mask)
            x = torch.addmm(x, y.reshape(b, h * d), wo)
            g = F.rms_norm(x, n2.shape, n2, eps) @ wgu
            x = torch.addmm(x, F.silu(g[:, : self.dff]) * g[:, self.dff :], wd)
        return F.rms_norm(x, self.norm_w.shape, self.norm_w, eps) @ self.head_t

    # -- decoding ------------------------------------------------------------------------

    def generate(self, idx, max_new_tokens: int, *, temperature: float = 0.0, top_k: int | None = None, generator=None):
        """Continue ``idx`` (B, T) by ``max_new_tokens`` tokens; the same contract (and, greedy,
        the same tokens) as :meth:`course_lib.model.TinyLM.generate`."""
        check_tensor("idx", idx, dims=("batch", "seq_len"), floating=False)
        check_int("max_new_tokens", max_new_tokens, min=0)
        total = idx.shape[1] + max_new_tokens
        if total > self.config.max_seq_len:
            raise ValueError(f"prompt + max_new_tokens = {total} exceeds max_seq_len = {self.config.max_seq_len}")
        check_float("temperature", temperature, min=0)
        check_int("top_k", top_k, min=1, allow_none=True)
        cache = self.new_cache(idx.shape[0], total)
        out = torch.empty((idx.shape[0], max_new_tokens), dtype=idx.dtype, device=idx.device)
        with torch.inference_mode():
            feed = idx
            for i in range(max_new_tokens):
                logits = self._step(feed, cache, all_logits=False)  # (B, V)
                feed = (
                    logits.argmax(-1, keepdim=True)
                    if temperature == 0
                    else _sample(logits, temperature, top_k, generator, False)[0]
                )
                out[:, i : i + 1] = feed
        return torch.cat([idx, out], dim=1)


def fast_decode_fn(fast: FastLM, *, prompt_len: int, new_tokens: int, batch: int = 1):
    """A (setup, run) pair timing ``new_tokens`` one-token steps of ``fast`` after a prompt —
    :func:`course_lib.measure.decode_fn`'s protocol (same prompt and tokens) on the fast path."""
    check_type("fast", fast, FastLM)
    check_int("prompt_len", prompt_len, min=1)
    check_int("new_tokens", new_tokens, min=1)
    if prompt_len + new_tokens > fast.config.max_seq_len:
        raise ValueError(
            f"prompt_len + new_tokens = {prompt_len + new_tokens} exceeds max_seq_len {fast.config.max_seq_len}"
        )
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, fast.config.vocab_size, (batch, prompt_len), generator=gen)
    gen = torch.Generator().manual_seed(0)
    steps = torch.randint(0, fast.config.vocab_size, (batch, new_tokens), generator=gen)

    def setup():
        cache = fast.new_cache(batch, prompt_len + new_tokens)  # max_seq_len when compiled
        with torch.inference_mode():
            fast._step(x, cache, all_logits=False)
        return cache

    def run(cache):
        with torch.inference_mode():
            for i in range(new_tokens):
                fast._step(steps[:, i : i + 1], cache, all_logits=False)

    return setup, run


def readable_vs_fast(
    models: dict,
    *,
    prompt_len: int = 64,
    new_tokens: int = 32,
    bandwidth: float | None = None,
    compile: bool = False,
    warmup: int = 2,
    repeats: int = 7,
) -> list[dict]:
    """Decode tokens/s of the readable path and the fast path, for each ``{name: TinyLM}``, batch 1.

    All variants are timed in **one** interleaved run (:func:`course_lib.measure.interleaved`),
    so the speed-ups are ratios measured side by side. With ``bandwidth`` (bytes/s, e.g.
    :func:`course_lib.hardware.memory_bandwidth`) each row also gets the decode bound
    (:func:`course_lib.hardware.decode_bound` of the weights + KV cache a step reads at the
    mid-decode context) and the fraction of it reached. Greedy tokens of each path are
    checked equal to the readable path's on a prompt (``identical``). With ``compile`` a
    third path, ``FastLM(model, compile=True)``, is timed beside them; its row has
    ``compile_s`` and ``pays_after_tokens`` — the tokens after which the compile time is
    won back against the eager fast path (inf when the compiled step is not faster).
    """
    from course_lib import hardware, measure

    if not isinstance(models, dict) or not models:
        raise ValueError("models must be a non-empty dict {name: TinyLM}")
    check_int("prompt_len", prompt_len, min=1)
    check_int("new_tokens", new_tokens, min=1)
    if bandwidth is not None:
        check_float("bandwidth", bandwidth, min=0, min_inclusive=False)
    if not isinstance(compile, bool):
        raise TypeError(f"compile must be a bool, got {type(compile).__name__}")
    paths = {"fast": False, "compiled": True} if compile else {"fast": False}
    twins = {
        (name, path): FastLM(check_type(f"models[{name!r}]", m, TinyLM).eval(), compile=c)
        for name, m in models.items()
        for path, c in paths.items()
    }
    variants = {}
    for name, m in models.items():
        variants[f"{name} readable"] = measure.decode_fn(m, prompt_len=prompt_len, new_tokens=new_tokens)
        for path in paths:
            variants[f"{name} {path}"] = fast_decode_fn(twins[name, path], prompt_len=prompt_len, new_tokens=new_tokens)
    t = measure.interleaved(variants, warmup=warmup, repeats=repeats)
    rows = []
    for name, m in models.items():
        gen = torch.Generator().manual_seed(0)
        probe = torch.randint(0, m.config.vocab_size, (1, 8), generator=gen)
        reference = m.generate(probe, new_tokens)
        step_bytes = hardware.patient_step_bytes(m, context=prompt_len + new_tokens // 2)
        bound = hardware.decode_bound(step_bytes, bandwidth) if bandwidth is not None else float("nan")
        for path in ("readable", *paths):
            tok_s = new_tokens / t[f"{name} {path}"].median
            row = {
                "model": name,
                "path": path,
                "tokens_per_s": tok_s,
                "ms_per_token": 1e3 / tok_s,
                "speedup": t[f"{name} readable"].median / t[f"{name} {path}"].median,
                "step_MB": step_bytes / 1e6,
                "bound_tokens_per_s": bound,
                "fraction_of_bound": tok_s / bound,
                "identical": path == "readable"
                or torch.equal(twins[name, path].generate(probe, new_tokens), reference),
            }
            if path == "compiled":
                saved = (t[f"{name} fast"].median - t[f"{name} compiled"].median) / new_tokens  # s per token
                row["compile_s"] = twins[name, path].compile_seconds
                row["pays_after_tokens"] = row["compile_s"] / saved if saved > 0 else float("inf")
            rows.append(row)
    rows[0]["note"] = t.note()
    return rows
