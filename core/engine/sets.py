"""Named sets of cache entries: a manifest (manifest.json beside the entries) lists, per set, its texts, their
cache keys, the fit settings and what the fit cost. The shipped pre-fit (data/prefit, written by
core.shipped.prefit) is read through it; core.analyses.embeddings finds a set's entries by it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Mapping, Sequence

from core.engine.cache import SHIPPED_ROOT, CacheEntry, ProtoCache, write_json
from core.engine.fit import FitConfig, lookup
from core.engine.models import LoadedModel, TextError
from core.texts.textsets import TextSetError

MANIFEST = "manifest.json"
MAX_HISTORY_POINTS = 40


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
    write_json(root / MANIFEST, {
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


def most_prefitted(names: Sequence[str], manifest: Mapping[str, PrefitSet], model: str) -> int:
    """Index of the set the shipped pre-fit covers best for this model (the first on a tie): where a page opens
    on a fresh install, so it draws at once."""
    share = [prefit_status(manifest.get(name), model)[0] for name in names]
    return max(range(len(names)), key=lambda i: (share[i], -i)) if names else 0


def corpus_sets(root: str | os.PathLike, model: str, exclude: Sequence[str] = ()) -> dict[str, PrefitSet]:
    """The sets a cache's own manifest lists for this model (corpora fitted with ``core fit --file``), except
    the names in exclude (the built-in sets keep their own texts)."""
    return {name: record for name, record in load_manifest(root).items()
            if record.model == model and name not in exclude}


def set_frame(record: PrefitSet) -> "pd.DataFrame":
    """A listed set's texts as a text set (columns text, group, kind); a corpus has one group of originals."""
    import pandas as pd

    return pd.DataFrame({"text": list(record.texts), "group": "corpus", "kind": "original"}, dtype=str)


# ---- a set's texts, the configurations it can be looked up with, and its entries ---------------------

def validate_set(lm: LoadedModel, texts: Sequence[str], layout: str, where: Sequence[str] | None = None
                 ) -> list[list[int]]:
    """Token ids of every text [n][n_tokens]; a TextSetError names the first text the model cannot fit, by
    where[i] (e.g. "corpus.txt line 7"; default "text i")."""
    targets = []
    for row, text in enumerate(texts, start=1):
        try:
            targets.append(lm.validate_text(text, layout))
        except TextError as error:
            short = text if len(text) <= 50 else text[:47] + "..."
            label = where[row - 1] if where is not None else f"text {row}"
            raise TextSetError(f"{label} ({short!r}): {error}") from None
    return targets


@dataclass(frozen=True)
class ConfigChoice:
    """A fit configuration the page can show a set with: a label for people and the config itself."""

    label: str
    config: FitConfig
    shipped: bool = False  # the pre-fitted configuration of a built-in set
    # text -> cache key recorded by the pre-fit: found even if a later FitConfig field changes the key
    keys: dict[str, str] = field(default_factory=dict)


def fit_choices(shipped: FitConfig | None, sidebar: FitConfig, keys: Mapping[str, str] | None = None
                ) -> list[ConfigChoice]:
    """The configurations a page offers for a set: the pre-fitted one first when something ships for it (then
    the page finds the shipped entries whatever preset the sidebar shows), and the sidebar's when it differs.
    keys: text -> cache key recorded by the pre-fit (found even if a later FitConfig field moved the key)."""
    choices = []
    if shipped is not None:
        choices.append(ConfigChoice(f"pre-fitted settings (preset {shipped.preset}, up to {shipped.max_steps} steps)",
                                    shipped, True, dict(keys or {})))
    if not choices or sidebar.key_dict() != choices[0].config.key_dict():
        choices.append(ConfigChoice(f"sidebar settings (preset {sidebar.preset}, up to {sidebar.max_steps} steps)",
                                    sidebar))
    return choices


def set_entries(lm: LoadedModel, texts: Sequence[str], choice: ConfigChoice, cache: ProtoCache
                ) -> list[CacheEntry | None]:
    """The cached entry of each text fitted with the choice's config (None where missing), without history.

    The keys a manifest recorded are read in bulk through the cache's index (ProtoCache.get_many: a corpus of
    thousands opens in seconds); the other texts are looked up by the key today's code gives them. Coupled
    texts (shared m, a regulariser) are keyed by their whole batch, so they are always looked up together."""
    config = choice.config
    if config.shared_m or config.has_regularizer:
        entries = lookup(lm, texts, config, cache)
        found = cache.get_many([choice.keys[t] for t, e in zip(texts, entries) if e is None and t in choice.keys],
                               lm.hidden_size)
        return [e if e is not None else found.get(choice.keys.get(t, "")) for t, e in zip(texts, entries)]
    found = cache.get_many([choice.keys[t] for t in texts if t in choice.keys], lm.hidden_size)
    entries = [found.get(choice.keys.get(t, "")) for t in texts]
    missing = [i for i, e in enumerate(entries) if e is None]
    if missing:
        for i, entry in zip(missing, lookup(lm, [texts[i] for i in missing], config, cache)):
            entries[i] = entry
    return entries
