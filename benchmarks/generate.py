"""CPU seconds to generate RULER's 13 tasks x {1K, 2K, 4K, 8K, 16K} x N samples with the SmolLM2 tokenizer.

Target (issue 2): N=500 in <= 30 CPU-s on a 2-core machine; RULER's own generator needs ~25 CPU-min.
Usage: python benchmarks/generate.py --n 500 --data-dir ../shared/data
Prints per-length and total CPU seconds (process time, so a loaded machine does not inflate it)
and the fill range; the sample cache is not used.
"""

import argparse
import os
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from longctx.cli import default_tokenizer  # noqa: E402
from longctx.corpora import DataPaths  # noqa: E402
from longctx.tasks import RULER_TASKS, generate_samples  # noqa: E402
from longctx.tasks.base import GenContext, GenOptions  # noqa: E402
from longctx.tokenizer import load_tokenizer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--lengths", default="1024,2048,4096,8192,16384")
    ap.add_argument("--data-dir", default=os.environ.get("LONGCTX_DATA", "../shared/data"))
    ap.add_argument("--verify", default="cell")
    args = ap.parse_args()
    t0 = time.process_time()
    tok = load_tokenizer(default_tokenizer())
    t_tok = time.process_time() - t0
    ctx = GenContext(tok, GenOptions(verify=args.verify), DataPaths(args.data_dir))
    lengths = [int(x) for x in args.lengths.split(",")]
    n_qa2 = min(args.n, 53)  # the HotpotQA slice in shared/data holds 53 questions
    total, count, fills = 0.0, 0, []
    t_start = time.process_time()
    for length in lengths:
        t = time.process_time()
        for name, spec in RULER_TASKS.items():
            n = n_qa2 if name == "qa_2" and "shared" in args.data_dir else args.n
            samples = generate_samples(spec, length, range(n), ctx)
            count += len(samples)
            fills += [s.meta["fill"] for s in samples]
        dt = time.process_time() - t
        total += dt
        print(f"length {length:6d}: {dt:6.1f} CPU-s")
    print(f"tokenizer load: {t_tok:.1f} CPU-s (cached conversion); corpora load + generation: "
          f"{time.process_time() - t_start:.1f} CPU-s")
    print(f"TOTAL {count} samples in {total:.1f} CPU-s ({1000 * total / count:.2f} ms/sample); "
          f"fill min {min(fills):.4f} mean {sum(fills) / len(fills):.4f}")


if __name__ == "__main__":
    main()
