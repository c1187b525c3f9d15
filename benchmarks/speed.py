"""Online cost of the transforms: a decoder block forward, and the transform kernels alone.

1. Block forward: block 0 of the embedded SmolLM2-135M on batch x seqlen tokens, with
   W4A4KV4 fake quantizers unless plain:
     plain            the Hugging Face block, full precision
     rtn              identity transforms, quantizers on, fused
     rotation-fused   fixed rotations at all six sites, fused: the inference cost
     affine-fused     affine transforms (with smoothing scales), fused: the inference cost
     affine-unfused   affine transforms as trained: factors rebuilt and weights transformed every call
   "x plain" and "x rtn" divide a variant's time by the plain and by the rtn block's; rtn
   against the *-fused rows is what fused transforms add to a quantized block. Quantization
   is simulated (round and rescale in floating point), so rtn's own cost over plain is that
   simulation, not what an integer kernel would take.
2. Transform kernels: what one online site costs, ``x P`` on a batch of tokens, either as
   ``kron_matmul`` with the ``balanced_factor_sizes(width)`` factors of P or as a dense
   ``x @ P`` with the full width x width matrix, at the SmolLM2-135M (576, 1536) and
   LLaMA-3-8B (4096, 14336) hidden and intermediate widths. "speedup" is the dense time over
   the Kronecker time. A width whose dense rounds would take over ROUND_BUDGET_S (estimated
   from a short probe) runs on fewer tokens; a note under the table says so.

Every time is a median over --repeats rounds in which all variants of a table take turns,
after one warm-up round, so drift (clock changes, other load) hits them alike; timing each
variant in a row of its own swung by about 10%. On CUDA the clock is read after
``torch.cuda.synchronize``. Defaults: CUDA in bfloat16 when available, else the CPU in
float32 (--dtype applies to both parts).

Prints both tables and writes benchmarks/results/speed.json: commit, date, machine, settings, rows.
Run: .venv/bin/python benchmarks/speed.py [--repeats 9] [--batch 4 --seqlen 512 --tokens 2048]
     [--device cuda --dtype bfloat16]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedModel

from lqsearch.models import ModelAdapter, load_model
from lqsearch.models.loading import DTYPES
from lqsearch.models.quantized import use_kv_site_attention
from lqsearch.quant import QuantConfig
from lqsearch.storage import write_text_atomic
from provenance import commit
from lqsearch.transforms import TransformedBlock
from lqsearch.transforms.kronecker import balanced_factor_sizes, kron_matmul
from lqsearch.transforms.transform import TransformKind

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results" / "speed.json"
MODEL = "smollm2-135m"
QUANT = "w4a4kv4"
BLOCK_VARIANTS: dict[str, tuple[TransformKind | None, bool]] = {  # name: (transform kind or plain, fused)
    "plain": (None, False),
    "rtn": ("identity", True),
    "rotation-fused": ("rotation", True),
    "affine-fused": ("affine", True),
    "affine-unfused": ("affine", False),
}
KERNEL_WIDTHS: dict[int, str] = {
    576: "SmolLM2-135M hidden",
    1536: "SmolLM2-135M intermediate",
    4096: "LLaMA-3-8B hidden",
    14336: "LLaMA-3-8B intermediate",
}
ROUND_BUDGET_S = 60.0  # the longest the dense rounds of one width may take before its tokens are lowered
PROBE_TOKENS = 256  # tokens of the dense call that estimates a width's round time


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so the clock reads include them."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def interleaved_medians(calls: Mapping[str, Callable[[], object]], repeats: int, device: torch.device) -> dict[str, float]:
    """Median seconds of each call over ``repeats`` rounds in which every call runs once, in turn;
    round 0 warms up and is not counted."""
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    for round_index in range(repeats + 1):
        for name, call in calls.items():
            synchronize(device)
            start = time.perf_counter()
            call()
            synchronize(device)
            if round_index > 0:
                seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in seconds.items()}


def random_tensor(generator: torch.Generator, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Seeded Gaussian values, drawn on the CPU so every device sees the same ones."""
    return torch.randn(shape, generator=generator).to(device, dtype)


def block_variant(base: PreTrainedModel, kind: TransformKind | None, fused: bool, device: torch.device) -> nn.Module:
    """Block 0 of a copy of ``base``: plain (``kind`` None), or with W4A4KV4 quantizers and
    ``kind`` transforms at every site, fused or not; built on the CPU, then moved to ``device``."""
    model = copy.deepcopy(base)
    if kind is not None:
        block = TransformedBlock(ModelAdapter(model), 0, QuantConfig.parse(QUANT), candidates=(kind,))
        use_kv_site_attention(model)
        if fused:
            block.fuse()
    return model.model.layers[0].to(device)


def time_block_forward(batch: int, seqlen: int, repeats: int, device: torch.device, dtype: torch.dtype) -> list[dict[str, object]]:
    """One row per block variant: ms per forward and its ratio to the plain and the rtn block."""
    base, _ = load_model(MODEL, dtype)
    hidden = random_tensor(torch.Generator().manual_seed(0), (batch, seqlen, base.config.hidden_size), torch.device("cpu"), dtype)
    rope = tuple(t.to(device) for t in base.model.rotary_emb(hidden, torch.arange(seqlen).unsqueeze(0)))
    hidden = hidden.to(device)
    blocks = {name: block_variant(base, kind, fused, device) for name, (kind, fused) in BLOCK_VARIANTS.items()}
    calls = {name: (lambda block=block: block(hidden, position_embeddings=rope)) for name, block in blocks.items()}
    seconds = interleaved_medians(calls, repeats, device)
    return [
        {"variant": name, "ms": 1000 * s, "vs_plain": s / seconds["plain"], "vs_rtn": s / seconds["rtn"]}
        for name, s in seconds.items()
    ]


def affordable_tokens(tokens: int, dense: torch.Tensor, repeats: int, generator: torch.Generator) -> int:
    """``tokens``, or as many as let the dense rounds with ``dense`` fit in ROUND_BUDGET_S,
    extrapolated linearly from a call on PROBE_TOKENS tokens."""
    probe_tokens = min(tokens, PROBE_TOKENS)
    probe = random_tensor(generator, (probe_tokens, dense.shape[0]), dense.device, dense.dtype)
    probe_seconds = interleaved_medians({"dense": lambda: probe @ dense}, 1, dense.device)["dense"]
    fitting = int(ROUND_BUDGET_S / ((repeats + 1) * probe_seconds / probe_tokens))
    return max(1, min(tokens, fitting))


def time_kernel(width: int, tokens: int, repeats: int, device: torch.device, dtype: torch.dtype) -> dict[str, object]:
    """The Kronecker and the dense ``x P`` at ``width`` on ``tokens`` tokens (fewer if dense is too slow)."""
    generator = torch.Generator().manual_seed(width)
    outer, inner = balanced_factor_sizes(width)
    left = random_tensor(generator, (outer, outer), device, dtype) if outer > 1 else None
    right = random_tensor(generator, (inner, inner), device, dtype)
    dense = random_tensor(generator, (width, width), device, dtype)
    used_tokens = affordable_tokens(tokens, dense, repeats, generator)
    x = random_tensor(generator, (used_tokens, width), device, dtype)
    seconds = interleaved_medians({"kron": lambda: kron_matmul(x, left, right), "dense": lambda: x @ dense}, repeats, device)
    return {
        "width": width,
        "model_width": KERNEL_WIDTHS[width],
        "factors": [outer, inner],
        "tokens": used_tokens,
        "kron_ms": 1000 * seconds["kron"],
        "dense_ms": 1000 * seconds["dense"],
        "kron_tokens_per_s": used_tokens / seconds["kron"],
        "dense_tokens_per_s": used_tokens / seconds["dense"],
        "speedup": seconds["dense"] / seconds["kron"],
    }


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns as wide as their widest cell; the first left-aligned, the others right-aligned."""
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows)]
    aligned = [
        "  ".join(cell.ljust(width) if column == 0 else cell.rjust(width) for column, (cell, width) in enumerate(zip(line, widths)))
        for line in (headers, *rows)
    ]
    return "\n".join(aligned)


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model from /proc/cpuinfo where there is one."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def block_table(rows: Sequence[dict[str, object]]) -> str:
    cells = [[row["variant"], f"{row['ms']:.1f}", f"{row['vs_plain']:.2f}", f"{row['vs_rtn']:.2f}"] for row in rows]
    return format_table(["variant", "ms", "x plain", "x rtn"], cells)


def kernel_table(rows: Sequence[dict[str, object]]) -> str:
    headers = ["width", "factors", "tokens", "kron ms", "dense ms", "kron tokens/s", "dense tokens/s", "speedup"]
    cells = [
        [
            f"{row['width']} ({row['model_width']})",
            "x".join(map(str, row["factors"])),
            str(row["tokens"]),
            f"{row['kron_ms']:.3f}",
            f"{row['dense_ms']:.3f}",
            f"{row['kron_tokens_per_s']:.3g}",
            f"{row['dense_tokens_per_s']:.3g}",
            f"{row['speedup']:.1f}x",
        ]
        for row in rows
    ]
    return format_table(headers, cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4, help="block forward: sequences per batch")
    parser.add_argument("--seqlen", type=int, default=512, help="block forward: tokens per sequence")
    parser.add_argument("--tokens", type=int, default=2048, help="transform kernels: tokens per call (fewer at a width too slow for them)")
    parser.add_argument("--repeats", type=int, default=9, help="timed rounds, after one warm-up round")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=list(DTYPES), help="default: bfloat16 on CUDA, else float32")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype_name = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    dtype = DTYPES[dtype_name]
    measured_commit = commit()  # before timing: the code this run imported
    machine = {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1_5_15_min": list(os.getloadavg()),  # other work on the machine skews every time
        "device": device_name(device),
        "torch": torch.__version__,
    }
    print(f"{machine['device']} ({device.type}, {dtype_name}), {machine['torch_threads']} torch threads, median of {args.repeats} interleaved rounds")

    block_rows = time_block_forward(args.batch, args.seqlen, args.repeats, device, dtype)
    print(f"\nSmolLM2-135M block 0 forward, batch {args.batch} x {args.seqlen}, {QUANT.upper()}")
    print(block_table(block_rows))

    kernel_rows = [time_kernel(width, args.tokens, args.repeats, device, dtype) for width in KERNEL_WIDTHS]
    print(f"\nTransform kernels: x P on {args.tokens} tokens, kron_matmul with balanced factors vs dense x @ P")
    print(kernel_table(kernel_rows))
    for row in kernel_rows:
        if row["tokens"] < args.tokens:
            print(f"note: width {row['width']} ran on {row['tokens']} tokens, not {args.tokens}, so that its dense rounds fit in {ROUND_BUDGET_S:.0f} s")

    settings = {
        "model": MODEL,
        "quant": QUANT,
        "device": device.type,
        "dtype": dtype_name,
        "repeats": args.repeats,
        "batch": args.batch,
        "seqlen": args.seqlen,
        "tokens": args.tokens,
        "round_budget_s": ROUND_BUDGET_S,
    }
    report = {
        "commit": measured_commit,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "settings": settings,
        "block_forward": block_rows,
        "kernels": kernel_rows,
    }
    write_text_atomic(RESULTS, json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
