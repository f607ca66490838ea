"""Run specs: one YAML file (plus `--key=value` overrides) naming models, tasks, lengths and
settings, validated into a frozen `RunSpec`. Every mistake is one actionable line (UsageError)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UsageError
from .types import stable_hash

TOP_KEYS = {"name", "models", "tasks", "lengths", "depths", "formats", "samples", "seed", "generation", "data_dir",
            "db", "batch", "diagnostics"}
MODEL_KEYS = {"name", "backend", "args", "model_template"}
GENERATION_KEYS = {"era", "ruler_compat", "remove_newline_tab"}
# Backend options that change speed, never outputs: editing them does not invalidate a run.
RUNTIME_ARGS = {"batch_size", "concurrency", "max_retries", "timeout", "backoff", "max_backoff", "n_threads",
                "n_batch", "delay", "gpu_memory_utilization", "device"}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    backend: str
    args: dict = field(default_factory=dict)
    model_template: str | None = None  # None: the adapter's own choice (base, or chat when asked)


@dataclass(frozen=True)
class RunSpec:
    name: str
    models: tuple[ModelSpec, ...]
    tasks: tuple[str, ...]
    lengths: tuple[int, ...]
    samples: int = 5
    seed: int = 42
    depths: tuple[int, ...] = ()
    formats: tuple[str, ...] = ()
    generation: dict = field(default_factory=dict)
    data_dir: str | None = None
    db: str | None = None
    batch: int | None = None  # samples per adapter call and per database transaction (None: the backend's call_size)
    diagnostics: tuple[str, ...] = ()  # what `longctx why` measures (not part of the identity)

    def identity_fields(self) -> dict:
        """What stored rows depend on, by field. Where the corpora live is not among them (their
        content hashes are recorded in the run instead): moving the data folder changes no sample."""
        from .tasks.base import GENERATOR_VERSION  # new samples must not join rows of old ones

        return {"models": [(m.name, m.backend, {k: v for k, v in sorted(m.args.items()) if k not in RUNTIME_ARGS},
                            m.model_template) for m in self.models],
                "tasks": self.tasks, "lengths": self.lengths, "seed": self.seed, "depths": self.depths,
                "formats": self.formats, "generation": sorted(self.generation.items()), "generator": GENERATOR_VERSION}

    def identity(self) -> str:
        """A hash of `identity_fields`; a run whose identity changed must not be resumed."""
        f = self.identity_fields()
        return stable_hash(f["models"], f["tasks"], f["lengths"], f["seed"], f["depths"], f["formats"],
                           f["generation"], f["generator"])

    def legacy_identity(self) -> str:
        """The identity runs made before `data_dir` left it were bound with (they still resume)."""
        f = self.identity_fields()
        return stable_hash(f["models"], f["tasks"], f["lengths"], f["seed"], f["depths"], f["formats"],
                           f["generation"], self.data_dir, f["generator"])

    def differences(self, stored_json: str | None) -> list[str]:
        """How this spec differs from a stored one (`to_json`), field by field, in words."""
        try:
            old = parse_spec(json.loads(stored_json or "")).identity_fields()
        except (UsageError, ValueError, TypeError, KeyError):
            return ["the stored spec cannot be read"]
        new, out = self.identity_fields(), []
        for key in new:
            if key == "models" and len(old[key]) == len(new[key]):
                for i, (was, now) in enumerate(zip(old[key], new[key])):
                    for part, a, b in zip(("name", "backend", "args", "model_template"), was, now):
                        if a != b:
                            out.append(f"models[{i}].{part} was {a!r}, now {b!r}")
            elif key == "generator" and old[key] != new[key]:
                out.append("the sample generator changed (a newer longctx makes other samples)")
            elif old[key] != new[key]:
                out.append(f"{key} was {_plain(old[key])}, now {_plain(new[key])}")
        return out

    def to_json(self) -> str:
        return json.dumps({"name": self.name, "models": [vars(m) for m in self.models], "tasks": self.tasks,
                           "lengths": self.lengths, "samples": self.samples, "seed": self.seed, "depths": self.depths,
                           "formats": self.formats, "generation": self.generation, "data_dir": self.data_dir,
                           "db": self.db, "batch": self.batch, "diagnostics": self.diagnostics}, sort_keys=True)

    @property
    def db_path(self) -> Path:
        return Path(self.db) if self.db else Path("runs") / f"{self.name}.sqlite"


def _plain(value) -> str:
    return json.dumps(value) if isinstance(value, (list, tuple, dict)) else repr(value)


def load_spec(path: str | Path, overrides: list[str] = ()) -> RunSpec:
    return parse_spec(read_spec_yaml(path, overrides, "run spec", "name, models, tasks, lengths, ..."))


def read_spec_yaml(path: str | Path, overrides: list[str], what: str, keys: str) -> dict:
    """A spec file (run or lab) as a mapping, `name` defaulting to the file's stem, with the
    `--key=value` overrides applied; every problem is one UsageError line."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{what} not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UsageError(f"{p} is not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    if not isinstance(raw, dict):
        raise UsageError(f"{p} must be a YAML mapping of settings ({keys})")
    raw.setdefault("name", p.stem)
    for item in overrides:
        apply_override(raw, item)
    return raw


def apply_override(raw: dict, item: str) -> None:
    """`--key=value` or `key=value`; dotted keys reach inside (models.0.args.batch_size=2)."""
    import yaml

    text = item[2:] if item.startswith("--") else item
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise UsageError(f"override {item!r} must look like --key=value")
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        raise UsageError(f"override {item!r}: cannot read {value!r} as a value") from None
    node, parts = raw, key.split(".")
    for part in parts[:-1]:
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict):
            node = node.setdefault(part, {})
        else:
            raise UsageError(f"override {item!r}: {part!r} does not exist")
        if not isinstance(node, (dict, list)):
            raise UsageError(f"override {item!r}: {part!r} is not a section")
    last = parts[-1]
    if isinstance(node, list):
        if not (last.isdigit() and int(last) < len(node)):
            raise UsageError(f"override {item!r}: no item {last} in the list")
        node[int(last)] = parsed
    else:
        node[last] = parsed


def parse_spec(raw: dict) -> RunSpec:
    unknown = sorted(set(raw) - TOP_KEYS)
    if unknown:
        raise UsageError(f"unknown key {unknown[0]!r} in the run spec; known keys: {', '.join(sorted(TOP_KEYS))}")
    for key in ("models", "tasks", "lengths"):
        if key not in raw:
            raise UsageError(f"the run spec needs {key!r}")
    name = _typed(raw, "name", str)
    if not name or "/" in name:
        raise UsageError(f"name must be a non-empty word without '/', not {name!r}")
    models = tuple(_model(m, i) for i, m in enumerate(_list(raw, "models", dict)))
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise UsageError(f"model names must be unique, got {names}; give each a distinct 'name'")
    tasks = tuple(_list(raw, "tasks", str))
    lengths = tuple(_length(x) for x in _list(raw, "lengths", (int, str)))
    depths = tuple(_list(raw, "depths", int, allow_empty=True)) if "depths" in raw else ()
    if any(not 0 <= d <= 100 for d in depths):
        raise UsageError(f"depths are percentages in 0..100, got {list(depths)}")
    formats = tuple(_list(raw, "formats", str, allow_empty=True)) if "formats" in raw else ()
    generation = raw.get("generation") or {}
    if not isinstance(generation, dict):
        raise UsageError("generation must be a mapping (era, ruler_compat, remove_newline_tab)")
    bad = sorted(set(generation) - GENERATION_KEYS)
    if bad:
        raise UsageError(f"unknown generation setting {bad[0]!r}; known: {', '.join(sorted(GENERATION_KEYS))}")
    if generation.get("era", "main") not in ("main", "2024"):
        raise UsageError(f"generation.era must be 'main' or '2024', not {generation['era']!r}")
    for flag in ("ruler_compat", "remove_newline_tab"):
        if flag in generation and not isinstance(generation[flag], bool):
            raise UsageError(f"generation.{flag} must be true or false")
    spec = RunSpec(name=name, models=models, tasks=tasks, lengths=lengths,
                   samples=_positive(raw, "samples", 5), seed=_typed(raw, "seed", int, 42), depths=depths,
                   formats=formats, generation=dict(generation), data_dir=_typed(raw, "data_dir", str, None),
                   db=_typed(raw, "db", str, None), batch=_positive(raw, "batch", None),
                   diagnostics=tuple(_list(raw, "diagnostics", str, allow_empty=True)) if "diagnostics" in raw else ())
    _check_tasks(spec)
    return spec


def _check_tasks(spec: RunSpec) -> None:
    from .tasks import FORMATS, expand_tasks

    specs = expand_tasks(list(spec.tasks))  # raises UsageError on an unknown task or parameter
    unknown = [f for f in spec.formats if f not in FORMATS]
    if unknown:
        raise UsageError(f"unknown format {unknown[0]!r}; known: {', '.join(FORMATS)}")
    if spec.depths and not any(s.family == "niah" for s in specs) and not spec.formats:
        raise UsageError("depths apply to needle tasks (niah_*, formats), but the spec has none")


def _model(m: Any, i: int) -> ModelSpec:
    if not isinstance(m, dict):
        raise UsageError(f"models[{i}] must be a mapping with 'backend' and 'args'")
    bad = sorted(set(m) - MODEL_KEYS)
    if bad:
        raise UsageError(f"unknown key {bad[0]!r} in models[{i}]; known: {', '.join(sorted(MODEL_KEYS))}")
    from .models import BACKENDS

    backend = m.get("backend")
    if backend not in BACKENDS:
        raise UsageError(f"models[{i}].backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    args = m.get("args") or {}
    if not isinstance(args, dict):
        raise UsageError(f"models[{i}].args must be a mapping of backend options")
    name = m.get("name") or str(args.get("path") or args.get("model") or f"model{i}").rstrip("/").split("/")[-1]
    if not isinstance(name, str):
        raise UsageError(f"models[{i}].name must be text")
    template = m.get("model_template")
    if template is not None and not isinstance(template, str):
        raise UsageError(f"models[{i}].model_template must be a template name or 'chat'")
    if backend == "openai" and args.get("endpoint") == "chat" and template not in (None, "base"):
        raise UsageError(f"models[{i}]: the openai chat endpoint wraps every prompt in the server's chat template, so "
                         f"model_template {template!r} would wrap it twice; use endpoint: completions with it, or "
                         "leave model_template unset")
    return ModelSpec(name=name, backend=backend, args=dict(args), model_template=template)


def _typed(raw: dict, key: str, kind, default=...):
    if key not in raw or raw[key] is None:
        if default is ...:
            raise UsageError(f"the run spec needs {key!r}")
        return default
    value = raw[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise UsageError(f"{key} must be {getattr(kind, '__name__', kind)}, not {value!r}")
    return value


def _positive(raw: dict, key: str, default: int | None) -> int | None:
    value = _typed(raw, key, int, default)
    if value is not None and value < 1:
        raise UsageError(f"{key} must be at least 1, not {value}")
    return value


def _list(raw: dict, key: str, kind, allow_empty: bool = False) -> list:
    value = raw[key]
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or (not value and not allow_empty):
        raise UsageError(f"{key} must be a non-empty list")
    for item in value:
        if not isinstance(item, kind) or isinstance(item, bool):
            raise UsageError(f"every item of {key} must be {_kind_name(kind)}, got {item!r}")
    return value


def _kind_name(kind) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join({"dict": "a mapping", "str": "text", "int": "an integer"}.get(k.__name__, k.__name__) for k in kinds)


def parse_token_count(text) -> int:
    """A token count written as 4096 or 4K (K = 1024); ValueError if it is neither."""
    text = str(text).strip().upper()
    return int(float(text[:-1]) * 1024) if text.endswith("K") else int(text)


def _length(x) -> int:
    try:
        value = parse_token_count(x)
    except ValueError:
        raise UsageError(f"lengths must be token counts like 4096 or 4K, not {x!r}") from None
    if value < 64:
        raise UsageError(f"length {x!r} is too small (at least 64 tokens)")
    return value
