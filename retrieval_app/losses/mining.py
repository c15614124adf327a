"""Online triplet mining inside a batch of (embeddings, labels).

All strategies start from the pairwise distance matrix D (one matrix product) and the
valid-triplet mask; they differ in which (anchor, positive, negative) they keep:
- batch-all: every valid triplet;
- batch-hard: per anchor, its farthest positive and its closest negative;
- semi-hard: negatives farther than the positive but within the margin.

Reduction "mean" averages over the triplets whose loss is positive (easy triplets
would otherwise dilute the gradient towards zero as training progresses); "sum" adds."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ..errors import ModelError
from .distances import get_distance
from .reduction import REDUCTIONS

MINING_STRATEGIES = ("batch_all", "batch_hard", "semi_hard", "random")
ONLINE_STRATEGIES = MINING_STRATEGIES[:3]


class LossOutput(NamedTuple):
    loss: torch.Tensor
    active_fraction: float  # share of considered triplets with a positive loss
    n_triplets: int  # triplets considered


def valid_triplet_mask(labels: torch.Tensor) -> torch.Tensor:
    """mask[i, j, k]: i, j, k distinct, labels[i] == labels[j] != labels[k]."""
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    not_self = ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    positive = same & not_self  # (anchor, positive)
    negative = ~same  # (anchor, negative); k != i follows from the labels differing
    return positive.unsqueeze(2) & negative.unsqueeze(1)


def _reduce_active(per_triplet: torch.Tensor, reduction: str, anchor_of_grad: torch.Tensor) -> LossOutput:
    n = per_triplet.numel()
    if n == 0:
        # No valid triplet in this batch: a zero that still backpropagates.
        return LossOutput(anchor_of_grad.sum() * 0.0, 0.0, 0)
    active = per_triplet > 0
    n_active = int(active.sum())
    if reduction == "sum":
        loss = per_triplet.sum()
    elif reduction == "mean":
        loss = per_triplet[active].mean() if n_active else per_triplet.sum() * 0.0
    else:
        raise ModelError(f"reduction must be 'mean' or 'sum', not '{reduction}'")
    return LossOutput(loss, n_active / n, n)


def batch_all_triplet_loss(embeddings, labels, *, margin: float = 0.2, distance="euclidean", reduction: str = "mean") -> LossOutput:
    d = get_distance(distance).pairwise(embeddings)
    mask = valid_triplet_mask(labels)
    # loss[i, j, k] = d(i, j) - d(i, k) + margin
    per_triplet = torch.relu(d.unsqueeze(2) - d.unsqueeze(1) + margin)[mask]
    return _reduce_active(per_triplet, reduction, embeddings)


def batch_hard_triplet_loss(embeddings, labels, *, margin: float = 0.2, distance="euclidean", reduction: str = "mean") -> LossOutput:
    d = get_distance(distance).pairwise(embeddings)
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    positive = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    negative = ~same
    usable = positive.any(1) & negative.any(1)  # anchors with at least one of each
    hardest_positive = torch.where(positive, d, torch.full_like(d, -torch.inf)).amax(1)
    hardest_negative = torch.where(negative, d, torch.full_like(d, torch.inf)).amin(1)
    per_triplet = torch.relu(hardest_positive - hardest_negative + margin)[usable]
    return _reduce_active(per_triplet, reduction, embeddings)


def batch_semi_hard_triplet_loss(embeddings, labels, *, margin: float = 0.2, distance="euclidean", reduction: str = "mean") -> LossOutput:
    d = get_distance(distance).pairwise(embeddings)
    ap = d.unsqueeze(2)
    an = d.unsqueeze(1)
    gap = (an - ap).detach()  # how much farther the negative is than the positive
    semi_hard = valid_triplet_mask(labels) & (gap > 0) & (gap <= margin)
    per_triplet = torch.relu(ap - an + margin)[semi_hard]
    return _reduce_active(per_triplet, reduction, embeddings)


_STRATEGY_FUNCTIONS = {
    "batch_all": batch_all_triplet_loss,
    "batch_hard": batch_hard_triplet_loss,
    "semi_hard": batch_semi_hard_triplet_loss,
}


class OnlineTripletLoss(nn.Module):
    """Triplet loss with triplets mined in each batch; forward returns a `LossOutput`."""

    def __init__(self, mining: str = "batch_all", margin: float = 0.2, distance="euclidean", reduction: str = "mean") -> None:
        super().__init__()
        if mining not in _STRATEGY_FUNCTIONS:
            raise ModelError(f"unknown online mining '{mining}' (choose from {', '.join(ONLINE_STRATEGIES)}; 'random' uses offline triplets)")
        if reduction not in REDUCTIONS[:2]:
            raise ModelError(f"reduction must be 'mean' or 'sum', not '{reduction}'")
        self.mining, self.margin, self.reduction = mining, margin, reduction
        self.distance = get_distance(distance)
        self._fn = _STRATEGY_FUNCTIONS[mining]

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> LossOutput:
        return self._fn(embeddings, labels, margin=self.margin, distance=self.distance, reduction=self.reduction)
