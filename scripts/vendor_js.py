"""Put the JavaScript the book needs into book/_vendor/vendor/ (served as _static/vendor/), from pinned local sources.

    npm ci --prefix build/npm   (book/package.json + package-lock.json copied there)
    python scripts/vendor_js.py

Sources: require.js, @jupyter-widgets/html-manager (embed-amd.js and its fonts) and
MathJax 3 from the npm packages pinned in book/package-lock.json; plotly.min.js from the
installed plotly wheel (so the figures and the library match versions). Nothing is
committed: book/_vendor is git-ignored and rebuilt by `make course`.

MathJax: only the one combined bundle the pages load (:data:`MATHJAX_BUNDLE`, the
``mathjax_path`` of book/_config.yml) and what that bundle fetches itself (:data:`MATHJAX_PARTS`):
its CHTML fonts, the TeX extensions its autoloader pulls in for a command like ``\\color``,
and the context menu's accessibility components with the English speech rules. The npm
package's other bundles (SVG output, MathML-only, the "full" builds, node) are 24 MB the
site never requests.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NODE = ROOT / "build" / "npm" / "node_modules"
OUT = ROOT / "book" / "_vendor" / "vendor"  # served as _static/vendor/ (html_static_path)
#: The MathJax combined component the site loads (book/_config.yml ``mathjax_path``).
MATHJAX_BUNDLE = "tex-mml-chtml.js"
#: Files and folders (relative to mathjax/es5) the bundle may request after it starts.
MATHJAX_PARTS = (
    "output/chtml/fonts/woff-v2",  # the fonts its CHTML output uses
    "input/tex/extensions",  # the TeX packages [tex]/autoload fetches on first use
    "ui",  # the context menu (lazy parts)
    "a11y",  # the menu's accessibility options: explorer, speech, assistive MathML
    "sre/mathmaps/base.json",  # the speech rules those options load, English only
    "sre/mathmaps/en.json",
)


def copy_mathjax(src: Path, dst: Path) -> None:
    """Copy :data:`MATHJAX_BUNDLE` and :data:`MATHJAX_PARTS` from the npm package's es5 folder."""
    dst.mkdir(parents=True)
    shutil.copy2(src / MATHJAX_BUNDLE, dst / MATHJAX_BUNDLE)
    for part in MATHJAX_PARTS:
        (dst / part).parent.mkdir(parents=True, exist_ok=True)
        if (src / part).is_dir():
            shutil.copytree(src / part, dst / part)
        else:
            shutil.copy2(src / part, dst / part)


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
        # its Font Awesome faces: woff2 only, the format every browser the course supports
        # picks first (the .eot/.svg/.ttf/.woff fallbacks are 2.7 MB never requested)
        if f.name == "embed-amd.js" or f.suffix == ".woff2":
            shutil.copy2(f, hm / f.name)
    copy_mathjax(NODE / "mathjax" / "es5", OUT / "mathjax")
    shutil.copy2(Path(plotly.__file__).parent / "package_data" / "plotly.min.js", OUT / "plotly.min.js")
    size = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(
        f"vendored {sum(1 for p in OUT.rglob('*') if p.is_file())} files, {size / 1e6:.1f} MB, into {OUT.relative_to(ROOT)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
