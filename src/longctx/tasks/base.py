"""What every task shares: its spec, the generation context, prompt assembly and exact length fitting.

A task family (niah, vt, cwe, fwe, qa) draws a sample's content from a per-sample RNG, then
builds a `Draft` (prompt pieces) for a haystack size n. `fit_size` finds the largest n whose
prompt tokens + tokens_to_generate fit the budget, from a close hint, with a bounded number of
steps: no loop here can spin forever.
"""

from __future__ import annotations

import bisect
import random
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from ..corpora import DataPaths
from ..errors import FitError, UsageError
from ..templates import ERAS, TASK_TEMPLATES, VT_ANSWER_PREFIX_2024, model_wrapper, singular_rewrite
from ..tokenizer import PieceCounter, Run, Tokenizer, flatten, word_pieces
from ..types import Sample, stable_hash

GENERATOR_VERSION = 2  # bump when generated text changes, so cached samples are not reused
MIN_FILL = 0.97
_SENTINEL = "\x00CONTEXT\x00"


@dataclass(frozen=True)
class TaskSpec:
    """A named task: a family plus its parameters (RULER's synthetic.yaml entry, or an ablation)."""

    name: str
    family: str
    params: tuple[tuple[str, Any], ...] = ()

    def get(self, key: str, default: Any = None) -> Any:
        return dict(self.params).get(key, default)

    def with_params(self, name: str | None = None, **params: Any) -> "TaskSpec":
        merged = dict(self.params) | params
        return TaskSpec(name or self.name, self.family, tuple(sorted(merged.items())))


@dataclass(frozen=True)
class GenOptions:
    """Generation switches that are not task parameters (they change every task alike).

    era: "main" follows RULER's current code, "2024" the paper-era code (see docs/ruler-differences.md).
    ruler_compat: keep RULER's accidental fixed permutations and shared haystack openings.
    verify: "cell" checks the additive token count of each cell's first sample against a full
    encode (and counts that cell exactly if they differ); "all" checks every sample; "none" trusts it.
    reserve: tokens the model sees around every prompt that are not in its text (an
    OpenAI-compatible server's chat template); prompts are fitted to the length less them.
    """

    model_template: str = "base"
    era: str = "main"
    ruler_compat: bool = False
    remove_newline_tab: bool = False
    seed: int = 42
    verify: str = "cell"
    reserve: int = 0

    def __post_init__(self):
        if not isinstance(self.reserve, int) or self.reserve < 0:
            raise UsageError(f"reserve must be a number of tokens (0 or more), not {self.reserve!r}")
        if self.era not in ERAS:
            raise UsageError(f"unknown RULER era {self.era!r}; choose one of {', '.join(ERAS)}")
        if self.verify not in ("none", "cell", "all"):
            raise UsageError(f"verify must be none, cell or all, not {self.verify!r}")


@dataclass
class Draft:
    """A prompt as pieces (head + context + tail; strings and Runs) plus its answer prefix, targets
    and metadata."""

    pieces: list[str | Run]
    answer_prefix: str
    targets: tuple[str, ...]
    meta: dict[str, Any] = field(default_factory=dict)
    tokens: int = 0  # prompt tokens incl. answer prefix and special tokens

    def text(self) -> str:
        """The prompt without its answer prefix."""
        return "".join(flatten(self.pieces))


class GenContext:
    """Everything a generator needs besides its own parameters: tokenizer, corpora, options."""

    def __init__(self, tokenizer: Tokenizer, options: GenOptions | None = None, data: DataPaths | None = None):
        self.tok = tokenizer
        self.options = options or GenOptions()
        self.data = data or DataPaths()
        self.counter = PieceCounter(tokenizer)
        self.wrapper = model_wrapper(self.options.model_template, tokenizer)
        self.exact = False  # set per cell when additive counting was found inexact
        self.cache: dict = {}  # per-tokenizer tables a task builds once (e.g. NIAH distractor pools)

    @property
    def compat(self) -> bool:
        return self.options.ruler_compat

    @property
    def era(self) -> str:
        return self.options.era

    def fixed_rng(self) -> random.Random:
        """RULER's `random.Random(seed)`: the same permutation in every sample (ruler_compat only)."""
        return random.Random(self.options.seed)

    # -- prompt assembly ---------------------------------------------------------------------
    def template(self, family: str, fields: dict[str, Any], singular: bool = False,
                 before_task: str = "", preamble: str = "") -> tuple[str, str, str]:
        """(head, tail, answer_prefix) of the combined template around {context}.

        RULER applies the NIAH singular rewrite to the whole combined string, chat wrapper
        included (`You are` -> `You is`); we apply it to the task text only unless ruler_compat.
        """
        tt = TASK_TEMPLATES[family]
        task, prefix = tt.template, tt.answer_prefix
        if family == "vt" and self.era == "2024":
            prefix = VT_ANSWER_PREFIX_2024
        before, after = self.wrapper.before, self.wrapper.after
        if singular:
            task, prefix = singular_rewrite(task), singular_rewrite(prefix)
            if self.compat:
                before, after = singular_rewrite(before), singular_rewrite(after)
        head, tail = (preamble + before + before_task + task.format(context=_SENTINEL, **fields)).split(_SENTINEL)
        return head, tail + after, prefix.format(**fields)

    def finish(self, pieces: list[str], answer_prefix: str) -> tuple[list[str], str]:
        """Apply --remove-newline-tab (RULER: `' '.join(prompt.split())` over the whole prompt)."""
        if not self.options.remove_newline_tab:
            return pieces, answer_prefix
        out: list[str] = []
        for p in flatten(pieces) + [answer_prefix]:
            p = re.sub(r"\s+", " ", p)
            if out and out[-1].endswith(" ") and p.startswith(" "):
                p = p[1:]
            if not out:
                p = p.lstrip()
            out.append(p)
        out[-1] = out[-1].rstrip()
        return [p for p in out[:-1] if p], out[-1]

    def count(self, pieces: Sequence[str | Run]) -> int:
        if self.exact:
            return self.tok.count("".join(flatten(pieces)))
        return self.counter.total(pieces)

    def draft(self, head: Sequence[str], context: Sequence[str | Run], tail: Sequence[str], answer_prefix: str,
              targets: Sequence[str], meta: dict[str, Any] | None = None) -> Draft:
        tail = [q for t in tail for q in word_pieces(t)]  # a tail repeats its words (a query), not its whole
        pieces, prefix = self.finish([p for p in (*head, *context, *tail) if p], answer_prefix)
        d = Draft(pieces, prefix, tuple(targets), dict(meta or {}))
        d.tokens = self.count(pieces + word_pieces(prefix))
        return d


def permutation(n: int, rng: random.Random) -> list[int]:
    """A uniformly random permutation of range(n), drawn from `rng`: the stable argsort of n random
    64-bit keys. It costs one C call for the bits where random.shuffle makes a Python call per item
    (a 16K-token FWE list has ~8K words, a HotpotQA corpus 66K documents)."""
    if n < 2:
        return list(range(n))
    return np.argsort(_random_words(rng, n, 8), kind="stable").tolist()


def random_indices(rng: random.Random, size: int, n: int) -> list[int]:
    """n independent uniform indices below `size`, from one bulk draw of 32-bit words (scaled, so
    the bias is below size / 2**32)."""
    if n <= 0:
        return []
    return ((_random_words(rng, n, 4).astype(np.uint64) * size) >> 32).tolist()


def _random_words(rng: random.Random, n: int, width: int) -> np.ndarray:
    """n unsigned integers of `width` bytes from one `getrandbits` call (little-endian everywhere,
    so the same RNG state gives the same words on any machine)."""
    return np.frombuffer(rng.getrandbits(8 * width * n).to_bytes(width * n, "little"), dtype=f"<u{width}")


def distinct_indices(rng: random.Random, size: int, k: int) -> list[int]:
    """k distinct uniform indices below `size`, in random order: bulk draws with rejection while k
    is small next to size, else a prefix of a permutation."""
    if k > size:
        raise ValueError(f"cannot draw {k} distinct indices below {size}")
    if 4 * k > size:
        return permutation(size, rng)[:k]
    seen: dict[int, None] = {}
    while len(seen) < k:
        for i in random_indices(rng, size, 2 * (k - len(seen)) + 16):
            seen[i] = None
            if len(seen) == k:
                break
    return list(seen)


def shuffled(items: Sequence, rng: random.Random) -> list:
    """`items` in the order of `permutation(len(items), rng)`."""
    return [items[i] for i in permutation(len(items), rng)]


def fit_size(build: Callable[[int], Draft], lo: int, hi: int, hint: int, budget: int,
             what: str) -> tuple[int, Draft]:
    """Largest n in [lo, hi] whose draft fits `budget` tokens, searching from `hint`.

    Counts grow with n (pieces are added, never changed) and about linearly, so a few secant
    jumps land next to the answer; a gallop for a missing bound and a bisection then make it
    exact. Each n is built at most once. Raises FitError if even n = lo does not fit.
    """
    built: dict[int, Draft] = {}
    good: int | None = None  # largest n known to fit
    bad: int | None = None  # smallest n known not to fit

    def probe(n: int) -> None:
        nonlocal good, bad
        if n not in built:
            built[n] = build(n)
        if built[n].tokens <= budget:
            good = n if good is None else max(good, n)
        else:
            bad = n if bad is None else min(bad, n)

    tried = [min(max(hint, lo), hi)]
    probe(tried[0])
    for _ in range(6):  # secant jumps towards the budget
        a = tried[-1]
        b = tried[-2] if len(tried) > 1 else None
        slope = ((built[a].tokens - built[b].tokens) / (a - b)) if b is not None and b != a else built[a].tokens / max(a, 1)
        low, high = (lo if good is None else good + 1), (hi if bad is None else bad - 1)
        if slope <= 0 or low > high:
            break
        target = min(max(a + round((budget - built[a].tokens) / slope), low), high)
        if target in built:
            break
        probe(target)
        tried.append(target)
    step = 1
    while good is None:  # gallop down from the smallest known misfit
        n = max(bad - step, lo)
        probe(n)
        if good is None and n == lo:
            raise FitError(f"{what}: even the smallest prompt ({built[n].tokens} tokens) exceeds the budget of {budget}")
        step *= 2
    step = 1
    while bad is None:  # gallop up from the largest known fit
        if good >= hi:
            return good, built[good]
        probe(min(good + step, hi))
        step *= 2
    while bad - good > 1:  # bisect
        probe((good + bad) // 2)
    return good, built[good]


def best_fill(chosen: list[int], pool: list[int], gap: int, rounds: int = 64) -> tuple[list[int], list[int]]:
    """Grow a selection of variable-size units towards a token gap without exceeding it.

    `chosen` and `pool` are unit sizes; returns (pool indices to add, swaps as a flat list
    [chosen_idx, pool_idx, ...] applied in order). Used where one unit is large next to the 3 %
    slack (UUID needle lines at 1K, QA documents). Two plans are tried and the fuller kept:
    add the largest pool unit that fits and swap for longer units; or add the smallest unit
    even though it overshoots and swap for shorter units until the selection fits again.
    """
    plans = []
    fits = [j for j, s in enumerate(pool) if s <= gap]
    first = [max(fits, key=pool.__getitem__)] if fits else []
    plans.append(_swap_towards(chosen, pool, first, gap - sum(pool[j] for j in first), rounds))
    if pool:
        j = min(range(len(pool)), key=pool.__getitem__)
        if pool[j] > gap:
            plans.append(_swap_towards(chosen, pool, [j], gap - pool[j], rounds))
    plans = [p for p in plans if p[2] >= 0]
    if not plans:
        return [], []
    added, swaps, _ = min(plans, key=lambda p: p[2])
    return added, swaps


def _swap_towards(chosen: list[int], pool: list[int], added: list[int], gap: int, rounds: int):
    """Swap chosen units for pool units to bring `gap` (room left, may start negative) to just >= 0.

    Each round takes, over all chosen units, the swap that lands closest to a full fit: when
    there is room, the largest gain that still fits; when over, the smallest cut that fits, else
    the largest cut. Pool units are bucketed by size, so a round is O(chosen x log sizes).
    """
    buckets: dict[int, list[int]] = {}
    for j, ps in enumerate(pool):
        if j not in added:
            buckets.setdefault(ps, []).append(j)
    sizes, swaps = list(chosen), []
    for _ in range(rounds):
        if gap == 0:
            break
        keys = sorted(k for k, v in buckets.items() if v)
        best = None  # (rank, i, pool size)
        for i, cs in enumerate(sizes):
            k = bisect.bisect_right(keys, cs + gap) - 1  # largest pool size that still fits
            if k >= 0 and keys[k] != cs and (gap < 0 or keys[k] > cs):
                rank = (1, keys[k] - cs)
            elif gap < 0 and keys and keys[0] < cs:
                rank = (0, cs - keys[0])  # does not fit yet: cut as much as possible
                k = 0
            else:
                continue
            if best is None or rank > best[0]:
                best = (rank, i, keys[k])
        if best is None:
            break
        _, i, ps = best
        j = buckets[ps].pop()
        swaps += [i, j]
        gap -= ps - sizes[i]
        sizes[i] = ps
    return added, swaps, gap


def sample_rng(spec: TaskSpec, length: int, seed: int, index: int) -> random.Random:
    """Each sample's own RNG. Depth is left out on purpose: a depth sweep then varies only the
    needle position (same haystack, keys and values), a paired design."""
    params = [(k, v) for k, v in spec.params if k != "depth"]
    return random.Random(int(stable_hash(spec.family, params, length, seed, index), 16))


def make_sample(spec: TaskSpec, length: int, index: int, draft: Draft, ctx: GenContext, ttg: int,
                metric: str) -> Sample:
    prompt, prefix = draft.text(), draft.answer_prefix
    if ctx.era == "2024":  # the 2024 files kept the answer prefix inside `input`
        prompt, prefix = prompt + prefix, ""
    o = ctx.options
    reserved = (o.reserve,) if o.reserve else ()  # (ids without a reserve stay those of earlier versions)
    sid = stable_hash(spec.name, spec.params, length, o.seed, index, ctx.tok.fingerprint, o.model_template,
                      o.era, o.ruler_compat, o.remove_newline_tab, *reserved, GENERATOR_VERSION)
    meta = dict(draft.meta)
    if o.reserve:
        meta["reserve"] = o.reserve
    seen = draft.tokens + o.reserve + ttg  # what the model sees and writes at most
    meta.update(token_count=draft.tokens, length=seen, fill=round(seen / length, 4),
                count_method="exact" if ctx.exact else "additive", tokenizer=ctx.tok.fingerprint,
                model_template=o.model_template, era=o.era, ruler_compat=o.ruler_compat, family=spec.family,
                params=dict(spec.params))
    return Sample(sid, spec.name, length, index, prompt, prefix, draft.targets, ttg, metric, meta)


def filled(draft: Draft, length: int, ttg: int) -> bool:
    """Prompt + generation reach the 97 % floor."""
    return draft.tokens + ttg >= MIN_FILL * length


def check_fill(draft: Draft, budget: int, length: int, ttg: int, what: str) -> None:
    """Enforce the [97 %, 100 %] window on prompt + generation tokens."""
    if draft.tokens > budget:
        raise FitError(f"{what}: {draft.tokens} prompt tokens exceed the budget of {budget}")
    if not filled(draft, length, ttg):
        raise FitError(
            f"{what}: could only reach {draft.tokens + ttg} of {length} tokens "
            f"({(draft.tokens + ttg) / length:.1%} < {MIN_FILL:.0%})"
        )
