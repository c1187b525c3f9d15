"""Distributed calibration on SmolLM2-135M: throughput and memory per rank for 1 and 2 processes.

Runs ``lqsearch fit`` (the demo recipe, W4A4KV4 search) on the first ``--blocks`` blocks with
the same global batch, once on one process and once as DDP over ``--processes`` CPU processes
(gloo), with the ``MemoryReport`` callback. Reports calibration tokens/s (samples x seqlen x
epochs per block x blocks over the calibration wall time) and, per rank, the measured
activation cache against the formula ``2 x nsamples / ranks x seqlen x hidden x bytes`` and the
peak RSS. ``--stream-blocks`` reads each block from the safetensors files (ranks other than 0
then free finished blocks). Prints a table and writes benchmarks/results/ddp[-streamed].json.

Run: .venv/bin/python benchmarks/ddp.py [--blocks 4 --nsamples 16 --seqlen 256] [--stream-blocks]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from lqsearch.storage import write_text_atomic
from provenance import commit

REPO = Path(__file__).parents[1]
DEMO = REPO / "configs" / "smollm2-135m" / "demo.yaml"
RESULTS = REPO / "benchmarks" / "results"
EPOCHS_PER_BLOCK = 3  # the demo recipe: 2 search + 1 fine-tuning epochs


def calibrate(processes: int, args: argparse.Namespace, work: Path) -> dict:
    """One fit over the first blocks; its choices.json and per-rank memory reports."""
    root = work / f"processes{processes}"
    shutil.rmtree(root, ignore_errors=True)
    command = [
        str(Path(sys.executable).parent / "lqsearch"), "fit", "--config", str(DEMO),
        f"--trainer.default_root_dir={root}", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
        "--trainer.callbacks=lqsearch.callbacks.MemoryReport", "--trainer.accelerator=cpu",
        f"--trainer.devices={processes}", f"--trainer.strategy={'ddp' if processes > 1 else 'auto'}",
        f"--trainer.max_epochs={args.blocks * EPOCHS_PER_BLOCK}",
        f"--data.nsamples={args.nsamples}", f"--data.seqlen={args.seqlen}", f"--data.batch_size={args.global_batch // processes}",
        f"--model.stream_blocks={str(args.stream_blocks).lower()}",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"fit with {processes} process(es) failed:\n{done.stderr[-3000:]}")
    choices = json.loads((root / "choices.json").read_text())
    seconds = choices["calibration_seconds"]
    tokens = args.nsamples * args.seqlen * EPOCHS_PER_BLOCK * len(choices["blocks"])
    ranks = [json.loads(path.read_text()) for path in sorted((root / "memory").glob("rank*.json"))]
    return {"processes": processes, "blocks": len(choices["blocks"]), "calib_seconds": seconds, "tokens_per_second": tokens / seconds, "ranks": ranks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=2, help="DDP processes of the distributed run")
    parser.add_argument("--blocks", type=int, default=4, help="blocks calibrated per run")
    parser.add_argument("--nsamples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--global-batch", type=int, default=4, help="samples per step over all processes")
    parser.add_argument("--stream-blocks", action="store_true", help="read blocks from the model files when needed")
    parser.add_argument("--work", type=Path, default=REPO / "checkpoints" / "bench-ddp", help="run folders (git-ignored)")
    args = parser.parse_args()
    if args.nsamples % args.processes or args.global_batch % args.processes:
        parser.error("--nsamples and --global-batch must be multiples of --processes")
    runs = [calibrate(processes, args, args.work) for processes in (1, args.processes)]
    streamed = ", blocks streamed" if args.stream_blocks else ""
    print(f"\nSmolLM2-135M, W4A4KV4 search{streamed}, {args.blocks} blocks, {args.nsamples} x {args.seqlen} tokens, global batch {args.global_batch}, {EPOCHS_PER_BLOCK} epochs per block")
    print("| processes | calib s | tokens/s | rank | cache MB | formula MB | peak RSS MB |\n|---|---|---|---|---|---|---|")
    for run in runs:
        for rank in run["ranks"]:
            print(
                f"| {run['processes']} | {run['calib_seconds']:.1f} | {run['tokens_per_second']:.0f} | {rank['rank']} "
                f"| {rank['cache_mb']:.1f} | {rank['cache_formula_mb']:.1f} | {rank['peak_rss_mb']:.0f} |"
            )
    document = {
        "commit": commit(),
        "machine": {"platform": platform.platform(), "cpus": torch.multiprocessing.cpu_count(), "torch_threads": torch.get_num_threads()},
        "settings": {k: v for k, v in vars(args).items() if k != "work"},
        "runs": runs,
    }
    output = RESULTS / ("ddp-streamed.json" if args.stream_blocks else "ddp.json")
    write_text_atomic(output, json.dumps(document, indent=2) + "\n")
    print(f"\nwritten: {output.relative_to(REPO)}")


if __name__ == "__main__":
    main()
