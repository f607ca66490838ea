"""Core value types shared by every stage: generation, inference, storage and scoring.

They are frozen so a sample or a spec can be hashed, cached and compared without surprises.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Sample:
    """One prompt fitted to a token budget.

    `prompt` excludes the answer prefix; the model sees `prompt + answer_prefix` (as in RULER).
    `length` is the *budget* the sample was fitted to; `meta["token_count"]` holds the real
    prompt token count and `meta["length"]` the RULER-style `token_count + tokens_to_generate`.
    """

    id: str
    task: str
    length: int
    index: int
    prompt: str
    answer_prefix: str
    targets: tuple[str, ...]
    tokens_to_generate: int
    metric: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def full_prompt(self) -> str:
        return self.prompt + self.answer_prefix

    def to_ruler_row(self) -> dict[str, Any]:
        """RULER's field names (`index`, `input`, `outputs`, `length`, `answer_prefix`) plus ours."""
        return {
            "index": self.index,
            "input": self.prompt,
            "outputs": list(self.targets),
            "length": self.meta["length"],
            "answer_prefix": self.answer_prefix,
            "id": self.id,
            "task": self.task,
            "target_length": self.length,
            "tokens_to_generate": self.tokens_to_generate,
            "metric": self.metric,
            "meta": self.meta,
        }

    @classmethod
    def from_ruler_row(cls, row: dict[str, Any]) -> "Sample":
        return cls(
            id=row["id"],
            task=row["task"],
            length=row["target_length"],
            index=row["index"],
            prompt=row["input"],
            answer_prefix=row["answer_prefix"],
            targets=tuple(row["outputs"]),
            tokens_to_generate=row["tokens_to_generate"],
            metric=row["metric"],
            meta=row["meta"],
        )


def stable_hash(*parts: Any, size: int = 16) -> str:
    """A short hex digest of JSON-serialisable parts, identical in every process and platform."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:size]
