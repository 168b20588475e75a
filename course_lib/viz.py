"""One look for every figure, live widgets with static twins, tables, and ``show_source``.

Design rule (course design §2.5): every explainer is a **pure function** of its settings
that returns a plotly figure. Two thin layers sit on top of it:

* :func:`interactive` wraps it in ipywidgets controls that recompute live (needs a kernel);
* :func:`static_twin` precomputes it over a grid of settings into one figure with a plotly
  slider, which keeps working in the static book where no kernel runs.

Tests call the pure function. The palette is Okabe & Ito's, safe for colour-blind readers.
"""

from __future__ import annotations

import base64
import copy
import html
import inspect
import itertools
import math
import os
import re
from collections.abc import Callable
from pathlib import Path

from course_lib.checks import check_callable, check_type

#: Okabe–Ito colour-blind-safe palette (Okabe & Ito 2008, "Color Universal Design").
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
#: Sequential colour scale for heatmaps (perceptually uniform, colour-blind safe).
HEATMAP_SCALE = "Cividis"
FONT = "system-ui, -apple-system, Segoe UI, Roboto, Helvetica, Arial, sans-serif"

_STYLED = False


def plotly_template():
    """The course's plotly template: white background, palette, readable fonts."""
    import plotly.graph_objects as go

    return go.layout.Template(
        layout=dict(
            colorway=PALETTE,
            font=dict(family=FONT, size=13),
            paper_bgcolor="white",
            plot_bgcolor="white",
            xaxis=dict(showgrid=True, gridcolor="#e5e5e5", zeroline=False, linecolor="#444", ticks="outside"),
            yaxis=dict(showgrid=True, gridcolor="#e5e5e5", zeroline=False, linecolor="#444", ticks="outside"),
            margin=dict(l=60, r=20, t=50, b=50),
            legend=dict(bgcolor="rgba(255,255,255,0.8)"),
            colorscale=dict(sequential=HEATMAP_SCALE),
        )
    )


# --------------------------------------------------------------------------- figure style

#: The plotly.js config every course renderer passes: no plotly logo, and no cloud
#: "Share chart…" button (plotly.js 4 shows it unless ``showSendToCloud`` is false; offline it
#: does nothing, online it would post the figure to a cloud service). plotly.js 4 has no
#: "edit in Chart Studio" or "link" buttons any more, and plotly.py warns about config keys it
#: does not know, so those keys are not passed.
PLOTLY_CONFIG = {
    "displaylogo": False,
    "showSendToCloud": False,
    "modeBarButtonsToRemove": ["sendChartToCloud", "sendDataToCloud"],
    "responsive": True,
}

#: Width (px) a figure is laid out for when it does not set one: the book's content column.
DEFAULT_WIDTH = 760
DEFAULT_HEIGHT = 450
#: Below this width (px, a phone) every legend goes under the plot; the book lays a figure
#: out again for :data:`PHONE_WIDTH` when its column is narrower than this.
NARROW_WIDTH = 560
PHONE_WIDTH = 358
#: Average glyph width in ems of a sans-serif font, on the generous side, so an estimated
#: line is never longer than the drawn one (13–16 px system-ui averages about 0.5 em).
CHAR_EM = 0.58
#: Fewest pixels tidy leaves to the plot area when it grows the margins of a figure.
MIN_PLOT_PX = 280
#: Side margins (px) of a figure that holds only tables.
TABLE_SIDE_PX = 8
#: plotly.js's own layout defaults (used when neither the figure nor its template sets a value).
_PLOTLY_DEFAULTS = {"font.size": 12, "margin": {"l": 80, "r": 80, "t": 100, "b": 80}}
#: Trace types that draw on x/y axes (the others have no cartesian axes).
_NOT_CARTESIAN = {
    "pie", "table", "sunburst", "treemap", "icicle", "sankey", "parcoords", "parcats", "indicator",
    "funnelarea", "scatterpolar", "scatterpolargl", "barpolar", "scattergeo", "choropleth",
    "scatter3d", "surface", "mesh3d", "cone", "streamtube", "volume", "isosurface", "scattermap",
    "scattermapbox", "choroplethmap", "choroplethmapbox", "densitymap", "densitymapbox",
    "scatterternary", "scattersmith",
}  # fmt: skip
#: Trace types that get no legend entry unless ``showlegend=True``.
_NO_LEGEND = {
    "heatmap", "contour", "histogram2d", "histogram2dcontour", "image", "table", "surface",
    "parcoords", "parcats", "sankey", "indicator", "choropleth", "choroplethmap", "choroplethmapbox",
    "densitymap", "densitymapbox", "splom", "cone", "streamtube", "volume", "isosurface", "mesh3d",
}  # fmt: skip
_AXIS_KEY = re.compile(r"^([xy])axis(\d*)$")
# Spans that must stay on one line: a tag with its content (<b>…</b>, <sup>…</sup>, …),
# a lone tag, and inline math ($…$, \(…\)).
_ATOMIC = re.compile(r"<(\w+)\b[^>]*>.*?</\1>|<[^>]+>|\$[^$]*\$|\\\(.*?\\\)", re.S)
_BR = re.compile(r"<br\s*/?>", re.I)
_GLUE = {"=", "≈", "<", ">", "≤", "≥", "×", "→", "÷", "~"}
_SEPARATORS = {"·", "|", "—", "–"}


def _visible_len(text: str) -> int:
    """Characters a reader sees: tags dropped, an entity (``&amp;``) counts as one."""
    return len(html.unescape(re.sub(r"<[^>]+>", "", text)))


def wrap_text(text: str, max_chars: int) -> str:
    """``text`` with ``<br>`` between words so no line is longer than ``max_chars`` characters.

    Existing ``<br>`` stay; tags with their content (``<b>…</b>``, ``<sup>…</sup>``) and math
    (``$…$``, ``\\(…\\)``) are never split. Idempotent: a wrapped text wraps to itself. A
    single word longer than a line keeps its own line (splitting a word is worse).
    """
    if not isinstance(text, str) or not text:
        return text
    max_chars = max(int(max_chars), 8)
    out = []
    for segment in _BR.split(text):
        # protect the spaces inside atomic spans, split into words, restore
        protected = _ATOMIC.sub(lambda m: m.group(0).replace(" ", "\0"), segment)
        words = [w.replace("\0", " ") for w in protected.split(" ") if w != ""]
        # "T = 0.8" stays on one line: a lone operator glues its two neighbours
        glued: list[str] = []
        i = 0
        while i < len(words):
            if words[i] in _GLUE and glued and i + 1 < len(words):
                glued[-1] = f"{glued[-1]} {words[i]} {words[i + 1]}"
                i += 2
            elif words[i] in _SEPARATORS and glued:  # "a · b" breaks after the dot, never before
                glued[-1] = f"{glued[-1]} {words[i]}"
                i += 1
            else:
                glued.append(words[i])
                i += 1
        words = glued
        lines, line, length = [], [], 0
        for w in words:
            n = _visible_len(w)
            if line and length + 1 + n > max_chars:
                lines.append(" ".join(line))
                line, length = [w], n
            else:
                length += n + (1 if line else 0)
                line.append(w)
        lines.append(" ".join(line))
        out.append("<br>".join(lines))
    return "<br>".join(out)


def _lines(text) -> int:
    return len(_BR.split(text)) if isinstance(text, str) and text else 0


def _chars_for(px: float, font_px: float) -> int:
    return max(int(px / (font_px * CHAR_EM)), 8)


def _text_px(text: str, font_px: float) -> float:
    return max((_visible_len(line) for line in _BR.split(text)), default=0) * font_px * CHAR_EM


class _Layout:
    """Effective layout values: the figure's own, else its template's, else plotly.js's."""

    def __init__(self, layout: dict):
        self.layout = layout
        self.template = ((layout.get("template") or {}).get("layout")) or {}

    @staticmethod
    def _first(sources, path, default):
        """The value at ``path`` in the first of ``sources`` (dicts or None) that has one."""
        for node in sources:
            for key in path:
                node = node.get(key) if isinstance(node, dict) else None
                if node is None:
                    break
            if node is not None:
                return node
        return default

    def get(self, *path, default=None):
        return self._first((self.layout, self.template), path, default)

    def axis(self, key: str, *path, default=None):
        """A value of axis ``key`` (e.g. ``xaxis3``), falling back to the template's ``xaxis``.

        Never to the figure's own ``xaxis``: as in plotly.js, the first subplot's axis settings
        (a log type, say) do not carry over to ``xaxis2``, ``xaxis3``, ...
        """
        return self._first((self.layout.get(key), self.template.get(key[:5])), path, default)

    @property
    def font(self) -> float:
        return float(self.get("font", "size", default=_PLOTLY_DEFAULTS["font.size"]))

    def margin(self, side: str) -> float:
        return float(self.get("margin", side, default=_PLOTLY_DEFAULTS["margin"][side]))


def _title_text(title) -> str | None:
    if isinstance(title, str):
        return title
    if isinstance(title, dict):
        return title.get("text")
    return None


def _set_title_text(parent: dict, key: str, max_chars: int) -> int:
    """Wrap ``parent[key]`` (a title string or dict with ``text``); return its line count."""
    title = parent.get(key)
    if isinstance(title, str):
        parent[key] = title = wrap_text(title, max_chars)
        return _lines(title)
    if isinstance(title, dict) and isinstance(title.get("text"), str):
        title["text"] = wrap_text(title["text"], max_chars)
        return _lines(title["text"])
    return 0


def _trace_axes(trace: dict) -> tuple[str, str] | None:
    if trace.get("type", "scatter") in _NOT_CARTESIAN:
        return None
    x, y = trace.get("xaxis") or "x", trace.get("yaxis") or "y"
    return "xaxis" + x[1:], "yaxis" + y[1:]


def _values(trace: dict, letter: str) -> list:
    """The ``x`` or ``y`` values of a trace as a flat list (plotly 6 stores arrays base64-encoded)."""
    import numpy as np

    v = trace.get(letter)
    if v is None:
        return []
    try:
        if isinstance(v, dict) and "bdata" in v:
            arr = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        else:
            arr = np.asarray(v, dtype=object)
        return [e for e in arr.ravel().tolist() if e is not None]
    except (TypeError, ValueError):  # ragged or odd data: no values, no error
        return []


def _domain(lay: _Layout, key: str) -> tuple[float, float]:
    d = lay.axis(key, "domain", default=[0.0, 1.0])
    return float(d[0]), float(d[1])


def _is_subplot_title(ann: dict, top_edges: set[float]) -> bool:
    """An annotation like those ``make_subplots(subplot_titles=...)`` writes above a subplot."""
    return (
        ann.get("yref", "paper") == "paper"
        and ann.get("xref", "paper") == "paper"
        and ann.get("showarrow") is False
        and ann.get("yanchor") == "bottom"
        and isinstance(ann.get("y"), (int, float))
        and any(abs(ann["y"] - e) < 1e-6 for e in top_edges)
    )


def _wrap_annotations(annotations, lay: _Layout, plot_w: float, x_domains: list, top_edges: set, lines: dict) -> None:
    """Wrap subplot titles to their column; record in ``lines`` the most lines above each row."""
    for ann in annotations or []:
        if not isinstance(ann, dict) or not isinstance(ann.get("text"), str):
            continue
        if not _is_subplot_title(ann, top_edges):
            continue
        x = ann.get("x", 0.5)
        widths = [b - a for a, b in x_domains if a - 1e-6 <= x <= b + 1e-6]
        span = min(widths) if widths else 1.0
        size = float((ann.get("font") or {}).get("size") or lay.font)
        ann["text"] = wrap_text(ann["text"], _chars_for(span * plot_w, size))
        # Lifted clear of the panel's top: a y tick label at the top of the range stands half
        # its height above the panel, and a title wider than its column (a narrow panel,
        # the plot area shrunk by automargin) reaches over the next panel's tick labels.
        ann.setdefault("yshift", _title_lift(lay))
        edge = min(top_edges, key=lambda e: abs(e - ann["y"]))
        lines[edge] = max(lines.get(edge, 0), _lines(ann["text"]))


def _title_lift(lay: _Layout) -> int:
    """Pixels a subplot title is raised: half a tick label's line height, plus 2 px."""
    tick = float(lay.get("yaxis", "tickfont", "size", default=lay.font))
    return math.ceil(0.65 * tick) + 2


def _layout_updates(layout: dict):
    """Layout-update dicts of slider steps and update-menu buttons (they replace titles)."""
    for group in ("sliders", "updatemenus"):
        for menu in layout.get(group) or []:
            for step in (menu or {}).get("steps" if group == "sliders" else "buttons") or []:
                args = (step or {}).get("args") or []
                method = step.get("method", "restyle")
                idx = {"update": 1, "relayout": 0}.get(method)
                if idx is not None and len(args) > idx and isinstance(args[idx], dict):
                    yield args[idx]


def _grow_fonts(node, minimum: float = 10.0) -> None:
    """Set every font ``size`` under ``node`` that is below ``minimum`` px to ``minimum``."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key.endswith("font") and isinstance(value, dict) and "size" in value:
                size = value["size"]
                if isinstance(size, (int, float)) and not isinstance(size, bool) and size < minimum:
                    value["size"] = minimum
                elif isinstance(size, (list, tuple)):
                    value["size"] = [max(s, minimum) if isinstance(s, (int, float)) else s for s in size]
            if isinstance(value, (dict, list)):
                _grow_fonts(value, minimum)
    elif isinstance(node, list) and node and isinstance(node[0], (dict, list)):
        for item in node:
            _grow_fonts(item, minimum)


def _log_ticks(axis: dict, values: list, lay_range) -> None:
    """Ticks of a log axis: decades when the data span two or more, else a 1-2-5 series.

    plotly's automatic log ticks label the minor ticks with a bare leading digit ("2", "5"),
    which reads as a value of 2 or 5. Explicit decades (``dtick``) or explicit 1-2-5 values
    (``tickvals``, labelled as full numbers) avoid that.
    """
    if any(k in axis for k in ("dtick", "tickvals", "tickmode")):
        return
    if lay_range and len(lay_range) == 2 and all(isinstance(v, (int, float)) for v in lay_range):
        lo, hi = 10 ** min(lay_range), 10 ** max(lay_range)
    else:
        pos = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0]
        if not pos:
            return
        lo, hi = min(pos), max(pos)
    first, last = math.ceil(math.log10(lo) - 1e-9), math.floor(math.log10(hi) + 1e-9)
    decades = last - first + 1
    if decades >= 2:
        axis["dtick"] = max(1, math.ceil((last - first) / 8))
        if axis["dtick"] == 1:
            axis.setdefault("minor", {"ticks": "outside", "dtick": "D1", "showgrid": False})
        return
    series = [m * 10**e for e in range(first - 1, last + 2) for m in (1, 2, 5)]
    inside = [v for v in series if lo / 1.05 <= v <= hi * 1.05]
    if len(inside) >= 2:
        axis["tickmode"] = "array"
        axis["tickvals"] = inside
        axis["ticktext"] = [f"{v:g}" for v in inside]


def _legend_entries(data: list, layout: dict) -> tuple[int, float]:
    """(entries, longest name in characters) the legend shows at once, over slider steps."""
    eligible = []
    for tr in data:
        kind = tr.get("type", "scatter")
        show = tr.get("showlegend")
        eligible.append(show is True or (show is None and kind not in _NO_LEGEND))
    visibility_sets = [[tr.get("visible", True) is not False for tr in data]]
    for update in (layout.get("sliders") or [{}])[0].get("steps") or []:
        args = (update or {}).get("args") or []
        if args and isinstance(args[0], dict) and isinstance(args[0].get("visible"), list):
            visibility_sets.append([v is not False for v in args[0]["visible"]])
    best, longest = 0, 0.0
    for vis in visibility_sets:
        names, seen_groups = [], set()
        for tr, ok, v in zip(data, eligible, vis):
            if not (ok and v):
                continue
            if tr.get("type") == "pie":
                names += [str(x) for x in tr.get("labels") or []]
                continue
            group = tr.get("legendgroup")
            if group and group in seen_groups and tr.get("showlegend") is not True:
                continue
            seen_groups.add(group)
            names.append(str(tr.get("name") or f"trace {len(names)}"))
        best = max(best, len(names))
        longest = max([longest] + [_visible_len(n) for n in names])
    return best, longest


def _legend_rows(names_count: int, longest: float, font: float, avail: float) -> int:
    item = 40 + longest * font * CHAR_EM
    per_row = max(int(avail // item), 1)
    return math.ceil(names_count / per_row)


def _x_tick_block(lay: _Layout, data: list, key: str, plot_w: float) -> float:
    """Pixels the tick labels of x axis ``key`` take below the plot (rotated when crowded)."""
    if lay.axis(key, "showticklabels", default=True) is False or lay.axis(key, "visible", default=True) is False:
        return 0.0
    font = float(lay.axis(key, "tickfont", "size", default=lay.font))
    height = font * 1.3 + 10
    if lay.axis(key, "type") == "log" or lay.axis(key, "exponentformat") in ("power", "e", "E"):
        height += 0.5 * font  # "10⁻³"-style labels: a superscript raises the line
    labels = lay.axis(key, "ticktext")
    if labels is None:
        labels = []
        for tr in data:
            axes = _trace_axes(tr)
            if axes and axes[0] == key:
                labels += [v for v in _values(tr, "x") if isinstance(v, str)]
        labels = list(dict.fromkeys(labels))
    if not labels:
        return height
    widths = [_text_px(str(s), font) for s in labels]
    a, b = _domain(lay, key)
    spacing = (b - a) * plot_w / max(len(labels), 1)
    if max(widths) + 6 <= spacing:
        return height
    if spacing >= 2.2 * font:  # plotly turns crowded labels by 30° first
        return 0.5 * max(widths) + font + 12
    return max(widths) + 12


def _tidy_dict(fig: dict, width: float | None = None) -> dict:
    fig = dict(fig)
    layout = copy.deepcopy(fig.get("layout") or {})
    data = [dict(tr) for tr in fig.get("data") or []]
    lay = _Layout(layout)
    width = float(layout.get("width") or width or DEFAULT_WIDTH)
    given_height = layout.get("height")
    height = float(given_height or lay.get("height", default=DEFAULT_HEIGHT))
    t0, b0 = lay.margin("t"), lay.margin("b")
    l0, r0 = lay.margin("l"), lay.margin("r")
    if data and all(tr.get("type") == "table" for tr in data) and max(l0, r0) > TABLE_SIDE_PX:
        # no axes to hold: a table uses the width (on a phone, 100 px of margins is a third of it)
        l0, r0 = min(l0, TABLE_SIDE_PX), min(r0, TABLE_SIDE_PX)
        layout.setdefault("margin", {}).update(l=l0, r=r0)
    plot_w = max(width - l0 - r0 - 20, 100.0)  # 20: room automargin may take for tick labels
    plot_h0 = height - t0 - b0

    # ---- axes: every cartesian axis in use gets automargin
    axis_keys = {k for k in layout if _AXIS_KEY.match(k)}
    for tr in data:
        axes = _trace_axes(tr)
        if axes:
            axis_keys.update(axes)
    if not data and not axis_keys:
        axis_keys = {"xaxis", "yaxis"}  # an empty figure still draws one pair of axes
    for key in sorted(axis_keys):
        axis = layout.setdefault(key, {})
        if not axis.get("automargin"):
            axis["automargin"] = True
        if lay.axis(key, "type") == "log":
            letter = key[0]
            vals = []
            for tr in data:
                axes = _trace_axes(tr)
                if axes and axes[0 if letter == "x" else 1] == key:
                    vals += _values(tr, letter)
            _log_ticks(axis, vals, axis.get("range"))

    # ---- subplot titles (annotations at the top edge of a y domain)
    x_domains = [_domain(lay, k) for k in axis_keys if k.startswith("x")] or [(0.0, 1.0)]
    top_edges = {_domain(lay, k)[1] for k in axis_keys if k.startswith("y")} or {1.0}
    edge_lines: dict[float, int] = {}
    _wrap_annotations(layout.get("annotations"), lay, plot_w, x_domains, top_edges, edge_lines)
    for update in _layout_updates(layout):
        _wrap_annotations(update.get("annotations"), lay, plot_w, x_domains, top_edges, edge_lines)
    band_lines = edge_lines.get(max(top_edges), 0)

    # ---- main title: wrapped to the width, placed at the top, above any subplot titles
    title_font = float(lay.get("title", "font", "size", default=round(lay.font * 1.4)))
    title_chars = _chars_for(width - 40, title_font)
    title_lines = _set_title_text(layout, "title", title_chars)
    for update in _layout_updates(layout):
        for k in [k for k in update if k in ("title", "title.text")]:
            title_lines = max(title_lines, _set_title_text(update, k, title_chars))
    lift = _title_lift(lay)
    band = band_lines * 16 * 1.3 + 6 + lift if band_lines else 0.0
    if title_lines:
        title = layout["title"] if isinstance(layout.get("title"), dict) else {"text": layout.get("title")}
        layout["title"] = title
        # Placed by tidy, which sizes the top margin itself: plotly's title.automargin pushes
        # the margin and then shifts a multi-line title up, out of the figure (plotly.js 4.1).
        title.update(yref="container", y=1, yanchor="top", automargin=False)
        # plotly.js draws a multi-line title anchored at the top 0.7 em too high: pad for it.
        title.setdefault("pad", {})["t"] = 10 + (round(0.75 * title_font) if title_lines > 1 else 0)
        top = 10 + title_lines * title_font * 1.3 + 8 + band
    else:
        top = band + 10 if band else 0.0
    t = math.ceil(max(t0, top))

    # ---- on a phone, a y title repeated along a row is kept on the first column only: the
    # columns' gap cannot hold it, and the reader has it once per row
    if width < NARROW_WIDTH:
        _drop_repeated_y_titles(layout, lay, axis_keys)

    # ---- x-axis titles wrapped to their axis length (y-axis titles once the height is known)
    _wrap_axis_titles(layout, lay, axis_keys, "x", plot_w)

    # ---- below the plot: x tick labels and title, then the legend, then the slider
    bottom_y = min((_domain(lay, k)[0] for k in axis_keys if k.startswith("y")), default=0.0)
    below, row_gap_h = 0.0, 0.0
    y_tops = sorted(_domain(lay, k)[1] for k in axis_keys if k.startswith("y"))
    for key in axis_keys:
        if not key.startswith("x"):
            continue
        anchor = lay.axis(key, "anchor", default="y")
        ykey = "yaxis" + (anchor[1:] if anchor.startswith("y") else "")
        block = _x_tick_block(lay, data, key, plot_w)
        title_lines_x = _lines(_title_text(layout[key].get("title")))
        if title_lines_x:
            size = float(lay.axis(key, "title", "font", "size", default=round(lay.font * 1.2)))
            block += title_lines_x * size * 1.3 + 8
        y_bottom = _domain(lay, ykey)[0] if ykey in axis_keys else bottom_y
        if abs(y_bottom - bottom_y) <= 1e-6:
            below = max(below, block)
            continue
        # a row above another: the gap between them must hold this axis and the titles below
        tops_below = [e for e in y_tops if e < y_bottom - 1e-6]
        if tops_below and y_bottom - max(tops_below) > 1e-3:
            edge = max(tops_below)
            need = block + (edge_lines.get(edge, 0) * 16 * 1.3 + lift if edge in edge_lines else 0) + 20
            row_gap_h = max(row_gap_h, need / (y_bottom - edge))
    below = math.ceil(below + 10)

    entries, longest = _legend_entries(data, layout)
    show_legend = layout.get("showlegend", lay.get("showlegend"))
    legend_shown = show_legend is True or (show_legend is None and entries >= 2)
    legend = layout.get("legend") or {}
    move_legend = legend_shown and (entries > 3 or longest > 22 or width < NARROW_WIDTH)
    sliders = layout.get("sliders") or []

    b = math.ceil(b0)
    legend_h = 0.0
    if move_legend:
        lfont = float(lay.get("legend", "font", "size", default=lay.font))
        rows = _legend_rows(entries, longest, lfont, width - l0 - 10)
        legend_h = rows * max(22.0, lfont * 1.85) + 10 + (lfont * 1.6 if _title_text(legend.get("title")) else 0)
    slider_h = 0.0
    for s in sliders:
        s_font = float((s.get("font") or {}).get("size") or lay.font)
        cv_lines, rail_lines = _wrap_step_labels(s, lay, float(s.get("len", 1.0)) * plot_w - 10)
        # current value, rail, labels under it, pad
        slider_h = max(slider_h, (cv_lines * s_font * 1.4 + 10) + 28 + (rail_lines * s_font * 1.4 + 12) + 10)
    if move_legend or sliders:
        b = math.ceil(max(b0, below + (legend_h + 6 if move_legend else 0) + slider_h + 8))
    if move_legend:
        # Relative to the plot area (paper), not the container: with a slider, plotly grows
        # the margin again for a container-anchored legend and the plot shrinks.
        layout["legend"] = legend
        legend.update(orientation="h", xref="paper", x=0, xanchor="left", yref="paper", yanchor="top")
    if sliders:
        for s in sliders:
            s.setdefault("pad", {})["t"] = math.ceil(below + (legend_h + 6 if move_legend else 0))
            s["y"], s["yanchor"] = 0, "top"
            cv = s.setdefault("currentvalue", {})
            cv.setdefault("xanchor", "left")
            cv["offset"] = 8
            _hide_crowded_step_labels(s, lay, plot_w)

    # ---- tables: columns wide enough for their longest word, then tall enough for every row
    data = _fit_tables(data, lay, width - l0 - r0)
    table_h = _table_height(data, lay, width - l0 - r0)
    new_height = height
    if table_h is not None:
        new_height = t + b + table_h
    else:
        # the plot keeps its room (up to MIN_PLOT_PX) and stacked rows their gaps
        new_height = max(height, t + b + min(MIN_PLOT_PX, plot_h0), t + b + min(row_gap_h, 1200.0))
    # a legend placed in plot units assumes the height it was computed for: pin it
    if new_height != height or given_height is not None or move_legend or sliders:
        layout["height"] = math.ceil(new_height)
    if move_legend:
        legend["y"] = -round(below / (layout.get("height", height) - t - b), 4)

    _wrap_axis_titles(layout, lay, axis_keys, "y", layout.get("height", height) - t - b)
    margin = layout.setdefault("margin", {})
    pinned = move_legend or sliders or table_h is not None  # positions computed from these margins
    if t != t0 or pinned:
        margin["t"] = t
    if b != b0 or pinned:
        margin["b"] = b

    _grow_fonts(layout)
    for i, tr in enumerate(data):
        if any(k.endswith("font") for k in tr) or tr.get("type") == "table":
            data[i] = copy.deepcopy(tr)
            _grow_fonts(data[i])
    fig["layout"], fig["data"] = layout, data
    return fig


def _drop_repeated_y_titles(layout: dict, lay: _Layout, axis_keys) -> None:
    rows: dict[tuple[float, float], list[tuple[float, str]]] = {}
    for key in axis_keys:
        if key[0] != "y" or _title_text(layout[key].get("title")) is None:
            continue
        anchor = lay.axis(key, "anchor", default="x")
        xkey = "xaxis" + (anchor[1:] if anchor.startswith("x") else "")
        rows.setdefault(_domain(lay, key), []).append((_domain(lay, xkey)[0], key))
    for members in rows.values():
        members.sort()
        first = _title_text(layout[members[0][1]].get("title"))
        for _, key in members[1:]:
            if _title_text(layout[key].get("title")) == first:
                layout[key]["title"] = (
                    {**layout[key]["title"], "text": ""} if isinstance(layout[key]["title"], dict) else ""
                )


def _wrap_axis_titles(layout: dict, lay: _Layout, axis_keys, letter: str, plot_px: float) -> None:
    """Wrap the titles of the ``letter`` axes (and their slider-step versions) to the axis length."""
    for key in sorted(k for k in axis_keys if k[0] == letter):
        a, b = _domain(lay, key)
        size = float(lay.axis(key, "title", "font", "size", default=round(lay.font * 1.2)))
        # 0.85: a rotated y title longer than its axis makes plotly push both margins, which
        # shortens the axis further; keep a y title well inside the estimated length.
        chars = _chars_for((b - a) * max(plot_px, 100.0) * (0.85 if letter == "y" else 1.0), size)
        if isinstance(layout[key].get("title"), (str, dict)):
            _set_title_text(layout[key], "title", chars)
        for update in _layout_updates(layout):
            for k in (f"{key}.title", f"{key}.title.text"):
                if k in update:
                    _set_title_text(update, k, chars)


def _hide_crowded_step_labels(slider: dict, lay: _Layout, plot_w: float) -> None:
    """Step labels that would run into each other are drawn transparent (the current value shows)."""
    steps = slider.get("steps") or []
    if len(steps) < 2:
        return
    font = float((slider.get("font") or {}).get("size") or lay.font)
    spacing = float(slider.get("len", 1.0)) * plot_w / (len(steps) - 1)
    widest = max(_text_px(str(s.get("label", "")), font) for s in steps)
    if widest + 8 <= spacing:
        return
    color = (slider.get("font") or {}).get("color") or lay.get("font", "color", default="#444")
    slider.setdefault("currentvalue", {}).setdefault("font", {}).setdefault("color", color)
    slider.setdefault("font", {})["color"] = "rgba(0,0,0,0)"


def _wrap_step_labels(slider: dict, lay: _Layout, avail_px: float) -> tuple[int, int]:
    """Each step's label wrapped so the current value (prefix, then label) fits ``avail_px``.

    plotly.js draws the current value on one line unless it holds ``<br>``, and a long one
    ("search · calculator · threshold 0.99 · fp32") runs out of a phone's figure. Returns
    the most lines of a current value and of a label alone (the labels under the rail).
    """
    cv = slider.get("currentvalue") or {}
    font = float((cv.get("font") or {}).get("size") or (slider.get("font") or {}).get("size") or lay.font)
    chars = _chars_for(avail_px, font)
    prefix = str(cv.get("prefix") or "")
    # the prefix stands in as one word of its length, so the label's first line leaves room for it
    stand_in = "x" * _visible_len(prefix.rstrip())
    cv_lines, rail_lines = 1, 1
    for step in slider.get("steps") or []:
        label = step.get("label")
        if not isinstance(label, str) or not label:
            continue
        if stand_in:
            wrapped = wrap_text(f"{stand_in} {label}", chars)[len(stand_in) :]
            wrapped = wrapped[1:] if wrapped.startswith(" ") else wrapped
        else:
            wrapped = wrap_text(label, chars)
        step["label"] = wrapped
        cv_lines = max(cv_lines, _lines(wrapped) + (1 if wrapped.startswith("<br>") else 0))
        rail_lines = max(rail_lines, _lines(wrapped.removeprefix("<br>")))
    return cv_lines, rail_lines


def _cell_strings(values) -> list[list]:
    """A table's ``cells.values`` (or ``header.values``) as a list of columns."""
    return [[c] if isinstance(c, str) or not hasattr(c, "__iter__") else list(c) for c in (values or [])]


def _longest_word_px(texts, font: float) -> float:
    words = (w for t in texts for line in _BR.split(str(t)) for w in re.sub(r"<[^>]+>", "", line).split(" "))
    return max((_visible_len(w) * font * CHAR_EM for w in words), default=0.0)


def _fit_tables(data: list, lay: _Layout, table_w: float) -> list:
    """Tables whose columns hold their longest word at ``table_w`` px, with ``<br>`` cells wrapped.

    plotly.js wraps a cell at spaces to its column, but never inside a word (a column
    narrower than "categorization" cuts it) and never a cell that already holds ``<br>``
    (its lines run out of the table). Narrow columns are widened to their longest word plus
    padding; the others share the rest in their given proportions. On a phone the book
    switches to the tables fitted for :data:`PHONE_WIDTH` (:func:`_narrow_script`).
    """
    out = []
    for tr in data:
        if tr.get("type") != "table":
            out.append(tr)
            continue
        tr = copy.deepcopy(tr)
        header, cells = tr.setdefault("header", {}), tr.setdefault("cells", {})
        columns, heads = _cell_strings(cells.get("values")), _cell_strings(header.get("values"))
        n_cols = max(len(columns), len(heads), 1)
        given = tr.get("columnwidth")
        shares = (
            [float(w) for w in given] if isinstance(given, (list, tuple)) and len(given) == n_cols else [1.0] * n_cols
        )
        cfont = float((cells.get("font") or {}).get("size") or lay.font)
        hfont = float((header.get("font") or {}).get("size") or lay.font)
        need = [
            max(
                _longest_word_px(columns[i] if i < len(columns) else [], cfont),
                _longest_word_px(heads[i] if i < len(heads) else [], hfont),
            )
            + 18  # plotly's cell padding, both sides, and a margin
            for i in range(n_cols)
        ]
        px = _shares_with_floors(shares, need, table_w)
        if any(abs(p - table_w * w / sum(shares)) > 0.5 for p, w in zip(px, shares)):
            tr["columnwidth"] = [round(p, 1) for p in px]
        wrapped = [
            [
                wrap_text(v, _chars_for(max(px[i] - 16, 20), cfont)) if isinstance(v, str) and _BR.search(v) else v
                for v in col
            ]
            for i, col in enumerate(columns)
        ]
        if wrapped != columns:
            cells["values"] = wrapped
        out.append(tr)
    return out


def _shares_with_floors(shares: list[float], floors: list[float], total: float) -> list[float]:
    """``total`` px split in proportion to ``shares``, no part below its floor (when they fit)."""
    if sum(floors) >= total:
        return [total * f / sum(floors) for f in floors]
    fixed: dict[int, float] = {}
    while True:
        free = [i for i in range(len(shares)) if i not in fixed]
        rest = total - sum(fixed.values())
        weight = sum(shares[i] for i in free) or 1.0
        px = {i: rest * shares[i] / weight for i in free}
        short = [i for i in free if px[i] < floors[i] - 1e-9]
        if not short:
            return [fixed.get(i, px.get(i)) for i in range(len(shares))]
        for i in short:
            fixed[i] = floors[i]


def _table_height(data: list, lay: _Layout, table_w: float) -> float | None:
    """Pixels a figure of plotly tables needs to show every row (None: no table)."""
    tables = [tr for tr in data if tr.get("type") == "table"]
    if not tables:
        return None
    need = 0.0
    for tr in tables:
        header, cells = tr.get("header") or {}, tr.get("cells") or {}
        columns = _cell_strings(cells.get("values"))
        n_rows = max((len(c) for c in columns), default=0)
        widths = tr.get("columnwidth")
        n_cols = max(len(columns), len(header.get("values") or []), 1)
        if isinstance(widths, (list, tuple)) and len(widths) == n_cols:
            total = float(sum(widths)) or 1.0
            col_px = [table_w * w / total for w in widths]
        else:
            col_px = [table_w / n_cols] * n_cols
        cfont = float((cells.get("font") or {}).get("size") or lay.font)
        hfont = float((header.get("font") or {}).get("size") or lay.font)
        row_h = float(cells.get("height") or 20)
        head_h = float(header.get("height") or 28)

        def lines(value, col, font, col_px=col_px):
            chars = _chars_for(max(col_px[col] - 12, 20), font)
            return max(_lines(wrap_text(str(value), chars)), 1)

        head_lines = max(
            (lines(v, i, hfont) for i, v in enumerate(header.get("values") or []) if i < n_cols), default=1
        )
        # plotly.js grows a row holding n lines to n line heights plus about 13 px of padding
        total_h = max(head_h, head_lines * hfont * 1.3 + 13)
        for r in range(n_rows):
            row_lines = max(
                (lines(c[r], i, cfont) for i, c in enumerate(columns) if r < len(c) and i < n_cols), default=1
            )
            total_h += max(row_h, row_lines * cfont * 1.3 + 13)
        a, b = (tr.get("domain") or {}).get("y", [0.0, 1.0])
        need = max(need, (total_h + 12) / max(b - a, 0.05))
    return need


def tidy(fig, *, width: int | None = None):
    """The course's layout rules applied to ``fig``: a new figure, the input untouched.

    Pure and idempotent (``tidy(tidy(f)) == tidy(f)``); takes a plotly ``Figure`` or the
    figure dict plotly hands its renderers and returns the same kind. Every course renderer
    calls it, so chapters do not hand-tune margins. The rules, all generic:

    * every x/y axis gets ``automargin`` (tick labels and titles push the margins);
    * the title, subplot titles and axis titles are wrapped with ``<br>`` at word
      boundaries to the width they have (figure width, else :data:`DEFAULT_WIDTH`); the
      title sits at the top, the top margin holds it and the subplot titles under it;
    * a legend with more than three entries or long names goes below the x-axis title,
      horizontally, and the bottom margin grows to hold it;
    * a slider goes below that (its current-value label cannot cover the axis title);
      step labels that would run into each other are hidden (the current value shows);
    * log axes label decades, or 1-2-5 values as full numbers, never a bare "2" or "5";
    * a figure of plotly tables is as tall as its rows;
    * no font is smaller than 10 px;
    * the figure grows in height when its margins grew, so the plot keeps its room, and
      stacked subplots get the height their gaps need for axis and subplot titles.

    ``width`` is the width in px to lay out for when the figure sets none (default
    :data:`DEFAULT_WIDTH`); below :data:`NARROW_WIDTH` every legend goes below the plot.
    """
    if width is not None and (isinstance(width, bool) or not isinstance(width, (int, float)) or width < 200):
        raise ValueError(f"width must be a number of pixels >= 200 or None, got {width!r}")
    if isinstance(fig, dict):
        return _tidy_dict(fig, width)
    import plotly.graph_objects as go

    if isinstance(fig, go.Figure):
        return go.Figure(_tidy_dict(fig.to_dict(), width))
    raise TypeError(f"fig must be a plotly Figure or a figure dict, got {type(fig).__name__}")


class _BookRenderer:
    """Plotly renderer for the book build: a div and a ``Plotly.newPlot`` call, no plotly.js.

    The site loads its one copy of plotly.js on every page, so inlining the 4.8 MB library
    in each figure (plotly's default offline HTML) is unnecessary. Div ids count up from 1
    in each kernel, so two executions of a notebook produce identical HTML. The figure goes
    through :func:`tidy` first, and the modebar gets :data:`PLOTLY_CONFIG`.
    """

    def __init__(self):
        # plotly renders with a shallow *copy* of the renderer, so a plain int counter
        # would restart at 1 for every figure (duplicate ids: only the first div draws);
        # the copies share this one iterator.
        self._ids = itertools.count(1)

    def to_mimebundle(self, fig_dict):
        import plotly.io as pio

        wide, narrow = tidy(fig_dict), tidy(fig_dict, width=PHONE_WIDTH)
        self.count = next(self._ids)
        height = (wide.get("layout") or {}).get("height") or DEFAULT_HEIGHT
        html = pio.to_html(
            wide,
            include_plotlyjs=False,
            full_html=False,
            div_id=f"course-fig-{self.count}",
            default_height=f"{height}px",
            default_width="100%",
            config=dict(PLOTLY_CONFIG),
            validate=False,
            post_script=_narrow_script(wide, narrow),
        )
        return {"text/html": html}


def _narrow_script(wide: dict, narrow: dict) -> str | None:
    """JavaScript that lays the figure out again for a phone when its column is narrow.

    A figure laid out for the book's column (titles wrapped, legend placed) would clip on a
    390 px screen; the page switches to the layout :func:`tidy` made for
    :data:`PHONE_WIDTH` (only the top-level layout keys that differ), and back.
    """
    from plotly.io.json import to_json_plotly

    lw, ln = wide.get("layout") or {}, narrow.get("layout") or {}
    keys = sorted(set(lw) | set(ln))  # sorted: a set's order changes with the hash seed, and the page must not
    diff = {k: ln.get(k) for k in keys if k != "template" and lw.get(k) != ln.get(k)}
    tables_n, tables_w, idx = table_restyle(wide, narrow)
    if not diff and not idx:
        return None
    back = {k: lw.get(k) for k in diff}
    hw = lw.get("height") or DEFAULT_HEIGHT
    hn = ln.get("height") or hw
    return (
        "(function(){var gd=document.getElementById('{plot_id}');if(!gd||!window.Plotly)return;"
        f"var narrow={to_json_plotly(diff)},wide={to_json_plotly(back)},mode='wide';"
        f"function fit(){{var m=gd.offsetWidth&&gd.offsetWidth<{NARROW_WIDTH}?'narrow':'wide';"
        "if(m===mode)return;mode=m;"
        f"gd.style.height=(m==='narrow'?{hn}:{hw})+'px';"
        # plotly's HTML wraps the figure in a div of the wide height: resize it too, or
        # what follows on the page covers the bottom of a taller phone layout
        "if(gd.parentElement)gd.parentElement.style.height=gd.style.height;"
        + (
            f"Plotly.restyle(gd,JSON.parse(JSON.stringify(m==='narrow'?{to_json_plotly(tables_n)}:"
            f"{to_json_plotly(tables_w)})),{to_json_plotly(idx)});"
            if idx
            else ""
        )
        + "Plotly.relayout(gd,JSON.parse(JSON.stringify(m==='narrow'?narrow:wide)));}"
        "fit();window.addEventListener('resize',fit);})();"
    )


def table_restyle(wide: dict, narrow: dict) -> tuple[dict, dict, list[int]]:
    """What ``Plotly.restyle`` switches on a phone: the tables' column widths and cells.

    Returns (narrow update, wide update, trace indices); the updates hold one entry per
    index, as ``Plotly.restyle(gd, update, indices)`` takes them.
    """
    from plotly.io.json import to_json_plotly

    tn, tw, idx = {"columnwidth": [], "cells.values": []}, {"columnwidth": [], "cells.values": []}, []
    for i, (a, b) in enumerate(zip(wide.get("data") or [], narrow.get("data") or [])):
        if a.get("type") != "table" or to_json_plotly(a) == to_json_plotly(b):
            continue
        idx.append(i)
        for upd, tr in ((tn, b), (tw, a)):
            upd["columnwidth"].append(tr.get("columnwidth"))
            upd["cells.values"].append((tr.get("cells") or {}).get("values"))
    return tn, tw, idx


def _course_renderers() -> dict:
    """Course versions of plotly's notebook renderers: :func:`tidy`, then plotly's own code.

    Subclasses, so JupyterLab and VS Code still render the plotly mimetype natively and
    Colab still gets plotly's HTML; only the figure (tidied) and the config differ.
    """
    from plotly.io._base_renderers import ColabRenderer, MimetypeRenderer, NotebookRenderer, PlotlyRenderer

    def tidied(base):
        def to_mimebundle(self, fig_dict):
            return base.to_mimebundle(self, tidy(fig_dict))

        return to_mimebundle

    classes = {
        name: type(f"Course{base.__name__}", (base,), {"to_mimebundle": tidied(base)})
        for name, base in (("mimetype", PlotlyRenderer), ("colab", ColabRenderer), ("notebook", NotebookRenderer))
    }
    book = type("CourseBookRenderer", (_BookRenderer, MimetypeRenderer), {})
    return {
        "course_book": book(),
        "course_mimetype": classes["mimetype"](config=dict(PLOTLY_CONFIG)),
        "course_colab": classes["colab"](config=dict(PLOTLY_CONFIG)),
        "course_notebook": classes["notebook"](config=dict(PLOTLY_CONFIG)),
        "course_notebook_connected": classes["notebook"](config=dict(PLOTLY_CONFIG), connected=True),
    }


#: plotly renderer name -> the course renderer that replaces it.
_COURSE_RENDERER = {
    "plotly_mimetype": "course_mimetype",
    "jupyterlab": "course_mimetype",
    "vscode": "course_mimetype",
    "nteract": "course_mimetype",
    "colab": "course_colab",
    "notebook": "course_notebook",
    "notebook_connected": "course_notebook_connected",
}


def configure_plotly_renderer() -> str:
    """Pick how figures are displayed: book build, Colab, or plotly's choice (JupyterLab).

    ``COURSE_BOOK_BUILD=1`` (set by the book's Sphinx extension for the kernels it starts)
    selects the book renderer; on Colab the course Colab renderer; otherwise plotly's own
    choice (JupyterLab and VS Code render the plotly mimetype natively), with each of
    plotly's notebook renderers swapped for its course subclass, which calls :func:`tidy`.
    """
    import sys

    import plotly.io as pio

    for name, renderer in _course_renderers().items():
        if name not in pio.renderers:
            pio.renderers[name] = renderer
    if os.environ.get("COURSE_BOOK_BUILD") == "1":
        pio.renderers.default = "course_book"
    elif "google.colab" in sys.modules:
        pio.renderers.default = "course_colab"
    elif pio.renderers.default:
        names = pio.renderers.default.split("+")
        pio.renderers.default = "+".join(dict.fromkeys(_COURSE_RENDERER.get(n, n) for n in names))
    return pio.renderers.default


def use_style() -> None:
    """Make the course look the default for plotly and matplotlib (idempotent)."""
    global _STYLED
    if _STYLED:
        return
    import plotly.io as pio

    pio.templates["course"] = plotly_template()
    pio.templates.default = "course"
    configure_plotly_renderer()
    try:
        import matplotlib as mpl

        mpl.rcParams.update(
            {
                "axes.prop_cycle": mpl.cycler(color=PALETTE),
                "axes.grid": True,
                "grid.color": "#e5e5e5",
                "axes.spines.top": False,
                "axes.spines.right": False,
                "figure.dpi": 100,
                "image.cmap": "cividis",
            }
        )
    except ImportError:  # matplotlib is optional for the library
        pass
    _STYLED = True


def figure(**layout):
    """A new plotly figure in the course style."""
    import plotly.graph_objects as go

    use_style()
    fig = go.Figure()
    fig.update_layout(**layout)
    return fig


# --------------------------------------------------------------------------- tables


class Table:
    """A list of row dicts that renders as HTML in a notebook and as text elsewhere."""

    def __init__(self, rows: list[dict], *, caption: str = ""):
        check_type("rows", rows, list, what="a list of dicts")
        for i, r in enumerate(rows):
            check_type(f"rows[{i}]", r, dict)
        self.rows, self.caption = rows, caption
        self.columns = list(dict.fromkeys(k for r in rows for k in r))

    def _fmt(self, v) -> str:
        if isinstance(v, float):
            return f"{v:,.4g}"
        if isinstance(v, int) and not isinstance(v, bool):
            return f"{v:,}"
        return str(v)

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(self._fmt(r.get(c, '')))}</td>" for c in self.columns) + "</tr>"
            for r in self.rows
        )
        cap = f"<caption>{html.escape(self.caption)}</caption>" if self.caption else ""
        return f'<table class="course-table">{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'

    def to_markdown(self) -> str:
        lines = ["| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        lines += ["| " + " | ".join(self._fmt(r.get(c, "")) for c in self.columns) + " |" for r in self.rows]
        return "\n".join(([f"*{self.caption}*", ""] if self.caption else []) + lines)

    def to_text(self) -> str:
        cells = [[self._fmt(r.get(c, "")) for c in self.columns] for r in self.rows]
        widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(self.columns)]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        out = [fmt.format(*self.columns), fmt.format(*("-" * w for w in widths))]
        out += [fmt.format(*row) for row in cells]
        return "\n".join(([self.caption] if self.caption else []) + out)

    def __repr__(self) -> str:
        return self.to_text()


# --------------------------------------------------------------------------- widgets


def _control(name: str, spec):
    """ipywidget for a control spec: a widget, a list (dropdown), or (min, max, step) (slider)."""
    import ipywidgets as w

    if isinstance(spec, w.ValueWidget):
        return spec
    if isinstance(spec, (list, tuple)) and len(spec) == 3 and all(isinstance(v, (int, float)) for v in spec):
        lo, hi, step = spec
        cls = w.IntSlider if all(isinstance(v, int) for v in spec) else w.FloatSlider
        return cls(min=lo, max=hi, step=step, value=lo, description=name, continuous_update=False)
    if isinstance(spec, (list, tuple)) and spec:
        return w.Dropdown(options=list(spec), value=spec[0], description=name)
    raise TypeError(
        f"control {name!r}: give a widget, a non-empty list of options, or a (min, max, step) tuple; got {spec!r}"
    )


LIVE_ONLY_NOTE = (
    '<p class="course-live-note"><b>Live explorer</b>: the controls above redraw this figure in a running '
    "notebook (Colab, JupyterLab: see the buttons at the top of the page). On this static page, use the "
    "figure with a slider just below.</p>"
)


def interactive(builder: Callable, **controls):
    """Live explorer: controls -> ``builder(**values)`` -> figure, redrawn on every change.

    Returns an ``ipywidgets.VBox``; ``box.controls`` maps names to widgets and
    ``box.current_figure()`` rebuilds the figure for the current values (for tests).
    """
    import ipywidgets as w
    from IPython.display import display

    check_callable("builder", builder)
    widgets = {name: _control(name, spec) for name, spec in controls.items()}
    out = w.Output()

    def values() -> dict:
        return {name: wd.value for name, wd in widgets.items()}

    if os.environ.get("COURSE_BOOK_BUILD") == "1":
        # A static page has no kernel to redraw with: the saved state shows the controls
        # and a note (a widget, not a display output, so a re-execution prints the same).
        builder(**values())  # still build once, so a broken builder fails the build
        box = w.VBox([w.HBox(list(widgets.values()), layout=w.Layout(flex_flow="row wrap")), w.HTML(LIVE_ONLY_NOTE)])
        box.controls = widgets
        box.current_figure = lambda: builder(**values())
        return box

    def redraw(*_):
        fig = builder(**values())
        with out:
            out.clear_output(wait=True)
            display(fig)

    for wd in widgets.values():
        wd.observe(redraw, names="value")
    box = w.VBox([w.HBox(list(widgets.values()), layout=w.Layout(flex_flow="row wrap")), out])
    box.controls = widgets
    box.current_figure = lambda: builder(**values())
    redraw()
    return box


def _setting_text(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def default_step_label(settings: dict) -> str:
    """``"name = value, name = value"``: the slider label of one grid point when none is given."""
    return ", ".join(f"{name} = {_setting_text(v)}" for name, v in settings.items())


def static_twin(
    builder: Callable,
    grid: dict[str, list],
    *,
    fixed: dict | None = None,
    label: str | None = None,
    step_label: Callable[[dict], str] | None = None,
    start: dict | None = None,
):
    """One plotly figure holding ``builder`` at every point of ``grid``, with a slider.

    Works without a kernel (static HTML): each slider step shows the traces built for one
    combination of settings and applies that figure's title and annotations (so subplot
    titles follow the slider). Every figure the builder returns for the grid must have the
    same kind of layout (axes, subplots).

    ``step_label(settings) -> str`` names each step for a reader (default
    :func:`default_step_label`, "name = value, …"); ``label`` is an optional prefix for the
    current value shown above the slider. ``start`` (a dict naming some or all settings)
    picks the step shown first: the first grid point that matches it.
    """
    import plotly.graph_objects as go

    check_callable("builder", builder)
    if not isinstance(grid, dict) or not grid or not all(isinstance(v, (list, tuple)) and v for v in grid.values()):
        raise ValueError("grid must map each setting name to a non-empty list of values")
    if step_label is not None and not callable(step_label):
        raise TypeError(f"step_label must be callable (settings dict -> str), got {type(step_label).__name__}")
    if label is not None and not isinstance(label, str):
        raise TypeError(f"label must be a str or None, got {type(label).__name__}")
    fixed = fixed or {}
    names = list(grid)
    combos = [dict(zip(names, c)) for c in itertools.product(*(grid[n] for n in names))]
    first = 0
    if start is not None:
        if not isinstance(start, dict):
            raise TypeError(f"start must be a dict of settings (a subset of {names}), got {type(start).__name__}")
        unknown = [k for k in start if k not in grid]
        if unknown:
            raise ValueError(f"start names {unknown}, not settings of the grid; allowed: {names}")
        missing = {k: v for k, v in start.items() if v not in list(grid[k])}
        if missing:
            allowed = {k: list(grid[k]) for k in missing}
            raise ValueError(f"start values {missing} are not in the grid; allowed: {allowed}")
        first = next(i for i, c in enumerate(combos) if all(c[k] == v for k, v in start.items()))
    name_step = step_label or default_step_label
    labels = []
    for c in combos:
        text = name_step(dict(c))
        if not isinstance(text, str):
            raise TypeError(f"step_label must return a str, got {type(text).__name__} for {c}")
        labels.append(text)
    figs = [builder(**c, **fixed) for c in combos]
    out = go.Figure(layout=figs[first].layout)
    spans, titles, annotations = [], [], []
    for f in figs:
        a = len(out.data)
        out.add_traces(list(f.data))
        spans.append((a, len(out.data)))
        titles.append(f.layout.title.text if f.layout.title and f.layout.title.text else "")
        annotations.append([ann.to_plotly_json() for ann in f.layout.annotations or ()])
    n = len(out.data)
    steps = []
    for (a, b), text, title, anns in zip(spans, labels, titles, annotations):
        visible = [a <= i < b for i in range(n)]
        steps.append(
            dict(method="update", label=text, args=[{"visible": visible}, {"title.text": title, "annotations": anns}])
        )
    for i, tr in enumerate(out.data):
        tr.visible = spans[first][0] <= i < spans[first][1]
    out.update_layout(
        sliders=[dict(active=first, steps=steps, currentvalue=dict(prefix=f"{label}: " if label else ""))],
        title_text=titles[first],
    )
    return out


# --------------------------------------------------------------------------- source


def show_source(obj, *, lines: tuple[int, int] | None = None):
    """Display the source of a course_lib function or class, with its file and line.

    Notebooks show library code this way instead of pasting a copy, so the book and the
    library can never disagree.
    """
    from IPython.display import Markdown

    obj = inspect.unwrap(obj)  # a decorated function (e.g. @torch.no_grad) shows its own file, not the decorator's
    try:
        src, start = inspect.getsourcelines(obj)
        path = Path(inspect.getsourcefile(obj))
    except (TypeError, OSError) as e:
        raise TypeError(f"cannot show the source of {obj!r}: {e}") from e
    if lines is not None:
        a, b = lines
        src = src[a:b]
        start += a
    try:
        shown = path.relative_to(Path(__file__).resolve().parent.parent)
    except ValueError:
        shown = path.name
    code = "".join(src).rstrip()
    return Markdown(f"`{shown}`, line {start}:\n\n```python\n{code}\n```")
