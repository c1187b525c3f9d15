"""``PerBlockCallback``: act once for every block the search finished."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from lqsearch.search.module import TransformSearch


class PerBlockCallback(Callback):
    """Calls ``on_blocks_finished`` with the records of blocks finished since the last call.

    Blocks finish in the module's ``on_train_epoch_end``, which runs after the callbacks'
    hook of that name, so this catches up at the next epoch start and at the end of
    training; a resumed run catches up on every block its checkpoint holds.
    """

    def __init__(self) -> None:
        self._seen = 0

    def on_blocks_finished(self, trainer: L.Trainer, module: TransformSearch, records: list[dict[str, Any]]) -> None:
        raise NotImplementedError

    def _catch_up(self, trainer: L.Trainer, module: TransformSearch) -> None:
        records = module.finished[self._seen :]
        if records:
            self._seen = len(module.finished)
            self.on_blocks_finished(trainer, module, records)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: TransformSearch) -> None:
        self._catch_up(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: TransformSearch) -> None:
        self._catch_up(trainer, pl_module)
