"""The kurtosis rule distilled from a search: kurtosis, robust z, fit and apply."""

from lqsearch.policy.kurtosis import pearson_kurtosis, robust_z, unit_kurtosis
from lqsearch.policy.rule import KurtosisPolicy, UnitRule, balanced_accuracy, fit_policy, fit_unit_rule, spearman

__all__ = [
    "pearson_kurtosis",
    "robust_z",
    "unit_kurtosis",
    "KurtosisPolicy",
    "UnitRule",
    "balanced_accuracy",
    "fit_policy",
    "fit_unit_rule",
    "spearman",
]
