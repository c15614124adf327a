"""Nearest-neighbour indexes: exact search against brute force, FAISS against exact."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from retrieval_app.errors import RetrievalAppError
from retrieval_app.retrieval import indexes, search
from retrieval_app.retrieval.ann import HnswIndex, IvfIndex
from retrieval_app.retrieval.search import ExactIndex, build_index, search_distance


def brute_force(vectors, queries, distance):
    if distance == "cosine":
        v = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
        return 1.0 - q @ v.T
    return np.linalg.norm(queries[:, None, :] - vectors[None, :, :], axis=2)


def clustered(n, dim, seed, centres=20):
    rng = np.random.default_rng(seed)
    middle = rng.normal(size=(centres, dim)) * 3
    return (middle[rng.integers(0, centres, n)] + rng.normal(size=(n, dim))).astype(np.float32)


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_exact_search_matches_brute_force(distance):
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(300, 8)).astype(np.float32)
    queries = rng.normal(size=(25, 8)).astype(np.float32)
    indices, distances = ExactIndex(vectors, distance).search(queries, 7)
    full = brute_force(vectors.astype(np.float64), queries.astype(np.float64), distance)
    np.testing.assert_array_equal(indices, np.argsort(full, axis=1, kind="stable")[:, :7])
    np.testing.assert_allclose(distances, np.sort(full, axis=1)[:, :7], atol=1e-5)


def test_exact_search_in_blocks_equals_one_block(monkeypatch):
    rng = np.random.default_rng(1)
    vectors, queries = rng.normal(size=(200, 6)).astype(np.float32), rng.normal(size=(50, 6)).astype(np.float32)
    whole = ExactIndex(vectors).search(queries, 5)
    monkeypatch.setattr(search, "EXACT_BLOCK_ENTRIES", 1000)  # 5 queries per block
    blocked = ExactIndex(vectors).search(queries, 5)
    np.testing.assert_array_equal(whole[0], blocked[0])
    np.testing.assert_allclose(whole[1], blocked[1])


def test_self_query_distance_is_exactly_zero_and_exclusion_works():
    vectors = clustered(500, 32, seed=2) * 100  # large norms: the expanded formula would be off
    index = ExactIndex(vectors)
    indices, distances = index.search(vectors[:10], 3)
    assert indices[:, 0].tolist() == list(range(10)) and np.all(distances[:, 0] == 0)
    excluded, excluded_d = index.search(vectors[:10], 3, exclude=np.arange(10))
    assert not np.any(excluded == np.arange(10)[:, None])
    np.testing.assert_array_equal(excluded[:, :2], indices[:, 1:])
    partly = index.search(vectors[:2], 2, exclude=np.asarray([-1, 1]))[0]
    assert partly[0, 0] == 0 and 1 not in partly[1]


def test_k_is_capped_and_validated():
    vectors = np.eye(4, dtype=np.float32)
    index = ExactIndex(vectors)
    assert index.search(vectors[:1], 10)[0].shape == (1, 4)
    assert index.search(vectors[:1], 10, exclude=np.asarray([0]))[0].shape == (1, 3)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(RetrievalAppError, match="k must be"):
            index.search(vectors[:1], bad)
    with pytest.raises(RetrievalAppError, match="dimensional"):
        index.search(np.ones((1, 3), np.float32), 2)
    with pytest.raises(RetrievalAppError, match="distance"):
        ExactIndex(vectors, "manhattan")
    with pytest.raises(RetrievalAppError, match="NaN"):
        ExactIndex(np.full((2, 2), np.nan, np.float32))


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_hnsw_agrees_with_exact_search(distance):
    data = clustered(4300, 48, seed=3)  # held-out queries of the gallery's kind (same clusters)
    vectors, queries = data[:4000], data[4000:]
    exact_i, exact_d = ExactIndex(vectors, distance).search(queries, 10)
    index = HnswIndex.build(vectors, distance)
    faiss_i, faiss_d = index.search(queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact_i, faiss_i)])
    # efSearch is tuned until the recall measured at build reaches 0.95; other queries agree
    assert index.recall >= 0.95 and recall >= 0.93 and abs(recall - index.recall) <= 0.04
    np.testing.assert_allclose(faiss_d[:, 0], exact_d[:, 0], atol=1e-3)
    assert np.all(np.diff(faiss_d, axis=1) >= -1e-6)  # nearest first


def test_hnsw_agrees_on_unstructured_small_sets():
    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(3000, 32)).astype(np.float32)
    queries = rng.normal(size=(200, 32)).astype(np.float32)
    exact_i, _ = ExactIndex(vectors).search(queries, 10)
    index = HnswIndex.build(vectors)
    faiss_i, _ = index.search(queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact_i, faiss_i)])
    assert index.recall >= 0.95 and recall >= 0.93 and abs(recall - index.recall) <= 0.04


def test_hnsw_excludes_the_query_itself():
    vectors = clustered(800, 16, seed=6)
    exact = ExactIndex(vectors).search(vectors[:20], 5, exclude=np.arange(20))
    approx = HnswIndex.build(vectors).search(vectors[:20], 5, exclude=np.arange(20))
    assert not np.any(approx[0] == np.arange(20)[:, None])
    np.testing.assert_array_equal(approx[0], exact[0])


def test_auto_backend_switches_at_the_threshold(monkeypatch):
    vectors = clustered(3000, 8, seed=7)
    assert isinstance(build_index(vectors), ExactIndex)
    monkeypatch.setattr(indexes, "EXACT_MAX_VECTORS", 1000)
    # IVF measured faster than exact search (the timing rule is tested in test_auto_backend.py)
    monkeypatch.setattr(indexes, "time_per_query", lambda pair, probe: [1e-4, 1e-3])
    auto = build_index(vectors)
    assert isinstance(auto, IvfIndex) and auto.backend == "ivf_flat"
    monkeypatch.setattr(indexes, "memory_bytes", lambda: 3000 * 8 * 4)  # the vectors would fill all of it
    assert build_index(vectors).backend == "ivf_pq"
    assert isinstance(build_index(vectors, backend="exact"), ExactIndex)
    assert isinstance(build_index(vectors, backend="hnsw"), HnswIndex)
    with pytest.raises(RetrievalAppError, match="backend"):
        build_index(vectors, backend="annoy")


def test_missing_faiss_falls_back_with_a_note(monkeypatch, caplog):
    def no_faiss():
        raise ImportError("No module named 'faiss'")

    monkeypatch.setattr(search, "import_faiss", no_faiss)
    monkeypatch.setattr(indexes, "EXACT_MAX_VECTORS", 10)
    vectors = clustered(50, 4, seed=8)
    with caplog.at_level(logging.INFO, logger="retrieval_app.retrieval.indexes"):
        index = build_index(vectors, backend="auto")
    assert isinstance(index, ExactIndex) and index.precision == "float32"
    assert "faiss is not installed" in caplog.text
    for name in ("ivf_flat", "hnsw", "ivf_pq"):
        with pytest.raises(RetrievalAppError, match="pip install"):
            build_index(vectors, backend=name)


def test_training_distances_map_to_search_distances():
    assert search_distance("cosine") == "cosine"
    for name in ("euclidean", "squared_euclidean", "linf"):
        assert search_distance(name) == "euclidean"
