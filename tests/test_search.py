import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lqsearch.cli import main
from lqsearch.data.calibration import draw_windows
from lqsearch.errors import ConfigError
from lqsearch.quant import QuantConfig
from lqsearch.search import ArchitectureGates, BlockSchedule, temperature
from lqsearch.transforms import transform_model


def test_schedule_maps_epochs_to_blocks_and_phases() -> None:
    schedule = BlockSchedule(num_blocks=3, search_epochs=2, finetune_epochs=1)
    assert schedule.total_epochs == 9
    assert [schedule.block(e) for e in range(9)] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert [schedule.phase(e)[0] for e in range(3)] == ["search", "search", "finetune"]
    assert schedule.ends_search(1) and not schedule.ends_search(2) and schedule.ends_block(2)
    rtn = BlockSchedule(num_blocks=2, search_epochs=0, finetune_epochs=0)
    assert rtn.epochs_per_block == 1 and rtn.phase(1) == ("none", 0, 1)


def test_temperature_anneals_between_its_ends() -> None:
    assert temperature(0, 1.0, 0.1, "exponential") == 1.0
    assert temperature(1, 1.0, 0.1, "exponential") == pytest.approx(0.1)
    assert temperature(0.5, 1.0, 0.1, "exponential") == pytest.approx(0.1**0.5)
    assert temperature(0.5, 1.0, 0.2, "linear") == pytest.approx(0.6)


def test_gumbel_samples_are_reproducible_and_hard_is_one_hot() -> None:
    gates = ArchitectureGates(2, ("attn", "mlp"), ("affine", "rotation"), seed=3)
    first, again = gates.sample(1, 7, 0.5, hard=False), gates.sample(1, 7, 0.5, hard=False)
    assert all(torch.equal(first[u], again[u]) for u in first)
    assert all(torch.allclose(w.sum(), torch.tensor(1.0)) for w in first.values())
    hard = gates.sample(1, 7, 0.5, hard=True)
    assert all(sorted(w.tolist()) == pytest.approx([0.0, 1.0]) for w in hard.values())


@pytest.mark.parametrize("candidate", [0, 1])
def test_one_hot_mixture_equals_the_single_candidate(tiny_llama, token_batch, candidate: int) -> None:
    blocks = transform_model(tiny_llama, QuantConfig.parse("w4a4kv4"), candidates=("affine", "rotation"), rotation="learned")
    with torch.no_grad():  # make the candidates differ
        for parameter in blocks[0].sites["qkv"].transforms["affine"].parameters():
            parameter.add_(0.1)
    kind = ("affine", "rotation")[candidate]
    blocks[0].select({"attn": kind, "mlp": kind})
    single = tiny_llama(token_batch).logits
    weights = torch.nn.functional.one_hot(torch.tensor(candidate), 2).float()
    for unit in ("attn", "mlp"):
        blocks[0].mix(unit, lambda: weights)
    blocks[0].select({"attn": "affine" if candidate else "rotation", "mlp": "affine" if candidate else "rotation"})
    torch.testing.assert_close(tiny_llama(token_batch).logits, single)


@pytest.mark.parametrize("hard", [False, True])
def test_alpha_receives_gradients(tiny_llama, token_batch, hard: bool) -> None:
    blocks = transform_model(tiny_llama, QuantConfig.parse("w4a4kv4"), candidates=("affine", "rotation"))
    gates = ArchitectureGates(2, ("attn", "mlp"), ("affine", "rotation"))
    sample = gates.sample(0, 0, 1.0, hard=hard)
    for unit in ("attn", "mlp"):
        blocks[0].mix(unit, lambda unit=unit: sample[unit])
    tiny_llama(token_batch).logits.pow(2).mean().backward()
    assert gates.alpha.grad is not None and gates.alpha.grad[0].abs().sum() > 0


def test_too_short_calibration_corpus_is_one_line() -> None:
    with pytest.raises(ConfigError, match=r"fewer than nsamples x seqlen = 8 x 64"):
        draw_windows(torch.arange(100), 8, 64, seed=0)


def fit_args(tiny_model_dir: Path, tiny_corpus: Path, root: Path, *extra: str) -> list[str]:
    return [
        "fit",
        "--trainer.accelerator=cpu",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={root}",
        f"--model.model={tiny_model_dir}",
        "--model.search_epochs=2",
        "--model.finetune_epochs=1",
        f"--data.corpus={tiny_corpus}",
        "--data.nsamples=8",
        "--data.seqlen=32",
        "--data.batch_size=4",
        *extra,
    ]


def test_two_block_search_through_lightning_cli(tiny_model_dir: Path, tiny_corpus: Path, tmp_path: Path) -> None:
    main(fit_args(tiny_model_dir, tiny_corpus, tmp_path / "run", "--model.decide=alpha"))
    choices = json.loads((tmp_path / "run" / "choices.json").read_text())
    assert [b["block"] for b in choices["blocks"]] == [0, 1]
    for block in choices["blocks"]:
        assert set(block["candidate_loss"]) == {"affine", "rotation"} and block["combination_loss"] == {}
        for unit in ("attn", "mlp"):
            entry = block["units"][unit]
            assert entry["choice"] == max(entry["pi"], key=entry["pi"].get)
            assert sum(entry["pi"].values()) == pytest.approx(1.0) and entry["kurtosis"] > 0
    assert (tmp_path / "run" / "transforms" / "block_01.safetensors").is_file()
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


class Killed(RuntimeError):
    pass


def without_timing(choices: dict) -> dict:
    """choices.json less its wall times, which no two runs share."""
    del choices["calibration_seconds"]
    for block in choices["blocks"]:
        del block["seconds"]
    return choices


@pytest.mark.parametrize("rounding", ["rtn", "gptq"])
def test_killed_run_resumes_bit_identically(tiny_model_dir: Path, tiny_corpus: Path, tmp_path: Path, rounding: str) -> None:
    import lightning as L

    class KillInBlockOne(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module) -> None:
            if trainer.current_epoch == 4:  # block 1, second epoch: block 0 finished and checkpointed
                raise Killed

    options = ("--model.mode=hard", f"--model.weight_rounding={rounding}")
    main(fit_args(tiny_model_dir, tiny_corpus, tmp_path / "whole", *options))
    killed_args = fit_args(tiny_model_dir, tiny_corpus, tmp_path / "killed", *options)
    with pytest.raises(Killed):
        from lqsearch.cli import SearchCLI, TransformSearch, CalibrationDataModule

        SearchCLI(TransformSearch, CalibrationDataModule, trainer_defaults={"max_epochs": -1, "callbacks": [KillInBlockOne()]}, args=killed_args)
    assert json.loads((tmp_path / "killed" / "choices.json").read_text())["blocks"][0]["block"] == 0
    main(killed_args + ["--ckpt_path=last"])
    whole, resumed = (without_timing(json.loads((tmp_path / r / "choices.json").read_text())) for r in ("whole", "killed"))
    assert whole == resumed
    for block in ("block_00", "block_01"):
        expected = load_file(tmp_path / "whole" / "transforms" / f"{block}.safetensors")
        actual = load_file(tmp_path / "killed" / "transforms" / f"{block}.safetensors")
        assert expected.keys() == actual.keys()
        assert all(torch.equal(expected[k], actual[k]) for k in expected)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--model.candidates=[]"], "candidates must not be empty"),
        (["--model.candidates=[affine, shear]"], "unknown candidate(s) ['shear']"),
        (["--model.tau_start=0.1", "--model.tau_end=1.0"], "need 0 < tau_end <= tau_start"),
        (["--data.nsamples=0"], "nsamples must be at least 1"),
        (["--model.quant=w1a4"], "w bits 1 unsupported"),
        (["--model.weight_rounding=gptq", "--model.gptq_damp=-1"], "gptq_damp=-1.0: use a value >= 0"),
        (["--model.weight_rounding=gptq", "--model.quant=w16a4"], "weight_rounding gptq needs quantized weights"),
    ],
)
def test_bad_configs_fail_with_one_line(tiny_model_dir: Path, tiny_corpus: Path, tmp_path: Path, capsys, extra, message) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(fit_args(tiny_model_dir, tiny_corpus, tmp_path / "run", *extra))
    assert exit_.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("lqsearch: error:")]
    assert len(errors) == 1 and message in errors[0]


CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*/*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=[f"{c.parent.name}/{c.name}" for c in CONFIGS])
def test_shipped_configs_parse(config: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "class_path: lqsearch.callbacks.SearchReport" in printed and "default_root_dir: checkpoints/" in printed


def test_configs_cover_the_documented_recipes() -> None:
    names = {f"{c.parent.name}/{c.stem}" for c in CONFIGS}
    expected = {f"smollm2-135m/{r}" for r in ("demo", "search-w4a4kv4", "search-w3a3k2v2", "affine-w4a4kv4", "rotation-w4a4kv4", "rtn-w4a4kv4")}
    distributed = {"llama-3-8b/search-w3a3k2v2-8gpu", "llama-3-70b/search-w4a4kv4-8gpu"}
    assert expected | distributed | {"llama-3-8b/search-w3a3k2v2", "llama-2-7b/search-w4a4kv4"} <= names


def test_pi_heatmap_and_choices_table() -> None:
    from types import SimpleNamespace

    from lqsearch.callbacks.tensorboard import CELL, HIGH, LOW, PENDING, choices_table, pi_heatmap

    module = SimpleNamespace(
        gates=SimpleNamespace(units=("attn", "mlp")),
        candidates=("affine", "rotation"),
        num_blocks=3,
        finished=[
            {"block": 0, "pi": {"attn": {"affine": 1.0, "rotation": 0.0}, "mlp": {"affine": 0.0, "rotation": 1.0}}, "choice": {"attn": "affine", "mlp": "rotation"}},
        ],
    )
    image = pi_heatmap(module)
    assert image.shape == (3, 2 * CELL, 3 * CELL)
    torch.testing.assert_close(image[:, 0, 0], HIGH)  # block 0 attn: pi(affine) = 1
    torch.testing.assert_close(image[:, CELL, 0], LOW)  # block 0 mlp: pi(affine) = 0
    torch.testing.assert_close(image[:, 0, 2 * CELL], PENDING)  # block 2 not searched yet
    assert choices_table(module).splitlines()[2] == "| 0 | affine | rotation |"


def test_search_distils_a_policy_that_a_policy_run_applies(tiny_model_dir: Path, tiny_corpus: Path, tmp_path: Path) -> None:
    from lqsearch.policy import KurtosisPolicy

    main(fit_args(tiny_model_dir, tiny_corpus, tmp_path / "search", "--trainer.callbacks+=lqsearch.callbacks.PolicyDistillation"))
    policy = KurtosisPolicy.load(tmp_path / "search" / "policy.json")
    assert (tmp_path / "search" / "policy.png").stat().st_size > 0
    searched = json.loads((tmp_path / "search" / "choices.json").read_text())
    predicted = policy.choose({u: [b["units"][u]["z"] for b in searched["blocks"]] for u in ("attn", "mlp")})
    agreement = sum(p[u] == b["units"][u]["choice"] for p, b in zip(predicted, searched["blocks"]) for u in ("attn", "mlp")) / 4
    assert agreement == pytest.approx((policy.fit["attn"]["agreement"] + policy.fit["mlp"]["agreement"]) / 2)
    ratios = []  # decide: loss records every combination's loss: the policy is fitted to them
    for choice, block in zip(predicted, searched["blocks"]):
        losses = block["combination_loss"]
        ratios.append(losses[f"attn={choice['attn']},mlp={choice['mlp']}"] / min(losses.values()))
    assert policy.block_loss_ratio == pytest.approx(sum(ratios) / len(ratios)) and policy.block_loss_ratio >= 1.0

    main(fit_args(tiny_model_dir, tiny_corpus, tmp_path / "policy", "--model.selection=policy", f"--model.policy_path={tmp_path / 'search' / 'policy.json'}"))
    applied = json.loads((tmp_path / "policy" / "choices.json").read_text())
    assert applied["selection"] == "policy" and [{u: b["units"][u]["choice"] for u in ("attn", "mlp")} for b in applied["blocks"]] == predicted
    assert all(b["candidate_loss"] == {} for b in applied["blocks"])  # no search ran


def test_policy_with_other_candidates_is_refused(tiny_model_dir: Path, tiny_corpus: Path, tmp_path: Path, capsys) -> None:
    from lqsearch.policy import KurtosisPolicy, UnitRule

    path = tmp_path / "policy.json"
    KurtosisPolicy({"attn": UnitRule(0.0, "rotation", "affine"), "mlp": UnitRule(0.0, "rotation", "affine")}, ("affine", "rotation")).save(path)
    with pytest.raises(SystemExit):
        main(fit_args(tiny_model_dir, tiny_corpus, tmp_path / "run", "--model.selection=policy", f"--model.policy_path={path}", "--model.candidates=[affine, identity]"))
    assert "policy was fitted over candidates ['affine', 'rotation'], this run has ['affine', 'identity']" in capsys.readouterr().err


@pytest.mark.parametrize("rounding", ["rtn", "gptq"])
def test_export_then_reload_reproduces_the_quantized_model(tiny_model_dir: Path, tiny_corpus: Path, tmp_path: Path, rounding: str) -> None:
    import lightning as L

    import lqsearch
    from lqsearch.callbacks import QuantizedExport
    from lqsearch.data import CalibrationDataModule
    from lqsearch.search import TransformSearch

    module = TransformSearch(model=str(tiny_model_dir), quant="w4a4kv4", search_epochs=1, finetune_epochs=1, weight_rounding=rounding)
    data = CalibrationDataModule(corpus=str(tiny_corpus), nsamples=8, seqlen=32, batch_size=4)
    data.connect(module.tokenizer)
    trainer = L.Trainer(max_epochs=-1, default_root_dir=tmp_path, logger=False, enable_progress_bar=False, callbacks=[QuantizedExport()])
    trainer.fit(module, data)
    ids = torch.randint(1, 128, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = module.quantized_model()(ids).logits
        reloaded = lqsearch.load_quantized(tmp_path / "quantized")
        torch.testing.assert_close(reloaded(ids).logits, expected, rtol=0, atol=0)
    manifest = json.loads((tmp_path / "quantized" / "lqsearch.json").read_text())
    assert manifest["format"] == "lqsearch-quantized/1" and manifest["quant"] == "w4a4kv4" and len(manifest["choices"]) == 2
    assert manifest["calibration"] == {"corpus": str(tiny_corpus), "nsamples": 8, "seqlen": 32, "seed": 0}
    assert manifest["weight_rounding"]["method"] == rounding
    assert reloaded.generate(ids[:1, :5], max_new_tokens=3, do_sample=False, pad_token_id=0).shape == (1, 8)
    (tmp_path / "quantized" / "lqsearch.json").write_text(json.dumps({**manifest, "format": "lqsearch-quantized/9"}))
    with pytest.raises(ConfigError, match="this lqsearch reads 'lqsearch-quantized/1'"):
        lqsearch.load_quantized(tmp_path / "quantized")
    with pytest.raises(ConfigError, match="not an lqsearch export"):
        lqsearch.load_quantized(tmp_path)


def test_gptq_lowers_every_block_loss_below_rtn(tiny_model_dir: Path, tiny_corpus: Path, tmp_path: Path) -> None:
    losses = {}
    for rounding in ("rtn", "gptq"):
        main(fit_args(tiny_model_dir, tiny_corpus, tmp_path / rounding, "--model.quant=w3a16", f"--model.weight_rounding={rounding}"))
        choices = json.loads((tmp_path / rounding / "choices.json").read_text())
        assert choices["weight_rounding"]["method"] == rounding
        losses[rounding] = [b["final_loss"] for b in choices["blocks"]]
    assert all(g < 0.8 * r for g, r in zip(losses["gptq"], losses["rtn"], strict=True)), losses


def test_streamed_blocks_give_the_same_search(tiny_model_dir: Path, tiny_corpus: Path, tmp_path: Path) -> None:
    main(fit_args(tiny_model_dir, tiny_corpus, tmp_path / "memory"))
    main(fit_args(tiny_model_dir, tiny_corpus, tmp_path / "streamed", "--model.stream_blocks=true"))
    memory, streamed = (without_timing(json.loads((tmp_path / r / "choices.json").read_text())) for r in ("memory", "streamed"))
    assert memory == streamed
    for block in ("block_00", "block_01"):
        expected, actual = (load_file(tmp_path / r / "transforms" / f"{block}.safetensors") for r in ("memory", "streamed"))
        assert all(torch.equal(expected[k], actual[k]) for k in expected)


def test_deciding_by_loss_keeps_the_lowest_loss_combination(tiny_model_dir: Path, tiny_corpus: Path, tmp_path: Path) -> None:
    main(fit_args(tiny_model_dir, tiny_corpus, tmp_path / "run"))
    choices = json.loads((tmp_path / "run" / "choices.json").read_text())
    assert choices["decide"] == "loss"  # the default
    for block in choices["blocks"]:
        losses = block["combination_loss"]
        assert len(losses) == 4 and all(block["candidate_loss"][k] == losses[f"attn={k},mlp={k}"] for k in ("affine", "rotation"))
        chosen = ",".join(f"{unit}={entry['choice']}" for unit, entry in block["units"].items())
        assert losses[chosen] == min(losses.values())
