"""Train one lab model: fixed steps, fixed data order, answer-only loss, resumable.

The loss is computed only where it is needed: hidden states come from the model's own backbone
(`base_model`) and the tied output layer is applied only at the positions that predict answer
tokens, so a 15K-word vocabulary never produces full-sequence logits. A checkpoint (model,
optimizer, step, curve) is written atomically every `save_every` steps; a rerun continues from it
and, because the batch of step k is fixed by the seed, ends where an uninterrupted run would.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

TRAIN_STATE = "train_state.pt"
DONE = "done.json"


@dataclass(frozen=True)
class TrainSettings:
    steps: int
    lr: float
    warmup: int
    seed: int
    save_every: int = 100
    log_every: int = 10


def lr_at(step: int, s: TrainSettings) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < s.warmup:
        return s.lr * (step + 1) / s.warmup
    progress = (step - s.warmup) / max(1, s.steps - s.warmup)
    return s.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def answer_logits(model, input_ids, loss_mask):
    """Logits at the positions that predict answer tokens, those tokens, and their rows."""
    hidden = model.base_model(input_ids=input_ids).last_hidden_state
    rows, cols = loss_mask[:, 1:].nonzero(as_tuple=True)
    logits = model.get_output_embeddings()(hidden[rows, cols]).float()
    cap = getattr(model.config, "logits_soft_cap", None)  # RecurrentGemma caps its logits
    if cap:
        logits = cap * (logits / cap).tanh()
    return logits, input_ids[rows, cols + 1], rows


def batch_accuracy(logits, targets, rows, n_rows: int) -> float:
    """Share of sequences whose every answer token is the argmax (teacher-forced)."""
    import torch

    wrong = torch.zeros(n_rows, dtype=torch.long).index_add_(0, rows, (logits.argmax(-1) != targets).long())
    return float((wrong == 0).float().mean())


def train(model, batches: dict, out: Path, settings: TrainSettings, progress=None) -> dict:
    """Train `model` on `batches` (see data.build_batches) and save it to `out`; returns the summary."""
    import torch

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(settings.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, betas=(0.9, 0.95), weight_decay=0.0)
    step, curve, cpu = 0, [], 0.0
    state_path = out / TRAIN_STATE
    if state_path.exists():
        state = torch.load(state_path, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, curve, cpu = state["step"], state["curve"], state["cpu_seconds"]
    if progress:
        progress(step, curve[-1] if curve else None)
    model.train()
    torch.set_grad_enabled(True)
    loss_sum, acc_sum, seen = 0.0, 0.0, 0
    started = time.process_time()
    while step < settings.steps:
        x, m = batches["input_ids"][step], batches["loss_mask"][step]
        for group in opt.param_groups:
            group["lr"] = lr_at(step, settings)
        logits, targets, rows = answer_logits(model, x, m)
        loss = torch.nn.functional.cross_entropy(logits, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        loss_sum += float(loss.detach())
        acc_sum += batch_accuracy(logits.detach(), targets, rows, x.shape[0])
        seen += 1
        if step % settings.log_every == 0 or step == settings.steps:
            point = {"step": step, "loss": loss_sum / seen, "accuracy": acc_sum / seen,
                     "cpu_seconds": cpu + time.process_time() - started}
            curve.append(point)
            loss_sum, acc_sum, seen = 0.0, 0.0, 0
            if progress:
                progress(step, point)
        if step % settings.save_every == 0 and step < settings.steps:
            save_atomic({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step, "curve": curve,
                          "cpu_seconds": cpu + time.process_time() - started}, state_path)
    model.eval()
    summary = {"steps": settings.steps, "cpu_seconds": round(cpu + time.process_time() - started, 1),
               "final_loss": curve[-1]["loss"] if curve else None,
               "final_train_accuracy": curve[-1]["accuracy"] if curve else None}
    _write_curve(curve, out / "training_curve.csv")
    return summary


def _write_curve(curve: list[dict], path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["step", "loss", "accuracy", "cpu_seconds"])
        w.writeheader()
        w.writerows(curve)


def save_atomic(obj, path: Path) -> None:
    """torch.save that leaves either the old file or the whole new one, never a torn one."""
    import torch

    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True))
    os.replace(tmp, path)


def write_done(out: Path, summary: dict) -> None:
    write_json_atomic(out / DONE, summary)
    (out / TRAIN_STATE).unlink(missing_ok=True)
