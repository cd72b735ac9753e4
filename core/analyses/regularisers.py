"""Regulariser sweeps: what a sentence-embedding teacher does to e, and what it costs (docs/science.md, B.4).

A sweep fits one text set once per :class:`RegulariserSetting` (no regulariser, anchor or relational loss at
weight lambda, on e or on m). Every regularised setting is one coupled fit (all texts in one batch, stopped
together: the losses relate the texts of a batch) through ``core.engine.fit.fit_and_cache``, so settings already
in the cache are skipped and a Stop keeps every setting finished before it. Each finished setting gets

- accuracy: mean token accuracy of its texts (reconstruction quality),
- alignment of e (and of m): Spearman correlation between the pairwise cosine similarities of the vectors
  and of the teacher embeddings of the same texts (``core.analyses.projection.semantic_alignment``),
- silhouette of e (and of m): cosine silhouette with the text's group (its source text) as label,

stored as a small JSON analysis per setting, so a sweep that was run once is shown at once next time.
The default sweep that ships pre-fitted for the embedded model is core.shipped.default_sweep.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float32

from core.engine.cache import CacheEntry, ProtoCache, cache_key
from core.engine.fit import FitConfig, FitProgress, entry_keys, fit_and_cache
from core.engine.jobs import BackgroundJob
from core.engine.models import LoadedModel
from core.engine.reconstruct import COUNTS, stored_count
from core.analyses.projection import Projection, cached_map, semantic_alignment, silhouette_by_group
from core.texts.numbers import NumberList
from core.engine.teacher import (
    RegularizerConfig,
    RegularizerKind,
    RegularizerTarget,
    canonical_teacher_name,
)
from core.engine.shapes import checked

REGULARISER_VERSION = "regularizer-sweep-v1"
REGULARISER_ANALYSIS = "regularizer-sweep"  # one JSON per finished setting: its metrics
SWEEP_KINDS: tuple[RegularizerKind, ...] = ("anchor", "relational")
MAX_LAMBDAS = 8
MAX_SWEEP_TEXTS = 64  # a regularised setting fits all texts in ONE batch: memory and step time grow with it

DEFAULT_LAMBDAS: tuple[float, ...] = (0.1, 1.0)  # 0.1 is the authors' weight


class RegulariserError(ValueError):
    """A sweep cannot run as asked; the message is one line meant for the user."""


# ---- settings -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RegulariserSetting:
    """One point of a sweep: a regulariser kind at weight lambda on e or m ("none" or lambda 0: no regulariser)."""

    kind: RegularizerKind = "none"
    weight: float = 0.0
    target: RegularizerTarget = "e"

    def __post_init__(self) -> None:
        # RegularizerConfig validates kind, weight and target with user-facing messages.
        RegularizerConfig(kind=self.kind, weight=self.weight, target=self.target)

    @property
    def active(self) -> bool:
        return self.kind != "none" and self.weight > 0

    def regularizer(self, teacher: str | None = None) -> RegularizerConfig | None:
        """The RegularizerConfig to fit with; None for no regulariser (the same cache key as a plain fit)."""
        if not self.active:
            return None
        return RegularizerConfig(kind=self.kind, weight=float(self.weight), target=self.target, teacher=teacher)

    @property
    def label(self) -> str:
        if not self.active:
            return "none"
        return f"{self.kind} λ={self.weight:g}" + (" on m" if self.target == "m" else "")

    def normalised(self) -> "RegulariserSetting":
        """Inactive settings all become the plain "none", so they deduplicate."""
        return self if self.active else RegulariserSetting()

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "weight": float(self.weight), "target": self.target}


def default_settings(kinds: Sequence[str] = SWEEP_KINDS, lambdas: Sequence[float] = DEFAULT_LAMBDAS,
                     target: RegularizerTarget = "e") -> list[RegulariserSetting]:
    """"none" first, then every kind at every lambda (kinds outer, lambdas ascending), duplicates removed."""
    settings = [RegulariserSetting()]
    for kind in kinds:
        for weight in sorted(lambdas):
            settings.append(RegulariserSetting(kind, float(weight), target).normalised())  # type: ignore[arg-type]
    return list(dict.fromkeys(settings))


# A weight far above the reconstruction loss only drowns it; much larger ones overflow the float32 loss to inf.
MAX_LAMBDA = 1000.0


LAMBDAS = NumberList(
    low=0.0, low_open=True, high=MAX_LAMBDA, max_count=MAX_LAMBDAS, error=RegulariserError,
    empty="Enter at least one λ, e.g. 0.1, 1 (the authors used 0.1).",
    not_a_number="{item!r} is not a number; separate the λ values with commas, e.g. 0.1, 1.",
    out_of_range=f"λ = {{item}} is out of range: every λ must be a finite number > 0 and at most {MAX_LAMBDA:g} "
                 "(the run without a regulariser is always included).",
    too_many=f"{{count}} λ values given; at most {MAX_LAMBDAS} (each one is a full fit of the set).")


def parse_lambdas(text: str) -> tuple[float, ...]:
    """Lambdas typed as "0.1, 1" or "0.1 1" -> sorted unique floats > 0.

    Raises RegulariserError with a message naming the wrong item and why.
    """
    return LAMBDAS.parse(text)


def sweep_config(config: FitConfig) -> FitConfig:
    """The config a sweep fits with: ``config`` with a single init per text and no regulariser of its own.

    Restarts, redraws (the fast preset starts a stuck draw over), bf16 compute and a learned start need independently fitted texts, which a
    regulariser's batch is not; the baseline gets a single draw too, so every setting starts from the same
    vectors and differs only by its loss.
    """
    return replace(config, restarts=1, redraw_after=0, redraw_plateau=0, regularizer=None, compute="", start="")


# ---- results ------------------------------------------------------------------------------------------

@checked
@dataclass
class SettingResult:
    """A finished setting of a sweep.

    keys: cache keys of its entries, in text order. e, m: [n_texts, hidden] float32 fitted vectors.
    accuracy: mean token accuracy; converged: texts at or above the threshold; steps: the fit's steps.
    alignment_*: Spearman of pairwise cosines with the teacher (NaN when undefined).
    silhouette_*: cosine silhouette by group (None when undefined: one group, or one text per group).
    wall_time: seconds the fit took (None when unknown: fitted outside a sweep). cached: nothing fitted now.
    """

    setting: RegulariserSetting
    keys: list[str]
    e: Float32[np.ndarray, "n_texts hidden"]
    m: Float32[np.ndarray, "n_texts hidden"]
    accuracy: float
    converged: int
    steps: int
    alignment_e: float
    alignment_m: float
    silhouette_e: float | None
    silhouette_m: float | None
    wall_time: float | None
    cached: bool
    # the mean accuracy in the seed paper's count (core.engine.reconstruct.stored_count), and how many of the
    # entries do not record e's BOS prediction (counted over their N positions in it)
    bos_accuracy: float | None = None
    bos_uncounted: int = 0

    @property
    def n_texts(self) -> int:
        return len(self.keys)

    def accuracy_in(self, count: str = "text") -> float:
        """The mean token accuracy in one of core.engine.reconstruct.COUNTS."""
        if count not in COUNTS:
            raise ValueError(f"Unknown count {count!r}; use one of {', '.join(COUNTS)}.")
        return self.bos_accuracy if count == "bos" and self.bos_accuracy is not None else self.accuracy


@dataclass
class RegulariserResult:
    """The settings of a sweep that are finished (in the order asked) and those that are not (yet).

    texts, groups: the set, row-aligned with every result's e and m. config: the base FitConfig.as_dict().
    teacher: the canonical teacher name. stopped: a Stop ended the sweep early.
    """

    model: str
    texts: list[str]
    groups: list[str]
    config: dict
    teacher: str
    settings: list[RegulariserSetting]
    results: list[SettingResult] = field(default_factory=list)
    stopped: bool = False

    @property
    def missing(self) -> list[RegulariserSetting]:
        done = {r.setting for r in self.results}
        return [s for s in self.settings if s not in done]

    @property
    def complete(self) -> bool:
        return not self.missing

    def result_for(self, setting: RegulariserSetting) -> SettingResult | None:
        return next((r for r in self.results if r.setting == setting), None)


def summarize_regularisers(result: RegulariserResult, count: str = "text") -> pd.DataFrame:
    """One row per finished setting: its label, lambda, accuracy (in one of core.engine.reconstruct.COUNTS),
    alignment, silhouette, steps, wall time."""
    rows = []
    for r in result.results:
        rows.append({
            "setting": r.setting.label, "kind": r.setting.kind if r.setting.active else "none",
            "lambda": r.setting.weight if r.setting.active else 0.0, "target": r.setting.target,
            "accuracy": r.accuracy_in(count), "converged": r.converged, "n_texts": r.n_texts, "steps": r.steps,
            "alignment_e": r.alignment_e, "alignment_m": r.alignment_m,
            "silhouette_e": np.nan if r.silhouette_e is None else r.silhouette_e,
            "silhouette_m": np.nan if r.silhouette_m is None else r.silhouette_m,
            "wall_time_s": np.nan if r.wall_time is None else r.wall_time, "cached": r.cached,
        })
    columns = ["setting", "kind", "lambda", "target", "accuracy", "converged", "n_texts", "steps", "alignment_e",
               "alignment_m", "silhouette_e", "silhouette_m", "wall_time_s", "cached"]
    return pd.DataFrame(rows, columns=columns)


# ---- running ------------------------------------------------------------------------------------------

@dataclass
class RegulariserProgress:
    """What a sweep's progress callback sees: which setting runs and, while it fits, the fit's progress."""

    index: int  # of the setting now running, in RegulariserResult.settings
    n_settings: int
    setting: RegulariserSetting
    fit: FitProgress | None  # None when the setting starts or came from the cache
    finished: list[RegulariserSetting]  # settings done so far (fitted now or cached)
    elapsed: float


def _setting_config(base: FitConfig, setting: RegulariserSetting, teacher: str | None) -> FitConfig:
    return replace(base, regularizer=setting.regularizer(teacher))


def setting_key(entry_keys_: Sequence[str], groups: Sequence[str], teacher: str) -> str:
    """Analysis key of one setting's metrics: the entries (which pin model, texts and every fit setting),
    the groups (silhouette labels) and the teacher the alignment is measured against."""
    return cache_key(REGULARISER_VERSION, list(entry_keys_), list(groups), teacher)


def _check_inputs(lm: LoadedModel, texts: Sequence[str], groups: Sequence[str], settings: Sequence[RegulariserSetting],
                  layout: str) -> list[list[int]]:
    if not texts:
        raise RegulariserError("The set has no texts.")
    if len(groups) != len(texts):
        raise RegulariserError(f"{len(texts)} texts but {len(groups)} groups; give one group per text.")
    if len(set(texts)) != len(texts):
        raise RegulariserError("The set repeats a text; every text must be unique.")
    if not settings:
        raise RegulariserError("No settings to fit.")
    if len(texts) > MAX_SWEEP_TEXTS:
        raise RegulariserError(f"{len(texts)} texts; a regularised fit puts every text in one batch, so at most "
                         f"{MAX_SWEEP_TEXTS} texts per sweep.")
    return [lm.validate_text(t, layout) for t in texts]


def _teacher_matrix(texts: Sequence[str], cache: ProtoCache, teacher: str | None) -> np.ndarray:
    """[n, d_teacher] teacher embeddings, cached per text list (shared with the Embeddings page)."""
    from core.analyses.embeddings import teacher_embeddings

    return teacher_embeddings(list(texts), cache, teacher)


def _metrics(entries: Sequence[CacheEntry], groups: Sequence[str], teacher_emb: np.ndarray) -> dict[str, Any]:
    e = np.stack([entry.e.numpy() for entry in entries])
    m = np.stack([entry.m.numpy() for entry in entries])
    return {
        "accuracy": float(np.mean([entry.metrics.get("accuracy", 0.0) for entry in entries])),
        "converged": int(sum(bool(entry.metrics.get("converged")) for entry in entries)),
        "steps": int(max(int(entry.metrics.get("steps", 0)) for entry in entries)),
        "alignment_e": semantic_alignment(e, teacher_emb),
        "alignment_m": semantic_alignment(m, teacher_emb),
        "silhouette_e": silhouette_by_group(e, list(groups)),
        "silhouette_m": silhouette_by_group(m, list(groups)),
    }


def _json_float(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _result(setting: RegulariserSetting, keys: list[str], entries: Sequence[CacheEntry], meta: dict,
            cached: bool) -> SettingResult:
    def number(name: str) -> float:
        value = meta.get(name)
        return float("nan") if value is None else float(value)

    wall = meta.get("wall_time_s")
    bos = [stored_count(entry.metrics, entry.n_tokens, "bos") for entry in entries]
    return SettingResult(
        setting=setting, keys=keys,
        e=np.stack([entry.e.numpy() for entry in entries]).astype(np.float32),
        m=np.stack([entry.m.numpy() for entry in entries]).astype(np.float32),
        accuracy=float(meta["accuracy"]), converged=int(meta["converged"]), steps=int(meta["steps"]),
        alignment_e=number("alignment_e"), alignment_m=number("alignment_m"),
        silhouette_e=meta.get("silhouette_e"), silhouette_m=meta.get("silhouette_m"),
        wall_time=None if wall is None else float(wall), cached=cached,
        bos_accuracy=float(np.mean([c.accuracy for c in bos])) if bos else None,
        bos_uncounted=sum(c.count != "bos" for c in bos),
    )


@dataclass
class _SweepRun:
    """What every setting of one sweep shares: the set, the fit, the cache, the teacher, the progress report."""

    lm: LoadedModel
    texts: list[str]
    groups: list[str]
    targets: list[list[int]]
    base_config: FitConfig
    cache: ProtoCache
    teacher: str | None  # as asked (None: the embedded teacher)
    teacher_name: str  # canonical
    teacher_emb: np.ndarray | None  # [n, d_teacher] float32, loaded on first need
    result: RegulariserResult
    progress: Callable[[RegulariserProgress], None] | None
    cancel: threading.Event | None
    batch_size: int
    callback_every: int
    t0: float = field(default_factory=time.perf_counter)

    def teacher_matrix(self) -> np.ndarray:
        if self.teacher_emb is None:
            self.teacher_emb = _teacher_matrix(self.texts, self.cache, self.teacher)
        return self.teacher_emb

    def tell(self, index: int, fit_progress: FitProgress | None = None) -> None:
        if self.progress is not None:
            settings = self.result.settings
            self.progress(RegulariserProgress(
                index=index, n_settings=len(settings), setting=settings[index], fit=fit_progress,
                finished=[r.setting for r in self.result.results], elapsed=time.perf_counter() - self.t0))

    def fit(self, index: int, config: FitConfig, setting: RegulariserSetting
            ) -> tuple[list[CacheEntry], float | None] | None:
        """Fit the setting's texts as one coupled batch (cached texts skipped): its entries and wall time (None
        when everything came from the cache); None when a Stop interrupted it."""
        started = time.perf_counter()
        emb_tensor = torch.from_numpy(self.teacher_matrix()).float() if setting.active else None
        outcomes = fit_and_cache(
            self.lm, self.texts, config, self.cache, batch_size=self.batch_size, callback_every=self.callback_every,
            cancel=self.cancel, callback=(lambda p, _indices: self.tell(index, p)), teacher_embeddings=emb_tensor)
        if any(o is None or o.entry.metrics.get("status") == "cancelled" for o in outcomes):
            return None
        wall = None if all(o.cached for o in outcomes) else time.perf_counter() - started  # type: ignore[union-attr]
        return [o.entry for o in outcomes], wall  # type: ignore[union-attr]

    def measure(self, setting: RegulariserSetting, config: FitConfig, keys: list[str], analysis_key: str,
                entries: list[CacheEntry], wall: float | None, cached: bool) -> SettingResult:
        """Score a finished setting and store its metrics as an analysis."""
        if wall is None:
            # Fitted outside a sweep (another page, the pre-fit): the coupled fit's own wall time when known.
            walls = [e.metrics.get("wall_time") for e in entries]
            wall = max(walls) if setting.active and all(w is not None for w in walls) else None
        metrics = _metrics(entries, self.groups, self.teacher_matrix())
        meta = {key: _json_float(value) if isinstance(value, float) else value for key, value in metrics.items()}
        meta.update(setting=setting.as_dict(), label=setting.label, model=self.lm.identity, keys=keys,
                    groups=self.groups, teacher=self.teacher_name, config=config.as_dict(), wall_time_s=_json_float(wall))
        self.cache.keep_analysis(REGULARISER_ANALYSIS, analysis_key, meta)
        return _result(setting, keys, entries, meta, cached=cached)

    def run_setting(self, index: int, setting: RegulariserSetting, fit: bool) -> SettingResult | str:
        """One setting: from the cache when it is all there, else fitted (fit=True) and measured.
        Returns its result, or "missing" (fit=False and not cached) or "stopped" (a Stop interrupted it)."""
        config = _setting_config(self.base_config, setting, self.teacher)
        keys, _ = entry_keys(self.lm, self.targets, config)
        analysis_key = setting_key(keys, self.groups, self.teacher_name)
        self.tell(index)
        entries = [self.cache.get(k) for k in keys]
        have_all = all(e is not None and e.metrics.get("status") != "cancelled" for e in entries)
        stored = self.cache.get_analysis(REGULARISER_ANALYSIS, analysis_key)
        if have_all and stored is not None:
            return _result(setting, keys, entries, stored[0], cached=True)  # type: ignore[arg-type]
        wall: float | None = None
        if not have_all:
            if not fit:
                return "missing"
            fitted = self.fit(index, config, setting)
            if fitted is None:
                return "stopped"
            entries, wall = fitted  # type: ignore[assignment]
        return self.measure(setting, config, keys, analysis_key, entries, wall, cached=wall is None)  # type: ignore[arg-type]


def run_regularisers(
    lm: LoadedModel,
    texts: Sequence[str],
    groups: Sequence[str],
    settings: Sequence[RegulariserSetting],
    base_config: FitConfig,
    cache: ProtoCache,
    progress: Callable[[RegulariserProgress], None] | None = None,
    cancel: threading.Event | None = None,
    *,
    teacher: str | None = None,
    teacher_emb: np.ndarray | torch.Tensor | None = None,
    fit: bool = True,
    batch_size: int = 8,
    callback_every: int = 5,
) -> RegulariserResult:
    """Fit texts once per setting (cached settings skipped), then measure each setting.

    texts [n] with groups [n] (the silhouette labels). settings: deduplicated. base_config: the fit settings
    shared by all, through :func:`sweep_config` (one init per text; each setting's own regulariser).
    teacher: teacher name (None: the embedded all-MiniLM-L6-v2), used by the losses and to measure alignment.
    teacher_emb: [n, d_teacher] teacher embeddings when already known (otherwise computed once and cached).
    fit=False only collects what is cached (nothing is fitted). A set cancel event stops after the running
    setting's best state is stored; that setting counts as unfinished (its entries are refitted next time).
    """
    texts, groups = list(texts), [str(g) for g in groups]
    base_config = sweep_config(base_config)
    settings = list(dict.fromkeys(s.normalised() for s in settings))
    targets = _check_inputs(lm, texts, groups, settings, base_config.layout)
    teacher_name = canonical_teacher_name(teacher)
    result = RegulariserResult(model=lm.identity, texts=texts, groups=groups, config=base_config.as_dict(),
                               teacher=teacher_name, settings=settings)
    emb: np.ndarray | None = None if teacher_emb is None else np.asarray(
        teacher_emb.detach().cpu().float().numpy() if isinstance(teacher_emb, torch.Tensor) else teacher_emb,
        dtype=np.float32)
    if emb is not None and emb.shape[0] != len(texts):
        raise RegulariserError(f"{emb.shape[0]} teacher embeddings for {len(texts)} texts.")
    run = _SweepRun(lm, texts, groups, targets, base_config, cache, teacher, teacher_name, emb, result, progress,
                    cancel, batch_size, callback_every)
    for index, setting in enumerate(settings):
        outcome = "stopped" if cancel is not None and cancel.is_set() else run.run_setting(index, setting, fit)
        if outcome == "stopped":
            result.stopped = True
            break
        if isinstance(outcome, SettingResult):
            result.results.append(outcome)
    return result


def load_regularisers(lm: LoadedModel, texts: Sequence[str], groups: Sequence[str], settings: Sequence[RegulariserSetting],
               base_config: FitConfig, cache: ProtoCache, *, teacher: str | None = None) -> RegulariserResult:
    """The settings of a sweep already in the cache (the shipped one included); fits nothing.

    A setting whose entries are cached but not yet measured is measured now (that may load the teacher).
    """
    return run_regularisers(lm, texts, groups, settings, base_config, cache, teacher=teacher, fit=False)


def setting_map(result: SettingResult, vector: str, method: str, cache: ProtoCache | None) -> Projection:
    """2-D map (cosine) of one finished setting's e or m, cached like every map (one per entries and method)."""
    return cached_map(getattr(result, vector), result.keys, vector, method, "cosine", cache=cache)


def teacher_silhouette(texts: Sequence[str], groups: Sequence[str], cache: ProtoCache) -> float | None:
    """Cosine silhouette of the teacher's own embeddings by group: the reference line of the silhouette chart;
    None when undefined or when the teacher cannot be loaded (the sweep's own numbers do not depend on it)."""
    try:
        return silhouette_by_group(_teacher_matrix(texts, cache, None), list(groups))
    except Exception:
        return None


# ---- a sweep in a background thread ------------------------------------------------------------------

@dataclass
class RegulariserSnapshot:
    """A consistent copy of a sweep job's state; ``finished`` once it is done, stopped or failed."""

    state: str  # "running", "done", "cancelled", "failed"
    labels: list[str]  # one per setting
    status: list[str]  # per setting: "waiting", "running", "done"
    index: int  # setting now running
    step: int
    max_steps: int
    mean_accuracy: float
    elapsed: float
    error: str | None = None
    result: RegulariserResult | None = None
    traceback: str | None = None  # of a failed job, for a debug view

    @property
    def finished(self) -> bool:
        return self.state != "running"

    @property
    def fraction(self) -> float:
        """Share of the sweep done, counting the running setting by its steps."""
        done = sum(s == "done" for s in self.status)
        running = self.step / max(self.max_steps, 1) if self.state == "running" and self.index < len(self.status) \
            and self.status[self.index] == "running" else 0.0
        return min(1.0, (done + min(running, 1.0)) / max(len(self.status), 1))


class RegulariserJob(BackgroundJob):
    """run_regularisers in a daemon thread: start, snapshot, cancel (finished settings stay cached), wait."""

    thread_name = "regulariser-sweep"

    def __init__(self, lm: LoadedModel, texts: Sequence[str], groups: Sequence[str],
                 settings: Sequence[RegulariserSetting], base_config: FitConfig, cache: ProtoCache, *,
                 teacher: str | None = None):
        self.lm, self.texts, self.groups, self.base_config, self.cache = lm, list(texts), list(groups), base_config, cache
        self.settings = list(dict.fromkeys(s.normalised() for s in settings))
        self.teacher = teacher
        self._status = ["waiting"] * len(self.settings)
        self._index, self._step, self._accuracy = 0, 0, 0.0
        self._state, self._error = "running", None
        self._result: RegulariserResult | None = None
        super().__init__()

    def _on_progress(self, p: RegulariserProgress) -> None:
        with self._lock:
            finished = set(p.finished)
            self._status = ["done" if s in finished else ("running" if i == p.index else "waiting")
                            for i, s in enumerate(self.settings)]
            self._index = p.index
            if p.fit is None:
                self._step, self._accuracy = 0, 0.0
            else:
                self._step = p.fit.step
                self._accuracy = float(np.mean(p.fit.best_accuracy)) if p.fit.best_accuracy else 0.0

    def _work(self) -> None:
        result = run_regularisers(self.lm, self.texts, self.groups, self.settings, self.base_config, self.cache,
                           progress=self._on_progress, cancel=self.cancel_event, teacher=self.teacher)
        with self._lock:
            self._result = result
            done = {r.setting for r in result.results}
            self._status = ["done" if s in done else "waiting" for s in self.settings]
            self._state = "cancelled" if result.stopped else "done"

    def snapshot(self) -> RegulariserSnapshot:
        with self._lock:
            return RegulariserSnapshot(
                state=self._state, labels=[s.label for s in self.settings], status=list(self._status),
                index=self._index, step=self._step, max_steps=self.base_config.max_steps,
                mean_accuracy=self._accuracy, elapsed=self._elapsed(), error=self._error, result=self._result,
                traceback=self._traceback)
