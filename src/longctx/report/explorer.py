"""The report's prediction explorer: every prediction beside its targets, filterable by model, task,
length, depth and verdict (right, wrong, failed), with the prompt shown where the run kept it
(each cell's first two samples and its first wrong answers) and the targets highlighted in it; and
the failed predictions grouped by reason. All data is embedded in the page: it works offline.

The page reads filters from its address too (`report.html#model=B&verdict=wrong`; `&prompt` opens
the first matching prompt), and writes the number of matching predictions into
`body[data-explorer]`, so a headless browser can check them.
"""

from __future__ import annotations

import html
import json
import re
from collections import defaultdict

# A page must stay openable: beyond this many predictions, wrong and failed ones are kept first.
MAX_ROWS = 20000
MAX_OUTPUT_CHARS = 400

SCRIPT = r"""
(() => {
  const data = JSON.parse(document.getElementById('predictions').textContent);
  const box = document.getElementById('explorer');
  const keys = ['model', 'task', 'length', 'depth', 'verdict'];
  const field = {model: 'm', task: 't', length: 'n', depth: 'd', verdict: 'v'};
  const selects = {};
  for (const key of keys) {
    const s = document.createElement('select');
    s.dataset.key = key;
    const values = [...new Set(data.rows.map(r => String(r[field[key]])))].sort((a, b) => a.localeCompare(b, undefined, {numeric: true}));
    s.append(new Option(key + ': all', ''));
    for (const v of values) s.append(new Option(v, v));
    s.addEventListener('change', show);
    selects[key] = s;
    box.querySelector('.filters').append(s);
  }
  const tbody = box.querySelector('tbody'), note = box.querySelector('.note'), prompt = box.querySelector('.prompt');
  function cell(tr, text) { const td = document.createElement('td'); td.textContent = text; tr.append(td); return td; }
  function highlight(text, targets) {
    const pre = document.createElement('pre');
    const hits = targets.filter(t => t).map(t => t.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'));
    if (!hits.length) { pre.textContent = text; return pre; }
    let last = 0;
    for (const m of text.matchAll(new RegExp(hits.join('|'), 'g'))) {
      pre.append(text.slice(last, m.index));
      const mark = document.createElement('mark'); mark.textContent = m[0]; pre.append(mark);
      last = m.index + m[0].length;
    }
    pre.append(text.slice(last));
    return pre;
  }
  function show() {
    const want = Object.fromEntries(keys.map(k => [k, selects[k].value]));
    const rows = data.rows.filter(r => keys.every(k => !want[k] || String(r[field[k]]) === want[k]));
    tbody.replaceChildren();
    for (const r of rows.slice(0, 500)) {
      const tr = document.createElement('tr');
      tr.className = r.v;
      for (const v of [r.m, r.t, r.n, r.d, r.i, r.s]) cell(tr, v);
      cell(tr, r.e || r.o).className = 'text';
      cell(tr, r.g.join(', ')).className = 'text';
      cell(tr, r.p >= 0 ? 'show' : '');
      if (r.p >= 0) tr.addEventListener('click', () => {
        const pre = highlight(data.prompts[r.p], r.g);
        prompt.replaceChildren(Object.assign(document.createElement('p'),
          {textContent: `${r.m} · ${r.t} @ ${r.n} · sample ${r.i}: the prompt, targets marked`}), pre);
        const mark = pre.querySelector('mark');  // the needle in view
        if (mark) pre.scrollTop = mark.offsetTop - pre.offsetTop - pre.clientHeight / 3;
      });
      tbody.append(tr);
    }
    note.textContent = `${rows.length} of ${data.rows.length} predictions match` +
      (rows.length > 500 ? '; the first 500 are shown' : '') + (data.truncated ? `; ${data.truncated} more were left out of this page` : '');
    document.body.dataset.explorer = `rows=${rows.length}`;
  }
  let open = false;
  for (const part of decodeURIComponent(location.hash.slice(1)).split('&')) {
    const [k, v] = part.split('=');
    if (selects[k] && v !== undefined) selects[k].value = v;
    if (k === 'prompt') open = true;
  }
  show();
  if (open) [...tbody.rows].find(tr => tr.lastChild.textContent === 'show')?.click();
})();
"""


def verdict(row: dict) -> str:
    if row["error"] is not None or row["score"] is None:
        return "failed"
    return "right" if row["score"] >= 1 else "wrong"


def explorer_html(rows: list[dict]) -> str:
    """The explorer's markup, its data and its script."""
    data = _data(rows)
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    return (f"<div id='explorer'><div class='filters'></div><p class='note'></p><table class='predictions'><thead>"
            f"<tr><th>model</th><th>task</th><th>length</th><th>depth</th><th>sample</th><th>score</th>"
            f"<th>output (or why it failed)</th><th>targets</th><th>prompt</th></tr></thead><tbody></tbody></table>"
            f"<div class='prompt'></div></div><script type='application/json' id='predictions'>{payload}</script>"
            f"<script>{SCRIPT}</script>")


def _data(rows: list[dict]) -> dict:
    kept = sorted(rows, key=lambda r: {"failed": 0, "wrong": 1, "right": 2}[verdict(r)])[:MAX_ROWS]
    prompts, out = [], []
    for r in sorted(kept, key=lambda r: (r["model"], r["task"], r["length"], r["idx"])):
        if r["kept_prompt"] is not None:
            prompts.append(r["kept_prompt"])
        out.append({"m": r["model"], "t": r["task"], "n": r["length"], "d": "-" if r["depth"] is None else r["depth"],
                    "i": r["idx"], "s": "-" if r["score"] is None else round(100 * r["score"], 1), "v": verdict(r),
                    "e": r["error"], "o": (r["text"] or "")[:MAX_OUTPUT_CHARS], "g": r["targets"],
                    "p": len(prompts) - 1 if r["kept_prompt"] is not None else -1})
    return {"rows": out, "prompts": prompts, "truncated": len(rows) - len(kept)}


def failures_html(rows: list[dict], examples: int = 5) -> str:
    """Failed predictions grouped by reason (numbers in a reason do not split a group)."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if verdict(r) == "failed":
            groups[re.sub(r"\d+", "N", r["error"] or "no score")].append(r)
    if not groups:
        return "<p>No failed predictions.</p>"
    parts = []
    for reason, failed in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        items = "".join(f"<li>{html.escape(r['model'])} · {html.escape(r['task'])} @ {r['length']} · sample {r['idx']}: "
                        f"{html.escape(r['error'] or '')}</li>" for r in failed[:examples])
        parts.append(f"<details><summary>{len(failed)} × {html.escape(reason)}</summary><ul>{items}</ul></details>")
    return "".join(parts)
