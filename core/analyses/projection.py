"""Two-dimensional projections, cluster quality and neighbourhoods of fitted vectors.

Used by the semantic-vs-syntactic page (docs/science.md, B.1: t-SNE with perplexity 15 and the cosine
metric, silhouette with the source text as label) and by the teacher module's alignment score. Inputs are
plain numpy arrays [n, d] (rows are e- or m-vectors); torch tensors are accepted and copied to numpy.
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Float64

from core.engine.cache import ProtoCache, cache_key
from core.engine.shapes import checked

PROJECTION_METHODS = ("pca", "tsne", "umap")
METRICS = ("cosine", "euclidean")

# Rows shorter than this count as zero vectors when normalising, so a zero row yields similarity 0
# instead of NaN.
_NORM_EPS = 1e-12
# UMAP's spectral initialisation solves an eigenproblem on the neighbour graph that is unreliable on
# very small graphs; random init works for any size.
_UMAP_SPECTRAL_MIN_POINTS = 10
_UMAP_MIN_POINTS = 4
# Below this many points exact t-SNE is both more faithful and faster than Barnes-Hut, whose OpenMP threads
# contend on a busy machine (bench/embeddings.py times both).
_TSNE_EXACT_MAX_POINTS = 250
# The maps are small problems (a few hundred rows): one BLAS thread does them as fast as many, and on a busy
# machine much faster, because threads that wait on each other stall whenever one is descheduled.
BLAS_THREADS = 1
SILHOUETTE_SAMPLE = 2000  # rows above which a silhouette is scored on a fixed sample (silhouette_by_group)
MAP_ANALYSIS = "embedding-maps"  # one cached 2-D map per (rows, space, method, metric, seed, perplexity)


@checked
@dataclass(frozen=True)
class Projection:
    """A 2-D embedding of n points.

    coords: [n, 2] float64 (the field's annotation names it).
    method: the method that actually produced coords (may differ from requested_method after a fallback).
    requested_method: what the caller asked for.
    note: a human-readable sentence about any fallback or clamped parameter, None when nothing changed.
    """

    coords: Float64[np.ndarray, "n 2"]
    method: str
    requested_method: str
    note: str | None = None


def _as_matrix(x: Any, name: str = "x") -> np.ndarray:
    """Copy x to a finite float64 array [n, d]; torch tensors are detached and moved to the CPU."""
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    array = np.asarray(x, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array [n, d], got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; valid metrics: {', '.join(METRICS)}")


def _l2_normalise_rows(x: np.ndarray) -> np.ndarray:
    """[n, d] -> [n, d] with unit rows; zero rows stay zero."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, _NORM_EPS)


@checked
def cosine_similarity_matrix(x: Any) -> Float64[np.ndarray, "n n"]:
    """Pairwise cosine similarities [n, n] of the rows of x [n, d].

    A zero row has similarity 0 with everything (itself included) rather than NaN; values are clipped to
    [-1, 1] because rounding can push a unit row's self-similarity slightly above 1.
    """
    unit = _l2_normalise_rows(_as_matrix(x))
    return np.clip(unit @ unit.T, -1.0, 1.0)


def semantic_alignment(vectors: Any, teacher_emb: Any) -> float:
    """Spearman correlation between the pairwise cosine similarities of vectors [n, h] and teacher_emb [n, d].

    Only the upper triangle (i < j) counts. Returns NaN when undefined: fewer than 3 rows (fewer than 2
    pairs) or constant similarities on either side.
    """
    from scipy.stats import spearmanr

    sims_vectors = cosine_similarity_matrix(vectors)
    sims_teacher = cosine_similarity_matrix(teacher_emb)
    n = sims_vectors.shape[0]
    if sims_teacher.shape[0] != n:
        raise ValueError(f"row counts differ: {n} vectors, {sims_teacher.shape[0]} teacher embeddings")
    upper = np.triu_indices(n, k=1)
    pairs_vectors, pairs_teacher = sims_vectors[upper], sims_teacher[upper]
    if pairs_vectors.size < 2 or np.ptp(pairs_vectors) == 0 or np.ptp(pairs_teacher) == 0:
        return float("nan")
    return float(spearmanr(pairs_vectors, pairs_teacher).statistic)


def _pca_2d(x: np.ndarray, metric: str) -> np.ndarray:
    """[n, d] -> [n, 2]; pads with zero columns when the data has fewer than 2 usable dimensions."""
    from sklearn.decomposition import PCA

    n, d = x.shape
    data = _l2_normalise_rows(x) if metric == "cosine" else x
    n_components = min(2, n, d)
    # The full SVD is deterministic, so the same vectors always give the same picture.
    coords = PCA(n_components=n_components, svd_solver="full").fit_transform(data)
    if n_components < 2:
        coords = np.hstack([coords, np.zeros((n, 2 - n_components))])
    return coords


def _tsne_2d(x: np.ndarray, metric: str, seed: int, perplexity: float) -> tuple[np.ndarray, str | None]:
    from sklearn.manifold import TSNE

    n, d = x.shape
    # sklearn requires perplexity < n; the usual rule of thumb (each point needs about 3 * perplexity
    # neighbours) gives a tighter bound that keeps tiny sets from collapsing into one blob.
    limit = max(1.0, (n - 1) / 3.0)
    used = min(float(perplexity), limit)
    note = None
    if used < perplexity:
        note = f"t-SNE perplexity clamped from {perplexity:g} to {used:.3g} for {n} points"
    # PCA initialisation needs at least two input dimensions.
    init = "pca" if d >= 2 else "random"
    tsne = TSNE(
        n_components=2,
        perplexity=used,
        metric=metric,
        init=init,
        random_state=seed,
        method="exact" if n <= _TSNE_EXACT_MAX_POINTS else "barnes_hut",
    )
    return tsne.fit_transform(x), note


def _umap_2d(x: np.ndarray, metric: str, seed: int) -> tuple[np.ndarray, str | None]:
    # Imported here: importing umap compiles numba code and takes seconds.
    import umap

    n = x.shape[0]
    n_neighbors = min(15, n - 1)
    note = None
    if n_neighbors < 15:
        note = f"UMAP n_neighbors clamped from 15 to {n_neighbors} for {n} points"
    init = "spectral" if n >= _UMAP_SPECTRAL_MIN_POINTS else "random"
    reducer = umap.UMAP(
        n_components=2, n_neighbors=n_neighbors, metric=metric, init=init, random_state=seed
    )
    with warnings.catch_warnings():
        # A fixed random_state makes UMAP single-threaded and it says so on every call.
        warnings.filterwarnings("ignore", message=".*n_jobs.*")
        return reducer.fit_transform(x), note


def project_2d(
    x: Any,
    method: str = "pca",
    metric: str = "cosine",
    seed: int = 0,
    perplexity: float = 15.0,
) -> Projection:
    """Project the rows of x [n, d] to the plane.

    method: "pca", "tsne" or "umap". metric: "cosine" (rows are L2-normalised for PCA) or "euclidean".
    Works for every n: n = 0 gives [0, 2], n = 1 gives [[0, 0]], and parameters that the libraries
    reject for small n are clamped (t-SNE perplexity, UMAP n_neighbors). UMAP needs at least 4 points
    and falls back to PCA below that or when it fails; t-SNE falls back to PCA if it fails. Every
    change is explained in Projection.note.
    """
    if method not in PROJECTION_METHODS:
        raise ValueError(f"unknown projection method {method!r}; valid methods: {', '.join(PROJECTION_METHODS)}")
    _check_metric(metric)
    data = _as_matrix(x)
    n = data.shape[0]
    if n <= 1:
        return Projection(np.zeros((n, 2)), method, method, "fewer than 2 points: nothing to project" if n else None)

    compared = _l2_normalise_rows(data) if metric == "cosine" else data
    scale = max(1.0, float(np.abs(compared).max()))
    if float(np.ptp(compared, axis=0).max()) <= 1e-12 * scale:
        # Every method divides by the spread of the data somewhere and would produce NaN or warnings.
        return Projection(np.zeros((n, 2)), method, method, "all points coincide: drawn at the origin")

    if method == "pca":
        return Projection(_pca_2d(data, metric), "pca", method)

    if method == "umap" and n < _UMAP_MIN_POINTS:
        note = f"UMAP needs at least {_UMAP_MIN_POINTS} points, got {n}: showing PCA instead"
        return Projection(_pca_2d(data, metric), "pca", method, note)

    try:
        if method == "tsne":
            coords, note = _tsne_2d(data, metric, seed, perplexity)
        else:
            coords, note = _umap_2d(data, metric, seed)
        if not np.all(np.isfinite(coords)):
            raise ValueError("the embedding contains NaN or infinite values")
    except Exception as error:  # noqa: BLE001 - any library failure should still give the user a picture
        label = "t-SNE" if method == "tsne" else "UMAP"
        note = f"{label} failed ({type(error).__name__}: {error}): showing PCA instead"
        return Projection(_pca_2d(data, metric), "pca", method, note)
    return Projection(np.asarray(coords, dtype=np.float64), method, method, note)


def silhouette_by_group(x: Any, labels: Sequence[Hashable], metric: str = "cosine",
                        sample_size: int = SILHOUETTE_SAMPLE) -> float | None:
    """Silhouette score of the rows of x [n, d] grouped by labels [n] (sklearn's silhouette_score).

    Above sample_size rows the score is that of a fixed random sample of sample_size rows (sklearn's
    sample_size, seed 0): the exact score is quadratic in n (10,000 rows: 10^8 distances per space).
    Returns None where the score is undefined: fewer than 2 groups, or as many groups as points.
    """
    from sklearn.metrics import silhouette_score

    _check_metric(metric)
    data = _as_matrix(x)
    label_array = np.asarray(labels)
    if label_array.shape != (data.shape[0],):
        raise ValueError(f"labels must have one entry per row: {label_array.shape} vs {data.shape[0]} rows")
    n_groups = len(set(label_array.tolist()))
    if not 2 <= n_groups <= data.shape[0] - 1:
        return None
    sample = sample_size if data.shape[0] > sample_size else None
    try:
        return float(silhouette_score(data, label_array, metric=metric, sample_size=sample, random_state=0))
    except ValueError:  # a sample that holds a single group
        return None


def nearest_neighbours(x: Any, index: int, k: int = 5, metric: str = "cosine") -> list[tuple[int, float]]:
    """The k rows of x [n, d] closest to row `index`, excluding that row.

    Returns (row, cosine similarity) sorted by decreasing similarity for metric "cosine", or
    (row, euclidean distance) sorted by increasing distance for "euclidean"; ties keep row order.
    """
    _check_metric(metric)
    data = _as_matrix(x)
    n = data.shape[0]
    if not -n <= index < n:
        raise IndexError(f"index {index} out of range for {n} rows")
    index %= n
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if metric == "cosine":
        unit = _l2_normalise_rows(data)
        scores = np.clip(unit @ unit[index], -1.0, 1.0)
        order = np.argsort(-scores, kind="stable")
    else:
        scores = np.linalg.norm(data - data[index], axis=1)
        order = np.argsort(scores, kind="stable")
    others = [int(i) for i in order if i != index][:k]
    return [(i, float(scores[i])) for i in others]


# ---- cached maps ------------------------------------------------------------------------------------

def map_key(row_keys: Sequence[str], space: str, method: str, metric: str = "cosine", seed: int = 0,
            perplexity: float = 15.0) -> str:
    """Analysis key of a 2-D map: its rows (by cache entry key), the space they are taken from ("e", "m", ...;
    "teacher" rows follow the texts, named by the keys) and every projection setting that changes the map."""
    teacher = "teacher" if space == "teacher" else None
    return cache_key("projection-v1", list(row_keys), space, teacher, method, metric, int(seed),
                     float(perplexity) if method == "tsne" else None)


def load_map(row_keys: Sequence[str], space: str, method: str = "pca", metric: str = "cosine", seed: int = 0,
             perplexity: float = 15.0, cache: ProtoCache | None = None) -> Projection | None:
    """The cached 2-D map of these rows (cached_map's), or None when the cache does not hold it: never projects."""
    if cache is None:
        return None
    stored = cache.get_analysis(MAP_ANALYSIS, map_key(row_keys, space, method, metric, seed, perplexity),
                                with_tensors=True)
    if stored is None or tuple(stored[1].get("coords", np.zeros(0)).shape) != (len(row_keys), 2):
        return None
    meta, tensors = stored
    return Projection(tensors["coords"].double().numpy(), meta["method"], meta["requested_method"], meta.get("note"))


def cached_map(x: Any, row_keys: Sequence[str], space: str, method: str = "pca", metric: str = "cosine",
               seed: int = 0, perplexity: float = 15.0, cache: ProtoCache | None = None) -> Projection:
    """project_2d of x [n, d], read from the cache when it holds this map and stored there after (the one way
    every page caches its maps; the pre-fit ships the default maps of the built-in sets)."""
    stored = load_map(row_keys, space, method, metric, seed, perplexity, cache) if cache is not None else None
    if stored is not None:
        return stored
    key = map_key(row_keys, space, method, metric, seed, perplexity) if cache is not None else ""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(BLAS_THREADS):
        projection = project_2d(x, method=method, metric=metric, seed=seed, perplexity=perplexity)
    if cache is not None:
        cache.keep_analysis(MAP_ANALYSIS, key, {
            "method": projection.method, "requested_method": projection.requested_method, "note": projection.note,
            "space": space, "metric": metric, "seed": seed, "perplexity": perplexity, "points": len(row_keys),
        }, {"coords": torch.from_numpy(np.ascontiguousarray(projection.coords, dtype=np.float32))})
    return projection
