"""How the solutions of one text lie (docs/science.md, A.geometry): several solutions, the paths between two of
them, and the trajectory of a fit.

Solutions. The cached entries of one text and model (the same token ids and layout, any seed or setting) are its
solutions; ``run_solutions`` fits more with other seeds (the entry's own settings with ``seed`` replaced and a random
first draw: a learned start would put every seed at the same point). ``solution_tables`` gives their norms and, per
pair, the L2 distance and the cosine of e, of m and of the concatenation [e, m].

Paths. Between two solutions A = (e_a, m_a) and B = (e_b, m_b): the straight line (1 - t) A + t B, and the quadratic
Bezier curve (1 - t)^2 A + 2 t (1 - t) C + t^2 B whose control point C (for e and m together) is trained with AdamW so
that the loss averaged over points t sampled on the curve is low. C starts at the midpoint, where the curve is the
line itself, so training can only bend it away from the line where that lowers the loss. Both paths are decoded at
K points t in [0, 1] in batched forward passes; the end points are the two solutions exactly. The first paper found
the line collapses between two solutions while such a curve holds.

Trajectory. The entry's text refitted with its settings (from a random first draw: a learned start depends on
what the cache holds now), recording (e, m) every k steps (``core.engine.fit.fit_texts(record_every=k)``); the
concatenated points [e, m] projected by PCA (centred, SVD): their 2-D coordinates, the share of variance of the
first components and the reconstruction at every recorded point. Progressive Cramming (Tarasov et al.) found such
trajectories low-dimensional: the first two components held 65.7% of the variance.

Every result is a cached analysis (kind ``GEOMETRY_ANALYSIS``), keyed by ``geometry_key``; ``load_*`` reads it without
running the model, ``run_*`` computes what is missing and stores it. ``GeometryJob`` runs any of the three in a
thread with a cancel.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from jaxtyping import Float, Float32, Float64, Int
from torch import Tensor

from core.engine.cache import CacheEntry, ProtoCache, cache_key
from core.engine.fit import FitProgress, config_from_dict, fit_and_cache, fit_texts, lookup
from core.engine.jobs import BackgroundJob
from core.engine.models import LoadedModel
from core.engine.reconstruct import COUNTS, bos_target, scored_logits, stored_count, token_metrics
from core.engine.shapes import checked
from core.texts.numbers import NumberList

log = logging.getLogger(__name__)

GEOMETRY_ANALYSIS = "geometry"
# Part of every key: bump when what is computed or stored changes.
GEOMETRY_VERSION = "geometry-v1"
PARTS = ("solutions", "path", "trajectory")
PATHS = ("line", "curve")

MAX_SEEDS = 8
MAX_POINTS = 201
MAX_PATH_STEPS = 5000
MAX_SAMPLES = 64
MAX_LR = 10.0
MAX_RECORD_EVERY = 1000
DECODE_BATCH = 32  # points of a path or a trajectory decoded in one forward pass
COMPONENTS = 10  # shares of variance kept of a trajectory's PCA

ProgressCallback = Callable[[float, str], None]


class GeometryError(ValueError):
    """A geometry analysis cannot run as asked; the message is one line meant for the user."""


SEEDS = NumberList(
    low=0, high=2**31 - 1, max_count=MAX_SEEDS, error=GeometryError,
    empty="Enter at least one seed, e.g. 1, 2.",
    not_a_number="{item!r} is not a whole number; separate seeds with commas, e.g. 1, 2.",
    out_of_range="seed {item} is out of range: seeds are whole numbers from 0 to 2147483647.",
    too_many=f"{{count}} seeds given; at most {MAX_SEEDS}.")


def parse_seeds(text: str) -> tuple[int, ...]:
    """Seeds typed as a list ("1, 2" or "1 2") -> sorted unique ints; GeometryError (a ValueError) with a one-line
    message naming the item that is wrong."""
    values = SEEDS.parse(text)
    for value in values:
        if value != int(value):
            raise GeometryError(f"{value:g} is not a whole number; seeds are whole numbers, e.g. 1, 2.")
    return tuple(int(value) for value in values)


# ---- settings -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GeometrySettings:
    """Every setting of the three geometry analyses, validated with one-line messages.

    seeds: the seeds of the solutions ``run_solutions`` fits (besides what the cache holds).
    points: K, the points t in [0, 1] (both ends included) each path is decoded at.
    steps, lr, samples, seed: the control point's training (AdamW steps, learning rate, points t sampled on the
    curve per step, the seed of their draw).
    record_every: a trajectory's point every this many steps of the fit.
    ``part_dict(part)`` is what enters that part's key (``as_dict()`` all of it).
    """

    seeds: tuple[int, ...] = (1, 2)
    points: int = 21
    steps: int = 200
    lr: float = 0.05
    samples: int = 8
    seed: int = 0
    record_every: int = 10

    def __post_init__(self) -> None:
        seeds = tuple(sorted({int(s) for s in self.seeds}))
        if not seeds:
            raise GeometryError("Give at least one seed to fit.")
        if len(seeds) > MAX_SEEDS:
            raise GeometryError(f"{len(seeds)} seeds given; at most {MAX_SEEDS}.")
        if any(s < 0 or s >= 2**31 for s in seeds):
            raise GeometryError("seeds are whole numbers from 0 to 2147483647.")
        checks = (("points", self.points, 2, MAX_POINTS), ("steps", self.steps, 1, MAX_PATH_STEPS),
                  ("samples", self.samples, 1, MAX_SAMPLES), ("record_every", self.record_every, 1, MAX_RECORD_EVERY))
        for name, value, low, high in checks:
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
                raise GeometryError(f"{name} must be a whole number from {low} to {high}, got {value!r}.")
        if not isinstance(self.lr, (int, float)) or not math.isfinite(self.lr) or not 0 < self.lr <= MAX_LR:
            raise GeometryError(f"lr must be a number in (0, {MAX_LR:g}], got {self.lr!r}.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise GeometryError(f"seed must be a whole number >= 0, got {self.seed!r}.")
        object.__setattr__(self, "seeds", seeds)
        for name in ("points", "steps", "samples", "record_every", "seed"):
            object.__setattr__(self, name, int(getattr(self, name)))
        object.__setattr__(self, "lr", float(self.lr))

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["seeds"] = list(self.seeds)
        return d

    def part_dict(self, part: str) -> dict[str, Any]:
        """The settings one part's result depends on."""
        _check_part(part)
        fields_of = {"solutions": ("seeds",), "path": ("points", "steps", "lr", "samples", "seed"),
                     "trajectory": ("record_every",)}
        d = self.as_dict()
        return {name: d[name] for name in fields_of[part]}


def _check_part(part: str) -> None:
    if part not in PARTS:
        raise GeometryError(f"Unknown part {part!r}; use one of {', '.join(PARTS)}.")


def geometry_key(lm: LoadedModel, entries: Sequence[CacheEntry], settings: GeometrySettings, part: str) -> str:
    """The analysis key of one part for these entries (their order matters: a path runs from the first to the
    second), the model and the device type (kernels round differently) and that part's settings."""
    return cache_key(GEOMETRY_VERSION, part, lm.identity, lm.device.type, [entry.key for entry in entries],
                     settings.part_dict(part))


def _check_entry(lm: LoadedModel, entry: CacheEntry) -> None:
    if entry.model != lm.identity:
        raise GeometryError(f"Entry {entry.key[:8]} was fitted on {entry.model_name or entry.model!r}, not on "
                            f"{lm.name!r}: proto-tokens only mean something to the model they were fitted for.")
    if tuple(entry.e.shape) != (lm.hidden_size,) or tuple(entry.m.shape) != (lm.hidden_size,):
        raise GeometryError(f"Entry {entry.key[:8]} has width {tuple(entry.e.shape)}, the model {lm.hidden_size}.")


def _cancelled(cancel: threading.Event | None) -> bool:
    return cancel is not None and cancel.is_set()


# ---- solutions --------------------------------------------------------------------------------------------------

def same_text_entries(lm: LoadedModel, entry: CacheEntry, cache: ProtoCache) -> list[CacheEntry]:
    """The cached solutions of the entry's text for this model: the same token ids and layout, any seed or
    setting, the entry itself first, then the others oldest first (unreadable ones left out)."""
    others = [listed for listed in cache.list(lm.identity)
              if listed.key != entry.key and list(listed.token_ids) == list(entry.token_ids)
              and listed.config.get("layout", "e+m*N") == entry.layout]
    others.sort(key=lambda listed: (listed.created, listed.key))
    found = [entry]
    for listed in others:
        other = cache.get(listed.key, lm.hidden_size)
        if other is not None:
            found.append(other)
    return found


def seed_config(entry: CacheEntry, seed: int):
    """The FitConfig of another solution of the entry's text: its own settings for a text fitted alone (a shared m,
    a regulariser or a batch stop tie a text to the batch it was fitted in), this seed and a random first draw (a
    learned start would put every seed at the same point)."""
    config = config_from_dict(entry.config)
    return replace(config, shared_m=False, regularizer=None, stop="", seed=int(seed), start="")


@checked
def solution_vectors(entries: Sequence[CacheEntry]) -> tuple[Float64[np.ndarray, "n hidden"], Float64[np.ndarray, "n hidden"]]:
    """The solutions' e and m as float64 matrices [n, hidden] (distances and cosines are computed in float64)."""
    e = np.stack([entry.e.detach().cpu().double().numpy() for entry in entries])
    m = np.stack([entry.m.detach().cpu().double().numpy() for entry in entries])
    return e, m


SOLUTION_COLUMNS = ("entry", "seed", "preset", "start", "accuracy", "steps", "norm_e", "norm_m", "norm_em")
PAIR_COLUMNS = ("a", "b", "distance_e", "distance_m", "distance_em", "cosine_e", "cosine_m", "cosine_em")


def _cosine(x: np.ndarray, y: np.ndarray) -> float:
    denominator = float(np.linalg.norm(x) * np.linalg.norm(y))
    return float(x @ y) / denominator if denominator > 0 else math.nan


def solution_tables(entries: Sequence[CacheEntry]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(solutions, pairs): one row per solution (its key, seed, preset, start, accuracy, steps and the norms of e, m
    and [e, m]) and one per unordered pair a < b in the order given (L2 distances and cosines of e, m and [e, m])."""
    e, m = solution_vectors(entries)
    em = np.concatenate([e, m], axis=1)
    rows = []
    for i, entry in enumerate(entries):
        rows.append({"entry": entry.key, "seed": int(entry.config.get("seed", 0)),
                     "preset": str(entry.config.get("preset", "")), "start": str(entry.config.get("start", "")),
                     "accuracy": float(entry.metrics.get("accuracy", math.nan)),
                     "steps": int(entry.metrics.get("steps", 0)), "norm_e": float(np.linalg.norm(e[i])),
                     "norm_m": float(np.linalg.norm(m[i])), "norm_em": float(np.linalg.norm(em[i]))})
    pairs = []
    for i in range(len(entries)):
        for j in range(i + 1, len(entries)):
            row: dict[str, Any] = {"a": entries[i].key, "b": entries[j].key}
            for name, x in (("e", e), ("m", m), ("em", em)):
                row[f"distance_{name}"] = float(np.linalg.norm(x[i] - x[j]))
                row[f"cosine_{name}"] = _cosine(x[i], x[j])
            pairs.append(row)
    return (pd.DataFrame(rows, columns=list(SOLUTION_COLUMNS)), pd.DataFrame(pairs, columns=list(PAIR_COLUMNS)))


@dataclass
class SolutionsResult:
    """The solutions of one text: the entries, their table and their pairs' (solution_tables)."""

    entries: list[CacheEntry]
    solutions: pd.DataFrame
    pairs: pd.DataFrame
    missing_seeds: tuple[int, ...] = ()  # seeds of the settings not fitted (yet)
    from_cache: bool = False

    @property
    def keys(self) -> list[str]:
        return [entry.key for entry in self.entries]

    def counted(self, count: str = "text") -> tuple[pd.DataFrame, int]:
        """The solutions' table with accuracy in one of COUNTS (core.engine.reconstruct.stored_count), and how many
        could not be counted so (no BOS prediction recorded: their N text positions)."""
        counts = [stored_count(entry.metrics, entry.n_tokens, count) for entry in self.entries]
        if len(counts) != len(self.solutions):
            raise ValueError("the solutions' table does not match its entries")
        table = self.solutions.copy()
        table["accuracy"] = pd.Series([c.accuracy for c in counts], index=table.index, dtype=float)
        return table, sum(c.count != count for c in counts)


def _seed_entry(lm: LoadedModel, entry: CacheEntry, seed: int, cache: ProtoCache) -> CacheEntry | None:
    """The cached solution of the entry's text with this seed (seed_config), None when it is not fitted (or was
    cancelled)."""
    [found] = lookup(lm, [entry.text], seed_config(entry, seed), cache)
    return found if found is not None and found.metrics.get("status") != "cancelled" else None


def _solutions_key(lm: LoadedModel, entries: Sequence[CacheEntry], settings: GeometrySettings) -> str:
    return geometry_key(lm, entries, settings, "solutions")


def _store_solutions(cache: ProtoCache, key: str, result: SolutionsResult) -> None:
    meta = {"version": GEOMETRY_VERSION, "part": "solutions", "entries": result.keys,
            "solutions": {c: result.solutions[c].tolist() for c in SOLUTION_COLUMNS},
            "pairs": {c: result.pairs[c].tolist() for c in PAIR_COLUMNS}}
    cache.keep_analysis(GEOMETRY_ANALYSIS, key, meta)


def load_solutions(lm: LoadedModel, entry: CacheEntry, settings: GeometrySettings, cache: ProtoCache
                   ) -> SolutionsResult:
    """The solutions the cache holds of the entry's text, never fitting: their tables are read from the analysis
    of exactly these entries when it is stored, else computed from the vectors (arithmetic, no forward pass) and
    stored. missing_seeds: the settings' seeds not fitted yet."""
    _check_entry(lm, entry)
    entries = same_text_entries(lm, entry, cache)
    missing = tuple(s for s in settings.seeds if _seed_entry(lm, entry, s, cache) is None)
    key = _solutions_key(lm, entries, settings)
    stored = cache.get_analysis(GEOMETRY_ANALYSIS, key)
    if stored is not None:
        try:
            meta = stored[0]
            solutions = pd.DataFrame(meta["solutions"], columns=list(SOLUTION_COLUMNS))
            pairs = pd.DataFrame(meta["pairs"], columns=list(PAIR_COLUMNS))
            if meta.get("entries") == [e.key for e in entries]:
                return SolutionsResult(entries, solutions, pairs, missing, from_cache=True)
        except (KeyError, TypeError, ValueError):
            log.warning("Ignoring malformed geometry solutions %s in the cache", key[:8])
    solutions, pairs = solution_tables(entries)
    result = SolutionsResult(entries, solutions, pairs, missing)
    _store_solutions(cache, key, result)
    return result


def run_solutions(lm: LoadedModel, entry: CacheEntry, settings: GeometrySettings, cache: ProtoCache,
                  progress: ProgressCallback | None = None, cancel: threading.Event | None = None,
                  batch_size: int = 8) -> SolutionsResult:
    """Fit the settings' seeds of the entry's text that the cache lacks (``fit_and_cache``: the entry's settings
    for a text fitted alone, this seed, a random first draw; one seed after the other), then the tables of every
    cached solution (load_solutions). A cancel keeps the seeds finished before it."""
    _check_entry(lm, entry)
    missing = tuple(s for s in settings.seeds if _seed_entry(lm, entry, s, cache) is None)
    total = len(missing)
    for done, seed in enumerate(missing):
        if _cancelled(cancel):
            break
        config = seed_config(entry, seed)

        def report(p: FitProgress, rows: list[int], done: int = done, seed: int = seed) -> None:
            if progress is not None:
                progress(min((done + p.step / max(p.max_steps, 1)) / total, 1.0),
                         f"seed {seed}: step {p.step} / {p.max_steps}, accuracy {max(p.best_accuracy):.2f}")

        fit_and_cache(lm, [entry.text], config, cache, batch_size=batch_size, callback=report, cancel=cancel)
    if progress is not None:
        progress(1.0, "done")
    return load_solutions(lm, entry, settings, cache)


# ---- paths -------------------------------------------------------------------------------------------------------

@checked
def path_ts(points: int) -> Float64[np.ndarray, "points"]:
    """K evenly spaced t in [0, 1], both ends included."""
    return np.linspace(0.0, 1.0, int(points))


@checked
def line_points(a: Float[Tensor, "hidden"], b: Float[Tensor, "hidden"], ts: Float[Tensor, "points"]
                ) -> Float[Tensor, "points hidden"]:
    """(1 - t) a + t b for every t [points] -> [points, hidden]; t = 0 and t = 1 give a and b exactly."""
    t = ts.to(a.dtype)[:, None]
    out = (1 - t) * a[None] + t * b[None]
    return _exact_ends(out, ts, a, b)


@checked
def bezier_points(a: Float[Tensor, "hidden"], b: Float[Tensor, "hidden"], control: Float[Tensor, "hidden"],
                  ts: Float[Tensor, "points"]) -> Float[Tensor, "points hidden"]:
    """(1 - t)^2 a + 2 t (1 - t) c + t^2 b for every t [points] -> [points, hidden]; gradients flow to the
    control point c; t = 0 and t = 1 give a and b exactly."""
    t = ts.to(a.dtype)[:, None]
    out = (1 - t) ** 2 * a[None] + 2 * t * (1 - t) * control[None] + t ** 2 * b[None]
    return _exact_ends(out, ts, a, b)


def _exact_ends(points: torch.Tensor, ts: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The rows at t = 0 and t = 1 set to a and b themselves, so rounding cannot move a path's ends."""
    at_a, at_b = ts == 0, ts == 1
    if bool(at_a.any()) or bool(at_b.any()):
        points = torch.where(at_a[:, None], a[None].to(points.dtype), points)
        points = torch.where(at_b[:, None], b[None].to(points.dtype), points)
    return points


@checked
def decode_points(lm: LoadedModel, e: Float[Tensor, "points hidden"], m: Float[Tensor, "points hidden"],
                  target: list[int], layout: str, batch: int = DECODE_BATCH
                  ) -> tuple[Float64[np.ndarray, "points"], Float64[np.ndarray, "points"], Int[Tensor, "points n_tokens"],
                             Float64[np.ndarray, "points"] | None]:
    """Decode many (e, m) points of one text in batched forward passes (``batch`` points each, no gradient):
    (accuracy [points], loss [points]: cross-entropy over the N text positions, argmax tokens [points, N],
    bos [points]: 1.0 where e's own output is the BOS token, else 0.0, for the seed paper's count; None where there
    is no BOS position, core.engine.reconstruct.bos_target)."""
    n = len(target)
    goal = torch.tensor(target, device=lm.device)
    bos_id = bos_target(lm, layout)
    accuracy, loss, tokens, bos = [], [], [], []
    with torch.no_grad():
        for start in range(0, e.shape[0], batch):
            e_chunk = e[start:start + batch].detach().float().to(lm.device)
            m_chunk = m[start:start + batch].detach().float().to(lm.device)
            logits = scored_logits(lm, e_chunk, m_chunk, [n] * e_chunk.shape[0], layout, with_e=bos_id is not None)
            if bos_id is not None:
                bos += (logits[:, 0].argmax(-1) == bos_id).double().cpu().tolist()
                logits = logits[:, 1:]
            logits = logits[:, :n]
            losses = F.cross_entropy(logits.transpose(1, 2), goal[None].expand(e_chunk.shape[0], -1),
                                     reduction="none").mean(-1)
            predicted = logits.argmax(-1).cpu()
            tokens.append(predicted)
            loss += losses.double().cpu().tolist()
            accuracy += [token_metrics(row, target).accuracy for row in predicted]
    return (np.array(accuracy, dtype=np.float64), np.array(loss, dtype=np.float64), torch.cat(tokens),
            np.array(bos, dtype=np.float64) if bos_id is not None else None)


def counted_points(accuracy: np.ndarray, bos: np.ndarray | None, n_tokens: int, count: str = "text"
                   ) -> tuple[np.ndarray, bool]:
    """Accuracies of decoded points (over their N text positions) in one of core.engine.reconstruct.COUNTS, and
    whether they are so counted: with "bos", over N + 1 with e's BOS prediction (bos, from decode_points) where it
    was recorded; else as they are (a result stored before it was recorded, or no BOS position)."""
    if count not in COUNTS:
        raise ValueError(f"Unknown count {count!r}; use one of {', '.join(COUNTS)}.")
    if count == "text" or bos is None or bos.shape != accuracy.shape:
        return accuracy, count == "text"
    return (accuracy * n_tokens + bos) / (n_tokens + 1), True


@checked
def path_loss(lm: LoadedModel, e: Float[Tensor, "points hidden"], m: Float[Tensor, "points hidden"],
              target: list[int], layout: str) -> Float[Tensor, ""]:
    """Mean over the points of the cross-entropy over the N text positions, with gradients (one forward pass)."""
    n = len(target)
    goal = torch.tensor(target, device=lm.device)
    logits = scored_logits(lm, e.to(lm.device), m.to(lm.device), [n] * e.shape[0], layout)[:, :n]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), goal.repeat(e.shape[0]))


def sample_ts(samples: int, generator: torch.Generator) -> torch.Tensor:
    """``samples`` points t in (0, 1), one uniform draw in each of ``samples`` equal strata (float32)."""
    offsets = torch.rand(samples, generator=generator, dtype=torch.float64)
    return ((torch.arange(samples, dtype=torch.float64) + offsets) / samples).float()


@checked
@dataclass
class PathResult:
    """The line and the trained curve between two solutions a -> b, decoded at K points t.

    ts, accuracy and loss per path [K]; tokens per path [K, N]; control_e, control_m: the curve's control point;
    history: the training's mean sampled loss per step. stopped: cancelled before its last step (not cached).
    """

    a: str
    b: str
    ts: Float64[np.ndarray, "points"]
    line_accuracy: Float64[np.ndarray, "points"]
    line_loss: Float64[np.ndarray, "points"]
    curve_accuracy: Float64[np.ndarray, "points"]
    curve_loss: Float64[np.ndarray, "points"]
    line_tokens: list
    curve_tokens: list
    control_e: Float32[Tensor, "hidden"]
    control_m: Float32[Tensor, "hidden"]
    history: list[float] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    stopped: bool = False
    from_cache: bool = False
    line_bos: Float64[np.ndarray, "points"] | None = None  # e's BOS prediction per point (decode_points)
    curve_bos: Float64[np.ndarray, "points"] | None = None

    def accuracies(self, count: str = "text") -> tuple[np.ndarray, np.ndarray, bool]:
        """(line, curve) accuracies in one of COUNTS, and whether both are so counted (counted_points)."""
        n = len(self.line_tokens[0]) if self.line_tokens else 0
        line, line_ok = counted_points(self.line_accuracy, self.line_bos, n, count)
        curve, curve_ok = counted_points(self.curve_accuracy, self.curve_bos, n, count)
        return line, curve, line_ok and curve_ok

    def summary(self, count: str = "text") -> dict[str, float]:
        """Minimum and mean accuracy (in one of COUNTS) and the mean loss along each path."""
        line, curve, _ = self.accuracies(count)
        return {"line_min_accuracy": float(line.min()), "curve_min_accuracy": float(curve.min()),
                "line_mean_accuracy": float(line.mean()), "curve_mean_accuracy": float(curve.mean()),
                "line_mean_loss": float(self.line_loss.mean()), "curve_mean_loss": float(self.curve_loss.mean())}


PAPER_PATHS = ("the first paper (Mezentsev & Oseledets 2025, on its own models and texts): accuracy collapses along "
               "the straight line, the trained Bezier curve keeps it high")
PATH_HOLDS = 0.9  # a path "holds" when every point along it reconstructs at least this share of the text


def path_verdict(summary: dict[str, float], holds: float = PATH_HOLDS) -> str:
    """One line: what the line and the curve did here (PathResult.summary) against the first paper's finding."""
    line = "the line collapses" if summary["line_min_accuracy"] < holds else "the line holds too"
    curve = ("the curve holds" if summary["curve_min_accuracy"] >= holds else
             f"the curve does not hold everywhere (lowest {summary['curve_min_accuracy']:.2f} < {holds:g}; "
             f"more curve steps may train it further)")
    agrees = summary["line_min_accuracy"] < holds <= summary["curve_min_accuracy"]
    return f"Here {line} and {curve}: {'as' if agrees else 'unlike'} {PAPER_PATHS}."


def path_table(result: PathResult, decode: Callable[[list[int]], str] | None = None, count: str = "text"
               ) -> pd.DataFrame:
    """The path in long form for figures and downloads: path ("line" / "curve"), t, accuracy (in one of COUNTS:
    PathResult.accuracies), loss, and text (the decoded tokens, with ``decode``) per point."""
    frames = []
    line, curve, _ = result.accuracies(count)
    for name, accuracy, loss, tokens in (("line", line, result.line_loss, result.line_tokens),
                                         ("curve", curve, result.curve_loss, result.curve_tokens)):
        frames.append(pd.DataFrame({"path": name, "t": result.ts, "accuracy": accuracy, "loss": loss,
                                    "text": [decode(list(t)) if decode else "" for t in tokens]}))
    return pd.concat(frames, ignore_index=True)


def _stored_bos(meta: dict, name: str, points: int) -> np.ndarray | None:
    # e's BOS prediction per point, where the stored result records it (results stored before it was: None)
    if name not in meta:
        return None
    bos = np.asarray(meta[name], dtype=np.float64)
    return bos if bos.shape == (points,) else None


def _check_pair(lm: LoadedModel, a: CacheEntry, b: CacheEntry) -> None:
    _check_entry(lm, a)
    _check_entry(lm, b)
    if a.key == b.key:
        raise GeometryError("Choose two different solutions: a path from a solution to itself is a point.")
    if list(a.token_ids) != list(b.token_ids) or a.layout != b.layout:
        raise GeometryError(f"Entries {a.key[:8]} and {b.key[:8]} are not solutions of one text in one layout.")


def _path_key(lm: LoadedModel, a: CacheEntry, b: CacheEntry, settings: GeometrySettings) -> str:
    return geometry_key(lm, [a, b], settings, "path")


def load_path(lm: LoadedModel, a: CacheEntry, b: CacheEntry, settings: GeometrySettings, cache: ProtoCache
              ) -> PathResult | None:
    """The stored paths a -> b with these settings (no forward pass), or None."""
    _check_pair(lm, a, b)
    hit = cache.get_analysis(GEOMETRY_ANALYSIS, _path_key(lm, a, b, settings), with_tensors=True)
    if hit is None:
        return None
    meta, tensors = hit
    try:
        k = settings.points
        arrays = {name: np.asarray(meta[name], dtype=np.float64) for name in
                  ("ts", "line_accuracy", "line_loss", "curve_accuracy", "curve_loss")}
        control_e, control_m = tensors["control_e"].float(), tensors["control_m"].float()
        if any(array.shape != (k,) for array in arrays.values()) or tuple(control_e.shape) != (lm.hidden_size,) \
                or tuple(control_m.shape) != (lm.hidden_size,):
            return None
        bos = {name: _stored_bos(meta, name, k) for name in ("line_bos", "curve_bos")}
        return PathResult(a=a.key, b=b.key, **arrays, line_tokens=list(meta["line_tokens"]),
                          curve_tokens=list(meta["curve_tokens"]), control_e=control_e, control_m=control_m,
                          history=[float(x) for x in meta.get("history", [])], steps=int(meta.get("steps", 0)),
                          seconds=float(meta.get("seconds", 0.0)), from_cache=True, **bos)
    except (KeyError, TypeError, ValueError):
        log.warning("Ignoring malformed geometry path in the cache")
        return None


def run_path(lm: LoadedModel, a: CacheEntry, b: CacheEntry, settings: GeometrySettings,
             cache: ProtoCache | None = None, progress: ProgressCallback | None = None,
             cancel: threading.Event | None = None) -> PathResult:
    """The straight line and the trained Bezier curve from solution a to solution b, decoded at settings.points t.

    The control point C = (C_e, C_m) starts at the midpoint (the curve is then the line) and takes settings.steps
    AdamW steps (lr settings.lr, no weight decay) on the mean cross-entropy at settings.samples points t drawn on
    the curve (one in each of as many equal strata, seeded by settings.seed). With a cache, a stored result is
    returned without the model and a new one is stored; a cancelled one is returned (stopped) but not stored.
    """
    _check_pair(lm, a, b)
    if cache is not None:
        stored = load_path(lm, a, b, settings, cache)
        if stored is not None:
            return stored
    started = time.perf_counter()
    target, layout = list(a.token_ids), a.layout
    e_a, m_a, e_b, m_b = (v.detach().float().cpu() for v in (a.e, a.m, b.e, b.m))
    control_e = torch.nn.Parameter(((e_a + e_b) / 2).clone())
    control_m = torch.nn.Parameter(((m_a + m_b) / 2).clone())
    optimizer = torch.optim.AdamW([control_e, control_m], lr=settings.lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(settings.seed)
    history: list[float] = []
    stopped = False
    for step in range(settings.steps):
        if _cancelled(cancel):
            stopped = True
            break
        ts = sample_ts(settings.samples, generator)
        loss = path_loss(lm, bezier_points(e_a, e_b, control_e, ts), bezier_points(m_a, m_b, control_m, ts),
                         target, layout)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history.append(float(loss.detach()))
        if progress is not None and (step % 5 == 0 or step == settings.steps - 1):
            progress((step + 1) / (settings.steps + 1), f"step {step + 1} / {settings.steps}, path loss {history[-1]:.3f}")
    ts64 = path_ts(settings.points)
    ts = torch.from_numpy(ts64).float()
    with torch.no_grad():
        c_e, c_m = control_e.detach().clone(), control_m.detach().clone()
        line = decode_points(lm, line_points(e_a, e_b, ts), line_points(m_a, m_b, ts), target, layout)
        curve = decode_points(lm, bezier_points(e_a, e_b, c_e, ts), bezier_points(m_a, m_b, c_m, ts), target, layout)
    result = PathResult(a=a.key, b=b.key, ts=ts64, line_accuracy=line[0], line_loss=line[1], curve_accuracy=curve[0],
                        curve_loss=curve[1], line_tokens=line[2].tolist(), curve_tokens=curve[2].tolist(),
                        control_e=c_e, control_m=c_m, history=history, steps=len(history),
                        seconds=time.perf_counter() - started, stopped=stopped, line_bos=line[3], curve_bos=curve[3])
    if progress is not None:
        progress(1.0, "done")
    if cache is not None and not stopped:
        meta = {"version": GEOMETRY_VERSION, "part": "path", "a": a.key, "b": b.key, "settings": settings.part_dict("path"),
                "ts": ts64.tolist(), "line_accuracy": line[0].tolist(), "line_loss": line[1].tolist(),
                "curve_accuracy": curve[0].tolist(), "curve_loss": curve[1].tolist(),
                "line_tokens": result.line_tokens, "curve_tokens": result.curve_tokens, "history": history,
                "steps": result.steps, "seconds": result.seconds,
                **{name: bos.tolist() for name, bos in (("line_bos", line[3]), ("curve_bos", curve[3]))
                   if bos is not None}}
        cache.keep_analysis(GEOMETRY_ANALYSIS, _path_key(lm, a, b, settings), meta,
                            {"control_e": c_e.contiguous(), "control_m": c_m.contiguous()})
    return result


# ---- trajectory ------------------------------------------------------------------------------------------------

@checked
def pca(points: Float[np.ndarray, "n d"], components: int = COMPONENTS
        ) -> tuple[Float64[np.ndarray, "n 2"], Float64[np.ndarray, "k"]]:
    """PCA of the rows (centred, SVD in float64): (the 2-D coordinates [n, 2] on the first two components, the
    share of the total variance of each of the first min(components, n, d) components). Fewer than two
    non-constant directions leave zeros in the coordinates; points that are all equal have no variance to share
    (shares 0)."""
    x = np.asarray(points, dtype=np.float64)
    centred = x - x.mean(axis=0, keepdims=True)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    coords = np.zeros((x.shape[0], 2))
    width = min(2, s.shape[0])
    coords[:, :width] = u[:, :width] * s[:width]
    variance = s ** 2
    total = float(variance.sum())
    shares = variance / total if total > 0 else np.zeros_like(variance)
    return coords, shares[:min(components, shares.shape[0])]


@checked
@dataclass
class TrajectoryResult:
    """A refit of the entry's text, recorded every record_every steps and projected by PCA.

    steps [P], coords [P, 2], accuracy and loss [P] (loss: the fit's at that step), tokens [P, N] (the
    reconstruction at every point), shares [k]: share of variance of the first components. final_accuracy: the
    refit's result; seconds: its wall time; stopped: cancelled (not cached).
    """

    entry: str
    steps: list[int]
    coords: Float64[np.ndarray, "points 2"]
    accuracy: Float64[np.ndarray, "points"]
    loss: Float64[np.ndarray, "points"]
    tokens: list
    shares: Float64[np.ndarray, "k"]
    final_accuracy: float = 0.0
    seconds: float = 0.0
    stopped: bool = False
    from_cache: bool = False
    bos: Float64[np.ndarray, "points"] | None = None  # e's BOS prediction per point (decode_points)

    def accuracies(self, count: str = "text") -> tuple[np.ndarray, bool]:
        """The points' accuracies in one of COUNTS, and whether they are so counted (counted_points)."""
        return counted_points(self.accuracy, self.bos, len(self.tokens[0]) if self.tokens else 0, count)

    def table(self, decode: Callable[[list[int]], str] | None = None, count: str = "text") -> pd.DataFrame:
        """step, pc1, pc2, accuracy (in one of COUNTS), loss and text (decoded with ``decode``) per recorded point."""
        return pd.DataFrame({"step": self.steps, "pc1": self.coords[:, 0], "pc2": self.coords[:, 1],
                             "accuracy": self.accuracies(count)[0], "loss": self.loss,
                             "text": [decode(list(t)) if decode else "" for t in self.tokens]})


def trajectory_config(entry: CacheEntry):
    """The entry's settings for its refit: a random first draw (start ""), since a learned start depends on what the
    cache holds now (it may hold this very entry). A regularised fit needs its batch and is refused."""
    config = config_from_dict(entry.config)
    if config.has_regularizer:
        raise GeometryError("A regularised fit depends on its whole batch: choose an entry fitted without a "
                            "regulariser for its trajectory.")
    return replace(config, start="")


def _trajectory_key(lm: LoadedModel, entry: CacheEntry, settings: GeometrySettings) -> str:
    return geometry_key(lm, [entry], settings, "trajectory")


def load_trajectory(lm: LoadedModel, entry: CacheEntry, settings: GeometrySettings, cache: ProtoCache
                    ) -> TrajectoryResult | None:
    """The stored trajectory of the entry with this record_every (no forward pass), or None."""
    _check_entry(lm, entry)
    hit = cache.get_analysis(GEOMETRY_ANALYSIS, _trajectory_key(lm, entry, settings), with_tensors=True)
    if hit is None:
        return None
    meta, tensors = hit
    try:
        coords = tensors["coords"].double().numpy()
        steps = [int(s) for s in meta["steps"]]
        accuracy = np.asarray(meta["accuracy"], dtype=np.float64)
        loss = np.asarray(meta["loss"], dtype=np.float64)
        if coords.shape != (len(steps), 2) or accuracy.shape != (len(steps),) or loss.shape != (len(steps),):
            return None
        return TrajectoryResult(entry=entry.key, steps=steps, coords=coords, accuracy=accuracy, loss=loss,
                                tokens=list(meta["tokens"]), shares=np.asarray(meta["shares"], dtype=np.float64),
                                final_accuracy=float(meta.get("final_accuracy", 0.0)),
                                seconds=float(meta.get("seconds", 0.0)), from_cache=True,
                                bos=_stored_bos(meta, "bos", len(steps)))
    except (KeyError, TypeError, ValueError):
        log.warning("Ignoring malformed geometry trajectory in the cache")
        return None


def run_trajectory(lm: LoadedModel, entry: CacheEntry, settings: GeometrySettings, cache: ProtoCache | None = None,
                   progress: ProgressCallback | None = None, cancel: threading.Event | None = None) -> TrajectoryResult:
    """Refit the entry's text (trajectory_config) recording (e, m) every settings.record_every steps and where the fit
    ended (its returned vectors, when that step falls between two records), project the
    concatenated points by PCA and decode every point in batched passes. With a cache, a stored result is returned
    without the model and a new one stored (a cancelled one only returned). The refit is not stored as an entry."""
    _check_entry(lm, entry)
    if cache is not None:
        stored = load_trajectory(lm, entry, settings, cache)
        if stored is not None:
            return stored
    config = trajectory_config(entry)
    started = time.perf_counter()

    def report(p: FitProgress) -> None:
        if progress is not None:
            progress(min(0.95 * p.step / max(p.max_steps, 1), 0.95),
                     f"refit: step {p.step} / {p.max_steps}, accuracy {max(p.best_accuracy):.2f}")

    [fit] = fit_texts(lm, [entry.text], config, token_ids=[list(entry.token_ids)], callback=report, cancel=cancel,
                      record_every=settings.record_every)
    if not fit.trajectory:
        raise GeometryError("The refit recorded no point: it was stopped before its first step.")
    points = list(fit.trajectory)
    if points[-1][0] != fit.steps:  # where the fit ended (its returned vectors), between two recorded steps
        points.append((fit.steps, fit.e, fit.m))
    steps = [int(step) for step, _, _ in points]
    e = torch.stack([point[1] for point in points]).float()
    m = torch.stack([point[2] for point in points]).float()
    coords, shares = pca(torch.cat([e, m], dim=1).double().numpy())
    accuracy, _, tokens, bos = decode_points(lm, e, m, list(entry.token_ids), entry.layout)
    # the fit's own loss at each recorded step (the objective it optimised, e.g. with BOS scored)
    loss_at = dict(zip(fit.history["step"], fit.history["loss"]))
    loss = np.array([float(loss_at.get(step, math.nan)) for step in steps], dtype=np.float64)
    result = TrajectoryResult(entry=entry.key, steps=steps, coords=coords, accuracy=accuracy, loss=loss,
                              tokens=tokens.tolist(), shares=shares, final_accuracy=float(fit.accuracy),
                              seconds=time.perf_counter() - started, stopped=fit.status == "cancelled", bos=bos)
    if progress is not None:
        progress(1.0, "done")
    if cache is not None and not result.stopped:
        meta = {"version": GEOMETRY_VERSION, "part": "trajectory", "entry": entry.key,
                "settings": settings.part_dict("trajectory"), "config": config.as_dict(), "steps": steps,
                "accuracy": accuracy.tolist(), "loss": [None if not math.isfinite(x) else x for x in loss.tolist()],
                "tokens": result.tokens, "shares": shares.tolist(), "final_accuracy": result.final_accuracy,
                "seconds": result.seconds, **({"bos": bos.tolist()} if bos is not None else {})}
        cache.keep_analysis(GEOMETRY_ANALYSIS, _trajectory_key(lm, entry, settings), meta,
                            {"coords": torch.from_numpy(coords).contiguous()})
    return result


# ---- a part in a background thread ------------------------------------------------------------------------------

@dataclass
class GeometrySnapshot:
    """A consistent copy of a geometry job's state; ``finished`` once it is done, stopped or failed."""

    part: str
    state: str  # "running", "done", "cancelled", "failed"
    fraction: float
    message: str
    elapsed: float
    error: str | None = None
    traceback: str | None = None
    result: SolutionsResult | PathResult | TrajectoryResult | None = None

    @property
    def finished(self) -> bool:
        return self.state != "running"


class GeometryJob(BackgroundJob):
    """One part of the geometry analysis in a daemon thread: "solutions" (fit the missing seeds), "path" (train the
    curve from entry to other) or "trajectory" (refit the entry, recorded). Start, snapshot, cancel, wait."""

    thread_name = "geometry"

    def __init__(self, part: str, lm: LoadedModel, entry: CacheEntry, settings: GeometrySettings, cache: ProtoCache,
                 other: CacheEntry | None = None):
        _check_part(part)
        if part == "path" and other is None:
            raise GeometryError("A path needs a second solution.")
        self.part, self.lm, self.entry, self.settings, self.cache, self.other = part, lm, entry, settings, cache, other
        self._state, self._error = "running", None
        self._fraction, self._message = 0.0, "starting"
        self._result: SolutionsResult | PathResult | TrajectoryResult | None = None
        super().__init__()

    def _on_progress(self, fraction: float, message: str) -> None:
        with self._lock:
            self._fraction, self._message = float(fraction), message

    def _work(self) -> None:
        common = dict(progress=self._on_progress, cancel=self.cancel_event)
        if self.part == "solutions":
            result = run_solutions(self.lm, self.entry, self.settings, self.cache, **common)
        elif self.part == "path":
            result = run_path(self.lm, self.entry, self.other, self.settings, self.cache, **common)
        else:
            result = run_trajectory(self.lm, self.entry, self.settings, self.cache, **common)
        with self._lock:
            self._result = result
            self._state = "cancelled" if self.cancel_event.is_set() else "done"

    def snapshot(self) -> GeometrySnapshot:
        with self._lock:
            return GeometrySnapshot(part=self.part, state=self._state, fraction=self._fraction, message=self._message,
                                    elapsed=self._elapsed(), error=self._error, traceback=self._traceback,
                                    result=self._result)


# ---- what the page shows ---------------------------------------------------------------------------------------

def solution_label(entry: CacheEntry, count: str = "text") -> str:
    """A one-line label of one solution of a text (plain text): its seed, preset, start, accuracy (in one of COUNTS)
    and key."""
    config = entry.config
    start = f", start {config['start']}" if config.get("start") else ""
    accuracy = entry.metrics.get("accuracy")
    accuracy = f"{stored_count(entry.metrics, entry.n_tokens, count).accuracy:.2f}" \
        if isinstance(accuracy, (int, float)) else "?"
    return f"seed {config.get('seed', '?')} · {config.get('preset', '?')}{start} · accuracy {accuracy} · {entry.key[:8]}"


def default_pair(result: SolutionsResult) -> tuple[str, str] | None:
    """The path shown first: from the entry (the first solution) to the next one; None with fewer than two."""
    return (result.keys[0], result.keys[1]) if len(result.entries) >= 2 else None
