"""Hardest positive and nearest negative of a gallery image; suspicious labels."""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import numpy as np
import pytest

from retrieval_app.data import scan_folder
from retrieval_app.data.scan import ImageRecord
from retrieval_app.retrieval import Gallery
from retrieval_app.retrieval.labels import CSV_COLUMNS, suspicious_labels, suspicious_labels_csv, write_suspicious_labels_csv
from retrieval_app.training import load_embedder

SAMPLE_DATA = Path(__file__).resolve().parents[1] / "sample_data"
# (image, the class folder it is moved into): one leopard among the sunflowers, ...
MISLABELLED = {
    "Leopards/image_0003.jpg": "sunflower",
    "sunflower/image_0005.jpg": "grand_piano",
    "grand_piano/image_0002.jpg": "Leopards",
    "pizza/image_0004.jpg": "watch",
}


def records_for(labels: np.ndarray, classes: list[str]) -> list[ImageRecord]:
    return [ImageRecord(f"{classes[label]}/{i:03d}.jpg", Path(f"/x/{i}.jpg"), int(label), classes[label], 1, 0) for i, label in enumerate(labels)]


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_hardest_positive_and_nearest_negative_by_brute_force(distance):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 60)
    classes = ["a", "b", "c", "d"]
    vectors = rng.normal(size=(60, 5)).astype(np.float32)
    gallery = Gallery.from_embeddings("/x", records_for(labels, classes), classes, vectors, distance=distance)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    for i in range(0, 60, 7):
        d = 1 - unit @ unit[i] if distance == "cosine" else np.linalg.norm(vectors - vectors[i], axis=1)
        same = [j for j in range(60) if j != i and labels[j] == labels[i]]
        other = [j for j in range(60) if labels[j] != labels[i]]
        positive, negative = gallery.hardest_pair_of_index(i)
        assert positive.index == max(same, key=lambda j: d[j]) and positive.same_class is True
        assert negative.index == min(other, key=lambda j: d[j]) and negative.same_class is False
        assert positive.distance == pytest.approx(d[positive.index], abs=1e-5) and negative.distance == pytest.approx(d[negative.index], abs=1e-5)
        # the nearest negative is the first neighbour of another class
        first_other = next(n for n in gallery.neighbours_of_index(i, 59) if not n.same_class)
        assert first_other.index == negative.index


def test_an_image_alone_in_its_class_has_no_hardest_positive():
    classes = ["a", "b"]
    gallery = Gallery.from_embeddings("/x", records_for(np.array([0, 1, 1]), classes), classes, np.eye(3, dtype=np.float32))
    positive, negative = gallery.hardest_pair_of_index(0)
    assert positive is None and negative is not None and negative.label == "b"


def test_mislabelled_images_rank_at_the_top(tmp_path, isolated_dirs):
    folder = tmp_path / "data"
    shutil.copytree(SAMPLE_DATA, folder, ignore=shutil.ignore_patterns("*.md"))
    moved = set()
    for image, target in MISLABELLED.items():
        name = f"moved_{Path(image).name}"
        shutil.move(folder / image, folder / target / name)
        moved.add(f"{target}/{name}")
    gallery = Gallery.build(scan_folder(folder), load_embedder("efficientnet_lite0"), num_workers=0)
    hits = suspicious_labels(gallery)
    assert {hit.id for hit in hits[: len(moved)]} == moved
    for hit in hits[: len(moved)]:
        true_class = next(Path(image).parts[0] for image, target in MISLABELLED.items() if hit.id == f"{target}/moved_{Path(image).name}")
        assert hit.looks_like == true_class and hit.share >= 0.5 and gallery.records[hit.nearest].class_name == true_class
    # the CSV lists them in the same order
    rows = list(csv.DictReader(io.StringIO(suspicious_labels_csv(hits))))
    assert tuple(rows[0]) == CSV_COLUMNS and [row["id"] for row in rows] == [hit.id for hit in hits]
    assert rows[0]["rank"] == "1" and rows[0]["looks_like"] == hits[0].looks_like
    out = write_suspicious_labels_csv(hits, tmp_path / "suspicious.csv")
    assert out.read_text(encoding="utf-8").splitlines()[0] == ",".join(CSV_COLUMNS)


def test_a_clean_separable_gallery_has_no_suspicious_labels():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(3), 10)
    vectors = (np.eye(3)[labels] * 10 + rng.normal(size=(30, 3)) * 0.1).astype(np.float32)
    classes = ["x", "y", "z"]
    gallery = Gallery.from_embeddings("/x", records_for(labels, classes), classes, vectors)
    assert suspicious_labels(gallery, k=5) == []
    vectors[4] = vectors[25]  # one x placed among the z
    hits = suspicious_labels(Gallery.from_embeddings("/x", records_for(labels, classes), classes, vectors), k=5)
    assert [(h.index, h.looks_like, h.share) for h in hits] == [(4, "z", 1.0)]


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_distances_from_one_image_agree_with_the_exact_ones(distance):
    """The one-pass scan (norms expanded) against float64 differences; a pair's exact
    distance (what the hardest pair reports) to float64 precision."""
    rng = np.random.default_rng(1)
    classes = ["a", "b"]
    vectors = (rng.normal(size=(300, 16)) + 5.0).astype(np.float32)  # far from the origin: the expansion's worst case
    gallery = Gallery.from_embeddings("/x", records_for(rng.integers(0, 2, 300), classes), classes, vectors, distance=distance)
    exact64 = vectors.astype(np.float64)
    unit = exact64 / np.linalg.norm(exact64, axis=1, keepdims=True)
    for i in (0, 17, 299):
        want = 1 - unit @ unit[i] if distance == "cosine" else np.linalg.norm(exact64 - exact64[i], axis=1)
        got = gallery.distances_from(i)
        assert got[i] == 0.0 and np.allclose(got, want, atol=2e-3 if distance == "euclidean" else 1e-5)
        for j in (1, 42, 250):
            assert gallery.distance_between(i, j) == pytest.approx(want[j], abs=1e-9)
