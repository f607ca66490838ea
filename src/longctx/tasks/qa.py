"""Question answering over distractor documents (RULER `qa.py`): qa_1 = SQuAD v2.0 dev, qa_2 = HotpotQA.

Sample i asks question i (file order), as RULER does. The context holds the question's required
documents, then its same-source documents, then random others, in a shuffled order (RULER's fixed
shuffle put the gold document in the same slot in every sample; kept under ruler_compat). Document
sizes vary a lot, so the last slots are chosen to fill the budget (`best_fill`).
"""

from __future__ import annotations

import random

from ..corpora import QADataset, load_hotpotqa, load_squad
from ..errors import FitError, UsageError
from .base import Draft, GenContext, TaskSpec, best_fill, check_fill, filled, permutation

DATASETS = ("squad", "hotpotqa")
HEADER = " 1:"  # a document follows its header's number (digits count as 0)


def _dataset(name: str, ctx: GenContext) -> QADataset:
    if name == "squad":
        return load_squad(ctx.data.squad_path())
    if name == "hotpotqa":
        return load_hotpotqa(ctx.data.hotpotqa_path())
    raise UsageError(f"qa dataset must be one of {', '.join(DATASETS)}, not {name!r}")


def _context(docs: QADataset, order: list[int]) -> list[str]:
    """`Document i:\n<doc>` blocks joined by blank lines, as pieces whose counts memoise: the
    number is its own ` i:` piece, so a header after a document is keyed by that document only."""
    pieces = []
    for i, d in enumerate(order, 1):
        pieces += ["Document" if i == 1 else "\n\nDocument", f" {i}:", "\n" + docs.docs[d]]
    return pieces


def generate(spec: TaskSpec, length: int, ttg: int, index: int, rng: random.Random, ctx: GenContext,
             state: dict) -> Draft:
    ds = _dataset(spec.get("dataset", "squad"), ctx)
    if index >= len(ds.items):
        raise FitError(f"{spec.name}: sample {index} asks question {index}, but {ds.name} has {len(ds.items)} answerable questions")
    item = ds.items[index]
    required = list(item.context if (ctx.compat or spec.get("all_paragraphs", False)) else item.support)
    head, tail, prefix = ctx.template("qa", {"query": item.query})
    budget = length - ttg
    what = f"{spec.name}@{length}"
    cost = _doc_costs(ds, ctx)
    room = budget - ctx.count([head, tail, prefix])
    docs_guess = len(item.context) + room // 100  # headers cost a few tokens more with more digits
    header = sum(ctx.counter.counts([("x.", "\n\nDocument"), ("Document", f" {docs_guess}:")]))
    chosen = list(required)
    used = sum(cost(chosen)) + header * len(chosen)
    if used > room:
        raise FitError(f"{what}: the question's required documents alone need ~{used} tokens, over the {room} left")
    same = [d for d in item.same_source if d not in chosen]
    rng.shuffle(same)
    others = _other_docs(ds, set(chosen) | set(same), rng)
    candidates = same + others
    pos, misfits = 0, 0
    for d, c in zip(candidates, _lazy_costs(candidates, cost)):
        pos += 1
        if used + c + header <= room:
            chosen.append(d)
            used += c + header
        else:  # a long document: skip it, a later one may fit (64 misfits end the scan)
            misfits += 1
            if misfits > 64:
                break
    taken = set(chosen)
    rest = [r for r in candidates[: pos + 256] if r not in taken]
    extra = chosen[len(required):]
    perm_rng = ctx.fixed_rng() if ctx.compat else random.Random(rng.getrandbits(64))
    perm_seed = perm_rng.getrandbits(64)

    def build(extra_docs: list[int]) -> Draft:
        order = required + extra_docs
        random.Random(perm_seed).shuffle(order)
        meta = dict(dataset=ds.name, question_index=index, num_docs=len(order),
                    gold_slots=[order.index(g) + 1 for g in required])
        return ctx.draft([head], _context(ds, order), [tail], prefix, item.outputs, meta)

    d = build(extra)
    for _ in range(3):  # top up with the real token count (headers were estimated)
        if d.tokens <= budget and filled(d, length, ttg):
            break
        if d.tokens > budget:
            if not extra:
                break
            extra = extra[:-1]
        else:
            spare = [r for r in rest if r not in extra]
            added, swaps = best_fill([c + header for c in cost(extra)], [c + header for c in cost(spare)],
                                     budget - d.tokens)
            for i, j in zip(swaps[::2], swaps[1::2]):
                extra[i] = spare[j]
            extra = extra + [spare[j] for j in added]
        d = build(extra)
    while d.tokens > budget and extra:  # never over budget: drop distractors
        extra = extra[:-1]
        d = build(extra)
    check_fill(d, budget, length, ttg, what)
    return d


def _doc_costs(ds: QADataset, ctx: GenContext):
    """tokens(ids): each document's tokens after its header, measured once per tokenizer."""
    known: dict[int, int] = ctx.cache.setdefault(("qa-docs", ds.name, len(ds.docs)), {})

    def tokens(ids: list[int]) -> list[int]:
        missing = [d for d in dict.fromkeys(ids) if d not in known]
        if missing:
            known.update(zip(missing, ctx.counter.count_each(["\n" + ds.docs[d] for d in missing], prev=HEADER)))
        return [known[d] for d in ids]

    return tokens


def _other_docs(ds: QADataset, exclude: set[int], rng: random.Random) -> list[int]:
    """All other documents in a random order (the corpus repeats only if a prompt could hold it all)."""
    return [i for i in permutation(len(ds.docs), rng) if i not in exclude]


def _lazy_costs(candidates: list[int], cost, batch: int = 64):
    for s in range(0, len(candidates), batch):
        yield from cost(candidates[s:s + batch])
