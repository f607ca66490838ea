"""The `vllm` backend: vLLM's offline engine on a GPU machine (not installable on CPU CI).

We tokenize with the checkpoint's own tokenizer and hand vLLM token ids, so the prompt the model
consumes is exactly the one the sample was fitted to (no second tokenization, no double BOS).
Prefix caching is on by default: RULER samples of one cell share long prefixes.
"""

from __future__ import annotations

import time
from typing import Sequence

from ..tokenizer import load_tokenizer
from .base import Completion, GenParams, triage
from .hf import _dtype_name


class VLLMModel:
    def __init__(self, path: str, tokenizer: str | None = None, dtype: str = "auto", max_model_len: int | None = None,
                 tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.9, trust_remote_code: bool = False,
                 enable_prefix_caching: bool = True, name: str | None = None):
        from vllm import LLM

        self.name = name or str(path).rstrip("/").split("/")[-1]
        self.tokenizer = load_tokenizer(tokenizer or path, trust_remote_code=trust_remote_code)
        self.model_template = "base"
        self.llm = LLM(model=str(path), tokenizer=str(tokenizer or path), dtype=_dtype_name(dtype),
                       max_model_len=max_model_len, tensor_parallel_size=tensor_parallel_size,
                       gpu_memory_utilization=gpu_memory_utilization, trust_remote_code=trust_remote_code,
                       enable_prefix_caching=enable_prefix_caching, seed=0)
        self.max_context = self.llm.llm_engine.model_config.max_model_len

    @staticmethod
    def sampling_kwargs(params: GenParams) -> dict:
        # Greedy, every penalty spelled out: vLLM's server takes a repetition_penalty from the model's
        # generation_config.json; the offline engine does not for SamplingParams built here, and
        # pinning it keeps it so whatever vLLM's defaults become.
        return {"temperature": 0.0, "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0, "presence_penalty": 0.0,
                "frequency_penalty": 0.0, "max_tokens": params.max_new_tokens, "stop": list(params.stop) or None,
                "skip_special_tokens": True, "seed": 0}

    def generate(self, prompts: Sequence[str], params: GenParams) -> list[Completion]:
        from vllm import SamplingParams

        encoded = [self.tokenizer.encode(p) for p in prompts]
        results, todo = triage(encoded, params.max_new_tokens, self.max_context)
        if todo:
            start = time.perf_counter()
            outs = self.llm.generate([{"prompt_token_ids": encoded[i]} for i in todo],
                                     SamplingParams(**self.sampling_kwargs(params)), use_tqdm=False)
            share = (time.perf_counter() - start) / len(todo)
            for i, out in zip(todo, outs):
                best = out.outputs[0]
                results[i] = Completion(best.text, len(out.prompt_token_ids), len(best.token_ids), share)
        return results  # type: ignore[return-value]
