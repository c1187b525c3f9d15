"""GPTQ weight rounding of a fused block (``weight_rounding: gptq``), layer group by layer group.

Groups, in order: q/k/v, o, gate/up, down. The layers of a group read the same activation,
so one Hessian serves the group. Each group's inputs are collected by running the block on
its calibration inputs after the earlier groups were rounded, so every layer sees the
already-quantized layers before it. ``activations: fp`` (default) collects the inputs with the
activation and KV quantizers off, ``quantized`` with them on (what the layer reads at inference).
Rounded weights lie on their grid; their fake quantizers are then dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from lqsearch.errors import ConfigError
from lqsearch.models.adapters import LinearRole
from lqsearch.quant.gptq import HessianAccumulator, check_gptq_settings, gptq_quantize
from lqsearch.transforms.block import TransformedBlock

GPTQ_GROUPS: tuple[tuple[LinearRole, ...], ...] = (("q", "k", "v"), ("o",), ("gate", "up"), ("down",))
GPTQActivations = Literal["quantized", "fp"]


@dataclass(frozen=True)
class GPTQOptions:
    """GPTQ settings: dampening (fraction of the mean Hessian diagonal), lazy-batch width in
    columns, act-order, and whether inputs are collected activation-quantized."""

    damp: float = 0.01
    block_size: int = 128
    act_order: bool = False
    activations: GPTQActivations = "fp"

    def __post_init__(self) -> None:
        check_gptq_settings(self.block_size, self.damp)
        if self.activations not in ("quantized", "fp"):
            raise ConfigError(f"gptq_activations={self.activations!r}: use 'quantized' or 'fp'")


@torch.no_grad()
def gptq_round_block(
    block: TransformedBlock,
    run_calibration: Callable[[], None],
    options: GPTQOptions,
    merge_sum: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> None:
    """Round the weights of fused ``block`` with GPTQ.

    ``run_calibration`` runs the block once over its calibration inputs; ``merge_sum`` sums a
    tensor over the processes that hold other samples (DDP), so every rank solves the same H.
    """
    for roles in GPTQ_GROUPS:
        first = block.linear(roles[0])
        hessian = HessianAccumulator(first.linear.in_features, first.linear.weight.device)

        def record(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            hessian.add(module.linear_input(args[0]))

        handle = first.register_forward_pre_hook(record)
        try:
            with block.full_precision("activations") if options.activations == "fp" else nullcontext():
                run_calibration()
        finally:
            handle.remove()
        if merge_sum is not None:
            hessian.merge(merge_sum)
        h = hessian.hessian()
        for role in roles:
            linear = block.linear(role)
            quantizer = linear.weight_quantizer
            clip = 1.0 if quantizer.clip_logit is None else torch.sigmoid(quantizer.clip_logit)
            weight = linear.linear.weight
            rounded = gptq_quantize(
                weight, h, quantizer.bits, quantizer.symmetric, clip, quantizer.denominator, options.block_size, options.damp, options.act_order
            )
            weight.copy_(rounded)
        block.drop_weight_quantizers(roles)
