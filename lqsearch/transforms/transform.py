"""The one ``Transform`` interface: ``x -> (x / c) P`` on activations, ``W -> (W * c) P^-T`` on weights.

``P = A (x) B`` is Kronecker-factored (or a single factor when the width is prime),
``c`` an optional per-channel smoothing scale (SmoothQuant-style, affine only). Since
``(x / c) P (W c P^-T)^T = x W^T``, a transformed linear computes the same function; only
the quantized operands change. The kinds differ only in their factors:

- ``identity``: no factor;
- ``rotation``: ``hadamard`` (fixed randomised Hadamard / random orthogonal) or ``learned``
  (trainable orthogonal);
- ``affine``: trainable ``U diag(s) V^T`` factors, optionally with the smoothing scale.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from lqsearch.transforms.factors import AffineFactor, Factor, FixedFactor, LearnedOrthogonalFactor
from lqsearch.transforms.kronecker import balanced_factor_sizes, fixed_rotation, kron_matmul

TransformKind = Literal["identity", "rotation", "affine"]
TRANSFORM_KINDS: tuple[TransformKind, ...] = ("identity", "rotation", "affine")
RotationMode = Literal["hadamard", "learned"]


class Transform(nn.Module):
    """An invertible transform of width ``size`` made of 0, 1 or 2 Kronecker factors."""

    def __init__(self, size: int, factors: list[Factor], channel_scale: bool = False) -> None:
        super().__init__()
        self.size = size
        self.factors = nn.ModuleList(factors)
        self.channel_scale = nn.Parameter(torch.ones(size)) if channel_scale else None

    @property
    def is_identity(self) -> bool:
        return len(self.factors) == 0 and self.channel_scale is None

    def _kron(self, x: torch.Tensor, inverse_transpose: bool) -> torch.Tensor:
        if not self.factors:
            return x
        mats = [f.inverse() if inverse_transpose else f.matrix() for f in self.factors]
        mats = [m.to(x.dtype) for m in mats]
        right = mats[-1].T if inverse_transpose else mats[-1]
        left = None if len(mats) == 1 else (mats[0] if inverse_transpose else mats[0].T)
        return kron_matmul(x, left, right)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Activation side: ``(x / c) P``."""
        if self.channel_scale is not None:
            x = x / self.channel_scale.to(x.dtype)
        return self._kron(x, inverse_transpose=False)

    def apply_outer(self, x: torch.Tensor) -> torch.Tensor:
        """Only the outer factor: ``vec(A^T X)``, e.g. across attention heads (X = heads x head_dim)."""
        if len(self.factors) < 2:
            return x
        outer, inner_size = self.factors[0].matrix().to(x.dtype), self.size // self.factors[0].matrix().shape[0]
        grid = x.reshape(*x.shape[:-1], outer.shape[0], inner_size)
        return (outer.T @ grid).reshape(x.shape)

    def transform_output(self, weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Make a linear's output groups (e.g. V heads) come out multiplied by the inner factor B:
        rows of group g become ``B^T W_g``, its bias ``b_g B``."""
        if not self.factors:
            return weight, bias
        inner = self.factors[-1].matrix().to(weight.dtype)
        grouped = weight.reshape(-1, inner.shape[0], weight.shape[-1])
        weight = (inner.T @ grouped).reshape(weight.shape)
        if bias is not None:
            bias = (bias.reshape(-1, inner.shape[0]) @ inner).reshape(bias.shape)
        return weight, bias

    def transform_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """Weight side (rows = output channels): ``(W * c) P^-T``."""
        if self.channel_scale is not None:
            weight = weight * self.channel_scale.to(weight.dtype)
        return self._kron(weight, inverse_transpose=True)

    def kron_factors(self, dtype: torch.dtype = torch.float64) -> list[torch.Tensor]:
        """The factor matrices in ``dtype``, without the channel scale."""
        return [f.matrix().detach().to(dtype) for f in self.factors]

    def _kron_all(self, mats: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
        if not mats:
            return torch.eye(self.size, dtype=dtype)
        return mats[0] if len(mats) == 1 else torch.kron(mats[0], mats[1])

    def matrix(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """``diag(1/c) P`` materialised (for tests and fusion, not for the forward pass)."""
        total = self._kron_all(self.kron_factors(dtype), dtype)
        if self.channel_scale is not None:
            total = total / self.channel_scale.detach().to(dtype)[:, None]
        return total

    def inverse_matrix(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """The exact inverse ``P^-1 diag(c)`` of ``matrix()``, each factor inverted numerically in ``dtype``."""
        total = self._kron_all([torch.linalg.inv(f) for f in self.kron_factors(dtype)], dtype)
        if self.channel_scale is not None:
            total = total * self.channel_scale.detach().to(dtype)[None, :]
        return total

    def online_part(self) -> Transform:
        """A frozen copy of ``P`` alone (the scale is folded elsewhere), factors inverted exactly in float64."""
        factors = [FixedFactor(m.float(), torch.linalg.inv(m).float()) for m in self.kron_factors(torch.float64)]
        return Transform(self.size, factors)

    def init_smoothing(self, activation_absmax: torch.Tensor, weight_absmax: torch.Tensor, alpha: float = 0.3) -> None:
        """SmoothQuant initialisation ``c = max|X|^alpha / max|W|^(1 - alpha)`` per input channel."""
        if self.channel_scale is None:
            raise ValueError("this transform has no channel scale to initialise")
        scale = activation_absmax.clamp(min=1e-5).pow(alpha) / weight_absmax.clamp(min=1e-5).pow(1 - alpha)
        with torch.no_grad():
            self.channel_scale.copy_(scale.clamp(min=1e-5))

    def extra_repr(self) -> str:
        sizes = "x".join(str(f.matrix().shape[0]) for f in self.factors) or "identity"
        return f"size={self.size}, factors={sizes}, channel_scale={self.channel_scale is not None}"


def build_transform(
    kind: TransformKind,
    sizes: tuple[int, int],
    generator: torch.Generator,
    rotation: RotationMode = "hadamard",
    smoothing: bool = False,
) -> Transform:
    """A fresh transform of ``kind`` over ``sizes[0] * sizes[1]`` channels (a size of 1 is dropped)."""
    size = sizes[0] * sizes[1]
    if kind == "identity":
        return Transform(size, [])
    inits = [fixed_rotation(n, generator) for n in sizes if n > 1]
    if kind == "rotation":
        if rotation == "hadamard":
            return Transform(size, [FixedFactor(q.float(), q.T.float()) for q in inits])
        return Transform(size, [LearnedOrthogonalFactor(q) for q in inits])
    if kind == "affine":
        return Transform(size, [AffineFactor(q) for q in inits], channel_scale=smoothing)
    raise ValueError(f"unknown transform kind {kind!r}: use one of {TRANSFORM_KINDS}")


__all__ = ["Transform", "TransformKind", "TRANSFORM_KINDS", "RotationMode", "build_transform", "balanced_factor_sizes"]
