"""Training the patient: a deterministic AdamW loop, evaluation, and safetensors checkpoints.

The loop is the standard recipe for small language models (nanoGPT, Llama): AdamW with
decoupled weight decay on matrices only, linear warm-up then cosine decay of the learning
rate, gradient-norm clipping. Batches are drawn from a ``torch.Generator`` seeded from the
config, so the same seed gives the same losses, bit for bit, on the same machine.

Checkpoints are safetensors files (no pickle, so loading one cannot run code). The model
config, any metadata and a sha256 of all of it travel in the file's header; a truncated or
corrupt file (one flipped bit), or one whose tensors do not match the model, raises a
``ValueError`` that says which. (Checkpoints written before the hash was added carry none;
the shipped ones are checked against ``zoo_data/MANIFEST.json`` instead.)
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from course_lib.checks import check_callable, check_float, check_int, check_type
from course_lib.data import eval_batches, random_batch
from course_lib.model import ModelConfig, TinyLM
from course_lib.paths import atomic_write_bytes, safetensors_bytes


@dataclass
class TrainConfig:
    """Optimisation settings. ``steps`` of ``batch_size`` windows of ``seq_len`` tokens."""

    steps: int = 200
    batch_size: int = 16
    seq_len: int = 128
    lr: float = 3e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 20
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    eval_every: int = 50  # 0 = evaluate only at the end
    eval_batches: int = 8
    seed: int = 0

    def __post_init__(self):
        for name in ("steps", "batch_size", "seq_len"):
            check_int(name, getattr(self, name), min=1)
        for name in ("warmup_steps", "eval_every", "eval_batches"):
            check_int(name, getattr(self, name), min=0)
        check_int("seed", self.seed)
        check_float("lr", self.lr, min=0, min_inclusive=False)
        check_float("min_lr_ratio", self.min_lr_ratio, min=0, max=1)
        check_float("weight_decay", self.weight_decay, min=0)
        check_float("grad_clip", self.grad_clip, min=0)
        check_type("betas", self.betas, (tuple, list))
        if len(self.betas) != 2:
            raise ValueError(f"betas must be two numbers (beta1, beta2), got {self.betas!r}")
        for i, b in enumerate(self.betas):
            check_float(f"betas[{i}]", b, min=0, max=1, max_inclusive=False)
        self.betas = tuple(self.betas)

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len


def lr_at(step: int, cfg: TrainConfig) -> float:
    r"""Learning rate at ``step``: linear warm-up, then cosine from ``lr`` to ``lr·min_lr_ratio``.

    :math:`\eta_t = \eta_{min} + \tfrac12(\eta - \eta_{min})(1 + \cos(\pi\,\frac{t - t_w}{T - t_w}))`.
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    min_lr = cfg.lr * cfg.min_lr_ratio
    return min_lr + 0.5 * (cfg.lr - min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


@dataclass
class History:
    """What happened during training, one entry per step (val entries at eval steps)."""

    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    val_step: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    tokens_seen: int = 0
    seconds: float = 0.0

    @property
    def final_val_loss(self) -> float:
        return self.val_loss[-1] if self.val_loss else float("nan")

    @property
    def final_val_ppl(self) -> float:
        return math.exp(self.final_val_loss)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_seen / self.seconds if self.seconds else float("nan")

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def evaluate(model: TinyLM, tokens, *, seq_len: int = 128, batch_size: int = 16, max_batches: int | None = 8) -> float:
    """Mean next-token cross-entropy (nats) over consecutive windows of ``tokens``."""
    if not callable(getattr(model, "loss", None)):
        raise TypeError(f"model must be a TinyLM-like module with .loss(x, y), got {type(model).__name__}")
    was_training = model.training
    model.eval()
    total, n = 0.0, 0
    for x, y in eval_batches(tokens, batch_size, seq_len, max_batches=max_batches):
        total += model.loss(x.to(_device(model)), y.to(_device(model))).item()
        n += 1
    model.train(was_training)
    if n == 0:
        raise ValueError(f"tokens too short for one batch of {batch_size} x {seq_len}")
    return total / n


def perplexity(loss: float) -> float:
    """Perplexity = exp(cross-entropy in nats): the effective number of choices per token."""
    return math.exp(loss)


@dataclass(frozen=True)
class TimeToTarget:
    """When a run first reached a target validation loss: optimiser steps, tokens and seconds (floats: interpolated)."""

    steps: float
    tokens: float
    seconds: float


def time_to_target(history, target_loss: float) -> TimeToTarget | None:
    r"""The course's one definition of time-to-accuracy: when validation loss first reaches ``target_loss``.

    ``history`` is a :class:`History` or a mapping with its keys (``val_step``, ``val_loss``,
    ``tokens_seen``, ``seconds`` and ``step`` — the list — or ``steps``, the count), e.g. a
    stored run. An evaluation logged at ``val_step`` :math:`s` comes after :math:`n = s + 1`
    optimiser steps. With evaluations :math:`(n_i, L_i)`, the first :math:`i` with
    :math:`L_i \le L^*` gives, by linear interpolation from the evaluation before it,

    .. math:: n^* = n_{i-1} + (n_i - n_{i-1})\,\frac{L_{i-1} - L^*}{L_{i-1} - L_i},

    and :math:`n^* = n_0` when the first evaluation is already at or below the target
    (nothing earlier was measured). Tokens are :math:`n^*` times the tokens per step and
    seconds :math:`n^*` times the mean seconds per step (evaluation time included, spread
    evenly). Returns ``None`` when the target is never reached.
    """
    check_float("target_loss", target_loss, min=0, min_inclusive=False)
    if isinstance(history, History):
        h = history.to_dict()
    elif isinstance(history, dict):
        h = history
    else:
        raise TypeError(f"history must be a History or a dict with its keys, got {type(history).__name__}")
    for key in ("val_step", "val_loss", "tokens_seen", "seconds"):
        if key not in h:
            raise ValueError(f"history must have the key {key!r} (a History's fields), got keys {sorted(h)}")
    n_steps = len(h["step"]) if "step" in h else h.get("steps")
    check_int("history['steps']", n_steps, min=1)
    vs, vl = list(h["val_step"]), [float(v) for v in h["val_loss"]]
    if not vl or len(vs) != len(vl):
        raise ValueError(
            f"history must hold at least one evaluation, with val_step and val_loss of equal length; "
            f"got {len(vs)} and {len(vl)}"
        )
    if any(b <= a for a, b in zip(vs, vs[1:])) or vs[0] < 0 or vs[-1] >= n_steps:
        raise ValueError(f"history['val_step'] must increase within [0, {n_steps - 1}], got {vs}")
    if not all(math.isfinite(v) for v in vl):
        raise ValueError(f"history['val_loss'] must be finite, got {vl}")
    tokens_per_step = check_float("history['tokens_seen']", h["tokens_seen"], min=0) / n_steps
    seconds_per_step = check_float("history['seconds']", h["seconds"], min=0) / n_steps
    for i, (s, loss) in enumerate(zip(vs, vl)):
        if loss > target_loss:
            continue
        n = float(s + 1)
        if i > 0:
            n0, l0 = vs[i - 1] + 1, vl[i - 1]
            n = n0 + (n - n0) * (l0 - target_loss) / (l0 - loss)
        return TimeToTarget(steps=n, tokens=n * tokens_per_step, seconds=n * seconds_per_step)
    return None


def _device(model) -> torch.device:
    return next(model.parameters()).device


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on norms, biases)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


def train(
    model: TinyLM,
    train_tokens,
    val_tokens=None,
    cfg: TrainConfig | None = None,
    *,
    progress: bool = True,
    callback: Callable | None = None,
    desc: str = "train",
    batch_at: Callable | None = None,
    loss_fn: Callable | None = None,
    stop_after: int | None = None,
) -> History:
    """Train ``model`` in place for ``cfg.steps`` steps and return its :class:`History`.

    The loss optimised is next-token cross-entropy plus any auxiliary loss the layers
    report (``model.aux_loss()``, e.g. MoE load balancing). ``callback(step, model, loss)``
    runs after every optimiser step (router statistics are collected this way).

    Chapter 07 varies what the loop sees, not the loop: ``batch_at(step) -> (x, y)``
    chooses the batches instead of random windows of ``train_tokens`` (pass ``None`` for
    ``train_tokens`` then; e.g. a curriculum's fixed order), ``loss_fn(model, x, y)``
    replaces ``model.loss`` (distillation; validation stays plain cross-entropy), and
    ``stop_after`` stops after that many steps under the schedule of the full ``cfg.steps``
    (the first steps of a longer run, to recompute a stored curve live).
    """
    cfg = check_type("cfg", cfg or TrainConfig(), TrainConfig)
    if callback is not None:
        check_callable("callback", callback)
    if batch_at is not None:
        check_callable("batch_at", batch_at)
    elif train_tokens is None:
        raise ValueError("train_tokens must be given when batch_at is None (random windows are drawn from it)")
    if loss_fn is not None:
        check_callable("loss_fn", loss_fn)
    n_steps = check_int("stop_after", stop_after, min=1, max=cfg.steps, allow_none=True) or cfg.steps
    if cfg.seq_len > model.config.max_seq_len:
        raise ValueError(f"cfg.seq_len ({cfg.seq_len}) exceeds the model's max_seq_len ({model.config.max_seq_len})")
    if batch_at is None:
        gen = torch.Generator().manual_seed(cfg.seed)

        def batch_at(step):
            return random_batch(train_tokens, cfg.batch_size, cfg.seq_len, gen)

    opt = make_optimizer(model, cfg)
    device = _device(model)
    hist = History()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_steps, desc=desc, mininterval=1.0, leave=True)
    model.train()
    t0 = time.perf_counter()
    for step in range(n_steps):
        lr = lr_at(step, cfg)
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = batch_at(step)
        x, y = x.to(device), y.to(device)
        loss = model.loss(x, y) if loss_fn is None else loss_fn(model, x, y)
        aux = model.aux_loss()
        total = loss + aux if aux is not None else loss
        opt.zero_grad(set_to_none=True)
        total.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        hist.step.append(step)
        hist.loss.append(loss.item())
        hist.lr.append(lr)
        hist.tokens_seen += cfg.tokens_per_step
        last = step == cfg.steps - 1
        if val_tokens is not None and ((cfg.eval_every and (step + 1) % cfg.eval_every == 0) or last):
            hist.val_step.append(step)
            hist.val_loss.append(
                evaluate(
                    model, val_tokens, seq_len=cfg.seq_len, batch_size=cfg.batch_size, max_batches=cfg.eval_batches
                )
            )
            model.train()
        if callback is not None:
            callback(step, model, loss.item())
        if bar is not None:
            post = {"loss": f"{hist.loss[-1]:.3f}"}
            if hist.val_loss:
                post.update(val=f"{hist.val_loss[-1]:.3f}", ppl=f"{math.exp(hist.val_loss[-1]):.1f}")
            bar.set_postfix(post, refresh=False)
            bar.update(1)
    hist.seconds = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    model.eval()
    return hist


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(model: TinyLM, path, *, metadata: dict | None = None) -> Path:
    """Write ``model`` (weights + config + metadata) to a safetensors file, atomically.

    The bytes depend only on the weights and metadata (:func:`paths.safetensors_bytes`).
    A checkpoint with a card beside it is written with :func:`checkpoint_bytes` and
    :func:`paths.write_with_card` instead, so the pair changes as one unit.
    """
    path = Path(path)
    atomic_write_bytes(path, checkpoint_bytes(model, metadata=metadata))
    return path


def checkpoint_bytes(model: TinyLM, *, metadata: dict | None = None) -> bytes:
    """The bytes of ``model``'s checkpoint (what :func:`save_checkpoint` writes), without writing them."""
    check_type("model", model, TinyLM)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        state.pop("lm_head.weight", None)  # the same storage as embed.weight
    header = {
        "format": "course_lib.TinyLM/1",
        "config": model.config.to_json(),
        "metadata": json.dumps(metadata or {}, sort_keys=True),
    }
    body = safetensors_bytes(state, header)
    header["sha256"] = _content_sha256(body, header)  # checked by read_checkpoint: a flipped bit is refused
    return safetensors_bytes(state, header)


def _content_sha256(raw: bytes, header: dict) -> str:
    """sha256 of a checkpoint's tensor bytes, its config and its metadata (everything but the hash itself)."""
    n = int.from_bytes(raw[:8], "little")
    h = hashlib.sha256(raw[8 + n :])
    h.update(b"\0" + header["config"].encode() + b"\0" + header.get("metadata", "").encode())
    return h.hexdigest()


def read_checkpoint(path) -> tuple[ModelConfig, dict, dict]:
    """(config, state_dict, metadata) of a checkpoint, with clear errors for bad files."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    raw = path.read_bytes()
    try:
        state = load(raw)
        n = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8 : 8 + n]).get("__metadata__") or {}
    except (SafetensorError, ValueError, OSError) as e:
        raise ValueError(f"{path} is not a valid safetensors checkpoint (corrupt or truncated?): {e}") from e
    if header.get("format") != "course_lib.TinyLM/1" or "config" not in header:
        raise ValueError(
            f"{path} is a safetensors file but not a course_lib TinyLM checkpoint (header: {sorted(header)})"
        )
    if "sha256" in header and _content_sha256(raw, header) != header["sha256"]:
        raise ValueError(f"{path} does not match the sha256 in its header: the checkpoint is damaged")
    config = ModelConfig.from_dict(json.loads(header["config"]))
    return config, state, json.loads(header.get("metadata", "{}"))


def load_state(model: TinyLM, state: dict, *, source: str = "checkpoint") -> TinyLM:
    """Copy ``state`` into ``model``; every tensor must exist with the same shape and dtype."""
    expected = {
        k: v for k, v in model.state_dict().items() if not (model.config.tie_embeddings and k == "lm_head.weight")
    }
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{source} does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for k, v in expected.items():
        if v.shape != state[k].shape or v.dtype != state[k].dtype:
            raise ValueError(
                f"{source}: {k} is {tuple(state[k].shape)} {state[k].dtype}, model wants {tuple(v.shape)} {v.dtype}"
            )
    model.load_state_dict(state, strict=False)
    return model


def load_checkpoint(path, *, model: TinyLM | None = None) -> tuple[TinyLM, dict]:
    """Load a checkpoint into a new TinyLM (or into ``model``, whose config must match)."""
    config, state, metadata = read_checkpoint(path)
    if model is None:
        model = TinyLM(config)
    elif model.config.to_dict() != config.to_dict():
        raise ValueError(f"{path} holds config {config.to_dict()}, model has {model.config.to_dict()}")
    load_state(model, state, source=str(path))
    model.eval()
    return model, metadata
