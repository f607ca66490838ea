"""Reports from run databases: tables (md/csv/tex), figures (png/svg) and one report.html."""

from __future__ import annotations

from pathlib import Path

from .figures import depth_heatmaps, length_curves, task_multiples
from .html import write_html
from .tables import build_tables, group_table, interval_table, load_rows, paired_table, write_tables


def make_report(db_paths, out: Path, reference: bool = False, threshold: float = 0.856, by=(), lead_tables=(),
                extra_figures=()) -> Path:
    """Tables, figures and report.html of the runs; `lead_tables` and `extra_figures` (the lab's)
    come first in the page."""
    rows, info = load_rows(db_paths)
    tables = list(lead_tables) + build_tables(rows, info, reference=reference, threshold=threshold) + \
        [interval_table(rows)]
    for keys in by:
        tables.append(group_table(rows, list(keys)))
    if len({r["model"] for r in rows}) > 1:
        tables.append(paired_table(rows))
    write_tables(tables, out / "tables")
    figures = list(extra_figures) + depth_heatmaps(rows, out / "figures") + length_curves(rows, info, out / "figures") + \
        task_multiples(rows, out / "figures")
    return write_html(out, db_paths, tables, figures, rows)


__all__ = ["make_report", "build_tables", "load_rows"]
