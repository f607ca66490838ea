"""Lab specs: which families, what budget, what data, how long, and how they are evaluated.

A YAML file plus `--key=value` overrides (the run-spec syntax) becomes a frozen `LabSpec`; every
mistake is a one-line UsageError naming the key.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from ..config import parse_token_count, read_spec_yaml
from ..errors import UsageError
from ..types import stable_hash

TOP_KEYS = {"name", "seed", "families", "params", "hidden_size", "rope_theta", "train", "formats", "eval", "workers",
            "out"}
TRAIN_KEYS = {"length", "min_length", "steps", "batch", "lr", "warmup"}
EVAL_KEYS = {"lengths", "depths", "samples", "seed", "answer_tokens", "batch_size", "held_out"}


@dataclass(frozen=True)
class LabSpec:
    name: str
    families: tuple[str, ...]
    formats: tuple[str, ...]  # NIAH task specs, trained on and evaluated
    held_out: tuple[str, ...] = ()  # formats evaluated but never trained on
    params: int = 120_000  # non-embedding parameters per model
    hidden_size: int = 64
    rope_theta: float | None = None  # base of every rotary attention layer; None: each config's default
    seed: int = 0
    train_length: int = 256
    min_length: int = 128
    steps: int = 1200
    batch: int = 16
    lr: float = 3e-3
    warmup: int = 30
    eval_lengths: tuple[int, ...] = (128, 256, 512, 1024, 2048)
    depths: tuple[int, ...] = (0, 25, 50, 75, 100)
    samples: int = 8
    eval_seed: int = 42
    answer_tokens: int = 8  # tokens_to_generate of every lab task
    eval_batch_size: int = 16
    workers: int = 2
    out: str | None = None

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path("runs") / "lab" / self.name

    def tasks(self) -> list[str]:
        """The training formats as task specs with the lab's generation budget."""
        return [self._task(f) for f in self.formats]

    def eval_tasks(self) -> list[str]:
        return [self._task(f) for f in self.formats + self.held_out]

    def _task(self, fmt: str) -> str:
        return f"{fmt}{',' if ':' in fmt else ':'}tokens_to_generate={self.answer_tokens}"

    def training_identity(self) -> str:
        """What trained weights depend on (evaluation settings may change without retraining)."""
        rope = () if self.rope_theta is None else (self.rope_theta,)  # keeps older folders' identity
        return stable_hash(self.families, self.formats, self.params, self.hidden_size, self.seed, self.train_length,
                           self.min_length, self.steps, self.batch, self.lr, self.warmup, self.answer_tokens, *rope)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, indent=2)


def load_lab_spec(path: str | Path, overrides: list[str] = ()) -> LabSpec:
    return parse_lab_spec(read_spec_yaml(path, overrides, "lab spec", "name, families, formats, train, eval, ..."))


def parse_lab_spec(raw: dict) -> LabSpec:
    from ..tasks import parse_task
    from .families import family

    _known(raw, TOP_KEYS, "the lab spec")
    train, ev = raw.get("train") or {}, raw.get("eval") or {}
    _known(train, TRAIN_KEYS, "train")
    _known(ev, EVAL_KEYS, "eval")
    families = tuple(_list(raw, "families"))
    for f in families:
        family(f)  # unknown family -> UsageError
    if len(set(families)) != len(families):
        raise UsageError(f"families must be distinct, got {list(families)}")
    formats = tuple(_list(raw, "formats"))
    spec = LabSpec(
        name=_get(raw, "name", str), families=families, formats=formats,
        params=_int(raw, "params", 120_000, 1000), hidden_size=_int(raw, "hidden_size", 64, 16),
        rope_theta=_float(raw, "rope_theta", None) if raw.get("rope_theta") is not None else None,
        seed=_int(raw, "seed", 0, 0), train_length=_tokens(train, "length", 256),
        min_length=_tokens(train, "min_length", 128), steps=_int(train, "steps", 1200, 1),
        batch=_int(train, "batch", 16, 1), lr=_float(train, "lr", 3e-3), warmup=_int(train, "warmup", 30, 0),
        eval_lengths=tuple(parse_token_count(x) for x in _list(ev, "lengths", (128, 256, 512, 1024, 2048))),
        depths=tuple(_list(ev, "depths", (0, 25, 50, 75, 100))), samples=_int(ev, "samples", 8, 1),
        eval_seed=_int(ev, "seed", 42, 0), answer_tokens=_int(ev, "answer_tokens", 8, 1),
        eval_batch_size=_int(ev, "batch_size", 16, 1),
        held_out=tuple(_list(ev, "held_out", ())) if ev.get("held_out") else (), workers=_int(raw, "workers", 2, 1),
        out=raw.get("out"))
    if "/" in spec.name or not spec.name:
        raise UsageError(f"name must be a non-empty word without '/', not {spec.name!r}")
    if not spec.min_length <= spec.train_length:
        raise UsageError(f"train.min_length ({spec.min_length}) must not exceed train.length ({spec.train_length})")
    if any(not isinstance(d, int) or not 0 <= d <= 100 for d in spec.depths):
        raise UsageError(f"eval.depths are percentages in 0..100, got {list(spec.depths)}")
    for task in spec.eval_tasks():
        t = parse_task(task)  # unknown task or parameter -> UsageError
        if t.family != "niah" or dict(t.params).get("value_type") == "uuids":
            raise UsageError(f"lab format {task!r}: the lab trains on NIAH tasks with number or word values")
    return spec


def _known(raw: dict, keys: set, where: str) -> None:
    if not isinstance(raw, dict):
        raise UsageError(f"{where} must be a mapping")
    bad = sorted(set(raw) - keys)
    if bad:
        raise UsageError(f"unknown key {bad[0]!r} in {where}; known: {', '.join(sorted(keys))}")


def _get(raw: dict, key: str, kind):
    value = raw.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise UsageError(f"{key} must be {kind.__name__}, not {value!r}")
    return value


def _int(raw: dict, key: str, default: int, low: int) -> int:
    value = raw.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise UsageError(f"{key} must be an integer of at least {low}, not {value!r}")
    return value


def _float(raw: dict, key: str, default: float) -> float:
    value = raw.get(key, default)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        raise UsageError(f"{key} must be a positive number, not {value!r}")
    return float(value)


def _tokens(raw: dict, key: str, default: int) -> int:
    try:
        value = parse_token_count(raw.get(key, default))
    except ValueError:
        raise UsageError(f"{key} must be a token count like 256, not {raw.get(key)!r}") from None
    if value < 96:
        raise UsageError(f"{key} must be at least 96 tokens (the NIAH template alone is ~70), not {value}")
    return value


def _list(raw: dict, key: str, default=None) -> list:
    value = raw.get(key, default)
    if value is None:
        raise UsageError(f"the lab spec needs {key!r}")
    if isinstance(value, (str, int)):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise UsageError(f"{key} must be a non-empty list")
    return list(value)
