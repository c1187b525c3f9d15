"""``CalibrationDataModule``: fixed-seed windows of the calibration text, with their sample indices."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from transformers import PreTrainedTokenizerBase

from lqsearch.data.corpora import load_text
from lqsearch.data.windows import evaluation_windows, tokenize
from lqsearch.errors import ConfigError


class CalibrationWindows(Dataset):
    """``nsamples`` windows of ``seqlen`` tokens; item i is ``{"index": i, "input_ids": ...}``.

    The index keys the per-rank caches of block inputs and targets, so a sample keeps its
    cached activations whichever batch or rank it lands in.
    """

    def __init__(self, windows: torch.Tensor) -> None:
        self.windows = windows

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        return {"index": index, "input_ids": self.windows[index]}


def draw_windows(ids: torch.Tensor, nsamples: int, seqlen: int, seed: int) -> torch.Tensor:
    """``nsamples`` windows at random starts (fixed ``seed``), as in GPTQ/FlatQuant calibration."""
    if ids.numel() < nsamples * seqlen:
        raise ConfigError(
            f"calibration text has {ids.numel()} tokens, fewer than nsamples x seqlen = {nsamples} x {seqlen}: lower them or use a longer corpus"
        )
    starts = torch.randint(0, ids.numel() - seqlen + 1, (nsamples,), generator=torch.Generator().manual_seed(seed))
    return torch.stack([ids[s : s + seqlen] for s in starts.tolist()])


class CalibrationDataModule(L.LightningDataModule):
    """Calibration windows from the calibration part of a corpus.

    ``validate`` scores the fixed evaluation windows of the corpus's evaluation part; during
    ``fit`` the validation loader is empty (the ``SearchReport`` callback scores them instead).

    Args:
        corpus: named corpus (``enwiki-sample``, ``wikitext2``, ``c4``) or a local .txt/.jsonl/.parquet file.
        nsamples: number of calibration windows (the paper uses 128).
        seqlen: tokens per window (the paper uses 2048).
        batch_size: windows per step on each device (the global batch is ``batch_size x devices``);
            with several processes ``nsamples`` must be a multiple of their number.
        seed: seed of the window positions.
        eval_corpus: corpus whose evaluation part is scored (default: ``corpus``).
        eval_seqlen: tokens per evaluation window (2048 on GPUs).
        eval_max_windows: score a fixed, evenly spread subset of the evaluation windows (None: all).
    """

    def __init__(
        self,
        corpus: str = "enwiki-sample",
        nsamples: int = 128,
        seqlen: int = 2048,
        batch_size: int = 4,
        seed: int = 0,
        eval_corpus: str | None = None,
        eval_seqlen: int = 2048,
        eval_max_windows: int | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("nsamples", nsamples), ("seqlen", seqlen), ("batch_size", batch_size), ("eval_seqlen", eval_seqlen)):
            if value < 1:
                raise ConfigError(f"{name} must be at least 1, got {value}")
        self.save_hyperparameters()
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.dataset: CalibrationWindows | None = None
        self._stage: str | None = None

    def connect(self, tokenizer: PreTrainedTokenizerBase) -> None:
        """Hand over the model's tokenizer (the model decides how text becomes ids)."""
        self.tokenizer = tokenizer

    def setup(self, stage: str) -> None:
        if self.tokenizer is None:
            raise RuntimeError("CalibrationDataModule.connect(tokenizer) must be called before setup")
        self._stage = stage
        if stage != "fit" or self.dataset is not None:
            return
        hp = self.hparams
        world_size = self.trainer.world_size if self.trainer is not None else 1
        if hp.nsamples % world_size:
            raise ConfigError(f"nsamples {hp.nsamples} is not a multiple of the {world_size} processes: every rank needs the same number of samples")
        ids = tokenize(self.tokenizer, load_text(hp.corpus, "calibration"))
        self.dataset = CalibrationWindows(draw_windows(ids, hp.nsamples, hp.seqlen, hp.seed))

    def evaluation_windows(self) -> torch.Tensor:
        hp = self.hparams
        text = load_text(hp.eval_corpus or hp.corpus, "evaluation")
        return evaluation_windows(tokenize(self.tokenizer, text), hp.eval_seqlen, hp.eval_max_windows)

    def val_dataloader(self) -> DataLoader | list:
        if self._stage == "fit":
            return []
        return DataLoader(self.evaluation_windows(), batch_size=self.hparams.batch_size, shuffle=False)

    def train_dataloader(self) -> DataLoader:
        # A fixed shard per rank, never shuffled: each rank caches the activations of its own
        # samples. Rank r holds samples r, r + W, ...: step k of W ranks sees the samples of
        # step k of one process with a W times larger batch. Given here, Lightning keeps it
        # (it would inject a shuffling one under any DDP strategy, even on one device).
        world_size, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer is not None else (1, 0)
        sampler = DistributedSampler(self.dataset, world_size, rank, shuffle=False)
        return DataLoader(self.dataset, batch_size=self.hparams.batch_size, sampler=sampler)
