"""Embedding at scale: decoding in worker processes (one per core) gives the vectors of
decoding in-process; the cache moves vectors in bounded chunks and writes its store
without an in-memory copy; the app's load progress says how long is left."""

from __future__ import annotations

import time

import numpy as np
import pytest

from retrieval_app.atomic import atomic_numpy_save
from retrieval_app.data import scan_folder
from retrieval_app.retrieval import cache as cache_module
from retrieval_app.retrieval import embed as embed_module
from retrieval_app.retrieval.cache import cached_embeddings, copy_rows, read_store
from retrieval_app.retrieval.embed import embed_records


@pytest.fixture(scope="module")
def lite0():
    from retrieval_app.networks import create_model

    return create_model("efficientnet_lite0", head=None).eval()


def test_worker_processes_give_the_vectors_of_in_process_decoding(make_image_folder, lite0):
    folder = make_image_folder({"a": 5, "b": 4, "c": 3}, size=(300, 200))  # JPEGs, DCT-downscaled on decode
    records = scan_folder(folder).records
    alone = embed_records(lite0, records, batch_size=4, num_workers=0, device="cpu")
    pooled = embed_records(lite0, records, batch_size=4, num_workers=2, device="cpu")
    assert pooled.ok.all() and alone.ok.all() and pooled.embeddings.shape == (12, 1280)
    np.testing.assert_allclose(pooled.embeddings, alone.embeddings, rtol=0, atol=1e-6)


@pytest.mark.parametrize("cores, workers", [(1, 0), (2, 0), (3, 3), (16, 16)])
def test_one_decoding_process_per_core_above_two_cores(monkeypatch, cores, workers):
    monkeypatch.setattr(embed_module, "available_cores", lambda: cores)
    assert embed_module.default_workers() == workers


def test_rows_are_copied_in_chunks_exactly_as_one_gather(monkeypatch):
    monkeypatch.setattr(cache_module, "COPY_ROWS", 7)
    rng = np.random.default_rng(0)
    source = rng.normal(size=(50, 6)).astype(np.float32)
    rows, positions = rng.permutation(60)[:40], rng.permutation(50)[:40]
    out, expected = np.zeros((60, 6), np.float32), np.zeros((60, 6), np.float32)
    copy_rows(out, rows, source, positions)
    expected[rows] = source[positions]
    np.testing.assert_array_equal(out, expected)


def test_the_store_is_streamed_to_disk_and_read_back_whole(tmp_path):
    vectors = np.random.default_rng(1).normal(size=(300, 16)).astype(np.float32)
    ids = np.asarray([f"c/{i}.jpg" for i in range(300)])
    path = atomic_numpy_save(tmp_path / "store.npz", ids=ids, sizes=np.arange(300), mtimes=np.arange(300), vectors=vectors, format=np.int64(1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store.npz"]  # no temp file left
    stored = read_store(path.parent)
    np.testing.assert_array_equal(stored.vectors, vectors)
    assert stored.ids.tolist() == ids.tolist() and not stored.damaged


def test_a_reopened_cache_small_flushes_and_chunked_copies_give_the_same_vectors(make_image_folder, lite0, tmp_path, monkeypatch):
    """Parts flushed every 3 rows while computing, then a re-open copying 2 rows at a time:
    the vectors are those of one plain pass."""
    folder = make_image_folder({"a": 4, "b": 4}, size=(40, 30))
    scan = scan_folder(folder)
    reference = embed_records(lite0, scan.records, num_workers=0, device="cpu").embeddings
    first = cached_embeddings(lite0, scan, cache_dir=tmp_path, num_workers=0, device="cpu", batch_size=2, flush_rows=3)
    monkeypatch.setattr(cache_module, "COPY_ROWS", 2)
    again = cached_embeddings(lite0, scan, cache_dir=tmp_path, num_workers=0, device="cpu")
    assert first.n_computed == 8 and again.n_cached == 8 and again.n_computed == 0
    np.testing.assert_allclose(again.embeddings, reference, atol=1e-6)


def test_the_load_progress_says_how_long_is_left():
    from retrieval_app.ui.session import _embedding_progress

    seen = []
    report = _embedding_progress(lambda fraction, text: seen.append((fraction, text)))
    report(2, 10)  # 2 came from the cache: they do not count toward the speed
    time.sleep(0.05)
    report(6, 10)
    report(10, 10)
    assert seen[0][1] == "embedding: 2/10 images" and seen[-1][1] == "embedding: 10/10 images"
    assert seen[1][1].startswith("embedding: 6/10 images, about ") and seen[1][1].endswith(" s left")
    assert [f for f, _ in seen] == sorted(f for f, _ in seen)


def test_an_unchanged_reopen_returns_the_stored_array_without_a_copy(make_image_folder, tmp_path, monkeypatch):
    """The store's rows are the records' in order: its array is the result (a copy would
    hold the vectors twice at the peak); after a change, rows are gathered as before."""
    import os

    import torch

    from retrieval_app.networks import create_model

    torch.manual_seed(0)
    net = create_model("small_cnn", dim=8, pretrained=False).eval()
    folder = make_image_folder({"a": 3, "b": 3}, size=(40, 30))
    first = cached_embeddings(net, scan_folder(folder), cache_dir=tmp_path, num_workers=0, device="cpu")
    copies = []
    original = cache_module.copy_rows
    monkeypatch.setattr(cache_module, "copy_rows", lambda *args: (copies.append(len(args[1])), original(*args)))
    again = cached_embeddings(net, scan_folder(folder), cache_dir=tmp_path, num_workers=0, device="cpu")
    assert copies == [] and again.ok.all() and (again.n_cached, again.n_computed) == (6, 0)
    np.testing.assert_array_equal(again.embeddings, first.embeddings)
    touched = sorted(folder.rglob("*.jpg"))[0]
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    changed = cached_embeddings(net, scan_folder(folder), cache_dir=tmp_path, num_workers=0, device="cpu")
    assert copies == [5] and (changed.n_cached, changed.n_computed) == (5, 1)
    np.testing.assert_allclose(changed.embeddings, first.embeddings, atol=1e-6)
