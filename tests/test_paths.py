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


def test_manifest_lists_every_shipped_file_and_they_verify():
    from course_lib import paths

    shipped = {p.name for p in paths.ZOO_DIR.iterdir() if p.is_file() and p.name != "MANIFEST.json"}
    assert set(paths.manifest()) == shipped, "run paths.record_artefact for new zoo_data files"
    for name in shipped:
        assert paths.zoo_file(name) == paths.ZOO_DIR / name
    assert all(e["rebuild"].startswith("python ") for e in paths.manifest().values())


def test_zoo_file_refuses_damaged_missing_and_unknown(tmp_path, monkeypatch):
    import shutil

    from course_lib import paths

    shutil.copy(paths.ZOO_DIR / "tiny.json", tmp_path / "tiny.json")
    monkeypatch.setattr(paths, "ZOO_DIR", tmp_path)
    monkeypatch.setattr(paths, "MANIFEST_PATH", tmp_path / "MANIFEST.json")
    paths.record_artefact(tmp_path / "tiny.json", rebuild="python -m course_lib.build zoo build tiny")
    assert paths.zoo_file("tiny.json") == tmp_path / "tiny.json"
    raw = bytearray((tmp_path / "tiny.json").read_bytes())
    raw[10] ^= 1  # one flipped bit, same size
    (tmp_path / "tiny.json").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"tiny\.json does not match its sha256.*course_lib\.build zoo build tiny"):
        paths.zoo_file("tiny.json")
    (tmp_path / "tiny.json").write_bytes(bytes(raw[:-5]))
    with pytest.raises(ValueError, match="bytes, expected"):
        paths.zoo_file("tiny.json")
    (tmp_path / "tiny.json").unlink()
    with pytest.raises(ValueError, match="is missing"):
        paths.zoo_file("tiny.json")
    for bad in ("nope.json", "../x", "", 3):
        with pytest.raises(ValueError, match="name|not a shipped"):
            paths.zoo_file(bad)
    with pytest.raises(ValueError, match="rebuild"):
        paths.record_artefact(tmp_path / "MANIFEST.json", rebuild="make it")


def test_killed_writers_leave_no_stray_files(tmp_path):
    """SIGKILL a writer mid-write 5 times: the target is old-or-new, never half; no temporaries survive."""
    import os
    import signal
    import time

    target = tmp_path / "big.bin"
    atomic_write_bytes(target, b"old")
    code = (
        "import sys; from course_lib.paths import atomic_write_bytes; "
        f"atomic_write_bytes(__import__('pathlib').Path({str(target)!r}), b'x' * 200_000_000)"
    )
    for i in range(5):
        p = subprocess.Popen([sys.executable, "-c", code])
        time.sleep(0.8 + 0.2 * i)
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        assert target.read_bytes()[:3] in (b"old", b"xxx")
    atomic_write_bytes(target, b"new")  # the next write sweeps the dead writers' temporaries
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["big.bin"]


_PAIR_WRITER = """
import os, signal, sys, pathlib
from course_lib import paths
d, when = pathlib.Path(sys.argv[1]), sys.argv[2]
real_replace, real_write = os.replace, paths._fsynced_write
def replace(src, dst):
    if when == "after commit" and ".pending-" in str(src):
        os.kill(os.getpid(), signal.SIGKILL)  # the card is committed, the data not yet renamed
    real_replace(src, dst)
def write(path, data):
    if when == "mid data":
        real_write(path, data[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)  # half of the new data written, nothing committed
    real_write(path, data)
paths.os.replace, paths._fsynced_write = replace, write
paths.write_with_card(d / "w.bin", b"new" * 1000, d / "w.json", {"v": "new"})
"""


@pytest.mark.parametrize("when", ["mid data", "after commit"])
def test_pair_writer_killed_at_each_step_leaves_old_or_new_pair(tmp_path, when):
    """write_with_card SIGKILLed before and after its commit point: the reader sees one whole pair, no strays."""
    import os
    import signal

    from course_lib import paths

    paths.write_with_card(tmp_path / "w.bin", b"old" * 10, tmp_path / "w.json", {"v": "old"})
    proc = subprocess.run([sys.executable, "-c", _PAIR_WRITER, str(tmp_path), when])
    assert proc.returncode == -signal.SIGKILL
    assert any(".pending-" in p.name for p in tmp_path.iterdir())  # what the dead writer left
    card = paths.read_with_card(tmp_path / "w.bin", tmp_path / "w.json")
    data = (tmp_path / "w.bin").read_bytes()
    if when == "mid data":
        assert card["v"] == "old" and data == b"old" * 10
    else:  # rolled forward: the committed card's data is put in place
        assert card["v"] == "new" and data == b"new" * 1000
    assert paths.sha256_file(tmp_path / "w.bin") == card["sha256"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.bin", "w.json"]
    assert os.getpid()  # the reader ran in this (live) process


def test_read_with_card_errors_name_the_files(tmp_path):
    from course_lib import paths

    paths.write_with_card(tmp_path / "w.bin", b"abc", tmp_path / "w.json", {"v": 1})
    (tmp_path / "w.bin").write_bytes(b"abd")
    with pytest.raises(ValueError, match=r"w\.bin does not match the sha256 in its card .*w\.json.*run me"):
        paths.read_with_card(tmp_path / "w.bin", tmp_path / "w.json", rebuild="run me")
    (tmp_path / "w.json").write_text('{"v": 1, "sha2')
    with pytest.raises(ValueError, match=r"w\.json is not valid JSON"):
        paths.read_with_card(tmp_path / "w.bin", tmp_path / "w.json")
    (tmp_path / "w.json").write_text('{"v": 1}')
    with pytest.raises(ValueError, match=r"w\.json has no valid 'sha256'"):
        paths.read_with_card(tmp_path / "w.bin", tmp_path / "w.json")
    with pytest.raises(ValueError, match="two files in one folder"):
        paths.write_with_card(tmp_path / "w.bin", b"x", tmp_path / "w.bin", {})
    with pytest.raises(TypeError, match="data"):
        paths.write_with_card(tmp_path / "w.bin", "text", tmp_path / "w.json", {})


def test_stored_file_reads_a_given_copy_or_the_checked_artefact(tmp_path):
    from course_lib.paths import load_json, stored_file, zoo_file

    copy = tmp_path / "runs.json"
    copy.write_text('{"a": 1}')
    assert load_json("moe_runs.json", copy) == {"a": 1}
    assert stored_file("moe_runs.json") == zoo_file("moe_runs.json")
    with pytest.raises(FileNotFoundError, match="path .*missing.json does not exist"):
        stored_file("moe_runs.json", tmp_path / "missing.json")
    with pytest.raises(ValueError, match="not a shipped artefact"):
        load_json("no_such_file.json")
