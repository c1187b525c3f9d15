import json
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from lqsearch.errors import ConfigError
from lqsearch.models import LINEAR_ROLES, ModelAdapter, load_model
from lqsearch.models.quantized import QuantizedLinear
from lqsearch.transforms import quantize_model
from lqsearch.quant import QuantConfig


def test_adapter_names_parts_and_geometry(tiny) -> None:
    adapter = ModelAdapter(tiny)
    assert len(adapter.blocks) == 2
    assert (adapter.num_heads, adapter.num_kv_heads, adapter.head_dim) == (4, 2, 16)
    block = adapter.blocks[0]
    for role in LINEAR_ROLES:
        assert isinstance(adapter.linear(block, role), torch.nn.Linear)
    assert adapter.linear(block, "k").out_features == adapter.num_kv_heads * adapter.head_dim


def test_unsupported_model_type_is_one_line() -> None:
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(ConfigError) as info:
        ModelAdapter(model)
    assert str(info.value) == "model type 'gpt2' is not supported: lqsearch supports llama, mistral, qwen2"


def test_full_precision_wrapping_is_exact(tiny, token_batch) -> None:
    reference = tiny(token_batch).logits
    blocks = quantize_model(tiny, QuantConfig.parse("w16a16kv16"))
    assert all(isinstance(b.linear(r), QuantizedLinear) for b in blocks for r in LINEAR_ROLES)
    assert torch.equal(tiny(token_batch).logits, reference)


@pytest.mark.parametrize("spec", ["w4a16", "w16a4", "w16a16k4v16", "w16a16k16v4"])
def test_each_quantizer_is_wired_in(tiny, token_batch, spec) -> None:
    reference = tiny(token_batch).logits
    quantize_model(tiny, QuantConfig.parse(spec))
    assert not torch.allclose(tiny(token_batch).logits, reference, atol=1e-4)


def test_key_is_quantized_after_rope(tiny_llama, token_batch) -> None:
    # Capture what reaches the K quantizer: it must equal RoPE(k_proj(norm(x))), the post-RoPE key.
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    block = quantize_model(tiny_llama, QuantConfig.parse("w16a16k4v16"))[0]
    adapter, attention = block.adapter, block.attention
    seen, captured = {}, {}
    attention.kv_site.k_site.quantizer.register_forward_hook(lambda m, args, out: seen.setdefault("key", args[0]))
    attention.register_forward_hook(lambda m, args, kwargs, out: captured.update(kwargs), with_kwargs=True)
    attention.k_proj.register_forward_hook(lambda m, args, out: captured.setdefault("k", out))
    tiny_llama(token_batch)
    cos, sin = captured["position_embeddings"]
    k = captured["k"].view(2, 24, adapter.num_kv_heads, adapter.head_dim).transpose(1, 2)
    _, expected = apply_rotary_pos_emb(k, k, cos, sin)
    torch.testing.assert_close(seen["key"], expected)


def test_quantized_model_generates(tiny_llama) -> None:
    quantize_model(tiny_llama, QuantConfig.parse("w4a4kv4"))
    prompt = torch.tensor([[1, 5, 7, 9]])
    out = tiny_llama.generate(prompt, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 8)


def test_load_local_folder_and_missing_path(tiny, tmp_path: Path) -> None:
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models

    tiny.save_pretrained(tmp_path / "m")
    PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))).save_pretrained(tmp_path / "m")
    model, _ = load_model(str(tmp_path / "m"))
    assert model.config.model_type == tiny.config.model_type
    with pytest.raises(ConfigError, match="does not exist"):
        load_model(str(tmp_path / "absent"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_model("./nowhere/model.gguf")


def test_unsupported_local_model_fails_before_loading_weights(tmp_path: Path) -> None:
    folder = tmp_path / "gpt2"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ConfigError, match="not supported"):
        load_model(str(folder))
