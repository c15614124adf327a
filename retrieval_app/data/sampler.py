"""P classes × K images per batch, so that every online-mining batch holds valid triplets
(each drawn class gives anchors their positives, the other classes their negatives)."""

from __future__ import annotations

from collections import Counter
from typing import Iterator, Sequence

import numpy as np

from ..errors import DatasetError


def as_label_array(labels: Sequence[int]) -> np.ndarray:
    """Labels (list, NumPy array or torch tensor) as a 1-D int64 array."""
    if hasattr(labels, "detach"):  # a torch tensor, possibly on a GPU
        labels = labels.detach().cpu().numpy()
    array = np.asarray(labels)
    if array.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {array.shape}")
    return array.astype(np.int64, copy=False)


class _ShuffledCycle:
    """Hands out items in shuffled order and reshuffles once all are used, so every item
    is used once before any is used twice. Within one `take`, an item repeats only when
    more items are asked for than there are."""

    def __init__(self, items: np.ndarray, rng: np.random.Generator) -> None:
        self.items = items
        self.rng = rng
        self.queue: list[int] = []  # next item at the end

    def take(self, n: int) -> list[int]:
        if len(self.queue) >= n:  # the usual case, without the loop below (the same items in the same order)
            taken = self.queue[-n:][::-1] if n else []
            del self.queue[len(self.queue) - n:]
            return taken
        taken: list[int] = []
        while len(taken) < n:
            if not self.queue:
                self.queue = self._fresh_queue(Counter(taken))
            taken.append(self.queue.pop())
        return taken

    def _fresh_queue(self, used: Counter) -> list[int]:
        order = self.rng.permutation(self.items).tolist()
        if not used:  # a take that starts on a fresh queue: nothing to order (a tiny step's cost)
            return order
        # Items the current take has used most go first in the list, i.e. are handed out
        # last: no repeat before every item is in, and repeats spread evenly.
        return sorted(order, key=lambda item: -used[item])


class PKSampler:
    """Batch sampler: each batch is a list of P·K dataset indices, K from each of P classes.

    Only classes with at least two items are drawn (an anchor needs a positive); P is capped
    at the number of such classes. Classes and, within a class, items are drawn from
    shuffled cycles, so an epoch spreads evenly over the data, and a batch never holds the
    same index twice unless its class has fewer than K items (then all of them appear and
    the rest of the K slots repeat as few as possible). Each epoch reshuffles,
    deterministically from `seed` and the epoch number (`set_epoch`, or counted up on every
    `iter`). Use as ``DataLoader(dataset, batch_sampler=PKSampler(...))``.

    Several processes (`rank`, `world_size`): all draw the same global sequence of
    P×K batches (same seed, same epoch) and rank r keeps batches r, r + world_size, …;
    so the ranks' batches at one step are consecutive batches of that sequence, never
    the same batch twice, and an epoch is `batches_per_epoch` batches in all (rounded
    down to a multiple of `world_size`, at least one per rank)."""

    def __init__(self, labels: Sequence[int], p: int, k: int, *, seed: int = 0, batches_per_epoch: int | None = None,
                 rank: int = 0, world_size: int = 1) -> None:
        if p < 2 or k < 2:
            raise ValueError(f"a P×K batch needs p ≥ 2 classes and k ≥ 2 images per class for triplets, got p={p}, k={k}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        if batches_per_epoch is not None and batches_per_epoch < 1:
            raise ValueError(f"batches_per_epoch must be at least 1, got {batches_per_epoch}")
        label_array = as_label_array(labels)
        classes, counts = np.unique(label_array, return_counts=True)
        self.classes = classes[counts >= 2]
        if len(self.classes) < 2:
            raise DatasetError("online triplet mining needs at least two classes with two or more images each")
        self.members = {int(c): np.flatnonzero(label_array == c) for c in self.classes}
        self.p = min(p, len(self.classes))
        self.k = k
        n_items = sum(len(m) for m in self.members.values())
        self.global_batches = batches_per_epoch or max(1, n_items // (self.p * self.k))
        self.rank, self.world_size = rank, world_size
        self.batches_per_epoch = max(1, self.global_batches // world_size)  # this rank's
        self.seed = seed
        self.epoch = 0

    @property
    def batch_size(self) -> int:
        return self.p * self.k

    def set_epoch(self, epoch: int) -> None:
        """Make the next `iter` yield the batches of epoch `epoch`."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self) -> Iterator[list[int]]:
        # Seeded and counted here, not lazily inside the generator, so that `iter()` alone
        # fixes which epoch the batches belong to.
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        return self._batches(rng)

    def _batches(self, rng: np.random.Generator) -> Iterator[list[int]]:
        class_cycle = _ShuffledCycle(self.classes, rng)
        item_cycles = {c: _ShuffledCycle(m, rng) for c, m in self.members.items()}
        # Every rank draws the whole global sequence (index shuffling: cheap) and keeps its turns.
        for number in range(self.batches_per_epoch * self.world_size):
            batch: list[int] = []
            for c in class_cycle.take(self.p):
                batch.extend(item_cycles[c].take(self.k))
            if number % self.world_size == self.rank:
                yield batch
