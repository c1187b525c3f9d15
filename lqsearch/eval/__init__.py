"""Evaluation: perplexity (lm-eval-harness comes with the export issue)."""

from lqsearch.eval.perplexity import PerplexityResult, perplexity

__all__ = ["PerplexityResult", "perplexity"]
