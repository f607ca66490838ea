"""Lost in the middle, from any depth sweep of a run: per model and length, how much better the
needle is found at the edges of the context than in its middle, with 95 % intervals.

- primacy gap: accuracy at the shallowest depth swept minus the pooled accuracy at the depths
  strictly between the shallowest and the deepest; recency gap: the same at the deepest depth;
- the worst depth: the depth of lowest accuracy (a U-shaped curve has it inside).

Accuracies use the Wilson interval (stats.wilson); a gap, a difference of two independent means,
uses Newcombe's hybrid score interval built from the two Wilson intervals.
"""

from __future__ import annotations

import math

from ..stats import group, interval
from .tables import Table, fmt_length


def newcombe(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """Difference of the means of a and b with Newcombe's hybrid score 95 % interval."""
    x, y = interval(a), interval(b)
    diff = x.mean - y.mean
    return (diff, diff - math.hypot(x.mean - x.low, y.high - y.mean),
            diff + math.hypot(x.high - x.mean, y.mean - y.low))


def depth_summary_table(rows: list[dict]) -> Table | None:
    swept = [r for r in rows if r["depth"] is not None]
    cells = group(swept, ("model", "length", "depth"))
    t = Table("depth_summary", "lost in the middle: accuracy at the edges minus the middle depths (x100, 95 % "
              "interval; Newcombe), and the worst depth", ["model", "length", "depths", "n", "primacy gap",
                                                          "recency gap", "worst depth"])
    for model, length in sorted({(m, n) for m, n, _ in cells}):
        depths = sorted(d for m, n, d in cells if (m, n) == (model, length))
        if len(depths) < 3:
            continue
        middle = [s for d in depths[1:-1] for s in cells[(model, length, d)]]
        gaps = [newcombe(cells[(model, length, edge)], middle) for edge in (depths[0], depths[-1])]
        worst = min(depths, key=lambda d: (sum(cells[(model, length, d)]) / len(cells[(model, length, d)]), d))
        t.rows.append([model, fmt_length(length), f"{depths[0]:g}-{depths[-1]:g} ({len(depths)})",
                       str(sum(len(cells[(model, length, d)]) for d in depths)),
                       *[f"{100 * g:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]" for g, lo, hi in gaps], f"{worst:g}"])
    return t if t.rows else None
