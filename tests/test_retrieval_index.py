"""Index backends (issue 14): float16 exact search equals float32, nprobe/efSearch tuned to
a measured recall, and the saved index: an incremental update equals a fresh build and a
reload does not build."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from retrieval_app.retrieval import index_store
from retrieval_app.retrieval.ann import HnswIndex, IvfIndex, ivf_lists
from retrieval_app.retrieval.index_store import open_index, row_fingerprints
from retrieval_app.retrieval.search import ExactIndex
from retrieval_app.retrieval.tuning import TUNE_MARGIN, RecallProbe, knob_steps, tune

pytest.importorskip("faiss")


def clustered(n, dim=32, seed=0, centres=40, spread=1.0):
    rng = np.random.default_rng(seed)
    middle = rng.normal(size=(centres, dim)) * 3
    return (middle[rng.integers(0, centres, n)] + spread * rng.normal(size=(n, dim))).astype(np.float32)


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
@pytest.mark.parametrize("scale", [1.0, 300.0, 1e-3])
def test_float16_scan_gives_the_float32_results(distance, scale):
    vectors = clustered(3000, seed=1) * scale
    queries = np.concatenate([clustered(6, seed=2) * scale, vectors[:2]])
    fp16, fp32 = ExactIndex(vectors, distance), ExactIndex(vectors, distance, precision="float32")
    assert fp16.precision == "float16"
    for exclude in (None, np.asarray([-1] * 6 + [0, 1])):
        for k in (1, 10, 50):
            a, b = fp16.search(queries, k, exclude=exclude), fp32.search(queries, k, exclude=exclude)
            np.testing.assert_array_equal(a[0], b[0])
            np.testing.assert_array_equal(a[1], b[1])
    # the float16 pass and its error bound answered these itself (no float32 fallback)
    step = 0.01 * (scale if distance == "euclidean" else 1.0)  # cosine: the index holds unit vectors
    proven, _, _ = fp16._search_fp16(fp16.vectors[:8] + step, 10, None)
    assert proven.all()


def test_float16_bound_falls_back_when_it_cannot_prove_the_top_k():
    # 200 copies of one vector and one slightly nearer: every float16 distance ties, so
    # the bound cannot prove anything and float32 answers; results still equal.
    vectors = np.ones((200, 16), np.float32)
    vectors[137] += 1e-3
    query = np.full((1, 16), 2.0, np.float32)
    fp16 = ExactIndex(vectors)
    assert not fp16._search_fp16(query, 3, None)[0].any()
    np.testing.assert_array_equal(fp16.search(query, 3)[0], ExactIndex(vectors, precision="float32").search(query, 3)[0])
    assert fp16.search(query, 1)[0][0, 0] == 137


def test_values_beyond_float16_search_in_float32():
    vectors = clustered(100, seed=3) * 1e5
    assert ExactIndex(vectors).precision == "float32"


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_ivf_parameters_come_from_the_size_and_nprobe_from_measured_recall(distance):
    vectors = clustered(5000, seed=4, centres=200, spread=2.0)  # overlapping clusters: nprobe 1 is not enough
    index = IvfIndex.build(vectors, distance)
    assert index.nlist == ivf_lists(5000) == 5000 // 39  # 4·√N capped by 39 training points a list
    assert ivf_lists(1_000_000) == 4000
    assert index.recall >= 0.95 and 1 < index.nprobe < index.nlist
    probe = RecallProbe(vectors, np.arange(5000), distance, seed=1)  # other sampled queries
    assert abs(probe.recall(index) - index.recall) < 0.04
    index.nprobe -= 1  # one probe fewer falls below the target: the smallest value was chosen
    assert RecallProbe(vectors, np.arange(5000), distance).recall(index) < 0.95 + TUNE_MARGIN
    assert "IVF-Flat" in index.describe() and f"{index.recall:.3f}" in index.describe()


def test_hnsw_tombstones_are_never_returned():
    vectors = clustered(2000, seed=5)
    index = HnswIndex.build(vectors)
    gone = np.arange(0, 2000, 7)
    index.remove(gone)
    assert index.size == 2000 - len(gone) and not index.needs_rebuild()
    found = index.search(vectors[:50], 10)[0]
    assert not np.isin(found, gone).any()
    index.remove(np.arange(1, 600))
    assert index.needs_rebuild()  # tombstones beyond a fifth of the graph


def changed_folder(vectors, ids):
    """A folder after edits: 300 images removed, 5 changed, 400 added."""
    rng = np.random.default_rng(9)
    keep = np.ones(len(ids), bool)
    keep[rng.choice(len(ids), 300, replace=False)] = False
    new_vectors = vectors[keep].copy()
    new_ids = [i for i, k in zip(ids, keep) if k]
    new_vectors[:5] += 0.5  # five files changed
    added = clustered(400, seed=10)
    return np.concatenate([new_vectors, added]), new_ids + [f"new/{i}.jpg" for i in range(400)]


@pytest.mark.parametrize("backend", ["exact", "ivf_flat", "hnsw"])
def test_an_incremental_update_equals_a_fresh_build(backend, tmp_path, monkeypatch):
    vectors = clustered(3000, seed=6)
    ids = [f"c{i % 7}/img_{i}.jpg" for i in range(3000)]
    open_index(tmp_path, ids, vectors, "euclidean", backend)
    vectors2, ids2 = changed_folder(vectors, ids)
    if backend == "hnsw":
        monkeypatch.setattr("retrieval_app.retrieval.ann.HNSW_TOMBSTONE_LIMIT", 0.5)  # keep the tombstones
    updated, report = open_index(tmp_path, ids2, vectors2, "euclidean", backend)
    assert (report.action, report.added, report.removed) == ("updated", 405, 305)
    fresh, _ = open_index(None, ids2, vectors2, "euclidean", backend)
    if backend == "ivf_flat":  # every list probed: the partition no longer matters
        updated.inner.nprobe, fresh.inner.nprobe = updated.inner.nlist, fresh.inner.nlist
    if backend == "hnsw":
        assert updated.inner.dead.sum() == 305
        updated.inner.ef_search = fresh.inner.ef_search = 1024
    rows = np.arange(0, len(ids2), 37)
    a, b = updated.search(vectors2[rows], 10, exclude=rows), fresh.search(vectors2[rows], 10, exclude=rows)
    np.testing.assert_array_equal(a[0], b[0])
    if backend == "exact":
        np.testing.assert_array_equal(a[1], b[1])  # identical
    else:
        np.testing.assert_allclose(a[1], b[1], rtol=1e-5)
    assert updated.recall >= 0.95  # measured again after the update


def test_reload_does_not_build_or_write(tmp_path, monkeypatch):
    vectors = clustered(2000, seed=7)
    ids = [f"img_{i}.jpg" for i in range(2000)]
    _, report = open_index(tmp_path, ids, vectors, "cosine", "ivf_flat")
    assert report.action == "built" and report.path.is_file()
    mtime = report.path.stat().st_mtime_ns

    def no_build(*args, **kwargs):
        raise AssertionError("the saved index was rebuilt")

    monkeypatch.setattr(index_store, "build_index", no_build)
    reloaded, report2 = open_index(tmp_path, list(reversed(ids)), vectors[::-1], "cosine", "ivf_flat")  # same files, other order
    assert report2.action == "loaded" and report2.path.stat().st_mtime_ns == mtime
    assert "loaded from its saved copy" in report2.describe()
    found = reloaded.search(vectors[::-1][:3], 1)[0][:, 0]
    assert found.tolist() == [0, 1, 2]  # positions follow the new order


def test_a_damaged_index_file_is_rebuilt(tmp_path, caplog):
    vectors = clustered(500, seed=8)
    ids = [str(i) for i in range(500)]
    _, report = open_index(tmp_path, ids, vectors, "euclidean", "exact")
    report.path.write_bytes(b"not an npz")
    with caplog.at_level(logging.WARNING):
        index, report2 = open_index(tmp_path, ids, vectors, "euclidean", "exact")
    assert report2.action == "built" and "unreadable saved index" in caplog.text
    assert index.search(vectors[:1], 1)[0][0, 0] == 0


def test_fingerprints_change_with_any_value():
    vectors = clustered(100, seed=9)
    base = row_fingerprints(vectors)
    assert len(set(base.tolist())) == 100
    changed = vectors.copy()
    changed[3, 17] = np.nextafter(changed[3, 17], np.float32(np.inf))
    after = row_fingerprints(changed)
    assert after[3] != base[3] and np.array_equal(np.delete(after, 3), np.delete(base, 3))


def test_tuning_stops_where_the_recall_stops_growing():
    class Capped:  # a stand-in index whose recall saturates at 0.8 from knob 4 on
        knob = 0

    probe = type("Probe", (), {"recall": lambda self, index: min(0.2 * index.knob, 0.8)})()
    index = Capped()
    value, recall = tune(index, probe, knob_steps(1, 4096), lambda v: setattr(index, "knob", v))
    assert (value, recall, index.knob) == (4, 0.8, 4)
    assert knob_steps(1, 20) == [1, 2, 3, 4, 6, 8, 11, 16, 20]


def test_faiss_indexes_search_after_pytorch_metric_learning_patched_faiss():
    """pytorch-metric-learning imports faiss.contrib.torch_utils, which replaces every FAISS
    index's `search` with one that takes no `params`; our per-call nprobe/efSearch must
    still work in the same process (in the suite it broke every FAISS search after the
    reference tests ran)."""
    import faiss.contrib.torch_utils  # noqa: F401  (the patch, as PML applies it)

    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(3000, 16)).astype(np.float32)
    exact = ExactIndex(vectors, "euclidean")
    want, _ = exact.search(vectors[:20], 5, exclude=np.arange(20))
    for index in (IvfIndex.build(vectors, "euclidean"), HnswIndex.build(vectors, "euclidean")):
        got, _ = index.search(vectors[:20], 5, exclude=np.arange(20))
        assert got.shape == (20, 5)
        assert np.mean([len(set(a) & set(b)) / 5 for a, b in zip(got, want)]) >= 0.9
