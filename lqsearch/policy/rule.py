"""The kurtosis policy: per unit type, ``z > beta -> high`` else ``low``; fitted to a search, saved as JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from itertools import permutations
from pathlib import Path
from typing import Any

import torch

from lqsearch.errors import ConfigError
from lqsearch.policy.kurtosis import KurtosisWeights
from lqsearch.storage import write_text_atomic

SCHEMA = "lqsearch-policy/1"
DEFAULT_POLICY = Path(__file__).with_name("default_policy.json")


@dataclass(frozen=True)
class UnitRule:
    """``z > beta`` gives ``high``, the rest ``low``."""

    beta: float
    high: str
    low: str

    def choose(self, z: float) -> str:
        return self.high if z > self.beta else self.low


@dataclass(frozen=True)
class KurtosisPolicy:
    rules: dict[str, UnitRule]
    candidates: tuple[str, ...]
    weights: KurtosisWeights = "input"
    fitted_on: dict[str, Any] = field(default_factory=dict)  # model, quant, run: where the search came from
    fit: dict[str, dict[str, float]] = field(default_factory=dict)  # per unit: agreement, balanced accuracy, spearman

    def choose(self, z: dict[str, list[float]]) -> list[dict[str, str]]:
        """A choice per block and unit from the robust z-scores of each unit type."""
        blocks = len(next(iter(z.values())))
        return [{unit: rule.choose(z[unit][b]) for unit, rule in self.rules.items()} for b in range(blocks)]

    def check_candidates(self, candidates: tuple[str, ...]) -> None:
        if set(candidates) != set(self.candidates):
            raise ConfigError(f"policy was fitted over candidates {list(self.candidates)}, this run has {list(candidates)}: use the same candidates or another policy")

    def to_json(self) -> str:
        document = {"schema": SCHEMA, **asdict(self)}
        document["candidates"] = list(self.candidates)
        return json.dumps(document, indent=2) + "\n"

    def save(self, path: Path) -> None:
        write_text_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path | None = None) -> KurtosisPolicy:
        """Read a policy file (``None``: the shipped default)."""
        path = Path(path) if path is not None else DEFAULT_POLICY
        if not path.is_file():
            raise ConfigError(f"policy file {str(path)!r} does not exist")
        try:
            document = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ConfigError(f"policy file {str(path)!r} is not JSON ({err})") from err
        if document.get("schema") != SCHEMA:
            raise ConfigError(f"policy file {str(path)!r} has schema {document.get('schema')!r}; this lqsearch reads {SCHEMA!r}")
        return cls(
            rules={unit: UnitRule(**rule) for unit, rule in document["rules"].items()},
            candidates=tuple(document["candidates"]),
            weights=document["weights"],
            fitted_on=document.get("fitted_on", {}),
            fit=document.get("fit", {}),
        )


def balanced_accuracy(predicted: list[str], target: list[str]) -> float:
    """Mean over the classes present in ``target`` of the fraction of them predicted right."""
    recalls = []
    for label in sorted(set(target)):
        members = [p for p, t in zip(predicted, target) if t == label]
        recalls.append(sum(p == label for p in members) / len(members))
    return sum(recalls) / len(recalls)


def _ranks(values: list[float]) -> torch.Tensor:
    data = torch.tensor(values, dtype=torch.float64)
    order = data.argsort()
    ranks = torch.empty_like(data)
    ranks[order] = torch.arange(len(values), dtype=torch.float64)
    for value in data.unique():  # ties share their mean rank
        tied = data == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman rank correlation (NaN when either side is constant)."""
    rx, ry = _ranks(x), _ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = (rx.pow(2).sum() * ry.pow(2).sum()).sqrt()
    return float("nan") if denominator == 0 else (rx @ ry / denominator).item()


def fit_unit_rule(z: list[float], choices: list[str], candidates: tuple[str, ...]) -> tuple[UnitRule, float, float]:
    """The threshold and direction that best reproduce ``choices``: ``(rule, balanced accuracy, agreement)``.

    Thresholds are midpoints between consecutive distinct z (and one below all); ties in
    agreement go to higher balanced accuracy, then to the threshold nearest 0. Agreement comes
    first: when one type wins nearly every unit, the rule should give it to every unit rather
    than chase the few exceptions at the cost of many right choices.
    """
    levels = sorted(set(z))
    thresholds = [levels[0] - 1.0] + [(a + b) / 2 for a, b in zip(levels, levels[1:])]
    best: tuple[tuple[float, float, float], UnitRule] | None = None
    for high, low in permutations(candidates, 2):
        for beta in thresholds:
            rule = UnitRule(beta, high, low)
            predicted = [rule.choose(v) for v in z]
            agreement = sum(p == c for p, c in zip(predicted, choices)) / len(choices)
            key = (agreement, balanced_accuracy(predicted, choices), -abs(beta))
            if best is None or key > best[0]:
                best = (key, rule)
    (agreement, balanced, _), rule = best
    return rule, balanced, agreement


def fit_policy(
    z: dict[str, list[float]],
    choices: list[dict[str, str]],
    pi_first: dict[str, list[float]],
    candidates: tuple[str, ...],
    weights: KurtosisWeights,
    fitted_on: dict[str, Any],
) -> KurtosisPolicy:
    """Distil a search: per unit type, the rule that best agrees with the searched argmax.

    ``pi_first[unit]`` is the final probability of ``candidates[0]`` per block; its Spearman
    correlation with z is reported beside the agreement.
    """
    rules, report = {}, {}
    for unit, scores in z.items():
        searched = [choice[unit] for choice in choices]
        rule, balanced, agreement = fit_unit_rule(scores[: len(searched)], searched, candidates)
        rules[unit] = rule
        report[unit] = {"agreement": agreement, "balanced_accuracy": balanced, "spearman_pi_z": spearman(pi_first[unit], scores[: len(searched)])}
    return KurtosisPolicy(rules, tuple(candidates), weights, fitted_on, report)
