"""Notebook hygiene: pairing, outputs stripped, shape of each chapter (design §5)."""

import re
from pathlib import Path

import jupytext
import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
NB_DIR = ROOT / "notebooks"
PY = sorted(NB_DIR.glob("[0-9][0-9]_*.py"))
IPYNB = sorted(NB_DIR.glob("[0-9][0-9]_*.ipynb"))


def _cells(nb):
    return [(c.cell_type, c.source.strip(), tuple(sorted(c.metadata.get("tags", [])))) for c in nb.cells]


def test_every_notebook_is_paired():
    assert PY, "no notebooks found"
    assert [p.stem for p in PY] == [p.stem for p in IPYNB], (
        "each notebooks/NN_x.py needs its NN_x.ipynb (run `make sync`)"
    )


@pytest.mark.parametrize("py", PY, ids=lambda p: p.stem)
def test_pair_in_sync(py):
    a = jupytext.read(py)
    b = nbformat.read(py.with_suffix(".ipynb"), as_version=4)
    assert _cells(a) == _cells(b), f"{py.name} and its .ipynb differ: run `make sync`"


@pytest.mark.parametrize("ipynb", IPYNB, ids=lambda p: p.stem)
def test_committed_without_outputs_and_with_kernelspec(ipynb):
    nb = nbformat.read(ipynb, as_version=4)
    for c in nb.cells:
        if c.cell_type == "code":
            assert not c.outputs and c.execution_count is None, f"{ipynb.name}: strip outputs before committing"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"


@pytest.mark.parametrize("py", PY, ids=lambda p: p.stem)
def test_chapter_shape(py):
    nb = jupytext.read(py)
    md = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith(f"# {py.stem[:2]} ·"), (
        "title cell first"
    )
    assert all(s in md for s in ("What you'll build", "What you'll learn", "What you'll need")), "the what-you'll box"
    assert "bootstrap" in code[0].metadata.get("tags", []), "first code cell is the Colab bootstrap"
    assert "start(seed=" in code[0].source
    assert re.search(r"^## Summary", md, re.M) and re.search(r"^## References", md, re.M)
    assert re.search(r"^## Exercise", md, re.M), "each chapter ends with exercises"
    solutions = [c for c in code if "solution" in c.metadata.get("tags", [])]
    assert solutions and all("assert check_" in c.source for c in solutions), (
        "solution cells prove their checker passes"
    )


def test_bootstrap_url_is_the_one_repository_setting():
    cfg_path = ROOT / "book" / "_config.yml"
    url = yaml.safe_load(cfg_path.read_text())["repository"]["url"]
    for py in PY:
        boot = next(c for c in jupytext.read(py).cells if c.cell_type == "code")
        assert f'REPO_URL = "{url}"' in boot.source, f"{py.name}: bootstrap URL differs from book/_config.yml"


@pytest.mark.parametrize("py", PY, ids=lambda p: p.stem)
def test_solution_cells_are_hidden_in_lab_and_colab(py):
    """Issue #18: a solution is collapsed in JupyterLab (``jupyter.source_hidden``) and shown as a
    titled form in Colab (``cellView: form`` + ``# @title``), not only hidden in the book."""
    solutions = [c for c in jupytext.read(py).cells if "solution" in c.metadata.get("tags", [])]
    assert solutions, f"{py.name}: no cell tagged 'solution'"
    for c in solutions:
        first = c.source.lstrip().splitlines()[0] if c.source.strip() else ""
        where = f"{py.name}: solution cell starting {first[:60]!r}"
        assert c.metadata.get("jupyter", {}).get("source_hidden") is True, (
            f'{where} needs jupyter={{"source_hidden": true}} in its `# %%` header'
        )
        assert c.metadata.get("cellView") == "form", f'{where} needs cellView="form" in its `# %%` header'
        assert first.startswith("# @title Solution"), (
            f"{where} must start with `# @title Solution — try the exercise first`"
        )


@pytest.mark.parametrize("py", PY, ids=lambda p: p.stem)
def test_chapter_ends_with_its_quiz_and_progress(py):
    """Issue #18: each chapter shows its own self-check quiz and the learner's progress table."""
    chapter = py.stem[:2]
    code = "\n".join(c.source for c in jupytext.read(py).cells if c.cell_type == "code")
    assert re.search(rf"""quiz\.show\(\s*["']{chapter}["']""", code), f'{py.name}: no quiz.show("{chapter}", ...) cell'
    assert re.search(rf"""progress\.show\(\s*["']{chapter}["']\s*\)""", code), (
        f'{py.name}: no progress.show("{chapter}") cell'
    )
