"""Statistics on hand-computed cases, and a table of intervals and p-values for n in {2, 5, 30},
0/1 and partial-credit scores, against values computed independently here."""

import itertools
import math

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.stats import binomtest

from longctx.stats import (area_under_length_curve, effective_length, false_discovery, group, interval, mcnemar,
                           paired_permutation, wilson)

Z = 1.959963984540054


def test_wilson_matches_the_textbook_value():
    # 8/10: p = 0.8, z^2/n = 0.38415; centre 0.71674, half-width 0.22658
    w = wilson(8, 10)
    assert (round(w.low, 4), round(w.high, 4)) == (0.4902, 0.9433) and w.mean == 0.8
    assert wilson(0, 5).low == 0.0 and wilson(5, 5).high == 1.0
    assert math.isnan(wilson(0, 0).mean)


def score_test_roots(mean: float, n: int) -> tuple[float, float]:
    """The interval inverted from the score test with the largest variance a [0, 1] score of mean
    p can have, p(1 - p): the p where (mean - p)^2 = z^2 p (1 - p) / n, found numerically."""
    f = lambda p: (mean - p) ** 2 - Z * Z * p * (1 - p) / n  # noqa: E731
    low = 0.0 if mean == 0 else brentq(f, 0.0, mean)
    high = 1.0 if mean == 1 else brentq(f, mean, 1.0)
    return low, high


@pytest.mark.parametrize("n", [2, 5, 30])
def test_interval_table_against_independent_values(n):
    """0/1 cells: scipy's Wilson interval. Partial credit: the same score-test inversion, solved
    numerically; never narrower than a 0/1 cell of the same n and mean, and not zero-width when the
    scores agree (two scores of 0.4 once gave [40, 40])."""
    rng = np.random.default_rng(n)
    binary = [float(x) for x in rng.integers(0, 2, n)]
    ci = interval(binary)
    want = binomtest(int(sum(binary)), n).proportion_ci(method="wilson")
    assert (ci.low, ci.high, ci.n) == (pytest.approx(want.low), pytest.approx(want.high), n)
    for partial in ([0.4] * n, [float(x) for x in rng.uniform(0, 1, n)]):
        ci = interval(partial)
        low, high = score_test_roots(sum(partial) / n, n)
        assert (ci.low, ci.high) == (pytest.approx(low, abs=1e-9), pytest.approx(high, abs=1e-9))
    same_mean = interval([0.5] * n if n % 2 else [1.0, 0.0] * (n // 2))  # 0/1 with mean 0.5 where n is even
    assert interval([0.5] * n).high - interval([0.5] * n).low >= same_mean.high - same_mean.low - 1e-12
    assert interval([0.4] * n).high - interval([0.4] * n).low > 0.1


def exact_sign_flip_p(a, b) -> float:
    """Two-sided p of the paired sign-flip test, over all 2^n flips, enumerated."""
    d = [x - y for x, y in zip(a, b)]
    observed = abs(sum(d))
    flips = [abs(sum(s * x for s, x in zip(signs, d))) for signs in itertools.product((1, -1), repeat=len(d))]
    return sum(f >= observed - 1e-12 for f in flips) / len(flips)


def exact_mcnemar_p(only_a: int, only_b: int) -> float:
    n, k = only_a + only_b, min(only_a, only_b)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)


@pytest.mark.parametrize("n", [2, 5, 30])
def test_paired_p_values_against_independent_values(n):
    rng = np.random.default_rng(100 + n)
    a, b = [float(x) for x in rng.integers(0, 2, n)], [float(x) for x in rng.integers(0, 2, n)]
    only_a, only_b, p = mcnemar(a, b)
    assert (only_a, only_b) == (sum(x > y for x, y in zip(a, b)), sum(x < y for x, y in zip(a, b)))
    assert p == pytest.approx(exact_mcnemar_p(only_a, only_b) if only_a + only_b else 1.0)
    a, b = list(rng.uniform(0, 1, n)), list(rng.uniform(0, 1, n))
    diff, p = paired_permutation(a, b)
    assert diff == pytest.approx(np.mean(np.subtract(a, b)))
    if n <= 13:  # exact
        assert p == pytest.approx(exact_sign_flip_p(a, b))
    else:  # seeded random flips, against 200,000 flips drawn here
        flips = np.random.default_rng(7).choice([-1.0, 1.0], size=(200_000, n))
        d = np.subtract(a, b)
        reference = np.mean(np.abs(flips @ d) >= abs(d.sum()) - 1e-12)
        assert p == pytest.approx(reference, abs=0.02)


def test_two_pairs_cannot_be_significant():
    """A paired test on 2 pairs once returned p = 0.0005; two sign flips give at best 0.5."""
    assert paired_permutation([1.0, 0.9], [0.0, 0.1])[1] == pytest.approx(0.5)
    assert mcnemar([1, 1], [0, 0])[2] == pytest.approx(0.5)
    assert paired_permutation([0.5, 1, 0], [0.5, 1, 0]) == (0.0, 1.0)


def test_benjamini_hochberg_by_hand():
    # sorted p 0.01, 0.03, 0.04, 0.5 (m = 4): p * m / rank = 0.04, 0.06, 0.0533, 0.5; then the
    # running minimum from the largest rank down: 0.04, 0.0533, 0.0533, 0.5
    assert false_discovery([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.16 / 3, 0.16 / 3, 0.5])
    assert false_discovery([]) == []


def test_effective_length_is_the_longest_length_before_the_first_drop():
    scores = {1024: 0.95, 2048: 0.90, 4096: 0.80, 8192: 0.90}
    assert effective_length(scores) == 2048
    assert effective_length(scores, threshold=0.5) == 8192
    assert effective_length({1024: 0.5}) is None


def test_area_under_the_length_curve():
    # log2 lengths 10, 11, 12: trapezoids (1 + 0.5)/2 and (0.5 + 0)/2 over a span of 2
    assert area_under_length_curve({1024: 1.0, 2048: 0.5, 4096: 0.0}) == pytest.approx(0.5)
    assert area_under_length_curve({1024: 1.0, 4096: 1.0}) == 1.0


def test_group_by_any_columns_leaves_failed_rows_out():
    rows = [{"model": "a", "length": 1, "score": 1.0}, {"model": "a", "length": 1, "score": None},
            {"model": "a", "length": 2, "score": 0.0}, {"model": "b", "length": 1, "score": 0.5}]
    assert group(rows, ["model", "length"]) == {("a", 1): [1.0], ("a", 2): [0.0], ("b", 1): [0.5]}


def test_lost_in_the_middle_summary_by_hand():
    """Depths 0, 50, 100 with 4 samples each: edges [1,1,1,1] and [1,1,0,1], middle [0,0,1,0].
    Gaps 100 - 25 and 75 - 25; intervals by Newcombe's method from scipy's Wilson intervals."""
    from longctx.report.depth import depth_summary_table

    scores = {0: [1, 1, 1, 1], 50: [0, 0, 1, 0], 100: [1, 1, 0, 1]}
    rows = [{"model": "m", "length": 1024, "depth": d, "score": float(s)} for d, ss in scores.items() for s in ss]
    rows += [{"model": "m", "length": 2048, "depth": 50, "score": 1.0}]  # one depth: no summary at 2K

    def newcombe(k1, k2, n=4):
        ci1, ci2 = (binomtest(k, n).proportion_ci(method="wilson") for k in (k1, k2))
        p1, p2 = k1 / n, k2 / n
        d = p1 - p2
        return d, d - math.sqrt((p1 - ci1.low) ** 2 + (ci2.high - p2) ** 2), \
            d + math.sqrt((ci1.high - p1) ** 2 + (p2 - ci2.low) ** 2)

    t = depth_summary_table(rows)
    assert len(t.rows) == 1
    gaps = [f"{100 * g:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]" for g, lo, hi in (newcombe(4, 1), newcombe(3, 1))]
    assert t.rows[0] == ["m", "1K", "0-100 (3)", "12", *gaps, "50"]
    assert gaps[0].startswith("+75.0")
