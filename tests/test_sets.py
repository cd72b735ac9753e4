"""core.engine.sets: a set's manifest, thinning for the shipped cache, validation, the configs a page offers."""

from __future__ import annotations

import numpy as np
import torch
import pytest

from core.engine.sets import compact_entry, fit_choices, thin_history, validate_set
from core.engine.fit import preset
from core.texts.textsets import TextSetError
from tests.conftest import fake_entry


def test_validate_set_names_the_text_the_model_cannot_fit(tiny_lm):
    with pytest.raises(TextSetError, match=r"text 2 \('xxxx"):
        validate_set(tiny_lm, ["short", "x" * 500], "e+m*N")
    assert len(validate_set(tiny_lm, ["ab", "abc"], "e+m*N")[1]) == 3


def test_thin_history_and_compact_entry():
    history = {"step": list(range(500)), "loss": [float(i) for i in range(500)], "accuracy": [0.0] * 500}
    thin = thin_history(history, 40)
    assert len(thin["step"]) == 40 and thin["step"][0] == 0 and thin["step"][-1] == 499
    assert thin["loss"] == [float(s) for s in thin["step"]]
    assert thin_history({"step": [1, 2]}, 40) == {"step": [1, 2]}
    entry = fake_entry("k", "t", np.zeros(8), np.ones(8), steps=300)
    small = compact_entry(entry)
    assert small.snapshots == [] and len(small.history["step"]) == 40 and entry.snapshots


def test_prefit_status_says_how_much_of_a_set_ships():
    from core.engine.sets import PrefitSet, prefit_status

    def record(n_fitted: int, model: str = "m1") -> PrefitSet:
        return PrefitSet(name="s", model=model, model_name="M", config={}, texts=["a", "b", "c", "d"],
                         keys=["1", "2", "3", "4"], n_fitted=n_fitted, n_converged=min(n_fitted, 3))

    assert prefit_status(None, "m1") == (0.0, "")
    assert prefit_status(record(4, model="other"), "m1") == (0.0, "")
    assert prefit_status(record(0), "m1") == (0.0, "")
    assert prefit_status(record(1), "m1") == (0.25, "pre-fitted so far: 1 of 4 texts")
    assert prefit_status(record(4), "m1") == (1.0, "pre-fitted, 3 of 4 converged")


def test_a_page_opens_on_the_set_the_pre_fit_covers_best(tiny_lm):
    from core.engine.sets import PrefitSet, most_prefitted

    def record(name, n_fitted, model=tiny_lm.identity):
        return PrefitSet(name=name, model=model, model_name="m", config={}, texts=["a", "b", "c", "d"],
                         keys=["k"] * 4, n_fitted=n_fitted)

    names = ["one", "two", "three"]
    manifest = {"one": record("one", 1), "two": record("two", 4), "three": record("three", 4)}
    assert most_prefitted(names, manifest, tiny_lm.identity) == 1  # fully fitted, first of the tie
    assert most_prefitted(names, {"three": record("three", 4, model="other")}, tiny_lm.identity) == 0
    assert most_prefitted([], manifest, tiny_lm.identity) == 0


def test_fit_choices_put_the_shipped_config_first_and_the_sidebar_only_when_it_differs():
    shipped, sidebar = preset("fast", max_steps=600), preset("first-paper")
    choices = fit_choices(shipped, sidebar, {"a text": "k" * 64})
    assert [(c.config, c.shipped) for c in choices] == [(shipped, True), (sidebar, False)]
    assert choices[0].keys == {"a text": "k" * 64} and not choices[1].keys
    assert "preset fast, up to 600 steps" in choices[0].label and "sidebar" in choices[1].label
    assert [c.shipped for c in fit_choices(shipped, preset("fast", max_steps=600))] == [True]  # same key: once
    assert [c.shipped for c in fit_choices(None, sidebar)] == [False]


def test_set_entries_reads_the_recorded_keys_in_bulk_and_looks_up_the_rest(tiny_lm, tmp_path, monkeypatch):
    """A corpus's entries come through the manifest's keys in one bulk read (ProtoCache.get_many: vectors and
    metrics, no history), not one lookup per text; a text without a recorded key is looked up by today's key."""
    import core.engine.sets as sets_mod
    from core.engine.cache import ProtoCache
    from core.engine.fit import fit_and_cache
    from core.engine.sets import ConfigChoice, set_entries

    cache = ProtoCache(tmp_path / "cache")
    config = preset("fast", max_steps=3, restarts=1)
    fitted = [o.entry for o in fit_and_cache(tiny_lm, ["Hi cat", "Go home", "Run now"], config, cache)]
    choice = ConfigChoice("corpus", config, keys={e.text: e.key for e in fitted[:2]})
    looked_up = []
    real_lookup = sets_mod.lookup
    monkeypatch.setattr(sets_mod, "lookup", lambda lm, texts, *a: looked_up.extend(texts) or real_lookup(lm, texts, *a))
    got = set_entries(tiny_lm, ["Hi cat", "Go home", "Run now", "Not fitted"], choice, ProtoCache(tmp_path / "cache"))
    assert [g.key if g else None for g in got] == [e.key for e in fitted] + [None]
    assert looked_up == ["Run now", "Not fitted"]  # the recorded two came in bulk
    assert all(g.history == {} for g in got[:2])
    for g, e in zip(got, fitted):
        assert torch.equal(g.e, e.e) and torch.equal(g.m, e.m) and g.metrics["accuracy"] == e.metrics["accuracy"]


def test_get_many_leaves_out_a_corrupt_tensors_file_with_a_warning(tmp_path):
    from bench.synthetic import write_synthetic_entries
    from core.engine.cache import ProtoCache

    entries = write_synthetic_entries(tmp_path / "cache", 3)
    (tmp_path / "cache" / "prototokens" / f"{entries[1].key}.safetensors").write_bytes(b"\0" * 40)
    cache = ProtoCache(tmp_path / "cache", shipped="")
    got = cache.get_many([e.key for e in entries] + ["../../etc/passwd"])
    assert set(got) == {entries[0].key, entries[2].key}
    assert any(entries[1].key in w for w in cache.warnings)
