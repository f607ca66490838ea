"""Frequent words extraction (RULER `freq_words_extraction.py`): the 2nd-4th most frequent coded words.

Word frequencies follow a Zipf law (count of rank r = int(n * r^-alpha / zeta(alpha))). Every word
is a context-free ' word' piece, so the prompt's token count is a closed form of the word counts,
which keeps a 16K prompt of ~10K pieces cheap to fit.
"""

from __future__ import annotations

import random
import string

import numpy as np
from scipy.special import zeta

from ..errors import UsageError
from ..tokenizer import word_pieces
from .base import Draft, GenContext, TaskSpec, check_fill, shuffled

DEFAULTS = dict(alpha=2.0)


class _Zipf:
    """Word counts of rank r: int(n * r**-alpha / zeta(alpha)), vectorised over ranks. The powers
    are Python's (numpy's may differ in the last bit on some CPUs); the product and quotient are
    IEEE-exact in both, so counts match the scalar formula exactly."""

    def __init__(self, vocab_size: int, alpha: float):
        self.powers = np.array([r ** -alpha for r in range(1, vocab_size + 1)], dtype=np.float64)
        self.z = zeta(alpha)

    def counts(self, num_words: int) -> np.ndarray:
        return ((float(num_words) * self.powers) / self.z).astype(np.int64)


def generate(spec: TaskSpec, length: int, ttg: int, index: int, rng: random.Random, ctx: GenContext,
             state: dict) -> Draft:
    p = DEFAULTS | dict(spec.params)
    alpha = p["alpha"]
    if not isinstance(alpha, (int, float)) or alpha <= 1:
        raise UsageError(f"fwe alpha must be a number > 1, not {alpha!r}")
    budget = length - ttg
    vocab_size = (length if ctx.era == "2024" else budget) // 50
    letters = "".join(rng.choices(string.ascii_lowercase, k=6 * vocab_size))  # one draw for every word
    vocab = sorted({letters[i:i + 6] for i in range(0, len(letters), 6)})
    (ctx.fixed_rng() if ctx.compat else rng).shuffle(vocab)
    vocab[0] = "..."
    head, tail, prefix = ctx.template("fwe", {})
    head = head.rstrip(" ")  # the space before {context} opens the first ' word' piece
    targets = vocab[1:4]
    order_seed = (ctx.fixed_rng() if ctx.compat else rng).getrandbits(64)
    zipf = _Zipf(len(vocab), alpha)
    lo, hi = 0, budget * 2  # the search range of num_words
    # Only words that occur at the largest size searched are ever counted (a word's count only grows
    # with num_words): with alpha = 2 that is ~80 of a 16K prompt's ~330 words.
    live = np.flatnonzero(zipf.counts(hi))
    word_cost = np.zeros(len(vocab), dtype=np.int64)
    word_cost[live] = ctx.counter.count_each([" " + vocab[i] for i in live.tolist()], prev="a")
    # The prompt without its list, taking the list to end in " a"; only the tail's first word
    # (`opener`) depends on the list's real last word, and is recounted for it.
    tail_words = word_pieces(tail)
    opener = tail_words[0] if tail_words else prefix
    after_a = ctx.counter.count_each([opener], prev=" a")[0]
    fixed = ctx.counter.total([head, " a", *tail_words, prefix]) - ctx.counter.count_each([" a"], prev="a")[0]

    def estimate(num_words: int) -> int:  # exact up to the tail's junction with the last word
        return fixed + int(zipf.counts(num_words) @ word_cost)

    def build(num_words: int) -> Draft:
        counts = zipf.counts(num_words)
        words: list[str] = []
        for w, c in zip(vocab, counts.tolist()):
            words += [w] * c
        words = shuffled(words, random.Random(order_seed))
        context = " " + " ".join(words) if words else ""
        pieces, pre = ctx.finish([head, context, tail], prefix)
        if ctx.exact or ctx.options.remove_newline_tab or not words:
            tokens = ctx.tok.count("".join(pieces) + pre)
        else:  # additive: head, context-free words, the tail's junction with the last word, the prefix
            opening = ctx.counter.count_each([opener], prev=" " + words[-1])[0]
            tokens = fixed - after_a + opening + int(counts @ word_cost)
        return Draft(pieces, pre, tuple(targets), {"num_words": num_words, "vocab_size": len(vocab)}, tokens)

    while hi - lo > 1:  # bisect on num_words: counts only grow with it
        mid = (lo + hi) // 2
        if estimate(mid) <= budget:
            lo = mid
        else:
            hi = mid
    d = build(lo)
    for _ in range(64):  # the estimate can be off by the tail junction: step down while over
        if d.tokens <= budget or lo == 0:
            break
        lo -= 1
        d = build(lo)
    check_fill(d, budget, length, ttg, f"{spec.name}@{length}")
    return d
