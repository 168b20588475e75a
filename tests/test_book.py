"""The book's sources: every notebook in the table of contents, config and bibliography sane."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"
#: Pages `make book` writes before building the site (never committed).
GENERATED = {"article_checked"}


def _toc_files(node) -> list[str]:
    out = []
    if isinstance(node, dict):
        if "file" in node:
            out.append(node["file"])
        for v in node.values():
            out += _toc_files(v)
    elif isinstance(node, list):
        for v in node:
            out += _toc_files(v)
    return out


def test_every_notebook_is_in_the_toc():
    toc = yaml.safe_load((BOOK / "_toc.yml").read_text())
    files = _toc_files(toc)
    notebooks = sorted(f"notebooks/{p.stem}" for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    missing = [n for n in notebooks if n not in files]
    assert not missing, f"add to book/_toc.yml: {missing}"
    listed_nbs = [f for f in files if f.startswith("notebooks/")]
    assert listed_nbs == sorted(listed_nbs), "chapters in numeric order"
    for f in files:
        if not f.startswith("notebooks/") and f not in GENERATED:
            assert (BOOK / f"{f}.md").is_file(), f"toc lists {f} but book/{f}.md does not exist"


def test_config_is_offline():
    text = (BOOK / "_config.yml").read_text()
    cfg = yaml.safe_load(text)
    assert cfg["title"] == "Beyond Scale: Efficient AI from Scratch"
    sphinx = cfg["sphinx"]["config"]
    assert not sphinx["mathjax_path"].startswith("http")
    assert all(not k.startswith("http") for k in sphinx["nb_ipywidgets_js"])
    assert cfg["execute"]["execute_notebooks"] == "off"  # scripts/execute_notebooks.py did it


def test_bibliography_keys_unique():
    keys = re.findall(r"@\w+\s*\{\s*([^,\s]+)\s*,", (BOOK / "references.bib").read_text())
    dupes = {k for k in keys if keys.count(k) > 1}
    assert not dupes, f"duplicate BibTeX keys: {dupes}"


def test_readme_uses_the_repository_setting():
    url = yaml.safe_load((BOOK / "_config.yml").read_text())["repository"]["url"]
    readme = (ROOT / "README.md").read_text()
    assert set(re.findall(r"https://github\.com/[\w.-]+/[\w.-]+", readme)) <= {url}
