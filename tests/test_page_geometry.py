"""The Geometry page through streamlit's AppTest, on two solutions of one text fitted with the tiny model."""

from __future__ import annotations

import json
import shutil

import pytest

from core.analyses.geometry import GeometrySettings, run_solutions
from core.engine.cache import ENTRY_DIR, ProtoCache
from core.engine.fit import fit_and_cache, preset
from tests.conftest import open_page
from ui.widgets import plain

PAGE = "pages/geometry.py"
# The page's controls for a quick curve, in the link (bind=URL)
QUICK = {"geo_points": "5", "geo_steps": "3", "geo_samples": "2", "geo_seeds": "1"}


@pytest.fixture(scope="module")
def fitted_root(tiny_lm, tmp_path_factory):
    """"Hello world" fitted from a random draw and with seed 1, once per module."""
    root = tmp_path_factory.mktemp("geometry-page-fit")
    cache = ProtoCache(root)
    [outcome] = fit_and_cache(tiny_lm, ["Hello world"], preset("fast", max_steps=300, start=""), cache)
    run_solutions(tiny_lm, outcome.entry, GeometrySettings(seeds=(1,)), cache)
    return root, outcome.entry.key


@pytest.fixture
def entry_key(fitted_root, app_cache) -> str:
    """The module's two solutions, copied into this test's fresh app cache; the key of the first."""
    root, key = fitted_root
    shutil.copytree(root / ENTRY_DIR, app_cache.root / ENTRY_DIR)
    return key


def _texts(elements) -> list[str]:
    return [element.value for element in elements]


def _figure(chart) -> dict:
    return json.loads(chart.proto.spec)


def test_the_page_draws_the_solutions_from_the_cache_and_the_button_fits_the_curve(entry_key):
    at = open_page(PAGE, entry_key, query=QUICK)
    assert not at.exception, at.exception
    assert at.title[0].value == "Geometry"
    solutions = at.dataframe[0].value
    assert len(solutions) == 2 and solutions["solution"].str.startswith("seed 0").iloc[0]
    pairs = at.dataframe[1].value
    assert len(pairs) == 1 and 0 < pairs["distance_em"].iloc[0] and -1 <= pairs["cosine_e"].iloc[0] <= 1
    assert not [b for b in at.button if b.key == "geo_fit_seeds"]  # seed 1 is in the cache
    assert any("Fit the curve" in text for text in _texts(at.info))
    assert not at.get("plotly_chart")

    at.button(key="geo_fit_path").click().run()
    assert not at.exception, at.exception
    snap = at.session_state["job::geometry-path"].wait(120)
    assert snap.state == "done", snap.error
    at.run()
    assert not at.exception, at.exception
    [path] = at.get("plotly_chart")[:1]
    traces = _figure(path)["data"]
    assert {t["name"] for t in traces} == {"straight line", "Bezier curve (trained control point)"}
    assert all(len(t["x"]) == 5 and t["x"][0] == 0 and t["x"][-1] == 1 for t in traces)
    assert any("Lowest accuracy along the line" in c for c in _texts(at.caption))
    assert any(c.startswith("Here the line") and "the first paper" in c for c in _texts(at.caption))
    assert not [b for b in at.button if b.key == "geo_fit_path"]  # nothing left to fit
    # the seed paper's count: the tiny tokenizer has no BOS token, so the N positions, and the page says why
    at.sidebar.radio(key="count").set_value("bos").run()
    assert not at.exception, at.exception
    captions = " ".join(_texts(at.caption))
    assert "e's BOS prediction is not recorded for this path" in captions
    assert "2 entries without e's BOS prediction recorded count N positions" in captions

    # A fresh session with the same settings draws the path from the cache without pressing anything.
    again = open_page(PAGE, entry_key, query=QUICK)
    assert not again.exception, again.exception
    assert _figure(again.get("plotly_chart")[0])["data"][0]["y"] == traces[0]["y"]


def test_the_trajectory_button_records_a_refit_and_draws_it_with_its_shares(entry_key):
    at = open_page(PAGE, entry_key, query={**QUICK, "geo_record": "20"})
    assert any("Record the trajectory" in text for text in _texts(at.info))
    at.button(key="geo_fit_trajectory").click().run()
    assert not at.exception, at.exception
    snap = at.session_state["job::geometry-trajectory"].wait(180)
    assert snap.state == "done", snap.error
    at.run()
    assert not at.exception, at.exception
    figures = [_figure(chart) for chart in at.get("plotly_chart")]
    trajectory = next(f for f in figures if "PC1" in f["layout"]["xaxis"]["title"]["text"])
    points = next(t for t in trajectory["data"] if t.get("name") == "recorded point")
    assert points["customdata"][0][0] == 0 and all(row[0] % 20 == 0 for row in points["customdata"][:-1])
    assert any("the first two hold" in c and "Progressive Cramming" in c for c in _texts(at.caption))


def test_a_new_seed_is_offered_and_the_button_fits_it(entry_key):
    at = open_page(PAGE, entry_key, query={**QUICK, "geo_seeds": "1, 3"})
    button = at.button(key="geo_fit_seeds")
    assert button.label == "Fit seed 3"
    button.click().run()
    assert not at.exception, at.exception
    snap = at.session_state["job::geometry-solutions"].wait(180)
    assert snap.state == "done", snap.error
    at.run()
    assert not at.exception, at.exception
    assert len(at.dataframe[0].value) == 3 and len(at.dataframe[1].value) == 3  # three solutions, three pairs
    assert not [b for b in at.button if b.key == "geo_fit_seeds"]


def test_bad_seeds_give_one_line(entry_key):
    at = open_page(PAGE, entry_key, query=QUICK)
    at.text_input(key="geo_seeds").set_value("1, many").run()
    assert not at.exception
    errors = _texts(at.error)
    assert len(errors) == 1 and plain("Invalid settings") in errors[0]
    assert plain("'many' is not a whole number") in errors[0] and "\n" not in errors[0]
    assert not at.get("plotly_chart") and not at.dataframe


def test_without_an_entry_the_page_says_what_to_do(app_cache):
    at = open_page(PAGE)
    assert not at.exception
    assert any("Choose an entry fitted for" in text for text in _texts(at.info))
    assert not at.dataframe
