"""The triplet loss over mined triplets, in pytorch-metric-learning's three parts:

1. a miner (`miners.py`) picks index triplets from the batch (and, optionally, a
   reference set to mine against);
2. the loss gives each triplet max(d(a, p) − d(a, n) + margin, 0) (`margin_violation`,
   the one place the formula is written);
3. a reducer (`reducers.py`) makes one number of them: the mean over active triplets,
   or the sum.

`TripletLoss` returns a `LossOutput` that also keeps what it computed on the way (the
per-triplet losses, the triplets, the detached distance matrix), so statistics about
the batch (`statistics.py`, `TripletLoss.statistics`) cost no second distance matrix.
`OnlineTripletLoss` is the same loss limited to the strategies mined inside a batch."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..choices import MINING_STRATEGIES
from ..errors import ModelError
from .distances import DistanceLike, get_distance
from .miners import (
    MINERS,
    ONLINE_MINING_STRATEGIES,
    MinedTriplets,
    TripletGrid,
    TripletMiner,
    check_batch,
    mine_batch_all,
    mine_batch_hard,
    mine_laid_out,
    mine_semi_hard,
    negative_pair_mask,
    positive_pair_mask,
    valid_triplet_mask,
    valid_triplets,
)
from .grid_loss import grid_margin_backward, grid_margin_forward, grid_margin_loss
from .reducers import LossOutput, get_reducer, reduce_triplet_losses
from .statistics import TripletStatistics, sums_of_gaps, triplet_gaps
from .triplet import check_reduction, margin_violation

__all__ = [
    "MINERS", "MINING_STRATEGIES", "ONLINE_MINING_STRATEGIES", "LossOutput", "MinedTriplets", "OnlineTripletLoss", "TripletLoss",
    "TripletMiner", "batch_all_triplet_loss", "batch_hard_triplet_loss", "batch_semi_hard_triplet_loss", "mine_batch_all",
    "mine_batch_hard", "mine_laid_out", "mine_semi_hard", "mined_triplet_loss", "negative_pair_mask", "positive_pair_mask",
    "valid_triplet_mask",
]

ONLINE_REDUCTIONS = ("mean", "sum")

Miner = Callable[..., MinedTriplets]  # (distances, labels, margin[, ref_labels]) -> MinedTriplets


def _loss_from_matrix(matrix: torch.Tensor, triplets: MinedTriplets, margin: float, reduction: str, embeddings: torch.Tensor,
                      labels: torch.Tensor, ref_labels: torch.Tensor | None, grid: TripletGrid | None = None) -> LossOutput:
    if grid is not None and grid.positives.numel() and grid.negatives.numel():
        # the same triplets in the same order, as one hand-differentiated node (grid_loss.py)
        loss, per_triplet, n_active = grid_margin_loss(matrix, grid, margin, reduction)
        active, count = n_active / per_triplet.numel(), per_triplet.numel()
    else:
        anchors, positives, negatives = triplets
        per_triplet = margin_violation(matrix[anchors, positives], matrix[anchors, negatives], margin)
        loss, active, count = reduce_triplet_losses(per_triplet, reduction, embeddings)
    return LossOutput(loss, active, count, per_triplet, triplets, matrix.detach(), labels, ref_labels)


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
    labels, _ = check_batch(embeddings, labels)
    matrix = get_distance(distance).pairwise(embeddings)
    return _loss_from_matrix(matrix, miner(matrix.detach(), labels, margin), margin, reduction, embeddings, labels, None)


def batch_all_triplet_loss(embeddings: torch.Tensor, labels: torch.Tensor, *, margin: float = 0.2, distance: DistanceLike = "euclidean", reduction: str = "mean") -> LossOutput:
    """Triplet loss over every valid triplet in the batch."""
    return mined_triplet_loss(embeddings, labels, mine_batch_all, margin=margin, distance=distance, reduction=reduction)


def batch_hard_triplet_loss(embeddings: torch.Tensor, labels: torch.Tensor, *, margin: float = 0.2, distance: DistanceLike = "euclidean", reduction: str = "mean") -> LossOutput:
    """Triplet loss over each anchor's hardest positive and hardest negative."""
    return mined_triplet_loss(embeddings, labels, mine_batch_hard, margin=margin, distance=distance, reduction=reduction)


def batch_semi_hard_triplet_loss(embeddings: torch.Tensor, labels: torch.Tensor, *, margin: float = 0.2, distance: DistanceLike = "euclidean", reduction: str = "mean") -> LossOutput:
    """Triplet loss over all semi-hard triplets, 0 < d(a, n) − d(a, p) ≤ margin."""
    return mined_triplet_loss(embeddings, labels, mine_semi_hard, margin=margin, distance=distance, reduction=reduction)


class TripletLoss(nn.Module):
    """Miner + per-triplet margin loss + reducer.

    ``TripletLoss("batch_hard", margin=0.2)(embeddings, labels)`` returns a `LossOutput`.
    ``ref_emb``/``ref_labels`` mine against a reference set (anchors from the batch,
    positives and negatives from the set); ``triplets`` skips the miner and scores the
    given index triplets. `mining` is one of `MINING_STRATEGIES` ("random": the batch
    holds laid-out random triplets, see `miners.mine_laid_out`)."""

    strategies = MINING_STRATEGIES

    def __init__(self, mining: str = "batch_all", margin: float = 0.2, distance: DistanceLike = "euclidean", reduction: str = "mean") -> None:
        super().__init__()
        if mining not in self.strategies:
            raise ModelError(f"unknown mining '{mining}' (choose from {', '.join(self.strategies)}{self._hint(mining)})")
        self.mining = mining
        self.margin = float(margin)
        self.distance = get_distance(distance)
        self.reduction = check_reduction(reduction, ONLINE_REDUCTIONS)
        get_reducer(reduction)
        self.miner = TripletMiner(mining, self.margin, self.distance)

    @staticmethod
    def _hint(mining: str) -> str:
        return ""

    def forward(self, embeddings: torch.Tensor, labels, ref_emb: torch.Tensor | None = None, ref_labels=None,
                triplets: MinedTriplets | None = None) -> LossOutput:
        labels, ref_labels = check_batch(embeddings, labels, ref_emb, ref_labels)
        matrix = self.distance.pairwise(embeddings, ref_emb)
        grid = None
        if triplets is None:
            triplets, grid = self.miner.mine_with_grid(matrix, labels, ref_labels)
        return _loss_from_matrix(matrix, triplets, self.margin, self.reduction, embeddings, labels, ref_labels, grid)

    @property
    def has_closed_form(self) -> bool:
        """Whether `closed_form` can give this loss's gradient (for P×K batches)."""
        return self.mining == "batch_all" and self.distance.self_matrix_with_backward is not None

    def closed_form(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[LossOutput, torch.Tensor] | None:
        """The loss of a batch against itself together with ∂loss/∂embeddings, computed
        without autograd, or None where that is not written out: only batch-all mining
        on a batch whose triplets form a grid (a P×K batch), with a distance that has a
        closed-form self matrix (`Distance.self_matrix_with_backward`: euclidean). The
        same arithmetic as `forward` then `backward` (its nodes are these functions), so
        the same numbers, at a fraction of a small step's cost: no graph is recorded or
        replayed (see training/head_loop.py)."""
        if not self.has_closed_form:
            return None
        valid = valid_triplets(labels)
        grid = valid.grid
        if grid is None or not (grid.positives.numel() and grid.negatives.numel()):
            return None
        matrix, matrix_backward = self.distance.self_matrix_with_backward(embeddings)
        loss, per_triplet, _, saved = grid_margin_forward(matrix, grid, self.margin, self.reduction == "mean")
        out = LossOutput(loss, saved.count / per_triplet.numel(), per_triplet.numel(), per_triplet, valid.flat, matrix, labels, None)
        return out, matrix_backward(grid_margin_backward(saved))

    def valid_gaps(self, out: LossOutput) -> tuple[torch.Tensor, torch.Tensor]:
        """d(a, p) and d(a, n) of every valid triplet of the batch (not only the mined
        ones), from the distances `out` already holds."""
        return triplet_gaps(out.distances, self.miner.valid(out.distances, out.labels, out.ref_labels))

    def statistics(self, out: LossOutput) -> TripletStatistics | None:
        """Hard / semi-hard / easy fractions and mean d(a, p), d(a, n) of the batch's
        valid triplets (None when it has none)."""
        return TripletStatistics.from_sums(sums_of_gaps(*self.valid_gaps(out), self.margin))

    def extra_repr(self) -> str:
        return f"mining={self.mining}, margin={self.margin}, distance={self.distance.name}, reduction={self.reduction}"


class OnlineTripletLoss(TripletLoss):
    """`TripletLoss` with the triplets mined inside each batch (`ONLINE_MINING_STRATEGIES`)."""

    strategies = ONLINE_MINING_STRATEGIES

    @staticmethod
    def _hint(mining: str) -> str:
        return "; 'random' is offline and uses data.triplets" if mining == "random" else ""
