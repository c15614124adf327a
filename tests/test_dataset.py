"""ImageDataset and collate_skip_bad: bad files become reports, also in worker processes."""

from __future__ import annotations

import dataclasses
import io
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms

from retrieval_app.data import BadSample, Batch, ImageDataset, collate_skip_bad, scan_folder

TO_TENSOR = transforms.Compose([transforms.Resize((8, 8)), transforms.ToTensor()])


def size_as_tensor(image: Image.Image) -> torch.Tensor:
    """Module-level (so it pickles): the decoded size, to see max_side at work."""
    return torch.tensor(image.size, dtype=torch.float32)


def fails_on_wide(image: Image.Image) -> torch.Tensor:
    if image.width > image.height:
        raise RuntimeError("wide images are not welcome")
    return TO_TENSOR(image)


def add_bad_files(scan, folder_name: str = "a") -> tuple[list, dict[str, str]]:
    """The scan's records plus records for broken files (as if they broke after the scan)."""
    folder = scan.root / folder_name
    jpeg = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(jpeg, format="JPEG")
    contents = {"truncated.jpg": jpeg.getvalue()[: len(jpeg.getvalue()) // 2], "empty.jpg": b"", "text.jpg": b"not an image"}
    reasons = {"truncated.jpg": "truncated", "empty.jpg": "empty", "text.jpg": "not a recognised image", "gone.jpg": "not found"}
    for name, data in contents.items():
        (folder / name).write_bytes(data)
    template = scan.records[0]
    bad = [dataclasses.replace(template, id=f"{folder_name}/{name}", path=folder / name) for name in reasons]
    return [*scan.records, *bad], reasons


def test_items_are_tensor_label_index(make_image_folder):
    scan = scan_folder(make_image_folder({"a": 2, "b": 3}, size=(40, 30)))
    dataset = ImageDataset(scan.records, TO_TENSOR)
    assert len(dataset) == 5
    for index in range(len(dataset)):
        image, label, item_index = dataset[index]
        assert image.shape == (3, 8, 8) and image.dtype == torch.float32
        assert label == scan.records[index].label and item_index == index


def test_max_side_reaches_the_transform(make_image_folder):
    scan = scan_folder(make_image_folder({"a": 2, "b": 2}, size=(64, 48)))
    assert ImageDataset(scan.records, size_as_tensor)[0][0].tolist() == [64, 48]
    assert ImageDataset(scan.records, size_as_tensor, max_side=32)[0][0].tolist() == [32, 24]


def test_bad_files_become_bad_samples(make_image_folder):
    scan = scan_folder(make_image_folder({"a": 2, "b": 2}))
    records, reasons = add_bad_files(scan)
    dataset = ImageDataset(records, TO_TENSOR)
    for index in range(len(scan.records), len(records)):
        item = dataset[index]
        assert isinstance(item, BadSample) and item.index == index
        assert item.path == str(records[index].path)
        assert reasons[records[index].path.name] in item.reason


def test_transform_failures_become_bad_samples(make_image_folder):
    root = make_image_folder({"a": 1, "b": 1}, size=(16, 16))
    Image.new("RGB", (30, 10)).save(root / "a" / "wide.png")
    dataset = ImageDataset(scan_folder(root).records, fails_on_wide)
    items = [dataset[i] for i in range(len(dataset))]
    bad = [item for item in items if isinstance(item, BadSample)]
    assert len(bad) == 1 and bad[0].path.endswith("wide.png") and "wide images are not welcome" in bad[0].reason


def test_collate_stacks_good_items_and_reports_bad_ones():
    good = [(torch.full((3, 2, 2), float(i)), i % 2, i) for i in range(3)]
    bad = BadSample(7, "/x/bad.jpg", "file is truncated")
    batch = collate_skip_bad([good[0], bad, good[1], good[2]])
    assert isinstance(batch, Batch)
    assert batch.images.shape == (3, 3, 2, 2) and batch.images[2, 0, 0, 0] == 2.0
    assert batch.labels.dtype == torch.long and batch.labels.tolist() == [0, 1, 0]
    assert batch.indices.dtype == torch.long and batch.indices.tolist() == [0, 1, 2]
    assert batch.failures == [(7, "/x/bad.jpg", "file is truncated")]


def test_collate_of_only_bad_items_is_an_empty_batch():
    batch = collate_skip_bad([BadSample(0, "a", "r"), BadSample(1, "b", "s")])
    assert batch.images.shape[0] == 0 and len(batch.labels) == 0 and len(batch.indices) == 0
    assert batch.labels.dtype == torch.long and batch.indices.dtype == torch.long
    assert [f[0] for f in batch.failures] == [0, 1]


def test_dataset_pickles(make_image_folder):
    scan = scan_folder(make_image_folder({"a": 2, "b": 2}))
    copy = pickle.loads(pickle.dumps(ImageDataset(scan.records, TO_TENSOR, max_side=16)))
    assert copy.records == scan.records and copy.max_side == 16
    assert torch.equal(copy[1][0], ImageDataset(scan.records, TO_TENSOR, max_side=16)[1][0])


@pytest.mark.parametrize("workers", [0, 2])
def test_dataloader_survives_bad_files_in_workers(make_image_folder, workers):
    scan = scan_folder(make_image_folder({"a": 3, "b": 4}))
    records, reasons = add_bad_files(scan)
    torch.manual_seed(0)
    loader = DataLoader(ImageDataset(records, TO_TENSOR), batch_size=3, shuffle=True, num_workers=workers, collate_fn=collate_skip_bad)
    batches = list(loader)
    seen = sorted(i for b in batches for i in b.indices.tolist())
    assert seen == list(range(len(scan.records)))
    for batch in batches:
        assert batch.labels.tolist() == [records[i].label for i in batch.indices.tolist()]
        assert batch.images.shape[0] == len(batch.indices)
    failures = {records[index].path.name: reason for b in batches for index, _path, reason in b.failures}
    assert set(failures) == set(reasons)
    assert all(reasons[name] in reason for name, reason in failures.items())
