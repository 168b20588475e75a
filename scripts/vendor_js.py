"""Put the JavaScript the book needs into book/_vendor/vendor/ (served as _static/vendor/), from pinned local sources.

    npm ci --prefix build/npm   (book/package.json + package-lock.json copied there)
    python scripts/vendor_js.py

Sources: require.js, @jupyter-widgets/html-manager (embed-amd.js and its fonts) and
MathJax 3 from the npm packages pinned in book/package-lock.json; plotly.min.js from the
installed plotly wheel (so the figures and the library match versions). Nothing is
committed: book/_vendor is git-ignored and rebuilt by `make course`.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NODE = ROOT / "build" / "npm" / "node_modules"
OUT = ROOT / "book" / "_vendor" / "vendor"  # served as _static/vendor/ (html_static_path)


def main() -> int:
    import plotly

    if not NODE.is_dir():
        print(f"{NODE} missing: run `npm ci --prefix build/npm` first (make does)", file=sys.stderr)
        return 1
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    shutil.copy2(NODE / "requirejs" / "require.js", OUT / "require.js")
    hm = OUT / "html-manager"
    hm.mkdir()
    for f in (NODE / "@jupyter-widgets" / "html-manager" / "dist").iterdir():
        if f.name == "embed-amd.js" or f.suffix in {".woff2", ".woff", ".ttf", ".eot", ".svg"}:
            shutil.copy2(f, hm / f.name)
    shutil.copytree(NODE / "mathjax" / "es5", OUT / "mathjax")
    shutil.copy2(Path(plotly.__file__).parent / "package_data" / "plotly.min.js", OUT / "plotly.min.js")
    size = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(
        f"vendored {sum(1 for p in OUT.rglob('*') if p.is_file())} files, {size / 1e6:.1f} MB, into {OUT.relative_to(ROOT)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
