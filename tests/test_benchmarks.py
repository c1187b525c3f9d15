"""The quality benchmark maps every method onto the one fit path as documented."""

import hashlib
import importlib.util
import sys
from pathlib import Path

import pytest

from lqsearch.cli import main
from lqsearch.policy.rule import DEFAULT_POLICY

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def quality():
    spec = importlib.util.spec_from_file_location("quality", BENCHMARKS / "quality.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["quality"] = module  # dataclasses look their module up there
    sys.path.insert(0, str(BENCHMARKS))  # as when run as a script: its sibling modules import
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCHMARKS))
        del sys.modules["quality"]


def test_methods_map_to_model_settings(quality) -> None:
    preset = quality.PRESETS["bench"]
    model = {m: quality.fit_config(preset, "w3a3k2v2", m, "rtn")["model"] for m in quality.METHODS}
    assert model["fp"]["quant"] == "w16a16kv16" and model["rtn"]["quant"] == "w3a3k2v2"
    assert model["rtn"]["finetune_epochs"] == 0 and not model["rtn"]["learnable_clipping"]
    assert model["rotation-hadamard"]["candidates"] == ["rotation"] and model["rotation-hadamard"]["rotation"] == "hadamard"
    assert model["rotation-learned"]["rotation"] == "learned" and model["affine"]["candidates"] == ["affine"]
    assert model["search-hard"]["mode"] == "hard" and model["search-soft"]["mode"] == "soft"
    assert model["policy"]["selection"] == "policy" and model["policy"]["policy_path"] is None
    assert model["policy-fitted"]["policy_path"].endswith("bench/bench/w3a3k2v2/search-soft/policy.json")
    # every calibrated method gets the same epochs per block; the searches spend some searching
    epochs = {m: model[m]["search_epochs"] + model[m]["finetune_epochs"] for m in quality.METHODS}
    assert epochs["fp"] == epochs["rtn"] == 0 and {epochs[m] for m in quality.METHODS if m not in ("fp", "rtn")} == {preset.epochs}
    assert {m for m in quality.METHODS if model[m]["search_epochs"]} == {"search-soft", "search-hard"}
    # a policy run is reused only while the policy it applied is unchanged, the shipped default included
    default_sha256 = hashlib.sha256(DEFAULT_POLICY.read_bytes()).hexdigest()
    assert quality.fit_key(quality.fit_config(preset, "w3a3k2v2", "policy", "rtn"))["policy_sha256"] == default_sha256
    assert quality.fit_key(quality.fit_config(preset, "w3a3k2v2", "search-soft", "rtn"))["policy_sha256"] is None
    gptq = quality.fit_config(preset, "w4a4", "affine", "gptq")
    assert gptq["model"]["weight_rounding"] == "gptq" and gptq["trainer"]["default_root_dir"].endswith("w4a4/affine-gptq")


def test_generated_configs_parse(quality, tmp_path: Path, capsys) -> None:
    import yaml

    config = tmp_path / "search.yaml"
    config.write_text(yaml.safe_dump(quality.fit_config(quality.PRESETS["quick"], "w4a4kv4", "search-soft", "gptq")))
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_.value.code in (0, None)
    assert "lqsearch.callbacks.PolicyDistillation" in capsys.readouterr().out


@pytest.fixture(scope="module")
def expectations():
    spec = importlib.util.spec_from_file_location("expectations", BENCHMARKS / "expectations.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_expectations_report_each_verdict(expectations, tmp_path: Path, monkeypatch) -> None:
    import json

    monkeypatch.setattr(expectations, "ROOT", tmp_path)
    ppl = {"rtn": 1000.0, "rotation-hadamard": 300.0, "rotation-learned": 120.0, "affine": 100.0, "search-soft": 90.0, "search-hard": 97.0, "policy": 101.0, "policy-fitted": 91.0}
    rows = []
    for method, value in ppl.items():
        searched = method.startswith("search-")
        units = {"attn": {"choice": "affine", "pi": {"affine": 0.3, "rotation": 0.7}}, "mlp": {"choice": "rotation", "pi": {"affine": 0.4, "rotation": 0.6}}}
        choices = {"selection": "search" if searched else "policy", "candidates": ["affine", "rotation"], "blocks": [{"final_loss": value / 100, "units": units}]}
        run = tmp_path / "checkpoints" / "bench" / "bench" / "w3a3k2v2" / method
        run.mkdir(parents=True)
        (run / "choices.json").write_text(json.dumps(choices))
        rows.append({"setting": "w3a3k2v2", "method": method, "ppl": value, "calib_seconds": 130.0 if method == "search-hard" else 100.0, "choices": {"affine": 1, "rotation": 1}})
    text = expectations.report({"preset": {"name": "bench"}, "commit": "abc", "date": "today", "rows": rows})
    verdicts = {line.split(" | ")[0].lstrip("| "): line.rsplit(" | ", 1)[1].rstrip(" |") for line in text.splitlines() if line.endswith(("| yes |", "| **no** |"))}
    assert verdicts["search-soft clearly better than affine (ppl at most 0.95x)"] == "yes"  # 0.90x
    assert verdicts["search-hard clearly better than affine (ppl at most 0.95x)"] == "**no**"  # 0.97x
    assert verdicts["policy at least as good as the best single type (affine)"] == "**no**"
    assert verdicts["policy-fitted within 2% of search-soft"] == "yes" and verdicts["search-hard under 1.3x affine calibration time"] == "**no**"
    assert "| search-soft | 1/1 | 1/2 | 0.9 |" in text  # alpha's argmax agrees with one of the two choices


def test_table_names_fits_reused_from_earlier_commits(quality) -> None:
    preset = {"name": "bench", "nsamples": 16, "seqlen": 256, "batch_size": 4, "epochs": 3, "search_epochs": 2, "eval_windows": 32, "eval_seqlen": 512, "zero_shot_limit": 200}
    rows = [
        {"setting": "w4a4kv4", "method": m, "weight_rounding": "rtn", "ppl": 50.0, "acc": 0.4, "calib_seconds": 10.0, "peak_rss_mb": 1000.0, "choices": {"affine": 60, "rotation": 0}, "fit_commit": c}
        for m, c in (("affine", "a" * 40), ("policy", "b" * 40))
    ]
    table = quality.markdown({"preset": preset, "commit": "b" * 40, "date": "today", "machine": "here", "rows": rows})
    assert f"Fits reused from earlier commits: `{'a' * 12}` (w4a4kv4 affine)." in table
    assert "Fits reused" not in quality.markdown({"preset": preset, "commit": "a" * 40, "date": "today", "machine": "here", "rows": rows[:1]})
