"""A learned start: the (e, m) a new text's fit begins from, taken from what the cache already holds.

``FitConfig.start = "nearest"``: the fitted vectors of the cached text closest to the new one by the teacher's
sentence embedding (core.engine.teacher), among the converged entries of the same model and layout that were fitted
alone. A paraphrase or a typo variant of a fitted text is a common case in this lab; from its neighbour's solution
it converged 1.7x sooner per text than from a draw in bench/start.py, but 0.6x to 3.6x. A text whose nearest
cached text is further than MIN_SIMILARITY starts from a random draw, and so does every text when the cache holds
nothing.

The teacher embeddings of the cached texts are kept as one analysis per model and teacher (START_ANALYSIS), grown
by the texts it lacks; the shipped pre-fit ships those of its entries, so a fresh install only embeds the new text.

``"mean"`` (the fast preset's): the mean of those entries' vectors, one shared start for every text (a first-order
stand-in for a start meta-learned across the corpus). On new texts of 20-28 tokens a fit from it reached 0.99 in
less than half the median wall time of a random draw (2.2x, bench/start.py). It depends on what the cache holds,
so the entry records it (metrics["start"]: how many solutions it averaged).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float32
from torch import Tensor

from core.engine.cache import EntryListing, ProtoCache, cache_key

START_KINDS = ("", "nearest", "mean")
START_LABELS = {"": "a random draw", "nearest": "the nearest cached text", "mean": "the mean of the cached solutions"}
START_ANALYSIS = "start-embeddings"
START_VERSION = "start-embeddings-v1"
MEAN_ANALYSIS = "start-mean"
MEAN_VERSION = "start-mean-v1"
# Below this teacher cosine similarity the nearest cached text is not a neighbour (a draw is used instead).
# Paraphrases and typo variants of the shipped sources sit at 0.7-0.98 from their source; unrelated texts at
# 0.2-0.5 from their nearest shipped text (bench/start.py).
MIN_SIMILARITY = 0.6


@dataclass(frozen=True)
class Start:
    """Where one text's fit starts: the vectors of a cached entry and how near its text is."""

    e: Tensor  # [hidden] float32
    m: Tensor
    key: str  # the entry the vectors come from
    text: str
    similarity: float  # teacher cosine similarity between the two texts (nan for the mean)
    kind: str = "nearest"

    def as_dict(self) -> dict:
        """What an entry fitted from this start records of it (metrics["start"])."""
        similarity = round(self.similarity, 4) if self.similarity == self.similarity else None
        return {"kind": self.kind, "key": self.key or None, "text": self.text, "similarity": similarity}


def candidates(cache: ProtoCache, model: str, layout: str) -> list[EntryListing]:
    """Entries whose vectors can start a new fit: converged, fitted alone, of this model and layout."""
    return [row for row in cache.list(model) if row.metrics.get("converged") and row.group is None
            and row.config.get("layout", "e+m*N") == layout]


def start_key(model: str, teacher_name: str | None = None) -> str:
    from core.engine.teacher import canonical_teacher_name

    return cache_key(START_VERSION, model, canonical_teacher_name(teacher_name))


def candidate_embeddings(cache: ProtoCache, model: str, rows: Sequence[EntryListing], teacher_name: str | None = None
                         ) -> Float32[Tensor, "n d_teacher"]:
    """The teacher embeddings of the candidates' texts, row-aligned: the stored ones, plus the missing ones
    computed now and stored with them."""
    key = start_key(model, teacher_name)
    stored = cache.get_analysis(START_ANALYSIS, key, with_tensors=True)
    known: dict[str, Tensor] = {}
    if stored is not None:
        keys, matrix = stored[0].get("keys"), stored[1].get("embeddings")
        if isinstance(keys, list) and matrix is not None and matrix.ndim == 2 and matrix.shape[0] == len(keys):
            known = dict(zip(keys, matrix.float()))
    missing = [row for row in rows if row.key not in known]
    if missing:
        from core.engine.teacher import canonical_teacher_name, embed_texts, load_teacher

        fresh = embed_texts(load_teacher(teacher_name), [row.text for row in missing])
        known.update(zip((row.key for row in missing), fresh.float()))
        keys = list(known)
        cache.keep_analysis(START_ANALYSIS, key, {"teacher": canonical_teacher_name(teacher_name), "model": model,
                                                   "keys": keys},
                            {"embeddings": torch.stack([known[k] for k in keys]).contiguous()})
    if not rows:
        return torch.zeros(0, 0)
    return torch.stack([known[row.key] for row in rows])


def nearest_starts(cache: ProtoCache, model: str, hidden: int, texts: Sequence[str], layout: str = "e+m*N", *,
                   teacher_name: str | None = None, min_similarity: float = MIN_SIMILARITY) -> list[Start | None]:
    """Per text, the vectors of its nearest cached text by teacher embedding (None where none is near enough)."""
    rows = candidates(cache, model, layout)
    if not rows or not texts:
        return [None] * len(texts)
    from core.engine.teacher import embed_texts, load_teacher

    pool = F.normalize(candidate_embeddings(cache, model, rows, teacher_name), dim=1)
    query = F.normalize(embed_texts(load_teacher(teacher_name), list(texts)).float(), dim=1)
    similarity, best = (query @ pool.T).max(dim=1)
    picked = {rows[int(j)].key for j, s in zip(best, similarity) if float(s) >= min_similarity}
    entries = cache.get_many(sorted(picked), hidden)
    starts: list[Start | None] = []
    for s, j in zip(similarity.tolist(), best.tolist()):
        entry = entries.get(rows[j].key) if s >= min_similarity else None
        starts.append(None if entry is None else Start(e=entry.e, m=entry.m, key=entry.key, text=entry.text,
                                                       similarity=s))
    return starts


def mean_start(cache: ProtoCache, model: str, hidden: int, layout: str = "e+m*N") -> Start | None:
    """The mean of the candidates' vectors: one shared start for every text (None when the cache holds none).
    Kept as an analysis keyed by the candidates, so a cache of thousands reads their vectors once."""
    rows = candidates(cache, model, layout)
    if not rows:
        return None
    key = cache_key(MEAN_VERSION, model, layout, sorted(row.key for row in rows))
    stored = cache.get_analysis(MEAN_ANALYSIS, key, with_tensors=True)
    if stored is not None and {"e", "m"} <= set(stored[1]) and stored[1]["e"].shape == (hidden,):
        e, m, n = stored[1]["e"].float(), stored[1]["m"].float(), int(stored[0].get("n", len(rows)))
    else:
        entries = list(cache.get_many([row.key for row in rows], hidden).values())
        if not entries:
            return None
        e = torch.stack([entry.e for entry in entries]).mean(0)
        m = torch.stack([entry.m for entry in entries]).mean(0)
        n = len(entries)
        cache.keep_analysis(MEAN_ANALYSIS, key, {"model": model, "layout": layout, "n": n},
                            {"e": e.contiguous(), "m": m.contiguous()})
    return Start(e=e, m=m, key="", text=f"the mean of {n} cached solutions", similarity=float("nan"), kind="mean")


def learned_starts(cache: ProtoCache, model: str, hidden: int, texts: Sequence[str], kind: str,
                   layout: str = "e+m*N") -> list[Start | None]:
    """Per text, where a fit with FitConfig.start = kind begins (None: a random draw). A teacher that cannot be
    loaded leaves every text a random draw, with a warning in cache.warnings (the fit itself does not need it)."""
    if kind == "nearest":
        from core.engine.teacher import TeacherLoadError

        try:
            return nearest_starts(cache, model, hidden, texts, layout)
        except TeacherLoadError as exc:
            cache._warn(f"No learned start (the teacher could not be loaded: {exc}); fitting from random draws.")
            return [None] * len(texts)
    if kind == "mean":
        return [mean_start(cache, model, hidden, layout)] * len(texts)
    if kind == "":
        return [None] * len(texts)
    raise ValueError(f"unknown start {kind!r}; use one of {', '.join(k for k in START_KINDS if k)}")


@dataclass(frozen=True)
class StepsSaved:
    """What a learned start saved one entry, against cached texts of about its length fitted from a draw."""

    steps: int  # the entry's own steps
    draw_median: float | None  # median steps of the comparable entries fitted from a draw (None: none cached)
    n_compared: int

    @property
    def saved(self) -> float | None:
        return None if self.draw_median is None else self.draw_median - self.steps


def steps_saved(cache: ProtoCache, entry_model: str, n_tokens: int, steps: int, preset: str | None,
                layout: str = "e+m*N", within: float = 0.25) -> StepsSaved:
    """The entry's steps against the median steps of the converged entries of the same model, layout and preset
    fitted from a random draw, whose texts are within `within` of n_tokens long."""
    lo, hi = n_tokens * (1 - within), n_tokens * (1 + within)
    drawn = [row.metrics.get("steps") for row in candidates(cache, entry_model, layout)
             if not row.config.get("start") and row.config.get("preset") == preset and lo <= row.n_tokens <= hi
             and isinstance(row.metrics.get("steps"), int)]
    median = float(statistics.median(drawn)) if drawn else None
    return StepsSaved(steps=steps, draw_median=median, n_compared=len(drawn))
