"""Online triplet mining inside a batch of (embeddings, labels).

Every strategy starts from the batch's pairwise distance matrix D and the labels, picks
(anchor, positive, negative) index triplets, and scores each as
max(D[a, p] − D[a, n] + margin, 0):

- batch-all: every valid triplet (a, p, n distinct, label[a] == label[p] != label[n]);
- batch-hard: per anchor, its farthest positive and its closest negative; anchors that
  lack a positive or a negative in the batch are skipped;
- semi-hard: the valid triplets whose negative is farther than the positive but within
  the margin, 0 < D[a, n] − D[a, p] ≤ margin (what pytorch-metric-learning's
  ``TripletMarginMiner(type_of_triplets="semihard")`` selects).

Reduction "mean" averages over the triplets whose loss is positive — easy triplets would
otherwise dilute the loss towards zero as training progresses, and this is what
pytorch-metric-learning's default ``AvgNonZeroReducer`` does — and "sum" adds them all.
The choice of triplets never needs gradients, so it works on a detached copy of D.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import torch
from torch import nn

from ..errors import ModelError
from .distances import DistanceLike, get_distance
from .triplet import check_reduction

# "random" is offline: the trainer draws triplets with `data.triplets`, not this module.
MINING_STRATEGIES = ("batch_all", "batch_hard", "semi_hard", "random")
ONLINE_MINING_STRATEGIES = ("batch_all", "batch_hard", "semi_hard")
ONLINE_REDUCTIONS = ("mean", "sum")


class LossOutput(NamedTuple):
    """What an online triplet loss reports for one batch."""

    loss: torch.Tensor  # scalar, differentiable w.r.t. the embeddings
    active_fraction: float  # share of the considered triplets whose loss is > 0
    n_triplets: int  # triplets considered (mined) in this batch


class MinedTriplets(NamedTuple):
    """Index triplets into the batch, three LongTensors of equal length."""

    anchors: torch.Tensor
    positives: torch.Tensor
    negatives: torch.Tensor


def _same_label(labels: torch.Tensor) -> torch.Tensor:
    return labels.unsqueeze(0) == labels.unsqueeze(1)


def positive_pair_mask(labels: torch.Tensor) -> torch.Tensor:
    """(N, N) bool: j is a positive of anchor i (same label, j ≠ i)."""
    not_self = ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return _same_label(labels) & not_self


def negative_pair_mask(labels: torch.Tensor) -> torch.Tensor:
    """(N, N) bool: k is a negative of anchor i (different label; so also k ≠ i)."""
    return ~_same_label(labels)


def valid_triplet_mask(labels: torch.Tensor) -> torch.Tensor:
    """(N, N, N) bool: mask[i, j, k] iff i, j, k are distinct and
    labels[i] == labels[j] != labels[k]."""
    return positive_pair_mask(labels).unsqueeze(2) & negative_pair_mask(labels).unsqueeze(1)


def _as_triplets(mask: torch.Tensor) -> MinedTriplets:
    anchors, positives, negatives = mask.nonzero(as_tuple=True)
    return MinedTriplets(anchors, positives, negatives)


def mine_batch_all(distances: torch.Tensor, labels: torch.Tensor, margin: float = 0.0) -> MinedTriplets:
    """Every valid triplet of the batch (`distances` and `margin` are not needed; they are
    accepted so all miners share one signature)."""
    return _valid_triplets_of_pattern(_label_pattern(labels), labels.device)


def _label_pattern(labels: torch.Tensor) -> tuple[int, ...]:
    """The batch's labels renumbered by first appearance: which items share a label,
    without which labels they are. P×K batches (K of each of P classes, in blocks) all
    have the same pattern, so their valid triplets need to be found only once."""
    codes: dict[int, int] = {}
    return tuple(codes.setdefault(label, len(codes)) for label in labels.tolist())


@functools.lru_cache(maxsize=16)
def _valid_triplets_of_pattern(pattern: tuple[int, ...], device: torch.device) -> MinedTriplets:
    # Building the (N, N, N) mask and its nonzero() cost more than the rest of a head's
    # training step; cached per pattern they are free. The tensors are never modified.
    return _as_triplets(valid_triplet_mask(torch.tensor(pattern, device=device)))


def mine_batch_hard(distances: torch.Tensor, labels: torch.Tensor, margin: float = 0.0) -> MinedTriplets:
    """Per anchor: the positive farthest from it and the negative closest to it.

    Non-candidates are set to ∓inf before the max/min, so the anchor itself (distance 0)
    can never be chosen as its own positive, even when a real positive coincides with it."""
    d = distances.detach()
    positives, negatives = positive_pair_mask(labels), negative_pair_mask(labels)
    hardest_positive = torch.where(positives, d, torch.full_like(d, -torch.inf)).argmax(1)
    hardest_negative = torch.where(negatives, d, torch.full_like(d, torch.inf)).argmin(1)
    anchors = (positives.any(1) & negatives.any(1)).nonzero(as_tuple=True)[0]
    return MinedTriplets(anchors, hardest_positive[anchors], hardest_negative[anchors])


def mine_semi_hard(distances: torch.Tensor, labels: torch.Tensor, margin: float = 0.2) -> MinedTriplets:
    """Valid triplets with 0 < D[a, n] − D[a, p] ≤ margin: the negative is already farther
    than the positive, but not yet by the margin."""
    d = distances.detach()
    anchors, positives, negatives = mine_batch_all(d, labels)
    # filtering the valid list beats an (N, N, N) gap tensor: most triplets are invalid
    gap = d[anchors, negatives] - d[anchors, positives]
    keep = (gap > 0) & (gap <= margin)
    return MinedTriplets(anchors[keep], positives[keep], negatives[keep])


Miner = Callable[[torch.Tensor, torch.Tensor, float], MinedTriplets]


def _check_batch(embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    labels = torch.as_tensor(labels, device=embeddings.device)
    if embeddings.dim() != 2 or labels.dim() != 1 or len(labels) != len(embeddings):
        raise ValueError(f"expected embeddings (N, D) and labels (N,), got {tuple(embeddings.shape)} and {tuple(labels.shape)}")
    return labels


def _reduce(per_triplet: torch.Tensor, reduction: str, embeddings: torch.Tensor) -> LossOutput:
    n_triplets = per_triplet.numel()
    if n_triplets == 0:
        # No triplet to learn from: a zero that still backpropagates (to zero gradients),
        # so the training loop need not special-case this batch.
        return LossOutput((embeddings * 0.0).sum(), 0.0, 0)
    n_active = int((per_triplet > 0).sum())
    total = per_triplet.sum()  # inactive triplets add exactly 0
    loss = total / n_active if reduction == "mean" and n_active else total
    return LossOutput(loss, n_active / n_triplets, n_triplets)


def mined_triplet_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    miner: Miner,
    *,
    margin: float = 0.2,
    distance: DistanceLike = "euclidean",
    reduction: str = "mean",
) -> LossOutput:
    """Triplet loss over the triplets `miner(distance_matrix, labels, margin)` picks."""
    check_reduction(reduction, ONLINE_REDUCTIONS)
    labels = _check_batch(embeddings, labels)
    matrix = get_distance(distance).pairwise(embeddings)
    a, p, n = miner(matrix, labels, margin)
    per_triplet = torch.relu(matrix[a, p] - matrix[a, n] + margin)
    return _reduce(per_triplet, reduction, embeddings)


def batch_all_triplet_loss(embeddings: torch.Tensor, labels: torch.Tensor, *, margin: float = 0.2, distance: DistanceLike = "euclidean", reduction: str = "mean") -> LossOutput:
    """Triplet loss over every valid triplet in the batch (see module docstring)."""
    return mined_triplet_loss(embeddings, labels, mine_batch_all, margin=margin, distance=distance, reduction=reduction)


def batch_hard_triplet_loss(embeddings: torch.Tensor, labels: torch.Tensor, *, margin: float = 0.2, distance: DistanceLike = "euclidean", reduction: str = "mean") -> LossOutput:
    """Triplet loss over each anchor's hardest positive and hardest negative."""
    return mined_triplet_loss(embeddings, labels, mine_batch_hard, margin=margin, distance=distance, reduction=reduction)


def batch_semi_hard_triplet_loss(embeddings: torch.Tensor, labels: torch.Tensor, *, margin: float = 0.2, distance: DistanceLike = "euclidean", reduction: str = "mean") -> LossOutput:
    """Triplet loss over all semi-hard triplets, 0 < d(a, n) − d(a, p) ≤ margin."""
    return mined_triplet_loss(embeddings, labels, mine_semi_hard, margin=margin, distance=distance, reduction=reduction)


MINERS: dict[str, Miner] = {
    "batch_all": mine_batch_all,
    "batch_hard": mine_batch_hard,
    "semi_hard": mine_semi_hard,
}


class OnlineTripletLoss(nn.Module):
    """Triplet loss with the triplets mined inside each batch.

    ``OnlineTripletLoss("batch_hard", margin=0.2)(embeddings, labels)`` returns a
    `LossOutput`; `mining` is one of `ONLINE_MINING_STRATEGIES`."""

    def __init__(self, mining: str = "batch_all", margin: float = 0.2, distance: DistanceLike = "euclidean", reduction: str = "mean") -> None:
        super().__init__()
        if mining not in MINERS:
            hint = "; 'random' is offline and uses data.triplets" if mining == "random" else ""
            raise ModelError(f"unknown online mining '{mining}' (choose from {', '.join(ONLINE_MINING_STRATEGIES)}{hint})")
        self.mining = mining
        self.margin = float(margin)
        self.distance = get_distance(distance)
        self.reduction = check_reduction(reduction, ONLINE_REDUCTIONS)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> LossOutput:
        return mined_triplet_loss(embeddings, labels, MINERS[self.mining], margin=self.margin, distance=self.distance, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"mining={self.mining}, margin={self.margin}, distance={self.distance.name}, reduction={self.reduction}"
