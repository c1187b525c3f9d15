"""Transforms (identity, rotation, affine) on one Kronecker core, their sites in a block, and fusion."""

from lqsearch.transforms.block import SITES, UNITS, TransformedBlock, quantize_model, transform_model
from lqsearch.transforms.transform import TRANSFORM_KINDS, Transform, build_transform

__all__ = ["SITES", "UNITS", "TransformedBlock", "quantize_model", "transform_model", "TRANSFORM_KINDS", "Transform", "build_transform"]
