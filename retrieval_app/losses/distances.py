"""Distances between embeddings.

A `Distance` answers two questions: `paired(a, b)` compares row i of `a` with row i of `b`
(explicit triplets), `pairwise(x, y)` compares every row of `x` with every row of `y`
(online mining, which needs the whole batch's distance matrix). Registered names:
`euclidean`, `squared_euclidean`, `cosine` (1 − cosine similarity) and `linf` (the shipped
example of a custom distance). Any callable `(a, b) -> (N,)` is a distance too; its
pairwise form is built by broadcasting every pair through it.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F

from ..choices import DISTANCES as DISTANCE_NAMES
from ..errors import ModelError

PairedFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
PairwiseFn = Callable[[torch.Tensor, Optional[torch.Tensor]], torch.Tensor]
DistanceLike = Union[str, "Distance", PairedFn]

# Squared distances at or below this count as exactly zero in `safe_sqrt`: the distance
# then changes by at most 1e-6, and the gradient stays finite.
SQRT_EPS = 1e-12
# Keeps cosine finite for an all-zero embedding (its distance to anything is then 1).
_NORM_EPS = 1e-8
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def safe_sqrt(x: torch.Tensor, eps: float = SQRT_EPS) -> torch.Tensor:
    """Square root whose gradient is finite (zero) where ``x <= eps``.

    The plain sqrt has gradient 1/(2·sqrt(x)), infinite at 0; the chain rule then multiplies
    it by a zero and gives NaN. That happens whenever two embeddings coincide, and always on
    the diagonal of a distance matrix. Feeding sqrt a harmless 1 where x is tiny and masking
    the result keeps both the value and the gradient clean."""
    tiny = x <= eps
    # scalar branches: no tensors of ones and zeros allocated (a training step's overhead)
    return torch.where(tiny, 0.0, torch.sqrt(torch.where(tiny, 1.0, x)))


_NO_GUARD = contextlib.nullcontext()


def _full_precision(device: torch.device):
    """Autocast would run the matrix products below in float16, where ‖a‖² − 2⟨a,b⟩ + ‖b‖²
    loses almost every digit of a small distance. Distances are cheap: keep them float32.
    Without autocast on, nothing to switch off (entering an autocast guard costs ~10 µs, a
    share of a small training step's distance matrix)."""
    try:
        if not torch.is_autocast_enabled(device.type):
            return _NO_GUARD
        return torch.autocast(device_type=device.type, enabled=False)
    except (RuntimeError, ValueError):  # a device type autocast does not know
        return _NO_GUARD


def _upcast(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in _LOW_PRECISION else t


def squared_euclidean_matrix(x: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(N, M) squared Euclidean distances by the distance-matrix trick
    ‖a‖² + ‖b‖² − 2⟨a,b⟩: one fused matrix product (addmm) instead of an (N, M, D)
    difference tensor. Rounding can make entries slightly negative, so they are clamped
    at 0; with `y` omitted the diagonal is set to exactly 0 (it is by definition, rounding
    says ~1e-7)."""
    same = y is None
    with _full_precision(x.device):
        x = _upcast(x)
        y = x if same else _upcast(y)
        squared_norms_x = (x * x).sum(1)
        squared_norms_y = squared_norms_x if same else (y * y).sum(1)
        norms = squared_norms_x.unsqueeze(1) + squared_norms_y.unsqueeze(0)
        squared = torch.addmm(norms, x, y.t(), alpha=-2.0).clamp_min(0.0)
        if same:
            squared = squared * _off_diagonal(len(x), x.device)
    return squared


@functools.lru_cache(maxsize=8)
def _off_diagonal(n: int, device: torch.device) -> torch.Tensor:
    """(n, n) bool, False on the diagonal; cached (a training loop asks every step for the
    same size), never modified."""
    return ~torch.eye(n, dtype=torch.bool, device=device)


def euclidean_matrix(x: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(N, M) Euclidean distances; finite gradients where points coincide. A batch against
    itself is one autograd node (`_EuclideanSelfMatrix`)."""
    if y is None and torch.is_grad_enabled() and x.requires_grad:
        return _EuclideanSelfMatrix.apply(x)
    return safe_sqrt(squared_euclidean_matrix(x, y))


class _EuclideanSelfMatrix(torch.autograd.Function):
    """`safe_sqrt(squared_euclidean_matrix(x))` (the same trick in fewer operations, with
    the same exact zeros) differentiated by hand. As a chain of
    operations autograd records about ten nodes and replays twice as many operations
    backward, which on a small training step (64 rows) costs far more than the
    arithmetic. D_ij = sqrt(s_ij), s_ij = ‖x_i‖² + ‖x_j‖² − 2⟨x_i, x_j⟩, so
    ∂D_ij/∂x_i = (x_i − x_j)/D_ij; with W = G/D (0 where the safe square root gave 0: the
    diagonal, coinciding points) and S = W + Wᵀ the gradient is rowsum(S)·x − S·x."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        distances = euclidean_self_matrix(x)
        ctx.save_for_backward(x, distances)
        return distances

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return euclidean_self_matrix_backward(*ctx.saved_tensors, grad)


def euclidean_self_matrix(x: torch.Tensor) -> torch.Tensor:
    """The (N, N) Euclidean distances among the rows of `x`, with `safe_sqrt`'s exact
    zeros, no autograd: the forward half of `_EuclideanSelfMatrix`."""
    with _full_precision(x.device):
        rows = _upcast(x)
        gram = rows @ rows.t()
        norms = gram.diagonal()  # from the same product: a row and its duplicate give exactly 0
        squared = torch.add(norms.unsqueeze(0), norms.unsqueeze(1)).sub_(gram, alpha=2.0)
    distances = F.threshold_(squared, SQRT_EPS, 0.0).sqrt_()  # safe_sqrt's zeros: s ≤ SQRT_EPS (and rounding's s < 0)
    distances.fill_diagonal_(0.0)
    return distances


def euclidean_self_matrix_backward(x: torch.Tensor, distances: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """∂loss/∂x from ∂loss/∂distances for `distances = euclidean_self_matrix(x)` (see
    `_EuclideanSelfMatrix`)."""
    with _full_precision(x.device):
        rows = x.to(distances.dtype)
        weights = torch.where(distances > 0, grad / distances, 0.0)  # safe_sqrt's gradient is 0 at 0
        weights = weights + weights.t()
        return torch.addmm(weights.sum(1, keepdim=True) * rows, weights, rows, alpha=-1.0).to(x.dtype)


def _euclidean_self_closed_form(x: torch.Tensor) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    distances = euclidean_self_matrix(x)
    return distances, lambda grad: euclidean_self_matrix_backward(x, distances, grad)


def cosine_matrix(x: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(N, M) of 1 − cos(x_i, y_j), from one product of the L2-normalised rows."""
    with _full_precision(x.device):
        x_unit = F.normalize(_upcast(x), dim=1, eps=_NORM_EPS)
        y_unit = x_unit if y is None else F.normalize(_upcast(y), dim=1, eps=_NORM_EPS)
        # rounding can push 1 − cos a hair outside [0, 2]
        return (1.0 - x_unit @ y_unit.t()).clamp(0.0, 2.0)


def euclidean_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise ‖a_i − b_i‖₂, shape (N,)."""
    return safe_sqrt(squared_euclidean_distance(a, b))


def squared_euclidean_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise ‖a_i − b_i‖₂², shape (N,)."""
    return ((a - b) ** 2).sum(-1)


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise 1 − cos(a_i, b_i), shape (N,)."""
    return 1.0 - F.cosine_similarity(a, b, dim=-1, eps=_NORM_EPS)


def linf_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise L∞ (Chebyshev) distance max_d |a_id − b_id|, shape (N,).

    Shipped as the example of a custom distance: any function with this signature can be
    passed wherever a distance is expected."""
    return (a - b).abs().amax(-1)


def broadcast_pairwise(paired: PairedFn, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(N, M) matrix from a paired distance by feeding it all N·M row pairs at once."""
    y = x if y is None else y
    n, m = len(x), len(y)
    left = x.unsqueeze(1).expand(n, m, *x.shape[1:]).reshape(n * m, *x.shape[1:])
    right = y.unsqueeze(0).expand(n, m, *y.shape[1:]).reshape(n * m, *y.shape[1:])
    return paired(left, right).reshape(n, m)


@dataclass(frozen=True)
class Distance:
    """A named distance with a paired (row by row) and a pairwise (all pairs) form.

    `pairwise_fn` is optional: without it the pairwise matrix is built from `paired_fn`
    by broadcasting, which is right for any distance but costs N·M·D memory."""

    name: str
    paired_fn: PairedFn
    pairwise_fn: Optional[PairwiseFn] = None
    # Unchanged when both points are mapped by the same isometry (a rotation, or the
    # identity head's isometric view): what lets training run on such a view.
    rotation_invariant: bool = False
    # x ↦ (the batch's own distance matrix, a function from ∂loss/∂matrix to ∂loss/∂x),
    # without autograd: what a training step computed in closed form takes
    # (`TripletLoss.closed_form`). None: such steps go through autograd.
    self_matrix_with_backward: Optional[Callable[[torch.Tensor], tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]]] = None

    def paired(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Distances between matching rows of `a` and `b` (both (N, D)) → (N,)."""
        return self.paired_fn(a, b)

    def pairwise(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Distances between every row of `x` (N, D) and of `y` (M, D; default `x`) → (N, M)."""
        if self.pairwise_fn is not None:
            return self.pairwise_fn(x, y)
        return broadcast_pairwise(self.paired_fn, x, y)

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.paired(a, b)


def _linf_matrix(x: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
    y = x if y is None else y
    return (x.unsqueeze(1) - y.unsqueeze(0)).abs().amax(-1)


DISTANCES: dict[str, Distance] = {
    d.name: d
    for d in (
        Distance("euclidean", euclidean_distance, euclidean_matrix, rotation_invariant=True, self_matrix_with_backward=_euclidean_self_closed_form),
        Distance("squared_euclidean", squared_euclidean_distance, squared_euclidean_matrix, rotation_invariant=True),
        Distance("cosine", cosine_distance, cosine_matrix, rotation_invariant=True),
        Distance("linf", linf_distance, _linf_matrix),
    )
}
assert tuple(DISTANCES) == DISTANCE_NAMES, "choices.DISTANCES and losses.distances.DISTANCES must list the same distances"


def get_distance(distance: DistanceLike) -> Distance:
    """Resolve a registered name (e.g. ``"euclidean"``), a `Distance`, or any callable
    ``(a, b) -> (N,)`` paired distance to a `Distance`. Raises `ModelError` otherwise."""
    if isinstance(distance, Distance):
        return distance
    if isinstance(distance, str):
        key = distance.strip().lower().replace("-", "_")
        if key not in DISTANCES:
            raise ModelError(f"unknown distance '{distance}' (choose from {', '.join(DISTANCES)}, or pass a function (a, b) -> (N,))")
        return DISTANCES[key]
    if callable(distance):
        name = getattr(distance, "__name__", type(distance).__name__)
        return Distance(name, distance)
    raise ModelError(f"a distance must be a name, a Distance or a function (a, b) -> (N,), not {type(distance).__name__}")
