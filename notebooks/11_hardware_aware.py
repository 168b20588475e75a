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
# # 11 · Hardware-aware design: the roofline of your own machine
#
# Every chapter so far made a model do less: fewer active parameters, fewer attended
# positions, fewer bits per weight. Whether "less" becomes "faster" is decided by the
# hardware, and mostly by two numbers: how many floating-point operations per second the
# chip can do, and how many bytes per second its memory can deliver. This chapter measures
# both on **your** machine, places real operations between them, finds where the patient
# spends its time, and turns the same arithmetic into memory budgets for real models on
# phones and laptops.
#
# > **What you'll build:** a roofline of this computer (peak fp32, bf16 and int8 matmul
# > throughput and STREAM-style memory bandwidth, measured live), the arithmetic intensity
# > of matmuls, attention, RMSNorm and softmax, a profiler view of the patient, a batch-size
# > sweep, eager-vs-compiled fusion, a memory-footprint calculator for published models, and
# > the decode-speed bound.
# > **What you'll learn:** why LLM decoding is limited by memory bandwidth and prefill by
# > compute, why batching is nearly free until it is not, what kernel fusion saves, and what
# > it takes to fit a 3.8-billion-parameter model in 1 GiB
# > (the article's "sub-1GB").
# > **What you'll need:** chapter 01 (the patient) and the quantization vocabulary of
# > chapter 05 help. No GPU (a last section runs only when one is present); the notebook
# > runs within the course's 90-second budget on a 2-core CPU, `torch.compile` included.

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
import math

import torch
import torch.nn.functional as F
from IPython.display import Markdown, display
from torch.utils.flop_counter import FlopCounterMode

from course_lib import claims, configs, hardware, measure, viz, zoo
from course_lib.experiments import hardware as hardware_runs
from course_lib.paths import cache_dir

PATIENT = "small"  # the zoo patient this chapter measures

# %% [markdown]
# ## 1 · Two numbers decide everything
#
# Generating one token with a dense model of $N$ parameters costs about $2N$ FLOPs (a
# multiply and an add per weight) and requires **reading every weight once**. With 16-bit
# weights that is 2 bytes read per 2 FLOPs: an **arithmetic intensity** of about one FLOP
# per byte. Accelerators do hundreds of FLOPs in the time they fetch one byte: an NVIDIA
# H100 SXM is specified at 1,979 bf16 TFLOP/s with 2:4 sparsity, so 989 dense, against
# 3.35 TB/s of memory bandwidth ([datasheet](https://www.nvidia.com/en-us/data-center/h100/)). Gholami et
# al. (2024) measured the gap widening for two decades: peak FLOP/s grew 3.0× every two
# years, DRAM bandwidth 1.6× ([AI and Memory Wall](https://arxiv.org/abs/2403.14123)).
# So for decoding, bytes, not FLOPs, are the budget (Pope et al., 2023, work this out for
# serving at scale). Here is the arithmetic for Llama-2-7B,
# from its published configuration:

# %%
llama = configs.get("llama-2-7b")
n_params, _ = configs.count_params(llama)
fp16_bytes = configs.weight_bytes(llama, "fp16")
h100_peak, h100_bw = 989e12, 3.35e12  # bf16 dense FLOP/s, HBM3 bytes/s (NVIDIA H100 SXM datasheet)
print(
    f"Llama-2-7B: {n_params:,} parameters -> {2 * n_params / 1e9:.1f} GFLOP and {fp16_bytes / 1e9:.2f} GB read per token (fp16)"
)
print(
    f"intensity of decoding: {2 * n_params / fp16_bytes:.2f} FLOP/byte; the H100 needs {h100_peak / h100_bw:.0f} FLOP/byte to be busy"
)
print(
    f"so an H100 decodes at most {h100_bw / fp16_bytes:.0f} tokens/s at batch 1, using {h100_bw / fp16_bytes * 2 * n_params / h100_peak:.2%} of its FLOPs"
)

# %% [markdown]
# The **roofline model** (Williams, Waterman & Patterson, 2009) turns this into a picture. An
# op doing $F$ FLOPs while moving $Q$ bytes has intensity $I = F/Q$, and on a machine with
# peak $P_{\text{peak}}$ FLOP/s and bandwidth $B$ bytes/s it can run at most at
#
# $$P(I) = \min\big(P_{\text{peak}},\; I \cdot B\big).$$
#
# Below the **ridge point** $I^* = P_{\text{peak}}/B$ an op is *memory-bound*: a faster ALU
# would not help, fewer bytes would. Above it, it is *compute-bound*. We now measure
# $P_{\text{peak}}$ and $B$ on this machine.
#
# ## 2 · Measuring the roofs, by hand first
#
# **Peak FLOP/s.** Multiply two large square matrices: $2n^3$ FLOPs on $3n^2$ numbers, so
# the intensity ($n/6$ FLOPs per byte in fp32) is far above a CPU's ridge and the chip
# runs as fast as it can. **Bandwidth.** Copy an array much larger than the last-level cache: no
# arithmetic at all, two bytes moved (one read, one written) per byte of array.

# %% tags=["nbval-ignore-output"]
n = 1024
a, w = torch.randn(n, n), torch.randn(n, n)
# The course's timing protocol: a warm-up call (allocation, thread start-up), then the median of
# as many calls as fill a fifth of a second (course_lib.measure).
t_mm = measure.time_fn(lambda: a @ w, warmup=1, repeats=5)
print(f"a {n}³ fp32 matmul: {2 * n**3 / 1e9:.2f} GFLOP in {t_mm * 1e3:.1f} ms = {2 * n**3 / t_mm / 1e9:.1f} GFLOP/s")

src = torch.ones(hardware.working_set_bytes() // 4)  # (N,) fp32, several times the L3 cache
dst = torch.empty_like(src)
t_copy = measure.time_fn(lambda d=dst, s=src: d.copy_(s), warmup=1, repeats=5)  # the warm-up pays the page faults
print(
    f"copy of {src.nbytes / 2**20:.0f} MiB: {2 * src.nbytes / 1e9:.2f} GB moved in {t_copy * 1e3:.1f} ms = {2 * src.nbytes / t_copy / 1e9:.1f} GB/s"
)
del src, dst

# %% [markdown]
# One timing is one sample of a noisy process, so the cell above reports the **median** of
# several after a warm-up: the typical run. For a *roof*, `course_lib.hardware` times the same
# way (through `course_lib.measure`) but keeps the **fastest** run: a roof is the best the
# machine can do, and interference only ever slows a run down (the STREAM benchmark reports
# its best rate for the same reason). It doubles the matrix size
# as long as one product stays under half a second, measures each number format, and runs three
# STREAM kernels (McCalpin, 1995): *read* (`sum(b)`), *copy* (`a = b`) and *triad*
# (`a = b + s·c`). Ops placed under the roofs later are timed by their median, the typical
# run. The peak search:

# %%
viz.show_source(hardware.peak_flops)

# %% [markdown]
# int8 is timed through `torch._int_mm` (int8 × int8 → int32, the kernel behind int8
# quantized linear layers); its "FLOP/s" are integer operations per second. First, what
# this CPU offers: the vector instruction set PyTorch dispatches to, and the flags that
# give native bf16 (`avx512_bf16`, `amx_bf16`) and int8 dot products (`avx512_vnni`,
# `avx_vnni`, `amx_int8`).

# %% tags=["nbval-ignore-output"]
info = hardware.cpu_info()
viz.Table([{"property": k, "value": v} for k, v in info.items()], caption="This machine")

# %% tags=["nbval-ignore-output"]
roof = hardware.measure_roofline(dtypes=("fp32", "bf16", "int8"), kinds=("read", "copy", "triad"))
peaks, bws = roof.details["peaks"], roof.details["bandwidths"]
viz.Table(
    [
        {
            "roof": f"peak {d}",
            "value": f"{p.flops_per_s / 1e9:,.1f} GFLOP/s",
            "measured at": f"{p.n}³ matmul",
            "ridge (FLOP/byte)": round(roof.ridge(d), 2),
        }
        for d, p in peaks.items()
    ]
    + [
        {
            "roof": f"bandwidth, {k}",
            "value": f"{b.bytes_per_s / 1e9:,.1f} GB/s",
            "measured at": f"{b.array_bytes / 2**20:.0f} MiB arrays",
        }
        for k, b in bws.items()
    ],
    caption=f"The roofs of this machine ({info['torch threads']} threads); the memory roof is the best kernel",
)

# %%
# The one check a measurement can fail here: every roof is a positive, finite number (a broken timer
# or a kernel that did not run gives 0, inf or nan).
for value in list(roof.peaks.values()) + list(roof.bandwidths.values()):
    assert math.isfinite(value) and value > 0

# %% [markdown]
# ### bf16 and int8 on this CPU
#
# bfloat16 keeps fp32's 8 exponent bits but only 7 fraction bits (Kalamkar et al., 2019).
# Halving the bits halves the bytes, and on hardware with bf16 or int8 dot-product units
# it also multiplies the compute roof. Without such units the library falls back to slower
# code paths. Which case you are in depends on the flags above; the ratios below are what
# your machine measured.

# %% tags=["nbval-ignore-output"]
native_bf16 = any(f in info["matmul ISA flags"] for f in ("avx512_bf16", "amx_bf16"))
native_int8 = any(f in info["matmul ISA flags"] for f in ("vnni", "amx_int8"))
bf16_ratio, int8_ratio = roof.peak("bf16") / roof.peak("fp32"), roof.peak("int8") / roof.peak("fp32")
display(
    Markdown(
        f"Peak bf16 matmul is **{bf16_ratio:.2f}×** fp32 here, int8 **{int8_ratio:.2f}×**. "
        + (
            "This CPU has native bf16 instructions, "
            if native_bf16
            else "This CPU reports no native bf16 matmul instructions, so bf16 products are emulated; "
        )
        + ("and native int8 dot products." if native_int8 else "and no int8 dot-product instructions (VNNI/AMX).")
    )
)

# %% [markdown]
# For a memory-bound op the compute roof hardly matters: what counts is the bytes. A
# decode GEMV (one token times a weight matrix) in bf16 reads half the bytes of fp32.
# Measured side by side on a weight larger than the cache:

# %% tags=["nbval-ignore-output"]
k_dim = 4096
n_out = hardware.working_set_bytes() // (4 * k_dim)  # fp32 weight of the working-set size
w32 = torch.randn(n_out, k_dim)
w16 = w32.bfloat16()
x32, x16 = torch.randn(1, k_dim), torch.randn(1, k_dim).bfloat16()
t = measure.interleaved({"fp32": lambda: F.linear(x32, w32), "bf16": lambda: F.linear(x16, w16)}, warmup=1, repeats=5)
gemv = measure.compare(t, "bf16", "fp32")
print(
    f"decode GEMV 1×{k_dim} @ {k_dim}×{n_out}: fp32 {t['fp32'].median * 1e3:.2f} ms, bf16 {t['bf16'].median * 1e3:.2f} ms "
    f"-> bf16 is {gemv.phrase} (half the bytes would allow 2×); {t.note()}"
)


# %% [markdown]
# Where bf16 is emulated, even this memory-bound op may not get the 2× that its bytes
# allow: the conversion work moves the bottleneck back to the ALUs. On CPUs with native
# bf16 (AVX512-BF16, AMX) both the compute roof and the byte savings are real; so on NVIDIA
# GPUs from Ampere (A100, 2020) on, whose tensor cores take bf16 — older ones (V100, T4)
# have fp16 tensor cores but no bf16 path. The lesson generalises: **a lower precision is only faster where the
# hardware has a fast path for it** — check, then measure.
#
# ### Threads that wait: spinning or sleeping
#
# Every roof above was measured with PyTorch's threads, which it runs with OpenMP (GNU
# libgomp, shipped inside the PyTorch wheels). Between two parallel regions — two matmuls —
# a worker thread waits for the next one, and the environment variable `OMP_WAIT_POLICY`
# decides how: `ACTIVE` threads **spin**, checking for work in a tight loop so they react
# within nanoseconds; `PASSIVE` threads **sleep** in the kernel until they are woken, which
# costs microseconds; unset, libgomp spins for a while and then sleeps
# ([libgomp manual: OMP_WAIT_POLICY](https://gcc.gnu.org/onlinedocs/libgomp/OMP_005fWAIT_005fPOLICY.html);
# [GOMP_SPINCOUNT](https://gcc.gnu.org/onlinedocs/libgomp/GOMP_005fSPINCOUNT.html) gives the
# spin counts). Spinning is a bet that the core belongs to you. When another process wants
# it — a browser, an IDE, a second notebook — the spinning thread burns the time slice that
# the thread it is waiting for, or the other process, needs. `course_lib` therefore sets
# `OMP_WAIT_POLICY=PASSIVE` before torch starts (a value you set yourself wins).
#
# The experiment: a fixed loop of small 2-thread matmuls (64×256 @ 256×1024), in a fresh
# process per policy (the policy is read once, when OpenMP starts), on the machine as it is
# and with one busy process (`python3 -c "while True: pass"`) per core started beside it and
# killed right after. A loop that would run past a second is stopped there and its time
# extrapolated, so the cell stays short however badly spinning does
# (`course_lib.experiments.hardware.wait_policy_experiment`; its docstring gives the details).

# %% tags=["nbval-ignore-output"]
wait_rows = hardware_runs.wait_policy_experiment()
viz.Table(
    [
        {
            "OMP_WAIT_POLICY": r["OMP_WAIT_POLICY"],
            "machine": f"+ {r['busy processes']} busy processes" if r["busy processes"] else "as it is",
            f"seconds for {r['matmuls']} matmuls": round(r["seconds"], 2),
            "ms per matmul": round(r["ms per matmul"], 3),
            "measured": "all" if not r["extrapolated"] else f"first {r['matmuls run']}, extrapolated",
            "load average": round(r["load average"], 2),
        }
        for r in wait_rows
    ],
    caption=f"A 2-thread loop of {wait_rows[0]['matmuls']} fp32 matmuls under each wait policy (one process per policy)",
)

# %% tags=["nbval-ignore-output"]
wait = {(r["OMP_WAIT_POLICY"], r["busy processes"] > 0): r["seconds"] for r in wait_rows}
n_busy = max(r["busy processes"] for r in wait_rows)
wait_load = max(r["load average"] for r in wait_rows if not r["busy processes"])  # before our busy processes
display(
    Markdown(
        f"With {n_busy} busy processes beside it, the loop under `PASSIVE` ran "
        f"**{measure.speed_phrase(wait['ACTIVE', True] / wait['PASSIVE', True], than='under ACTIVE')}**; on the "
        f"machine as it was, `PASSIVE` ran {measure.speed_phrase(wait['ACTIVE', False] / wait['PASSIVE', False], than='ACTIVE')}. "
        f"The busy processes made the `ACTIVE` loop "
        f"{measure.speed_phrase(wait['ACTIVE', False] / wait['ACTIVE', True], than='without them')} and the "
        f"`PASSIVE` loop {measure.speed_phrase(wait['PASSIVE', False] / wait['PASSIVE', True], than='without them')}. "
        "(One loop per case, so differences of about 10 % count as noise"
        + (
            f"; and the machine was busy before the busy processes started — load average up to {wait_load:.1f} on "
            f"{hardware.usable_cpus()} CPUs — so even the runs 'as it is' shared the cores and the smaller ratios "
            "are noisy"
            if wait_load > hardware.usable_cpus()
            else ""
        )
        + ".) A learner's laptop is never idle, which is why the course does not let its threads spin."
    )
)

# %% [markdown]
# ## 3 · Arithmetic intensity, from the formula
#
# For a matmul $(m \times k) \cdot (k \times n)$: $F = 2mkn$, and the least traffic any
# kernel can get away with is reading both operands and writing the result once,
# $Q = (mk + kn + mn)\,b$ for $b$ bytes per element. By hand, checked against the library
# and against PyTorch's own FLOP counter:

# %%
m_, k_, n_ = 16, 4096, 11008  # 16 tokens through Llama-2-7B's MLP up-projection
flops_by_hand = 2 * m_ * k_ * n_
bytes_by_hand = (m_ * k_ + k_ * n_ + m_ * n_) * 2  # fp16
cost = hardware.matmul_cost(m_, k_, n_, dtype="fp16")
assert (cost.flops, cost.bytes) == (flops_by_hand, bytes_by_hand)
with FlopCounterMode(display=False) as counter:  # counts on "meta" tensors: shapes only, no arithmetic
    torch.empty(m_, k_, device="meta") @ torch.empty(k_, n_, device="meta")
assert counter.get_total_flops() == flops_by_hand  # torch.utils.flop_counter agrees
print(
    f"{cost.shape}: {cost.flops / 1e9:.2f} GFLOP, {cost.bytes / 1e6:.1f} MB, intensity {cost.intensity:.2f} FLOP/byte"
)

# %% [markdown]
# The library has the same for attention (fused, as FlashAttention and PyTorch's SDPA
# compute it, or unfused with the $T_q \times T_k$ score matrix going to memory and back),
# RMSNorm, softmax and the SwiGLU activation. Their docstrings give each formula:

# %%
viz.show_source(hardware.attention_cost)

# %% [markdown]
# The intensities of one Llama-2-7B layer's ops at 16 bits, for a prompt of 2,048 tokens
# (prefill) and for one generated token (decode), set against the H100's ridge:

# %%
L = dict(d=4096, f=11008, h=32, dh=128, T=2048)
shapes = [
    hardware.matmul_cost(L["T"], L["d"], L["f"], dtype="fp16", name="prefill: MLP matmul"),
    hardware.attention_cost(
        batch=1, heads=L["h"], q_len=L["T"], kv_len=L["T"], head_dim=L["dh"], causal=True, dtype="fp16"
    ),
    hardware.attention_cost(
        batch=1, heads=L["h"], q_len=L["T"], kv_len=L["T"], head_dim=L["dh"], causal=True, fused=False, dtype="fp16"
    ),
    hardware.rmsnorm_cost(L["T"], L["d"], dtype="fp16"),
    hardware.softmax_cost(L["h"] * L["T"], L["T"], dtype="fp16"),
    hardware.gemv_cost(L["d"], L["f"], batch=1, dtype="fp16", name="decode: MLP GEMV, batch 1"),
    hardware.gemv_cost(L["d"], L["f"], batch=64, dtype="fp16", name="decode: MLP GEMV, batch 64"),
    hardware.attention_cost(batch=1, heads=L["h"], q_len=1, kv_len=L["T"], head_dim=L["dh"], dtype="fp16"),
]
h100_ridge = h100_peak / h100_bw
viz.Table(
    [
        {
            "op": c.name,
            "shape": c.shape,
            "GFLOP": round(c.flops / 1e9, 3),
            "MB moved": round(c.bytes / 1e6, 1),
            "FLOP/byte": round(c.intensity, 2),
            f"H100 (ridge {h100_ridge:.0f})": "compute-bound" if c.intensity > h100_ridge else "memory-bound",
        }
        for c in shapes
    ],
    caption="Arithmetic intensity of Llama-2-7B's ops, fp16",
)

# %%
by_name = {c.name: c for c in shapes}
assert by_name["prefill: MLP matmul"].intensity > h100_ridge > by_name["decode: MLP GEMV, batch 64"].intensity
assert by_name["decode: MLP GEMV, batch 1"].intensity < 1.01 and by_name["attention decode"].intensity < 1.01
assert by_name["attention prefill (unfused)"].intensity < by_name["attention prefill"].intensity / 10

# %% [markdown]
# Three things to read off the table. **Prefill is compute-bound, decode is memory-bound**,
# even on the same weights: prefill reuses each weight for 2,048 tokens, decode for one.
# **Batching raises the intensity of decode** ($I \approx 2 \cdot \text{batch}/b$) but even
# 64 sequences stay under an H100's ridge. **Fusing attention** keeps the score matrix
# on-chip and multiplies its intensity by more than ten; that is FlashAttention's whole
# idea (Dao et al., 2022). Attention at decode cannot be batched the same way: every
# sequence reads its *own* KV cache.
#
# ## 4 · Real ops on this machine's roofline
#
# Now we time ops on this CPU and place each one: its intensity on the x-axis (from the
# formula), its achieved FLOP/s on the y-axis (FLOPs / measured median). The arrays of the
# memory-bound ops are sized past the L3 cache, so they stream from DRAM.

# %% tags=["nbval-ignore-output"]
ops = hardware_runs.standard_ops()
placements = hardware_runs.measure_ops(ops, roof, warmup=1, repeats=5)
del ops
viz.Table(
    [
        {
            "op": p.name,
            "shape": p.shape,
            "FLOP/byte": round(p.intensity, 3),
            "achieved GFLOP/s": round(p.achieved / 1e9, 2),
            "roof GFLOP/s": round(p.attainable / 1e9, 2),
            "fraction of roof": f"{p.fraction:.0%}",
            "GB/s": round(p.bytes_per_s / 1e9, 2),
            "bound": p.bound,
        }
        for p in placements
    ],
    caption="Measured ops against this machine's roofline (fp32)",
)

# %%
placed = {p.name: p for p in placements}
# Counted, not timed: these ops do at most one FLOP per byte moved, left of the ridge of any machine
# whose peak FLOP/s exceeds its bytes/s (every CPU and GPU of the last decades).
assert all(placed[o].intensity <= 1 for o in ("decode GEMV, batch 1", "RMSNorm", "softmax", "SwiGLU activation"))
assert placed["matmul 1024³"].intensity > 100
assert all(p.achieved > 0 and math.isfinite(p.achieved) for p in placements)

# %% [markdown]
# **The roofline figure.** Hover over a dot for the op, its shape and what it achieved.
# Below it, a live explorer (it needs a running kernel) and its static twin (it works in
# the book): the hollow diamonds are **predicted** points, the MLP up-projection of
# Llama-2-7B and of the patient at a batch size you choose, drawn *on* the roof since that
# is the best they could do. Watch the batch push them up the bandwidth slope until they
# hit the compute ceiling.

# %% tags=["nbval-ignore-output"]
patient = zoo.load(PATIENT)
model = patient.model.eval()
pc = model.config


def roofline_explorer(batch: int = 1):
    predicted = [
        hardware.gemv_cost(4096, 11008, batch=batch, name=f"Llama-2-7B up-projection, batch {batch}"),
        hardware.gemv_cost(pc.d_model, pc.d_ff, batch=batch, name=f"{PATIENT} patient up-projection, batch {batch}"),
    ]
    return hardware.roofline_figure(
        roof, placements, predicted=predicted, title=f"This machine's roofline, batch {batch}"
    )


roofline_explorer(1)

# %% tags=["nbval-ignore-output"]
import ipywidgets as widgets

viz.interactive(
    roofline_explorer,
    batch=widgets.SelectionSlider(options=[1, 2, 4, 8, 16, 32, 64, 128, 256, 1024], value=1, description="batch"),
)

# %% tags=["nbval-ignore-output"]
viz.static_twin(roofline_explorer, {"batch": [1, 4, 16, 64, 256, 1024]}, step_label=lambda st: f"batch {st['batch']}")

# %% tags=["nbval-ignore-output"]
frac = {p.name: p.fraction for p in placements}
big_mm = max((p for p in placements if p.name.startswith("matmul")), key=lambda p: p.intensity)
# Rules for the words below: an op is "far below" its roof under half of what the largest matmul reached.
FAR_BELOW = 0.5
small_mm_far = frac["matmul 64³"] < FAR_BELOW * big_mm.fraction
KERNELS = {"RMSNorm": "six", "SwiGLU activation": "two"}  # eager aten kernels of each (counted in section 7)
eltwise_far = [o for o in KERNELS if frac[o] < FAR_BELOW * big_mm.fraction]
display(
    Markdown(
        f"On this machine the largest matmul ({big_mm.shape}) reached **{big_mm.fraction:.0%}** of the fp32 peak "
        f"(the op the compute roof itself is measured with), and the "
        f"batch-1 decode GEMV **{frac['decode GEMV, batch 1']:.0%}** of what the bandwidth allows. The 64³ matmul "
        f"reached **{frac['matmul 64³']:.0%}** of its roof"
        + (
            ", far below the large one: half a million FLOPs take microseconds of arithmetic, so the fixed cost of "
            "a call (dispatch, waking the threads) weighs as much as the work. "
            if small_mm_far
            else ", not far below the large one: here the fixed cost of a call is small next to its arithmetic. "
        )
        + f"RMSNorm reached {frac['RMSNorm']:.0%} and the SwiGLU activation {frac['SwiGLU activation']:.0%} of the "
        f"bandwidth roof. "
        + (
            f"{' and '.join(eltwise_far)} stayed far below it: "
            + ("they run" if len(eltwise_far) > 1 else "it runs")
            + f" as several PyTorch kernels ({' and '.join(KERNELS[o] for o in eltwise_far)}) that each read and "
            "write whole arrays, so the bytes they *need* move slower than the bytes they *move*; section 7 counts "
            "that traffic and measures what fusion recovers."
            if eltwise_far
            else "Neither stayed far below it, although they run as several PyTorch kernels (six and two): on this "
            "machine the extra traffic cost little; section 7 counts it and measures what fusion recovers."
        )
        + f" (The rule for *far below*: under {FAR_BELOW:.0%} of the share of its roof that the largest matmul reached.)"
        + (
            f" **Caution:** {', '.join(p.name for p in placements if p.fraction > 1.2)} ran above the roof, which "
            f"cannot happen on a quiet machine: something else was using it while the roofs were measured, so they "
            f"came out low. Rerun the notebook on an idle machine for a trustworthy picture."
            if any(p.fraction > 1.2 for p in placements)
            else ""
        )
    )
)

# %% [markdown]
# ## 5 · Where the patient's forward pass spends its time
#
# A profiler records every operator the forward pass launches. `course_lib.experiments.hardware.profile` wraps
# `torch.profiler`: it labels the patient's parts (embedding, norms, attention, MLP, LM head)
# with forward hooks, returns the top operators with their time, FLOPs and allocated
# memory, and writes a Chrome trace that you can open in
# [Perfetto](https://ui.perfetto.dev) or `chrome://tracing` to see every op on a timeline.
# We profile a prefill of 128 tokens and one decode step with a 128-token KV cache.

# %%
T = 128
prompt = torch.randint(0, pc.vocab_size, (1, T), generator=torch.Generator().manual_seed(0))
new_token = torch.randint(0, pc.vocab_size, (1, 1), generator=torch.Generator().manual_seed(1))
cache = model.new_cache(1, T + 1)
with torch.no_grad():
    model(prompt, cache=cache)


@torch.no_grad()
def prefill():
    model(prompt)


@torch.no_grad()
def decode_step():
    for layer_cache in cache:
        layer_cache.truncate(T)  # rewind: every call decodes position T again
    model(new_token, cache=cache)


trace_dir = cache_dir("hardware")
prof_prefill = hardware_runs.profile(
    prefill, parts=hardware_runs.patient_parts(model), repeats=3, trace_path=trace_dir / "prefill.json"
)
prof_decode = hardware_runs.profile(
    decode_step, parts=hardware_runs.patient_parts(model), repeats=5, trace_path=trace_dir / "decode.json"
)

# The profiler's own FLOP count of the matmuls equals 2 x weights x tokens (chapter 01's formula).
assert math.isclose(prof_prefill.matmul_flops, T * model.flops_per_token(T)["matmul"], rel_tol=1e-9)
assert math.isclose(prof_decode.matmul_flops, model.flops_per_token(T)["matmul"], rel_tol=1e-9)
for prof in (prof_prefill, prof_decode):
    assert sum(prof.parts.values()) <= prof.total_ms * 1.05  # parts are disjoint, inside the total
print(
    f"profiler FLOPs of the matmuls: prefill {prof_prefill.matmul_flops / 1e6:,.1f} MFLOP, decode step {prof_decode.matmul_flops / 1e6:,.3f} MFLOP"
)

# %% tags=["nbval-ignore-output"]
print(f"Chrome traces: {prof_prefill.trace_path} and {prof_decode.trace_path}")
prof_prefill.table(8)

# %% tags=["nbval-ignore-output"]
prof_decode.table(8)

# %% tags=["nbval-ignore-output"]
fig = viz.figure(
    title_text=f"Where the {PATIENT} patient's time goes (profiled)",
    yaxis_title="share of the forward pass",
    barmode="group",
    yaxis_tickformat=".0%",
)
for name, prof in (("prefill, 128 tokens", prof_prefill), ("decode, 1 token", prof_decode)):
    labels = list(prof.parts) + ["other (Python, glue)"]
    values = list(prof.parts.values()) + [max(0.0, prof.total_ms - sum(prof.parts.values()))]
    fig.add_bar(x=labels, y=[v / prof.total_ms for v in values], name=f"{name}: {prof.total_ms:.2f} ms")
fig

# %% tags=["nbval-ignore-output"]
mm_share = {
    n: sum(r["self ms"] for r in p.ops if r["op"] in ("aten::mm", "aten::addmm")) / p.total_ms
    for n, p in (("prefill", prof_prefill), ("decode", prof_decode))
}
n_ops_decode = sum(r["calls"] for r in prof_decode.ops)
# The rule for the verdict: a step is "dispatch-bound" when the matrix products, which do all its
# arithmetic and read all its weights, take less than half of its profiled time.
DISPATCH_RULE = 0.5
dispatch_bound = mm_share["decode"] < DISPATCH_RULE
display(
    Markdown(
        f"Matrix products take **{mm_share['prefill']:.0%}** of the prefill's time and **{mm_share['decode']:.0%}** "
        f"of a decode step's. A decode step makes **{n_ops_decode}** operator calls (nested ones included) for "
        f"{prof_decode.matmul_flops / 1e6:.1f} MFLOP of matmuls, about {prof_decode.total_ms * 1e3 / n_ops_decode:.0f} µs "
        f"per operator. The rule used here: when the matrix products, which do all the arithmetic and read all the "
        f"weights, take less than {DISPATCH_RULE:.0%} of a step, the rest is the cost of launching operators. "
        + (
            f"By that rule this decode step is dispatch-bound ({mm_share['decode']:.0%} < {DISPATCH_RULE:.0%}): "
            "the regime where CUDA graphs, `torch.compile` and fused kernels help most."
            if dispatch_bound
            else f"By that rule this decode step is not dispatch-bound ({mm_share['decode']:.0%} ≥ "
            f"{DISPATCH_RULE:.0%}): the matrix products take most of it on this machine."
        )
    )
)

# %% [markdown]
# ## 6 · Batch size: latency versus throughput
#
# A decode step reads all the weights whether it produces one token or thirty-two, so
# running $B$ sequences together multiplies throughput for nearly the same latency per step —
# until the matmuls become compute-bound or the KV caches dominate the bytes. On a large
# model prefill is compute-bound already at batch 1, so there batching it should buy little;
# on a model as small as the patient it need not be, and the sweep says what it bought here.
# Measured on the patient (prompts of 32 tokens, 8 decoded), interleaved across batch sizes:

# %% tags=["nbval-ignore-output"]
SWEEP_PROMPT = 32
sweep = hardware_runs.batch_sweep(
    model, batch_sizes=(1, 2, 4, 8, 16, 32), prompt_len=SWEEP_PROMPT, new_tokens=8, warmup=1, repeats=3
)
viz.Table(
    [{k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()} for r in sweep],
    caption=f"{PATIENT} patient, batch sweep",
)

# %% tags=["nbval-ignore-output"]
from plotly.subplots import make_subplots

fig = make_subplots(rows=1, cols=2, subplot_titles=("throughput", "latency"))
bs = [r["batch"] for r in sweep]
fig.add_scatter(x=bs, y=[r["decode tokens/s"] for r in sweep], name="decode tokens/s", row=1, col=1)
fig.add_scatter(x=bs, y=[r["prefill tokens/s"] for r in sweep], name="prefill tokens/s", row=1, col=1)
fig.add_scatter(x=bs, y=[r["decode ms/step"] for r in sweep], name="decode ms per step", row=1, col=2)
fig.add_scatter(x=bs, y=[r["prefill ms"] for r in sweep], name="prefill ms per batch", row=1, col=2)
fig.update_xaxes(type="log", title_text="batch size")
fig.update_yaxes(type="log")
fig.update_layout(title_text=f"Batch sweep, {PATIENT} patient", height=420)
fig

# %% tags=["nbval-ignore-output"]
# Timed ratios, so reported, not asserted.
gain = sweep[-1]["decode tokens/s"] / sweep[0]["decode tokens/s"]
step_growth = sweep[-1]["decode ms/step"] / sweep[0]["decode ms/step"]
prefill_gain = sweep[-1]["prefill tokens/s"] / sweep[0]["prefill tokens/s"]
display(
    Markdown(
        f"Batch {sweep[-1]['batch']} decodes **{gain:.1f}×** as many tokens per second as batch {sweep[0]['batch']}, "
        f"while each step was "
        f"**{measure.speed_phrase(1 / step_growth, than='a batch-' + str(sweep[0]['batch']) + ' step')}**. Prefill "
        f"throughput changed ×{prefill_gain:.1f} over the same range"
        + (
            f", far less than decode's: with {SWEEP_PROMPT} tokens per "
            "sequence its matmuls are matrix-matrix products already, and on a model whose matrices are large they "
            "are compute-bound at batch 1 (section 3). "
            if prefill_gain < gain / 2
            else ", not far from decode's: "
            + (
                "by section 5's rule this model's steps are dispatch-bound, and a bigger batch spreads the fixed "
                "cost of each operator over more tokens, in prefill as in decode. "
                if dispatch_bound
                else "at this model's size even prefill's matmuls are too small to keep the cores busy at batch 1. "
            )
        )
        + "Serving systems batch decode requests continuously (Yu et al., 2022, *Orca*), and the KV cache, which "
        "grows with the batch, becomes the memory problem that paged attention addresses (Kwon et al., 2023)."
    )
)

# %% [markdown]
# ## 7 · Fusion: fewer trips to memory
#
# In eager PyTorch each operator is a separate kernel that reads its inputs from memory and
# writes its output back. The patient's RMSNorm is six operators. Counting the bytes each
# one moves (a `TorchDispatchMode` sees every aten op) and comparing with a single fused
# kernel that reads $x$ and $g$ once and writes $y$ once:

# %%
from course_lib.model import RMSNorm

N_rows, C = 2048, 1024
traffic = hardware.op_traffic(RMSNorm(C), torch.randn(N_rows, C))
fused = hardware.rmsnorm_cost(N_rows, C)
viz.Table(
    [{"aten op": op, "MB moved": round(b / 1e6, 2)} for op, b in traffic["ops"]]
    + [
        {"aten op": "eager total", "MB moved": round(traffic["bytes"] / 1e6, 2)},
        {"aten op": "fused minimum", "MB moved": round(fused.bytes / 1e6, 2)},
    ],
    caption=f"RMSNorm over ({N_rows}×{C}) fp32, eager",
)

# %%
# By hand: pow (2NC), mean (NC + N), + eps (2N), rsqrt (2N), x * r (2NC + N), * g (2NC + C) values of 4 bytes.
assert traffic["bytes"] == (7 * N_rows * C + 6 * N_rows + C) * 4
assert traffic["kernels"] == 6 and traffic["bytes"] / fused.bytes > 3
print(f"eager RMSNorm moves {traffic['bytes'] / fused.bytes:.2f}x the bytes of a fused kernel")

# %% [markdown]
# `torch.compile` (Ansel et al., 2024) traces the function and generates fused loops (C++
# on CPU, Triton on GPU) that keep intermediates in registers. The first call pays for
# tracing, code generation and the C++ compiler; afterwards each call runs the fused code.
# Measured on arrays past the L3 cache, with the compile time:

# %% tags=["nbval-ignore-output"]
dim = 2048
rows = hardware.working_set_bytes(factor=2) // (4 * dim)  # arrays twice the L3 cache
fusion = hardware_runs.fusion_benchmark(rows=rows, dim=dim, hidden=dim, warmup=2, repeats=7)
viz.Table(
    [{k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items()} for r in fusion],
    caption="Eager vs torch.compile (fp32)",
)

# %%
for r in fusion:
    assert r["traffic ratio"] > 1.5  # counted bytes, not timed: eager moves well over the fused minimum

# %% tags=["nbval-ignore-output"]
rms_row, act_row = fusion
display(
    Markdown(
        f"Compiled, RMSNorm ran **{measure.speed_phrase(rms_row['speed-up'], than='eager')}** and the SwiGLU "
        f"activation **{measure.speed_phrase(act_row['speed-up'], than='eager')}** here; their eager versions move {rms_row['traffic ratio']:.1f}× and {act_row['traffic ratio']:.2f}× "
        f"the bytes of the fused kernels: for a memory-bound op, that traffic ratio is the speed-up fusion can hope for. "
        f"Compiling cost **{rms_row['compile s'] + act_row['compile s']:.1f} s**, paid once per shape "
        f"(and cached on disk): worth it for a server, not for a script that runs each op a few times."
    )
)

# %% [markdown]
# ## 8 · Memory budgets: what fits on the edge
#
# Inference memory is three terms: the **weights** ($N \times$ bytes per weight), the **KV
# cache** ($2 L\, h_{kv} d_h T$ values per sequence, chapter 01), and the **activations** of
# the layer being computed. The weight and cache formulas live in `course_lib.configs`
# (chapter 00), with published configurations; `hardware.footprint` adds the activation
# estimate (one layer live, fused attention, last-position logits):

# %%
viz.show_source(hardware.activation_bytes)

# %% [markdown]
# By hand for Phi-3-mini (Abdin et al., 2024) at fp16 with a 4,096-token context, checked
# against the library:

# %%
phi = configs.get("phi-3-mini")
n_phi, _ = configs.count_params(phi)
kv_by_hand = (
    2
    * phi["num_hidden_layers"]
    * phi["num_key_value_heads"]
    * (phi["hidden_size"] // phi["num_attention_heads"])
    * 4096
    * 2
)
act_by_hand = 4096 * (2 * phi["hidden_size"] + 2 * phi["intermediate_size"]) * 2 + 4 * phi["vocab_size"]
fp = hardware.footprint("phi-3-mini", weight_dtype="fp16", seq_len=4096)
assert (fp.weights, fp.kv_cache, fp.activations) == (2 * n_phi, kv_by_hand, act_by_hand)
GiB = hardware.GIB
print(
    f"Phi-3-mini: {n_phi / 1e9:.2f} B params; fp16 weights {fp.weights / GiB:.2f} GiB + KV cache {fp.kv_cache / GiB:.2f} GiB + activations {fp.activations / GiB:.2f} GiB = {fp.total / GiB:.2f} GiB"
)

# %% [markdown]
# Quantized weights (chapter 05) carry scales: one fp16 scale per group of 128 inputs adds
# $16/128 = 0.125$ bits per weight. The footprints of Phi-3-mini and Mixtral-8x7B
# (Jiang et al., 2024) at three weight precisions, 4,096 tokens of fp16 KV cache; the dotted
# lines mark 1, 4 and 8 GiB, the memory of small edge devices:

# %%
budget_rows = []
for name in ("phi-3-mini", "mixtral-8x7b"):
    for dt in ("fp16", "int8", "int4"):
        f = hardware.footprint(name, weight_dtype=dt, group_size=None if dt == "fp16" else 128, seq_len=4096)
        budget_rows.append(
            {
                "model": name,
                "weights": dt,
                "weights GiB": f.weights / GiB,
                "KV GiB": f.kv_cache / GiB,
                "activations GiB": f.activations / GiB,
                "total GiB": f.total / GiB,
            }
        )

from plotly.subplots import make_subplots

fig = make_subplots(rows=1, cols=2, subplot_titles=("Phi-3-mini", "Mixtral-8x7B"))
for col, name in enumerate(("phi-3-mini", "mixtral-8x7b"), start=1):
    rows_m = [r for r in budget_rows if r["model"] == name]
    for part, colour in (("weights GiB", 0), ("KV GiB", 1), ("activations GiB", 2)):
        fig.add_bar(
            x=[r["weights"] for r in rows_m],
            y=[r[part] for r in rows_m],
            name=part.replace(" GiB", ""),
            marker_color=viz.PALETTE[colour],
            showlegend=col == 1,
            row=1,
            col=col,
        )
    for gib in (1, 4, 8):
        fig.add_hline(y=gib, line_dash="dot", line_color="#888", row=1, col=col)
fig.update_layout(barmode="stack", height=440, title_text="Inference memory, 4,096-token context")
fig.update_yaxes(title_text="GiB", col=1)
fig.update_xaxes(title_text="weight precision", col=1)  # one x title: two collide on a phone
fig

# %%
viz.Table(
    hardware.edge_fit(
        ("phi-3-mini", "mistral-7b", "llama-2-7b", "mixtral-8x7b"), dtypes=("fp16", "int8", "int4"), seq_len=4096
    ),
    caption="Which models fit in 1, 4 and 8 GiB (weights + fp16 KV cache of 4,096 tokens + activations; int8/int4 with group-128 scales)",
)

# %%
fits = {(r["model"], r["weights"]): r for r in hardware.edge_fit(seq_len=4096)}
assert fits[("phi-3-mini", "int4")]["fits 4 GiB"] == "yes" and fits[("phi-3-mini", "fp16")]["fits 4 GiB"] == "no"
assert all(fits[(m, dt)]["fits 1 GiB"] == "no" for m, dt in fits)  # nothing here fits in 1 GiB
assert fits[("mixtral-8x7b", "int4")]["fits 8 GiB"] == "no"  # all 8 experts must be resident

# %% [markdown]
# **What would it take to fit Phi-3-mini in 1 GiB?** Shrink the cache and the activations
# first (a 512-token context, prefill in chunks of 128), then ask how many bits per weight
# are left for the weights:

# %%
bits = hardware.bits_to_fit("phi-3-mini", GiB, seq_len=512, prefill_chunk=128)
small_fp = hardware.footprint("phi-3-mini", weight_dtype="int4", seq_len=512, prefill_chunk=128)
max_params_int4 = (GiB - small_fp.kv_cache - small_fp.activations) * 8 / (4 + 16 / 128)
assert 1 < bits < 4
display(
    Markdown(
        f"With {small_fp.kv_cache / 2**20:.0f} MiB of KV cache and {small_fp.activations / 2**20:.0f} MiB of activations, "
        f"1 GiB leaves **{bits:.2f} bits per weight** for Phi-3-mini's {n_phi / 1e9:.2f} B weights. Group-wise int4 "
        f"needs {4 + 16 / 128}. So either quantization to at most {bits:.2f} bits per weight (chapter 05, with its "
        f"quality cost), or a model "
        f"with at most **{max_params_int4 / 1e9:.2f} B** parameters at int4: pruning (chapter 06) or a smaller, "
        f"better-trained model (chapter 07)."
    )
)

# %%
# E1, counted (configs and footprints, no timing): does the article's example fit its own budget?
phi_int4 = fits[("phi-3-mini", "int4")]
e1_status = (
    "holds"
    if phi_int4["fits 1 GiB"] == "yes"
    else "holds with a caveat"
    if phi_int4["fits 4 GiB"] == "yes" and bits >= 2
    else "does not hold"
)
verdict_e1 = claims.verdict(
    "E1",
    e1_status,
    f"Phi-3-mini's {n_phi / 1e9:.2f} B weights alone take "
    f"{hardware.footprint('phi-3-mini', weight_dtype='int4', seq_len=4096).weights / GiB:.2f} GiB at group-wise int4, "
    f"so with a 4,096-token fp16 cache it fits {'4 GiB' if phi_int4['fits 4 GiB'] == 'yes' else 'no budget up to 8 GiB'} "
    f"but not 1 GiB; even with a 512-token context it would need at most {bits:.2f} bits per weight to fit 1 GiB, "
    + (
        "so the article's example meets a sub-1GB budget only with 2- to 3-bit weights."
        if bits >= 2
        else "below even 2-bit quantization: the article's example does not fit a sub-1GB budget."
    ),
)

# %% [markdown]
# ## 9 · The decode bound, and the patient against it
#
# Each decode step must stream every active weight and each sequence's KV cache from memory,
# so
#
# $$\text{tokens/s} \;\le\; \frac{\text{batch} \times B}{\text{weight bytes} + \text{batch} \times \text{KV bytes}}.$$
#
# For the patient: its weights in fp32 plus the cache at the longest context of the batch-1
# decode measured in section 6 (a 32-token prompt and 8 new tokens), by hand and through
# the library:

# %%
context = 32 + 8
elem = model.embed.weight.element_size()
kv_by_hand = 2 * pc.n_layers * pc.n_kv_heads * context * pc.head_dim * elem
step_bytes = measure.weight_bytes(model) + kv_by_hand
assert step_bytes == hardware.patient_step_bytes(model, context=context)
print(
    f"{PATIENT} patient: {measure.weight_bytes(model) / 1e6:.2f} MB of weights + {kv_by_hand / 1e3:.0f} kB of KV cache per step"
)

# %% tags=["nbval-ignore-output"]
bound = hardware.decode_bound(step_bytes, roof.bandwidth)
measured = sweep[0]["decode tokens/s"]  # batch 1, from the sweep in section 6
llc = info["L3 cache (MiB)"]
# does a step's working set stay in the cache? Measured: a process on a shared machine keeps only part of the L3
res = hardware.cache_residency(step_bytes, roof.bandwidth)
display(
    Markdown(
        f"Bound at {roof.bandwidth / 1e9:.1f} GB/s: **{bound:,.0f} tokens/s**; measured: **{measured:,.0f} tokens/s** "
        f"({measured / bound:.0%} of the bound). "
        + f"A buffer the size of the patient's {step_bytes / 2**20:.1f} MiB, read over and over, runs at "
        + (
            f"{res.bytes_per_s / 1e9:.1f} GB/s here ({res.ratio:.1f}x the DRAM rate): it stays in the cache"
            + (f" ({llc:.0f} MiB of L3)" if llc else "")
            + ", so DRAM is not even the memory a step reads from. "
            if res.in_cache
            else f"{res.bytes_per_s / 1e9:.1f} GB/s here, about the DRAM rate: "
            + (f"although the L3 is {llc:.0f} MiB, " if llc else "")
            + "the part of the cache this process keeps is smaller, so every step streams the weights from memory. "
        )
        + (
            "By section 5's rule a step of this model is dispatch-bound: launching operators, not bytes, sets its "
            "pace. "
            if dispatch_bound
            else ""
        )
        + "The bound is the right tool for models whose weights dwarf the cache, like every model in the next table:"
    )
)

# %% [markdown]
# ### Closing the dispatch gap: the same patient on a fast decode path
#
# If launching operators sets a decode step's pace, fewer operators should make it faster
# without changing a single weight. `course_lib.fastdecode.FastLM` is built from the
# readable patient: a static KV cache written by position (values and keys of a token in one
# row, so one copy writes both), GQA by grouping the query heads instead of copying the cache
# per layer, V, K and Q in one matmul and gate and up in another, RoPE as one in-place complex
# product (Q's and K's rows reordered so that each rotated pair is one complex number),
# RMSNorm's gain folded into the next matmul's weights, and the residual stream given an extra
# constant coordinate $\sqrt{C\epsilon}$, so RMSNorm's denominator $\sqrt{\sum x^2 + C\epsilon}$
# is the stream's plain length (one `vector_norm`); residual adds fused into `addmm`, all
# weights in one buffer on huge pages (a step reads every weight once: fewer page
# translations). The one-token step goes further: projections land in scratch rows whose
# views were made once, and attention for one query is two small `bmm` and a softmax. And it
# picks its thread count by measuring: at batch 1 each operator is microseconds of work, and
# handing it to a second thread can cost more than
# it saves (`fastdecode.best_threads`). Greedy tokens are identical (checked below and in the
# tests). Both paths decode side by side, each set against the bandwidth bound; when the fast
# path runs at another thread count than the notebook's, the readable path is timed at that
# count too, so the table separates what the code buys from what the thread choice buys:

# %% tags=["nbval-ignore-output"]
from course_lib import fastdecode

fast_rows = fastdecode.readable_vs_fast(
    {"tiny": zoo.load("tiny").model, PATIENT: model}, bandwidth=roof.bandwidth, repeats=3
)
assert all(r["identical"] for r in fast_rows)
viz.Table(
    [
        {
            "model": r["model"],
            "path": r["path"],
            "threads": r["threads"],
            "tokens/s": round(r["tokens_per_s"]),
            "× readable": round(r["speedup"], 2),
            "× readable, same threads": round(r["speedup_same_threads"], 2),
            "bound tokens/s": round(r["bound_tokens_per_s"]),
            "fraction of bound": f"{r['fraction_of_bound']:.0%}",
        }
        for r in fast_rows
    ],
    caption=f"Batch-1 decode, readable vs fast path, against the {roof.bandwidth / 1e9:.1f} GB/s bound; "
    + fast_rows[0]["note"],
)

# %% tags=["nbval-ignore-output"]
fr = {(r["model"], r["path"]): r for r in fast_rows}
f_row = fr[(PATIENT, "fast")]
gain = f_row["speedup"]
n_thr = measure.threads_phrase(f_row["threads"])
display(
    Markdown(
        f"The fast path decodes the {PATIENT} patient at **{f_row['tokens_per_s']:,.0f} tokens/s** on {n_thr}, "
        f"{measure.speed_phrase(gain, than='the readable path')} "
        f"({fr[(PATIENT, 'readable')]['fraction_of_bound']:.0%} → {f_row['fraction_of_bound']:.0%} "
        f"of the bandwidth bound; against the readable path on the same {n_thr}, "
        f"{measure.speed_phrase(f_row['speedup_same_threads'])}), and the tiny one "
        f"{measure.speed_phrase(fr[('tiny', 'fast')]['speedup'], than='its readable path')}. "
        "Same weights, same tokens, no fewer FLOPs: what the fast path removed was operators and thread hand-offs — "
        "the measured answer to *why is batch-1 decode slow here*. What is left: the fast step's matmuls, timed "
        f"alone beside it, take {f_row['matmul_ms_per_token']:.2f} of its {f_row['ms_per_token']:.2f} ms "
        f"({f_row['matmul_share']:.0%}) for the {PATIENT} patient and "
        f"{fr[('tiny', 'fast')]['matmul_share']:.0%} for the tiny one. Where that share is high, the step is "
        "streaming weights and only fewer bytes per weight (chapter 05) can make it much faster; where it is "
        "low, the remaining operators still set the pace."
    )
)

# %% tags=["nbval-ignore-output"]
bound_rows = []
for name in ("phi-3-mini", "mistral-7b", "llama-2-7b", "mixtral-8x7b"):
    row = {"model": name}
    for dt in ("fp16", "int8", "int4"):
        step = hardware.config_step_bytes(name, dtype=dt, context=4096, group_size=None if dt == "fp16" else 128)
        row[f"{dt} tokens/s ≤"] = round(hardware.decode_bound(step, roof.bandwidth), 2)
    bound_rows.append(row)
viz.Table(
    bound_rows,
    caption=f"Decode bound at batch 1, 4,096-token context, on this machine's {roof.bandwidth / 1e9:.1f} GB/s",
)

# %%
# Counted, not timed: fewer bytes per weight raise the bound; Mixtral reads only its 2 active experts.
steps = {
    (m, dt): hardware.config_step_bytes(m, dtype=dt, context=4096, group_size=None if dt == "fp16" else 128)
    for m in ("llama-2-7b", "mistral-7b", "mixtral-8x7b")
    for dt in ("fp16", "int4")
}
int4_gain = {m: steps[(m, "fp16")] / steps[(m, "int4")] for m in ("llama-2-7b", "mistral-7b")}
assert 1 < int4_gain["llama-2-7b"] < int4_gain["mistral-7b"] < 4  # GQA's smaller cache lets int4 weights pay more
mix_total, mix_active = configs.count_params(configs.get("mixtral-8x7b"))
assert steps[("mixtral-8x7b", "fp16")] < configs.weight_bytes(configs.get("mixtral-8x7b"), "fp16") / 3
print(
    f"int4 weights raise the bound {int4_gain['llama-2-7b']:.2f}x for Llama-2-7B and {int4_gain['mistral-7b']:.2f}x for Mistral-7B at 4,096 tokens"
)
print(f"Mixtral-8x7B stores {mix_total / 1e9:.1f} B parameters but a token reads {mix_active / 1e9:.1f} B of them")

# %% tags=["nbval-ignore-output"]
# K1: decode's intensity against the ridge of this machine (measured) and of the H100 (datasheet).
decode_intensity = by_name["decode: MLP GEMV, batch 1"].intensity
k1_memory_bound = decode_intensity < min(roof.ridge("fp32"), h100_ridge)
verdict_k1 = claims.verdict(
    "K1",
    "holds" if k1_memory_bound and int4_gain["mistral-7b"] > int4_gain["llama-2-7b"] else "holds with a caveat",
    f"A decode step does {decode_intensity:.2f} FLOP per byte it reads, below the ridge of this machine "
    f"({roof.ridge('fp32'):.1f}, measured) and of the H100 ({h100_ridge:.0f}, datasheet), so bytes set decode "
    f"speed; architectures answer that: Mistral-7B's grouped-query attention (Ainslie et al., 2023, designed to "
    f"cut decode's memory traffic) shrinks the KV cache so much that int4 weights raise its 4,096-token decode "
    f"bound {int4_gain['mistral-7b']:.2f}x, against {int4_gain['llama-2-7b']:.2f}x for Llama-2-7B's "
    "multi-head cache.",
)

# %% [markdown]
# int4 weights do not quadruple the bound: the KV cache stays in fp16 and, at 4,096 tokens,
# Llama-2-7B's (32 KV heads) is a large share of every step's bytes; Mistral-7B's GQA cache
# (8 KV heads) is a quarter of that, so quantizing its weights pays more. Quantizing the
# cache too (chapter 05) is the next lever. Mixture-of-experts (chapter 02) decodes like a
# model of its *active* size while needing the memory of its *total* size: the table in
# section 8 and this one are two sides of that trade.
#
# ## 10 · On a GPU
#
# Everything above is device-agnostic. This cell measures the GPU's roofline when CUDA is
# present (fp32, bf16, fp16 and int8 matmul peaks with matrices up to 8,192, and the
# STREAM kernels in GPU memory) and places decode-sized and prefill-sized matmuls on it.

# %% tags=["nbval-ignore-output"]
if torch.cuda.is_available():
    gpu_roof = hardware.measure_roofline(dtypes=("fp32", "bf16", "fp16", "int8"), device="cuda", array_bytes=1 << 30)
    gpu_ops = {
        "decode GEMV, batch 1": (hardware.gemv_cost(8192, 8192, dtype="fp16"), None),
        "prefill matmul 4096 tokens": (hardware.matmul_cost(4096, 8192, 8192, dtype="fp16"), None),
    }
    for label, (c, _) in gpu_ops.items():
        xs = torch.randn(c.flops // (2 * 8192 * 8192), 8192, device="cuda", dtype=torch.float16)
        ws = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
        gpu_ops[label] = (c, lambda xs=xs, ws=ws: xs @ ws)
    gpu_places = hardware_runs.measure_ops(gpu_ops, gpu_roof, warmup=2, repeats=10)
    for d, p in gpu_roof.peaks.items():
        print(f"GPU peak {d}: {p / 1e12:.1f} TFLOP/s, ridge {gpu_roof.ridge(d):.0f} FLOP/byte")
    print(f"GPU bandwidth: {gpu_roof.bandwidth / 1e9:,.0f} GB/s")
    for p in gpu_places:
        print(f"{p.name}: {p.achieved / 1e12:.2f} TFLOP/s = {p.fraction:.0%} of its roof ({p.bound}-bound)")
    display(hardware.roofline_figure(gpu_roof, gpu_places, title=f"Roofline of {torch.cuda.get_device_name(0)}"))
else:
    print("No CUDA device here: this section runs only when torch.cuda.is_available().")

# %% [markdown]
# ## Summary
#
# * **Two roofs.** Peak FLOP/s and memory bandwidth, measured here in seconds; their ratio,
#   the ridge point, says how many FLOPs an op must do per byte to keep the chip busy.
# * **Decode is memory-bound, prefill compute-bound.** One token per weight read gives an
#   intensity near 1 FLOP/byte at 16 bits; a 2,048-token prompt gives thousands. The
#   decode bound, bandwidth ÷ bytes per token, is the number to beat, and quantization and
#   MoE raise it by reading fewer bytes.
# * **Batching** raises decode's arithmetic intensity: each weight read serves every
#   sequence of the batch, until the matmuls reach the ridge (section 6 measured what it
#   bought here); **fusion** removes the intermediate trips to memory that eager elementwise ops make;
#   lower precision pays only where the hardware has a fast path for it.
# * **Memory budgets** are weights + KV cache + activations. Published configs and a few
#   lines of arithmetic tell you which model fits which device before you download anything.
#
# **When not to trust these numbers:** the roofs are upper bounds measured with the best
# kernels we have; caches make small working sets look faster than DRAM allows; and on a
# busy machine every timing here is low and noisy, which is why the chapter asserts only
# counted facts (FLOPs, bytes, footprints) and, of its measurements, only that they are
# positive, finite and nested as the profiler nests them; every measured ratio is reported,
# never asserted.
#
# ## Exercise 1 · Attention at decode with a quantized KV cache
#
# Section 3 costed decode attention with the cache in the same format as everything else.
# Serving systems often store the KV cache in int8 or int4 instead, with one scale per
# position and KV head. Write
# `decode_attention_intensity(kv_len, heads, kv_heads, head_dim, kv_bytes, scale_bytes)`:
# the FLOPs per byte of one fused decode step of attention — one new query per head
# attending to `kv_len` cached positions of `kv_heads` key/value heads (GQA) — when the
# cache stores `kv_bytes` per element (2 fp16, 1 int8, 0.5 int4) plus one `scale_bytes`
# scale per position and KV head, for K and for V, while q and the output stay fp16.
# Count only the two matmuls' FLOPs (dequantizing is not counted). Then use it: for
# Mistral-7B's attention (32 query heads, 8 KV heads, d = 128) at 4,096 cached tokens, how
# much does an int8 cache with fp16 scales raise the intensity over an fp16 cache — and is
# decode attention then any closer to this machine's ridge point?

# %%
from course_lib.exercises import check_decode_attention_intensity, check_ridge_batch, check_roofline_time_prediction


def decode_attention_intensity(
    kv_len: int, heads: int, kv_heads: int, head_dim: int, kv_bytes: float, scale_bytes: float
) -> float:
    raise NotImplementedError  # your code here


check_decode_attention_intensity(decode_attention_intensity)


# %% tags=["solution"] jupyter={"source_hidden": true} cellView="form"
# @title Solution — try the exercise first
def decode_attention_intensity(
    kv_len: int, heads: int, kv_heads: int, head_dim: int, kv_bytes: float, scale_bytes: float
) -> float:
    flops = 4 * heads * kv_len * head_dim  # q·Kᵀ and the weighted sum of V, per query head
    q_and_out = 2 * heads * head_dim * 2  # q read and output written, fp16
    cache = 2 * kv_heads * kv_len * (head_dim * kv_bytes + scale_bytes)  # K and V: codes + one scale per row
    return flops / (q_and_out + cache)


assert check_decode_attention_intensity(decode_attention_intensity).passed
fp16_kv = decode_attention_intensity(4096, 32, 8, 128, 2, 0)
int8_kv = decode_attention_intensity(4096, 32, 8, 128, 1, 2)
print(
    f"GQA 32/8, 4,096 cached tokens: fp16 cache {fp16_kv:.2f} FLOP/byte, int8 cache + fp16 scales "
    f"{int8_kv:.2f} FLOP/byte ({int8_kv / fp16_kv:.2f}x)"
)

# %% tags=["nbval-ignore-output"]
ridge = roof.ridge("fp32")  # section 2's measured roofs: this run's numbers
print(
    f"this machine's fp32 ridge point: {ridge:.1f} FLOP/byte; the int8 cache's {int8_kv:.2f} FLOP/byte is "
    + (
        f"{ridge / int8_kv:.1f}x below it: decode attention stays memory-bound here"
        if int8_kv < ridge
        else f"{int8_kv / ridge:.1f}x above it: on this machine the quantized cache makes decode attention compute-bound"
    )
)

# %% [markdown]
# ## Exercise 2 · When does batching make decode compute-bound?
#
# Write `ridge_batch(k, n, peak_flops, bandwidth, bytes_per_element)`: the smallest batch
# $m$ for which an $(m \times k) \cdot (k \times n)$ matmul reaches the ridge point
# $P_{\text{peak}}/B$, or `None` if no batch does. (Hint: solve $I(m) \ge I^*$ for $m$; the
# intensity tends to a limit as $m$ grows.) Then evaluate it for Llama-2-7B's MLP on the
# H100 and on this machine.


# %%
def ridge_batch(k: int, n: int, peak_flops: float, bandwidth: float, bytes_per_element: int):
    raise NotImplementedError  # your code here


check_ridge_batch(ridge_batch)


# %% tags=["solution"] jupyter={"source_hidden": true} cellView="form"
# @title Solution — try the exercise first
def ridge_batch(k: int, n: int, peak_flops: float, bandwidth: float, bytes_per_element: int):
    # 2mkn / ((mk + kn + mn) b) >= R  <=>  m (2kn - R b (k + n)) >= R b k n
    rb = peak_flops / bandwidth * bytes_per_element
    denominator = 2 * k * n - rb * (k + n)
    return None if denominator <= 0 else math.ceil(rb * k * n / denominator)


assert check_ridge_batch(ridge_batch).passed
print(f"Llama-2-7B MLP on an H100 (fp16): compute-bound from batch {ridge_batch(4096, 11008, h100_peak, h100_bw, 2)}")

# %% tags=["nbval-ignore-output"]
print(
    f"... and on this CPU (fp32 roofs measured above): from batch {ridge_batch(4096, 11008, roof.peak('fp32'), roof.bandwidth, 4)}"
)

# %% [markdown]
# ## Exercise 3 · Predict, then measure: sixteen tokens through a big weight
#
# Sixteen tokens through one 4096 × 4096 fp32 weight: a (16 × 4096) @ (4096 × 4096)
# matmul, whose 64 MB weight does not fit in this CPU's L3 cache. Before the next cell
# times it, predict its time in milliseconds from this machine's roofline: the roofs of
# section 2 (`roof.peak("fp32")` in FLOP/s, `roof.bandwidth` in bytes/s) and the cost
# formulas of section 3 (`hardware.matmul_cost`). Which roof binds — and how close to it
# will a real kernel come?


# %%
def predicted_ms() -> float:
    raise NotImplementedError  # your prediction here, in milliseconds


# %% tags=["nbval-ignore-output"]
x_b16, w_big = torch.randn(16, 4096), torch.randn(4096, 4096)  # (16, 4096) tokens, (4096, 4096) weight
t16 = measure.interleaved({"batch-16 matmul": lambda: x_b16 @ w_big}, warmup=1, repeats=5)
measured_ms = t16["batch-16 matmul"].median * 1e3
print(f"measured: {measured_ms:.2f} ms ({t16.note()})")
check_roofline_time_prediction(predicted_ms, measured_ms)


# %% tags=["solution"] jupyter={"source_hidden": true} cellView="form"
# @title Solution — try the exercise first
def predicted_ms() -> float:
    c = hardware.matmul_cost(16, 4096, 4096, dtype="fp32")  # 2mkn FLOPs; (mk + kn + mn) x 4 bytes
    compute_s, memory_s = c.flops / roof.peak("fp32"), c.bytes / roof.bandwidth
    return 1e3 * max(compute_s, memory_s)  # the slower roof binds


assert check_roofline_time_prediction(predicted_ms, measured_ms).passed

# %% [markdown]
# ## Self-check
#
# A short quiz; every answer explains why it is right or wrong. The last question is about
# your machine: its answer comes from section 7's measurement of fusion.

# %% tags=["nbval-ignore-output"]
from course_lib import quiz

quiz.show("11", measured={"q5": measure.speed_word(rms_row["speed-up"])})

# %% tags=["nbval-ignore-output"]
from course_lib import progress

progress.show("11")

# %% [markdown]
# ## References
#
# * Williams, Waterman & Patterson (2009), *Roofline: An Insightful Visual Performance Model for Multicore Architectures*. Communications of the ACM 52(4). [doi:10.1145/1498765.1498785](https://doi.org/10.1145/1498765.1498785)
# * McCalpin (1995), *Memory Bandwidth and Machine Balance in Current High Performance Computers*. IEEE TCCA Newsletter. [STREAM benchmark](https://www.cs.virginia.edu/stream/)
# * Gholami et al. (2024), *AI and Memory Wall*. IEEE Micro. [arXiv:2403.14123](https://arxiv.org/abs/2403.14123)
# * Pope et al. (2023), *Efficiently Scaling Transformer Inference*. MLSys. [arXiv:2211.05102](https://arxiv.org/abs/2211.05102)
# * Kalamkar et al. (2019), *A Study of BFLOAT16 for Deep Learning Training*. [arXiv:1905.12322](https://arxiv.org/abs/1905.12322)
# * Dao et al. (2022), *FlashAttention: Fast and Memory-Efficient Exact Attention with IO-Awareness*. [arXiv:2205.14135](https://arxiv.org/abs/2205.14135)
# * Yu et al. (2022), *Orca: A Distributed Serving System for Transformer-Based Generative Models*. OSDI. [usenix.org](https://www.usenix.org/conference/osdi22/presentation/yu)
# * Kwon et al. (2023), *Efficient Memory Management for Large Language Model Serving with PagedAttention*. [arXiv:2309.06180](https://arxiv.org/abs/2309.06180)
# * Ainslie et al. (2023), *GQA: Training Generalized Multi-Query Transformer Models from Multi-Head Checkpoints*. EMNLP. [arXiv:2305.13245](https://arxiv.org/abs/2305.13245)
# * Ansel et al. (2024), *PyTorch 2: Faster Machine Learning Through Dynamic Python Bytecode Transformation and Graph Compilation*. ASPLOS. [doi:10.1145/3620665.3640366](https://doi.org/10.1145/3620665.3640366)
# * Abdin et al. (2024), *Phi-3 Technical Report*. [arXiv:2404.14219](https://arxiv.org/abs/2404.14219)
# * Jiang et al. (2024), *Mixtral of Experts*. [arXiv:2401.04088](https://arxiv.org/abs/2401.04088)
# * Touvron et al. (2023), *Llama 2: Open Foundation and Fine-Tuned Chat Models*. [arXiv:2307.09288](https://arxiv.org/abs/2307.09288)
# * NVIDIA, *H100 Tensor Core GPU* datasheet (peak bf16 and memory bandwidth). <https://www.nvidia.com/en-us/data-center/h100/>
