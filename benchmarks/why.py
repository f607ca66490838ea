"""Peak memory and time of the needle-attention diagnostic on SmolLM2-135M (the PyPI GGUF) at 2K,
8K and 16K tokens, against a plain evaluation of the same sample through the hf backend.

    python benchmarks/why.py [--lengths 2048,8192,16384]

Each (length, what) runs in a fresh process on one niah_single_1 sample; the script prints the
growth of the peak RSS over the peak after loading the model (interpreter and weights not counted)
and the seconds the step took. A full attention map at 16K would take about 270 GiB
(30 layers x 9 heads x 16K x 16K x 4 bytes); the diagnostic computes only its query rows.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(what: str, length: int) -> None:
    from longctx.generate import SampleCache
    from longctx.models import GenParams, load_model
    from longctx.runner import model_context, plan
    from longctx.config import parse_spec
    from longctx.why.attention import NeedleAttention

    spec = parse_spec({"name": "b", "models": [{"name": "s", "backend": "hf", "args": {"path": "@smollm2"}}],
                       "tasks": ["niah_single_1"], "lengths": [length], "samples": 1})
    adapter = load_model("hf", path="@smollm2", max_context=max(length, 8192) + 256)
    sample = SampleCache().get(plan(spec).tasks[0], length, 1, model_context(spec, spec.models[0], adapter))[0]
    base = peak_mb()
    start = time.perf_counter()
    if what == "evaluate":
        adapter.generate([sample.full_prompt], GenParams(sample.tokens_to_generate))
    else:
        NeedleAttention().measure(adapter, sample)
    print(f"{time.perf_counter() - start:.1f} {peak_mb() - base:.0f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lengths", default="2048,8192,16384")
    parser.add_argument("--child", nargs=2)
    args = parser.parse_args()
    if args.child:
        return child(args.child[0], int(args.child[1]))
    print(f"{'length':>7} {'evaluate s':>11} {'evaluate MB':>12} {'attention s':>12} {'attention MB':>13}")
    for length in map(int, args.lengths.split(",")):
        cells = []
        for what in ("evaluate", "attention"):
            out = subprocess.run([sys.executable, __file__, "--child", what, str(length)], capture_output=True,
                                 text=True, check=True).stdout.split()
            cells += out[-2:]
        print(f"{length:>7} {cells[0]:>11} {cells[1]:>12} {cells[2]:>12} {cells[3]:>13}", flush=True)


if __name__ == "__main__":
    main()
