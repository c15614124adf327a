"""P×K batches and random offline triplets."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from retrieval_app.data.sampler import PKSampler
from retrieval_app.data.triplets import RandomTripletDataset, sample_random_triplets
from retrieval_app.errors import DatasetError

LABELS = [0] * 10 + [1] * 6 + [2] * 3 + [3] * 1 + [4] * 8


def test_every_pk_batch_has_valid_triplets():
    sampler = PKSampler(LABELS, p=3, k=4, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) == len(LABELS) // 12
    for batch in batches:
        counts = Counter(LABELS[i] for i in batch)
        assert len(counts) == 3 and all(v == 4 for v in counts.values())
        assert 3 not in counts  # a single-image class is never drawn
        for label in counts:
            members = [i for i in batch if LABELS[i] == label]
            distinct = len(set(members))
            assert distinct >= 2
            if LABELS.count(label) >= 4:
                assert distinct == 4  # no repeats when the class is big enough


def test_pk_sampler_is_deterministic_and_reshuffles():
    a, b = PKSampler(LABELS, 2, 2, seed=3, batches_per_epoch=5), PKSampler(LABELS, 2, 2, seed=3, batches_per_epoch=5)
    first = list(a)
    assert first == list(b)
    assert list(a) != first  # next epoch differs
    a.set_epoch(0)
    assert list(a) == first


def test_pk_sampler_needs_two_usable_classes():
    with pytest.raises(DatasetError):
        PKSampler([0, 0, 1], 2, 2)


def test_random_triplets_respect_labels():
    labels = torch.tensor(LABELS)
    triplets = sample_random_triplets(labels, 500, torch.Generator().manual_seed(0))
    a, p, n = triplets.t()
    assert bool((a != p).all())
    assert bool((labels[a] == labels[p]).all()) and bool((labels[a] != labels[n]).all())
    assert 3 not in labels[a].tolist()  # a class of one cannot anchor


def test_random_triplet_dataset_is_deterministic():
    first, second = RandomTripletDataset(LABELS, 20, seed=5), RandomTripletDataset(LABELS, 20, seed=5)
    assert [first[i] for i in range(20)] == [second[i] for i in range(20)]
    assert [first[i] for i in range(20)] != [RandomTripletDataset(LABELS, 20, seed=6)[i] for i in range(20)]
    with pytest.raises(DatasetError):
        RandomTripletDataset([0, 1, 2], 5)
