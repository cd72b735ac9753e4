"""The shipped pre-fit's format (data/prefit): its manifest and its compact entries.

Read by the pages' analyses (core.embeddings finds a set's entries through the manifest) and written by
core.prefit and core.sweeps, which fit them. See core.prefit for how the folder is made.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Mapping

from core.cache import SHIPPED_ROOT, CacheEntry, ProtoCache, _write_json

MANIFEST = "manifest.json"
MAX_HISTORY_POINTS = 40

# The demo entry: what the analysis pages show on a fresh install until the user picks an entry
# (ui.state.default_entry), and whose noise sweep and attention ship with it (core.prefit.ship_demo_views).
# A converged text of the "variants" set (26 tokens, accuracy 1.0 in 267 steps): long enough for the
# heatmaps to read like the paper's figures, short enough to label every position.
DEMO_SET = "variants"
DEMO_TEXT = ("A thick fog rolled in from the sea this morning, so the ferries stayed in the harbour until the "
             "sky cleared at noon.")


@dataclass(frozen=True)
class PrefitSet:
    """One set of the manifest: what was fitted, with what, and how long it took."""

    name: str
    model: str  # model identity (LoadedModel.identity)
    model_name: str
    config: dict  # FitConfig.as_dict()
    texts: list[str]
    keys: list[str]  # cache key of each text, same order
    teacher_key: str | None = None  # analysis key of the set's teacher embeddings
    wall_time_s: float = 0.0  # fitting time summed over the runs that fitted this set's texts
    n_timed: int = 0  # texts fitted within wall_time_s (those fitted earlier for another set are not)
    n_fitted: int = 0  # entries present
    n_converged: int = 0
    mean_accuracy: float | None = None
    total_steps: int = 0
    batch_size: int = 8
    updated: float = 0.0

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("name")
        return d


def load_manifest(root: str | os.PathLike | None = None) -> dict[str, PrefitSet]:
    """Set name -> PrefitSet of the manifest under root (default SHIPPED_ROOT); {} when there is none or it
    is unreadable."""
    path = Path(root or SHIPPED_ROOT) / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {name: PrefitSet(name=name, **{k: v for k, v in item.items() if k in _PREFIT_FIELDS})
                for name, item in data.get("sets", {}).items()}
    except (OSError, ValueError, TypeError):
        return {}


_PREFIT_FIELDS = {f.name for f in fields(PrefitSet)} - {"name"}


def write_manifest(root: Path, record: PrefitSet) -> dict[str, PrefitSet]:
    """Store one set's record, keeping the others as they are on disk now (another process may be
    pre-fitting another set into the same folder)."""
    sets = load_manifest(root)
    sets[record.name] = record
    _write_json(root / MANIFEST, {
        "about": "Pre-fitted proto-tokens of the built-in text sets; regenerate with `python -m core prefit`.",
        "sets": {name: s.as_dict() for name, s in sets.items()},
    })
    return sets


def thin_history(history: Mapping[str, list], max_points: int = MAX_HISTORY_POINTS) -> dict[str, list]:
    """At most max_points evenly spaced points of each curve, first and last always kept."""
    n = len(history.get("step", []))
    if n <= max_points:
        return {k: list(v) for k, v in history.items()}
    picks = sorted({round(i * (n - 1) / (max_points - 1)) for i in range(max_points)})
    return {k: [v[i] for i in picks] if len(v) == n else list(v) for k, v in history.items()}


def compact_entry(entry: CacheEntry, max_points: int = MAX_HISTORY_POINTS) -> CacheEntry:
    """The entry without replay snapshots and with a thinned history: what the shipped cache keeps."""
    return replace(entry, snapshots=[], history=thin_history(entry.history, max_points))


def prefit_status(record: PrefitSet | None, model: str) -> tuple[float, str]:
    """How much of a set ships pre-fitted for this model: (share of its texts fitted, a short phrase; "" when
    nothing of it does)."""
    if record is None or record.model != model or not record.n_fitted or not record.texts:
        return 0.0, ""
    n = len(record.texts)
    if record.n_fitted >= n:
        return 1.0, f"pre-fitted, {record.n_converged} of {n} converged"
    return record.n_fitted / n, f"pre-fitted so far: {record.n_fitted} of {n} texts"


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
