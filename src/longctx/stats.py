"""Statistics over stored scores: per-cell means with 95 % intervals, RULER's effective context
length, the area under the length curve, and paired comparisons of two models on the same samples.

Scores are fractions in [0, 1] (RULER's metrics); tables print them x100 as the paper does.
"""

from __future__ import annotations

import math
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
    """Wilson score interval for the mean of n scores in [0, 1] summing to `successes`.

    For 0/1 scores it is the textbook Wilson interval of a proportion. For partial credit it is
    the same formula on the mean: a score in [0, 1] with mean p has variance at most p(1 - p)
    (Bhatia-Davis), the variance Wilson's score test assumes, so the interval is never narrower than
    a 0/1 cell's of the same n and mean, and stays wide at small n even when the scores agree
    (a bootstrap of two equal scores has zero width)."""
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half), n)


def interval(scores: Sequence[float]) -> Interval:
    """95 % interval of the mean of scores in [0, 1], 0/1 or partial credit (see `wilson`)."""
    return wilson(sum(scores), len(scores))


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
    """Exact McNemar test on paired 0/1 scores: (a right & b wrong, a wrong & b right, two-sided p),
    the binomial test of the discordant pairs (scipy)."""
    from scipy.stats import binomtest

    only_a = sum(1 for x, y in zip(a, b) if x == 1 and y == 0)
    only_b = sum(1 for x, y in zip(a, b) if x == 0 and y == 1)
    if only_a + only_b == 0:
        return 0, 0, 1.0
    return only_a, only_b, float(binomtest(only_a, only_a + only_b, 0.5).pvalue)


def paired_permutation(a: Sequence[float], b: Sequence[float], resamples: int = 9999, seed: int = 0) -> tuple[float, float]:
    """Mean difference a - b and the two-sided p of a paired sign-flip permutation test (scipy's
    `permutation_test`): exact over all 2^n flips up to n = 13, else `resamples` seeded random
    flips. Valid at any n for partial credit: two pairs can never give p below 0.5."""
    import numpy as np
    from scipy.stats import permutation_test

    diffs = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    observed = float(diffs.mean())
    if not diffs.any():
        return observed, 1.0
    result = permutation_test((np.asarray(a, dtype=float), np.asarray(b, dtype=float)),
                              lambda x, y, axis: np.mean(x - y, axis=axis), permutation_type="samples",
                              vectorized=True, n_resamples=resamples, alternative="two-sided", rng=seed)
    return observed, float(result.pvalue)


def false_discovery(pvalues: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p-values (q) over one family of comparisons (scipy)."""
    from scipy.stats import false_discovery_control

    return [float(q) for q in false_discovery_control(list(pvalues), method="bh")] if pvalues else []
