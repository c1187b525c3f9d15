"""``MemoryReport``: per rank, the activation cache against its formula, and peak memory."""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from lqsearch.search.module import TransformSearch
from lqsearch.storage import write_text_atomic

MB = 2**20


def peak_rss_bytes() -> int:
    """Peak resident memory of this process (``ru_maxrss`` is in KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


class MemoryReport(Callback):
    """Tracks the largest activation cache of the run (sampled after every step, when a block's
    inputs and targets are both held) and writes ``<run>/memory/rank<r>.json`` at the end:
    the measured cache, the formula ``2 x nsamples / ranks x seqlen x hidden x bytes``, the
    process's peak RSS and, on CUDA, the peak allocated device memory. Every rank writes its
    own file: they differ by what each holds.
    """

    def __init__(self) -> None:
        self.peak_cache_bytes = 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: TransformSearch, *args: Any) -> None:
        self.peak_cache_bytes = max(self.peak_cache_bytes, pl_module.cache_bytes)

    def on_train_end(self, trainer: L.Trainer, pl_module: TransformSearch) -> None:
        data = trainer.datamodule.hparams
        report = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "cache_mb": self.peak_cache_bytes / MB,
            "cache_formula_mb": pl_module.expected_cache_bytes(data["nsamples"], data["seqlen"]) / MB,
            "peak_rss_mb": peak_rss_bytes() / MB,
            "cuda_peak_mb": torch.cuda.max_memory_allocated(pl_module.device) / MB if pl_module.device.type == "cuda" else None,
        }
        write_text_atomic(Path(trainer.default_root_dir) / "memory" / f"rank{trainer.global_rank}.json", json.dumps(report, indent=2) + "\n")
