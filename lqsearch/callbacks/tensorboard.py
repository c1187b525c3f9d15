"""``PiHeatmap``: the searched mixture weights as a TensorBoard image, and the choices as a table."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from lqsearch.callbacks.per_block import PerBlockCallback
from lqsearch.search.module import TransformSearch

CELL = 12  # pixels per (unit, block) cell
# colour of pi(first candidate): 0 -> blue, 1 -> red; unfinished blocks stay grey
LOW, HIGH, PENDING = torch.tensor([0.15, 0.35, 0.9]), torch.tensor([0.9, 0.2, 0.15]), torch.tensor([0.6, 0.6, 0.6])


def pi_heatmap(module: TransformSearch) -> torch.Tensor:
    """RGB image ``(3, units x CELL, blocks x CELL)``: pi of the first candidate per unit and block."""
    units = module.gates.units
    image = PENDING[:, None, None].repeat(1, len(units), module.num_blocks)
    for record in module.finished:
        for row, unit in enumerate(units):
            p = record["pi"][unit][module.candidates[0]]
            image[:, row, record["block"]] = LOW * (1 - p) + HIGH * p
    return image.repeat_interleave(CELL, 1).repeat_interleave(CELL, 2)


def choices_table(module: TransformSearch) -> str:
    """Markdown table: one row per finished block, the chosen candidate per unit."""
    units = module.gates.units
    lines = ["| block | " + " | ".join(units) + " |", "|---" * (len(units) + 1) + "|"]
    for record in module.finished:
        lines.append(f"| {record['block']} | " + " | ".join(record["choice"][u] for u in units) + " |")
    return "\n".join(lines)


class PiHeatmap(PerBlockCallback):
    """After each block: image ``pi/heatmap`` (rows: units, columns: blocks; red = the first
    candidate, blue = the others) and text ``choices`` in TensorBoard."""

    def on_blocks_finished(self, trainer: L.Trainer, module: TransformSearch, records: list[dict[str, Any]]) -> None:
        step = len(module.finished)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("pi/heatmap", pi_heatmap(module), global_step=step)
                logger.experiment.add_text("choices", choices_table(module), global_step=step)
