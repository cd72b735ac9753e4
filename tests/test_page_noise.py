"""The Noise page through streamlit's AppTest, on an entry fitted with the tiny model."""

from __future__ import annotations

import json
import shutil

import pytest

from core.engine.cache import ENTRY_DIR, CacheEntry, ProtoCache
from core.engine.fit import fit_and_cache, preset
from tests.conftest import open_page
from ui.widgets import plain

PAGE = "pages/noise.py"


@pytest.fixture(scope="module")
def fitted_root(tiny_lm, tmp_path_factory):
    """Like the conftest's tiny_entry, but fitted once per module, with the fast preset (converges in ~80 steps)."""
    root = tmp_path_factory.mktemp("noise-page-fit")
    fit_and_cache(tiny_lm, ["Hello world"], preset("fast", max_steps=300), ProtoCache(root))
    return root


@pytest.fixture
def tiny_entry(fitted_root, app_cache) -> CacheEntry:
    """The module's fitted entry, copied into this test's fresh app cache."""
    shutil.copytree(fitted_root / ENTRY_DIR, app_cache.root / ENTRY_DIR)
    [meta] = app_cache.list()
    return app_cache.get(meta.key)


def _texts(elements) -> list[str]:
    return [element.value for element in elements]


def _figure(chart) -> dict:
    return json.loads(chart.proto.spec)


def test_run_draws_the_charts_and_the_table_then_revisits_from_the_cache(tiny_entry):
    at = open_page(PAGE, tiny_entry.key)
    assert not at.exception
    assert any("Run sweep" in text for text in _texts(at.info))
    assert not at.get("plotly_chart")

    at.number_input(key="noise_draws").set_value(2)
    at.text_input(key="noise_alphas").set_value("0, 0.2, 1")
    at.button(key="noise_run").click().run()
    assert not at.exception, at.exception
    charts = at.get("plotly_chart")
    assert len(charts) == 3  # accuracy, relative prefix, flip heatmap
    accuracy = _figure(charts[0])
    names = [trace.get("name") for trace in accuracy["data"]]
    assert "gaussian" in names and any("seed paper" in str(name) for name in names)
    reference = next(t for t in accuracy["data"] if "seed paper" in str(t.get("name")))
    assert reference["line"]["dash"] == "dash"
    heatmap = _figure(charts[2])["data"][0]
    assert heatmap["type"] == "heatmap" and len(heatmap["x"]) == tiny_entry.n_tokens
    assert heatmap["y"] == ["0", "0.2", "1"] and heatmap["x"][0].startswith("0:")
    summary = at.dataframe[0].value  # one row per (type, alpha), over the 2 draws
    assert sorted(set(summary["alpha"])) == [0.0, 0.2, 1.0] and (summary["rows"] == 2).all()
    assert len(summary) == 3 * summary["type"].nunique() and "gaussian" in set(summary["type"])
    clean = summary[summary["alpha"] == 0.0]
    assert (clean["accuracy_mean"] == tiny_entry.metrics["accuracy"]).all()  # no noise: the entry's own accuracy
    assert at.get("download_button")

    # A fresh session with the same settings reads the table from the cache without pressing Run.
    again = open_page(PAGE, tiny_entry.key)
    again.number_input(key="noise_draws").set_value(2)
    again.text_input(key="noise_alphas").set_value("1, 0.2, 0").run()
    assert not again.exception
    assert len(again.get("plotly_chart")) == 3


def test_empty_cache_says_what_to_do(app_cache):
    at = open_page(PAGE)
    assert not at.exception
    assert any("Nothing fitted yet" in text for text in _texts(at.info))
    assert not at.get("plotly_chart")


def test_invalid_alpha_text_shows_an_error(tiny_entry):
    at = open_page(PAGE, tiny_entry.key)
    at.text_input(key="noise_alphas").set_value("0, 0.1, lots").run()
    assert not at.exception
    errors = _texts(at.error)
    assert any(plain("Invalid alphas") in text and plain("'lots' is not a number") in text for text in errors)
    assert not at.get("button") or all(b.key != "noise_run" for b in at.button)


def test_no_noise_type_is_a_warning_not_a_crash(tiny_entry):
    at = open_page(PAGE, tiny_entry.key)
    at.multiselect(key="noise_kinds").set_value([]).run()
    assert not at.exception
    assert any("noise type" in text for text in _texts(at.warning))


def test_several_entries_sweep_together_and_noise_on_m_or_both(tiny_lm, tiny_entry, app_cache):
    """Several entries: one sweep over both (twice the rows per group, a detail chooser with both); noise on m
    or on both vectors: another table than on e, and the page says the paper's numbers are for e."""
    [other] = fit_and_cache(tiny_lm, ["Hi there cat"], preset("fast", max_steps=300), app_cache)
    at = open_page(PAGE, tiny_entry.key)
    at.radio(key="noise_scope").set_value("Several entries").run()
    at.multiselect(key="noise_entries").set_value([tiny_entry.key, other.entry.key]).run()
    at.number_input(key="noise_draws").set_value(2)
    at.text_input(key="noise_alphas").set_value("0, 1").run()
    at.button(key="noise_run").click().run()
    assert not at.exception, at.exception
    summary = at.dataframe[0].value
    assert (summary["rows"] == 2 * 2).all()  # 2 draws x 2 entries in every (type, alpha)
    assert any("draws and 2 entries" in c for c in _texts(at.caption))
    detail = at.selectbox(key="noise_detail_entry")
    assert len(detail.options) == 2
    on_e = summary.set_index(["type", "alpha"])["accuracy_mean"]
    assert not any("for noise on e only" in c for c in _texts(at.caption))

    for target in ("m", "both"):
        at.radio(key="noise_target").set_value(target).run()
        at.button(key="noise_run").click().run()
        assert not at.exception, at.exception
        assert any("The paper's numbers are for noise on e only." in c for c in _texts(at.caption)), target
        table = at.dataframe[0].value.set_index(["type", "alpha"])["accuracy_mean"]
        clean = [k for k in table.index if k[1] == 0.0]
        assert (table[clean] == on_e[clean]).all()  # alpha 0 is the entries' own reconstruction either way
        noisy = [k for k in table.index if k[1] == 1.0]
        assert not table[noisy].equals(on_e[noisy]), target  # other vectors perturbed: other results


@pytest.fixture(scope="module")
def two_fitted_root(tiny_lm, tmp_path_factory):
    """One text fitted twice: to the threshold, and 60 steps past it (a lower final loss)."""
    root = tmp_path_factory.mktemp("noise-page-two")
    fit_and_cache(tiny_lm, ["Hello world"], preset("fast", max_steps=300), ProtoCache(root))
    # from a draw: the mean start would be the first entry itself
    fit_and_cache(tiny_lm, ["Hello world"], preset("fast", max_steps=400, extra_steps=60, start=""), ProtoCache(root))
    return root


def test_the_seed_papers_protocol_draws_once_per_alpha_and_says_how_the_paper_counts(two_fitted_root, app_cache):
    shutil.copytree(two_fitted_root / ENTRY_DIR, app_cache.root / ENTRY_DIR)
    keys = [m.key for m in app_cache.list()]
    at = open_page(PAGE, keys[0])
    at.radio(key="noise_protocol").set_value("authors").run()
    assert at.number_input(key="noise_draws").disabled
    at.text_input(key="noise_alphas").set_value("0, 0.5").run()
    at.button(key="noise_run").click().run()
    assert not at.exception, at.exception
    summary = next(d.value for d in at.dataframe if "rows" in d.value.columns)
    assert (summary["rows"] == 1).all()  # one draw per type and alpha, one entry
    captions = " ".join(c.value for c in at.caption)
    assert "counted over N + 1 positions" in captions and "choose the seed paper's protocol" not in captions
    # the N + 1 count: the tiny tokenizer has no BOS token, so both counts are the N text positions
    at.sidebar.radio(key="count").set_value("bos").run()
    assert not at.exception
    assert "choose that count" not in " ".join(c.value for c in at.caption)


def test_several_entries_draw_one_curve_each_with_the_fits_final_loss(two_fitted_root, app_cache):
    shutil.copytree(two_fitted_root / ENTRY_DIR, app_cache.root / ENTRY_DIR)
    entries = [app_cache.get(m.key) for m in app_cache.list()]
    at = open_page(PAGE, entries[0].key)
    at.radio(key="noise_scope").set_value("Several entries").run()
    at.multiselect(key="noise_entries").set_value([e.key for e in entries]).run()
    at.number_input(key="noise_draws").set_value(2)
    at.text_input(key="noise_alphas").set_value("0, 0.5, 1").run()
    at.button(key="noise_run").click().run()
    assert not at.exception, at.exception
    figure = next(_figure(c) for c in at.get("plotly_chart") if "entry by entry" in _figure(c)["layout"]["title"]["text"])
    names = [trace["name"] for trace in figure["data"]]
    assert len(names) == 2
    for entry in entries:
        assert any(f"final loss {entry.metrics['loss']:.3f}" in name for name in names)
    margin = next(e for e in entries if e.config.get("extra_steps"))
    assert margin.metrics["loss"] < next(e for e in entries if e is not margin).metrics["loss"]


def test_a_sets_originals_are_swept_or_the_page_says_what_to_fit(tiny_entry):
    at = open_page(PAGE, tiny_entry.key)
    at.radio(key="noise_scope").set_value("A set's originals").run()
    assert not at.exception
    # the tiny model has no shipped pre-fit: nothing of the set is fitted
    assert any("No original of the" in i.value for i in at.info)
