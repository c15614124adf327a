"""The triplet loss on explicit (anchor, positive, negative) embeddings."""

from __future__ import annotations

import torch
from torch import nn

from .distances import Distance, get_distance
from .reduction import reduce


def triplet_margin_loss(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, *, margin: float = 0.2, distance="euclidean", reduction: str = "mean") -> torch.Tensor:
    """mean/sum over triplets of max(d(a, p) − d(a, n) + margin, 0)."""
    dist: Distance = get_distance(distance)
    per_triplet = torch.relu(dist.paired(anchor, positive) - dist.paired(anchor, negative) + margin)
    return reduce(per_triplet, reduction)


class TripletMarginLoss(nn.Module):
    def __init__(self, margin: float = 0.2, distance="euclidean", reduction: str = "mean") -> None:
        super().__init__()
        self.margin, self.distance, self.reduction = margin, get_distance(distance), reduction

    def forward(self, anchor, positive, negative) -> torch.Tensor:
        return triplet_margin_loss(anchor, positive, negative, margin=self.margin, distance=self.distance, reduction=self.reduction)
