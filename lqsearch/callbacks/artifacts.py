"""``SearchArtifacts``: ``choices.json`` and the learned state of each block, written atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
from safetensors.torch import save_file

from lqsearch.callbacks.per_block import PerBlockCallback
from lqsearch.search.module import TransformSearch, finished_choices
from lqsearch.storage import atomic_file, write_text_atomic


class SearchArtifacts(PerBlockCallback):
    """After every finished block, writes under the run folder (``trainer.default_root_dir``):
    ``choices.json`` (per unit: candidates, final pi, argmax, per-candidate block loss, weight
    kurtosis) and ``transforms/block_XX.safetensors`` (learned transforms and clipping, unfused).
    """

    def on_blocks_finished(self, trainer: L.Trainer, module: TransformSearch, records: list[dict[str, Any]]) -> None:
        if not trainer.is_global_zero:
            return
        root = Path(trainer.default_root_dir)
        for record in records:
            with atomic_file(root / "transforms" / f"block_{record['block']:02d}.safetensors") as tmp:
                save_file({k: v.contiguous() for k, v in record["state"].items()}, str(tmp), metadata={"choice": json.dumps(record["choice"])})
        write_text_atomic(root / "choices.json", json.dumps(finished_choices(module), indent=2) + "\n")
