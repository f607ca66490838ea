"""Peak memory of recurrent models (Mamba2, RecurrentGemma, Mamba) at 16K vs 2K prompt tokens (goal:
about equal), through the hf backend's chunked prefill and without it, with a Llama of the same width
for contrast (its KV cache must grow).

    python benchmarks/memory.py [--families mamba2,mamba]

Each (model, length, chunking) runs in a fresh process; we report the growth of its peak RSS
over the peak after loading, so interpreter and weights are not counted.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = {
    "mamba2": dict(cls="Mamba2Config", num_hidden_layers=4, hidden_size=256, num_heads=8, head_dim=64,
                   state_size=64, n_groups=1, expand=2, chunk_size=256),
    # RecurrentGemma's layout (two RG-LRU blocks, then local attention), at the same width.
    "recurrent_gemma": dict(cls="RecurrentGemmaConfig", num_hidden_layers=3, hidden_size=256, lru_width=256,
                            intermediate_size=512, num_attention_heads=4, num_key_value_heads=1,
                            attention_window_size=2048, block_types=["recurrent", "recurrent", "attention"]),
    # Mamba (v1), at the same width: its scan materialises [channels, length, state] per layer.
    "mamba": dict(cls="MambaConfig", num_hidden_layers=4, hidden_size=256, state_size=16, expand=2),
    "llama": dict(cls="LlamaConfig", num_hidden_layers=4, hidden_size=256, intermediate_size=512,
                  num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=32768),
}


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(family: str, length: int, chunk: int, folder: str) -> None:
    from longctx.models import GenParams, load_model

    model = load_model("hf", path=folder, prefill_chunk=chunk, batch_size=1)
    model.generate(["hello"], GenParams(2))  # warm up allocator and kernels
    base = peak_mb()
    prompt = " word" * (length - 1)
    start = time.perf_counter()
    (out,) = model.generate([prompt], GenParams(8))
    print(f"{family:15s} {out.prompt_tokens:6d} tokens  chunk {chunk or '-':>5}  peak growth "
          f"{peak_mb() - base:8.1f} MB  ({time.perf_counter() - start:.1f} s)", flush=True)


def make(family: str, root: Path) -> str:
    import transformers
    from longctx.cli import default_tokenizer
    from longctx.tokenizer import load_tokenizer

    tok = load_tokenizer(default_tokenizer())
    cfg = dict(CONFIGS[family])
    config = getattr(transformers, cfg.pop("cls"))(vocab_size=len(tok.hf), eos_token_id=2, pad_token_id=2, **cfg)
    folder = root / family
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tok.hf.save_pretrained(folder)
    return str(folder)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", nargs=4, metavar=("FAMILY", "LENGTH", "CHUNK", "FOLDER"))
    ap.add_argument("--lengths", default="2048,16384")
    ap.add_argument("--families", default=",".join(CONFIGS), help=f"some of {', '.join(CONFIGS)}")
    args = ap.parse_args()
    if args.child:
        family, length, chunk, folder = args.child
        return child(family, int(length), int(chunk), folder)
    with tempfile.TemporaryDirectory() as tmp:
        families = args.families.split(",")
        if unknown := set(families) - set(CONFIGS):
            ap.error(f"unknown families {sorted(unknown)}; known: {', '.join(CONFIGS)}")
        runs = [(f, chunk) for f in families for chunk in ((0,) if f == "llama" else (2048, 0))]
        for family, chunk in runs:
            folder = make(family, Path(tmp))
            for length in (int(x) for x in args.lengths.split(",")):
                subprocess.run([sys.executable, __file__, "--child", family, str(length), str(chunk), folder], check=True)


if __name__ == "__main__":
    main()
