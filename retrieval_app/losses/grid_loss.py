"""The margin loss over a P×K batch's triplet grid (`miners.TripletGrid`), differentiated
by hand.

Written as a chain of torch operations (two gathers, a broadcast difference, relu, sum,
division by the active count), autograd records each one, and on a small step (64
embeddings, quick mode's head on cached features) recording and replaying them cost far
more than the arithmetic. Here it is one autograd node: each active triplet (a, p, n)
adds +w to ∂/∂D[a, p] and −w to ∂/∂D[a, n] (w = 1 / active count for the mean, 1 for
the sum), i.e. two row sums of the active mask scattered into the matrix along the
grid's index rows. Values equal the composite form's (`margin_violation` + the reducer);
gradients too, up to rounding (tests compare both)."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .miners import TripletGrid
from .triplet import margin_violation


class GridSaved(NamedTuple):
    """What `grid_margin_backward` needs of a `grid_margin_forward`."""

    weights: torch.Tensor  # (N, P, Q): 1.0 for the triplets with a positive loss, else 0.0
    grid: TripletGrid
    scale: float  # ∂loss/∂(sum of the triplets' losses)
    shape: torch.Size  # of the distance matrix
    count: int  # active triplets (what `n_active` holds, read once)


class _GridMarginLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, matrix: torch.Tensor, grid: TripletGrid, margin: float, mean: bool):
        loss, flat, n_active, saved = grid_margin_forward(matrix, grid, margin, mean)
        ctx.save_for_backward(saved.weights)
        ctx.saved = saved._replace(weights=None)
        ctx.mark_non_differentiable(flat, n_active)
        return loss, flat, n_active

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor, _grad_per_triplet, _grad_count):
        (weights,) = ctx.saved_tensors
        return grid_margin_backward(ctx.saved._replace(weights=weights), grad_loss), None, None, None


def grid_margin_forward(matrix: torch.Tensor, grid: TripletGrid, margin: float, mean: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, GridSaved]:
    """(loss, per-triplet losses flattened, active count as a tensor, what the backward
    needs) of the grid's triplets of distance `matrix`, without autograd: the forward half
    of `_GridMarginLoss`."""
    per_triplet = margin_violation(*grid.pair_distances(matrix), margin)
    weights = per_triplet.sign()  # the losses are ≥ 0: 1 where active, 0 elsewhere
    n_active = weights.sum()
    count = int(n_active)
    divide = mean and count > 0  # the mean over active triplets; none active: the (zero) sum
    total = per_triplet.sum()
    loss = total / count if divide else total
    return loss, per_triplet.reshape(-1), n_active, GridSaved(weights, grid, 1.0 / count if divide else 1.0, matrix.shape, count)


def grid_margin_backward(saved: GridSaved, grad_loss: torch.Tensor | None = None) -> torch.Tensor:
    """∂loss/∂matrix (times `grad_loss` when given) for a `grid_margin_forward` (see the
    module)."""
    grad = saved.weights.new_zeros(saved.shape)
    grad.scatter_add_(1, saved.grid.positives, saved.weights.sum(2))
    grad.scatter_add_(1, saved.grid.negatives, saved.weights.sum(1).neg_())
    return grad.mul_(saved.scale if grad_loss is None else grad_loss * saved.scale)


def grid_margin_loss(matrix: torch.Tensor, grid: TripletGrid, margin: float, reduction: str) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(loss, per-triplet losses, active count) of the grid's triplets of distance
    `matrix`, in the grid's order; `reduction` "mean" (over the active triplets) or
    "sum". One autograd node (see the module)."""
    loss, per_triplet, n_active = _GridMarginLoss.apply(matrix, grid, float(margin), reduction == "mean")
    return loss, per_triplet, int(n_active)
