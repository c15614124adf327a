"""P classes × K images per batch, so every online-mining batch has valid triplets."""

from __future__ import annotations

from collections import defaultdict
from typing import Iterator, Sequence

import numpy as np

from ..errors import DatasetError


class PKSampler:
    """A batch sampler: yields lists of dataset indices, P classes × K images each.

    Only classes with at least two items are drawn (an anchor needs a positive). A class
    with fewer than K items repeats some of them; otherwise a batch never holds the same
    index twice. Each epoch reshuffles, deterministically from `seed` and the epoch."""

    def __init__(self, labels: Sequence[int], p: int, k: int, *, seed: int = 0, batches_per_epoch: int | None = None) -> None:
        by_class: dict[int, list[int]] = defaultdict(list)
        for index, label in enumerate(labels):
            by_class[int(label)].append(index)
        self.classes = sorted(c for c, members in by_class.items() if len(members) >= 2)
        if len(self.classes) < 2:
            raise DatasetError("online mining needs at least two classes with two or more images each")
        self.by_class = {c: np.asarray(by_class[c]) for c in self.classes}
        self.p = min(max(2, p), len(self.classes))
        self.k = max(2, k)
        n_items = sum(len(m) for m in self.by_class.values())
        self.batches_per_epoch = batches_per_epoch or max(1, n_items // (self.p * self.k))
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        for _ in range(self.batches_per_epoch):
            chosen = rng.choice(self.classes, size=self.p, replace=False)
            batch: list[int] = []
            for c in chosen:
                members = self.by_class[int(c)]
                batch.extend(rng.choice(members, size=self.k, replace=len(members) < self.k).tolist())
            yield batch
