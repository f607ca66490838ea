"""Greedy decoding with chunked prefill for the transformers families whose cache `generate`
cannot prefill in chunks (Mamba and Mamba2 keep `cache_params`, RWKV a `state` list,
RecurrentGemma its states on its modules), for the RWKV-6 checkpoints' own code (the same
`state` interface), and for our own `MixerLM` (mamba_ssm checkpoints).

Feeding the prompt in chunks of `chunk` tokens and carrying the recurrent state between them
gives the same logits as one pass (checked in the tests) while the activations, and so the
peak memory, stay those of one chunk whatever the prompt length. Mamba, Mamba2, RecurrentGemma
and MixerLM prompts of different lengths share a batch, left-padded, without the padding reaching
their state (PADDED_IN_LOOP); the others are batched only with prompts of the same length.
"""

from __future__ import annotations

import contextlib
import functools

from .scan_carry import scans_carry_state
from .transformers_compat import changed, with_cache

# Families whose forward takes and returns a `state` list: transformers' RWKV (v4) and `rwkv6`,
# the model_type of the code that RWKV/rwkv-6-world-3b-v2.1 ships (trust_remote_code). That code's
# forward has no logits_to_keep (hf.py feeds its head the last position only).
STATE_LIST_FAMILIES = {"rwkv", "rwkv6"}
# transformers' Mamba-style families with a `cache_params` cache (Mamba-1's layout: Mamba, FalconMamba).
CACHE_PARAMS_FAMILIES = {"mamba", "falcon_mamba", "mamba2"}
STATEFUL_FAMILIES = {"mamba_ssm", "recurrent_gemma"} | CACHE_PARAMS_FAMILIES | STATE_LIST_FAMILIES  # mamba_ssm: MixerLM
# Families this loop may left-pad: it keeps the padding out of what would take it in.
PADDED_IN_LOOP = {"recurrent_gemma", "mamba_ssm"} | CACHE_PARAMS_FAMILIES


def _step(model, family: str, ids, state, pads=None):
    """One forward over `ids` continuing from `state`; returns (last-position logits, new state).
    `pads` (a PADDED_IN_LOOP family's first call only): each row's left padding."""
    if family == "recurrent_gemma":
        return _recurrent_gemma_step(model, ids, state, pads)
    if family in CACHE_PARAMS_FAMILIES:
        return _mamba_step(model, ids, state, pads)
    if family == "mamba_ssm":  # our MixerLM pads; mamba_ssm's own model (hf.py: takes_padding) does not
        return model.step(ids, state) if pads is None else model.step(ids, state, pads)
    assert pads is None, f"{family} cannot be padded"
    keep = {"logits_to_keep": 1} if takes_logits_to_keep(model) else {}
    out = model(input_ids=ids, state=state, use_cache=True, **keep)
    return out.logits[:, -1], out.state


def real_columns(pads, start: int, stop: int):
    """Which of the columns [start, stop) of left-padded rows hold real tokens, not padding:
    [B, stop - start] bool, from each row's padding `pads` [B] (on the rows' device)."""
    import torch

    return torch.arange(start, stop, device=pads.device) >= pads[:, None]


def _mamba_step(model, ids, state, pads):
    """transformers' Mamba, FalconMamba and Mamba2 zero padding before their convolution and their
    scan when they get the attention mask, in a chunk that continues their cache too; `state` is that
    cache, the columns seen and the rows' left padding (None: none). A one-token call gets no
    mask (transformers: a decoded token is never padding), so a row for which that column is
    padding (one-token prefill chunks only) gets its zero states back after it. The Mamba-1
    layouts scan a continuing chunk from a zero state unless `scans_carry_state` is on."""
    from transformers import DynamicCache

    if state is None:
        state = (DynamicCache(config=model.config), 0, None if pads is None else pads.to(ids.device))
    cache, seen, pads = state
    n = ids.shape[1]
    # This call's columns only (Mamba multiplies its input by the mask as given; Mamba2 trims it).
    mask = None if pads is None or n == 1 else real_columns(pads, seen, seen + n).long()
    with scans_carry_state(model) if seen and n > 1 else contextlib.nullcontext():
        out = model(input_ids=ids, attention_mask=mask, use_cache=True, logits_to_keep=1, **with_cache(model, cache))
    if pads is not None and n == 1 and bool((padding := pads > seen).any()):
        for i in range(len(cache.layers)):
            for tensor in (cache.get_conv_state(i), cache.get_recurrent_state(i)):
                tensor[padding] = 0  # in place: the cache's own tensors
    return out.logits[:, -1], (cache, seen + n, pads)


def _recurrent_gemma_step(model, ids, state, pads):
    """transformers' RecurrentGemma keeps its RG-LRU and convolution states on its recurrent
    blocks and its attention's keys in a cache; `state` is that cache, the columns seen and the
    rows' left padding. Its recurrent blocks ignore the attention mask, and a multi-token call
    restarts their convolution from zeros: `_convolution_fixed` gives a later chunk the previous
    columns and keeps padding out of it. The RG-LRU resets its state at position 0, each row's
    first real token, so padding before it leaves no trace there."""
    import torch
    from transformers import DynamicCache

    if state is None:
        for block in _recurrent_blocks(model):
            block.conv1d_state = None  # the block starts fresh states sized for this batch
        pads = torch.zeros(ids.shape[0], dtype=torch.long) if pads is None else pads
        state = (DynamicCache(config=model.config), 0, pads.to(ids.device))
    cache, seen, pads = state
    n = ids.shape[1]
    positions = torch.arange(seen, seen + n, device=ids.device) - pads[:, None]
    positions = positions.masked_fill(positions < 0, 1)  # padding: anywhere but 0 (as `generate` does)
    mask = real_columns(pads, 0, seen + n).long()
    with _convolution_fixed(model, seen, n, pads):
        out = model(input_ids=ids, position_ids=positions, attention_mask=mask, use_cache=True, logits_to_keep=1,
                    **with_cache(model, cache))
    return out.logits[:, -1], (cache, seen + n, pads)


CONVOLUTION_PATCH = "RecurrentGemma's convolution across chunks (longctx/models/stateful.py)"


def _recurrent_blocks(model) -> list:
    """RecurrentGemma's recurrent blocks, each with the `conv_1d` and `conv1d_state` that
    `_convolution_fixed` patches (checked: without them the fix could not apply)."""
    from transformers.models.recurrent_gemma.modeling_recurrent_gemma import RecurrentGemmaRecurrentBlock

    blocks = [m for m in model.modules() if isinstance(m, RecurrentGemmaRecurrentBlock)]
    if not blocks:
        raise changed(CONVOLUTION_PATCH, "the model has no RecurrentGemmaRecurrentBlock")
    for block in blocks:
        if not hasattr(block, "conv1d_state") or not hasattr(getattr(block, "conv_1d", None), "kernel_size"):
            raise changed(CONVOLUTION_PATCH, "RecurrentGemmaRecurrentBlock has no conv_1d convolution or conv1d_state")
    return blocks


@contextlib.contextmanager
def _convolution_fixed(model, seen: int, n: int, pads):
    """While a multi-token call over columns [seen, seen + n) runs, each recurrent block's causal
    convolution sees what one pass over each row alone would: the last columns of the call before
    (its `conv1d_state`) in front of the new ones, and zeros in place of padding (a prompt alone
    starts after zeros). It leaves the last columns, so masked, as the state for what follows
    (also right for a call shorter than the kernel). A one-token call goes through transformers'
    decoding branch, which reads and updates the state itself; a row for which that column is
    padding (only with one-token prefill chunks) gets its zeros back after it. A block whose
    convolution the call did not run through the fix raises (transformers changed the block)."""
    import torch

    if n == 1:
        yield
        padding = pads > seen
        if bool(padding.any()):
            for block in _recurrent_blocks(model):
                block.conv1d_state[padding] = 0
        return

    patched, ran = [], set()
    for block in _recurrent_blocks(model):
        conv, carry = block.conv_1d, block.conv1d_state if seen else None  # carry: [batch, channels, kernel - 1]

        def fixed(x, conv=conv, carry=carry, block=block, inner=conv.forward):
            ran.add(id(block))
            joined = x if carry is None else torch.cat([carry, x], dim=-1)
            behind = joined.shape[-1] - x.shape[-1]
            joined = joined.masked_fill(~real_columns(pads, seen - behind, seen + x.shape[-1])[:, None, :], 0)
            # The block sets conv1d_state from this call's columns as they came, before it calls this.
            width = conv.kernel_size[0] - 1
            block.conv1d_state = torch.nn.functional.pad(joined, (max(0, width - joined.shape[-1]), 0))[..., -width:]
            return inner(joined)[..., behind:]  # the block keeps the first len(x)

        patched.append((block, conv, conv.__dict__.get("forward")))  # an instance forward already there (a hook's)
        conv.forward = fixed
    try:
        yield
    finally:
        for _, conv, before in patched:
            if before is None:
                del conv.forward  # the instance attribute: the class's forward again
            else:
                conv.forward = before
    if missed := [block for block, _, _ in patched if id(block) not in ran]:
        raise changed(CONVOLUTION_PATCH, f"{len(missed)} of {len(patched)} recurrent blocks did not run their conv_1d "
                                         f"through the fix on a call of {n} tokens")


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


def prefill_chunks(model, family: str, ids, chunk: int):
    """Feed one unpadded batch of prompts `ids` [B, L] in chunks of `chunk` tokens, yielding after
    each chunk the positions seen and the carried state (for CACHE_PARAMS_FAMILIES, a
    DynamicCache holding each layer's recurrent state): what `longctx why` reads the state from."""
    state = None
    for start in range(0, ids.shape[1], chunk):
        _, state = _step(model, family, ids[:, start:start + chunk], state)
        yield min(start + chunk, ids.shape[1]), state


def greedy_stateful(model, family: str, ids, max_new: int, eos_ids: set[int], chunk: int | None, pads=None):
    """Argmax decoding of `max_new` tokens for a batch of prompts `ids` [B, L], of equal length
    unless the family is PADDED_IN_LOOP (then `pads` [B] is each row's left padding).
    Rows that have produced an end token are padded with it until every row is done."""
    import torch

    width = ids.shape[1]
    step = chunk or width
    state = None
    for start in range(0, width, step):
        logits, state = _step(model, family, ids[:, start:start + step], state, pads if state is None else None)
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

    from .kv_cache import check_filled, reserved_cache

    batch = ids.shape[0]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = reserved_cache(model.config, ids.shape[1] + max_new)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1,
                   **with_cache(model, cache)).logits[:, -1]
    check_filled(cache, ids.shape[1])
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
                       use_cache=True, **with_cache(model, cache)).logits[:, -1]
    return produced
