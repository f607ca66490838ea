"""Attention over each row's own cache columns, for steps of rows of their own (continuous batching).

In continuous batching (`continuous.greedy_continuous`) every row of the batch holds a different
prompt and answer from column 0 of the reserved cache (`kv_cache.rows_at`), so a step's rows end at
different columns. Here each row's new positions attend over its own columns (and causally over
each other); the columns past a row's end are masked.

Grouped-query heads are packed: a group's query heads are laid out as extra query positions of
their key/value head (the single-token `pack_gqa` trick transformers uses, extended to several
positions), with the mask repeated to match: the same dot products and softmax without copying
every key/value head per query head (`repeat_kv`, transformers' path whenever there is a mask on
the CPU); the measurements that chose this are in docs/design.md.

A sliding-window layer (the `sliding_window` transformers passes every attention function) also
masks the columns that lie `sliding_window` or more positions behind each new position, as
transformers' own window mask does; its cache layer keeps them (kv_cache.py), but they are never read.
Models whose attention takes a soft cap on its scores (Gemma 2) do not use this form.

Outside such a step (prefills, other loops) the function is transformers' own SDPA unchanged.
"""

from __future__ import annotations

import functools

NAME = "longctx_row_sdpa"


def row_sdpa_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                     is_causal=None, **kwargs):
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from .kv_cache import ROW_STEP

    step = ROW_STEP.get()
    if step is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    if kwargs.get("softcap") or kwargs.get("position_bias") is not None or dropout:
        raise NotImplementedError("rows of their own support plain full or sliding-window attention only")
    step.read += 1
    ends = step.ends
    batch, heads, span, dim = query.shape
    width = max(ends) + span
    groups = getattr(module, "num_key_value_groups", 1)
    mask = step_mask(tuple(ends), span, width, groups, kwargs.get("sliding_window"), query.device)
    packed = query.reshape(batch, heads // groups, groups * span, dim)
    out = torch.nn.functional.scaled_dot_product_attention(packed, key[:, :, :width], value[:, :, :width],
                                                           attn_mask=mask, scale=scaling)
    return out.reshape(batch, heads, span, dim).transpose(1, 2).contiguous(), None


@functools.lru_cache(maxsize=4)
def step_mask(ends: tuple[int, ...], span: int, width: int, groups: int, window: int | None, device):
    """[rows, 1, groups * span, width] booleans: new position i of row r (column ends[r] + i) sees
    the row's columns up to its own (and, with a `window`, only the `window` latest of them,
    itself included), repeated for each query head of a packed group (query head h = kv * groups
    + j). Built once per step and kind of layer: every layer of a step asks for one of the same
    few (the key is the whole step)."""
    import torch

    cols = torch.arange(width, device=device)[None, None, :]
    last = (torch.tensor(ends, device=device)[:, None] + torch.arange(span, device=device))[:, :, None]  # [rows, span, 1]
    seen = cols <= last
    if window:
        seen &= cols > last - window
    return seen[:, None].repeat(1, 1, groups, 1)


def use_row_attention(model) -> bool:
    """Switch a model that uses transformers' SDPA attention to the row form (idempotent).
    Returns whether the model now uses it."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    current = getattr(model.config, "_attn_implementation", None)
    if current == NAME:
        return True
    if current != "sdpa" or getattr(model.config, "attn_logit_softcapping", None):
        return False
    AttentionInterface.register(NAME, row_sdpa_forward)
    AttentionMaskInterface.register(NAME, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])  # the same masks as SDPA
    model.set_attn_implementation(NAME)
    return model.config._attn_implementation == NAME
