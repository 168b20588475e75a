import json
import shutil

import pytest
import torch

from course_lib import data, zoo


@pytest.mark.parametrize("name", zoo.names())
def test_patient_loads_and_matches_card(name):
    p = zoo.load(name)
    assert p.model.num_params() == p.meta["params"]
    assert p.meta["model_config"] == p.model.config.to_dict()
    assert p.meta["tokenizer_sha256"] == data.tokenizer_sha256(p.tokenizer)
    out = p.complete("The Moon is", 5)
    assert out.startswith("The Moon is") and len(p.encode(out)[0]) >= 6


def test_patients_are_ordered_by_quality_and_size():
    tiny, small = zoo.card("tiny"), zoo.card("small")
    assert small["params"] > 5 * tiny["params"]
    assert small["val_loss"] < tiny["val_loss"]
    assert 3e6 <= small["params"] <= 5e6 and 0.3e6 <= tiny["params"] <= 0.7e6


def test_zoo_size_budget():
    total = sum(p.stat().st_size for p in zoo.ZOO_DIR.rglob("*") if p.is_file())
    assert total <= 25e6, f"committed zoo data is {total / 1e6:.1f} MB"


@pytest.fixture
def zoo_copy(tmp_path, monkeypatch):
    """A private ZOO_DIR holding a copy of the tiny patient, its tokenizer and the manifest."""
    from course_lib import paths

    for name in ("tiny.safetensors", "tiny.json", "tokenizer-4096.json", "MANIFEST.json"):
        shutil.copy(paths.ZOO_DIR / name, tmp_path / name)
    monkeypatch.setattr(paths, "ZOO_DIR", tmp_path)
    monkeypatch.setattr(paths, "MANIFEST_PATH", tmp_path / "MANIFEST.json")
    return tmp_path


def _flip(path, at):
    raw = bytearray(path.read_bytes())
    raw[at] ^= 1
    path.write_bytes(bytes(raw))


def test_corrupt_checkpoint_is_refused(zoo_copy):
    zoo.load("tiny")  # the copy is good
    _flip(zoo_copy / "tiny.safetensors", -100)  # one bit of a weight
    with pytest.raises(ValueError, match=r"tiny\.safetensors.*sha256.*python -m course_lib\.build zoo build tiny"):
        zoo.load("tiny")


def test_card_and_checkpoint_must_agree(zoo_copy):
    """Both files match the manifest, but the card names another checkpoint: refused, naming both."""
    from course_lib import paths

    card = json.loads((zoo_copy / "tiny.json").read_text())
    card["sha256"] = "0" * 64
    (zoo_copy / "tiny.json").write_text(json.dumps(card))
    paths.record_artefact(zoo_copy / "tiny.json", rebuild=zoo.rebuild_command("tiny"))
    with pytest.raises(
        ValueError, match=r"tiny\.safetensors does not match the sha256 in its card .*tiny\.json.*zoo build tiny"
    ):
        zoo.load("tiny")


@pytest.mark.parametrize("damage", ["truncated", "no sha256", "not a dict"])
def test_bad_card_is_a_clear_value_error(zoo_copy, damage):
    from course_lib import paths

    path = zoo_copy / "tiny.json"
    text = path.read_text()
    card = json.loads(text)
    del card["sha256"]
    path.write_text(
        {"truncated": text[: len(text) // 2], "no sha256": json.dumps(card), "not a dict": "[1, 2]"}[damage]
    )
    paths.record_artefact(path, rebuild=zoo.rebuild_command("tiny"))  # the manifest agrees: the card itself is bad
    with pytest.raises(ValueError, match=r"tiny\.json (is not valid JSON|has no valid 'sha256').*zoo build tiny"):
        zoo.load("tiny")
    with pytest.raises(ValueError, match=r"tiny\.json"):
        zoo.card("tiny")


def test_rebuilt_pair_loads_and_second_load_hashes_nothing(zoo_copy, monkeypatch):
    """write_patient writes checkpoint + card + manifest entries that load back; hashes are cached per process."""
    from course_lib import paths

    p = zoo.load("tiny")
    with torch.no_grad():
        p.model.embed.weight[0, 0] += 1
    card = zoo.write_patient("tiny", p.model, {**p.meta, "note": "rebuilt"})
    q = zoo.load("tiny")
    assert q.meta["note"] == "rebuilt" and q.meta["sha256"] == card["sha256"] != p.meta["sha256"]
    assert torch.equal(q.model.embed.weight, p.model.embed.weight)
    calls = []
    monkeypatch.setattr(paths, "sha256_file", lambda path: calls.append(path))
    zoo.load("tiny")
    assert calls == []
    assert sorted(f.name for f in zoo_copy.iterdir()) == [
        "MANIFEST.json",
        "tiny.json",
        "tiny.safetensors",
        "tokenizer-4096.json",
    ]


_WRITER = """
import sys, pathlib, torch
from course_lib import paths, zoo
d = pathlib.Path(sys.argv[1])
paths.ZOO_DIR, paths.MANIFEST_PATH = d, d / "MANIFEST.json"
p = zoo.load("tiny", verify=False)
print("ready", flush=True)
i = 0
while True:
    i += 1
    with torch.no_grad():
        p.model.embed.weight[0, 0] += 1
    zoo.write_patient("tiny", p.model, {**p.meta, "iteration": i})
"""


def test_killed_patient_writer_leaves_a_consistent_pair(zoo_copy):
    """SIGKILL zoo.write_patient at random moments: the checkpoint always matches its card, no stray files.

    ``COURSE_KILLS`` sets how many kills (default 4, to keep the file fast); the closing note used 20.
    """
    import os
    import random
    import signal
    import subprocess
    import sys
    import time

    from course_lib import paths

    rng = random.Random(0)
    kills = int(os.environ.get("COURSE_KILLS", "4"))
    for _ in range(kills):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(zoo_copy)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.6))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        card = paths.read_with_card(zoo_copy / "tiny.safetensors", zoo_copy / "tiny.json")  # finishes a committed write
        assert paths.sha256_file(zoo_copy / "tiny.safetensors") == card["sha256"]
        # a kill inside record_artefact leaves the manifest's temporary: its reader removes it, as
        # zoo.load's does (a CI run under load killed there once: '.MANIFEST.json.tmp-13662')
        paths.manifest()
        files = sorted(f.name for f in zoo_copy.iterdir())
        assert files == ["MANIFEST.json", "tiny.json", "tiny.safetensors", "tokenizer-4096.json"], files
    try:  # a kill after the pair but before the manifest update leaves the manifest behind: rebuild says so
        zoo.load("tiny")
    except ValueError as e:
        assert "python -m course_lib.build zoo build tiny" in str(e)


def test_bad_names():
    with pytest.raises(ValueError, match="name must be one of \\['tiny', 'small'\\], got"):
        zoo.load("huge")
    with pytest.raises(ValueError, match="name must be one of \\['tiny', 'small'\\], got"):
        zoo.build("huge")


def test_recipe_is_what_was_built():
    for n in zoo.names():
        mcfg, tcfg = zoo.RECIPES[n]
        c = zoo.card(n)
        assert c["model_config"] == mcfg.to_dict()
        assert c["train_config"]["steps"] == tcfg.steps and c["train_config"]["seed"] == tcfg.seed


def test_cli_list(capsys):
    assert zoo.main(["list"]) == 0
    out = capsys.readouterr().out
    assert all(n in out for n in zoo.names())


def test_card_is_json_with_curve():
    c = json.loads(zoo.card_path("tiny").read_text())
    assert len(c["curve"]["step"]) == len(c["curve"]["val_loss"]) > 0
    assert torch.tensor(c["curve"]["val_loss"]).isfinite().all()
