"""core.cache and fit_and_cache on the tiny model: round trip, keys, corrupt files, atomic writes."""

import json

import pytest
import torch

from core.cache import ProtoCache, entry_key
from core.fit import fit_and_cache, preset

TEXT = "Hello world"


def test_round_trip_and_hit(tiny_lm, tmp_cache):
    cfg = preset("paper", max_steps=600)
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
    assert [m["key"] for m in tmp_cache.list(tiny_lm.identity)] == [first.entry.key]
    assert tmp_cache.list("another-model") == []
    assert not list(tmp_cache.entries_dir.glob("*.tmp"))


@pytest.mark.parametrize("change", [
    dict(lr=0.02), dict(max_steps=7), dict(init="embedding"), dict(seed=3), dict(threshold=0.9),
    dict(layout="e+m*(N-1)"), dict(shared_m=True), dict(weight_decay=0.0), dict(init_scale=2.0),
    dict(schedule="cosine"), dict(betas=(0.9, 0.99)), dict(init="token"), dict(redraw_after=20), dict(restarts=2),
    dict(redraw_plateau=100),
])
def test_key_changes_with_every_setting(change):
    base = preset("paper")
    assert entry_key("model", [1, 2], base.key_dict()) != entry_key("model", [1, 2], preset("paper", **change).key_dict())


def test_key_depends_on_model_tokens_and_group_but_not_display():
    cfg = preset("paper").key_dict()
    k = entry_key("model", [1, 2], cfg)
    assert k == entry_key("model", [1, 2], preset("paper", snapshot_every=3).key_dict())
    assert k != entry_key("other", [1, 2], cfg)
    assert k != entry_key("model", [1, 3], cfg)
    assert k != entry_key("model", [1, 2], cfg, group="g")


def test_key_changes_with_regularizer():
    from core.teacher import RegularizerConfig

    a = preset("paper", regularizer=RegularizerConfig(kind="anchor", weight=0.1))
    b = preset("paper", regularizer=RegularizerConfig(kind="anchor", weight=0.2))
    c = preset("paper", regularizer=RegularizerConfig(kind="relational", weight=0.1))
    keys = {entry_key("m", [1], x.key_dict()) for x in (a, b, c, preset("paper"))}
    assert len(keys) == 4


@pytest.mark.parametrize("which", ["json", "safetensors"])
def test_corrupt_file_is_a_miss_with_warning(tiny_lm, tmp_cache, which):
    cfg = preset("paper", max_steps=20)
    [out] = fit_and_cache(tiny_lm, [TEXT], cfg, tmp_cache)
    path = tmp_cache.entries_dir / f"{out.entry.key}.{which}"
    path.write_bytes(b"\x00garbage{")
    assert tmp_cache.get(out.entry.key) is None
    assert tmp_cache.warnings and path.name in tmp_cache.warnings[0]
    [again] = fit_and_cache(tiny_lm, [TEXT], cfg, tmp_cache)  # refits and repairs the entry
    assert not again.cached and tmp_cache.get(out.entry.key) is not None


def test_failed_write_leaves_nothing(tiny_lm, tmp_cache, monkeypatch):
    import core.cache as cache_mod

    [out] = fit_and_cache(tiny_lm, [TEXT], preset("paper", max_steps=5), tmp_cache)
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

    [out] = fit_and_cache(tiny_lm, [TEXT], preset("paper", max_steps=50), tmp_cache, cancel=cancel,
                          callback=stop_soon, callback_every=1)
    assert out.entry.metrics["status"] == "cancelled"
    assert tmp_cache.get(out.entry.key) is not None
    [again] = fit_and_cache(tiny_lm, [TEXT], preset("paper", max_steps=50), tmp_cache)
    assert not again.cached and again.entry.metrics["status"] != "cancelled"


def test_delete_clear_and_analyses(tmp_cache):
    tmp_cache.put_analysis("noise", "k1", {"rows": [1, 2]}, {"a": torch.ones(3)})
    meta, tensors = tmp_cache.get_analysis("noise", "k1", with_tensors=True)
    assert meta["rows"] == [1, 2] and torch.equal(tensors["a"], torch.ones(3))
    assert tmp_cache.get_analysis("noise", "missing") is None
    assert tmp_cache.size_bytes() > 0
    tmp_cache.clear()
    assert tmp_cache.get_analysis("noise", "k1") is None


def test_env_var_sets_root(monkeypatch, tmp_path):
    monkeypatch.setenv("PROTOTOKENS_CACHE", str(tmp_path / "x"))
    assert ProtoCache().root == tmp_path / "x"


def test_finished_texts_are_stored_before_the_fit_ends(tiny_lm, tmp_cache):
    stored_during_fit = []

    def watch(progress, indices):
        stored_during_fit.append(len(list(tmp_cache.entries_dir.glob("*.safetensors"))) if tmp_cache.entries_dir.exists() else 0)

    fit_and_cache(tiny_lm, ["Hello world", "Hi there, cat."], preset("paper", max_steps=600), tmp_cache,
                  batch_size=1, callback=watch, callback_every=1)
    assert 1 in stored_during_fit  # the first text was on disk while the second was still fitting
