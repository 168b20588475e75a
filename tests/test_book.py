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


def _config() -> dict:
    return yaml.safe_load((BOOK / "_config.yml").read_text())


def _course_book():
    import importlib.util

    spec = importlib.util.spec_from_file_location("course_book", BOOK / "_ext" / "course_book.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_markdown_built_in_code_goes_through_myst_with_dollarmath():
    # IPython Markdown("$R^2$ = ...") outputs: parsed like the prose, so MathJax typesets them
    cfg = _config()
    assert cfg["sphinx"]["config"]["nb_render_markdown_format"] == "myst"
    assert "dollarmath" in cfg["parse"]["myst_enable_extensions"]


def test_the_site_vendors_the_mathjax_bundle_it_loads():
    import importlib.util

    spec = importlib.util.spec_from_file_location("vendor_js", ROOT / "scripts" / "vendor_js.py")
    vendor_js = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(vendor_js)
    assert _config()["sphinx"]["config"]["mathjax_path"] == f"vendor/mathjax/{vendor_js.MATHJAX_BUNDLE}"
    assert all(not p.endswith(".js") or "/" in p for p in vendor_js.MATHJAX_PARTS)  # no second bundle


def test_search_snippet_script_is_loaded_on_every_page():
    files = _config()["sphinx"]["config"]["html_js_files"]
    names = [f if isinstance(f, str) else f[0] for f in files]
    assert "course-search.js" in names
    assert (BOOK / "_assets" / "course-search.js").is_file()


def test_theme_options_keep_the_pydata_header_empty():
    # pydata-sphinx-theme 0.17 puts a search field in a header bar unless the user options
    # say otherwise; that bar's hidden hamburger then steals the phone's sidebar button
    opts = _course_book().THEME_OPTIONS
    for key in ("navbar_start", "navbar_center", "navbar_end", "navbar_persistent"):
        assert opts[key] == [], key


class _Env:
    def doc2path(self, docname):
        return f"/book/{docname}.ipynb"


class _App:
    env = _Env()


def test_solution_cells_are_labelled_solution_and_collapsed():
    import json

    nb = {
        "cells": [
            {"cell_type": "code", "metadata": {"tags": ["solution"]}, "source": "x = 1"},
            {"cell_type": "code", "metadata": {"tags": ["bootstrap"]}, "source": "pip"},
            {"cell_type": "code", "metadata": {}, "source": "y = 2"},
        ]
    }
    source = [json.dumps(nb)]
    _course_book().add_display_tags(_App(), "notebooks/00_x", source)
    sol, boot, plain = json.loads(source[0])["cells"]
    assert "hide-cell" in sol["metadata"]["tags"]
    assert sol["metadata"]["mystnb"]["code_prompt_show"] == "Solution"
    assert "hide-input" in boot["metadata"]["tags"] and "mystnb" not in boot["metadata"]
    assert plain["metadata"] == {"tags": []}
