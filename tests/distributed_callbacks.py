"""Callbacks the ranks of test_distributed import: fail one rank; save what every rank holds."""

import json
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


class RecordLoadedBlocks(L.Callback):
    """``<root>/loaded_rank<r>.json``: which blocks of a streamed model this rank holds at the end."""

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loaded = [pl_module.store.is_loaded(i) for i in range(pl_module.num_blocks)]
        (Path(trainer.default_root_dir) / f"loaded_rank{trainer.global_rank}.json").write_text(json.dumps(loaded))
