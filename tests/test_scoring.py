"""RULER's metrics on hand-computed cases."""

import pytest

from longctx.scoring import nulls, postprocess, ruler_task_score, score, string_match_all, string_match_part


def test_postprocess_maps_control_characters_to_newlines():
    assert postprocess("  a\tb\x01c \n") == "a\nb\nc"


def test_string_match_all_gives_partial_credit_case_insensitively():
    assert string_match_all("The numbers are 1234567 and ABC.", ["1234567", "abc", "999"]) == pytest.approx(2 / 3)
    assert string_match_all("", ["x"]) == 0.0


def test_string_match_all_is_a_substring_match_like_ruler():
    assert string_match_all("brain zebra", ["bra"]) == 1.0  # RULER's known CWE quirk, kept


def test_string_match_part_any_reference_counts():
    assert string_match_part("It was Denver Broncos.", ["Broncos", "Carolina Panthers"]) == 1.0
    assert string_match_part("Panthers", ["Carolina Panthers"]) == 0.0


def test_task_score_and_nulls():
    assert ruler_task_score([1.0, 0.5, 0.0]) == 50.0
    assert ruler_task_score([1 / 3]) == 33.33
    assert nulls(["", " \n", "x"]) == "2/3"
    with pytest.raises(ValueError):
        score("exact", "a", ["a"])
