import re
from pathlib import Path

import pytest
from transformers import GPT2Config

from lqsearch.cli import main


def run_cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    try:
        main(args)
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def test_ppl_on_a_local_model_and_corpus(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    corpus = tmp_path / "text.txt"
    corpus.write_text(" ".join(f"w{i % 127 + 1}" for i in range(400)))
    code, out, _ = run_cli(["ppl", "--model", str(tiny_model_dir), "--corpus", str(corpus), "--seqlen", "64", "--quant", "w4a4kv4"], capsys)
    assert code == 0
    assert re.search(r"^perplexity: \d+\.\d+$", out, re.M) and re.search(r"^tokens/s: \d+", out, re.M)
    assert "windows: 6 x 64" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--quant", "w1a4"], "quant spec 'w1a4': w bits 1 unsupported"),
        (["--corpus", "./missing.txt"], "corpus file './missing.txt' does not exist"),
        (["--model", "./absent-model"], "model path './absent-model' does not exist"),
    ],
)
def test_bad_input_is_one_line(args: list[str], message: str, capsys) -> None:
    code, _, err = run_cli(["ppl", *args], capsys)
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("lqsearch: error:")]
    assert len(lines) == 1 and message in lines[0]


def test_unknown_model_type_and_seqlen_too_long(tiny_model_dir: Path, tmp_path: Path, capsys) -> None:
    corpus = tmp_path / "short.txt"
    corpus.write_text("w1 w2 w3")
    code, _, err = run_cli(["ppl", "--model", str(tiny_model_dir), "--corpus", str(corpus), "--seqlen", "2048"], capsys)
    assert code == 2 and "seqlen 2048 is longer than the evaluation text (3 tokens)" in err
    GPT2Config(n_layer=1).save_pretrained(tmp_path / "gpt2")
    code, _, err = run_cli(["ppl", "--model", str(tmp_path / "gpt2"), "--corpus", str(corpus)], capsys)
    assert code == 2 and "model type 'gpt2' is not supported: lqsearch supports llama, mistral, qwen2" in err
