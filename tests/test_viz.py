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
