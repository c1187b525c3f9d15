"""The Kronecker core: ``x (A (x) B)`` without materialising ``A (x) B``, and fixed rotations.

For ``P = A (x) B`` (A: n1 x n1, B: n2 x n2) and a row vector x of length n1*n2 viewed
row-major as X (n1 x n2): ``x P = vec(A^T X B)``. Cost O(n (n1 + n2)) instead of O(n^2).
"""

from __future__ import annotations

import math

import torch


def balanced_factor_sizes(n: int) -> tuple[int, int]:
    """``(n1, n2)`` with ``n1 * n2 == n``, ``n1 <= n2`` and n1 as close to sqrt(n) as n allows (1 for primes)."""
    if n < 1:
        raise ValueError(f"transform width must be positive, got {n}")
    n1 = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
    return n1, n // n1


def kron_matmul(x: torch.Tensor, left: torch.Tensor | None, right: torch.Tensor) -> torch.Tensor:
    """``vec(left @ X @ right)`` for every row X of ``x`` viewed as ``(n1, n2)``; ``left=None`` means n1 = 1."""
    if left is None:
        return x @ right
    shape = x.shape
    grid = x.reshape(*shape[:-1], left.shape[0], right.shape[0])
    return (left @ grid @ right).reshape(shape)


def _sylvester_hadamard(n: int, dtype: torch.dtype) -> torch.Tensor:
    matrix = torch.ones(1, 1, dtype=dtype)
    while matrix.shape[0] < n:
        matrix = torch.cat([torch.cat([matrix, matrix], 1), torch.cat([matrix, -matrix], 1)], 0)
    return matrix


def fixed_rotation(n: int, generator: torch.Generator, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A random orthogonal n x n matrix: randomised Hadamard ``H diag(+-1) / sqrt(n)`` when n is a
    power of two, otherwise Q of the QR of a Gaussian matrix (signs fixed so Q is Haar-distributed)."""
    if n & (n - 1) == 0:
        signs = torch.randint(0, 2, (n,), generator=generator).to(dtype) * 2 - 1
        return _sylvester_hadamard(n, dtype) * signs / math.sqrt(n)
    gaussian = torch.randn(n, n, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)
    return (q * torch.sign(torch.diagonal(r))).to(dtype).contiguous()  # QR returns column-major
