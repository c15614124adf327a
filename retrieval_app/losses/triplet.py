"""The triplet margin loss on explicit (anchor, positive, negative) embeddings:
max(d(a, p) − d(a, n) + margin, 0) per triplet, then mean or sum."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ModelError
from .distances import DistanceLike, get_distance

# "none" keeps one loss per triplet, as torch's own losses do.
EXPLICIT_REDUCTIONS = ("mean", "sum", "none")


def check_reduction(reduction: str, allowed: tuple[str, ...] = EXPLICIT_REDUCTIONS) -> str:
    """Return `reduction` if it is one of `allowed`, else raise a `ModelError` naming them."""
    if reduction not in allowed:
        raise ModelError(f"unknown reduction '{reduction}' (choose from {', '.join(allowed)})")
    return reduction


def margin_violation(d_ap: torch.Tensor, d_an: torch.Tensor, margin: float) -> torch.Tensor:
    """The triplet formula, the one place it is written: max(d(a, p) − d(a, n) + margin, 0)
    per triplet, from the anchor–positive and anchor–negative distances."""
    return torch.relu(d_ap - d_an + margin)


def triplet_margin_loss(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor,
    *,
    margin: float = 0.2,
    distance: DistanceLike = "euclidean",
    reduction: str = "mean",
) -> torch.Tensor:
    """Triplet loss over N explicit triplets (each argument (N, D)).

    `distance` is a registered name, a `Distance` or a function (a, b) -> (N,). "mean"
    averages over all N triplets (as `torch.nn.TripletMarginLoss` does), "sum" adds them,
    "none" returns the (N,) per-triplet losses."""
    check_reduction(reduction)
    dist = get_distance(distance)
    per_triplet = margin_violation(dist.paired(anchor, positive), dist.paired(anchor, negative), margin)
    if reduction == "none":
        return per_triplet
    return per_triplet.sum() if reduction == "sum" else per_triplet.mean()


class TripletMarginLoss(nn.Module):
    """Module form of `triplet_margin_loss`: ``loss(anchor, positive, negative)``."""

    def __init__(self, margin: float = 0.2, distance: DistanceLike = "euclidean", reduction: str = "mean") -> None:
        super().__init__()
        self.margin = float(margin)
        self.distance = get_distance(distance)
        self.reduction = check_reduction(reduction)

    def forward(self, anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
        return triplet_margin_loss(anchor, positive, negative, margin=self.margin, distance=self.distance, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, distance={self.distance.name}, reduction={self.reduction}"
