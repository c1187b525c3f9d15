import json
from pathlib import Path

import pytest
import torch

from lqsearch.data import evaluation_windows, load_text
from lqsearch.data.corpora import enwiki_split_of
from lqsearch.errors import ConfigError


def test_enwiki_split_rule_is_fixed() -> None:
    titles = [f"Article {i}" for i in range(1000)]
    evaluation = [t for t in titles if enwiki_split_of(t) == "evaluation"]
    assert 150 < len(evaluation) < 250  # about a fifth
    assert [enwiki_split_of(t) for t in titles] == [enwiki_split_of(t) for t in titles]


def test_enwiki_sample_parts_are_disjoint_real_text() -> None:
    calibration = load_text("enwiki-sample", "calibration")
    evaluation = load_text("enwiki-sample", "evaluation")
    assert len(calibration) > 1_000_000 and len(evaluation) > 300_000
    assert "#REDIRECT" not in calibration and "'''" not in evaluation
    calib_titles = {chunk.split("\n", 1)[0] for chunk in calibration.split("\n\n")}
    assert evaluation.startswith("Anarchism\n\n") and "Anarchism" not in calib_titles


def test_local_files(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("hello world")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "one"}) + "\n\n" + json.dumps({"text": "two"}) + "\n")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["x", "y"]}), tmp_path / "c.parquet")
    assert load_text(str(tmp_path / "a.txt"), "evaluation") == "hello world"
    assert load_text(str(tmp_path / "b.jsonl"), "calibration") == "one\n\ntwo"
    assert load_text(str(tmp_path / "c.parquet"), "evaluation") == "x\n\ny"


def test_bad_corpora(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_text(str(tmp_path / "missing.txt"), "evaluation")
    with pytest.raises(ConfigError, match="neither a named corpus"):
        load_text("wikipedia-full", "evaluation")
    (tmp_path / "bad.jsonl").write_text('{"body": "no text field"}\n')
    with pytest.raises(ConfigError, match="'text' field"):
        load_text(str(tmp_path / "bad.jsonl"), "evaluation")


def test_evaluation_windows() -> None:
    ids = torch.arange(1000)
    windows = evaluation_windows(ids, 100)
    assert windows.shape == (10, 100) and torch.equal(windows[3], torch.arange(300, 400))
    spread = evaluation_windows(ids, 100, max_windows=4)
    assert [int(w[0]) for w in spread] == [0, 300, 600, 900]  # evenly spread, first and last included
    with pytest.raises(ConfigError, match="longer than the evaluation text"):
        evaluation_windows(ids, 2048)
