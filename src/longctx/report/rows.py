"""The rows a report is made of: every prediction of the run databases (opened read-only), with
the columns the tables group by; and the checks that keep runs from being pooled by accident
(the same database twice, two runs' models that share a name).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from ..tasks import RULER_TASKS

# Sample metadata that becomes a column for grouping (besides model, task, base_task, length, depth).
GROUP_COLUMNS = ("haystack", "key_type", "value_type", "family")
GROUPABLE = ("model", "task", "base_task", "ruler_task", "length", "depth", "run", *GROUP_COLUMNS)
# Parameters that only place the needle: a variant that sets nothing else is still its base task
# in the RULER tables (RULER draws the depth per sample; a sweep over fixed depths covers the same
# task), and keeps its own axis in the depth tables.
PLACEMENT_PARAMS = {"depth"}


def task_params(task: str) -> dict[str, str]:
    """The parameters a task name sets explicitly: "niah_single_1:depth=50" -> {"depth": "50"}."""
    _, _, given = task.partition(":")
    return dict(item.split("=", 1) for item in given.split(",") if "=" in item)


def ruler_task(task: str) -> str | None:
    """The RULER task a row counts toward in the RULER tables, or None: the task itself, or its
    base task when the variant sets only placement parameters."""
    base = task.split(":")[0]
    return base if base in RULER_TASKS and set(task_params(task)) <= PLACEMENT_PARAMS else None


@dataclass
class Runs:
    """What a report reads from its runs, each database opened once, read-only."""
    rows: list[dict]  # every prediction, with the grouping columns (`load_rows`)
    info: dict[str, dict]  # model -> what the run recorded of it
    order: list[str]  # the models in the order the runs' specs list them (the default baseline first)
    diagnostics: list[dict]  # every `longctx why` row


def load_runs(db_paths) -> Runs:
    """The runs' predictions, model info, model order and diagnostics. A database given twice is
    refused; models of different runs that share a name are told apart by their run's name
    ("run/model"), the same way in every part."""
    from ..store import RunStore

    paths = [Path(p) for p in db_paths]
    _refuse_repeats(paths)
    read = []
    for path in paths:
        store = RunStore(path, mode="read")
        try:
            spec = json.loads(store.meta("spec") or "{}")
            listed = [m["name"] for m in spec.get("models", []) if isinstance(m, dict) and "name" in m]
            read.append((path, store.results(), store.model_info(), listed, store.diagnostics()))
        finally:
            store.close()
    labels = _run_labels(paths)
    shared = _shared_model_names([{r["model"] for r in results} | set(info) | set(listed)
                                  for _, results, info, listed, _ in read])
    runs = Runs([], {}, [], [])
    for path, results, info, listed, diagnostics in read:
        name = (lambda m, label=labels[path]: f"{label}/{m}" if m in shared else m)
        runs.rows += [_row(r, name(r["model"]), path) for r in results]
        runs.info |= {name(m): v for m, v in info.items()}
        runs.order += [name(m) for m in listed or sorted({r["model"] for r in results})]
        runs.diagnostics += [r | {"model": name(r["model"])} for r in diagnostics]
    return runs


def load_rows(db_paths) -> tuple[list[dict], dict[str, dict]]:
    """Every prediction of the runs, with base task, RULER task, depth and format columns; and
    model info (`load_runs`)."""
    runs = load_runs(db_paths)
    return runs.rows, runs.info


def _row(result: dict, model: str, path: Path) -> dict:
    meta = json.loads(result["meta"])
    params = meta.get("params", {})
    return result | {"model": model, "base_task": result["task"].split(":")[0], "ruler_task": ruler_task(result["task"]),
                     "depth": params.get("depth"), "run": str(path), "targets": json.loads(result["targets"]),
                     **{k: meta.get(k, params.get(k)) for k in GROUP_COLUMNS}}


def _refuse_repeats(paths: list[Path]) -> None:
    seen: dict[tuple[int, int], Path] = {}
    for path in paths:
        if not path.is_file():
            raise UsageError(f"run database not found: {path}")
        stat = os.stat(path)
        key = (stat.st_dev, stat.st_ino)
        if key in seen:
            raise UsageError(f"{path} is given twice (also as {seen[key]}): its samples would be counted twice")
        seen[key] = path


def _run_labels(paths: list[Path]) -> dict[Path, str]:
    """A short name per run: the database's file name without suffix, or its path where two share it."""
    stems = [p.stem for p in paths]
    return {p: p.stem if stems.count(p.stem) == 1 else str(p.with_suffix("")) for p in paths}


def _shared_model_names(per_run: list[set[str]]) -> set[str]:
    names: dict[str, int] = {}
    for models in per_run:
        for m in models:
            names[m] = names.get(m, 0) + 1
    return {m for m, count in names.items() if count > 1}
