"""AppTests of the Capacity page on the tiny random model: a short ladder fitted from the page, drawn from the cache,
the layouts, the timing, and bad input."""

from __future__ import annotations

import json

import pytest

from tests.conftest import open_page
from tests.test_page_attention import _array
from ui.widgets import plain

PAGE = "pages/capacity.py"
LADDER_JOB, LAYOUT_JOB = "job::capacity-ladder", "job::capacity-layouts"


def _figures(at) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


@pytest.fixture
def few_steps(monkeypatch):
    import ui.state
    from core.engine.fit import preset

    # A few steps are enough to check the page; AppTest does not reach the sidebar's widgets.
    monkeypatch.setattr(ui.state, "fit_config", lambda: preset("fast", max_steps=40))


def test_a_short_ladder_is_fitted_from_the_page_then_drawn_from_the_cache(app_cache, few_steps):
    at = open_page(PAGE, query={"cap_sources": "bread", "cap_max": "5"})
    assert not at.exception, at.exception
    assert any("Fit the ladder" in i.value for i in at.info)
    at.button(key="cap_fit").click().run()
    assert not at.exception, at.exception
    snap = at.session_state[LADDER_JOB].wait(300)
    assert snap.state == "done", snap.error
    at.run()
    assert not at.exception, at.exception
    ladder = next(f for f in _figures(at) if f["layout"]["title"]["text"] == "Accuracy along the ladder")
    assert ladder["data"][0]["name"] == "bread" and len(ladder["data"][0]["customdata"]) >= 1
    assert "C_tokens" in ladder["data"][0]["hovertemplate"]
    table = at.dataframe[0].value
    assert "Pythia-160M (paper)" in table["model"].tolist() and "mean" in table["texts"].tolist()
    # the ladder's entries are in the H_LM scatter
    information = next(f for f in _figures(at) if "H_LM" in f["layout"]["title"]["text"])
    assert information["data"][0]["name"] == "ladder"
    # the seed paper's count: the tiny tokenizer has no BOS token, so the N positions, and the captions say so
    at.sidebar.radio(key="count").set_value("bos").run()
    assert not at.exception, at.exception
    assert any("Accuracy over N + 1" in c.value and "without e's BOS prediction recorded" in c.value
               for c in at.caption)
    # a second visit draws the same ladder at once, without fitting
    again = open_page(PAGE, query={"cap_sources": "bread", "cap_max": "5"})
    assert not again.exception and any(f["layout"]["title"]["text"] == "Accuracy along the ladder"
                                       for f in _figures(again))


def test_the_layouts_and_the_timing_run_from_the_page(app_cache, few_steps):
    at = open_page(PAGE, query={"cap_sources": "bread", "cap_max": "4", "cap_ab_length": "4", "cap_ab_steps": "50"})
    at.button(key="cap_layouts_fit").click().run()
    snap = at.session_state[LAYOUT_JOB].wait(300)
    assert snap.state == "done", snap.error
    at.run()
    assert not at.exception, at.exception
    bars = next(f for f in _figures(at) if f["layout"]["title"]["text"] == "Accuracy per layout")
    assert _array(bars["data"][1]["y"]).tolist() == [0.01, 0.01, 0.17, 0.97, 0.99]
    assert len(bars["data"][0]["x"]) == 5


def test_your_own_text_too_long_for_the_model_is_one_line(app_cache, few_steps):
    at = open_page(PAGE, query={"cap_sources": "your text"})
    at.text_area(key="cap_text").set_value("x" * 5000).run()
    assert not at.exception
    assert [e for e in at.error if e.value.startswith(plain("Your text cannot be fitted"))]
    assert any("Choose at least one source" in i.value for i in at.info)
