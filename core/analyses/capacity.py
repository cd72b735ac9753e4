"""Capacity: how long a text two vectors hold (the first paper's experiments, docs/science.md A).

* The ladder (`run_ladder`, `load_ladder`): a source text cut into prefixes of the paper's lengths (4, 5, 8, 11, 16,
  22, 32, 45, 64, 90, 128, 181, 256, ... tokens, growing by sqrt 2), fitted in order until a length fails to reach
  the threshold; m per text, or shared by the ladder's texts of one length (the paper's two columns). The longest
  length reconstructed, per source and in the mean, beside the paper's table.
* Information content (`information_table`): H_LM, the text's own autoregressive cross-entropy under the same
  model (core.engine.reconstruct.information_content; stored with every entry fitted since, computed and cached
  for older ones), against what the fit reached.
* The layout ablation (`run_layouts`, `load_layouts`): the paper's five arrangements of e and m on the same texts.
* One pass against autoregressive decoding (`time_generation`): the one forward pass that rebuilds N tokens against
  greedy decoding of N tokens with the KV cache (`generate`), on this device.

Everything is fitted through core.engine.fit.fit_and_cache, so each text is stored the moment it is finished and the
`load_` functions rebuild a result from the cache alone (the ladder and the ablation are lookups of cached entries).
"""

from __future__ import annotations

import json
import math
import statistics
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd
import torch

from core.engine.cache import CacheEntry, ProtoCache, cache_key
from core.engine.fit import FitConfig, FitProgress, fit_and_cache, lookup
from core.engine.jobs import BackgroundJob
from core.engine.models import LoadedModel, TextError
from core.engine.reconstruct import (COUNTS, PAPER_LAYOUT_ACCURACY, PAPER_LAYOUT_ORDER, information_content,
                                     predict_tokens, stored_count)

LONG_TEXTS_FILE = Path(__file__).resolve().parents[2] / "data" / "long_texts.json"
# The paper's lengths: 4, then growing by sqrt 2 (rounded), as its table lists them.
PAPER_LENGTHS = (4, 5, 8, 11, 16, 22, 32, 45, 64, 90, 128, 181, 256, 362, 512, 724, 1024, 1448, 2048)
# Longest text reconstructed to 0.99, m per text / m shared (the first paper's table; docs/science.md A.capacity).
PAPER_CAPACITY = {"Pythia-160M": (128, 45), "Pythia-410M": (167, 32), "Pythia-1.4B": (128, 64),
                  "Llama-3.2-1B": (362, 181), "Llama-3.2-3B": (512, 256), "Llama-3.1-8B": (724, 362)}
PAPER_CAPACITY_SETTING = "Mezentsev & Oseledets 2025: PG-19 texts, threshold 0.99, up to 5000 steps"
PAPER_LAYOUT_SETTING = "Mezentsev & Oseledets 2025: Llama-3.2-1B, N = 256"
PAPER_SPEEDUP = 279.0  # one-pass throughput against autoregressive decoding, their average
# The layout ablation's defaults on the page (and in the shipped pre-fit): prefixes of this length, at most these steps.
ABLATION_LENGTH, ABLATION_STEPS = 16, 500
H_LM_ANALYSIS = "h-lm"
TIMING_ANALYSIS = "generation-timing"
TIMING_VERSION = "generation-timing-v1"
# accuracy and c_tokens over the N text positions; bos_correct: e's own output against BOS (None where not recorded),
# for the seed paper's count (counted_rows)
LADDER_COLUMNS = ["source", "length", "n_tokens", "accuracy", "c_tokens", "converged", "steps", "wall_time",
                  "h_lm", "bos_correct", "key", "text"]


@dataclass(frozen=True)
class LongText:
    name: str
    text: str


def load_long_texts() -> list[LongText]:
    """The built-in long source texts (data/long_texts.json), written for this project."""
    data = json.loads(LONG_TEXTS_FILE.read_text(encoding="utf-8"))
    return [LongText(item["name"], item["text"]) for item in data["texts"]]


@dataclass(frozen=True)
class LadderSettings:
    """max_length: the longest prefix tried (the source's own length caps it too). shared_m: one m for the ladder's
    texts of one length (the paper's second column), else each text its own."""

    max_length: int = 181
    shared_m: bool = False

    def __post_init__(self) -> None:
        if not PAPER_LENGTHS[0] <= int(self.max_length) <= PAPER_LENGTHS[-1]:
            raise ValueError(f"The longest prefix must be between {PAPER_LENGTHS[0]} and {PAPER_LENGTHS[-1]} tokens, "
                             f"not {self.max_length}.")
        object.__setattr__(self, "max_length", int(self.max_length))

    def as_dict(self) -> dict:
        return asdict(self)


def ladder_lengths(n_tokens: int, max_length: int) -> list[int]:
    """The paper's lengths a text of n_tokens offers, up to max_length."""
    return [n for n in PAPER_LENGTHS if n <= min(n_tokens, max_length)]


def prefix(lm: LoadedModel, text: str, length: int) -> str:
    """The text's first `length` tokens as text. A prefix whose decoded text encodes to other tokens (a cut inside a
    multi-byte character) is shortened by a token until it round-trips, so its entry holds what the length says or a
    token less."""
    ids = lm.encode(text)
    for n in range(min(length, len(ids)), 0, -1):
        piece = lm.decode(ids[:n])
        if lm.encode(piece) == ids[:n]:
            return piece
    raise TextError(f"No prefix of {length} tokens of this text encodes back to itself.")


def _ladder_config(config: FitConfig, shared_m: bool) -> FitConfig:
    # A shared m couples the texts of one length: fitted from draws, together (core.engine.fit).
    return replace(config, shared_m=True, restarts=1, compute="", start="", stop="", extra_steps=0) if shared_m \
        else config


def _row(source: str, length: int, entry: CacheEntry | None) -> dict:
    metrics = entry.metrics if entry is not None else {}
    accuracy = float(metrics.get("accuracy", 0.0))
    n = entry.n_tokens if entry is not None else length
    return {"source": source, "length": length, "n_tokens": n, "accuracy": accuracy,
            "c_tokens": int(round(accuracy * n)), "converged": bool(metrics.get("converged", False)),
            "steps": int(metrics.get("steps", 0)), "wall_time": float(metrics.get("wall_time", 0.0)),
            "h_lm": metrics.get("h_lm"), "bos_correct": metrics.get("bos_correct"),
            "key": entry.key if entry is not None else None,
            "text": entry.text if entry is not None else None}


@dataclass
class LadderResult:
    rows: pd.DataFrame  # LADDER_COLUMNS, one row per (source, length) fitted, in order
    longest: dict[str, int]  # source -> the longest length reconstructed with every shorter one (0: none)
    complete: bool  # every source reached a failing length or its last length

    @property
    def mean_longest(self) -> float:
        return statistics.fmean(self.longest.values()) if self.longest else 0.0


def _ladder(lm: LoadedModel, sources: dict[str, str], settings: LadderSettings, config: FitConfig,
            fit: Callable[[list[str], FitConfig], list[CacheEntry | None]], cancel: threading.Event | None = None
            ) -> LadderResult:
    """The ladder's stopping rule over `fit` (which fits, or only looks up): lengths in order; a source leaves the
    ladder at its first length that fails the threshold (with a shared m, the texts of one length share one m)."""
    config = _ladder_config(config, settings.shared_m)
    lengths = {name: ladder_lengths(len(lm.encode(text)), settings.max_length) for name, text in sources.items()}
    alive = [name for name in sources if lengths[name]]
    longest = {name: 0 for name in sources}
    rows, complete = [], True
    for length in sorted({n for ls in lengths.values() for n in ls}):
        climbing = [name for name in alive if length in lengths[name]]
        if not climbing:
            continue
        if cancel is not None and cancel.is_set():
            complete = False
            break
        entries = fit([prefix(lm, sources[name], length) for name in climbing], config)
        if any(entry is None for entry in entries):  # not fitted (load) or stopped (run)
            complete = False
            rows += [_row(name, length, entry) for name, entry in zip(climbing, entries) if entry is not None]
            break
        for name, entry in zip(climbing, entries):
            rows.append(_row(name, length, entry))
            if entry.metrics.get("converged"):
                longest[name] = length
            else:
                alive.remove(name)
    frame = pd.DataFrame(rows, columns=LADDER_COLUMNS).astype({"length": int, "converged": bool})
    return LadderResult(frame, longest, complete)


def _finished(entries: Sequence[CacheEntry | None]) -> list[CacheEntry | None]:
    """The entries whose fit ran to its end: a stopped one is stored (nothing fitted is lost) but decides nothing."""
    return [e if e is not None and e.metrics.get("status") != "cancelled" else None for e in entries]


def run_ladder(lm: LoadedModel, sources: dict[str, str], settings: LadderSettings, config: FitConfig,
               cache: ProtoCache, progress: Callable[[FitProgress, list[int]], None] | None = None,
               cancel: threading.Event | None = None) -> LadderResult:
    """Fit the ladder of every source (name -> text) through the cache, length by length; see the module."""
    def fit(texts: list[str], cfg: FitConfig) -> list[CacheEntry | None]:
        outcomes = fit_and_cache(lm, texts, cfg, cache, callback=progress, callback_every=5, cancel=cancel)
        return _finished([o.entry if o is not None else None for o in outcomes])

    return _ladder(lm, sources, settings, config, fit, cancel)


def load_ladder(lm: LoadedModel, sources: dict[str, str], settings: LadderSettings, config: FitConfig,
                cache: ProtoCache) -> LadderResult:
    """The ladder as far as the cache holds it (no fitting): complete=False where a length is still missing."""
    return _ladder(lm, sources, settings, config, lambda texts, cfg: _finished(lookup(lm, texts, cfg, cache)))


def capacity_table(result: LadderResult, model_name: str, shared_m: bool) -> pd.DataFrame:
    """The longest length per source and in the mean, beside the paper's table (its column for this m)."""
    rows = [{"model": model_name, "texts": name, "longest (tokens)": n} for name, n in result.longest.items()]
    rows.append({"model": model_name, "texts": "mean", "longest (tokens)": round(result.mean_longest, 1)})
    column = 1 if shared_m else 0
    rows += [{"model": f"{model} (paper)", "texts": "PG-19", "longest (tokens)": values[column]}
             for model, values in PAPER_CAPACITY.items()]
    return pd.DataFrame(rows)


# ---- information content -----------------------------------------------------------------------------

def entry_information(lm: LoadedModel, entry: CacheEntry, cache: ProtoCache | None = None) -> float:
    """An entry's H_LM in nats: stored with it, else computed and cached as an analysis (one forward pass)."""
    if entry.metrics.get("h_lm") is not None:
        return float(entry.metrics["h_lm"])
    key = cache_key("h-lm-v1", lm.identity, list(entry.token_ids))
    stored = cache.get_analysis(H_LM_ANALYSIS, key) if cache is not None else None
    if stored is not None and isinstance(stored[0].get("h_lm"), (int, float)):
        return float(stored[0]["h_lm"])
    value = information_content(lm, list(entry.token_ids))
    if cache is not None:
        cache.keep_analysis(H_LM_ANALYSIS, key, {"h_lm": value})
    return value


def information_table(lm: LoadedModel, entries: Sequence[CacheEntry], cache: ProtoCache | None = None
                      ) -> pd.DataFrame:
    """One row per entry: its H_LM (nats), length, what its fit reached (accuracy, C_tokens, converged, steps)."""
    rows = []
    for entry in entries:
        accuracy = float(entry.metrics.get("accuracy", 0.0))
        rows.append({"key": entry.key, "text": entry.text, "n_tokens": entry.n_tokens,
                     "h_lm": entry_information(lm, entry, cache), "accuracy": accuracy,
                     "c_tokens": int(round(accuracy * entry.n_tokens)),
                     "converged": bool(entry.metrics.get("converged")), "steps": int(entry.metrics.get("steps", 0)),
                     "layout": entry.layout, "bos_correct": entry.metrics.get("bos_correct")})
    return pd.DataFrame(rows, columns=["key", "text", "n_tokens", "h_lm", "accuracy", "c_tokens", "converged", "steps",
                                       "layout", "bos_correct"])


def counted_rows(rows: pd.DataFrame, count: str = "text") -> tuple[pd.DataFrame, int]:
    """A table of entries (columns accuracy and n_tokens over the N text positions, bos_correct; c_tokens where it
    has one) with accuracy and c_tokens in one of core.engine.reconstruct.COUNTS (stored_count) and a column
    positions (what they are counted over: N, or N + 1), and how many rows could not be counted so (no BOS
    prediction recorded: they keep their N positions)."""
    if count not in COUNTS:
        raise ValueError(f"Unknown count {count!r}; use one of {', '.join(COUNTS)}.")
    counts = [stored_count({"accuracy": a, "bos_correct": b if b in (True, False) else None}, int(n), count)
              for a, b, n in zip(rows["accuracy"], rows["bos_correct"], rows["n_tokens"])]
    out = rows.copy()
    out["accuracy"] = pd.Series([c.accuracy for c in counts], index=rows.index, dtype=float)
    if "c_tokens" in out:
        out["c_tokens"] = pd.Series([c.c_tokens for c in counts], index=rows.index, dtype=int)
    out["positions"] = pd.Series([c.n_positions for c in counts], index=rows.index, dtype=int)
    return out, sum(c.count != count for c in counts)


# ---- the layout ablation -----------------------------------------------------------------------------

LAYOUT_COLUMNS = ["layout", "text", "n_tokens", "accuracy", "converged", "steps", "bos_correct", "key"]


def _layout_config(config: FitConfig, layout: str) -> FitConfig:
    # e's BOS position exists in e+m*N only; the seed paper's batch rule and a start stay as the config says
    return replace(config, layout=layout, score_bos=config.score_bos and layout == "e+m*N")


def _layouts(texts: Sequence[str], config: FitConfig,
             fit: Callable[[list[str], FitConfig], list[CacheEntry | None]], cancel: threading.Event | None = None
             ) -> pd.DataFrame:
    rows = []
    for layout in PAPER_LAYOUT_ORDER:
        if cancel is not None and cancel.is_set():
            break
        for text, entry in zip(texts, fit(list(texts), _layout_config(config, layout))):
            if entry is not None:
                rows.append({"layout": layout, "text": text, "n_tokens": entry.n_tokens,
                             "accuracy": float(entry.metrics.get("accuracy", 0.0)),
                             "converged": bool(entry.metrics.get("converged")),
                             "steps": int(entry.metrics.get("steps", 0)),
                             "bos_correct": entry.metrics.get("bos_correct"), "key": entry.key})
    return pd.DataFrame(rows, columns=LAYOUT_COLUMNS).astype({"converged": bool})


def run_layouts(lm: LoadedModel, texts: Sequence[str], config: FitConfig, cache: ProtoCache,
                progress: Callable[[FitProgress, list[int]], None] | None = None,
                cancel: threading.Event | None = None) -> pd.DataFrame:
    """Fit every text in each of the paper's five layouts (PAPER_LAYOUT_ORDER) through the cache: one row per
    (layout, text) fitted."""
    def fit(batch: list[str], cfg: FitConfig) -> list[CacheEntry | None]:
        outcomes = fit_and_cache(lm, batch, cfg, cache, callback=progress, callback_every=5, cancel=cancel)
        return _finished([o.entry if o is not None else None for o in outcomes])

    return _layouts(texts, config, fit, cancel)


def load_layouts(lm: LoadedModel, texts: Sequence[str], config: FitConfig, cache: ProtoCache) -> pd.DataFrame:
    """The ablation as far as the cache holds it (no fitting)."""
    return _layouts(texts, config, lambda batch, cfg: _finished(lookup(lm, batch, cfg, cache)))


def layout_summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean accuracy and converged share per layout, in the paper's order, beside the paper's accuracy."""
    out = []
    for layout in PAPER_LAYOUT_ORDER:
        part = rows[rows["layout"] == layout]
        out.append({"layout": layout, "texts": len(part),
                    "mean accuracy": float(part["accuracy"].mean()) if len(part) else math.nan,
                    "converged": int(part["converged"].sum()) if len(part) else 0,
                    "paper accuracy": PAPER_LAYOUT_ACCURACY[layout]})
    return pd.DataFrame(out)


# ---- one pass against autoregressive decoding ------------------------------------------------------------

@dataclass
class GenerationTiming:
    n_tokens: int
    one_pass_s: float  # median seconds of the one forward pass that rebuilds the text
    generate_s: float  # median seconds of greedy decoding of as many tokens with the KV cache
    repeats: int
    device: str

    @property
    def ratio(self) -> float:
        return self.generate_s / self.one_pass_s if self.one_pass_s else math.nan

    def as_dict(self) -> dict:
        return {**asdict(self), "ratio": self.ratio}


def _median_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def time_generation(lm: LoadedModel, entry: CacheEntry, cache: ProtoCache | None = None, repeats: int = 3
                    ) -> GenerationTiming:
    """The one-pass reconstruction of the entry's N tokens against greedy decoding of N tokens with the KV cache
    (`generate`, from the tokenizer's BOS token, else from the text's first token), both timed here, medians of
    `repeats` after one warm-up each; cached per entry and device (timings of another machine are its own)."""
    stored = load_generation_timing(lm, entry, cache, repeats) if cache is not None else None
    if stored is not None:
        return stored
    n = entry.n_tokens
    bos = getattr(lm.tokenizer, "bos_token_id", None)
    start_ids = [int(bos)] if bos is not None else [int(entry.token_ids[0])]
    new_tokens = n if bos is not None else max(n - 1, 1)
    prompt = torch.tensor([start_ids], device=lm.device)

    def one_pass():
        predict_tokens(lm, entry.e, entry.m, n, entry.layout)

    def decode():
        lm.model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                          min_new_tokens=new_tokens, do_sample=False, use_cache=True,
                          pad_token_id=lm.tokenizer.eos_token_id)

    one_pass()
    decode()
    timing = GenerationTiming(n_tokens=n, one_pass_s=_median_time(one_pass, repeats),
                              generate_s=_median_time(decode, repeats), repeats=repeats, device=lm.device.type)
    if cache is not None:
        cache.keep_analysis(TIMING_ANALYSIS, _timing_key(lm, entry, repeats), timing.as_dict())
    return timing


def _timing_key(lm: LoadedModel, entry: CacheEntry, repeats: int) -> str:
    return cache_key(TIMING_VERSION, lm.identity, lm.device.type, entry.key, repeats)


def load_generation_timing(lm: LoadedModel, entry: CacheEntry, cache: ProtoCache, repeats: int = 3
                           ) -> GenerationTiming | None:
    """The cached timing of time_generation, or None (never measuring)."""
    stored = cache.get_analysis(TIMING_ANALYSIS, _timing_key(lm, entry, repeats))
    if stored is None:
        return None
    try:
        return GenerationTiming(**{name: stored[0][name] for name in GenerationTiming.__dataclass_fields__})
    except (KeyError, TypeError):
        return None


# ---- the background job ------------------------------------------------------------------------------

@dataclass
class CapacitySnapshot:
    state: str  # "running", "done", "cancelled", "failed"
    what: str  # "ladder" or "layouts"
    step: int
    best_accuracy: list[float]
    texts: int
    elapsed: float
    error: str | None = None
    traceback: str | None = None
    result: object = None  # LadderResult or the layouts' DataFrame

    @property
    def finished(self) -> bool:
        return self.state != "running"


class CapacityJob(BackgroundJob):
    """run_ladder or run_layouts in a daemon thread: start, snapshot, cancel (every finished text stays cached)."""

    thread_name = "capacity"

    def __init__(self, what: str, lm: LoadedModel, cache: ProtoCache, config: FitConfig, *,
                 sources: dict[str, str] | None = None, settings: LadderSettings | None = None,
                 texts: Sequence[str] = ()):
        if what not in ("ladder", "layouts"):
            raise ValueError(f"Unknown capacity work {what!r}; use ladder or layouts.")
        self.what, self.lm, self.cache, self.config = what, lm, cache, config
        self.sources, self.settings, self.texts = dict(sources or {}), settings or LadderSettings(), list(texts)
        self._state, self._error, self._result = "running", None, None
        self._step, self._best, self._n = 0, [], 0
        super().__init__()

    def _on_progress(self, progress: FitProgress, rows: list[int]) -> None:
        with self._lock:
            self._step, self._best, self._n = progress.step, list(progress.best_accuracy), len(rows)

    def _work(self) -> None:
        if self.what == "ladder":
            result = run_ladder(self.lm, self.sources, self.settings, self.config, self.cache, self._on_progress,
                                self.cancel_event)
        else:
            result = run_layouts(self.lm, self.texts, self.config, self.cache, self._on_progress, self.cancel_event)
        with self._lock:
            self._result = result
            self._state = "cancelled" if self.cancel_event.is_set() else "done"

    def snapshot(self) -> CapacitySnapshot:
        with self._lock:
            return CapacitySnapshot(state=self._state, what=self.what, step=self._step, best_accuracy=list(self._best),
                                    texts=self._n, elapsed=self._elapsed(), error=self._error,
                                    traceback=self._traceback, result=self._result)
