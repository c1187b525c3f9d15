"""Callbacks the ranks of test_distributed import: fail one rank; save every rank's weights."""

from pathlib import Path

import lightning as L
from safetensors.torch import save_model


class RaiseOnRank(L.Callback):
    def __init__(self, rank: int = 1, epoch: int = 1) -> None:
        self.rank, self.epoch = rank, epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_rank == self.rank and trainer.current_epoch == self.epoch:
            raise RuntimeError(f"injected failure on rank {self.rank}")


class SaveRankWeights(L.Callback):
    """``<root>/rank<r>.safetensors``: the quantized model as this rank holds it at the end."""

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        save_model(pl_module.quantized_model(), str(Path(trainer.default_root_dir) / f"rank{trainer.global_rank}.safetensors"))
