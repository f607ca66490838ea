"""Loss by position on long natural text (`position_loss` -> `position_loss.csv`): does the model
use far context at all? The essays (RULER's haystack corpus) are read as one token stream up to the
run's longest length, and each token's next-token loss is averaged in buckets of positions, the
training length beside them. A loss that keeps falling with position means the model draws on more
and more of the text; a loss that rises past the training length is the classic failure to
extrapolate.

The whole text runs in one pass through the model's decoder; the output layer is applied a chunk of
positions at a time, so the logits of all positions (text length x vocabulary) are never held at once.
"""

from __future__ import annotations

from ..corpora import DataPaths, load_essays
from ..errors import DataMissingError
from ..types import Sample

BUCKETS = 32
HEAD_CHUNK = 1024


class PositionLoss:
    name = "position_loss"
    per_sample = False

    def __init__(self, length: int = 4096, data: DataPaths | None = None, buckets: int = BUCKETS):
        self.length, self.data, self.buckets = length, data or DataPaths(), buckets

    def skip_reason(self, adapter, sample: Sample | None = None) -> str | None:
        model = getattr(adapter, "model", None)
        if model is None or not hasattr(model, "get_decoder") or model.get_output_embeddings() is None:
            return f"needs a transformers causal LM (the hf backend), not {type(adapter).__name__}"
        config = model.config
        if getattr(config, "final_logit_softcapping", None) or getattr(config, "logits_scaling", 1) not in (1, None):
            return "its logits are capped or scaled after the output layer (not reproduced here)"
        try:
            self.data.essays_path()
        except DataMissingError as e:
            return str(e)
        return None

    def measure(self, adapter, samples: list[Sample]) -> list[dict]:
        ids = essay_tokens(adapter.tokenizer, self.data, self.length)
        losses = token_losses(adapter.model, ids)
        train = getattr(adapter, "train_context", None)
        size = max(1, len(losses) // self.buckets)
        rows = []
        for start in range(0, len(losses), size):
            part = losses[start:start + size]
            rows.append({"from_position": start + 1, "to_position": start + len(part), "tokens": len(part),
                         "mean_loss": round(sum(part) / len(part), 6), "train_length": train,
                         "beyond_train": bool(train and start + 1 > train)})
        return rows


def essay_tokens(tokenizer, data: DataPaths, length: int) -> list[int]:
    """The first `length` tokens of the essays read as one text."""
    text = " ".join(load_essays(data.essays_path()).sentences)
    ids: list[int] = []
    for start in range(0, len(text), 200_000):  # a few characters a token: stop once long enough
        ids = tokenizer.encode(text[:start + 200_000])
        if len(ids) >= length:
            break
    return ids[:length]


def token_losses(model, ids: list[int]) -> list[float]:
    """The next-token loss of every position but the last, from one pass of the decoder."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        tokens = torch.tensor([ids], device=model.device)
        hidden = model.get_decoder()(input_ids=tokens, use_cache=False).last_hidden_state[0]
        head, out = model.get_output_embeddings(), []
        for start in range(0, len(ids) - 1, HEAD_CHUNK):
            stop = min(start + HEAD_CHUNK, len(ids) - 1)
            logits = head(hidden[start:stop]).float()
            out += F.cross_entropy(logits, tokens[0, start + 1:stop + 1], reduction="none").tolist()
    return out
