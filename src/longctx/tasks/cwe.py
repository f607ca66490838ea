"""Common words extraction (RULER `common_words_extraction.py`): the 10 words repeated most in a numbered list.

The size unit is the number of distinct words; the search runs on a closed-form token count
(list indices and words are context-free pieces) and the final prompt is counted piece by piece.
"""

from __future__ import annotations

import functools
import random
from itertools import accumulate

from ..corpora import load_words
from ..errors import FitError, UsageError
from ..tokenizer import Run
from .base import Draft, GenContext, TaskSpec, check_fill, distinct_indices, fit_size, shuffled

DEFAULTS = dict(freq_cw=30, freq_ucw=3, num_cw=10)


@functools.lru_cache(maxsize=4)
def vocabulary(seed: int) -> tuple[str, ...]:
    w = load_words()
    vocab = sorted(set(w.nouns + w.adjectives + w.verbs))
    random.Random(seed).shuffle(vocab)
    return tuple(vocab)


def _numbered(words: list[str]) -> list[str]:
    """`1. w 2. w ...` as context-free pieces: ' 12.' and ' word'."""
    pieces = []
    for i, w in enumerate(words, 1):
        pieces += [f" {i}." if i > 1 else "1.", " " + w]
    return pieces


def _example(rng: random.Random, vocab, n: int, f_common: int, f_uncommon: int, n_common: int,
             ctx: GenContext) -> tuple[list[str], list[str]]:
    words = rng.sample(vocab, n)
    common, uncommon = words[:n_common], words[n_common:]
    items = common * f_common + uncommon * f_uncommon
    (ctx.fixed_rng() if ctx.compat else rng).shuffle(items)
    return items, common


def generate(spec: TaskSpec, length: int, ttg: int, index: int, rng: random.Random, ctx: GenContext,
             state: dict) -> Draft:
    p = DEFAULTS | dict(spec.params)
    for k in ("freq_cw", "freq_ucw", "num_cw"):
        if not isinstance(p[k], int) or p[k] < 1:
            raise UsageError(f"cwe {k} must be a positive integer, not {p[k]!r}")
    vocab = vocabulary(ctx.options.seed)
    if length < 4096:  # RULER overrides the yaml below 4K
        f_cw, f_ucw, shot = 6, 1, (20, 3, 1)
    else:
        f_cw, f_ucw, shot = p["freq_cw"], p["freq_ucw"], (40, 10, 3)
    n_cw = p["num_cw"]
    shot_items, shot_answer = _example(rng, vocab, shot[0], shot[1], shot[2], n_cw, ctx)
    sep = "" if ctx.era == "2024" else " "
    sh, st, sp = ctx.template("cwe", {"query": "", "num_cw": n_cw})
    answer = "".join(_numbered(shot_answer))
    demo = sh + "".join(_numbered(shot_items)) + st + sp + sep + answer.strip() + "\n"
    head, tail, prefix = ctx.template("cwe", {"query": "", "num_cw": n_cw}, preamble=demo)
    # The head as pieces, so its (per-sample) example is counted from memoised pieces too.
    head_pieces = [sh, *_numbered(shot_items), st + sp + sep, *_numbered(shot_answer), "\n" + head[len(demo):]]
    if answer != answer.strip() or "".join(head_pieces) != head:
        head_pieces = [head]
    head_pieces = [x for x in head_pieces if x]
    head_run = Run(tuple(head_pieces), 0, len(head_pieces))  # its table is built once per sample
    # Each extra word costs at least 2 tokens (index + word) per occurrence: a safe upper bound.
    chosen = distinct_indices(rng, len(vocab), min(len(vocab), length // (2 * f_ucw) + n_cw))
    words = [vocab[i] for i in chosen]
    order_rng = ctx.fixed_rng() if ctx.compat else random.Random(rng.getrandbits(64))
    order_seed = order_rng.getrandbits(64)
    meta = dict(freq_cw=f_cw, freq_ucw=f_ucw)

    def items_of(n: int) -> list[str]:
        common, uncommon = words[:n_cw], words[n_cw:n]
        items = common * f_cw + uncommon * f_ucw
        return shuffled(items, random.Random(order_seed))

    def build(n: int) -> Draft:  # the reference: every piece counted in context
        return ctx.draft(head_pieces, _numbered(items_of(n)), [tail], prefix, words[:n_cw], dict(meta, num_words=n))

    budget = length - ttg
    what = f"{spec.name}@{length}"
    if "costs" not in state:
        state["costs"] = _Costs(ctx)
    costs = state["costs"]
    vocab_tokens = ctx.cache.get(("cwe-vocab", ctx.options.seed))
    if vocab_tokens is None:  # every vocabulary word as a list item, measured once per tokenizer
        vocab_tokens = ctx.cache[("cwe-vocab", ctx.options.seed)] = ctx.counter.count_each([" " + w for w in vocab], prev="1.")
    word_tokens = [vocab_tokens[i] for i in chosen]
    hint = costs.hint(word_tokens, n_cw, f_cw, f_ucw, budget - ctx.count([head_run, tail, prefix]))
    if hint > len(words):
        raise FitError(f"{what}: needs more distinct words than the {len(vocab)}-word vocabulary")
    if ctx.exact or ctx.options.remove_newline_tab:
        n, d = fit_size(build, n_cw, len(words), hint, budget, what)
    else:
        n, d = _fit_closed_form(ctx, costs, head_run, tail, prefix, words, word_tokens, n_cw, f_cw, f_ucw,
                                items_of, budget, hint)
        d.targets, d.meta = tuple(words[:n_cw]), dict(meta, num_words=n)
    check_fill(d, budget, length, ttg, what)
    return d


def _fit_closed_form(ctx, costs, head_run, tail, prefix, words, word_tokens, n_cw, f_cw, f_ucw, items_of,
                     budget, hint):
    """The largest word count that fits, from a closed form of the list's tokens.

    Every list piece (` 12.`, ` word`) is context-free, so the list costs the head and its first
    `1.`, the other indices, each word times its frequency, and the tail's junction with the last
    item: the only order-dependent term. The list is shuffled once for the chosen size (again only
    if that junction pushes it over).
    """
    counter = ctx.counter
    word_sums = list(accumulate(word_tokens, initial=0))
    opening = counter.total([head_run, "1."])
    ends = [p for p in (tail, prefix) if p]

    def end_tokens(last: str) -> int:
        return sum(counter.counts(list(zip([" " + last] + ends[:-1], ends)))) if ends else 0

    def count(n: int, last: str) -> int:
        m = n_cw * f_cw + (n - n_cw) * f_ucw  # list items
        listed = word_sums[n_cw] * f_cw + (word_sums[n] - word_sums[n_cw]) * f_ucw
        return opening + costs.index_cost(m) - costs.index_cost(1) + listed + end_tokens(last)

    def estimate(n: int) -> int:
        return count(n, words[0])

    n = min(max(hint, n_cw), len(words))
    while n > n_cw and estimate(n) > budget:
        n -= 1
    while n < len(words) and estimate(n + 1) <= budget:
        n += 1
    while True:
        items = items_of(n)
        tokens = count(n, items[-1])
        if tokens <= budget or n == n_cw:
            break
        n -= 1
    if tokens > budget:
        raise FitError(f"even {n_cw} common words ({tokens} tokens) exceed the budget of {budget}")
    pieces = [head_run, " ".join(f"{i}. {w}" for i, w in enumerate(items, 1)), tail]
    return n, Draft([x for x in pieces if x], prefix, (), {}, tokens)


class _Costs:
    """Closed-form token cost of a list, for a size hint without rendering it."""

    def __init__(self, ctx: GenContext):
        self.ctx = ctx
        self.index_prefix = [0]

    def index_cost(self, m: int) -> int:
        """Tokens of the indices ` 1.` .. ` m.`, each after a word."""
        while len(self.index_prefix) <= m:
            start = len(self.index_prefix)
            batch = [f" {i}." for i in range(start, start + 512)]
            self.index_prefix += list(accumulate(self.ctx.counter.count_each(batch, prev="w"),
                                                 initial=self.index_prefix[-1]))[1:]
        return self.index_prefix[m]

    def hint(self, costs: list[int], n_cw, f_cw, f_ucw, room: int) -> int:
        """How many distinct words fit in `room` tokens, given each word's tokens (a bisection on
        the list's cost, which grows with the number of words)."""
        sums = list(accumulate(costs, initial=0))
        common = sums[n_cw] * f_cw

        def fits(n: int) -> bool:
            words = common + (sums[n] - sums[n_cw]) * f_ucw
            return words + self.index_cost(n_cw * f_cw + (n - n_cw) * f_ucw) <= room

        lo, hi = n_cw, len(costs) + 1  # the answer is the last n in [lo, hi) that fits (lo at least)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if fits(mid):
                lo = mid
            else:
                hi = mid
        return lo if lo < len(costs) else len(costs) + 1
