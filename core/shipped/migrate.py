"""Re-keying entries whose cache key moved: the migration that goes with a change of what a key hashes.

An entry's key is recomputed from its own stored fields (model identity, token ids, config, coupling group)
with today's :class:`core.engine.fit.FitConfig`. Where that differs from the file's name, the entry moved: it was
keyed before a field entered the key (redraw_after did, in every key, and orphaned the shipped regulariser
sweep). The entry is written again under its new key, with its config as today's code writes it, and the
analyses that list entries by key (the regulariser sweep's settings) follow. Vectors and metrics are untouched:
the field's default is what those fits did.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from core.engine.cache import ProtoCache, entry_key


@dataclass
class Migration:
    moved: dict[str, str] = field(default_factory=dict)  # old key -> new key
    analyses: int = 0  # analysis records rewritten
    skipped: list[str] = field(default_factory=list)  # entries whose config today's code cannot read


def current_key(meta: dict) -> str:
    """The key today's code gives the entry whose metadata this is."""
    from core.engine.fit import config_from_dict

    return entry_key(meta.get("model", ""), meta["token_ids"], config_from_dict(meta["config"]).key_dict(),
                     meta.get("group"))


def rekey(cache: ProtoCache, dry_run: bool = False) -> Migration:
    """Move every entry of ``cache`` (its own folder, not the shipped fallback) whose key moved; see above."""
    from core.engine.fit import FitError, config_from_dict
    from core.analyses.regularisers import REGULARISER_ANALYSIS, setting_key

    result = Migration()
    for listed in cache.list(include_shipped=False):
        meta = listed.meta
        try:
            new = current_key(meta)
            config = config_from_dict(meta["config"])
        except (FitError, TypeError, ValueError) as exc:
            result.skipped.append(f"{meta['key']}: {exc}")
            continue
        if new == meta["key"]:
            continue
        result.moved[meta["key"]] = new
        if dry_run:
            continue
        entry = cache.get(meta["key"])
        if entry is None:
            continue
        cache.put(replace(entry, key=new, config=config.as_dict()))
        cache.delete(meta["key"])
    folder = cache.root / "analyses" / REGULARISER_ANALYSIS
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        stored = cache.get_analysis(REGULARISER_ANALYSIS, path.stem)
        if stored is None or not any(k in result.moved for k in stored[0].get("keys", [])):
            continue
        meta = dict(stored[0])
        meta["keys"] = [result.moved.get(k, k) for k in meta["keys"]]
        if isinstance(meta.get("config"), dict):
            meta["config"] = config_from_dict(meta["config"]).as_dict()
        result.analyses += 1
        if dry_run:
            continue
        for name in ("key", "kind", "created"):
            meta.pop(name, None)
        cache.put_analysis(REGULARISER_ANALYSIS, setting_key(meta["keys"], meta["groups"], meta["teacher"]), meta)
        path.unlink()
    return result
