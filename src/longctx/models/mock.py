"""The `mock` backend: a deterministic, fast stand-in for a model, for tests and dry runs of the
runner. It answers with the needle values it finds in the prompt (`... is: VALUE.`), so scores
mean something, and answers wrongly for a fixed, prompt-determined fraction (1 - accuracy)."""

from __future__ import annotations

import hashlib
import re
import time
from typing import Sequence

from ..tokenizer import load_tokenizer
from .base import Completion, GenParams, failed, triage

NEEDLE_VALUE = re.compile(r"\bis: ([\w-]+)\.")


class MockModel:
    def __init__(self, tokenizer: str | None = None, accuracy: float = 1.0, delay: float = 0.0,
                 max_context: int | None = None, name: str = "mock", fail: str | None = None):
        """`fail`: every call fails with this reason, as a backend that never answers would (a dead
        server): for tests of what the runner does then."""
        from ..cli import default_tokenizer

        self.name, self.accuracy, self.delay, self.max_context = name, accuracy, delay, max_context
        self.fail = fail
        self.tokenizer = load_tokenizer(tokenizer or default_tokenizer())
        self.model_template = "base"

    def answer(self, prompt: str) -> str:
        digest = int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16)
        if digest % 1000 >= self.accuracy * 1000:
            return " I could not find it."
        return " " + ", ".join(dict.fromkeys(NEEDLE_VALUE.findall(prompt))) + "."

    def generate(self, prompts: Sequence[str], params: GenParams) -> list[Completion]:
        encoded = [self.tokenizer.encode(p) for p in prompts]
        results, todo = triage(encoded, params.max_new_tokens, self.max_context)
        for i in todo:
            time.sleep(self.delay)
            results[i] = (failed(self.fail, len(encoded[i])) if self.fail else
                          Completion(self.answer(prompts[i]), len(encoded[i]), 8, self.delay))
        return results  # type: ignore[return-value]
