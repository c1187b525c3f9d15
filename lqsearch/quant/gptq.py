"""GPTQ weight rounding (Frantar et al. 2022): round one column at a time, push the error onward.

For a linear layer ``y = x W^T`` calibrated on N input rows X, the layer's squared
output error of a rounded weight Q is ``tr((W - Q) H (W - Q)^T) / 2`` with the Hessian
``H = 2 X^T X / N`` (``HessianAccumulator`` sums ``X^T X`` and N, also across ranks).
GPTQ rounds the columns (input features) in order; after each it moves the rounding
error onto the columns not yet rounded, weighted by the inverse Hessian, so that later
columns compensate for it. With U the upper Cholesky factor of ``H^-1``, column j's
error ``(w_j - q_j) / U[j, j]`` times ``U[j, j+1:]`` is exactly that compensation.

- Dampening: ``damp * mean(diag H)`` is added to the diagonal, so that a rank-deficient
  H (fewer samples than inputs, correlated inputs) still has a Cholesky factor. Inputs
  that are always 0 (``H[j, j] == 0``) get diagonal 1 and a zero weight column.
- Lazy batches: the error is propagated column by column only inside a block of
  ``block_size`` columns; the later columns receive the block's accumulated error in
  one matrix product. Same result, far fewer memory-bound updates.
- Act-order: optionally round the columns in order of decreasing ``H[j, j]`` (the inputs
  with the most energy first, while many columns remain to absorb their error), and
  put the columns back in their order at the end.
- Clip first, then GPTQ on the clipped grid: each row's grid is computed once from the
  unquantized weight with the (possibly learned) clipping factor, exactly as
  ``fake_quantize`` would; GPTQ only chooses which grid point each weight goes to.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lqsearch.errors import ConfigError
from lqsearch.quant.config import FULL_PRECISION_BITS, Denominator
from lqsearch.quant.quantizers import QuantGrid, quantization_grid


class HessianAccumulator:
    """Sums ``X^T X`` (float64) and the row count N over the calibration inputs of one linear layer."""

    def __init__(self, in_features: int, device: torch.device | str | None = None) -> None:
        self.in_features = in_features
        self.xtx = torch.zeros(in_features, in_features, dtype=torch.float64, device=device)
        self.rows = 0

    def add(self, x: torch.Tensor) -> None:
        """Add the input rows of ``x`` (``[..., in_features]``; leading dimensions are flattened)."""
        if x.shape[-1] != self.in_features:
            raise ConfigError(f"Hessian input has {x.shape[-1]} features, the layer has {self.in_features}")
        # float64 so that summing many large activations loses nothing before the Cholesky factorisation
        rows = x.detach().reshape(-1, self.in_features).to(self.xtx.device, torch.float64)
        self.xtx.addmm_(rows.T, rows)
        self.rows += rows.shape[0]

    def merge(self, reduce_sum: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Replace the sum and the count by ``reduce_sum`` of them (e.g. an all-reduce over DDP ranks).

        Call it once, after the last ``add``; a single process needs no merge (identity).
        """
        self.xtx = reduce_sum(self.xtx)
        # the count travels as a tensor on the sum's device, as a collective needs
        count = torch.tensor(self.rows, dtype=torch.int64, device=self.xtx.device)
        self.rows = int(reduce_sum(count).item())

    def hessian(self) -> torch.Tensor:
        """``H = 2 X^T X / N`` in float64."""
        if self.rows == 0:
            raise ConfigError("no calibration rows reached this layer: the GPTQ Hessian needs calibration data")
        return 2.0 * self.xtx / self.rows


def check_gptq_settings(block_size: int, damp: float) -> None:
    """One-line errors for a lazy-batch width below 1 or a negative (or NaN) dampening."""
    if block_size < 1:
        raise ConfigError(f"gptq_block_size={block_size}: use 1 or more (e.g. 128)")
    if not damp >= 0:  # also rejects NaN
        raise ConfigError(f"gptq_damp={damp}: use a value >= 0 (e.g. 0.01)")


def _check_arguments(weight: torch.Tensor, hessian: torch.Tensor, block_size: int, damp: float) -> None:
    if weight.dim() != 2:
        raise ConfigError(f"GPTQ needs a 2-D weight [out_features, in_features], got shape {tuple(weight.shape)}")
    columns = weight.shape[1]
    if tuple(hessian.shape) != (columns, columns):
        raise ConfigError(f"GPTQ Hessian has shape {tuple(hessian.shape)}, the weight needs ({columns}, {columns})")
    check_gptq_settings(block_size, damp)


def _inverse_cholesky(hessian: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of ``(H + damp * mean(diag H) I)^-1``."""
    diagonal = torch.diagonal(hessian)
    diagonal += damp * diagonal.mean()
    lower, info = torch.linalg.cholesky_ex(hessian)
    if info.item() == 0:
        upper, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(lower), upper=True)
        if info.item() == 0 and torch.isfinite(upper).all():
            return upper
    raise ConfigError(
        f"GPTQ Hessian is not positive definite with gptq_damp={damp}: raise the dampening (e.g. gptq_damp=0.1)"
    )


def _round_columns(weight: torch.Tensor, inverse_chol: torch.Tensor, grid: QuantGrid, block_size: int) -> torch.Tensor:
    """The GPTQ loop on float64 ``weight`` (modified in place); returns the rounded weight."""
    columns = weight.shape[1]
    rounded = torch.empty_like(weight)
    for start in range(0, columns, block_size):
        end = min(start + block_size, columns)
        block = weight[:, start:end]  # a view: the in-block updates land in ``weight``
        factor = inverse_chol[start:end, start:end]
        errors = torch.empty_like(block)
        for i in range(end - start):
            column = block[:, i : i + 1]
            quantized = grid.quantize(column)
            rounded[:, start + i : start + i + 1] = quantized
            error = (column - quantized) / factor[i, i]
            # only the block's remaining columns now; the rest waits for the block's total error
            block[:, i + 1 :] -= error @ factor[i : i + 1, i + 1 :]
            errors[:, i : i + 1] = error
        weight[:, end:] -= errors @ inverse_chol[start:end, end:]
    return rounded


@torch.no_grad()
def gptq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    bits: int,
    symmetric: bool,
    clip: torch.Tensor | float = 1.0,
    denominator: Denominator = "qmax",
    block_size: int = 128,
    damp: float = 0.01,
    act_order: bool = False,
) -> torch.Tensor:
    """The dequantized GPTQ rounding of ``weight`` ``[out_features, in_features]``, same shape and dtype.

    ``hessian`` is ``2 X^T X / N`` over the layer inputs (``HessianAccumulator.hessian``).
    Each row is rounded onto ``quantization_grid(weight, bits, symmetric, clip, denominator)``,
    the grid ``fake_quantize`` uses; ``clip`` is a float or a ``[out_features, 1]`` tensor.
    Returns ``weight`` itself when ``bits`` is full precision.
    """
    _check_arguments(weight, hessian, block_size, damp)
    if bits >= FULL_PRECISION_BITS:
        return weight
    # The grid comes from the weight in its own dtype, so it matches RTN's; widening it is exact.
    grid = quantization_grid(weight, bits, symmetric, clip, denominator).to(torch.float64)
    work = weight.to(torch.float64).clone()
    h = hessian.to(work.device, torch.float64).clone()
    if not torch.isfinite(h).all():
        raise ConfigError("GPTQ Hessian has non-finite entries: check the calibration activations")
    dead = torch.diagonal(h) == 0
    # an input that is always 0 carries no information; its weights cannot matter, so drop them
    torch.diagonal(h)[dead] = 1.0
    work[:, dead] = 0.0
    order = None
    if act_order:
        order = torch.argsort(torch.diagonal(h), descending=True)
        work, h = work[:, order], h[order][:, order]
    rounded = _round_columns(work, _inverse_cholesky(h, damp), grid, block_size)
    if order is not None:
        rounded = rounded[:, torch.argsort(order)]
    return rounded.to(weight.dtype)
