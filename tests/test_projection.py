"""core.analyses.projection on random vectors: shapes for tiny sets, fallbacks, silhouette, neighbours."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from sklearn.metrics import silhouette_score

from core.analyses.projection import (
    Projection,
    cosine_similarity_matrix,
    semantic_alignment,
    nearest_neighbours,
    project_2d,
    silhouette_by_group,
)


def _points(n: int, d: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d))


@pytest.mark.parametrize("method", ["pca", "tsne"])
@pytest.mark.parametrize("n", [2, 3, 5, 30])
def test_projection_shape_for_small_and_normal_sets(method: str, n: int) -> None:
    projection = project_2d(_points(n), method=method)
    assert isinstance(projection, Projection)
    assert projection.coords.shape == (n, 2)
    assert np.all(np.isfinite(projection.coords))
    assert projection.requested_method == method


def test_umap_shapes_and_fallback_below_four_points() -> None:
    # One test for UMAP: importing it and the first numba compilation take many seconds.
    for n in (2, 3):
        projection = project_2d(_points(n), method="umap")
        assert projection.coords.shape == (n, 2)
        assert projection.method == "pca"
        assert projection.note is not None and "UMAP" in projection.note
    for n in (5, 30):
        projection = project_2d(_points(n), method="umap", seed=1)
        assert projection.coords.shape == (n, 2)
        assert projection.method == "umap"
        assert np.all(np.isfinite(projection.coords))
    assert "n_neighbors" in (project_2d(_points(5), method="umap").note or "")


def test_single_point_and_empty_input() -> None:
    assert project_2d(_points(1), method="tsne").coords.tolist() == [[0.0, 0.0]]
    assert project_2d(np.zeros((0, 4))).coords.shape == (0, 2)


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_coinciding_points_are_drawn_at_the_origin(method: str) -> None:
    projection = project_2d(np.tile([1.0, 2.0, 3.0], (6, 1)) * np.arange(1, 7)[:, None], method=method)
    assert projection.coords.tolist() == [[0.0, 0.0]] * 6
    assert "coincide" in (projection.note or "")


def test_tsne_perplexity_clamp_is_reported() -> None:
    assert "perplexity" in (project_2d(_points(10), method="tsne", perplexity=15).note or "")
    assert project_2d(_points(60), method="tsne", perplexity=15).note is None


def test_tsne_is_reproducible_with_a_seed() -> None:
    x = _points(20)
    first = project_2d(x, method="tsne", seed=3).coords
    second = project_2d(x, method="tsne", seed=3).coords
    np.testing.assert_allclose(first, second)


def test_pca_pads_rank_deficient_input() -> None:
    one_feature = np.arange(5.0)[:, None]
    projection = project_2d(one_feature, method="pca", metric="euclidean")
    assert projection.coords.shape == (5, 2)
    np.testing.assert_allclose(projection.coords[:, 1], 0.0)


def test_cosine_pca_ignores_row_scale() -> None:
    x = _points(8)
    scaled = x * np.random.default_rng(1).uniform(0.1, 10.0, size=(8, 1))
    np.testing.assert_allclose(project_2d(x).coords, project_2d(scaled).coords, atol=1e-9)


def test_torch_input_is_accepted() -> None:
    assert project_2d(torch.randn(6, 8)).coords.shape == (6, 2)


def test_unknown_method_and_metric_are_rejected() -> None:
    with pytest.raises(ValueError, match="tsne"):
        project_2d(_points(4), method="mds")
    with pytest.raises(ValueError, match="cosine"):
        project_2d(_points(4), metric="manhattan")


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_silhouette_equals_sklearn(metric: str) -> None:
    x = _points(30)
    labels = [f"text {i % 4}" for i in range(30)]
    expected = silhouette_score(x, labels, metric=metric)
    assert silhouette_by_group(x, labels, metric=metric) == pytest.approx(expected, abs=1e-12)


def test_silhouette_is_none_when_undefined() -> None:
    x = _points(4)
    assert silhouette_by_group(x, ["a", "a", "a", "a"]) is None
    assert silhouette_by_group(x, ["a", "b", "c", "d"]) is None
    assert silhouette_by_group(x, ["a", "a", "b", "b"]) is not None


def test_nearest_neighbours_by_cosine_and_euclidean() -> None:
    x = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.0], [10.0, 0.5]])
    cosine = nearest_neighbours(x, 0, k=3)
    # Row 4 is long but almost parallel to row 0: cosine ignores length.
    assert [row for row, _ in cosine] == [4, 1, 2]
    assert all(a[1] >= b[1] for a, b in zip(cosine, cosine[1:]))
    euclidean = nearest_neighbours(x, 0, k=10, metric="euclidean")
    assert [row for row, _ in euclidean] == [1, 2, 3, 4]
    assert euclidean[0][1] == pytest.approx(np.hypot(0.1, 0.1))


def test_cosine_similarity_matrix_matches_definition() -> None:
    x = _points(7)
    sims = cosine_similarity_matrix(x)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(sims, unit @ unit.T, atol=1e-12)
    np.testing.assert_allclose(np.diag(sims), 1.0)
    with_zero_row = cosine_similarity_matrix(np.vstack([x, np.zeros(16)]))
    assert np.all(np.isfinite(with_zero_row)) and np.all(with_zero_row[-1] == 0)


def test_semantic_alignment_is_spearman_of_upper_triangles() -> None:
    d_teacher, hidden = 24, 40
    teacher = torch.randn(12, d_teacher, generator=torch.Generator().manual_seed(1))
    rotation, _ = torch.linalg.qr(torch.randn(hidden, hidden, generator=torch.Generator().manual_seed(0)))
    padded = torch.cat([teacher, torch.zeros(12, hidden - d_teacher)], dim=1) @ rotation
    assert semantic_alignment(padded, teacher) == pytest.approx(1.0)

    vectors = np.random.default_rng(0).normal(size=(12, hidden))
    unit_v = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    unit_t = (teacher / teacher.norm(dim=1, keepdim=True)).numpy().astype(np.float64)
    upper = np.triu_indices(12, k=1)
    expected = spearmanr((unit_v @ unit_v.T)[upper], (unit_t @ unit_t.T)[upper]).statistic
    assert semantic_alignment(vectors, teacher) == pytest.approx(expected, abs=1e-6)
    assert math.isnan(semantic_alignment(vectors[:2], teacher[:2]))


def test_a_large_set_is_scored_on_a_fixed_sample() -> None:
    """Above sample_size rows the silhouette is sklearn's on a fixed sample: the same number every call, close to
    the exact score, and computed without the n x n distance matrix."""
    from sklearn.metrics import silhouette_score

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(5), 300)
    x = rng.normal(size=(1500, 16)) + labels[:, None] * 0.5
    sampled = silhouette_by_group(x, labels, "cosine", sample_size=400)
    assert sampled == silhouette_by_group(x, labels, "cosine", sample_size=400)
    exact = float(silhouette_score(x, labels, metric="cosine"))
    assert sampled != exact and abs(sampled - exact) < 0.05
    assert silhouette_by_group(x, labels, "cosine", sample_size=5000) == pytest.approx(exact)
