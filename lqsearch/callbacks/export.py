"""``QuantizedExport``: write the fused quantized model when the last block is done."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback

from lqsearch.models.export import export_quantized
from lqsearch.search.module import TransformSearch


class QuantizedExport(Callback):
    """Writes ``<run>/<dirname>/`` atomically at the end of a complete fit; reload it with
    ``lqsearch.load_quantized``.

    Args:
        dirname: folder name under the run folder.
    """

    def __init__(self, dirname: str = "quantized") -> None:
        self.dirname = dirname

    def on_train_end(self, trainer: L.Trainer, pl_module: TransformSearch) -> None:
        if len(pl_module.finished) < pl_module.num_blocks or not trainer.is_global_zero:
            return
        path = Path(trainer.default_root_dir) / self.dirname
        export_quantized(path, pl_module.quantized_model(), pl_module.tokenizer, pl_module.export_manifest())
