"""Records → tensors for a DataLoader.

A file that cannot be decoded (or that the transform chokes on) becomes a `BadSample`
instead of an exception, also inside worker processes, and `collate_skip_bad` drops it
from the batch and reports it: one corrupt photo never stops an embedding run or a
training epoch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence, Union

import torch
from torch.utils.data import Dataset

from ..errors import ImageDecodeError
from .decode import load_image
from .scan import ImageRecord


@dataclass(frozen=True)
class BadSample:
    """An item that could not be produced: its dataset index, file path and why."""

    index: int
    path: str
    reason: str


class Batch(NamedTuple):
    """A collated batch: `images` (B, ...) (0 rows when every item failed), `labels` and
    `indices` (int64, B), and `failures` as (index, path, reason) tuples."""

    images: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor
    failures: list[tuple[int, str, str]]


Item = Union[tuple[torch.Tensor, int, int], BadSample]


class ImageDataset(Dataset):
    """Decodes `records[i]` with `load_image(max_side=...)` and applies `transform` (a PIL
    image → tensor callable; must pickle for worker processes). Item: (tensor, label,
    index), or a `BadSample`."""

    def __init__(self, records: Sequence[ImageRecord], transform: Callable, max_side: int | None = None) -> None:
        self.records = list(records)
        self.transform = transform
        self.max_side = max_side

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Item:
        record = self.records[index]
        try:
            image = load_image(record.path, max_side=self.max_side)
        except ImageDecodeError as exc:
            return BadSample(index, str(record.path), getattr(exc, "reason", str(exc)))
        try:
            return self.transform(image), record.label, index
        except Exception as exc:  # a transform failing on one odd image is still one bad file
            return BadSample(index, str(record.path), f"transform failed ({type(exc).__name__}: {exc})")


def collate_skip_bad(batch: Sequence[Item]) -> Batch:
    """Stack the good items of `batch`; report the `BadSample`s in `failures`."""
    good = [item for item in batch if not isinstance(item, BadSample)]
    failures = [(item.index, item.path, item.reason) for item in batch if isinstance(item, BadSample)]
    if not good:
        empty = torch.empty(0, dtype=torch.long)
        return Batch(torch.empty(0), empty, empty.clone(), failures)
    images = torch.stack([item[0] for item in good])
    labels = torch.as_tensor([int(item[1]) for item in good], dtype=torch.long)
    indices = torch.as_tensor([int(item[2]) for item in good], dtype=torch.long)
    return Batch(images, labels, indices, failures)
