"""Named and local text corpora, split into a calibration part and a disjoint evaluation part.

- ``enwiki-sample``: the English Wikipedia sample inside gensim's test data (offline).
  Redirects are dropped, markup is stripped by gensim's ``filter_wiki``, and an
  article goes to the evaluation part when the first 8 hex digits of the SHA-256 of
  its title are divisible by 5 (about a fifth of the articles), else to calibration.
- ``wikitext2`` (wikitext-2-raw-v1: train / test) and ``c4`` (one train / validation
  shard of allenai/c4) through ``datasets``, for machines with a hub.
- a local ``.txt``, ``.jsonl`` (``text`` field per line) or ``.parquet`` (``text``
  column) file, used whole for whichever part it is given as.
Prepared text is cached under ``cache_dir()/corpora`` and written atomically.
"""

from __future__ import annotations

import bz2
import hashlib
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

from lqsearch.errors import ConfigError
from lqsearch.storage import cache_dir, write_text_atomic

Split = Literal["calibration", "evaluation"]
SPLITS: tuple[Split, ...] = ("calibration", "evaluation")
LOCAL_SUFFIXES = (".txt", ".jsonl", ".parquet")

ENWIKI_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


def enwiki_split_of(title: str) -> Split:
    """The documented split rule of ``enwiki-sample``: a hash of the article title."""
    return "evaluation" if int(hashlib.sha256(title.encode()).hexdigest()[:8], 16) % 5 == 0 else "calibration"


def _enwiki_articles() -> Iterator[tuple[str, str]]:
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki
    from gensim.test.utils import datapath

    with bz2.open(datapath(ENWIKI_FILE)) as dump:
        for title, markup, _ in extract_pages(dump):
            if markup.lstrip().upper().startswith("#REDIRECT"):
                continue
            text = filter_wiki(markup).replace("'''", "").replace("''", "")
            text = re.sub(r"\n{3,}", "\n\n", text).strip()
            if text:
                yield title, f"{title}\n\n{text}"


def _enwiki_sample(split: Split) -> str:
    return "\n\n".join(text for title, text in _enwiki_articles() if enwiki_split_of(title) == split)


def _hub_dataset(path: str, name: str | None, splits: dict[Split, str], data_files: dict[Split, str] | None = None) -> Callable[[Split], str]:
    def load(split: Split) -> str:
        import datasets

        kwargs = {"data_files": {splits[split]: data_files[split]}} if data_files else {}
        try:
            rows = datasets.load_dataset(path, name, split=splits[split], **kwargs)
        except Exception as err:  # datasets raises many types for "no network" / "not cached"
            raise ConfigError(
                f"could not load dataset {path!r} ({type(err).__name__}); offline, use --corpus enwiki-sample or a local .txt/.jsonl/.parquet file"
            ) from err
        return "\n\n".join(rows["text"])

    return load


NAMED_CORPORA: dict[str, Callable[[Split], str]] = {
    "enwiki-sample": _enwiki_sample,
    "wikitext2": _hub_dataset("wikitext", "wikitext-2-raw-v1", {"calibration": "train", "evaluation": "test"}),
    "c4": _hub_dataset(
        "allenai/c4",
        None,
        {"calibration": "train", "evaluation": "validation"},
        {"calibration": "en/c4-train.00000-of-01024.json.gz", "evaluation": "en/c4-validation.00000-of-00008.json.gz"},
    ),
}


def _read_local(path: Path) -> str:
    if path.suffix == ".txt":
        return path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        lines = path.read_text(encoding="utf-8").splitlines()
        try:
            return "\n\n".join(json.loads(line)["text"] for line in lines if line.strip())
        except (KeyError, json.JSONDecodeError) as err:
            raise ConfigError(f"{path}: every line must be a JSON object with a 'text' field ({err})") from err
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    if "text" not in table.column_names:
        raise ConfigError(f"{path}: parquet file needs a 'text' column, found {table.column_names}")
    return "\n\n".join(table.column("text").to_pylist())


def load_text(corpus: str, split: Split) -> str:
    """The text of ``corpus`` for ``split``: a named corpus (cached) or a local file (read as is)."""
    if split not in SPLITS:
        raise ConfigError(f"split {split!r} unknown: use one of {SPLITS}")
    if corpus in NAMED_CORPORA:
        cached = cache_dir() / "corpora" / f"{corpus}.{split}.txt"
        if not cached.is_file():
            write_text_atomic(cached, NAMED_CORPORA[corpus](split))
        return cached.read_text(encoding="utf-8")
    path = Path(corpus).expanduser()
    if path.suffix not in LOCAL_SUFFIXES:
        raise ConfigError(f"corpus {corpus!r} is neither a named corpus {sorted(NAMED_CORPORA)} nor a {'/'.join(LOCAL_SUFFIXES)} file")
    if not path.is_file():
        raise ConfigError(f"corpus file {corpus!r} does not exist")
    return _read_local(path)
