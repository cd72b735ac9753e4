"""The demo entry: what the analysis pages show on a fresh install until the user picks an entry
(ui.state.default_entry), and whose noise sweep and attention ship with it (core.shipped.prefit.ship_demo_views).
"""

from __future__ import annotations

import os

from core.engine.cache import CacheEntry, ProtoCache
from core.engine.sets import load_manifest

# A converged example of the Reconstruct page (25 tokens, accuracy 1.0 in 231 steps with the sidebar's default
# settings): long enough for the heatmaps to read like the paper's figures, short enough to label every position,
# and shipped with its replay (the examples keep their snapshots). The example list shows it picked.
DEMO_SET = "examples"
DEMO_TEXT = ("The cache stores each fitted vector under a hash of the model name, the token ids and every setting "
             "that changes the result.")
# Before the examples shipped, the demo was a text of the variants set (26 tokens, 1.0 in 267 steps): a shipped
# folder without the examples still opens on it.
FALLBACK_SET = "variants"
FALLBACK_TEXT = ("A thick fog rolled in from the sea this morning, so the ferries stayed in the harbour until the "
                 "sky cleared at noon.")


def demo_candidates(model: str, root: str | os.PathLike | None = None) -> list[str]:
    """Keys the demo entry of a model may be, best first: DEMO_TEXT in DEMO_SET, FALLBACK_TEXT in FALLBACK_SET, then
    every key of the manifest's sets of that model, in the manifest's order. [] when nothing ships for the model."""
    sets = [record for record in load_manifest(root).values() if record.model == model]
    keys = [key for name, wanted in ((DEMO_SET, DEMO_TEXT), (FALLBACK_SET, FALLBACK_TEXT)) for record in sets
            if record.name == name for text, key in zip(record.texts, record.keys) if text == wanted]
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
