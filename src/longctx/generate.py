"""Sample sets: generate (task x length) cells once, cache them by tokenizer fingerprint, write RULER's layout.

Samples are independent per index (each has its own RNG), so a cached cell of m samples is
extended to n > m by generating only indices m..n-1. Cache files are written atomically.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Iterable, Iterator

from .corpora import DataPaths
from .files import atomic_writer
from .tasks import generate_samples
from .tasks.base import GENERATOR_VERSION, GenContext, GenOptions, TaskSpec
from .tokenizer import Tokenizer, default_cache_dir
from .types import Sample, stable_hash


def cell_key(spec: TaskSpec, length: int, ctx: GenContext) -> str:
    data = ctx.data
    options = asdict(ctx.options) | {"verify": None}
    if not options["reserve"]:  # cells cached before the reserve existed keep their key
        del options["reserve"]
    return stable_hash(spec.name, spec.params, length, options,
                       ctx.tok.fingerprint, str(data.data_dir), str(data.essays), str(data.squad),
                       str(data.hotpotqa), GENERATOR_VERSION)


class SampleCache:
    def __init__(self, root: Path | None = None):
        self.root = (root or default_cache_dir()) / "samples"

    def path(self, spec: TaskSpec, length: int, ctx: GenContext) -> Path:
        return self.root / ctx.tok.fingerprint / f"{cell_key(spec, length, ctx)}.jsonl"

    def get(self, spec: TaskSpec, length: int, n: int, ctx: GenContext) -> list[Sample]:
        path = self.path(spec, length, ctx)
        try:
            have = read_jsonl(path) if path.exists() else []
        except (ValueError, KeyError, TypeError):  # a damaged cache file is regenerated, not fatal
            have = []
        if len(have) < n:
            have += generate_samples(spec, length, range(len(have), n), ctx)
            write_jsonl_atomic(path, have)
        return have[:n]


def read_jsonl(path: Path) -> list[Sample]:
    with open(path, encoding="utf-8") as f:
        return [Sample.from_ruler_row(json.loads(line)) for line in f if line.strip()]


def write_jsonl_atomic(path: Path, samples: Iterable[Sample]) -> None:
    with atomic_writer(path) as f:
        for s in samples:
            f.write(json.dumps(s.to_ruler_row(), ensure_ascii=True) + "\n")


def iter_cells(specs: list[TaskSpec], lengths: list[int]) -> Iterator[tuple[TaskSpec, int]]:
    for length in lengths:
        for spec in specs:
            yield spec, length


def generate_to_dir(specs: list[TaskSpec], lengths: list[int], n: int, tokenizer: Tokenizer,
                    options: GenOptions, data: DataPaths, out: Path, cache: SampleCache | None,
                    progress=None) -> dict[tuple[str, int], list[Sample]]:
    """Write `out/<length>/<task>/validation.jsonl` for every cell; returns the samples by cell."""
    ctx = GenContext(tokenizer, options, data)
    result = {}
    for spec, length in iter_cells(specs, lengths):
        samples = cache.get(spec, length, n, ctx) if cache else generate_samples(spec, length, range(n), ctx)
        write_jsonl_atomic(out / str(length) / spec.name / "validation.jsonl", samples)
        result[(spec.name, length)] = samples
        if progress:
            progress(spec, length, samples)
    return result
