"""``PiHeatmap``: the searched mixture weights as a TensorBoard image, and the choices as a table."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger

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


class PiHeatmap(Callback):
    """At the end of each block: image ``pi/heatmap`` (rows: units, columns: blocks; red = the
    first candidate, blue = the others) and text ``choices`` in TensorBoard."""

    def __init__(self) -> None:
        self._drawn = 0

    def _draw(self, trainer: L.Trainer, module: TransformSearch) -> None:
        if len(module.finished) == self._drawn:
            return
        self._drawn = len(module.finished)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("pi/heatmap", pi_heatmap(module), global_step=self._drawn)
                logger.experiment.add_text("choices", choices_table(module), global_step=self._drawn)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: TransformSearch) -> None:
        self._draw(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: TransformSearch) -> None:
        self._draw(trainer, pl_module)
