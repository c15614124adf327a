"""`auto` keeps exact search where a tuned IVF-Flat is slower per query (overlapping or
uniform data, where the recall target needs most of the lists), says why, and remembers
the choice in the saved index; on clustered data it keeps IVF-Flat."""

from __future__ import annotations

import json

import numpy as np
import pytest

from retrieval_app.retrieval import index_store, indexes
from retrieval_app.retrieval.ann import IvfIndex
from retrieval_app.retrieval.index_store import open_index
from retrieval_app.retrieval.search import ExactIndex

pytest.importorskip("faiss")


@pytest.fixture
def small_threshold(monkeypatch):
    """`auto` considers IVF-Flat from 1,000 vectors (50,000 in the app): small, fast tests."""
    monkeypatch.setattr(indexes, "EXACT_MAX_VECTORS", 1000)


def timed(monkeypatch, index_ms: float, exact_ms: float) -> list:
    """Replace the measured times (the rule, not the machine, under test); returns the calls."""
    calls = []

    def fake(pair, probe):
        calls.append(pair)
        return [index_ms / 1e3, exact_ms / 1e3]

    monkeypatch.setattr(indexes, "time_per_query", fake)
    return calls


def clustered(n: int, dim: int, centres: int, spread: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    middle = rng.normal(size=(centres, dim)) * 3
    return (middle[rng.integers(0, centres, n)] + spread * rng.normal(size=(n, dim))).astype(np.float32)


def test_uniform_vectors_keep_exact_search_and_say_why(small_threshold):
    """Uniformly random points have no clusters: recall@10 0.96 needs about half the
    lists (measured: 264 of 512), so a query scans half the float32 vectors plus the
    lists' overhead, where exact search scans all of them in float16 (measured 2-6×
    slower, on a machine at load 10)."""
    vectors = np.random.default_rng(0).random((20_000, 64), dtype=np.float32)
    index = indexes.build_index(vectors)
    assert isinstance(index, ExactIndex), index.describe()
    assert index.note.startswith("auto chose it over IVF-Flat, which needed ") and " lists probed for recall@10 0.9" in index.note
    assert index.describe() == f"exact search (float16 scan + float32 re-rank); {index.note}"


def test_clustered_vectors_keep_ivf_flat(small_threshold):
    vectors = clustered(20_000, 64, centres=200, spread=0.1)
    index = indexes.build_index(vectors)
    assert isinstance(index, IvfIndex) and index.nprobe <= 4, index.describe()


def test_the_faster_one_is_kept_and_only_for_auto(small_threshold, monkeypatch):
    vectors = clustered(3000, 8, centres=20, spread=1.0)
    timed(monkeypatch, index_ms=2.0, exact_ms=1.0)
    slower = indexes.build_index(vectors)
    assert isinstance(slower, ExactIndex) and "then took 2.00 ms a query against 1.00 ms for exact search" in slower.note
    timed(monkeypatch, index_ms=1.0, exact_ms=1.0)  # a tie keeps the index
    assert isinstance(indexes.build_index(vectors), IvfIndex)
    calls = timed(monkeypatch, index_ms=9.0, exact_ms=1.0)
    assert isinstance(indexes.build_index(vectors, backend="ivf_flat"), IvfIndex) and calls == []  # asked for: never replaced


def test_the_choice_is_saved_and_reloaded_without_timing(small_threshold, monkeypatch, tmp_path):
    vectors = clustered(3000, 8, centres=20, spread=1.0)
    ids = [f"img_{i}.png" for i in range(len(vectors))]
    timed(monkeypatch, index_ms=3.0, exact_ms=1.0)
    index, report = open_index(tmp_path, ids, vectors, "euclidean", "auto")
    assert report.action == "built" and index.backend == "exact" and "auto chose it over IVF-Flat" in index.describe()
    with np.load(tmp_path / "ivf_flat-euclidean.npz") as data:
        assert json.loads(str(data["meta"]))["in_place_of"] == "ivf_flat"

    def no_build(*args, **kwargs):
        raise AssertionError("rebuilt instead of loaded")

    monkeypatch.setattr(index_store, "build_index", no_build)
    again, report = open_index(tmp_path, ids, vectors, "euclidean", "auto")
    assert report.action == "loaded" and again.describe() == index.describe()
    np.testing.assert_array_equal(again.search(vectors[:5], 3)[0], index.search(vectors[:5], 3)[0])

    monkeypatch.undo()  # an explicit request for IVF-Flat builds it, whatever auto kept
    monkeypatch.setattr(indexes, "EXACT_MAX_VECTORS", 1000)
    asked, report = open_index(tmp_path, ids, vectors, "euclidean", "ivf_flat")
    assert report.action == "built" and asked.backend == "ivf_flat"


def test_an_exact_index_saved_before_notes_still_loads(tmp_path):
    vectors = clustered(500, 8, centres=5, spread=1.0)
    state = ExactIndex(vectors).state()
    del state["note"]
    restored = indexes.restore_index("exact", state, "euclidean")
    assert restored.note == "" and restored.describe() == "exact search (float16 scan + float32 re-rank)"
