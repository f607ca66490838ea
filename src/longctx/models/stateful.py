"""Greedy decoding with chunked prefill for the transformers families whose cache `generate`
cannot prefill in chunks (Mamba2 keeps `cache_params`, RWKV a `state` list, RecurrentGemma its
states on its modules), for the RWKV-6 checkpoints' own code (the same `state` interface), and
for our own `MixerLM` (mamba_ssm checkpoints).

Feeding the prompt in chunks of `chunk` tokens and carrying the recurrent state between them
gives the same logits as one pass (checked in the tests) while the activations, and so the
peak memory, stay those of one chunk whatever the prompt length.
"""

from __future__ import annotations

import contextlib
import functools

# Families whose forward takes and returns a `state` list: transformers' RWKV (v4) and `rwkv6`,
# the model_type of the code that RWKV/rwkv-6-world-3b-v2.1 ships (trust_remote_code). That code's
# forward has no logits_to_keep (hf.py feeds its head the last position only).
STATE_LIST_FAMILIES = {"rwkv", "rwkv6"}
STATEFUL_FAMILIES = {"mamba2", "mamba_ssm", "recurrent_gemma"} | STATE_LIST_FAMILIES  # mamba_ssm: our MixerLM


def _step(model, family: str, ids, state):
    """One forward over `ids` continuing from `state`; returns (last-position logits, new state)."""
    if family == "mamba_ssm":
        return model.step(ids, state)
    if family == "recurrent_gemma":
        return _recurrent_gemma_step(model, ids, state)
    if family == "mamba2":
        if state is None:
            from transformers import DynamicCache

            state = DynamicCache(config=model.config)
        out = model(input_ids=ids, cache_params=state, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1], out.cache_params
    keep = {"logits_to_keep": 1} if takes_logits_to_keep(model) else {}
    out = model(input_ids=ids, state=state, use_cache=True, **keep)
    return out.logits[:, -1], out.state


def _recurrent_gemma_step(model, ids, state):
    """transformers' RecurrentGemma keeps its RG-LRU and convolution states on its recurrent
    blocks and its attention's keys in a cache; `state` is that cache and the tokens seen. A
    multi-token call restarts the blocks' convolution from zeros, right for a prompt's first
    chunk only: a later chunk gets the previous columns prepended (`_conv_carried`). Positions are
    passed explicitly: position 0 is where the RG-LRU resets its state."""
    import torch
    from transformers import DynamicCache

    if state is None:
        for block in _recurrent_blocks(model):
            block.conv1d_state = None  # the block starts fresh states sized for this batch
        state = (DynamicCache(config=model.config), 0)
    cache, seen = state
    batch, n = ids.shape
    positions = torch.arange(seen, seen + n, device=ids.device).expand(batch, n)
    with _conv_carried(model, seen > 0 and n > 1):
        out = model(input_ids=ids, position_ids=positions, past_key_values=cache, use_cache=True, logits_to_keep=1)
    return out.logits[:, -1], (cache, seen + n)


def _recurrent_blocks(model) -> list:
    from transformers.models.recurrent_gemma.modeling_recurrent_gemma import RecurrentGemmaRecurrentBlock

    return [m for m in model.modules() if isinstance(m, RecurrentGemmaRecurrentBlock)]


@contextlib.contextmanager
def _conv_carried(model, continuing: bool):
    """While a later prompt chunk runs, each recurrent block's causal convolution sees the last
    columns of the chunk before (its `conv1d_state`) in front of the new ones, as one pass over
    the whole prompt would, and leaves the last columns of both as the state for what follows
    (also right for a chunk shorter than the kernel). A one-token call needs none of this:
    transformers' decoding branch reads the state itself."""
    if not continuing:
        yield
        return
    import torch

    patched = []
    for block in _recurrent_blocks(model):
        conv, carry = block.conv_1d, block.conv1d_state  # carry: [batch, channels, kernel - 1]

        def carried(x, conv=conv, carry=carry, block=block):
            joined = torch.cat([carry, x], dim=-1)
            # The block sets conv1d_state from this chunk alone before it calls the convolution.
            block.conv1d_state = joined[..., -carry.shape[-1]:]
            return type(conv).forward(conv, joined)[..., carry.shape[-1]:]  # the block keeps the first len(x)

        conv.forward = carried
        patched.append(conv)
    try:
        yield
    finally:
        for conv in patched:
            del conv.forward  # the instance attribute: the class's forward again


def takes_logits_to_keep(model) -> bool:
    """Whether the model's class names `logits_to_keep` in its forward (transformers' own classes
    do; a checkpoint's own code may not, and one that takes **kwargs would silently ignore it).
    The class, not the instance: a wrapper around an instance's forward (a timer) hides it."""
    return _forward_names_logits_to_keep(type(model))


@functools.lru_cache(maxsize=None)
def _forward_names_logits_to_keep(cls) -> bool:
    # Cached per class: _step asks once per decoded token.
    import inspect

    return "logits_to_keep" in inspect.signature(cls.forward).parameters


def greedy_stateful(model, family: str, ids, max_new: int, eos_ids: set[int], chunk: int | None):
    """Argmax decoding of `max_new` tokens for a batch of equal-length prompts `ids` [B, L].
    Rows that have produced an end token are padded with it until every row is done."""
    import torch

    width = ids.shape[1]
    step = chunk or width
    state = None
    for start in range(0, width, step):
        logits, state = _step(model, family, ids[:, start:start + step], state)
    eos = torch.tensor(sorted(eos_ids) or [-1], device=ids.device)
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    produced = []
    for k in range(max_new):
        nxt = logits.argmax(-1)
        if produced:
            nxt = torch.where(done, produced[-1], nxt)
        produced.append(nxt)
        done |= torch.isin(nxt, eos)
        if bool(done.all()) or k == max_new - 1:
            break
        logits, state = _step(model, family, nxt[:, None], state)
    return torch.stack(produced, dim=1)


def greedy_shrinking(model, ids, mask, max_new: int, eos_ids: set[int]):
    """Argmax decoding of a left-padded batch of an attention model, dropping each row from the
    batch (and from the KV cache) as soon as it has produced an end token.

    transformers' `generate` keeps finished rows in the batch until the longest one ends, so one
    rambling answer makes every row pay for 128 decode steps; here each step costs only the rows
    still running, and the cache has its room reserved (kv_cache.py). Used where continuous
    batching is not (off the CPU). Same tokens as `generate` (checked in the tests)."""
    import torch

    from .kv_cache import reserved_cache

    batch = ids.shape[0]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = reserved_cache(model.config, ids.shape[1] + max_new)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                   use_cache=True, logits_to_keep=1).logits[:, -1]
    eos = torch.tensor(sorted(eos_ids) or [-1], device=ids.device)
    produced = [[] for _ in range(batch)]
    alive = torch.arange(batch, device=ids.device)  # original row of each batch position
    last_pos = positions[:, -1]
    for k in range(max_new):
        nxt = logits.argmax(-1)
        for row, token in zip(alive.tolist(), nxt.tolist()):
            produced[row].append(token)
        keep = ~torch.isin(nxt, eos)
        if k == max_new - 1 or not bool(keep.any()):
            break
        if not bool(keep.all()):
            index = keep.nonzero().squeeze(1)
            cache.batch_select_indices(index)
            alive, nxt, mask, last_pos = alive[index], nxt[index], mask[index], last_pos[index]
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        last_pos = last_pos + 1
        logits = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=last_pos[:, None],
                       past_key_values=cache, use_cache=True).logits[:, -1]
    return produced
