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

import torch

from .miners import TripletGrid
from .triplet import margin_violation


class _GridMarginLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, matrix: torch.Tensor, grid: TripletGrid, margin: float, mean: bool):
        per_triplet = margin_violation(*grid.pair_distances(matrix), margin)
        active = per_triplet > 0
        n_active = active.sum()
        count = int(n_active)
        divide = mean and count > 0  # the mean over active triplets; none active: the (zero) sum
        ctx.save_for_backward(active, grid.positives, grid.negatives)
        ctx.scale, ctx.shape = 1.0 / count if divide else 1.0, matrix.shape
        flat = per_triplet.reshape(-1)
        ctx.mark_non_differentiable(flat, n_active)
        total = per_triplet.sum()
        return total / count if divide else total, flat, n_active

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor, _grad_per_triplet, _grad_count):
        active, positives, negatives = ctx.saved_tensors
        weights = active.to(grad_loss.dtype) * (grad_loss * ctx.scale)
        grad = grad_loss.new_zeros(ctx.shape)
        grad.scatter_add_(1, positives, weights.sum(2))
        grad.scatter_add_(1, negatives, -weights.sum(1))
        return grad, None, None, None


def grid_margin_loss(matrix: torch.Tensor, grid: TripletGrid, margin: float, reduction: str) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(loss, per-triplet losses, active count) of the grid's triplets of distance
    `matrix`, in the grid's order; `reduction` "mean" (over the active triplets) or
    "sum". One autograd node (see the module)."""
    loss, per_triplet, n_active = _GridMarginLoss.apply(matrix, grid, float(margin), reduction == "mean")
    return loss, per_triplet, int(n_active)
