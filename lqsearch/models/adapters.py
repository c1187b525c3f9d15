"""Adapters: where a decoder family keeps its blocks, norms and linears.

Chosen by ``config.model_type``; no other module hard-codes attribute paths.
LLaMA, Mistral and Qwen2 share one layout (Qwen2 adds q/k/v biases, which the
layout does not need to know about).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from lqsearch.errors import ConfigError

LinearRole = Literal["q", "k", "v", "o", "gate", "up", "down"]
LINEAR_ROLES: tuple[LinearRole, ...] = ("q", "k", "v", "o", "gate", "up", "down")


@dataclass(frozen=True)
class DecoderLayout:
    """Attribute paths of one decoder family, relative to the causal-LM model or a block."""

    blocks: str = "model.layers"
    embeddings: str = "model.embed_tokens"
    rotary: str = "model.rotary_emb"
    attention: str = "self_attn"
    mlp: str = "mlp"
    input_norm: str = "input_layernorm"
    post_attention_norm: str = "post_attention_layernorm"
    linears: MappingProxyType = field(
        default_factory=lambda: MappingProxyType(
            {
                "q": "self_attn.q_proj",
                "k": "self_attn.k_proj",
                "v": "self_attn.v_proj",
                "o": "self_attn.o_proj",
                "gate": "mlp.gate_proj",
                "up": "mlp.up_proj",
                "down": "mlp.down_proj",
            }
        )
    )


LAYOUTS: dict[str, DecoderLayout] = {"llama": DecoderLayout(), "mistral": DecoderLayout(), "qwen2": DecoderLayout()}


def check_supported(config: PretrainedConfig) -> DecoderLayout:
    """The layout for ``config.model_type``, or a one-line error naming the supported types."""
    model_type = getattr(config, "model_type", None)
    if model_type not in LAYOUTS:
        raise ConfigError(f"model type {model_type!r} is not supported: lqsearch supports {', '.join(sorted(LAYOUTS))}")
    return LAYOUTS[model_type]


class ModelAdapter:
    """Named access to a decoder model's parts: blocks, norms, linears, head geometry."""

    def __init__(self, model: PreTrainedModel) -> None:
        self.model = model
        self.config = model.config
        self.layout = check_supported(model.config)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.get_submodule(self.layout.blocks)

    @property
    def num_heads(self) -> int:
        return self.config.num_attention_heads

    @property
    def num_kv_heads(self) -> int:
        return getattr(self.config, "num_key_value_heads", None) or self.num_heads

    @property
    def head_dim(self) -> int:
        return getattr(self.config, "head_dim", None) or self.config.hidden_size // self.num_heads

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def intermediate_size(self) -> int:
        return self.config.intermediate_size

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_submodule(self.layout.embeddings)(input_ids)

    def position_embeddings(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE ``(cos, sin)`` for positions ``0 .. seqlen-1`` of ``hidden_states``, on its device."""
        rotary = self.model.get_submodule(self.layout.rotary)
        positions = torch.arange(hidden_states.shape[1], device=hidden_states.device).unsqueeze(0)
        return rotary.to(hidden_states.device)(hidden_states, positions)

    def attention(self, block: nn.Module) -> nn.Module:
        return block.get_submodule(self.layout.attention)

    def input_norm(self, block: nn.Module) -> nn.Module:
        return block.get_submodule(self.layout.input_norm)

    def post_attention_norm(self, block: nn.Module) -> nn.Module:
        return block.get_submodule(self.layout.post_attention_norm)

    def linear(self, block: nn.Module, role: LinearRole) -> nn.Module:
        return block.get_submodule(self.layout.linears[role])

    def replace(self, block: nn.Module, path: str, module: nn.Module) -> None:
        """Put ``module`` at ``path`` (a layout path) inside ``block``."""
        parent, _, name = path.rpartition(".")
        setattr(block.get_submodule(parent) if parent else block, name, module)
