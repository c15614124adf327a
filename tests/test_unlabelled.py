"""Folders without labels (issue 15): the flat layout, labels from a CSV, cluster colours,
metrics hidden without labels, and training on two views of one image with the guard."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from retrieval_app.data import scan_folder
from retrieval_app.data.labels_csv import apply_label_csv, open_folder, read_label_rows
from retrieval_app.data.scan import UNLABELLED
from retrieval_app.errors import DatasetError
from retrieval_app.evaluation import evaluate_gallery
from retrieval_app.metrics import retrieval_metrics
from retrieval_app.networks import create_model
from retrieval_app.retrieval import Gallery
from retrieval_app.retrieval.clusters import NO_LABEL_NAME, candidate_ks, cluster_embeddings, colour_groups
from retrieval_app.training import TrainConfig
from retrieval_app.training.quick import head_net_factory
from retrieval_app.training.unlabelled import ViewProtocol, image_folds, view_table
from synthetic import write_class_folder

pytestmark = pytest.mark.usefixtures("isolated_dirs")


def flat_folder(root: Path, n_classes: int = 4, per_class: int = 4) -> Path:
    """Synthetic shapes copied into one folder, the class only in the file name."""
    source = write_class_folder(root.parent / f"{root.name}_src", n_classes=n_classes, per_class=per_class, size=48)
    root.mkdir(parents=True)
    for path in sorted(source.glob("*/*.jpg")):
        shutil.copy(path, root / f"{path.parent.name}_{path.name}")
    return root


# ------------------------------------------------------------------ scanning
def test_a_flat_folder_opens_without_labels_and_class_folders_stay_strict(tmp_path):
    root = flat_folder(tmp_path / "flat")
    (root / ".hidden.jpg").write_bytes((root / "class_00_img_000.jpg").read_bytes())
    scan = scan_folder(root)
    assert not scan.labelled and scan.classes == [] and len(scan.records) == 16
    assert {r.label for r in scan.records} == {UNLABELLED} and {r.class_name for r in scan.records} == {""}
    assert [s.reason for s in scan.skipped] == ["hidden file"]
    assert scan.summary().startswith("16 images without labels in")
    with pytest.raises(DatasetError, match="directly in .* no class sub-folders.*--unlabelled"):
        scan_folder(root, layout="classes")
    # Class folders keep their meaning; one class folder alone is still an error, naming the way out.
    classes = write_class_folder(tmp_path / "classes", n_classes=3, per_class=2, size=16)
    assert scan_folder(classes).classes == ["class_00", "class_01", "class_02"]
    only = tmp_path / "one"
    shutil.copytree(classes / "class_00", only / "class_00")
    with pytest.raises(DatasetError, match="only one class .*--unlabelled"):
        scan_folder(only)
    nested = scan_folder(classes, layout="unlabelled")  # every image below, recursively, no labels
    assert not nested.labelled and sorted(r.id for r in nested.records)[0] == "class_00/img_000.jpg" and len(nested.records) == 6
    with pytest.raises(DatasetError, match="unknown folder layout"):
        scan_folder(classes, layout="sideways")


# ------------------------------------------------------------------ labels CSV
def test_labels_csv_labels_named_images_and_reports_every_bad_row(tmp_path):
    root = flat_folder(tmp_path / "flat", n_classes=2, per_class=3)
    ids = sorted(p.name for p in root.iterdir())
    csv = tmp_path / "labels.csv"
    csv.write_text("\n".join([
        "id,label",
        f"{ids[0]},round",           # 2: good
        f"./{ids[1]},round",         # 3: good (a ./ prefix is the same id)
        f"{ids[3]},square",          # 4: good
        f"{ids[4]},square",          # 5: good
        "missing.jpg,round",         # 6: unknown id
        f"{ids[5]},square,extra",    # 7: three fields
        f"{ids[2]},",                # 8: empty label
        f"{ids[0]},square",          # 9: the same id with another label
        "",                          # blank: no row
    ]), encoding="utf-8")
    scan, report = apply_label_csv(scan_folder(root), csv)
    assert scan.classes == ["round", "square"] and report.n_labelled == 4
    by_id = {r.id: r for r in scan.records}
    assert by_id[ids[0]].class_name == "round" and by_id[ids[0]].label == 0 and by_id[ids[3]].label == 1
    assert by_id[ids[2]].label == UNLABELLED and by_id[ids[5]].label == UNLABELLED  # bad rows label nothing
    assert scan.n_unlabelled == 2 and "(2 without a label)" in scan.summary()
    problems = report.problems
    assert any(p.startswith("line 6: unknown id 'missing.jpg'") for p in problems)
    assert any(p.startswith("line 7: expected 2 fields") for p in problems)
    assert any(p.startswith("line 8: empty label") for p in problems)
    assert any(p.startswith(f"line 9: id '{ids[0]}' labelled 'square' here but 'round' on line 2") for p in problems)
    assert len(problems) == 4 and all(w.startswith("labels file labels.csv: line ") for w in scan.warnings)
    # open_folder: a CSV implies the unlabelled layout, whatever the sub-folders say.
    assert open_folder(root, labels=csv).classes == ["round", "square"]


@pytest.mark.parametrize("content, message", [
    (b"nothing.jpg,x\n", "labels none of the"),
    (b"\xff\xfe\x00bad", "is not UTF-8"),
    (b"a;b;c\n", "labels none of the .*expected 2 fields"),
])
def test_a_labels_csv_that_labels_nothing_is_one_clear_error(tmp_path, content, message):
    root = flat_folder(tmp_path / "flat", n_classes=2, per_class=2)
    csv = tmp_path / "labels.csv"
    csv.write_bytes(content)
    with pytest.raises(DatasetError, match=message):
        open_folder(root, labels=csv)
    with pytest.raises(DatasetError, match="does not exist"):
        read_label_rows(tmp_path / "nope.csv")


# ------------------------------------------------------------------ clusters
def test_clusters_find_the_number_of_well_separated_groups():
    rng = np.random.default_rng(0)
    centres = np.eye(16)[:5] * 10
    points = np.concatenate([c + rng.normal(0, 0.3, (30, 16)) for c in centres])
    found = cluster_embeddings(points, seed=0)
    assert found.k == 5 and found.silhouette > 0.8
    # Each true group is one cluster, and cluster numbers go by size (ties: any order).
    assert all(len(set(found.labels[g * 30:(g + 1) * 30].tolist())) == 1 for g in range(5))
    assert np.array_equal(found.labels, cluster_embeddings(points, seed=0).labels)
    assert candidate_ks(2) == [] and candidate_ks(8) == [2, 3] and candidate_ks(10_000)[-1] == 20


def test_colour_groups_use_classes_when_there_are_any():
    embeddings = np.random.default_rng(1).normal(size=(6, 4))
    groups, names, kind = colour_groups(np.array([0, 1, -1, 0, 1, -1]), ["a", "b"], embeddings)
    assert kind == "class" and names == ["a", "b", NO_LABEL_NAME] and groups.tolist() == [0, 1, 2, 0, 1, 2]
    groups, names, kind = colour_groups(np.full(6, -1), [], embeddings)
    assert kind == "cluster" and names[0] == "cluster 1" and len(names) == len(set(groups.tolist()))


# ------------------------------------------------------------------ gallery and metrics
def test_a_gallery_without_labels_searches_but_has_no_metrics_or_class_marks(tmp_path):
    scan = scan_folder(flat_folder(tmp_path / "flat", n_classes=3, per_class=4))
    rng = np.random.default_rng(2)
    vectors = np.repeat(np.eye(8)[:3] * 5, 4, axis=0) + rng.normal(0, 0.1, (12, 8))  # three tight groups
    gallery = Gallery.from_embeddings(scan.root, scan.records, scan.classes, vectors)
    hits = gallery.neighbours_of_index(0, 3)
    assert sorted(h.index for h in hits) == [1, 2, 3] and all(h.same_class is None and h.label == "" for h in hits)
    assert gallery.hardest_pair_of_index(0) == (None, None)
    report = evaluate_gallery(gallery)
    assert report["labelled"] is False and "map_at_r" not in report and "labels" in report["note"]
    groups, names, kind = gallery.colour_groups()
    assert kind == "cluster" and len(names) == 3 and len(set(groups[:4].tolist())) == 1
    # Partly labelled: metrics over the labelled images only.
    labels = [0, 0, -1, -1, 1, 1, -1, -1, -1, -1, -1, -1]
    from dataclasses import replace
    partial = [replace(r, label=l, class_name=["x", "y"][l] if l >= 0 else "") for r, l in zip(scan.records, labels)]
    report = evaluate_gallery(Gallery.from_embeddings(scan.root, partial, ["x", "y"], vectors))
    assert report["labelled"] and report["n_labelled"] == 4 and report["n_queries"] == 4 and report["map_at_r"] == pytest.approx(1.0)


# ------------------------------------------------------------------ training without labels: the guard
FEATURE_DIM = 256  # small_cnn's pooled features: a backbone that is never run here
NUISANCE = 1.0


def synthetic_views(n_images: int, n_views: int, *, seed: int = 0, nuisance: float = NUISANCE):
    """Features where an image's identity lives in 16 dims and each view adds a large
    random nuisance in 64 others: the bare features find another view poorly; a head
    that learns to ignore the nuisance finds it well, also for images it never saw."""
    rng = np.random.default_rng(seed)
    identity = np.zeros((n_images, FEATURE_DIM))
    identity[:, :16] = rng.normal(0, 1, (n_images, 16))
    def view():
        out = identity.copy()
        out[:, 16:80] += rng.normal(0, nuisance, (n_images, 64))
        return out
    clean = torch.as_tensor(view(), dtype=torch.float32)
    views = torch.as_tensor(np.stack([view() for _ in range(n_views)], axis=1), dtype=torch.float32)
    return clean, views


def run_view_protocol(tmp_path, *, lr: float, n_images: int = 120, labels: list[int] | None = None, epochs: int = 30):
    images = scan_folder(flat_folder(tmp_path / "flat", n_classes=4, per_class=n_images // 4)).records
    if labels is not None:
        from dataclasses import replace
        images = [replace(r, label=l, class_name=f"c{l}" if l >= 0 else "") for r, l in zip(images, labels)]
    config = TrainConfig(folder=".", out_dir=str(tmp_path / "m"), views=3, epochs=epochs, batch_size=32, lr=lr, folds=3, seed=0).validate()
    clean, views = synthetic_views(len(images), config.views)
    base = create_model("small_cnn", head=None, pretrained=False)
    make_net = head_net_factory(base, config, clean, torch.device("cpu"))
    table = view_table(images, clean, views)
    protocol = ViewProtocol(config, make_net, table, images=images, lr=lr, metric_distance="euclidean", cancel=threading.Event(), emit=lambda e: None)
    return protocol.run()


def test_image_folds_hold_out_whole_images_and_one_view_of_the_others(tmp_path):
    images = scan_folder(flat_folder(tmp_path / "flat", n_classes=3, per_class=4)).records
    folds = image_folds(images, 3, 3, val_fraction=0.2, seed=0)
    assert len(folds) == 3
    held = [{r.class_name for r in f.val_unseen} for f in folds]
    assert set().union(*held) == {r.id for r in images} and sum(len(h) for h in held) == 12  # each image held out once
    for fold, out in zip(folds, held):
        trained = {r.class_name for r in fold.train}
        assert not trained & out and {r.id.rsplit("#", 1)[1] for r in fold.train} == {"view1", "view2"}
        assert {r.id.rsplit("#", 1)[1] for r in fold.val_seen} == {"view0", "view3"}  # clean + the view kept out
        assert {r.id.rsplit("#", 1)[1] for r in fold.val_unseen} == {"view0", "view1", "view2", "view3"}


def test_the_guard_keeps_a_head_that_helps(tmp_path):
    outcome, net = run_view_protocol(tmp_path, lr=1e-2)
    dial = outcome.dial
    assert net is not None and outcome.blend is not None and outcome.blend > 0
    chosen = dial.chosen  # measured 0.20 -> 0.63 and 0.28 -> 0.67
    assert chosen.seen > dial.baseline_seen + 0.2  # trained images: another view found far better
    assert chosen.unseen > dial.baseline_unseen + 0.2 and chosen.unseen_worst_gain > 0  # and in every fold's images it never saw


def test_the_guard_keeps_the_backbone_when_training_does_not_help(tmp_path):
    # A run that cannot move the head (learning rate ~0): no point beats the backbone.
    outcome, net = run_view_protocol(tmp_path, lr=1e-12)
    assert net is None and outcome.blend is None and outcome.dial.recommended is None


def test_with_some_labels_the_guard_also_judges_on_them(tmp_path):
    labels = [i % 4 if i < 40 else -1 for i in range(120)]  # the first 40 images labelled, 4 classes
    outcome, net = run_view_protocol(tmp_path, lr=1e-2, labels=labels)
    dial = outcome.dial
    # `seen` is now leave-one-out retrieval of those labels among the labelled images'
    # clean features (every fold the same set: labels never enter training).
    clean, _ = synthetic_views(120, 3)
    expected = retrieval_metrics(torch.nn.functional.normalize(clean[:40], dim=1), torch.as_tensor(labels[:40]))["map_at_r"]
    assert dial.baseline_seen == pytest.approx(expected, abs=1e-6)
    # The labels are unrelated to the identity the views teach, so a kept point must
    # still have gained on them (the guard's rule), whatever the views' proxy says.
    assert net is None or dial.chosen.seen > dial.baseline_seen


# ------------------------------------------------------------------ the app's labels field
def test_the_apps_labels_field_checks_the_csv_against_the_data_roots(tmp_path):
    from retrieval_app.ui.access import DataRoots
    from retrieval_app.ui.app import AppConfig
    from retrieval_app.ui.unlabelled import load_with_labels

    root = flat_folder(tmp_path / "data" / "flat", n_classes=2, per_class=2)
    outside = tmp_path / "elsewhere" / "labels.csv"
    outside.parent.mkdir()
    outside.write_text("id,label\n")
    config = AppConfig(data_roots=DataRoots.of([tmp_path / "data"], restricted=True))
    progress = lambda *a, **k: None  # noqa: E731
    state, message, _ = next(load_with_labels(config, None, str(root), str(outside), "efficientnet_lite0", "pca", progress))
    assert "Error:" in message and "outside the data roots" in message and state.gallery is None
    _, message, _ = next(load_with_labels(config, state, str(root), "  ", "efficientnet_lite0", "pca", progress))
    assert "Error:" in message and "labels CSV" in message
