"""One look for every figure, live widgets with static twins, tables, and ``show_source``.

Design rule (course design §2.5): every explainer is a **pure function** of its settings
that returns a plotly figure. Two thin layers sit on top of it:

* :func:`interactive` wraps it in ipywidgets controls that recompute live (needs a kernel);
* :func:`static_twin` precomputes it over a grid of settings into one figure with a plotly
  slider, which keeps working in the static book where no kernel runs.

Tests call the pure function. The palette is Okabe & Ito's, safe for colour-blind readers.
"""

from __future__ import annotations

import html
import inspect
import itertools
import os
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


class _BookRenderer:
    """Plotly renderer for the book build: a div and a ``Plotly.newPlot`` call, no plotly.js.

    The site loads its one copy of plotly.js on every page, so inlining the 4.8 MB library
    in each figure (plotly's default offline HTML) is unnecessary. Div ids count up from 1
    in each kernel, so two executions of a notebook produce identical HTML.
    """

    def __init__(self):
        # plotly renders with a shallow *copy* of the renderer, so a plain int counter
        # would restart at 1 for every figure (duplicate ids: only the first div draws);
        # the copies share this one iterator.
        self._ids = itertools.count(1)

    def to_mimebundle(self, fig_dict):
        import plotly.io as pio

        self.count = next(self._ids)
        height = (fig_dict.get("layout") or {}).get("height") or 450
        html = pio.to_html(
            fig_dict,
            include_plotlyjs=False,
            full_html=False,
            div_id=f"course-fig-{self.count}",
            default_height=f"{height}px",
            default_width="100%",
            config={"displaylogo": False, "responsive": True},
            validate=False,
        )
        return {"text/html": html}


def configure_plotly_renderer() -> str:
    """Pick how figures are displayed: book build, Colab, or plotly's default (JupyterLab).

    ``COURSE_BOOK_BUILD=1`` (set by the book's Sphinx extension for the kernels it starts)
    selects :class:`_BookRenderer`; on Colab plotly's ``colab`` renderer; otherwise plotly's
    own choice, which JupyterLab and VS Code render natively.
    """
    import sys

    import plotly.io as pio
    from plotly.io._base_renderers import MimetypeRenderer

    if os.environ.get("COURSE_BOOK_BUILD") == "1":
        book = type("CourseBookRenderer", (_BookRenderer, MimetypeRenderer), {})()
        pio.renderers["course_book"] = book
        pio.renderers.default = "course_book"
    elif "google.colab" in sys.modules:
        pio.renderers.default = "colab"
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


def static_twin(builder: Callable, grid: dict[str, list], *, fixed: dict | None = None, label: str | None = None):
    """One plotly figure holding ``builder`` at every point of ``grid``, with a slider.

    Works without a kernel (static HTML): each slider step shows the traces built for one
    combination of settings and applies that figure's title. Every figure the builder
    returns for the grid must have the same kind of layout (axes, subplots).
    """
    import plotly.graph_objects as go

    if not grid or not all(isinstance(v, (list, tuple)) and v for v in grid.values()):
        raise ValueError("grid must map each setting name to a non-empty list of values")
    fixed = fixed or {}
    names = list(grid)
    combos = list(itertools.product(*(grid[n] for n in names)))
    figs = [builder(**dict(zip(names, c)), **fixed) for c in combos]
    out = go.Figure(layout=figs[0].layout)
    spans, titles = [], []
    for f in figs:
        start = len(out.data)
        out.add_traces(list(f.data))
        spans.append((start, len(out.data)))
        titles.append(f.layout.title.text if f.layout.title and f.layout.title.text else "")
    n = len(out.data)
    steps = []
    for (a, b), c, title in zip(spans, combos, titles):
        visible = [a <= i < b for i in range(n)]
        steps.append(
            dict(
                method="update",
                label=", ".join(f"{v}" for v in c) if len(names) > 1 else f"{c[0]}",
                args=[{"visible": visible}, {"title.text": title}],
            )
        )
    for i, tr in enumerate(out.data):
        tr.visible = spans[0][0] <= i < spans[0][1]
    prefix = label or ", ".join(names)
    out.update_layout(
        sliders=[dict(active=0, steps=steps, currentvalue=dict(prefix=f"{prefix}: "), pad=dict(t=50))],
        title_text=titles[0],
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
