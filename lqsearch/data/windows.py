"""Token windows: the whole text tokenised once, then cut into fixed-length windows."""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

from lqsearch.errors import ConfigError


def tokenize(tokenizer: PreTrainedTokenizerBase, text: str) -> torch.Tensor:
    """Token ids of the whole text as one 1-D tensor (no special tokens inserted)."""
    # Chunk by paragraph groups: one 3 MB call is slow and triggers max-length warnings.
    paragraphs = text.split("\n\n")
    chunks = ["\n\n".join(paragraphs[i : i + 64]) for i in range(0, len(paragraphs), 64)]
    ids: list[int] = []
    for index, chunk in enumerate(chunks):
        ids.extend(tokenizer(chunk if index == 0 else "\n\n" + chunk, add_special_tokens=False, verbose=False)["input_ids"])
    return torch.tensor(ids, dtype=torch.long)


def evaluation_windows(ids: torch.Tensor, seqlen: int, max_windows: int | None = None) -> torch.Tensor:
    """Non-overlapping windows of ``seqlen`` tokens, shape ``(n, seqlen)``.

    With ``max_windows``, a fixed subset spread evenly over the whole text: the first
    windows alone are not representative.
    """
    if seqlen < 2:
        raise ConfigError(f"seqlen {seqlen} too small: need at least 2 tokens per window")
    count = ids.numel() // seqlen
    if count == 0:
        raise ConfigError(f"seqlen {seqlen} is longer than the evaluation text ({ids.numel()} tokens): lower seqlen or use a longer corpus")
    windows = ids[: count * seqlen].view(count, seqlen)
    if max_windows is not None:
        if max_windows < 1:
            raise ConfigError(f"max_windows {max_windows} must be at least 1")
        if max_windows < count:
            windows = windows[torch.linspace(0, count - 1, max_windows).round().long()]
    return windows
