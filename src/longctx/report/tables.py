"""The study's tables from one or more run databases, in Markdown, CSV and LaTeX.

Table 1: RULER average (mean over tasks of each task's mean) per model and length, every model of
a table averaged over the same tasks, named in its title: first over the tasks every model ran,
then one table per larger task set some models ran. Tables 6-18: one per RULER task. Depth
variants of a RULER task (`niah_single_1:depth=50`) count toward their task there. Tables 2-3:
single-needle depth sweeps (niah_single_2 at fixed depths) at 1x and 2x each model's training
length. Table 4: the haystack/key/value formats by (length, depth). Values are scores x100, as in
the paper, each with the number of samples per cell (n); with `reference=True` the published
number for the same model and cell is shown beside ours, where it measures the same thing.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ..errors import UsageError
from ..stats import area_under_length_curve, effective_length, false_discovery, group, interval, mcnemar, \
    paired_permutation
from ..tasks import FORMATS, RULER_TASKS
from .rows import load_rows  # noqa: F401  (re-exported: the lab and the tests read rows from here)


@dataclass
class Table:
    key: str  # file stem: table1, task_vt, depth_1x ...
    title: str
    columns: list[str]
    rows: list[list] = field(default_factory=list)  # first cell: the row label


def ruler_cells(rows: list[dict]) -> dict[tuple, list[float]]:
    """(model, RULER task, length) -> scores, depth variants counted toward their task."""
    return group([r for r in rows if r["ruler_task"]], ("model", "ruler_task", "length"))


def task_sets(cells: dict[tuple, list[float]]) -> list[tuple[tuple[str, ...], list[str]]]:
    """The task sets Table 1 averages, each with the models that ran all of its tasks: the tasks
    every model ran, then each larger set some model ran (tasks in RULER's order)."""
    ran: dict[str, set] = defaultdict(set)
    for model, task, _ in cells:
        ran[model].add(task)
    ordered = lambda tasks: tuple(t for t in RULER_TASKS if t in tasks)  # noqa: E731
    common = ordered(set.intersection(*ran.values())) if ran else ()
    sets = [common] if common else []
    sets += sorted({ordered(t) for t in ran.values()} - {common}, key=lambda t: (-len(t), t))
    return [(tasks, sorted(m for m in ran if set(tasks) <= ran[m])) for tasks in sets]


def set_average(cells: dict[tuple, list[float]], model: str, tasks, length: int) -> float | None:
    """Mean over `tasks` of the model's task means at `length`; None unless it ran every one."""
    scores = [cells.get((model, t, length)) for t in tasks]
    if not all(scores):
        return None
    return sum(sum(s) / len(s) for s in scores) / len(scores)


def set_label(tasks) -> str:
    if len(tasks) == len(RULER_TASKS):
        return "RULER average (all 13 tasks)"
    return f"average of {len(tasks)} of RULER's 13 tasks ({', '.join(tasks)})"


def fmt_length(n: int) -> str:
    return f"{n // 1024}K" if n % 1024 == 0 else str(n)


def reference_values() -> dict[tuple, float]:
    """(table, task, model, column) -> published value, from the packaged copy of the paper's tables."""
    text = resources.files("longctx").joinpath("data/huang2024_tables.csv").read_text()
    return {(int(r["table"]), r["task"], r["model"], r["column"]): float(r["value"]) for r in csv.DictReader(io.StringIO(text))}


def _cell(value: float | None, ref: float | None = None) -> str:
    text = "-" if value is None else f"{100 * value:.2f}"
    return text if ref is None else f"{text} ({ref:.2f})"


def _n(counts) -> str:
    """Samples per cell: one number, or the range where cells differ."""
    counts = sorted(c for c in counts if c)
    if not counts:
        return "-"
    return str(counts[0]) if counts[0] == counts[-1] else f"{counts[0]}-{counts[-1]}"


def _mean(scores) -> float | None:
    return sum(scores) / len(scores) if scores else None


def build_tables(rows: list[dict], info: dict[str, dict], reference: bool = False,
                 threshold: float = 0.856) -> list[Table]:
    refs = reference_values() if reference else {}
    models = sorted({r["model"] for r in rows})
    cells = ruler_cells(rows)
    lengths = sorted({n for _, _, n in cells})
    tables = []
    for i, (tasks, members) in enumerate(task_sets(cells)):
        tables += _table1(cells, tasks, members, lengths, info, refs, threshold, suffix="" if i == 0 else f"_{i + 1}")
    for number, task in enumerate(RULER_TASKS, start=6):
        if not any(t == task for _, t, _ in cells):
            continue
        t = Table(f"task_{task}", f"{task} per length (Table {number})", ["model", *map(fmt_length, lengths), "n"])
        for m in models:
            here = [cells.get((m, task, n)) for n in lengths]
            t.rows.append([m, *[_cell(_mean(v), refs.get((number, task, m, fmt_length(n))))
                                for v, n in zip(here, lengths)], _n(len(v) for v in here if v)])
        tables.append(t)
    tables += _depth_tables(rows, info, models, refs) + _format_tables(rows, models, refs)
    return tables


def _table1(cells, tasks, models, lengths, info, refs, threshold, suffix: str) -> list[Table]:
    """Table 1 over one task set, and the effective length and AUC of its curves. The paper's
    values (its 13-task averages) are shown only beside 13-task averages."""
    full = len(tasks) == len(RULER_TASKS)
    note = "" if full or not refs else "; the paper's values are left out: they average all 13 tasks"
    t = Table(f"table1{suffix}", f"{set_label(tasks)} per length (Table 1){note}",
              ["model", *map(fmt_length, lengths), "Avg", "n"])
    e = Table(f"effective{suffix}", f"effective context length ({set_label(tasks)} > {100 * threshold:.1f}) and "
              "area under the length curve", ["model", "training length", "effective length", "AUC"])
    for m in models:
        avgs = [set_average(cells, m, tasks, n) for n in lengths]
        complete = all(a is not None for a in avgs)
        ref = (lambda column: refs.get((1, "ruler_avg", m, column))) if full else (lambda column: None)
        t.rows.append([m, *[_cell(a, ref(fmt_length(n))) for a, n in zip(avgs, lengths)],
                       _cell(sum(avgs) / len(avgs) if complete else None),
                       _n(len(cells[(m, task, n)]) for task in tasks for n in lengths if (m, task, n) in cells)])
        ran = {}  # the lengths before the first one it did not run
        for n, a in zip(lengths, avgs):
            if a is None:
                break
            ran[n] = a
        eff = effective_length(ran, threshold) if ran else None
        train = (info.get(m) or {}).get("train_context")
        e.rows.append([m, fmt_length(train) if train else "-", fmt_length(eff) if eff else "-",
                       f"{100 * area_under_length_curve(ran):.2f}" if complete else "-"])
    return [t, e]


def _depth_tables(rows, info, models, refs) -> list[Table]:
    sweep = [r for r in rows if r["base_task"] == "niah_single_2" and r["depth"] is not None]
    if not sweep:
        return []
    cells = group(sweep, ("model", "length", "depth"))
    depths = sorted({r["depth"] for r in sweep})
    out = []
    for factor, number, name in ((1, 2, "niah_depth_at_train_len"), (2, 3, "niah_depth_at_2x_train_len")):
        t = Table(f"depth_{factor}x", f"single needle by depth at {factor}x training length (Table {number})",
                  ["model", "length", *map(str, depths), "Avg", "n"])
        for m in models:
            train = (info.get(m) or {}).get("train_context")
            n = train * factor if train else None
            here = [cells.get((m, n, d)) for d in depths]
            if n is None or not any(here):
                continue
            values = [_mean(v) for v in here]
            done = [v for v in values if v is not None]
            t.rows.append([m, fmt_length(n), *[_cell(v, refs.get((number, name, m, str(d)))) for v, d in zip(values, depths)],
                           _cell(sum(done) / len(done), refs.get((number, name, m, "Avg"))), _n(len(v) for v in here if v)])
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
                  ["model", *[f"{fmt_length(n)}@{d}" for n, d in cols], "n"])
        for m in models:
            vals = [cells.get((m, n, d)) for n, d in cols]
            t.rows.append([m, *[_cell(_mean(v), refs.get((4, fmt, m, f"{n},{d}"))) for v, (n, d) in zip(vals, cols)],
                           _n(len(v) for v in vals if v)])
        out.append(t)
    return out


def interval_table(rows: list[dict]) -> Table:
    """Every (model, task, length) cell with its mean and 95 % Wilson interval (stats.wilson)."""
    t = Table("cells", "every cell with its 95 % confidence interval (Wilson; for partial credit with the largest "
              "variance a score in [0, 1] with that mean can have)", ["model", "task", "length", "n", "mean", "low", "high"])
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


def paired_table(rows: list[dict], baseline: str) -> Table:
    """Every other model against `baseline` on the same samples, paired by (task, length, index):
    the mean difference, its two-sided p (exact McNemar for 0/1 scores, an exact or seeded
    sign-flip permutation test for partial credit) and q, the p adjusted by Benjamini-Hochberg
    over all the comparisons of the table."""
    models = sorted({r["model"] for r in rows})
    if baseline not in models:
        raise UsageError(f"--baseline {baseline!r} is not a model of these runs ({', '.join(models)})")
    scores = {(r["model"], r["task"], r["length"], r["idx"]): r["score"] for r in rows if r["score"] is not None}
    cells = sorted({(task, n) for _, task, n, _ in scores})
    found = []
    for other in (m for m in models if m != baseline):
        for task, n in cells:
            idx = sorted(i for m, t2, n2, i in scores if m == baseline and t2 == task and n2 == n
                         and (other, task, n, i) in scores)
            if not idx:
                continue
            a = [scores[(baseline, task, n, i)] for i in idx]
            b = [scores[(other, task, n, i)] for i in idx]
            if all(x in (0.0, 1.0) for x in a + b):
                p, test = mcnemar(a, b)[2], "McNemar (exact)"
            else:
                p, test = paired_permutation(a, b)[1], "sign-flip permutation"
            found.append((other, task, n, len(idx), (sum(a) - sum(b)) / len(idx), p, test))
    q = false_discovery([f[5] for f in found])
    t = Table("paired", f"paired comparison with {baseline} on the same samples (difference x100; p two-sided; "
              f"q: Benjamini-Hochberg over the {len(found)} comparisons)",
              ["model", "vs", "task", "length", "n", "difference", "p", "q", "test"])
    for (other, task, n, count, diff, p, test), qv in zip(found, q):
        t.rows.append([baseline, other, task, str(n), str(count), f"{100 * diff:+.2f}", f"{p:.3g}", f"{qv:.3g}", test])
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
