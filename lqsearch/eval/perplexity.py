"""Perplexity over fixed token windows: ``exp(mean NLL)`` of every predicted token."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torchmetrics.text import Perplexity
from tqdm.auto import tqdm
from transformers import PreTrainedModel


@dataclass(frozen=True)
class PerplexityResult:
    perplexity: float
    tokens: int  # tokens processed (windows x seqlen)
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("nan")


@torch.no_grad()
def perplexity(model: PreTrainedModel, windows: torch.Tensor, batch_size: int = 4, progress: bool = True) -> PerplexityResult:
    """Perplexity of ``model`` on ``windows`` (``(n, seqlen)`` token ids), each window scored independently."""
    device = next(model.parameters()).device
    metric = Perplexity().to(device)
    start = time.perf_counter()
    for batch in tqdm(windows.split(batch_size), desc="perplexity", unit="batch", disable=not progress):
        batch = batch.to(device)
        logits = model(batch, use_cache=False).logits
        metric.update(logits[:, :-1].float(), batch[:, 1:])
    seconds = time.perf_counter() - start
    return PerplexityResult(metric.compute().item(), windows.numel(), seconds)
