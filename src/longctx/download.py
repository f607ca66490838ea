"""`longctx data download`: fetch the corpora from RULER's public sources into the data directory.

Every file is checked (sha256 for the essays, the official git blob id for SQuAD and HotpotQA)
and written atomically; a file already present and valid is not fetched again.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Callable

from . import sources
from .corpora import ESSAYS_DIR, HOTPOTQA, SQUAD
from .errors import UsageError

WHAT = ("essays", "squad", "hotpotqa")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _fetch(urls: list[str], check: Callable[[bytes], bool], timeout: float) -> bytes:
    import httpx

    errors = []
    for url in urls:
        try:
            r = httpx.get(url, follow_redirects=True, timeout=timeout)
            r.raise_for_status()
        except httpx.HTTPError as e:
            errors.append(f"{url}: {e}")
            continue
        if check(r.content):
            return r.content
        errors.append(f"{url}: checksum mismatch")
    raise UsageError("download failed: " + "; ".join(errors))


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".part")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def plan(data_dir: Path, essay_url: str = sources.ESSAY_URL):
    """(what, target path, urls, checker) for every file of the corpora."""
    for name, digest in sources.ESSAY_SHA256.items():
        yield ("essays", data_dir / ESSAYS_DIR / name, [essay_url.format(name=name)],
               lambda b, d=digest: hashlib.sha256(b).hexdigest() == d)
    yield ("squad", data_dir / SQUAD, sources.SQUAD_URLS, lambda b: git_blob_sha1(b) == sources.SQUAD_GIT_BLOB)
    yield ("hotpotqa", data_dir / HOTPOTQA, sources.HOTPOTQA_URLS,
           lambda b: git_blob_sha1(b) == sources.HOTPOTQA_GIT_BLOB)


def download(data_dir: Path, only: tuple[str, ...] = WHAT, timeout: float = 60.0,
             essay_url: str = sources.ESSAY_URL, log: Callable[[str], None] = print) -> int:
    """Fetch what is missing; returns the number of files written."""
    bad = set(only) - set(WHAT)
    if bad:
        raise UsageError(f"unknown corpus {sorted(bad)}; choose from {', '.join(WHAT)}")
    written = 0
    for what, path, urls, check in plan(data_dir, essay_url):
        if what not in only:
            continue
        if path.exists() and check(path.read_bytes()):
            continue
        _write(path, _fetch(urls, check, timeout))
        written += 1
        log(f"fetched {path}")
    return written
