"""Corpora, tokenisation and token windows."""

from lqsearch.data.corpora import NAMED_CORPORA, SPLITS, load_text
from lqsearch.data.windows import evaluation_windows, tokenize

__all__ = ["NAMED_CORPORA", "SPLITS", "load_text", "evaluation_windows", "tokenize"]
