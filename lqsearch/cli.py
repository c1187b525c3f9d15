"""``lqsearch`` command line.

``lqsearch fit --config configs/<model>/<recipe>.yaml``: the search (a LightningCLI run).
``lqsearch validate --config ... --ckpt_path <run>/checkpoints/last.ckpt``: perplexity of a run.
``lqsearch eval --checkpoint <run>/quantized``: perplexity and lm-eval zero-shot accuracy of an export.
``lqsearch ppl``: perplexity of a model, optionally fake-quantized with round-to-nearest,
with an uncalibrated transform (identity or a fixed rotation) at every site.
"""

from __future__ import annotations

import argparse
import logging
import sys

import torch
from lightning.pytorch.cli import LightningCLI

from lqsearch.data import CalibrationDataModule, evaluation_windows, load_text, tokenize
from lqsearch.errors import ConfigError
from lqsearch.eval import perplexity
from lqsearch.eval import NEXT_SENTENCE_TASK, PAPER_TASKS
from lqsearch.models import load_model
from lqsearch.models.loading import DTYPES
from lqsearch.transforms import transform_model
from lqsearch.quant import QuantConfig
from lqsearch.search import TransformSearch

def _ppl_parser(subparsers: argparse._SubParsersAction) -> None:
    ppl = subparsers.add_parser("ppl", help="perplexity of a (RTN fake-quantized) model on a corpus's evaluation part")
    ppl.add_argument("--model", default="smollm2-135m", help="embedded name, local folder, .gguf file or hub id")
    ppl.add_argument("--corpus", default="enwiki-sample", help="named corpus or local .txt/.jsonl/.parquet file")
    ppl.add_argument("--quant", default="w16a16kv16", help="bit-widths, e.g. w4a4kv4, w3a3k2v2, w4a16 (16 = full precision)")
    ppl.add_argument("--seqlen", type=int, default=2048, help="tokens per window")
    ppl.add_argument("--max-windows", type=int, default=None, help="score a fixed, evenly spread subset of windows (default: all)")
    ppl.add_argument("--batch-size", type=int, default=4)
    ppl.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    ppl.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ppl.add_argument("--symmetric-denominator", choices=("qmax", "qmax+0.5"), default="qmax")
    ppl.add_argument(
        "--transform",
        choices=("identity", "rotation"),
        default="identity",
        help="uncalibrated transform at every site, fused before evaluation: identity = RTN, rotation = fixed randomised Hadamard",
    )
    ppl.add_argument("--seed", type=int, default=0, help="seed of the random rotations")
    ppl.set_defaults(run=_run_ppl)


def _run_ppl(args: argparse.Namespace) -> None:
    quant = QuantConfig.parse(args.quant, symmetric_denominator=args.symmetric_denominator)
    text = load_text(args.corpus, "evaluation")  # before the model: a bad corpus fails fast
    model, tokenizer = load_model(args.model, DTYPES[args.dtype])
    windows = evaluation_windows(tokenize(tokenizer, text), args.seqlen, args.max_windows)
    if not quant.is_full_precision:
        blocks = transform_model(model, quant, candidates=(args.transform,), learnable_clipping=False, seed=args.seed)
        for block in blocks:
            block.fuse()
    result = perplexity(model.to(args.device), windows, args.batch_size)
    print(f"model: {args.model}  corpus: {args.corpus}  quant: {quant.spec}  transform: {args.transform}  windows: {len(windows)} x {args.seqlen}")
    print(f"perplexity: {result.perplexity:.4f}")
    print(f"tokens/s: {result.tokens_per_second:.1f}")


def _eval_parser(subparsers: argparse._SubParsersAction) -> None:
    evaluate = subparsers.add_parser("eval", help="perplexity and zero-shot accuracy of an exported quantized model")
    evaluate.add_argument("--checkpoint", required=True, help="export folder written by QuantizedExport (<run>/quantized)")
    evaluate.add_argument("--corpus", default="enwiki-sample", help="corpus whose evaluation part is scored for perplexity")
    evaluate.add_argument("--seqlen", type=int, default=2048, help="tokens per perplexity window")
    evaluate.add_argument("--max-windows", type=int, default=None, help="fixed, evenly spread subset of windows (default: all)")
    evaluate.add_argument("--tasks", nargs="+", default=list(PAPER_TASKS), help=f"lm-eval tasks; offline: {NEXT_SENTENCE_TASK}")
    evaluate.add_argument("--limit", type=int, default=None, help="examples per task (default: all)")
    evaluate.add_argument("--batch-size", type=int, default=4)
    evaluate.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    evaluate.set_defaults(run=_run_eval)


def _run_eval(args: argparse.Namespace) -> None:
    import json
    import tempfile
    from pathlib import Path

    from transformers import AutoTokenizer

    from lqsearch.eval import write_next_sentence_task, zero_shot
    from lqsearch.models.export import load_quantized
    from lqsearch.storage import write_text_atomic

    model = load_quantized(args.checkpoint).to(args.device)
    tokenizer = AutoTokenizer.from_pretrained(args.checkpoint, trust_remote_code=False)
    windows = evaluation_windows(tokenize(tokenizer, load_text(args.corpus, "evaluation")), args.seqlen, args.max_windows)
    results = {"perplexity": perplexity(model, windows, args.batch_size).perplexity, "corpus": args.corpus, "seqlen": args.seqlen, "windows": len(windows)}
    if args.tasks:
        with tempfile.TemporaryDirectory() as folder:
            task_folder = Path(folder) if NEXT_SENTENCE_TASK in args.tasks else None
            if task_folder is not None:
                write_next_sentence_task(task_folder)
            results["zero_shot"] = zero_shot(model, tokenizer, args.tasks, task_folder, args.limit, args.seqlen, args.batch_size)
    write_text_atomic(Path(args.checkpoint) / "eval.json", json.dumps(results, indent=2) + "\n")
    print(f"perplexity: {results['perplexity']:.4f}  ({args.corpus}, {len(windows)} x {args.seqlen})")
    for task, score in results.get("zero_shot", {}).items():
        print(f"{task}: {score:.4f}")


class SearchCLI(LightningCLI):
    """LightningCLI of ``TransformSearch`` and ``CalibrationDataModule``; hands the tokenizer over."""

    def before_fit(self) -> None:
        self.datamodule.connect(self.model.tokenizer)

    def before_validate(self) -> None:
        self.datamodule.connect(self.model.tokenizer)


def run_lightning(argv: list[str] | None) -> None:
    SearchCLI(
        TransformSearch,
        CalibrationDataModule,
        # The module ends the fit after its last block; one epoch per block phase otherwise.
        trainer_defaults={"max_epochs": -1, "num_sanity_val_steps": 0},
        save_config_kwargs={"overwrite": True},
        args=argv,
    )


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if (sys.argv[1:] if argv is None else argv)[:1] in (["ppl"], ["eval"]):
            parser = argparse.ArgumentParser(prog="lqsearch", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
            subparsers = parser.add_subparsers(required=True, metavar="command")
            _ppl_parser(subparsers)
            _eval_parser(subparsers)
            args = parser.parse_args(argv)
            args.run(args)
        else:
            run_lightning(argv)
    except ConfigError as err:
        print(f"lqsearch: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
