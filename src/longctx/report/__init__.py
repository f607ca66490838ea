"""Reports from run databases: tables (md/csv/tex), figures (png/svg) and one report.html."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..files import staged_folder
from .depth import depth_summary_table
from .figures import depth_heatmaps, length_curves, task_multiples
from .html import write_html
from .rows import load_rows, load_runs
from .tables import build_tables, group_table, interval_table, paired_table, write_tables

# What a report folder holds (the lab adds lab.md): only these may be replaced by a new report.
REPORT_NAMES = {"report.html", "tables", "figures", "lab.md"}


def make_report(db_paths, out: Path, reference: bool = False, threshold: float = 0.856, by=(), lead_tables=(),
                extra_figures=(), baseline: str | None = None) -> Path:
    """Tables, figures and report.html of the runs, written to a fresh folder that then replaces
    `out` whole; `lead_tables` and `extra_figures` (the lab's) come first in the page. The paired
    comparison is against `baseline`, by default the first model the first run's spec lists."""
    runs = load_runs(db_paths)
    rows, info = runs.rows, runs.info
    models = {r["model"] for r in rows}
    with staged_folder(out, REPORT_NAMES) as stage:
        tables = list(lead_tables) + build_tables(rows, info, reference=reference, threshold=threshold) + \
            [t for t in (depth_summary_table(rows),) if t] + [interval_table(rows)]
        for keys in by:
            tables.append(group_table(rows, list(keys)))
        from ..why.summary import why_tables

        tables += why_tables(runs.diagnostics)
        if len(models) > 1:
            tables.append(paired_table(rows, baseline or next((m for m in runs.order if m in models), min(models))))
        write_tables(tables, stage / "tables")
        (stage / "figures").mkdir()
        lead = [Path(shutil.copy2(p, stage / "figures" / Path(p).name)) for p in extra_figures]
        figures = lead + depth_heatmaps(rows, stage / "figures") + length_curves(rows, info, stage / "figures") + \
            task_multiples(rows, stage / "figures")
        write_html(stage, db_paths, tables, figures, rows)
    return out / "report.html"


__all__ = ["make_report", "build_tables", "load_rows"]
