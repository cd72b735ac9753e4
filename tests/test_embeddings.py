"""core.analyses.embeddings: a set's matrices, silhouettes per space, maps, the teacher cache, the config choices."""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import silhouette_score

import core.analyses.projection
from core.analyses import embeddings as emb
from core.engine.cache import ProtoCache
from core.engine.fit import preset
from tests.conftest import fake_entry

HIDDEN = 8


def _clustered_set(seed: int = 0):
    """Two groups of 4; m separates the groups, e is noise. Returns (frame, entries)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(2, HIDDEN)) * 5
    rows, entries = [], []
    for g in range(2):
        for j, kind in enumerate(["original", "semantic", "semantic", "lexical"]):
            text = f"group {g} text {j}"
            rows.append((text, f"g{g}", kind))
            entries.append(fake_entry(f"k{g}{j}", text, rng.normal(size=HIDDEN), centres[g] + rng.normal(size=HIDDEN) * 0.1,
                                  accuracy=0.5 if (g, j) == (1, 3) else 1.0))
    return pd.DataFrame(rows, columns=["text", "group", "kind"]), entries


# ---- assembling a set ------------------------------------------------------------------------------

def test_assemble_set_keeps_fitted_rows_above_the_threshold():
    frame, entries = _clustered_set()
    entries[2] = None
    teacher = np.arange(8 * 3, dtype=float).reshape(8, 3)
    vectors = emb.assemble_set(frame, entries, min_accuracy=0.9, teacher=teacher)
    assert (vectors.n_total, vectors.n_unfitted, vectors.n_below, vectors.n) == (8, 1, 1, 6)
    assert vectors.e.shape == vectors.m.shape == (6, HIDDEN)
    assert vectors.matrix(emb.CONCAT).shape == (6, 2 * HIDDEN)
    # The teacher rows follow the kept rows of the set, not the first six.
    assert vectors.table["row"].tolist() == [0, 1, 3, 4, 5, 6]
    np.testing.assert_array_equal(vectors.teacher, teacher[[0, 1, 3, 4, 5, 6]])
    np.testing.assert_allclose(vectors.m[2], entries[3].m.numpy(), rtol=1e-6)
    assert vectors.spaces == emb.SPACES
    # Both halves of e‖m are unit vectors, so neither dominates the cosine by its norm.
    np.testing.assert_allclose(np.linalg.norm(vectors.matrix(emb.CONCAT), axis=1), np.sqrt(2))


def test_assemble_set_edge_cases():
    frame, entries = _clustered_set()
    empty = emb.assemble_set(frame, [None] * len(frame))
    assert empty.n == 0 and empty.n_unfitted == len(frame) and empty.teacher is None
    assert "teacher" not in empty.spaces
    shared = emb.assemble_set(frame, entries, shared_m=True)
    assert shared.spaces == ("e",)
    with pytest.raises(ValueError, match="entries for a set"):
        emb.assemble_set(frame, entries[:3])


# ---- silhouettes per space -------------------------------------------------------------------------

def test_silhouette_table_matches_sklearn_per_space_and_subset():
    frame, entries = _clustered_set()
    teacher = np.random.default_rng(1).normal(size=(8, 5))
    vectors = emb.assemble_set(frame, entries, teacher=teacher)
    scores = emb.silhouette_table(vectors)
    assert list(scores["space"].unique()) == list(emb.SPACES)
    assert set(scores["subset"]) == {emb.ALL, "original + lexical", "original + semantic"}
    labels = vectors.table["group"].to_numpy()
    for space in emb.SPACES:
        row = scores[(scores["space"] == space) & (scores["subset"] == emb.ALL)].iloc[0]
        expected = silhouette_score(vectors.matrix(space), labels, metric="cosine")
        assert row["silhouette"] == pytest.approx(expected)
        assert (row["points"], row["groups"]) == (8, 2)
    by_space = scores[scores["subset"] == emb.ALL].set_index("space")["silhouette"]
    assert by_space["m"] > 0.9 > 0.3 > by_space["e"]  # m was built to separate the groups, e is noise
    semantic = scores[(scores["space"] == "m") & (scores["subset"] == "original + semantic")].iloc[0]
    assert semantic["points"] == 6


def test_silhouette_table_without_kind_subsets_and_undefined_scores():
    frame, entries = _clustered_set()
    frame["kind"] = "syntax"
    scores = emb.silhouette_table(emb.assemble_set(frame, entries))
    assert set(scores["subset"]) == {emb.ALL}
    one_group = frame.assign(group="same")
    scores = emb.silhouette_table(emb.assemble_set(one_group, entries))
    assert scores["silhouette"].isna().all()


def test_projections_neighbours_and_coordinates():
    frame, entries = _clustered_set()
    vectors = emb.assemble_set(frame, entries)
    projections = emb.project_spaces(vectors, vectors.spaces, method="tsne")
    assert set(projections) == {"e", "m", emb.CONCAT}
    assert all(p.coords.shape == (8, 2) for p in projections.values())
    assert "perplexity clamped" in projections["m"].note
    coords = emb.coordinates_frame(vectors, projections)
    assert len(coords) == 3 * 8 and {"space", "method", "text", "group", "kind", "accuracy", "x", "y"} <= set(coords)
    table = emb.neighbours_table(vectors, 0, k=3)
    m_rows = table[table["space"] == "m"]
    assert m_rows["rank"].tolist() == [1, 2, 3] and m_rows["same_group"].all()
    assert frame["text"].iloc[0] not in set(table["text"])


def test_projections_are_cached_as_analyses(tmp_cache, monkeypatch):
    frame, entries = _clustered_set()
    vectors = emb.assemble_set(frame, entries)
    first = emb.project_spaces(vectors, ("e", "m"), method="tsne", cache=tmp_cache)

    def no_projection(*args, **kwargs):
        raise AssertionError("a stored map must not be computed again")

    monkeypatch.setattr(core.analyses.projection, "project_2d", no_projection)
    again = emb.project_spaces(vectors, ("e", "m"), method="tsne", cache=tmp_cache)
    for space in ("e", "m"):
        np.testing.assert_allclose(again[space].coords, first[space].coords, rtol=1e-6)
        assert (again[space].method, again[space].note) == (first[space].method, first[space].note)
    with pytest.raises(AssertionError, match="computed again"):  # other settings, other maps
        emb.project_spaces(vectors, ("e",), method="tsne", perplexity=5.0, cache=tmp_cache)
    fewer = emb.assemble_set(frame, entries, min_accuracy=0.9)
    with pytest.raises(AssertionError, match="computed again"):
        emb.project_spaces(fewer, ("e",), method="tsne", cache=tmp_cache)


# ---- teacher embeddings ------------------------------------------------------------------------------

def test_teacher_embeddings_are_cached_as_an_analysis(tmp_cache, monkeypatch):
    texts = ["A cat sleeps on the mat.", "Stock markets fell sharply today."]
    first = emb.teacher_embeddings(texts, tmp_cache)
    assert first.shape == (2, 384)
    stored = tmp_cache.get_analysis(emb.TEACHER_ANALYSIS, emb.teacher_key(texts), with_tensors=True)
    assert stored is not None and stored[1]["embeddings"].shape == (2, 384)

    import core.engine.teacher

    def no_teacher(*args, **kwargs):
        raise AssertionError("the teacher must not be loaded for cached texts")

    monkeypatch.setattr(core.engine.teacher, "load_teacher", no_teacher)
    np.testing.assert_allclose(emb.teacher_embeddings(texts, tmp_cache), first)
    # The read-only shipped cache serves them too.
    reader = ProtoCache(tmp_cache.root.parent / "other", shipped=tmp_cache.root)
    np.testing.assert_allclose(emb.teacher_embeddings(texts, reader), first)


# ---- built-in sets and uploads -------------------------------------------------------------------------


def test_config_choices_offer_the_shipped_config_first(tiny_lm):
    from core.engine.sets import PrefitSet

    shipped = preset("fast", max_steps=600)
    manifest = {"variants": PrefitSet(name="variants", model=tiny_lm.identity, model_name="t",
                                      config=shipped.as_dict(), texts=[], keys=[])}
    choices = emb.config_choices(tiny_lm, "variants", preset("first-paper"), False, manifest)
    assert [c.shipped for c in choices] == [True, False]
    assert choices[0].config == shipped
    assert len(emb.config_choices(tiny_lm, "variants", shipped, False, manifest)) == 1
    shared = emb.config_choices(tiny_lm, "variants", preset("fast"), True, manifest)
    assert shared[0].config.shared_m and shared[0].config.restarts == 1 and not shared[0].keys
    assert shared[1].config.shared_m and shared[1].config.restarts == 1
    other_model = {"variants": PrefitSet(name="variants", model="other", model_name="o", config=shipped.as_dict(),
                                         texts=[], keys=[])}
    assert [c.shipped for c in emb.config_choices(tiny_lm, "variants", preset("first-paper"), False, other_model)] == [False]


def test_the_seed_papers_selection_keeps_only_whole_groups():
    frame, entries = _clustered_set()  # (g1, text 3) is below 0.9
    lab = emb.assemble_set(frame, entries, min_accuracy=0.9)
    authors = emb.assemble_set(frame, entries, min_accuracy=0.9, whole_groups=True)
    assert (lab.n, lab.n_dropped) == (7, 0)
    assert (authors.n, authors.n_below, authors.n_dropped) == (4, 1, 3)
    assert set(authors.table["group"]) == {"g0"}
    entries[0] = None  # an unfitted text drops its group too
    assert emb.assemble_set(frame, entries, min_accuracy=0.9, whole_groups=True).n == 0


def test_the_finding_line_sets_the_model_beside_the_paper():
    def scores(e, m, teacher):
        return pd.DataFrame({"space": ["e", "m", "teacher"], "subset": ["original + semantic"] * 3,
                             "silhouette": [e, m, teacher], "points": 9, "groups": 3})

    none = emb.finding_line(scores(-0.05, -0.01, 0.72), "SmolLM2-135M")
    assert none.startswith("On SmolLM2-135M (original + semantic) neither e nor m groups the texts: silhouettes "
                           "-0.05 and -0.01 against 0.72 for the teacher") and "m more semantic than e" in none
    assert "m groups the texts more than e: silhouettes 0.40 and 0.20" in emb.finding_line(scores(0.2, 0.4, 0.7), "x")
    assert "e groups the texts more than m" in emb.finding_line(scores(0.4, 0.2, 0.7), "x")
    assert emb.finding_line(scores(np.nan, np.nan, 0.7), "x").startswith("Not enough groups")


def test_the_seed_papers_count_selects_and_shows_accuracy_over_n_plus_one():
    frame, entries = _clustered_set()  # 3 tokens each; (g1, text 3) is at 0.5
    for i, entry in enumerate(entries):
        if i != 1:  # entry 1 was fitted before e's BOS prediction was recorded
            entry.metrics["bos_correct"] = i != 0  # entry 0: every token right, e's BOS prediction wrong
    lab = emb.assemble_set(frame, entries, min_accuracy=0.9)
    authors = emb.assemble_set(frame, entries, min_accuracy=0.9, count="bos")
    assert (lab.n, lab.n_uncounted, lab.count) == (7, 0, "text")
    assert (authors.n, authors.n_below, authors.n_uncounted, authors.count) == (6, 2, 1, "bos")
    assert "k00" not in set(authors.table["key"])  # 3 of 4 positions: 0.75 < 0.9
    accuracy = dict(zip(authors.table["key"], authors.table["accuracy"]))
    assert accuracy["k01"] == 1.0 and accuracy["k02"] == 1.0  # unrecorded: its N positions; recorded and right: 4 of 4
    # the authors' selection counts their way: entry 0's group goes with it
    assert emb.assemble_set(frame, entries, min_accuracy=0.9, whole_groups=True, count="bos").n == 0
