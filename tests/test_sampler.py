"""P×K batch sampler and random offline triplets."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from retrieval_app.data.sampler import PKSampler
from retrieval_app.data.triplets import RandomTripletDataset, sample_random_triplets
from retrieval_app.errors import DatasetError
from retrieval_app.losses import OnlineTripletLoss

# class sizes 10, 6, 3, 1, 8, 2: one singleton (never drawn), two classes smaller than K=4
LABELS = [0] * 10 + [1] * 6 + [2] * 3 + [3] * 1 + [4] * 8 + [5] * 2
ELIGIBLE_ITEMS = len(LABELS) - 1


def class_members(batch, labels=LABELS):
    members: dict[int, list[int]] = {}
    for index in batch:
        members.setdefault(labels[index], []).append(index)
    return members


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("p,k", [(2, 2), (3, 4), (5, 3), (4, 8)])
def test_every_batch_is_p_classes_of_k_with_valid_triplets(seed, p, k):
    sampler = PKSampler(LABELS, p, k, seed=seed, batches_per_epoch=12)
    for _ in range(2):  # two epochs
        for batch in sampler:
            members = class_members(batch)
            assert len(batch) == p * k and len(members) == p
            assert 3 not in members  # the single-image class is never drawn
            for label, indices in members.items():
                assert len(indices) == k
                # all distinct when the class is big enough, else every item of the class
                assert len(set(indices)) == min(k, LABELS.count(label)) >= 2


@pytest.mark.parametrize("size", [2, 3, 5])
@pytest.mark.parametrize("k", [6, 7, 11])
def test_small_classes_repeat_items_as_evenly_as_possible(size, k):
    labels = [0] * size + [1] * 20
    for batch in PKSampler(labels, p=2, k=k, seed=size, batches_per_epoch=10):
        counts = Counter(class_members(batch, labels)[0])
        assert len(counts) == size  # every item of the small class is in
        assert max(counts.values()) - min(counts.values()) <= 1


def test_epoch_spreads_evenly_over_classes_and_items():
    labels = [c for c in range(6) for _ in range(8)]  # 6 classes × 8
    sampler = PKSampler(labels, p=3, k=4, seed=2)
    assert len(sampler) == 48 // 12
    batches = list(sampler)
    assert all(len(set(b)) == 12 for b in batches)
    # 4 batches × 3 classes = 12 class slots: each class exactly twice, each item once
    class_slots = Counter(labels[batch[start]] for batch in batches for start in range(0, 12, 4))
    assert class_slots == Counter({c: 2 for c in range(6)})
    assert sorted(i for b in batches for i in b) == list(range(48))


def test_p_is_capped_and_length_defaults_to_items_over_batch_size():
    sampler = PKSampler(LABELS, p=50, k=2)
    assert sampler.p == 5 and sampler.batch_size == 10
    assert len(sampler) == ELIGIBLE_ITEMS // 10 == len(list(sampler))
    assert len(PKSampler(LABELS, 5, 8)) == 1  # at least one batch
    assert len(PKSampler(LABELS, 2, 2, batches_per_epoch=7)) == 7


def test_deterministic_by_seed_and_reshuffled_each_epoch():
    a, b = PKSampler(LABELS, 3, 3, seed=3, batches_per_epoch=6), PKSampler(LABELS, 3, 3, seed=3, batches_per_epoch=6)
    first = list(a)
    assert first == list(b)
    second = list(a)
    assert second != first  # the internal counter moved to epoch 1
    a.set_epoch(0)
    assert list(a) == first
    b.set_epoch(1)
    assert list(b) == second
    assert list(PKSampler(LABELS, 3, 3, seed=4, batches_per_epoch=6)) != first


def test_accepts_tensors_and_arrays_and_feeds_a_dataloader():
    labels = torch.tensor(LABELS)
    sampler = PKSampler(labels, 3, 2, seed=1)
    assert list(sampler) == list(PKSampler(np.array(LABELS), 3, 2, seed=1))
    dataset = TensorDataset(torch.randn(len(LABELS), 4), labels)
    loader = DataLoader(dataset, batch_sampler=PKSampler(labels, 3, 2, seed=1))
    for embeddings, batch_labels in loader:
        assert OnlineTripletLoss("batch_hard")(embeddings, batch_labels).n_triplets == 6


def test_bad_arguments_are_refused():
    with pytest.raises(DatasetError, match="two classes"):
        PKSampler([0, 0, 1], 2, 2)  # only one class has two images
    with pytest.raises(DatasetError):
        PKSampler([0, 1, 2, 3], 2, 2)
    with pytest.raises(ValueError, match="k ≥ 2"):
        PKSampler(LABELS, 3, 1)
    with pytest.raises(ValueError, match="batches_per_epoch"):
        PKSampler(LABELS, 3, 2, batches_per_epoch=0)


# ---------------------------------------------------------------- random offline triplets
@pytest.mark.parametrize("seed", range(3))
def test_random_triplets_respect_labels(seed):
    labels = torch.tensor(LABELS)
    triplets = sample_random_triplets(labels, 2000, torch.Generator().manual_seed(seed))
    assert triplets.shape == (2000, 3) and triplets.dtype == torch.long
    a, p, n = triplets.t()
    assert bool((a != p).all())
    assert bool((labels[a] == labels[p]).all()) and bool((labels[a] != labels[n]).all())
    # every multi-image class anchors, the singleton never does but can be a negative
    assert set(labels[a].tolist()) == {0, 1, 2, 4, 5}
    assert 3 in labels[n].tolist()
    # anchors are uniform over the eligible images: each of the 29 about 2000/29 ≈ 69 times
    counts = torch.bincount(a, minlength=len(LABELS))
    assert counts[19] == 0 and counts.max() < 2 * 2000 / ELIGIBLE_ITEMS


def test_positives_cover_every_other_member_of_the_class():
    labels = [7, 7, 7, 9, 9]
    triplets = sample_random_triplets(labels, 600, torch.Generator().manual_seed(0))
    pairs = {(a, p) for a, p, _ in triplets.tolist()}
    expected = {(a, p) for a in range(5) for p in range(5) if a != p and labels[a] == labels[p]}
    assert pairs == expected


def test_random_triplet_dataset_is_deterministic():
    first, again = RandomTripletDataset(LABELS, 50, seed=5), RandomTripletDataset(LABELS, 50, seed=5)
    assert len(first) == 50
    items = [first[i] for i in range(50)]
    assert items == [again[i] for i in range(50)]
    assert all(isinstance(v, int) for item in items for v in item)
    assert items != [RandomTripletDataset(LABELS, 50, seed=6)[i] for i in range(50)]
    for a, p, n in items:
        assert a != p and LABELS[a] == LABELS[p] != LABELS[n]


def test_random_triplets_need_two_classes_and_a_pair():
    with pytest.raises(DatasetError, match="two classes"):
        RandomTripletDataset([0, 1, 2], 5)  # no class with two images
    with pytest.raises(DatasetError, match="two classes"):
        RandomTripletDataset([4, 4, 4], 5)  # one class only
    assert sample_random_triplets([0, 0, 1], 0).shape == (0, 3)


# ------------------------------------------------------------- several ranks
@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_deal_out_one_global_sequence(world_size):
    single = list(PKSampler(LABELS, 3, 2, seed=4, batches_per_epoch=12))
    ranks = [PKSampler(LABELS, 3, 2, seed=4, batches_per_epoch=12, rank=r, world_size=world_size) for r in range(world_size)]
    per_rank = [list(sampler) for sampler in ranks]
    assert [len(sampler) for sampler in ranks] == [12 // world_size] * world_size
    for r, batches in enumerate(per_rank):
        assert batches == single[r::world_size]  # turns of the single process's sequence
    # covering: together the ranks draw exactly the single process's epoch
    assert sorted(map(tuple, (b for batches in per_rank for b in batches))) == sorted(map(tuple, single))
    # distinct: at every step the ranks hold different batches of that sequence
    for step in range(12 // world_size):
        assert len({tuple(batches[step]) for batches in per_rank}) == world_size


def test_rank_batches_are_deterministic_per_epoch():
    def epoch_of(rank, epoch):
        sampler = PKSampler(LABELS, 3, 2, seed=9, batches_per_epoch=8, rank=rank, world_size=2)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert epoch_of(1, 3) == epoch_of(1, 3)
    assert epoch_of(1, 3) != epoch_of(1, 4)
    assert epoch_of(0, 3) != epoch_of(1, 3)


def test_every_rank_gets_a_batch_even_when_the_epoch_is_short():
    samplers = [PKSampler(LABELS, 2, 2, seed=0, batches_per_epoch=1, rank=r, world_size=4) for r in range(4)]
    assert [len(list(s)) for s in samplers] == [1, 1, 1, 1]
    with pytest.raises(ValueError, match="rank"):
        PKSampler(LABELS, 2, 2, rank=2, world_size=2)


def test_a_shuffled_cycle_hands_out_items_as_one_pop_at_a_time_would():
    from retrieval_app.data.sampler import _ShuffledCycle

    class PopByPop(_ShuffledCycle):  # the cycle's rule written plainly: one item per pop
        def take(self, n):
            taken = []
            while len(taken) < n:
                if not self.queue:
                    self.queue = self._fresh_queue(Counter(taken))
                taken.append(self.queue.pop())
            return taken

    items = np.arange(7)
    fast, plain = _ShuffledCycle(items, np.random.default_rng(3)), PopByPop(items, np.random.default_rng(3))
    sizes = [3, 4, 0, 2, 9, 1, 5, 7, 16, 2]  # within a queue, across its end, beyond all items
    assert [fast.take(n) for n in sizes] == [plain.take(n) for n in sizes]
