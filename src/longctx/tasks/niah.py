"""Needle in a haystack (RULER `niah.py`): niah_single_*, niah_multikey_*, niah_multivalue, niah_multiquery.

Parameters: haystack (noise | essay | needle | words; "repeat" is the 2024 name of noise; words is
ours: random words from the key word lists, a haystack with no structure and one-word granularity), key_type and
value_type (words | numbers | uuids), num_keys, num_values, num_queries, depth (0-100, every
needle at that depth; None = RULER's random placement; honoured for every haystack) and digits
(length of number keys and values; RULER's 7 by default; the lab uses short ones).
"""

from __future__ import annotations

import bisect
import functools
import random
import uuid
from itertools import accumulate
from typing import Any

from ..corpora import load_essays, load_words
from ..errors import UsageError
from ..tokenizer import Run, repeated
from ..types import stable_hash
from .base import Draft, GenContext, TaskSpec, best_fill, check_fill, filled, fit_size, random_indices, word_pieces

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
    pool = None  # the needle and words haystacks draw their units from a pool
    if p["haystack"] == "essay":
        essays = load_essays(ctx.data.essays_path())
        units = _essay_units(essays)
        starts = [0 if ctx.compat else rng.randrange(len(essays.sentences))]
        # A window can end at a huge "word" (a URL, a code line) that adds 100+ tokens at once;
        # then a new window start is drawn, at most a few times.
        starts += [rng.randrange(len(essays.sentences)) for _ in range(7)]

        def essay_build(start: int):
            def build(n: int) -> Draft:
                hay = units.window(start, n)
                return _assemble(ctx, head, tail, prefix, hay, needles, depths, " ", targets, meta, ctx.compat)
            return build

        build = essay_build(starts[0])

        n_max = max(1, 3 * length)  # words; essay tokens/word is ~1.3, so 3 words/token is a safe ceiling
    else:
        sep = " " if p["haystack"] == "words" else "\n"
        if p["haystack"] == "words":
            pool = _WordUnits(rng)
        elif p["haystack"] == "needle":
            pool = _NeedleLines(p, _distractor_parts(ctx, p, length), rng, set(keys))

        def build(n: int, partial: str = "") -> Draft:
            hay = pool.hay(n, ctx) if pool else [Run(repeated(sep + NOISE, n), 0, n)]
            if partial:
                hay.append(sep + partial)
            return _assemble(ctx, head, tail, prefix, hay, needles, depths, sep, targets, meta, False)

        n_max = max(1, length)
    hint = state.get("hint") or _probe_hint(build, budget)
    if p["haystack"] == "essay" and "overhead" in state and not ctx.exact:
        # the window's own sentence counts place the first probe within a sentence of the answer
        hint = units.hint(starts[0], budget - state["overhead"], ctx.counter) or hint
    n, draft = fit_size(build, 0, n_max, hint, budget, what)
    state["hint"] = n
    if p["haystack"] == "essay":
        # prompt tokens besides the window's sentences, for the next hint
        state["overhead"] = draft.tokens - units.tokens(starts[0], n, ctx.counter)
        for start in starts[1:]:
            if filled(draft, length, ttg):
                break
            n, draft = fit_size(essay_build(start), 0, n_max, n, budget, what)
    if p["haystack"] == "noise" and not filled(draft, length, ttg):
        draft = _noise_top_up(build, n, draft, budget)
    if pool is not None:
        for spares in (32, 128):
            if filled(draft, length, ttg):
                break
            draft = _top_up(ctx, pool, n, build, draft, budget, spares)
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


class _EssayUnits:
    """The essay corpus as sep-prefixed sentences (" " + sentence) with cumulative word counts, so a
    window of n words is a Run or two (it may wrap around) plus a word-truncated last sentence."""

    def __init__(self, essays):
        self.essays = essays
        self.seq = tuple(" " + s for s in essays.sentences)
        self.words = list(accumulate(essays.word_counts, initial=0))

    def hint(self, start: int, room: int, counter) -> int | None:
        """Words from sentence `start` on whose tokens fit `room`: the whole sentences that fit, plus
        the share of the next one that its own tokens per word would fill (None if the window
        would wrap around the corpus: the caller's own hint is used then)."""
        cum = counter.table(self.seq)
        base = cum[start + 1]  # cum[i] sums the sentences 1..i-1 after their predecessors
        k = bisect.bisect_right(cum, base + room, lo=start + 1) - 1  # sentences start..k-1
        if k + 1 >= len(self.seq):
            return None
        words = self.words[k + 1] - self.words[k]
        left, cost = base + room - cum[k], cum[k + 1] - cum[k]
        return self.words[k] - self.words[start] + (min(words, left * words // cost) if cost > 0 else 0)

    def tokens(self, start: int, n_words: int, counter) -> int:
        """Approximate tokens of a window: its whole sentences (the table's sums) and the share of
        the truncated last one, by the same rule as `hint`."""
        k = min(bisect.bisect_right(self.words, self.words[start] + n_words) - 1, len(self.seq))
        cum = counter.table(self.seq)
        whole = cum[k] - cum[start + 1] if k > start else 0
        if k + 1 >= len(self.seq) or k < start:
            return whole
        words, cost = self.words[k + 1] - self.words[k], cum[k + 1] - cum[k]
        return whole + (self.words[start] + n_words - self.words[k]) * cost // words if words else whole

    def window(self, start: int, n_words: int) -> list[Run | str]:
        """The first n_words words from sentence `start` on (wrapping around), last sentence truncated."""
        runs, left, i, total = [], n_words, start, len(self.seq)
        while left > 0:
            j = min(bisect.bisect_right(self.words, self.words[i] + left) - 1, total)
            if j > i:
                runs.append(Run(self.seq, i, j))
                left -= self.words[j] - self.words[i]
            if left <= 0:
                break
            if j < total:  # sentence j is longer than what is left: keep its first `left` words
                runs.append(" " + " ".join(self.essays.sentences[j].split(" ")[:left]))
                break
            i = 0
        return runs


_ESSAY_UNITS: dict[int, _EssayUnits] = {}


def _essay_units(essays) -> _EssayUnits:
    units = _ESSAY_UNITS.get(id(essays))
    if units is None or units.essays is not essays:
        units = _ESSAY_UNITS[id(essays)] = _EssayUnits(essays)
    return units


def _units(hay: list[Run | str], a: int, b: int) -> list[Run | str]:
    """Units a..b-1 of a haystack given as consecutive Runs and single units."""
    out, offset = [], 0
    for r in hay:
        size = len(r) if type(r) is Run else 1
        lo, hi = max(a, offset), min(b, offset + size)
        if lo < hi:
            out.append(r.slice(lo - offset, hi - offset) if type(r) is Run else r)
        offset += size
    return out


def _assemble(ctx, head, tail, prefix, hay: list[Run | str], needles, depths, sep, targets, meta, ruler_gaps) -> Draft:
    """Insert each needle after int(n * depth) of the haystack's n units and join with `sep`.

    `hay` holds the units sep-prefixed, as Runs and single units (a truncated sentence, counted by
    its words); the context's first piece drops its sep. Needles are added word by word. With
    `ruler_gaps` (essay, ruler_compat) the text is RULER's `" ".join` of sentence groups and
    needles, where an empty group leaves a leading or doubled space.
    """
    n = sum(len(r) if type(r) is Run else 1 for r in hay)
    cut = [int(n * d) for d in depths]
    bounds = [0] + cut + [n]
    context: list = []
    started = False
    for i in range(len(bounds) - 1):
        group = _units(hay, bounds[i], bounds[i + 1])
        drop = 0 if started else len(sep)  # the context's first unit has no separator
        if group and type(group[0]) is Run and (drop or sep == "\n"):
            context += group.pop(0).opened(drop)  # a line after a needle: a short junction key
        elif group and drop:
            context += word_pieces(group.pop(0)[drop:])
        for unit in group:
            if type(unit) is Run:
                context.append(unit)
            else:
                context += word_pieces(unit)
        if bounds[i] == bounds[i + 1] and ruler_gaps and started:  # an empty group
            context.append(sep)
        started = started or bounds[i] < bounds[i + 1] or ruler_gaps
        if i < len(needles):
            context += word_pieces(sep + needles[i] if started else needles[i])
            started = True
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


class _Units:
    """A haystack drawn lazily into `self.items`, whose order the top-up may rearrange."""

    items: list

    def replace(self, i: int, j: int) -> None:
        self.items[i], self.items[j] = self.items[j], self.items[i]

    def save(self) -> list:
        return list(self.items)

    def restore(self, saved: list) -> None:
        self.items = saved


class _WordUnits(_Units):
    """The `words` haystack: random single words (" word" units), drawn lazily from their own RNG
    stream. A word after a word is a context-free piece, so each unit's count is its own."""

    def __init__(self, rng: random.Random):
        self.rng = random.Random(rng.getrandbits(64))
        self.items: list[str] = []

    def _grow(self, n: int) -> None:
        adjectives, nouns = _single_words()
        while len(self.items) < n:
            self.items.append(" " + self.rng.choice(adjectives if self.rng.random() < 0.5 else nouns))

    def sizes(self, ctx: GenContext, n: int) -> list[int]:
        self._grow(n)
        return ctx.counter.count_each(self.items[:n], prev="x")

    def hay(self, n: int, ctx: GenContext) -> list[Run]:
        self._grow(n)
        units = tuple(self.items[:n])  # a snapshot: top-up swaps reorder the list
        counts = ctx.counter.count_each(units[1:], prev="x")  # a word after a word: its own count
        return [Run(units, 0, n, [0, 0] + list(accumulate(counts)))]


POOL_MIN = 8192


def _distractor_parts(ctx: GenContext, p: dict, length: int) -> "_PartsPool":
    """The needle haystack's keys and values, drawn from seeded pools with their token counts
    measured once per tokenizer (a 16K prompt holds ~1000 distractor lines; counting each fresh
    random line would cost more than everything else in the generator). See docs/ruler-differences.md."""
    size = max(POOL_MIN, 1 << (max(1, length // 2) - 1).bit_length())
    key = ("niah-pool", p["key_type"], p["value_type"], p["digits"], size, ctx.options.seed)
    pool = ctx.cache.get(key)
    if pool is None:
        pool = ctx.cache[key] = _PartsPool(ctx, p, size)
    return pool


class _PartsPool:
    """Distinct distractor keys and values, and the in-context counts of a line's pieces:
    `<head> <key> is: <value>.` where head is sep + "One of the special magic {type_v} for".
    A line's count after another line is head(previous value) + key + " is:" + value."""

    def __init__(self, ctx: GenContext, p: dict, size: int):
        rng = random.Random(int(stable_hash("niah-distractors", p["key_type"], p["value_type"], p["digits"], size,
                                            ctx.options.seed), 16))
        self.keys = _distinct(p["key_type"], rng, p["digits"], size)
        self.key_index = {k: i for i, k in enumerate(self.keys)}
        self.values = _distinct(p["value_type"], rng, p["digits"], size)
        self.head = "\n" + NEEDLE.split(" {key}")[0].format(type_v=p["value_type"])
        c = ctx.counter.counts
        self.key_tokens = c([(self.head, " " + k) for k in self.keys])
        self.is_tokens = c([(" " + self.keys[0], " is:")])[0]
        self.value_tokens = c([(" is:", f" {v}.") for v in self.values])
        self.head_tokens = c([(f" {v}.", self.head) for v in self.values])  # the head after that value


def _distinct(kind: str, rng: random.Random, digits: int, size: int) -> tuple[str, ...]:
    want = min(size, 10 ** digits - 10 ** (digits - 1)) if kind == "numbers" else size
    seen: dict[str, None] = {}
    while len(seen) < want:
        seen[draw_value(kind, rng, digits)] = None
    return tuple(seen)


class _NeedleLines(_Units):
    """The `needle` haystack: distractor lines with distinct keys and values drawn from the pool
    (never a real needle's key), lazily, from their own RNG stream."""

    def __init__(self, p: dict, parts: _PartsPool, rng: random.Random, exclude_keys: set[str]):
        self.parts = parts
        self.rng = random.Random(rng.getrandbits(64))
        self._used_keys = {parts.key_index[k] for k in exclude_keys if k in parts.key_index}
        self._used_values: set[int] = set()
        self._keys: list[int] = []
        self._values: list[int] = []
        # (value index, tokens of the line after its head, text)
        self.items: list[tuple[int, int, str]] = []

    def _grow(self, n: int) -> None:
        """Lines up to n. Keys and values are drawn in fixed blocks, so line i is the same whatever
        sizes the fit probed first (a sample must not depend on the samples before it)."""
        pp = self.parts
        while len(self._keys) < n or len(self._values) < n:
            self._keys += _fresh_block(self.rng, len(pp.keys), self._used_keys)
            self._values += _fresh_block(self.rng, len(pp.values), self._used_values)
        for i in range(len(self.items), n):
            k, v = self._keys[i], self._values[i]
            own = pp.key_tokens[k] + pp.is_tokens + pp.value_tokens[v]
            self.items.append((v, own, f"{pp.head} {pp.keys[k]} is: {pp.values[v]}."))

    def sizes(self, ctx: GenContext, n: int) -> list[int]:
        """Each line's tokens as it would follow a line with its own value (a planning estimate)."""
        self._grow(n)
        head = self.parts.head_tokens
        return [head[v] + own for v, own, _ in self.items[:n]]

    def hay(self, n: int, ctx: GenContext) -> list[Run]:
        self._grow(n)
        head, lines = self.parts.head_tokens, self.items[:n]
        counts = [head[prev[0]] + line[1] for prev, line in zip(lines, lines[1:])]
        cum = [0, 0] + list(accumulate(counts))
        return [Run(tuple(line[2] for line in lines), 0, n, cum)]


DRAW_BLOCK = 256


def _fresh_block(rng: random.Random, size: int, used: set[int]) -> list[int]:
    """The indices of one block of DRAW_BLOCK draws below `size` that are not in `used` (which
    they join); once half the pool is used (short numbers), indices may repeat, as RULER's
    independent draws do."""
    out: list[int] = []
    for x in random_indices(rng, size, DRAW_BLOCK):
        if 2 * len(used) < size:
            if x in used:
                continue
            used.add(x)
        out.append(x)
    return out


def _top_up(ctx: GenContext, pool, n: int, build, draft: Draft, budget: int, spares: int) -> Draft:
    """Large distractor lines (two UUIDs) can leave more than 3 % unused at 1K, and so can one
    multi-token word at 128: add a spare unit that fits, or swap units for longer spares, then
    keep the result only if it still fits."""
    sizes = pool.sizes(ctx, n + spares)
    added, swaps = best_fill(sizes[:n], sizes[n:], budget - draft.tokens)
    saved = pool.save()
    for i, j in zip(swaps[::2], swaps[1::2]):
        pool.replace(i, n + j)
    new_n = n
    for j in added:
        pool.replace(new_n, n + j)
        new_n += 1
    d = build(new_n)
    if d.tokens <= budget and d.tokens >= draft.tokens:
        return d
    pool.restore(saved)
    return draft
