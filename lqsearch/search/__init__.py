"""The search: a LightningModule choosing and calibrating transforms block by block."""

from lqsearch.search.gates import ArchitectureGates, temperature
from lqsearch.search.module import TransformSearch, finished_choices
from lqsearch.search.schedule import BlockSchedule

__all__ = ["ArchitectureGates", "temperature", "TransformSearch", "finished_choices", "BlockSchedule"]
