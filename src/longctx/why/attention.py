"""Needle attention: how much of each attention head's mass lands on the needle's tokens, from the
last prompt token and from each answer token (`needle_attention.csv`).

A full attention map is never built (at 16K tokens on SmolLM2 it would take about 270 GiB): the
prompt but its last token is prefilled with the model's own fast kernel into a cache, then the
last prompt token and each greedy answer token run one at a time in transformers' eager attention,
which returns only their own rows ([heads, 1, positions] per layer). The needle's tokens are those
whose characters overlap an occurrence of a target in the prompt (for NIAH, the needle's value).

Each row: the query ("last" or "answer_k"), the attention layer (counted among the model's
attention layers only, so a hybrid's recurrent layers do not count), the head, the mass on the
needle, and `uniform`, the mass a head spreading its attention evenly would put there (needle
tokens / positions seen): a mass far above `uniform` is attention that found the needle.
"""

from __future__ import annotations

import contextlib

from ..models.transformers_compat import with_cache
from ..types import Sample

# Answer tokens whose attention rows are kept (beyond them an answer rarely still copies the needle).
ANSWER_TOKENS = 8


class NeedleAttention:
    name = "needle_attention"
    per_sample = True

    def __init__(self, answer_tokens: int = ANSWER_TOKENS):
        self.answer_tokens = answer_tokens

    def skip_reason(self, adapter, sample: Sample | None = None) -> str | None:
        model = getattr(adapter, "model", None)
        if model is None or not hasattr(model, "set_attn_implementation"):
            return f"needs a transformers model (the hf backend), not {type(adapter).__name__}"
        if not attention_layers(model):
            return "the model has no attention layer"
        if sample is not None and not needle_spans(adapter.tokenizer, sample):
            return f"no target of {sample.task} appears in its prompt (no needle to attend to)"
        if sample is not None:
            return too_big(model, sample.meta.get("token_count") or sample.length)
        return None

    def measure(self, adapter, sample: Sample) -> list[dict]:
        needle = needle_tokens(adapter.tokenizer, sample)
        rows = []
        for query, attentions, sequence, generated in attention_steps(adapter, sample, self.answer_tokens):
            rows += head_rows(attentions, needle, sequence, generated, query)
        return rows


def attention_steps(adapter, sample: Sample, answer_tokens: int):
    """For the last prompt token and each greedy answer token after it, up to `answer_tokens` of
    them (or the end token): (query name, each attention layer's weights of that one query row
    [1, heads, 1, positions], the token ids seen so far, the token the step generates)."""
    import torch
    from transformers import DynamicCache

    model = adapter.model
    ids = adapter.tokenizer.encode(sample.full_prompt)
    with torch.no_grad():
        cache = DynamicCache(config=model.config)
        model(input_ids=torch.tensor([ids[:-1]], device=model.device), use_cache=True, logits_to_keep=1,
              **with_cache(model, cache))
        sequence = list(ids)
        for k in range(1 + answer_tokens):
            with _eager(model):
                out = model(input_ids=torch.tensor([sequence[-1:]], device=model.device), use_cache=True,
                            output_attentions=True, logits_to_keep=1, **with_cache(model, cache))
            generated = int(out.logits[0, -1].argmax())
            yield ("last" if k == 0 else f"answer_{k}"), [a for a in out.attentions if a is not None], sequence, generated
            if generated in adapter.eos_ids:
                break
            sequence = sequence + [generated]


def needed_bytes(model, positions: int) -> int:
    """About what the prefill needs at `positions` tokens: the keys and values of every layer (the
    cache), twice over for the activations beside them, and the MLP's widest activation four
    times: above what benchmarks/why.py measures (benchmarks/README.md), so a refusal is safe."""
    import torch

    config = model.config
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    width = torch.finfo(model.dtype).bits // 8
    cache = config.num_hidden_layers * 2 * heads * dim * positions * width
    return 3 * cache + 4 * (getattr(config, "intermediate_size", None) or 4 * config.hidden_size) * positions * width


def too_big(model, positions: int) -> str | None:
    """Why a sample of `positions` tokens would not fit in the memory this machine can give, or None."""
    from ..host import available_memory

    need, room = needed_bytes(model, positions), available_memory()
    if room is not None and need > room:
        return (f"needs about {need / 2 ** 30:.1f} GiB at {positions:,} tokens and this machine can give "
                f"{room / 2 ** 30:.1f} GiB")
    return None


def needle_tokens(tokenizer, sample: Sample) -> list[int]:
    """The positions of the needle's tokens (`needle_spans`, merged)."""
    return sorted({t for a, b in needle_spans(tokenizer, sample) for t in range(a, b)})


def head_rows(attentions, needle: list[int], sequence: list[int], generated: int, query: str) -> list[dict]:
    """One row per layer and head. `copies`: the head's most attended position lies in the needle
    and holds the token this step generates (Wu et al. 2024's copy event)."""
    out, inside = [], set(needle)
    for layer, weights in enumerate(attentions):  # [1, heads, 1, seen], or the window's last columns
        row = weights[0, :, -1]
        offset = len(sequence) - row.shape[-1]  # a local layer sees only its window: the latest positions
        seen = [t - offset for t in needle if t >= offset]
        mass = row[:, seen].sum(-1).tolist() if seen else [0.0] * row.shape[0]
        top = (row.argmax(-1) + offset).tolist()
        for head, value in enumerate(mass):
            at = top[head]
            out.append({"query": query, "layer": layer, "head": head, "needle_mass": round(value, 6),
                        "uniform": round(len(needle) / len(sequence), 6), "needle_tokens": len(needle),
                        "positions": len(sequence), "copies": int(at in inside and sequence[at] == generated)})
    return out


def needle_spans(tokenizer, sample: Sample) -> list[tuple[int, int]]:
    """Token ranges [start, end) of every occurrence of a target in the prompt (not in the answer
    prefix), in the full prompt's token positions."""
    text = sample.full_prompt
    chars = []
    for target in sample.targets:
        start = sample.prompt.find(target) if target else -1
        while start >= 0:
            chars.append((start, start + len(target)))
            start = sample.prompt.find(target, start + 1)
    if not chars:
        return []
    offsets = tokenizer.hf(text, add_special_tokens=tokenizer.adds_special_tokens(text),
                           return_offsets_mapping=True)["offset_mapping"]
    spans = []
    for a, b in chars:
        tokens = [i for i, (s, e) in enumerate(offsets) if s < b and e > a and e > s]
        if tokens:
            spans.append((tokens[0], tokens[-1] + 1))
    return spans


def attention_layers(model) -> list:
    """The modules that compute softmax attention the model's attention implementation dispatches to
    (none in a model whose config has no attention heads: RWKV's "attention" is a linear recurrence)."""
    if not isinstance(getattr(model.config, "num_attention_heads", None), int):
        return []
    return [m for m in model.modules() if type(m).__name__.endswith("Attention") and hasattr(m, "config")]


@contextlib.contextmanager
def _eager(model):
    """transformers' eager attention (which returns its weights) for one call, then the model's own."""
    own = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(own)
