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
# > position embeddings (RoPE), grouped-query attention, a SwiGLU MLP and the whole decoder —
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
import json
import math

import numpy as np
import torch
import torch.nn.functional as F
from IPython.display import Markdown, display

from course_lib import data, fingerprint, measure, viz, zoo
from course_lib.model import Attention, ModelConfig, RMSNorm, SwiGLU, TinyLM, apply_rope, rope_cache
from course_lib.train import TrainConfig, evaluate, perplexity, train

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
# `course_lib.train.train` is the standard small-LM recipe: AdamW, linear warm-up then
# cosine decay, gradient clipping; batches are random windows of the training tokens drawn
# from a seeded generator, so a rerun gives the same curve. We train the demo model above
# for a few seconds. A reference point: a model that knows nothing assigns every token
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
# settings; below it, the live widget (needs a kernel) and its static twin (works in the
# book) share that function.

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
    labels = [repr(tokenizer.decode([i])) for i in top.indices.tolist()]
    entropy = -(probs[probs > 0] * probs[probs > 0].log()).sum().item()
    fig = viz.figure(
        title_text=f"'The capital of France is' → next token (τ={temperature}, top-k={top_k}; entropy {entropy:.2f} nats)",
        xaxis_title="probability",
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
    sampling_figure, {"temperature": [0.0, 0.3, 0.7, 1.0, 1.5, 3.0], "top_k": [5, 40, 4096]}, label="temperature, top-k"
)

# %% [markdown]
# ## 7 · The report card
#
# Every chapter ends its measurements here: parameters (total and active per token),
# weight bytes, forward FLOPs per token, validation perplexity, prefill latency (the
# prompt processed at once) and decode latency (one token at a time with a KV cache),
# and peak memory while generating. Latencies are medians after warm-up, measured
# **interleaved** — tiny, small, tiny, small, … — so any drift of the machine hits both,
# and the comparison is reported as ratios. Peak memory is the process's resident-memory
# high-water mark above what was in use when `generate` started, read after the C heap's
# free pages are handed back to the system (`measure.peak_memory`); it counts whole 4 kB
# pages and everything the process allocates meanwhile, so at this size read it as
# megabytes, not bytes.

# %% tags=["nbval-ignore-output"]
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
# ## 8 · Latency versus context, and what the KV cache buys
#
# Generating token $t$ needs the keys and values of tokens $1..t-1$ in every layer.
# Without a cache the model recomputes them all for every new token: $O(t)$ work per token,
# $O(n^2)$ for a sequence. With a **KV cache** it keeps them and computes only the new
# token's keys and values — at the cost of memory that grows with the context (exercise
# below). The new token's attention still reads all $t$ cached keys, so a step is not free
# of the context: the cache removes the $O(t)$ matrix products of recomputing the prefix,
# not attention's own $O(t)$ dot products. We time
# both on the small patient at several context lengths, side by side in one run.

# %% tags=["nbval-ignore-output"]
contexts = [16, 64, 128, 192]
new = 16
rows, kv_timings = [], {}
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
    caption=f"small patient, batch 1; per context: {max(kv_timings.values(), key=lambda t: t.others or 0).note()} (the busiest of the four runs)",
)

# %% tags=["nbval-ignore-output"]
fig = viz.figure(
    title_text="Latency vs context (small patient)", xaxis_title="context length (tokens)", yaxis_title="milliseconds"
)
fig.add_scatter(x=contexts, y=[r["prefill ms"] for r in rows], name="prefill (whole prompt)", mode="lines+markers")
fig.add_scatter(
    x=contexts, y=[r["decode ms/token (cache)"] for r in rows], name="decode per token, KV cache", mode="lines+markers"
)
fig.add_scatter(
    x=contexts,
    y=[r["decode ms/token (no cache)"] for r in rows],
    name="decode per token, no cache",
    mode="lines+markers",
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


g_cache = measure.growth(contexts, [r["decode ms/token (cache)"] for r in rows])
g_full = measure.growth(contexts, [r["decode ms/token (no cache)"] for r in rows])
busy = [ctx for ctx in contexts if kv_timings[ctx].noisy]
if g_cache.word == "flat":
    why_cache = (
        ": every step pays the same fixed cost whatever the context — reading all the weights and launching the "
        "model's operators one by one from Python — and at this size that cost hides the attention over the cache"
    )
else:
    why_cache = (
        ". Attention over the cache does $O(t)$ work per token, so some growth is expected; the comparison with "
        "recomputing the prefix, at the end of this paragraph, shows how much it matters"
    )
if g_full.exponent >= 0.75:
    why_full = ", as the $O(t)$ argument says"
else:
    why_full = (
        ", less steeply than the $O(t)$ argument alone predicts: part of each step is a fixed cost that does not "
        "depend on the context"
    )
display(
    Markdown(
        f"Per decoded token, with a cache the time **{verb(g_cache)}** in the context here (fitted exponent "
        f"{g_cache.exponent:.2f} over {contexts[0]}–{contexts[-1]} tokens){why_cache}. Without the cache it "
        f"**{verb(g_full)}** (exponent {g_full.exponent:.2f}){why_full}. The cache made decoding "
        f"{cache_phrase(contexts[0])} at {contexts[0]} tokens of context and {cache_phrase(contexts[-1])} at "
        f"{contexts[-1]}."
        + (
            f" The machine was busy while the runs at {', '.join(map(str, busy))} tokens were measured, so single "
            "points may be off; the fitted exponents use all of them."
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
# * Measure latencies as medians after warm-up, interleaved, and report ratios.
# * The KV cache trades memory for work: each new token computes only its own keys and
#   values instead of the whole prefix's; its attention still reads every cached key, so
#   the cost per token is not independent of the context. Section 8 measured what that buys on this machine;
#   what that memory costs is the exercise.
#
# **When not to trust these numbers:** absolute milliseconds depend on your machine and
# on what else it is doing; ratios measured in one run are what carry over.
#
# ## Exercise · How big is a KV cache?
#
# Write `kv_cache_bytes(config, seq_len, batch_size, bytes_per_value)` returning how many
# bytes the keys and values of **all layers** take for `batch_size` sequences of `seq_len`
# tokens. Remember GQA: only `n_kv_heads` heads are cached. The checker compares your
# formula with the bytes of real caches allocated by the model.

# %%
from course_lib.exercises import check_kv_cache_bytes


def kv_cache_bytes(config: ModelConfig, seq_len: int, batch_size: int = 1, bytes_per_value: int = 4) -> int:
    raise NotImplementedError  # your code here


check_kv_cache_bytes(kv_cache_bytes)


# %% tags=["solution"]
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
# ## References
#
# * Touvron et al. (2023), *Llama 2: Open Foundation and Fine-Tuned Chat Models*. [arXiv:2307.09288](https://arxiv.org/abs/2307.09288)
# * Su et al. (2021), *RoFormer: Enhanced Transformer with Rotary Position Embedding*. [arXiv:2104.09864](https://arxiv.org/abs/2104.09864)
# * Zhang & Sennrich (2019), *Root Mean Square Layer Normalization*. [arXiv:1910.07467](https://arxiv.org/abs/1910.07467)
# * Shazeer (2020), *GLU Variants Improve Transformer*. [arXiv:2002.05202](https://arxiv.org/abs/2002.05202)
# * Ainslie et al. (2023), *GQA: Training Generalized Multi-Query Transformer Models from Multi-Head Checkpoints*. [arXiv:2305.13245](https://arxiv.org/abs/2305.13245)
# * Sennrich, Haddow & Birch (2016), *Neural Machine Translation of Rare Words with Subword Units*. [arXiv:1508.07909](https://arxiv.org/abs/1508.07909)
# * Karpathy, *nanoGPT* — the training-loop recipe. <https://github.com/karpathy/nanoGPT>
#
# Text of the corpus: Wikipedia contributors, CC BY-SA 4.0.
