"""Quantizers and their configuration."""

from lqsearch.quant.config import QuantConfig
from lqsearch.quant.quantizers import FakeQuantizer, fake_quantize, round_ste

__all__ = ["QuantConfig", "FakeQuantizer", "fake_quantize", "round_ste"]
