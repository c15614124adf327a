"""What a batch's triplets look like: the mining statistics.

Each triplet falls in one of three kinds by its gap g = d(a, n) − d(a, p), as
pytorch-metric-learning's `TripletMarginMiner` types them:

- hard: g ≤ 0 (the negative is no farther than the positive);
- semi-hard: 0 < g ≤ margin (right order, not yet by the margin);
- easy: g > margin (no loss, no gradient).

`triplet_sums` reduces a miner's output to six numbers in one pass (the count, the
three kinds, the sums of d(a, p) and d(a, n)), cheap enough for a training loop to call
every few steps; `TripletStatistics` turns sums into fractions and means."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from .miners import MinedTriplets

KINDS = ("hard", "semi_hard", "easy")


def triplet_gaps(distances: torch.Tensor, triplets: MinedTriplets) -> tuple[torch.Tensor, torch.Tensor]:
    """(d(a, p), d(a, n)) of each triplet, from the batch-to-reference distance matrix."""
    anchors, positives, negatives = triplets
    d = distances.detach()
    return d[anchors, positives], d[anchors, negatives]


def triplet_sums(distances: torch.Tensor, triplets: MinedTriplets, margin: float) -> list[float]:
    """[triplets, hard, semi-hard, easy, Σ d(a, p), Σ d(a, n)] as six floats."""
    return sums_of_gaps(*triplet_gaps(distances, triplets), margin)


def sums_of_gaps(d_ap: torch.Tensor, d_an: torch.Tensor, margin: float) -> list[float]:
    """`triplet_sums` from the triplets' d(a, p) and d(a, n)."""
    gap = d_an - d_ap
    hard = (gap <= 0).sum()
    easy = (gap > margin).sum()
    n = torch.tensor(gap.numel(), device=gap.device)
    return torch.stack([n, hard, n - hard - easy, easy, d_ap.double().sum(), d_an.double().sum()]).double().tolist()


@dataclass(frozen=True)
class TripletStatistics:
    n_triplets: int
    hard: float  # fractions of the triplets
    semi_hard: float
    easy: float
    d_ap: float  # mean anchor-positive distance
    d_an: float  # mean anchor-negative distance

    @classmethod
    def from_sums(cls, sums) -> "TripletStatistics | None":
        n, hard, semi_hard, easy, sum_ap, sum_an = (float(v) for v in sums)
        if n <= 0:
            return None
        return cls(int(n), hard / n, semi_hard / n, easy / n, sum_ap / n, sum_an / n)

    def to_dict(self) -> dict:
        return asdict(self)


def triplet_statistics(distances: torch.Tensor, triplets: MinedTriplets, margin: float) -> TripletStatistics | None:
    """The statistics of `triplets` (a miner's output; None when it is empty)."""
    return TripletStatistics.from_sums(triplet_sums(distances, triplets, margin))
