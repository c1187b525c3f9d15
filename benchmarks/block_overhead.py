"""Online cost of the transforms: one SmolLM2 decoder block forward at batch x seqlen tokens.

Variants of block 0 (W4A4KV4 quantizers unless plain):
  plain              the Hugging Face block, full precision
  rtn                identity transforms, quantizers on (fused)
  rotation-fused     fixed rotations at all six sites, fused: the inference cost
  affine-fused       affine transforms (with smoothing scales), fused: the inference cost
  affine-unfused     affine transforms as trained: factors rebuilt and weights transformed every call

Prints a table and writes benchmarks/results/block_overhead.json.
Run: .venv/bin/python benchmarks/block_overhead.py [--batch 4 --seqlen 512 --repeats 5]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import time
from pathlib import Path

import torch

from lqsearch.models import ModelAdapter, load_model
from lqsearch.models.quantized import use_kv_site_attention
from lqsearch.quant import QuantConfig
from lqsearch.transforms import TransformedBlock

RESULTS = Path(__file__).parent / "results" / "block_overhead.json"


@torch.no_grad()
def time_blocks(blocks: dict[str, torch.nn.Module], hidden: torch.Tensor, rope, repeats: int) -> dict[str, float]:
    """Median seconds per variant; variants take turns in every round, so drift hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in blocks}
    for round_ in range(repeats + 1):
        for name, block in blocks.items():
            start = time.perf_counter()
            block(hidden, position_embeddings=rope)
            if round_ > 0:  # round 0 warms up
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def variant(base, kind: str | None, fused: bool) -> torch.nn.Module:
    model = copy.deepcopy(base)
    if kind is not None:
        block = TransformedBlock(ModelAdapter(model), 0, QuantConfig.parse("w4a4kv4"), candidates=(kind,))
        use_kv_site_attention(model)
        if fused:
            block.fuse()
    return model.model.layers[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    base, _ = load_model("smollm2-135m")
    hidden = torch.randn(args.batch, args.seqlen, base.config.hidden_size, generator=torch.Generator().manual_seed(0))
    variants = {
        "plain": (None, False),
        "rtn": ("identity", True),
        "rotation-fused": ("rotation", True),
        "affine-fused": ("affine", True),
        "affine-unfused": ("affine", False),
    }
    rope = base.model.rotary_emb(hidden, torch.arange(args.seqlen).unsqueeze(0))
    blocks = {name: variant(base, kind, fused) for name, (kind, fused) in variants.items()}
    seconds = time_blocks(blocks, hidden, rope, args.repeats)
    rows = [{"variant": name, "ms": 1000 * s, "vs_plain": s / seconds["plain"], "vs_rtn": s / seconds["rtn"]} for name, s in seconds.items()]
    print(f"SmolLM2-135M block 0, batch {args.batch} x {args.seqlen}, {torch.get_num_threads()} threads, median of {args.repeats} interleaved rounds")
    print(f"{'variant':<16} {'ms':>9} {'x plain':>8} {'x rtn':>7}")
    for row in rows:
        print(f"{row['variant']:<16} {row['ms']:>9.1f} {row['vs_plain']:>8.2f} {row['vs_rtn']:>7.2f}")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    setup = {"batch": args.batch, "seqlen": args.seqlen, "repeats": args.repeats, "threads": torch.get_num_threads(), "quant": "w4a4kv4"}
    RESULTS.write_text(json.dumps({"commit": commit, "setup": setup, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
