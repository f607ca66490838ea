"""Training data for the lab, made by the same NIAH generators the evaluation uses.

Each batch has one length drawn between `min_length` and the training length, and its samples
cycle through the training formats, so sequences in a batch differ by at most the 3 % fitting
slack (little padding). A sequence is the sample's full prompt, then " " + its answer and EOS;
the loss mask marks the answer and EOS tokens only. Training samples use their own seed, so they
never coincide with evaluation samples.
"""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path

LENGTH_STEP = 16


def train_lengths(min_length: int, max_length: int) -> list[int]:
    out = list(range(min_length, max_length + 1, LENGTH_STEP))
    return out if out[-1] == max_length else out + [max_length]


def build_batches(tasks: list[str], min_length: int, max_length: int, steps: int, batch: int, seed: int,
                  tokenizer_dir: Path, progress=None) -> dict:
    """{"input_ids": [steps] LongTensors [batch, T], "loss_mask": same, "lengths": [steps]}."""
    import torch

    from ..tasks import generate_samples, parse_task
    from ..tasks.base import GenContext, GenOptions
    from ..tokenizer import load_tokenizer

    tok = load_tokenizer(str(tokenizer_dir))
    ctx = GenContext(tok, GenOptions(seed=seed))
    specs = [parse_task(t) for t in tasks]
    rng = random.Random(seed)
    lengths = train_lengths(min_length, max_length)
    plan = [rng.choice(lengths) for _ in range(steps)]
    need: dict[tuple[int, int], int] = defaultdict(int)  # (task index, length) -> samples
    slots = []
    for length in plan:
        row = []
        for j in range(batch):
            t = (len(slots) * batch + j) % len(specs)
            row.append((t, length, need[t, length]))
            need[t, length] += 1
        slots.append(row)
    samples = {}
    for (t, length), count in sorted(need.items()):
        for s in generate_samples(specs[t], length, range(count), ctx):
            samples[t, length, s.index] = s
        if progress:
            progress(count)
    eos, pad = tok.hf.eos_token_id, tok.hf.pad_token_id
    ids_out, mask_out = [], []
    for row in slots:
        seqs, masks = [], []
        for key in row:
            s = samples[key]
            prompt = tok.encode(s.full_prompt)
            answer = tok.hf(" " + s.targets[0], add_special_tokens=False)["input_ids"] + [eos]
            seqs.append(prompt + answer)
            masks.append([0] * len(prompt) + [1] * len(answer))
        width = max(map(len, seqs))
        ids_out.append(torch.tensor([q + [pad] * (width - len(q)) for q in seqs], dtype=torch.long))
        mask_out.append(torch.tensor([m + [0] * (width - len(m)) for m in masks], dtype=torch.bool))
    return {"input_ids": ids_out, "loss_mask": mask_out, "lengths": plan}
