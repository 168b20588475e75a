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

# A figure's sliders: the step shown first and each step's label (static twins, issue #17); evaluate
# both on the figure's .plotly-graph-div, as tests/browser/test_legibility.py and
# scripts/figure_check.py do.
SLIDERS_JS = """g => (g.layout.sliders || []).map((s) => ({
  active: s.active || 0, labels: (s.steps || []).map((st) => String(st.label || st.value || "")) }))"""

# One step applied as a click on it does: its method and arguments, then the slider moved.
STEP_JS = """async (g, [si, k]) => {
  const st = g.layout.sliders[si].steps[k];
  if (st.method && st.method !== "skip" && Plotly[st.method]) await Plotly[st.method](g, ...(st.args || []));
  await Plotly.relayout(g, { [`sliders[${si}].active`]: k });
  await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
}"""
