"""Transformed, fake-quantized decoder blocks, built by wrapping Hugging Face modules in place.

Wrappers, per decoder block:
- ``UnitWithSite`` around the attention and the MLP: their input (the norm output) is the
  activation that q/k/v (gate/up) read, so it is transformed and quantized once there
  (sites ``qkv`` and ``upgate``). During a search it also mixes the unit's candidates;
- ``QuantizedLinear`` in place of every linear: its weight gets the inverse-transpose of
  the transform that feeds it, then per-channel quantization; o_proj and down_proj also
  own the site of their input (``ov``: across heads; ``down``);
- v_proj's weight also gets the per-head factor of the ``ov`` transform on its output rows,
  before quantization, exactly as it will be fused;
- ``KVCacheSite`` on the attention module, run by a registered attention function, the
  hook transformers offers between RoPE and the kernel: Q/K get the ``k`` transform
  (inverse on Q, which stays in full precision), K is quantized after it, V is quantized.
Every site holds one transform and quantizer per candidate kind; one candidate is active.
Norms, RoPE, softmax, embeddings and lm_head stay in full precision.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from lqsearch.quant.quantizers import FakeQuantizer

if TYPE_CHECKING:  # transforms/ builds on these wrappers; only the type is needed here
    from lqsearch.transforms.transform import Transform

ATTENTION_IMPLEMENTATION = "lqsearch_kv"


class TransformSite(nn.Module):
    """One site: per candidate a transform and the quantizer of the transformed activation."""

    def __init__(self, transforms: dict[str, Transform], quantizers: dict[str, FakeQuantizer]) -> None:
        super().__init__()
        if transforms.keys() != quantizers.keys() or not transforms:
            raise ValueError("a site needs one transform and one quantizer per candidate")
        self.transforms = nn.ModuleDict(transforms)
        self.quantizers = nn.ModuleDict(quantizers)
        self.active = next(iter(transforms))

    @property
    def candidates(self) -> list[str]:
        return list(self.transforms.keys())

    @property
    def transform(self) -> Transform:
        return self.transforms[self.active]

    @property
    def quantizer(self) -> FakeQuantizer:
        return self.quantizers[self.active]

    def transform_activation(self, x: torch.Tensor) -> torch.Tensor:
        return self.transform(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.quantizer(self.transform_activation(x))

    def extra_repr(self) -> str:
        return f"active={self.active!r}"


class HeadsSite(TransformSite):
    """The o_proj input: online only the across-heads factor; the per-head factor was applied to V."""

    def transform_activation(self, x: torch.Tensor) -> torch.Tensor:
        return self.transform.apply_outer(x)


MixingWeights = Callable[[], torch.Tensor]  # one weight per candidate, in the sites' candidate order


class UnitWithSite(nn.Module):
    """A sub-block (attention or MLP) whose input first goes through its site.

    With ``mixing`` set, the output is ``sum_c w_c * unit_c(x)`` over the candidates with a
    non-zero weight, ``unit_c`` running every site of the unit (``unit_sites``, referenced,
    not owned) with candidate c: the Gumbel-softmax mixture of the search. One-hot weights
    with a straight-through gradient run a single candidate (hard search).
    """

    def __init__(self, inner: nn.Module, input_site: TransformSite, unit_sites: Sequence[TransformSite]) -> None:
        super().__init__()
        self.inner, self.input_site = inner, input_site
        object.__setattr__(self, "unit_sites", tuple(unit_sites))
        self.mixing: MixingWeights | None = None

    def _run(self, hidden_states: torch.Tensor, *args, **kwargs):
        return self.inner(self.input_site(hidden_states), *args, **kwargs)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        if self.mixing is None:
            return self._run(hidden_states, *args, **kwargs)
        weights = self.mixing()
        mixed, rest = None, ()
        for candidate, weight, used in zip(self.input_site.candidates, weights, (weights != 0).tolist()):
            if not used:  # hard search: only the sampled candidate runs
                continue
            for site in self.unit_sites:
                site.active = candidate
            output = self._run(hidden_states, *args, **kwargs)
            output, rest = (output[0], output[1:]) if isinstance(output, tuple) else (output, ())
            mixed = weight * output if mixed is None else mixed + weight * output
        return (mixed, *rest) if rest else mixed


class QuantizedLinear(nn.Module):
    """A linear whose weight is transformed by the site feeding it, then fake-quantized.

    ``weight_site`` (input side) and ``output_site`` (per-head output rows, v_proj only)
    are referenced, not owned: each site is registered where its activation flows, so
    parameters and state-dict keys appear once. Both are ``None`` once transforms are fused.
    """

    def __init__(
        self,
        linear: nn.Linear,
        weight_quantizers: dict[str, FakeQuantizer],
        weight_site: TransformSite | None,
        input_site: TransformSite | None = None,
        output_site: TransformSite | None = None,
    ) -> None:
        super().__init__()
        self.linear = linear
        self.weight_quantizers = nn.ModuleDict(weight_quantizers)
        self.input_site = input_site
        self.detach_sites(weight_site, output_site)

    def detach_sites(self, weight_site: TransformSite | None = None, output_site: TransformSite | None = None) -> None:
        object.__setattr__(self, "weight_site", weight_site)
        object.__setattr__(self, "output_site", output_site)

    @property
    def weight_quantizer(self) -> FakeQuantizer:
        key = self.weight_site.active if self.weight_site is not None else next(iter(self.weight_quantizers))
        return self.weight_quantizers[key]

    def linear_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the matrix product reads: ``x`` through this linear's own input site, if it has one."""
        return self.input_site(x) if self.input_site is not None else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear_input(x)
        weight, bias = self.linear.weight, self.linear.bias
        if self.weight_site is not None:
            weight = self.weight_site.transform.transform_weight(weight)
        if self.output_site is not None:
            weight, bias = self.output_site.transform.transform_output(weight, bias)
        return F.linear(x, self.weight_quantizer(weight), bias)


class KVCacheSite(nn.Module):
    """Q/K after RoPE through the ``k`` site (inverse on Q, kept in full precision); V quantized."""

    def __init__(self, k_site: TransformSite, v_quantizer: FakeQuantizer) -> None:
        super().__init__()
        self.k_site, self.v_quantizer = k_site, v_quantizer

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        query = self.k_site.transform.transform_weight(query)  # q P^-T, so that (q P^-T)(k P)^T = q k^T
        return query, self.k_site(key), self.v_quantizer(value)


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
