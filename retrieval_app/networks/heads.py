"""Embedding heads: what sits between the backbone's pooled features and the embedding.

One registry, `HEADS`, names every head the app offers (`choices.HEADS` lists the same
names for the command line). Each entry says how to build the head, how long its
output is, and whether it can start *exactly* as the bare backbone - the baseline every
fine-tuning run is judged against:

- `identity`: a full-dimension linear map (feature_dim × feature_dim) initialised to
  the identity. Untrained it *is* the backbone's features, so training can only be
  compared with, and blended back toward, what the user already had. Measured as the
  best trade-off between the user's classes and classes it never saw.
- `linear`: a linear map down to `dim`, initialised as the PCA projection of the
  training features (call `init_from_features` once they are known).
- `mlp`: Linear → BatchNorm → ReLU → Linear down to `dim`, randomly initialised.

Linear heads remember their starting weights and carry a `blend` weight in [0, 1]: the
weights used are start + blend · (trained − start), i.e. an interpolation in weight
space between the untrained and the trained head. Blend 0 is the start (for `identity`,
the bare backbone), 1 the trained head; the trainer measures every blend in between and
the user picks one (the specialise ↔ generalise dial)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ..choices import HEADS as HEAD_NAMES
from ..errors import ModelError


class BlendableLinear(nn.Linear):
    """A linear layer that can be interpolated back toward its starting weights.

    Buffers `start_weight`, `start_bias` (the weights it was initialised with, saved in
    checkpoints) and `blend` (0-d): the effective weights are
    start + blend · (weight − start)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features)
        self.register_buffer("start_weight", self.weight.detach().clone())
        self.register_buffer("start_bias", self.bias.detach().clone())
        self.register_buffer("blend", torch.ones(()))

    @torch.no_grad()
    def set_start(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Initialise both the trainable and the starting weights to (weight, bias)."""
        for target in (self.weight, self.start_weight):
            target.copy_(weight.to(target))
        for target in (self.bias, self.start_bias):
            target.copy_(bias.to(target))

    def effective_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        blend = self.blend
        if float(blend) == 1.0:
            return self.weight, self.bias
        weight = self.start_weight + blend * (self.weight - self.start_weight)
        bias = self.start_bias + blend * (self.bias - self.start_bias)
        return weight, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.effective_weights()
        return F.linear(x, weight, bias)

    @torch.no_grad()
    def embed_with_backward(self, x: torch.Tensor, normalize: bool) -> tuple[torch.Tensor, Callable[[torch.Tensor], None]]:
        """The head's output (L2-normalised when `normalize`) without autograd, and a
        function that takes ∂loss/∂output and sets the gradients of the weight and bias
        (`.grad`, replaced): a training step in closed form (training/head_loop.py)."""
        weight, bias = self.effective_weights()
        blend = float(self.blend)
        out, unit = torch.addmm(bias, x, weight.t()), None
        if normalize:
            out, unit = unit_rows(out)

        def set_gradients(grad: torch.Tensor) -> None:
            grad_out = grad if unit is None else unit_rows_backward(unit, grad)
            if blend != 1.0:  # effective = start + blend · (trained − start)
                grad_out = grad_out * blend
            self.weight.grad = grad_out.t() @ x if self.weight.requires_grad else None
            self.bias.grad = grad_out.sum(0) if self.bias.requires_grad else None

        return out, set_gradients


class SubspaceIdentity(nn.Module):
    """The identity head: x ↦ x + blend · U(Δ·Uᵀx + c), the identity plus a trainable
    map inside the span of U's k orthonormal columns (the leading principal directions of
    the folder's features, set with `set_basis`).

    It is a full-dimension linear map (I + UΔUᵀ, bias Uc) that starts as exactly the
    identity (Δ = 0, c = 0: the bare backbone), so training can only be compared with,
    and blended back toward, what the user had. Keeping the update in k = 128 leading
    directions costs ~3·64·1280·128 ≈ 31 MFLOP a training step instead of ~315 for a
    free 1280×1280 map, and 0.7 MB in a checkpoint instead of 6.5; the metric learning
    happens in those directions anyway. `blend` interpolates between the start (0) and
    the trained map (1); weight decay pulls Δ and c back toward the start."""

    def __init__(self, feature_dim: int, rank: int) -> None:
        super().__init__()
        rank = min(rank, feature_dim)
        self.register_buffer("basis", torch.zeros(feature_dim, rank))  # zero: no subspace yet
        self.delta = nn.Parameter(torch.zeros(rank, rank))
        self.shift = nn.Parameter(torch.zeros(rank))
        self.register_buffer("blend", torch.ones(()))

    @torch.no_grad()
    def set_basis(self, basis: torch.Tensor) -> None:
        """Orthonormal columns (feature_dim, rank) spanning the trainable subspace."""
        if basis.shape != self.basis.shape:
            raise ModelError(f"basis must have shape {tuple(self.basis.shape)}, got {tuple(basis.shape)}")
        self.basis.copy_(basis.to(self.basis))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inner = torch.addmm(self.shift, x @ self.basis, self.delta.t())
        blend = float(self.blend)
        return torch.addmm(x, inner, self.basis.t()) if blend == 1.0 else torch.addmm(x, inner, self.basis.t(), alpha=blend)

    # ------------------------------------------------------------ isometric view
    # For training on cached features: the head only moves x inside span U, so with
    # p = Uᵀx and r = x − Up (both fixed per image, computed once) its output y has
    # Uᵀy = p + blend·(Δp + c) and y − UUᵀy = r. The map y ↦ [Uᵀy | y − UUᵀy] keeps
    # every norm, inner product and Euclidean distance (U orthonormal), so a loss on those
    # sees the same numbers while a step costs two k×k products instead of two D×k ones.

    def has_orthonormal_basis(self, tolerance: float = 1e-4) -> bool:
        """Whether the basis is set and orthonormal (what the isometric view relies on)."""
        gram = self.basis.t() @ self.basis
        return bool((gram - torch.eye(len(gram), dtype=gram.dtype, device=gram.device)).abs().max() <= tolerance)

    @torch.no_grad()
    def isometric_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """Rows [Uᵀx | x − UUᵀx], (N, rank + feature_dim): what `isometric_forward` takes."""
        projected = x @ self.basis
        return torch.cat([projected, torch.addmm(x, projected, self.basis.t(), alpha=-1.0)], dim=1)

    def isometric_forward(self, rows: torch.Tensor) -> torch.Tensor:
        """For rows = `isometric_inputs(x)`: [Uᵀy | y − UUᵀy] with y = self(x), an image of
        y at the same norms, inner products and Euclidean distances."""
        rank = self.basis.shape[1]
        return self._moved_with(rows[:, :rank], rows[:, rank:])

    def batch_isometric_forward(self, rows: torch.Tensor) -> torch.Tensor:
        """As `isometric_forward`, but isometric within this batch only: the fixed residual
        block (B × feature_dim) is replaced by B × B rows with the same inner products,
        the Cholesky factor of its Gram matrix. A loss that compares the batch's rows with
        each other only (not with another batch's, as gathered mining across ranks would)
        sees the same numbers, while the normalisation, distance matrix and their
        gradients work on rank + B columns instead of rank + feature_dim. Rows whose
        residuals are linearly dependent (a duplicate image in the batch) have no such
        factor: that batch keeps the whole residual."""
        return self.isometric_forward(self.batch_isometric_inputs(rows.unsqueeze(0))[0])

    @torch.no_grad()
    def batch_isometric_inputs(self, batches: torch.Tensor) -> list[torch.Tensor]:
        """For a stack of batches (C, B, rank + feature_dim) of `isometric_inputs` rows,
        each batch with its residual block replaced by its Gram factor: what
        `isometric_forward` takes to give `batch_isometric_forward`. It depends on the
        rows alone, not on the trained weights, so a training loop can compute it for
        the next batches while one trains; for a whole stack at once, in a few batched
        calls (one Gram product, one Cholesky), as a background thread should."""
        rank = self.basis.shape[1]
        projected, residual = batches[..., :rank], batches[..., rank:]
        factors = _gram_factors(residual)
        if all(f.shape == factors[0].shape for f in factors):
            return list(torch.cat([projected, torch.stack(factors)], dim=2).unbind(0))
        return [torch.cat([p, f], dim=1) for p, f in zip(projected, factors)]

    def isometric_embed(self, rows: torch.Tensor, normalize: bool) -> torch.Tensor:
        """`isometric_forward(rows)`, L2-normalised when `normalize`: what a training step
        on the view embeds. While training on fixed rows it is one hand-differentiated
        autograd node (`_IsometricEmbedding`) instead of seven."""
        if torch.is_grad_enabled() and not rows.requires_grad and (self.delta.requires_grad or self.shift.requires_grad):
            return _IsometricEmbedding.apply(rows, self.delta, self.shift, float(self.blend), normalize)
        out = self.isometric_forward(rows)
        return F.normalize(out, dim=1) if normalize else out

    @torch.no_grad()
    def isometric_embed_with_backward(self, rows: torch.Tensor, normalize: bool) -> tuple[torch.Tensor, Callable[[torch.Tensor], None]]:
        """`isometric_embed(rows, normalize)` without autograd, and a function that takes
        ∂loss/∂embeddings and sets the gradients of Δ and c (`.grad`, replaced, not
        accumulated): what a training step computed in closed form calls (the same
        arithmetic as the autograd node's)."""
        out, saved = isometric_embed_forward(rows, self.delta, self.shift, float(self.blend), normalize)

        def set_gradients(grad: torch.Tensor) -> None:
            self.delta.grad, self.shift.grad = isometric_embed_backward(saved, grad, self.delta.requires_grad, self.shift.requires_grad)

        return out, set_gradients

    def _moved_with(self, projected: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """[Uᵀy | residual] for projected = Uᵀx: the subspace part moved by the head."""
        inner = torch.addmm(self.shift, projected, self.delta.t())
        blend = float(self.blend)
        moved = projected + inner if blend == 1.0 else torch.add(projected, inner, alpha=blend)
        return torch.cat([moved, residual], dim=1)

    @torch.no_grad()
    def as_matrix(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, bias) of the full-dimension linear map it applies."""
        eye = torch.eye(self.basis.shape[0], dtype=self.basis.dtype, device=self.basis.device)
        blend = float(self.blend)
        return eye + blend * (self.basis @ self.delta @ self.basis.t()), blend * (self.basis @ self.shift)


class _IsometricEmbedding(torch.autograd.Function):
    """y = [p + b·(pΔᵀ + c) | r] for fixed rows [p | r], optionally u = y / max(‖y‖, ε)
    (`F.normalize`'s ε), differentiated by hand for Δ and c. A training step on cached
    features runs this for every batch; as a chain of operations autograd would record
    seven nodes (product, sum, concatenation, norm, clamp, expand, division), which on a
    64-row batch cost far more than the arithmetic. Backward: dy = (G − u·⟨u, G⟩)/‖y‖
    (G/ε where ‖y‖ ≤ ε), then with m = dy's first k columns, dΔ = b·mᵀp and dc = b·Σm."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor, delta: torch.Tensor, shift: torch.Tensor, blend: float, normalize: bool) -> torch.Tensor:
        out, saved = isometric_embed_forward(rows, delta, shift, blend, normalize)
        ctx.save_for_backward(saved.projected, *(saved.unit or (None, None)))
        ctx.blend, ctx.rank = saved.blend, saved.rank
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        projected, projecting, inverse_norms = ctx.saved_tensors
        saved = _EmbedSaved(projected, None if inverse_norms is None else _UnitRows(projecting, inverse_norms), ctx.blend, ctx.rank)
        grad_delta, grad_shift = isometric_embed_backward(saved, grad, ctx.needs_input_grad[1], ctx.needs_input_grad[2])
        return None, grad_delta, grad_shift, None, None


class _UnitRows(NamedTuple):
    """What `unit_rows_backward` needs of a `unit_rows`."""

    projecting: torch.Tensor  # u, zero in rows whose norm was clamped
    inverse_norms: torch.Tensor  # 1 / max(‖y‖, ε), (B, 1)


def unit_rows(out: torch.Tensor) -> tuple[torch.Tensor, _UnitRows]:
    """`F.normalize(out, dim=1)` in place, without autograd, and what its backward needs."""
    norms = torch.linalg.vector_norm(out, dim=1, keepdim=True)
    unclamped = norms > _NORMALIZE_EPS
    inverse_norms = norms.clamp_min_(_NORMALIZE_EPS).reciprocal_()
    out.mul_(inverse_norms)
    return out, _UnitRows(out * unclamped, inverse_norms)  # rows whose norm was clamped pass the gradient straight


def unit_rows_backward(saved: _UnitRows, grad: torch.Tensor) -> torch.Tensor:
    """∂loss/∂y from ∂loss/∂u for u = y / max(‖y‖, ε): (G − u⟨u, G⟩)/‖y‖, G/ε where ‖y‖ ≤ ε."""
    along = torch.linalg.vecdot(saved.projecting, grad).unsqueeze(1)
    return torch.addcmul(grad, saved.projecting, along, value=-1.0).mul_(saved.inverse_norms)


class _EmbedSaved(NamedTuple):
    projected: torch.Tensor  # the rows' first `rank` columns, p
    unit: _UnitRows | None  # None: not normalised
    blend: float
    rank: int


def isometric_embed_forward(rows: torch.Tensor, delta: torch.Tensor, shift: torch.Tensor, blend: float, normalize: bool) -> tuple[torch.Tensor, _EmbedSaved]:
    """The forward half of `_IsometricEmbedding`, without autograd: (u, what its backward needs)."""
    rank = delta.shape[0]
    projected = rows[:, :rank]
    out = rows.clone()
    out[:, :rank].addmm_(projected, delta.t(), alpha=blend).add_(shift, alpha=blend)
    unit = None
    if normalize:
        out, unit = unit_rows(out)
    return out, _EmbedSaved(projected, unit, blend, rank)


def isometric_embed_backward(saved: _EmbedSaved, grad: torch.Tensor, need_delta: bool = True, need_shift: bool = True) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(∂loss/∂Δ, ∂loss/∂c) from ∂loss/∂u (see `_IsometricEmbedding`)."""
    grad_out = grad if saved.unit is None else unit_rows_backward(saved.unit, grad)
    moved = grad_out[:, :saved.rank]
    blend = saved.blend
    grad_delta = grad_shift = None
    if need_delta:
        grad_delta = moved.t() @ saved.projected if blend == 1.0 else (moved.t() @ saved.projected).mul_(blend)
    if need_shift:
        grad_shift = moved.sum(0) if blend == 1.0 else moved.sum(0).mul_(blend)
    return grad_delta, grad_shift


_NORMALIZE_EPS = 1e-12  # F.normalize's default


@torch.no_grad()
def _gram_factors(residuals: torch.Tensor) -> list[torch.Tensor]:
    """For each batch of `residuals` (C, B, D): (B, B) rows with the inner products of its
    rows (L of Gram = L Lᵀ, factored in float64), or the batch itself when its Gram
    matrix is singular."""
    if residuals.shape[1] >= residuals.shape[2]:  # no fewer columns to gain
        return list(residuals.unbind(0))
    factors, info = torch.linalg.cholesky_ex((residuals @ residuals.transpose(1, 2)).double())
    factors = factors.to(residuals.dtype).unbind(0)
    if not bool(info.any()):
        return list(factors)
    return [batch if failed else factor for batch, factor, failed in zip(residuals.unbind(0), factors, info.tolist())]


IDENTITY_RANK = 128  # dimension of the identity head's trainable subspace


def _identity_head(feature_dim: int, dim: int) -> nn.Module:
    return SubspaceIdentity(feature_dim, IDENTITY_RANK)


def _linear_head(feature_dim: int, dim: int) -> nn.Module:
    return BlendableLinear(feature_dim, dim)


def _mlp_head(feature_dim: int, dim: int) -> nn.Module:
    hidden = max(dim, min(feature_dim, 512))
    return nn.Sequential(nn.Linear(feature_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim))


@dataclass(frozen=True)
class HeadSpec:
    name: str
    build: Callable[[int, int], nn.Module]  # (feature_dim, dim) -> module
    full_dimension: bool  # output length is feature_dim, whatever `dim` says
    starts_as_backbone: bool  # untrained, it gives exactly the backbone's features
    feature_init: bool  # wants `init_from_features(head, training features)`
    blendable: bool  # has a starting point to interpolate back to
    summary: str

    def output_dim(self, feature_dim: int, dim: int) -> int:
        return feature_dim if self.full_dimension else dim


HEADS: dict[str, HeadSpec] = {
    spec.name: spec
    for spec in (
        HeadSpec("identity", _identity_head, True, True, True, True, "full-dimension linear map starting as the identity (= the backbone), trained in the features' leading directions"),
        HeadSpec("linear", _linear_head, False, False, True, True, "linear map to `dim`, starting as the PCA of the training features"),
        HeadSpec("mlp", _mlp_head, False, False, False, False, "two-layer MLP to `dim`, random start"),
    )
}
assert tuple(HEADS) == HEAD_NAMES, "choices.HEADS and networks.heads.HEADS must list the same heads"
DEFAULT_HEAD = "identity"


def get_head_spec(kind: str) -> HeadSpec:
    if kind not in HEADS:
        raise ModelError(f"unknown head '{kind}' (choose from {', '.join(HEADS)}, none)")
    return HEADS[kind]


def make_head(kind: str | None, feature_dim: int, dim: int) -> nn.Module | None:
    """The head called `kind` (see `HEADS`), or no head for None / "none"."""
    if kind is None or kind == "none":
        return None
    return get_head_spec(kind).build(feature_dim, dim)


BLENDABLE = (BlendableLinear, SubspaceIdentity)


def set_blend(head: nn.Module | None, blend: float) -> None:
    """Interpolate a blendable head between its start (0) and its trained weights (1)."""
    if not 0.0 <= float(blend) <= 1.0:
        raise ModelError(f"blend must be between 0 and 1, got {blend}")
    if not isinstance(head, BLENDABLE):
        if float(blend) != 1.0:
            raise ModelError("only linear heads (identity, linear) can be blended toward their start")
        return
    head.blend.fill_(float(blend))


def get_blend(head: nn.Module | None) -> float:
    return float(head.blend) if isinstance(head, BLENDABLE) else 1.0


def is_blendable(head: nn.Module | None) -> bool:
    return isinstance(head, BLENDABLE)


@torch.no_grad()
def init_from_features(head: nn.Module, features: torch.Tensor) -> None:
    """Fit a head's start to the folder's features (N, feature_dim), no labels needed.

    `linear`: the PCA projection (rows = the top principal directions, bias −W·mean),
    which keeps the pretrained geometry up to the dropped directions. `identity`: its
    trainable subspace = the leading principal directions; the map stays the identity."""
    if features.ndim != 2 or features.shape[0] < 2:
        raise ModelError(f"initialising a head needs features of shape (N ≥ 2, D), got {tuple(features.shape)}")
    features = features.detach().to("cpu", torch.float64)
    mean = features.mean(0)
    if isinstance(head, SubspaceIdentity):
        if features.shape[1] != head.basis.shape[0]:
            raise ModelError(f"features have {features.shape[1]} dimensions, the head expects {head.basis.shape[0]}")
        head.set_basis(principal_directions(features - mean, head.basis.shape[1]).t())
        return
    if not isinstance(head, BlendableLinear):
        raise ModelError("PCA initialisation needs a linear head")
    if features.shape[1] != head.in_features:
        raise ModelError(f"PCA initialisation needs features of shape (N ≥ 2, {head.in_features}), got {tuple(features.shape)}")
    rows = principal_directions(features - mean, head.out_features)
    head.set_start(rows, -rows @ mean)


def principal_directions(centred: torch.Tensor, count: int) -> torch.Tensor:
    """`count` orthonormal rows, the leading principal directions of `centred` first.

    Fewer samples than dimensions give fewer directions: the rest is completed with an
    orthonormal basis of their complement. Beyond the feature dimension no orthonormal
    rows exist, so extra rows are zero (the map stays an isometry, and they still train).
    Each direction's sign is fixed (largest-magnitude entry positive) for determinism."""
    feature_dim = centred.shape[1]
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    rows = vh[: min(count, feature_dim)]
    rows = rows * torch.sign(rows.gather(1, rows.abs().argmax(1, keepdim=True)))
    missing = min(count, feature_dim) - len(rows)
    if missing:
        rows = torch.cat([rows, _orthonormal_complement(rows, missing)])
    if count > feature_dim:
        rows = torch.cat([rows, rows.new_zeros(count - feature_dim, feature_dim)])
    return rows


def _orthonormal_complement(rows: torch.Tensor, count: int) -> torch.Tensor:
    """`count` orthonormal rows orthogonal to the orthonormal `rows`."""
    generator = torch.Generator().manual_seed(0)
    extra = torch.randn(rows.shape[1], count, generator=generator, dtype=rows.dtype)
    q, _ = torch.linalg.qr(torch.cat([rows.t(), extra], dim=1))
    return q[:, len(rows):].t()
