"""Chunked prefill for transformers' Mamba-1 mixers (Mamba, FalconMamba, and Jamba's Mamba layers).

Their scan (`mamba_selective_scan`, module-level in each modelling file) takes no initial state:
a multi-token call that continues a cache carries the convolution's last columns over, but
scans from a zero state. So a prompt prefilled in chunks would lose everything before its last
chunk from the SSM state; transformers' own `prefill_chunk_size` does that to Jamba, and its
Mamba (v1) cannot be chunked by `generate` at all. On tiny random checkpoints, 60 tokens in
chunks of 16 moved the last logits by 3e-4 to 3e-2 (Jamba and Mamba, three seeds each); on a
long-context benchmark, what is lost (a needle in an earlier chunk) is what is being measured.

The SSM is linear in its state, so the fix adds what the carried state h0 contributes: after
columns 1..t of the chunk it has become exp(A * (dt_1 + ... + dt_t)) * h0, which adds its dot
product with C_t to output t (gated like the rest) and its last value to the final state.
`scans_carry_state` installs that, for the duration of a `with`, on every such mixer of a model:
a pre-hook reads the layer's carried state from the cache the mixer is called with, and swaps
the module's scan for one that adds it while that mixer runs.
"""

from __future__ import annotations

import contextlib
import functools
import sys

from .transformers_compat import cache_argument, cache_keyword, changed

SCAN = "mamba_selective_scan"
PATCH = "The Mamba-1 state carry (longctx/models/scan_carry.py)"
# transformers families whose models hold Mamba-1 mixers: finding none in one of them means
# transformers changed the mixers, not that there is nothing to carry.
MAMBA1_FAMILIES = {"mamba", "falcon_mamba", "jamba"}


def carrying_mixers(model) -> list:
    """The Mamba-1 mixers of `model` (Mamba-1's layout: `x_proj` makes the time step, B and C from
    the input; Mamba2's mixers have none). Each must scan with its modelling module's
    `mamba_selective_scan` and take a cache, or the carry could not apply: then this raises."""
    mixers = [m for m in model.modules()
              if hasattr(m, "x_proj") and hasattr(m, "A_log") and hasattr(m, "layer_idx")]
    if not mixers and getattr(model.config, "model_type", None) in MAMBA1_FAMILIES:
        raise changed(PATCH, f"no Mamba-1 mixer (a module with x_proj, A_log and layer_idx) in a "
                             f"{model.config.model_type} model")
    for mixer in mixers:
        if SCAN not in vars(sys.modules[type(mixer).__module__]):
            raise changed(PATCH, f"{type(mixer).__module__} has no {SCAN}")
        cache_keyword(type(mixer).forward)  # raises if the mixer's forward declares no cache
    return mixers


@contextlib.contextmanager
def scans_carry_state(model):
    """While on, a multi-token call of a Mamba-1 mixer that continues a cache (one with a state
    for its layer) scans on from that state, as one pass over everything would.

    Checked on every call: a mixer given no cache while its model was given one, or a swapped
    scan the mixer never called, raises `TransformersChangedError` (the carry would not apply)."""
    mixers = carrying_mixers(model)
    modules = {type(m).__module__: sys.modules[type(m).__module__] for m in mixers}
    plain = {name: getattr(module, SCAN) for name, module in modules.items()}
    given = {}  # the cache of the model's call in progress
    pending = {}  # mixer -> [calls of its swapped scan], while it runs

    def model_called(_model, args, kwargs):
        given["cache"] = cache_argument(type(model).forward, args, kwargs)

    def before(mixer, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        cache = cache_argument(type(mixer).forward, args, kwargs)
        if hidden.shape[1] == 1:  # one token: transformers' own state update
            return
        if cache is None:
            if given.get("cache") is not None:
                raise changed(PATCH, f"{type(mixer).__name__} was called without the cache its model was given")
            return  # no cache anywhere: one pass, nothing carried
        carried = cache.get_recurrent_state(mixer.layer_idx, state_idx=0)
        if carried is not None:
            name, calls = type(mixer).__module__, []
            setattr(modules[name], SCAN, functools.partial(_scan_from, plain[name], carried, calls))
            pending[mixer] = calls

    def after(mixer, args, kwargs, output):
        name = type(mixer).__module__
        setattr(modules[name], SCAN, plain[name])
        calls = pending.pop(mixer, None)
        if calls is not None and not calls:
            raise changed(PATCH, f"{type(mixer).__name__} did not call {name}.{SCAN} on a chunk that continues "
                                 f"its cache")

    handles = [model.register_forward_pre_hook(model_called, with_kwargs=True)] if mixers else []
    handles += [h for m in mixers for h in (m.register_forward_pre_hook(before, with_kwargs=True),
                                            m.register_forward_hook(after, with_kwargs=True))]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for name, module in modules.items():  # also after an exception inside a mixer
            setattr(module, SCAN, plain[name])


def _scan_from(scan, carried, calls: list, u, dt, A, B, C, D=None, z=None, delta_bias=None,
               delta_softplus=False, return_last_state=False, **kwargs):
    """`scan` (transformers' arguments: u, dt [batch, channels, L], A [channels, state], B, C
    [batch, state, L]) continued from the state `carried` [batch, channels, state]; each call
    is noted in `calls` (the mixer's after-hook checks that it scanned through here)."""
    import torch
    import torch.nn.functional as F

    calls.append(True)

    y, last = scan(u, dt, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
                   return_last_state=True, **kwargs)
    step = dt.float() if delta_bias is None else dt.float() + delta_bias.float()[..., None]
    if delta_softplus:
        step = F.softplus(step)
    # What the carried state has become after each column: [batch, channels, L, state].
    kept = torch.exp(A.float()[None, :, None, :] * step.cumsum(-1)[..., None]) * carried.float()[:, :, None, :]
    extra = torch.einsum("bcls,bsl->bcl", kept, C.float())
    if z is not None:
        extra = extra * F.silu(z.float())
    y = y + extra.to(y.dtype)
    last = last + kept[:, :, -1].to(last.dtype)
    return (y, last) if return_last_state else y
