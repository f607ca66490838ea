"""The lab's architecture families, built from transformers' own config classes.

Every family gets the same width, vocabulary and tied embeddings; one size knob per family
(MLP width, or depth for Mamba2, which has no MLP) is searched so its non-embedding parameter
count lands as close as possible to the shared budget. `fit_family` refuses a result more than
10 % off, so "same budget" is checked, not assumed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..errors import UsageError

TOLERANCE = 0.10


@dataclass(frozen=True)
class Family:
    name: str
    label: str  # how the study names the architecture
    kind: str  # attention | recurrent | hybrid
    build: Callable  # (vocab, hidden, knob, train_length, special ids, **rope) -> config
    knobs: range
    cost: float  # CPU seconds per training step measured here (batch 16, ~190 tokens): longest first
    rotary: bool = False  # has rotary attention layers, so it takes the spec's rope_theta


def _llama(vocab, d, knob, train_length, ids, **rope):
    from transformers import LlamaConfig

    # Four layers: at this size two-layer models found the retrieval circuit in some seeds and not
    # in others within 1200 steps; four layers (narrower MLPs, same budget) found it reliably.
    return LlamaConfig(vocab_size=vocab, hidden_size=d, num_hidden_layers=4, num_attention_heads=4,
                       num_key_value_heads=4, intermediate_size=knob, max_position_embeddings=train_length,
                       tie_word_embeddings=True, **ids, **rope)


def _sliding(vocab, d, knob, train_length, ids, **rope):
    # Mistral's sliding window over a Llama-shaped model: attention that cannot look further back
    # than a quarter of the training length.
    from transformers import MistralConfig

    return MistralConfig(vocab_size=vocab, hidden_size=d, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=4, intermediate_size=knob, max_position_embeddings=train_length,
                         sliding_window=max(16, train_length // 4), tie_word_embeddings=True, **ids, **rope)


def _mamba2(vocab, d, knob, train_length, ids):
    from transformers import Mamba2Config

    # Few wide heads and short chunks: the pure-PyTorch SSD path runs about twice as fast on CPU as
    # with 16-wide heads, and these models learned the lab's task in a third of the steps.
    return Mamba2Config(vocab_size=vocab, hidden_size=d, num_hidden_layers=knob, state_size=16, expand=2,
                        head_dim=64, num_heads=2 * d // 64, n_groups=1, chunk_size=32, tie_word_embeddings=True,
                        **ids)


def _bamba(vocab, d, knob, train_length, ids, **rope):
    from transformers import BambaConfig

    return BambaConfig(vocab_size=vocab, hidden_size=d, num_hidden_layers=3, attn_layer_indices=[1],
                       num_attention_heads=4, num_key_value_heads=4, intermediate_size=knob, mamba_d_state=16,
                       mamba_n_heads=2 * d // 64, mamba_d_head=64, mamba_expand=2, mamba_chunk_size=32,
                       mamba_n_groups=1, max_position_embeddings=train_length, tie_word_embeddings=True, **ids,
                       **rope)


def _recurrentgemma(vocab, d, knob, train_length, ids, **rope):
    from transformers import RecurrentGemmaConfig

    return RecurrentGemmaConfig(vocab_size=vocab, hidden_size=d, lru_width=d, num_hidden_layers=3,
                                num_attention_heads=4, num_key_value_heads=1, head_dim=d // 4,
                                intermediate_size=knob, attention_window_size=max(16, train_length // 2),
                                block_types=["recurrent", "recurrent", "attention"], **ids, **rope)


def _rwkv(vocab, d, knob, train_length, ids):
    from transformers import RwkvConfig

    return RwkvConfig(vocab_size=vocab, hidden_size=d, num_hidden_layers=2, attention_hidden_size=d,
                      intermediate_size=knob, context_length=train_length, tie_word_embeddings=True, **ids)


_MLP = range(32, 4097, 8)
FAMILIES: dict[str, Family] = {f.name: f for f in [
    Family("llama", "Transformer++ (Llama, RoPE)", "attention", _llama, _MLP, 0.11, rotary=True),
    Family("mamba2", "Mamba2", "recurrent", _mamba2, range(1, 33), 0.16),
    Family("bamba", "Mamba2 + attention (Bamba)", "hybrid", _bamba, _MLP, 0.12, rotary=True),
    Family("recurrentgemma", "RG-LRU + local attention (RecurrentGemma)", "hybrid", _recurrentgemma, _MLP, 0.15,
           rotary=True),
    Family("rwkv", "linear RNN (RWKV-4)", "recurrent", _rwkv, _MLP, 0.23),
    Family("sliding", "sliding-window attention (Mistral)", "attention", _sliding, _MLP, 0.11, rotary=True),
]}


def non_embedding_params(model) -> int:
    emb = model.get_input_embeddings().weight
    out = model.get_output_embeddings()
    tied = out is not None and out.weight is emb
    n = sum(p.numel() for p in model.parameters()) - emb.numel()
    return n if tied or out is None else n - out.weight.numel()


def fit_family(name: str, vocab: int, hidden: int, budget: int, train_length: int, ids: dict,
               rope_theta: float | None = None):
    """(config, non-embedding parameter count) of the family's size closest to `budget`. A
    `rope_theta` sets the base of every rotary attention layer (the config class's own default
    otherwise; families without rotary layers ignore it)."""
    import torch
    from transformers import AutoModelForCausalLM

    fam = family(name)
    rope = {"rope_parameters": {"rope_type": "default", "rope_theta": float(rope_theta)}} \
        if fam.rotary and rope_theta is not None else {}
    best = None
    with torch.device("meta"):  # shapes only: no memory, no init time
        for knob in fam.knobs:
            cfg = fam.build(vocab, hidden, knob, train_length, ids, **rope)
            n = non_embedding_params(AutoModelForCausalLM.from_config(cfg))
            if best is None or abs(n - budget) < abs(best[1] - budget):
                best = (cfg, n)
            if n > budget:
                break
    cfg, n = best
    if abs(n - budget) > TOLERANCE * budget:
        raise UsageError(f"lab family {name}: the closest size has {n:,} non-embedding parameters, more than "
                         f"{TOLERANCE:.0%} from the budget of {budget:,}; change params or hidden_size")
    return cfg, n


def family(name: str) -> Family:
    if name not in FAMILIES:
        raise UsageError(f"unknown lab family {name!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def state_bytes(model, length: int) -> dict[str, int]:
    """Bytes of inference state after prefilling `length` tokens for one sequence, split into
    the attention KV cache ("kv") and everything else ("recurrent": SSM, RNN and conv states),
    measured on the objects the model really builds.

    Caches are collected wherever they appear: in the output, in any module's call arguments
    (RecurrentGemma builds its cache inside the forward), and as tensor attributes that modules
    set on themselves (RecurrentGemma's recurrent and conv states). A tensor reached through a
    name containing "key" or "value" is KV cache.
    """
    import torch

    from transformers.cache_utils import Cache

    from ..models.transformers_compat import output_cache

    caches: list = []

    def grab(_module, args, kwargs):
        caches.extend(a for a in list(args) + list(kwargs.values()) if isinstance(a, Cache))

    hooks = [m.register_forward_pre_hook(grab, with_kwargs=True) for m in model.modules()]
    try:
        with torch.no_grad():
            ids = torch.full((1, length), model.config.eos_token_id or 0, dtype=torch.long)
            out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    finally:
        for h in hooks:
            h.remove()
    caches.extend(c for c in (output_cache(out), out.get("state")) if c is not None)  # RWKV: a state list
    found: dict[int, tuple[str, int]] = {}
    for path, t in _tensors(caches, set(), ""):
        if t.is_floating_point():  # integer tensors are bookkeeping (positions, counters)
            found[t.data_ptr()] = (path, t.numel() * t.element_size())
    for module in model.modules():
        for name, value in vars(module).items():
            if isinstance(value, torch.Tensor) and value.is_floating_point() and not name.startswith("_"):
                found[value.data_ptr()] = (name, value.numel() * value.element_size())
    kv = sum(n for path, n in found.values() if "key" in path or "value" in path)
    return {"kv": kv, "recurrent": sum(n for _, n in found.values()) - kv}


def _tensors(obj, seen: set, path: str, depth: int = 0):
    import torch

    if depth > 6 or id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        yield path, obj
    elif isinstance(obj, (list, tuple)):
        for x in obj:
            yield from _tensors(x, seen, path, depth + 1)
    elif isinstance(obj, dict):
        for k, x in obj.items():
            yield from _tensors(x, seen, f"{path}.{k}", depth + 1)
    elif hasattr(obj, "__dict__") and not isinstance(obj, torch.nn.Module):
        for k, x in vars(obj).items():
            yield from _tensors(x, seen, f"{path}.{k}", depth + 1)
