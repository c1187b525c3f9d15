"""Corpora, tokenisation, token windows and the calibration data module."""

from lqsearch.data.calibration import CalibrationDataModule
from lqsearch.data.corpora import NAMED_CORPORA, SPLITS, load_text
from lqsearch.data.windows import evaluation_windows, tokenize

__all__ = ["CalibrationDataModule", "NAMED_CORPORA", "SPLITS", "load_text", "evaluation_windows", "tokenize"]
