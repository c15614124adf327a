"""Random offline triplets: (anchor, random positive, random negative) by index."""

from __future__ import annotations

from typing import Sequence

import torch
from torch.utils.data import Dataset

from ..errors import DatasetError


def sample_random_triplets(labels: Sequence[int] | torch.Tensor, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(n, 3) LongTensor of (anchor, positive, negative) indices into `labels`."""
    labels = torch.as_tensor(labels, dtype=torch.long).cpu()
    classes, counts = labels.unique(return_counts=True)
    anchor_classes = classes[counts >= 2]
    if len(classes) < 2 or len(anchor_classes) == 0:
        raise DatasetError("random triplets need at least two classes, one of them with two or more images")
    members = {int(c): torch.nonzero(labels == c).flatten() for c in classes}
    others = {int(c): torch.nonzero(labels != c).flatten() for c in anchor_classes}

    def pick(pool: torch.Tensor) -> int:
        return int(pool[torch.randint(len(pool), (1,), generator=generator)])

    triplets = torch.empty(n, 3, dtype=torch.long)
    for row in range(n):
        c = int(anchor_classes[torch.randint(len(anchor_classes), (1,), generator=generator)])
        same = members[c]
        a = torch.randint(len(same), (1,), generator=generator)
        # a different member of the same class: shift by 1..len-1 around the ring
        p = (a + torch.randint(1, len(same), (1,), generator=generator)) % len(same)
        triplets[row] = torch.tensor([int(same[a]), int(same[p]), pick(others[c])])
    return triplets


class RandomTripletDataset(Dataset):
    """`n_triplets` fixed random triplets, deterministic for a seed."""

    def __init__(self, labels: Sequence[int], n_triplets: int, *, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.triplets = sample_random_triplets(labels, n_triplets, generator)

    def __len__(self) -> int:
        return len(self.triplets)

    def __getitem__(self, index: int) -> tuple[int, int, int]:
        a, p, n = self.triplets[index].tolist()
        return a, p, n
