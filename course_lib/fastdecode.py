r"""The fast decode path: the same patient, decoded with as little work per token as we can (issue 24).

:class:`course_lib.model.TinyLM` is the *readable* model: one ``nn.Module`` per idea, a
KV cache that appends, GQA by copying each key/value head ``n_heads / n_kv_heads`` times.
At batch 1 on a CPU that clarity costs most of the time: chapter 11 measures that the
matmuls are a small part of a decode step and the rest is Python and PyTorch dispatch —
dozens of small ops per layer, each a few microseconds before any arithmetic happens.

:class:`FastLM` is built **from** a readable model (same weights, nothing retrained) and
computes the same function with fewer, larger ops — gpt-fast's recipe, without a GPU:

* **a static KV cache written by position** (:class:`StaticKVCache`): one tensor holding every
  layer's values and keys, allocated once; a step writes a token's values and keys (one row,
  one copy) at ``pos`` and reads ``[:pos+1]``. Rolling back (speculative decoding) is moving
  ``pos``: a rejected entry is overwritten by the next write and never read before that;
* **no copy of the cache for GQA**: for one new token the query heads are reshaped into
  ``n_kv_heads`` groups of ``n_heads / n_kv_heads`` rows, and each group attends to *its*
  key/value head as if its rows were queries — no ``repeat_interleave`` of the cache, no
  mask (one token sees every cached position);
* **no materialised mask** at prefill (``is_causal``); only a multi-token verify pass in the
  middle of a sequence builds an additive causal mask, once per pass (tiled over the groups);
* **fused projections**: V, K and Q are one matmul, gate/up another. Q's and K's rows are
  reordered per head so that each RoPE pair :math:`(x_i, x_{i+d/2})` comes out as two
  adjacent numbers — one complex number — and RoPE is a single in-place complex product with
  a table :math:`e^{ip\omega}` (1 over V's pairs). Q and K are reordered alike, so every
  :math:`q\cdot k` is unchanged; Q's rows also carry attention's :math:`1/\sqrt d`;
* **RMSNorm folded**: the norm's gain :math:`g` (and :math:`\sqrt{C}`) is multiplied into the
  next matmul's weights once. And the residual stream carries one extra coordinate, the
  constant :math:`\sqrt{C\epsilon}` (every residual update's weights have a zero column
  there, every norm's matmul a zero row), so the stream's plain length
  :math:`\sqrt{\sum x^2 + C\epsilon}` is the norm's denominator: a norm is one
  ``vector_norm`` and one divide, not PyTorch's composite ``rms_norm`` (measured at several
  times the cost of one elementwise op here);
* **one weight layout**, (in, out) for ``x @ W``: for one row it is the layout MKL streams
  fastest here; for several rows it depends on their number (``benchmarks decode``,
  ``weight_layout``: on the course's CI machine faster for a 13-row verify pass and a prefill,
  slower for a 5-row one). The fast path keeps one copy, half the memory of keeping both;
* **fewer ops**: residual adds fused into ``addmm``, the whole step in one function with no
  module calls and no argument checks inside the loop; the batch-1 step (:meth:`FastLM._decode_one`)
  writes its projections into scratch rows whose views were made once and attends with two
  small ``bmm`` and a softmax instead of the general attention kernel, whose fixed cost for a
  single query is several such ops;
* **the weights in one buffer on huge pages** (``huge_pages=True``, :func:`_arena`): a step
  reads every weight once, from DRAM when they are larger than the share of the last-level
  cache the process gets. One 2 MiB-aligned buffer advised for transparent huge pages
  (Linux) needs a few page translations where 4 KiB pages need thousands; the benchmark
  times it against 4 KiB pages;
* **its thread count measured** (``FastLM(model, threads=n)``, :func:`best_threads`): at batch 1
  each op is microseconds of work, and a second thread's hand-off can cost more than it saves;
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

from course_lib import measure
from course_lib.checks import check_float, check_int, check_tensor, check_type
from course_lib.model import SwiGLU, TinyLM, _sample

#: the attention and MLP kinds :class:`FastLM` implements (anything else is refused)
SUPPORTED = {"attention": ("full",), "mlp": ("swiglu",)}


class StaticKVCache:
    """Values and keys of every layer in one pre-allocated tensor, written by position.

    ``kv`` is (n_layers, B, max_len, 2·H_kv·d): the row of a position holds its values, then
    its keys (the order the fused projection produces them in, so one copy writes both).
    ``keys[i]`` / ``values[i]`` are (B, H_kv, max_len, d) *views* of layer ``i`` — no copy,
    made once. ``pos`` is the number of positions filled; :meth:`truncate` moves it back
    (speculative decoding's rollback): entries beyond ``pos`` are never read, and the next
    step overwrites them.
    """

    def __init__(self, n_layers: int, batch_size: int, n_kv_heads: int, max_len: int, head_dim: int, *, dtype, device):
        self.kv = torch.zeros((n_layers, batch_size, max_len, 2 * n_kv_heads * head_dim), dtype=dtype, device=device)
        split = self.kv.view(n_layers, batch_size, max_len, 2, n_kv_heads, head_dim)
        self.values = [split[i, :, :, 0].transpose(1, 2) for i in range(n_layers)]  # (B, H_kv, L, d) each
        self.keys = [split[i, :, :, 1].transpose(1, 2) for i in range(n_layers)]
        # the first sequence's rows, values and transposed keys per layer, for the batch-1 step
        self.rows0 = [self.kv[i, 0] for i in range(n_layers)]  # (max_len, 2·H_kv·d)
        self.values0 = [v[0] for v in self.values]  # (H_kv, max_len, d)
        self.keys0_t = [k[0].transpose(1, 2) for k in self.keys]  # (H_kv, d, max_len)
        self.pos = 0

    @property
    def max_len(self) -> int:
        return self.kv.shape[2]

    def truncate(self, length: int) -> None:
        """Forget every position from ``length`` on (any length back to 0)."""
        self.pos = check_int("length", length, min=0, max=self.pos)

    def nbytes(self) -> int:
        return self.kv.nbytes


def _pair_rows(w: torch.Tensor, n_heads: int, head_dim: int) -> torch.Tensor:
    """Rows of ``w`` (n_heads·d, C) reordered per head as (0, d/2, 1, d/2+1, ...): each RoPE pair
    (i, i + d/2) becomes two adjacent outputs, one complex number for ``view_as_complex``.

    Queries and keys are reordered alike, so every q·k (the only thing they are used for) is
    unchanged; the cache simply holds the keys in this order.
    """
    w = w.view(n_heads, 2, head_dim // 2, -1).transpose(1, 2)  # (H, d/2, 2, C)
    return w.reshape(n_heads * head_dim, -1)


def _arena(tensors, *, huge_pages: bool) -> tuple[list[torch.Tensor], bool, tuple]:
    """Copies of ``tensors`` as views into one flat, 2 MiB-aligned fp32 buffer.

    A decode step streams every weight once. Spread over many allocations of 4 KiB pages,
    a stream of megabytes touches more pages than the TLB can map, and pays page-table walks
    as it goes. With ``huge_pages`` the buffer is a fresh private anonymous mapping advised
    ``MADV_HUGEPAGE`` (Linux transparent huge pages, where the kernel grants them), so a few
    2 MiB pages cover it. Returns the views, whether the advice was taken, and the objects
    that own the memory (keep them alive as long as the views).
    """
    import mmap

    align = 2 * 1024 * 1024  # one huge page
    n = sum(t.numel() for t in tensors)
    size = n * 4 + align  # room to start on a page boundary
    advised, owner = False, None
    if huge_pages and hasattr(mmap, "MADV_HUGEPAGE"):
        try:  # private and anonymous: shared memory is shmem, which THP usually leaves alone
            owner = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            owner.madvise(mmap.MADV_HUGEPAGE)
            flat = torch.frombuffer(owner, dtype=torch.float32)
            advised = True
        except (OSError, ValueError):  # no THP here: an ordinary buffer
            owner = None
    if owner is None:
        flat = torch.empty(size // 4)
    start = (-flat.data_ptr() % align) // 4
    views, at = [], start
    for t in tensors:
        v = flat[at : at + t.numel()].view(t.shape)
        v.copy_(t)
        views.append(v)
        at += t.numel()
    return views, advised, (owner, flat)


def _pad(w: torch.Tensor, *, row: bool) -> torch.Tensor:
    """``w`` (in, out) with one zero row appended (``row``) or one zero column, contiguous."""
    return torch.cat([w, w.new_zeros((1, w.shape[1]) if row else (w.shape[0], 1))], dim=0 if row else 1)


def _unit(x: torch.Tensor) -> torch.Tensor:
    r"""RMSNorm on the extended residual stream (see :meth:`FastLM._decode_one`): ``x`` over its length,
    :math:`x / \sqrt{\sum x^2 + C\epsilon}` — its gain and :math:`\sqrt C` live in the next matmul."""
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True)


class FastLM:
    """A decode-only twin of a :class:`~course_lib.model.TinyLM`: same weights, fused, fewer ops.

    ``FastLM(model)`` copies the weights once (fused); later changes to ``model`` are not
    seen. ``forward(idx, cache=)`` / ``fast(idx, cache=)`` returns logits (B, T, V) like the
    readable model (a cache is required: this path decodes), ``new_cache`` allocates a
    :class:`StaticKVCache` and :meth:`generate` decodes. It has ``config``,
    ``flops_per_token`` and ``embed`` of the readable model, so the speculative decoder and
    the benchmarks take either.

    ``huge_pages`` puts the weights in one buffer advised for transparent huge pages (where
    the OS offers them; the ``huge_pages`` attribute says whether it did).

    ``threads`` (an int, or None to leave PyTorch's setting alone) is the intra-op thread
    count :meth:`forward` and :meth:`generate` run with, restored afterwards: at batch 1 the
    ops are so small that handing each to a second thread can cost more than it saves —
    :func:`best_threads` measures which count wins on this machine.

    ``compile=True`` also compiles the one-token step (:meth:`_decode_static`, see the module
    docstring) and runs it once at batch 1, so the compile happens here and its wall time is
    ``compile_seconds`` (shorter when inductor's on-disk cache already holds this graph from
    an earlier process: measured cold, it is the full price); one-token steps on a cache of ``max_seq_len`` positions (what
    :meth:`generate` and :meth:`new_cache` allocate when compiled) then take the compiled
    step; multi-token passes (prefill, a speculative verify) stay eager. Another batch size
    compiles again on its first step.
    """

    def __init__(self, model: TinyLM, *, compile: bool = False, threads: int | None = None, huge_pages: bool = True):
        check_type("model", model, TinyLM)
        for flag, value in (("compile", compile), ("huge_pages", huge_pages)):
            if not isinstance(value, bool):
                raise TypeError(f"{flag} must be a bool, got {type(value).__name__}")
        self.threads = check_int("threads", threads, min=1, allow_none=True)
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
        self.eps_c = c.norm_eps * c.d_model  # RMSNorm's eps, on the sum of squares instead of the mean
        root_c = c.d_model**0.5
        self.vk = 2 * self.hkv * self.d  # width of [v k]: what the cache stores per position
        self.width = self.vk + self.h * self.d  # width of [v k q]
        self.layers = []
        with torch.no_grad():
            cols = []
            for blk in model.blocks:
                a, mlp = blk.attn, blk.mlp
                assert isinstance(mlp, SwiGLU)
                # rows [v, k, q]: k and q in RoPE-pair order, q pre-scaled by 1/sqrt(d) (attention then
                # uses scale 1), each input column scaled by the norm's sqrt(C)·g
                wvkq = torch.cat(
                    [
                        a.v_proj.weight,
                        _pair_rows(a.k_proj.weight, self.hkv, self.d),
                        _pair_rows(a.q_proj.weight, self.h, self.d) / self.d**0.5,
                    ]
                ) * (blk.attn_norm.weight * root_c)
                wgu = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]) * (blk.mlp_norm.weight * root_c)
                # stored (in, out) for x @ w, over the residual stream's extra coordinate (see _decode_one):
                # a zero input row (it adds nothing) on the norms' matmuls, a zero output column (it is
                # never changed) on the residual updates
                cols += [_pad(wvkq.t(), row=True), _pad(a.o_proj.weight.t(), row=False)]
                cols += [_pad(wgu.t(), row=True), _pad(mlp.down_proj.weight.t(), row=False)]
            head = (model.lm_head.weight * (model.norm.weight * root_c)).t()  # (C, V)
            # every weight a step reads, in one buffer (huge pages where the kernel grants them)
            cols, self.huge_pages, self._arena = _arena([*cols, _pad(head, row=True)], huge_pages=huge_pages)
            self.layers = [tuple(cols[4 * i : 4 * i + 4]) for i in range(c.n_layers)]
            self.head_t = cols[-1]  # (C+1, V)
            self.embed_w = model.embed.weight.detach()
            # the embedding with the constant coordinate sqrt(C·eps) appended: the one-row step's residual stream
            self.embed_1 = torch.cat([self.embed_w, torch.full((c.vocab_size, 1), self.eps_c**0.5)], dim=1)
            # RoPE as one complex product over the [v k q] row read as pairs: e^{i p w} on k and q, 1 on v
            cos, sin = model.rope_cos[:, : self.d // 2], model.rope_sin[:, : self.d // 2]  # (L, d/2)
            n = c.max_seq_len
            self.cis = torch.cat(
                [
                    torch.ones(n, self.hkv * self.d // 2, dtype=torch.complex64),
                    torch.complex(cos, sin).repeat(1, self.h + self.hkv),
                ],
                dim=1,
            )  # (L, width/2)
            self._cos, self._sin = self.cis.real.contiguous(), self.cis.imag.contiguous()  # for the compiled step
            self.causal = torch.ones(n, n, dtype=torch.bool, device=cos.device).tril()
            # scratch rows of a batch-1 step, and views of them made once (see _decode_one)
            self._z = torch.zeros(1, self.width)
            self._z_pairs = torch.view_as_complex(self._z.view(-1, 2))  # (width/2,) complex
            self._z_vk, self._z_q = self._z[0, : self.vk], self._z[0, self.vk :].view(self.hkv, self.rep, self.d)
            self._g = torch.zeros(1, 2 * c.d_ff)
            self._gate, self._up = self._g[:, : c.d_ff], self._g[:, c.d_ff :]
        self.dff = c.d_ff
        self.compiled, self.compile_seconds = None, 0.0
        if compile:
            self.compiled = torch.compile(
                self._decode_static, fullgraph=True, dynamic=False, options={"cpp_wrapper": True}
            )
            start = time.perf_counter()
            cache = self.new_cache(1)
            with torch.inference_mode(), self._threads():
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
        if cache.pos + t > cache.max_len or b != cache.kv.shape[1]:
            raise ValueError(
                f"cache holds batch {cache.kv.shape[1]} x {cache.max_len} positions; "
                f"cannot add ({b}, {t}) tokens at position {cache.pos}"
            )
        with torch.inference_mode(), self._threads():
            return self._step(idx, cache, all_logits=True)

    def _threads(self):
        """A context running its block at ``self.threads`` intra-op threads (None: PyTorch's setting)."""
        return measure.num_threads(self.threads)

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
        if t == 1 and b == 1:
            out = self._decode_one(idx, cache)  # (1, V)
            return out.view(1, 1, -1) if all_logits else out
        h, hkv, d, rep, vk, dff = self.h, self.hkv, self.d, self.rep, self.vk, self.dff
        cis = self.cis[start:end]  # (T, width/2)
        x = F.embedding(idx.reshape(-1), self.embed_1)  # (B·T, C+1): the residual stream (see _decode_one)
        mask = None
        if t > 1 and start > 0:  # additive, made once per pass rather than converted from bool in every layer
            mask = torch.zeros((t, end), dtype=x.dtype).masked_fill_(~self.causal[start:end, :end], float("-inf"))
            mask = mask.repeat(self.rep, 1)  # (rep·T, end): the causal rows tiled per query group
        for i, (wvkq, wo, wgu, wd) in enumerate(self.layers):
            z = (_unit(x) @ wvkq).view(b, t, -1)  # (B, T, [v k q])
            # RoPE on k and q at once: each pair times e^{i p w} (v's pairs times 1), in place
            torch.view_as_complex(z.view(b, t, -1, 2)).mul_(cis)
            cache.kv[i, :, start:end] = z[..., :vk]  # one write: values and keys
            keys, values = cache.keys[i][:, :, :end], cache.values[i][:, :, :end]  # (B, H_kv, end, d): views
            if t == 1:  # GQA by grouping: the rep query heads of a kv head are its "queries"
                y = F.scaled_dot_product_attention(z[:, 0, vk:].view(b, hkv, rep, d), keys, values, scale=1.0)
            elif mask is None:  # prefill from position 0: causal without a mask
                q = z[..., vk:].view(b, t, h, d).transpose(1, 2)  # (B, H, T, d)
                y = F.scaled_dot_product_attention(q, keys, values, is_causal=True, enable_gqa=rep > 1, scale=1.0)
                y = y.transpose(1, 2)  # (B, T, H, d)
            else:  # a verify pass mid-sequence: grouped queries, the causal rows tiled per group
                q = z[..., vk:].reshape(b, t, hkv, rep, d).permute(0, 2, 3, 1, 4).reshape(b, hkv, rep * t, d)
                y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=1.0)  # (B, H_kv, rep·T, d)
                y = y.view(b, hkv, rep, t, d).permute(0, 3, 1, 2, 4)  # (B, T, H_kv, rep, d)
            x = torch.addmm(x, y.reshape(b * t, h * d), wo)
            g = _unit(x) @ wgu  # (B·T, 2·d_ff)
            x = torch.addmm(x, F.silu(g[:, :dff]).mul_(g[:, dff:]), wd)
        cache.pos = end
        if not all_logits:
            x = x.view(b, t, -1)[:, -1]
        out = _unit(x) @ self.head_t
        return out.view(b, t, -1) if all_logits else out  # (B, T, V) or (B, V)

    def _decode_one(self, idx, cache: StaticKVCache):
        r"""The batch-1 decode step, with as few operators as the arithmetic allows; logits (1, V).

        The same function as :meth:`_step`, arranged so that almost every operator is a matmul.
        Like every pass here it runs on the extended residual stream (``embed_1``: one extra
        coordinate, the constant :math:`\sqrt{C\epsilon}`, with a zero column in every residual
        update's weights and a zero row in every norm's matmul), so
        :math:`\lVert x\rVert = \sqrt{\sum x^2 + C\epsilon}` is RMSNorm's denominator and a norm
        is :func:`_unit`, one ``vector_norm`` and one divide. Beyond that:

        * the fused projection writes into a scratch row whose views (values+keys, queries, the
          complex pairs) were made once, so no slicing happens per layer;
        * attention for one query is two small ``bmm`` and a softmax over the grouped query
          heads: no mask, and no call into the general attention kernel, whose fixed cost for
          one query is several of these ops.
        """
        pos = cache.pos
        end = pos + 1
        z, z_vk, pairs, q, g, gate, up = self._z, self._z_vk, self._z_pairs, self._z_q, self._g, self._gate, self._up
        rows, values, keys_t = cache.rows0, cache.values0, cache.keys0_t
        cis = self.cis[pos]  # (width/2,) complex
        x = F.embedding(idx[0], self.embed_1)  # (1, C+1)
        for i, (wvkq, wo, wgu, wd) in enumerate(self.layers):
            torch.mm(_unit(x), wvkq, out=z)  # (1, [v k q])
            pairs.mul_(cis)  # RoPE on k and q (v's pairs times 1)
            rows[i][pos].copy_(z_vk)  # values and keys, one copy
            p = torch.bmm(q, keys_t[i][:, :, :end]).softmax(-1)  # (H_kv, rep, end)
            x = torch.addmm(x, torch.bmm(p, values[i][:, :end]).view(1, -1), wo)
            torch.mm(_unit(x), wgu, out=g)  # (1, 2·d_ff)
            x = torch.addmm(x, F.silu(gate, inplace=True).mul_(up), wd)
        cache.pos = end
        return torch.mm(_unit(x), self.head_t)

    def _decode_static(self, tok, pos, kv_all):
        """One token per sequence with static shapes, for ``torch.compile``: tok (B, 1) at
        position ``pos`` (a (1,) tensor, not a Python int, so one graph serves every position),
        ``kv_all`` the whole :class:`StaticKVCache` tensor. Same arithmetic as :meth:`_step`,
        but the new values/keys go in with ``index_copy_``, RoPE is written with real numbers
        (pairs (a, b) -> (a cos - b sin, a sin + b cos)) and each query attends to all
        ``max_len`` cached positions through the causal mask's row ``pos`` (positions not yet
        written get weight exactly 0). Returns logits (B, V); the caller moves ``cache.pos``."""
        b = tok.shape[0]
        h, hkv, d, rep, vk = self.h, self.hkv, self.d, self.rep, self.vk
        n = kv_all.shape[2]
        cos, sin = self._cos[pos], self._sin[pos]  # (1, width/2): RoPE in real numbers (inductor has no complex)
        mask = self.causal[pos, :n]  # (1, L): True up to and including pos
        x = self.embed_1[tok.reshape(-1)]  # (B, C+1): the stream with its constant coordinate (_decode_one)
        for i, (wvkq, wo, wgu, wd) in enumerate(self.layers):
            z = (_unit(x) @ wvkq).view(b, -1, 2)  # (B, width/2, 2)
            re, im = z[..., 0], z[..., 1]
            vkq = torch.stack([re * cos - im * sin, re * sin + im * cos], dim=-1).view(b, -1)  # (B, width)
            kv = kv_all[i]  # (B, L, 2 H_kv d)
            kv.index_copy_(1, pos, vkq[:, None, :vk])
            split = kv.view(b, n, 2, hkv, d)
            values, keys = split[:, :, 0].transpose(1, 2), split[:, :, 1].transpose(1, 2)  # (B, H_kv, L, d)
            q = vkq[:, vk:].view(b, hkv, rep, d)
            y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=1.0)
            x = torch.addmm(x, y.reshape(b, h * d), wo)
            g = _unit(x) @ wgu
            x = torch.addmm(x, F.silu(g[:, : self.dff]) * g[:, self.dff :], wd)
        return _unit(x) @ self.head_t

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
        with torch.inference_mode(), self._threads():
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
        with torch.inference_mode(), fast._threads():
            fast._step(x, cache, all_logits=False)
        return cache

    def run(cache):
        with torch.inference_mode(), fast._threads():
            for i in range(new_tokens):
                fast._step(steps[:, i : i + 1], cache, all_logits=False)

    return setup, run


def matmuls_fn(fast: FastLM, *, new_tokens: int):
    """A timed function doing only the matmuls of ``new_tokens`` one-token steps of ``fast``:
    the same weights, in the same order, on a random row — what a step costs with every other
    operator gone, the floor that removing operators alone cannot pass."""
    check_type("fast", fast, FastLM)
    check_int("new_tokens", new_tokens, min=1)
    x = torch.randn(1, fast.config.d_model + 1, generator=torch.Generator().manual_seed(0))  # the one-row stream
    ff = torch.randn(1, fast.dff, generator=torch.Generator().manual_seed(1))
    o = torch.randn(1, fast.h * fast.d, generator=torch.Generator().manual_seed(2))

    def run():
        with torch.inference_mode(), fast._threads():
            for _ in range(new_tokens):
                for wvkq, wo, wgu, wd in fast.layers:
                    x @ wvkq, torch.addmm(x, o, wo), x @ wgu, torch.addmm(x, ff, wd)
                x @ fast.head_t

    return run


def best_threads(fast: FastLM, *, candidates=None, prompt_len: int = 32, new_tokens: int = 16, repeats: int = 5) -> int:
    """The intra-op thread count at which ``fast`` decodes fastest here, measured (interleaved).

    ``candidates`` defaults to 1 and PyTorch's current count. At batch 1 each op is a few
    microseconds of work, and a second thread can cost more in hand-off than it saves: on
    a two-core cloud VM one thread measured faster; a bigger model or machine can differ,
    which is why this is measured, not assumed.
    """
    check_type("fast", fast, FastLM)
    candidates = [1, torch.get_num_threads()] if candidates is None else list(candidates)
    if not candidates:
        raise ValueError("candidates must hold at least one thread count >= 1")
    for i, n in enumerate(candidates):
        check_int(f"candidates[{i}]", n, min=1)
    candidates = sorted(set(candidates))
    if len(candidates) == 1:
        return candidates[0]
    setup, run = fast_decode_fn(fast, prompt_len=prompt_len, new_tokens=new_tokens)
    before, fast.threads = fast.threads, None  # the count each variant sets is the one that runs
    try:
        t = measure.interleaved({str(n): (setup, _at_threads(n, run)) for n in candidates}, warmup=1, repeats=repeats)
    finally:
        fast.threads = before
    return int(min(t, key=lambda n: t[n].median))


def readable_vs_fast(
    models: dict,
    *,
    prompt_len: int = 64,
    new_tokens: int = 32,
    bandwidth: float | None = None,
    compile: bool = False,
    threads: int | str | None = "best",
    warmup: int = 2,
    repeats: int = 7,
) -> list[dict]:
    """Decode tokens/s of the readable path and the fast path, for each ``{name: TinyLM}``, batch 1.

    All variants are timed in **one** interleaved run (:func:`course_lib.measure.interleaved`),
    so the speed-ups are ratios measured side by side. The readable path runs at PyTorch's
    thread count, as a notebook runs it. The fast path runs at ``threads``: ``"best"``
    (default) measures :func:`best_threads` per model first, an int fixes it, None leaves
    PyTorch's count. When that differs from PyTorch's count, the readable path is also timed
    at the fast path's count (path ``"readable, 1 thread"`` or ``"readable, N threads"``), so
    each fast row has ``speedup`` (against the readable path as it runs by default) and
    ``speedup_same_threads`` (against the readable path at its own thread count: what the
    code alone buys). The fast path's matmuls are also timed alone (:func:`matmuls_fn`): its
    row has ``matmul_ms_per_token`` and ``matmul_share``, the part of its step that no
    operator count can remove.

    With ``bandwidth`` (bytes/s, e.g. :func:`course_lib.hardware.memory_bandwidth`) each row
    also gets the decode bound (:func:`course_lib.hardware.decode_bound` of the weights + KV
    cache a step reads at the mid-decode context) and the fraction of it reached. Greedy
    tokens of each path are checked equal to the readable path's on a prompt
    (``identical``). With ``compile`` a further path, ``FastLM(model, compile=True)`` at the
    same threads, is timed beside them; its row has ``compile_s`` and ``pays_after_tokens``
    — the tokens after which the compile time is won back against the eager fast path (inf
    when the compiled step is not faster).
    """
    from course_lib import hardware

    if not isinstance(models, dict) or not models:
        raise ValueError("models must be a non-empty dict {name: TinyLM}")
    check_int("prompt_len", prompt_len, min=1)
    check_int("new_tokens", new_tokens, min=1)
    if bandwidth is not None:
        check_float("bandwidth", bandwidth, min=0, min_inclusive=False)
    if not isinstance(compile, bool):
        raise TypeError(f"compile must be a bool, got {type(compile).__name__}")
    if threads != "best":
        check_int("threads", threads, min=1, allow_none=True)
    default = torch.get_num_threads()
    paths = {"fast": False, "compiled": True} if compile else {"fast": False}
    twins = {
        (name, path): FastLM(check_type(f"models[{name!r}]", m, TinyLM).eval(), compile=c)
        for name, m in models.items()
        for path, c in paths.items()
    }
    chosen = {}
    for name in models:
        n = best_threads(twins[name, "fast"]) if threads == "best" else threads
        chosen[name] = default if n is None else n
        for path in paths:
            twins[name, path].threads = chosen[name]
    variants = {}
    for name, m in models.items():
        setup, run = measure.decode_fn(m, prompt_len=prompt_len, new_tokens=new_tokens)
        variants[f"{name} readable"] = (setup, run)
        if chosen[name] != default:
            variants[f"{name} {_readable_at(chosen[name])}"] = (setup, _at_threads(chosen[name], run))
        for path in paths:
            variants[f"{name} {path}"] = fast_decode_fn(twins[name, path], prompt_len=prompt_len, new_tokens=new_tokens)
        variants[f"{name} matmuls only"] = matmuls_fn(twins[name, "fast"], new_tokens=new_tokens)
    t = measure.interleaved(variants, warmup=warmup, repeats=repeats)
    rows = []
    for name, m in models.items():
        gen = torch.Generator().manual_seed(0)
        probe = torch.randint(0, m.config.vocab_size, (1, 8), generator=gen)
        reference = m.generate(probe, new_tokens)
        step_bytes = hardware.patient_step_bytes(m, context=prompt_len + new_tokens // 2)
        bound = hardware.decode_bound(step_bytes, bandwidth) if bandwidth is not None else float("nan")
        readable_paths = ["readable"] + ([_readable_at(chosen[name])] if chosen[name] != default else [])
        same = f"{name} {readable_paths[-1]}"
        for path in (*readable_paths, *paths):
            tok_s = new_tokens / t[f"{name} {path}"].median
            row = {
                "model": name,
                "path": path,
                "threads": default if path == "readable" else chosen[name],
                "tokens_per_s": tok_s,
                "ms_per_token": 1e3 / tok_s,
                "speedup": t[f"{name} readable"].median / t[f"{name} {path}"].median,
                # against the readable path at this row's own thread count (1.0 for the readable rows)
                "speedup_same_threads": 1.0
                if path.startswith("readable")
                else t[same].median / t[f"{name} {path}"].median,
                "step_MB": step_bytes / 1e6,
                "bound_tokens_per_s": bound,
                "fraction_of_bound": tok_s / bound,
                "identical": path.startswith("readable")
                or torch.equal(twins[name, path].generate(probe, new_tokens), reference),
            }
            if path == "fast":  # its matmuls alone, timed beside it: the share no operator count can remove
                row["matmul_ms_per_token"] = t[f"{name} matmuls only"].median / new_tokens * 1e3
                row["matmul_share"] = row["matmul_ms_per_token"] / row["ms_per_token"]
            if path == "compiled":
                saved = (t[f"{name} fast"].median - t[f"{name} compiled"].median) / new_tokens  # s per token
                row["compile_s"] = twins[name, path].compile_seconds
                row["pays_after_tokens"] = row["compile_s"] / saved if saved > 0 else float("inf")
            rows.append(row)
    rows[0]["note"] = t.note()
    return rows


def _readable_at(n: int) -> str:
    return f"readable, {measure.threads_phrase(n)}"


def _at_threads(n: int, run):
    """``run`` (a timed function taking its setup's result) executed at ``n`` threads."""

    def at(state):
        with measure.num_threads(n):
            run(state)

    return at
