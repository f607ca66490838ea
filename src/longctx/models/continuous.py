"""Continuous batching with prompt-lookup draft tokens: greedy decoding for attention models on
the CPU, token for token what `generate` gives one prompt at a time.

- **Continuous batching.** With a fixed batch, every batch pays as many decode steps as its
  longest (often rambling) answer, and a step costs about the model's weight reads however few
  rows are still running. Here `slots` rows are kept full: a row takes the next prompt as soon as
  its answer ends. Each prompt is prefilled alone (on the CPU a padded batch prefill is slower:
  see kv_cache.py) and placed at the start of its row.
- **Rows of their own.** A row's prompt and answer fill its cache columns from 0 on; each step
  writes a row's new positions right after its own last valid column (`kv_cache.rows_at`), and
  attention reads each row's own columns (`row_attention.py`). No padding and no dead columns to
  drop. A row's numbers still differ from the naive loop's in the last bits, because the matrix
  kernels accumulate in an order that depends on how many rows they get; in bfloat16, where each
  product is rounded to 8 bits, that can change a token (docs/design.md, "Bits").
- **Draft tokens from the prompt** (prompt-lookup decoding). A model's answer to a RULER prompt
  largely copies the prompt (the needle's sentence, the question's wording) or repeats itself.
  Each step feeds every row its last token plus `draft` tokens guessed by finding the row's last
  few tokens earlier in its own prompt and answer, and keeps the guesses the model itself
  predicts: the tokens kept are the model's argmax at every position, whatever the guesses were,
  so the output is greedy decoding's. A rejected guess's column is overwritten by the row's next
  step.
- **Within memory.** The rows' cache is reserved up front, so its size is known before it is
  allocated: when `slots` rows of it would not fit in the memory available (Linux's
  MemAvailable), fewer rows are decoded at a time, with a `CacheMemoryWarning`, instead of the
  process being killed.
- **Shared prefixes.** Prompts are admitted in the order of their token ids, so a prompt's longest
  common prefix with any prompt before it is its common prefix with the one just before it
  (noise haystacks, a shared instruction). When that prefix has at least `MIN_SHARED` tokens,
  the previous prompt's cache up to it is reused and only the rest is prefilled.
"""

from __future__ import annotations

NGRAM = 3  # the longest run of last tokens looked up (then 2, then 1)
# The shortest shared prefix worth reusing: below it the prompt is prefilled whole, exactly as
# the one-prompt-at-a-time loop does (a continued prefill computes the same numbers in another order).
MIN_SHARED = 64
# Rows of their own keep every position of a sliding-window layer (kv_cache.py). At long lengths
# that is far more than the model's own cache (Gemma 3 270M, 8 rows at 32K: about 8 GB more in
# float32), so beyond this much more the prompts go to the fixed batches instead.
BEYOND_WINDOWS_BYTES = 1 << 30
# The share of the available memory the rows' reserved cache may take; besides it, the prompt
# being prefilled and the previous one (kept for its shared prefix) each hold up to a row's cache.
MEMORY_SHARE = 0.8
PREFILL_ROWS = 2


class CacheMemoryWarning(UserWarning):
    """Fewer rows are decoded at a time than asked for: their KV cache would not fit in memory."""


def rows_in_memory(wanted: int, row_bytes: int, available: int | None) -> int:
    """How many of `wanted` rows, each reserving `row_bytes` of cache, fit in `available` bytes of
    memory (all of them when it is not known); at least one."""
    if available is None:
        return wanted
    return max(1, min(wanted, _room_for_rows(row_bytes, available)))


def _room_for_rows(row_bytes: int, available: int) -> int:
    """Rows of `row_bytes` that fit in MEMORY_SHARE of `available` beside the prefills' own caches
    (less than 1 when not even one does)."""
    return int(available * MEMORY_SHARE) // row_bytes - PREFILL_ROWS


class PromptLookup:
    """A row's tokens (prompt, then answer) and, for every run of 1-3 tokens, where the token
    after its latest occurrence sits; the draft continues the latest earlier occurrence of the
    row's last tokens, longest match first."""

    def __init__(self, tokens: list[int]):
        self.tokens: list[int] = []
        self.follow: dict[tuple[int, ...], int] = {}
        self.extend(tokens)

    def extend(self, tokens: list[int]) -> None:
        seq, follow = self.tokens, self.follow
        for token in tokens:
            at = len(seq)
            for n in range(1, min(NGRAM, at) + 1):
                follow[tuple(seq[at - n:at])] = at
            seq.append(token)

    def draft(self, k: int) -> list[int]:
        seq = self.tokens
        for n in range(min(NGRAM, len(seq)), 0, -1):
            at = self.follow.get(tuple(seq[-n:]))
            if at is not None:  # never the last tokens themselves: nothing follows them yet
                return seq[at:at + k]
        return []


def greedy_continuous(model, rows: list[list[int]], max_new: int, eos_ids: set[int], slots: int, draft: int = 0):
    """Argmax decoding of many prompts through `slots` batch rows, refilled as answers end, with
    `draft` prompt-lookup guesses per row and step (0: one token per step). Returns the new
    tokens of every prompt (ending with the end token when one came), or None when the model
    cannot keep rows of their own (recurrent or chunked layers, an attention other than SDPA or
    with soft-capped scores): the caller then batches as before."""
    from collections import deque

    import torch

    from .kv_cache import (ReservedLayer, available_memory, beyond_windows_bytes, full_history_cache, reserved_bytes,
                           reserved_cache, rows_at)
    from .row_attention import use_row_attention
    from .transformers_compat import with_cache

    span = draft + 1  # positions fed per row and step
    # A running row holds its prompt and at most max_new - 1 answer tokens, then a step's span.
    cache = reserved_cache(model.config, max(len(r) for r in rows) + max_new + span, windows=True)
    n = min(slots, len(rows))
    if not all(isinstance(layer, ReservedLayer) for layer in cache.layers):
        return None
    if beyond_windows_bytes(cache, model.config, n, model.dtype) > BEYOND_WINDOWS_BYTES or not use_row_attention(model):
        return None  # (use_row_attention last: it switches the model's attention)
    row_bytes, available = reserved_bytes(cache, model.config, 1, model.dtype), available_memory()
    if (fit := rows_in_memory(n, row_bytes, available)) < n:
        import warnings

        short = _room_for_rows(row_bytes, available) < 1
        warnings.warn(f"decoding {fit} row{'s' * (fit > 1)} at a time instead of {n}: each row's KV cache of "
                      f"{cache.layers[0].capacity} positions takes {row_bytes / 2**30:.2f} GiB, and "
                      f"{available / 2**30:.1f} GiB of memory is available" + (" (even one row may not fit)" * short),
                      CacheMemoryWarning, stacklevel=2)
        n = fit
    queue = deque(sorted(range(len(rows)), key=lambda r: rows[r]))  # neighbours share the longest prefixes
    produced: list[list[int]] = [[] for _ in rows]
    owner = [-1] * n  # the prompt each slot is decoding
    lookup: list[PromptLookup | None] = [None] * n
    last = [0] * n  # each slot's newest token, decided but not yet in the cache
    ends = [0] * n  # each slot's valid cache columns (= the position of its `last`)
    # The leading tokens the next prompt shares with the one prefilled last, and that one's cache;
    # empty unless they are at least MIN_SHARED (a long prompt's cache is large: keep it only when
    # it will be reused). The next prompt prefilled is always the queue's head (`admit`).
    reusable: list = []

    def prefill(tokens: list[int]):
        """The prompt's own cache and the logits at its last position, reusing the previous
        prompt's cache for their common prefix when it has at least MIN_SHARED tokens."""
        alone = full_history_cache(model.config)
        shared = 0
        if reusable:
            shared, before = reusable
            for i, layer in enumerate(before.layers):
                alone.update(layer.keys[:, :, :shared], layer.values[:, :, :shared], i)
        out = model(input_ids=torch.tensor([tokens[shared:]]), use_cache=True, logits_to_keep=1,
                    **with_cache(model, alone))
        ahead = shared_prefix(tokens, rows[queue[0]]) if queue else 0
        reusable[:] = [ahead, alone] if ahead >= MIN_SHARED else []
        return alone, out.logits

    def admit(slot: int) -> list[int]:
        """Prefill the next prompt alone into `slot`; its first new token."""
        r = queue.popleft()
        alone, logits = prefill(rows[r])
        for layer, own in zip(cache.layers, alone.layers):
            layer.place(slot, n, own.keys, own.values)
        ends[slot], owner[slot] = len(rows[r]), r
        lookup[slot] = PromptLookup(rows[r]) if draft else None
        return [int(logits[0, -1].argmax())]

    def take(slot: int, tokens: list[int]) -> bool:
        """Append a slot's newly decided tokens to its answer; whether the answer goes on."""
        answer = produced[owner[slot]]
        for token in tokens:
            answer.append(token)
            if token in eos_ids or len(answer) >= max_new:
                return False
        last[slot] = tokens[-1]
        if lookup[slot] is not None:
            lookup[slot].extend(tokens)
        return True

    def fill(slot: int, tokens: list[int]) -> None:
        """Take the tokens; a slot whose answer ended takes prompts until one goes on or none are left."""
        while not take(slot, tokens):
            owner[slot] = -1
            if not queue:
                return
            tokens = admit(slot)

    for s in range(n):
        if queue:  # answers that end at once take the next prompts into their own slot
            fill(s, admit(s))
    while True:
        live = [s for s in range(n) if owner[s] >= 0]
        if not live:
            return produced
        if len(live) < n:  # only when the queue is empty: the batch shrinks
            cache.batch_select_indices(torch.tensor(live))
            owner, last, lookup, ends = ([x[s] for s in live] for x in (owner, last, lookup, ends))
            n = len(live)
        guesses = [_padded(lookup[s].draft(draft), draft, last[s]) if draft else [] for s in range(n)]
        ids = torch.tensor([[last[s]] + guesses[s] for s in range(n)])
        with rows_at(ends):  # positions are columns: a row's prompt starts at column 0
            out = model(input_ids=ids, position_ids=torch.tensor(ends)[:, None] + torch.arange(span),
                        use_cache=True, **with_cache(model, cache))
        predicted = out.logits.argmax(dim=-1).tolist()
        for s in range(n):
            kept = 1  # the model's token after `last`, then each guess it predicted itself
            while kept < span and guesses[s][kept - 1] == predicted[s][kept - 1]:
                kept += 1
            ends[s] += kept  # `last` and the kept guesses; the next step overwrites the rest
            fill(s, predicted[s][:kept])


def _padded(tokens: list[int], k: int, filler: int) -> list[int]:
    """A draft of exactly k tokens (every row feeds the same number; a filler is only a guess)."""
    return tokens + [tokens[-1] if tokens else filler] * (k - len(tokens))


def shared_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens b shares with a, at most len(b) - 1 (the last token is always
    computed: its logits give the first new token)."""
    limit, n = min(len(a), len(b) - 1), 0
    while n < limit and a[n] == b[n]:
        n += 1
    return n
