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


def set_aside(path: Path, *companions: Path) -> None:
    """Rename `path` (and its companion files, e.g. SQLite's -wal/-shm) to `<name>.old-N`."""
    n = 1
    while path.with_name(f"{path.name}.old-{n}").exists():
        n += 1
    for p in (path, *companions):
        if p.exists():
            p.rename(p.with_name(f"{p.name}.old-{n}"))


@contextlib.contextmanager
def exclusive_lock(lock: Path, what: str) -> Iterator[None]:
    """Hold `lock` (a file beside what it guards, holding the holder's pid) for the block, or
    refuse at once, naming the process that holds it: two runs on one database would otherwise
    both compute the same predictions and the second fail when it stores them."""
    import fcntl

    from .errors import UsageError

    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise UsageError(f"cannot lock {what} ({lock}): {e.strerror or e}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise UsageError(f"{what} is in use by another longctx process (pid {holder}); wait for it to end or "
                         "stop it") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        # The file stays (removing it would let a process holding the old one and a newcomer both run).
        os.ftruncate(fd, 0)
        os.close(fd)
