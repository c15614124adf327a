"""Records → tensors for a DataLoader. A file that cannot be decoded becomes a
`BadSample` (also inside worker processes) and is dropped by `collate_skip_bad`, so one
corrupt photo never stops an embedding run or a training epoch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

import torch
from torch.utils.data import Dataset

from ..errors import ImageDecodeError
from .decode import load_image
from .scan import ImageRecord


@dataclass(frozen=True)
class BadSample:
    index: int
    path: str
    reason: str


class Batch(NamedTuple):
    images: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor
    failures: list[tuple[int, str, str]]


class ImageDataset(Dataset):
    def __init__(self, records: Sequence[ImageRecord], transform: Callable, max_side: int | None = None) -> None:
        self.records = list(records)
        self.transform = transform
        self.max_side = max_side

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        record = self.records[index]
        try:
            image = load_image(record.path, max_side=self.max_side)
            return self.transform(image), record.label, index
        except ImageDecodeError as exc:
            return BadSample(index, str(record.path), str(exc).split(": ", 1)[-1])
        except Exception as exc:  # a transform choking on an odd image is still one bad file
            return BadSample(index, str(record.path), f"{type(exc).__name__}: {exc}")


def collate_skip_bad(batch: list) -> Batch:
    good = [item for item in batch if not isinstance(item, BadSample)]
    failures = [(item.index, item.path, item.reason) for item in batch if isinstance(item, BadSample)]
    if not good:
        return Batch(torch.empty(0), torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long), failures)
    images = torch.stack([item[0] for item in good])
    labels = torch.as_tensor([item[1] for item in good], dtype=torch.long)
    indices = torch.as_tensor([item[2] for item in good], dtype=torch.long)
    return Batch(images, labels, indices, failures)
