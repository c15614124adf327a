"""Embedding cache, search backends, gallery queries, maps and export."""

from __future__ import annotations

import csv
import io
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrieval_app.cli import main
from retrieval_app.data import scan_folder
from retrieval_app.errors import RetrievalAppError
from retrieval_app.networks import create_model
from retrieval_app.retrieval import (
    ExactIndex,
    Gallery,
    cached_embeddings,
    compute_projection,
    export_embeddings,
    export_map_html,
)
from retrieval_app.retrieval.cache import store_path
from synthetic import write_class_folder


@pytest.fixture(scope="module")
def net():
    return create_model("efficientnet_lite0", head=None).eval()


@pytest.fixture
def folder(tmp_path) -> Path:
    return write_class_folder(tmp_path / "images", n_classes=4, per_class=5, size=48)


def test_cache_hits_misses_and_invalidation(folder, net, tmp_path):
    cache = tmp_path / "cache"
    first = cached_embeddings(net, scan_folder(folder), cache_dir=cache, num_workers=0)
    assert (first.n_cached, first.n_computed) == (0, 20) and first.ok.all()
    again = cached_embeddings(net, scan_folder(folder), cache_dir=cache, num_workers=0)
    assert (again.n_cached, again.n_computed) == (20, 0)
    np.testing.assert_array_equal(first.embeddings, again.embeddings)

    changed = folder / "class_00" / "img_000.jpg"
    Image.new("RGB", (48, 48), (255, 0, 0)).save(changed)
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))
    (folder / "class_01" / "img_001.jpg").unlink()
    Image.new("RGB", (48, 48), (0, 0, 255)).save(folder / "class_02" / "new.jpg")
    scan = scan_folder(folder)
    third = cached_embeddings(net, scan, cache_dir=cache, num_workers=0)
    assert (third.n_cached, third.n_computed, third.n_removed) == (18, 2, 1)
    row = [r.id for r in scan.records].index("class_00/img_000.jpg")
    assert not np.allclose(third.embeddings[row], first.embeddings[0])
    stored = np.load(store_path(net, scan.root, "embeddings", cache))
    assert sorted(stored["ids"].tolist()) == sorted(r.id for r in scan.records)
    assert not list(folder.rglob("*.npz"))  # nothing written into the image folder


def test_corrupt_cache_is_rebuilt(folder, net, tmp_path):
    cache = tmp_path / "cache"
    scan = scan_folder(folder)
    reference = cached_embeddings(net, scan, cache_dir=cache, num_workers=0)
    store_path(net, scan.root, "embeddings", cache).write_bytes(b"\x00garbage")
    rebuilt = cached_embeddings(net, scan, cache_dir=cache, num_workers=0)
    assert rebuilt.n_computed == 20
    np.testing.assert_allclose(rebuilt.embeddings, reference.embeddings, atol=1e-5)


def test_bad_files_are_reported_not_fatal(folder, net, tmp_path):
    scan = scan_folder(folder)
    (folder / "class_00" / "img_001.jpg").write_bytes(b"broken after the scan")
    result = cached_embeddings(net, scan, cache_dir=tmp_path / "c", num_workers=0)
    assert result.ok.sum() == 19 and len(result.failures) == 1


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_hnsw_agrees_with_exact_search(distance):
    from retrieval_app.retrieval.ann import HnswIndex

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(3000, 32)).astype(np.float32)
    queries = rng.normal(size=(200, 32)).astype(np.float32)
    exact_i, exact_d = ExactIndex(vectors, distance).search(queries, 10)
    index = HnswIndex.build(vectors, distance)
    faiss_i, faiss_d = index.search(queries, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact_i, faiss_i)])
    assert index.recall >= 0.95 and recall >= 0.93  # efSearch tuned to 0.95 on sampled queries
    same = faiss_i[:, 0] == exact_i[:, 0]
    assert same.mean() >= 0.95
    np.testing.assert_allclose(faiss_d[same, 0], exact_d[same, 0], atol=1e-3)


def test_exact_search_excludes_self_and_matches_brute_force():
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(50, 6)).astype(np.float32)
    indices, distances = ExactIndex(vectors).search(vectors[:5], 4, exclude=np.arange(5))
    for q in range(5):
        d = np.linalg.norm(vectors - vectors[q], axis=1)
        d[q] = np.inf
        np.testing.assert_array_equal(indices[q], np.argsort(d)[:4])
        np.testing.assert_allclose(distances[q], np.sort(d)[:4], rtol=1e-4)


def test_query_by_image_equals_query_by_id(folder, net, tmp_path):
    gallery = Gallery.build(scan_folder(folder), net, cache_dir=tmp_path / "c", num_workers=0)
    i = gallery.index_of_id("class_02/img_003.jpg")
    by_id = gallery.neighbours_of_index(i, k=5)
    assert all(n.index != i for n in by_id) and len(by_id) == 5
    by_path, by_bytes = gallery.neighbours_of_images([gallery.records[i].path, gallery.records[i].path.read_bytes()], k=6)
    assert by_path[0].index == i and by_path[0].distance < 1e-3
    assert [n.index for n in by_path[1:]] == [n.index for n in by_id]
    assert [n.index for n in by_bytes] == [n.index for n in by_path]
    assert by_id[0].same_class is not None
    with pytest.raises(RetrievalAppError, match="out of range"):
        gallery.neighbours_of_index(len(gallery), 3)


@pytest.mark.parametrize("method", ["pca", "umap", "tsne"])
def test_maps_and_placing_a_gallery_point(method, tmp_path):
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(4, 16)) * 5
    embeddings = (centres.repeat(15, axis=0) + rng.normal(size=(60, 16))).astype(np.float32)
    projection = compute_projection(embeddings, method, seed=0, cache_dir=tmp_path)
    assert projection.coords.shape == (60, 2)
    spread = projection.coords.std(0).mean()
    placed = projection.transform(embeddings[7:8])
    assert np.linalg.norm(placed[0] - projection.coords[7]) < (1e-3 if method == "pca" else 0.3 * spread)
    again = compute_projection(embeddings, method, seed=0, cache_dir=tmp_path)
    assert again.from_cache
    np.testing.assert_array_equal(again.coords, projection.coords)


def test_tiny_sets_fall_back_to_pca(tmp_path):
    projection = compute_projection(np.eye(4, dtype=np.float32), "umap", cache_dir=tmp_path)
    assert projection.method == "pca" and "PCA" in projection.note


def test_exports_round_trip(folder, net, tmp_path):
    gallery = Gallery.build(scan_folder(folder), net, cache_dir=tmp_path / "c", num_workers=0)
    records, emb = gallery.records, gallery.embeddings
    (npz,) = export_embeddings(records, emb, tmp_path / "e.npz", "npz")
    data = np.load(npz)
    np.testing.assert_array_equal(data["embeddings"], emb)
    assert data["ids"].tolist() == [r.id for r in records]
    (csv_path,) = export_embeddings(records, emb, tmp_path / "e.csv", "csv")
    rows = list(csv.reader(io.StringIO(csv_path.read_text())))
    assert rows[0][:3] == ["id", "class", "path"] and len(rows) == len(records) + 1
    np.testing.assert_allclose(np.asarray(rows[1][3:], dtype=np.float32), emb[0], rtol=1e-5)
    import pyarrow.parquet as pq

    (parquet,) = export_embeddings(records, emb, tmp_path / "e.parquet", "parquet")
    table = pq.read_table(parquet)
    np.testing.assert_allclose(np.asarray(table["embedding"][3].as_py()), emb[3], rtol=1e-6)
    vectors, metadata = export_embeddings(records, emb, tmp_path / "projector", "projector")
    assert np.loadtxt(vectors, delimiter="\t").shape == emb.shape
    lines = metadata.read_text().splitlines()
    assert lines[0] == "id\tclass\tpath" and len(lines) == len(records) + 1
    html = export_map_html(records, np.zeros((len(records), 2), dtype=np.float32), gallery.classes, tmp_path / "m.html").read_text()
    assert all(f'"name":"{name}"' in html for name in gallery.classes)
    assert "plotly" in html.lower() and "class_00\\u002fimg_000.jpg" in html  # plotly escapes "/"


def test_search_cli_json(folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RETRIEVAL_APP_CACHE_DIR", str(tmp_path / "c"))
    query = str(folder / "class_01" / "img_002.jpg")
    assert main(["search", query, query, "--gallery", str(folder), "-k", "3", "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert first["query"] == query and len(first["neighbours"]) == 3
    assert set(first["neighbours"][0]) == {"id", "path", "label", "distance"}
    assert first["neighbours"][0]["id"] == "class_01/img_002.jpg"
    distances = [n["distance"] for n in first["neighbours"]]
    assert distances == sorted(distances)
    assert main(["search", "/no/such.jpg", "--gallery", str(folder)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_embed_map_export_cli(folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RETRIEVAL_APP_CACHE_DIR", str(tmp_path / "c"))
    assert main(["embed", str(folder), "--out", str(tmp_path / "x.npz")]) == 0
    assert "20 computed" in capsys.readouterr().out
    assert main(["embed", str(folder)]) == 0
    assert "20 from cache" in capsys.readouterr().out
    assert main(["map", str(folder), "--method", "pca", "--out", str(tmp_path / "m.html")]) == 0
    assert (tmp_path / "m.html").stat().st_size > 100_000  # plotly.js inlined
    assert main(["export", str(folder), "--format", "csv", "--out", str(tmp_path / "x.csv")]) == 0
    assert (tmp_path / "x.csv").read_text().count("\n") == 21
