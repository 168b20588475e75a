"""Summarise a built book: pages, size, and what is vendored (printed after `make book`)."""

from __future__ import annotations

import sys
from pathlib import Path


def main(html_dir: str = "book/_build/html") -> int:
    root = Path(html_dir)
    if not (root / "index.html").is_file():
        print(f"no site at {root}", file=sys.stderr)
        return 1
    pages = sorted(
        p for p in root.rglob("*.html") if "_static" not in p.parts and p.name not in {"search.html", "genindex.html"}
    )
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    vendor = sum(p.stat().st_size for p in (root / "_static" / "vendor").rglob("*") if p.is_file())
    biggest = max(pages, key=lambda p: p.stat().st_size)
    print(
        f"site: {len(pages)} pages, {total / 1e6:.1f} MB in all ({vendor / 1e6:.1f} MB of vendored JS: plotly.js, MathJax, "
        f"widget manager, require.js); largest page {biggest.relative_to(root)} {biggest.stat().st_size / 1e6:.2f} MB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
