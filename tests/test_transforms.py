import pytest
import torch

from lqsearch.transforms import TRANSFORM_KINDS, build_transform
from lqsearch.transforms.factors import AffineFactor
from lqsearch.transforms.kronecker import balanced_factor_sizes, fixed_rotation, kron_matmul


def perturbed(kind: str, n: int, rotation: str = "learned", smoothing: bool = True, seed: int = 0):
    """A transform moved away from its initialisation, as training would."""
    transform = build_transform(kind, balanced_factor_sizes(n), torch.Generator().manual_seed(seed), rotation, smoothing)
    torch.manual_seed(seed)
    with torch.no_grad():
        for parameter in transform.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return transform


@pytest.mark.parametrize("n, sizes", [(64, (8, 8)), (576, (24, 24)), (1536, (32, 48)), (4096, (64, 64)), (11008, (86, 128)), (14336, (112, 128)), (97, (1, 97))])
def test_balanced_factor_sizes(n: int, sizes: tuple[int, int]) -> None:
    assert balanced_factor_sizes(n) == sizes


@pytest.mark.parametrize("kind", TRANSFORM_KINDS)
@pytest.mark.parametrize("n", [64, 576, 1536, 97])
def test_materialised_inverse_is_exact_in_float64(kind: str, n: int) -> None:
    transform = perturbed(kind, n)
    identity = torch.eye(n, dtype=torch.float64)
    assert (transform.matrix() @ transform.inverse_matrix() - identity).abs().max() < 1e-10
    assert (transform.inverse_matrix() @ transform.matrix() - identity).abs().max() < 1e-10


@pytest.mark.parametrize("kind", TRANSFORM_KINDS)
@pytest.mark.parametrize("n", [11008, 14336])
def test_large_widths_invert_exactly_factor_by_factor(kind: str, n: int) -> None:
    # P P^-1 = (A A^-1) (x) (B B^-1): checking each factor and a round trip avoids 1.6 GB matrices.
    transform = perturbed(kind, n)
    for factor in transform.kron_factors():
        eye = torch.eye(factor.shape[0], dtype=torch.float64)
        assert (factor @ torch.linalg.inv(factor) - eye).abs().max() < 1e-10
    x = torch.randn(3, n, dtype=torch.float64)
    factors = transform.kron_factors()
    if factors:
        a, b = factors
        forward = kron_matmul(x, a.T, b)
        back = kron_matmul(forward, torch.linalg.inv(a).T, torch.linalg.inv(b))
        assert (back - x).abs().max() < 1e-10


@pytest.mark.parametrize("kind", TRANSFORM_KINDS)
@pytest.mark.parametrize("n", [64, 97, 576])
def test_transformed_linear_computes_the_same_function(kind: str, n: int) -> None:
    transform = perturbed(kind, n)
    x, w = torch.randn(4, n), torch.randn(6, n)
    torch.testing.assert_close(transform(x) @ transform.transform_weight(w).T, x @ w.T, rtol=1e-4, atol=1e-4)
    # the forward pass agrees with the materialised matrix
    torch.testing.assert_close(transform(x).double(), x.double() @ transform.matrix(), rtol=1e-5, atol=1e-5)


def test_closed_form_affine_inverse() -> None:
    factor = AffineFactor(fixed_rotation(24, torch.Generator().manual_seed(0)))
    with torch.no_grad():
        factor.singular_values.uniform_(0.5, 2.0)
    torch.testing.assert_close(factor.inverse() @ factor.matrix(), torch.eye(24), atol=1e-5, rtol=0)


@pytest.mark.parametrize("n", [64, 48])
def test_fixed_rotation_is_orthogonal(n: int) -> None:
    q = fixed_rotation(n, torch.Generator().manual_seed(1))
    assert (q @ q.T - torch.eye(n, dtype=torch.float64)).abs().max() < 1e-12
    if n == 64:  # randomised Hadamard: every entry is +-1/sqrt(n)
        assert torch.allclose(q.abs(), torch.full_like(q, n**-0.5))


def test_per_head_output_rows_then_outer_equals_the_whole_transform() -> None:
    # v_proj rows carry the inner (per-head) factor, o_proj's input site the outer one.
    heads, head_dim, hidden = 4, 16, 8
    transform = build_transform("affine", (heads, head_dim), torch.Generator().manual_seed(0))
    x, weight, bias = torch.randn(3, hidden), torch.randn(heads * head_dim, hidden), torch.randn(heads * head_dim)
    per_head_weight, per_head_bias = transform.transform_output(weight, bias)
    per_head = x @ per_head_weight.T + per_head_bias
    torch.testing.assert_close(transform.apply_outer(per_head), transform(x @ weight.T + bias), rtol=1e-5, atol=1e-5)


def test_smoothing_initialisation() -> None:
    transform = build_transform("affine", (2, 2), torch.Generator().manual_seed(0), smoothing=True)
    transform.init_smoothing(torch.tensor([16.0, 1.0, 0.0, 4.0]), torch.tensor([1.0, 1.0, 1.0, 2.0]), alpha=0.5)
    expected = torch.tensor([4.0, 1.0, 1e-5**0.5, 2.0 / 2**0.5])
    torch.testing.assert_close(transform.channel_scale.detach(), expected)
    with pytest.raises(ValueError, match="no channel scale"):
        build_transform("rotation", (2, 2), torch.Generator()).init_smoothing(torch.ones(4), torch.ones(4))


def test_unknown_kind() -> None:
    with pytest.raises(ValueError, match="unknown transform kind 'shear'"):
        build_transform("shear", (2, 2), torch.Generator())
