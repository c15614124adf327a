"""2-D maps: methods, seeds, cache, query placement, small-N edge cases, lazy imports."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from retrieval_app.errors import RetrievalAppError
from retrieval_app.retrieval.projection import PRE_REDUCE_DIM, compute_projection, embedding_fingerprint, knn_graph, pre_reduce


def blobs(n_per=20, centres=4, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    middle = rng.normal(size=(centres, dim)) * 6
    return (middle.repeat(n_per, axis=0) + rng.normal(size=(centres * n_per, dim))).astype(np.float32)


def spread(coords):
    return float(np.linalg.norm(coords - coords.mean(0), axis=1).mean())


@pytest.mark.parametrize("method", ["pca", "umap", "tsne"])
def test_maps_keep_clusters_and_are_reproducible(method, tmp_path):
    x = blobs()
    first = compute_projection(x, method, seed=3, cache_dir=tmp_path, use_cache=False)
    again = compute_projection(x, method, seed=3, cache_dir=tmp_path, use_cache=False)
    assert first.coords.shape == (80, 2) and first.coords.dtype == np.float32 and first.method == method
    np.testing.assert_allclose(first.coords, again.coords, atol=1e-4)
    labels = np.arange(80) // 20
    centroids = np.stack([first.coords[labels == c].mean(0) for c in range(4)])
    within = np.mean([np.linalg.norm(first.coords[labels == c] - centroids[c], axis=1).mean() for c in range(4)])
    between = np.mean([np.linalg.norm(a - b) for i, a in enumerate(centroids) for b in centroids[i + 1:]])
    assert between > 2 * within  # the four blobs stay apart on the map


@pytest.mark.parametrize("method", ["pca", "umap", "tsne"])
def test_a_gallery_embedding_is_placed_on_its_own_point(method, tmp_path):
    x = blobs(seed=1)
    projection = compute_projection(x, method, seed=0, cache_dir=tmp_path)
    placed = projection.transform(x[[7, 33]])
    tolerance = 1e-4 if method == "pca" else 0.02 * spread(projection.coords)
    assert np.linalg.norm(placed - projection.coords[[7, 33]], axis=1).max() < tolerance
    nearby = projection.transform(x[7] + 0.05)  # a slightly different image lands close by
    assert np.linalg.norm(nearby[0] - projection.coords[7]) < 0.25 * spread(projection.coords)


def test_pca_transform_is_exact_and_neighbour_placement_is_available(tmp_path):
    x = blobs(seed=2)
    projection = compute_projection(x, "pca", cache_dir=tmp_path)
    new = blobs(n_per=3, seed=9)
    centred = x - x.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    expected = (new - x.mean(0)) @ vt[:2].T
    got = projection.transform(new)
    np.testing.assert_allclose(np.abs(got), np.abs(expected), atol=1e-3)  # up to each axis's sign
    assert projection.transform(new, method="neighbours").shape == (12, 2)
    with pytest.raises(RetrievalAppError, match="no fitted model"):
        projection.transform(new, method="model")
    with pytest.raises(RetrievalAppError, match="dimensions"):
        projection.transform(np.ones((1, 3), np.float32))


def test_maps_are_cached_per_embeddings_method_and_parameters(tmp_path):
    x = blobs(seed=4)
    fresh = compute_projection(x, "umap", seed=0, cache_dir=tmp_path, n_neighbors=10)
    cached = compute_projection(x, "umap", seed=0, cache_dir=tmp_path, n_neighbors=10)
    assert not fresh.from_cache and cached.from_cache
    np.testing.assert_array_equal(cached.coords, fresh.coords)
    assert cached.params["n_neighbors"] == 10
    assert not compute_projection(x, "umap", seed=1, cache_dir=tmp_path, n_neighbors=10).from_cache
    assert not compute_projection(x, "umap", seed=0, cache_dir=tmp_path, n_neighbors=12).from_cache
    assert not compute_projection(x + 1e-3, "umap", seed=0, cache_dir=tmp_path, n_neighbors=10).from_cache
    assert len(list((tmp_path / "maps").glob("*.npz"))) == 4
    # The cached map still places queries (by neighbours).
    assert np.linalg.norm(cached.transform(x[:1])[0] - cached.coords[0]) < 0.02 * spread(cached.coords)
    assert embedding_fingerprint(x) != embedding_fingerprint(x[::-1])


def test_corrupt_map_cache_is_recomputed(tmp_path):
    x = blobs(seed=5)
    compute_projection(x, "pca", cache_dir=tmp_path)
    (cache_file,) = (tmp_path / "maps").glob("*.npz")
    cache_file.write_bytes(b"junk")
    projection = compute_projection(x, "pca", cache_dir=tmp_path)
    assert not projection.from_cache and projection.coords.shape == (80, 2)


def test_small_sets(tmp_path):
    tiny = blobs(n_per=2, centres=3, dim=5)  # 6 points
    umap_map = compute_projection(tiny, "umap", cache_dir=tmp_path)
    assert umap_map.method == "pca" and "PCA" in umap_map.note and umap_map.coords.shape == (6, 2)
    tsne_map = compute_projection(tiny, "tsne", cache_dir=tmp_path)
    assert tsne_map.method == "tsne" and tsne_map.params["perplexity"] < 6
    twelve = blobs(n_per=4, centres=3, dim=5)
    capped = compute_projection(twelve, "umap", cache_dir=tmp_path, use_cache=False)
    assert capped.method == "umap" and capped.params["n_neighbors"] == 11
    assert compute_projection(np.ones((3, 1), np.float32) * [[0], [1], [2]], "pca", cache_dir=tmp_path).coords[:, 1].tolist() == [0, 0, 0]
    with pytest.raises(RetrievalAppError, match="at least 2"):
        compute_projection(np.ones((1, 4), np.float32), "pca", cache_dir=tmp_path)


def test_bad_arguments_are_clear_errors(tmp_path):
    x = blobs()
    with pytest.raises(RetrievalAppError, match="method"):
        compute_projection(x, "mds", cache_dir=tmp_path)
    with pytest.raises(RetrievalAppError, match="unknown umap parameter"):
        compute_projection(x, "umap", cache_dir=tmp_path, perplexity=5)
    with pytest.raises(RetrievalAppError, match="NaN"):
        compute_projection(np.full((10, 3), np.nan, np.float32), "pca", cache_dir=tmp_path)


def test_pre_reduction_and_knn_graph():
    rng = np.random.default_rng(6)
    wide = rng.normal(size=(120, 200)).astype(np.float32)
    reduced, reduction = pre_reduce(wide, seed=0)
    assert reduced.shape == (120, PRE_REDUCE_DIM) and reduction is not None
    narrow = rng.normal(size=(120, 20)).astype(np.float32)
    assert pre_reduce(narrow, seed=0)[1] is None
    indices, distances = knn_graph(narrow, 6)
    assert indices[:, 0].tolist() == list(range(120)) and np.all(distances[:, 0] == 0)
    full = np.linalg.norm(narrow[:, None] - narrow[None], axis=2)
    np.fill_diagonal(full, np.inf)
    np.testing.assert_array_equal(indices[:, 1:], np.argsort(full, axis=1)[:, :5])


def test_pca_and_search_never_import_umap():
    code = (
        "import sys, numpy as np\n"
        "from retrieval_app.retrieval import compute_projection, build_index\n"
        "x = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)\n"
        "compute_projection(x, 'pca', use_cache=False)\n"
        "build_index(x).search(x[:2], 3)\n"
        "assert 'umap' not in sys.modules and 'numba' not in sys.modules, 'umap imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_umap_own_transform_when_fitted_without_a_precomputed_graph(tmp_path):
    x = blobs(seed=7)
    projection = compute_projection(x, "umap", seed=0, cache_dir=tmp_path, precomputed_knn=False)
    assert projection.model is not None
    placed = projection.transform(x[:3], method="model")
    assert np.linalg.norm(placed - projection.coords[:3], axis=1).max() < 0.15 * spread(projection.coords)
    cached = compute_projection(x, "umap", seed=0, cache_dir=tmp_path, precomputed_knn=False)
    assert cached.from_cache and cached.model is None  # the model is not stored: neighbours place queries
    with pytest.raises(RetrievalAppError, match="no fitted model"):
        cached.transform(x[:1], method="model")
