"""The geometry analysis (core.analyses.geometry) on the tiny random model: solutions, paths, trajectories."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch

import core.analyses.geometry as geometry
from core.analyses.geometry import (
    GEOMETRY_ANALYSIS,
    GeometryError,
    GeometryJob,
    GeometrySettings,
    bezier_points,
    counted_points,
    geometry_key,
    line_points,
    load_path,
    load_solutions,
    load_trajectory,
    parse_seeds,
    path_loss,
    path_table,
    pca,
    run_path,
    run_solutions,
    run_trajectory,
    same_text_entries,
    solution_tables,
)
from core.engine.cache import ENTRY_DIR, ProtoCache
from core.engine.fit import fit_and_cache, preset
from core.engine.reconstruct import predict_tokens, token_metrics

TEXT = "Hello world"
# A short curve fit: enough steps to bend the path on the tiny model, few enough to stay fast.
SETTINGS = GeometrySettings(seeds=(1,), points=11, steps=40, lr=0.05, samples=6, record_every=10)


@pytest.fixture(scope="module")
def fitted_root(tiny_lm, tmp_path_factory):
    """TEXT fitted from a random draw (seed 0), and its seed-1 solution through run_solutions, once per module."""
    root = tmp_path_factory.mktemp("geometry-fit")
    cache = ProtoCache(root)
    [outcome] = fit_and_cache(tiny_lm, [TEXT], preset("fast", max_steps=300, start=""), cache)
    run_solutions(tiny_lm, outcome.entry, SETTINGS, cache)
    return root, outcome.entry.key


@pytest.fixture
def cache(fitted_root, tmp_path) -> ProtoCache:
    """A fresh copy of the module's cache (entries only: every test starts without analyses)."""
    root, _ = fitted_root
    shutil.copytree(root / ENTRY_DIR, tmp_path / "cache" / ENTRY_DIR)
    return ProtoCache(tmp_path / "cache")


@pytest.fixture
def pair(tiny_lm, fitted_root, cache):
    entry = cache.get(fitted_root[1], tiny_lm.hidden_size)
    solutions = same_text_entries(tiny_lm, entry, cache)
    assert len(solutions) == 2 and solutions[0].key == entry.key
    return solutions[0], solutions[1]


@pytest.fixture(scope="module")
def fitted_path(tiny_lm, fitted_root):
    """One curve fit (no cache), shared by the tests that only read it."""
    root, key = fitted_root
    cache = ProtoCache(root)
    entry = cache.get(key, tiny_lm.hidden_size)
    a, b = same_text_entries(tiny_lm, entry, cache)
    return a, b, run_path(tiny_lm, a, b, SETTINGS)


# ---- settings ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, words", [
    (dict(points=1), "points"), (dict(points=10_000), "points"), (dict(steps=0), "steps"),
    (dict(samples=0), "samples"), (dict(lr=0.0), "lr"), (dict(lr=math.nan), "lr"), (dict(lr=-1), "lr"),
    (dict(record_every=0), "record_every"), (dict(seeds=()), "seed"), (dict(seeds=(-1,)), "seed"),
    (dict(seeds=tuple(range(20))), "seeds"), (dict(seed=-3), "seed"), (dict(points=2.5), "points"),
])
def test_bad_settings_give_a_one_line_value_error(overrides, words):
    with pytest.raises(ValueError) as raised:
        GeometrySettings(**overrides)
    message = str(raised.value)
    assert words in message and "\n" not in message


def test_seeds_parse_sorted_unique_and_refuse_what_is_not_a_whole_number():
    assert parse_seeds("3, 1 3") == (1, 3)
    for text, words in (("1, x", "'x' is not a whole number"), ("1.5", "1.5 is not a whole number"),
                        ("", "at least one seed"), ("-2", "out of range")):
        with pytest.raises(ValueError) as raised:
            parse_seeds(text)
        assert words in str(raised.value) and "\n" not in str(raised.value)
    assert GeometrySettings(seeds=(2, 1, 2)).seeds == (1, 2)


def test_each_part_s_key_changes_with_its_settings_and_only_with_them(tiny_lm, pair):
    a, b = pair
    base = GeometrySettings()
    path = geometry_key(tiny_lm, [a, b], base, "path")
    for change in (dict(points=5), dict(steps=3), dict(lr=0.1), dict(samples=2), dict(seed=4)):
        assert geometry_key(tiny_lm, [a, b], GeometrySettings(**change), "path") != path, change
    assert geometry_key(tiny_lm, [a, b], GeometrySettings(record_every=3, seeds=(7,)), "path") == path
    assert geometry_key(tiny_lm, [b, a], base, "path") != path  # a path runs from its first solution
    trajectory = geometry_key(tiny_lm, [a], base, "trajectory")
    assert geometry_key(tiny_lm, [a], GeometrySettings(record_every=3), "trajectory") != trajectory
    assert geometry_key(tiny_lm, [a], GeometrySettings(steps=3), "trajectory") == trajectory
    with pytest.raises(ValueError):
        geometry_key(tiny_lm, [a], base, "everything")


# ---- solutions --------------------------------------------------------------------------------------------------

def test_run_solutions_fitted_the_seed_and_load_solutions_lists_what_is_missing(tiny_lm, pair, cache):
    a, b = pair
    assert b.config["seed"] == 1 and not b.config.get("start") and b.text == a.text
    assert not torch.equal(a.e, b.e)  # another seed: another solution
    held = load_solutions(tiny_lm, a, SETTINGS, cache)
    assert held.keys == [a.key, b.key] and held.missing_seeds == ()
    assert held.solutions["seed"].tolist() == [0, 1]
    wanting = load_solutions(tiny_lm, a, GeometrySettings(seeds=(1, 5)), cache)
    assert wanting.missing_seeds == (5,) and len(wanting.entries) == 2  # listing never fits
    # stored as an analysis of exactly these entries: the next visit reads it back
    again = load_solutions(tiny_lm, a, SETTINGS, cache)
    assert again.from_cache and again.pairs.equals(held.pairs)


def test_distances_and_cosines_match_a_direct_computation(pair):
    a, b = pair
    solutions, pairs = solution_tables([a, b])
    [row] = pairs.to_dict("records")
    ea, ma, eb, mb = (v.double() for v in (a.e, a.m, b.e, b.m))
    for name, x, y in (("e", ea, eb), ("m", ma, mb), ("em", torch.cat([ea, ma]), torch.cat([eb, mb]))):
        assert row[f"distance_{name}"] == pytest.approx(float((x - y).norm()), rel=1e-9)
        assert row[f"cosine_{name}"] == pytest.approx(float(torch.nn.functional.cosine_similarity(x, y, dim=0)),
                                                      rel=1e-9)
    assert solutions["norm_e"].tolist() == pytest.approx([float(ea.norm()), float(eb.norm())])
    assert solutions["norm_em"].tolist() == pytest.approx([math.hypot(float(ea.norm()), float(ma.norm())),
                                                           math.hypot(float(eb.norm()), float(mb.norm()))])
    assert (row["a"], row["b"]) == (a.key, b.key)


# ---- paths ------------------------------------------------------------------------------------------------------

def test_both_paths_start_and_end_at_the_two_solutions_exactly():
    generator = torch.Generator().manual_seed(0)
    a, b, c = (torch.randn(16, generator=generator) * 7 for _ in range(3))
    ts = torch.tensor([0.0, 0.3, 0.5, 1.0])
    for points in (line_points(a, b, ts), bezier_points(a, b, c, ts)):
        assert torch.equal(points[0], a) and torch.equal(points[-1], b)
    # at the midpoint control the curve is the line
    assert torch.allclose(bezier_points(a, b, (a + b) / 2, ts), line_points(a, b, ts), atol=1e-5)
    # and a control point elsewhere bends it: (1-t)^2 a + 2t(1-t) c + t^2 b at t = 0.5
    assert torch.allclose(bezier_points(a, b, c, ts)[2], 0.25 * a + 0.5 * c + 0.25 * b, atol=1e-5)


def test_a_path_s_ends_decode_as_the_two_solutions(tiny_lm, fitted_path):
    a, b, path = fitted_path
    assert path.ts[0] == 0.0 and path.ts[-1] == 1.0 and len(path.ts) == SETTINGS.points
    for entry, index in ((a, 0), (b, -1)):
        own = predict_tokens(tiny_lm, entry.e, entry.m, entry.n_tokens, entry.layout)[0]
        accuracy = token_metrics(own, entry.token_ids).accuracy
        assert path.line_tokens[index] == path.curve_tokens[index] == own.tolist()
        assert path.line_accuracy[index] == path.curve_accuracy[index] == accuracy
        assert path.line_loss[index] == pytest.approx(path.curve_loss[index], abs=1e-6)
    table = path_table(path, tiny_lm.decode)
    assert set(table["path"]) == {"line", "curve"} and len(table) == 2 * SETTINGS.points
    assert table["text"].iloc[0] == tiny_lm.decode(path.line_tokens[0])


def test_the_trained_control_point_lowers_the_path_loss_against_the_line(tiny_lm, fitted_path):
    a, b, path = fitted_path
    assert path.steps == SETTINGS.steps and len(path.history) == SETTINGS.steps
    summary = path.summary()
    assert summary["curve_mean_loss"] < summary["line_mean_loss"]
    assert summary["curve_mean_accuracy"] >= summary["line_mean_accuracy"]
    # the same comparison computed here, on a grid of interior points
    ts = torch.linspace(0.05, 0.95, 10)
    with torch.no_grad():
        line = path_loss(tiny_lm, line_points(a.e, b.e, ts), line_points(a.m, b.m, ts), a.token_ids, a.layout)
        curve = path_loss(tiny_lm, bezier_points(a.e, b.e, path.control_e, ts),
                          bezier_points(a.m, b.m, path.control_m, ts), a.token_ids, a.layout)
    assert float(curve) < float(line)
    assert not torch.allclose(path.control_e, (a.e + b.e) / 2)  # it moved from where it started


def test_run_path_stores_and_load_path_reads_it_back_without_the_model(tiny_lm, pair, cache, monkeypatch):
    a, b = pair
    assert load_path(tiny_lm, a, b, SETTINGS, cache) is None
    small = GeometrySettings(seeds=(1,), points=5, steps=3, samples=2)
    assert load_path(tiny_lm, a, b, small, cache) is None
    computed = run_path(tiny_lm, a, b, small, cache)
    assert not computed.from_cache

    def no_model(*args, **kwargs):
        raise AssertionError("the model ran")

    monkeypatch.setattr(geometry, "scored_logits", no_model)
    loaded = load_path(tiny_lm, a, b, small, cache)
    assert loaded is not None and loaded.from_cache
    for name in ("ts", "line_accuracy", "line_loss", "curve_accuracy", "curve_loss"):
        assert np.array_equal(getattr(loaded, name), getattr(computed, name)), name
    assert torch.equal(loaded.control_e, computed.control_e) and torch.equal(loaded.control_m, computed.control_m)
    assert loaded.line_tokens == computed.line_tokens and loaded.history == pytest.approx(computed.history)
    assert run_path(tiny_lm, a, b, small, cache).from_cache  # run_ reads the cache first
    assert load_path(tiny_lm, b, a, small, cache) is None  # the other direction is another path


def test_a_path_needs_two_solutions_of_one_text(tiny_lm, pair, cache):
    a, b = pair
    with pytest.raises(ValueError, match="two different solutions"):
        run_path(tiny_lm, a, a, SETTINGS)
    [other] = fit_and_cache(tiny_lm, ["Hi"], preset("fast", max_steps=5, start=""), cache)
    with pytest.raises(ValueError, match="not solutions of one text"):
        run_path(tiny_lm, a, other.entry, SETTINGS)


def test_a_cancelled_curve_is_returned_stopped_and_not_stored(tiny_lm, pair, cache):
    a, b = pair
    job = GeometryJob("path", tiny_lm, a, SETTINGS, cache, other=b)
    job.cancel()  # before its first step
    snap = job.start().wait(120)
    assert snap.state == "cancelled" and snap.result.stopped and snap.result.steps == 0
    assert load_path(tiny_lm, a, b, SETTINGS, cache) is None


def test_the_job_runs_a_path_and_stores_it(tiny_lm, pair, cache):
    a, b = pair
    small = GeometrySettings(seeds=(1,), points=3, steps=2, samples=2)
    snap = GeometryJob("path", tiny_lm, a, small, cache, other=b).start().wait(120)
    assert snap.state == "done", snap.error
    assert snap.fraction == 1.0 and load_path(tiny_lm, a, b, small, cache) is not None
    with pytest.raises(ValueError):
        GeometryJob("path", tiny_lm, a, small, cache)  # no second solution


# ---- trajectory -------------------------------------------------------------------------------------------------

def test_pca_shares_sum_to_at_most_one_and_match_numpy():
    rng = np.random.default_rng(0)
    latent = rng.normal(size=(30, 3)) * [5.0, 1.0, 0.2]  # three directions of falling variance, and a little noise
    points = latent @ rng.normal(size=(3, 12)) + rng.normal(size=(30, 12)) * 0.01 + 3.0
    coords, shares = pca(points, components=5)
    assert shares.shape == (5,) and shares.sum() <= 1 + 1e-12 and np.all(np.diff(shares) <= 1e-12)
    centred = points - points.mean(axis=0)
    eigenvalues, eigenvectors = np.linalg.eigh(np.cov(centred, rowvar=False))
    order = np.argsort(eigenvalues)[::-1]
    assert shares == pytest.approx(eigenvalues[order][:5] / eigenvalues.sum(), rel=1e-6)
    projected = centred @ eigenvectors[:, order[:2]]
    assert np.abs(coords) == pytest.approx(np.abs(projected), abs=1e-8)  # a component's sign is arbitrary
    all_shares = pca(points, components=100)[1]
    assert all_shares.shape == (12,) and all_shares.sum() == pytest.approx(1.0)
    flat_coords, flat_shares = pca(np.ones((4, 6)))
    assert not flat_coords.any() and not flat_shares.any()


def test_run_trajectory_refits_the_entry_records_it_and_load_reads_it_back(tiny_lm, pair, cache, monkeypatch):
    a, _ = pair
    assert load_trajectory(tiny_lm, a, SETTINGS, cache) is None
    result = run_trajectory(tiny_lm, a, SETTINGS, cache)
    every = SETTINGS.record_every
    assert result.steps[0] == 0 and all(s % every == 0 for s in result.steps[:-1])
    # a from-a-draw entry refitted with its own settings is the same fit: it ends where the entry did
    assert result.steps[-1] == a.metrics["steps"] and result.final_accuracy == a.metrics["accuracy"]
    assert result.accuracy[-1] == a.metrics["accuracy"]
    assert result.coords.shape == (len(result.steps), 2) and 0 < result.shares.sum() <= 1 + 1e-9
    assert len(result.tokens) == len(result.steps) and len(result.tokens[0]) == a.n_tokens
    table = result.table(tiny_lm.decode)
    assert list(table.columns) == ["step", "pc1", "pc2", "accuracy", "loss", "text"]
    assert table["loss"].iloc[-1] < table["loss"].iloc[0]

    monkeypatch.setattr(geometry, "fit_texts", lambda *a, **k: pytest.fail("refitted"))
    loaded = load_trajectory(tiny_lm, a, SETTINGS, cache)
    assert loaded is not None and loaded.from_cache and loaded.steps == result.steps
    assert np.allclose(loaded.coords, result.coords) and np.array_equal(loaded.shares, result.shares)
    assert loaded.tokens == result.tokens and np.array_equal(loaded.accuracy, result.accuracy)
    assert run_trajectory(tiny_lm, a, SETTINGS, cache).from_cache
    stored = cache.get_analysis(GEOMETRY_ANALYSIS, geometry_key(tiny_lm, [a], SETTINGS, "trajectory"))
    assert stored is not None and not stored[0]["config"].get("start")


def test_an_entry_of_another_model_is_refused_in_one_line(tiny_lm, pair, cache):
    a, b = pair
    from dataclasses import replace

    foreign = replace(a, model="another-model")
    for call in (lambda: load_solutions(tiny_lm, foreign, SETTINGS, cache),
                 lambda: load_trajectory(tiny_lm, foreign, SETTINGS, cache),
                 lambda: load_path(tiny_lm, foreign, b, SETTINGS, cache)):
        with pytest.raises(GeometryError) as raised:
            call()
        assert "not on" in str(raised.value) and "\n" not in str(raised.value)


# ---- figures ----------------------------------------------------------------------------------------------------

def test_the_figures_show_user_text_escaped_in_their_hovers():
    import pandas as pd

    from core.figures.geometry import path_figure, shares_figure, trajectory_figure

    raw = "<b>bold</b> & <script>x</script>"
    table = pd.DataFrame({"path": ["line", "line", "curve", "curve"], "t": [0.0, 1.0, 0.0, 1.0],
                          "accuracy": [1.0, 1.0, 1.0, 1.0], "loss": [0.1, 0.1, 0.1, 0.1], "text": [raw] * 4})
    fig = path_figure(table)
    hovers = [h for trace in fig.data for h in trace.customdata]
    assert hovers and all("<b>" not in h and "&lt;b&gt;bold&lt;/b&gt; &amp;" in h for h in hovers)
    assert {trace.name for trace in fig.data} == {"straight line", "Bezier curve (trained control point)"}
    steps = pd.DataFrame({"step": [0, 10, 15], "pc1": [0.0, 1.0, 2.0], "pc2": [0.0, -1.0, 0.5],
                          "accuracy": [0.0, 0.5, 1.0], "loss": [3.0, 1.0, 0.1], "text": [raw] * 3})
    fig = trajectory_figure(steps, [0.7, 0.2, 0.1])
    points = next(trace for trace in fig.data if trace.name == "recorded point")
    assert [row[0] for row in points.customdata] == [0, 10, 15]
    assert all("<script>" not in row[2] and "&lt;script&gt;" in row[2] for row in points.customdata)
    assert "70.0%" in fig.layout.xaxis.title.text and "20.0%" in fig.layout.yaxis.title.text
    cumulative = next(trace for trace in shares_figure([0.7, 0.2, 0.1]).data if trace.name == "cumulative")
    assert list(cumulative.y) == pytest.approx([0.7, 0.9, 1.0])


def test_decoded_points_record_es_bos_prediction_for_the_seed_papers_count(bos_lm, tmp_path):
    cache = ProtoCache(tmp_path / "bos")
    [a] = fit_and_cache(bos_lm, ["Hi"], preset("fast", max_steps=300, start=""), cache)
    [b] = fit_and_cache(bos_lm, ["Hi"], preset("fast", max_steps=300, start="", seed=1), cache)
    a, b = a.entry, b.entry
    small = GeometrySettings(seeds=(1,), points=5, steps=3, samples=2)
    path = run_path(bos_lm, a, b, small, cache)
    # the ends are the solutions: e's BOS prediction there is the entries' own
    assert path.line_bos is not None and path.line_bos[0] == float(a.metrics["bos_correct"])
    assert path.line_bos[-1] == float(b.metrics["bos_correct"])
    n = a.n_tokens
    line, curve, counted = path.accuracies("bos")
    assert counted and np.allclose(line, (path.line_accuracy * n + path.line_bos) / (n + 1))
    assert np.allclose(curve, (path.curve_accuracy * n + path.curve_bos) / (n + 1))
    assert path.summary("bos")["line_min_accuracy"] == line.min()
    assert np.allclose(path_table(path, None, "bos")["accuracy"], np.concatenate([line, curve]))
    loaded = load_path(bos_lm, a, b, small, cache)
    assert np.array_equal(loaded.line_bos, path.line_bos) and np.array_equal(loaded.curve_bos, path.curve_bos)
    # a path stored before it was recorded is shown over the N positions, and says so
    assert counted_points(path.line_accuracy, None, n, "bos") == (path.line_accuracy, False)
    assert np.array_equal(counted_points(path.line_accuracy, path.line_bos, n, "text")[0], path.line_accuracy)
    solutions = run_solutions(bos_lm, a, small, cache)
    table, uncounted = solutions.counted("bos")
    assert uncounted == 0 and table["accuracy"].tolist() == [
        (e.metrics["accuracy"] * n + e.metrics["bos_correct"]) / (n + 1) for e in solutions.entries]


def test_points_without_a_bos_token_are_counted_over_n(tiny_lm, fitted_path):
    _, _, path = fitted_path  # the tiny tokenizer has no BOS token
    assert path.line_bos is None and path.curve_bos is None
    line, _, counted = path.accuracies("bos")
    assert not counted and np.array_equal(line, path.line_accuracy)


def test_the_path_verdict_says_whether_this_model_agrees_with_the_first_paper():
    """Line below the hold level and curve above it agrees with the paper; a curve that dips says it does not hold,
    with its lowest accuracy; a line that holds is said too."""
    from core.analyses.geometry import PATH_HOLDS, path_verdict

    agree = path_verdict({"line_min_accuracy": 0.0, "curve_min_accuracy": 0.95})
    assert agree.startswith("Here the line collapses and the curve holds: as the first paper")
    dips = path_verdict({"line_min_accuracy": 0.0, "curve_min_accuracy": 0.12})
    assert "the curve does not hold everywhere (lowest 0.12" in dips and ": unlike the first paper" in dips
    both = path_verdict({"line_min_accuracy": PATH_HOLDS, "curve_min_accuracy": PATH_HOLDS})
    assert "the line holds too and the curve holds: unlike" in both
