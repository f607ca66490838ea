"""The contract every diagnostic implements."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ..types import Sample


@runtime_checkable
class Diagnostic(Protocol):
    name: str  # the CSV's stem and the database's key
    per_sample: bool  # measured on each sample (True) or once per model, over all its samples (False)

    def skip_reason(self, adapter, sample: Sample | None = None) -> str | None:
        """Why this diagnostic does not apply to this model (or, given one, to this sample), or None."""

    def measure(self, adapter, subject: Sample | list[Sample]) -> list[dict]:
        """The measurements of one sample (`per_sample`) or of the model over all the spec's samples,
        one dict per CSV row; a row with a `table` key goes to the CSV of that name instead."""
