"""The study's tables from one or more run databases, in Markdown, CSV and LaTeX.

Table 1: RULER average (mean over the 13 tasks of each task's mean) per model and length.
Tables 6-18: one per RULER task, per model and length. Tables 2-3: single-needle depth sweeps
(niah_single_2 at fixed depths) at 1x and 2x each model's training length. Table 4: the
haystack/key/value formats by (length, depth). Values are scores x100, as in the paper; with
`reference=True` the published number for the same model and cell is shown beside ours.
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ..stats import area_under_length_curve, effective_length, group, interval, mcnemar, means, paired_bootstrap
from ..tasks import FORMATS, RULER_TASKS


# Sample metadata that becomes a column for grouping (besides model, task, base_task, length, depth).
GROUP_COLUMNS = ("haystack", "key_type", "value_type", "family")
GROUPABLE = ("model", "task", "base_task", "length", "depth", "run", *GROUP_COLUMNS)


@dataclass
class Table:
    key: str  # file stem: table1, task_vt, depth_1x ...
    title: str
    columns: list[str]
    rows: list[list] = field(default_factory=list)  # first cell: the row label


def load_rows(db_paths) -> tuple[list[dict], dict[str, dict]]:
    """Every prediction of the runs, with base task, depth and format columns; and model info."""
    from ..store import RunStore

    rows, info = [], {}
    for path in db_paths:
        store = RunStore(Path(path))
        for r in store.results():
            meta = json.loads(r["meta"])
            params = meta.get("params", {})
            base = r["task"].split(":")[0]
            rows.append(r | {"base_task": base, "depth": params.get("depth"), "run": str(path),
                             **{k: meta.get(k, params.get(k)) for k in GROUP_COLUMNS}})
        info |= store.model_info()
        store.close()
    return rows, info


def task_averages(per_task: dict[tuple, float]) -> dict[tuple, float]:
    """(model, length) -> mean over tasks of each task's mean, from (model, task, length) means:
    RULER's average, the quantity of Table 1 and of the length curves."""
    acc = defaultdict(list)
    for (model, _, length), value in per_task.items():
        acc[(model, length)].append(value)
    return {k: sum(v) / len(v) for k, v in acc.items()}


def _fmt_length(n: int) -> str:
    return f"{n // 1024}K" if n % 1024 == 0 else str(n)


def reference_values() -> dict[tuple, float]:
    """(table, task, model, column) -> published value, from the packaged copy of the paper's tables."""
    text = resources.files("longctx").joinpath("data/huang2024_tables.csv").read_text()
    return {(int(r["table"]), r["task"], r["model"], r["column"]): float(r["value"]) for r in csv.DictReader(io.StringIO(text))}


def _cell(value: float | None, ref: float | None = None) -> str:
    text = "-" if value is None else f"{100 * value:.2f}"
    return text if ref is None else f"{text} ({ref:.2f})"


def build_tables(rows: list[dict], info: dict[str, dict], reference: bool = False,
                 threshold: float = 0.856) -> list[Table]:
    refs = reference_values() if reference else {}
    models = sorted({r["model"] for r in rows})
    ruler = [r for r in rows if r["task"] in RULER_TASKS]
    lengths = sorted({r["length"] for r in ruler})
    tables, curves = [], {}
    per_task = means(ruler, ("model", "task", "length"))
    averages = task_averages(per_task)
    if ruler:
        n_tasks = len({r["task"] for r in ruler})
        what = "RULER average" if n_tasks == len(RULER_TASKS) else f"average of the {n_tasks} RULER tasks run"
        t = Table("table1", f"{what} per length (Table 1)", ["model", *map(_fmt_length, lengths), "Avg"])
        for m in models:
            avgs = [averages.get((m, n)) for n in lengths]
            done = [a for a in avgs if a is not None]
            cells = [_cell(a, refs.get((1, "ruler_avg", m, _fmt_length(n)))) for a, n in zip(avgs, lengths)]
            t.rows.append([m, *cells, _cell(sum(done) / len(done) if done else None)])
            curves[m] = {n: a for n, a in zip(lengths, avgs) if a is not None}
        tables.append(t)
        e = Table("effective", f"effective context length (RULER average > {100 * threshold:.1f}) and area under "
                  "the length curve", ["model", "training length", "effective length", "AUC"])
        for m, curve in curves.items():
            eff = effective_length(curve, threshold) if curve else None
            train = (info.get(m) or {}).get("train_context")
            e.rows.append([m, _fmt_length(train) if train else "-", _fmt_length(eff) if eff else "-",
                           f"{100 * area_under_length_curve(curve):.2f}" if curve else "-"])
        tables.append(e)
    for number, task in enumerate(RULER_TASKS, start=6):
        cells = [(m, n) for m in models for n in lengths if (m, task, n) in per_task]
        if not cells:
            continue
        t = Table(f"task_{task}", f"{task} per length (Table {number})", ["model", *map(_fmt_length, lengths)])
        for m in models:
            t.rows.append([m, *[_cell(per_task.get((m, task, n)), refs.get((number, task, m, _fmt_length(n))))
                                for n in lengths]])
        tables.append(t)
    tables += _depth_tables(rows, info, models, refs) + _format_tables(rows, models, refs)
    return tables


def _depth_tables(rows, info, models, refs) -> list[Table]:
    sweep = [r for r in rows if r["base_task"] == "niah_single_2" and r["depth"] is not None]
    if not sweep:
        return []
    cells = group(sweep, ("model", "length", "depth"))
    depths = sorted({r["depth"] for r in sweep})
    out = []
    for factor, number, name in ((1, 2, "niah_depth_at_train_len"), (2, 3, "niah_depth_at_2x_train_len")):
        t = Table(f"depth_{factor}x", f"single needle by depth at {factor}x training length (Table {number})",
                  ["model", "length", *map(str, depths), "Avg"])
        for m in models:
            train = (info.get(m) or {}).get("train_context")
            n = train * factor if train else None
            means = [(lambda v: sum(v) / len(v) if v else None)(cells.get((m, n, d))) for d in depths]
            if n is None or all(v is None for v in means):
                continue
            done = [v for v in means if v is not None]
            t.rows.append([m, _fmt_length(n), *[_cell(v, refs.get((number, name, m, str(d)))) for v, d in zip(means, depths)],
                           _cell(sum(done) / len(done), refs.get((number, name, m, "Avg")))])
        if t.rows:
            out.append(t)
    return out


def _format_tables(rows, models, refs) -> list[Table]:
    out = []
    for fmt in FORMATS:
        sub = [r for r in rows if r["base_task"] == fmt]
        if not sub:
            continue
        cells = group(sub, ("model", "length", "depth"))
        cols = sorted({(r["length"], r["depth"]) for r in sub}, key=lambda c: (c[0], -1 if c[1] is None else c[1]))
        t = Table(f"format_{fmt}", f"{fmt} by length and depth (Table 4)",
                  ["model", *[f"{_fmt_length(n)}@{d}" for n, d in cols]])
        for m in models:
            vals = [cells.get((m, n, d)) for n, d in cols]
            t.rows.append([m, *[_cell(sum(v) / len(v) if v else None, refs.get((4, fmt, m, f"{n},{d}")))
                                for v, (n, d) in zip(vals, cols)]])
        out.append(t)
    return out


def interval_table(rows: list[dict]) -> Table:
    """Every (model, task, length) cell with its mean and 95 % interval (Wilson or bootstrap)."""
    t = Table("cells", "every cell with its 95 % confidence interval", ["model", "task", "length", "n", "mean", "low", "high"])
    for (m, task, n), scores in sorted(group(rows, ("model", "task", "length")).items()):
        ci = interval(scores)
        t.rows.append([m, task, str(n), str(ci.n), f"{100 * ci.mean:.2f}", f"{100 * ci.low:.2f}", f"{100 * ci.high:.2f}"])
    return t


def group_table(rows: list[dict], keys: list[str]) -> Table:
    """Mean and 95 % interval grouped by any columns (model, task, length, depth, haystack, ...)."""
    t = Table("by_" + "_".join(keys), f"scores by {', '.join(keys)}", [*keys, "n", "mean", "low", "high"])
    for key, scores in sorted(group(rows, tuple(keys)).items(), key=lambda kv: tuple(map(str, kv[0]))):
        ci = interval(scores)
        t.rows.append([*map(lambda v: "-" if v is None else str(v), key), str(ci.n), f"{100 * ci.mean:.2f}",
                       f"{100 * ci.low:.2f}", f"{100 * ci.high:.2f}"])
    return t


def paired_table(rows: list[dict]) -> Table:
    """Each model against the first (alphabetically) on the same samples, paired by (task, length,
    index): the mean difference and whether it is real (exact McNemar for 0/1 scores, paired
    bootstrap otherwise)."""
    t = Table("paired", "paired comparison on the same samples (difference x100, two-sided p)",
              ["model", "vs", "task", "length", "n", "difference", "p", "test"])
    scores = {(r["model"], r["task"], r["length"], r["idx"]): r["score"] for r in rows if r["score"] is not None}
    models = sorted({r["model"] for r in rows})
    cells = sorted({(task, n) for _, task, n, _ in scores})
    for other in models[1:]:
        for task, n in cells:
            idx = sorted(i for m, t2, n2, i in scores if m == models[0] and t2 == task and n2 == n
                         and (other, task, n, i) in scores)
            if not idx:
                continue
            a = [scores[(models[0], task, n, i)] for i in idx]
            b = [scores[(other, task, n, i)] for i in idx]
            if all(x in (0.0, 1.0) for x in a + b):
                p, test = mcnemar(a, b)[2], "McNemar"
            else:
                p, test = paired_bootstrap(a, b)[1], "paired bootstrap"
            diff = (sum(a) - sum(b)) / len(idx)
            t.rows.append([models[0], other, task, str(n), str(len(idx)), f"{100 * diff:+.2f}", f"{p:.3g}", test])
    return t


def to_markdown(t: Table) -> str:
    lines = [f"**{t.title}**", "", "| " + " | ".join(t.columns) + " |", "|" + "---|" * len(t.columns)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in t.rows]
    return "\n".join(lines) + "\n"


def to_csv(t: Table) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(t.columns)
    w.writerows(t.rows)
    return buf.getvalue()


def to_latex(t: Table) -> str:
    esc = lambda s: str(s).replace("_", r"\_").replace("%", r"\%").replace("&", r"\&")  # noqa: E731
    lines = [r"\begin{table}[t]", r"\centering", r"\begin{tabular}{l" + "r" * (len(t.columns) - 1) + "}", r"\toprule",
             " & ".join(map(esc, t.columns)) + r" \\", r"\midrule"]
    lines += [" & ".join(map(esc, r)) + r" \\" for r in t.rows]
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{esc(t.title)}}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def write_tables(tables: list[Table], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for t in tables:
        for suffix, render in ((".md", to_markdown), (".csv", to_csv), (".tex", to_latex)):
            path = out / f"{t.key}{suffix}"
            path.write_text(render(t))
            paths.append(path)
    return paths
