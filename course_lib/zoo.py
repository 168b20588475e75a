"""Pretrained patients, so notebooks never pay for long training.

Each entry is a (model config, training config) pair trained on the corpus' training split
by one deterministic command::

    python -m course_lib.zoo build            # every patient (~30 min on 2 cores)
    python -m course_lib.zoo build tiny       # one
    python -m course_lib.zoo list             # sizes, val perplexity, sha256

The results are **committed** inside the package (``course_lib/zoo_data/``, a few MB in all):
a notebook loads a patient in well under a second, CI never trains one, and Colab gets
them with ``pip install``. Each checkpoint has a JSON card beside it (steps, tokens seen,
val/test perplexity, sha256 of the weights file, the tokenizer's fingerprint, versions).
The pair is written as one unit (:func:`paths.write_with_card`: a build killed at any
moment leaves the old pair or the new one), and ``load`` checks both files against
``zoo_data/MANIFEST.json`` and the checkpoint against its card (hashed once per process),
so a damaged file is refused with the command that rebuilds it, never silently used.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from course_lib import data, fingerprint, paths
from course_lib.checks import check_choice
from course_lib.model import ModelConfig, TinyLM
from course_lib.paths import ZOO_DIR  # noqa: F401  (re-exported: zoo.ZOO_DIR)
from course_lib.train import TrainConfig, checkpoint_bytes, evaluate, load_checkpoint, perplexity, train

#: name -> (model config, training config). Changing one means rebuilding that patient.
RECIPES: dict[str, tuple[ModelConfig, TrainConfig]] = {
    "tiny": (
        ModelConfig(vocab_size=4096, d_model=64, n_layers=4, n_heads=4, n_kv_heads=2, max_seq_len=256),
        TrainConfig(
            steps=600, batch_size=32, seq_len=256, lr=3e-3, warmup_steps=30, eval_every=100, eval_batches=16, seed=0
        ),
    ),
    "small": (
        ModelConfig(vocab_size=4096, d_model=192, n_layers=6, n_heads=6, n_kv_heads=2, max_seq_len=256),
        TrainConfig(
            steps=500, batch_size=32, seq_len=256, lr=2e-3, warmup_steps=30, eval_every=100, eval_batches=16, seed=0
        ),
    ),
}


@dataclass
class Patient:
    """A loaded zoo model with its tokenizer and card; text in, text out."""

    name: str
    model: TinyLM
    tokenizer: object
    meta: dict

    def encode(self, text: str) -> torch.Tensor:
        """Text -> token ids (1, T)."""
        return torch.tensor([self.tokenizer.encode(text).ids], dtype=torch.long)

    def decode(self, ids) -> str:
        ids = ids.tolist() if torch.is_tensor(ids) else ids
        if ids and isinstance(ids[0], list):
            ids = ids[0]
        return self.tokenizer.decode(ids)

    def complete(self, prompt: str, max_new_tokens: int = 40, **kw) -> str:
        """The prompt continued by ``max_new_tokens`` tokens (greedy unless a temperature is given)."""
        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
        idx = self.encode(prompt)
        if idx.shape[1] == 0:
            raise ValueError(f"prompt must encode to at least one token, got {prompt!r}")
        out = self.model.generate(idx, max_new_tokens, **kw)
        return self.decode(out)


def checkpoint_path(name: str) -> Path:
    return paths.ZOO_DIR / f"{name}.safetensors"


def card_path(name: str) -> Path:
    return paths.ZOO_DIR / f"{name}.json"


def rebuild_command(name: str) -> str:
    return f"python -m course_lib.build zoo build {name}"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file (hashed once per process: :func:`paths.verified_sha256`)."""
    return paths.verified_sha256(Path(path))


def names() -> list[str]:
    return list(RECIPES)


def card(name: str) -> dict:
    """The JSON card of a built patient."""
    check_choice("name", name, names())
    path = card_path(name)
    if not path.is_file():
        raise FileNotFoundError(f"patient {name!r} is not built; run:  {rebuild_command(name)}")
    return paths.read_card(paths.zoo_file(path.name), rebuild=f"rebuild with  {rebuild_command(name)}")


def load(name: str = "tiny", *, verify: bool = True) -> Patient:
    """Load a pretrained patient (model in eval mode, tokenizer, card).

    With ``verify`` (the default) the checkpoint and card are checked against the manifest
    and against each other; each file is hashed once per process, so a second load is cheap.
    """
    check_choice("name", name, names())
    if not card_path(name).is_file():
        raise FileNotFoundError(f"patient {name!r} is not built; run:  {rebuild_command(name)}")
    path, meta = paths.zoo_pair(checkpoint_path(name), card_path(name), verify=verify)
    model, _ = load_checkpoint(path)
    tokenizer = data.get_tokenizer(model.config.vocab_size)
    if data.tokenizer_sha256(tokenizer) != meta["tokenizer_sha256"]:
        raise ValueError(f"patient {name!r} was trained with another tokenizer; rebuild the zoo")
    return Patient(name, model, tokenizer, meta)


def build(name: str, *, progress: bool = True) -> dict:
    """Train one patient from its recipe and write its checkpoint and card."""
    check_choice("name", name, names())
    mcfg, tcfg = RECIPES[name]
    torch.manual_seed(tcfg.seed)
    tok = data.get_tokenizer(mcfg.vocab_size)
    train_ids, val_ids, test_ids = (data.encode_split(s, tok) for s in data.SPLITS)
    model = TinyLM(mcfg)
    hist = train(model, train_ids, val_ids, tcfg, progress=progress, desc=f"zoo:{name}")
    full = dict(seq_len=tcfg.seq_len, batch_size=16, max_batches=None)
    val_loss, test_loss = evaluate(model, val_ids, **full), evaluate(model, test_ids, **full)
    meta = {
        "name": name,
        "params": model.num_params(),
        "params_non_embedding": model.num_params(embedding=False),
        "model_config": mcfg.to_dict(),
        "train_config": {k: getattr(tcfg, k) for k in tcfg.__dataclass_fields__},
        "tokens_seen": hist.tokens_seen,
        "epochs": round(hist.tokens_seen / len(train_ids), 2),
        "train_seconds": round(hist.seconds, 1),
        "train_tokens_per_second": round(hist.tokens_per_second),
        "val_loss": round(val_loss, 4),
        "val_ppl": round(perplexity(val_loss), 2),
        "test_loss": round(test_loss, 4),
        "test_ppl": round(perplexity(test_loss), 2),
        "curve": {"step": hist.val_step, "val_loss": [round(v, 4) for v in hist.val_loss]},
        "tokenizer_sha256": data.tokenizer_sha256(tok),
        "built_with": {
            "torch": torch.__version__,
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
        },
        "machine": fingerprint.machine(),  # which CPU made train_seconds (course_lib.fingerprint)
        "command": f"python -m course_lib.zoo build {name}",
    }
    return write_patient(name, model, meta)


def write_patient(name: str, model: TinyLM, meta: dict) -> dict:
    """Write a patient's checkpoint and card (``meta`` plus the checkpoint's sha256) as one unit.

    Killed at any point, the zoo holds the old pair or the new pair, and no temporary files
    once the next reader or writer has run; both files are then entered in the manifest.
    """
    check_choice("name", name, names())
    blob = checkpoint_bytes(model, metadata={"zoo": name})
    return paths.write_with_card(checkpoint_path(name), blob, card_path(name), meta, rebuild=rebuild_command(name))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.zoo", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="train patients and write them to course_lib/zoo_data")
    b.add_argument("names", nargs="*", default=names(), help=f"which (default: all of {names()})")
    b.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's choice; recorded in the card)"
    )
    sub.add_parser("list", help="show the built patients")
    args = parser.parse_args(argv)
    if args.cmd == "build":
        if args.threads is not None:
            if args.threads < 1:
                parser.error("--threads must be >= 1")
            torch.set_num_threads(args.threads)
        for n in args.names:
            t = time.perf_counter()
            meta = build(n)
            print(f"{n}: {meta['params']:,} params, val ppl {meta['val_ppl']}, {time.perf_counter() - t:.0f} s")
    else:
        for n in names():
            try:
                m = card(n)
                print(f"{n:6s} {m['params']:>10,} params  val ppl {m['val_ppl']:7.2f}  {m['sha256'][:12]}")
            except FileNotFoundError:
                print(f"{n:6s} not built")
    return 0


if __name__ == "__main__":
    sys.exit(main())
