"""The contract every diagnostic implements."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ..types import Sample


@runtime_checkable
class Diagnostic(Protocol):
    name: str  # the CSV's stem and the database's key
    per_sample: bool  # measured on each sample (True) or once per model, from the model alone (False)

    def skip_reason(self, adapter, sample: Sample | None = None) -> str | None:
        """Why this diagnostic does not apply to this model (or, given one, to this sample), or None."""

    def measure(self, adapter, sample: Sample | None) -> list[dict]:
        """The measurements, one dict per row of the CSV (keys the same in every row)."""
