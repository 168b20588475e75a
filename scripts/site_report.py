"""Summarise a built book: pages, size, what is vendored, and the heaviest page (printed after `make book`).

A page's weight is its HTML plus every local script and stylesheet it names (``src=``,
``<link rel="stylesheet" href=``), each counted once: what a first visit downloads before
the fonts and the files MathJax fetches itself.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from urllib.parse import urlsplit

_ASSET = re.compile(
    r"""<script[^>]*\ssrc=["']([^"']+)["']|<link[^>]*rel=["']stylesheet["'][^>]*href=["']([^"']+)["']"""
)


def page_weight(page: Path, root: Path) -> int:
    """Bytes a first visit to ``page`` downloads: the HTML and the local scripts and stylesheets it names."""
    total = page.stat().st_size
    seen = set()
    for m in _ASSET.finditer(page.read_text(errors="replace")):
        url = m.group(1) or m.group(2)
        parts = urlsplit(url)
        if parts.scheme or parts.netloc:
            continue
        f = (page.parent / parts.path).resolve()
        if f in seen or not f.is_file() or root.resolve() not in f.parents:
            continue
        seen.add(f)
        total += f.stat().st_size
    return total


def main(html_dir: str = "book/_build/html") -> int:
    root = Path(html_dir)
    if not (root / "index.html").is_file():
        print(f"no site at {root}", file=sys.stderr)
        return 1
    pages = sorted(
        p for p in root.rglob("*.html") if "_static" not in p.parts and p.name not in {"search.html", "genindex.html"}
    )
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    vendor_dir = root / "_static" / "vendor"
    vendor = sum(p.stat().st_size for p in vendor_dir.rglob("*") if p.is_file())
    mathjax = sum(p.stat().st_size for p in (vendor_dir / "mathjax").rglob("*") if p.is_file())
    biggest = max(pages, key=lambda p: p.stat().st_size)
    weights = {p: page_weight(p, root) for p in pages}
    heaviest = max(weights, key=weights.get)
    print(
        f"site: {len(pages)} pages, {total / 1e6:.1f} MB in all ({vendor / 1e6:.1f} MB vendored under _static/vendor: "
        f"plotly.js, MathJax {mathjax / 1e6:.1f} MB, widget manager, require.js, theme icons); "
        f"largest page {biggest.relative_to(root)} {biggest.stat().st_size / 1e6:.2f} MB of HTML; "
        f"heaviest first visit {heaviest.relative_to(root)} {weights[heaviest] / 1e6:.2f} MB "
        f"(HTML + the scripts and stylesheets it loads)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
