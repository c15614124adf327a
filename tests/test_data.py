"""Decoding every kind of image, scanning folders, splits and the dataset."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from retrieval_app.data import (
    BadSample,
    ImageDataset,
    collate_skip_bad,
    load_image,
    scan_folder,
    split_records,
)
from retrieval_app.errors import DatasetError, ImageDecodeError
from synthetic import write_class_folder


def as_rgb(image: Image.Image) -> np.ndarray:
    return np.asarray(load_image(image))


def test_modes_convert_to_correct_rgb(tmp_path):
    assert load_image(Image.new("L", (4, 4), 77)).getpixel((0, 0)) == (77, 77, 77)
    transparent = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    assert load_image(transparent).getpixel((0, 0)) == (255, 255, 255)  # alpha over white
    half = Image.new("RGBA", (4, 4), (0, 0, 0, 128))
    assert load_image(half).getpixel((0, 0))[0] in (126, 127)
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([200, 100, 50] * 256)
    assert load_image(palette).getpixel((0, 0)) == (200, 100, 50)
    sixteen = Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))
    sixteen.save(tmp_path / "16.png")
    assert load_image(tmp_path / "16.png").getpixel((0, 0)) == (255, 255, 255)  # scaled, not clipped
    mid = Image.fromarray(np.full((4, 4), 32896, dtype=np.uint16))
    mid.save(tmp_path / "mid.png")
    assert load_image(tmp_path / "mid.png").getpixel((0, 0))[0] in (127, 128)
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    r, g, b = load_image(tmp_path / "cmyk.jpg").getpixel((0, 0))
    assert r > 200 and g < 60 and b < 60


@pytest.mark.parametrize("suffix, mode", [(".png", "RGB"), (".bmp", "RGB"), (".webp", "RGB"), (".tif", "RGB"), (".ppm", "RGB"), (".pgm", "L"), (".gif", "P")])
def test_formats_round_trip(tmp_path, suffix, mode):
    image = Image.new("RGB", (12, 9), (0, 200, 0)).convert(mode)
    image.save(tmp_path / f"x{suffix}")
    out = load_image(tmp_path / f"x{suffix}")
    assert out.mode == "RGB" and out.size == (12, 9)


def test_first_frame_of_animated_gif(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    r, g, b = load_image(tmp_path / "a.gif").getpixel((0, 0))
    assert r > 200 and b < 60


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (255, 255, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    image.save(tmp_path / "rotated.jpg", exif=exif.tobytes())
    assert load_image(tmp_path / "rotated.jpg").size == (20, 40)


def test_draft_decoding_downscales_but_never_upscales(tmp_path):
    Image.new("RGB", (2000, 1500), (10, 120, 200)).save(tmp_path / "big.jpg")
    small = load_image(tmp_path / "big.jpg", max_side=300)
    assert max(small.size) == 300
    Image.new("RGB", (100, 80)).save(tmp_path / "tiny.jpg")
    assert load_image(tmp_path / "tiny.jpg", max_side=300).size == (100, 80)


def test_bytes_and_streams(tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (5, 5), (1, 2, 3)).save(buffer, format="PNG")
    assert load_image(buffer.getvalue()).getpixel((0, 0)) == (1, 2, 3)
    buffer.seek(0)
    assert load_image(buffer).size == (5, 5)


def write_bad_files(folder):
    good = io.BytesIO()
    Image.new("RGB", (64, 64), (9, 9, 9)).save(good, format="JPEG")
    (folder / "truncated.jpg").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("this is not an image")


@pytest.mark.parametrize("name, reason", [("truncated.jpg", "truncat"), ("empty.jpg", "empty"), ("text.jpg", "not a recognised image")])
def test_bad_files_raise_decode_errors(tmp_path, name, reason):
    write_bad_files(tmp_path)
    with pytest.raises(ImageDecodeError, match=reason):
        load_image(tmp_path / name)


def test_scan_reports_classes_ids_and_skips(tmp_path):
    root = write_class_folder(tmp_path / "data", n_classes=3, per_class=4)
    nested = root / "class_01" / "more"
    nested.mkdir()
    Image.new("RGB", (8, 8)).save(nested / "deep.PNG")
    write_bad_files(root / "class_02")
    (root / "class_00" / "notes.txt").write_text("ignored")
    (root / ".hidden").mkdir()
    Image.new("RGB", (8, 8)).save(root / "loose.jpg")
    scan = scan_folder(root)
    assert scan.classes == ["class_00", "class_01", "class_02"]
    assert scan.class_counts() == {"class_00": 4, "class_01": 5, "class_02": 4}
    assert "class_01/more/deep.PNG" in [r.id for r in scan.records]
    assert [r.id for r in scan.records] == sorted(r.id for r in scan.records)
    reasons = {s.path: s.reason for s in scan.skipped}
    assert set(reasons) == {"class_02/truncated.jpg", "class_02/empty.jpg", "class_02/text.jpg", "loose.jpg"}
    assert "class folder" in reasons["loose.jpg"]
    assert list(scan.labels()) == [scan.classes.index(r.class_name) for r in scan.records]
    assert "skipped" in scan.summary()


def test_scan_errors_say_what_is_needed(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        scan_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        scan_folder(tmp_path / "empty")
    one = write_class_folder(tmp_path / "one", n_classes=1, per_class=3)
    with pytest.raises(DatasetError, match="at least two class"):
        scan_folder(one)


def test_single_image_class_is_a_warning(tmp_path):
    root = write_class_folder(tmp_path / "d", n_classes=2, per_class=3)
    single = root / "lonely"
    single.mkdir()
    Image.new("RGB", (8, 8)).save(single / "x.jpg")
    assert any("lonely" in w and "anchor" in w for w in scan_folder(root).warnings)


def test_split_is_deterministic_disjoint_and_holds_out_classes(tmp_path):
    root = write_class_folder(tmp_path / "d", n_classes=8, per_class=10)
    records = scan_folder(root).records
    split = split_records(records, seed=1)
    parts = [set(r.id for r in part) for part in (split.train, split.val_seen, split.val_unseen)]
    assert sum(len(p) for p in parts) == len(records) == len(set.union(*parts))
    unseen = {r.class_name for r in split.val_unseen}
    assert len(unseen) == 2 and not unseen & {r.class_name for r in split.train}
    assert {r.class_name for r in split.val_seen} <= {r.class_name for r in split.train}
    assert split_records(records, seed=1) == split
    assert split_records(records, seed=2) != split
    assert split_records(records, unseen_class_fraction=0).val_unseen == []


def test_tiny_classes_keep_two_training_images(tmp_path):
    root = write_class_folder(tmp_path / "d", n_classes=3, per_class=3)
    split = split_records(scan_folder(root).records, val_fraction=0.5)
    assert split.val_seen == [] and len(split.train) == 9  # < 4 images: nothing held out


def test_dataset_turns_bad_files_into_reports_in_workers(tmp_path):
    root = write_class_folder(tmp_path / "d", n_classes=2, per_class=3)
    records = scan_folder(root).records
    write_bad_files(root / "class_00")
    bad = records[0].__class__(id="class_00/text.jpg", path=root / "class_00" / "text.jpg", label=0, class_name="class_00", size=1, mtime_ns=0)
    dataset = ImageDataset([*records, bad], lambda image: torch.zeros(3, 4, 4))
    assert isinstance(dataset[len(records)], BadSample)
    loader = DataLoader(dataset, batch_size=4, num_workers=1, collate_fn=collate_skip_bad)
    batches = list(loader)
    assert sum(len(b.indices) for b in batches) == len(records)
    failures = [f for b in batches for f in b.failures]
    assert len(failures) == 1 and failures[0][0] == len(records) and "not a recognised image" in failures[0][2]
