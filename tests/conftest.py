"""Shared fixtures; and the network guard for this process and every kernel it starts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from course_lib import netguard

ROOT = Path(__file__).resolve().parent.parent
_SITE = str(Path(__file__).resolve().parent / "netguard_site")

# Refuse non-loopback connections here and in child processes (nbval's kernels inherit
# the environment, and sitecustomize on PYTHONPATH runs at their start-up).
netguard.install()
os.environ["PYTHONPATH"] = os.pathsep.join(
    [_SITE] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def tiny_config():
    from course_lib.model import ModelConfig

    return ModelConfig(vocab_size=97, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=48)


@pytest.fixture
def tiny_model(tiny_config):
    import torch

    from course_lib.model import TinyLM

    torch.manual_seed(0)
    return TinyLM(tiny_config).eval()


@pytest.fixture(scope="session")
def tokenizer():
    from course_lib.data import get_tokenizer

    return get_tokenizer()
