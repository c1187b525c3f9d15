"""Fake-quantized decoder blocks built by wrapping Hugging Face modules, not copying their forward.

Each block gets:
- ``NormWithSite`` around both norms: the norm output is the one activation that
  q/k/v (and gate/up) read, so it is quantized once there, per token;
- ``QuantizedLinear`` in place of every linear: its weight is quantized per output
  channel; o_proj and down_proj also quantize their own input (an ``ActivationSite``);
- ``KVCacheSite`` on the attention module: K (after RoPE) and V are quantized per
  token and head. It runs inside a registered attention function, the hook
  transformers offers between RoPE and the attention kernel.
Norms, RoPE, softmax, embeddings and lm_head stay in full precision.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from lqsearch.models.adapters import ModelAdapter
from lqsearch.quant.config import QuantConfig
from lqsearch.quant.quantizers import CLIP_LOGIT_INIT, FakeQuantizer

ATTENTION_IMPLEMENTATION = "lqsearch_kv"


class ActivationSite(nn.Module):
    """An activation on its way into quantized linears: quantized per token."""

    def __init__(self, quantizer: FakeQuantizer) -> None:
        super().__init__()
        self.quantizer = quantizer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantizer(x)


class NormWithSite(nn.Module):
    """A norm followed by the activation site of the linears that read its output."""

    def __init__(self, norm: nn.Module, site: ActivationSite) -> None:
        super().__init__()
        self.norm, self.site = norm, site

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.site(self.norm(x))


class QuantizedLinear(nn.Module):
    """A linear whose weight is fake-quantized; optionally its input too."""

    def __init__(self, linear: nn.Linear, weight_quantizer: FakeQuantizer, input_site: ActivationSite | None = None) -> None:
        super().__init__()
        self.linear, self.weight_quantizer, self.input_site = linear, weight_quantizer, input_site

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_site is not None:
            x = self.input_site(x)
        return F.linear(x, self.weight_quantizer(self.linear.weight), self.linear.bias)


class KVCacheSite(nn.Module):
    """Quantizes K (after RoPE) and V per token and head; queries stay in full precision."""

    def __init__(self, k_quantizer: FakeQuantizer, v_quantizer: FakeQuantizer) -> None:
        super().__init__()
        self.k_quantizer, self.v_quantizer = k_quantizer, v_quantizer

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return query, self.k_quantizer(key), self.v_quantizer(value)


def _kv_site_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: torch.Tensor | None, **kwargs):
    """Attention function registered with transformers: the KV site, then SDPA."""
    kv_site = getattr(module, "kv_site", None)
    if kv_site is not None:
        query, key, value = kv_site(query, key, value)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def use_kv_site_attention(model: PreTrainedModel) -> None:
    """Route ``model``'s attention through ``_kv_site_attention`` (SDPA masks and kernel)."""
    AttentionInterface.register(ATTENTION_IMPLEMENTATION, _kv_site_attention)
    AttentionMaskInterface.register(ATTENTION_IMPLEMENTATION, sdpa_mask)
    model.config._attn_implementation = ATTENTION_IMPLEMENTATION


def quantize_model(model: PreTrainedModel, quant: QuantConfig, learnable_clipping: bool = False) -> ModelAdapter:
    """Wrap every decoder block of ``model`` in place with fake quantizers (RTN when not calibrated).

    ``learnable_clipping`` adds clipping logits initialised to 4.0 (sigmoid ~ 0.98);
    without it the quantizers use the full range, which is plain RTN.
    """
    adapter = ModelAdapter(model)
    clip_init = CLIP_LOGIT_INIT if learnable_clipping else None
    denominator = quant.symmetric_denominator

    def activation_site() -> ActivationSite:
        return ActivationSite(FakeQuantizer(quant.a_bits, quant.a_symmetric, denominator, clip_init=clip_init))

    for block in adapter.blocks:
        layout = adapter.layout
        adapter.replace(block, layout.input_norm, NormWithSite(adapter.input_norm(block), activation_site()))
        adapter.replace(block, layout.post_attention_norm, NormWithSite(adapter.post_attention_norm(block), activation_site()))
        for role, path in layout.linears.items():
            linear = adapter.linear(block, role)
            weight_quantizer = FakeQuantizer(quant.w_bits, quant.w_symmetric, denominator, (linear.out_features, 1), clip_init)
            input_site = activation_site() if role in ("o", "down") else None
            adapter.replace(block, path, QuantizedLinear(linear, weight_quantizer, input_site))
        # The KV cache is asymmetric (DESIGN.md section 3): K and V rows are rarely centred on 0.
        adapter.attention(block).kv_site = KVCacheSite(
            FakeQuantizer(quant.k_bits, False, denominator, clip_init=clip_init),
            FakeQuantizer(quant.v_bits, False, denominator, clip_init=clip_init),
        )
    use_kv_site_attention(model)
    return adapter
