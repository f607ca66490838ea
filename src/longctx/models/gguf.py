"""The `gguf` backend: GGUF models through llama-cpp-python, on CPU or GPU (`n_gpu_layers`).

Token counts come from the model's own llama.cpp tokenizer (the prompt is tokenized once, by
llama.cpp, and those ids are what runs). Samples are fitted with the HF conversion of the same
GGUF vocabulary; a mismatch shows up as a recorded prompt_tokens different from the sample's.
Decoding is greedy with llama.cpp's defaults that would change it switched off (repeat penalty).
llama.cpp keeps the previous prompt's KV cache and reuses the longest common prefix.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

from ..errors import UsageError
from ..tokenizer import load_tokenizer
from .base import Completion, GenParams, failed, over_budget


class LlamaCppModel:
    def __init__(self, path: str, n_ctx: int = 0, n_gpu_layers: int = 0, n_threads: int | None = None,
                 n_batch: int = 512, tokenizer: str | None = None, name: str | None = None):
        from llama_cpp import Llama

        p = Path(path).expanduser()
        if not (p.is_file() and p.suffix == ".gguf"):
            raise UsageError(f"the gguf backend takes a .gguf file, not {path}")
        self.name = name or p.stem
        self.tokenizer = load_tokenizer(tokenizer or p)  # for fitting samples; llama.cpp counts what runs
        self.model_template = "base"
        self.llm = Llama(model_path=str(p), n_ctx=n_ctx, n_gpu_layers=n_gpu_layers, n_threads=n_threads,
                         n_batch=n_batch, seed=0, verbose=False)
        self.max_context = self.llm.n_ctx()
        self.bos_text = self.tokenizer.bos_text

    def tokenize(self, prompt: str) -> list[int]:
        add_bos = not (self.bos_text and prompt.startswith(self.bos_text))
        return self.llm.tokenize(prompt.encode("utf-8"), add_bos=add_bos, special=True)

    @staticmethod
    def completion_kwargs(params: GenParams) -> dict:
        return {"max_tokens": params.max_new_tokens, "temperature": 0.0, "top_k": 1, "top_p": 1.0, "min_p": 0.0,
                "repeat_penalty": 1.0, "stop": list(params.stop) or None, "seed": 0}

    def generate(self, prompts: Sequence[str], params: GenParams) -> list[Completion]:
        results = []
        for prompt in prompts:  # llama-cpp-python runs one sequence at a time
            ids = self.tokenize(prompt)
            reason = over_budget(len(ids), params.max_new_tokens, self.max_context)
            if reason:
                results.append(failed(reason, len(ids)))
                continue
            start = time.perf_counter()
            out = self.llm.create_completion(ids, **self.completion_kwargs(params))
            usage = out.get("usage") or {}
            results.append(Completion(out["choices"][0]["text"], len(ids), usage.get("completion_tokens"),
                                      time.perf_counter() - start))
        return results
