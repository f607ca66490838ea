"""A KV cache with its room reserved up front, for our greedy decoding loops.

- transformers' DynamicCache grows by `torch.cat`, so every decoded token copies every layer's
  whole cache (a large share of a decode step: docs/design.md). Writing each new position into
  reserved room stores the same numbers without the copy.
- **Rows of their own** (continuous batching, `continuous.greedy_continuous`): inside `rows_at`,
  every row holds its own sequence from column 0 and a step writes each row's new positions right
  after its own last valid column, so rows of different lengths share the buffer with no padding
  and a rejected draft column is simply overwritten by the next step. Attention then reads each
  row's own columns (`row_attention.py`; the columns past a row's end are masked).
- `place` puts a prompt prefilled alone into its row. On the CPU a left-padded batch prefill is
  slower than the same prompts one by one (an explicit padding mask instead of the causal kernel),
  and a prompt prefilled alone is computed exactly as the naive loop computes it.
- **Sliding-window layers** (Gemma 3, Mistral, Qwen2 with windows) keep every position here, as
  full layers do, for rows of their own only (`windows=True`): their attention is restricted to the
  window by the mask (`row_attention.py`, from the `sliding_window` transformers hands every
  attention function), so the columns before it are simply never read. transformers' own sliding
  layer drops them, which would leave a prompt's columns at other places in every layer.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from ..host import available_memory  # noqa: F401  (continuous.py reads it here; its tests replace it)
from .transformers_compat import changed

ROWS_PATCH = "Attention over rows of their own (longctx/models/row_attention.py, kv_cache.py)"


@dataclass
class RowStep:
    """A step of rows of their own: row r's new positions go to its columns ends[r], ends[r] + 1, ...
    Each reserved cache layer the step writes must then be read by the registered row attention
    (row_attention.py): counted, so that a transformers that stopped calling either raises."""
    ends: list[int]
    written: int = 0
    read: int = 0


# The step in progress, while one runs (continuous batching).
ROW_STEP: ContextVar[RowStep | None] = ContextVar("longctx_row_step", default=None)


@contextmanager
def rows_at(ends: list[int]):
    """Run a step in which row r's new positions go to its own columns ends[r], ends[r] + 1, ...;
    raises after it unless every cache layer it wrote was read by the row attention."""
    step = RowStep(list(ends))
    token = ROW_STEP.set(step)
    try:
        yield step
    finally:
        ROW_STEP.reset(token)
    if step.written == 0 or step.read != step.written:
        raise changed(ROWS_PATCH, f"a step wrote {step.written} reserved cache layers and the registered "
                                  f"attention function read {step.read} (each written layer must be read once)")


class ReservedLayer(DynamicLayer):
    """A full-attention cache layer writing into room for `capacity` positions; `keys` and
    `values` are views of the filled part, so transformers reads them as it reads DynamicLayer's."""

    def __init__(self, capacity: int, window: int | None = None):
        super().__init__()
        self.capacity, self.length = capacity, 0
        # The sliding window of the model's own layer, which keeps only that many positions (we
        # keep them all: the row attention applies the window); None for a full-attention layer.
        self.window = window

    def _reserve(self, rows: int, keys, values) -> None:
        """Allocate the room on first use, shaped after one update's keys and values [., H, ., D]
        (zeros: a row's unwritten columns are padding, masked out)."""
        if not self.is_initialized:
            self.dtype, self.device = keys.dtype, keys.device
            self._keys = keys.new_zeros(rows, keys.shape[1], self.capacity, keys.shape[-1])
            self._values = values.new_zeros(rows, values.shape[1], self.capacity, values.shape[-1])
            self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        self._reserve(key_states.shape[0], key_states, value_states)
        span, step = key_states.shape[-2], ROW_STEP.get()
        ends = None if step is None else step.ends
        end = (max(ends) if ends is not None else self.length) + span
        if end > self.capacity:
            raise RuntimeError(f"reserved KV cache of {self.capacity} positions asked to hold {end}")
        if ends is None:  # one shared column range for every row (left padding)
            self._keys[:, :, self.length:end] = key_states
            self._values[:, :, self.length:end] = value_states
        else:
            for row, at in enumerate(ends):
                self._keys[row, :, at:at + span] = key_states[row]
                self._values[row, :, at:at + span] = value_states[row]
        self.length = max(self.length, end)
        self._expose()
        if step is not None:
            step.written += 1
        return self.keys, self.values

    def place(self, row: int, rows: int, keys, values) -> None:
        """Put one prompt's keys and values [1, H, n, D] in `row` of `rows`, from column 0 (what
        the row held past them lies beyond its end: never read)."""
        self._reserve(rows, keys, values)
        end = keys.shape[-2]
        self._keys[row, :, :end] = keys[0]
        self._values[row, :, :end] = values[0]
        self.length = max(self.length, end)
        self._expose()

    def batch_select_indices(self, indices) -> None:
        if self.is_initialized:
            self._keys, self._values = self._keys[indices], self._values[indices]
            self._expose()

    def _expose(self) -> None:
        self.keys, self.values = self._keys[:, :, :self.length], self._values[:, :, :self.length]

    def batch_repeat_interleave(self, repeats: int) -> None:
        raise NotImplementedError("a reserved cache is never repeated (it serves greedy decoding only)")

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("a reserved cache is never cropped (it serves greedy decoding only)")


def reserved_cache(config, capacity: int, windows: bool = False) -> DynamicCache:
    """The model's DynamicCache with room for `capacity` positions in every layer, when all its
    layers are plain full-attention ones (or, with `windows`, sliding-window ones too: only for
    rows of their own, whose attention applies the window); otherwise (recurrent layers, chunked
    attention) the DynamicCache unchanged."""
    cache = DynamicCache(config=config)
    kinds = (DynamicLayer, DynamicSlidingWindowLayer) if windows else (DynamicLayer,)
    if cache.layers and all(type(layer) in kinds for layer in cache.layers):
        cache.layers = [ReservedLayer(capacity, getattr(layer, "sliding_window", None)) for layer in cache.layers]
    return cache


def check_filled(cache: DynamicCache, length: int) -> None:
    """Raise unless every reserved layer of `cache` holds `length` positions after a model call
    that fed them: transformers writes a cache through each layer's `update`, which ReservedLayer
    overrides; a release that wrote elsewhere would leave the reserved room unread."""
    reserved = [layer for layer in cache.layers if isinstance(layer, ReservedLayer)]
    if short := [layer.length for layer in reserved if layer.length != length]:
        raise changed("The reserved KV cache (longctx/models/kv_cache.py)",
                      f"{len(short)} of {len(reserved)} cache layers hold {short[0]} positions after a call "
                      f"that fed {length}")


def full_history_cache(config) -> DynamicCache:
    """A DynamicCache keeping every position in every layer, for a prompt prefilled alone before
    it joins rows of their own: a sliding-window layer's keys then start at column 0 like a full
    layer's, so the prompt can be placed in its row and its prefix reused. The numbers are those
    of the model's own cache: in one pass transformers masks a sliding layer to its window
    whatever the cache keeps, and on a continued pass builds the window mask over all the
    columns (the cache reports them all, from offset 0)."""
    cache = DynamicCache(config=config)
    cache.layers = [DynamicLayer() if type(layer) is DynamicSlidingWindowLayer else layer for layer in cache.layers]
    return cache


def beyond_windows_bytes(cache: DynamicCache, config, rows: int, dtype) -> int:
    """How many more bytes a reserved cache (`reserved_cache`) holds for `rows` rows than the
    model's own cache would: the positions its sliding-window layers keep beyond their window."""
    beyond = sum(max(0, layer.capacity - layer.window) for layer in cache.layers if layer.window)
    return beyond * rows * _position_bytes(config, dtype)


def reserved_bytes(cache: DynamicCache, config, rows: int, dtype) -> int:
    """The bytes a reserved cache (`reserved_cache`) allocates for `rows` rows: keys and values
    for every position of its room in every layer."""
    return sum(layer.capacity for layer in cache.layers) * rows * _position_bytes(config, dtype)


def _position_bytes(config, dtype) -> int:
    """One position's keys and values in one layer of one row."""
    import torch

    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * heads * dim * torch.finfo(dtype).bits // 8
