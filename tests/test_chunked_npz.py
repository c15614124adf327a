"""The embedding store written column by column in row chunks: the same file contents as
one `np.savez`, the old file kept when a write is interrupted, memory bounded by the chunk
rather than the folder, and ids matched against the store by sorted search exactly as a
dict would match them."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from retrieval_app.chunked_npz import Column, atomic_save_columns
from retrieval_app.data.scan import ImageRecord
from retrieval_app.retrieval import cache as cache_module
from retrieval_app.retrieval.cache import StoredVectors, _match, _store_columns, read_store


def chunked(array: np.ndarray, size: int) -> Column:
    return Column(array.dtype, array.shape, lambda: (array[i:i + size] for i in range(0, len(array), size)))


def record(i: int, name: str | None = None, size: int = 100, mtime: int = 7) -> ImageRecord:
    image_id = name or f"class_{i % 7:02d}/image_{i:06d}.png"
    return ImageRecord(image_id, Path("/photos") / image_id, i % 7, f"class_{i % 7:02d}", size, mtime)


def test_columns_written_in_chunks_equal_one_savez(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"ids": np.asarray([f"a/{'x' * (i % 13)}{i}.jpg" for i in range(1000)]), "sizes": rng.integers(0, 2**40, 1000),
              "vectors": rng.normal(size=(1000, 5)).astype(np.float32), "empty": np.zeros((0, 3), np.float32)}
    np.savez(tmp_path / "once.npz", **arrays, format=np.int64(1))
    atomic_save_columns(tmp_path / "chunks.npz", {**{k: chunked(v, 333) for k, v in arrays.items()}, "format": np.int64(1)})
    with np.load(tmp_path / "once.npz") as once, np.load(tmp_path / "chunks.npz") as chunks:
        assert list(chunks.keys()) == list(once.keys())
        for key in once:
            assert chunks[key].dtype == once[key].dtype and chunks[key].shape == once[key].shape
            np.testing.assert_array_equal(chunks[key], once[key])


def test_an_interrupted_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "store.npz"
    np.savez(path, x=np.arange(4))
    before = path.read_bytes()

    def failing():
        yield np.arange(10)
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_save_columns(path, {"x": Column(np.dtype(np.int64), (20,), failing)})
    with pytest.raises(ValueError, match="10 rows written, 20 declared"):
        atomic_save_columns(path, {"x": Column(np.dtype(np.int64), (20,), lambda: [np.arange(10)])})
    with pytest.raises(ValueError, match="does not fit"):
        atomic_save_columns(path, {"x": Column(np.dtype(np.int64), (5,), lambda: [np.arange(10)])})
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["store.npz"]


def test_a_store_of_records_written_in_chunks_reads_back_as_the_records(tmp_path, monkeypatch):
    monkeypatch.setattr(cache_module, "STORE_CHUNK_ROWS", 64)
    records = [record(i, size=i * 3, mtime=10**18 + i) for i in range(500)]
    vectors = np.random.default_rng(1).normal(size=(500, 8)).astype(np.float32)
    good = np.flatnonzero(np.arange(500) % 5 != 0)  # rows that failed are left out
    atomic_save_columns(tmp_path / "store.npz", _store_columns(records, good, vectors, good))
    stored = read_store(tmp_path)
    assert stored.ids.tolist() == [records[i].id for i in good]
    assert stored.sizes.tolist() == [records[i].size for i in good] and stored.mtimes.tolist() == [records[i].mtime_ns for i in good]
    np.testing.assert_array_equal(stored.vectors, vectors[good])


def traced_peak(fn) -> int:
    """Peak bytes Python and NumPy allocated while `fn` ran (beyond what existed before)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        fn()
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


def test_writing_a_store_holds_one_chunk_of_rows_not_the_folder(tmp_path, monkeypatch):
    """20,000 ids of 30 characters are 2.4 MB as one string array (and more as lists);
    written 500 rows at a time the write needs a small fraction of that."""
    monkeypatch.setattr(cache_module, "STORE_CHUNK_ROWS", 500)
    records = [record(i) for i in range(20_000)]
    vectors, rows = np.zeros((20_000, 4), np.float32), np.arange(20_000)
    whole_ids = np.asarray([r.id for r in records]).nbytes
    peak = traced_peak(lambda: atomic_save_columns(tmp_path / "store.npz", _store_columns(records, rows, vectors)))
    assert peak < whole_ids / 4, (peak, whole_ids)


def reference_match(records, stored):
    """The plain dict matching the sorted search replaced (later rows win)."""
    position = {key: i for i, key in enumerate(stored.ids.tolist())}
    hits, sources, misses = [], [], []
    for row, r in enumerate(records):
        pos = position.get(r.id)
        if pos is not None and stored.sizes[pos] == r.size and stored.mtimes[pos] == r.mtime_ns:
            hits.append(row), sources.append(pos)
        else:
            misses.append(row)
    return hits, sources, misses, len(set(position) - {r.id for r in records})


def stored_rows(rows: list[tuple[str, int, int]]) -> StoredVectors:
    ids, sizes, mtimes = zip(*rows)
    return StoredVectors(np.asarray(ids), np.asarray(sizes, np.int64), np.asarray(mtimes, np.int64), np.zeros((len(rows), 2), np.float32), [])


def test_matching_by_sorted_search_equals_a_dict(monkeypatch):
    monkeypatch.setattr(cache_module, "STORE_CHUNK_ROWS", 3)  # several chunks, pairs across chunk edges
    records = [record(i) for i in range(10)] + [record(99, name="a/" + "long" * 20 + ".png")]
    stored = stored_rows([
        (records[4].id, 100, 7), (records[1].id, 100, 7), ("gone/1.png", 1, 1),
        (records[2].id, 100, 6),  # changed mtime: recomputed
        (records[3].id, 100, 1), (records[3].id, 100, 7),  # an older row, then a newer part's: the newer wins
        (records[5].id, 100, 7), (records[5].id, 55, 7),  # here the newer one says the file changed
        ("gone/2.png", 1, 1), ("gone/2.png", 2, 2),  # removed twice over: one removed id
        (records[9].id, 100, 7),
    ])
    got = _match(records, stored)
    expected = reference_match(records, stored)
    assert [a.tolist() for a in got[:3]] == list(expected[:3]) and got[3] == expected[3] == 2
    assert got[0].tolist() == [1, 3, 4, 9] and got[1].tolist() == [1, 5, 0, 10] and got[2].tolist() == [0, 2, 5, 6, 7, 8, 10]


def test_matching_against_an_empty_store_computes_everything():
    records = [record(i) for i in range(5)]
    hits, sources, misses, removed = _match(records, StoredVectors(np.zeros(0, str), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 0), np.float32), []))
    assert (hits.tolist(), sources.tolist(), misses.tolist(), removed) == ([], [], [0, 1, 2, 3, 4], 0)


def test_matching_holds_no_dict_of_every_id(monkeypatch):
    """A dict of 20,000 ids (their str objects and its table: 7 MB traced for the
    matcher this one replaced) is megabytes; the sorted search holds int64 arrays of a row
    each and one chunk of records at a time."""
    monkeypatch.setattr(cache_module, "STORE_CHUNK_ROWS", 500)
    records = [record(i) for i in range(20_000)]
    stored = StoredVectors(np.asarray([r.id for r in records]), np.full(20_000, 100, np.int64), np.full(20_000, 7, np.int64), np.zeros((20_000, 2), np.float32), [])
    results = []
    peak = traced_peak(lambda: results.append(_match(records, stored)))
    assert results[0][0].tolist() == list(range(20_000))
    # Allowed: the order, hits, sources and misses (8 bytes a row each; the joined copies
    # of the last two) and chunk temporaries.
    assert peak < 6 * 8 * 20_000 + 500_000, peak
