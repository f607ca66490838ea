"""The adapter contract every backend implements, and the value types it speaks.

A backend is anything that can turn prompts into greedy continuations. It exposes the
tokenizer that counts exactly what the model sees (so samples are fitted to the model's real
budget), the model's hard context limit, and `generate(prompts, params)`: batch in, list out,
one `Completion` per prompt in order. A prompt that fails (over budget, server error) comes
back as a Completion with `error` set; a backend never raises for one bad prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

from ..tokenizer import Tokenizer


@dataclass(frozen=True)
class GenParams:
    """Decoding settings. Greedy (argmax) is the only mode the study uses; `stop` strings cut the
    returned text (RULER uses none by default)."""

    max_new_tokens: int
    stop: tuple[str, ...] = ()

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, not {self.max_new_tokens}")


@dataclass(frozen=True)
class Completion:
    """One prompt's result. `prompt_tokens` is what the model really consumed (None when the
    backend cannot tell); `seconds` is this prompt's share of its batch's wall time."""

    text: str
    prompt_tokens: int | None
    output_tokens: int | None
    seconds: float
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def failed(reason: str, prompt_tokens: int | None = None) -> Completion:
    return Completion(text="", prompt_tokens=prompt_tokens, output_tokens=0, seconds=0.0, error=reason)


@runtime_checkable
class ModelAdapter(Protocol):
    name: str
    tokenizer: Tokenizer | None  # None: the backend cannot count tokens locally (a hosted API)
    max_context: int | None  # hard limit on prompt + generated tokens; None = no hard limit
    # Optional: `call_size`, the prompts per `generate` call the backend works best with (the
    # runner's default when a run sets no `batch`; 8 when the adapter has none), and `close()`,
    # which the runner calls when the model's cells are done.

    def generate(self, prompts: Sequence[str], params: GenParams) -> list[Completion]: ...


def over_budget(n_prompt: int, max_new_tokens: int, max_context: int | None) -> str | None:
    """The reason a prompt may not be sent, or None. Never truncate: an overflow is a failed row."""
    if max_context is not None and n_prompt + max_new_tokens > max_context:
        return (f"over budget: {n_prompt} prompt + {max_new_tokens} new tokens > "
                f"{max_context} context of the model")
    return None


def triage(encoded: Sequence[Sequence[int]], max_new_tokens: int, max_context: int | None):
    """Results pre-filled with a failed row for every over-budget prompt, and the indices to run."""
    results: list[Completion | None] = [None] * len(encoded)
    todo = []
    for i, ids in enumerate(encoded):
        reason = over_budget(len(ids), max_new_tokens, max_context)
        if reason:
            results[i] = failed(reason, len(ids))
        else:
            todo.append(i)
    return results, todo


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """The text up to the earliest stop string (the stop string itself dropped)."""
    cut = len(text)
    for s in stop:
        i = text.find(s)
        if s and i != -1:
            cut = min(cut, i)
    return text[:cut]
