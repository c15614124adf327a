"""The core of the map's exploring tools: distinct class colours, natural class order,
neighbour agreement and selections (select → records, histogram, pages, CSV, find)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest

from retrieval_app.data import scan_folder
from retrieval_app.data.natural import natural_key, natural_sorted
from retrieval_app.data.scan import ImageRecord
from retrieval_app.errors import RetrievalAppError
from retrieval_app.palette import FIRST, class_colours, hex_to_rgb, min_colour_distance, srgb_to_lab
from retrieval_app.retrieval import Gallery
from retrieval_app.retrieval.agreement import neighbour_agreement
from retrieval_app.retrieval.selection import (
    CSV_COLUMNS, Selection, class_histogram, find_images, page_of, select, select_class, select_ids, selected_records, selection_csv, write_selection_csv,
)


# ------------------------------------------------------------------ palette
def test_sixty_classes_get_sixty_clearly_different_colours():
    colours = class_colours(60)
    assert len(set(colours)) == 60
    # ΔE*76 in CIELAB: about 2 is just noticeable; the old 20-colour cycle had 0 (repeats)
    assert min_colour_distance(colours) > 20
    lab = srgb_to_lab([hex_to_rgb(c) for c in colours])
    # visible on the near-white map, and none mistaken for the black / white query star
    assert lab[len(FIRST):, 0].min() >= 30 and lab[len(FIRST):, 0].max() <= 85
    for star in ("#000000", "#ffffff"):
        assert min(np.linalg.norm(lab - srgb_to_lab(hex_to_rgb(star)), axis=1)) > 20


def test_colours_are_stable_as_classes_are_added_and_start_with_plotlys():
    assert class_colours(10) == list(FIRST)
    assert class_colours(60)[:40] == class_colours(40)
    assert class_colours(0) == [] and len(class_colours(200)) == 200


def test_lab_conversion_matches_known_values():
    # CIE L*a*b* of sRGB white, black and pure red (D65)
    assert srgb_to_lab([255, 255, 255]) == pytest.approx([100, 0, 0], abs=0.01)
    assert srgb_to_lab([0, 0, 0]) == pytest.approx([0, 0, 0], abs=0.01)
    assert srgb_to_lab([255, 0, 0]) == pytest.approx([53.24, 80.09, 67.20], abs=0.05)


# ------------------------------------------------------------- natural order
def test_natural_order_numbers_by_value_and_letters_without_case():
    names = ["s10", "s2", "s1", "Leopards", "bonsai", "s20", "cup", "class_10", "class_9"]
    assert natural_sorted(names) == ["bonsai", "class_9", "class_10", "cup", "Leopards", "s1", "s2", "s10", "s20"]
    # a total order: equal-looking names keep one fixed order, whatever they start in
    assert natural_sorted(["s2", "s02", "S2"]) == natural_sorted(["S2", "s02", "s2"])
    assert natural_key("a1") < natural_key("ab")  # digits and text never compared as values


def test_scan_lists_classes_in_natural_order_and_labels_follow_it(make_image_folder):
    root = make_image_folder({f"s{i}": 2 for i in (1, 2, 10, 11, 3)}, size=(8, 8))
    scan = scan_folder(root)
    assert scan.classes == ["s1", "s2", "s3", "s10", "s11"]
    assert all(scan.classes[r.label] == r.class_name for r in scan.records)
    assert list(scan.class_counts()) == scan.classes


# --------------------------------------------------------- a small gallery
def records_for(labels, classes) -> list[ImageRecord]:
    return [ImageRecord(f"{classes[label]}/img_{i:03d}.jpg", Path(f"/x/{i}.jpg"), int(label), classes[label], 1, 0) for i, label in enumerate(labels)]


@pytest.fixture
def gallery():
    rng = np.random.default_rng(1)
    classes = ["a", "b", "c"]
    labels = rng.integers(0, 3, 40)
    vectors = rng.normal(size=(40, 4)).astype(np.float32) + labels[:, None] * 0.8
    return Gallery.from_embeddings("/x", records_for(labels, classes), classes, vectors)


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
@pytest.mark.parametrize("k", [1, 5, 100])
def test_neighbour_agreement_by_brute_force(gallery, distance, k):
    g = Gallery.from_embeddings("/x", gallery.records, gallery.classes, gallery.embeddings, distance=distance)
    agreement = neighbour_agreement(g, k)
    kk = min(k, len(g) - 1)
    for i in range(len(g)):
        d = g.distances_from(i).astype(np.float64)
        d[i] = np.inf
        nearest = np.argsort(d, kind="stable")[:kk]
        assert agreement[i] == pytest.approx(np.mean(g.labels[nearest] == g.labels[i]))  # random vectors: no ties
    assert agreement.dtype == np.float32 and ((agreement >= 0) & (agreement <= 1)).all()


def test_agreement_is_one_for_separated_classes_and_zero_for_an_intruder():
    classes = ["a", "b"]
    labels = np.array([0] * 5 + [1] * 5 + [0])
    vectors = np.concatenate([np.zeros((5, 2)), np.full((5, 2), 10.0), [[10.1, 10.1]]]).astype(np.float32)
    vectors[:10] += np.random.default_rng(0).normal(scale=0.01, size=(10, 2))
    agreement = neighbour_agreement(Gallery.from_embeddings("/x", records_for(labels, classes), classes, vectors), k=4)
    assert agreement[:5].tolist() == [1.0] * 5  # the a's cluster (the intruder is far away)
    assert agreement[10] == 0.0  # an "a" among the b's


# --------------------------------------------------------------- selections
def test_select_orders_by_class_then_position_and_adds(gallery):
    picked = [30, 3, 3, 17, 8, 22]
    sel = select(gallery, picked)
    assert set(sel.indices) == set(picked) and len(sel) == 5
    keys = [(int(gallery.labels[i]), i) for i in sel.indices]
    assert keys == sorted(keys)
    added = select(gallery, [0, 3], add_to=sel)
    assert set(added.indices) == set(picked) | {0}
    assert select(gallery, [1.0]).indices == (1,)  # JSON numbers
    assert [r.id for r in selected_records(gallery, sel)] == [gallery.records[i].id for i in sel.indices]


@pytest.mark.parametrize("bad", [-1, 40, 2.5, "x", None, True])
def test_select_refuses_what_is_no_point(gallery, bad):
    with pytest.raises(RetrievalAppError, match="point index"):
        select(gallery, [1, bad])


def test_class_selection_histogram_and_ids(gallery):
    sel = select_class(gallery, "b")
    assert set(sel.indices) == set(np.flatnonzero(gallery.labels == 1).tolist())
    assert class_histogram(gallery, sel) == [("b", len(sel))]
    mixed = select(gallery, list(range(12)))
    expected = {name: int(np.sum(gallery.labels[:12] == c)) for c, name in enumerate(gallery.classes)}
    assert class_histogram(gallery, mixed) == [(n, c) for n, c in expected.items() if c]
    assert class_histogram(gallery, Selection()) == []
    assert select_ids(gallery, [gallery.records[5].id, gallery.records[2].id]).indices == select(gallery, [2, 5]).indices
    with pytest.raises(RetrievalAppError, match="no class 'z'"):
        select_class(gallery, "z")


def test_pages_cover_the_selection_once(gallery):
    sel = select(gallery, range(40))
    pages = [page_of(sel, n, 12) for n in range(4)]
    assert [p.n_pages for p in pages] == [4] * 4 and [len(p.indices) for p in pages] == [12, 12, 12, 4]
    assert sum((p.indices for p in pages), ()) == sel.indices
    assert page_of(sel, 99, 12).number == 3 and page_of(sel, -5, 12).number == 0
    empty = page_of(Selection(), 0, 12)
    assert empty.indices == () and empty.n_pages == 1


def test_csv_lists_the_selection(gallery, tmp_path):
    sel = select(gallery, [4, 9, 33])
    rows = list(csv.reader(io.StringIO(selection_csv(gallery, sel))))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert rows[1:] == [[str(i), gallery.records[i].id, gallery.records[i].class_name] for i in sel.indices]
    path = write_selection_csv(gallery, sel, tmp_path / "sel.csv")
    assert path.read_text() == selection_csv(gallery, sel)


def test_csv_escapes_names_that_are_not_utf8():
    classes = ["caf\udce9", "b"]
    g = Gallery.from_embeddings("/x", records_for([0, 1], classes), classes, np.eye(2, dtype=np.float32))
    text = selection_csv(g, select(g, [0, 1]))
    text.encode("utf-8")  # valid UTF-8
    assert "caf\\xe9/img_000.jpg" in text


def test_find_by_id_file_name_or_part(gallery):
    record = gallery.records[7]
    assert find_images(gallery, record.id) == [7]
    name = record.id.rsplit("/", 1)[1]
    assert find_images(gallery, name.upper()) == [7]
    assert find_images(gallery, "img_00") == list(range(10))
    assert find_images(gallery, "nothing-like-it") == []
    with pytest.raises(RetrievalAppError):
        find_images(gallery, "  ")


# ------------------------------------------------------- the map's payload
def test_map_payload_colours_and_legend_for_many_classes():
    import json

    from retrieval_app.ui.plot import colouring_json, decode_colouring, map_payload

    classes = [f"person_{i}" for i in range(40, 0, -1)]
    labels = np.arange(80) % 40
    coords = np.random.default_rng(0).normal(size=(80, 2)).astype(np.float32)
    ids = [f"{classes[label]}/{i}.png" for i, label in enumerate(labels)]
    payload = json.loads(map_payload(coords, labels, classes, ids, revision="r"))
    colours = [c["colour"] for c in payload["classes"]]
    assert len(set(colours)) == 40 and colours == class_colours(40)
    few = json.loads(map_payload(coords[:4], labels[:4] % 2, classes[:2], ids[:4], revision="r"))
    # > 20 classes: a grid of legend columns below the map, which grows to hold it
    assert payload["layout"]["legend"]["orientation"] == "h" and "orientation" not in few["layout"]["legend"]
    assert payload["layout"]["height"] > few["layout"]["height"]

    values = np.linspace(0, 1, 80, dtype=np.float32)
    colouring = decode_colouring(colouring_json(coords, "r", "agreement", values, title="t"))
    assert colouring["key"] == payload["key"] and colouring["mode"] == "agreement"
    assert np.array_equal(colouring["values"], values)
    assert decode_colouring(colouring_json(coords, "r", "class"))["values"] is None
    with pytest.raises(ValueError):
        colouring_json(coords, "r", "agreement", values[:5])
    with pytest.raises(ValueError):
        colouring_json(coords, "r", "rainbow")
