"""DDP on the CPU (gloo, 2 processes): the same search as one process, and failures that end the run."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from lqsearch.cli import main
from lqsearch.data import CalibrationDataModule
from lqsearch.errors import ConfigError
from tests.test_search import fit_args, without_timing

REPO = Path(__file__).parents[1]


def run_ranks(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    """``lqsearch`` in a fresh process; Lightning's launcher starts the other rank from it."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # the ranks import tests.distributed_callbacks
    return subprocess.run([sys.executable, "-m", "lqsearch.cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def ddp(batch_size: int) -> list[str]:
    return ["--trainer.strategy=ddp", "--trainer.devices=2", f"--data.batch_size={batch_size}"]


def test_two_streaming_ranks_search_like_one_process_with_the_same_global_batch(tiny_model_dir: Path, tiny_corpus: Path, tmp_path: Path) -> None:
    main(fit_args(tiny_model_dir, tiny_corpus, tmp_path / "one"))  # batch 4 on one process, model in memory
    streamed = ("--model.stream_blocks=true", "--trainer.callbacks+=tests.distributed_callbacks.RecordLoadedBlocks")
    done = run_ranks(fit_args(tiny_model_dir, tiny_corpus, tmp_path / "two", *ddp(batch_size=2), *streamed))
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "loaded_rank0.json").read_text()) == [True, True]  # kept for the export
    assert json.loads((tmp_path / "two" / "loaded_rank1.json").read_text()) == [False, False]  # freed once finished
    one, two = (without_timing(json.loads((tmp_path / r / "choices.json").read_text())) for r in ("one", "two"))
    for a, b in zip(one["blocks"], two["blocks"], strict=True):
        assert {u: e["choice"] for u, e in a["units"].items()} == {u: e["choice"] for u, e in b["units"].items()}
        for unit in a["units"]:
            assert a["units"][unit]["pi"] == pytest.approx(b["units"][unit]["pi"], abs=1e-5)
        assert b["final_loss"] == pytest.approx(a["final_loss"], rel=1e-4)
        assert b["candidate_loss"] == pytest.approx(a["candidate_loss"], rel=1e-4)
    for block in ("block_00", "block_01"):
        expected = load_file(tmp_path / "one" / "transforms" / f"{block}.safetensors")
        actual = load_file(tmp_path / "two" / "transforms" / f"{block}.safetensors")
        assert expected.keys() == actual.keys()
        for key in expected:
            torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=1e-4, msg=key)


def test_a_failing_rank_brings_the_run_down_with_its_error(tiny_model_dir: Path, tiny_corpus: Path, tmp_path: Path) -> None:
    start = time.perf_counter()
    args = fit_args(tiny_model_dir, tiny_corpus, tmp_path / "run", *ddp(batch_size=2), "--trainer.callbacks+=tests.distributed_callbacks.RaiseOnRank")
    done = run_ranks(args, timeout=180)
    assert done.returncode != 0
    assert "injected failure on rank 1" in done.stdout + done.stderr
    assert time.perf_counter() - start < 120  # ended, not waiting on a collective until the timeout


def test_samples_must_split_evenly_across_ranks(tiny_corpus: Path) -> None:
    data = CalibrationDataModule(corpus=str(tiny_corpus), nsamples=10, seqlen=16, batch_size=2)
    data.trainer = SimpleNamespace(world_size=4, global_rank=0)
    data.connect(object())
    with pytest.raises(ConfigError, match="nsamples 10 is not a multiple of the 4 processes"):
        data.setup("fit")


def test_gptq_gives_every_rank_the_same_weights_and_caches_match_the_formula(tiny_model_dir: Path, tiny_corpus: Path, tmp_path: Path) -> None:
    args = fit_args(tiny_model_dir, tiny_corpus, tmp_path / "run", *ddp(batch_size=2), "--model.quant=w3a8kv8", "--model.weight_rounding=gptq")
    callbacks = ("tests.distributed_callbacks.SaveRankWeights", "lqsearch.callbacks.MemoryReport")
    done = run_ranks([*args, "--model.cache_dtype=bfloat16", *(f"--trainer.callbacks+={c}" for c in callbacks)])
    assert done.returncode == 0, done.stderr[-3000:]
    first, second = (load_file(tmp_path / "run" / f"rank{r}.safetensors") for r in (0, 1))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    choices = json.loads((tmp_path / "run" / "choices.json").read_text())
    assert choices["weight_rounding"]["method"] == "gptq"
    for rank in (0, 1):  # each rank caches 4 of the 8 samples: 2 x 4 x 32 tokens x 64 wide x 2 bytes
        memory = json.loads((tmp_path / "run" / "memory" / f"rank{rank}.json").read_text())
        assert memory["cache_mb"] == memory["cache_formula_mb"] == 2 * 4 * 32 * 64 * 2 / 2**20
        assert memory["peak_rss_mb"] > memory["cache_mb"]
