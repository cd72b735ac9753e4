"""core.shipped.prefit on the tiny model: the manifest of several sets, a rerun that fits and writes nothing,
what runs after the sets (demo views, sweep) and when, the torch threads, the demo entry's shipped views, one
set's compact entries with its teacher embeddings and maps (ship_views), a refit with other settings and a
stopped run."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import core.engine.fit
import core.shipped.default_sweep
import core.shipped.prefit as prefit
from core.analyses import embeddings as emb
from core.analyses.projection import MAP_ANALYSIS
from core.engine.cache import ProtoCache
from core.engine.fit import config_from_dict, entry_keys, fit_and_cache, lookup, preset
from core.engine.sets import MANIFEST, load_manifest
from core.shipped.prefit import prefit_builtin, prefit_config, ship_demo_views, ship_views

# Tiny texts the tiny model fits in a few steps each with the fast preset; "ab" is in both sets.
SETS = {"first": ["abc", "ab"], "second": ["ab", "xyz"]}
CONFIG = preset("fast", max_steps=40, restarts=1)


def _frame(texts: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"text": texts, "group": ["g"] * len(texts), "kind": ["original"] * len(texts)})


def _frames() -> dict[str, pd.DataFrame]:
    return {name: _frame(texts) for name, texts in SETS.items()}


def _run(root, lm, **kwargs):
    options = dict(quiet=True, root=root, sets=_frames(), lm=lm, config=CONFIG, teacher=False, sweep=False,
                   demo=False)
    return prefit_builtin(**{**options, **kwargs})


@pytest.fixture(scope="module")
def prefitted(tiny_lm, tmp_path_factory):
    """Both sets pre-fitted once into a folder (no teacher, sweep or demo views): (root, manifest's sets)."""
    root = tmp_path_factory.mktemp("prefit") / "shipped"
    return root, _run(root, tiny_lm)


@pytest.fixture
def copy_of(prefitted, tmp_path):
    """A copy of the pre-fitted folder a test may change."""
    root = tmp_path / "shipped"
    shutil.copytree(prefitted[0], root)
    return root


@pytest.fixture
def no_fitting(monkeypatch):
    """Any optimisation step is a failure from here on."""
    def refuse(*args, **kwargs):
        raise AssertionError("fitted although everything was pre-fitted")

    monkeypatch.setattr(core.engine.fit, "fit_texts", refuse)


def test_the_manifest_records_every_set_with_its_model_settings_and_keys(prefitted, tiny_lm):
    root, sets = prefitted
    assert set(sets) == set(SETS) and load_manifest(root) == sets
    on_disk = json.loads((root / MANIFEST).read_text())["sets"]
    assert set(on_disk) == set(SETS)
    cache = ProtoCache(root, shipped="")
    for name, texts in SETS.items():
        record = sets[name]
        keys, _ = entry_keys(tiny_lm, [tiny_lm.encode(t) for t in texts], CONFIG)
        assert record.texts == texts and record.keys == keys
        assert (record.model, record.model_name) == (tiny_lm.identity, tiny_lm.name)
        assert record.config == CONFIG.as_dict() and record.batch_size == 8 and record.teacher_key is None
        entries = [cache.get(k, tiny_lm.hidden_size) for k in record.keys]
        assert [e.text for e in entries] == texts
        assert record.n_fitted == len(texts)
        assert record.n_converged == sum(bool(e.metrics["converged"]) for e in entries)
        assert record.total_steps == sum(e.metrics["steps"] for e in entries) > 0
        assert record.mean_accuracy == pytest.approx(sum(e.metrics["accuracy"] for e in entries) / len(entries),
                                                     abs=1e-4)


def test_a_text_two_sets_share_is_fitted_once_and_timed_for_the_first(prefitted):
    _, sets = prefitted
    first, second = sets["first"], sets["second"]
    assert first.keys[1] == second.keys[0]  # "ab": one entry for both sets
    assert first.n_timed == 2 and first.wall_time_s > 0
    assert second.n_timed == 1  # only "xyz" was fitted for the second set


def test_a_rerun_fits_nothing_and_rewrites_no_entry(copy_of, tiny_lm, no_fitting, monkeypatch):
    before = load_manifest(copy_of)
    entry_files = {p: p.read_bytes() for p in (copy_of / "prototokens").iterdir()}
    puts = []
    real_put = ProtoCache.put
    monkeypatch.setattr(ProtoCache, "put", lambda self, entry: (puts.append(entry.key), real_put(self, entry)))
    again = _run(copy_of, tiny_lm)
    assert puts == []
    assert {p: p.read_bytes() for p in (copy_of / "prototokens").iterdir()} == entry_files
    for name in SETS:
        fields = ("keys", "n_fitted", "n_converged", "wall_time_s", "n_timed", "total_steps", "mean_accuracy")
        assert [getattr(again[name], f) for f in fields] == [getattr(before[name], f) for f in fields]


def test_demo_views_and_the_sweep_follow_a_complete_fit_only(copy_of, tiny_lm, no_fitting, monkeypatch):
    calls = []
    monkeypatch.setattr(prefit, "ship_demo_views", lambda root, **kw: calls.append(("demo", root, kw["lm"])))
    monkeypatch.setattr(core.shipped.default_sweep, "prefit_default_sweep",
                        lambda cache, quiet=False: calls.append(("sweep", cache.root, None)))
    _run(copy_of, tiny_lm, demo=True, sweep=True)
    assert calls == [("demo", copy_of, tiny_lm), ("sweep", copy_of, None)]  # demo views, then the sweep
    calls.clear()
    recorded = _run(copy_of, tiny_lm, demo=True, sweep=True, fit=False)  # recording only: no sweep
    assert calls == [("demo", copy_of, tiny_lm)] and recorded["first"].n_fitted == 2
    calls.clear()
    stop = __import__("threading").Event()
    stop.set()
    stopped = _run(copy_of, tiny_lm, demo=True, sweep=True, stop=stop)  # stopped: the manifest, nothing after
    assert calls == [] and set(stopped) == set(SETS)


def test_torch_runs_on_the_prefit_threads_and_gets_its_own_back_even_on_error(tiny_lm, tmp_path, monkeypatch):
    seen = []

    def failing_fit(*args, **kwargs):
        seen.append(torch.get_num_threads())
        raise RuntimeError("killed")

    monkeypatch.setattr(prefit, "PREFIT_THREADS", 1)
    monkeypatch.setattr(prefit, "fit_and_cache", failing_fit)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(RuntimeError, match="killed"):
            _run(tmp_path / "shipped", tiny_lm)
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_quiet_says_nothing_and_otherwise_each_set_is_reported(copy_of, tiny_lm, no_fitting, capsys):
    _run(copy_of, tiny_lm)
    assert capsys.readouterr().err == ""
    _run(copy_of, tiny_lm, quiet=False)
    err = capsys.readouterr().err
    assert "Pre-fitting first (2 texts), second (2 texts)" in err
    assert "[first] done: 2/2 fitted" in err and "[second] done: 2/2 fitted" in err and "All sets done" in err


def test_the_demo_entry_s_noise_sweep_and_attention_are_stored_once(copy_of, tiny_lm, prefitted):
    from core.analyses.attention import load_attention
    from core.analyses.noise import NoiseSettings, load_noise

    sets = prefitted[1]
    cache = ProtoCache(copy_of, shipped="")
    converged = [k for name in SETS for k in sets[name].keys if cache.get(k).metrics["converged"]]
    assert converged, "the tiny fits should converge"
    key = ship_demo_views(copy_of, lm=tiny_lm, quiet=True)
    assert key == converged[0]  # the first converged entry the manifest lists (no demo text here)
    entry = cache.get(key, tiny_lm.hidden_size)
    table = load_noise(tiny_lm, [entry], NoiseSettings(), cache)  # the Noise page's default sweep
    assert table is not None and set(table["entry"]) == {key}
    assert load_attention(tiny_lm, entry, cache) is not None
    stored = {p: p.read_bytes() for p in (copy_of / "analyses").rglob("*") if p.is_file()}
    # A second run reads both back: no forward pass, no file changed.
    passes = []
    hook = tiny_lm.model.register_forward_pre_hook(lambda module, args: passes.append(1))
    try:
        assert ship_demo_views(copy_of, lm=tiny_lm, quiet=True) == key
    finally:
        hook.remove()
    assert passes == []
    assert {p: p.read_bytes() for p in (copy_of / "analyses").rglob("*") if p.is_file()} == stored


def test_no_converged_entry_means_no_demo_views(tiny_lm, tmp_path, capsys):
    root = tmp_path / "empty"
    assert ship_demo_views(root, lm=tiny_lm, quiet=False) is None
    assert "no demo views stored" in capsys.readouterr().err
    assert not (root / "analyses").exists()


def test_the_shipped_prefit_was_made_with_the_settings_prefit_uses():
    # Otherwise `python -m core prefit` would fit everything again instead of resuming, and fields added to
    # FitConfig since must leave the shipped keys as they are.
    from core.shipped.prefit import EXAMPLES_SET, examples_config

    shipped = load_manifest()
    assert shipped and EXAMPLES_SET in shipped
    for name, record in shipped.items():  # the examples are fitted with the sidebar's default settings instead
        expected = examples_config() if name == EXAMPLES_SET else prefit_config()
        assert config_from_dict(record.config).key_dict() == expected.key_dict(), name
    assert "redraw_plateau" not in prefit_config().key_dict() and "redraw_plateau" in preset("fast").key_dict()


def test_prefit_on_the_tiny_model_writes_a_manifest_and_compact_entries(tiny_lm, tmp_path, monkeypatch):
    root = tmp_path / "prefit"
    frame = pd.DataFrame({"text": ["Hi you", "Hi there", "Go on", "Go home"], "group": ["a", "a", "b", "b"],
                          "kind": ["original", "semantic", "original", "lexical"]})
    config = preset("fast", max_steps=8)
    manifest = prefit_builtin(quiet=True, root=root, sets={"mini": frame}, lm=tiny_lm, config=config, chunk=3,
                              sweep=False)
    record = manifest["mini"]
    assert record.n_fitted == 4 and record.texts == frame["text"].tolist() and record.wall_time_s > 0
    assert load_manifest(root)["mini"] == record
    on_disk = json.loads((root / MANIFEST).read_text())["sets"]["mini"]
    assert on_disk["config"] == config.as_dict() and on_disk["model"] == tiny_lm.identity
    # The page finds the entries through a cache whose shipped part is this folder.
    reader = ProtoCache(tmp_path / "user-cache", shipped=root)
    found = lookup(tiny_lm, frame["text"].tolist(), config_from_dict(record.config), reader)
    assert [e.key for e in found] == record.keys
    for key in record.keys:
        meta = json.loads((root / "prototokens" / f"{key}.json").read_text())
        assert meta["snapshots"] == [] and len(meta["history"]["step"]) <= 40
        assert set(load_file(str(root / "prototokens" / f"{key}.safetensors"))) == {"e", "m"}
    assert reader.get_analysis(emb.TEACHER_ANALYSIS, record.teacher_key) is not None
    # The page's default maps ship too (here every fit counts, whatever its accuracy).
    monkeypatch.setattr(emb, "DEFAULT_MIN_ACCURACY", 0.0)
    (root / "analyses" / emb.TEACHER_ANALYSIS).rename(tmp_path / "moved")
    ship_views(root, quiet=True)
    vectors = emb.assemble_set(frame, found, teacher=emb.teacher_embeddings(frame["text"].tolist(), reader))
    key = emb.projection_key(vectors, "m", emb.DEFAULT_METHOD, "cosine", 0, emb.DEFAULT_PERPLEXITY)
    assert reader.get_analysis(MAP_ANALYSIS, key) is not None
    # A second run fits nothing and keeps the recorded fitting time.
    again = prefit_builtin(quiet=True, root=root, sets={"mini": frame}, lm=tiny_lm, config=config, sweep=False)
    assert again["mini"].wall_time_s == record.wall_time_s and again["mini"].keys == record.keys
    # Other settings replace the set's entries; the old ones are deleted, other files are left alone.
    other = tmp_path / "other-file.json"
    (root / "prototokens" / other.name).write_text("{}")
    redone = prefit_builtin(quiet=True, root=root, sets={"mini": frame}, lm=tiny_lm, config=preset("fast", max_steps=4),
                            sweep=False)["mini"]
    assert not set(redone.keys) & set(record.keys)
    left = {p.stem for p in (root / "prototokens").glob("*.json")}
    assert left == set(redone.keys) | {other.stem}


def test_a_stopped_prefit_keeps_its_texts_and_no_fit_records_what_is_on_disk(tiny_lm, tmp_path):
    import threading

    root = tmp_path / "prefit"
    frame = pd.DataFrame({"text": ["Hi you", "Hi there", "Go on", "Go home"], "group": ["a", "a", "b", "b"],
                          "kind": ["original", "semantic", "original", "lexical"]})
    config = preset("fast", max_steps=8, restarts=1)
    class StopAfterThreeSteps(threading.Event):  # as if Ctrl-C came during the first chunk
        checks = 0

        def is_set(self) -> bool:
            self.checks += 1
            return self.checks > 3

    stop = StopAfterThreeSteps()
    record = prefit_builtin(quiet=True, root=root, sets={"mini": frame}, lm=tiny_lm, config=config, chunk=2,
                            sweep=False, stop=stop)["mini"]
    assert record.n_fitted == 2 and record.n_converged == 0  # the first chunk only, cancelled
    stored = ProtoCache(root, shipped="")
    assert [stored.get(k).metrics["status"] for k in record.keys[:2]] == ["cancelled", "cancelled"]
    # A killed run leaves entries the manifest does not list; --no-fit records them without fitting.
    [extra] = fit_and_cache(tiny_lm, ["Go on"], config, stored)
    recorded = prefit_builtin(quiet=True, root=root, sets={"mini": frame}, lm=tiny_lm, config=config, chunk=2,
                              sweep=False, fit=False)["mini"]
    assert recorded.n_fitted == 3 and recorded.keys[2] == extra.entry.key
    assert stored.get(extra.entry.key).snapshots == []  # compacted on the way


def test_a_refit_of_one_set_keeps_the_entries_another_set_still_lists(tiny_lm, copy_of):
    """Refitting "first" with other settings removes its old entries, except "ab", which "second" still lists."""
    root = copy_of
    before = load_manifest(root)
    shared = dict(zip(before["second"].texts, before["second"].keys))["ab"]
    only_first = dict(zip(before["first"].texts, before["first"].keys))["abc"]
    prefit_builtin(quiet=True, root=root, sets={"first": _frame(SETS["first"])}, lm=tiny_lm,
                   config=preset("fast", max_steps=5, restarts=1), teacher=False, sweep=False, demo=False)
    cache = ProtoCache(root, shipped="")
    assert cache.get(shared) is not None, "an entry another set lists was deleted"
    assert cache.get(only_first) is None, "the refitted set's old entry was kept"
    assert all(cache.get(key) is not None for key in load_manifest(root)["second"].keys)
