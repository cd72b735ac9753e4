"""The pre-fitted cache of the built-in text sets, shipped in data/prefit (``python -m core prefit``).

Fitting 200 texts takes the better part of an hour on a 2-core CPU, so the project ships the proto-tokens
of the built-in sets (core.texts.textsets.PREFIT_SETS) for the embedded model, fitted with the "fast" preset.
Each entry is compacted (no replay snapshots, a thinned history) so the folder stays a few MB.

``data/prefit/manifest.json`` records, per set, the model identity, the exact FitConfig and the cache
key of every text, so the Embeddings page finds a set's entries whatever preset the sidebar shows::

    {"sets": {"variants": {"model": ..., "model_name": ..., "config": FitConfig.as_dict(), "texts": [...],
                           "keys": [...], "teacher_key": ..., "wall_time_s": ..., ...}, ...}}

A run resumes: texts already in the folder are skipped, and the manifest is rewritten after every chunk.
Delete data/prefit to regenerate it from scratch (after the fast preset changes, say).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from core.engine.cache import SHIPPED_ROOT, CacheEntry, ProtoCache
from core.engine.fit import UI_PRESETS, CachedFit, FitConfig, FitProgress, entry_keys, fit_and_cache, preset
from core.engine.models import LoadedModel
from core.engine.sets import PrefitSet, compact_entry, load_manifest, write_manifest
from core.shipped.demo import demo_entry
from core.texts.textsets import BUILTIN_SETS, PREFIT_SETS, builtin_set, load_examples

PREFIT_PRESET = "fast"
# A text still below the threshold after this many steps is left as it is (the page excludes entries
# under 0.9 anyway), so one stubborn text cannot eat the time budget of the whole pre-fit.
PREFIT_MAX_STEPS = 600
# One draw per text: the fast preset starts a stuck draw over after 20 steps, which is what 4 restarts side by
# side were for (on the first 24 syntax sentences, one N(0, embedding std) draw each without redraws, 9 stayed
# stuck near accuracy 0 for all 600 steps), at a quarter of the row-steps.
PREFIT_RESTARTS = 1
# The shipped pre-fit was made before the fast preset got its plateau rule (FitConfig.redraw_plateau); refitting
# it with the rule takes hours on a CPU, so the pre-fit keeps the settings its entries were made with.
PREFIT_REDRAW_PLATEAU = 0
# ... nor a learned start (FitConfig.start): the pre-fit is what the starts are learned from.
PREFIT_START = ""
# One torch thread: on a shared CPU, OpenMP threads wait on each other whenever one is descheduled, and a step of
# 8 rows took several times longer with 2 threads than with 1 (bench/fit_speed.py measures steps).
PREFIT_THREADS = int(os.environ.get("PROTOTOKENS_PREFIT_THREADS", "1"))
# Entries are written after each chunk, so a stopped pre-fit loses at most one chunk's work.
CHUNK = 24
# The Reconstruct page's example texts (data/examples.json), fitted with the dashboard's default preset as it is
# (UI_PRESETS[0], its learned start included), so picking one shows its fit at once, replay included: these
# entries keep their snapshots and whole history (six texts: a few hundred KB).
EXAMPLES_SET = "examples"


def examples_frame() -> pd.DataFrame:
    """The example texts as a set: one group per example (its title)."""
    examples = load_examples()
    return pd.DataFrame({"text": [ex.text for ex in examples], "group": [ex.title for ex in examples],
                         "kind": "original"})


def examples_config() -> FitConfig:
    """What the examples are fitted with: the settings the sidebar opens on."""
    return preset(UI_PRESETS[0])


def prefit_frame(name: str) -> pd.DataFrame:
    """The texts of a pre-fitted set by name: a built-in set, or the examples."""
    return examples_frame() if name == EXAMPLES_SET else builtin_set(name)


def prefit_config() -> FitConfig:
    """The settings the shipped pre-fit is made with: the fast preset, capped, one draw per text."""
    return preset(PREFIT_PRESET, max_steps=PREFIT_MAX_STEPS, restarts=PREFIT_RESTARTS,
                  redraw_plateau=PREFIT_REDRAW_PLATEAU, start=PREFIT_START)


def _fmt_seconds(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.0f} s"


def prefit_builtin(
    quiet: bool = False,
    root: str | os.PathLike = SHIPPED_ROOT,
    *,
    sets: Sequence[str] | Mapping[str, pd.DataFrame] = (*PREFIT_SETS, EXAMPLES_SET),
    lm: LoadedModel | None = None,
    config: FitConfig | None = None,
    batch_size: int = 8,
    chunk: int = CHUNK,
    teacher: bool = True,
    sweep: bool = True,
    fit: bool = True,
    demo: bool = True,
    stop: threading.Event | None = None,
) -> dict[str, PrefitSet]:
    """Fit the built-in sets into the shipped cache under root and write its manifest.

    sets: built-in set names (EXAMPLES_SET too), or name -> frame (tests pass their own small sets). lm: the model
    (default: the embedded one). config: default prefit_config(); the examples always get examples_config(). teacher: also store each
    set's teacher embeddings there. sweep: then run the Regularisers page's default sweep (core.analyses.regularisers) if
    it exists. demo: after the sets, store the demo entry's noise sweep and attention (ship_demo_views).
    fit=False: fit nothing, only record (compacted) what the folder holds, e.g. after a run that
    was killed. stop: set it (the CLI does on Ctrl-C or SIGTERM) to end after the running chunk: its unfinished
    texts are stored as they are, the manifest and views are written and the sweep is skipped; running
    again resumes. Returns the manifest's sets.
    """
    root = Path(root)
    if lm is None:
        from core.engine.models import load_model

        lm = load_model()
    config = config or prefit_config()
    import torch

    threads = torch.get_num_threads()
    if PREFIT_THREADS > 0:
        torch.set_num_threads(PREFIT_THREADS)
    try:
        return _prefit(lm, config, root, sets, quiet, batch_size, chunk, teacher, sweep and fit, fit, demo,
                       stop or threading.Event())
    finally:
        torch.set_num_threads(threads)


def _prefit(lm: LoadedModel, config: FitConfig, root: Path, sets: Sequence[str] | Mapping[str, pd.DataFrame],
            quiet: bool, batch_size: int, chunk: int, teacher: bool, sweep: bool, fit: bool, demo: bool,
            stop: threading.Event) -> dict[str, PrefitSet]:
    cache = ProtoCache(root, shipped="")
    frames = dict(sets) if isinstance(sets, Mapping) else {name: prefit_frame(name) for name in sets}
    base_config = config
    manifest = load_manifest(root)

    def say(message: str) -> None:
        if not quiet:
            print(message, file=sys.stderr, flush=True)

    say(f"Pre-fitting {', '.join(f'{n} ({len(f)} texts)' for n, f in frames.items())} for {lm.name} "
        f"with preset {config.preset} (max {config.max_steps} steps, batch {batch_size}; the examples with the "
        f"dashboard's default settings) into {root}")
    t_all = time.perf_counter()
    for name, frame in frames.items():
        config = examples_config() if name == EXAMPLES_SET else base_config
        keep_replay = name == EXAMPLES_SET
        texts = frame["text"].tolist()
        targets = [lm.validate_text(t, config.layout) for t in texts]
        keys, _ = entry_keys(lm, targets, config)
        previous = manifest.get(name)
        same = previous is not None and previous.keys == keys
        wall = previous.wall_time_s if same else 0.0
        timed = previous.n_timed if same else 0
        t_set = time.perf_counter()
        entries: list[CacheEntry | None] = [None] * len(texts)
        for start in range(0, len(texts), chunk):
            part = list(range(start, min(start + chunk, len(texts))))
            t_chunk = time.perf_counter()
            last_report = [0.0]

            def progress(p: FitProgress, indices: list[int], part=part) -> None:
                now = time.perf_counter()
                if not quiet and now - last_report[0] > 30:
                    last_report[0] = now
                    say(f"  [{name}] texts {part[0] + 1}-{part[-1] + 1}: step {p.step}, {sum(p.done)}/{len(p.done)} "
                        f"done, min best accuracy {min(p.best_accuracy):.2f}, {_fmt_seconds(p.elapsed)}")

            if fit:
                outcomes = fit_and_cache(lm, [texts[i] for i in part], config, cache, batch_size=batch_size,
                                         callback=progress, cancel=stop)
            else:
                outcomes = [None if (e := cache.get(keys[i])) is None else CachedFit(e, cached=True) for i in part]
            fitted_now = 0
            for i, outcome in zip(part, outcomes):
                if outcome is None:
                    continue
                entry = outcome.entry if keep_replay else compact_entry(outcome.entry)
                if not outcome.cached or (not keep_replay and (entry.history != outcome.entry.history
                                                              or outcome.entry.snapshots)):
                    cache.put(entry)
                fitted_now += not outcome.cached
                entries[i] = entry
            if fitted_now:
                wall += time.perf_counter() - t_chunk
                timed += fitted_now
            record = _set_record(name, lm, config, texts, keys, entries, wall, timed, batch_size)
            manifest = write_manifest(root, record)
            if previous is not None and not same:
                # Fitted with other settings before: this set no longer refers to those entries; another set
                # of the manifest may still list some (a text two sets share), and those stay.
                still_listed = {key for other in manifest.values() for key in other.keys}
                removed = sum(cache.delete(key) for key in set(previous.keys) - still_listed)
                say(f"  [{name}] removed {removed} entries of the previous pre-fit (other settings)")
                previous = None
            say(f"  [{name}] {min(part[-1] + 1, len(texts))}/{len(texts)} texts ({fitted_now} fitted now), "
                f"set time {_fmt_seconds(wall)}")
            if stop.is_set():
                break
        if teacher:
            manifest = write_manifest(root, _ship_views(cache, manifest[name], frame, entries))
        record = manifest[name]
        if stop.is_set():
            say(f"[{name}] stopped: {record.n_fitted}/{len(texts)} fitted ({record.n_converged} converged) are kept; "
                "run again to resume.")
            return manifest
        say(f"[{name}] {'done' if fit else 'recorded'}: {record.n_fitted}/{len(texts)} fitted, "
            f"{record.n_converged} converged, "
            f"mean accuracy {record.mean_accuracy or 0:.3f}, fitting time {_fmt_seconds(record.wall_time_s)} (this run {_fmt_seconds(time.perf_counter() - t_set)})")
    say(f"All sets done in {_fmt_seconds(time.perf_counter() - t_all)}; {_size_mb(root):.1f} MB in {root}")
    if demo:
        ship_demo_views(root, lm=lm, quiet=quiet)

    if sweep:
        try:
            from core.shipped.default_sweep import prefit_default_sweep
        except ImportError as error:
            say(f"note: no default regulariser sweep pre-fitted ({error})")
        else:
            prefit_default_sweep(cache, quiet=quiet)
            say(f"Regulariser sweep done; {_size_mb(root):.1f} MB in {root}")
    return manifest


def _ship_views(cache: ProtoCache, record: PrefitSet, frame: pd.DataFrame,
                entries: Sequence[CacheEntry | None]) -> PrefitSet:
    """Store the set's teacher embeddings and the page's first view of it (default threshold and map), so
    the page draws it without loading the teacher or running t-SNE. Returns the record with its teacher key."""
    from core.analyses import embeddings as emb

    texts = frame["text"].tolist()
    teacher = emb.teacher_embeddings(texts, cache)
    kept = emb.assemble_set(frame, entries, min_accuracy=emb.DEFAULT_MIN_ACCURACY, teacher=teacher)
    if kept.n >= 2:
        emb.project_spaces(kept, kept.spaces, emb.DEFAULT_METHOD, perplexity=emb.DEFAULT_PERPLEXITY, cache=cache)
    return replace(record, teacher_key=emb.teacher_key(texts))


def ship_views(root: str | os.PathLike = SHIPPED_ROOT, quiet: bool = False) -> dict[str, PrefitSet]:
    """Teacher embeddings and default maps for every set of the manifest under root, from the entries it
    has, without fitting: for a pre-fit that was stopped before the end of a set."""
    cache = ProtoCache(root, shipped="")
    for name, record in load_manifest(root).items():
        frame = prefit_frame(name) if name in BUILTIN_SETS or name == EXAMPLES_SET else pd.DataFrame(
            {"text": record.texts, "group": "default", "kind": "original"})
        by_text = dict(zip(record.texts, record.keys))
        entries = [cache.get(by_text[t]) if t in by_text else None for t in frame["text"]]
        write_manifest(Path(root), _ship_views(cache, record, frame, entries))
        if not quiet:
            print(f"[{name}] views stored for {sum(e is not None for e in entries)} fitted texts", file=sys.stderr)
    return load_manifest(root)


def ship_demo_views(root: str | os.PathLike = SHIPPED_ROOT, *, lm: LoadedModel | None = None,
                    quiet: bool = False) -> str | None:
    """Store what the Noise and Attention pages show first for the demo entry (core.shipped.demo.demo_entry, the
    entry ui.state.default_entry makes current on a fresh install): the noise sweep with the Noise page's default
    settings (NoiseSettings()) and the attention analysis, so both pages draw at once without a forward pass; and the
    teacher embeddings and the mean of the converged entries, a fit's learned starts (core.engine.start).

    Computed with the same functions and keys the pages use; whatever is stored already is read back, not
    recomputed, so a second run changes nothing. Returns the demo entry's key (None when lm has no converged
    entry under root: nothing is stored)."""
    from core.analyses.attention import run_attention
    from core.analyses.noise import NoiseSettings, run_noise
    from core.engine.start import candidate_embeddings, candidates, mean_start

    if lm is None:
        from core.engine.models import load_model

        lm = load_model()
    cache = ProtoCache(root, shipped="")
    entry = demo_entry(lm.identity, cache, lm.hidden_size, root=root)
    if entry is None:
        if not quiet:
            print(f"note: no converged entry of {lm.name} in {root}; no demo views stored", file=sys.stderr)
        return None
    settings = NoiseSettings()
    t0 = time.perf_counter()
    run_noise(lm, [entry], settings, cache=cache)
    run_attention(lm, entry, cache)
    candidate_embeddings(cache, lm.identity, candidates(cache, lm.identity, entry.layout))  # learned starts
    mean_start(cache, lm.identity, lm.hidden_size, entry.layout)
    if not quiet:
        print(f"Demo views (noise sweep, attention) of {entry.key[:12]} ({entry.n_tokens} tokens) stored in "
              f"{_fmt_seconds(time.perf_counter() - t0)}; {_size_mb(Path(root)):.1f} MB in {root}", file=sys.stderr)
    return entry.key


def ship_demo_geometry(root: str | os.PathLike = SHIPPED_ROOT, *, lm: LoadedModel | None = None,
                       quiet: bool = False) -> str | None:
    """Store what the Geometry page shows first for the demo entry, with its default settings (GeometrySettings()):
    the solutions of its other seeds (fitted, compact), the line and the trained curve from the entry to the next
    solution, and the trajectory of a refit. What is stored already is read back, not recomputed. Returns the demo
    entry's key (None when there is none)."""
    from core.analyses.geometry import (GeometrySettings, default_pair, run_path, run_solutions,
                                        run_trajectory)

    if lm is None:
        from core.engine.models import load_model

        lm = load_model()
    cache = ProtoCache(root, shipped="")
    entry = demo_entry(lm.identity, cache, lm.hidden_size, root=root)
    if entry is None:
        return None
    settings = GeometrySettings()
    t0 = time.perf_counter()
    solutions = run_solutions(lm, entry, settings, cache)
    for solution in solutions.entries:  # the other seeds' entries ship compact, like every pre-fitted one; the
        if solution.key != entry.key and solution.snapshots:  # demo entry is an example and keeps its replay
            cache.put(compact_entry(solution))
    pair = default_pair(solutions)
    if pair is not None:
        by_key = {e.key: e for e in solutions.entries}
        run_path(lm, by_key[pair[0]], by_key[pair[1]], settings, cache)
    run_trajectory(lm, entry, settings, cache)
    if not quiet:
        print(f"Demo geometry of {entry.key[:12]} stored in {_fmt_seconds(time.perf_counter() - t0)}", file=sys.stderr)
    return entry.key


def _set_record(name: str, lm: LoadedModel, config: FitConfig, texts: list[str], keys: list[str],
                entries: Sequence[CacheEntry | None], wall: float, timed: int, batch_size: int) -> PrefitSet:
    present = [e for e in entries if e is not None]
    accuracies = [float(e.metrics.get("accuracy", 0.0)) for e in present]
    return PrefitSet(
        name=name, model=lm.identity, model_name=lm.name, config=config.as_dict(), texts=texts, keys=keys,
        wall_time_s=round(wall, 1), n_timed=timed, n_fitted=len(present),
        n_converged=sum(bool(e.metrics.get("converged")) for e in present),
        mean_accuracy=round(sum(accuracies) / len(accuracies), 4) if accuracies else None,
        total_steps=sum(int(e.metrics.get("steps", 0)) for e in present), batch_size=batch_size,
        updated=time.time(),
    )


def _size_mb(root: Path) -> float:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 1e6 if root.exists() else 0.0
