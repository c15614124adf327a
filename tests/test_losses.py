"""Triplet losses and mining, checked against independent references."""

from __future__ import annotations

import itertools

import pytest
import torch
from pytorch_metric_learning import distances as pml_distances
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners

from retrieval_app.errors import ModelError
from retrieval_app.losses import (
    OnlineTripletLoss,
    TripletMarginLoss,
    batch_all_triplet_loss,
    batch_hard_triplet_loss,
    get_distance,
    linf_distance,
    safe_sqrt,
    triplet_margin_loss,
    valid_triplet_mask,
)


@pytest.fixture(autouse=True)
def _float64():
    # parity to ~1e-10, not float32 noise; restored so other test files are unaffected
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def random_batch(seed: int, n_classes: int = 4, per_class: int = 4, dim: int = 8):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    labels = labels[torch.randperm(len(labels), generator=g)]
    return torch.randn(len(labels), dim, generator=g) * 0.5, labels


def random_triplets(seed: int, n: int = 32, dim: int = 16):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, dim, generator=g) for _ in range(3)]


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("margin", [0.05, 0.2, 1.0])
def test_explicit_euclidean_matches_torch(reduction, margin):
    a, p, n = random_triplets(1)
    # torch adds eps=1e-6 to the difference inside pairwise_distance; eps=0 compares like for like
    reference = torch.nn.TripletMarginWithDistanceLoss(distance_function=lambda x, y: torch.nn.functional.pairwise_distance(x, y, eps=0.0), margin=margin, reduction=reduction)(a, p, n)
    assert triplet_margin_loss(a, p, n, margin=margin, reduction=reduction) == pytest.approx(reference.item(), abs=1e-10)
    standard = torch.nn.TripletMarginLoss(margin=margin, reduction=reduction)(a, p, n)
    assert TripletMarginLoss(margin=margin, reduction=reduction)(a, p, n).item() == pytest.approx(standard.item(), abs=1e-4)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_explicit_linf_matches_torch_with_distance(reduction):
    a, p, n = random_triplets(2)
    reference = torch.nn.TripletMarginWithDistanceLoss(distance_function=lambda x, y: (x - y).abs().max(-1).values, margin=0.5, reduction=reduction)(a, p, n)
    assert triplet_margin_loss(a, p, n, margin=0.5, distance="linf", reduction=reduction) == pytest.approx(reference.item(), abs=1e-10)
    # any callable is a distance
    assert triplet_margin_loss(a, p, n, margin=0.5, distance=linf_distance, reduction=reduction) == pytest.approx(reference.item(), abs=1e-10)


def test_squared_and_cosine_by_hand():
    a, p, n = random_triplets(3)
    sq = lambda x, y: ((x - y) ** 2).sum(1)  # noqa: E731
    cos = lambda x, y: 1 - (x * y).sum(1) / (x.norm(dim=1) * y.norm(dim=1))  # noqa: E731
    for name, fn in (("squared_euclidean", sq), ("cosine", cos)):
        expected = torch.relu(fn(a, p) - fn(a, n) + 0.3).mean()
        assert triplet_margin_loss(a, p, n, margin=0.3, distance=name).item() == pytest.approx(expected.item(), abs=1e-10)


def test_pairwise_matrices_match_paired():
    x, _ = random_batch(4, dim=5)
    for name in ("euclidean", "squared_euclidean", "cosine", "linf"):
        d = get_distance(name)
        matrix = d.pairwise(x)
        i, j = torch.meshgrid(torch.arange(len(x)), torch.arange(len(x)), indexing="ij")
        assert torch.allclose(matrix, d.paired(x[i.flatten()], x[j.flatten()]).reshape(len(x), len(x)), atol=1e-8), name
    custom = get_distance(lambda a, b: (a - b).abs().sum(-1))  # L1 via the generic broadcast path
    assert torch.allclose(custom.pairwise(x), torch.cdist(x, x, p=1), atol=1e-10)


def test_valid_triplet_mask_matches_brute_force():
    _, labels = random_batch(5, n_classes=3, per_class=3)
    mask = valid_triplet_mask(labels)
    n = len(labels)
    for i, j, k in itertools.product(range(n), repeat=3):
        expected = len({i, j, k}) == 3 and labels[i] == labels[j] and labels[i] != labels[k]
        assert bool(mask[i, j, k]) == expected


def pml_loss(embeddings, labels, miner, margin):
    distance = pml_distances.LpDistance(normalize_embeddings=False, p=2, power=1)
    mined = miner(embeddings, labels)
    loss_fn = pml_losses.TripletMarginLoss(margin=margin, distance=distance)
    return loss_fn(embeddings, labels, mined).item(), mined


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("layout", [(4, 4), (3, 6), (8, 2)])
def test_batch_all_and_semi_hard_match_pytorch_metric_learning(seed, layout):
    embeddings, labels = random_batch(seed, *layout)
    distance = pml_distances.LpDistance(normalize_embeddings=False)
    for ours, kind in (("batch_all", "all"), ("semi_hard", "semihard")):
        margin = 0.3
        reference, _ = pml_loss(embeddings, labels, pml_miners.TripletMarginMiner(margin=margin, type_of_triplets=kind, distance=distance), margin)
        out = OnlineTripletLoss(ours, margin=margin)(embeddings, labels)
        assert out.loss.item() == pytest.approx(reference, abs=1e-8), (ours, seed, layout)


@pytest.mark.parametrize("seed", range(5))
def test_batch_hard_matches_pytorch_metric_learning(seed):
    embeddings, labels = random_batch(seed, 5, 4)
    distance = pml_distances.LpDistance(normalize_embeddings=False)
    reference, mined = pml_loss(embeddings, labels, pml_miners.BatchHardMiner(distance=distance), 1.0)
    out = batch_hard_triplet_loss(embeddings, labels, margin=1.0)
    assert out.loss.item() == pytest.approx(reference, abs=1e-8)
    # the anchor is never its own positive and positives/negatives have the right labels
    anchors, positives, negatives = mined
    assert bool((anchors != positives).all())
    assert bool((labels[anchors] == labels[positives]).all()) and bool((labels[anchors] != labels[negatives]).all())


def test_batch_all_sum_and_active_fraction_by_brute_force():
    embeddings, labels = random_batch(7, 3, 3)
    d = torch.cdist(embeddings, embeddings)
    losses = [max(float(d[i, j] - d[i, k] + 0.5), 0.0) for i, j, k in itertools.product(range(len(labels)), repeat=3) if len({i, j, k}) == 3 and labels[i] == labels[j] and labels[i] != labels[k]]
    out = batch_all_triplet_loss(embeddings, labels, margin=0.5, reduction="sum")
    assert out.loss.item() == pytest.approx(sum(losses), abs=1e-8)
    assert out.n_triplets == len(losses)
    assert out.active_fraction == pytest.approx(sum(v > 0 for v in losses) / len(losses))


@pytest.mark.parametrize("mining", ["batch_all", "batch_hard", "semi_hard"])
@pytest.mark.parametrize("distance", ["euclidean", "squared_euclidean", "cosine"])
def test_gradients_finite_when_embeddings_coincide(mining, distance):
    base = torch.randn(4, 6)
    embeddings = torch.cat([base, base, base[:2]]).requires_grad_(True)  # exact duplicates
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 0, 1])
    out = OnlineTripletLoss(mining, margin=0.5, distance=distance)(embeddings, labels)
    out.loss.backward()
    assert torch.isfinite(embeddings.grad).all()
    assert torch.isfinite(out.loss)


def test_safe_sqrt_gradient_at_zero():
    x = torch.tensor([0.0, 4.0], requires_grad=True)
    safe_sqrt(x).sum().backward()
    assert x.grad.tolist() == [0.0, 0.25]


def test_batch_without_valid_triplets_gives_backpropagating_zero():
    embeddings = torch.randn(4, 3, requires_grad=True)
    out = OnlineTripletLoss("batch_all")(embeddings, torch.tensor([0, 1, 2, 3]))  # no positives
    assert out.loss.item() == 0.0 and out.n_triplets == 0 and out.active_fraction == 0.0
    out.loss.backward()
    assert embeddings.grad is not None


def test_unknown_names_are_clear_errors():
    with pytest.raises(ModelError, match="batch_all"):
        OnlineTripletLoss("hardest")
    with pytest.raises(ModelError, match="euclidean"):
        get_distance("manhattan")
