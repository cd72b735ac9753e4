"""The default regulariser sweep: pre-fitted for the embedded model and shipped in data/prefit, with a
manifest analysis that the Regularisers page reads whatever preset the sidebar shows.

Its own short texts, its settings and base config; ``prefit_default_sweep`` fits it into the shipped cache
(``python -m core prefit``), ``load_default_sweep`` reads it back through core.analyses.regularisers.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from core.analyses.regularisers import (
    RegulariserProgress,
    RegulariserResult,
    RegulariserSetting,
    default_settings,
    load_regularisers,
    run_regularisers,
    sweep_config,
)
from core.engine.cache import ProtoCache
from core.engine.fit import FitConfig, config_from_dict, preset
from core.engine.models import LoadedModel
from core.engine.sets import MAX_HISTORY_POINTS, ConfigChoice, compact_entry, fit_choices
from core.engine.teacher import canonical_teacher_name
from core.texts.textsets import COLUMNS

MANIFEST_ANALYSIS = "regularizer-sweep-manifest"  # what was fitted and how long
MANIFEST_KEY = "default"

# The default sweep, pre-fitted for the embedded model and shipped in data/prefit. A regularised setting is
# one coupled fit that runs until its slowest text converges, and a step costs about the sum of its texts'
# tokens, so on a CPU (bench/regularisers.py measures it) the set must be small and its texts
# short: the built-in sources of data/texts.json are 20-30 tokens each, too long for the budget, so the sweep
# has its own short texts (written for this project), each source with two paraphrases, giving the silhouette
# groups to measure and the teacher clear semantic relations to transfer.
DEFAULT_SET_NAME = "regulariser demo"
SHORT_SOURCES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("rain", ("Heavy rain flooded the village road.", "The village street was flooded by heavy rain.",
              "A downpour left the road through the village under water.")),
    ("cat", ("The old cat slept by the fire.", "By the fireplace, the elderly cat was asleep.",
             "An aged cat dozed next to the fire.")),
    ("train", ("Our train to the coast was late.", "The train we took to the seaside was delayed.",
               "We reached the coast late because the train was slow.")),
    ("bread", ("She baked fresh bread every morning.", "Each morning she made a new loaf of bread.",
               "Every day at dawn, she baked bread.")),
    ("football", ("The home team won the match easily.", "The local side had an easy victory.",
                  "Playing at home, the team won without trouble.")),
    ("rocket", ("The rocket lifted off into a clear sky.", "Into a cloudless sky, the rocket took off.",
                "The launch went up through a clear sky.")),
)
# A coupled setting runs to its step cap unless every text converges at once, so the sweep costs about
# settings x DEFAULT_MAX_STEPS coupled steps (bench/regularisers.py and the manifest record what it took); the
# cap is where most texts of the baseline have converged.
DEFAULT_SET_SOURCES = 4
DEFAULT_SET_PARAPHRASES = 1
DEFAULT_PRESET = "fast"
DEFAULT_MAX_STEPS = 300


def default_sweep_set(n_sources: int = DEFAULT_SET_SOURCES, n_paraphrases: int = DEFAULT_SET_PARAPHRASES
                      ) -> pd.DataFrame:
    """The default sweep's short texts: n_sources sources of SHORT_SOURCES, each with n_paraphrases paraphrases
    (columns text, group, kind as in core.texts.textsets; group = the source)."""
    rows = []
    for group, (original, *paraphrases) in SHORT_SOURCES[:n_sources]:
        rows.append((original, group, "original"))
        rows.extend((p, group, "semantic") for p in paraphrases[:n_paraphrases])
    return pd.DataFrame(rows, columns=list(COLUMNS), dtype=str)


def default_base_config() -> FitConfig:
    return sweep_config(preset(DEFAULT_PRESET, max_steps=DEFAULT_MAX_STEPS))


@dataclass(frozen=True)
class DefaultSweepManifest:
    """The shipped default sweep: enough to rebuild its settings and find its entries with any sidebar."""

    model: str
    model_name: str
    set_name: str
    texts: list[str]
    groups: list[str]
    config: dict  # FitConfig.as_dict() of the base config
    teacher: str
    settings: list[dict]  # RegulariserSetting.as_dict() each
    wall_time_s: dict[str, float | None]  # setting label -> seconds the fit took on the machine that made it
    total_wall_time_s: float
    torch_threads: int
    created: float
    cpus: int = 0  # CPU cores of the machine that made it

    def sweep_settings(self) -> list[RegulariserSetting]:
        return [RegulariserSetting(**s) for s in self.settings]

    def base_config(self) -> FitConfig:
        return config_from_dict(self.config)


def load_default_sweep_manifest(cache: ProtoCache) -> DefaultSweepManifest | None:
    """The default sweep's manifest from the cache (or its shipped fallback); None when absent or unreadable."""
    stored = cache.get_analysis(MANIFEST_ANALYSIS, MANIFEST_KEY)
    if stored is None:
        return None
    meta = stored[0]
    try:
        return DefaultSweepManifest(**{f: meta[f] for f in DefaultSweepManifest.__dataclass_fields__ if f in meta})
    except TypeError:  # a required field missing or of the wrong kind
        return None


def prefit_default_sweep(cache: ProtoCache, quiet: bool = False, *, lm: LoadedModel | None = None,
                         frame: pd.DataFrame | None = None, settings: Sequence[RegulariserSetting] | None = None,
                         base_config: FitConfig | None = None) -> RegulariserResult:
    """Fit the default sweep into ``cache`` (the shipped one: ProtoCache(SHIPPED_ROOT, shipped="")), compact
    its entries and write the manifest. Idempotent: settings already there are skipped.

    lm, frame, settings, base_config: default the embedded model, default_sweep_set(), default_settings()
    and preset("fast", max_steps=600); tests pass small ones.
    """
    if lm is None:
        from core.engine.models import load_model

        lm = load_model()
    frame = default_sweep_set() if frame is None else frame
    settings = default_settings() if settings is None else list(settings)
    base_config = base_config or default_base_config()
    texts, groups = frame["text"].tolist(), frame["group"].astype(str).tolist()
    last = [0.0]

    def say(message: str) -> None:
        if not quiet:
            print(message, file=sys.stderr, flush=True)

    def on_progress(p: RegulariserProgress) -> None:
        now = time.perf_counter()
        if p.fit is None:
            say(f"  [sweep] setting {p.index + 1}/{p.n_settings}: {p.setting.label}")
        elif now - last[0] > 30:
            last[0] = now
            say(f"  [sweep] {p.setting.label}: step {p.fit.step}/{p.fit.max_steps}, mean accuracy "
                f"{np.mean(p.fit.accuracy):.3f}, {p.fit.elapsed:.0f} s")

    say(f"Regulariser sweep: {len(texts)} texts x {len(settings)} settings "
        f"({', '.join(s.label for s in settings)}), preset {base_config.preset}, max {base_config.max_steps} steps, "
        f"{torch.get_num_threads()} torch threads")
    result = run_regularisers(lm, texts, groups, settings, base_config, cache, progress=on_progress)
    for r in result.results:
        for key in r.keys:
            entry = cache.get(key)
            if entry is not None and (entry.snapshots or len(entry.history.get("step", [])) > MAX_HISTORY_POINTS):
                cache.put(compact_entry(entry))
        say(f"  [sweep] {r.setting.label}: accuracy {r.accuracy:.3f} ({r.converged}/{r.n_texts} converged, "
            f"{r.steps} steps), alignment e {r.alignment_e:+.3f}, silhouette e "
            f"{'n/a' if r.silhouette_e is None else f'{r.silhouette_e:+.3f}'}, "
            f"{'cached' if r.cached else f'{r.wall_time:.0f} s'}")
    walls = {r.setting.label: r.wall_time for r in result.results}
    manifest = DefaultSweepManifest(
        model=lm.identity, model_name=lm.name, set_name=DEFAULT_SET_NAME, texts=texts, groups=groups,
        config=base_config.as_dict(), teacher=result.teacher, settings=[s.as_dict() for s in result.settings],
        wall_time_s=walls, total_wall_time_s=round(sum(w for w in walls.values() if w is not None), 1),
        torch_threads=torch.get_num_threads(), created=time.time(), cpus=os.cpu_count() or 0)
    cache.put_analysis(MANIFEST_ANALYSIS, MANIFEST_KEY, asdict(manifest))
    return result


def load_default_sweep(lm: LoadedModel, cache: ProtoCache) -> tuple[DefaultSweepManifest, RegulariserResult] | None:
    """The default sweep as shipped (or as fitted since), when there is a manifest for this model."""
    manifest = load_default_sweep_manifest(cache)
    if manifest is None or manifest.model != lm.identity:
        return None
    result = load_regularisers(lm, manifest.texts, manifest.groups, manifest.sweep_settings(), manifest.base_config(),
                        cache, teacher=None if manifest.teacher == canonical_teacher_name(None) else manifest.teacher)
    return manifest, result


def sweep_choices(manifest: DefaultSweepManifest | None, lm: LoadedModel, texts: Sequence[str],
                  sidebar: FitConfig) -> list[ConfigChoice]:
    """Configurations the Regularisers page offers for a set: the shipped sweep's own (found by name whatever
    the sidebar says) when the set is the shipped one for this model, then the sidebar's as a sweep fits it."""
    shipped = manifest is not None and manifest.model == lm.identity and list(texts) == manifest.texts
    return fit_choices(manifest.base_config() if shipped else None, sweep_config(sidebar))
