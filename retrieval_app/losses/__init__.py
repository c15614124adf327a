"""Triplet losses: distances, the explicit-triplet loss and online mining."""

from .distances import (
    DISTANCES,
    Distance,
    broadcast_pairwise,
    cosine_distance,
    euclidean_distance,
    get_distance,
    linf_distance,
    safe_sqrt,
    squared_euclidean_distance,
)
from .mining import (
    MINERS,
    MINING_STRATEGIES,
    ONLINE_MINING_STRATEGIES,
    LossOutput,
    MinedTriplets,
    OnlineTripletLoss,
    batch_all_triplet_loss,
    batch_hard_triplet_loss,
    batch_semi_hard_triplet_loss,
    mine_batch_all,
    mine_batch_hard,
    mine_semi_hard,
    mined_triplet_loss,
    valid_triplet_mask,
)
from .triplet import TripletMarginLoss, triplet_margin_loss

__all__ = [
    "DISTANCES", "Distance", "LossOutput", "MINERS", "MINING_STRATEGIES", "MinedTriplets", "ONLINE_MINING_STRATEGIES",
    "OnlineTripletLoss", "TripletMarginLoss", "batch_all_triplet_loss", "batch_hard_triplet_loss",
    "batch_semi_hard_triplet_loss", "broadcast_pairwise", "cosine_distance", "euclidean_distance", "get_distance",
    "linf_distance", "mine_batch_all", "mine_batch_hard", "mine_semi_hard", "mined_triplet_loss", "safe_sqrt",
    "squared_euclidean_distance", "triplet_margin_loss", "valid_triplet_mask",
]
