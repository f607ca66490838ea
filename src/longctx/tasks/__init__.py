"""Task registry: RULER's 13 tasks, the study's ablation formats, suites, and `name:key=value` specs.

Families are plain `name -> module` entries imported on first use. A task spec string is a
registered task, format or family name, optionally followed by `:key=value,key=value`, e.g.
`niah_single_2:depth=50` or `niah:haystack=needle,key_type=uuids,value_type=words`.
"""

from __future__ import annotations

import importlib
import warnings

import yaml

from ..errors import FitError, UsageError
from ..templates import TASK_TEMPLATES
from ..types import Sample
from .base import GenContext, TaskSpec, make_sample, sample_rng

FAMILIES = {"niah": "niah", "vt": "vt", "cwe": "cwe", "fwe": "fwe", "qa": "qa"}
METRICS = {"niah": "string_match_all", "vt": "string_match_all", "cwe": "string_match_all",
           "fwe": "string_match_all", "qa": "string_match_part"}

# scripts/synthetic.yaml of RULER (ruler-spec.md s.2).
RULER_TASKS: dict[str, TaskSpec] = {
    name: TaskSpec(name, family, tuple(sorted(params.items())))
    for name, family, params in [
        ("niah_single_1", "niah", dict(haystack="noise", key_type="words", value_type="numbers")),
        ("niah_single_2", "niah", dict(haystack="essay", key_type="words", value_type="numbers")),
        ("niah_single_3", "niah", dict(haystack="essay", key_type="words", value_type="uuids")),
        ("niah_multikey_1", "niah", dict(haystack="essay", key_type="words", value_type="numbers", num_keys=4)),
        ("niah_multikey_2", "niah", dict(haystack="needle", key_type="words", value_type="numbers")),
        ("niah_multikey_3", "niah", dict(haystack="needle", key_type="uuids", value_type="uuids")),
        ("niah_multivalue", "niah", dict(haystack="essay", key_type="words", value_type="numbers", num_values=4)),
        ("niah_multiquery", "niah", dict(haystack="essay", key_type="words", value_type="numbers", num_queries=4)),
        ("vt", "vt", dict(num_chains=1, num_hops=4)),
        ("cwe", "cwe", dict(freq_cw=30, freq_ucw=3, num_cw=10)),
        ("fwe", "fwe", dict(alpha=2.0)),
        ("qa_1", "qa", dict(dataset="squad")),
        ("qa_2", "qa", dict(dataset="hotpotqa")),
    ]
}

# Huang 2024 Table 4 formats (haystack-key-value); they map onto RULER's single-needle tasks.
FORMATS: dict[str, TaskSpec] = {
    "essay-word-number": RULER_TASKS["niah_single_2"].with_params("essay-word-number"),
    "essay-word-uuid": RULER_TASKS["niah_single_3"].with_params("essay-word-uuid"),
    "repeat-word-number": RULER_TASKS["niah_single_1"].with_params("repeat-word-number"),
}
STUDY_DEPTHS = (0, 20, 40, 50, 60, 80, 100)

SUITES: dict[str, list[str]] = {
    "ruler": list(RULER_TASKS),
    # Tables 2-3: one needle at fixed depths (the essay/word/number format of niah_single_2).
    "huang_depth": [f"niah_single_2:depth={d}" for d in STUDY_DEPTHS],
    # Table 4: three formats at depths 0, 50 and 100.
    "huang_formats": [f"{f}:depth={d}" for f in FORMATS for d in (0, 50, 100)],
}


def parse_task(text: str) -> TaskSpec:
    name, _, args = text.strip().partition(":")
    base = RULER_TASKS.get(name) or FORMATS.get(name)
    if base is None and name in FAMILIES:
        base = TaskSpec(name, name)
    if base is None:
        known = ", ".join(list(RULER_TASKS) + list(FORMATS) + list(FAMILIES))
        raise UsageError(f"unknown task {name!r}; known: {known} (suites: {', '.join(SUITES)})")
    if not args:
        return base
    params = {}
    for item in args.split(","):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise UsageError(f"bad task parameter {item!r} in {text!r}: expected key=value")
        params[key.strip()] = yaml.safe_load(value.strip())
    spec = base.with_params(text.strip(), **params)
    check_task_params(spec)
    return spec


EXTRA_PARAMS = {"qa": {"dataset", "all_paragraphs"}}


def check_task_params(spec: TaskSpec) -> None:
    """Unknown parameter names and impossible values are errors when the task is named, not
    halfway through a sweep."""
    mod = family_module(spec.family)
    known = set(getattr(mod, "DEFAULTS", {})) | EXTRA_PARAMS.get(spec.family, set()) | {"tokens_to_generate"}
    unknown = sorted(k for k, _ in spec.params if k not in known)
    if unknown:
        raise UsageError(f"task {spec.name!r}: unknown parameter {unknown[0]!r}; {spec.family} takes "
                         f"{', '.join(sorted(known))}")
    p = dict(spec.params)
    if spec.family == "niah":
        mod.check_params(p)
    for key, value in p.items():
        if key in ("num_chains", "num_hops", "freq_cw", "freq_ucw", "num_cw", "tokens_to_generate") and (
                not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise UsageError(f"task {spec.name!r}: {key} must be a positive integer, not {value!r}")
    if spec.family == "fwe" and not (isinstance(p.get("alpha", 2.0), (int, float)) and p.get("alpha", 2.0) > 1):
        raise UsageError(f"task {spec.name!r}: alpha must be a number above 1 (a Zipf exponent)")
    if spec.family == "qa" and p.get("dataset", "squad") not in ("squad", "hotpotqa"):
        raise UsageError(f"task {spec.name!r}: dataset must be squad or hotpotqa, not {p['dataset']!r}")


def expand_tasks(items: list[str] | str) -> list[TaskSpec]:
    """Task names, suite names and specs (comma-separated string or list) to TaskSpecs, in order."""
    if isinstance(items, str):
        items = _split_top(items)
    specs: list[TaskSpec] = []
    for item in items:
        for t in SUITES.get(item, [item]):
            spec = parse_task(t)
            if spec not in specs:
                specs.append(spec)
    if not specs:
        raise UsageError("no tasks given")
    return specs


def _split_top(text: str) -> list[str]:
    """Split on commas that separate tasks, not those inside one task's `:k=v,k=v`."""
    out: list[str] = []
    for part in text.split(","):
        part = part.strip()
        if out and ":" in out[-1] and "=" in part and ":" not in part:
            out[-1] += "," + part
        elif part:
            out.append(part)
    return out


def family_module(family: str):
    return importlib.import_module(f"{__name__}.{FAMILIES[family]}")


def tokens_to_generate(spec: TaskSpec) -> int:
    return int(spec.get("tokens_to_generate", TASK_TEMPLATES[spec.family].tokens_to_generate))


def generate_samples(spec: TaskSpec, length: int, indices: range, ctx: GenContext) -> list[Sample]:
    """Samples `indices` of one (task, length) cell, each fitted exactly to `length`.

    The additive token count of the cell's first sample (every sample with verify=all) is
    checked against a full encode; on a mismatch the cell is regenerated with exact counting.
    """
    mod = family_module(spec.family)
    ttg, metric = tokens_to_generate(spec), METRICS[spec.family]
    # The tokens counted against the length besides the prompt's text: the answer's, and any the
    # backend adds around the prompt (GenOptions.reserve). The generators fit the prompt to the rest.
    beyond = ttg + ctx.options.reserve
    if length <= beyond:
        around = f" and {ctx.options.reserve} more around the prompt" if ctx.options.reserve else ""
        raise UsageError(f"length {length} leaves no room for a prompt: {spec.name} generates {ttg} tokens{around}")
    verify = ctx.options.verify
    ctx.exact = False
    state: dict = {}
    out = []
    for i in indices:
        draft = mod.generate(spec, length, beyond, i, sample_rng(spec, length, ctx.options.seed, i), ctx, state)
        checked = verify == "all" or (verify == "cell" and i == indices.start)
        if checked and not ctx.exact:
            real = ctx.tok.count(draft.text() + draft.answer_prefix)
            if real != draft.tokens:
                warnings.warn(f"{spec.name}@{length}: additive token count {draft.tokens} != {real} for this "
                              "tokenizer; counting this cell exactly (slower)", stacklevel=2)
                ctx.exact, state = True, {}
                draft = mod.generate(spec, length, beyond, i, sample_rng(spec, length, ctx.options.seed, i), ctx, state)
        sample = make_sample(spec, length, i, draft, ctx, ttg, metric)
        sample.meta["verified"] = bool(checked or ctx.exact)
        out.append(sample)
    ctx.counter.forget()
    return out


__all__ = ["RULER_TASKS", "FORMATS", "SUITES", "FitError", "parse_task", "expand_tasks", "generate_samples",
           "tokens_to_generate", "TaskSpec"]
