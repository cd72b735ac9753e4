"""What do e and m encode? The computations behind the Embeddings page (docs/science.md, B.1).

A text set (core.texts.textsets: columns text, group, kind) is matched to its fitted cache entries; the rows
that are fitted well enough become row-aligned matrices in four spaces:

- "e" and "m": the proto-tokens, [n, hidden] each;
- "e‖m": their concatenation, [n, 2 * hidden] (each half L2-normalised first, so neither dominates
  the cosine merely by its norm);
- "teacher": the sentence embedding of the same texts by a sentence-embedding model, [n, d_teacher],
  the reference for what "semantic" clustering looks like.

Each space gets a cosine silhouette score with the group (source text or syntax category) as label,
also on the subsets "original + lexical" and "original + semantic" where a set has those kinds: the
paper's finding is that m clusters paraphrases of the same source more strongly than e does.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np
import pandas as pd
from jaxtyping import Float, Float32

from core.engine.cache import CacheEntry, ProtoCache, cache_key
from core.engine.fit import FitConfig
from core.engine.jobs import BackgroundJob
from core.engine.models import LoadedModel
from core.engine.reconstruct import stored_count
from core.analyses.projection import (BLAS_THREADS, Projection, cached_map, load_map, map_key, nearest_neighbours,
                                      silhouette_by_group)
from core.engine.sets import ConfigChoice, fit_choices, load_manifest
from core.engine.shapes import checked

CONCAT = "e‖m"
SPACES: tuple[str, ...] = ("e", "m", CONCAT, "teacher")
SPACE_LABELS: dict[str, str] = {
    "e": "e (first proto-token)",
    "m": "m (repeated proto-token)",
    CONCAT: "e‖m (both, concatenated)",
    "teacher": "teacher sentence embedding",
}
TEACHER_ANALYSIS = "teacher-embeddings"
DEFAULT_METHOD = "tsne"  # the seed paper's maps: t-SNE, perplexity 15, cosine
DEFAULT_PERPLEXITY = 15.0
DEFAULT_MIN_ACCURACY = 0.9  # the paper keeps texts fitted to >= 0.9
# Sets with more kept texts than this get their maps (and missing teacher embeddings) in a MapJob, in the
# background: t-SNE of 10,000 points takes minutes, and the page's other parts draw meanwhile.
BACKGROUND_POINTS = 1000
WEBGL_POINTS = 1000  # maps of more points are drawn with WebGL (plotly's Scattergl): SVG pans 10,000 in jerks
ALL = "all"
SUBSETS: dict[str, tuple[str, ...]] = {
    "original + lexical": ("original", "lexical"),
    "original + semantic": ("original", "semantic"),
}


# ---- matching a set to its fitted entries -----------------------------------------------------------

def config_choices(lm: LoadedModel, set_name: str | None, sidebar: FitConfig, shared_m: bool,
                   manifest: dict | None = None) -> list[ConfigChoice]:
    """Configurations to look a built-in set up with, its shipped pre-fit (data/prefit/manifest.json) first when
    it exists for this model, each with m shared across the set when asked."""
    from core.engine.fit import config_from_dict

    def with_sharing(config: FitConfig) -> FitConfig:
        # Restarts pick the best of several independent inits per text, which a shared m cannot do; bf16 compute
        # checks texts one by one (FitConfig.compute), so it is for texts fitted alone too.
        return replace(config, shared_m=True, restarts=1, compute="", start="") if shared_m else config

    manifest = load_manifest() if manifest is None else manifest
    prefit = manifest.get(set_name) if set_name else None
    if prefit is None or prefit.model != lm.identity:
        return fit_choices(None, with_sharing(sidebar))
    keys = {} if shared_m else dict(zip(prefit.texts, prefit.keys))
    return fit_choices(with_sharing(config_from_dict(prefit.config)), with_sharing(sidebar), keys)


# ---- teacher embeddings ----------------------------------------------------------------------------

def teacher_key(texts: Sequence[str], teacher_name: str | None = None) -> str:
    from core.engine.teacher import canonical_teacher_name

    return cache_key("teacher-embeddings-v1", canonical_teacher_name(teacher_name), list(texts))


def load_teacher_embeddings(texts: Sequence[str], cache: ProtoCache, teacher_name: str | None = None
                            ) -> Float32[np.ndarray, "n d_teacher"] | None:
    """The cached sentence embeddings of the texts (teacher_embeddings'), or None: never loads the teacher."""
    stored = cache.get_analysis(TEACHER_ANALYSIS, teacher_key(texts, teacher_name), with_tensors=True)
    if stored is not None and "embeddings" in stored[1] and stored[1]["embeddings"].shape[0] == len(texts):
        return stored[1]["embeddings"].float().numpy()
    return None


def teacher_embeddings(texts: Sequence[str], cache: ProtoCache, teacher_name: str | None = None
                       ) -> Float32[np.ndarray, "n d_teacher"]:
    """Sentence embeddings [n, d_teacher] of the texts, computed once per text list and kept in the cache.

    Keyed by the whole list (the page always asks for a whole set), so a set costs one small file; the
    pre-fit ships those of the built-in sets, which makes the page instant without loading the teacher.
    """
    stored = load_teacher_embeddings(texts, cache, teacher_name)
    if stored is not None:
        return stored
    key = teacher_key(texts, teacher_name)
    from core.engine.teacher import canonical_teacher_name, embed_texts, load_teacher

    embeddings = embed_texts(load_teacher(teacher_name), list(texts))
    cache.keep_analysis(TEACHER_ANALYSIS, key, {"teacher": canonical_teacher_name(teacher_name), "n_texts": len(texts)},
                       {"embeddings": embeddings.contiguous()})
    return embeddings.float().numpy()


# ---- assembling a set's vectors --------------------------------------------------------------------

@checked
@dataclass
class SetVectors:
    """The fitted texts of a set that pass the accuracy threshold, as row-aligned matrices.

    table: one row per kept text: text, group, kind, accuracy (in ``count``), n_tokens, key, row (its row in the set).
    e, m, teacher: float32, the precision entries are stored in (computations upcast on their own). shared_m:
    every row has the same m.
    n_total: texts in the set; n_unfitted: without an entry; n_below: fitted but below min_accuracy.
    """

    table: pd.DataFrame
    e: Float32[np.ndarray, "n hidden"]
    m: Float32[np.ndarray, "n hidden"]
    teacher: Float32[np.ndarray, "n d_teacher"] | None
    min_accuracy: float
    n_total: int
    n_unfitted: int
    n_below: int
    shared_m: bool = False
    whole_groups: bool = False  # a group kept only when every text of it passed (the seed paper's selection)
    count: str = "text"  # how accuracy is counted (core.engine.reconstruct.COUNTS), for the threshold and the table
    n_uncounted: int = 0  # with count "bos": fitted texts whose BOS prediction is not recorded (counted over N)
    n_dropped: int = 0  # texts that passed but were left out with their group (whole_groups)
    notes: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.table)

    @property
    def spaces(self) -> tuple[str, ...]:
        """The spaces worth drawing: m (and so e‖m) says nothing when it is shared by every text."""
        spaces = ("e",) if self.shared_m else ("e", "m", CONCAT)
        return spaces + (("teacher",) if self.teacher is not None else ())

    def matrix(self, space: str) -> Float[np.ndarray, "n d"]:
        """[n, d] rows of `space` (one of SPACES)."""
        if space == "e":
            return self.e
        if space == "m":
            return self.m
        if space == CONCAT:
            return np.hstack([_unit_rows(self.e.astype(np.float64)), _unit_rows(self.m.astype(np.float64))])
        if space == "teacher":
            if self.teacher is None:
                raise ValueError("no teacher embeddings were assembled for this set")
            return self.teacher
        raise ValueError(f"unknown space {space!r}; use one of {', '.join(SPACES)}")


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def assemble_set(frame: pd.DataFrame, entries: Sequence[CacheEntry | None], *, min_accuracy: float = 0.0,
                 teacher: Float[np.ndarray, "n_total d_teacher"] | None = None, shared_m: bool = False,
                 whole_groups: bool = False, count: str = "text") -> SetVectors:
    """Row-aligned matrices of the set's fitted texts with accuracy >= min_accuracy, accuracy counted in ``count``
    (core.engine.reconstruct.stored_count: "bos" is the seed paper's N + 1 where e's BOS prediction is recorded).

    frame: the set (columns text, group, kind), n_total rows. entries: one per row (None = not fitted).
    teacher: [n_total, d_teacher] embeddings of every row of the set (rows are picked here), or None.
    whole_groups: the seed paper's selection: a group counts only if every text in it is fitted to min_accuracy;
    the passing texts of the other groups are left out too (n_dropped).
    """
    if len(entries) != len(frame):
        raise ValueError(f"{len(entries)} entries for a set of {len(frame)} texts")
    if teacher is not None and teacher.shape[0] != len(frame):
        raise ValueError(f"{teacher.shape[0]} teacher embeddings for a set of {len(frame)} texts")
    counts = [None if entry is None else stored_count(entry.metrics, entry.n_tokens, count) for entry in entries]
    rows, kept, n_unfitted, n_below = [], [], 0, 0
    for row, (record, entry, counted) in enumerate(zip(frame.itertuples(index=False), entries, counts)):
        if entry is None or counted is None:
            n_unfitted += 1
            continue
        accuracy = counted.accuracy
        if accuracy < min_accuracy:
            n_below += 1
            continue
        kept.append(entry)
        rows.append({"row": row, "text": record.text, "group": record.group, "kind": record.kind,
                     "accuracy": accuracy, "n_tokens": entry.n_tokens, "key": entry.key})
    n_dropped = 0
    if whole_groups:
        short = {group for group, counted in zip(frame["group"], counts)
                 if counted is None or counted.accuracy < min_accuracy}
        keep = [i for i, row in enumerate(rows) if row["group"] not in short]
        n_dropped = len(rows) - len(keep)
        rows, kept = [rows[i] for i in keep], [kept[i] for i in keep]
    table = pd.DataFrame(rows, columns=["row", "text", "group", "kind", "accuracy", "n_tokens", "key"])
    hidden = kept[0].e.numel() if kept else 0
    e = np.stack([x.e.float().numpy() for x in kept]) if kept else np.zeros((0, hidden), dtype=np.float32)
    m = np.stack([x.m.float().numpy() for x in kept]) if kept else np.zeros((0, hidden), dtype=np.float32)
    picked = teacher[table["row"].to_numpy(dtype=int)].astype(np.float32) if teacher is not None else None
    return SetVectors(table=table, e=e, m=m, teacher=picked, min_accuracy=min_accuracy, n_total=len(frame),
                      n_unfitted=n_unfitted, n_below=n_below, shared_m=shared_m, whole_groups=whole_groups,
                      n_dropped=n_dropped, count=count,
                      n_uncounted=sum(c is not None and c.count != count for c in counts))


# ---- scores, projections, neighbours ---------------------------------------------------------------

def silhouette_table(vectors: SetVectors, metric: str = "cosine") -> pd.DataFrame:
    """Silhouette by group of every space, on all kept texts and on the kind subsets the set has.

    Columns: space, subset, silhouette (NaN where undefined: < 2 groups or a group per point), points,
    groups. Rows in SPACES order, "all" first within a space.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(BLAS_THREADS):
        return _silhouette_table(vectors, metric)


def _silhouette_table(vectors: SetVectors, metric: str) -> pd.DataFrame:
    kinds = vectors.table["kind"].to_numpy()
    subsets = {ALL: np.ones(vectors.n, dtype=bool)}
    for name, wanted in SUBSETS.items():
        mask = np.isin(kinds, wanted)
        if all((kinds == k).any() for k in wanted):
            subsets[name] = mask
    groups = vectors.table["group"].to_numpy()
    rows = []
    for space in vectors.spaces:
        x = vectors.matrix(space)
        for subset, mask in subsets.items():
            score = silhouette_by_group(x[mask], groups[mask], metric=metric) if mask.sum() else None
            rows.append({"space": space, "subset": subset, "silhouette": np.nan if score is None else score,
                         "points": int(mask.sum()), "groups": len(set(groups[mask].tolist()))})
    return pd.DataFrame(rows, columns=["space", "subset", "silhouette", "points", "groups"])


# The seed paper's finding on silhouettes, with its setting (docs/science.md, B.1 and B.code).
PAPER_FINDING = ("the seed paper (Llama-3.2-1B, t-SNE perplexity 15, cosine; groups kept only when every variant "
                 "reached 0.9) found m more semantic than e")
# Below this silhouette a space does not group its texts.
GROUPING_SILHOUETTE = 0.1


def finding_line(scores: pd.DataFrame, model_name: str) -> str:
    """One line that sets this model's silhouettes (silhouette_table) beside the seed paper's finding, on the
    original + semantic subset where the set has one (paraphrases of one source), else on all texts."""
    subset = "original + semantic" if (scores["subset"] == "original + semantic").any() else ALL
    value = {row.space: row.silhouette for row in scores[scores["subset"] == subset].itertuples()}
    e, m, teacher = value.get("e"), value.get("m"), value.get("teacher")
    if e is None or m is None or e != e or m != m:
        return f"Not enough groups to score e and m; {PAPER_FINDING}."
    against = f" against {teacher:.2f} for the teacher" if teacher is not None and teacher == teacher else ""
    where = f"On {model_name} ({subset})"
    if max(e, m) < GROUPING_SILHOUETTE:
        return f"{where} neither e nor m groups the texts: silhouettes {e:.2f} and {m:.2f}{against}; " \
               f"{PAPER_FINDING}."
    more, less = (("m", m), ("e", e)) if m > e else (("e", e), ("m", m))
    return f"{where} {more[0]} groups the texts more than {less[0]}: silhouettes {more[1]:.2f} and " \
           f"{less[1]:.2f}{against}; {PAPER_FINDING}."


def projection_key(vectors: SetVectors, space: str, method: str, metric: str, seed: int, perplexity: float) -> str:
    """Analysis key of one space's 2-D map of a set: its rows by entry key (core.analyses.projection.map_key)."""
    return map_key(list(vectors.table["key"]), space, method, metric, seed, perplexity)


def project_spaces(vectors: SetVectors, spaces: Sequence[str], method: str = "tsne", metric: str = "cosine",
                   seed: int = 0, perplexity: float = 15.0, cache: ProtoCache | None = None) -> dict[str, Projection]:
    """A 2-D projection (coords [n, 2]) of each requested space, each cached as a map analysis when a cache is
    given (core.analyses.projection.cached_map)."""
    keys = list(vectors.table["key"])
    return {space: cached_map(vectors.matrix(space), keys, space, method, metric, seed, perplexity, cache)
            for space in spaces}


def load_projections(vectors: SetVectors, spaces: Sequence[str], method: str = "tsne", metric: str = "cosine",
                     seed: int = 0, perplexity: float = 15.0, cache: ProtoCache | None = None
                     ) -> dict[str, Projection] | None:
    """project_spaces' maps when the cache holds every one of them, else None: never projects."""
    keys = list(vectors.table["key"])
    maps = {space: load_map(keys, space, method, metric, seed, perplexity, cache) for space in spaces}
    return maps if all(p is not None for p in maps.values()) else None  # type: ignore[return-value]


@dataclass(frozen=True)
class MapSnapshot:
    """Where a MapJob is: its state, the step it is on and how many of its steps are done."""

    state: str  # "running", "done", "cancelled", "failed"
    step: str
    done: int
    total: int
    elapsed: float
    error: str | None = None
    traceback: str | None = None
    notes: list[str] = field(default_factory=list)  # what went without (the teacher reference)

    @property
    def finished(self) -> bool:
        return self.state != "running"


class MapJob(BackgroundJob):
    """A large set's maps in a daemon thread: the teacher embeddings of its texts when they are missing, then
    the 2-D map of each space, each stored in the cache as it is done (teacher_embeddings, cached_map), so the
    page draws them from the cache on its next run, and a stopped job keeps the maps already made."""

    thread_name = "proto-maps"

    def __init__(self, vectors: SetVectors, texts: Sequence[str], cache: ProtoCache, *, method: str, metric: str,
                 perplexity: float, teacher: bool = True, seed: int = 0):
        self.vectors, self.texts, self.cache = vectors, list(texts), cache
        self.method, self.metric, self.perplexity, self.seed = method, metric, float(perplexity), seed
        self.teacher = teacher and vectors.teacher is None
        self._state, self._error, self._step, self._done = "running", None, "starting", 0
        # what the job made, for a cache that could not store it (keep_analysis warns): space -> map
        self.projections: dict[str, Projection] = {}
        self.notes: list[str] = []
        self._total = int(self.teacher) + len(vectors.spaces) + int(self.teacher)  # the teacher adds a map too
        super().__init__()

    def _advance(self, step: str) -> None:
        with self._lock:
            self._step = step

    def _finish_step(self) -> None:
        with self._lock:
            self._done += 1

    def _work(self) -> None:
        vectors = self.vectors
        if self.teacher:
            self._advance(f"embedding {len(self.texts):,} texts with the teacher")
            try:
                embeddings = teacher_embeddings(self.texts, self.cache)
                vectors = replace(vectors, teacher=embeddings[vectors.table["row"].to_numpy(dtype=int)]
                                  .astype(np.float32))
            except Exception as exc:  # the maps of e and m are still worth making without the reference
                with self._lock:
                    self.notes.append(f"No teacher reference: {' '.join(str(exc).split())}")
                    self._total -= 1
            self._finish_step()
        keys = list(vectors.table["key"])
        for space in vectors.spaces:
            if self.cancel_event.is_set():
                break
            self._advance(f"{self.method} map of {SPACE_LABELS[space]} ({vectors.n:,} points)")
            projection = cached_map(vectors.matrix(space), keys, space, self.method, self.metric, self.seed,
                                    self.perplexity, self.cache)
            with self._lock:
                self.projections[space] = projection
            self._finish_step()
        with self._lock:
            self._total = self._done if self.cancel_event.is_set() else self._total
            self._state = "cancelled" if self.cancel_event.is_set() else "done"

    def snapshot(self) -> MapSnapshot:
        with self._lock:
            return MapSnapshot(self._state, self._step, self._done, max(self._total, self._done), self._elapsed(),
                               self._error, self._traceback, list(self.notes))


def coordinates_frame(vectors: SetVectors, projections: dict[str, Projection]) -> pd.DataFrame:
    """Long table of the 2-D maps: space, method, text, group, kind, accuracy, x, y (one row per point and space)."""
    parts = []
    for space, projection in projections.items():
        part = vectors.table[["text", "group", "kind", "accuracy"]].copy()
        part.insert(0, "method", projection.method)
        part.insert(0, "space", space)
        part["x"], part["y"] = projection.coords[:, 0], projection.coords[:, 1]
        parts.append(part)
    columns = ["space", "method", "text", "group", "kind", "accuracy", "x", "y"]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)


def neighbours_table(vectors: SetVectors, index: int, k: int = 5, metric: str = "cosine",
                     spaces: Sequence[str] | None = None) -> pd.DataFrame:
    """The k nearest texts to kept row `index` in each space.

    Columns: space, rank (1 = nearest), text, group, kind, score (cosine similarity, or euclidean
    distance for that metric), same_group.
    """
    rows = []
    group = vectors.table["group"].iloc[index]
    for space in spaces or vectors.spaces:
        for rank, (j, score) in enumerate(nearest_neighbours(vectors.matrix(space), index, k, metric), start=1):
            other = vectors.table.iloc[j]
            rows.append({"space": space, "rank": rank, "text": other["text"], "group": other["group"],
                         "kind": other["kind"], "score": score, "same_group": other["group"] == group})
    return pd.DataFrame(rows, columns=["space", "rank", "text", "group", "kind", "score", "same_group"])
