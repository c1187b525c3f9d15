"""Fake quantizers (DESIGN.md section 3): straight-through rounding, gradients through the scale.

Every quantizer reduces over the last dimension of its input, so one function serves
weights (rows = output channels), activations (one row per token) and the KV cache
(one row per token and head, the row being ``head_dim`` long).

``quantization_grid`` holds the only copy of the grid formulas (scale, zero point,
integer range from the clipped row min/max); ``fake_quantize`` is that grid applied to
its own input, and GPTQ (``lqsearch.quant.gptq``) rounds onto the same grid column by column.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lqsearch.errors import ConfigError
from lqsearch.quant.config import FULL_PRECISION_BITS, Denominator

CLIP_LOGIT_INIT = 4.0  # sigmoid(4) ~ 0.982: starts close to no clipping


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round in the forward pass, identity in the backward pass."""
    return x + (torch.round(x) - x).detach()


def _nonzero(scale: torch.Tensor) -> torch.Tensor:
    # An all-zero row has scale 0; any positive scale then maps it to 0 exactly.
    return torch.where(scale > 0, scale, torch.ones_like(scale))


@dataclass(frozen=True)
class QuantGrid:
    """A per-row quantization grid: ``dequant(q) = (q - zero) * scale`` with integer q in [qmin, qmax].

    ``scale`` (and ``zero`` when asymmetric) have the row shape ``x.shape[:-1] + (1,)``;
    a symmetric grid has no zero point (``zero`` is ``0.0``).
    """

    scale: torch.Tensor
    zero: torch.Tensor | float
    qmin: int
    qmax: int
    symmetric: bool

    def quantize(self, values: torch.Tensor) -> torch.Tensor:
        """Round ``values`` (broadcastable against ``scale``, e.g. one column) onto the grid and dequantize.

        Rounding is straight-through (``round_ste``), so gradients reach ``values`` and the scale.
        """
        q = round_ste(values / self.scale)
        if self.symmetric:
            # No zero-point arithmetic: adding and subtracting 0 would turn -0.0 into +0.0.
            return torch.clamp(q, self.qmin, self.qmax) * self.scale
        q = torch.clamp(q + self.zero, self.qmin, self.qmax)
        return (q - self.zero) * self.scale

    def to(self, dtype: torch.dtype) -> QuantGrid:
        """The same grid with ``scale`` and ``zero`` cast (exactly, when widening) to ``dtype``."""
        zero = self.zero if isinstance(self.zero, float) else self.zero.to(dtype)
        return QuantGrid(self.scale.to(dtype), zero, self.qmin, self.qmax, self.symmetric)


def quantization_grid(
    x: torch.Tensor,
    bits: int,
    symmetric: bool,
    clip: torch.Tensor | float = 1.0,
    denominator: Denominator = "qmax",
) -> QuantGrid:
    """The per-row grid of ``x`` (rows over its last dimension), from the row range times ``clip``.

    ``clip`` multiplies the row range (broadcast against ``x.shape[:-1] + (1,)``).
    Symmetric: ``s = max(|min|, max) / qmax`` (or ``qmax + 0.5``), q in [-(qmax+1), qmax].
    Asymmetric: ``s = (max - min) / (2^b - 1)``, ``z = round(-min / s)``, q in [0, 2^b - 1];
    the range always contains 0. Differentiable in ``x`` and ``clip`` (the zero point
    is rounded straight-through).
    """
    if bits >= FULL_PRECISION_BITS:
        raise ConfigError(f"bits={bits} is full precision: there is no grid to quantize onto")
    x_min = x.amin(dim=-1, keepdim=True).clamp(max=0) * clip
    x_max = x.amax(dim=-1, keepdim=True).clamp(min=0) * clip
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        divisor = qmax + 0.5 if denominator == "qmax+0.5" else qmax
        scale = _nonzero(torch.maximum(-x_min, x_max) / divisor)
        return QuantGrid(scale, 0.0, -(qmax + 1), qmax, symmetric=True)
    levels = 2**bits - 1
    scale = _nonzero((x_max - x_min) / levels)
    return QuantGrid(scale, round_ste(-x_min / scale), 0, levels, symmetric=False)


def fake_quantize(
    x: torch.Tensor,
    bits: int,
    symmetric: bool,
    clip: torch.Tensor | float = 1.0,
    denominator: Denominator = "qmax",
) -> torch.Tensor:
    """Quantize then dequantize ``x`` row-wise over its last dimension, on ``quantization_grid(x, ...)``.

    Returns ``x`` itself when ``bits`` is full precision.
    """
    if bits >= FULL_PRECISION_BITS:
        return x
    return quantization_grid(x, bits, symmetric, clip, denominator).quantize(x)


class FakeQuantizer(nn.Module):
    """Row-wise fake quantizer with an optional learnable clipping logit.

    ``clip_shape`` is ``()`` for one clipping scalar (activations per token, the KV
    cache per token and head) or ``(out_features, 1)`` for one per weight row.
    ``clip_init=None`` means no clipping at all (plain RTN).
    """

    def __init__(
        self,
        bits: int,
        symmetric: bool,
        denominator: Denominator = "qmax",
        clip_shape: tuple[int, ...] = (),
        clip_init: float | None = CLIP_LOGIT_INIT,
    ) -> None:
        super().__init__()
        self.bits, self.symmetric, self.denominator = bits, symmetric, denominator
        self.clip_logit = None if clip_init is None else nn.Parameter(torch.full(clip_shape, float(clip_init)))

    @property
    def enabled(self) -> bool:
        return self.bits < FULL_PRECISION_BITS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        clip = 1.0 if self.clip_logit is None else torch.sigmoid(self.clip_logit).to(x.dtype)
        return fake_quantize(x, self.bits, self.symmetric, clip, self.denominator)

    def freeze(self) -> None:
        """Turn the learned clipping into a constant: the quantizer then has no trainable state."""
        if isinstance(self.clip_logit, nn.Parameter):
            logit = self.clip_logit.detach().clone()
            del self.clip_logit
            self.register_buffer("clip_logit", logit)

    def extra_repr(self) -> str:
        clip = "none" if self.clip_logit is None else tuple(self.clip_logit.shape)
        return f"bits={self.bits}, symmetric={self.symmetric}, clip={clip}"
