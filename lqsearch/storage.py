"""Where lqsearch keeps prepared artefacts, and how it writes them (always atomically)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def cache_dir() -> Path:
    """Root of prepared models and corpora: ``$LQSEARCH_CACHE`` or ``~/.cache/lqsearch``."""
    root = os.environ.get("LQSEARCH_CACHE") or Path.home() / ".cache" / "lqsearch"
    return Path(root)


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a scratch path beside ``path``; once the block has written it, it replaces ``path``
    in one rename, so readers see either the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_dir_atomic(path: Path, fill: Callable[[Path], None]) -> None:
    """Let ``fill`` populate a scratch folder, then move it to ``path`` in one rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        fill(scratch)
        if path.exists():
            shutil.rmtree(path)
        os.replace(scratch, path)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
