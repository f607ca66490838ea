"""RULER's metrics (eval/synthetic/constants.py): string_match_all and string_match_part.

Both are case-insensitive substring matches on a post-processed prediction; `all` gives partial
credit (the fraction of references found), `part` gives 1 if any reference is found (QA).
Scores here are per sample in [0, 1]; RULER reports the mean x 100, rounded to 2 decimals.
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

_CONTROL = re.compile(r"[\x00-\x1f]")


def postprocess(pred: str) -> str:
    """strip, every control character (newline and tab included) -> "\\n", strip again."""
    return _CONTROL.sub("\n", pred.strip()).strip()


def string_match_all(pred: str, refs: Sequence[str]) -> float:
    if not refs:
        raise ValueError("string_match_all needs at least one reference")
    p = postprocess(pred).lower()
    return sum(r.lower() in p for r in refs) / len(refs)


def string_match_part(pred: str, refs: Sequence[str]) -> float:
    if not refs:
        raise ValueError("string_match_part needs at least one reference")
    p = postprocess(pred).lower()
    return float(any(r.lower() in p for r in refs))


METRICS: dict[str, Callable[[str, Sequence[str]], float]] = {
    "string_match_all": string_match_all,
    "string_match_part": string_match_part,
}


def score(metric: str, pred: str, refs: Sequence[str]) -> float:
    try:
        return METRICS[metric](pred, refs)
    except KeyError:
        raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}") from None


def ruler_task_score(scores: Sequence[float]) -> float:
    """A task's RULER score: mean x 100, rounded to 2 decimals."""
    return round(100 * sum(scores) / len(scores), 2) if scores else 0.0


def nulls(preds: Sequence[str]) -> str:
    """RULER's `Nulls` column: empty predictions out of all, as "k/N"."""
    return f"{sum(not postprocess(p) for p in preds)}/{len(preds)}"
