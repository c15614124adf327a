"""2-D layouts of a space that changes, aligned from one frame to the next, so that
points move rather than jump (the live map of a training run).

Each frame is laid out by its own PCA (the plane of its two largest principal
directions), then turned onto the previous frame by an orthogonal Procrustes fit (the
rotation or reflection of the plane that best matches the previous positions). Why this
and not the alternatives:

- a PCA basis fixed on the first frame shows the trained space through the untrained
  one's directions: the directions training separates the classes along are often not
  among the start's two largest, and the clusters it forms stay piled on each other;
- UMAP (or t-SNE) per frame, started from the previous layout, takes seconds for 2,000
  points on a CPU, in the training thread: far more than the 10 % the live map may cost;
- PCA per frame is linear, so nothing moves unless the embeddings do, and its plane
  follows the space as training reshapes it. Its only arbitrary part is the plane's
  orientation (a rotation or a mirror image): the Procrustes fit removes exactly that,
  so an unchanged model gives the same frame again.

The two principal directions come from a few rounds of subspace iteration started from
the previous frame's directions (milliseconds for 2,000 × 1,280), in torch, on the
calling thread's torch threads (the training's own budget)."""

from __future__ import annotations

import numpy as np
import torch

OVERSAMPLE = 10  # extra directions in the subspace iteration: fast, accurate convergence
FIRST_ROUNDS = 4  # rounds from a random start
WARM_ROUNDS = 2  # rounds from the previous frame's directions


class AlignedPCA:
    """`place(embeddings)` → (n, 2) positions, aligned to the previous call's. The same
    points (rows) must be given every time."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.axes: torch.Tensor | None = None  # (D, 2): the previous frame's directions, aligned
        self.previous: torch.Tensor | None = None  # (n, 2)

    @torch.no_grad()
    def place(self, embeddings) -> np.ndarray:
        x = torch.as_tensor(np.ascontiguousarray(embeddings, dtype=np.float32))
        if x.ndim != 2 or len(x) < 2:
            raise ValueError(f"need an (n ≥ 2, D) array of embeddings, got shape {tuple(x.shape)}")
        mean = x.mean(dim=0)
        warm = self.axes if self.axes is not None and self.axes.shape[0] == x.shape[1] else None
        axes = principal_axes(x, mean, 2, warm=warm, seed=self.seed)
        coords = x @ axes - mean @ axes
        if self.previous is not None and self.previous.shape == coords.shape:
            turn = procrustes_rotation(coords, self.previous)
            coords, axes = coords @ turn, axes @ turn
        self.axes, self.previous = axes, coords
        return coords.numpy().astype(np.float32)


def principal_axes(x: torch.Tensor, mean: torch.Tensor, k: int, *, warm: torch.Tensor | None = None, seed: int = 0) -> torch.Tensor:
    """(D, k) orthonormal directions of largest variance of the rows of `x` (whose mean
    is `mean`), by subspace iteration: deterministic (a seeded start, completed by `warm`
    if given). The centred matrix is never formed: (x − 1μ)ᵀ(x − 1μ)B = xᵀZ with
    Z = xB − 1μB, since the columns of a centred Z sum to zero."""
    n, dim = x.shape
    width = min(dim, n, k + OVERSAMPLE)
    start = torch.randn(dim, width, generator=torch.Generator().manual_seed(seed))
    rounds = FIRST_ROUNDS
    if warm is not None:
        start[:, :warm.shape[1]] = warm
        rounds = WARM_ROUNDS
    basis, _ = torch.linalg.qr(start)
    for _ in range(rounds):
        z = x @ basis - mean @ basis
        basis, _ = torch.linalg.qr((z.T @ x).T)  # zᵀx then transposed: the faster product
    # The best k directions inside the converged subspace: eigenvectors of its small Gram matrix.
    projected = x @ basis - mean @ basis
    values, vectors = torch.linalg.eigh(projected.T.double() @ projected.double())
    top = vectors[:, torch.argsort(values, descending=True)[:k]].float()
    return basis @ top


def procrustes_rotation(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The orthogonal (k, k) matrix R (a rotation or a reflection) minimising
    ‖source R − target‖: the SVD of sourceᵀ target (Schönemann, 1966)."""
    u, _, vt = torch.linalg.svd(source.T.double() @ target.double())
    return (u @ vt).float()
