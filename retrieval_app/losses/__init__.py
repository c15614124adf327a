"""Triplet losses: distances, the explicit-triplet loss and online mining."""

from .distances import DISTANCES, Distance, get_distance, linf_distance, safe_sqrt
from .mining import (
    MINING_STRATEGIES,
    LossOutput,
    OnlineTripletLoss,
    batch_all_triplet_loss,
    batch_hard_triplet_loss,
    batch_semi_hard_triplet_loss,
    valid_triplet_mask,
)
from .triplet import TripletMarginLoss, triplet_margin_loss

__all__ = [
    "DISTANCES", "Distance", "LossOutput", "MINING_STRATEGIES", "OnlineTripletLoss", "TripletMarginLoss",
    "batch_all_triplet_loss", "batch_hard_triplet_loss", "batch_semi_hard_triplet_loss", "get_distance",
    "linf_distance", "safe_sqrt", "triplet_margin_loss", "valid_triplet_mask",
]
