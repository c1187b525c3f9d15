import copy

import pytest
import torch

from lqsearch.errors import ConfigError
from lqsearch.quant import QuantConfig
from lqsearch.transforms import TransformedBlock, transform_model

FULL = QuantConfig.parse("w16a16kv16")


def relative_error(output: torch.Tensor, reference: torch.Tensor) -> float:
    return ((output - reference).abs().max() / reference.abs().max()).item()


def perturb(blocks: list[TransformedBlock], scale: float = 0.2) -> None:
    """Move every transform parameter off its initialisation, as calibration would."""
    torch.manual_seed(0)
    with torch.no_grad():
        for block in blocks:
            for site in block.sites.values():
                for transform in site.transforms.values():
                    for parameter in transform.parameters():
                        parameter.add_(scale * torch.randn_like(parameter))


@pytest.mark.parametrize("kind, rotation", [("identity", "hadamard"), ("rotation", "hadamard"), ("rotation", "learned"), ("affine", "hadamard")])
def test_unfused_and_fused_reproduce_full_precision(tiny, token_batch, kind: str, rotation: str) -> None:
    reference = tiny(token_batch).logits
    blocks = transform_model(tiny, FULL, candidates=(kind,), rotation=rotation)
    perturb(blocks)
    assert relative_error(tiny(token_batch).logits, reference) <= 1e-4
    for block in blocks:
        block.fuse()
    assert relative_error(tiny(token_batch).logits, reference) <= 1e-4


def test_mixed_choices_per_unit_and_site_fuse_exactly(tiny, token_batch) -> None:
    reference = tiny(token_batch).logits
    blocks = transform_model(tiny, FULL, candidates=("affine", "rotation", "identity"), rotation="learned")
    perturb(blocks)
    blocks[0].select({"attn": "affine", "mlp": "rotation", "k": "identity"})
    blocks[1].select({"attn": "rotation", "mlp": "affine"})
    assert blocks[0].choice() == {"qkv": "affine", "ov": "affine", "k": "identity", "upgate": "rotation", "down": "rotation"}
    assert relative_error(tiny(token_batch).logits, reference) <= 1e-4
    for block in blocks:
        block.fuse()
    assert relative_error(tiny(token_batch).logits, reference) <= 1e-4


def test_fused_block_has_no_trainable_transform_or_clipping(tiny_llama) -> None:
    original = {name for name, _ in tiny_llama.model.layers[0].named_parameters()}
    blocks = transform_model(tiny_llama, QuantConfig.parse("w4a4kv4"), candidates=("affine", "rotation"), rotation="learned")
    assert len(list(blocks[0].block.parameters())) > len(original)
    blocks[0].fuse()
    remaining = {name.replace(".inner.", ".").replace(".linear.", ".") for name, _ in blocks[0].block.named_parameters()}
    assert remaining == original


def test_quantized_fused_matches_quantized_unfused(tiny, token_batch) -> None:
    reference = tiny(token_batch).logits
    blocks = transform_model(tiny, QuantConfig.parse("w4a4kv4"), candidates=("affine",))
    perturb(blocks, 0.05)
    unfused = tiny(token_batch).logits
    assert relative_error(unfused, reference) > 1e-3  # the quantizers are on
    for block in blocks:
        block.fuse()
    assert relative_error(tiny(token_batch).logits, unfused) < 2e-2


def test_full_precision_context_disables_then_restores_quantizers(tiny_llama, token_batch) -> None:
    reference = tiny_llama(token_batch).logits
    blocks = transform_model(tiny_llama, QuantConfig.parse("w3a3k2v2"), candidates=("rotation",))
    quantized = tiny_llama(token_batch).logits
    with blocks[0].full_precision(), blocks[1].full_precision():
        assert relative_error(tiny_llama(token_batch).logits, reference) <= 1e-4
    torch.testing.assert_close(tiny_llama(token_batch).logits, quantized)


def test_rotation_reduces_quantization_error_of_outlier_activations(tiny_llama, token_batch) -> None:
    # An outlier channel in the residual stream: a rotation spreads it before per-token quantization.
    with torch.no_grad():
        tiny_llama.model.embed_tokens.weight[:, 3] *= 50
    reference = tiny_llama(token_batch).logits
    errors = {}
    for kind in ("identity", "rotation"):
        model = copy.deepcopy(tiny_llama)
        transform_model(model, QuantConfig.parse("w16a4"), candidates=(kind,), learnable_clipping=False)
        errors[kind] = relative_error(model(token_batch).logits, reference)
    assert errors["rotation"] < errors["identity"]


def test_bad_choices_and_candidates(tiny_llama) -> None:
    with pytest.raises(ConfigError, match="candidates must not be empty"):
        transform_model(copy.deepcopy(tiny_llama), FULL, candidates=())
    with pytest.raises(ConfigError, match=r"unknown candidate\(s\) \['shear'\]"):
        transform_model(copy.deepcopy(tiny_llama), FULL, candidates=("affine", "shear"))
    blocks = transform_model(tiny_llama, FULL, candidates=("affine", "rotation"))
    with pytest.raises(ConfigError, match="cannot use 'identity'"):
        blocks[0].select({"attn": "identity"})
    with pytest.raises(ConfigError, match="cannot choose for 'ffn'"):
        blocks[0].select({"ffn": "affine"})


def test_smoothing_initialised_from_calibration_inputs_keeps_the_function(tiny_llama, token_batch) -> None:
    reference = tiny_llama(token_batch).logits
    blocks = transform_model(tiny_llama, FULL, candidates=("affine", "rotation"))
    hidden = tiny_llama.model.embed_tokens(token_batch)
    rope = tiny_llama.model.rotary_emb(hidden, torch.arange(token_batch.shape[1]).unsqueeze(0))
    blocks[0].init_smoothing([hidden[:1], hidden[1:]], alpha=0.3, position_embeddings=rope)
    norm_out = tiny_llama.model.layers[0].input_layernorm(hidden)
    weights = torch.cat([blocks[0].linear(r).linear.weight for r in ("q", "k", "v")])
    expected = norm_out.abs().flatten(0, 1).amax(0).pow(0.3) / weights.abs().amax(0).pow(0.7)
    torch.testing.assert_close(blocks[0].sites["qkv"].transforms["affine"].channel_scale.detach(), expected)
    assert blocks[0].sites["qkv"].transforms["rotation"].channel_scale is None
    assert relative_error(tiny_llama(token_batch).logits, reference) <= 1e-4
    blocks[0].fuse()
    assert relative_error(tiny_llama(token_batch).logits, reference) <= 1e-4
