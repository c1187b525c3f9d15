"""``SearchReport``: perplexity of full precision, RTN and the searched model, with the choices."""

from __future__ import annotations

import copy

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from lqsearch.callbacks.tensorboard import choices_table
from lqsearch.errors import ConfigError
from lqsearch.eval.perplexity import perplexity
from lqsearch.search.module import TransformSearch
from lqsearch.transforms.block import quantize_model


class SearchReport(Callback):
    """Scores the evaluation windows of the data module before the search (full precision, and
    RTN on a copy of the model: skip with ``baselines: false`` for models too large to copy)
    and after it (the searched, fused model); prints a table and logs ``ppl/*``. Under DDP
    rank 0 alone scores: every rank holds the same model.

    Args:
        baselines: also score full precision and RTN at fit start.
    """

    def __init__(self, baselines: bool = True) -> None:
        self.baselines = baselines
        self.results: dict[str, float] = {}
        self._windows: torch.Tensor | None = None

    def _score(self, trainer: L.Trainer, module: TransformSearch, model, name: str) -> None:
        if self._windows is None:  # tokenise the evaluation text once for all scores
            self._windows = trainer.datamodule.evaluation_windows()
        model.to(module.device)
        self.results[name] = perplexity(model, self._windows, trainer.datamodule.hparams.batch_size, progress=False).perplexity
        model.to("cpu")

    def on_fit_start(self, trainer: L.Trainer, pl_module: TransformSearch) -> None:
        if not self.baselines or pl_module.finished or not trainer.is_global_zero:  # a resumed run already changed the model
            return
        if pl_module.store is not None:
            raise ConfigError("SearchReport baselines need the whole model in memory: set baselines: false with stream_blocks")
        self._score(trainer, pl_module, pl_module.source.model, "fp")
        rtn = copy.deepcopy(pl_module.source.model)
        quantize_model(rtn, pl_module.quant)
        self._score(trainer, pl_module, rtn, "rtn")

    def on_fit_end(self, trainer: L.Trainer, pl_module: TransformSearch) -> None:
        if not trainer.is_global_zero:
            return
        self._score(trainer, pl_module, pl_module.quantized_model(), "searched")
        for logger in trainer.loggers:
            logger.log_metrics({f"ppl/{name}": value for name, value in self.results.items()})
        print(f"\nchosen transform per unit ({pl_module.quant.spec}, candidates {list(pl_module.candidates)}):")
        print(choices_table(pl_module))
        print("\n| model | perplexity |\n|---|---|")
        for name, value in self.results.items():
            print(f"| {name} | {value:.3f} |")
        print(f"\ncalibration wall time: {pl_module.calibration_seconds:.1f} s")
