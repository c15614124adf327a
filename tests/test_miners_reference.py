"""The loss in pytorch-metric-learning's three parts: miners with a reference set, a loss
that returns per-triplet values, reducers, and mining statistics from a miner's output.
Checked against PML and brute-force loops."""

from __future__ import annotations

import itertools

import pytest
import torch
from pytorch_metric_learning import distances as pml_distances
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners
from pytorch_metric_learning import reducers as pml_reducers
from pytorch_metric_learning.utils import loss_and_miner_utils as pml_utils

from retrieval_app import choices
from retrieval_app.errors import ModelError
from retrieval_app.losses import (
    MINERS,
    REDUCERS,
    TripletLoss,
    TripletMiner,
    margin_violation,
    triplet_margin_loss,
    triplet_statistics,
)
from retrieval_app.losses.statistics import TripletStatistics

PML_DISTANCE = {"euclidean": lambda: pml_distances.LpDistance(normalize_embeddings=False), "cosine": lambda: pml_distances.CosineSimilarity()}


def batch_and_reference(seed: int):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (10,), generator=g)
    ref_labels = torch.randint(0, 4, (14,), generator=g)
    return torch.randn(10, 5, generator=g, dtype=torch.float64), labels, torch.randn(14, 5, generator=g, dtype=torch.float64), ref_labels


def pml_miner(mining: str, margin: float, distance):
    """PML's counterpart of each strategy. Its TripletMarginMiner("all") keeps only the
    triplets with a loss (not easy), so batch-all is PML's list of all valid triplets."""
    if mining == "batch_hard":
        return pml_miners.BatchHardMiner(distance=distance)
    if mining == "batch_all":
        return lambda embeddings, labels, ref_emb=None, ref_labels=None: pml_utils.get_all_triplets_indices(labels, ref_labels)
    return pml_miners.TripletMarginMiner(margin=margin, type_of_triplets="semihard", distance=distance)


def as_set(triplets) -> set:
    return set(zip(*(t.tolist() for t in triplets)))


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("mining", ["batch_all", "batch_hard", "semi_hard"])
@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_mining_against_a_reference_set_matches_pml(seed, mining, distance):
    embeddings, labels, ref_emb, ref_labels = batch_and_reference(seed)
    reference = pml_miner(mining, 0.3, PML_DISTANCE[distance]())(embeddings, labels, ref_emb, ref_labels)
    ours = TripletMiner(mining, 0.3, distance)(embeddings, labels, ref_emb, ref_labels)
    assert as_set(ours) == as_set(reference)
    for reduction, reducer in (("mean", pml_reducers.AvgNonZeroReducer()), ("sum", pml_reducers.SumReducer())):
        expected = pml_losses.TripletMarginLoss(margin=0.3, distance=PML_DISTANCE[distance](), reducer=reducer)(embeddings, labels, reference, ref_emb, ref_labels)
        out = TripletLoss(mining, margin=0.3, distance=distance, reduction=reduction)(embeddings, labels, ref_emb, ref_labels)
        assert out.loss.item() == pytest.approx(expected.item(), rel=1e-9, abs=1e-9)


def test_with_a_reference_set_an_anchor_may_pair_with_its_own_row_number():
    # The batch and the reference set are different items: row i of each are not the same
    # image, so (i, i, k) is a valid triplet there (and never without a reference set).
    labels = torch.tensor([0, 1])
    triplets = TripletMiner("batch_all")(torch.zeros(2, 2), labels, torch.zeros(3, 2), torch.tensor([0, 1, 1]))
    assert as_set(triplets) == {(0, 0, 1), (0, 0, 2), (1, 1, 0), (1, 2, 0)}
    assert as_set(TripletMiner("batch_all")(torch.zeros(3, 2), torch.tensor([0, 1, 1]))) == {(1, 2, 0), (2, 1, 0)}


def test_reference_set_must_come_whole():
    with pytest.raises(ValueError, match="both"):
        TripletMiner()(torch.zeros(4, 2), torch.tensor([0, 0, 1, 1]), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="ref_emb"):
        TripletMiner()(torch.zeros(4, 2), torch.tensor([0, 0, 1, 1]), torch.zeros(3, 5), torch.tensor([0, 1, 1]))


def test_the_loss_returns_per_triplet_values_that_the_reducer_reduces():
    embeddings, labels, _, _ = batch_and_reference(7)
    out = TripletLoss("batch_all", margin=0.5)(embeddings, labels)
    a, p, n = out.triplets
    d = torch.cdist(embeddings, embeddings)
    expected = torch.relu(d[a, p] - d[a, n] + 0.5)
    assert torch.allclose(out.per_triplet, expected, atol=1e-9)
    active = expected > 0
    assert out.loss.item() == pytest.approx(float(expected.sum() / active.sum()))
    assert out.active_fraction == pytest.approx(float(active.float().mean()))
    assert TripletLoss("batch_all", margin=0.5, reduction="sum")(embeddings, labels).loss.item() == pytest.approx(float(expected.sum()))


def test_given_triplets_skip_the_miner():
    embeddings, labels, _, _ = batch_and_reference(8)
    mined = TripletMiner("batch_hard", 0.2)(embeddings, labels)
    via_miner = TripletLoss("batch_hard")(embeddings, labels)
    given = TripletLoss("batch_all")(embeddings, labels, triplets=mined)
    assert given.loss.item() == pytest.approx(via_miner.loss.item(), abs=1e-12)


def test_random_triplets_share_the_formula_with_explicit_triplets():
    # A batch of random triplets is laid out [anchors | positives | negatives].
    g = torch.Generator().manual_seed(3)
    a, p, n = (torch.randn(6, 4, generator=g) for _ in range(3))
    labels = torch.tensor([0] * 12 + [1] * 6)
    out = TripletLoss("random", margin=0.4, reduction="sum")(torch.cat([a, p, n]), labels)
    assert out.loss.item() == pytest.approx(triplet_margin_loss(a, p, n, margin=0.4, reduction="sum").item(), rel=1e-6)
    assert out.n_triplets == 6
    assert torch.equal(margin_violation(torch.tensor([1.0, 0.1]), torch.tensor([0.5, 0.9]), 0.2), torch.tensor([0.7, 0.0]))


def test_registries_are_the_choices():
    assert tuple(MINERS) == choices.MINING_STRATEGIES and tuple(REDUCERS) == choices.REDUCTIONS
    with pytest.raises(ModelError, match="random"):
        TripletLoss("hardest")


# ---------------------------------------------------------------- statistics
@pytest.mark.parametrize("seed", range(4))
def test_statistics_match_pml_triplet_types(seed):
    """Hard / semi-hard / easy are PML's `TripletMarginMiner` types, counted over all
    valid triplets; the means are those of the valid triplets' distances."""
    embeddings, labels, _, _ = batch_and_reference(seed + 10)
    margin = 0.4
    loss = TripletLoss("batch_hard", margin=margin)  # the statistics describe all valid triplets, whatever is mined
    stats = loss.statistics(loss(embeddings, labels))
    distance = pml_distances.LpDistance(normalize_embeddings=False)
    counts = {kind: len(pml_miners.TripletMarginMiner(margin=margin, type_of_triplets=kind, distance=distance)(embeddings, labels)[0]) for kind in ("hard", "semihard", "easy")}
    counts["all"] = len(pml_utils.get_all_triplets_indices(labels)[0])
    assert counts["all"] == counts["hard"] + counts["semihard"] + counts["easy"]  # the three kinds partition them
    assert stats.n_triplets == counts["all"] > 0
    assert (stats.hard, stats.semi_hard, stats.easy) == pytest.approx((counts["hard"] / counts["all"], counts["semihard"] / counts["all"], counts["easy"] / counts["all"]))
    d = torch.cdist(embeddings, embeddings)
    valid = [(i, j, k) for i, j, k in itertools.product(range(len(labels)), repeat=3) if len({i, j, k}) == 3 and labels[i] == labels[j] != labels[k]]
    assert stats.d_ap == pytest.approx(sum(float(d[i, j]) for i, j, _ in valid) / len(valid))
    assert stats.d_an == pytest.approx(sum(float(d[i, k]) for i, _, k in valid) / len(valid))


def test_statistics_of_a_known_batch():
    # Anchor 0, positive 1 at distance 1; negatives at 0.5 (hard), 1.1 (semi-hard), 2 (easy).
    d = torch.zeros(5, 5)
    d[0, 1:] = torch.tensor([1.0, 0.5, 1.1, 2.0])
    triplets = (torch.tensor([0, 0, 0]), torch.tensor([1, 1, 1]), torch.tensor([2, 3, 4]))
    stats = triplet_statistics(d, triplets, 0.2)
    assert stats == TripletStatistics(3, 1 / 3, 1 / 3, 1 / 3, 1.0, pytest.approx(3.6 / 3))
    assert triplet_statistics(d, (torch.tensor([], dtype=torch.long),) * 3, 0.2) is None
