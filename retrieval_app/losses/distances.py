"""Distances between embeddings: paired (row i of a with row i of b) and pairwise (every
row of x against every row of y), with a square root that is safe at zero distance."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union

import torch

from ..errors import ModelError

PairedFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# Below this squared distance the sqrt is treated as exactly zero (its gradient too).
_SQRT_EPS = 1e-16


def safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """sqrt with a finite (zero) gradient where x == 0. The plain sqrt's gradient
    1/(2·sqrt(x)) is infinite at 0, and 0·inf turns into NaN in the backward pass when
    two embeddings coincide (always on the diagonal of a distance matrix)."""
    zero = x <= _SQRT_EPS
    root = torch.sqrt(torch.where(zero, torch.ones_like(x), x))
    return torch.where(zero, torch.zeros_like(x), root)


def squared_euclidean_matrix(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """‖a‖² − 2⟨a,b⟩ + ‖b‖², clamped at 0 (rounding can make it slightly negative)."""
    y = x if y is None else y
    sq = (x * x).sum(1, keepdim=True) - 2.0 * x @ y.t() + (y * y).sum(1).unsqueeze(0)
    sq = sq.clamp_min(0.0)
    if y is x:
        # The diagonal is exactly zero by definition; rounding must not say otherwise.
        sq = sq * (1.0 - torch.eye(len(x), device=x.device, dtype=x.dtype))
    return sq


@dataclass(frozen=True)
class Distance:
    name: str
    paired_fn: PairedFn
    pairwise_fn: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor] | None = None

    def paired(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.paired_fn(a, b)

    def pairwise(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.pairwise_fn is not None:
            return self.pairwise_fn(x, y)
        # Generic fallback for custom distances: broadcast every pair through paired().
        y = x if y is None else y
        n, m = len(x), len(y)
        left = x.unsqueeze(1).expand(n, m, -1).reshape(n * m, -1)
        right = y.unsqueeze(0).expand(n, m, -1).reshape(n * m, -1)
        return self.paired_fn(left, right).reshape(n, m)


def _euclidean_paired(a, b):
    return safe_sqrt(((a - b) ** 2).sum(-1))


def _squared_paired(a, b):
    return ((a - b) ** 2).sum(-1)


def _cosine_paired(a, b):
    return 1.0 - torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-8)


def _cosine_matrix(x, y=None):
    xn = torch.nn.functional.normalize(x, dim=1, eps=1e-8)
    yn = xn if y is None else torch.nn.functional.normalize(y, dim=1, eps=1e-8)
    return (1.0 - xn @ yn.t()).clamp_min(0.0)


def linf_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """L-infinity (Chebyshev) distance: the shipped example of a custom distance."""
    return (a - b).abs().amax(-1)


def _linf_matrix(x, y=None):
    y = x if y is None else y
    return (x.unsqueeze(1) - y.unsqueeze(0)).abs().amax(-1)


DISTANCES: dict[str, Distance] = {
    "euclidean": Distance("euclidean", _euclidean_paired, lambda x, y=None: safe_sqrt(squared_euclidean_matrix(x, y))),
    "squared_euclidean": Distance("squared_euclidean", _squared_paired, squared_euclidean_matrix),
    "cosine": Distance("cosine", _cosine_paired, _cosine_matrix),
    "linf": Distance("linf", linf_distance, _linf_matrix),
}


def get_distance(distance: Union[str, Distance, PairedFn]) -> Distance:
    """A registered name, a `Distance`, or any callable `(a, b) -> (N,)` paired distance."""
    if isinstance(distance, Distance):
        return distance
    if isinstance(distance, str):
        try:
            return DISTANCES[distance]
        except KeyError:
            raise ModelError(f"unknown distance '{distance}' (choose from {', '.join(DISTANCES)}, or pass a callable)") from None
    if callable(distance):
        return Distance(getattr(distance, "__name__", "custom"), distance)
    raise ModelError(f"a distance must be a name, a Distance or a callable, not {type(distance).__name__}")
