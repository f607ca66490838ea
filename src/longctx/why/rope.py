"""Rotary geometry, from a model's config alone (`rope.csv`): where its rotary embedding runs out.

Dimension pair i of a rotary head of width d turns at theta_i = base^(-2i/d) radians a position, a
full turn every 2 pi / theta_i positions. A pair whose period exceeds the training length never
saw a full turn in training; beyond it, its angles are new to the model. Men et al. (2024, "Base
of RoPE Bounds Context Length") show that a model can tell near from far tokens only while
B(m) = sum_i cos(m theta_i) stays non-negative for every distance m up to the context length L,
which bounds the base from below. Rows:

- kind "dim": one per pair: theta, period, period / training length, whether it turns fully
  within the training length;
- kind "summary": the base, the training length, how many pairs turn fully within it, the first
  incomplete period as a multiple of the training length, the target length L (the longest length
  of the run) and whether B(m) >= 0 for every m <= L at this base; and, over a grid of 50 bases per
  decade from 10 to 10^9, the first base for which it holds and the base from which it holds at
  every larger grid base.
"""

from __future__ import annotations

import math

from ..types import Sample

GRID = [10 ** (1 + k / 50) for k in range(8 * 50 + 1)]  # 10 .. 10^9, 50 a decade


class RotaryGeometry:
    name = "rope"
    per_sample = False

    def __init__(self, target_length: int | None = None):
        self.target_length = target_length

    def skip_reason(self, adapter, sample: Sample | None = None) -> str | None:
        config = getattr(getattr(adapter, "model", None), "config", None)
        if config is None:
            return f"needs a model config (the hf or mamba_ssm backend), not {type(adapter).__name__}"
        if rotary(config) is None:
            return "the model has no rotary position embedding"
        if not _train_length(adapter):
            return "the model's training length is unknown"
        return None

    def measure(self, adapter, samples: list[Sample]) -> list[dict]:  # (the config alone)
        base, width = rotary(adapter.model.config)
        train = _train_length(adapter)
        target = self.target_length or train
        thetas = angles(base, width)
        rows = [{"kind": "dim", "dim": i, "theta": t, "period": 2 * math.pi / t,
                 "period_over_train": 2 * math.pi / t / train, "turns_in_train": 2 * math.pi / t <= train}
                for i, t in enumerate(thetas)]
        incomplete = [r["period_over_train"] for r in rows if not r["turns_in_train"]]
        holds = [bound_holds(b, width, target) for b in GRID]
        passing = [b for b, ok in zip(GRID, holds) if ok]
        above = next((b for i, b in enumerate(GRID) if all(holds[i:])), None)
        rows.append({"kind": "summary", "base": base, "rotary_dims": width, "train_length": train,
                     "dims_turning_in_train": sum(r["turns_in_train"] for r in rows),
                     "first_incomplete_period_over_train": min(incomplete) if incomplete else None,
                     "target_length": target, "bound_holds_at_base": bound_holds(base, width, target),
                     "first_passing_base": passing[0] if passing else None, "all_pass_from_base": above})
        return rows


def rotary(config) -> tuple[float, int] | None:
    """(base, rotary width) of a config, or None without rotary embedding."""
    params = getattr(config, "rope_parameters", None) or {}
    base = params.get("rope_theta") if isinstance(params, dict) else None
    base = base or getattr(config, "rope_theta", None)
    if not base:
        return None
    head = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    factor = (params.get("partial_rotary_factor") if isinstance(params, dict) else None) or \
        getattr(config, "partial_rotary_factor", 1.0) or 1.0
    return float(base), int(head * factor)


def angles(base: float, width: int) -> list[float]:
    """theta_i = base^(-2i/width) for the width/2 rotary pairs."""
    return [base ** (-2 * i / width) for i in range(width // 2)]


def bound_holds(base: float, width: int, length: int) -> bool:
    """Whether sum_i cos(m theta_i) >= 0 for every distance m in 0..length (Men et al. 2024)."""
    import numpy as np

    thetas = np.asarray(angles(base, width))
    for start in range(0, length + 1, 8192):  # in blocks: [8192, width/2] at a time
        m = np.arange(start, min(length, start + 8191) + 1)[:, None]
        if (np.cos(m * thetas).sum(1) < 0).any():
            return False
    return True


def _train_length(adapter) -> int | None:
    return getattr(adapter, "train_context", None) or getattr(adapter.model.config, "max_position_embeddings", None)
