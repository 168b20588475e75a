"""Sphinx glue for the course book (loaded by _config.yml as a local extension).

* Solution cells (tag ``solution``) are collapsed behind a toggle labelled "Solution"
  (myst-nb's ``hide-cell`` with a per-cell ``code_prompt_show``), and the Colab bootstrap cell's code is folded (``hide-input``): the notebooks keep their
  own tags, the book adds the display ones when it reads them.
* sphinx-thebe (which Jupyter Book always loads) is switched off: the book has no live
  code cells, and thebe's loader names a CDN on every page.
* Notebook kernels started by the build see ``COURSE_BOOK_BUILD=1``, which makes
  ``course_lib.viz`` emit plotly figures as HTML that uses the site's one copy of plotly.js.
"""

from __future__ import annotations

import json
import os

DISPLAY_TAGS = {"solution": "hide-cell", "bootstrap": "hide-input"}
#: The toggle's words on a collapsed cell (myst-nb's per-cell ``code_prompt_show``/``_hide``),
#: instead of myst-nb's generic "Show code cell content".
PROMPTS = {"solution": {"code_prompt_show": "Solution", "code_prompt_hide": "Hide the solution"}}


def add_display_tags(app, docname: str, source: list[str]) -> None:
    if not app.env.doc2path(docname).endswith(".ipynb"):
        return
    nb = json.loads(source[0])
    for cell in nb.get("cells", []):
        meta = cell.setdefault("metadata", {})
        tags = meta.setdefault("tags", [])
        for tag, display in DISPLAY_TAGS.items():
            if tag in tags and display not in tags:
                tags.append(display)
        for tag, prompts in PROMPTS.items():
            if tag in tags:
                meta.setdefault("mystnb", {}).update(prompts)
    source[0] = json.dumps(nb)


def drop_thebe(app) -> None:
    """Disconnect every event handler sphinx-thebe registered (it cannot be unloaded)."""
    for listeners in app.events.listeners.values():
        listeners[:] = [
            lst for lst in listeners if not getattr(lst.handler, "__module__", "").startswith("sphinx_thebe")
        ]


#: Theme options added to (never replacing) the ones Jupyter Book derives from _config.yml.
#: The empty navbar lists restore what sphinx-book-theme 1.3 means by its theme.conf:
#: no pydata header bar. pydata-sphinx-theme 0.17 fills ``navbar_persistent`` with a
#: search field unless the *user* options name it, so without these the page gets a stray
#: 64 px header holding a second search box, and that header's hidden hamburger is the
#: first ``.primary-toggle`` on the page, the one pydata's script wires up: the visible
#: sidebar buttons of the article header then do nothing on a phone.
THEME_OPTIONS = {
    "use_download_button": True,
    "use_fullscreen_button": False,
    "show_toc_level": 2,
    "navbar_start": [],
    "navbar_center": [],
    "navbar_end": [],
    "navbar_persistent": [],
}


def add_theme_options(app, config) -> None:
    """Merge :data:`THEME_OPTIONS` into ``html_theme_options``.

    Setting ``html_theme_options`` in _config.yml replaces the whole dict, which drops the
    repository URL and the launch (Colab) buttons Jupyter Book puts there.
    """
    config.html_theme_options = {**config.html_theme_options, **THEME_OPTIONS}


def setup(app):
    os.environ["COURSE_BOOK_BUILD"] = "1"
    app.connect("config-inited", add_theme_options)
    app.connect("builder-inited", drop_thebe)
    app.connect("source-read", add_display_tags)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
