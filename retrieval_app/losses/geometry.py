"""A term that keeps the distances between different classes' embeddings where the bare
backbone put them.

Triplet training with a margin pushes every negative beyond the margin, whatever it
was: classes that the backbone placed near each other (two kinds of cat) and far apart
(a cat and a chair) end up alike, and that graded similarity between classes is what
retrieval of classes the head never saw relies on. Within a class the triplet loss may
pull points together freely; across classes this term penalises the mean squared change
of each pair's distance from the backbone's, so the head specialises on what separates
the trained classes without flattening how classes relate:

    keep = mean over pairs (i, j) with labels[i] ≠ labels[j] of (d(i, j) − d₀(i, j))²

with d the distances of the trained embeddings and d₀ those of the backbone's."""

from __future__ import annotations

import torch

from .distances import DistanceLike, get_distance


def cross_class_drift(distances: torch.Tensor, reference: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between `distances` and `reference` (both (N, N)) over
    the pairs of different labels; a differentiable zero when there are none."""
    different = labels.unsqueeze(1) != labels.unsqueeze(0)
    count = different.sum()
    if not bool(count):
        return distances.sum() * 0.0
    return ((distances - reference) ** 2 * different).sum() / count


class GeometryKeeper:
    """`weight` × `cross_class_drift` between a batch's embeddings and the backbone's
    embeddings of the same images (`reference`, no gradient), under `distance`."""

    def __init__(self, weight: float, distance: DistanceLike = "euclidean") -> None:
        self.weight = float(weight)
        self.distance = get_distance(distance)

    def __call__(self, embeddings: torch.Tensor, reference: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            reference_distances = self.distance.pairwise(reference)
        return self.weight * cross_class_drift(self.distance.pairwise(embeddings), reference_distances, labels)
