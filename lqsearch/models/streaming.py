"""Models whose decoder blocks are read from safetensors files one at a time (``stream_blocks``).

``load_streamed`` builds the model on the meta device and loads at once only what is not a
decoder block (embeddings, final norm, head; RoPE is rebuilt on the CPU). ``BlockStore.load``
reads one block's tensors from the folder's safetensors files (sharded or not) and
``release`` puts a block back on the meta device. A search process then holds the small
parts, the block it calibrates, and whatever finished blocks it keeps: under DDP only rank 0
keeps them (for the export), so the other ranks need a block's memory, not the model's.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from lqsearch.errors import ConfigError
from lqsearch.models.adapters import ModelAdapter, check_supported
from lqsearch.models.loading import model_folder


class BlockStore:
    """Reads a model's tensors from the safetensors files of its folder, block by block."""

    def __init__(self, folder: Path, adapter: ModelAdapter, dtype: torch.dtype) -> None:
        self.adapter, self.dtype = adapter, dtype
        index = folder / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            self._file_of = {key: folder / name for key, name in weight_map.items()}
        elif (folder / "model.safetensors").is_file():
            with safe_open(folder / "model.safetensors", framework="pt") as file:
                self._file_of = dict.fromkeys(file.keys(), folder / "model.safetensors")
        else:
            raise ConfigError(f"{str(folder)!r} has no model.safetensors(.index.json): blocks stream from safetensors files only")

    def _prefix(self, index: int) -> str:
        return f"{self.adapter.layout.blocks}.{index}."

    def _read(self, wanted: Callable[[str], bool]) -> dict[str, torch.Tensor]:
        tensors: dict[str, torch.Tensor] = {}
        for path in sorted({file for key, file in self._file_of.items() if wanted(key)}):
            with safe_open(path, framework="pt") as file:
                for key in (k for k in file.keys() if wanted(k)):
                    tensor = file.get_tensor(key)
                    tensors[key] = tensor.to(self.dtype) if tensor.is_floating_point() else tensor
        return tensors

    def load_rest(self) -> None:
        """Everything that is not a decoder block; RoPE rebuilt on the CPU; tied head re-tied."""
        model, layout = self.adapter.model, self.adapter.layout
        blocks = f"{layout.blocks}."
        model.load_state_dict(self._read(lambda key: not key.startswith(blocks)), strict=False, assign=True)
        rotary = model.get_submodule(layout.rotary)
        self.adapter.replace(model, layout.rotary, type(rotary)(config=model.config))  # its buffers are not saved
        model.tie_weights()
        rest = [name for name, p in model.named_parameters() if p.is_meta and not name.startswith(blocks)]
        if rest:
            raise ConfigError(f"the safetensors files lack {rest[:3]}: the folder does not hold this model's weights")

    def is_loaded(self, index: int) -> bool:
        return not any(p.is_meta for p in self.adapter.blocks[index].parameters())

    def load(self, index: int) -> None:
        """Read block ``index`` (unwrapped, as saved) from the files into the model."""
        prefix = self._prefix(index)
        tensors = {key[len(prefix) :]: value for key, value in self._read(lambda key: key.startswith(prefix)).items()}
        self.adapter.blocks[index].load_state_dict(tensors, strict=True, assign=True)

    def release(self, index: int) -> None:
        """Free block ``index``: its tensors go back to the meta device."""
        self.adapter.blocks[index].to_empty(device="meta")

    @contextmanager
    def loaded(self, index: int) -> Iterator[None]:
        """Block ``index`` in memory for the duration (released after, unless it was in memory before)."""
        was_loaded = self.is_loaded(index)
        if not was_loaded:
            self.load(index)
        try:
            yield
        finally:
            if not was_loaded:
                self.release(index)


def load_streamed(source: str, dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, BlockStore]:
    """``source`` with every decoder block on the meta device, and the store that loads them."""
    folder = model_folder(source)
    config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    check_supported(config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=False)
    store = BlockStore(folder, ModelAdapter(model), dtype)
    store.load_rest()
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    return model.eval(), tokenizer, store
