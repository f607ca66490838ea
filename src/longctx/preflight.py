"""Everything about a run that can be checked without loading a model, checked for every model of
the spec before the run database is created or bound: a typo in the second model's path is found
in a second, not after the first model's whole sweep, and a failed start binds nothing."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .config import ModelSpec, RunSpec
from .corpora import DataPaths
from .errors import UsageError
from .host import available_memory
from .tasks.base import TaskSpec

# Memory to generate one cell, per token of its length: fitting one sample peaked at up to ~400
# bytes a token (niah_multikey_2 at 16K and 64K tokens, tracemalloc), and each fitted prompt is
# kept (its text, a few bytes a token, with its bookkeeping) until the cell is stored.
FITTING_BYTES_PER_TOKEN = 512
KEPT_BYTES_PER_TOKEN = 16
# Files that make a folder a tokenizer (transformers' fast and slow formats).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")
# Backends whose `path` folder is a transformers checkpoint.
CHECKPOINT_BACKENDS = {"hf", "mamba_ssm", "vllm"}


def preflight(spec: RunSpec, tasks: list[TaskSpec], db_path: Path) -> None:
    """Raise a UsageError for the first thing that would stop this run."""
    from .models import check_options

    for model in spec.models:
        check_options(model.backend, model.args)
        for key in ("path", "tokenizer"):
            check_local_path(model, key)
    needed_corpora(tasks, DataPaths(spec.data_dir))
    check_memory(spec)
    check_writable(db_path)


def check_local_path(model: ModelSpec, key: str) -> None:
    """A model's `path` or `tokenizer` that names a local file or folder must be one the backend
    can read (a hub id, which cannot be checked offline, is left to the backend)."""
    from .models import resolve_alias

    value = resolve_alias(model.args.get(key))
    if not isinstance(value, str):
        return
    p = Path(value).expanduser()
    local = p.is_absolute() or value.startswith((".", "~")) or p.suffix == ".gguf" or p.exists()
    if not local:
        return
    what = f"model {model.name!r}: {key} {value}"
    if not p.exists():
        raise UsageError(f"{what} not found")
    if p.is_file():
        if p.suffix == ".gguf" and not _starts_with(p, b"GGUF"):
            raise UsageError(f"{what} is not a GGUF file (it does not start with GGUF's magic bytes)")
        return
    if key == "path" and model.backend in CHECKPOINT_BACKENDS and not (p / "config.json").exists():
        raise UsageError(f"{what} is a folder without a config.json: not a transformers checkpoint")
    if (key == "tokenizer" or "tokenizer" not in model.args) and model.backend != "mamba_ssm" and \
            not any((p / name).exists() for name in TOKENIZER_FILES) and not any(p.glob("*.gguf")):
        raise UsageError(f"{what} holds no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...); "
                         "give the model's args a 'tokenizer'")


def _starts_with(path: Path, magic: bytes) -> bool:
    with open(path, "rb") as f:
        return f.read(len(magic)) == magic


def needed_corpora(tasks: list[TaskSpec], data: DataPaths) -> dict[str, Path]:
    """The corpora the tasks read, by name; a missing one raises (DataMissingError, with the
    command that fetches it)."""
    out = {}
    for task in tasks:
        if task.family == "niah" and task.get("haystack") == "essay":
            out["essays"] = data.essays_path()
        if task.family == "qa":
            dataset = task.get("dataset", "squad")
            out[dataset] = data.squad_path() if dataset == "squad" else data.hotpotqa_path()
    return out


def corpus_hashes(tasks: list[TaskSpec], data: DataPaths) -> dict[str, str]:
    """sha256 of each corpus the tasks read (a folder of essays: over its files' names and bytes),
    recorded in the run: the samples depend on the corpora's content, not on where they live."""
    out = {}
    for name, path in needed_corpora(tasks, data).items():
        digest = hashlib.sha256()
        for f in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if f.is_file():
                digest.update(f.relative_to(path).as_posix().encode() if path.is_dir() else b"")
                digest.update(f.read_bytes())
        out[name] = digest.hexdigest()
    return out


def check_memory(spec: RunSpec) -> None:
    """A cell (the samples of one task at one length) must fit in the memory this machine can give
    while it is generated."""
    length = max(spec.lengths)
    need = length * (FITTING_BYTES_PER_TOKEN + spec.samples * KEPT_BYTES_PER_TOKEN)
    room = available_memory()
    if room is not None and need > room:
        raise UsageError(f"{spec.samples} samples of {length:,} tokens need about {need / 2 ** 30:.1f} GiB to "
                         f"generate and this machine can give {room / 2 ** 30:.1f} GiB: use shorter lengths or "
                         "fewer samples")


def check_writable(db_path: Path) -> None:
    """The run database (and SQLite's -wal and -shm files beside it) can be written: its folder is
    made (as the run would) and a file is written there and removed (permission bits say nothing
    to root, nor about read-only file systems)."""
    import tempfile

    if db_path.is_dir():
        raise UsageError(f"the run database {db_path} is a folder; give a file path")
    try:
        db_path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=db_path.parent):
            pass
    except OSError as e:
        raise UsageError(f"cannot write the run database {db_path}: {e.strerror or e}") from None
    if db_path.exists() and not os.access(db_path, os.W_OK):
        raise UsageError(f"cannot write the run database {db_path}: the file is read-only")
