"""The lab's report: what each family is and learned, accuracy by length with 95 % intervals
against chance, inference state size by length, training curves; plus the normal report
(depth x length heatmaps, tables, report.html) over the families' run databases."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from ..corpora import load_words
from ..report import make_report
from ..report.tables import Table, load_rows, to_markdown
from ..stats import effective_length, wilson
from .spec import LabSpec

LEARNED = 0.90  # accuracy at the training length that counts as "learned the task"
THRESHOLD = 0.856  # RULER's effective-length bar (Llama-2-7B's score at 4K)


def chance(row: dict) -> float:
    """Probability that a blind guess of the value's form is right (uniform over its space)."""
    params = json.loads(row["meta"]).get("params", {})
    if row.get("value_type", "numbers") == "words":
        w = load_words()
        return 1 / (len(w.adjectives) * len(w.nouns))
    digits = int(params.get("digits", 7))
    return 1 / (9 * 10 ** (digits - 1))


def _interval_text(iv) -> str:
    return f"{100 * iv.mean:.0f} [{100 * iv.low:.0f}, {100 * iv.high:.0f}]"


def accuracy_by_length(rows: list[dict], families: list[str], lengths: list[int]) -> dict:
    """(family, length) -> (Wilson interval, chance) over the rows' formats and depths."""
    out = {}
    for f in families:
        for n in lengths:
            cell = [r for r in rows if r["model"] == f and r["length"] == n and r["score"] is not None]
            if cell:
                iv = wilson(sum(r["score"] for r in cell), len(cell))
                out[f, n] = (iv, sum(chance(r) for r in cell) / len(cell))
    return out


def needle_distance(row: dict) -> float | None:
    """Tokens between a fixed-depth needle and the question, about (1 - depth) x length."""
    depth = json.loads(row["meta"]).get("depth")
    return None if depth is None else (1 - depth / 100) * row["length"]


def accuracy_by_distance(rows: list[dict], families: list[str], lengths: list[int], train_length: int) -> dict:
    """(family, length, far) -> Wilson interval, where `far` means the needle sits farther from the
    question than the training length: the only needles whose retrieval needs attention over
    distances never trained on (a relative-position model may still reach the others: the demo's
    Llama did with rotary base 10,000, not with 500)."""
    out = {}
    for f in families:
        for n in lengths:
            for far in (False, True):
                cell = [r for r in rows if r["model"] == f and r["length"] == n and r["score"] is not None
                        and needle_distance(r) is not None and (needle_distance(r) > train_length) == far]
                if cell:
                    out[f, n, far] = wilson(sum(r["score"] for r in cell), len(cell))
    return out


def lab_tables(spec: LabSpec, rows, summaries: dict, states: dict) -> tuple[list[Table], list[str]]:
    fams = [f for f in spec.families if f in summaries]
    lengths = list(spec.eval_lengths)
    trained = tuple(spec.tasks())
    acc = accuracy_by_length([r for r in rows if r["task"].startswith(trained)], fams, lengths)
    beyond = [n for n in lengths if n > spec.train_length]
    by_distance = accuracy_by_distance([r for r in rows if r["task"].startswith(trained)], fams, beyond,
                                       spec.train_length)
    models = Table("lab_models", f"Lab models: same data, steps ({spec.steps}), seed ({spec.seed}) and training "
                   f"length ({spec.train_length}); non-embedding parameter budget {spec.params:,} (+/-10 %)",
                   ["family", "architecture", "non-embedding params", "train CPU-s", "final train acc",
                    f"acc at {spec.train_length} [95% CI]", "learned?"])
    findings, learned_fams = [], []
    for f in fams:
        s = summaries[f]
        at_train = acc.get((f, spec.train_length))
        learned = at_train is not None and at_train[0].mean >= LEARNED
        models.rows.append([f, s["architecture"], f"{s['non_embedding_params']:,}", f"{s['cpu_seconds']:.0f}",
                            f"{100 * s['final_train_accuracy']:.0f}", _interval_text(at_train[0]) if at_train else "-",
                            "yes" if learned else "NO: did not learn the task"])
        if not learned:
            findings.append(f"- **{f} did not learn the task**: {_interval_text(at_train[0]) if at_train else 'no score'}"
                            f" at its training length, below the {100 * LEARNED:.0f} % bar; its other numbers say "
                            "nothing about long context.")
            continue
        scored = [n for n in beyond if (f, n) in acc]
        far = "; ".join(f"{_interval_text(by_distance[f, n, True])} at {n}" for n in beyond if (f, n, True) in by_distance)
        curve = {n: acc[f, n][0].mean for n in lengths if (f, n) in acc}
        held = effective_length(curve, THRESHOLD)
        texts = "; ".join(f"{_interval_text(acc[f, n][0])} at {n}" for n in scored)
        reach = (f"stays above {100 * THRESHOLD:.1f} % up to {held} tokens "
                 f"({held / spec.train_length:g}x its training length)" if held else
                 f"is below {100 * THRESHOLD:.1f} % already at {lengths[0]} tokens")
        findings.append(f"- **{f}** ({summaries[f]['kind']}): {_interval_text(at_train[0])} at its training length "
                        f"{spec.train_length}; beyond it: {texts}. It {reach}."
                        + (f" Needles farther than {spec.train_length} tokens from the question: {far}." if far else ""))
        learned_fams.append(f)
    findings += _contrast(spec, acc, learned_fams, summaries)
    by_length = Table("lab_accuracy", "Accuracy (%) by context length over the trained formats and all depths, "
                      f"with 95 % Wilson intervals; training length {spec.train_length}",
                      ["family"] + [str(n) for n in lengths])
    for f in fams:
        by_length.rows.append([f] + [_interval_text(acc[f, n][0]) if (f, n) in acc else "-" for n in lengths])
    chance_row = [acc[k][1] for k in acc]
    if chance_row:
        by_length.rows.append(["chance"] + [f"{100 * max(chance_row):.2g}"] * len(lengths))
    state = Table("lab_state", "Inference state after prefilling one sequence, KiB: attention KV cache + recurrent "
                  "(SSM/RNN/conv) state, measured on the model's own cache objects",
                  ["family"] + [str(n) for n in lengths])
    for f in fams:
        cells = [states[f].get(str(n)) for n in lengths]
        state.rows.append([f] + [f"{c['kv'] / 1024:.0f} + {c['recurrent'] / 1024:.1f}" if c else "-" for c in cells])
    formats = Table("lab_formats", "Accuracy (%) by format and length", ["family", "format"] + [str(n) for n in lengths])
    for f in fams:
        for fmt in spec.eval_tasks():
            cells = []
            for n in lengths:
                cell = [r for r in rows if r["model"] == f and r["length"] == n and r["score"] is not None
                        and r["task"].startswith(fmt)]
                cells.append(f"{100 * sum(r['score'] for r in cell) / len(cell):.0f}" if cell else "-")
            label = fmt.split(",tokens_to_generate")[0].split(":tokens_to_generate")[0]
            formats.rows.append([f, label + ("" if fmt in trained else " (held out)")] + cells)
    distance = Table("lab_distance", "Accuracy (%) beyond the training length, split by the needle's distance from "
                     f"the question (about (1 - depth) x length tokens): within or farther than the training length "
                     f"{spec.train_length}, with 95 % Wilson intervals", ["family", "needle"] + [str(n) for n in beyond])
    for f in fams:
        for far in (False, True):
            distance.rows.append([f, f"farther than {spec.train_length}" if far else f"within {spec.train_length}"]
                                 + [_interval_text(by_distance[f, n, far]) if (f, n, far) in by_distance else "-"
                                    for n in beyond])
    return [models, by_length, formats, distance, state], findings


def _contrast(spec: LabSpec, acc: dict, learned: list[str], summaries: dict) -> list[str]:
    """The study's comparison at the longest length: attention vs recurrent families, with
    intervals and whether each excludes chance."""
    longest = max(spec.eval_lengths)
    if longest <= spec.train_length or not learned:
        return []
    parts = []
    for f in learned:
        if (f, longest) in acc:
            iv, p0 = acc[f, longest]
            side = "above" if iv.low > p0 else ("below" if iv.high < p0 else "not distinguishable from")
            parts.append(f"{f} ({summaries[f]['kind']}) {_interval_text(iv)} %, {side} chance")
    if not parts:
        return []
    p0 = max(v[1] for v in acc.values())
    return ["", f"At {longest} tokens ({longest / spec.train_length:g}x the training length; chance "
                f"{100 * p0:.2g} %): " + "; ".join(parts) + "."]


def training_curves(spec: LabSpec, out: Path) -> list[Path]:
    from ..report.figures import _plt, _save

    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    for f in spec.families:
        path = spec.out_dir / "models" / f / "training_curve.csv"
        if not path.exists():
            continue
        with path.open() as fh:
            points = list(csv.DictReader(fh))
        steps = [int(p["step"]) for p in points]
        ax1.plot(steps, [float(p["loss"]) for p in points], label=f)
        ax2.plot(steps, [100 * float(p["accuracy"]) for p in points], label=f)
    ax1.set(xlabel="step", ylabel="answer loss", yscale="log", title="training loss")
    ax2.set(xlabel="step", ylabel="train accuracy (%)", title="teacher-forced answer accuracy")
    ax2.legend(fontsize=8)
    return _save(fig, out, "lab_training_curves")


def heatmap_panel(spec: LabSpec, rows: list[dict], out: Path) -> list[Path]:
    """One depth x length heatmap per family side by side (trained formats), the training length
    marked: the study's picture for every architecture at once."""
    from ..report.figures import _means, _plt, _save, draw_heatmap

    plt = _plt()
    trained = tuple(spec.tasks())
    fams = [f for f in spec.families if any(r["model"] == f for r in rows)]
    if not fams:
        return []
    depths, lengths = sorted(spec.depths), sorted(spec.eval_lengths)
    fig, axes = plt.subplots(1, len(fams), figsize=(3.1 * len(fams) + 0.8, 0.5 * len(depths) + 1.6), squeeze=False)
    for ax, f in zip(axes[0], fams):
        cell = _means([r for r in rows if r["model"] == f and r["task"].startswith(trained)], ("depth", "length"))
        im = draw_heatmap(ax, cell, depths, lengths, fontsize=7)
        ax.tick_params(labelsize=7)
        if spec.train_length in lengths:
            ax.axvline(lengths.index(spec.train_length) + 0.5, color="black", lw=1.5, ls="--")
        ax.set_title(f, fontsize=9)
        ax.set_xlabel("context length", fontsize=8)
    axes[0][0].set_ylabel("needle depth", fontsize=8)
    fig.colorbar(im, ax=list(axes[0]), label="accuracy (%)", shrink=0.8)
    fig.suptitle(f"Needle retrieval by depth and length; dashed line: training length {spec.train_length}",
                 fontsize=9)
    return _save(fig, out, "lab_heatmaps")


def write_lab_report(spec: LabSpec) -> Path:
    out = spec.out_dir
    report_dir = out / "report"
    done = {f: out / "models" / f for f in spec.families if (out / "models" / f / "done.json").exists()}
    summaries = {f: json.loads((d / "done.json").read_text()) for f, d in done.items()}
    states = {f: json.loads((d / "state.json").read_text()) for f, d in done.items() if (d / "state.json").exists()}
    dbs = [d / "eval.sqlite" for d in done.values() if (d / "eval.sqlite").exists()]
    rows, _ = load_rows(dbs)
    tables, findings = lab_tables(spec, rows, summaries, states)
    figures = heatmap_panel(spec, rows, report_dir / "figures") + training_curves(spec, report_dir / "figures")
    make_report(dbs, report_dir, lead_tables=tables, extra_figures=figures)
    text = [f"# Lab: {spec.name}", "", "## Findings", "", *(findings or ["- no family was evaluated"]), "",
            *(to_markdown(t) for t in tables)]
    (report_dir / "lab.md").write_text("\n".join(text) + "\n")
    return report_dir
