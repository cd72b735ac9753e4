"""The Regularisers page through streamlit's AppTest, with the tiny random model and the demo set."""

from __future__ import annotations

import json

from tests.conftest import open_page
from ui.widgets import plain

PAGE = "pages/regularisers.py"
JOB = "job::regularisers"


def _figure(chart) -> dict:
    return json.loads(chart.proto.spec)


def test_page_renders_with_explanation_and_fit_button(app_cache):
    at = open_page(PAGE)
    assert not at.exception, at.exception
    assert at.title[0].value == "Regularisers"
    assert any("anchor" in m.value and "relational" in m.value for m in at.markdown)
    assert any("None of these settings is fitted yet" in i.value for i in at.info)
    assert at.button(key="reg_fit").label == "Fit 5 settings"
    assert not at.get("plotly_chart")


def test_bad_lambdas_show_an_error(app_cache):
    at = open_page(PAGE)
    at.text_input(key="reg_lambdas").set_value("0.1, abc").run()
    assert not at.exception
    # Shown as text: the message quotes what was typed, so it is escaped for Markdown.
    assert any(plain("Invalid λ values") in e.value and plain("'abc' is not a number") in e.value for e in at.error)
    at.text_input(key="reg_lambdas").set_value("-1").run()
    assert any(plain("> 0") in e.value for e in at.error)


def test_small_sweep_ends_with_the_tradeoff_chart(app_cache, monkeypatch):
    import ui.state
    from core.engine.fit import preset

    # A few steps are enough to check the page; AppTest does not reach the sidebar's widgets.
    monkeypatch.setattr(ui.state, "fit_config", lambda: preset("first-paper", max_steps=8))
    at = open_page(PAGE)
    at.multiselect(key="reg_kinds").set_value(["relational"])
    at.text_input(key="reg_lambdas").set_value("1").run()
    assert at.button(key="reg_fit").label == "Fit 2 settings"
    at.button(key="reg_fit").click().run()
    assert not at.exception, at.exception
    # The progress panel shows right away, without another interaction (a fragment polls it from then on).
    assert any(b.label == "Stop" for b in at.button) and at.button(key="reg_fit").disabled
    snap = at.session_state[JOB].wait(180)
    assert snap.state == "done", snap.error
    at.run()
    assert not at.exception, at.exception

    charts = at.get("plotly_chart")
    assert len(charts) == 3  # trade-off, silhouette, the two maps
    tradeoff = _figure(charts[0])
    labels = [label for trace in tradeoff["data"] for label in trace.get("text", [])]
    assert "none" in labels and "relational λ=1" in labels
    assert "alignment" in tradeoff["layout"]["xaxis"]["title"]["text"]
    maps = _figure(charts[2])
    assert len({trace.get("xaxis", "x") for trace in maps["data"]}) == 2  # side by side
    summary = at.dataframe[0].value
    assert summary["setting"].tolist() == ["none", "relational λ=1"]
    assert not any("None of these settings" in i.value for i in at.info)
    assert not [b for b in at.button if b.key == "reg_fit"]  # nothing left to fit
    # The sweep can be taken away as a report (core.report.figures_report, tested in test_report.py).
    assert [b for b in at.get("download_button") if b.proto.label == "Report (HTML)"]
    # the seed paper's count: the tiny tokenizer has no BOS token, so the N positions, and the page says so
    at.sidebar.radio(key="count").set_value("bos").run()
    assert not at.exception, at.exception
    assert any("without e's BOS prediction recorded count N positions" in c.value for c in at.caption)
    assert at.dataframe[0].value["accuracy"].tolist() == summary["accuracy"].tolist()
