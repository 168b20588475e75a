import json

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


def test_corrupt_checkpoint_is_refused(tmp_path, monkeypatch):
    bad = tmp_path / "tiny.safetensors"
    raw = zoo.checkpoint_path("tiny").read_bytes()
    bad.write_bytes(raw[:-10] + b"0123456789")
    monkeypatch.setattr(zoo, "checkpoint_path", lambda name: bad)
    with pytest.raises(ValueError, match="sha256"):
        zoo.load("tiny")


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
