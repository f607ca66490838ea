"""Retrieval heads and their causal check (`retrieval_heads` -> `retrieval_heads.csv`,
`head_ablation.csv`), after Wu et al. (2024, "Retrieval Head Mechanistically Explains
Long-Context Factuality"; the definition of their public code).

Over the needle samples the model answers correctly, a head's retrieval score is the share of the
needle's tokens it copies: at an answer step, its most attended position lies in the needle and
holds the token being generated (`attention.head_rows`, `copies`), summed over the answer's steps and
divided by the needle's length, then averaged over samples. The causal check masks the `k` heads of
highest score (their outputs zeroed before the attention's output projection) and, on the same
samples, `k` heads drawn at random from the others (seeded), and compares the accuracy of the two
sample by sample (exact McNemar for 0/1 scores, a sign-flip test for partial credit).
"""

from __future__ import annotations

import contextlib
import random
from collections import defaultdict

from ..models.base import GenParams
from ..scoring import score
from ..types import Sample
from .attention import NeedleAttention, attention_layers, attention_steps, head_rows, needle_tokens

TOP_K = 10


class RetrievalHeads:
    name = "retrieval_heads"
    per_sample = False

    def __init__(self, k: int = TOP_K, seed: int = 0, answer_tokens: int = 16):
        self.k, self.seed, self.answer_tokens = k, seed, answer_tokens

    def skip_reason(self, adapter, sample: Sample | None = None) -> str | None:
        reason = NeedleAttention().skip_reason(adapter)
        if reason:
            return reason
        if not all(hasattr(m, "o_proj") for m in attention_layers(adapter.model)):
            return "its attention layers have no o_proj to mask heads at"
        return None

    def measure(self, adapter, samples: list[Sample]) -> list[dict]:
        needles = [s for s in samples if NeedleAttention().skip_reason(adapter, s) is None]
        if not needles:
            return [{"table": "retrieval_heads", "skipped": "no sample with a needle in its prompt"}]
        plain = answer_scores(adapter, needles)
        correct = [s for s, sc in zip(needles, plain) if sc is not None and sc >= 1]
        if not correct:
            return [{"table": "retrieval_heads", "skipped": "the model answered no needle sample correctly"}]
        ranked = retrieval_scores(adapter, correct, self.answer_tokens)
        heads = [h for h, _ in ranked]
        k = min(self.k, len(heads) // 2)
        top = heads[:k]
        rng = random.Random(self.seed)
        others = rng.sample(heads[k:], k)
        with masked(adapter.model, top):
            without_top = answer_scores(adapter, needles)
        with masked(adapter.model, others):
            without_random = answer_scores(adapter, needles)
        rows = [{"table": "retrieval_heads", "rank": i + 1, "layer": h[0], "head": h[1], "retrieval_score": round(v, 6),
                 "correct_samples": len(correct), "masked_in_ablation": "top" if h in top else
                 ("random" if h in others else "")} for i, (h, v) in enumerate(ranked)]
        rows += [{"table": "head_ablation", "sample_id": s.id, "task": s.task, "length": s.length, "k": k,
                  "score": a, "score_top_masked": b, "score_random_masked": c}
                 for s, a, b, c in zip(needles, plain, without_top, without_random)]
        return rows


def retrieval_scores(adapter, samples: list[Sample], answer_tokens: int) -> list[tuple[tuple[int, int], float]]:
    """(layer, head) -> retrieval score, highest first (ties by position)."""
    copied: dict[tuple[int, int], float] = defaultdict(float)
    heads: set[tuple[int, int]] = set()
    for s in samples:
        needle = needle_tokens(adapter.tokenizer, s)
        for query, attentions, sequence, generated in attention_steps(adapter, s, answer_tokens):
            for r in head_rows(attentions, needle, sequence, generated, query):
                heads.add((r["layer"], r["head"]))
                copied[(r["layer"], r["head"])] += r["copies"] / len(needle) / len(samples)
    return sorted(((h, copied[h]) for h in heads), key=lambda hv: (-hv[1], hv[0]))


def answer_scores(adapter, samples: list[Sample]) -> list[float | None]:
    """Each sample's score from a greedy answer (None where the backend failed it)."""
    out = adapter.generate([s.full_prompt for s in samples], GenParams(samples[0].tokens_to_generate))
    return [score(s.metric, c.text, s.targets) if c.ok else None for s, c in zip(samples, out)]


@contextlib.contextmanager
def masked(model, heads: list[tuple[int, int]]):
    """While on, each (attention layer, head)'s output is zeroed where the heads are joined, at the
    input of the layer's output projection: that head contributes nothing, the others are unchanged."""
    layers = attention_layers(model)
    by_layer: dict[int, list[int]] = defaultdict(list)
    for layer, head in heads:
        by_layer[layer].append(head)
    handles = []
    for layer, chosen in by_layer.items():
        module = layers[layer]
        width = module.o_proj.in_features // module.config.num_attention_heads

        def zero(_proj, args, chosen=chosen, width=width):
            x = args[0].clone()
            for h in chosen:
                x[..., h * width:(h + 1) * width] = 0
            return (x, *args[1:])

        handles.append(module.o_proj.register_forward_pre_hook(zero))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
