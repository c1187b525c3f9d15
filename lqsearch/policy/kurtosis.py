"""Kurtosis of the weights behind each unit, and its robust z-score across blocks (DESIGN.md section 2)."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Literal

import torch
from torch import nn

from lqsearch.models.adapters import LinearRole, ModelAdapter

KurtosisWeights = Literal["input", "all"]
# "input": the weights the unit's input transform feeds; "all": every weight of the unit.
UNIT_WEIGHTS: dict[KurtosisWeights, dict[str, tuple[LinearRole, ...]]] = {
    "input": {"attn": ("q", "k", "v"), "mlp": ("gate", "up")},
    "all": {"attn": ("q", "k", "v", "o"), "mlp": ("gate", "up", "down")},
}


def pearson_kurtosis(tensors: Iterable[torch.Tensor]) -> float:
    """``E[(w - mean)^4] / Var(w)^2`` of all entries together, in float64 (3 for a Gaussian)."""
    values = torch.cat([t.detach().reshape(-1).double() for t in tensors])
    centred = values - values.mean()
    variance = centred.pow(2).mean()
    if variance == 0:
        raise ValueError("kurtosis of constant weights is undefined")
    return (centred.pow(4).mean() / variance.pow(2)).item()


def block_kurtosis(adapter: ModelAdapter, block: nn.Module, weights: KurtosisWeights = "input") -> dict[str, float]:
    """Per unit type, the kurtosis of one block's unit weights."""
    return {unit: pearson_kurtosis(adapter.linear(block, role).weight for role in roles) for unit, roles in UNIT_WEIGHTS[weights].items()}


def unit_kurtosis(
    adapter: ModelAdapter,
    weights: KurtosisWeights = "input",
    loaded: Callable[[int], AbstractContextManager] | None = None,
) -> dict[str, list[float]]:
    """Per unit type, the kurtosis of each block's unit weights (block order), read in place;
    ``loaded(i)`` holds block i in memory meanwhile (streamed models)."""
    per_block = []
    for index, block in enumerate(adapter.blocks):
        with loaded(index) if loaded is not None else nullcontext():
            per_block.append(block_kurtosis(adapter, block, weights))
    return {unit: [values[unit] for values in per_block] for unit in UNIT_WEIGHTS[weights]}


def robust_z(values: Sequence[float]) -> list[float]:
    """``0.6745 (x - median) / MAD`` (Iglewicz and Hoaglin).

    When more than half the values are equal the MAD is 0; then the mean absolute deviation
    stands in (``(x - median) / (1.2533 * meanAD)``), and all zeros when every value is equal.
    """
    median = statistics.median(values)
    deviations = [abs(v - median) for v in values]
    mad = statistics.median(deviations)
    if mad > 0:
        return [0.6745 * (v - median) / mad for v in values]
    mean_deviation = statistics.fmean(deviations)
    if mean_deviation > 0:
        return [(v - median) / (1.2533 * mean_deviation) for v in values]
    return [0.0 for _ in values]
