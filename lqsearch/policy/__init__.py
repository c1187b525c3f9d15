"""The kurtosis rule distilled from a search."""

from lqsearch.policy.kurtosis import pearson_kurtosis

__all__ = ["pearson_kurtosis"]
