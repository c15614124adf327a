"""Random offline triplets (anchor, positive, negative) as indices into a labelled set:
the anchor from a class with at least two items, a different item of its class as the
positive, any item of another class as the negative."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch.utils.data import Dataset

from ..errors import DatasetError


class _ClassBlocks:
    """Items sorted by label, so each class is one contiguous block [start, start + size):
    drawing "another member of my class" or "anyone outside my class" is then arithmetic
    on positions, for all triplets at once."""

    def __init__(self, labels: torch.Tensor) -> None:
        self.order = torch.argsort(labels, stable=True)  # position → original index
        _, inverse, counts = torch.unique(labels[self.order], return_inverse=True, return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
        self.n_classes = len(counts)
        self.start = starts[inverse]  # per position: where its class block starts
        self.size = counts[inverse]  # per position: its class size


def _uniform_below(bound: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    """One uniform integer in [0, bound_i) for every entry of `bound` (all ≥ 1)."""
    u = torch.rand(bound.shape, generator=generator, dtype=torch.float64)
    return torch.minimum((u * bound).long(), bound - 1)  # the min guards u·b rounding up to b


def sample_random_triplets(labels: Sequence[int] | torch.Tensor, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """(n, 3) LongTensor of (anchor, positive, negative) indices into `labels`.

    Anchors are uniform over the items whose class has at least two items; the positive is
    uniform over the anchor's other class members, the negative uniform over all items of
    other classes. Deterministic for a seeded `generator`. Raises `DatasetError` when there
    are fewer than two classes or no class with two items."""
    if n < 0:
        raise ValueError(f"the number of triplets must not be negative, got {n}")
    blocks = _ClassBlocks(torch.as_tensor(labels, dtype=torch.long).flatten().cpu())
    anchor_positions = torch.nonzero(blocks.size >= 2).flatten()
    if blocks.n_classes < 2 or len(anchor_positions) == 0:
        raise DatasetError("random triplets need at least two classes, and at least one class with two or more images")
    anchor = anchor_positions[_uniform_below(torch.full((n,), len(anchor_positions)), generator)]
    start, size = blocks.start[anchor], blocks.size[anchor]
    # positive: step 1 … size−1 places further round the anchor's class block (never itself)
    positive = start + (anchor - start + 1 + _uniform_below(size - 1, generator)) % size
    # negative: a position among the len − size outside the block, skipping over the block
    outside = _uniform_below(len(blocks.order) - size, generator)
    negative = torch.where(outside < start, outside, outside + size)
    return blocks.order[torch.stack([anchor, positive, negative], dim=1)]


class RandomTripletDataset(Dataset):
    """`n_triplets` random triplets, fixed at construction and deterministic for `seed`;
    item i is the tuple ``(anchor_idx, positive_idx, negative_idx)`` of Python ints."""

    def __init__(self, labels: Sequence[int] | torch.Tensor, n_triplets: int, *, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.triplets = sample_random_triplets(labels, n_triplets, generator)

    def __len__(self) -> int:
        return len(self.triplets)

    def __getitem__(self, index: int) -> tuple[int, int, int]:
        anchor, positive, negative = self.triplets[index].tolist()
        return anchor, positive, negative
