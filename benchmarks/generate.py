"""CPU seconds to generate RULER's 13 tasks x {1K, 2K, 4K, 8K, 16K} x N samples with the SmolLM2 tokenizer.

Target (issue 2): N=500 in <= 30 CPU-s on a 2-core machine; RULER's own generator needs ~25 CPU-min.
Usage: python benchmarks/generate.py --n 500 --data-dir ../shared/data [--cold]

Prints, in CPU seconds (process time, so a loaded machine does not inflate it):
- loading the tokenizer (its GGUF conversion is cached) and the corpora. The essays' sentence
  split is cached under $LONGCTX_CACHE after its first use; --cold starts from an empty cache;
- generation per length and in total, and the fill range. The sample cache is not used. With
  --repeat K the generation runs K times from the same cold counting state and the fastest
  run is the figure (the least disturbed by other load);
- a fixed pure-Python loop, to read the figures against: this shared machine's speed varies by
  up to ~40 % from one minute to the next.
"""

import argparse
import os
import tempfile
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def calibration() -> float:
    t = time.process_time()
    x = 0
    for i in range(20_000_000):
        x += i
    return time.process_time() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--lengths", default="1024,2048,4096,8192,16384")
    ap.add_argument("--data-dir", default=os.environ.get("LONGCTX_DATA", "../shared/data"))
    ap.add_argument("--verify", default="cell")
    ap.add_argument("--cold", action="store_true", help="split the essays afresh (an empty corpus cache)")
    ap.add_argument("--repeat", type=int, default=1, help="generate K times; the fastest run is the figure")
    args = ap.parse_args()
    if args.cold:  # an empty cache: the essays are split afresh (and the tokenizer converted again)
        os.environ["LONGCTX_CACHE"] = tempfile.mkdtemp(prefix="longctx-cold-")

    from longctx.cli import default_tokenizer
    from longctx.corpora import DataPaths, load_essays, load_hotpotqa, load_squad
    from longctx.tasks import RULER_TASKS, generate_samples
    from longctx.tasks.base import GenContext, GenOptions
    from longctx.tokenizer import _split_words, load_tokenizer

    t0 = time.process_time()
    tok = load_tokenizer(default_tokenizer())
    t_tok = time.process_time() - t0
    data = DataPaths(args.data_dir)
    t0 = time.process_time()
    load_essays(data.essays_path()), load_squad(data.squad_path()), load_hotpotqa(data.hotpotqa_path())
    t_corpora = time.process_time() - t0
    lengths = [int(x) for x in args.lengths.split(",")]
    n_qa2 = min(args.n, 53)  # the HotpotQA slice in shared/data holds 53 questions
    runs = []
    for rep in range(args.repeat):
        _split_words.cache_clear()  # every repeat starts from the same (cold) counting state
        ctx = GenContext(tok, GenOptions(verify=args.verify), data)
        count, fills, per_length = 0, [], []
        for length in lengths:
            t = time.process_time()
            for name, spec in RULER_TASKS.items():
                n = n_qa2 if name == "qa_2" and "shared" in args.data_dir else args.n
                samples = generate_samples(spec, length, range(n), ctx)
                count += len(samples)
                fills += [s.meta["fill"] for s in samples]
            per_length.append(time.process_time() - t)
        runs.append(sum(per_length))
        print(f"run {rep + 1}: " + ", ".join(f"{length}: {dt:.1f}" for length, dt in zip(lengths, per_length))
              + f" -> {runs[-1]:.1f} CPU-s")
    total = min(runs)
    print(f"tokenizer load: {t_tok:.1f} CPU-s; corpora load: {t_corpora:.1f} CPU-s "
          f"({'empty cache: essays split afresh' if args.cold else 'essay split read from the cache if present'})")
    print(f"TOTAL {count} samples in {total:.1f} CPU-s of generation (the fastest of {len(runs)} runs; "
          f"{1000 * total / count:.2f} ms/sample); "
          f"with the corpora load {total + t_corpora:.1f} CPU-s; fill min {min(fills):.4f} mean {sum(fills) / len(fills):.4f}")
    print(f"machine speed now: the reference loop took {calibration():.2f} CPU-s")


if __name__ == "__main__":
    main()
