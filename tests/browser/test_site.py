"""Every page of the built book, opened in chromium with the network off.

For each page: no console errors, no request to a non-local host, every plotly figure has
rendered its SVG, math is typeset by the site's own MathJax, every image has alt text.
A screenshot per page goes to build/screenshots/.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlparse

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

ROOT = Path(__file__).resolve().parents[2]
from site_pages import PAGES, SITE  # noqa: E402 (tests/browser is on sys.path)

CDN = re.compile(
    r"""(?:src|href)=["'](?:https?:)?//(?:cdn|unpkg|cdnjs|[\w.-]*jsdelivr|[\w.-]*googleapis|[\w.-]*plot\.ly)[^"']*"""
)


def test_site_has_every_chapter():
    chapters = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    built = {p.split("/")[-1].removesuffix(".html") for p in PAGES}
    assert set(chapters) <= built, f"missing pages: {set(chapters) - built}"


@pytest.mark.parametrize("page", PAGES)
def test_no_page_references_a_cdn(page):
    html = (SITE / page).read_text()
    assert not CDN.findall(html), CDN.findall(html)[:3]


@pytest.mark.parametrize("page", PAGES)
def test_page_renders_offline(page, browser, site_url, screenshots):
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = ctx.new_page()
    errors, foreign = [], []
    pg.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    pg.on("pageerror", lambda e: errors.append(str(e)))

    def route(r):
        host = urlparse(r.request.url).hostname
        if r.request.url.startswith(("data:", "blob:")) or host in ("127.0.0.1", "localhost"):
            return r.continue_()
        foreign.append(r.request.url)
        return r.abort()

    pg.route("**/*", route)
    pg.set_default_timeout(120_000)  # a 2-core CI machine parsing plotly.js and MathJax
    pg.goto(f"{site_url}/{page}", wait_until="load")
    try:  # late requests (fonts, widget state) usually settle here; some pages never report idle
        pg.wait_for_load_state("networkidle", timeout=10_000)
    except PlaywrightTimeout:
        pass  # what matters is asserted below: math typeset, figures drawn, no errors, nothing foreign
    # math: the site's MathJax typesets every $...$ and $$...$$ into mjx-container elements
    has_math = pg.evaluate("() => !!document.querySelector('.math, span.math, div.math')")
    if has_math:
        pg.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise", timeout=20000)
        pg.evaluate("() => MathJax.startup.promise")
        n_math = pg.evaluate("() => document.querySelectorAll('.math').length")
        n_typeset = pg.evaluate("() => document.querySelectorAll('.math mjx-container').length")
        assert n_typeset == n_math, f"{n_typeset} of {n_math} formulas typeset"
    # plotly: every figure div has drawn its SVG
    n_fig = pg.evaluate("() => document.querySelectorAll('.plotly-graph-div').length")
    if n_fig:
        pg.wait_for_function(
            "n => document.querySelectorAll('.plotly-graph-div .main-svg').length >= n", arg=n_fig, timeout=30000
        )
    # images: alt text everywhere
    no_alt = pg.evaluate(
        "() => [...document.images].filter(i => !(i.getAttribute('alt') || '').trim()).map(i => i.src)"
    )
    pg.screenshot(path=str(screenshots / (page.replace("/", "__").removesuffix(".html") + ".png")), full_page=False)
    ctx.close()
    assert not foreign, f"requests left localhost: {foreign[:5]}"
    assert not errors, f"console errors: {errors[:5]}"
    assert not no_alt, f"images without alt text: {no_alt[:5]}"


def test_chapter_pages_have_download_and_colab_buttons(browser, site_url):
    ctx = browser.new_context()
    pg = ctx.new_page()
    pg.set_default_timeout(120_000)
    pg.route("**/*", lambda r: r.continue_() if urlparse(r.request.url).hostname in ("127.0.0.1", None) else r.abort())
    for page in [p for p in PAGES if p.startswith("notebooks/")]:
        pg.goto(f"{site_url}/{page}")
        html = pg.content()
        assert re.search(r'href="[^"]*_sources/notebooks/[^"]+\.ipynb"', html), f"{page}: no .ipynb download"
        assert re.search(
            r"https://colab\.research\.google\.com/github/[\w.-]+/[\w.-]+/blob/main/notebooks/[\w-]+\.ipynb", html
        ), f"{page}: no Colab link"
    ctx.close()


def test_solution_cells_are_collapsed(browser, site_url):
    ctx = browser.new_context()
    pg = ctx.new_page()
    pg.set_default_timeout(120_000)
    pg.route("**/*", lambda r: r.continue_() if urlparse(r.request.url).hostname in ("127.0.0.1", None) else r.abort())
    seen = 0
    for page in [p for p in PAGES if p.startswith("notebooks/")]:
        pg.goto(f"{site_url}/{page}")
        sol = pg.locator("div.cell.tag_solution")
        for i in range(sol.count()):
            seen += 1
            details = sol.nth(i).locator("details")
            assert details.count() >= 1 and not details.first.evaluate("d => d.open"), f"{page}: solution not collapsed"
            label = details.first.locator("summary").inner_text().strip()
            assert label == "Solution", f"{page}: a solution's toggle reads {label!r}, not 'Solution'"
    ctx.close()
    assert seen > 0
