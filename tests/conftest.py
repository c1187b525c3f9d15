"""Shared fixtures: tiny random LLaMA (GQA) and Qwen2 (q/k/v bias) models, and the embedded SmolLM2."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

TINY = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,  # GQA: 2 query heads per KV head
    max_position_embeddings=256,
)


def tiny_model(family: str, seed: int = 0) -> PreTrainedModel:
    torch.manual_seed(seed)
    if family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**TINY))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**TINY))
        for block in model.model.layers:  # random init leaves biases at 0; make them matter
            for proj in (block.self_attn.q_proj, block.self_attn.k_proj, block.self_attn.v_proj):
                torch.nn.init.normal_(proj.bias, std=0.5)
    return model.eval()


@pytest.fixture(params=["llama", "qwen2"])
def tiny(request: pytest.FixtureRequest) -> PreTrainedModel:
    return tiny_model(request.param)


@pytest.fixture
def tiny_llama() -> PreTrainedModel:
    return tiny_model("llama")


@pytest.fixture
def token_batch() -> torch.Tensor:
    return torch.randint(0, TINY["vocab_size"], (2, 24), generator=torch.Generator().manual_seed(1))


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """Unit tests get an empty cache; integration tests share the real one (the prepared model is costly)."""
    if request.node.get_closest_marker("integration") is None:
        monkeypatch.setenv("LQSEARCH_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="session")
def smollm2():
    """The embedded SmolLM2-135M (float32) and its tokenizer, loaded once per session."""
    from lqsearch.models import load_model

    return load_model("smollm2-135m")


@pytest.fixture
def tiny_model_dir(tmp_path: Path) -> Path:
    """A tiny LLaMA saved as a local Hugging Face folder, with a word-level tokenizer of words w1..w127."""
    folder = tmp_path / "tiny"
    tiny_model("llama").save_pretrained(folder)
    vocab = {"[UNK]": 0, **{f"w{i}": i for i in range(1, 128)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend).save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_corpus(tmp_path: Path) -> Path:
    """A text of 3000 words from the tiny tokenizer's vocabulary."""
    generator = torch.Generator().manual_seed(5)
    words = torch.randint(1, 128, (3000,), generator=generator).tolist()
    path = tmp_path / "corpus.txt"
    path.write_text(" ".join(f"w{w}" for w in words))
    return path
