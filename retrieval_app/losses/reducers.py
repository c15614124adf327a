"""Reducers: one loss from the per-triplet losses a triplet loss returns.

- ``mean``: the mean over the *active* triplets (loss > 0). Easy triplets would otherwise
  dilute the loss toward zero as training progresses; this is pytorch-metric-learning's
  default ``AvgNonZeroReducer``.
- ``sum``: every triplet's loss added (PML's ``SumReducer``).

The names are `choices.REDUCTIONS`; `REDUCERS` is the one registry of them."""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from ..choices import REDUCTIONS
from ..errors import ModelError


class LossOutput(NamedTuple):
    """What a triplet loss reports for one batch. The first three fields are the
    summary; the others are what the loss computed on the way, kept (not recomputed)
    for statistics: the per-triplet losses, the mined triplets, the (detached) distance
    matrix between the batch and its reference set, and both sets' labels."""

    loss: torch.Tensor  # scalar, differentiable w.r.t. the embeddings
    active_fraction: float  # share of the considered triplets whose loss is > 0
    n_triplets: int  # triplets considered (mined) in this batch
    per_triplet: torch.Tensor | None = None
    triplets: tuple | None = None  # MinedTriplets
    distances: torch.Tensor | None = None  # (N, M), detached
    labels: torch.Tensor | None = None
    ref_labels: torch.Tensor | None = None  # None: the batch is its own reference set


def _mean_over_active(per_triplet: torch.Tensor, n_active: int) -> torch.Tensor:
    total = per_triplet.sum()  # inactive triplets add exactly 0
    return total / n_active if n_active else total


def _sum(per_triplet: torch.Tensor, n_active: int) -> torch.Tensor:
    return per_triplet.sum()


Reducer = Callable[[torch.Tensor, int], torch.Tensor]
REDUCERS: dict[str, Reducer] = {"mean": _mean_over_active, "sum": _sum}
assert tuple(REDUCERS) == REDUCTIONS, "choices.REDUCTIONS and losses.reducers.REDUCERS must list the same reductions"


def get_reducer(name: str) -> Reducer:
    if name not in REDUCERS:
        raise ModelError(f"unknown reduction '{name}' (choose from {', '.join(REDUCERS)})")
    return REDUCERS[name]


def reduce_triplet_losses(per_triplet: torch.Tensor, reduction: str, embeddings: torch.Tensor) -> tuple[torch.Tensor, float, int]:
    """(loss, active fraction, triplet count) of the per-triplet losses. Without a
    triplet the loss is a zero that still backpropagates (to zero gradients), so a
    training loop need not special-case such a batch."""
    n_triplets = per_triplet.numel()
    if n_triplets == 0:
        return (embeddings * 0.0).sum(), 0.0, 0
    n_active = int((per_triplet > 0).sum())
    return get_reducer(reduction)(per_triplet, n_active), n_active / n_triplets, n_triplets
