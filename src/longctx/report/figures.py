"""The study's pictures, as PNG and SVG: the depth x length needle heatmap per model, accuracy vs
length per model with its training length marked, and per-task small multiples."""

from __future__ import annotations

from pathlib import Path

from ..stats import means
from ..tasks import RULER_TASKS
from .tables import ruler_cells, set_average, set_label, task_sets


def _plt():
    try:
        import matplotlib
    except ImportError:
        from ..errors import UsageError

        raise UsageError("figures need matplotlib: pip install 'longctx[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path, stem: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.png", out / f"{stem}.svg"]
    for p in paths:
        fig.savefig(p, dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return paths


def model_colours(rows) -> dict[str, str]:
    """One colour per model, the same in every figure of a report (matplotlib's cycle, by name)."""
    return {m: f"C{i % 10}" for i, m in enumerate(sorted({r["model"] for r in rows}))}


def _means(rows, keys):
    """Mean scores x100 per group, as plotted."""
    return {k: 100 * v for k, v in means(rows, keys).items()}


def depth_heatmaps(rows, out: Path) -> list[Path]:
    """Needle tasks run at fixed depths: one depth x length heatmap per model (and task family)."""
    plt = _plt()
    needle = [r for r in rows if r["depth"] is not None]
    paths = []
    for model in sorted({r["model"] for r in needle}):
        sub = [r for r in needle if r["model"] == model]
        cell = _means(sub, ("depth", "length"))
        depths, lengths = sorted({d for d, _ in cell}), sorted({n for _, n in cell})
        fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(lengths), 1 + 0.45 * len(depths)))
        im = draw_heatmap(ax, cell, depths, lengths)
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel("needle depth")
        ax.set_title(f"{model}: needle retrieval")
        fig.colorbar(im, ax=ax, label="score")
        paths += _save(fig, out, f"heatmap_{_safe(model)}")
    return paths


def draw_heatmap(ax, cell: dict, depths: list, lengths: list, fontsize: int = 8):
    """A depth x length grid of scores (x100, keyed (depth, length)) on `ax`, each cell labelled;
    returns the image for a colorbar."""
    grid = [[cell.get((d, n), float("nan")) for n in lengths] for d in depths]
    im = ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(lengths)), [f"{n // 1024}K" if n % 1024 == 0 else n for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:g}%" for d in depths])
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            if v == v:  # not NaN
                ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=fontsize)
    return im


def length_curves(rows, info, out: Path) -> list[Path]:
    """Table 1's first average (the tasks every model ran) vs length, one line per model, its
    training length marked; a length where a model misses one of the tasks is left out."""
    plt = _plt()
    cells = ruler_cells(rows)
    if not cells:
        return []
    tasks, models = task_sets(cells)[0]
    lengths = sorted({n for _, _, n in cells})
    colours = model_colours(rows)
    fig, ax = plt.subplots(figsize=(6, 4))
    for model in models:
        curve = [(n, a) for n in lengths if (a := set_average(cells, model, tasks, n)) is not None]
        ax.plot([n for n, _ in curve], [100 * a for _, a in curve], marker="o", label=model, color=colours[model])
        train = (info.get(model) or {}).get("train_context")
        if train:
            ax.axvline(train, color=colours[model], linestyle=":", alpha=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context length (tokens); dotted: training length")
    ax.set_ylabel(set_label(tasks) if len(set_label(tasks)) < 40 else f"average of {len(tasks)} RULER tasks")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    return _save(fig, out, "length_curves")


def task_multiples(rows, out: Path) -> list[Path]:
    """One small panel per RULER task (depth variants counted toward their task): score vs length
    for every model."""
    plt = _plt()
    cell = {k: 100 * sum(v) / len(v) for k, v in ruler_cells(rows).items()}
    tasks = [t for t in RULER_TASKS if any(t2 == t for _, t2, _ in cell)]
    if not tasks:
        return []
    colours = model_colours(rows)
    cols = min(4, len(tasks))
    nrows = -(-len(tasks) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3 * cols, 2.4 * nrows), squeeze=False, sharey=True)
    for ax, task in zip(axes.flat, tasks):
        for model in sorted({m for m, t, _ in cell if t == task}):
            pts = sorted((n, v) for (m, t, n), v in cell.items() if m == model and t == task)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=model, color=colours[model])
        ax.set_xscale("log", base=2)
        ax.set_title(task, fontsize=9)
        ax.set_ylim(0, 100)
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    fig.legend(*_legend(axes), fontsize=7, loc="lower right")
    return _save(fig, out, "tasks")


def _legend(axes):
    """Every model's line once, from whichever panel has it (a model may miss a task)."""
    seen = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    return list(seen.values()), list(seen)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
