"""The explicit-triplet loss against torch's own triplet losses and hand formulas."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from retrieval_app.errors import ModelError
from retrieval_app.losses import TripletMarginLoss, linf_distance, triplet_margin_loss

MARGINS = (0.05, 0.2, 1.0, 3.0)  # torch requires margin > 0


def random_triplets(seed: int, n: int = 40, dim: int = 8, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, dim, generator=g, dtype=dtype) for _ in range(3)]


def exact_euclidean(x, y):
    return F.pairwise_distance(x, y, eps=0.0)


def linf(x, y):
    return (x - y).abs().max(dim=-1).values


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("margin", MARGINS)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_euclidean_matches_torch_triplet_margin_loss(seed, margin, reduction):
    a, p, n = random_triplets(seed)
    ours = triplet_margin_loss(a, p, n, margin=margin, reduction=reduction)
    # torch.nn.TripletMarginLoss measures ‖x − y + 1e-6‖, hence the loose tolerance ...
    standard = torch.nn.TripletMarginLoss(margin=margin, reduction=reduction)(a, p, n)
    assert ours.item() == pytest.approx(standard.item(), rel=1e-4, abs=1e-4)
    # ... and with eps=0 the same computation must agree to rounding.
    exact = torch.nn.TripletMarginWithDistanceLoss(distance_function=exact_euclidean, margin=margin, reduction=reduction)(a, p, n)
    assert ours.item() == pytest.approx(exact.item(), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("margin", MARGINS)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_linf_matches_torch_triplet_margin_with_distance_loss(seed, margin, reduction):
    a, p, n = random_triplets(seed + 10)
    reference = torch.nn.TripletMarginWithDistanceLoss(distance_function=linf, margin=margin, reduction=reduction)(a, p, n)
    by_name = triplet_margin_loss(a, p, n, margin=margin, distance="linf", reduction=reduction)
    by_function = triplet_margin_loss(a, p, n, margin=margin, distance=linf_distance, reduction=reduction)
    assert by_name.item() == pytest.approx(reference.item(), rel=1e-12, abs=1e-12)
    assert by_function.item() == pytest.approx(reference.item(), rel=1e-12, abs=1e-12)


def test_gradients_match_torch():
    a, p, n = (t.requires_grad_(True) for t in random_triplets(5))
    triplet_margin_loss(a, p, n, margin=0.7).backward()
    ours = [t.grad.clone() for t in (a, p, n)]
    for t in (a, p, n):
        t.grad = None
    torch.nn.TripletMarginWithDistanceLoss(distance_function=exact_euclidean, margin=0.7)(a, p, n).backward()
    for mine, theirs in zip(ours, (a.grad, p.grad, n.grad)):
        assert torch.allclose(mine, theirs, atol=1e-12)


@pytest.mark.parametrize("margin", MARGINS)
def test_squared_euclidean_and_cosine_by_hand(margin):
    a, p, n = random_triplets(7, n=25)
    squared = lambda x, y: sum((x[:, d] - y[:, d]) ** 2 for d in range(x.shape[1]))  # noqa: E731
    cosine = lambda x, y: 1 - (x * y).sum(1) / torch.sqrt((x * x).sum(1) * (y * y).sum(1))  # noqa: E731
    for name, fn in (("squared_euclidean", squared), ("cosine", cosine)):
        per_triplet = [max(float(fn(a, p)[i] - fn(a, n)[i]) + margin, 0.0) for i in range(len(a))]
        assert triplet_margin_loss(a, p, n, margin=margin, distance=name, reduction="sum").item() == pytest.approx(sum(per_triplet), abs=1e-10)
        assert triplet_margin_loss(a, p, n, margin=margin, distance=name).item() == pytest.approx(sum(per_triplet) / len(a), abs=1e-10)
        assert torch.allclose(triplet_margin_loss(a, p, n, margin=margin, distance=name, reduction="none"), torch.tensor(per_triplet, dtype=a.dtype), atol=1e-10)


def test_margin_changes_which_triplets_count():
    a = torch.zeros(2, 2)
    p = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # d(a, p) = 1
    n = torch.tensor([[1.5, 0.0], [3.0, 0.0]])  # d(a, n) = 1.5 and 3
    assert triplet_margin_loss(a, p, n, margin=0.2).item() == 0.0
    assert triplet_margin_loss(a, p, n, margin=1.0, reduction="none").tolist() == [0.5, 0.0]
    assert triplet_margin_loss(a, p, n, margin=3.0, reduction="sum").item() == pytest.approx(2.5 + 1.0)


def test_module_matches_function_and_rejects_bad_reduction():
    a, p, n = random_triplets(8, dtype=torch.float32)
    module = TripletMarginLoss(margin=0.3, distance="cosine", reduction="sum")
    assert module(a, p, n).item() == pytest.approx(triplet_margin_loss(a, p, n, margin=0.3, distance="cosine", reduction="sum").item())
    assert "cosine" in repr(module)
    with pytest.raises(ModelError, match="mean, sum"):
        TripletMarginLoss(reduction="average")
    with pytest.raises(ModelError, match="mean, sum"):
        triplet_margin_loss(a, p, n, reduction="max")


def test_coinciding_anchor_and_positive_has_finite_gradient():
    a = torch.randn(4, 3, requires_grad=True)
    p = a.detach().clone().requires_grad_(True)
    n = torch.randn(4, 3, requires_grad=True)
    for name in ("euclidean", "squared_euclidean", "cosine", "linf"):
        triplet_margin_loss(a, p, n, margin=5.0, distance=name).backward()
        assert all(torch.isfinite(t.grad).all() for t in (a, p, n)), name
