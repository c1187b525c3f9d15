"""Evaluation: perplexity over fixed windows, zero-shot accuracy through lm-eval-harness."""

from lqsearch.eval.perplexity import PerplexityResult, perplexity
from lqsearch.eval.zero_shot import NEXT_SENTENCE_TASK, PAPER_TASKS, write_next_sentence_task, zero_shot

__all__ = ["PerplexityResult", "perplexity", "NEXT_SENTENCE_TASK", "PAPER_TASKS", "write_next_sentence_task", "zero_shot"]
