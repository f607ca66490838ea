"""One self-contained report.html for one run or several side by side: a headline summary per
model, the tables (sortable, scores colour-coded), the figures (embedded), the prediction explorer,
the failed predictions grouped by reason, and the runs' provenance. No file or network is needed
to open it."""

from __future__ import annotations

import base64
import html
import json
import re
import sqlite3
from pathlib import Path

from .explorer import explorer_html, failures_html
from .tables import Table

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1300px;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f3f3f3;cursor:pointer}img{max-width:100%;margin:1em 0}
details{margin:.4em 0}pre{white-space:pre-wrap;background:#f7f7f7;padding:.6em;max-height:24em;overflow:auto}
.meta{font-size:12px;color:#555}.summary td{font-size:15px}mark{background:#ffd54f}
table.predictions td,table.predictions th{text-align:left}table.predictions td.text{max-width:28em;white-space:pre-wrap}
tr.wrong td{background:#fdecea}tr.failed td{background:#eee;color:#777}.filters select{margin-right:.6em}
"""

# Run in the page: click a column's header to sort by it; and a check of every image and table
# (every image decoded, every table with rows), which the tests read.
SCRIPT = """
for (const th of document.querySelectorAll('table.sortable th')) {
  th.addEventListener('click', () => {
    const table = th.closest('table'), col = [...th.parentNode.children].indexOf(th);
    const key = tr => { const t = tr.children[col].textContent, v = parseFloat(t); return isNaN(v) ? t : v; };
    const up = th.dataset.order !== 'up';
    th.dataset.order = up ? 'up' : 'down';
    const rows = [...table.tBodies[0].rows].sort((a, b) => {
      const x = key(a), y = key(b);
      return (typeof x === typeof y ? (x < y ? -1 : x > y ? 1 : 0) : (typeof x === 'number' ? -1 : 1)) * (up ? 1 : -1);
    });
    table.tBodies[0].append(...rows);
  });
}
window.addEventListener('load', () => {
  const imgs = [...document.images], tables = [...document.querySelectorAll('table.sortable')];
  const bad = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length +
              tables.filter(t => t.querySelectorAll('tbody tr').length === 0).length;
  document.body.dataset.check = (bad ? 'bad:' + bad : 'ok') + ` images=${imgs.length} tables=${tables.length}`;
});
"""
# Tables whose 0-100 values are scores (coloured red to green); others (p values) stay plain.
SCORE_TABLES = ("table1", "effective", "task_", "depth_", "format_", "cells", "by_", "lab_")
SCORE = re.compile(r"^(\d+\.\d{2})( \(\d+\.\d{2}\))?$")


def _score_cell(text: str, colour: bool) -> str:
    match = SCORE.match(text) if colour else None
    if not match or not 0 <= float(match.group(1)) <= 100:
        return f"<td>{html.escape(text)}</td>"
    hue = round(1.2 * float(match.group(1)))  # 0: red, 120: green
    return f"<td style='background:hsl({hue},70%,85%)'>{html.escape(text)}</td>"


def _table_html(t: Table) -> str:
    colour = t.key.startswith(SCORE_TABLES)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in t.columns)
    body = "".join("<tr>" + "".join(_score_cell(str(c), colour and i > 0) for i, c in enumerate(r)) + "</tr>"
                   for r in t.rows)
    return (f"<h3>{html.escape(t.title)}</h3><table class='sortable'><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table>")


def _summary(tables: list[Table], figures: list[Path]) -> str:
    """Per model: Table 1's average over all lengths, its effective length and training length;
    and the length curves, the figure the study turns on."""
    by_key = {t.key: t for t in tables}
    first, effective = by_key.get("table1"), by_key.get("effective")
    parts = []
    if first and effective:
        eff = {r[0]: r for r in effective.rows}
        rows = [[r[0], r[-2], eff.get(r[0], ["", "-", "-", "-"])[2], eff.get(r[0], ["", "-"])[1], r[-1]] for r in first.rows]
        parts.append(_table_html(Table("summary", first.title.split(" per length")[0] + ": the headline",
                                       ["model", "average over lengths", "effective length", "training length",
                                        "n per cell"], rows)).replace("<table class='sortable'>",
                                                                      "<table class='sortable summary'>"))
    curves = [p for p in figures if p.stem == "length_curves" and p.suffix == ".png"]
    return "".join(parts) + "".join(_image(p) for p in curves)


def _image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def _run_meta(db: Path) -> str:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    meta = dict(con.execute("SELECT key, value FROM run"))
    con.close()
    spec = json.loads(meta.get("last_spec") or meta.get("spec") or "{}")
    items = [("run database", str(db)), ("source", _source(meta)), ("versions", meta.get("versions", "-")),
             ("host", meta.get("host", "-")), ("corpora (sha256)", meta.get("corpora", "-")),
             ("wall time", f"{float(meta['wall_seconds']) / 60:.1f} min" if meta.get("wall_seconds") else "-")]
    return "<div class='meta'>" + "".join(f"<p><b>{k}</b>: <code>{html.escape(v)}</code></p>" for k, v in items) + \
        f"<details><summary>resolved spec</summary><pre>{html.escape(json.dumps(spec, indent=1))}</pre></details></div>"


def _source(meta: dict) -> str:
    """The longctx commit the run ran from (runs made before `source` was recorded: git_revision)."""
    source = json.loads(meta.get("source") or "null")
    if source:
        return source["commit"] + (" (with uncommitted changes)" if source.get("dirty") else "")
    return meta.get("git_revision") or "- (not run from a longctx checkout)"


def write_html(out: Path, db_paths, tables: list[Table], figures: list[Path], rows: list[dict]) -> Path:
    pngs = [p for p in figures if p.suffix == ".png"]
    body = ["<h1>longctx report</h1>", _summary(tables, figures), "<h2>Tables</h2>",
            *(_table_html(t) for t in tables), "<h2>Figures</h2>", *(_image(p) for p in pngs),
            "<h2>Predictions</h2>", explorer_html(rows), "<h2>Failed predictions, by reason</h2>", failures_html(rows),
            "<h2>Runs</h2>", *(_run_meta(Path(db)) for db in db_paths)]
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>longctx report</title><style>{STYLE}</style>"
            f"</head><body>{''.join(body)}<script>{SCRIPT}</script></body></html>")
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
