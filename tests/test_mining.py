"""Online mining against pytorch-metric-learning (PML) and brute-force loops.

Like for like with PML: its `TripletMarginLoss` reduces with `AvgNonZeroReducer` by
default (mean over triplets with positive loss), which is our "mean"; our "sum" is PML with
`SumReducer`. `LpDistance(normalize_embeddings=False)` is our Euclidean distance, with
`power=2` our squared one, and PML's `CosineSimilarity` (a similarity, handled as inverted
by PML's miners and loss) gives exactly our cosine-distance triplets and losses.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from pytorch_metric_learning import distances as pml_distances
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners
from pytorch_metric_learning import reducers as pml_reducers

from retrieval_app.errors import ModelError
from retrieval_app.losses import (
    MINING_STRATEGIES,
    OnlineTripletLoss,
    batch_all_triplet_loss,
    batch_hard_triplet_loss,
    batch_semi_hard_triplet_loss,
    get_distance,
    mine_batch_hard,
    mine_semi_hard,
    valid_triplet_mask,
)

LOSS_FUNCTIONS = {"batch_all": batch_all_triplet_loss, "batch_hard": batch_hard_triplet_loss, "semi_hard": batch_semi_hard_triplet_loss}
PML_DISTANCES = {
    "euclidean": lambda: pml_distances.LpDistance(normalize_embeddings=False, p=2, power=1),
    "squared_euclidean": lambda: pml_distances.LpDistance(normalize_embeddings=False, p=2, power=2),
    "cosine": lambda: pml_distances.CosineSimilarity(),
}


def pml_miner(mining: str, margin: float, distance):
    if mining == "batch_hard":
        return pml_miners.BatchHardMiner(distance=distance)
    kind = {"batch_all": "all", "semi_hard": "semihard"}[mining]
    return pml_miners.TripletMarginMiner(margin=margin, type_of_triplets=kind, distance=distance)


def pml_reference(embeddings, labels, mining, margin, distance_name, reduction):
    """(loss, mined triplets as a set of (a, p, n)) from PML."""
    distance = PML_DISTANCES[distance_name]()
    mined = pml_miner(mining, margin, distance)(embeddings, labels)
    reducer = pml_reducers.SumReducer() if reduction == "sum" else pml_reducers.AvgNonZeroReducer()
    loss = pml_losses.TripletMarginLoss(margin=margin, distance=distance, reducer=reducer)(embeddings, labels, mined)
    return loss.item(), set(zip(*(t.tolist() for t in mined)))


def balanced_labels(n_classes: int, per_class: int, g) -> torch.Tensor:
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    return labels[torch.randperm(len(labels), generator=g)]


def ragged_labels(size: int, g) -> torch.Tensor:
    """Uneven classes, usually with singletons (anchors without positives)."""
    return torch.randint(0, max(2, size // 3), (size,), generator=g)


LAYOUTS = {
    "4x4": lambda g: balanced_labels(4, 4, g),
    "3x6": lambda g: balanced_labels(3, 6, g),
    "8x2": lambda g: balanced_labels(8, 2, g),
    "ragged7": lambda g: ragged_labels(7, g),
    "ragged24": lambda g: ragged_labels(24, g),
}


def random_batch(seed: int, layout: str, dim: int = 6):
    g = torch.Generator().manual_seed(seed)
    labels = LAYOUTS[layout](g)
    return torch.randn(len(labels), dim, generator=g, dtype=torch.float64) * 0.6, labels


def triplet_set(embeddings, labels, mining, margin, distance="euclidean"):
    d = get_distance(distance).pairwise(embeddings)
    miner = {"batch_hard": mine_batch_hard, "semi_hard": mine_semi_hard}[mining]
    return set(zip(*(t.tolist() for t in miner(d, labels, margin))))


# ---------------------------------------------------------------- the valid-triplet mask
@pytest.mark.parametrize("layout", ["3x6", "ragged7"])
def test_valid_triplet_mask_matches_brute_force(layout):
    _, labels = random_batch(0, layout)
    mask = valid_triplet_mask(labels)
    n = len(labels)
    assert mask.shape == (n, n, n) and mask.dtype == torch.bool
    for i, j, k in itertools.product(range(n), repeat=3):
        expected = len({i, j, k}) == 3 and labels[i] == labels[j] and labels[i] != labels[k]
        assert bool(mask[i, j, k]) == expected, (i, j, k)


# ---------------------------------------------------------------- parity with PML
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("mining", ["batch_all", "batch_hard", "semi_hard"])
@pytest.mark.parametrize("distance", list(PML_DISTANCES))
def test_loss_matches_pytorch_metric_learning(seed, layout, mining, distance):
    embeddings, labels = random_batch(seed, layout)
    margin = {"euclidean": 0.4, "squared_euclidean": 0.6, "cosine": 0.3}[distance]
    for reduction in ("mean", "sum"):
        reference, _ = pml_reference(embeddings, labels, mining, margin, distance, reduction)
        ours = OnlineTripletLoss(mining, margin=margin, distance=distance, reduction=reduction)(embeddings, labels)
        assert ours.loss.item() == pytest.approx(reference, rel=1e-9, abs=1e-9), reduction


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_mined_triplets_are_the_ones_pml_mines(seed, layout):
    embeddings, labels = random_batch(seed + 50, layout)
    for distance in ("euclidean", "cosine"):
        _, hard = pml_reference(embeddings, labels, "batch_hard", 0.3, distance, "mean")
        assert triplet_set(embeddings, labels, "batch_hard", 0.3, distance) == hard
        _, semi_hard = pml_reference(embeddings, labels, "semi_hard", 0.3, distance, "mean")
        assert triplet_set(embeddings, labels, "semi_hard", 0.3, distance) == semi_hard


@pytest.mark.parametrize("seed", range(3))
def test_batch_all_equals_pml_without_a_miner(seed):
    # PML's TripletMarginLoss with labels only uses every valid triplet: batch-all by definition.
    embeddings, labels = random_batch(seed + 80, "ragged24")
    distance = PML_DISTANCES["euclidean"]()
    reference = pml_losses.TripletMarginLoss(margin=0.5, distance=distance)(embeddings, labels)
    assert batch_all_triplet_loss(embeddings, labels, margin=0.5).loss.item() == pytest.approx(reference.item(), rel=1e-9, abs=1e-9)


def test_gradients_match_pml():
    embeddings, labels = random_batch(9, "4x4")
    for mining in ("batch_all", "batch_hard", "semi_hard"):
        ours = embeddings.clone().requires_grad_(True)
        OnlineTripletLoss(mining, margin=0.5)(ours, labels).loss.backward()
        theirs = embeddings.clone().requires_grad_(True)
        distance = PML_DISTANCES["euclidean"]()
        mined = pml_miner(mining, 0.5, distance)(theirs, labels)
        pml_losses.TripletMarginLoss(margin=0.5, distance=distance)(theirs, labels, mined).backward()
        assert torch.allclose(ours.grad, theirs.grad, atol=1e-9), mining


# ---------------------------------------------------------------- brute-force counts
def brute_force(embeddings, labels, margin, keep):
    """Loss values of the valid triplets for which keep(d_ap, d_an) holds, by loops."""
    d = torch.cdist(embeddings, embeddings, compute_mode="donot_use_mm_for_euclid_dist")
    n = len(labels)
    return [
        max(float(d[i, j] - d[i, k]) + margin, 0.0)
        for i, j, k in itertools.product(range(n), repeat=3)
        if len({i, j, k}) == 3 and labels[i] == labels[j] and labels[i] != labels[k] and keep(float(d[i, j]), float(d[i, k]))
    ]


@pytest.mark.parametrize("seed", range(3))
def test_batch_all_and_semi_hard_counts_by_brute_force(seed):
    embeddings, labels = random_batch(seed + 20, "3x6")
    margin = 0.5
    cases = {
        "batch_all": lambda ap, an: True,
        "semi_hard": lambda ap, an: 0 < an - ap <= margin,
    }
    for mining, keep in cases.items():
        losses = brute_force(embeddings, labels, margin, keep)
        out = LOSS_FUNCTIONS[mining](embeddings, labels, margin=margin, reduction="sum")
        assert out.n_triplets == len(losses) > 0
        assert out.loss.item() == pytest.approx(sum(losses), abs=1e-9)
        assert out.active_fraction == pytest.approx(sum(v > 0 for v in losses) / len(losses))
        mean = LOSS_FUNCTIONS[mining](embeddings, labels, margin=margin).loss.item()
        assert mean == pytest.approx(sum(losses) / sum(v > 0 for v in losses), abs=1e-9)


@pytest.mark.parametrize("seed", range(3))
def test_batch_hard_by_brute_force(seed):
    embeddings, labels = random_batch(seed + 30, "ragged24")
    d = torch.cdist(embeddings, embeddings, compute_mode="donot_use_mm_for_euclid_dist")
    losses = []
    for a in range(len(labels)):
        positives = [d[a, j] for j in range(len(labels)) if j != a and labels[j] == labels[a]]
        negatives = [d[a, k] for k in range(len(labels)) if labels[k] != labels[a]]
        if positives and negatives:
            losses.append(max(float(max(positives) - min(negatives)) + 1.0, 0.0))
    out = batch_hard_triplet_loss(embeddings, labels, margin=1.0, reduction="sum")
    assert out.n_triplets == len(losses)
    assert out.loss.item() == pytest.approx(sum(losses), abs=1e-9)
    assert out.active_fraction == pytest.approx(sum(v > 0 for v in losses) / len(losses))


def test_custom_distance_is_used_for_mining():
    embeddings, labels = random_batch(40, "4x4")
    linf = lambda a, b: (a - b).abs().amax(-1)  # noqa: E731
    d = torch.stack([linf(embeddings[i].expand_as(embeddings), embeddings) for i in range(len(labels))])
    expected = [
        max(float(d[i, j] - d[i, k]) + 0.3, 0.0)
        for i, j, k in itertools.product(range(len(labels)), repeat=3)
        if len({i, j, k}) == 3 and labels[i] == labels[j] and labels[i] != labels[k]
    ]
    out = batch_all_triplet_loss(embeddings, labels, margin=0.3, distance=linf, reduction="sum")
    assert out.loss.item() == pytest.approx(sum(expected), abs=1e-9)
    assert OnlineTripletLoss("batch_all", margin=0.3, distance="linf", reduction="sum")(embeddings, labels).loss.item() == pytest.approx(sum(expected), abs=1e-9)


# ---------------------------------------------------------------- invalid triplets never used
def test_batch_hard_never_picks_the_anchor_as_its_own_positive():
    # Items 0 and 1 coincide: the anchor's own distance (0) ties with its only positive's.
    embeddings = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [1.0, 0.1], [5.0, 5.0]])
    labels = torch.tensor([0, 0, 1, 1, 2])
    mined = mine_batch_hard(get_distance("euclidean").pairwise(embeddings), labels)
    triplets = set(zip(*(t.tolist() for t in mined)))
    assert triplets == {(0, 1, 2), (1, 0, 2), (2, 3, 0), (3, 2, 1)} or triplets == {(0, 1, 2), (1, 0, 2), (2, 3, 0), (3, 2, 0)}
    # item 4, alone in its class, cannot anchor


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("mining", ["batch_hard", "semi_hard"])
def test_mined_triplets_are_always_valid(seed, mining):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 4, (20,), generator=g)
    embeddings = torch.randn(5, 3, generator=g)[torch.randint(0, 5, (20,), generator=g)]  # many exact duplicates
    for a, p, n in triplet_set(embeddings, labels, mining, 1.0):
        assert len({a, p, n}) == 3 and labels[a] == labels[p] and labels[a] != labels[n]


def test_semi_hard_selects_exactly_the_band_above_the_positive():
    # One anchor (0), one positive (1) at distance 1, negatives at distances 0.5 (hard),
    # 1.125 (semi-hard), 1.25 (on the margin's edge: kept, as PML does; loss 0) and 2 (easy).
    d = torch.zeros(6, 6)
    d[0, 1:] = torch.tensor([1.0, 0.5, 1.125, 1.25, 2.0])
    labels = torch.tensor([0, 0, 1, 2, 3, 4])
    anchors, positives, negatives = mine_semi_hard(d, labels, 0.25)
    from_anchor_0 = sorted(n for a, n in zip(anchors.tolist(), negatives.tolist()) if a == 0)
    assert from_anchor_0 == [3, 4]


# ---------------------------------------------------------------- robustness
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("distance", ["euclidean", "squared_euclidean", "cosine"])
@pytest.mark.parametrize("mining", ["batch_all", "batch_hard", "semi_hard"])
def test_gradients_finite_when_embeddings_coincide(mining, distance, dtype):
    base = torch.randn(4, 6, generator=torch.Generator().manual_seed(3), dtype=dtype)
    embeddings = torch.cat([base, base, base[:2], base[:1]]).requires_grad_(True)  # exact duplicates
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 1])  # a duplicate in another class too
    out = OnlineTripletLoss(mining, margin=0.5, distance=distance)(embeddings, labels)
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(embeddings.grad).all()


def test_all_embeddings_identical_still_trains():
    # A freshly initialised network can map everything to (almost) one point.
    embeddings = torch.ones(8, 4, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    for mining in ("batch_all", "batch_hard"):
        out = OnlineTripletLoss(mining, margin=0.2)(embeddings, labels)
        out.loss.backward()
        assert out.loss.item() == pytest.approx(0.2) and out.active_fraction == 1.0
        assert torch.isfinite(embeddings.grad).all()


@pytest.mark.parametrize("mining", ["batch_all", "batch_hard", "semi_hard"])
@pytest.mark.parametrize("labels", [[0, 1, 2, 3], [5, 5, 5, 5]], ids=["no-positives", "no-negatives"])
def test_batch_without_valid_triplets_gives_a_zero_that_backpropagates(mining, labels):
    embeddings = torch.randn(4, 3, requires_grad=True)
    out = OnlineTripletLoss(mining)(embeddings, torch.tensor(labels))
    assert out.loss.item() == 0.0 and out.n_triplets == 0 and out.active_fraction == 0.0
    assert out.loss.grad_fn is not None
    out.loss.backward()
    assert torch.equal(embeddings.grad, torch.zeros_like(embeddings))


def test_easy_batch_has_zero_loss_and_no_active_triplets():
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    embeddings = torch.cat([torch.zeros(3, 2), torch.full((3, 2), 10.0)]) + 0.01 * torch.randn(6, 2)
    embeddings.requires_grad_(True)
    out = batch_all_triplet_loss(embeddings, labels, margin=0.2)
    assert out.loss.item() == 0.0 and out.active_fraction == 0.0 and out.n_triplets == 6 * 2 * 3
    out.loss.backward()
    assert torch.equal(embeddings.grad, torch.zeros_like(embeddings))


def test_names_and_errors():
    assert MINING_STRATEGIES == ("batch_all", "batch_hard", "semi_hard", "random")
    with pytest.raises(ModelError, match="batch_all, batch_hard, semi_hard"):
        OnlineTripletLoss("hardest")
    with pytest.raises(ModelError, match="offline"):
        OnlineTripletLoss("random")
    with pytest.raises(ModelError, match="mean, sum"):
        OnlineTripletLoss("batch_all", reduction="none")
    with pytest.raises(ModelError, match="euclidean"):
        OnlineTripletLoss("batch_all", distance="hamming")
    with pytest.raises(ValueError, match="labels"):
        batch_all_triplet_loss(torch.randn(4, 3), torch.tensor([0, 1, 0]))
    assert "batch_hard" in repr(OnlineTripletLoss("batch_hard", distance="cosine"))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("margin", [0.2, 0.0])
def test_the_grid_loss_node_equals_the_composite_form(reduction, margin):
    from retrieval_app.losses.grid_loss import grid_margin_loss
    from retrieval_app.losses.miners import valid_triplets
    from retrieval_app.losses.reducers import reduce_triplet_losses
    from retrieval_app.losses.triplet import margin_violation

    labels = torch.arange(4).repeat_interleave(3)
    base = torch.randn(12, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    if margin == 0.0:  # classes far apart: no triplet is active, loss and gradient exactly zero
        base = base * 0.01 + labels.unsqueeze(1).double() * 10
    flat, grid = valid_triplets(labels)
    matrix = torch.cdist(base, base).requires_grad_(True)
    loss, per_triplet, n_active = grid_margin_loss(matrix, grid, margin, reduction)
    assert type(loss.grad_fn).__name__.startswith("_GridMarginLoss")
    loss.backward()
    fused_grad, matrix.grad = matrix.grad.clone(), None
    composite = margin_violation(matrix[flat.anchors, flat.positives], matrix[flat.anchors, flat.negatives], margin)
    expected, active, count = reduce_triplet_losses(composite, reduction, matrix)
    expected.backward()
    assert torch.equal(per_triplet, composite.detach()) and n_active == round(active * count)
    assert torch.allclose(loss, expected, atol=1e-12) and torch.allclose(fused_grad, matrix.grad, atol=1e-12)
    assert (n_active == 0) == (margin == 0.0)
    if n_active == 0:
        assert loss.item() == 0.0 and not fused_grad.any()
