"""lqsearch: adaptive layer-wise transformation selection for low-bit PTQ of LLaMA-family models."""

__version__ = "0.1.0"

from lqsearch.models.export import load_quantized  # noqa: E402  (needs __version__)

__all__ = ["__version__", "load_quantized"]
