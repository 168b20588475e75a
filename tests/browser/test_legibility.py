"""Every page of the built book read as a learner would, at 1280 px (laptop) and 390 px (phone).

Issue #17: a figure that is drawn is not yet a figure one can read. Each page is loaded
once per width (one browser, one tab per width) and checked for

* figures: tests/browser/legibility.js (the check scripts/figure_check.py runs on a
  notebook) on every plotly figure, and at 390 px on every step of its sliders (each step
  costs about a second; `make screenshots` checks them at both widths): no text leaves its
  figure or panel, no two texts overlap, no figure wider than its column; every failure
  names page, figure (and step) and texts;
* math: no raw ``$…$``, ``\\(…\\)`` or ``\\[…\\]`` in the rendered text outside code;
* tables: every HTML table shows all its rows and columns, or scrolls in its own box;
* the page itself: no horizontal scroll at 390 px; the phone's sidebar and contents
  buttons open the navigation and the page's contents; no stray top bar on a laptop.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlparse

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

ROOT = Path(__file__).resolve().parents[2]
from site_pages import PAGES, SLIDERS_JS, STEP_JS  # noqa: E402 (tests/browser is on sys.path)

LEGIBILITY_JS = (Path(__file__).parent / "legibility.js").read_text()
WIDTHS = (1280, 390)
TOLERANCE_PX = 2
CHAPTERS = [p for p in PAGES if p.startswith("notebooks/")]

# Text nodes of the rendered page outside code, with raw TeX delimiters (dollarmath's rule:
# "$" then a non-space, ..., a non-space then "$" not followed by a digit, so "$5 and $6"
# is money, not math).
RAW_MATH_JS = r"""() => {
  const skip = "pre, code, kbd, samp, script, style, noscript, textarea, mjx-container, mjx-assistive-mml, .highlight, .MathJax";
  const pats = [/\$\$[\s\S]+?\$\$/, /\$(?=\S)[^$\n]{1,120}?(?<=\S)\$(?!\d)/, /\\\([\s\S]{1,200}?\\\)/, /\\\[[\s\S]{1,400}?\\\]/];
  const root = document.querySelector("main, [role=main]") || document.body;
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
  const found = [];
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const el = n.parentElement;
    if (!el || el.closest(skip)) continue;
    const t = n.textContent;
    for (const re of pats) {
      const m = t.match(re);
      if (m) { found.push(m[0].slice(0, 80)); break; }
    }
  }
  return found;
}"""

# HTML tables (plotly tables are SVG: legibility.js checks those): a table wider or taller
# than a box that clips it (overflow hidden/clip) loses columns or rows; one wider than the
# article with nothing that scrolls in between widens the page.
TABLES_JS = r"""() => {
  const article = document.querySelector("article") || document.body;
  const aw = article.getBoundingClientRect().width;
  const out = [];
  [...document.querySelectorAll("article table")].forEach((t, i) => {
    if (t.closest(".plotly-graph-div")) return;
    const name = `table ${i + 1} ("${(t.querySelector("th, td, caption")?.textContent || "").trim().slice(0, 40)}")`;
    const tw = t.scrollWidth, th = t.scrollHeight;
    let scrollsX = false;
    for (let a = t.parentElement; a && a !== article.parentElement; a = a.parentElement) {
      const s = getComputedStyle(a);
      if (["auto", "scroll"].includes(s.overflowX) && a.clientWidth > 0) { scrollsX = true; }
      if (["hidden", "clip"].includes(s.overflowX) && !scrollsX && tw > a.clientWidth + 1)
        out.push(`${name}: ${tw} px wide, cut at ${a.clientWidth} px by <${a.tagName.toLowerCase()} class="${a.className}">`);
      if (["hidden", "clip"].includes(s.overflowY) && th > a.clientHeight + 1 && a.clientHeight > 0 && !["auto", "scroll"].includes(s.overflowY))
        out.push(`${name}: ${th} px tall, rows cut at ${a.clientHeight} px by <${a.tagName.toLowerCase()} class="${a.className}">`);
      if (scrollsX) break;
    }
    if (!scrollsX && t.getBoundingClientRect().width > aw + 1)
      out.push(`${name}: ${Math.round(t.getBoundingClientRect().width)} px wide in a ${Math.round(aw)} px article and cannot scroll`);
  });
  return out;
}"""

# What sticks out to the right of the window (deepest elements first), when the page scrolls sideways.
HSCROLL_JS = r"""() => {
  const de = document.documentElement;
  const extra = de.scrollWidth - de.clientWidth;
  if (extra <= 1) return null;
  const vw = de.clientWidth, culprits = [];
  for (const el of document.querySelectorAll("body *")) {
    const r = el.getBoundingClientRect();
    if (r.width === 0 || r.right <= vw + 1) continue;
    let inScroller = false;
    for (let a = el.parentElement; a; a = a.parentElement) {
      const s = getComputedStyle(a);
      if (a !== de && a !== document.body && ["auto", "scroll", "hidden", "clip"].includes(s.overflowX)) { inScroller = true; break; }
    }
    if (inScroller || [...el.children].some((c) => c.getBoundingClientRect().right > vw + 1)) continue;
    culprits.push(`<${el.tagName.toLowerCase()} class="${(el.getAttribute("class") || "").slice(0, 50)}"> right edge ${Math.round(r.right)} px`);
    if (culprits.length >= 3) break;
  }
  return { extra, culprits };
}"""


def _local_only(route):
    host = urlparse(route.request.url).hostname
    if route.request.url.startswith(("data:", "blob:")) or host in ("127.0.0.1", "localhost"):
        return route.continue_()
    return route.abort()


class _Reader:
    """Loads each (page, width) once, runs every check, keeps the results for the tests."""

    def __init__(self, browser, site_url):
        self.browser, self.site_url = browser, site_url
        self.tabs, self.results = {}, {}

    def tab(self, width):
        if width not in self.tabs:
            ctx = self.browser.new_context(viewport={"width": width, "height": 900})
            pg = ctx.new_page()
            pg.route("**/*", _local_only)
            pg.set_default_timeout(120_000)  # a busy 2-core machine parsing plotly.js and MathJax
            self.tabs[width] = (ctx, pg)
        return self.tabs[width][1]

    def read(self, page, width):
        key = (page, width)
        if key not in self.results:
            self.results[key] = self._read(page, width)
        return self.results[key]

    def _read(self, page, width):
        pg = self.tab(width)
        pg.goto(f"{self.site_url}/{page}", wait_until="load")
        try:
            pg.wait_for_load_state("networkidle", timeout=10_000)
        except PlaywrightTimeout:
            pass
        if pg.evaluate("() => !!document.querySelector('.math')"):
            pg.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise", timeout=30_000)
            pg.evaluate("() => MathJax.startup.promise")
        n_fig = pg.locator(".plotly-graph-div").count()
        if n_fig:
            pg.wait_for_function(
                "n => document.querySelectorAll('.plotly-graph-div .main-svg').length >= n", arg=n_fig, timeout=60_000
            )
            pg.wait_for_timeout(300)  # responsive figures settle their size after the first draw
        figures = []
        for i in range(n_fig):
            gd = pg.locator(".plotly-graph-div").nth(i)
            column = gd.evaluate("g => Math.round((g.closest('.cell_output') || g.parentElement).clientWidth)")
            res = gd.evaluate(LEGIBILITY_JS, {"tol": TOLERANCE_PX, "column": column})
            res["figure"] = i + 1
            res["title"] = gd.evaluate("g => (g.querySelector('.g-gtitle text')?.textContent || '').slice(0, 60)")
            res["share"] = gd.evaluate(
                "g => [...g.querySelectorAll('.modebar-btn')].map(b => b.getAttribute('data-title') || '')"
                ".filter(t => /share|cloud|chart studio|edit/i.test(t))"
            )
            figures.append(res)
            if width < 600:  # the tightest layout; every step at 1280 px too is `make screenshots`' job
                figures += self._steps(gd, i + 1, column)
        out = {
            "figures": figures,
            "raw_math": pg.evaluate(RAW_MATH_JS),
            "tables": pg.evaluate(TABLES_JS),
            "hscroll": pg.evaluate(HSCROLL_JS),
        }
        if width >= 1200:
            out["top_bar"] = pg.evaluate(
                "() => { const h = document.querySelector('header.bd-header');"
                " return h ? Math.round(h.getBoundingClientRect().height) : 0 }"
            )
            out["search_fields"] = pg.evaluate(
                "() => [...document.querySelectorAll('.search-button-field, .search-button__button')]"
                ".filter(b => b.offsetParent && b.getBoundingClientRect().width > 0).length"
            )
        if width < 600 and page.startswith("notebooks/"):
            out["nav"] = self._phone_nav(pg)
        return out

    @staticmethod
    def _steps(gd, figure, column):
        """Every other step of every slider applied, as a click on it would, and checked; the first restored.

        A static twin shows one setting at first: its other steps change titles, traces, tables
        and the current value, and a learner sees each of them.
        """
        out = []
        sliders = gd.evaluate(SLIDERS_JS)
        for si, slider in enumerate(sliders):
            for k, label in enumerate(slider["labels"]):
                if k == slider["active"]:
                    continue
                gd.evaluate(STEP_JS, [si, k])
                res = gd.evaluate(LEGIBILITY_JS, {"tol": TOLERANCE_PX, "column": column})
                out.append({**res, "figure": figure, "title": f"slider step {k + 1}: {label[:60]}", "share": []})
            gd.evaluate(STEP_JS, [si, slider["active"]])
        return out

    @staticmethod
    def _phone_nav(pg):
        """Click the visible sidebar and contents buttons; say what opened."""
        res = {}
        for side, toggle, dialog, links in (
            ("sidebar", ".primary-toggle", "#pst-primary-sidebar-modal", ".bd-sidebar-primary a, nav.bd-links a"),
            ("contents", ".secondary-toggle", "#pst-secondary-sidebar-modal", ".page-toc a, nav.bd-toc-nav a"),
        ):
            buttons = pg.locator(f"{toggle}:visible")
            if buttons.count() == 0:
                res[side] = f"no visible {toggle} button"
                continue
            buttons.first.click()
            pg.wait_for_timeout(400)
            n_links = pg.evaluate(
                """([dialog, links]) => {
                  const d = document.querySelector(dialog);
                  if (!d || !d.open) return -1;
                  return [...d.querySelectorAll(links)].filter(a => {
                    const r = a.getBoundingClientRect();
                    return r.width > 0 && r.right > 0 && r.left < window.innerWidth && r.bottom > 0 && r.top < window.innerHeight;
                  }).length;
                }""",
                [dialog, links],
            )
            res[side] = "ok" if n_links > 0 else ("did not open" if n_links < 0 else "opened with no visible links")
            pg.evaluate(f"() => {{ const d = document.querySelector('{dialog}'); if (d && d.open) d.close(); }}")
            pg.wait_for_timeout(200)
        return res

    def close(self):
        for ctx, _ in self.tabs.values():
            ctx.close()


@pytest.fixture(scope="module")
def reader(browser, site_url):
    r = _Reader(browser, site_url)
    yield r
    r.close()


def _figure_failures(page, width, figures):
    lines = []
    for f in figures:
        where = f"{page} at {width} px, figure {f['figure']}" + (f' ("{f["title"]}")' if f.get("title") else "")
        if f.get("error"):
            lines.append(f"{where}: {f['error']}")
        if f.get("overflow"):
            lines.append(f"{where}: {f['overflow']['width']} px wide in a {f['overflow']['column']} px column")
        if f.get("covered"):
            c = f["covered"]
            lines.append(f"{where}: {c['height']} px tall in a {c['box']} px box (what follows covers its bottom)")
        for c in f.get("clipped", []):
            lines.append(f'{where}: clipped {c["role"]} "{c["text"]}" {c["how"]}')
        for o in f.get("overlaps", []):
            lines.append(f"{where}: {o['a']} overlaps {o['b']} by {o['depth']} px")
    return lines


PAGE_WIDTHS = [pytest.param(p, w, id=f"{p}-{w}px") for p in PAGES for w in WIDTHS]


@pytest.mark.parametrize(("page", "width"), PAGE_WIDTHS)
def test_figures_are_legible(reader, page, width):
    lines = _figure_failures(page, width, reader.read(page, width)["figures"])
    assert not lines, f"{len(lines)} legibility failures:\n" + "\n".join(lines)


@pytest.mark.parametrize(("page", "width"), PAGE_WIDTHS)
def test_no_raw_math(reader, page, width):
    raw = reader.read(page, width)["raw_math"]
    assert not raw, f"{page} at {width} px shows TeX as text: {raw[:8]}"


@pytest.mark.parametrize(("page", "width"), PAGE_WIDTHS)
def test_tables_show_all_rows_or_scroll(reader, page, width):
    bad = reader.read(page, width)["tables"]
    assert not bad, f"{page} at {width} px: " + "; ".join(bad)


@pytest.mark.parametrize("page", PAGES)
def test_no_horizontal_scroll_on_a_phone(reader, page):
    hs = reader.read(page, 390)["hscroll"]
    assert hs is None, f"{page} at 390 px scrolls sideways by {hs['extra']} px: {hs['culprits']}"


@pytest.mark.parametrize("page", CHAPTERS)
def test_phone_navigation_buttons_open(reader, page):
    nav = reader.read(page, 390)["nav"]
    assert nav == {"sidebar": "ok", "contents": "ok"}, f"{page} at 390 px: {nav}"


@pytest.mark.parametrize("page", PAGES)
def test_no_stray_top_bar_on_a_laptop(reader, page):
    r = reader.read(page, 1280)
    assert r["top_bar"] == 0, f"{page}: a {r['top_bar']} px header bar above the article"
    assert r["search_fields"] <= 1, f"{page}: {r['search_fields']} search boxes"


@pytest.mark.parametrize("page", PAGES)
def test_figure_toolbars_offer_no_cloud_buttons(reader, page):
    bad = [(f["figure"], f["share"]) for f in reader.read(page, 1280)["figures"] if f["share"]]
    assert not bad, f"{page}: toolbar buttons that post to a cloud service (figure, buttons): {bad}"


def test_search_snippets_show_no_tex_delimiters(browser, site_url):
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = ctx.new_page()
    pg.route("**/*", _local_only)
    pg.set_default_timeout(120_000)
    pg.goto(f"{site_url}/search.html?q=compute")
    # the wrapper itself: TeX delimiters out, common commands as Unicode
    plain = pg.evaluate(r"() => window.courseSearchPlain('cost \\(C \\approx 6ND\\) and \\[x_t\\]')")
    assert plain == "cost C ≈ 6ND and x_t", plain
    pg.wait_for_function("() => document.querySelectorAll('#search-results li').length > 0", timeout=120_000)
    pg.wait_for_function(
        "() => [...document.querySelectorAll('#search-results li')].some(li => li.querySelector('p.context'))",
        timeout=60_000,
    )
    snippets = pg.evaluate("() => [...document.querySelectorAll('#search-results p.context')].map(p => p.textContent)")
    ctx.close()
    raw = [s for s in snippets if "\\(" in s or "\\)" in s or "\\[" in s]
    assert snippets and not raw, json.dumps(raw[:3], ensure_ascii=False)
