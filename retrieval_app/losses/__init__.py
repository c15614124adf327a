"""Triplet losses: distances, miners, the per-triplet loss, reducers and statistics."""

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
    TripletLoss,
    TripletMiner,
    batch_all_triplet_loss,
    batch_hard_triplet_loss,
    batch_semi_hard_triplet_loss,
    mine_batch_all,
    mine_batch_hard,
    mine_laid_out,
    mine_semi_hard,
    mined_triplet_loss,
    valid_triplet_mask,
)
from .reducers import REDUCERS, get_reducer
from .statistics import TripletStatistics, triplet_statistics, triplet_sums
from .triplet import TripletMarginLoss, margin_violation, triplet_margin_loss

__all__ = [
    "DISTANCES", "Distance", "LossOutput", "MINERS", "MINING_STRATEGIES", "MinedTriplets", "ONLINE_MINING_STRATEGIES",
    "OnlineTripletLoss", "REDUCERS", "TripletLoss", "TripletMarginLoss", "TripletMiner", "TripletStatistics",
    "batch_all_triplet_loss", "batch_hard_triplet_loss", "batch_semi_hard_triplet_loss", "broadcast_pairwise",
    "cosine_distance", "euclidean_distance", "get_distance", "get_reducer", "linf_distance", "margin_violation",
    "mine_batch_all", "mine_batch_hard", "mine_laid_out", "mine_semi_hard", "mined_triplet_loss", "safe_sqrt",
    "squared_euclidean_distance", "triplet_margin_loss", "triplet_statistics", "triplet_sums", "valid_triplet_mask",
]
