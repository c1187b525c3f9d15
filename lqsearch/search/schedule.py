"""Which block and phase an epoch belongs to: one ``fit`` calibrates every block in turn."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Phase = Literal["search", "finetune", "none"]


@dataclass(frozen=True)
class BlockSchedule:
    """``search_epochs`` then ``finetune_epochs`` per block; a block with neither still takes one
    epoch without optimisation (RTN with the initial transforms)."""

    num_blocks: int
    search_epochs: int
    finetune_epochs: int

    @property
    def epochs_per_block(self) -> int:
        return max(self.search_epochs + self.finetune_epochs, 1)

    @property
    def total_epochs(self) -> int:
        return self.num_blocks * self.epochs_per_block

    def block(self, epoch: int) -> int:
        return epoch // self.epochs_per_block

    def phase(self, epoch: int) -> tuple[Phase, int, int]:
        """``(phase, epoch within the phase, epochs of the phase)``."""
        within = epoch % self.epochs_per_block
        if self.search_epochs + self.finetune_epochs == 0:
            return "none", 0, 1
        if within < self.search_epochs:
            return "search", within, self.search_epochs
        return "finetune", within - self.search_epochs, self.finetune_epochs

    def starts_block(self, epoch: int) -> bool:
        return epoch % self.epochs_per_block == 0

    def ends_block(self, epoch: int) -> bool:
        return (epoch + 1) % self.epochs_per_block == 0

    def ends_search(self, epoch: int) -> bool:
        phase, within, length = self.phase(epoch)
        return phase == "search" and within == length - 1
