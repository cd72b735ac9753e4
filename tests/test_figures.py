"""core.figures: the publication style, and SVG / PNG export through kaleido with the system Chromium."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import plotly.graph_objects as go
import pytest

import core.figures as figures
from core.figures import OKABE_ITO, PUBLICATION_FONT, ExportError, export_figure, publication_style
from core.figures.reconstruct import curves_figure, tokens_html
from scripts.browser import chromium_available

needs_chromium = pytest.mark.skipif(not chromium_available(), reason="Chromium not installed (apt-get install "
                                    "chromium chromium-driver); static export skipped")


def _figure() -> go.Figure:
    fig = go.Figure(go.Scatter(x=[0, 1, 2], y=[0.2, 0.9, 1.0], name="accuracy", line=dict(color="#123456")))
    fig.add_scatter(x=[0, 1, 2], y=[3.0, 1.0, 0.1], name="loss", line=dict(color="#abcdef"))
    fig.update_layout(title="Fit of a <b>text</b>", height=300)
    return fig


def test_publication_style_is_light_large_and_colour_blind_safe_and_leaves_the_original_alone():
    fig = _figure()
    styled = publication_style(fig)
    assert styled.layout.font.size == PUBLICATION_FONT and styled.layout.paper_bgcolor == "white"
    assert styled.layout.plot_bgcolor == "white" and tuple(styled.layout.colorway) == OKABE_ITO
    assert [t.line.color for t in styled.data] == list(OKABE_ITO[:2])  # explicit colours move to the palette
    assert [t.line.color for t in fig.data] == ["#123456", "#abcdef"] and fig.layout.font.size is None


def test_a_heatmap_keeps_its_colour_scale_in_the_publication_style():
    fig = go.Figure(go.Heatmap(z=[[0, 1], [1, 0]], colorscale="Viridis"))
    assert publication_style(fig).data[0].colorscale == fig.data[0].colorscale


@needs_chromium
def test_svg_export_parses_and_carries_the_title():
    svg = export_figure(_figure(), "svg", publication=True)
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg")
    texts = " ".join("".join(node.itertext()) for node in root.iter() if node.tag.endswith("text"))
    assert "Fit of a" in texts and "text" in texts, texts[:300]
    assert root.get("width") == str(figures.SLIDE_WIDTH)


@needs_chromium
def test_png_export_is_a_png_at_twice_the_slide_size():
    png = export_figure(_figure(), "png", width=640, height=360)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (640 * figures.PNG_SCALE, 360 * figures.PNG_SCALE)


def test_without_chromium_export_says_why_in_one_line(monkeypatch):
    monkeypatch.setattr(figures, "_browser", lambda: None)
    problem = figures.static_export_problem()
    assert problem and "Chromium" in problem and "\n" not in problem
    with pytest.raises(ExportError, match="Chromium"):
        export_figure(_figure(), "svg")
    with pytest.raises(ExportError, match="Unknown figure format"):
        export_figure(_figure(), "gif")


def test_tokens_html_escapes_user_tokens_and_colours_right_and_wrong():
    out = tokens_html(["<script>", "ok", "\n"], [False, True, True], "t<i>")
    assert "<script>" not in out and "&lt;script&gt;" in out and "t&lt;i&gt;" in out
    assert out.count("#c0392b") == 1 and out.count("#1b7f3b") == 2 and "\u21b5" in out


def test_curves_figure_draws_loss_and_accuracy_with_the_threshold():
    fig = curves_figure([0, 1, 2], [3.0, 1.0, 0.5], [0.1, 0.5, 1.0], 0.99)
    assert [t.name for t in fig.data] == ["loss", "token accuracy"]
    assert any(shape.y0 == 0.99 for shape in fig.layout.shapes)
