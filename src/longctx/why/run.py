"""`longctx why SPEC`: run the spec's diagnostics over its models and samples into the run
database (re-running computes only what is missing), then write one CSV per diagnostic.

The samples are the run's own (the same generator, seed and tokenizer give the same ids), so a
diagnostic row joins the prediction and score of its sample.
"""

from __future__ import annotations

import csv
from pathlib import Path

from ..config import RunSpec
from ..corpora import DataPaths
from ..errors import UsageError
from ..generate import SampleCache
from ..models import load_model
from ..runner import model_context, model_info, plan, release
from ..store import RunStore
from . import load_diagnostic

DEFAULT = ("attention", "rope", "retrieval_heads", "state", "state_decay", "position_loss")


def run_why(spec: RunSpec, store: RunStore, names: tuple[str, ...], progress=None) -> None:
    """Every missing measurement of the diagnostics `names` for every model of the spec.
    `progress(model, label, n)` is called after each stored measurement."""
    p = plan(spec)
    options = {"rope": {"target_length": max(spec.lengths)},
               "position_loss": {"length": max(spec.lengths), "data": DataPaths(spec.data_dir)}}
    diagnostics = [load_diagnostic(n, **options.get(n, {})) for n in names]
    for model_spec in spec.models:
        adapter = load_model(model_spec.backend, **model_spec.args)
        try:
            store.set_model_info(model_spec.name, model_info(model_spec, adapter))
            ctx = model_context(spec, model_spec, adapter)
            cache = SampleCache()
            cells = {(task.name, length): cache.get(task, length, spec.samples, ctx)
                     for task in p.tasks for length in spec.lengths}
            for samples in cells.values():
                store.add_samples(model_spec.name, samples)
            for d in diagnostics:
                _diagnose(store, model_spec.name, adapter, d, cells, progress)
        finally:
            release(adapter)
            del adapter


def _diagnose(store: RunStore, model: str, adapter, d, cells: dict, progress) -> None:
    """One diagnostic's missing measurements of one model: once for the model (a diagnostic that
    does not apply, or one measured over all the samples), else sample by sample."""
    done = store.diagnosed(d.name, model)
    reason = d.skip_reason(adapter)
    if reason or not d.per_sample:
        if "" not in done:
            rows = [{"skipped": reason}] if reason else d.measure(adapter, [s for c in cells.values() for s in c])
            store.add_diagnostic(d.name, model, "", rows)
        return
    for (task, length), samples in cells.items():
        for s in samples:
            if s.id in done:
                continue
            why_not = d.skip_reason(adapter, s)
            store.add_diagnostic(d.name, model, s.id, [{"skipped": why_not}] if why_not else d.measure(adapter, s))
            if progress:
                progress(model, f"{d.name} {task}@{length}", 1)


def write_csvs(store: RunStore, out: Path) -> list[Path]:
    """One CSV per diagnostic under `out`, with every row's model, sample, task, length and depth;
    a model or sample the diagnostic does not apply to is a row with its reason (`skipped`)."""
    rows = store.diagnostics()
    if not rows:
        raise UsageError(f"{store.path} holds no diagnostics yet: run `longctx why` on its spec")
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in sorted({r.get("table") or r["diagnostic"] for r in rows}):
        mine = [{k: v for k, v in r.items() if k not in ("diagnostic", "table")} for r in rows
                if (r.get("table") or r["diagnostic"]) == name]
        columns = [k for k in dict.fromkeys(k for r in mine for k in r) if k != "skipped"]
        columns += ["skipped"] if any("skipped" in r for r in mine) else []
        path = out / f"{name}.csv"
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, columns)
            writer.writeheader()
            writer.writerows(mine)
        paths.append(path)
    return paths
