"""Where longctx keeps its caches, and atomic file writes: a reader (or a crashed writer's rerun)
sees the old file or the new one, never half of one, even with several processes writing the
same cache entry."""

from __future__ import annotations

import contextlib
import os
import shutil
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


@contextlib.contextmanager
def staged_folder(out: Path, replaceable: set[str]) -> Iterator[Path]:
    """A fresh folder to write into; when the block ends without an error it takes the place of
    `out` whole, so no file of an earlier version survives beside the new ones (a stale table
    that a paper `\\input`s). `out` may be absent, empty, or hold only names in `replaceable` (an
    earlier version of the same output); anything else is refused before a file is written."""
    from .errors import UsageError

    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} is a file; give a folder for the output")
    if out.is_dir() and (foreign := sorted(p.name for p in out.iterdir() if p.name not in replaceable)):
        raise UsageError(f"{out} holds files this command did not write ({', '.join(foreign[:3])}); "
                         "give an empty folder or an earlier output's")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.staging-"))
    except OSError as e:
        raise UsageError(f"cannot write to {out.parent}: {e.strerror or e}") from None
    try:
        yield stage
        if out.is_dir():
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
            os.replace(out, old / out.name)
            os.replace(stage, out)
            shutil.rmtree(old)
        else:
            os.replace(stage, out)
    finally:
        if stage.exists():
            shutil.rmtree(stage)
