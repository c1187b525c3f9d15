"""Architecture logits over candidate transforms, per block and unit, with Gumbel-softmax sampling."""

from __future__ import annotations

import math
import zlib
from typing import Literal

import torch
from torch import nn

TauSchedule = Literal["exponential", "linear"]


def temperature(progress: float, start: float, end: float, schedule: TauSchedule) -> float:
    """Annealed tau at ``progress`` in [0, 1] of a block's search."""
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "linear":
        return start + (end - start) * progress
    return start * math.exp(math.log(end / start) * progress)


class ArchitectureGates(nn.Module):
    """``alpha[block, unit, candidate]``; ``pi = softmax((alpha + g) / tau)`` with Gumbel noise g.

    The noise is drawn from a generator seeded by (seed, block, step), so every DDP rank and
    a resumed run draw the same noise.
    """

    def __init__(self, num_blocks: int, units: tuple[str, ...], candidates: tuple[str, ...], seed: int = 0) -> None:
        super().__init__()
        self.units, self.candidates, self.seed = units, candidates, seed
        self.alpha = nn.Parameter(torch.zeros(num_blocks, len(units), len(candidates)))

    def probabilities(self, block: int) -> dict[str, torch.Tensor]:
        """Noise-free ``softmax(alpha)`` per unit."""
        probs = self.alpha[block].detach().softmax(-1)
        return {unit: probs[i] for i, unit in enumerate(self.units)}

    def argmax(self, block: int) -> dict[str, str]:
        return {unit: self.candidates[int(p.argmax())] for unit, p in self.probabilities(block).items()}

    def sample(self, block: int, step: int, tau: float, hard: bool) -> dict[str, torch.Tensor]:
        """Mixing weights per unit for one step; ``hard``: one-hot with a straight-through gradient."""
        generator = torch.Generator().manual_seed(self.seed + zlib.crc32(f"{block}.{step}".encode()))
        uniform = torch.rand(self.alpha.shape[1:], generator=generator, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
        gumbel = (-torch.log(-torch.log(uniform))).to(self.alpha)
        soft = ((self.alpha[block] + gumbel) / tau).softmax(-1)
        if hard:
            one_hot = nn.functional.one_hot(soft.argmax(-1), soft.shape[-1]).to(soft)
            soft = one_hot - soft.detach() + soft
        return {unit: soft[i] for i, unit in enumerate(self.units)}
