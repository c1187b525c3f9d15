"""Invertible square factors of a Kronecker transform, each with a closed-form inverse."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import orthogonal


class Factor(nn.Module):
    """An invertible n x n matrix M; ``inverse()`` is closed-form (cheap and differentiable)."""

    def matrix(self) -> torch.Tensor:
        raise NotImplementedError

    def inverse(self) -> torch.Tensor:
        raise NotImplementedError


class FixedFactor(Factor):
    """A frozen matrix with its inverse (a fixed rotation, or a fused transform's online part)."""

    def __init__(self, matrix: torch.Tensor, inverse: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("fixed", matrix.clone())
        self.register_buffer("fixed_inverse", inverse.clone())

    def matrix(self) -> torch.Tensor:
        return self.fixed

    def inverse(self) -> torch.Tensor:
        return self.fixed_inverse


class _Orthogonal(nn.Module):
    """Holds one orthogonal matrix through ``torch.nn.utils.parametrizations.orthogonal``."""

    def __init__(self, init: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty_like(init, dtype=torch.float32))
        orthogonal(self, "weight")
        self.weight = init.to(torch.float32)  # right-inverse: the parametrisation starts exactly at init


class LearnedOrthogonalFactor(Factor):
    """A trainable orthogonal matrix Q (SpinQuant-style); ``Q^-1 = Q^T``."""

    def __init__(self, init: torch.Tensor) -> None:
        super().__init__()
        self.rotation = _Orthogonal(init)

    def matrix(self) -> torch.Tensor:
        return self.rotation.weight

    def inverse(self) -> torch.Tensor:
        return self.rotation.weight.T


class AffineFactor(Factor):
    """A trainable invertible ``U diag(s) V^T`` (FlatQuant-style), U and V orthogonal.

    Starts at ``U = init``, ``s = 1``, ``V = I``: the same matrix as the rotation candidate,
    which learning then moves off the orthogonal group. ``M^-1 = V diag(1/s) U^T``.
    """

    def __init__(self, init: torch.Tensor) -> None:
        super().__init__()
        self.left = _Orthogonal(init)
        self.singular_values = nn.Parameter(torch.ones(init.shape[0]))
        self.right = _Orthogonal(torch.eye(init.shape[0]))

    def matrix(self) -> torch.Tensor:
        return (self.left.weight * self.singular_values) @ self.right.weight.T

    def inverse(self) -> torch.Tensor:
        return (self.right.weight / self.singular_values) @ self.left.weight.T
