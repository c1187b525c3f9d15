"""``SearchArtifacts``: ``choices.json`` and the learned state of each block, written atomically."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback
from safetensors.torch import save_file

from lqsearch.search.module import TransformSearch, finished_choices
from lqsearch.storage import write_text_atomic


class SearchArtifacts(Callback):
    """After every finished block, writes under the run folder (``trainer.default_root_dir``):
    ``choices.json`` (per unit: candidates, final pi, argmax, per-candidate block loss, weight
    kurtosis) and ``transforms/block_XX.safetensors`` (learned transforms and clipping, unfused).

    Blocks finish in the module's ``on_train_epoch_end``, which runs after this callback's, so
    files are written at the next epoch start and at the end of training; a resumed run writes
    whatever its checkpoint holds that the files do not.
    """

    def __init__(self) -> None:
        self._written = 0

    def _write(self, trainer: L.Trainer, module: TransformSearch) -> None:
        if not trainer.is_global_zero or len(module.finished) == self._written:
            return
        root = Path(trainer.default_root_dir)
        for record in module.finished[self._written :]:
            path = root / "transforms" / f"block_{record['block']:02d}.safetensors"
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            save_file({k: v.contiguous() for k, v in record["state"].items()}, str(tmp), metadata={"choice": json.dumps(record["choice"])})
            tmp.replace(path)
        write_text_atomic(root / "choices.json", json.dumps(finished_choices(module), indent=2) + "\n")
        self._written = len(module.finished)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: TransformSearch) -> None:
        self._write(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: TransformSearch) -> None:
        self._write(trainer, pl_module)
