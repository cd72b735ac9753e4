"""AppTest of the Attention page on a cached entry of the tiny random model."""

from __future__ import annotations

import base64
import json

import numpy as np

from tests.conftest import open_page


def _figures(at) -> list[dict]:
    """The plotly figures on the page, as their JSON specs (plotly charts have no typed accessor)."""
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def _array(value) -> np.ndarray:
    """A figure array: plotly writes numpy arrays as base64 typed arrays, other data as lists."""
    if isinstance(value, dict) and "bdata" in value:
        flat = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        shape = tuple(int(s) for s in str(value.get("shape", len(flat))).split(","))
        return flat.reshape(shape)
    return np.array(value, dtype=float)


def _titles(at) -> list[str]:
    return [fig["layout"]["title"]["text"] for fig in _figures(at)]


def test_page_renders_the_three_figures(tiny_entry):
    at = open_page("pages/attention.py", tiny_entry.key)
    assert not at.exception
    assert at.title[0].value == "Attention"
    assert any("attention sinks" in m.value for m in at.markdown)
    figures = _figures(at)
    assert len(figures) == 3
    layers, heads, n = 4, 4, tiny_entry.n_tokens
    by_layer, by_head, grid = (fig["data"][0] for fig in figures)
    assert all(trace["type"] == "heatmap" for trace in (by_layer, by_head, grid))
    assert _array(by_layer["z"]).shape == (layers, n)
    assert _array(by_head["z"]).shape == (heads, n)
    assert _array(grid["z"]).shape == (heads, layers)
    assert by_layer["x"][:2] == ["0:H", "1:e"]  # positions labelled "k:token"
    assert "%{z:.4f}" in by_layer["hovertemplate"] and "customdata" in by_layer["hovertemplate"]

    # The toggle: baseline, then the difference, then max over heads.
    at.radio(key="attention_view").set_value("baseline").run()
    assert not at.exception
    assert "first token" in _titles(at)[0]
    baseline = _figures(at)[0]["data"][0]
    assert np.isnan(_array(baseline["z"])[:, 0]).all()  # no plain-token query predicts the first token
    at.radio(key="attention_view").set_value("difference").run()
    assert not at.exception
    difference = _figures(at)[0]["data"][0]
    assert "Difference" in _titles(at)[0]
    assert difference["zmid"] == 0 and "e: %{customdata[1]" in difference["hovertemplate"]
    at.radio(key="attention_heads").set_value("max").run()
    assert not at.exception and "max over heads" in _titles(at)[0]


def test_one_head_map_only_on_request_and_downloads(tiny_entry):
    at = open_page("pages/attention.py", tiny_entry.key)
    assert len(_figures(at)) == 3
    at.button(key="attention_map_compute").click().run()
    assert not at.exception
    figures = _figures(at)
    assert len(figures) == 4
    head = figures[3]["data"][0]
    size = tiny_entry.n_tokens + 1
    assert _array(head["z"]).shape == (size, size)
    assert head["x"][0] == "0:e" and head["y"][1] == "1:m→H"
    # Another head of the same layer comes from the cached layer without a button.
    at.number_input(key="attention_map_head").set_value(1).run()
    assert len(_figures(at)) == 4
    at.toggle(key="attention_downloads").set_value(True).run()
    assert not at.exception
    labels = [b.proto.label for b in at.get("download_button")]
    # The view's CSV, the report, and four figures (layer x position, layer x head, one layer, one head's map)
    # each as HTML, SVG and PNG.
    assert labels.count("CSV: layer, head, query, token, value") == 1 and labels.count("Report (HTML)") == 1
    assert labels.count("SVG") == labels.count("PNG") == labels.count("HTML (interactive)") == 4


def test_empty_cache_shows_the_hint(app_cache):
    at = open_page("pages/attention.py")
    assert not at.exception
    assert any("Nothing fitted yet" in info.value for info in at.info)
    assert not at.get("plotly_chart")


def test_the_caption_counts_es_bos_prediction_when_the_sidebar_asks(tiny_entry, app_cache):
    import dataclasses

    # an entry that records e's BOS prediction (the tiny tokenizer has none: set by hand, as a BOS model records it)
    app_cache.put(dataclasses.replace(tiny_entry, metrics={**tiny_entry.metrics, "bos_correct": False}))
    n = tiny_entry.n_tokens
    lab = open_page("pages/attention.py", tiny_entry.key)
    assert any(f"{n} tokens, layout e+m*N, accuracy {tiny_entry.metrics['accuracy']:.3f};" in c.value
               for c in lab.caption)
    seed = open_page("pages/attention.py", tiny_entry.key, session_state={"count": "bos"})
    assert not seed.exception, seed.exception
    expected = tiny_entry.metrics["accuracy"] * n / (n + 1)
    assert any(f"accuracy {expected:.3f} over N + 1, e's BOS prediction included;" in c.value for c in seed.caption)
