"""Statistics on hand-computed cases."""

import math

import pytest

from longctx.stats import (area_under_length_curve, bootstrap, effective_length, group, interval, mcnemar,
                           paired_bootstrap, wilson)


def test_wilson_matches_the_textbook_value():
    # 8/10: p = 0.8, z^2/n = 0.38415; centre 0.71674, half-width 0.22658
    w = wilson(8, 10)
    assert (round(w.low, 4), round(w.high, 4)) == (0.4902, 0.9433) and w.mean == 0.8
    assert wilson(0, 5).low == 0.0 and wilson(5, 5).high == 1.0
    assert math.isnan(wilson(0, 0).mean)


def test_interval_picks_wilson_for_binary_and_bootstrap_for_partial_credit():
    assert interval([1, 0, 1, 1]) == wilson(3, 4)
    b = interval([0.5, 1.0, 0.25, 0.75])
    assert b.mean == 0.625 and 0.25 <= b.low < 0.625 < b.high <= 1.0
    assert bootstrap([0.5] * 7).low == bootstrap([0.5] * 7).high == 0.5


def test_effective_length_is_the_longest_length_before_the_first_drop():
    scores = {1024: 0.95, 2048: 0.90, 4096: 0.80, 8192: 0.90}
    assert effective_length(scores) == 2048
    assert effective_length(scores, threshold=0.5) == 8192
    assert effective_length({1024: 0.5}) is None


def test_area_under_the_length_curve():
    # log2 lengths 10, 11, 12: trapezoids (1 + 0.5)/2 and (0.5 + 0)/2 over a span of 2
    assert area_under_length_curve({1024: 1.0, 2048: 0.5, 4096: 0.0}) == pytest.approx(0.5)
    assert area_under_length_curve({1024: 1.0, 4096: 1.0}) == 1.0


def test_paired_comparisons():
    a = [1, 1, 1, 1, 1, 0, 1, 0]
    b = [0, 0, 0, 0, 0, 0, 1, 0]
    assert mcnemar(a, b) == (5, 0, pytest.approx(0.0625))  # 2 * (1/2)^5
    assert mcnemar(a, a)[2] == 1.0
    diff, p = paired_bootstrap([1.0] * 30, [0.0] * 30)
    assert diff == 1.0 and p < 0.01
    assert paired_bootstrap([0.5, 1, 0], [0.5, 1, 0]) == (0.0, 1.0)


def test_group_by_any_columns_leaves_failed_rows_out():
    rows = [{"model": "a", "length": 1, "score": 1.0}, {"model": "a", "length": 1, "score": None},
            {"model": "a", "length": 2, "score": 0.0}, {"model": "b", "length": 1, "score": 0.5}]
    assert group(rows, ["model", "length"]) == {("a", 1): [1.0], ("a", 2): [0.0], ("b", 1): [0.5]}
