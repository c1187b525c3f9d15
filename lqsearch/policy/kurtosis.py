"""Pearson kurtosis of the weights a unit's input transform feeds (DESIGN.md section 2)."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def pearson_kurtosis(tensors: Iterable[torch.Tensor]) -> float:
    """``E[(w - mean)^4] / Var(w)^2`` of all entries together, in float64 (3 for a Gaussian)."""
    values = torch.cat([t.detach().reshape(-1).double() for t in tensors])
    centred = values - values.mean()
    variance = centred.pow(2).mean()
    if variance == 0:
        raise ValueError("kurtosis of constant weights is undefined")
    return (centred.pow(4).mean() / variance.pow(2)).item()
