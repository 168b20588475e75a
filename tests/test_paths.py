"""course_lib.paths: atomic writes and the deterministic safetensors writer."""

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load, save

from course_lib.paths import atomic_write_bytes, safetensors_bytes

TENSORS = {
    "w": torch.randn(3, 5, generator=torch.Generator().manual_seed(0)),
    "h": torch.randn(4, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16),
    "ids": torch.arange(7, dtype=torch.int64),
    "q": torch.tensor([[-128, 0, 127]], dtype=torch.int8),
    "mask": torch.tensor([True, False, True]),
    "empty": torch.zeros(0, 4),
}
META = {"z": "last", "a": "first", "config": '{"d": 1}'}


def test_round_trip_through_the_reference_reader():
    back = load(safetensors_bytes(TENSORS, META))
    assert set(back) == set(TENSORS)
    for k, v in TENSORS.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape and torch.equal(back[k], v)
    # and the reference writer's file holds the same tensors
    ref = load(save(TENSORS, metadata=META))
    assert all(torch.equal(ref[k], back[k]) for k in TENSORS)


def test_bytes_depend_only_on_content_not_on_order_or_process():
    a = safetensors_bytes(TENSORS, META)
    b = safetensors_bytes(dict(reversed(list(TENSORS.items()))), dict(reversed(list(META.items()))))
    assert a == b
    code = (
        "import hashlib, torch; from course_lib.paths import safetensors_bytes as f;"
        "print(hashlib.sha256(f({'x': torch.arange(5.0), 'y': torch.ones(2)}, {'b': '2', 'a': '1', 'c': '3'})).hexdigest())"
    )
    runs = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        for _ in range(3)
    }
    assert len(runs) == 1  # safetensors.torch.save would differ between processes (hash-map header)


def test_bad_input():
    with pytest.raises(TypeError, match="tensors"):
        safetensors_bytes({"x": [1, 2]})
    with pytest.raises(TypeError, match="metadata"):
        safetensors_bytes({"x": torch.ones(1)}, {"n": 3})
    with pytest.raises(TypeError, match="dtype"):
        safetensors_bytes({"x": torch.ones(1, dtype=torch.complex64)})


def test_atomic_write_leaves_no_partial_file(tmp_path):
    path = tmp_path / "f.bin"
    atomic_write_bytes(path, b"old")
    with pytest.raises(TypeError):
        atomic_write_bytes(path, "not bytes")  # fails before anything replaces the old file
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]
