# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · The patient: a tiny Llama you can train, measure and operate on
#
# Every later chapter makes a language model cheaper — fewer FLOPs, fewer bytes, less
# time — and has to say what that cost in quality. To answer honestly we need two things:
# a **patient**, a model built exactly like the big open models (Llama, Mistral) but small
# enough to train and time on a laptop CPU; and a **report card**, one set of measurements
# that every chapter repeats on its variants, side by side with the baseline.
#
# > **What you'll build:** a byte-level BPE encoder, token embeddings, RMSNorm, rotary
# > position embeddings (RoPE), grouped-query attention, a SwiGLU MLP and the whole decoder,
# > the training loop (learning-rate schedule, clipping, AdamW) and KV-cache decoding —
# > each step checked against the course library `course_lib`.
# > **What you'll learn:** where a transformer's parameters and FLOPs go, what a KV cache
# > saves in generation (the prefix's keys and values are no longer recomputed; attention
# > over them still grows with the context), and how to time code so that the numbers mean
# > something.
# > **What you'll need:** Python and PyTorch basics; no GPU, no downloads. The notebook runs
# > within the course's budget of 90 seconds on a 2-core CPU (`make course` times it).

# %% tags=["bootstrap"]
# Setup. On Colab (or any kernel without the course) this installs course_lib first.
import importlib.util
import subprocess
import sys

REPO_URL = "https://github.com/beyond-scale-course/efficient-ai-from-scratch"
COURSE_VERSION = "0.1.0"  # the release this notebook was written for (scripts/pin_bootstrap.py)
if importlib.util.find_spec("course_lib") is None:
    subprocess.check_call(
        [sys.executable, "-m", "pip", "install", "-q", f"beyond-scale-course @ git+{REPO_URL}@v{COURSE_VERSION}"]
    )
if "google.colab" in sys.modules:  # let Colab render ipywidgets
    from google.colab import output

    output.enable_custom_widget_manager()

from course_lib.notebook import start

device = start(seed=0)

# %%
import copy
import json
import math

import numpy as np
import torch
import torch.nn.functional as F
from IPython.display import Markdown, display

from course_lib import data, fingerprint, measure, viz, zoo
from course_lib.model import Attention, ModelConfig, RMSNorm, SwiGLU, TinyLM, apply_rope, rope_cache
from course_lib.train import TrainConfig, evaluate, lr_at, perplexity, train

# %% [markdown]
# ## 1 · The data: ten thousand Wikipedia summaries, offline
#
# The course trains on the summaries of Wikipedia's *vital articles* — one to three
# paragraphs each on topics from *20th-century classical music* to *Zoology* — shipped as a
# data file inside a small PyPI wheel, so nothing is downloaded when a notebook runs.
# `course_lib.data` reads the file, checks its sha256, and splits it **by article**
# (a hash of the title decides), so no validation text ever leaks into training.

# %%
articles = data.load_articles()
splits = data.split_articles()
print(f"{len(articles):,} articles, {sum(len(a.extract) for a in articles):,} characters of extract")
print({name: len(items) for name, items in splits.items()})
print(f"{len(data.TOPICS)} topics:", ", ".join(data.TOPICS))
print("\nexample:\n" + splits["val"][0].text[:400])

# %% [markdown]
# ## 2 · Tokens: byte-level BPE, encoded by hand
#
# A language model predicts integers, so text is cut into **tokens** first. Byte-pair
# encoding (Sennrich et al., 2016; byte-level as in GPT-2) starts from the 256 byte values
# and repeatedly merges the most frequent adjacent pair in the training text into a new
# token, until the vocabulary has the size we asked for. The course tokenizer has 4,096
# entries (a setting: `data.DEFAULT_VOCAB_SIZE`) and was trained with the `tokenizers`
# library on the training split only.
#
# Encoding then replays the merges: split the text into word-like pieces, turn each into
# its bytes, and keep merging the adjacent pair that was learned **earliest** (lowest
# rank). Here is that algorithm in ten lines, checked against the library.

# %%
tokenizer = data.get_tokenizer()
spec = json.loads(tokenizer.to_str())
vocab = spec["model"]["vocab"]  # token string -> id
rank = {tuple(pair): i for i, pair in enumerate(spec["model"]["merges"])}  # (a, b) -> merge order
print("first merges learned:", [a + b for a, b in spec["model"]["merges"][:12]])


def bpe_encode(text: str) -> list[int]:
    ids = []
    for piece, _ in tokenizer.pre_tokenizer.pre_tokenize_str(text):  # words, bytes shown as printable chars
        parts = list(piece)
        while len(parts) > 1:
            best_rank, i = min((rank.get(pair, math.inf), i) for i, pair in enumerate(zip(parts, parts[1:])))
            if best_rank == math.inf:
                break
            parts[i : i + 2] = [parts[i] + parts[i + 1]]  # merge the earliest-learned pair
        ids += [vocab[p] for p in parts]
    return ids


sample = splits["val"][3].text
assert bpe_encode(sample) == tokenizer.encode(sample).ids
print(f"{len(sample)} characters -> {len(bpe_encode(sample))} tokens; identical to the library's encoding")
print([tokenizer.decode([i]) for i in bpe_encode("Rotary embeddings rotate queries.")])

# %%
val_ids = data.encode_split("val", tokenizer)
train_ids = data.encode_split("train", tokenizer)
val_chars = sum(len(a.text) + 1 for a in splits["val"])
print(
    f"train: {len(train_ids):,} tokens; val: {len(val_ids):,} tokens; {val_chars / len(val_ids):.2f} characters per token"
)

# %% [markdown]
# ## 3 · The model, one piece at a time
#
# The patient is a decoder-only transformer with the Llama recipe (Touvron et al., 2023):
# token embedding → *n* blocks of [RMSNorm → attention with RoPE → residual, RMSNorm →
# SwiGLU MLP → residual] → RMSNorm → a linear layer back to vocabulary logits, tied to
# the embedding matrix. We build each piece from its formula and check it against the
# library module with the same weights.

# %%
cfg = ModelConfig(vocab_size=4096, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64)
torch.manual_seed(0)
model = TinyLM(cfg).eval()
x = torch.tensor([tokenizer.encode("The Eiffel Tower is a wrought-iron lattice tower").ids])  # (B=1, T)
B, T = x.shape
print(cfg)
print(f"input: {T} tokens")

# %% [markdown]
# **Embedding.** Row $i$ of a $V \times C$ matrix $E$ is token $i$'s vector. A lookup is the
# same as multiplying a one-hot vector by $E$ — but costs no FLOPs.

# %%
E = model.embed.weight  # (V, C)
h = F.one_hot(x, cfg.vocab_size).float() @ E  # (B, T, C)
assert torch.allclose(h, model.embed(x))

# %% [markdown]
# **RMSNorm** (Zhang & Sennrich, 2019) rescales each vector to unit root-mean-square,
# then by a learned gain $g$: $\;y = \dfrac{x}{\sqrt{\frac1C\sum_j x_j^2 + \epsilon}} \odot g$.
# Unlike LayerNorm it does not subtract the mean — one reduction fewer, same quality.


# %%
def rms_norm(x, g, eps=cfg.norm_eps):
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * g


norm = model.blocks[0].attn_norm
with torch.no_grad():
    norm.weight.uniform_(0.5, 1.5)  # a non-trivial gain, so the check means something
assert torch.allclose(rms_norm(h, norm.weight), norm(h), atol=1e-6)
assert isinstance(norm, RMSNorm)

# %% [markdown]
# **Rotary position embeddings** (Su et al., 2021). Attention by itself does not know word
# order. RoPE rotates each query and key by an angle proportional to its position: pair up
# coordinates $(x_i, x_{i+d/2})$, read the pair as a complex number $z_i$, and multiply by
# $e^{\,\mathrm{i}\,p\,\omega_i}$ with $\omega_i = \theta^{-2i/d}$. Because rotations compose,
# the dot product of a query at position $p$ with a key at position $q$ depends only on
# $p - q$: attention sees *relative* position for free, with no parameters.


# %%
def rope_complex(v, positions, theta=cfg.rope_theta):  # v (..., T, d)
    d = v.shape[-1]
    omega = theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)  # (d/2,)
    z = torch.complex(v[..., : d // 2].double(), v[..., d // 2 :].double())  # pairs (x_i, x_{i+d/2})
    z = z * torch.polar(torch.ones(len(positions), d // 2, dtype=torch.float64), positions[:, None].double() * omega)
    return torch.cat([z.real, z.imag], dim=-1).float()


cos, sin = rope_cache(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta)
v = torch.randn(1, cfg.n_heads, T, cfg.head_dim)
assert torch.allclose(rope_complex(v, torch.arange(T)), apply_rope(v, cos[:T], sin[:T]), atol=1e-5)

q1, k1 = torch.randn(cfg.head_dim), torch.randn(cfg.head_dim)


def rotated_dot(p, q):
    return (apply_rope(q1, cos[p], sin[p]) @ apply_rope(k1, cos[q], sin[q])).item()


print(
    f"q·k at positions (5, 2): {rotated_dot(5, 2):.5f}   at (40, 37): {rotated_dot(40, 37):.5f}   at (5, 4): {rotated_dot(5, 4):.5f}"
)
assert abs(rotated_dot(5, 2) - rotated_dot(40, 37)) < 1e-4

# %% [markdown]
# **Causal self-attention with grouped-query attention.** Each head computes
# $\mathrm{softmax}\!\big(QK^\top/\sqrt{d} + M\big)V$, where the mask $M$ is $-\infty$ above
# the diagonal so a token cannot see its future. With **GQA** (Ainslie et al., 2023) the
# $H$ query heads share $H_{kv} < H$ key/value heads — here 4 query heads, 2 KV heads — which
# halves the keys and values a generating model must keep in memory (the KV cache).

# %%
attn = model.blocks[0].attn
H, Hkv, d = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
with torch.no_grad():
    hn = norm(h)
    q = (hn @ attn.q_proj.weight.T).view(B, T, H, d).transpose(1, 2)  # (B, H, T, d)
    k = (hn @ attn.k_proj.weight.T).view(B, T, Hkv, d).transpose(1, 2)  # (B, Hkv, T, d)
    v = (hn @ attn.v_proj.weight.T).view(B, T, Hkv, d).transpose(1, 2)
    q, k = apply_rope(q, cos[:T], sin[:T]), apply_rope(k, cos[:T], sin[:T])
    k, v = k.repeat_interleave(H // Hkv, dim=1), v.repeat_interleave(H // Hkv, dim=1)  # share KV heads
    scores = q @ k.transpose(-2, -1) / math.sqrt(d)  # (B, H, T, T)
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    weights = scores.softmax(-1)  # each row sums to 1 over the past
    y = (weights @ v).transpose(1, 2).reshape(B, T, H * d) @ attn.o_proj.weight.T  # (B, T, C)
    assert torch.allclose(y, attn(hn, cos[:T], sin[:T]), atol=1e-5)
    assert isinstance(attn, Attention)
print("attention weights of head 0 (rows: queries, columns: keys):")
print(weights[0, 0, :6, :6].numpy().round(2))

# %% [markdown]
# **SwiGLU MLP** (Shazeer, 2020): $\;W_{down}\big(\mathrm{SiLU}(W_{gate}x)\odot W_{up}x\big)$.
# The gate lets each of the $d_{ff}$ hidden units switch itself on per token; chapter 04
# exploits how often they are nearly off. Three matrices instead of two, so $d_{ff}$ is
# $\tfrac{8}{3}C$ rather than $4C$ to keep the parameter count of a classic MLP.

# %%
mlp = model.blocks[0].mlp
with torch.no_grad():
    z = torch.randn(B, T, cfg.d_model)
    ours = (F.silu(z @ mlp.gate_proj.weight.T) * (z @ mlp.up_proj.weight.T)) @ mlp.down_proj.weight.T
    assert torch.allclose(ours, mlp(z), atol=1e-6) and isinstance(mlp, SwiGLU)
print(f"d_model = {cfg.d_model}, d_ff = {cfg.d_ff} (= {cfg.d_ff / cfg.d_model:.2f} x d_model)")

# %% [markdown]
# **The whole decoder.** Pre-norm residual blocks, a final norm, and the tied output layer.
# This function uses nothing but the pieces above and the model's weights.


# %%
@torch.no_grad()
def forward_from_scratch(model, idx):
    T = idx.shape[1]
    h = model.embed.weight[idx]  # (B, T, C)
    for blk in model.blocks:
        h = h + blk.attn(rms_norm(h, blk.attn_norm.weight), cos[:T], sin[:T])  # attention checked above
        g = rms_norm(h, blk.mlp_norm.weight)
        m = blk.mlp
        h = h + (F.silu(g @ m.gate_proj.weight.T) * (g @ m.up_proj.weight.T)) @ m.down_proj.weight.T
    return rms_norm(h, model.norm.weight) @ model.embed.weight.T  # (B, T, V), tied head


assert torch.allclose(forward_from_scratch(model, x), model(x), atol=1e-5)
print("from-scratch decoder == course_lib.TinyLM:", tuple(model(x).shape))

# %% [markdown]
# ## 4 · Where the parameters and the FLOPs go
#
# Per block: attention has $C \cdot Hd$ (queries) $+\,2\,C \cdot H_{kv}d$ (keys, values)
# $+\,Hd \cdot C$ (output) weights; the MLP $3\,C\,d_{ff}$; two norms $2C$. Add the
# embedding $V C$ (shared with the output layer) and the final norm. A forward pass costs
# about 2 FLOPs per weight per token (a multiply and an add), plus attention's
# $QK^\top$ and $AV$ products, which grow with the context length.


# %%
def params_by_formula(c: ModelConfig) -> dict:
    attn = c.d_model * c.n_heads * c.head_dim * 2 + 2 * c.d_model * c.n_kv_heads * c.head_dim
    block = attn + 3 * c.d_model * c.d_ff + 2 * c.d_model
    emb = c.vocab_size * c.d_model * (1 if c.tie_embeddings else 2)
    return {
        "embedding": emb,
        "attention (all blocks)": c.n_layers * attn,
        "MLP (all blocks)": c.n_layers * 3 * c.d_model * c.d_ff,
        "norms": (2 * c.n_layers + 1) * c.d_model,
        "total": c.n_layers * block + emb + c.d_model,
    }


counts = params_by_formula(cfg)
assert counts["total"] == model.num_params()
flops = model.flops_per_token(cfg.max_seq_len)
viz.Table(
    [{"part": k, "parameters": v, "share": f"{v / counts['total']:.0%}"} for k, v in counts.items()],
    caption="Parameters of the demo model (formula = model.num_params())",
)

# %% [markdown]
# In the demo model the **embedding dominates** — most of the weights are the vocabulary
# table, not the transformer (section 6 counts the same share for the zoo's patients). That is why chapter 12's big-model arithmetic and
# this toy give different pictures: in a 7 B model the blocks hold almost everything.

# %%
assert counts["embedding"] > counts["total"] / 2  # the demo model: the embedding dominates (counted)
print(
    f"forward FLOPs per token at context {cfg.max_seq_len}: {flops['total']:,.0f} "
    f"(matmuls {flops['matmul']:,.0f} = 2 x {flops['matmul'] // 2:,} weights, attention {flops['attention']:,.0f})"
)

# %% [markdown]
# ## 5 · Training a patient live
#
# Training is the standard small-LM recipe (nanoGPT, Llama): AdamW, linear warm-up then
# cosine decay of the learning rate, gradient clipping; batches are random windows of the
# training tokens drawn from a seeded generator, so a rerun gives the same curve. We write
# the loop out piece by piece, check that it takes **the same steps** as the library's
# `course_lib.train.train`, then let the library train the demo model for a few seconds
# (it adds evaluation and a progress bar, nothing else).
#
# **The learning rate.** Warm up linearly for $t_w$ steps (large early steps from random
# weights are unstable), then follow half a cosine from $\eta$ down to $\eta_{min}$:
# $\;\eta_t = \eta_{min} + \tfrac12(\eta - \eta_{min})\big(1 + \cos(\pi\,\tfrac{t - t_w}{T - t_w})\big)$.


# %%
def lr_schedule(step: int, c: TrainConfig) -> float:
    if step < c.warmup_steps:
        return c.lr * (step + 1) / c.warmup_steps  # linear warm-up
    progress = min(1.0, (step - c.warmup_steps) / max(1, c.steps - c.warmup_steps))  # 0 -> 1
    lr_min = c.lr * c.min_lr_ratio
    return lr_min + 0.5 * (c.lr - lr_min) * (1 + math.cos(math.pi * progress))  # cosine decay


probe_cfg = TrainConfig(steps=160, warmup_steps=10)
assert all(lr_schedule(s, probe_cfg) == lr_at(s, probe_cfg) for s in range(probe_cfg.steps))
print("lr at steps 0, 9, 10, 85, 159:", [f"{lr_schedule(s, probe_cfg):.2e}" for s in (0, 9, 10, 85, 159)])

# %% [markdown]
# **A batch** is `batch_size` windows of `seq_len + 1` consecutive tokens starting at
# random offsets; the input is the window without its last token, the target the window
# shifted by one — every position predicts its successor. **The loss** is the mean
# next-token cross-entropy $-\frac{1}{BT}\sum \log p_\theta(y_{b,t}\mid x_{b,\le t})$,
# here from `log_softmax` and a gather of the target's log-probability.

# %%
train_tensor = torch.as_tensor(np.asarray(train_ids, dtype=np.int64))  # (N,)


def get_batch(gen: torch.Generator, batch_size: int, seq_len: int):
    starts = torch.randint(0, len(train_tensor) - seq_len, (batch_size,), generator=gen)  # (B,)
    windows = train_tensor[starts[:, None] + torch.arange(seq_len + 1)]  # (B, T+1)
    return windows[:, :-1], windows[:, 1:]  # inputs x, targets y: (B, T) each


def cross_entropy(logits, targets):  # logits (B, T, V), targets (B, T)
    log_p = logits.log_softmax(-1)  # (B, T, V)
    return -log_p.gather(-1, targets[..., None]).mean()  # mean of -log p(target)


xb, yb = get_batch(torch.Generator().manual_seed(0), 2, 8)
assert torch.equal(xb[:, 1:], yb[:, :-1])  # the targets are the inputs shifted by one
with torch.no_grad():
    assert torch.allclose(cross_entropy(model(xb), yb), model.loss(xb, yb), atol=1e-6)

# %% [markdown]
# **One optimiser step.** Backpropagate, then **clip**: if the gradient's global norm
# $\lVert g\rVert$ exceeds $c$, scale every gradient by $c/\lVert g\rVert$ (one bad batch cannot
# throw the weights far). Then **AdamW** (Loshchilov & Hutter, 2019) keeps running means of
# the gradient and of its square, $m \leftarrow \beta_1 m + (1-\beta_1) g$,
# $v \leftarrow \beta_2 v + (1-\beta_2) g^2$, corrects their start-up bias
# $\hat m = m/(1-\beta_1^t)$, $\hat v = v/(1-\beta_2^t)$, and moves each weight by
# $-\eta_t\,\hat m/(\sqrt{\hat v} + \epsilon)$: a step of about $\eta_t$ whatever the gradient's
# scale. Weight decay shrinks the *matrices* (not the norm gains) by $1 - \eta_t\lambda$,
# decoupled from the gradient.


# %%
def train_from_scratch(model, c: TrainConfig, eps: float = 1e-8) -> list[float]:
    gen = torch.Generator().manual_seed(c.seed)  # the batches' random offsets
    params = list(model.parameters())  # the tied embedding counts once
    m = [torch.zeros_like(p) for p in params]  # AdamW's first moment
    v = [torch.zeros_like(p) for p in params]  # and second moment
    (b1, b2), losses = c.betas, []
    model.train()
    for step in range(c.steps):
        lr = lr_schedule(step, c)
        x, y = get_batch(gen, c.batch_size, c.seq_len)  # (B, T) each
        loss = cross_entropy(model(x), y)
        for p in params:
            p.grad = None
        loss.backward()
        grad_norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in params)).item()  # global L2 norm
        clip = min(1.0, c.grad_clip / (grad_norm + 1e-6))
        with torch.no_grad():
            for p, m_i, v_i in zip(params, m, v):
                g = p.grad * clip
                if p.dim() >= 2:  # decay matrices only
                    p.mul_(1 - lr * c.weight_decay)
                m_i.mul_(b1).add_(g, alpha=1 - b1)
                v_i.mul_(b2).addcmul_(g, g, value=1 - b2)
                m_hat, v_hat = m_i / (1 - b1 ** (step + 1)), v_i / (1 - b2 ** (step + 1))
                p.sub_(lr * m_hat / (v_hat.sqrt() + eps))
        losses.append(loss.item())
    model.eval()
    return losses


# Same initial weights, same seed: the loop above and the library must take the same steps.
check_cfg = TrainConfig(steps=8, batch_size=4, seq_len=32, warmup_steps=3, eval_every=0, seed=1)
torch.manual_seed(0)
ours_model = TinyLM(cfg)
lib_model = copy.deepcopy(ours_model)
ours_losses = train_from_scratch(ours_model, check_cfg)
lib_losses = train(lib_model, train_ids, None, check_cfg, progress=False).loss
assert np.allclose(ours_losses, lib_losses, atol=1e-4), (ours_losses, lib_losses)
assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(ours_model.parameters(), lib_model.parameters()))
print("loss per step, ours:   ", np.round(ours_losses, 4))
print("loss per step, library:", np.round(lib_losses, 4))

# %% [markdown]
# Same losses, same weights after eight steps. Now the library's `train` (this loop plus
# a validation pass every `eval_every` steps) trains the demo model for a few seconds.
# A reference point: a model that knows nothing assigns every token
# probability $1/V$, a cross-entropy of $\ln V$ nats; a **unigram** model that only knows
# how frequent each token is does better.

# %%
counts_train = np.bincount(train_ids, minlength=cfg.vocab_size) + 1  # add-one smoothing
unigram_ce = -np.mean(np.log(counts_train / counts_train.sum())[val_ids])
print(
    f"uniform guess: {math.log(cfg.vocab_size):.3f} nats   unigram model: {unigram_ce:.3f} nats (ppl {math.exp(unigram_ce):.0f})"
)

# %% tags=["nbval-ignore-output"]
torch.manual_seed(0)
live = TinyLM(cfg)
tcfg = TrainConfig(
    steps=160, batch_size=16, seq_len=64, lr=3e-3, warmup_steps=10, eval_every=20, eval_batches=4, seed=0
)
history = train(live, train_ids, val_ids, tcfg, desc="live")
print(
    f"{history.tokens_seen:,} tokens in {history.seconds:.1f} s = {history.tokens_per_second:,.0f} tokens/s; "
    f"val loss {history.final_val_loss:.3f} (ppl {history.final_val_ppl:.1f})"
)

# %%
fig = viz.figure(title_text="Live training: the demo patient", xaxis_title="step", yaxis_title="cross-entropy (nats)")
fig.add_scatter(x=history.step, y=history.loss, name="train (batch)", line=dict(width=1))
fig.add_scatter(x=history.val_step, y=history.val_loss, name="validation", mode="lines+markers")
fig.add_hline(y=unigram_ce, line_dash="dot", annotation_text="unigram model", annotation_position="top right")
fig.add_hline(
    y=math.log(cfg.vocab_size), line_dash="dash", annotation_text="uniform guess", annotation_position="bottom right"
)
fig

# %%
# A few seconds of training already beat the uniform guess by a wide margin.
assert history.final_val_loss < math.log(cfg.vocab_size) - 1.0

# %% [markdown]
# ## 6 · The zoo: patients trained once, loaded from the package
#
# Chapters do not train from scratch. `python -m course_lib.zoo build` trained two
# patients deterministically on the same data and stored them inside the package, each
# with a card recording how (steps, tokens, seconds, perplexities, sha256). The next cells
# load both and time loading them with the course's timing protocol (`measure.interleaved`:
# warm-up, then the median of interleaved rounds).

# %%
tiny, small = zoo.load("tiny"), zoo.load("small")

# %% tags=["nbval-ignore-output"]
t_load = measure.interleaved(
    {"tiny": lambda: zoo.load("tiny"), "small": lambda: zoo.load("small")}, warmup=1, repeats=3, min_time=0
)
print(
    f"loading a patient (weights checked against their sha256): tiny {t_load['tiny'].median:.2f} s, "
    f"small {t_load['small'].median:.2f} s ({t_load.note()})"
)

# %%
viz.Table(
    [
        {
            "patient": p.name,
            "parameters": p.meta["params"],
            "non-embedding": p.meta["params_non_embedding"],
            "layers x width": f"{p.model.config.n_layers} x {p.model.config.d_model}",
            "tokens seen": p.meta["tokens_seen"],
            "epochs": p.meta["epochs"],
            "build time (s)": p.meta["train_seconds"],
            "val ppl": p.meta["val_ppl"],
            "test ppl": p.meta["test_ppl"],
        }
        for p in (tiny, small)
    ],
    caption="The zoo (from the cards written at build time)",
)

# %%
emb_share = {p.name: p.model.embed.weight.numel() / p.model.num_params() for p in (tiny, small)}
print(
    ", ".join(f"{name}: the embedding table holds {share:.0%} of the parameters" for name, share in emb_share.items())
)
assert emb_share["tiny"] > 0.5 > emb_share["small"]  # counted: only the tiny patient is mostly embedding

# %% tags=["nbval-ignore-output"]
# The build times above were measured when the zoo was built; say where, and what this machine is.
for p in (tiny, small):
    print(f"{p.name} build time: {fingerprint.provenance(p.meta.get('machine'))}")

# %%
# The card's number is reproduced here, on the whole validation split.
tc = small.meta["train_config"]
val_loss_small = evaluate(small.model, val_ids, seq_len=tc["seq_len"], batch_size=16, max_batches=None)
print(
    f"small: val loss {val_loss_small:.4f} (card: {small.meta['val_loss']}), perplexity {perplexity(val_loss_small):.2f}"
)
assert abs(val_loss_small - small.meta["val_loss"]) < 2e-3
assert small.meta["val_loss"] < tiny.meta["val_loss"] < unigram_ce  # bigger is better, both beat unigram

# %%
for prompt in ["The Moon is", "Albert Einstein was a", "Python is a programming"]:
    print(f"{prompt!r} ->", repr(small.complete(prompt, 24)[len(prompt) :]))
g = torch.Generator().manual_seed(0)
print(
    "\nsampled, temperature 0.8, top-k 40:",
    repr(small.complete("The Moon is", 24, temperature=0.8, top_k=40, generator=g)),
)

# %% [markdown]
# The text is fluent-looking and often wrong: a model this small, trained on this little
# text, has learned the style of an encyclopedia far better than its facts.
# That gap is what retrieval (chapter 08) and tools (chapter 09) address.
#
# ### Sampling, explored
# Generation turns logits into a choice. **Temperature** $\tau$ divides the logits before
# the softmax ($\tau \to 0$ is greedy, large $\tau$ flattens the distribution); **top-k**
# keeps only the $k$ most likely tokens. The figure is a pure function of the two
# settings (the prompt is "The capital of France is"; ␣ marks a token's leading space);
# below it, the live widget (needs a kernel) and its static twin (works in the book) share
# that function.

# %%
prompt_ids = small.encode("The capital of France is")
with torch.no_grad():
    next_logits = small.model(prompt_ids)[0, -1]  # (V,)


def sampling_figure(temperature: float = 1.0, top_k: int = 4096, n_show: int = 15):
    """Next-token probabilities after the prompt, for a temperature and a top-k."""
    if temperature <= 0:
        probs = F.one_hot(next_logits.argmax(), next_logits.numel()).float()
    else:
        logits = next_logits / temperature
        if top_k < logits.numel():
            logits = logits.masked_fill(logits < logits.topk(top_k).values[-1], float("-inf"))
        probs = logits.softmax(-1)
    top = probs.topk(n_show)
    labels = [tokenizer.decode([i]).replace(" ", "␣") for i in top.indices.tolist()]  # ␣ marks a space
    entropy = -(probs[probs > 0] * probs[probs > 0].log()).sum().item()
    fig = viz.figure(
        title_text=f"Next token: τ = {temperature}, top-k = {top_k}",
        xaxis_title=f"probability (entropy {entropy:.2f} nats)",
        yaxis=dict(autorange="reversed"),
        height=420,
    )
    fig.add_bar(x=top.values.tolist(), y=labels, orientation="h", marker_color=viz.PALETTE[0])
    return fig


sampling_figure(0.8, 40)

# %%
import ipywidgets as widgets

viz.interactive(
    sampling_figure,
    temperature=widgets.SelectionSlider(options=[0.0, 0.3, 0.7, 1.0, 1.5, 3.0], value=1.0, description="temperature"),
    top_k=widgets.SelectionSlider(options=[1, 5, 40, 200, 4096], value=4096, description="top-k"),
)

# %%
viz.static_twin(
    sampling_figure,
    {"temperature": [0.0, 0.3, 0.7, 1.0, 1.5, 3.0], "top_k": [5, 40, 4096]},
    step_label=lambda s: f"τ {s['temperature']}, top-k {s['top_k']}",
    start={"temperature": 1.0, "top_k": 40},
)

# %% [markdown]
# ## 7 · The report card
#
# Every chapter ends its measurements here: parameters (total and active per token),
# weight bytes, forward FLOPs per token, validation perplexity, prefill latency (the
# prompt processed at once) and decode latency (one token at a time with a KV cache),
# and peak memory while generating. Latencies are medians after warm-up, measured
# **interleaved** — tiny, small, tiny, small, … — so any drift of the machine hits both,
# and the comparison is reported as ratios. They run at **one thread**
# (`measure.num_threads(1)` sets the count for a block and puts it back; the caption names
# it), as do the decode timings after them, so that they describe the model rather than how
# two threads share a machine busy with other work (chapter 11 measures what a second
# thread buys at batch 1). Peak memory is the process's resident-memory
# high-water mark above what was in use when `generate` started, read after the C heap's
# free pages are handed back to the system (`measure.peak_memory`); it counts whole 4 kB
# pages and everything the process allocates meanwhile, so at this size read it as
# megabytes, not bytes.

# %% tags=["nbval-ignore-output"]
with measure.num_threads(1):  # batch 1: one thread (the caption says so), restored afterwards
    card = measure.report_card(
        {"tiny": tiny.model, "small": small.model},
        baseline="tiny",
        val_tokens=val_ids,
        eval_seq_len=256,
        eval_batches=8,
        prompt_len=64,
        new_tokens=32,
        repeats=5,
    )
card

# %%
assert card.ratio("small", "params") > 5  # robust: counted, not timed
assert card.cards["small"]["val_ppl"] < card.cards["tiny"]["val_ppl"]
assert card.ratio("small", "weight_mb") == card.ratio("small", "params")  # fp32: 4 bytes per weight
# generate() allocates a KV cache and logits: a peak of 0 would mean the meter cannot see them
assert all(c["peak_mem_mb"] is None or c["peak_mem_mb"] > 0 for c in card.cards.values())

# %% [markdown]
# The decode rows above are the **readable** model: one module per idea, written to be
# read. The same weights decoded on the course's fast path (`course_lib.fastdecode.FastLM`,
# chapter 11 explains what it changes) give the same tokens; its decode speed belongs on the
# card too, measured side by side with the readable path:

# %% tags=["nbval-ignore-output"]
from course_lib import fastdecode

with measure.num_threads(1):  # as the report card above: both paths at one thread
    fast_card = fastdecode.readable_vs_fast({"tiny": tiny.model, "small": small.model}, repeats=5)
assert all(r["identical"] for r in fast_card)
viz.Table(
    [
        {
            "variant": r["model"],
            "decode path": r["path"],
            "threads": r["threads"],
            "decode tokens/s": f"{r['tokens_per_s']:,.0f}",
            "decode ms / token": f"{r['ms_per_token']:.3f}",
            "× readable": f"×{r['speedup']:.2f}",
        }
        for r in fast_card
    ],
    caption="Report card, decode on the fast path (prompt 64 tokens, decode 32 tokens, batch 1; "
    + fast_card[0]["note"]
    + ")",
)

# %% [markdown]
# ## 8 · Latency versus context, and what the KV cache buys
#
# Generating token $t$ needs the keys and values of tokens $1..t-1$ in every layer.
# Without a cache the model recomputes them all for every new token: $O(t)$ work per token,
# $O(n^2)$ for a sequence. With a **KV cache** it keeps them and computes only the new
# token's keys and values — at the cost of memory that grows with the context (exercise
# below). The new token's attention still reads all $t$ cached keys, so a step is not free
# of the context: the cache removes the $O(t)$ matrix products of recomputing the prefix,
# not attention's own $O(t)$ dot products.
#
# **The cache, written out.** Decoding with a cache has two phases. *Prefill* runs the
# whole prompt through the model once and keeps every layer's keys and values. Each
# *decode* step then feeds only the newest token: it is embedded, rotated by RoPE **at its
# own position** (the cache's length), projected to one query and one key/value pair per
# layer; the pair is appended to that layer's cache and the query attends over all of it.
# No mask is needed in a decode step — everything in the cache is in the past.


# %%
@torch.no_grad()
def generate_with_cache(model, prompt, n_new: int):
    """Greedy decoding with a KV cache built from plain tensors (prompt (B, T0) -> (B, T0 + n_new))."""
    caches = [{"k": None, "v": None} for _ in model.blocks]  # per layer: (B, H_kv, t, d), t grows
    feed, start, new_tokens = prompt, 0, []
    for _ in range(n_new):
        B, T = feed.shape  # T = prompt length at prefill, then 1
        cos, sin = model.rope_cos[start : start + T], model.rope_sin[start : start + T]  # positions start..start+T-1
        h = model.embed(feed)  # (B, T, C)
        for blk, kv in zip(model.blocks, caches):
            a = blk.attn
            q, k, v = a.project(blk.attn_norm(h), cos, sin)  # q (B, H, T, d); k, v (B, H_kv, T, d)
            kv["k"] = k if kv["k"] is None else torch.cat([kv["k"], k], dim=2)  # append: (B, H_kv, start+T, d)
            kv["v"] = v if kv["v"] is None else torch.cat([kv["v"], v], dim=2)
            rep = a.n_heads // a.n_kv_heads  # GQA: each cached head serves `rep` query heads
            K, V = kv["k"].repeat_interleave(rep, dim=1), kv["v"].repeat_interleave(rep, dim=1)
            scores = q @ K.transpose(-2, -1) / math.sqrt(a.head_dim)  # (B, H, T, start+T)
            past = torch.arange(start + T)[None, :] <= torch.arange(start, start + T)[:, None]  # (T, start+T)
            scores = scores.masked_fill(~past, float("-inf"))  # all True in a decode step (T = 1)
            h = h + a.o_proj((scores.softmax(-1) @ V).transpose(1, 2).reshape(B, T, -1))
            h = h + blk.mlp(blk.mlp_norm(h))
        logits = model.lm_head(model.norm(h[:, -1]))  # (B, V): only the last position is needed
        nxt = logits.argmax(-1, keepdim=True)  # greedy: (B, 1)
        new_tokens.append(nxt)
        start, feed = start + T, nxt  # the cache now holds `start` positions; feed only the new token
    print(f"cache after {n_new} tokens: {len(caches)} layers x k, v of shape {tuple(caches[0]['k'].shape)}")
    return torch.cat([prompt, *new_tokens], dim=1)


kv_prompt = small.encode("The Eiffel Tower is")
ours_tokens = generate_with_cache(small.model, kv_prompt, 24)
assert torch.equal(ours_tokens, small.model.generate(kv_prompt, 24))  # the library's cached decode
assert torch.equal(ours_tokens, small.model.generate(kv_prompt, 24, use_cache=False))  # and no cache at all
print(repr(tokenizer.decode(ours_tokens[0].tolist())))

# %% [markdown]
# The same 24 tokens as the library's `generate`, with and without its cache: keeping the
# keys and values changes the work, not the answer. Now we time both on the small patient
# at several context lengths, side by side in one run, at one thread like the report card.
# Each point is the median of the interleaved rounds; the bars span the fastest to the
# slowest round, so a point the machine disturbed shows as a long bar, not as a fact.

# %% tags=["nbval-ignore-output"]
contexts = [16, 64, 128, 192]
new = 8  # tokens decoded per timed run; per-token times divide by it
rows, kv_timings = [], {}
with measure.num_threads(1):  # batch 1, as the report card
    for ctx in contexts:
        prompt = torch.randint(0, 4096, (1, ctx), generator=torch.Generator().manual_seed(ctx))
        t = measure.interleaved(
            {
                "prefill": measure.prefill_fn(small.model, prompt_len=ctx),
                "decode, KV cache": measure.decode_fn(small.model, prompt_len=ctx, new_tokens=new),
                "decode, no cache": lambda p=prompt: small.model.generate(p, new, use_cache=False),
            },
            warmup=1,
            repeats=3,
        )
        kv_timings[ctx] = t
        rows.append(
            {
                "context": ctx,
                "prefill ms": t["prefill"].median * 1e3,
                "decode ms/token (cache)": t["decode, KV cache"].median / new * 1e3,
                "decode ms/token (no cache)": t["decode, no cache"].median / new * 1e3,
            }
        )
        rows[-1]["cache speed-up"] = rows[-1]["decode ms/token (no cache)"] / rows[-1]["decode ms/token (cache)"]
viz.Table(
    [{k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()} for r in rows],
    caption=f"small patient, batch 1, {new} tokens decoded per run; per context: {max(kv_timings.values(), key=lambda t: t.others or 0).note()} (the busiest of the four runs)",
)

# %% tags=["nbval-ignore-output"]
series = [  # (variant, label, divide by: 1 for the whole prompt, `new` for per token)
    ("prefill", "prefill (whole prompt)", 1),
    ("decode, KV cache", "decode per token, KV cache", new),
    ("decode, no cache", "decode per token, no cache", new),
]
fig = viz.figure(
    title_text="Latency vs context (small patient)",
    xaxis_title="context length (tokens)",
    yaxis_title="ms (bars: fastest–slowest round)",
)
for variant, label, per in series:
    med = [kv_timings[c][variant].median / per * 1e3 for c in contexts]
    lo = [min(kv_timings[c][variant].samples) / per * 1e3 for c in contexts]
    hi = [max(kv_timings[c][variant].samples) / per * 1e3 for c in contexts]
    fig.add_scatter(
        x=contexts,
        y=med,
        name=label,
        mode="lines+markers",
        error_y=dict(type="data", array=[h - m for h, m in zip(hi, med)], arrayminus=[m - b for m, b in zip(med, lo)]),
        marker_symbol=["circle-open" if kv_timings[c].noisy else "circle" for c in contexts],
    )
fig

# %% tags=["nbval-ignore-output"]
# Robust: at the longest context, recomputing the whole prefix per token is far slower.
assert rows[-1]["cache speed-up"] > 2, rows[-1]


def cache_phrase(ctx):  # three-way: faster / slower / within noise, with the run's own noise band
    c = measure.compare(kv_timings[ctx], "decode, KV cache", "decode, no cache")
    return measure.speed_phrase(c.speedup, than="recomputing the prefix", noise=c.noise)


def verb(g):  # "stays flat" | "grows about linearly" | ...
    return "stays flat" if g.word == "flat" else g.word


g_prefill = measure.growth(contexts, [r["prefill ms"] for r in rows])
g_cache = measure.growth(contexts, [r["decode ms/token (cache)"] for r in rows])
g_full = measure.growth(contexts, [r["decode ms/token (no cache)"] for r in rows])
busy = [ctx for ctx in contexts if kv_timings[ctx].noisy]
if g_cache.word == "flat":
    why_cache = (
        ": every step pays the same fixed cost whatever the context — reading all the weights and launching the "
        "model's operators one by one from Python — and at this size that cost hides the attention over the cache"
    )
elif g_cache.exponent < 0:
    why_cache = (
        ". Nothing in a cached step gets cheaper as the cache grows, so a falling time is the machine's noise, "
        "not the model: compare the bars in the figure"
    )
else:
    why_cache = (
        ". Attention over the cache does O(t) work per token, so some growth is expected; the comparison with "
        "recomputing the prefix, at the end of this paragraph, shows how much it matters"
    )
if g_full.exponent < 0:
    why_full = ", which only the machine's noise can explain: recomputing a longer prefix is more work"
elif g_full.exponent >= 0.75:
    why_full = ", as the O(t) argument says"
else:
    why_full = (
        ", less steeply than the O(t) argument alone predicts: part of each step is a fixed cost that does not "
        "depend on the context"
    )
display(
    Markdown(
        f"Per decoded token, with a cache the time **{verb(g_cache)}** in the context here (fitted exponent "
        f"{g_cache.exponent:.2f} over {contexts[0]}–{contexts[-1]} tokens){why_cache}. Without the cache it "
        f"**{verb(g_full)}** (exponent {g_full.exponent:.2f}){why_full}. The cache made decoding "
        f"{cache_phrase(contexts[0])} at {contexts[0]} tokens of context and {cache_phrase(contexts[-1])} at "
        f"{contexts[-1]}. Prefill, which processes the whole prompt at once, **{verb(g_prefill)}** with the "
        f"prompt's length (exponent {g_prefill.exponent:.2f})."
        + (
            f" The machine was busy while the runs at {', '.join(map(str, busy))} tokens were measured (open "
            "markers in the figure), so single points may be off; their bars show by how much, and the fitted "
            "exponents use all the points."
            if busy
            else ""
        )
    )
)

# %% [markdown]
# On a real 7 B model every decode step must read gigabytes of weights, and decode becomes
# a memory-bandwidth problem (chapter 11).
#
# ## Summary
#
# * The patient is a faithful miniature of Llama: RMSNorm, RoPE, GQA, SwiGLU, tied
#   embeddings — each built here from its formula and checked against `course_lib`
#   (and, in the tests, against Hugging Face `transformers`' Llama with the same weights).
# * In the demo model and the tiny patient most parameters sit in the embedding table; in
#   the small patient the blocks already hold most of them (section 6 counts both). FLOPs
#   per token are about twice the number of weights the token passes through.
# * Training is a short loop — a seeded batch, cross-entropy, backward, clip, AdamW under
#   a warm-up-then-cosine learning rate — written out here and checked step for step
#   against `course_lib.train`.
# * Measure latencies as medians after warm-up, interleaved, and report ratios with the
#   spread of the rounds: a single disturbed point is noise, not a finding.
# * The KV cache trades memory for work: each new token computes only its own keys and
#   values instead of the whole prefix's; its attention still reads every cached key, so
#   the cost per token is not independent of the context. Section 8 measured what that buys on this machine;
#   what that memory costs is the first exercise.
#
# **When not to trust these numbers:** absolute milliseconds depend on your machine and
# on what else it is doing; ratios measured in one run are what carry over.
#
# ## Exercises
#
# ### 1 · How big is a KV cache?
#
# Write `kv_cache_bytes(config, seq_len, batch_size, bytes_per_value)` returning how many
# bytes the keys and values of **all layers** take for `batch_size` sequences of `seq_len`
# tokens. Remember GQA: only `n_kv_heads` heads are cached. The checker compares your
# formula with the bytes of real caches allocated by the model.

# %%
from course_lib.exercises import check_batched_decode_prediction, check_kv_cache_bytes, check_top_p


def kv_cache_bytes(config: ModelConfig, seq_len: int, batch_size: int = 1, bytes_per_value: int = 4) -> int:
    raise NotImplementedError  # your code here


check_kv_cache_bytes(kv_cache_bytes)


# %% tags=["solution"] jupyter={"source_hidden": true} cellView="form"
# @title Solution — try the exercise first
def kv_cache_bytes(config: ModelConfig, seq_len: int, batch_size: int = 1, bytes_per_value: int = 4) -> int:
    # keys and values (2) x layers x batch x kv heads x positions x head_dim x bytes
    return 2 * config.n_layers * batch_size * config.n_kv_heads * seq_len * config.head_dim * bytes_per_value


assert check_kv_cache_bytes(kv_cache_bytes).passed
c = small.model.config
print(
    f"small patient, full context of {c.max_seq_len}: {kv_cache_bytes(c, c.max_seq_len) / 1e3:.0f} kB per sequence; "
    f"without GQA it would be {c.n_heads // c.n_kv_heads}x that"
)

# %% [markdown]
# ### 2 · Nucleus (top-p) sampling
#
# Section 6 cut the distribution to a fixed number of tokens (top-k). **Top-p** (Holtzman
# et al., 2020) adapts the cut to the model's confidence: keep the *smallest* set of most
# likely tokens whose probabilities add up to at least `p`, zero the others, and
# renormalise. After "The capital of France is" a confident model may keep two tokens;
# after "The" it keeps hundreds.
#
# Write `top_p_probs(logits, p)`: logits `(..., V)` → probabilities `(..., V)` (float32,
# each row summing to 1) over the last axis. The most likely token is always kept. Hint:
# sort, take a cumulative sum, and decide for each sorted token from the mass *before* it.


# %%
def top_p_probs(logits: torch.Tensor, p: float) -> torch.Tensor:
    raise NotImplementedError  # your code here


check_top_p(top_p_probs)


# %% tags=["solution"] jupyter={"source_hidden": true} cellView="form"
# @title Solution — try the exercise first
def top_p_probs(logits: torch.Tensor, p: float) -> torch.Tensor:
    probs = logits.float().softmax(-1)  # (..., V)
    sorted_p, order = probs.sort(-1, descending=True)
    keep_sorted = sorted_p.cumsum(-1) - sorted_p < p  # mass before each token < p: it is still needed
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)  # back to vocabulary order
    kept = probs * keep
    return kept / kept.sum(-1, keepdim=True)


assert check_top_p(top_p_probs).passed
for p in (0.5, 0.9):
    print(f"top-p {p} keeps {int((top_p_probs(next_logits, p) > 0).sum())} tokens after 'The capital of France is'")

# %% [markdown]
# ### 3 · Predict, then measure: a decode step for 8 sequences
#
# A server rarely decodes one sequence at a time. Predict how many times longer **one
# decode step** of the small patient (KV cache, 64 tokens of context) takes for a batch of
# **8** sequences than for 1. Write down a simple model first — what does each step
# compute, and what does it have to read, whatever the batch? — then return your ratio.
# The cell after it measures the ratio on this machine and compares.


# %%
def predicted_batch8_ratio() -> float:
    raise NotImplementedError  # your prediction: time(batch 8 step) / time(batch 1 step)


# %% tags=["nbval-ignore-output"]
batch_steps = 8
with measure.num_threads(1):  # the thread count of section 8's decode timings
    batch_timings = measure.interleaved(
        {f"batch {b}": measure.decode_fn(small.model, prompt_len=64, new_tokens=batch_steps, batch=b) for b in (1, 8)},
        warmup=1,
        repeats=5,
        min_time=0,
    )
batch8_ratio = batch_timings["batch 8"].median / batch_timings["batch 1"].median
print(
    f"one decode step: batch 1 {batch_timings['batch 1'].median / batch_steps * 1e3:.2f} ms, "
    f"batch 8 {batch_timings['batch 8'].median / batch_steps * 1e3:.2f} ms ({batch_timings.note()})"
)
check_batched_decode_prediction(predicted_batch8_ratio, batch8_ratio)


# %% tags=["solution", "nbval-ignore-output"] jupyter={"source_hidden": true} cellView="form"
# @title Solution — try the exercise first
def predicted_batch8_ratio() -> float:
    # A simple two-part model: a fixed cost per step (read every weight once, launch each
    # operator) plus arithmetic that grows with the batch. For a model this small the fixed
    # part dominates; guess it is about 80 % of a batch-1 step: 0.8 + 0.2 x 8.
    return 0.8 + 0.2 * 8


assert check_batched_decode_prediction(predicted_batch8_ratio, batch8_ratio).passed
print(f"measured: {batch8_ratio:.2f}x for 8x the tokens — {8 / batch8_ratio:.1f}x the tokens per second")

# %% [markdown]
# ## Self-check
#
# Predict the measured question before you open its answer: the answer key is this run's
# own measurement from section 8.

# %% tags=["nbval-ignore-output"]
from course_lib import quiz

quiz.show("01", measured={"q3": measure.compare(kv_timings[contexts[0]], "decode, KV cache", "decode, no cache").word})

# %%
from course_lib import progress

progress.show("01")

# %% [markdown]
# ## References
#
# * Touvron et al. (2023), *Llama 2: Open Foundation and Fine-Tuned Chat Models*. [arXiv:2307.09288](https://arxiv.org/abs/2307.09288)
# * Su et al. (2021), *RoFormer: Enhanced Transformer with Rotary Position Embedding*. [arXiv:2104.09864](https://arxiv.org/abs/2104.09864)
# * Zhang & Sennrich (2019), *Root Mean Square Layer Normalization*. [arXiv:1910.07467](https://arxiv.org/abs/1910.07467)
# * Shazeer (2020), *GLU Variants Improve Transformer*. [arXiv:2002.05202](https://arxiv.org/abs/2002.05202)
# * Ainslie et al. (2023), *GQA: Training Generalized Multi-Query Transformer Models from Multi-Head Checkpoints*. [arXiv:2305.13245](https://arxiv.org/abs/2305.13245)
# * Sennrich, Haddow & Birch (2016), *Neural Machine Translation of Rare Words with Subword Units*. [arXiv:1508.07909](https://arxiv.org/abs/1508.07909)
# * Loshchilov & Hutter (2019), *Decoupled Weight Decay Regularization* (AdamW). [arXiv:1711.05101](https://arxiv.org/abs/1711.05101)
# * Holtzman et al. (2020), *The Curious Case of Neural Text Degeneration* (nucleus sampling). [arXiv:1904.09751](https://arxiv.org/abs/1904.09751)
# * Karpathy, *nanoGPT* — the training-loop recipe. <https://github.com/karpathy/nanoGPT>
#
# Text of the corpus: Wikipedia contributors, CC BY-SA 4.0.
