"""The capacity ladder that ships in data/prefit: the built-in long texts (core.analyses.capacity.load_long_texts)
cut at the paper's lengths up to SHIPPED_LADDER_MAX tokens, fitted on the embedded model with the sidebar's default
preset, so the Capacity page draws a ladder on a fresh install. Longer ladders run on a GPU (`python -m core ladder
--max-length 362` there).

    python -m core ladder [--max-length 64]

Entries are stored compact (core.engine.sets.compact_entry); ladder.json records what was fitted, the settings and
the wall time summed over the runs that fitted it (a stopped run resumes: what finished is cached)."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

from core.analyses.capacity import (ABLATION_LENGTH, ABLATION_STEPS, LadderSettings,
                                    load_long_texts, prefix, run_layouts, run_ladder, time_generation)
from core.engine.cache import SHIPPED_ROOT, ProtoCache, read_json, write_json
from core.engine.fit import FitConfig, FitProgress, complete_metrics
from core.engine.models import LoadedModel
from core.engine.sets import compact_entry
from core.shipped.prefit import examples_config

LADDER_RECORD = "ladder.json"
SHIPPED_LADDER_MAX = 64


def load_ladder_record(root: str | os.PathLike = SHIPPED_ROOT) -> dict | None:
    """ladder.json under root, or None when there is none or it is unreadable."""
    try:
        record = read_json(Path(root) / LADDER_RECORD)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def ship_ladder(root: str | os.PathLike = SHIPPED_ROOT, *, lm: LoadedModel | None = None,
                max_length: int = SHIPPED_LADDER_MAX, config: FitConfig | None = None, quiet: bool = False,
                stop: threading.Event | None = None) -> dict:
    """Fit (or resume) the shipped ladder under root and write its record; returns the record."""
    if lm is None:
        from core.engine.models import load_model

        lm = load_model()
    root = Path(root)
    config = config or examples_config()  # the sidebar's default: the page finds it as is
    cache = ProtoCache(root, shipped="")
    sources = {t.name: t.text for t in load_long_texts()}
    settings = LadderSettings(max_length=max_length)
    previous = load_ladder_record(root) or {}
    same = previous.get("config") == config.as_dict() and previous.get("model") == lm.identity
    last = [0.0]

    def progress(p: FitProgress, rows: list[int]) -> None:
        if not quiet and time.perf_counter() - last[0] > 30:
            last[0] = time.perf_counter()
            print(f"  ladder: step {p.step}, best accuracy {', '.join(f'{a:.2f}' for a in p.best_accuracy)}, "
                  f"{p.elapsed:.0f} s", file=sys.stderr, flush=True)

    start = time.perf_counter()
    result = run_ladder(lm, sources, settings, config, cache, progress, stop)
    wall = time.perf_counter() - start
    if not result.complete:  # a stopped run stores its unfinished prefixes: they do not ship (the next run refits them)
        for listing in cache.list(lm.identity):
            entry = cache.get(listing.key, lm.hidden_size)
            if entry is not None and entry.metrics.get("status") == "cancelled":
                cache.delete(listing.key)
    for key in result.rows["key"].dropna():
        entry = cache.get(key, lm.hidden_size)
        if entry is not None and (entry.snapshots or len(entry.history.get("step", [])) > 40):
            cache.put(compact_entry(entry))
    fitted = int(sum(1 for key in result.rows["key"].dropna() if key not in set(previous.get("keys", []))))
    record = {
        "about": "The capacity ladder shipped for the Capacity page; regenerate with `python -m core ladder`.",
        "model": lm.identity, "model_name": lm.name, "config": config.as_dict(), "settings": settings.as_dict(),
        "sources": list(sources), "keys": [k for k in result.rows["key"].dropna()],
        "longest": result.longest, "complete": result.complete,
        # summed over the runs that fitted its entries (a run that found everything cached adds nothing)
        "wall_time_s": round((previous.get("wall_time_s", 0.0) if same else 0.0) + (wall if fitted else 0.0), 1),
        "rows": result.rows.drop(columns=["text"]).to_dict(orient="records"),
    }
    write_json(root / LADDER_RECORD, record)
    if not quiet:
        print(f"Ladder up to {max_length} tokens: longest {result.longest} in {wall:.0f} s this run "
              f"({record['wall_time_s']:.0f} s in all) into {root}", file=sys.stderr)
    return record


def ship_capacity_views(root: str | os.PathLike = SHIPPED_ROOT, *, lm: LoadedModel | None = None,
                        quiet: bool = False) -> None:
    """What the Capacity page shows besides the ladder, with its default settings: the five layouts on the long
    texts' ABLATION_LENGTH-token prefixes (up to ABLATION_STEPS steps each), the one-pass against decoding timing of
    the shipped ladder's reconstructed prefixes (measured on this machine), and the metrics
    every entry of the model records that an older one lacks (core.engine.fit.complete_metrics: H_LM, e's BOS
    prediction)."""
    from dataclasses import replace

    if lm is None:
        from core.engine.models import load_model

        lm = load_model()
    root = Path(root)
    cache = ProtoCache(root, shipped="")
    config = examples_config()
    t0 = time.perf_counter()
    texts = [prefix(lm, t.text, ABLATION_LENGTH) for t in load_long_texts()]
    run_layouts(lm, texts, replace(config, max_steps=ABLATION_STEPS), cache)
    record = load_ladder_record(root) or {}
    for row in record.get("rows", []):
        if row.get("converged") and (entry := cache.get(row["key"], lm.hidden_size)) is not None:
            time_generation(lm, entry, cache)
    added = complete_metrics(lm, cache)
    if not quiet:
        print(f"Capacity views stored in {time.perf_counter() - t0:.0f} s (metrics completed in {added} entries) into {root}",
              file=sys.stderr)
