"""The `openai` backend: any OpenAI-compatible HTTP server (vLLM serve, llama.cpp's server, SGLang,
TGI, hosted APIs), through the `/completions` or `/chat/completions` endpoint.

Greedy (temperature 0). Requests run concurrently up to `concurrency`; transient failures (429,
5xx, timeouts, dropped connections, malformed JSON) are retried with exponential backoff and
jitter, honouring a 429's Retry-After; whatever still fails becomes a failed row with its reason.
The API key is read from the environment variable named by `api_key_env` at request time and is
never stored on the adapter, written to disk, or put in an error message.

Temperature 0 is all the OpenAI API defines, but servers apply sampling defaults of their own on
top of it: llama-cpp-python's server penalises repeats (`repeat_penalty` 1.1), and vLLM takes a
`repetition_penalty` from the model's generation_config.json. Such a penalty changes greedy
decoding's answers (a test shows it on llama.cpp's server). `extra_body` adds the server's own
parameters to every request to switch them off, e.g. `{repeat_penalty: 1.0, top_k: 1}` for
llama.cpp or `{repetition_penalty: 1.0}` for vLLM; a hosted API that refuses unknown fields gets
none by default.

What the model sees is counted locally when a `tokenizer` is given: the prompt itself on the
completions endpoint, the prompt rendered by the tokenizer's chat template (one user turn, the
generation prompt added) on the chat endpoint. That count guards the budget before anything is sent,
and on the chat endpoint the template's own tokens (`prompt_reserve`) are kept free when the run
fits its samples, so the model sees at most the run's length there too. The server reports its own
count in `usage.prompt_tokens`, which is what each row records; the first time the two differ a
`PromptTokensWarning` says by how much, since the samples were fitted to the local count (another
tokenizer, a second BOS, another chat template).
"""

from __future__ import annotations

import email.utils
import os
import random
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

from ..errors import UsageError
from ..tokenizer import load_tokenizer
from .base import Completion, GenParams, cut_at_stop, failed, over_budget

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
MAX_RETRY_AFTER = 300.0  # seconds; a server asking for longer is treated as down
# The request fields longctx sets itself (`request_body`); `extra_body` may not override them.
OWN_FIELDS = {"model", "prompt", "messages", "max_tokens", "temperature", "stop"}


PROBE = "Some text."  # a prompt to measure what the chat template adds around one


class PromptTokensWarning(UserWarning):
    """The server counted a prompt's tokens otherwise than the local tokenizer did."""


class OpenAIModel:
    """`endpoint="completions"` sends the exact prompt text; `"chat"` sends it as one user message,
    as RULER's openai client does, and the server's chat template wraps it (counted locally when
    the local tokenizer has a chat template: `seen_tokens`)."""

    def __init__(self, base_url: str, model: str, endpoint: str = "completions", api_key_env: str = "OPENAI_API_KEY",
                 tokenizer: str | None = None, max_context: int | None = None, concurrency: int = 4,
                 max_retries: int = 5, timeout: float = 120.0, backoff: float = 1.0, max_backoff: float = 60.0,
                 extra_body: dict | None = None, name: str | None = None):
        import httpx

        if endpoint not in ("completions", "chat"):
            raise UsageError(f"endpoint must be 'completions' or 'chat', not {endpoint!r}")
        if clash := sorted(OWN_FIELDS & set(extra_body or {})):
            raise UsageError(f"extra_body cannot set {', '.join(clash)}: longctx sets it (greedy decoding of "
                             "the sample's prompt within its token budget)")
        self.extra_body = dict(extra_body or {})
        if concurrency < 1 or max_retries < 0 or timeout <= 0:
            raise UsageError("concurrency must be >= 1, max_retries >= 0 and timeout > 0")
        self.name = name or model
        self.model, self.endpoint, self.api_key_env = model, endpoint, api_key_env
        self.url = base_url.rstrip("/") + ("/chat/completions" if endpoint == "chat" else "/completions")
        self.tokenizer = load_tokenizer(tokenizer) if tokenizer else None
        # Whether the local count includes the chat template the server wraps a chat prompt in.
        self.counts_chat_template = endpoint == "chat" and bool(self.tokenizer and self.tokenizer.chat_template)
        # The template's tokens around a prompt, which the runner keeps free of sample text
        # (GenOptions.reserve), so the model sees at most the run's length.
        self.prompt_reserve = self.seen_tokens(PROBE) - self.tokenizer.count(PROBE) if self.counts_chat_template else 0
        # The (local, server) counts of the first prompt both counted, compared once (`_warn_of_count`).
        self._first_counts: tuple[int, int] | None = None
        self._counts_compared = False
        self.max_context, self.concurrency, self.max_retries = max_context, concurrency, max_retries
        self.backoff, self.max_backoff = backoff, max_backoff
        self.model_template = "base"
        self._client = httpx.Client(timeout=httpx.Timeout(timeout), limits=httpx.Limits(max_connections=concurrency))
        self._rng = random.Random(0)
        self._lock = threading.Lock()

    def generate(self, prompts: Sequence[str], params: GenParams) -> list[Completion]:
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            results = list(pool.map(lambda p: self._one(p, params), prompts))
        self._warn_of_count()
        return results

    def close(self) -> None:
        """Close the HTTP client's pooled connections (the runner does, after the model's cells)."""
        self._client.close()

    def request_body(self, prompt: str, params: GenParams) -> dict:
        body: dict = {**self.extra_body, "model": self.model, "max_tokens": params.max_new_tokens, "temperature": 0.0}
        if self.endpoint == "chat":
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        if params.stop:
            body["stop"] = list(params.stop)
        return body

    def parse(self, data: dict) -> tuple[str, int | None, int | None]:
        """(text, prompt tokens, completion tokens) from a response; KeyError/TypeError if malformed."""
        choice = data["choices"][0]
        text = choice["message"]["content"] if self.endpoint == "chat" else choice["text"]
        if not isinstance(text, str):
            raise TypeError("no text in choice")
        usage = data.get("usage") or {}
        return text, usage.get("prompt_tokens"), usage.get("completion_tokens")

    def seen_tokens(self, prompt: str) -> int | None:
        """The prompt tokens the model will see, by the local tokenizer (None without one): on the
        chat endpoint, with the chat template's tokens when the tokenizer has one."""
        if self.tokenizer is None:
            return None
        if self.counts_chat_template:
            prompt = self.tokenizer.hf.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                           add_generation_prompt=True)
        return self.tokenizer.count(prompt)

    def _keep_counts(self, n_local: int | None, n_server: int | None) -> None:
        """Keep the first prompt both counted, for `_warn_of_count` (this runs in a worker thread;
        the warning is raised in the caller's)."""
        if n_local is not None and n_server is not None:
            with self._lock:
                self._first_counts = self._first_counts or (n_local, n_server)

    def _warn_of_count(self) -> None:
        """Warn, once, when the server's prompt count is not the local one the samples were fitted to."""
        if self._counts_compared or self._first_counts is None:
            return
        self._counts_compared = True
        n_local, n_server = self._first_counts
        if n_server == n_local:
            return
        if self.endpoint == "chat" and not self.counts_chat_template:
            hint = ("the server's chat template adds tokens that the local tokenizer cannot count (it has no chat "
                    "template); give a `tokenizer` with the served model's")
        else:
            hint = ("check that `tokenizer` is the served model's and that the server adds no second BOS to a prompt "
                    "that starts with one (vLLM: extra_body {add_special_tokens: false})"
                    + (", and that its chat template is the tokenizer's" if self.counts_chat_template else ""))
        warnings.warn(f"{self.name}: the server counted {n_server} prompt tokens where the local tokenizer counted "
                      f"{n_local} ({n_server - n_local:+d}); samples are fitted and budgets checked with the local "
                      f"count, so the model sees other prompt lengths than the run assumes: {hint}",
                      PromptTokensWarning, stacklevel=3)

    def _one(self, prompt: str, params: GenParams) -> Completion:
        n_local = self.seen_tokens(prompt)
        if n_local is not None:
            reason = over_budget(n_local, params.max_new_tokens, self.max_context)
            if reason:
                return failed(reason, n_local)
        start = time.perf_counter()
        body, last = self.request_body(prompt, params), "no attempt"
        for attempt in range(self.max_retries + 1):
            outcome, wait = self._attempt(body)
            if isinstance(outcome, tuple):
                text, n_prompt, n_out = outcome
                self._keep_counts(n_local, n_prompt)
                return Completion(cut_at_stop(text, params.stop), n_prompt if n_prompt is not None else n_local,
                                  n_out, time.perf_counter() - start)
            last = outcome
            if wait is None or attempt == self.max_retries:
                break
            time.sleep(wait if wait > 0 else self._backoff(attempt))
        tries = attempt + 1
        return Completion("", n_local, 0, time.perf_counter() - start,
                          error=f"{last} (after {tries} attempt{'s' * (tries > 1)})")

    def _attempt(self, body: dict):
        """One request: ((text, n_prompt, n_out), None) on success, else (reason, wait) where wait
        is None for a permanent failure, 0 for the default backoff, or the server's Retry-After."""
        import httpx

        headers = {}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        try:
            resp = self._client.post(self.url, json=body, headers=headers)
        except httpx.TimeoutException:
            return "timeout", 0
        except httpx.TransportError as e:
            return self._scrub(f"connection error: {type(e).__name__}"), 0
        if resp.status_code != 200:
            reason = self._scrub(f"HTTP {resp.status_code}: {resp.text[:200]}")
            if resp.status_code not in RETRY_STATUS:
                return reason, None
            return reason, _retry_after(resp.headers.get("retry-after")) if resp.status_code == 429 else 0
        try:
            return self.parse(resp.json()), None
        except (ValueError, KeyError, IndexError, TypeError):
            return self._scrub(f"malformed response: {resp.text[:200]!r}"), 0

    def _backoff(self, attempt: int) -> float:
        with self._lock:
            jitter = self._rng.uniform(0.5, 1.0)
        return min(self.max_backoff, self.backoff * 2 ** attempt) * jitter

    def _scrub(self, text: str) -> str:
        key = os.environ.get(self.api_key_env)
        return text.replace(key, "***") if key else text


def _retry_after(value: str | None) -> float:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); 0 = use backoff."""
    if not value:
        return 0
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return 0
    return min(max(seconds, 0.0), MAX_RETRY_AFTER) or 0.001
