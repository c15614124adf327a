"""Gallery: build from a folder, query by gallery item and by image, validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from retrieval_app.data import scan_folder
from retrieval_app.errors import RetrievalAppError
from retrieval_app.networks import create_model
from retrieval_app.retrieval import Gallery, Neighbour
from synthetic import write_class_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_class_folder(tmp_path_factory.mktemp("gallery") / "images", n_classes=4, per_class=6, size=48)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return create_model("small_cnn", dim=16, pretrained=False).eval()


@pytest.fixture(scope="module")
def gallery(folder, net, tmp_path_factory):
    return Gallery.build(scan_folder(folder), net, cache_dir=tmp_path_factory.mktemp("cache"), device="cpu")


def test_build_holds_everything_the_ui_needs(gallery, folder):
    scan = scan_folder(folder)
    assert len(gallery) == 24 and gallery.embeddings.shape == (24, 16) and gallery.embeddings.dtype == np.float32
    assert gallery.classes == scan.classes and gallery.labels.tolist() == scan.labels().tolist()
    assert [r.id for r in gallery.records] == [r.id for r in scan.records]
    assert gallery.distance == "euclidean" and gallery.index.backend == "exact"
    assert gallery.failures == [] and gallery.n_computed == 24


def test_query_by_image_equals_query_by_id(gallery):
    i = gallery.index_of_id("class_02/img_003.jpg")
    by_id = gallery.neighbours_of_index(i, k=5)
    assert len(by_id) == 5 and all(n.index != i for n in by_id)
    path = gallery.records[i].path
    by_path, by_bytes, by_pil = gallery.neighbours_of_images([path, path.read_bytes(), Image.open(path)], k=6)
    assert by_path[0].index == i and by_path[0].distance < 1e-4
    assert [n.index for n in by_path[1:]] == [n.index for n in by_id]
    np.testing.assert_allclose([n.distance for n in by_path[1:]], [n.distance for n in by_id], atol=1e-4)
    assert [n.index for n in by_bytes] == [n.index for n in by_path] == [n.index for n in by_pil]


def test_neighbours_carry_ids_paths_classes_and_same_class(gallery):
    i = gallery.index_of_id("class_01/img_000.jpg")
    neighbours = gallery.neighbours_of_index(i, k=len(gallery))
    assert len(neighbours) == len(gallery) - 1
    assert all(isinstance(n, Neighbour) for n in neighbours)
    distances = [n.distance for n in neighbours]
    assert distances == sorted(distances)
    for n in neighbours:
        record = gallery.records[n.index]
        assert (n.id, n.path, n.label) == (record.id, record.path, record.class_name)
        assert n.same_class == (record.class_name == "class_01")
    assert {n.same_class for n in gallery.neighbours_of_images([gallery.records[i].path], k=3)[0]} == {None}
    expected = np.linalg.norm(gallery.embeddings - gallery.embeddings[i], axis=1)
    np.testing.assert_allclose(distances, np.sort(np.delete(expected, i)), atol=1e-5)


def test_many_queries_in_one_call(gallery):
    many = gallery.neighbours_of_indices([0, 5, 23], k=4)
    assert [[n.index for n in hits] for hits in many] == [[n.index for n in gallery.neighbours_of_index(i, 4)] for i in (0, 5, 23)]
    by_vectors = gallery.neighbours_of_vectors(gallery.embeddings[[3, 4]], k=2, query_labels=[0, 1])
    assert [hits[0].index for hits in by_vectors] == [3, 4]
    assert by_vectors[0][0].same_class is True


@pytest.mark.parametrize("bad", [24, -1, 2.0, "3", True, None])
def test_bad_indices_are_clear_errors(gallery, bad):
    with pytest.raises(RetrievalAppError, match="out of range"):
        gallery.neighbours_of_index(bad, 3)


def test_unknown_id_and_bad_k(gallery):
    with pytest.raises(RetrievalAppError, match="no image with id"):
        gallery.index_of_id("class_09/nothing.jpg")
    with pytest.raises(RetrievalAppError, match="k must be"):
        gallery.neighbours_of_index(0, 0)


def test_cosine_gallery_and_hnsw_backend(folder, net, tmp_path):
    scan = scan_folder(folder)
    exact = Gallery.build(scan, net, distance="cosine", cache_dir=tmp_path, device="cpu", backend="exact")
    approx = Gallery.build(scan, net, distance="cosine", cache_dir=tmp_path, device="cpu", backend="hnsw")
    assert exact.distance == "cosine" and approx.index.backend == "hnsw"
    assert approx.n_cached == 24  # same net and folder: read from the cache
    assert [n.index for n in approx.neighbours_of_index(7, 5)] == [n.index for n in exact.neighbours_of_index(7, 5)]
    d = exact.neighbours_of_index(7, 1)[0].distance
    a, b = exact.embeddings[7], exact.embeddings[exact.neighbours_of_index(7, 1)[0].index]
    assert d == pytest.approx(1 - a @ b / np.linalg.norm(a) / np.linalg.norm(b), abs=1e-5)
    assert Gallery.build(scan, net, distance="squared_euclidean", cache_dir=tmp_path, device="cpu").distance == "euclidean"


def test_unreadable_images_are_left_out(tmp_path, net):
    root = write_class_folder(tmp_path / "images", n_classes=2, per_class=4, size=32)
    scan = scan_folder(root)
    scan.records[1].path.write_bytes(b"broken")
    gallery = Gallery.build(scan, net, cache_dir=tmp_path / "c", device="cpu")
    assert len(gallery) == 7 and scan.records[1].id not in [r.id for r in gallery.records]
    assert len(gallery.failures) == 1
    for record in scan.records:
        record.path.write_bytes(b"")
    with pytest.raises(RetrievalAppError, match="could be embedded"):
        Gallery.build(scan, net, cache_dir=tmp_path / "c2", device="cpu")


def test_from_embeddings_without_a_network(gallery):
    plain = Gallery.from_embeddings(gallery.root, gallery.records, gallery.classes, gallery.embeddings)
    assert [n.index for n in plain.neighbours_of_index(2, 3)] == [n.index for n in gallery.neighbours_of_index(2, 3)]
    with pytest.raises(RetrievalAppError, match="no network"):
        plain.neighbours_of_images([gallery.records[0].path])
    with pytest.raises(RetrievalAppError, match="records but"):
        Gallery.from_embeddings(gallery.root, gallery.records[:3], gallery.classes, gallery.embeddings)


def test_from_features_applies_the_head_to_cached_features_without_the_backbone(folder, net, tmp_path):
    """A new head on the same backbone: the gallery comes from the feature cache and the
    head alone, with the vectors that embedding the images gives."""
    from retrieval_app.retrieval.cache import cached_embeddings

    scan = scan_folder(folder)
    cache = tmp_path / "cache"
    cached_embeddings(net, scan, output="features", cache_dir=cache, device="cpu")  # what training leaves behind
    calls = []
    hook = net.backbone.register_forward_hook(lambda module, inputs, output: calls.append(len(output)))
    try:
        steps = []
        via_features = Gallery.build(scan, net, cache_dir=cache, device="cpu", from_features=True, progress=lambda d, t: steps.append((d, t)))
        assert calls == []  # no image went through the backbone
        from_images = Gallery.build(scan, net, cache_dir=cache, device="cpu")
        assert sum(calls) == len(scan.records)  # the reference did
    finally:
        hook.remove()
    assert steps == [(24, 24)] and via_features.n_cached == 24 and via_features.n_computed == 0
    assert [r.id for r in via_features.records] == [r.id for r in from_images.records]
    np.testing.assert_allclose(via_features.embeddings, from_images.embeddings, atol=1e-5)
    assert via_features.embeddings.shape == (24, 16)


def test_the_index_is_saved_and_updated_with_the_folder(folder, net, tmp_path):
    import shutil

    copy = tmp_path / "images"
    shutil.copytree(folder, copy)
    cache = tmp_path / "cache"
    first = Gallery.build(scan_folder(copy), net, cache_dir=cache, device="cpu")
    assert first.index_report.action == "built" and first.index_summary().startswith("search: exact search")
    again = Gallery.build(scan_folder(copy), net, cache_dir=cache, device="cpu")
    assert again.index_report.action == "loaded" and "loaded from its saved copy" in again.index_summary()
    shutil.copy(copy / "class_00" / "img_000.jpg", copy / "class_01" / "added.jpg")
    (copy / "class_02" / "img_001.jpg").unlink()
    updated = Gallery.build(scan_folder(copy), net, cache_dir=cache, device="cpu")
    report = updated.index_report
    assert (report.action, report.added, report.removed) == ("updated", 1, 1)
    fresh = Gallery.from_embeddings(copy, updated.records, updated.classes, updated.embeddings)
    for i in range(len(updated)):
        assert [n.index for n in updated.neighbours_of_index(i, 5)] == [n.index for n in fresh.neighbours_of_index(i, 5)]
