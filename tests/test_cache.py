"""core.engine.cache and fit_and_cache on the tiny model: round trip, keys, corrupt files, atomic writes."""

import json

import pytest
import torch

from core.engine.cache import ProtoCache, entry_key
from core.engine.fit import fit_and_cache, preset

TEXT = "Hello world"


def test_round_trip_and_hit(tiny_lm, tmp_cache):
    cfg = preset("first-paper", max_steps=600)
    [first] = fit_and_cache(tiny_lm, [TEXT], cfg, tmp_cache)
    assert not first.cached and first.entry.metrics["converged"]
    [second] = fit_and_cache(tiny_lm, [TEXT], cfg, tmp_cache)
    assert second.cached
    assert torch.equal(second.entry.e, first.entry.e) and torch.equal(second.entry.m, first.entry.m)
    meta = json.loads((tmp_cache.entries_dir / f"{first.entry.key}.json").read_text())
    for field in ("key", "model", "text", "token_ids", "config", "metrics", "history"):
        assert field in meta
    assert meta["config"]["layout"] == "e+m*N"
    assert {"accuracy", "steps", "converged"} <= set(meta["metrics"])
    assert {"step", "loss", "accuracy"} <= set(meta["history"])
    assert [m.key for m in tmp_cache.list(tiny_lm.identity)] == [first.entry.key]
    assert tmp_cache.list("another-model") == []
    assert not list(tmp_cache.entries_dir.glob("*.tmp"))


@pytest.mark.parametrize("change", [
    dict(lr=0.02), dict(max_steps=7), dict(init="embedding"), dict(seed=3), dict(threshold=0.9),
    dict(layout="e+m*(N-1)"), dict(shared_m=True), dict(weight_decay=0.0), dict(init_scale=2.0),
    dict(schedule="cosine"), dict(betas=(0.9, 0.99)), dict(init="token"), dict(redraw_after=20), dict(restarts=2),
    dict(redraw_plateau=100), dict(compute="bfloat16"), dict(start="mean"), dict(start="nearest"),
])
def test_key_changes_with_every_setting(change):
    base = preset("first-paper")
    assert entry_key("model", [1, 2], base.key_dict()) != entry_key("model", [1, 2], preset("first-paper", **change).key_dict())


def test_key_depends_on_model_tokens_and_group_but_not_display():
    cfg = preset("first-paper").key_dict()
    k = entry_key("model", [1, 2], cfg)
    assert k == entry_key("model", [1, 2], preset("first-paper", snapshot_every=3).key_dict())
    assert k != entry_key("other", [1, 2], cfg)
    assert k != entry_key("model", [1, 3], cfg)
    assert k != entry_key("model", [1, 2], cfg, group="g")


def test_key_changes_with_regularizer():
    from core.engine.teacher import RegularizerConfig

    a = preset("first-paper", regularizer=RegularizerConfig(kind="anchor", weight=0.1))
    b = preset("first-paper", regularizer=RegularizerConfig(kind="anchor", weight=0.2))
    c = preset("first-paper", regularizer=RegularizerConfig(kind="relational", weight=0.1))
    keys = {entry_key("m", [1], x.key_dict()) for x in (a, b, c, preset("first-paper"))}
    assert len(keys) == 4


@pytest.mark.parametrize("which", ["json", "safetensors"])
def test_corrupt_file_is_a_miss_with_warning(tiny_lm, tmp_cache, which):
    cfg = preset("first-paper", max_steps=20)
    [out] = fit_and_cache(tiny_lm, [TEXT], cfg, tmp_cache)
    path = tmp_cache.entries_dir / f"{out.entry.key}.{which}"
    path.write_bytes(b"\x00garbage{")
    assert tmp_cache.get(out.entry.key) is None
    assert tmp_cache.warnings and path.name in tmp_cache.warnings[0]
    [again] = fit_and_cache(tiny_lm, [TEXT], cfg, tmp_cache)  # refits and repairs the entry
    assert not again.cached and tmp_cache.get(out.entry.key) is not None


def test_failed_write_leaves_nothing(tiny_lm, tmp_cache, monkeypatch):
    import core.engine.cache as cache_mod

    [out] = fit_and_cache(tiny_lm, [TEXT], preset("first-paper", max_steps=5), tmp_cache)
    tmp_cache.delete(out.entry.key)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(cache_mod, "save_file", boom)
    with pytest.raises(OSError):
        tmp_cache.put(out.entry)
    assert list(tmp_cache.entries_dir.iterdir()) == []


def test_cancelled_entry_is_stored_but_refitted(tiny_lm, tmp_cache):
    import threading

    cancel = threading.Event()

    def stop_soon(progress, indices):
        if progress.step >= 3:
            cancel.set()

    [out] = fit_and_cache(tiny_lm, [TEXT], preset("first-paper", max_steps=50), tmp_cache, cancel=cancel,
                          callback=stop_soon, callback_every=1)
    assert out.entry.metrics["status"] == "cancelled"
    assert tmp_cache.get(out.entry.key) is not None
    [again] = fit_and_cache(tiny_lm, [TEXT], preset("first-paper", max_steps=50), tmp_cache)
    assert not again.cached and again.entry.metrics["status"] != "cancelled"


def test_delete_clear_and_analyses(tmp_cache):
    tmp_cache.put_analysis("noise", "k1", {"rows": [1, 2]}, {"a": torch.ones(3)})
    meta, tensors = tmp_cache.get_analysis("noise", "k1", with_tensors=True)
    assert meta["rows"] == [1, 2] and torch.equal(tensors["a"], torch.ones(3))
    assert tmp_cache.get_analysis("noise", "missing") is None
    assert tmp_cache.size_bytes() > 0
    tmp_cache.clear()
    assert tmp_cache.get_analysis("noise", "k1") is None


def test_delete_removes_one_entry_and_clearing_one_model_spares_another():
    """delete() removes that entry's files only; clear(model) removes that model's entries and spares the other
    model's; a malformed key deletes nothing."""
    import dataclasses
    import tempfile

    import numpy as np

    from tests.conftest import fake_entry

    cache = ProtoCache(tempfile.mkdtemp(prefix="cache-delete-"))
    mine = [dataclasses.replace(fake_entry(c * 64, f"text {c}", np.zeros(8), np.ones(8)), model="model-a")
            for c in "ab"]
    other = dataclasses.replace(fake_entry("c" * 64, "text c", np.zeros(8), np.ones(8)), model="model-b")
    for entry in [*mine, other]:
        cache.put(entry)
    assert cache.count("model-a")[0] == 2 and cache.count("model-b")[0] == 1
    assert cache.delete("a" * 64) is True
    assert cache.get("a" * 64) is None and cache.get("b" * 64) is not None
    assert not list(cache.entries_dir.glob("a" * 64 + "*"))  # no file of it left behind
    assert cache.delete("a" * 64) is False and cache.delete("../" + "b" * 61) is False
    cache.put(mine[0])
    assert cache.clear("model-a") == 2
    assert cache.get("a" * 64) is None and cache.get("b" * 64) is None
    assert cache.get("c" * 64) is not None and cache.count("model-b")[0] == 1


def test_env_var_sets_root(monkeypatch, tmp_path):
    monkeypatch.setenv("PROTOTOKENS_CACHE", str(tmp_path / "x"))
    assert ProtoCache().root == tmp_path / "x"


def test_finished_texts_are_stored_before_the_fit_ends(tiny_lm, tmp_cache):
    stored_during_fit = []

    def watch(progress, indices):
        stored_during_fit.append(len(list(tmp_cache.entries_dir.glob("*.safetensors"))) if tmp_cache.entries_dir.exists() else 0)

    fit_and_cache(tiny_lm, ["Hello world", "Hi there, cat."], preset("first-paper", max_steps=600), tmp_cache,
                  batch_size=1, callback=watch, callback_every=1)
    assert 1 in stored_during_fit  # the first text was on disk while the second was still fitting


# ---- issue 13: keys, paths, validation, writes -----------------------------------------------------------

import dataclasses
import math
import os
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.engine.cache import CacheKeyError, CacheWriteError, check_key, is_valid_key
from core.engine.fit import FitConfig, FitError, KEY_FIELDS, check_key_fields

GOOD_KEY = "a" * 64


def test_the_default_keys_have_not_moved():
    # The shipped pre-fit and every user's cache hold entries under these keys: a change here orphans them.
    assert entry_key("model", [1, 2], preset("first-paper").key_dict()) == (
        "021540c85ff1ac19e3605c7ddcc46be1b3d3351155583ffb36ced62e800362e0")


def test_a_new_config_field_must_say_whether_it_enters_the_key():
    @dataclasses.dataclass(frozen=True)
    class Grown(FitConfig):
        momentum_trick: float = 0.0

    with pytest.raises(ImportError, match="momentum_trick"):
        check_key_fields(Grown)
    check_key_fields(FitConfig)
    assert set(preset("fast").key_dict()) <= KEY_FIELDS | {"redraw_plateau", "start"}  # both in KEY_IF_SET


@pytest.mark.parametrize("bad", [
    dict(lr=math.inf), dict(lr=math.nan), dict(weight_decay=math.nan), dict(threshold=math.nan),
    dict(init_scale=math.inf), dict(betas=(0.9, math.nan)), dict(betas=(0.9, 1.5)),
])
def test_non_finite_settings_are_refused(bad):
    with pytest.raises(FitError):
        preset("first-paper", **bad)


@pytest.mark.parametrize("key", ["../../somewhere/x", "x" * 5000, "A" * 64, "a" * 63, "", "a" * 64 + "/", None, 5])
def test_malformed_keys_never_reach_a_path(tmp_cache, key):
    assert not is_valid_key(key)
    assert tmp_cache.get(key) is None  # no OSError (File name too long), no file outside the cache
    assert tmp_cache.delete(key) is False
    with pytest.raises(CacheKeyError):
        check_key(key)


def test_a_key_field_inside_a_file_never_picks_what_is_deleted(tiny_lm, tmp_path):
    cache = ProtoCache(tmp_path / "cache")
    victim = tmp_path / "victim"
    victim.mkdir()
    for name in ("data.json", "data.safetensors"):
        (victim / name).write_text("precious")
    [out] = fit_and_cache(tiny_lm, [TEXT], preset("first-paper", max_steps=5), cache)
    crafted = json.loads((cache.entries_dir / f"{out.entry.key}.json").read_text())
    crafted["key"] = "../../victim/data"
    (cache.entries_dir / f"{'b' * 64}.json").write_text(json.dumps(crafted))
    (cache.entries_dir / f"{'b' * 64}.safetensors").write_bytes(
        (cache.entries_dir / f"{out.entry.key}.safetensors").read_bytes())
    assert [m.key for m in cache.list()] == [out.entry.key]  # the crafted file names another key: refused
    assert any("b" * 64 in w for w in cache.warnings)
    cache.clear()
    assert sorted(p.name for p in victim.iterdir()) == ["data.json", "data.safetensors"]
    assert (victim / "data.json").read_text() == "precious"


def _entry_files(tiny_lm, cache):
    [out] = fit_and_cache(tiny_lm, [TEXT], preset("first-paper", max_steps=5), cache)
    return out.entry, cache.entries_dir / f"{out.entry.key}.json", cache.entries_dir / f"{out.entry.key}.safetensors"


@pytest.mark.parametrize("vectors", [
    dict(e=torch.ones(2, 64), m=torch.ones(2, 64)), dict(e=torch.ones(64), m=torch.ones(32)),
    dict(e=torch.full((64,), math.nan), m=torch.ones(64)), dict(e=torch.ones(64), m=torch.full((64,), math.inf)),
    dict(e=torch.ones(0), m=torch.ones(0)),
])
def test_vectors_that_are_not_proto_tokens_are_a_miss(tiny_lm, tmp_cache, vectors):
    from safetensors.torch import save_file

    entry, meta_path, tensor_path = _entry_files(tiny_lm, tmp_cache)
    save_file(vectors, str(tensor_path))
    assert tmp_cache.get(entry.key) is None
    assert any(tensor_path.name in w for w in tmp_cache.warnings)
    [again] = fit_and_cache(tiny_lm, [TEXT], preset("first-paper", max_steps=5), tmp_cache)
    assert not again.cached  # a miss, refitted


def test_vectors_of_another_width_are_a_miss_for_that_model(tiny_lm, tmp_cache):
    entry, _, tensor_path = _entry_files(tiny_lm, tmp_cache)
    assert tmp_cache.get(entry.key, hidden=tiny_lm.hidden_size) is not None
    assert tmp_cache.get(entry.key, hidden=tiny_lm.hidden_size + 1) is None
    assert any("width" in w for w in tmp_cache.warnings)


@pytest.mark.parametrize("drop", ["text", "metrics", "config", "token_ids", "key"])
def test_incomplete_entries_are_a_miss_and_do_not_list(tiny_lm, tmp_cache, drop):
    entry, meta_path, _ = _entry_files(tiny_lm, tmp_cache)
    meta = json.loads(meta_path.read_text())
    meta.pop(drop)
    meta_path.write_text(json.dumps(meta))
    assert tmp_cache.get(entry.key) is None
    assert tmp_cache.list() == []
    assert any(meta_path.name in w and drop in w for w in tmp_cache.warnings)


def test_an_unwritable_cache_is_refused_before_the_first_step(tiny_lm, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    cache = ProtoCache(blocker)
    steps = []
    with pytest.raises(CacheWriteError, match="cannot be written"):
        fit_and_cache(tiny_lm, [TEXT], preset("first-paper", max_steps=50), cache,
                      callback=lambda p, i: steps.append(p.step), callback_every=1)
    assert steps == []


def test_a_write_that_fails_mid_fit_keeps_the_result(tiny_lm, tmp_cache, monkeypatch):
    def full(entry):
        raise CacheWriteError("Could not write to the cache: No space left on device.")

    monkeypatch.setattr(tmp_cache, "put", full)
    [out] = fit_and_cache(tiny_lm, [TEXT, "Hi there, cat."], preset("first-paper", max_steps=5), tmp_cache)[:1]
    assert out.unsaved and "No space left" in out.unsaved
    assert out.entry.e.shape == (tiny_lm.hidden_size,) and out.entry.history["step"]


def test_stale_temporary_files_are_swept_and_fresh_ones_kept(tmp_path):
    folder = tmp_path / "c" / "prototokens"
    folder.mkdir(parents=True)
    stale, fresh = folder / f".{GOOD_KEY}.json.x1.tmp", folder / f".{GOOD_KEY}.json.x2.tmp"
    stale.write_text("{")
    fresh.write_text("{")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    ProtoCache(tmp_path / "c")
    assert not stale.exists() and fresh.exists()


def test_files_get_the_umask_mode_not_0600(tiny_lm, tmp_path):
    import core.engine.cache as cache_mod

    entry, meta_path, tensor_path = _entry_files(tiny_lm, ProtoCache(tmp_path / "c"))
    for path in (meta_path, tensor_path):
        assert path.stat().st_mode & 0o777 == cache_mod.FILE_MODE
    assert cache_mod.FILE_MODE == 0o666 & ~cache_mod._umask()


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=300), st.binary(max_size=80).map(lambda b: b.hex())))
def test_property_any_key_string_is_safe(key):
    cache = ProtoCache("/nonexistent/proto-cache-never-created", shipped="")
    assert is_valid_key(key) == (len(key) == 64 and all(c in "0123456789abcdef" for c in key))
    assert cache.get(key) is None
    assert cache.delete(key) is False


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(json_bytes=st.binary(max_size=400), tensor_bytes=st.binary(max_size=400))
def test_property_cache_files_with_random_bytes_are_a_miss(tmp_path, json_bytes, tensor_bytes):
    cache = ProtoCache(tmp_path / f"c{time.monotonic_ns()}", shipped="")
    cache.entries_dir.mkdir(parents=True)
    (cache.entries_dir / f"{GOOD_KEY}.json").write_bytes(json_bytes)
    (cache.entries_dir / f"{GOOD_KEY}.safetensors").write_bytes(tensor_bytes)
    assert cache.get(GOOD_KEY) is None
    assert cache.list() == []
    assert cache.clear() == 1  # it is still removable by its own name


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(meta=st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                         lambda children: st.lists(children, max_size=4)
                         | st.dictionaries(st.sampled_from(["key", "text", "token_ids", "config", "metrics",
                                                            "history", "accuracy", "x"]), children, max_size=6),
                         max_leaves=30))
def test_property_any_json_in_an_entry_file_is_a_miss_or_an_entry(tmp_path, meta):
    cache = ProtoCache(tmp_path / f"c{time.monotonic_ns()}", shipped="")
    cache.entries_dir.mkdir(parents=True)
    (cache.entries_dir / f"{GOOD_KEY}.json").write_text(json.dumps(meta))
    torch_ok = {"e": torch.ones(8), "m": torch.ones(8)}
    from safetensors.torch import save_file

    save_file(torch_ok, str(cache.entries_dir / f"{GOOD_KEY}.safetensors"))
    entry = cache.get(GOOD_KEY)
    listed = cache.list()
    assert (entry is None) == (listed == [])
    if entry is not None:
        assert entry.key == GOOD_KEY and isinstance(entry.text, str) and 0 <= entry.metrics["accuracy"] <= 1


def test_deeply_nested_json_is_a_miss_not_a_recursion_error(tmp_cache):
    tmp_cache.entries_dir.mkdir(parents=True)
    (tmp_cache.entries_dir / f"{GOOD_KEY}.json").write_text("[" * 100_000 + "]" * 100_000)
    assert tmp_cache.get(GOOD_KEY) is None
    assert any("nested" in w for w in tmp_cache.warnings)


def test_a_listing_is_typed_and_marks_shipped_entries(tiny_lm, tmp_path):
    """ProtoCache.list() rows are EntryListing: the stored fields by name, the user's own first, shipped ones flagged."""
    from core.engine.cache import EntryListing

    shipped = ProtoCache(tmp_path / "shipped", shipped="")
    [theirs] = fit_and_cache(tiny_lm, ["ab"], preset("fast", max_steps=2), shipped)
    user = ProtoCache(tmp_path / "user", shipped=tmp_path / "shipped")
    [mine] = fit_and_cache(tiny_lm, ["cd"], preset("fast", max_steps=2), user)
    listed = user.list(tiny_lm.identity)
    assert all(isinstance(row, EntryListing) for row in listed)
    assert [(row.key, row.shipped) for row in listed] == [(mine.entry.key, False), (theirs.entry.key, True)]
    row = listed[0]
    assert (row.text, row.token_ids, row.n_tokens, row.model) == ("cd", mine.entry.token_ids,
                                                                  mine.entry.n_tokens, tiny_lm.identity)
    assert row.accuracy == mine.entry.metrics["accuracy"] and row.meta["key"] == row.key
    assert [row.key for row in user.list(include_shipped=False)] == [mine.entry.key]


# ---- what a bad entry file is told (the warning in the sidebar and in `core list` names the reason) ----------

_GOOD_META = {"key": "a" * 64, "text": "t", "token_ids": [0, 5], "config": {}, "metrics": {"accuracy": 1}}


@pytest.mark.parametrize(("change", "reason"), [
    (None, "not a JSON object"),
    ({"text": 3}, "field 'text' is missing or not a str"),
    ({"key": "b" * 64}, "its key field names another entry"),
    ({"token_ids": []}, "token_ids is not a list of token ids"),
    ({"token_ids": [0, -1]}, "token_ids is not a list of token ids"),
    ({"token_ids": [0, True]}, "token_ids is not a list of token ids"),
    ({"token_ids": [0, 1.0]}, "token_ids is not a list of token ids"),
    ({"metrics": {"accuracy": 1.5}}, "metrics.accuracy is missing or not a number in [0, 1]"),
    ({"metrics": {"accuracy": -0.1}}, "metrics.accuracy is missing or not a number in [0, 1]"),
    ({"metrics": {"accuracy": True}}, "metrics.accuracy is missing or not a number in [0, 1]"),
    ({"metrics": {"accuracy": "1"}}, "metrics.accuracy is missing or not a number in [0, 1]"),
    ({"history": []}, "field 'history' has the wrong type"),
    ({"snapshots": {}}, "field 'snapshots' has the wrong type"),
])
def test_a_bad_entry_file_is_told_exactly_what_is_wrong(change, reason):
    from core.engine.cache import check_meta

    meta = None if change is None else {**_GOOD_META, **change}
    with pytest.raises(ValueError) as raised:
        check_meta(meta, "a" * 64)
    assert str(raised.value) == reason


def test_the_edges_of_a_good_entry_file_pass():
    from core.engine.cache import check_meta

    for change in ({"token_ids": [0]}, {"metrics": {"accuracy": 0}}, {"metrics": {"accuracy": 1.0}},
                   {"history": {}, "snapshots": []}):
        assert check_meta({**_GOOD_META, **change}, "a" * 64)["key"] == "a" * 64


def test_a_bad_key_is_shown_shortened_in_its_message():
    from core.engine.cache import CacheKeyError, check_key

    for key, shown in (("x" * 38, repr("x" * 38)), ("x" * 39, repr("x" * 39)[:37] + "..."), (None, "None")):
        with pytest.raises(CacheKeyError) as raised:
            check_key(key)
        assert str(raised.value) == f"{shown} is not a cache key (64 hexadecimal characters)."
    assert check_key("0" * 64) == "0" * 64


def test_a_listing_row_reads_what_the_file_says_and_nothing_else():
    from core.engine.cache import EntryListing

    row = EntryListing.from_meta({**_GOOD_META, "model": "m", "model_name": "M", "created": 12.5, "group": "g"})
    assert (row.model, row.model_name, row.created, row.group, row.shipped) == ("m", "M", 12.5, "g", False)
    bare = EntryListing.from_meta({**_GOOD_META, "created": float("nan")}, shipped=True)
    assert (bare.model, bare.model_name, bare.created, bare.group, bare.shipped) == ("", "", 0.0, None, True)
    assert EntryListing.from_meta({**_GOOD_META, "created": "yesterday"}).created == 0.0
    assert bare.meta == {k: v for k, v in {**_GOOD_META, "model": "", "model_name": "", "created": 0.0,
                                          "group": None}.items()}


def test_an_entry_reads_back_every_field_and_the_shipped_cache_gets_the_width_check(tmp_path):
    """get() returns what the files say, with the defaults of an older file (no history, snapshots, model name,
    group or time); a key missing from the cache is looked up in the shipped one, which refuses another width."""
    from safetensors.torch import save_file

    from core.engine.cache import CacheEntry

    e, m = torch.ones(4), torch.full((4,), 2.0)
    shipped = ProtoCache(tmp_path / "shipped")
    full = CacheEntry(key="d" * 64, model="mod", model_name="Mod", text="t", token_ids=[3], config={"a": 1},
                      metrics={"accuracy": 0.5}, history={"step": [0]}, e=e, m=m, snapshots=[{"step": 0}],
                      group="g", created=7.0)
    shipped.put(full)
    cache = ProtoCache(tmp_path / "own", shipped=tmp_path / "shipped")
    got = cache.get("d" * 64, hidden=4)
    assert (got.model, got.model_name, got.group, got.created, got.history, got.snapshots) == \
        ("mod", "Mod", "g", 7.0, {"step": [0]}, [{"step": 0}])
    assert cache.get("d" * 64, hidden=5) is None  # the shipped entry is checked against the width too
    assert cache.get("d" * 64) is not None

    old = tmp_path / "own" / "prototokens"
    old.mkdir(parents=True)
    (old / f"{'e' * 64}.json").write_text(json.dumps({"key": "e" * 64, "text": "t", "token_ids": [1], "config": {},
                                                        "metrics": {"accuracy": 1.0}}))
    save_file({"e": e, "m": m}, str(old / f"{'e' * 64}.safetensors"))
    bare = cache.get("e" * 64)
    assert (bare.model, bare.model_name, bare.group, bare.created, bare.history, bare.snapshots) == \
        ("", "", None, 0.0, {}, [])


def test_vectors_that_cannot_be_proto_tokens_are_named():
    from core.engine.cache import check_vectors

    for e, m, message in ((torch.zeros(4), torch.zeros(2, 2), r"^e and m must be 1-D vectors of one width \(got \(4,\) and \(2, 2\)\)$"),
                          (torch.zeros(2, 2), torch.zeros(4), r"^e and m must be 1-D vectors of one width \(got \(2, 2\) and \(4,\)\)$"),
                          (torch.zeros(4), torch.tensor([0, 0, 0, float("nan")]), r"^e or m holds NaN or infinite values$")):
        with pytest.raises(ValueError, match=message):
            check_vectors(e, m)
