"""Variable tracking (RULER `variable_tracking.py`): follow chains of `VAR X = VAR Y` in a noise haystack.

One in-context example (RULER always adds it) is fitted to 500 tokens of the raw task template
once per cell and, in the "main" era, re-randomised per sample (new names, new value).
"""

from __future__ import annotations

import random
import string

from ..errors import UsageError
from ..tokenizer import Run, repeated, word_pieces
from ..types import stable_hash
from .base import Draft, GenContext, TaskSpec, check_fill, fit_size
from .niah import NOISE

DEFAULTS = dict(num_chains=1, num_hops=4)
ICL_LENGTH = 500


def _name(rng: random.Random, size: int) -> str:
    return "".join(rng.choices(string.ascii_uppercase, k=size))


def _chains(rng: random.Random, num_chains: int, num_hops: int, name_len: int, value: int | None):
    """Per chain: (names, statements, value). Names are distinct across all chains."""
    used: set[str] = set()
    chains = []
    for _ in range(num_chains):
        names = []
        while len(names) < num_hops + 1:
            n = _name(rng, name_len)
            if n not in used:  # RULER's dedup loop could keep a duplicate; we never do
                used.add(n)
                names.append(n)
        val = value if value is not None else rng.randint(10000, 99998)
        stmts = [f"VAR {names[0]} = {val}"] + [f"VAR {names[j + 1]} = VAR {names[j]} " for j in range(num_hops)]
        chains.append((names, stmts, val))
    return chains


def _context(n_noise: int, chains, fractions, era: str) -> list:
    """Noise lines with each chain's statements inserted in order at their fractional positions, as
    pieces: runs of noise counted from a table, statements word by word."""
    items = [NOISE] * n_noise
    for (_, stmts, _), fr in zip(chains, fractions):
        positions = [int(f * len(items)) for f in fr]
        for j, (pos, st) in enumerate(zip(positions, stmts)):
            items.insert(pos + j, st)
    # 2024: paragraphs ended with "\n" and items were joined with " "
    sep, unit = (" ", NOISE + "\n") if era == "2024" else ("\n", NOISE)
    noise = repeated(sep + unit, n_noise)
    pieces: list = []
    i = 0
    while i < len(items):
        drop = 0 if pieces else len(sep)  # the first item has no separator
        if items[i] is NOISE:
            j = i
            while j < len(items) and items[j] is NOISE:
                j += 1
            pieces += Run(noise, 0, j - i).opened(drop)
            i = j
        else:
            pieces += word_pieces((sep + items[i])[drop:])
            i += 1
    return pieces


def _fractions(rng: random.Random, chains) -> list[list[float]]:
    return [sorted(rng.random() for _ in stmts) for _, stmts, _ in chains]


def _icl_template(ctx: GenContext):
    """(head, tail, prefix) for the example. Main: the raw task template. 2024: RULER's cut of the
    combined template, whitespace collapsed and its last word dropped (`above.` for base)."""
    if ctx.era != "2024":
        from ..templates import TASK_TEMPLATES

        tt = TASK_TEMPLATES["vt"]
        head, tail = tt.template.split("{context}")
        return head, tail, tt.answer_prefix
    from ..templates import TASK_TEMPLATES, VT_ANSWER_PREFIX_2024

    cut = TASK_TEMPLATES["vt"].template + ctx.wrapper.after
    words = cut.split()[:-1]
    text = " ".join(words)
    head, tail = text.split("{context}")
    return head, tail, VT_ANSWER_PREFIX_2024


def _make_icl(spec: TaskSpec, length: int, ctx: GenContext, p: dict) -> tuple[str, list[str], int]:
    """The example's text (ending in its answer), its answer names, and its value."""
    rng = random.Random(int(stable_hash("vt-icl", dict(spec.params), length, ctx.options.seed), 16))
    value = 12345 if ctx.era != "2024" else rng.randint(10000, 99998)
    chains = _chains(rng, p["num_chains"], p["num_hops"], 3, value)
    fractions = _fractions(rng, chains)
    h, t, pre = _icl_template(ctx)
    fields = dict(query=value, num_v=p["num_hops"] + 1)

    def build(n: int) -> Draft:
        return ctx.draft([h.format(**fields)], _context(n, chains, fractions, ctx.era), [t.format(**fields)],
                         pre.format(**fields), [])

    _, d = fit_size(build, 0, ICL_LENGTH, 20, ICL_LENGTH, f"{spec.name} example")
    names = chains[0][0]
    end = "\n\n" if ctx.era == "2024" else "\n"
    return d.text() + d.answer_prefix + " " + " ".join(names) + end, names, value


def _randomise_icl(icl: str, names: list[str], value: int, rng: random.Random) -> str:
    """RULER (main, c5341b4): new random names of the same length and a new value, by str.replace."""
    for n in names:
        icl = icl.replace(n, _name(rng, len(n)))
    return icl.replace(str(value), str(rng.randint(10000, 99998)))


def generate(spec: TaskSpec, length: int, ttg: int, index: int, rng: random.Random, ctx: GenContext,
             state: dict) -> Draft:
    p = DEFAULTS | dict(spec.params)
    if p.get("haystack", "noise") != "noise":
        raise UsageError("vt supports the noise haystack only")
    for k in ("num_chains", "num_hops"):
        if not isinstance(p[k], int) or p[k] < 1:
            raise UsageError(f"vt {k} must be a positive integer, not {p[k]!r}")
    if "icl" not in state:
        state["icl"] = _make_icl(spec, length, ctx, p)
    icl, icl_names, icl_value = state["icl"]
    if ctx.era != "2024":
        icl = _randomise_icl(icl, icl_names, icl_value, rng)
    chains = _chains(rng, p["num_chains"], p["num_hops"], 5, None)
    fractions = _fractions(rng, chains)
    names, _, value = chains[0]
    fields = dict(query=value, num_v=p["num_hops"] + 1)
    insert = " " + icl + "\n\n" if ctx.era == "2024" else icl + "\n"
    head, tail, prefix = ctx.template("vt", fields, before_task=insert)
    words = tuple(word_pieces(head))  # the per-sample example: its table is built once per sample
    head_words = [Run(words, 0, len(words))]
    meta = dict(haystack="noise", num_chains=p["num_chains"], num_hops=p["num_hops"])

    def build(n: int) -> Draft:
        return ctx.draft(head_words, _context(n, chains, fractions, ctx.era), [tail], prefix, names,
                         dict(meta, haystack_units=n))

    budget = length - ttg
    hint = state.get("hint") or max(0, (budget - 600) // 25)
    n, d = fit_size(build, 0, max(1, length), hint, budget, f"{spec.name}@{length}")
    state["hint"] = n
    check_fill(d, budget, length, ttg, f"{spec.name}@{length}")
    return d
