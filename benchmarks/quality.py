"""Quality and cost of every method, side by side, through the same code (issue 7).

Model: the embedded SmolLM2-135M; text: the embedded enwiki-sample. Per setting (w4a4kv4,
w3a3k3v3, w3a3k2v2) and method, one ``lqsearch fit`` subprocess (TransformSearch, the
QuantizedExport callback writing ``<run>/quantized``), then ``lqsearch eval`` of the export:
  fp                 w16a16kv16, identity, no calibration (run once, repeated in every setting)
  rtn                identity, 0 epochs, no learned clipping
  rotation-hadamard  fixed randomised Hadamard; calibration learns clipping only (QuaRot-like)
  rotation-learned   learned orthogonal rotation (SpinQuant-like)
  affine             learnable affine (FlatQuant's recipe)
  search-soft        Gumbel-softmax search over [affine, rotation]; also distils policy.json
  search-hard        the same, one sampled candidate per step
  policy             the shipped kurtosis policy picks each unit's transform, no search
  policy-fitted      the policy distilled from this setting's search-soft run
Every calibrated method gets the same epochs per block: single-candidate and policy runs
fine-tune for all of them; the searches spend ``search_epochs`` of them searching and fine-tune
the chosen transform for the rest, so calibration times compare like for like.

``--weight-rounding rtn gptq`` runs each method with either weight rounding (default rtn only);
``--settings`` also takes ``w4a4`` (KV cache in full precision).

Per row: perplexity and enwiki_next_sentence accuracy (``<run>/quantized/eval.json``), the
calibration wall time (``calibration_seconds`` of ``choices.json``: caching, search,
fine-tuning, fusion), the fit process's own peak RSS (``os.wait4``), and the number of units
that chose affine / rotation.

Presets:
  bench (default)  3 settings; 16 x 256 calibration tokens, batch 4, 3 epochs per block (searches:
                   2 search + 1 fine-tune, the demo preset); perplexity on 32 windows x 512;
                   200 zero-shot examples
  --quick          w4a4kv4 only; 8 x 128 tokens, 2 epochs (searches 1 + 1); 16 windows; 100 examples
                   (17 min 20 s on 2 cores: benchmarks/results/quality-quick.md)
  --smoke          w4a4kv4 only; 4 x 64 tokens, 2 epochs (searches 1 + 1); 2 windows x 128; 10 examples
                   (plumbing check, numbers meaningless)

Run: make bench | make bench-quick, or
  .venv/bin/python benchmarks/quality.py [--quick | --smoke] [--settings ...] [--methods ...] [--output FILE]
Runs live in checkpoints/bench/<preset>/<setting>/<method> (fp: checkpoints/bench/<preset>/fp);
a finished run whose config is unchanged is reused, so a killed benchmark resumes. Fits run one
at a time; evaluations follow, ``--eval-jobs`` at a time (default: one per CPU, one thread each). Writes
benchmarks/results/quality.json (quick: quality-quick.json) and a .md of the same name.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
import yaml

from lqsearch.policy.rule import DEFAULT_POLICY
from lqsearch.storage import write_text_atomic
from provenance import commit

ROOT = Path(__file__).resolve().parent.parent
DEMO_CONFIG = ROOT / "configs" / "smollm2-135m" / "demo.yaml"
LQSEARCH = Path(sys.executable).parent / "lqsearch"
TASK = "enwiki_next_sentence"
SETTINGS = ("w4a4kv4", "w3a3k3v3", "w3a3k2v2")
EXTRA_SETTINGS = ("w4a4",)  # on request: W4A4 with the KV cache in full precision
ROUNDINGS = ("rtn", "gptq")
SEARCH = ["affine", "rotation"]
# method -> model keys changed from demo.yaml (quant, epochs and the policy path are set per run)
METHODS: dict[str, dict[str, Any]] = {
    "fp": {"candidates": ["identity"], "learnable_clipping": False},
    "rtn": {"candidates": ["identity"], "learnable_clipping": False},
    "rotation-hadamard": {"candidates": ["rotation"], "rotation": "hadamard"},
    "rotation-learned": {"candidates": ["rotation"], "rotation": "learned"},
    "affine": {"candidates": ["affine"]},
    "search-soft": {"candidates": SEARCH, "mode": "soft"},
    "search-hard": {"candidates": SEARCH, "mode": "hard"},
    "policy": {"candidates": SEARCH, "selection": "policy", "policy_path": None},
    "policy-fitted": {"candidates": SEARCH, "selection": "policy"},
}
UNCALIBRATED = {"fp", "rtn"}


@dataclasses.dataclass(frozen=True)
class Preset:
    name: str
    settings: tuple[str, ...]
    nsamples: int
    seqlen: int
    batch_size: int
    epochs: int  # per block, for every calibrated method
    search_epochs: int  # of those, spent searching by the searches
    eval_seqlen: int
    eval_windows: int
    zero_shot_limit: int


BENCH = Preset("bench", SETTINGS, 16, 256, 4, 3, 2, 512, 32, 200)
PRESETS = {
    "bench": BENCH,
    "quick": dataclasses.replace(
        BENCH, name="quick", settings=("w4a4kv4",), nsamples=8, seqlen=128, epochs=2, search_epochs=1, eval_windows=16, zero_shot_limit=100
    ),
    "smoke": dataclasses.replace(
        BENCH, name="smoke", settings=("w4a4kv4",), nsamples=4, seqlen=64, epochs=2, search_epochs=1, eval_seqlen=128, eval_windows=2, zero_shot_limit=10
    ),
}


def run_dir(preset: Preset, setting: str, method: str, rounding: str) -> Path:
    """Run folder relative to the repository root (fp is shared by every setting and rounding)."""
    base = Path("checkpoints") / "bench" / preset.name
    return base / "fp" if method == "fp" else base / setting / (method if rounding == "rtn" else f"{method}-{rounding}")


def fit_config(preset: Preset, setting: str, method: str, rounding: str) -> dict[str, Any]:
    """demo.yaml with this run's model, data, run folder and callbacks."""
    config = yaml.safe_load(DEMO_CONFIG.read_text())
    epochs = 0 if method in UNCALIBRATED else preset.epochs
    search_epochs = preset.search_epochs if method.startswith("search-") else 0
    config["model"].update(
        quant="w16a16kv16" if method == "fp" else setting,
        search_epochs=search_epochs,
        finetune_epochs=epochs - search_epochs,
        weight_rounding="rtn" if method == "fp" else rounding,
        **copy.deepcopy(METHODS[method]),
    )
    if method == "policy-fitted":
        config["model"]["policy_path"] = str(run_dir(preset, setting, "search-soft", rounding) / "policy.json")
    config["data"].update(
        corpus="enwiki-sample", nsamples=preset.nsamples, seqlen=preset.seqlen, batch_size=preset.batch_size,
        eval_corpus=None, eval_seqlen=preset.eval_seqlen, eval_max_windows=preset.eval_windows,
    )
    callbacks = [{"class_path": "lqsearch.callbacks.QuantizedExport"}]
    if method == "search-soft":
        callbacks.append({"class_path": "lqsearch.callbacks.PolicyDistillation"})
    config["trainer"].update(default_root_dir=str(run_dir(preset, setting, method, rounding)), logger=False, enable_progress_bar=False, callbacks=callbacks)
    return config


def fit_key(config: dict[str, Any]) -> dict[str, Any]:
    """What a finished fit must match to be reused: its config and the policy file it applied
    (the shipped default when ``policy_path`` is unset)."""
    model = config["model"]
    policy_sha256 = None
    if model["selection"] == "policy":
        policy = ROOT / model["policy_path"] if model["policy_path"] else DEFAULT_POLICY
        policy_sha256 = hashlib.sha256(policy.read_bytes()).hexdigest()
    return {"config": config, "policy_sha256": policy_sha256}


def eval_command(preset: Preset, run: Path) -> list[str]:
    return [
        str(LQSEARCH), "eval", "--checkpoint", str(run / "quantized"), "--corpus", "enwiki-sample",
        "--seqlen", str(preset.eval_seqlen), "--max-windows", str(preset.eval_windows),
        "--tasks", TASK, "--limit", str(preset.zero_shot_limit), "--batch-size", "4",
    ]


def read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def run_process(command: list[str], log_stem: Path, threads: int | None = None) -> float:
    """Run ``command`` (with ``threads`` torch threads, or the default) with stdout/stderr in
    ``<log_stem>.out/.err``; its own peak RSS in MB. Exits with the stderr tail if it fails."""
    env = None if threads is None else {**os.environ, "OMP_NUM_THREADS": str(threads)}
    with open(log_stem.with_suffix(".out"), "w") as out, open(log_stem.with_suffix(".err"), "w") as err:
        process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        tail = "\n".join(log_stem.with_suffix(".err").read_text().splitlines()[-40:])
        sys.exit(f"{tail}\n\nfailed (exit {process.returncode}): {' '.join(command)}\nlogs: {ROOT / log_stem}.out/.err")
    return usage.ru_maxrss / 1024  # KiB on Linux


def fit(config: dict[str, Any]) -> dict[str, Any]:
    """Fit (or reuse) one run; returns its record: the fit process's peak RSS in MB and the
    commit the fit ran at (a reused fit keeps its own)."""
    run = ROOT / config["trainer"]["default_root_dir"]
    key, record = fit_key(config), read_json(run / "bench-fit.json")
    reusable = record is not None and record["key"] == key and "commit" in record
    if reusable and (run / "choices.json").is_file() and (run / "quantized").is_dir():
        return record
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    (run / "bench-config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    peak_rss_mb = run_process([str(LQSEARCH), "fit", "--config", str(run / "bench-config.yaml")], run / "fit")
    record = {"key": key, "peak_rss_mb": peak_rss_mb, "commit": commit()}
    write_text_atomic(run / "bench-fit.json", json.dumps(record, indent=2) + "\n")
    return record


def evaluate(preset: Preset, run: Path, threads: int) -> dict[str, Any]:
    """``eval.json`` of the run's export, scored now unless it was with the same command."""
    command, scores = eval_command(preset, run), ROOT / run / "quantized" / "eval.json"
    if scores.is_file() and read_json(ROOT / run / "bench-eval.json") == command:
        return read_json(scores)
    scores.unlink(missing_ok=True)
    print(f"[{datetime.datetime.now():%H:%M:%S}] evaluating {run}", flush=True)
    run_process(command, ROOT / run / "eval", threads)
    write_text_atomic(ROOT / run / "bench-eval.json", json.dumps(command) + "\n")
    return read_json(scores)


Run = tuple[str, str, str]  # setting, method, weight rounding


def measure(preset: Preset, runs: list[Run], eval_jobs: int) -> list[dict[str, Any]]:
    """Fit every run one at a time (calibration times stay comparable), then evaluate the
    exports ``eval_jobs`` at a time, each with its share of the CPU threads; one row per run."""
    fitted = {}
    for setting, method, rounding in runs:
        config = fit_config(preset, setting, method, rounding)
        print(f"[{datetime.datetime.now():%H:%M:%S}] {setting} {method} {rounding}: {config['trainer']['default_root_dir']}", flush=True)
        fitted[(setting, method, rounding)] = (Path(config["trainer"]["default_root_dir"]), fit(config))
    threads = max(1, (os.cpu_count() or 1) // eval_jobs)
    folders = list(dict.fromkeys(folder for folder, _ in fitted.values()))  # fp is shared: score it once
    with ThreadPoolExecutor(eval_jobs) as pool:
        scores = dict(zip(folders, pool.map(lambda folder: evaluate(preset, folder, threads), folders)))
    return [row(run, *fitted[run], scores[fitted[run][0]]) for run in runs]


def row(run: Run, folder: Path, record: dict[str, Any], scores: dict[str, Any]) -> dict[str, Any]:
    setting, method, rounding = run
    choices = read_json(ROOT / folder / "choices.json")
    chosen = Counter(unit["choice"] for block in choices["blocks"] for unit in block["units"].values())
    return {
        "setting": setting, "method": method, "weight_rounding": rounding, "ppl": scores["perplexity"], "acc": scores["zero_shot"][TASK],
        "calib_seconds": choices.get("calibration_seconds"), "peak_rss_mb": record["peak_rss_mb"],
        "choices": {"affine": chosen["affine"], "rotation": chosen["rotation"]}, "fit_commit": record["commit"],
    }


def check_fitted_policies(preset: Preset, methods: list[str], roundings: list[str]) -> None:
    """policy-fitted reads search-soft's policy.json: it must come in this run or be current on disk."""
    if "policy-fitted" not in methods or "search-soft" in methods:
        return
    for setting, rounding in ((s, r) for s in preset.settings for r in roundings):
        config = fit_config(preset, setting, "search-soft", rounding)
        run = ROOT / config["trainer"]["default_root_dir"]
        record = read_json(run / "bench-fit.json")
        if not (run / "policy.json").is_file() or record is None or record["key"] != fit_key(config):
            sys.exit(f"policy-fitted needs {run / 'policy.json'} from a search-soft run of this preset: add --methods search-soft")


def markdown(document: dict[str, Any]) -> str:
    """A heading with date, commit and preset, then one table per setting."""
    preset = document["preset"]
    lines = [
        f"Quality benchmark, {document['date']}, commit `{document['commit']}`, {document['machine']}.",
        "",
        f"Preset `{preset['name']}`: {preset['nsamples']} x {preset['seqlen']} calibration tokens, batch {preset['batch_size']}, "
        f"{preset['epochs']} epochs per block for every calibrated method (searches: {preset['search_epochs']} of them searching); "
        f"perplexity on {preset['eval_windows']} enwiki-sample windows x {preset['eval_seqlen']}; "
        f"acc = {TASK} acc_norm (`lqsearch eval`), {preset['zero_shot_limit']} examples. "
        "`fp` is one full-precision run (w16a16kv16), repeated in every setting.",
    ]
    earlier = sorted({row["fit_commit"] for row in document["rows"]} - {document["commit"]})
    if earlier:  # fits are reused while their config is unchanged
        lines += ["", "Fits reused from earlier commits: " + "; ".join(
            f"`{c[:12]}` ({', '.join(sorted({r['setting'] + ' ' + r['method'] for r in document['rows'] if r['fit_commit'] == c}))})" for c in earlier
        ) + "."]
    for setting in dict.fromkeys(row["setting"] for row in document["rows"]):
        lines += ["", f"### {setting}", "", "| method | weights | ppl | acc | calib s | peak RSS MB | units affine/rotation |", "|---|---|---|---|---|---|---|"]
        for row in (r for r in document["rows"] if r["setting"] == setting):
            calib = "" if row["calib_seconds"] is None else f"{row['calib_seconds']:.1f}"
            lines.append(
                f"| {row['method']} | {row['weight_rounding']} | {row['ppl']:.4g} | {row['acc']:.3f} | {calib} | {row['peak_rss_mb']:.0f} | "
                f"{row['choices']['affine']}/{row['choices']['rotation']} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="w4a4kv4 only, smaller calibration and evaluation (17 min on 2 cores)")
    size.add_argument("--smoke", action="store_true", help="tiny plumbing check: numbers meaningless")
    parser.add_argument("--settings", nargs="+", choices=SETTINGS + EXTRA_SETTINGS, help="settings (default: the preset's)")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), help="subset of methods (default: all)")
    parser.add_argument("--weight-rounding", nargs="+", choices=ROUNDINGS, default=["rtn"], help="weight rounding(s) of every method")
    parser.add_argument("--eval-jobs", type=int, default=os.cpu_count() or 1, help="evaluations at a time (after all fits)")
    parser.add_argument("--output", type=Path, help="JSON file (default benchmarks/results/quality[-quick|-smoke].json); the .md lies beside it")
    args = parser.parse_args()
    preset = PRESETS["quick" if args.quick else "smoke" if args.smoke else "bench"]
    if args.settings:
        preset = dataclasses.replace(preset, settings=tuple(s for s in SETTINGS + EXTRA_SETTINGS if s in args.settings))
    methods = [m for m in METHODS if args.methods is None or m in args.methods]
    output = args.output or ROOT / "benchmarks" / "results" / ("quality.json" if preset.name == "bench" else f"quality-{preset.name}.json")
    print(f"preset: {json.dumps(dataclasses.asdict(preset))}\nmethods: {', '.join(methods)}", flush=True)
    roundings = [r for r in ROUNDINGS if r in args.weight_rounding]
    check_fitted_policies(preset, methods, roundings)
    document = {
        "preset": dataclasses.asdict(preset),
        "commit": commit(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads",
        "rows": measure(preset, [(s, m, r) for s in preset.settings for m in methods for r in roundings if m != "fp" or r == "rtn"], args.eval_jobs),
    }
    table = markdown(document)
    write_text_atomic(output, json.dumps(document, indent=2) + "\n")
    write_text_atomic(output.with_suffix(".md"), table)
    print(f"\n{table}\nwrote {output} and {output.with_suffix('.md')}")


if __name__ == "__main__":
    main()
