"""A quantized model on disk: fused weights, online transforms and clipping, a manifest, the tokenizer.

Layout of an export folder:
- ``model.safetensors``: the state of the fused, wrapped model (full-precision fused weights,
  the online Kronecker factors with their exact inverses, the learned clipping constants);
- ``config.json``: the source model's Hugging Face config; tokenizer files;
- ``lqsearch.json``: the manifest (format, lqsearch version, source model, quantizer settings,
  the transform chosen per block and unit, the policy if one chose them, the weight rounding
  (``rtn``: weights rounded at inference; ``gptq``: saved on their grid), calibration data and seed).
Weights stay fake-quantized floats: nothing is packed to low-bit integers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_model as load_safetensors_into, save_model
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from lqsearch import __version__
from lqsearch.errors import ConfigError
from lqsearch.models.adapters import ModelAdapter, check_supported
from lqsearch.models.quantized import use_kv_site_attention
from lqsearch.quant.config import QuantConfig
from lqsearch.storage import write_dir_atomic

FORMAT = "lqsearch-quantized/1"
MANIFEST = "lqsearch.json"
WEIGHTS = "model.safetensors"


def export_quantized(path: Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, manifest: dict[str, Any]) -> None:
    """Write ``model`` (every block fused) to ``path`` atomically, with ``manifest`` completed."""
    document = {"format": FORMAT, "lqsearch_version": __version__, **manifest}

    def fill(folder: Path) -> None:
        save_model(model, str(folder / WEIGHTS))  # de-duplicates tied embeddings
        model.config.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        (folder / MANIFEST).write_text(json.dumps(document, indent=2) + "\n")

    write_dir_atomic(path, fill)


def load_quantized(path: str | Path) -> PreTrainedModel:
    """A Hugging Face model that fake-quantizes as exported (``AutoTokenizer`` loads the tokenizer)."""
    from lqsearch.transforms.block import TransformedBlock  # transforms build on the model wrappers

    folder = Path(path)
    if not (folder / MANIFEST).is_file():
        raise ConfigError(f"{str(folder)!r} is not an lqsearch export: no {MANIFEST} in it")
    manifest = json.loads((folder / MANIFEST).read_text())
    if manifest.get("format") != FORMAT:
        raise ConfigError(f"{folder / MANIFEST} has format {manifest.get('format')!r}; this lqsearch reads {FORMAT!r}")
    config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    check_supported(config)
    quant = QuantConfig.parse(manifest["quant"], symmetric_denominator=manifest["symmetric_denominator"])
    # Built on the CPU, not on the meta device: non-persistent buffers (RoPE frequencies) are
    # not in the saved state and must be initialised by the model itself.
    model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    adapter = ModelAdapter(model)
    if len(manifest["choices"]) != len(adapter.blocks):
        raise ConfigError(f"{folder / MANIFEST} lists {len(manifest['choices'])} blocks, the config has {len(adapter.blocks)}")
    for index, choice in enumerate(manifest["choices"]):
        # Rebuild each block's fused structure; the saved tensors then overwrite every value.
        block = TransformedBlock(adapter, index, quant, sorted(set(choice.values())), learnable_clipping=manifest["learnable_clipping"])
        block.select(choice)
        block.fuse()
        if manifest.get("weight_rounding", {}).get("method") == "gptq":
            block.drop_weight_quantizers()  # the saved weights are already on their grid
    use_kv_site_attention(model)
    load_safetensors_into(model, str(folder / WEIGHTS), strict=True)
    return model.eval()
