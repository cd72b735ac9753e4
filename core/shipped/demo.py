"""The demo entry: what the analysis pages show on a fresh install until the user picks an entry
(ui.state.default_entry), and whose noise sweep and attention ship with it (core.shipped.prefit.ship_demo_views).
"""

from __future__ import annotations

import os

from core.engine.cache import CacheEntry, ProtoCache
from core.engine.sets import load_manifest

# A converged text of the "variants" set (26 tokens, accuracy 1.0 in 267 steps): long enough for the
# heatmaps to read like the paper's figures, short enough to label every position.
DEMO_SET = "variants"
DEMO_TEXT = ("A thick fog rolled in from the sea this morning, so the ferries stayed in the harbour until the "
             "sky cleared at noon.")


def demo_candidates(model: str, root: str | os.PathLike | None = None) -> list[str]:
    """Keys the demo entry of a model may be, best first: DEMO_TEXT in DEMO_SET, then every key of the
    manifest's sets of that model, in the manifest's order. [] when nothing ships for the model."""
    sets = [record for record in load_manifest(root).values() if record.model == model]
    keys = [key for record in sets if record.name == DEMO_SET
            for text, key in zip(record.texts, record.keys) if text == DEMO_TEXT]
    keys += [key for record in sets for key in record.keys]
    return list(dict.fromkeys(keys))


def demo_entry(model: str, cache: ProtoCache, hidden: int | None = None,
               root: str | os.PathLike | None = None) -> CacheEntry | None:
    """The demo entry of a model: the first converged entry among demo_candidates (manifest under root,
    default SHIPPED_ROOT) that the cache can read, or None (the tiny model, a model nothing ships for)."""
    for key in demo_candidates(model, root):
        entry = cache.get(key, hidden)
        if entry is not None and entry.model == model and entry.metrics.get("converged"):
            return entry
    return None
