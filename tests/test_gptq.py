import pytest
import torch

from lqsearch.errors import ConfigError
from lqsearch.quant.gptq import HessianAccumulator, gptq_quantize
from lqsearch.quant.quantizers import QuantGrid, fake_quantize, quantization_grid

OUT, IN = 64, 96


def correlated_layer(seed: int = 0, samples: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs mixed by a random matrix (strongly correlated) with three large channels, and a weight."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, IN, generator=g) @ torch.randn(IN, IN, generator=g)
    x[:, :3] *= 10
    return x, torch.randn(OUT, IN, generator=g) * 0.1


def hessian_of(x: torch.Tensor) -> torch.Tensor:
    accumulator = HessianAccumulator(x.shape[-1])
    accumulator.add(x)
    return accumulator.hessian()


def output_error(x: torch.Tensor, weight: torch.Tensor, quantized: torch.Tensor) -> float:
    return (x @ weight.T - x @ quantized.T).pow(2).sum().item()


def reference_gptq(weight: torch.Tensor, hessian: torch.Tensor, grid: QuantGrid, damp: float) -> torch.Tensor:
    """Unblocked GPTQ written the OBS way: explicit inverse Hessian, downdated after each column."""
    w, h = weight.double().clone(), hessian.double().clone()
    h += damp * h.diagonal().mean() * torch.eye(h.shape[0], dtype=torch.float64)
    h_inv = torch.linalg.inv(h)
    grid = grid.to(torch.float64)
    rounded = torch.zeros_like(w)
    for j in range(w.shape[1]):
        rounded[:, j : j + 1] = grid.quantize(w[:, j : j + 1])
        error = (w[:, j : j + 1] - rounded[:, j : j + 1]) / h_inv[j, j]
        w -= error * h_inv[j : j + 1, :]
        h_inv -= torch.outer(h_inv[:, j], h_inv[j, :]) / h_inv[j, j]  # remove column j from the problem
    return rounded


def test_grid_closed_form_and_full_precision_has_no_grid() -> None:
    # 2 bits asymmetric: s = (2 - -1) / 3 = 1, z = 1, q in [0, 3]
    grid = quantization_grid(torch.tensor([[-1.0, 0.0, 0.6, 2.0]]), 2, symmetric=False)
    assert (grid.qmin, grid.qmax) == (0, 3)
    torch.testing.assert_close(grid.scale, torch.tensor([[1.0]]))
    torch.testing.assert_close(grid.zero, torch.tensor([[1.0]]))
    torch.testing.assert_close(grid.quantize(torch.tensor([[2.4], [-7.0]])), torch.tensor([[2.0], [-1.0]]))
    symmetric = quantization_grid(torch.tensor([[-1.0, 3.0]]), 3, symmetric=True)  # s = 3 / 3
    assert (symmetric.qmin, symmetric.qmax, symmetric.zero) == (-4, 3, 0.0)
    with pytest.raises(ConfigError):
        quantization_grid(torch.ones(2, 2), 16, symmetric=True)


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits", [4, 3])
def test_gptq_beats_rtn_on_correlated_inputs(bits: int, symmetric: bool, act_order: bool) -> None:
    x, weight = correlated_layer()
    clip = 0.9
    gptq = gptq_quantize(weight, hessian_of(x), bits, symmetric, clip, act_order=act_order, block_size=32)
    rtn = fake_quantize(weight, bits, symmetric, clip)
    # GPTQ measures ~0.25x RTN's output error here; half is a clear margin either way
    assert output_error(x, weight, gptq) < 0.5 * output_error(x, weight, rtn)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("symmetric", [True, False])
def test_every_value_lies_on_its_rows_clipped_grid(symmetric: bool, dtype: torch.dtype) -> None:
    x, weight = correlated_layer(seed=1)
    weight = weight.to(dtype)
    clip = torch.sigmoid(torch.randn(OUT, 1, generator=torch.Generator().manual_seed(2))).to(dtype)
    out = gptq_quantize(weight, hessian_of(x), 3, symmetric, clip, denominator="qmax+0.5", act_order=True)
    assert out.shape == weight.shape and out.dtype == dtype
    grid = quantization_grid(weight, 3, symmetric, clip, "qmax+0.5")
    assert torch.equal(grid.quantize(out), out)
    assert not torch.equal(out, weight)


@pytest.mark.parametrize("act_order", [False, True])
def test_lazy_blocks_match_unblocked_reference(act_order: bool) -> None:
    x, weight = correlated_layer(seed=3, samples=256)
    hessian = hessian_of(x)
    grid = quantization_grid(weight, 3, symmetric=False)
    whole = gptq_quantize(weight, hessian, 3, False, block_size=IN, act_order=act_order)
    for block_size in (1, 7, 200):  # 7 does not divide 96
        blocked = gptq_quantize(weight, hessian, 3, False, block_size=block_size, act_order=act_order)
        torch.testing.assert_close(blocked, whole, rtol=0, atol=1e-6)
    if act_order:
        order = torch.argsort(hessian.diagonal(), descending=True)
        expected = reference_gptq(weight[:, order], hessian[order][:, order], grid, 0.01)[:, torch.argsort(order)]
    else:
        expected = reference_gptq(weight, hessian, grid, 0.01)
    torch.testing.assert_close(whole, expected.float(), rtol=0, atol=1e-6)


def test_hessian_accumulates_over_batches_and_ranks() -> None:
    x, _ = correlated_layer(samples=64)
    full = hessian_of(x)
    torch.testing.assert_close(full, 2 * x.double().T @ x.double() / 64)
    halves = HessianAccumulator(IN)
    halves.add(x[:24].reshape(2, 12, IN))  # leading dims are flattened
    halves.add(x[24:])
    assert halves.rows == 64
    torch.testing.assert_close(halves.hessian(), full, rtol=1e-12, atol=1e-9)
    rank0, rank1 = HessianAccumulator(IN), HessianAccumulator(IN)
    rank0.add(x[:40])
    rank1.add(x[40:])
    # a fake all-reduce over two ranks: each tensor gets rank 1's counterpart added
    rank0.merge(lambda t: t + (rank1.xtx if t.dim() == 2 else torch.tensor(rank1.rows)))
    assert rank0.rows == 64
    torch.testing.assert_close(rank0.hessian(), full, rtol=1e-12, atol=1e-9)


def test_hessian_errors() -> None:
    accumulator = HessianAccumulator(IN)
    with pytest.raises(ConfigError, match="calibration"):
        accumulator.hessian()
    with pytest.raises(ConfigError, match="features"):
        accumulator.add(torch.ones(3, IN + 1))


def test_dampening_solves_rank_deficient_hessians() -> None:
    x, weight = correlated_layer(samples=16)  # 16 samples < 96 columns: rank <= 16
    x[:, 5] = 0  # a dead input
    out = gptq_quantize(weight, hessian_of(x), 4, True)
    assert torch.isfinite(out).all()
    assert torch.equal(out[:, 5], torch.zeros(OUT))
    assert torch.equal(quantization_grid(weight, 4, True).quantize(out), out)
    # rank 1 with exact binary arithmetic: Cholesky's second pivot is 4 - 2 * 2 = 0 exactly
    singular = torch.full((IN, IN), 4.0, dtype=torch.float64)
    with pytest.raises(ConfigError, match="gptq_damp"):
        gptq_quantize(weight, singular, 4, True, damp=0.0)
    assert torch.isfinite(gptq_quantize(weight, singular, 4, True, damp=0.01)).all()


def test_full_precision_and_bad_arguments() -> None:
    weight, hessian = torch.randn(4, 8), torch.eye(8)
    assert gptq_quantize(weight, hessian, 16, True) is weight
    for bad in ({"block_size": 0}, {"damp": -0.1}, {"hessian": torch.eye(7)}, {"weight": torch.randn(8)}):
        arguments = {"weight": weight, "hessian": hessian, "bits": 4, "symmetric": True} | bad
        with pytest.raises(ConfigError):
            gptq_quantize(**arguments)
