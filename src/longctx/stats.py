"""Statistics over stored scores: per-cell means with 95 % intervals, RULER's effective context
length, the area under the length curve, and paired comparisons of two models on the same samples.

Scores are fractions in [0, 1] (RULER's metrics); tables print them x100 as the paper does.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Sequence

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    n: int


def wilson(successes: float, n: int, z: float = Z95) -> Interval:
    """Wilson score interval for a proportion (0/1 scores)."""
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half), n)


def bootstrap(scores: Sequence[float], reps: int = 2000, seed: int = 0) -> Interval:
    """Percentile bootstrap interval of the mean (partial-credit scores), seeded for reproducibility."""
    n = len(scores)
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0)
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(scores, k=n)) / n for _ in range(reps))
    return Interval(sum(scores) / n, means[int(0.025 * reps)], means[min(reps - 1, int(0.975 * reps))], n)


def interval(scores: Sequence[float]) -> Interval:
    """Wilson when every score is 0 or 1, else bootstrap."""
    if all(s in (0.0, 1.0) for s in scores):
        return wilson(sum(scores), len(scores))
    return bootstrap(scores)


def group(rows: Iterable[dict], keys: Sequence[str]) -> dict[tuple, list[float]]:
    """Scores grouped by any columns; failed rows (score None) are left out of the means."""
    out: dict[tuple, list[float]] = defaultdict(list)
    for r in rows:
        if r.get("score") is not None:
            out[tuple(r[k] for k in keys)].append(float(r["score"]))
    return dict(out)


def means(rows: Iterable[dict], keys: Sequence[str]) -> dict[tuple, float]:
    """Mean score per group (failed rows left out), as fractions."""
    return {k: sum(v) / len(v) for k, v in group(rows, keys).items()}


def effective_length(by_length: dict[int, float], threshold: float = 0.856) -> int | None:
    """RULER's effective context length: the longest tested length up to which every length's
    average stays above the threshold (Llama-2-7B's 4K score, 85.6, by default). None if the
    shortest length already falls below it."""
    best = None
    for length in sorted(by_length):
        if by_length[length] <= threshold:
            break
        best = length
    return best


def area_under_length_curve(by_length: dict[int, float]) -> float:
    """Trapezoidal area under score vs log2(length), divided by the log2 span: 1.0 = perfect
    at every tested length; comparable across models tested on the same lengths."""
    xs = sorted(by_length)
    if len(xs) == 1:
        return by_length[xs[0]]
    logs = [math.log2(x) for x in xs]
    area = sum((logs[i + 1] - logs[i]) * (by_length[xs[i]] + by_length[xs[i + 1]]) / 2 for i in range(len(xs) - 1))
    return area / (logs[-1] - logs[0])


def mcnemar(a: Sequence[float], b: Sequence[float]) -> tuple[int, int, float]:
    """Exact McNemar test on paired 0/1 scores: (a right & b wrong, a wrong & b right, two-sided p)."""
    only_a = sum(1 for x, y in zip(a, b) if x == 1 and y == 0)
    only_b = sum(1 for x, y in zip(a, b) if x == 0 and y == 1)
    n = only_a + only_b
    if n == 0:
        return 0, 0, 1.0
    k = min(only_a, only_b)
    p = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n * 2
    return only_a, only_b, min(1.0, p)


def paired_bootstrap(a: Sequence[float], b: Sequence[float], reps: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Mean difference a - b and a two-sided bootstrap p-value for 'no difference'."""
    diffs = [x - y for x, y in zip(a, b)]
    n = len(diffs)
    observed = sum(diffs) / n
    rng = random.Random(seed)
    centred = [d - observed for d in diffs]
    extreme = sum(abs(sum(rng.choices(centred, k=n)) / n) >= abs(observed) for _ in range(reps))
    return observed, (extreme + 1) / (reps + 1)
