"""Render every plotly figure of an executed notebook in chromium and check it is legible.

    .venv/bin/python scripts/figure_check.py build/executed/03_sparse_attention.ipynb \
        [--width 1280 --width 390] [--shots DIR] [--steps] [--json FILE] [--no-tidy] [--exit-zero]

Each figure is taken from the notebook's outputs (the book build's ``text/html`` with a
``Plotly.newPlot(id, data, layout, config)`` call, or ``application/vnd.plotly.v1+json``),
passed through ``course_lib.viz.tidy`` when that exists (the layout every course renderer
applies), and drawn in headless Debian chromium with the plotly.js the site ships (the
installed plotly wheel's copy, which scripts/vendor_js.py vendors): no network.

Widths are browser window widths; a figure is drawn in the column the book gives it at that
width (the article column of the built site: :data:`COLUMN`). The check itself is
tests/browser/legibility.js, the same code the book's browser tests run on every page: it
reports texts that leave the figure or their panel (clipped), pairs of texts that overlap,
and a figure wider than its column. ``--steps`` also applies and checks every step of
every slider (a static twin's titles change with the step). Exit status 1 when any figure
fails, 2 on bad input.

The book's article column is 688 px wide in a 1280 px window and 358 px on a 390 px phone
(:data:`COLUMN`); `make screenshots` runs this on every chapter with ``--shots``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LEGIBILITY_JS = ROOT / "tests" / "browser" / "legibility.js"
sys.path.insert(0, str(ROOT / "tests" / "browser"))
from site_pages import CHROMIUM, CHROMIUM_ARGS, SLIDERS_JS, STEP_JS  # noqa: E402 (one launch recipe for every browser check)

#: Width of a cell output in the book (px) at a browser window width, measured on the built
#: site (sphinx-book-theme 1.3 with the course CSS, chromium): the width a figure gets.
COLUMN = {1280: 688, 390: 358}
#: Window widths checked by default: a laptop and a phone.
WIDTHS = (1280, 390)
TOLERANCE_PX = 2


def column_width(window: int) -> int:
    """The article column at ``window`` px: measured values, else the phone rule (16 px each side)."""
    if window in COLUMN:
        return COLUMN[window]
    return max(window - 32, 100)


def _plotly_js() -> Path:
    import plotly

    return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


_NEWPLOT = re.compile(r"Plotly\.newPlot\(\s*")
_HEIGHT = re.compile(r"height:\s*(\d+(?:\.\d+)?)px")
_WIDTH = re.compile(r"width:\s*(\d+(?:\.\d+)?)px")


def _args_after(text: str, start: int, n: int) -> list:
    """Decode ``n`` comma-separated JSON values of a JavaScript call, starting at ``start``."""
    dec = json.JSONDecoder()
    out, i = [], start
    for _ in range(n):
        while text[i] in " \n\t,":
            i += 1
        if text[i] == ")":
            break
        value, i = dec.raw_decode(text, i)
        out.append(value)
    return out


def figures_in(nb: dict) -> list[dict]:
    """Every plotly figure in a notebook's outputs, in order.

    Returns dicts with ``cell`` (index), ``heading`` (the nearest markdown heading above),
    ``fig`` ({data, layout, frames?}), ``config`` and the container's ``height``/``width``
    (px; width None means the full column).
    """
    found, heading = [], ""
    for ci, cell in enumerate(nb.get("cells", [])):
        if cell.get("cell_type") == "markdown":
            for line in "".join(cell.get("source", "")).splitlines():
                if line.startswith("#"):
                    heading = line.lstrip("#").strip()
            continue
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if "application/vnd.plotly.v1+json" in data:
                fig = data["application/vnd.plotly.v1+json"]
                if isinstance(fig, str):
                    fig = json.loads(fig)
                lay = fig.get("layout") or {}
                found.append(
                    {
                        "cell": ci,
                        "heading": heading,
                        "fig": {k: fig[k] for k in ("data", "layout", "frames") if k in fig},
                        "config": fig.get("config") or {"displaylogo": False, "responsive": True},
                        "height": lay.get("height") or 450,
                        "width": lay.get("width"),
                    }
                )
                continue
            html = data.get("text/html")
            if not html:
                continue
            html = "".join(html) if isinstance(html, list) else html
            for m in _NEWPLOT.finditer(html):
                args = _args_after(html, m.end(), 4)
                if len(args) < 3:
                    continue
                head = html[: m.start()]
                outer = head[head.rfind("<div style=") :] if "<div style=" in head else ""
                h, w = _HEIGHT.search(outer), _WIDTH.search(outer)
                lay = args[2] or {}
                fig = {"data": args[1], "layout": lay}
                frames = re.search(r"Plotly\.addFrames\(\s*", html[m.end() :])
                if frames:
                    fr = _args_after(html, m.end() + frames.end(), 2)
                    if len(fr) == 2:
                        fig["frames"] = fr[1]
                found.append(
                    {
                        "cell": ci,
                        "heading": heading,
                        "fig": fig,
                        "config": args[3] if len(args) > 3 else {},
                        "height": float(h.group(1)) if h else lay.get("height") or 450,
                        "width": float(w.group(1)) if w else lay.get("width"),
                    }
                )
    return found


def tidied(fig: dict, column: int | None = None) -> dict:
    """The figure as the course renderer lays it out for a ``column`` px wide (else as stored).

    ``course_lib.viz.tidy`` when the library has it. Where it also has ``NARROW_WIDTH`` and
    ``PHONE_WIDTH``, a column narrower than ``NARROW_WIDTH`` gets the phone layout, as the
    book's figures switch to it in a narrow column.
    """
    try:
        from course_lib import viz
    except ImportError:
        return fig
    tidy = getattr(viz, "tidy", None)
    if tidy is None:
        return fig
    from plotly.io.json import to_json_plotly

    narrow, phone = getattr(viz, "NARROW_WIDTH", None), getattr(viz, "PHONE_WIDTH", None)
    out = None
    if column and narrow and phone and column < narrow:
        try:
            out = tidy(fig, width=phone)
        except TypeError:  # a tidy without the width argument
            out = None
    if out is None:
        out = tidy(fig)
    if not isinstance(out, dict):
        out = out.to_dict()
    return json.loads(to_json_plotly(out))


def _table_restyle(wide: dict, phone: dict) -> list | None:
    """[update, indices] switching tables to their phone fit, as the book does (None: nothing to switch)."""
    try:
        from course_lib import viz
    except ImportError:
        return None
    restyle = getattr(viz, "table_restyle", None)
    if restyle is None:
        return None
    update, _, idx = restyle(wide, phone)
    return [update, idx] if idx else None


_PAGE = """<!doctype html><html><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{margin:0;font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif}
#column{margin:0 auto}</style></head><body><div id="column"></div></body></html>"""

_DRAW = """async ([fig, config, height, width, column, narrow, narrowHeight, tables]) => {
  const col = document.getElementById("column");
  if (window.__gd) { Plotly.purge(window.__gd); }
  col.style.width = column + "px";
  col.innerHTML = "";
  const outer = document.createElement("div");
  outer.style.height = height + "px";
  outer.style.width = width ? width + "px" : "100%";
  const gd = document.createElement("div");
  gd.className = "plotly-graph-div";
  gd.style.height = "100%"; gd.style.width = "100%";
  outer.appendChild(gd); col.appendChild(outer);
  window.__gd = gd;
  await Plotly.newPlot(gd, fig.data, fig.layout || {}, config || {});
  if (fig.frames) await Plotly.addFrames(gd, fig.frames);
  if (tables) await Plotly.restyle(gd, tables[0], tables[1]);  // the phone's tables, as _narrow_script
  if (narrow) {  // what the book's figures do in a narrow column (course_lib.viz._narrow_script)
    gd.style.height = narrowHeight + "px";
    await Plotly.relayout(gd, narrow);
  }
  await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
  return true;
}"""


def check_notebook(
    page, path: Path, widths, shots: Path | None, legibility_js: str, tidy: bool = True, steps: bool = False
) -> list[dict]:
    """Draw and check every figure of one executed notebook at each width; one result per (figure, width).

    With ``steps``, every other step of every slider is applied too (as a click on it would)
    and checked, one more result each, carrying the step's label in ``step``.
    """
    nb = json.loads(path.read_text())
    results = []
    figs = figures_in(nb)
    for idx, f in enumerate(figs, 1):
        for w in widths:
            col = column_width(w)
            # as the book draws it: the wide layout first, then in a narrow column a relayout
            # to the keys of the phone layout that differ
            fig = tidied(f["fig"]) if tidy else f["fig"]
            lw = fig.get("layout") or {}
            height = lw.get("height") or f["height"]
            narrow, narrow_height, tables = None, height, None
            if tidy:
                phone = tidied(f["fig"], col)
                ln = phone.get("layout") or {}
                diff = {k: ln.get(k) for k in set(lw) | set(ln) if k != "template" and lw.get(k) != ln.get(k)}
                if diff:
                    narrow, narrow_height = diff, ln.get("height") or height
                tables = _table_restyle(fig, phone)
            page.set_viewport_size({"width": w, "height": 900})
            try:
                page.evaluate(_DRAW, [fig, f["config"], height, f["width"], col, narrow, narrow_height, tables])
                res = page.locator("#column .plotly-graph-div").evaluate(
                    legibility_js, {"tol": TOLERANCE_PX, "column": col}
                )
            except Exception as e:  # a figure plotly.js cannot draw is a failure, not a crash
                res = {"error": str(e).splitlines()[0], "clipped": [], "overlaps": [], "overflow": None, "texts": 0}
            if shots is not None:
                shots.mkdir(parents=True, exist_ok=True)
                page.locator("#column").screenshot(path=str(shots / f"{path.stem}__fig{idx:02d}__{w}px.png"))
            base = {"notebook": path.name, "figure": idx, "of": len(figs), "cell": f["cell"], "heading": f["heading"]}
            results.append({**base, "width": w, "step": None, **res})
            if not steps or res.get("error"):
                continue
            for si, slider in enumerate(page.locator("#column .plotly-graph-div").evaluate(SLIDERS_JS)):
                for k, label in enumerate(slider["labels"]):
                    if k == slider["active"]:
                        continue
                    try:
                        page.locator("#column .plotly-graph-div").evaluate(STEP_JS, [si, k])
                        res = page.locator("#column .plotly-graph-div").evaluate(
                            legibility_js, {"tol": TOLERANCE_PX, "column": col}
                        )
                    except Exception as e:
                        res = {"error": str(e).splitlines()[0], "clipped": [], "overlaps": [], "overflow": None}
                        res["texts"] = 0
                    results.append({**base, "width": w, "step": f"slider {si + 1} step {k + 1}: {label}", **res})
    return results


def failed(r: dict) -> bool:
    return bool(r.get("error") or r["clipped"] or r["overlaps"] or r.get("overflow"))


def report(r: dict) -> str:
    """A readable block for one (figure, width) result."""
    where = f"{r['notebook']} figure {r['figure']}/{r['of']} (cell {r['cell']}"
    where += f', under "{r["heading"]}")' if r["heading"] else ")"
    at = f" at {r['width']} px" + (f", {r['step']}" if r.get("step") else "")
    lines = [f"{where}{at}: " + ("FAIL" if failed(r) else "ok") + f" ({r['texts']} texts)"]
    if r.get("error"):
        lines.append(f"  error: {r['error']}")
    if r.get("overflow"):
        lines.append(f"  overflow: figure {r['overflow']['width']} px wide in a {r['overflow']['column']} px column")
    for c in r["clipped"]:
        lines.append(f'  clipped: {c["role"]} "{c["text"]}" {c["how"]}')
    for o in r["overlaps"]:
        lines.append(f"  overlap: {o['a']} and {o['b']} ({o['depth']} px)")
    return "\n".join(lines)


def summary(results: list[dict]) -> str:
    """Counts per notebook and width: figures failing, clipped texts, overlapping pairs."""
    rows, failing = {}, set()
    for r in results:
        k = (r["notebook"], r["width"])
        s = rows.setdefault(k, {"figures": 0, "failing": 0, "clipped": 0, "overlaps": 0, "overflow": 0})
        if r.get("step") is None:
            s["figures"] += 1
        if failed(r) and (k, r["figure"]) not in failing:  # a figure fails once, whichever step
            failing.add((k, r["figure"]))
            s["failing"] += 1
        s["clipped"] += len(r["clipped"])
        s["overlaps"] += len(r["overlaps"])
        s["overflow"] += bool(r.get("overflow"))
    out = []
    for (nb, w), s in sorted(rows.items()):
        out.append(
            f"{nb} @ {w} px: {s['failing']}/{s['figures']} figures fail; "
            f"{s['clipped']} clipped texts, {s['overlaps']} overlapping pairs, {s['overflow']} too wide"
        )
    return "\n".join(out)


def launch(p):
    """Debian's chromium through playwright (never a downloaded browser)."""
    if not CHROMIUM.is_file():
        raise SystemExit(f"{CHROMIUM} missing: `make browser-deps` installs Debian's chromium")
    return p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("notebooks", nargs="+", type=Path, help="executed notebooks (build/executed/NN_x.ipynb)")
    ap.add_argument("--width", type=int, action="append", help=f"window width in px (default {WIDTHS})")
    ap.add_argument("--shots", type=Path, help="save a PNG per figure and width into this folder")
    ap.add_argument("--json", type=Path, help="also write every result as JSON here")
    ap.add_argument("--no-tidy", action="store_true", help="draw the figures as stored, without viz.tidy")
    ap.add_argument("--steps", action="store_true", help="also check every step of every slider")
    ap.add_argument("--exit-zero", action="store_true", help="report failures but exit 0 (make screenshots)")
    a = ap.parse_args(argv)
    widths = a.width or list(WIDTHS)
    for w in widths:
        if not 200 <= w <= 4000:
            ap.error(f"--width must be between 200 and 4000 px, got {w}")
    for nb in a.notebooks:
        if not nb.is_file() or nb.suffix != ".ipynb":
            ap.error(f"notebooks: {nb} is not an .ipynb file")

    from playwright.sync_api import sync_playwright

    js = LEGIBILITY_JS.read_text()
    t0 = time.perf_counter()
    results = []
    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": widths[0], "height": 900})
        page.route("**/*", lambda r: r.abort())  # nothing leaves the machine
        page.set_content(_PAGE)
        page.add_script_tag(path=str(_plotly_js()))
        for nb in a.notebooks:
            results += check_notebook(page, nb, widths, a.shots, js, tidy=not a.no_tidy, steps=a.steps)
        browser.close()
    for r in results:
        if failed(r):
            print(report(r), end="\n\n")
    print(summary(results))
    n_fail = sum(failed(r) for r in results)
    what = "figure renderings (figure × width × slider step)" if a.steps else "figure renderings (figure × width)"
    print(f"{n_fail} of {len(results)} {what} fail ({time.perf_counter() - t0:.0f} s)")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(results, indent=1))
    return 1 if n_fail and not a.exit_zero else 0


if __name__ == "__main__":
    sys.exit(main())
