"""The report's "Why" tables, from the diagnostics' rows (`RunStore.diagnostics`)."""

from __future__ import annotations

from collections import defaultdict

from ..report.tables import Table, fmt_length
from ..stats import interval, mcnemar, paired_permutation
from .state import collapsed


def why_tables(rows: list[dict]) -> list[Table]:
    tables = []
    measured = [r for r in rows if "skipped" not in r]
    attention = [r for r in measured if r["diagnostic"] == "needle_attention"]
    if attention:
        tables.append(needle_attention_table(attention))
    rope = [r for r in measured if r["diagnostic"] == "rope" and r.get("kind") == "summary"]
    if rope:
        tables.append(rope_table(rope))
    heads = [r for r in measured if r.get("table") == "retrieval_heads"]
    if heads:
        tables.append(retrieval_table(heads))
    ablation = [r for r in measured if r.get("table") == "head_ablation"]
    if ablation:
        tables.append(ablation_table(ablation))
    state = [r for r in measured if r["diagnostic"] == "state"]
    if state:
        tables.append(state_table(state))
    decay = [r for r in measured if r["diagnostic"] == "state_decay"]
    if decay:
        tables.append(decay_table(decay))
    position = [r for r in measured if r["diagnostic"] == "position_loss"]
    if position:
        tables.append(position_loss_table(position))
    skipped = sorted({(r["model"], r["diagnostic"], r["skipped"]) for r in rows if "skipped" in r})
    if skipped:
        tables.append(Table("why_skipped", "diagnostics that do not apply, and why", ["model", "diagnostic", "reason"],
                            [list(s) for s in skipped]))
    return tables


def needle_attention_table(rows: list[dict]) -> Table:
    """Per model, task, length and depth, from the last prompt token: the mean over samples of
    the largest needle mass any head puts there, beside what spreading evenly would put there,
    and the layer:head with the largest mean mass."""
    last = [r for r in rows if r["query"] == "last"]
    peak: dict[tuple, dict[str, float]] = defaultdict(dict)  # cell -> sample -> its peak
    uniform: dict[tuple, dict[str, float]] = defaultdict(dict)
    heads: dict[tuple, dict[tuple, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in last:
        cell = (r["model"], r["task"], r["length"], r["depth"])
        peak[cell][r["sample_id"]] = max(peak[cell].get(r["sample_id"], 0.0), r["needle_mass"])
        uniform[cell][r["sample_id"]] = r["uniform"]
        heads[cell][(r["layer"], r["head"])].append(r["needle_mass"])
    t = Table("why_needle_attention", "needle attention from the last prompt token: the largest share of a head's "
              "attention on the needle (mean over samples, x100), beside an even spread's share",
              ["model", "task", "length", "depth", "n", "peak head mass", "even spread", "top layer:head"])
    for cell in sorted(peak, key=lambda c: tuple(map(str, c))):
        model, task, length, depth = cell
        n = len(peak[cell])
        (layer, head), _ = max(heads[cell].items(), key=lambda kv: sum(kv[1]) / len(kv[1]))
        t.rows.append([model, task, fmt_length(length), "-" if depth is None else str(depth), str(n),
                       f"{100 * sum(peak[cell].values()) / n:.2f}", f"{100 * sum(uniform[cell].values()) / n:.2f}",
                       f"{layer}:{head}"])
    return t


def rope_table(rows: list[dict]) -> Table:
    t = Table("why_rope", "rotary geometry: pairs that turn fully within the training length, and the base that "
              "Men et al.'s bound asks for at the run's longest length",
              ["model", "base", "rotary dims", "training length", "pairs turning in training",
               "first incomplete period / training", "target length", "bound holds", "first passing base",
               "all pass from base"])
    for r in sorted(rows, key=lambda r: r["model"]):
        t.rows.append([r["model"], f"{r['base']:g}", str(r["rotary_dims"]), fmt_length(r["train_length"]),
                       f"{r['dims_turning_in_train']} of {r['rotary_dims'] // 2}",
                       "-" if r["first_incomplete_period_over_train"] is None
                       else f"{r['first_incomplete_period_over_train']:.2f}",
                       fmt_length(r["target_length"]), "yes" if r["bound_holds_at_base"] else "no",
                       "-" if r["first_passing_base"] is None else f"{r['first_passing_base']:.3g}",
                       "-" if r["all_pass_from_base"] is None else f"{r['all_pass_from_base']:.3g}"])
    return t


def retrieval_table(rows: list[dict], top: int = 10) -> Table:
    t = Table("why_retrieval_heads", f"retrieval heads (Wu et al. 2024): the {top} heads of highest retrieval score "
              "per model, over its correctly answered needle samples",
              ["model", "rank", "layer:head", "retrieval score", "correct samples"])
    for r in sorted(rows, key=lambda r: (r["model"], r["rank"])):
        if r["rank"] <= top:
            t.rows.append([r["model"], str(r["rank"]), f"{r['layer']}:{r['head']}", f"{r['retrieval_score']:.3f}",
                           str(r["correct_samples"])])
    return t


def ablation_table(rows: list[dict]) -> Table:
    """Accuracy with no head masked, the top-k retrieval heads masked and k random heads masked, on
    the same samples (95 % Wilson intervals), and the paired test of top-k against random."""
    t = Table("why_head_ablation", "masking the top retrieval heads against as many random heads, same samples "
              "(accuracy x100 [95 % interval]; p: top against random, paired)",
              ["model", "k", "n", "no head masked", "top-k masked", "random k masked", "p", "test"])
    by_model: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if None not in (r["score"], r["score_top_masked"], r["score_random_masked"]):
            by_model[r["model"]].append(r)
    for model, mine in sorted(by_model.items()):
        cells = []
        for key in ("score", "score_top_masked", "score_random_masked"):
            ci = interval([r[key] for r in mine])
            cells.append(f"{100 * ci.mean:.1f} [{100 * ci.low:.1f}, {100 * ci.high:.1f}]")
        a, b = [r["score_top_masked"] for r in mine], [r["score_random_masked"] for r in mine]
        if all(x in (0.0, 1.0) for x in a + b):
            p, test = mcnemar(a, b)[2], "McNemar (exact)"
        else:
            p, test = paired_permutation(a, b)[1], "sign-flip permutation"
        t.rows.append([model, str(mine[0]["k"]), str(len(mine)), *cells, f"{p:.3g}", test])
    return t


def state_table(rows: list[dict]) -> Table:
    """Per model, task and length: how many state series (sample x layer x head) collapse beyond the
    training length (state.collapsed), where the first does, and the largest RMS beyond the
    training length over the largest within it."""
    series: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        series[(r["model"], r["task"], r["length"], r["sample_id"], r["layer"], r["head"])].append(r)
    cells: dict[tuple, list[list[dict]]] = defaultdict(list)
    for key, points in series.items():
        cells[key[:3]].append(points)
    t = Table("why_state", "recurrent state beyond the training length: series (sample x layer x head) whose RMS "
              "leaves [half its smallest, twice its largest] within training", ["model", "task", "length",
              "training length", "series", "collapsed", "first collapse at", "largest RMS beyond / within"])
    for (model, task, length), group in sorted(cells.items(), key=lambda kv: tuple(map(str, kv[0]))):
        firsts = [p for p in (collapsed(g) for g in group) if p is not None]
        ratios = [max(r["rms"] for r in g if r["beyond_train"]) / max(r["rms"] for r in g if not r["beyond_train"])
                  for g in group if any(r["beyond_train"] for r in g) and any(not r["beyond_train"] for r in g)
                  and max(r["rms"] for r in g if not r["beyond_train"]) > 0]
        train = group[0][0]["train_length"]
        t.rows.append([model, task, fmt_length(length), fmt_length(train) if train else "-", str(len(group)),
                       str(len(firsts)), str(min(firsts)) if firsts else "-",
                       f"{max(ratios):.2f}" if ratios else "- (prompt within training length)"])
    return t


def decay_table(rows: list[dict]) -> Table:
    t = Table("why_state_decay", "memory of each selective-SSM layer at its bias time step: about 1 / (1 - decay) "
              "tokens (median and longest over the layer's heads or channels)",
              ["model", "layer", "median memory (tokens)", "longest memory (tokens)"])
    by_layer: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        by_layer[(r["model"], r["layer"])].append(r)
    for (model, layer), mine in sorted(by_layer.items()):
        tokens = sorted(r["memory_tokens"] for r in mine)
        longest = max(r.get("longest_memory_tokens", r["memory_tokens"]) for r in mine)
        t.rows.append([model, str(layer), f"{tokens[len(tokens) // 2]:.1f}", f"{longest:.1f}"])
    return t


def position_loss_table(rows: list[dict]) -> Table:
    """Per model: the mean next-token loss on the essays in the first position bucket, over the
    buckets within the training length, over those beyond it, and in the last bucket."""
    t = Table("why_position_loss", "loss by position on long natural text (the essays): mean next-token loss",
              ["model", "positions", "training length", "first bucket", "within training", "beyond training",
               "last bucket"])
    by_model: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_model[r["model"]].append(r)
    for model, mine in sorted(by_model.items()):
        mine.sort(key=lambda r: r["from_position"])

        def mean(part):
            tokens = sum(r["tokens"] for r in part)
            return f"{sum(r['mean_loss'] * r['tokens'] for r in part) / tokens:.3f}" if tokens else "-"

        train = mine[0]["train_length"]
        t.rows.append([model, f"1-{mine[-1]['to_position']}", fmt_length(train) if train else "-",
                       f"{mine[0]['mean_loss']:.3f}", mean([r for r in mine if not r["beyond_train"]]),
                       mean([r for r in mine if r["beyond_train"]]), f"{mine[-1]['mean_loss']:.3f}"])
    return t
