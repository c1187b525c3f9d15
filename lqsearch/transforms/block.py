"""``TransformedBlock``: the six transform sites of one decoder block, grouped into search units.

Sites (FlatQuant's): ``qkv`` (q/k/v input, after the input norm), ``ov`` (V per head,
fused into v_proj, and o_proj input across heads), ``k`` (Q/K after RoPE: the K cache),
``upgate`` (gate/up input, after the post-attention norm), ``down`` (down_proj input).
Units: ``attn`` = qkv, ov, k; ``mlp`` = upgate, down.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Literal

import torch
from torch import nn
from transformers import PreTrainedModel

from lqsearch.errors import ConfigError
from lqsearch.models.adapters import LINEAR_ROLES, LinearRole, ModelAdapter
from lqsearch.models.quantized import HeadsSite, KVCacheSite, MixingWeights, QuantizedLinear, TransformSite, UnitWithSite, use_kv_site_attention
from lqsearch.quant.config import FULL_PRECISION_BITS, QuantConfig
from lqsearch.quant.quantizers import CLIP_LOGIT_INIT, FakeQuantizer
from lqsearch.transforms.kronecker import balanced_factor_sizes
from lqsearch.transforms.transform import TRANSFORM_KINDS, RotationMode, Transform, TransformKind, build_transform

SiteName = Literal["qkv", "ov", "k", "upgate", "down"]
QuantizerKind = Literal["all", "activations"]
SITES: tuple[SiteName, ...] = ("qkv", "ov", "k", "upgate", "down")
UNITS: dict[str, tuple[SiteName, ...]] = {"attn": ("qkv", "ov", "k"), "mlp": ("upgate", "down")}
SMOOTHED_SITES = ("qkv", "upgate", "down")  # where a per-channel scale can be folded (norms, up_proj)
WEIGHTS_OF_SITE: dict[SiteName, tuple[LinearRole, ...]] = {
    "qkv": ("q", "k", "v"),
    "ov": ("o",),
    "k": (),
    "upgate": ("gate", "up"),
    "down": ("down",),
}


def check_candidates(candidates: Sequence[str]) -> tuple[TransformKind, ...]:
    if not candidates:
        raise ConfigError(f"candidates must not be empty: choose from {list(TRANSFORM_KINDS)}")
    unknown = [c for c in candidates if c not in TRANSFORM_KINDS]
    if unknown:
        raise ConfigError(f"unknown candidate(s) {unknown}: choose from {list(TRANSFORM_KINDS)}")
    if len(set(candidates)) != len(candidates):
        raise ConfigError(f"candidates {list(candidates)} repeat a kind")
    return tuple(candidates)  # type: ignore[return-value]


class TransformedBlock:
    """Wraps one decoder block in place; selects a candidate per unit or site; fuses the choice."""

    def __init__(
        self,
        adapter: ModelAdapter,
        index: int,
        quant: QuantConfig,
        candidates: Sequence[str] = ("identity",),
        rotation: RotationMode = "hadamard",
        smoothing: bool = True,
        learnable_clipping: bool = True,
        seed: int = 0,
    ) -> None:
        self.adapter, self.index, self.quant = adapter, index, quant
        self.block = adapter.blocks[index]
        self.candidates = check_candidates(candidates)
        self._clip_init = CLIP_LOGIT_INIT if learnable_clipping else None
        self.sites: dict[SiteName, TransformSite] = {}
        geometry = {
            "qkv": balanced_factor_sizes(adapter.hidden_size),
            "upgate": balanced_factor_sizes(adapter.hidden_size),
            "down": balanced_factor_sizes(adapter.intermediate_size),
            "ov": (adapter.num_heads, adapter.head_dim),
            "k": balanced_factor_sizes(adapter.head_dim),
        }
        for name in SITES:
            generator = torch.Generator().manual_seed(seed + zlib.crc32(f"{index}.{name}".encode()))
            transforms = {
                kind: build_transform(kind, geometry[name], generator, rotation, smoothing and name in SMOOTHED_SITES)
                for kind in self.candidates
            }
            bits, symmetric = (quant.k_bits, False) if name == "k" else (quant.a_bits, quant.a_symmetric)
            site_type = HeadsSite if name == "ov" else TransformSite
            self.sites[name] = site_type(transforms, self._quantizers(bits, symmetric))
        self._wrap()

    def _quantizers(self, bits: int, symmetric: bool, rows: int | None = None) -> dict[str, FakeQuantizer]:
        shape = () if rows is None else (rows, 1)
        return {
            kind: FakeQuantizer(bits, symmetric, self.quant.symmetric_denominator, shape, self._clip_init)
            for kind in self.candidates
        }

    def _wrap(self) -> None:
        adapter, block, layout = self.adapter, self.block, self.adapter.layout
        # Keep direct references: once wrapped, the layout's attribute paths no longer reach them.
        self.input_norm = adapter.input_norm(block)
        self.post_attention_norm = adapter.post_attention_norm(block)
        self.attention = adapter.attention(block)
        self.linears: dict[LinearRole, QuantizedLinear] = {}
        for site_name, roles in WEIGHTS_OF_SITE.items():
            site = self.sites[site_name]
            owns_input = site_name in ("ov", "down")
            for role in roles:
                linear = adapter.linear(block, role)
                quantizers = self._quantizers(self.quant.w_bits, self.quant.w_symmetric, linear.out_features)
                output_site = self.sites["ov"] if role == "v" else None
                self.linears[role] = QuantizedLinear(linear, quantizers, site, site if owns_input else None, output_site)
                adapter.replace(block, layout.linears[role], self.linears[role])
        # The KV cache is asymmetric per token and head (DESIGN.md section 3); one V quantizer
        # serves every candidate since V's transform is chosen with the attention unit's ``ov``.
        v_quantizer = FakeQuantizer(self.quant.v_bits, False, self.quant.symmetric_denominator, (), self._clip_init)
        self.kv_site = KVCacheSite(self.sites["k"], v_quantizer)
        self.attention.kv_site = self.kv_site
        self.units: dict[str, UnitWithSite] = {}
        for unit, path, input_site in (("attn", layout.attention, "qkv"), ("mlp", layout.mlp, "upgate")):
            sites = [self.sites[name] for name in UNITS[unit]]
            self.units[unit] = UnitWithSite(block.get_submodule(path), self.sites[input_site], sites)
            adapter.replace(block, path, self.units[unit])

    def linear(self, role: LinearRole) -> QuantizedLinear:
        return self.linears[role]

    def mix(self, unit: str, weights: MixingWeights | None) -> None:
        """Let ``unit`` mix its candidates with ``weights()`` at every forward (``None``: the active one only)."""
        self.units[unit].mixing = weights

    def quantizers(self, kind: QuantizerKind = "all") -> Iterator[FakeQuantizer]:
        """The block's quantizers: ``all``, or only those of ``activations`` (sites and KV cache)."""
        weights = {id(q) for linear in self.linears.values() for q in linear.weight_quantizers.values()}
        return (
            module
            for module in self.block.modules()
            if isinstance(module, FakeQuantizer) and (kind == "all" or id(module) not in weights)
        )

    def _learnable(self) -> nn.ModuleDict:
        """Everything calibration learns, under stable names (transforms and clipping of every candidate)."""
        return nn.ModuleDict(
            {
                "sites": nn.ModuleDict(self.sites),
                "weights": nn.ModuleDict({role: linear.weight_quantizers for role, linear in self.linears.items()}),
                "v_cache": self.kv_site.v_quantizer,
            }
        )

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The learned state (before fusion), for checkpoints and safetensors files."""
        return {name: tensor.detach().clone() for name, tensor in self._learnable().state_dict().items()}

    def load_trainable_state(self, state: Mapping[str, torch.Tensor]) -> None:
        self._learnable().load_state_dict(state)

    def parameter_groups(self, only_active: bool) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """``(transform parameters, clipping parameters)`` of every candidate, or of the active ones."""
        def keys(site: TransformSite) -> list[str]:
            return [site.active] if only_active else site.candidates

        transforms = [p for site in self.sites.values() for k in keys(site) for p in site.transforms[k].parameters()]
        quantizers = [site.quantizers[k] for site in self.sites.values() for k in keys(site)]
        quantizers += [linear.weight_quantizers[k] for linear in self.linears.values() for k in keys(linear.weight_site)]
        quantizers.append(self.kv_site.v_quantizer)
        clipping = [q.clip_logit for q in quantizers if isinstance(q.clip_logit, nn.Parameter) and q.enabled]
        return [p for p in transforms if p.requires_grad], clipping

    def select(self, choice: Mapping[str, str]) -> None:
        """Activate a candidate per unit (``attn``, ``mlp``) and/or per site (``qkv``, ...; sites win)."""
        for key, kind in choice.items():
            if key not in UNITS and key not in SITES:
                raise ConfigError(f"cannot choose for {key!r}: keys are units {list(UNITS)} or sites {list(SITES)}")
            if kind not in self.candidates:
                raise ConfigError(f"block {self.index}: {key} cannot use {kind!r}, candidates are {list(self.candidates)}")
        for unit, sites in UNITS.items():
            for site in sites:
                self.sites[site].active = choice.get(site, choice.get(unit, self.sites[site].active))

    def choice(self) -> dict[SiteName, str]:
        return {name: site.active for name, site in self.sites.items()}

    @contextmanager
    def full_precision(self, kind: QuantizerKind = "all") -> Iterator[None]:
        """Run the block with its transforms but without its quantizers of ``kind`` (exactness checks,
        smoothing statistics, GPTQ inputs without activation quantization)."""
        saved = [(q, q.bits) for q in self.quantizers(kind)]
        for quantizer, _ in saved:
            quantizer.bits = 16
        try:
            yield
        finally:
            for quantizer, bits in saved:
                quantizer.bits = bits

    @torch.no_grad()
    def init_smoothing(
        self,
        batches: Iterable[torch.Tensor],
        alpha: float = 0.3,
        merge_max: Callable[[torch.Tensor], torch.Tensor] | None = None,
        **block_kwargs,
    ) -> None:
        """SmoothQuant-style initial channel scales of the affine candidates, from calibration inputs.

        Runs the block on each batch of hidden states (``block_kwargs``: position embeddings)
        and records per input channel the largest activation at each smoothed site;
        ``merge_max`` takes the maximum over processes that saw other batches (DDP).
        """
        activation_absmax: dict[SiteName, torch.Tensor] = {}

        def record(name: SiteName):
            def hook(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
                absmax = args[0].detach().abs().flatten(0, -2).amax(0).float()
                previous = activation_absmax.get(name)
                activation_absmax[name] = absmax if previous is None else torch.maximum(previous, absmax)

            return hook

        handles = [self.sites[name].register_forward_pre_hook(record(name)) for name in SMOOTHED_SITES]
        try:
            with self.full_precision():
                for hidden_states in batches:
                    self.block(hidden_states, **block_kwargs)
        finally:
            for handle in handles:
                handle.remove()
        for name in SMOOTHED_SITES:
            if merge_max is not None:
                activation_absmax[name] = merge_max(activation_absmax[name])
            weights = torch.cat([self.linear(role).linear.weight for role in WEIGHTS_OF_SITE[name]])
            weight_absmax = weights.detach().abs().amax(0).float()
            for transform in self.sites[name].transforms.values():
                if transform.channel_scale is not None:
                    transform.init_smoothing(activation_absmax[name], weight_absmax, alpha)

    @torch.no_grad()
    def fuse(self) -> None:
        """Fold the active transforms in float64 into weights and norms; keep the rest online.

        Afterwards the block has no trainable state: transforms are fixed matrices and
        clipping values constants; only the chosen candidate remains.
        """
        for unit in self.units:
            self.mix(unit, None)
        for name, site in self.sites.items():
            transform = site.transform
            for role in WEIGHTS_OF_SITE[name]:
                _fold_into_columns(self.linear(role).linear, transform.inverse_matrix(torch.float64))
            if transform.channel_scale is not None:
                scale = transform.channel_scale.detach().double()
                if name == "down":  # down's input is act(gate) * up: scale up's rows
                    _scale_rows(self.linear("up").linear, 1 / scale)
                else:
                    norm = self.input_norm if name == "qkv" else self.post_attention_norm
                    _scale_vector(norm.weight, 1 / scale)
        v_proj = self.linear("v").linear  # the per-head factor moves into v_proj's output rows
        weight, bias = self.sites["ov"].transform.transform_output(v_proj.weight.double(), _double(v_proj.bias))
        v_proj.weight.copy_(weight.to(v_proj.weight.dtype))
        if bias is not None:
            v_proj.bias.copy_(bias.to(v_proj.bias.dtype))
        for site in self.sites.values():
            _keep_active(site, site.transform.online_part())
        for role in LINEAR_ROLES:
            linear = self.linear(role)
            linear.weight_quantizers = nn.ModuleDict({"fused": linear.weight_quantizer})
            linear.detach_sites()
        for quantizer in self.quantizers():
            quantizer.freeze()

    def drop_weight_quantizers(self, roles: Iterable[LinearRole] = LINEAR_ROLES) -> None:
        """After GPTQ (on a fused block): the weights already lie on their grid, so nothing
        fake-quantizes them again (a second rounding would recompute the scales and move them)."""
        for linear in (self.linears[role] for role in roles):
            quantizer = linear.weight_quantizer
            linear.weight_quantizers = nn.ModuleDict({"fused": FakeQuantizer(FULL_PRECISION_BITS, quantizer.symmetric, clip_init=None)})


def _keep_active(site: TransformSite, online: Transform) -> None:
    active = site.active
    site.transforms = nn.ModuleDict({active: online})
    site.quantizers = nn.ModuleDict({active: site.quantizer})


def _fold_into_columns(linear: nn.Linear, inverse: torch.Tensor) -> None:
    """``W <- W (P^-1 diag(c))^T = (W c) P^-T``, in float64."""
    linear.weight.copy_((linear.weight.double() @ inverse.T).to(linear.weight.dtype))


def _scale_rows(linear: nn.Linear, scale: torch.Tensor) -> None:
    linear.weight.copy_((linear.weight.double() * scale[:, None]).to(linear.weight.dtype))
    if linear.bias is not None:
        _scale_vector(linear.bias, scale)


def _scale_vector(vector: torch.Tensor, scale: torch.Tensor) -> None:
    vector.copy_((vector.double() * scale).to(vector.dtype))


def _double(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else tensor.double()


def transform_model(model: PreTrainedModel, quant: QuantConfig, **block_options) -> list[TransformedBlock]:
    """Wrap every decoder block of ``model`` in place; ``block_options`` go to ``TransformedBlock``."""
    adapter = ModelAdapter(model)
    blocks = [TransformedBlock(adapter, index, quant, **block_options) for index in range(len(adapter.blocks))]
    use_kv_site_attention(model)
    return blocks


def quantize_model(model: PreTrainedModel, quant: QuantConfig) -> list[TransformedBlock]:
    """Plain round-to-nearest: identity transforms, no clipping."""
    return transform_model(model, quant, candidates=("identity",), learnable_clipping=False)
