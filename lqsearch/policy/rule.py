"""The kurtosis policy: per unit type, ``z > beta -> high`` else ``low``; fitted to a search, saved as JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from itertools import permutations, product
from pathlib import Path
from typing import Any

import torch

from lqsearch.errors import ConfigError
from lqsearch.policy.kurtosis import KurtosisWeights
from lqsearch.storage import write_text_atomic

SCHEMA = "lqsearch-policy/1"
DEFAULT_POLICY = Path(__file__).with_name("default_policy.json")
BlockLosses = dict[str, float]  # one block: combination_key(choice) -> block loss after the search


def combination_key(choice: dict[str, str]) -> str:
    """``attn=affine,mlp=rotation``: how ``choices.json`` names one combination of unit candidates."""
    return ",".join(f"{unit}={kind}" for unit, kind in choice.items())


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
    # mean over the search's blocks of (block loss of the policy's choice / the lowest block loss); None: losses unknown
    block_loss_ratio: float | None = None

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
            block_loss_ratio=document.get("block_loss_ratio"),
        )


def agreement(predicted: list[str], target: list[str]) -> float:
    """Fraction of ``target`` predicted right."""
    return sum(p == t for p, t in zip(predicted, target)) / len(target)


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


RuleScore = tuple[float, float, float]  # agreement, balanced accuracy, -|beta|: higher is better


def scored_unit_rules(z: list[float], choices: list[str], candidates: tuple[str, ...]) -> list[tuple[RuleScore, UnitRule]]:
    """Every distinct rule over ``z`` (thresholds at midpoints between consecutive distinct z,
    and one below all, in both directions) with how well it reproduces ``choices``."""
    levels = sorted(set(z))
    thresholds = [levels[0] - 1.0] + [(a + b) / 2 for a, b in zip(levels, levels[1:])]
    scored = []
    for high, low in permutations(candidates, 2):
        for beta in thresholds:
            rule = UnitRule(beta, high, low)
            predicted = [rule.choose(v) for v in z]
            scored.append(((agreement(predicted, choices), balanced_accuracy(predicted, choices), -abs(beta)), rule))
    return scored


def fit_unit_rule(z: list[float], choices: list[str], candidates: tuple[str, ...]) -> tuple[UnitRule, float, float]:
    """The rule that best reproduces ``choices``: ``(rule, balanced accuracy, agreement)``.

    Highest agreement, ties to balanced accuracy, then to the threshold nearest 0. Agreement
    comes first: when one type wins nearly every unit, the rule should give it to every unit
    rather than chase the few exceptions at the cost of many right choices.
    """
    (agreed, balanced, _), rule = max(scored_unit_rules(z, choices, candidates), key=lambda item: item[0])
    return rule, balanced, agreed


def block_loss_ratio(rules: dict[str, UnitRule], z: dict[str, list[float]], block_losses: list[BlockLosses]) -> float:
    """Mean over blocks of the block loss of the rules' choice relative to the block's lowest."""
    ratios = []
    for block, losses in enumerate(block_losses):
        chosen = losses[combination_key({unit: rule.choose(z[unit][block]) for unit, rule in rules.items()})]
        ratios.append(chosen / max(min(losses.values()), torch.finfo(torch.float64).tiny))
    return sum(ratios) / len(ratios)


def fit_rules_to_losses(
    z: dict[str, list[float]], choices: list[dict[str, str]], candidates: tuple[str, ...], block_losses: list[BlockLosses]
) -> dict[str, UnitRule]:
    """Rules for all unit types at once with the lowest mean relative block loss over the search's
    blocks (each block counts alike, whatever its loss scale), ties to agreement with ``choices``.

    Agreement alone treats every unit as equally costly; here a unit whose candidates differ by
    a factor of two in block loss weighs more than one where they differ by 1%.
    """
    scored = {unit: scored_unit_rules(z[unit], [c[unit] for c in choices], candidates) for unit in z}
    best: tuple[tuple[float, tuple[RuleScore, ...]], dict[str, UnitRule]] | None = None
    for combination in product(*scored.values()):
        rules = dict(zip(scored, (rule for _, rule in combination)))
        key = (-block_loss_ratio(rules, z, block_losses), tuple(score for score, _ in combination))
        if best is None or key > best[0]:
            best = (key, rules)
    return best[1]


def fit_policy(
    z: dict[str, list[float]],
    choices: list[dict[str, str]],
    pi_first: dict[str, list[float]],
    candidates: tuple[str, ...],
    weights: KurtosisWeights,
    fitted_on: dict[str, Any],
    block_losses: list[BlockLosses] | None = None,
) -> KurtosisPolicy:
    """Distil a search into a rule per unit type.

    With ``block_losses`` (every combination's block loss, as ``decide: loss`` records them)
    the rules minimise the mean relative block loss (``fit_rules_to_losses``); without, each
    unit type's rule best agrees with the searched choices (``fit_unit_rule``).
    ``pi_first[unit]`` is the final probability of ``candidates[0]`` per block; its Spearman
    correlation with z is reported beside the agreement.
    """
    z = {unit: scores[: len(choices)] for unit, scores in z.items()}
    if block_losses is not None:
        rules = fit_rules_to_losses(z, choices, candidates, block_losses)
    else:
        rules = {unit: fit_unit_rule(scores, [c[unit] for c in choices], candidates)[0] for unit, scores in z.items()}
    report = {}
    for unit, rule in rules.items():
        searched, predicted = [c[unit] for c in choices], [rule.choose(v) for v in z[unit]]
        report[unit] = {
            "agreement": agreement(predicted, searched),
            "balanced_accuracy": balanced_accuracy(predicted, searched),
            "spearman_pi_z": spearman(pi_first[unit], z[unit]),
        }
    ratio = None if block_losses is None else block_loss_ratio(rules, z, block_losses)
    return KurtosisPolicy(rules, tuple(candidates), weights, fitted_on, report, ratio)
