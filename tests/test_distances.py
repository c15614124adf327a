"""Distances: pairwise matrices against torch/brute force, paired forms, custom callables,
and finite gradients where embeddings coincide."""

from __future__ import annotations

import pytest
import torch

from retrieval_app.errors import ModelError
from retrieval_app.losses import DISTANCES, Distance, get_distance, linf_distance, safe_sqrt

NAMES = ("euclidean", "squared_euclidean", "cosine", "linf")


def randn(seed: int, *shape: int, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def brute_force_matrix(paired, x, y):
    return torch.stack([torch.stack([paired(x[i : i + 1], y[j : j + 1])[0] for j in range(len(y))]) for i in range(len(x))])


def reference_matrix(name: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Independent formulas: torch.cdist and explicit cosine similarity."""
    if name == "euclidean":
        return torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist")
    if name == "squared_euclidean":
        return torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist") ** 2
    if name == "cosine":
        return 1 - (x @ y.t()) / (x.norm(dim=1, keepdim=True) * y.norm(dim=1).unsqueeze(0))
    return torch.cdist(x, y, p=float("inf"))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("seed", range(3))
def test_pairwise_matches_independent_reference(name, seed):
    x, y = randn(seed, 9, 5), randn(seed + 100, 6, 5)
    d = get_distance(name)
    assert d.name == name
    assert d.pairwise(x, y).shape == (9, 6)
    assert torch.allclose(d.pairwise(x, y), reference_matrix(name, x, y), atol=1e-10)
    assert torch.allclose(d.pairwise(x), reference_matrix(name, x, x), atol=1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_paired_matches_pairwise_entries(name):
    x, y = randn(4, 7, 3), randn(5, 8, 3)
    d = get_distance(name)
    assert torch.allclose(brute_force_matrix(d.paired, x, y), d.pairwise(x, y), atol=1e-10)
    assert d.paired(x, y[:7]).shape == (7,)


@pytest.mark.parametrize("name", NAMES)
def test_self_distance_matrix_has_zero_diagonal_and_no_negatives(name):
    x = randn(6, 12, 4, dtype=torch.float32) * 100  # large norms: the matrix trick rounds most here
    matrix = get_distance(name).pairwise(x)
    assert torch.all(matrix >= 0)
    assert torch.all(matrix.diagonal().abs() <= 1e-6)
    assert torch.allclose(matrix, matrix.t(), atol=1e-3 if name != "cosine" else 1e-6)


def test_custom_callable_gets_a_broadcast_pairwise():
    x, y = randn(7, 6, 4), randn(8, 5, 4)
    l1 = get_distance(lambda a, b: (a - b).abs().sum(-1))
    assert isinstance(l1, Distance)
    assert torch.allclose(l1.pairwise(x, y), torch.cdist(x, y, p=1), atol=1e-12)
    assert torch.allclose(l1.paired(x[:5], y), (x[:5] - y).abs().sum(-1))
    # the shipped L∞ function, unregistered, gives the same as the registered "linf"
    assert get_distance(linf_distance).name == "linf_distance"
    assert torch.allclose(get_distance(linf_distance).pairwise(x, y), DISTANCES["linf"].pairwise(x, y))


def test_get_distance_resolves_names_objects_and_rejects_the_rest():
    d = get_distance("cosine")
    assert get_distance(d) is d
    assert get_distance("Squared-Euclidean") is DISTANCES["squared_euclidean"]
    with pytest.raises(ModelError, match="euclidean, squared_euclidean, cosine, linf"):
        get_distance("manhattan")
    with pytest.raises(ModelError, match="must be a name"):
        get_distance(3)


def test_cosine_ignores_scale_and_handles_zero_vectors():
    x = randn(9, 5, 3)
    d = get_distance("cosine")
    assert torch.allclose(d.pairwise(x, 7.5 * x), d.pairwise(x), atol=1e-12)
    zero = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    value = d.pairwise(zero, x)
    value.sum().backward()
    assert torch.allclose(value, torch.ones(1, 5, dtype=torch.float64)) and torch.isfinite(zero.grad).all()


def test_safe_sqrt_value_and_gradient():
    x = torch.tensor([0.0, 1e-30, 4.0, 9.0], requires_grad=True)
    y = safe_sqrt(x)
    y.sum().backward()
    assert y.tolist() == [0.0, 0.0, 2.0, 3.0]
    assert x.grad.tolist() == [0.0, 0.0, 0.25, pytest.approx(1 / 6)]
    plain = torch.tensor([0.0], requires_grad=True)
    torch.sqrt(plain).backward()
    assert torch.isinf(plain.grad).all()  # what safe_sqrt is protecting against


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", NAMES)
def test_gradients_finite_when_rows_coincide(name, dtype):
    base = randn(11, 3, 5, dtype=dtype)
    x = torch.cat([base, base, base[:1]]).requires_grad_(True)  # duplicates off the diagonal too
    d = get_distance(name)
    (d.pairwise(x).sum() + d.paired(x, x.flip(0)).sum() + d.paired(x, x).sum()).backward()
    assert torch.isfinite(x.grad).all()


def test_euclidean_gradient_matches_cdist_away_from_zero():
    x = randn(12, 6, 4).requires_grad_(True)
    weights = randn(13, 6, 6)
    (get_distance("euclidean").pairwise(x) * weights).sum().backward()
    ours = x.grad.clone()
    x.grad = None
    mask = ~torch.eye(6, dtype=torch.bool)  # cdist's own gradient on the diagonal is arbitrary
    (torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist") * weights * mask).sum().backward()
    assert torch.allclose(ours, x.grad, atol=1e-10)


def test_distances_stay_float32_under_autocast():
    x = randn(14, 8, 16, dtype=torch.float32)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        inside = get_distance("euclidean").pairwise(x)
        cosine = get_distance("cosine").pairwise(x)
    assert inside.dtype == torch.float32 and cosine.dtype == torch.float32
    assert torch.allclose(inside, torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist"), atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_hand_differentiated_euclidean_matrix_equals_the_composite_form(dtype):
    from retrieval_app.losses.distances import squared_euclidean_matrix

    base = randn(15, 10, 6, dtype=dtype)
    rows = torch.cat([base, base[:2], torch.zeros(1, 6, dtype=dtype)])  # coinciding rows and a zero row
    weights = randn(16, 13, 13, dtype=dtype)
    fused, composite = rows.clone().requires_grad_(True), rows.clone().requires_grad_(True)
    matrix = get_distance("euclidean").pairwise(fused)
    assert type(matrix.grad_fn).__name__.startswith("_EuclideanSelfMatrix")  # one node, not a chain
    expected = safe_sqrt(squared_euclidean_matrix(composite))
    (matrix * weights).sum().backward()
    (expected * weights).sum().backward()
    tolerance = 1e-5 if dtype == torch.float32 else 1e-12
    assert torch.allclose(matrix, expected, atol=tolerance) and bool((matrix.diagonal() == 0).all())
    assert matrix[0, 10] == 0 and matrix[1, 11] == 0  # the duplicates: exactly zero, as safe_sqrt gives
    assert torch.allclose(fused.grad, composite.grad, atol=100 * tolerance)


def test_the_euclidean_matrix_node_passes_gradcheck():
    x = randn(17, 7, 3).requires_grad_(True)  # distinct rows: differentiable everywhere off the diagonal
    assert torch.autograd.gradcheck(lambda rows: get_distance("euclidean").pairwise(rows), (x,))
