"""scan_folder: classes, ids, skipped files, warnings, errors and symbolic links."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

from retrieval_app.data import ImageRecord, scan_folder
from retrieval_app.errors import DatasetError
from retrieval_app.paths import sample_data_dir

needs_symlinks = pytest.mark.skipif(os.name == "nt", reason="symbolic links need privileges on Windows")


def write_bad_files(folder):
    jpeg = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(jpeg, format="JPEG")
    (folder / "truncated.jpg").write_bytes(jpeg.getvalue()[: int(len(jpeg.getvalue()) * 0.6)])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("this is not an image")


def test_classes_records_and_ids(make_image_folder):
    root = make_image_folder({"dogs": 3, "cats": 2, "birds": 4})
    scan = scan_folder(root)
    assert scan.root == root.resolve()
    assert scan.classes == ["birds", "cats", "dogs"]
    assert scan.class_counts() == {"birds": 4, "cats": 2, "dogs": 3}
    ids = [r.id for r in scan.records]
    assert ids == sorted(ids) and ids[0] == "birds/img_000.jpg"
    for record in scan.records:
        assert isinstance(record, ImageRecord)
        assert record.path == scan.root / record.id and record.path.is_absolute()
        assert scan.classes[record.label] == record.class_name == record.id.split("/")[0]
        stat = record.path.stat()
        assert (record.size, record.mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    labels = scan.labels()
    assert labels.dtype == np.int64 and labels.tolist() == [r.label for r in scan.records]
    assert scan.skipped == [] and scan.warnings == []


def test_nested_images_extensions_and_hidden_names(make_image_folder):
    root = make_image_folder({"a": 2, "b": 2})
    deep = root / "a" / "more" / "deeper"
    deep.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(deep / "x.JPG")
    Image.new("RGB", (8, 8)).save(root / "b" / "y.Png")
    Image.new("L", (8, 8)).save(root / "b" / "z.pgm")
    (root / "a" / "notes.txt").write_text("not an image, ignored")
    (root / ".cache").mkdir()
    Image.new("RGB", (8, 8)).save(root / ".cache" / "hidden.jpg")
    (root / "a" / ".thumbs").mkdir()
    Image.new("RGB", (8, 8)).save(root / "a" / ".thumbs" / "t.jpg")
    Image.new("RGB", (8, 8)).save(root / "a" / ".dot.jpg")
    scan = scan_folder(root)
    assert scan.classes == ["a", "b"]
    ids = {r.id for r in scan.records}
    assert {"a/more/deeper/x.JPG", "b/y.Png", "b/z.pgm"} <= ids
    assert not any("." in part[:1] for i in ids for part in i.split("/"))
    assert scan.class_counts() == {"a": 3, "b": 4}


def test_loose_and_unreadable_files_are_skipped_with_reasons(make_image_folder):
    root = make_image_folder({"a": 2, "b": 2})
    write_bad_files(root / "b")
    Image.new("RGB", (8, 8)).save(root / "loose.png")
    (root / "readme.txt").write_text("ignored")
    scan = scan_folder(root)
    reasons = {s.path: s.reason for s in scan.skipped}
    assert set(reasons) == {"loose.png", "b/truncated.jpg", "b/empty.jpg", "b/text.jpg"}
    assert reasons["loose.png"] == "not inside a class folder"
    assert "truncated" in reasons["b/truncated.jpg"] and "empty" in reasons["b/empty.jpg"]
    assert "not a recognised image" in reasons["b/text.jpg"]
    assert scan.class_counts() == {"a": 2, "b": 2}
    unchecked = scan_folder(root, check_images=False)
    assert unchecked.class_counts() == {"a": 2, "b": 5}  # nothing opened, only names
    assert [s.path for s in unchecked.skipped] == ["loose.png"]


def test_warnings_for_single_image_and_empty_classes(make_image_folder):
    root = make_image_folder({"a": 3, "b": 2, "lonely": 1})
    (root / "empty").mkdir()
    (root / "broken").mkdir()
    write_bad_files(root / "broken")
    scan = scan_folder(root)
    assert scan.classes == ["a", "b", "lonely"]
    text = "\n".join(scan.warnings)
    assert "class 'lonely' has only one image: it cannot be an anchor for training" in text
    assert "'empty' has no images" in text and "'broken' has no readable images" in text


def test_summary_is_short(make_image_folder):
    root = make_image_folder({f"c{i:02d}": 2 for i in range(20)} | {"big": 5, "one": 1}, size=(8, 8))
    for i in range(9):
        (root / "c00" / f"bad{i}.jpg").write_text("x")
    summary = scan_folder(root).summary()
    assert summary.startswith("46 images in 22 classes")
    assert "min 1 (one)" in summary and "max 5 (big)" in summary
    assert "9 files skipped" in summary and "... and 4 more files" in summary
    assert len(summary.splitlines()) <= 12
    small = scan_folder(make_image_folder({"x": 2, "y": 3}, name="small")).summary()
    assert "x 2, y 3" in small


@pytest.mark.parametrize("setup, message", [
    ("missing", "does not exist"),
    ("file", "is not a folder"),
    ("empty", "no images found"),
    ("loose", "directly in"),
    ("one_class", r"only one class \('only'\)"),
    ("unreadable", "could be read"),
])
def test_errors_say_what_is_needed(tmp_path, make_image_folder, setup, message):
    root = tmp_path / "root"
    if setup == "file":
        root.write_text("x")
    elif setup == "empty":
        (root / "empty_class").mkdir(parents=True)
    elif setup == "loose":
        root.mkdir()
        Image.new("RGB", (8, 8)).save(root / "a.jpg")
    elif setup == "one_class":
        make_image_folder({"only": 3}, name="root")
    elif setup == "unreadable":
        for name in ("a", "b"):
            (root / name).mkdir(parents=True)
            write_bad_files(root / name)
    with pytest.raises(DatasetError, match=message) as info:
        # A flat folder opens without labels in the default layout (test_unlabelled.py).
        scan_folder(root, layout="classes" if setup == "loose" else "auto")
    if setup in ("file", "empty", "loose", "one_class"):
        assert "needs at least two class sub-folders with images, e.g. root/cats/*.jpg, root/dogs/*.jpg" in str(info.value)


def test_one_class_that_holds_the_classes_gets_a_hint(make_image_folder, tmp_path):
    make_image_folder({"cats": 2, "dogs": 2}, name="outer/dataset")
    with pytest.raises(DatasetError, match="open .*dataset instead"):
        scan_folder(tmp_path / "outer")


@needs_symlinks
def test_symlinked_files_and_class_folders_are_followed(make_image_folder, tmp_path):
    elsewhere = make_image_folder({"cats": 2, "extra": 1}, name="elsewhere")
    root = make_image_folder({"dogs": 2})
    os.symlink(elsewhere / "cats", root / "cats")
    os.symlink(elsewhere / "extra" / "img_000.jpg", root / "dogs" / "linked.jpg")
    os.symlink(tmp_path / "nowhere.jpg", root / "dogs" / "broken.jpg")
    scan = scan_folder(root)
    assert scan.class_counts() == {"cats": 2, "dogs": 3}
    linked = next(r for r in scan.records if r.id == "dogs/linked.jpg")
    assert linked.path == scan.root / "dogs" / "linked.jpg"  # the id names the link, not its target
    assert linked.size == (elsewhere / "extra" / "img_000.jpg").stat().st_size
    assert [(s.path, s.reason) for s in scan.skipped] == [("dogs/broken.jpg", "broken link or not a regular file")]


@needs_symlinks
def test_folder_links_never_loop_or_duplicate(make_image_folder, tmp_path):
    root = make_image_folder({"a": 2, "b": 2})
    os.symlink(root / "a", root / "a" / "loop")  # a → itself
    os.symlink(root, root / "b" / "to_root")  # b → the whole data set
    os.symlink(root / "a", root / "b" / "to_a")  # into another class
    outside = make_image_folder({"more": 2}, name="outside")
    os.symlink(outside / "more", root / "b" / "outside")
    os.symlink(outside, outside / "more" / "back_up")  # a loop outside the root
    scan = scan_folder(root)
    assert scan.class_counts() == {"a": 2, "b": 4}
    assert {r.id for r in scan.records if r.class_name == "b"} == {"b/img_000.jpg", "b/img_001.jpg", "b/outside/img_000.jpg", "b/outside/img_001.jpg"}


def test_sample_data_scans_as_ten_classes_of_twenty():
    scan = scan_folder(sample_data_dir())
    assert len(scan.classes) == 10 and set(scan.class_counts().values()) == {20}
    assert scan.skipped == [] and scan.warnings == []
