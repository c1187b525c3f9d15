"""Callbacks of a search run, one concern each."""

from lqsearch.callbacks.artifacts import SearchArtifacts
from lqsearch.callbacks.distillation import PolicyDistillation
from lqsearch.callbacks.export import QuantizedExport
from lqsearch.callbacks.memory import MemoryReport
from lqsearch.callbacks.report import SearchReport
from lqsearch.callbacks.tensorboard import PiHeatmap

__all__ = ["SearchArtifacts", "PolicyDistillation", "QuantizedExport", "MemoryReport", "SearchReport", "PiHeatmap"]
