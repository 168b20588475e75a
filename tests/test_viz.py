import plotly.graph_objects as go
import pytest

from course_lib import viz


def _builder(a=1, b="x"):
    fig = viz.figure(title_text=f"a={a} b={b}")
    fig.add_scatter(x=[0, 1], y=[0, a], name=b)
    return fig


def test_static_twin_slider_shows_one_combination_at_a_time():
    fig = viz.static_twin(_builder, {"a": [1, 2, 3], "b": ["x", "y"]})
    assert len(fig.data) == 6
    steps = fig.layout.sliders[0].steps
    assert len(steps) == 6
    for i, s in enumerate(steps):
        vis = s.args[0]["visible"]
        assert sum(vis) == 1 and vis[i]
    assert [t.visible for t in fig.data] == [True] + [False] * 5
    assert steps[3].args[1]["title.text"] == "a=2 b=y"


def test_static_twin_bad_grid():
    with pytest.raises(ValueError, match="grid"):
        viz.static_twin(_builder, {})
    with pytest.raises(ValueError, match="grid"):
        viz.static_twin(_builder, {"a": []})


def test_interactive_recomputes_on_change():
    box = viz.interactive(_builder, a=(1, 5, 1), b=["x", "y"])
    assert box.current_figure().data[0].y[1] == 1
    box.controls["a"].value = 4
    box.controls["b"].value = "y"
    fig = box.current_figure()
    assert fig.data[0].y[1] == 4 and fig.data[0].name == "y"


def test_interactive_bad_control():
    with pytest.raises(TypeError, match="control"):
        viz.interactive(_builder, a=object())


def test_table_renders():
    t = viz.Table([{"x": 1, "y": 2.5}, {"x": 1234567, "z": "<b>"}], caption="c")
    assert "&lt;b&gt;" in t._repr_html_() and "1,234,567" in t.to_markdown()
    assert t.columns == ["x", "y", "z"]
    with pytest.raises(TypeError):
        viz.Table("nope")


def test_show_source_points_to_file():
    from course_lib.model import RMSNorm

    md = viz.show_source(RMSNorm)
    assert "course_lib/model.py" in md.data and "class RMSNorm" in md.data
    with pytest.raises(TypeError):
        viz.show_source(3)


def test_style_template_registered():
    import plotly.io as pio

    viz.use_style()
    assert pio.templates.default == "course"
    assert isinstance(viz.figure(), go.Figure)


def test_interactive_in_book_build_shows_a_note_not_a_figure(monkeypatch):
    monkeypatch.setenv("COURSE_BOOK_BUILD", "1")
    box = viz.interactive(_builder, a=(1, 5, 1))
    assert "Live explorer" in box.children[1].value
    assert box.current_figure().data[0].y[1] == 1


def test_show_source_unwraps_decorated_functions():
    import torch

    @torch.no_grad()
    def decorated(x):
        return x

    md = viz.show_source(decorated)
    assert "tests/test_viz.py" in md.data and "def decorated" in md.data


def test_book_renderer_gives_every_figure_its_own_div(monkeypatch):
    """Plotly renders through a copy of the renderer; ids must still count up (duplicates draw once)."""
    import re

    import plotly.graph_objects as go
    import plotly.io as pio

    monkeypatch.setenv("COURSE_BOOK_BUILD", "1")
    before = pio.renderers.default
    try:
        assert viz.configure_plotly_renderer() == "course_book"
        html = [go.Figure(go.Scatter(y=[1, 2]))._repr_mimebundle_()["text/html"] for _ in range(3)]
        ids = [re.search(r'id="(course-fig-\d+)"', h).group(1) for h in html]
        assert len(set(ids)) == 3
        assert all("plotly.min.js" not in h and "<script src" not in h for h in html)  # the site's one copy
    finally:
        pio.renderers.default = before


# --------------------------------------------------------------------------- tidy


def _layout(fig):
    return fig.to_dict()["layout"] if isinstance(fig, go.Figure) else fig["layout"]


def _six_lines(n=6, name="series"):
    fig = go.Figure()
    for i in range(n):
        fig.add_scatter(x=[1, 2, 3], y=[i, i + 1, i + 2], name=f"{name} {i}")
    return fig


def test_tidy_wraps_a_long_title_at_word_boundaries():
    title = "How the cost of attention grows with the sequence length when the window is fixed at 64 tokens"
    fig = viz.tidy(go.Figure(layout=dict(title_text=title)))
    text = fig.layout.title.text
    assert "<br>" in text and text.replace("<br>", " ") == title
    assert all(len(line) <= viz._chars_for(viz.DEFAULT_WIDTH - 40, 18) for line in text.split("<br>"))
    assert fig.layout.margin.t >= 10 + 2 * 18  # two lines fit above the plot
    narrow = viz.tidy(go.Figure(layout=dict(title_text=title)), width=viz.PHONE_WIDTH)
    assert narrow.layout.title.text.count("<br>") > text.count("<br>")


def test_wrap_text_keeps_tags_and_math_whole_and_is_idempotent():
    text = "the <b>bold phrase here</b> and $a + b = c$ then <sup>super script</sup> end of the line"
    wrapped = viz.wrap_text(text, 12)
    assert "<b>bold phrase here</b>" in wrapped and "$a + b = c$" in wrapped
    assert "<sup>super script</sup>" in wrapped
    assert viz.wrap_text(wrapped, 12) == wrapped
    assert viz.wrap_text("short", 40) == "short"
    assert viz.wrap_text("a<br>b", 40) == "a<br>b"  # the author's breaks stay
    assert viz.wrap_text("MiniLM, T = 0.8 and x ≈ 3", 10) == "MiniLM,<br>T = 0.8<br>and x ≈ 3"


def test_tidy_is_pure_and_idempotent():
    from plotly.subplots import make_subplots

    fig = make_subplots(2, 2, subplot_titles=["a rather long subplot title number one"] * 4)
    for i in range(4):
        fig.add_scatter(y=[1, 2, 3], row=i // 2 + 1, col=i % 2 + 1, name=f"a long trace name number {i}")
        fig.update_xaxes(title_text="confidence (ECE 0.041) of the model", row=i // 2 + 1, col=i % 2 + 1)
    fig.update_layout(title_text="Reliability of the small model, the large model and of the cascade of both")
    before = fig.to_dict()
    once = viz.tidy(fig)
    assert fig.to_dict() == before  # the input is untouched
    assert viz.tidy(once) == once
    d = viz.tidy(fig.to_dict())
    assert isinstance(d, dict) and viz.tidy(d) == d
    with pytest.raises(TypeError, match="fig"):
        viz.tidy("figure")
    with pytest.raises(ValueError, match="width"):
        viz.tidy(fig, width=10)


def test_tidy_sets_automargin_on_every_axis_of_every_subplot():
    from plotly.subplots import make_subplots

    fig = make_subplots(2, 3)
    for i in range(6):
        fig.add_bar(x=["a", "b"], y=[1, 2], row=i // 3 + 1, col=i % 3 + 1)
    lay = _layout(viz.tidy(fig))
    keys = [k for k in lay if k.startswith(("xaxis", "yaxis"))]
    assert len(keys) == 12 and all(lay[k]["automargin"] is True for k in keys)
    plain = _layout(viz.tidy(go.Figure(go.Scatter(y=[1, 2], xaxis="x2", yaxis="y3"))))
    assert plain["xaxis2"]["automargin"] and plain["yaxis3"]["automargin"]
    assert "xaxis" not in _layout(viz.tidy(go.Figure(go.Pie(values=[1, 2]))))  # no axes invented


def test_tidy_wraps_subplot_titles_to_their_column_and_makes_room_between_rows():
    from plotly.subplots import make_subplots

    long = "window plus four global tokens as in BigBird"
    fig = make_subplots(2, 2, subplot_titles=[long] * 4)
    for i in range(4):
        fig.add_scatter(y=[1, 2], row=i // 2 + 1, col=i % 2 + 1)
    fig.update_xaxes(title_text="key position")
    out = viz.tidy(fig)
    assert all("<br>" in a.text for a in out.layout.annotations)
    # the top row's x titles and the bottom row's (two-line) subplot titles need a taller figure
    assert out.layout.height > 450


def test_tidy_lifts_subplot_titles_clear_of_a_top_tick_label():
    """A y tick at the top of a panel stands half its height above it (CI: "140" under
    "weights (MB)" of the panel beside it, at 390 px): titles are raised by more than that."""
    from plotly.subplots import make_subplots

    fig = make_subplots(1, 3, subplot_titles=("ppl", "weights (MB)", "latency now (ms)"))
    for col in (1, 2, 3):
        fig.add_scatter(y=[12, 141], row=1, col=col)
    fig.update_layout(title="a title above the subplot titles", margin_t=10)
    for width in (None, viz.PHONE_WIDTH):
        out = viz.tidy(fig, width=width)
        tick = out.layout.font.size or 12
        assert all(a.yshift >= 0.6 * tick for a in out.layout.annotations)
        assert out.layout.margin.t >= 10 + 16 * 1.3 + 16 * 1.3 + min(a.yshift for a in out.layout.annotations)
    author = make_subplots(1, 2, subplot_titles=("a", "b"))
    author.layout.annotations[0].yshift = 30
    assert [a.yshift for a in viz.tidy(author).layout.annotations][0] == 30  # the author's shift stays


def test_tidy_moves_a_long_legend_below_the_axis_and_grows_the_margin():
    fig = _six_lines()
    fig.update_layout(xaxis_title="step")
    out = viz.tidy(fig)
    leg = out.layout.legend
    assert leg.orientation == "h" and leg.yanchor == "top" and leg.y < 0
    assert out.layout.margin.b > 50
    # the legend's top is below the x-axis title: at least tick labels + title below the plot
    plot_h = out.layout.height - out.layout.margin.t - out.layout.margin.b
    assert -leg.y * plot_h >= 13 * 1.3 + 16 * 1.3
    few = viz.tidy(_six_lines(2, "x"))
    assert few.layout.legend.orientation is None  # two short entries stay where plotly puts them
    assert viz.tidy(_six_lines(2, "a very long legend entry name")).layout.legend.orientation == "h"


def test_tidy_puts_the_slider_label_below_axis_title_and_legend():
    twin = viz.static_twin(lambda k=1: _six_lines(), {"k": [1, 2, 3]})
    twin.update_layout(xaxis_title="step")
    out = viz.tidy(twin)
    slider = out.layout.sliders[0]
    plot_h = out.layout.height - out.layout.margin.t - out.layout.margin.b
    legend_top = -out.layout.legend.y * plot_h
    assert slider.pad.t > legend_top  # the current-value label sits under the legend
    assert out.layout.margin.b >= slider.pad.t + 60  # and the slider fits in the margin


def test_tidy_log_axes_label_decades_or_full_numbers():
    wide = viz.tidy(go.Figure(go.Scatter(x=[1, 10, 100, 1000], y=[1, 2, 3, 4]), layout=dict(xaxis_type="log")))
    assert wide.layout.xaxis.dtick == 1 and wide.layout.xaxis.minor.dtick == "D1"
    narrow = viz.tidy(go.Figure(go.Scatter(x=[1, 2], y=[15, 80]), layout=dict(yaxis_type="log")))
    assert list(narrow.layout.yaxis.tickvals) == [20, 50]
    assert list(narrow.layout.yaxis.ticktext) == ["20", "50"]
    many = viz.tidy(go.Figure(go.Scatter(x=[1e-3, 1e15], y=[1, 2]), layout=dict(xaxis_type="log")))
    assert many.layout.xaxis.dtick == 3  # 18 decades: every third labelled
    own = go.Figure(go.Scatter(x=[1, 1000], y=[1, 2]), layout=dict(xaxis_type="log", xaxis_dtick="D2"))
    assert viz.tidy(own).layout.xaxis.dtick == "D2"  # an author's choice stays


def test_tidy_treats_only_log_axes_as_log_in_subplots():
    # the first panel's log axis must not make the others log: a linear panel from 9 to 102 ms
    # once got a tick every unit (93 labels piled on each other)
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2)
    fig.add_scatter(x=[0, 1], y=[70, 500], row=1, col=1)
    fig.add_scatter(x=[0, 1], y=[9, 102], row=1, col=2)
    fig.update_yaxes(type="log", row=1, col=1)
    out = viz.tidy(fig)
    assert list(out.layout.yaxis.tickvals) == [100, 200, 500]  # the log panel: a 1-2-5 series
    assert out.layout.yaxis2.dtick is None and out.layout.yaxis2.tickvals is None  # plotly's own linear ticks


def test_tidy_sizes_a_table_to_its_rows():
    def table(n):
        fig = go.Figure(go.Table(header=dict(values=["q", "answer"]), cells=dict(values=[list(range(n))] * 2)))
        fig.update_layout(height=250, title_text="t")
        return viz.tidy(fig)

    five, ten = table(5), table(10)
    m = five.layout.margin
    assert five.layout.height >= m.t + m.b + 28 + 5 * 20
    assert 5 * 20 <= ten.layout.height - five.layout.height <= 5 * 31  # one line per row: 20–31 px each
    wrapped = go.Figure(go.Table(cells=dict(values=[["word " * 60] * 3])))
    assert viz.tidy(wrapped).layout.height > viz.tidy(go.Figure(go.Table(cells=dict(values=[["w"] * 3])))).layout.height


def test_tidy_widens_a_table_column_to_its_longest_word_and_wraps_cells_with_breaks():
    # CI's static twins on a phone: "categorization)" cut in a narrow column, and a cell
    # holding <br> (plotly.js then never wraps it) running 120 px out of the table
    long_line = "the runtime parsed the call, ran the calculator and got back minus fifty thousand"
    fig = go.Figure(
        go.Table(
            columnwidth=[90, 110, 240],
            header=dict(values=["score", "article", "passage"]),
            cells=dict(values=[["9.27"], ["Race (human categorization)"], [f"{long_line}<br>second line"]]),
        ),
        layout=dict(margin=dict(l=10, r=10)),
    )
    wide, phone = viz.tidy(fig), viz.tidy(fig, width=viz.PHONE_WIDTH)
    assert wide.data[0].columnwidth == (90, 110, 240)  # room enough at the book's width: untouched
    cw = phone.data[0].columnwidth
    assert phone.layout.margin.l == phone.layout.margin.r == viz.TABLE_SIDE_PX  # no axes: the width is the table's
    table_w = viz.PHONE_WIDTH - 2 * viz.TABLE_SIDE_PX
    article_px = table_w * cw[1] / sum(cw)
    assert article_px >= len("categorization)") * 12 * viz.CHAR_EM + 18
    assert cw[2] / cw[0] == pytest.approx(240 / 90, rel=1e-3)  # the others keep their proportion
    cell = phone.data[0].cells.values[2][0]
    assert cell.count("<br>") >= 3 and cell.endswith("<br>second line")
    assert all(len(line) <= 40 for line in cell.split("<br>"))
    assert phone.layout.height > wide.layout.height  # the wrapped rows are counted
    assert viz.tidy(phone, width=viz.PHONE_WIDTH) == phone  # idempotent
    # the book switches the tables with the layout on a phone
    script = viz._narrow_script(wide.to_plotly_json(), phone.to_plotly_json())
    assert "Plotly.restyle(gd" in script and "columnwidth" in script and ",[0]);" in script
    assert viz.table_restyle(wide.to_plotly_json(), wide.to_plotly_json())[2] == []
    assert viz._shares_with_floors([1, 1], [300, 100], 200) == [150, 50]  # floors too wide: shared by need
    assert viz._shares_with_floors([1, 3], [80, 0], 200) == [80, 120]


def test_tidy_wraps_long_slider_labels_on_a_phone_and_grows_the_margin():
    labels = {k: f"search · calculator · threshold {k} · fp32" for k in (0.5, 0.99)}
    twin = viz.static_twin(
        lambda k=0.5: go.Figure(go.Scatter(y=[k])),
        {"k": list(labels)},
        step_label=lambda s: labels[s["k"]],
        label="set",
    )
    wide, phone = viz.tidy(twin), viz.tidy(twin, width=viz.PHONE_WIDTH)
    assert all("<br>" not in st.label for st in wide.layout.sliders[0].steps)
    steps = phone.layout.sliders[0].steps
    assert all("<br>" in st.label for st in steps)
    assert all(" ·<br>" in st.label or "<br>·" not in st.label for st in steps)  # never a line opening with "·"
    assert phone.layout.margin.b > wide.layout.margin.b
    assert viz.tidy(phone, width=viz.PHONE_WIDTH).layout.sliders == phone.layout.sliders


def test_tidy_grows_fonts_under_ten_pixels():
    fig = go.Figure(go.Heatmap(z=[[1, 2]], text=[["a", "b"]], texttemplate="%{text}", textfont=dict(size=7)))
    fig.add_annotation(text="note", font=dict(size=8))
    out = viz.tidy(fig)
    assert out.data[0].textfont.size == 10 and out.layout.annotations[0].font.size == 10
    assert fig.data[0].textfont.size == 7


def test_tidy_hides_crowded_slider_step_labels_but_not_the_current_value():
    twin = viz.static_twin(lambda k=1: go.Figure(go.Scatter(y=[k])), {"k": list(range(30))})
    slider = viz.tidy(twin).layout.sliders[0]
    assert slider.font.color == "rgba(0,0,0,0)" and slider.currentvalue.font.color != "rgba(0,0,0,0)"
    few = viz.tidy(viz.static_twin(lambda k=1: go.Figure(go.Scatter(y=[k])), {"k": [1, 2]})).layout.sliders[0]
    assert few.font.color is None


def test_book_renderer_html_has_no_cloud_button_and_a_tidy_figure(monkeypatch):
    import json
    import re

    import plotly.io as pio

    monkeypatch.setenv("COURSE_BOOK_BUILD", "1")
    before = pio.renderers.default
    try:
        viz.configure_plotly_renderer()
        fig = go.Figure(go.Scatter(y=[1, 2]), layout=dict(title_text="word " * 40))
        html = fig._repr_mimebundle_()["text/html"]
    finally:
        pio.renderers.default = before
    config = json.loads(re.search(r"\{[^{}]*\"displaylogo\"[^{}]*\}", html).group(0))
    assert config["showSendToCloud"] is False and config["displaylogo"] is False
    assert "sendChartToCloud" in config["modeBarButtonsToRemove"]
    assert "\\u003cbr\\u003e" in html  # tidy ran (plotly escapes "<" in the JSON it writes)
    assert "Plotly.relayout" in html  # and the phone layout is there for narrow columns


def test_notebook_renderers_are_course_subclasses_that_tidy(monkeypatch):
    import plotly.io as pio
    from plotly.io._base_renderers import ColabRenderer, PlotlyRenderer

    monkeypatch.delenv("COURSE_BOOK_BUILD", raising=False)
    before = pio.renderers.default
    try:
        pio.renderers.default = "plotly_mimetype+notebook"
        assert viz.configure_plotly_renderer() == "course_mimetype+course_notebook"
        assert viz.configure_plotly_renderer() == "course_mimetype+course_notebook"  # idempotent
    finally:
        pio.renderers.default = before
    lab, colab = pio.renderers["course_mimetype"], pio.renderers["course_colab"]
    assert isinstance(lab, PlotlyRenderer) and isinstance(colab, ColabRenderer)
    fig = go.Figure(go.Scatter(y=[1, 2]), layout=dict(title_text="word " * 40)).to_dict()
    bundle = lab.to_mimebundle(fig)["application/vnd.plotly.v1+json"]
    assert "<br>" in bundle["layout"]["title"]["text"] and bundle["config"]["showSendToCloud"] is False
    assert "\\u003cbr\\u003e" in colab.to_mimebundle(fig)["text/html"]


# --------------------------------------------------------------------------- static_twin


def _two_panels(run="a", layer=0):
    from plotly.subplots import make_subplots

    fig = make_subplots(1, 2, subplot_titles=[f"layer {layer}, during training", f"{run} by position"])
    fig.add_scatter(y=[layer, 1], row=1, col=1)
    fig.add_bar(y=[1, 2], row=1, col=2)
    fig.update_layout(title_text=f"run {run}, layer {layer}")
    return fig


def test_static_twin_labels_are_name_value_pairs_not_tuples():
    fig = viz.static_twin(_two_panels, {"run": ["a", "b"], "layer": [0, 3]})
    labels = [s.label for s in fig.layout.sliders[0].steps]
    assert labels[0] == "run = a, layer = 0" and labels[3] == "run = b, layer = 3"
    assert fig.layout.sliders[0].currentvalue.prefix == ""
    custom = viz.static_twin(_builder, {"a": [0.5, 0.25]}, step_label=lambda s: f"threshold {s['a']:.2f}")
    assert [s.label for s in custom.layout.sliders[0].steps] == ["threshold 0.50", "threshold 0.25"]
    assert viz.static_twin(_builder, {"a": [1]}, label="a").layout.sliders[0].currentvalue.prefix == "a: "


def test_static_twin_steps_carry_title_and_subplot_titles():
    fig = viz.static_twin(_two_panels, {"run": ["a", "b"], "layer": [0, 3]})
    step = fig.layout.sliders[0].steps[3]
    assert step.args[1]["title.text"] == "run b, layer 3"
    assert [a["text"] for a in step.args[1]["annotations"]] == ["layer 3, during training", "b by position"]


def test_static_twin_start_picks_the_first_visible_step():
    fig = viz.static_twin(_two_panels, {"run": ["a", "b"], "layer": [0, 3]}, start={"layer": 3})
    slider = fig.layout.sliders[0]
    assert slider.active == 1 and fig.layout.title.text == "run a, layer 3"
    assert [t.visible for t in fig.data] == [False, False, True, True, False, False, False, False]
    assert fig.layout.annotations[0].text == "layer 3, during training"
    full = viz.static_twin(_two_panels, {"run": ["a", "b"], "layer": [0, 3]}, start={"run": "b", "layer": 0})
    assert full.layout.sliders[0].active == 2


def test_static_twin_bad_input_names_the_problem():
    grid = {"run": ["a", "b"], "layer": [0, 3]}
    with pytest.raises(ValueError, match="lyr"):
        viz.static_twin(_two_panels, grid, start={"lyr": 3})
    with pytest.raises(ValueError, match="layer.*7"):
        viz.static_twin(_two_panels, grid, start={"layer": 7})
    with pytest.raises(TypeError, match="start"):
        viz.static_twin(_two_panels, grid, start=("a", 0))
    with pytest.raises(TypeError, match="step_label"):
        viz.static_twin(_two_panels, grid, step_label="run")
    with pytest.raises(TypeError, match="step_label"):
        viz.static_twin(_two_panels, grid, step_label=lambda s: 3)
