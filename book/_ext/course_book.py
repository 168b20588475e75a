"""Sphinx glue for the course book (loaded by _config.yml as a local extension).

* Solution cells (tag ``solution``) are collapsed behind a toggle (myst-nb's ``hide-cell``),
  and the Colab bootstrap cell's code is folded (``hide-input``): the notebooks keep their
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


def add_display_tags(app, docname: str, source: list[str]) -> None:
    if not app.env.doc2path(docname).endswith(".ipynb"):
        return
    nb = json.loads(source[0])
    for cell in nb.get("cells", []):
        tags = cell.setdefault("metadata", {}).setdefault("tags", [])
        for tag, display in DISPLAY_TAGS.items():
            if tag in tags and display not in tags:
                tags.append(display)
    source[0] = json.dumps(nb)


def drop_thebe(app) -> None:
    """Disconnect every event handler sphinx-thebe registered (it cannot be unloaded)."""
    for listeners in app.events.listeners.values():
        listeners[:] = [
            lst for lst in listeners if not getattr(lst.handler, "__module__", "").startswith("sphinx_thebe")
        ]


#: Theme options added to (never replacing) the ones Jupyter Book derives from _config.yml
THEME_OPTIONS = {"use_download_button": True, "use_fullscreen_button": False, "show_toc_level": 2}


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
