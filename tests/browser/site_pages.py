"""What the browser checks share: the built site, its pages, and how Debian's chromium is launched.

Imported by conftest.py, the browser tests and scripts/figure_check.py, so the launch
arguments and the page list are written once.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SITE = Path(os.environ.get("COURSE_SITE") or ROOT / "book" / "_build" / "html")
CHROMIUM = Path("/usr/bin/chromium")
#: Headless, and none of chromium's own network services (the pages must work offline).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: Every content page of the built site (not search or the index), relative to SITE.
PAGES = (
    sorted(
        str(p.relative_to(SITE))
        for p in SITE.rglob("*.html")
        if "_static" not in p.parts and p.name not in {"search.html", "genindex.html"}
    )
    if SITE.is_dir()
    else []
)
