import json
import math
from pathlib import Path

import pytest
import torch

from lqsearch.errors import ConfigError
from lqsearch.models import ModelAdapter
from lqsearch.policy import KurtosisPolicy, UnitRule, balanced_accuracy, fit_policy, fit_unit_rule, pearson_kurtosis, robust_z, spearman, unit_kurtosis


def test_pearson_kurtosis_closed_forms() -> None:
    assert pearson_kurtosis([torch.tensor([-1.0, 1.0])]) == pytest.approx(1.0)  # two-point: 1
    assert pearson_kurtosis([torch.tensor([-1.0, 0.0, 0.0, 0.0, 1.0])]) == pytest.approx(2.5)  # 0.4 / 0.4^2
    gaussian = torch.randn(200_000, generator=torch.Generator().manual_seed(0))
    assert pearson_kurtosis([gaussian[:100_000], gaussian[100_000:]]) == pytest.approx(3.0, abs=0.05)
    with pytest.raises(ValueError, match="constant"):
        pearson_kurtosis([torch.ones(4)])


def test_robust_z_on_hand_made_values() -> None:
    # median 3, |x - 3| = [2, 1, 0, 1, 7] -> MAD 1
    assert robust_z([1.0, 2.0, 3.0, 4.0, 10.0]) == pytest.approx([-1.349, -0.6745, 0.0, 0.6745, 4.7215])
    # MAD 0 (most values equal): mean absolute deviation stands in: median 3, meanAD 6/5
    assert robust_z([3.0, 3.0, 3.0, 3.0, 9.0]) == pytest.approx([0, 0, 0, 0, 6 / (1.2533 * 1.2)])
    assert robust_z([2.0, 2.0, 2.0]) == [0.0, 0.0, 0.0]


def test_unit_kurtosis_reads_input_or_all_weights(tiny_llama) -> None:
    adapter = ModelAdapter(tiny_llama)
    block = adapter.blocks[1]
    inputs, everything = unit_kurtosis(adapter, "input"), unit_kurtosis(adapter, "all")
    assert inputs["attn"][1] == pytest.approx(pearson_kurtosis([block.self_attn.q_proj.weight, block.self_attn.k_proj.weight, block.self_attn.v_proj.weight]))
    assert everything["mlp"][1] == pytest.approx(pearson_kurtosis([block.mlp.gate_proj.weight, block.mlp.up_proj.weight, block.mlp.down_proj.weight]))


def test_balanced_accuracy_and_spearman() -> None:
    assert balanced_accuracy(["a", "a", "a", "b"], ["a", "a", "a", "a"]) == 0.75
    assert balanced_accuracy(["a", "a", "a", "a"], ["a", "a", "a", "b"]) == 0.5  # a constant guess scores 0.5
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_fit_recovers_a_planted_threshold() -> None:
    generator = torch.Generator().manual_seed(0)
    z = (torch.randn(60, generator=generator) * 2).tolist()
    planted = UnitRule(beta=0.7, high="rotation", low="affine")
    choices = [planted.choose(v) for v in z]
    rule, balanced, agreement = fit_unit_rule(z, choices, ("affine", "rotation"))
    assert (rule.high, rule.low) == ("rotation", "affine") and balanced == agreement == 1.0
    below = max(v for v in z if v <= 0.7)
    above = min(v for v in z if v > 0.7)
    assert below < rule.beta < above


def test_fit_prefers_agreement_over_chasing_a_rare_choice() -> None:
    z = [-2.0, -1.0, -0.5, 0.0, 0.3, 1.0, 2.0, 3.0]
    choices = ["affine", "affine", "rotation", "affine", "affine", "affine", "affine", "affine"]
    rule, balanced, agreement = fit_unit_rule(z, choices, ("affine", "rotation"))
    assert all(rule.choose(v) == "affine" for v in z)  # 7/8 right; any threshold catching -0.5 is worse
    assert agreement == 7 / 8 and balanced == 0.5


def test_fit_to_block_losses_weighs_each_unit_by_what_its_choice_costs() -> None:
    z = {"attn": [0.0, 1.0, 2.0, 3.0], "mlp": [0.0, 1.0, 2.0, 10.0]}
    searched = ["rotation", "rotation", "affine", "rotation"]
    choices = [{"attn": "affine", "mlp": kind} for kind in searched]
    # mlp: rotation is 1% better in blocks 0 and 1, affine 3x better in block 2, rotation 2x better in block 3
    mlp_loss = [{"rotation": 1.0, "affine": 1.01}, {"rotation": 1.0, "affine": 1.01}, {"affine": 1.0, "rotation": 3.0}, {"rotation": 1.0, "affine": 2.0}]
    losses = [{f"attn={a},mlp={m}": loss * (1.0 if a == "affine" else 5.0) for m, loss in block.items() for a in ("affine", "rotation")} for block in mlp_loss]
    pi = {"attn": [0.9] * 4, "mlp": [0.5] * 4}
    agreeing = fit_policy(z, choices, pi, ("affine", "rotation"), "input", {})
    assert agreeing.rules["mlp"] == UnitRule(1.5, "affine", "rotation") and agreeing.block_loss_ratio is None  # 3/4 right
    costed = fit_policy(z, choices, pi, ("affine", "rotation"), "input", {}, losses)
    assert costed.rules["mlp"] == UnitRule(6.0, "rotation", "affine")  # 2/4 right, but only the cheap ones wrong
    assert costed.fit["mlp"]["agreement"] == 0.5 and all(rule == "affine" for rule in costed.choose({"attn": [0.0], "mlp": [0.0]})[0].values())
    assert costed.block_loss_ratio == pytest.approx((1.01 + 1.01 + 1.0 + 1.0) / 4)


def test_policy_round_trip_and_apply(tmp_path: Path) -> None:
    z = {"attn": [-1.0, 0.2, 3.0, 0.5], "mlp": [2.0, -0.5, 0.1, 4.0]}
    choices = [{"attn": "affine", "mlp": "rotation"}, {"attn": "affine", "mlp": "affine"}, {"attn": "rotation", "mlp": "affine"}, {"attn": "affine", "mlp": "rotation"}]
    pi = {"attn": [0.9, 0.8, 0.1, 0.7], "mlp": [0.2, 0.9, 0.6, 0.1]}
    policy = fit_policy(z, choices, pi, ("affine", "rotation"), "input", {"model": "tiny"})
    assert policy.choose(z) == choices
    assert policy.fit["attn"]["agreement"] == 1.0 and policy.fit["attn"]["spearman_pi_z"] == pytest.approx(-1.0)
    policy.save(tmp_path / "policy.json")
    assert json.loads((tmp_path / "policy.json").read_text())["schema"] == "lqsearch-policy/1"
    assert KurtosisPolicy.load(tmp_path / "policy.json") == policy


def test_bad_policy_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        KurtosisPolicy.load(tmp_path / "missing.json")
    (tmp_path / "old.json").write_text(json.dumps({"schema": "lqsearch-policy/0"}))
    with pytest.raises(ConfigError, match="this lqsearch reads 'lqsearch-policy/1'"):
        KurtosisPolicy.load(tmp_path / "old.json")
    policy = KurtosisPolicy({"attn": UnitRule(0.0, "rotation", "affine")}, ("affine", "rotation"))
    with pytest.raises(ConfigError, match="fitted over candidates"):
        policy.check_candidates(("affine", "identity"))


def test_shipped_default_policy_loads() -> None:
    policy = KurtosisPolicy.load()
    assert policy.candidates == ("affine", "rotation") and set(policy.rules) == {"attn", "mlp"}
    assert policy.fitted_on["model_type"] == "llama"
