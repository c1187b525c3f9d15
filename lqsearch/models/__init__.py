"""Model loading, family adapters and the quantized wrappers of Hugging Face modules."""

from lqsearch.models.adapters import LINEAR_ROLES, ModelAdapter, check_supported
from lqsearch.models.loading import EMBEDDED_MODELS, load_model

__all__ = ["LINEAR_ROLES", "ModelAdapter", "check_supported", "EMBEDDED_MODELS", "load_model"]
