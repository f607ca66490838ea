"""The recurrent state while a prompt is read (`state` -> `state.csv`), and the memory each
selective-SSM head keeps (`state_decay` -> `state_decay.csv`).

Stuffed Mamba (Chen et al. 2024) traces a recurrent model's failure past its training length to its
state: trained on short sequences, the state's statistics leave the range it learned, and the
model's output with them ("state collapse"). Here the prompt is fed in chunks of `every` tokens and,
after each chunk, each layer's recurrent state (per head, where the state has heads: Mamba2) is
summarised: RMS, mean, variance and largest magnitude, at that position, with the training length.

A series (one model, sample, layer and head) **collapses** where, beyond the training length, its
RMS leaves [half the smallest, twice the largest] RMS it had within the training length (the
report counts the series that do and where they first do).

`state_decay`, from the weights alone: a selective SSM head multiplies its state by
exp(A dt) a token, dt = softplus(the time step's bias) for an input that adds nothing to it; that
decay implies a memory of about 1 / (1 - decay) tokens. (Mamba2: per head; Mamba and FalconMamba:
the median over each layer's channels and states, and the longest.)
"""

from __future__ import annotations

from ..types import Sample

FAMILIES = {"mamba", "falcon_mamba", "mamba2"}  # transformers' caches this reads the state from
EVERY = 256


def _not_built(adapter) -> str | None:
    from ..models.hf import RECURRENT_FAMILIES
    from ..models.stateful import STATEFUL_FAMILIES

    family = getattr(adapter, "family", None)
    if family in FAMILIES:
        return None
    if family not in RECURRENT_FAMILIES | STATEFUL_FAMILIES:
        return "the model has no recurrent state"
    return f"state statistics are built for transformers' Mamba, FalconMamba and Mamba2 so far, not {family}"


class RecurrentState:
    name = "state"
    per_sample = True

    def __init__(self, every: int = EVERY):
        self.every = every

    def skip_reason(self, adapter, sample: Sample | None = None) -> str | None:
        return _not_built(adapter)

    def measure(self, adapter, sample: Sample) -> list[dict]:
        import torch

        from ..models.stateful import prefill_chunks

        ids = torch.tensor([adapter.tokenizer.encode(sample.full_prompt)], device=adapter.model.device)
        train = adapter.train_context
        rows = []
        with torch.no_grad():
            for position, (cache, _, _) in prefill_chunks(adapter.model, adapter.family, ids, self.every):
                for layer in range(len(cache.layers)):
                    for head, values in enumerate(heads_of(cache.get_recurrent_state(layer)[0])):
                        rows.append({"position": position, "layer": layer, "head": head, **summarise(values),
                                     "train_length": train, "beyond_train": bool(train and position > train)})
        return rows


class StateDecay:
    name = "state_decay"
    per_sample = False

    def skip_reason(self, adapter, sample: Sample | None = None) -> str | None:
        return _not_built(adapter)

    def measure(self, adapter, samples: list[Sample]) -> list[dict]:
        import torch
        import torch.nn.functional as F

        rows = []
        mixers = [m for m in adapter.model.modules() if hasattr(m, "A_log")]
        with torch.no_grad():
            for layer, mixer in enumerate(mixers):
                bias = mixer.dt_bias if hasattr(mixer, "dt_bias") else mixer.dt_proj.bias  # Mamba2 | Mamba-1
                rate = torch.exp(mixer.A_log.float())  # -A
                if rate.dim() == 1:  # Mamba2: one decay per head
                    decay = torch.exp(-rate * F.softplus(bias.float()))
                    rows += [{"layer": layer, "head": h, "decay": float(d), "memory_tokens": memory(float(d))}
                             for h, d in enumerate(decay)]
                else:  # Mamba-1: [channels, state]
                    decay = torch.exp(-rate * F.softplus(bias.float())[:, None]).flatten()
                    tokens = sorted(memory(float(d)) for d in decay)
                    rows.append({"layer": layer, "head": "all", "decay": float(decay.median()),
                                 "memory_tokens": tokens[len(tokens) // 2], "longest_memory_tokens": tokens[-1]})
        return rows


def heads_of(state):
    """One flat tensor per head: Mamba2's [heads, head_dim, state], or Mamba's [channels, state] whole."""
    return list(state.reshape(state.shape[0], -1)) if state.dim() == 3 else [state.flatten()]


def summarise(values) -> dict:
    x = values.float()
    return {"rms": float(x.pow(2).mean().sqrt()), "mean": float(x.mean()), "var": float(x.var(unbiased=False)),
            "max_abs": float(x.abs().max())}


def memory(decay: float) -> float:
    """Tokens a state remembers at this decay per token: 1 / (1 - decay) (inf for no decay)."""
    return float("inf") if decay >= 1 else 1 / (1 - decay)


def collapsed(series: list[dict]) -> int | None:
    """The first position beyond the training length where a series' RMS leaves [half its smallest,
    twice its largest] RMS within the training length; None if it stays, or if it has no point
    within the training length to compare with."""
    inside = [r["rms"] for r in series if not r["beyond_train"]]
    if not inside:
        return None
    low, high = min(inside) / 2, max(inside) * 2
    return next((r["position"] for r in sorted(series, key=lambda r: r["position"])
                 if r["beyond_train"] and not low <= r["rms"] <= high), None)
