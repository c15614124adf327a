"""The on-disk embedding cache: hits, misses, invalidation, resumption, corruption."""

from __future__ import annotations

import logging
import os
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from retrieval_app.data import scan_folder
from retrieval_app.networks import create_model
from retrieval_app.retrieval.cache import PART_PREFIX, cached_embeddings, model_cache_key, read_store, store_dir, store_path
from retrieval_app.retrieval.embed import EmbeddingCancelled, embed_records
from synthetic import write_class_folder


@pytest.fixture
def folder(tmp_path):
    return write_class_folder(tmp_path / "images", n_classes=3, per_class=6, size=40)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return create_model("small_cnn", dim=16, pretrained=False).eval()


def embed(net, folder, cache, **options):
    return cached_embeddings(net, scan_folder(folder), cache_dir=cache, device="cpu", **options)


def test_second_open_reads_everything_from_the_cache(folder, net, tmp_path):
    cache = tmp_path / "cache"
    first = embed(net, folder, cache)
    assert (first.n_cached, first.n_computed, first.n_removed) == (0, 18, 0) and first.ok.all()
    second = embed(net, folder, cache)
    assert (second.n_cached, second.n_computed) == (18, 0)
    np.testing.assert_array_equal(second.embeddings, first.embeddings)
    direct = embed_records(net, scan_folder(folder).records, device="cpu")
    np.testing.assert_allclose(first.embeddings, direct.embeddings, atol=1e-6)
    assert store_path(net, folder, "embeddings", cache).is_file()
    assert not [p for p in folder.rglob("*") if p.suffix not in (".jpg",) and p.is_file()]  # nothing in the image folder


def test_changed_added_and_removed_files(folder, net, tmp_path):
    cache = tmp_path / "cache"
    first = embed(net, folder, cache)
    ids = [r.id for r in scan_folder(folder).records]

    repainted = folder / "class_00" / "img_000.jpg"  # new content, new size and mtime
    Image.new("RGB", (40, 40), (250, 10, 10)).save(repainted)
    touched = folder / "class_01" / "img_001.jpg"  # same bytes, only a newer mtime
    stat = touched.stat()
    os.utime(touched, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    (folder / "class_02" / "img_003.jpg").unlink()
    Image.new("RGB", (40, 40), (10, 10, 250)).save(folder / "class_02" / "zz_new.jpg")

    scan = scan_folder(folder)
    again = cached_embeddings(net, scan, cache_dir=cache, device="cpu")
    assert (again.n_cached, again.n_computed, again.n_removed) == (15, 3, 1)
    now = [r.id for r in scan.records]
    row = now.index("class_00/img_000.jpg")
    assert not np.allclose(again.embeddings[row], first.embeddings[ids.index("class_00/img_000.jpg")])
    np.testing.assert_allclose(again.embeddings[now.index("class_01/img_001.jpg")], first.embeddings[ids.index("class_01/img_001.jpg")], atol=1e-6)
    for image_id in set(now) - {"class_00/img_000.jpg", "class_01/img_001.jpg", "class_02/zz_new.jpg"}:
        np.testing.assert_array_equal(again.embeddings[now.index(image_id)], first.embeddings[ids.index(image_id)])
    stored = read_store(store_dir(net, folder, "embeddings", cache))
    assert sorted(stored.ids.tolist()) == sorted(now)  # the removed file dropped out
    assert embed(net, folder, cache).n_cached == 18  # one removed, one added


def test_size_change_with_the_same_mtime_is_recomputed(folder, net, tmp_path):
    cache = tmp_path / "cache"
    embed(net, folder, cache)
    path = folder / "class_00" / "img_002.jpg"
    stat = path.stat()
    Image.new("RGB", (40, 40), (0, 200, 0)).save(path, quality=20)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size != stat.st_size
    assert embed(net, folder, cache).n_computed == 1


def test_corrupt_store_is_ignored_with_a_warning_and_rebuilt(folder, net, tmp_path, caplog):
    cache = tmp_path / "cache"
    reference = embed(net, folder, cache)
    path = store_path(net, folder, "embeddings", cache)
    path.write_bytes(path.read_bytes()[:100])  # torn by something other than us
    with caplog.at_level(logging.WARNING, logger="retrieval_app.retrieval.cache"):
        rebuilt = embed(net, folder, cache)
    assert rebuilt.n_computed == 18 and "unreadable embedding cache" in caplog.text
    np.testing.assert_allclose(rebuilt.embeddings, reference.embeddings, atol=1e-6)
    assert embed(net, folder, cache).n_cached == 18  # the rebuilt store is good


def test_foreign_arrays_in_the_store_are_ignored(folder, net, tmp_path):
    cache = tmp_path / "cache"
    embed(net, folder, cache)
    np.savez(store_path(net, folder, "embeddings", cache), ids=np.asarray(["a", "b"]), sizes=np.zeros(3), mtimes=np.zeros(2), vectors=np.zeros((2, 16)))
    assert embed(net, folder, cache).n_computed == 18


def test_cancelled_run_keeps_its_work_and_the_next_run_resumes(folder, net, tmp_path):
    cache = tmp_path / "cache"
    cancel = threading.Event()

    def progress(done, total):
        if done >= 8:
            cancel.set()

    with pytest.raises(EmbeddingCancelled):
        embed(net, folder, cache, batch_size=4, progress=progress, cancel=cancel, flush_rows=4)
    folder_of_store = store_dir(net, folder, "embeddings", cache)
    parts = sorted(folder_of_store.glob(f"{PART_PREFIX}*.npz"))
    assert parts and not (folder_of_store / "store.npz").exists()
    assert len(read_store(folder_of_store).ids) == 8

    resumed = embed(net, folder, cache, batch_size=4)
    assert (resumed.n_cached, resumed.n_computed) == (8, 10)
    assert not list(folder_of_store.glob(f"{PART_PREFIX}*.npz"))  # merged into the store
    np.testing.assert_allclose(resumed.embeddings, embed_records(net, scan_folder(folder).records, device="cpu").embeddings, atol=1e-6)


def test_a_torn_part_file_is_skipped(folder, net, tmp_path):
    cache = tmp_path / "cache"
    embed(net, folder, cache)
    (store_dir(net, folder, "embeddings", cache) / f"{PART_PREFIX}99999999999999999999-1.npz").write_bytes(b"PK\x03\x04 torn")
    again = embed(net, folder, cache)
    assert again.n_cached == 18


def test_unreadable_files_are_not_cached_and_retried(folder, net, tmp_path):
    cache = tmp_path / "cache"
    scan = scan_folder(folder)
    broken = scan.records[4].path
    broken.write_bytes(b"broken after the scan")
    first = cached_embeddings(net, scan, cache_dir=cache, device="cpu")
    assert first.ok.sum() == 17 and len(first.failures) == 1
    Image.new("RGB", (40, 40), (1, 2, 3)).save(broken, format="JPEG")
    second = cached_embeddings(net, scan_folder(folder), cache_dir=cache, device="cpu")
    assert second.ok.all() and (second.n_cached, second.n_computed) == (17, 1)


def test_keys_follow_weights_output_and_transform(folder, net, tmp_path):
    torch.manual_seed(1)
    other = create_model("small_cnn", dim=16, pretrained=False)
    same_backbone = create_model("small_cnn", dim=16, pretrained=False)
    same_backbone.backbone.load_state_dict(net.backbone.state_dict())
    assert model_cache_key(net, "embeddings") != model_cache_key(other, "embeddings")
    assert model_cache_key(net, "embeddings") != model_cache_key(same_backbone, "embeddings")  # head differs
    assert model_cache_key(net, "features") == model_cache_key(same_backbone, "features")  # backbone alone counts
    assert model_cache_key(net, "features") != model_cache_key(net, "embeddings")

    cache = tmp_path / "cache"
    cached_embeddings(net, scan_folder(folder), cache_dir=cache, output="features", device="cpu")
    reused = cached_embeddings(same_backbone, scan_folder(folder), cache_dir=cache, output="features", device="cpu")
    assert reused.n_cached == 18 and reused.embeddings.shape == (18, net.spec.feature_dim)


def test_default_location_is_the_app_cache(folder, net, tmp_path, monkeypatch):
    monkeypatch.setenv("RETRIEVAL_APP_CACHE_DIR", str(tmp_path / "app-cache"))
    cached_embeddings(net, scan_folder(folder), device="cpu")
    stores = list((tmp_path / "app-cache" / "embeddings").rglob("store.npz"))
    assert len(stores) == 1 and stores[0] == store_path(net, folder, "embeddings")


def test_progress_counts_cached_rows(folder, net, tmp_path):
    cache = tmp_path / "cache"
    embed(net, folder, cache)
    (folder / "class_00" / "img_000.jpg").unlink()
    Image.new("RGB", (40, 40)).save(folder / "class_00" / "new.jpg")
    calls = []
    embed(net, folder, cache, progress=lambda done, total: calls.append((done, total)))
    assert calls[0] == (17, 18) and calls[-1] == (18, 18)
