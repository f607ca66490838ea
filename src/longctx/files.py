"""Where longctx keeps its caches, and atomic file writes: a reader (or a crashed writer's rerun)
sees the old file or the new one, never half of one, even with several processes writing the
same cache entry."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator


def default_cache_dir() -> Path:
    """$LONGCTX_CACHE, else ~/.cache/longctx: samples, converted tokenizers, corpora, data."""
    return Path(os.environ.get("LONGCTX_CACHE", Path.home() / ".cache" / "longctx"))


@contextlib.contextmanager
def atomic_writer(path: Path) -> Iterator[IO[str]]:
    """A text file handle whose content replaces `path` when the block ends without an error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
