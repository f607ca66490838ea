"""One self-contained report.html for one run or several side by side: tables, figures (embedded),
run metadata, failed samples with their reasons, and a few example prompts and outputs per cell."""

from __future__ import annotations

import base64
import html
import json
import sqlite3
from pathlib import Path

from .tables import Table

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f3f3f3}img{max-width:100%;margin:1em 0}
details{margin:.4em 0}pre{white-space:pre-wrap;background:#f7f7f7;padding:.6em;max-height:20em;overflow:auto}
.meta{font-size:12px;color:#555}
"""

# Run in the page: confirms every image decoded and every table has rows (the tests read the result).
CHECK = """
window.addEventListener('load', () => {
  const imgs = [...document.images], tables = [...document.querySelectorAll('table')];
  const bad = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length +
              tables.filter(t => t.querySelectorAll('tbody tr').length === 0).length;
  document.body.dataset.check = (bad ? 'bad:' + bad : 'ok') + ` images=${imgs.length} tables=${tables.length}`;
});
"""


def _table_html(t: Table) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in t.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in t.rows)
    return f"<h3>{html.escape(t.title)}</h3><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


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


def _failures(rows: list[dict], limit: int = 200) -> str:
    failed = [r for r in rows if r["error"]]
    if not failed:
        return "<p>No failed predictions.</p>"
    t = Table("failed", f"failed predictions ({len(failed)}, first {min(limit, len(failed))})",
              ["model", "task", "length", "index", "prompt tokens", "reason"],
              [[r["model"], r["task"], r["length"], r["idx"], r["prompt_tokens"], r["error"]] for r in failed[:limit]])
    return _table_html(t)


def _examples(db_paths, rows: list[dict]) -> str:
    by_id = {(r["model"], r["sample_id"]): r for r in rows}
    parts = []
    for db in db_paths:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        examples = con.execute("SELECT e.model, e.sample_id, e.prompt, s.targets FROM examples e "
                               "JOIN samples s USING (model, sample_id) ORDER BY e.model, s.task, s.length, s.idx").fetchall()
        con.close()
        for model, sid, prompt, targets in examples:
            r = by_id.get((model, sid))
            if r is None:
                continue
            score = "-" if r["score"] is None else f"{100 * r['score']:.0f}"
            parts.append(f"<details><summary>{html.escape(model)} · {html.escape(r['task'])} @ {r['length']} · "
                         f"sample {r['idx']} · score {score}</summary><p><b>targets</b>: "
                         f"{html.escape(', '.join(json.loads(targets)))}</p><p><b>output</b></p>"
                         f"<pre>{html.escape(r['text'] or r['error'] or '')}</pre><p><b>prompt</b> "
                         f"({r['prompt_tokens']} tokens)</p><pre>{html.escape(prompt)}</pre></details>")
    return "".join(parts) or "<p>No examples stored.</p>"


def write_html(out: Path, db_paths, tables: list[Table], figures: list[Path], rows: list[dict]) -> Path:
    pngs = [p for p in figures if p.suffix == ".png"]
    body = ["<h1>longctx report</h1>", *(_run_meta(Path(db)) for db in db_paths), "<h2>Tables</h2>",
            *(_table_html(t) for t in tables), "<h2>Figures</h2>", *(_image(p) for p in pngs),
            "<h2>Failed samples</h2>", _failures(rows), "<h2>Examples</h2>", _examples(db_paths, rows)]
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>longctx report</title><style>{STYLE}</style>"
            f"<script>{CHECK}</script></head><body>{''.join(body)}</body></html>")
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
