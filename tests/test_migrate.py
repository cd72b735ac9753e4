"""core.shipped.migrate.rekey: entries keyed before a field entered the key move to today's key, with their analyses."""

from __future__ import annotations

import json

from core.engine.cache import cache_key, ENTRY_SCHEMA, ProtoCache
from core.engine.fit import fit_and_cache, preset
from core.shipped.migrate import rekey
from core.analyses.regularisers import REGULARISER_ANALYSIS, setting_key


def _key_without(meta: dict, field: str) -> str:
    """The key an entry had when ``field`` did not exist yet."""
    config = {k: v for k, v in meta["config"].items() if k not in (field, "preset")}
    return cache_key(ENTRY_SCHEMA, meta["model"], meta["token_ids"], config, meta.get("group"))


def test_entries_keyed_before_a_field_existed_move_with_their_sweep_records(tiny_lm, tmp_path):
    cache = ProtoCache(tmp_path / "c", shipped="")
    [out] = fit_and_cache(tiny_lm, ["Hello world"], preset("first-paper", max_steps=5), cache)
    new_key = out.entry.key
    meta = json.loads((cache.entries_dir / f"{new_key}.json").read_text())
    old_key = _key_without(meta, "redraw_after")
    assert old_key != new_key
    # Make it look like an entry written before redraw_after: old name, old key field, no redraw_after.
    meta["key"] = old_key
    meta["config"].pop("redraw_after")
    (cache.entries_dir / f"{old_key}.json").write_text(json.dumps(meta))
    (cache.entries_dir / f"{new_key}.safetensors").rename(cache.entries_dir / f"{old_key}.safetensors")
    (cache.entries_dir / f"{new_key}.json").unlink()
    cache.put_analysis(REGULARISER_ANALYSIS, setting_key([old_key], ["g"], "t"),
                       {"keys": [old_key], "groups": ["g"], "teacher": "t", "config": meta["config"]})
    assert cache.get(new_key) is None

    assert rekey(cache, dry_run=True).moved == {old_key: new_key}
    assert cache.get(old_key) is not None  # a dry run changes nothing
    done = rekey(cache)
    assert done.moved == {old_key: new_key} and done.analyses == 1
    moved = cache.get(new_key)
    assert moved is not None and cache.get(old_key) is None
    assert moved.config["redraw_after"] == 0
    assert (moved.e == out.entry.e).all()
    stored = cache.get_analysis(REGULARISER_ANALYSIS, setting_key([new_key], ["g"], "t"))
    assert stored is not None and stored[0]["keys"] == [new_key]
    assert rekey(cache).moved == {}  # idempotent
