"""Needle in a haystack (RULER `niah.py`): niah_single_*, niah_multikey_*, niah_multivalue, niah_multiquery.

Parameters: haystack (noise | essay | needle | words; "repeat" is the 2024 name of noise; words is
ours: random words from the key word lists, a haystack with no structure and one-word granularity), key_type and
value_type (words | numbers | uuids), num_keys, num_values, num_queries, depth (0-100, every
needle at that depth; None = RULER's random placement; honoured for every haystack) and digits
(length of number keys and values; RULER's 7 by default; the lab uses short ones).
"""

from __future__ import annotations

import functools
import random
import uuid
from typing import Any

from ..corpora import load_essays, load_words
from ..errors import UsageError
from .base import Draft, GenContext, TaskSpec, best_fill, check_fill, filled, fit_size

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NOISE_WORDS = NOISE.split(" ")
NEEDLE = "One of the special magic {type_v} for {key} is: {value}."
# RULER's essay depth grid: round(linspace(0, 100, 40)).
DEPTHS = [round(i * 100 / 39) for i in range(40)]
HAYSTACKS = ("noise", "essay", "needle", "words")
VALUE_TYPES = ("words", "numbers", "uuids")
DEFAULTS = dict(haystack="essay", key_type="words", value_type="numbers", num_keys=1, num_values=1,
                num_queries=1, depth=None, digits=7)


def draw_value(kind: str, rng: random.Random, digits: int = 7) -> str:
    if kind == "words":
        w = load_words()
        return f"{rng.choice(w.adjectives)}-{rng.choice(w.nouns)}"
    if kind == "numbers":
        return str(rng.randint(10 ** (digits - 1), 10**digits - 1))
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def check_params(p: dict[str, Any]) -> dict[str, Any]:
    p = DEFAULTS | p
    if p["haystack"] == "repeat":
        p["haystack"] = "noise"
    if p["haystack"] not in HAYSTACKS:
        raise UsageError(f"niah haystack must be one of {', '.join(HAYSTACKS)} (or repeat), not {p['haystack']!r}")
    for k in ("key_type", "value_type"):
        if p[k] not in VALUE_TYPES:
            raise UsageError(f"niah {k} must be one of {', '.join(VALUE_TYPES)}, not {p[k]!r}")
    for k in ("num_keys", "num_values", "num_queries"):
        if not isinstance(p[k], int) or p[k] < 1:
            raise UsageError(f"niah {k} must be a positive integer, not {p[k]!r}")
    if p["num_queries"] > max(p["num_keys"], p["num_queries"]):
        raise UsageError("niah num_queries cannot exceed num_keys")
    if not isinstance(p["digits"], int) or isinstance(p["digits"], bool) or not 1 <= p["digits"] <= 30:
        raise UsageError(f"niah digits (length of number keys and values) must be an integer in 1..30, not {p['digits']!r}")
    d = p["depth"]
    if d is not None and not (isinstance(d, (int, float)) and 0 <= d <= 100):
        raise UsageError(f"niah depth must be a number in 0..100 (percent), not {d!r}")
    n_needles = max(p["num_keys"], p["num_queries"]) * p["num_values"]
    if p["haystack"] == "essay" and d is None and n_needles > len(DEPTHS):
        raise UsageError(f"essay NIAH places at most {len(DEPTHS)} needles at random depths")
    return p


def generate(spec: TaskSpec, length: int, ttg: int, index: int, rng: random.Random, ctx: GenContext,
             state: dict) -> Draft:
    p = check_params(dict(spec.params))
    k = max(p["num_keys"], p["num_queries"])
    v, q = p["num_values"], p["num_queries"]
    keys = [draw_value(p["key_type"], rng, p["digits"]) for _ in range(k)]
    values = [[draw_value(p["value_type"], rng, p["digits"]) for _ in range(v)] for _ in range(k)]
    needles = [NEEDLE.format(type_v=p["value_type"], key=keys[i], value=val) for i in range(k) for val in values[i]]
    (ctx.fixed_rng() if ctx.compat else rng).shuffle(needles)
    asked = rng.sample(range(k), q)
    targets = [val for i in asked for val in values[i]]
    query = keys[asked[0]] if q == 1 else ", ".join(keys[i] for i in asked[:-1]) + ", and " + keys[asked[-1]]
    singular = v * q == 1
    type_v = p["value_type"][:-1] if singular else p["value_type"]
    head, tail, prefix = ctx.template("niah", {"type_needle_v": type_v, "query": query}, singular=singular)
    meta = dict(haystack=p["haystack"], key_type=p["key_type"], value_type=p["value_type"], num_needles=len(needles),
                depth=p["depth"])
    budget = length - ttg
    what = f"{spec.name}@{length}"
    depths = _depths(p, len(needles), rng)
    if p["haystack"] == "essay":
        essays = load_essays(ctx.data.essays_path())
        starts = [0 if ctx.compat else rng.randrange(len(essays.sentences))]
        # A window can end at a huge "word" (a URL, a code line) that adds 100+ tokens at once;
        # then a new window start is drawn, at most a few times.
        starts += [rng.randrange(len(essays.sentences)) for _ in range(7)]

        def essay_build(start: int):
            def build(n: int) -> Draft:
                sents = _essay_sentences(essays, start, n)
                return _assemble(ctx, head, tail, prefix, sents, needles, depths, " ", targets, meta, ctx.compat)
            return build

        build = essay_build(starts[0])

        n_max = max(1, 3 * length)  # words; essay tokens/word is ~1.3, so 3 words/token is a safe ceiling
    else:
        pool = _Pool(p, rng) if p["haystack"] in ("needle", "words") else None
        sep = " " if p["haystack"] == "words" else "\n"

        def build(n: int, partial: str = "") -> Draft:
            units = (pool.lines(n) if pool else [NOISE] * n) + ([partial] if partial else [])
            return _assemble(ctx, head, tail, prefix, units, needles, depths, sep, targets, meta, False)

        n_max = max(1, length)
    hint = state.get("hint") or _probe_hint(build, budget)
    n, draft = fit_size(build, 0, n_max, hint, budget, what)
    state["hint"] = n
    if p["haystack"] == "essay":
        for start in starts[1:]:
            if filled(draft, length, ttg):
                break
            n, draft = fit_size(essay_build(start), 0, n_max, n, budget, what)
    if p["haystack"] == "noise" and not filled(draft, length, ttg):
        draft = _noise_top_up(build, n, draft, budget)
    if p["haystack"] in ("needle", "words"):
        for spares in (32, 128):
            if filled(draft, length, ttg):
                break
            draft = _top_up(ctx, pool, n, build, draft, budget, spares, sep)
    check_fill(draft, budget, length, ttg, what)
    return draft


def _depths(p: dict, n_needles: int, rng: random.Random) -> list[float]:
    """Fractional positions (0..1) of the needles in the haystack, sorted."""
    if p["depth"] is not None:
        return [p["depth"] / 100] * n_needles
    if p["haystack"] == "essay":
        return sorted(d / 100 for d in rng.sample(DEPTHS, n_needles))
    # RULER draws distinct line indices uniformly from range(n); a uniform fraction scaled by n is the
    # same distribution and does not depend on n, which the size search varies.
    return sorted(rng.random() for _ in range(n_needles))


def _essay_sentences(essays, start: int, n_words: int) -> list[str]:
    """The first n_words words from sentence `start` on (wrapping around), last sentence truncated."""
    out, left, i, total = [], n_words, start, len(essays.sentences)
    while left > 0:
        s, wc = essays.sentences[i % total], essays.word_counts[i % total]
        out.append(s if wc <= left else " ".join(s.split(" ")[:left]))
        left -= wc
        i += 1
    return out


def _assemble(ctx, head, tail, prefix, units, needles, depths, sep, targets, meta, ruler_gaps) -> Draft:
    """Insert each needle after int(len(units) * depth) units and join with `sep`.

    With `ruler_gaps` (essay, ruler_compat) the text is RULER's `" ".join` of sentence groups and
    needles, where an empty group leaves a leading or doubled space.
    """
    n = len(units)
    cut = [int(n * d) for d in depths]
    parts: list[list[str] | str] = []  # sentence groups (lists) and needles (str), interleaved
    prev = 0
    for needle, c in zip(needles, cut):
        parts += [list(units[prev:c]), needle]
        prev = c
    parts.append(list(units[prev:]))
    context: list[str] = []
    for part in parts:
        items = [part] if isinstance(part, str) else part
        if not items and ruler_gaps:
            items = [""]
        for item in items:
            context.append(item if not context else sep + item)
    m = dict(meta, haystack_units=n, needle_unit_index=cut)
    return ctx.draft([head], context, [tail], prefix, targets, m)


def _noise_top_up(build, n: int, draft: Draft, budget: int) -> Draft:
    """One noise repeat is ~25 tokens, more than the 3 % slack below ~800 tokens: after n whole
    repeats, add the longest run of the repeat's first words that still fits (RULER would leave
    the prompt short; see docs/ruler-differences.md)."""
    for k in range(1, len(NOISE_WORDS)):
        longer = build(n, " ".join(NOISE_WORDS[:k]))
        if longer.tokens > budget:
            break
        draft = longer
    return draft


def _probe_hint(build, budget: int) -> int:
    small = build(8)
    per_unit = max(1e-6, (small.tokens - build(0).tokens) / 8)
    return max(0, int((budget - build(0).tokens) / per_unit))


@functools.lru_cache(maxsize=1)
def _single_words() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The word lists without their few multi-word entries ("dump truck"): one haystack unit is
    one word."""
    w = load_words()

    def single(words):
        return tuple(x.strip() for x in words if x.strip() and " " not in x.strip())

    return single(w.adjectives), single(w.nouns)


class _Pool:
    """Distractor needles (`needle` haystack) or random words (`words`), drawn lazily from their own
    RNG stream."""

    def __init__(self, p: dict, rng: random.Random):
        self.p = p
        self.rng = random.Random(rng.getrandbits(64))
        self._lines: list[str] = []

    def lines(self, n: int) -> list[str]:
        while len(self._lines) < n:
            self._lines.append(self._word() if self.p["haystack"] == "words" else self._needle())
        return self._lines[:n]

    def _word(self) -> str:
        adjectives, nouns = _single_words()
        return self.rng.choice(adjectives if self.rng.random() < 0.5 else nouns)

    def _needle(self) -> str:
        key, val = (draw_value(self.p[k], self.rng, self.p["digits"]) for k in ("key_type", "value_type"))
        return NEEDLE.format(type_v=self.p["value_type"], key=key, value=val)

    def replace(self, chosen_idx: int, spare_idx: int) -> None:
        self._lines[chosen_idx], self._lines[spare_idx] = self._lines[spare_idx], self._lines[chosen_idx]


def _top_up(ctx: GenContext, pool: _Pool, n: int, build, draft: Draft, budget: int, spares: int,
            sep: str = "\n") -> Draft:
    """Large distractor lines (two UUIDs) can leave more than 3 % unused at 1K, and so can one
    multi-token word at 128: add a spare unit that fits, or swap units for longer spares, then
    keep the result only if it still fits."""
    lines = pool.lines(n + spares)
    sizes = ctx.counter.count_each([sep + line for line in lines])
    added, swaps = best_fill(sizes[:n], sizes[n:], budget - draft.tokens)
    saved = list(pool._lines)
    for i, j in zip(swaps[::2], swaps[1::2]):
        pool.replace(i, n + j)
    new_n = n
    for j in added:
        pool.replace(new_n, n + j)
        new_n += 1
    d = build(new_n)
    if d.tokens <= budget and d.tokens >= draft.tokens:
        return d
    pool._lines = saved
    return draft
