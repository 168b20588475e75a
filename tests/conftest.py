"""Shared fixtures (the network guard lives in the root conftest.py)."""

from __future__ import annotations

import pytest


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


@pytest.fixture
def one_thread():
    """torch on one thread for the test (results are byte-identical only for the same thread count)."""
    from course_lib import measure

    with measure.num_threads(1):
        yield
