"""Why a model fails: diagnostics that explain a long-context score (`longctx why`).

Each diagnostic is a module of its own implementing `base.Diagnostic`; this registry names them
(loaded only when asked for). Their measurements go into the run database (resumable: re-running
computes only what is missing) and into one CSV per diagnostic.
"""

from __future__ import annotations

import importlib

from ..errors import UsageError
from .base import Diagnostic

DIAGNOSTICS = {
    "attention": "longctx.why.attention:NeedleAttention",
    "rope": "longctx.why.rope:RotaryGeometry",
    "retrieval_heads": "longctx.why.retrieval:RetrievalHeads",
    "state": "longctx.why.state:RecurrentState",
    "state_decay": "longctx.why.state:StateDecay",
    "position_loss": "longctx.why.position_loss:PositionLoss",
}


def load_diagnostic(name: str, **options) -> Diagnostic:
    if name not in DIAGNOSTICS:
        raise UsageError(f"unknown diagnostic {name!r}; known: {', '.join(DIAGNOSTICS)}")
    module, attr = DIAGNOSTICS[name].split(":")
    return getattr(importlib.import_module(module), attr)(**options)


__all__ = ["DIAGNOSTICS", "Diagnostic", "load_diagnostic"]
