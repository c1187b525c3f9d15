"""lqsearch: adaptive layer-wise transformation selection for low-bit PTQ of LLaMA-family models."""

__version__ = "0.1.0"
