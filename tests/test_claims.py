"""The article's claims registry, the verdict call, and the book page built from executed notebooks."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from course_lib import claims

ROOT = Path(__file__).resolve().parent.parent


def test_registry_ids_words_chapters():
    assert len(claims.CLAIMS) == 28
    for cid, c in claims.CLAIMS.items():
        assert cid == c.id and re.fullmatch(r"[A-Z]\d", cid)
        assert re.fullmatch(r"\d\d", c.chapter) and len(c.words) > 15 and c.section


def test_verdict_carries_metadata_and_quotes_the_claim():
    v = claims.verdict("Q1", "holds with a caveat", "int8 weights take 3.95x fewer bytes here.", show=False)
    data, meta = v._repr_mimebundle_()
    assert meta[claims.METADATA_KEY] == {
        "id": "Q1",
        "chapter": "05",
        "status": "holds with a caveat",
        "evidence": "int8 weights take 3.95x fewer bytes here.",
    }
    assert "drastically reduce model size" in data["text/html"] and "claim Q1" in data["text/markdown"]


@pytest.mark.parametrize(
    "args, match",
    [
        (("Z9", "holds", "a long enough evidence sentence"), "claim_id"),
        (("Q1", "true", "a long enough evidence sentence"), "status"),
        (("Q1", "holds", "short"), "evidence"),
        (("Q1", "holds", None), "evidence"),
    ],
)
def test_verdict_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        claims.verdict(*args, show=False)


def _executed(tmp_path: Path, name: str, verdicts: list[claims.Verdict]) -> None:
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("claims.verdict(...)")
    for v in verdicts:
        data, meta = v._repr_mimebundle_()
        cell.outputs.append(nbformat.v4.new_output("display_data", data=data, metadata=meta))
    nb.cells.append(cell)
    nbformat.write(nb, tmp_path / name)


def test_collect_problems_and_page(tmp_path):
    ok = claims.verdict("Q1", "holds", "int8 weights take 3.95x fewer bytes here.", show=False)
    twice = claims.verdict("P1", "does not hold", "structured pruning measured slower here.", show=False)
    _executed(tmp_path, "05_quantization.ipynb", [ok])
    _executed(tmp_path, "06_pruning.ipynb", [twice, twice])
    found = claims.collect(tmp_path)
    assert [v["notebook"] for v in found["Q1"]] == ["05_quantization.ipynb"]
    bad = claims.problems(found, {"05", "06", "08"})
    assert any(b.startswith("P1: 2 verdicts") for b in bad)
    assert any(b.startswith("R1: chapter 08 exists") for b in bad)
    assert not any(b.startswith("Q1") for b in bad)
    page = claims.page_markdown(found, {"05", "06", "08"}, machine_line="AMD EPYC · AVX2 only")
    assert page.startswith("# The article, checked")
    assert "chapter planned" in page and "no verdict recorded" in page
    assert "{doc}`chapter 05 <notebooks/05_quantization>`" in page
    assert "AMD EPYC · AVX2 only" in page


def test_wrong_chapter_is_a_problem(tmp_path):
    v = claims.verdict("Q1", "holds", "recorded by the wrong chapter on purpose.", show=False)
    _executed(tmp_path, "06_pruning.ipynb", [v])
    assert any("belongs to chapter 05" in b for b in claims.problems(claims.collect(tmp_path), {"05", "06"}))


def test_page_script_writes_the_page(tmp_path):
    import importlib.util

    # the script's main() in this process (a subprocess would pay torch's and nbformat's imports twice)
    spec = importlib.util.spec_from_file_location("article_page", ROOT / "scripts" / "article_page.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    v = claims.verdict("Q1", "holds", "int8 weights take 3.95x fewer bytes here.", show=False)
    _executed(tmp_path, "05_quantization.ipynb", [v])
    out = tmp_path / "page.md"
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    (nbs / "05_quantization.py").write_text("")
    args = [str(tmp_path), str(out), "--notebooks", str(nbs)]
    assert script.main(args) == 0
    assert "int8 weights take 3.95x fewer bytes" in out.read_text()
    (nbs / "06_pruning.py").write_text("")  # chapter 06 exists now, without a verdict: strict fails
    assert script.main(args + ["--strict"]) == 1


def test_verdict_displays_once(monkeypatch):
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj: shown.append(obj))
    assert claims.verdict("Q1", "holds", "int8 weights take 3.95x fewer bytes here.") is None
    assert len(shown) == 1 and isinstance(shown[0], claims.Verdict)
