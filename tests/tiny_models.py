"""Tiny random checkpoints of every architecture family the backends must load, written to a
folder exactly as a hub download would leave them (config.json, weights, tokenizer files)."""

from __future__ import annotations

from pathlib import Path

FAMILIES = ["llama", "gemma3_text", "gemma2", "mamba", "falcon_mamba", "mamba2", "bamba", "zamba2", "falcon_h1",
            "nemotron_h", "jamba", "granitemoehybrid", "qwen3_next", "qwen3_5_text", "olmo_hybrid",
            "kimi_linear", "lfm2", "lfm2_moe", "lfm3", "zamba", "bailing_hybrid", "zaya", "minimax",
            "recurrent_gemma", "rwkv",
            # the other attention decoders the hf backend batches continuously (hf.SHRINKABLE)
            # (not qwen2 and qwen3_5_moe_text: with their model type in the folder, transformers
            # loads the tokenizer as its own Qwen class, which re-splits our test vocabulary and
            # adds a pad token past it; test_hf_backend.py runs them with the tokenizer given apart)
            "mistral", "qwen3", "gemma", "phi3", "olmo", "olmo2", "granite", "smollm3", "starcoder2"]
# Sliding-window attention (Gemma 3: local layers and a global one; Gemma 2: also soft-capped
# scores) with a window far shorter than the test prompts, so the window changes the answers.
WINDOW = 8


def tiny_config(family: str, vocab: int):
    import transformers as T

    attn = dict(num_attention_heads=4, num_key_value_heads=2, intermediate_size=128)
    ssm = dict(mamba_n_heads=8, mamba_d_head=16, mamba_d_state=16, mamba_n_groups=1, mamba_chunk_size=32)
    common = dict(vocab_size=vocab, hidden_size=64, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    if family == "llama":
        return T.LlamaConfig(num_hidden_layers=2, max_position_embeddings=4096, **attn, **common)
    plain = dict(num_hidden_layers=2, max_position_embeddings=4096, **attn, **common)
    if family == "mistral":  # a sliding window far shorter than the prompts
        return T.MistralConfig(sliding_window=WINDOW, **plain)
    if family == "qwen2":  # biases on q, k and v (not in FAMILIES: see there)
        return T.Qwen2Config(**plain)
    if family == "qwen3":  # RMS norms on q and k
        return T.Qwen3Config(head_dim=16, **plain)
    if family == "gemma":
        return T.GemmaConfig(head_dim=16, **plain)
    if family == "phi3":  # fused qkv and gate/up projections
        return T.Phi3Config(**plain)
    if family == "olmo":
        return T.OlmoConfig(**plain)
    if family == "olmo2":
        return T.Olmo2Config(**plain)
    if family == "granite":  # scaled embeddings, residuals, attention and logits
        return T.GraniteConfig(embedding_multiplier=2.0, residual_multiplier=0.5, attention_multiplier=0.2,
                               logits_scaling=2.0, **plain)
    if family == "smollm3":  # every fourth layer without rotary positions
        return T.SmolLM3Config(**{**plain, "num_hidden_layers": 4})
    if family == "starcoder2":  # biases, layer norms, a sliding window
        # (untied: tied to looks_trained's pad embedding, the head would predict the pad token always;
        # larger weights: at 0.02 its biases swamp them and every prompt gets the same answer)
        return T.Starcoder2Config(sliding_window=WINDOW, tie_word_embeddings=False, initializer_range=0.1, **plain)
    if family == "gemma3_text":
        return T.Gemma3TextConfig(num_hidden_layers=2, layer_types=["sliding_attention", "full_attention"],
                                  sliding_window=WINDOW, head_dim=16, query_pre_attn_scalar=16,
                                  max_position_embeddings=4096, **attn, **common)
    if family == "gemma2":
        return T.Gemma2Config(num_hidden_layers=2, sliding_window=WINDOW, head_dim=16, query_pre_attn_scalar=16,
                              max_position_embeddings=4096, **attn, **common)
    if family == "mamba":  # Mamba-1 (state-spaces/mamba-*-hf)
        return T.MambaConfig(num_hidden_layers=2, state_size=16, expand=2, **common)
    if family == "falcon_mamba":  # Mamba-1 with RMS-normalised dt, B and C (tiiuae/falcon-mamba-7b)
        return T.FalconMambaConfig(num_hidden_layers=2, state_size=16, expand=2, **common)
    if family == "mamba2":
        return T.Mamba2Config(num_hidden_layers=2, num_heads=8, head_dim=16, state_size=16, n_groups=1,
                              expand=2, chunk_size=32, **common)
    if family == "bamba":
        return T.BambaConfig(num_hidden_layers=2, attn_layer_indices=[1], **attn, **ssm, **common)
    if family == "zamba2":
        return T.Zamba2Config(num_hidden_layers=2, mamba_headdim=16, mamba_d_state=16, mamba_ngroups=1, chunk_size=32,
                              layers_block_type=["mamba", "hybrid"], hybrid_layer_ids=[1], num_mem_blocks=1,
                              num_attention_heads=4, num_key_value_heads=4, intermediate_size=128, **common)
    if family == "falcon_h1":
        return T.FalconH1Config(num_hidden_layers=2, mamba_d_ssm=128, **attn, **ssm, **common)
    if family == "nemotron_h":
        return T.NemotronHConfig(num_hidden_layers=3, mamba_num_heads=8, mamba_head_dim=16, ssm_state_size=16,
                                 n_groups=1, chunk_size=32, hybrid_override_pattern="M*-", **attn, **common)
    if family == "jamba":  # Mamba-1 layers, attention every second layer, a mixture of experts
        return T.JambaConfig(num_hidden_layers=2, attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2,
                             expert_layer_offset=1, num_experts=2, num_experts_per_tok=1, mamba_d_state=16,
                             use_mamba_kernels=False, max_position_embeddings=4096, **attn, **common)
    if family == "granitemoehybrid":  # Mamba-2 layers and attention, mixtures of experts
        return T.GraniteMoeHybridConfig(num_hidden_layers=2, layer_types=["mamba", "attention"], num_local_experts=2,
                                        num_experts_per_tok=1, shared_intermediate_size=128,
                                        max_position_embeddings=4096, **attn, **ssm, **common)
    # Gated DeltaNet (linear attention with a short convolution) + attention: Qwen3-Next (with
    # experts), Qwen3.5's text model, OLMo hybrid.
    delta = dict(layer_types=["linear_attention", "full_attention"], linear_conv_kernel_dim=4, linear_key_head_dim=16,
                 linear_value_head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4,
                 max_position_embeddings=4096)
    if family == "qwen3_next":
        return T.Qwen3NextConfig(num_hidden_layers=2, head_dim=16, num_experts=2, num_experts_per_tok=1,
                                 moe_intermediate_size=64, shared_expert_intermediate_size=64,
                                 **delta, **attn, **common)
    if family == "qwen3_5_text":  # (a Qwen3.5 checkpoint, multimodal, loads as this text model)
        return T.Qwen3_5TextConfig(num_hidden_layers=2, head_dim=16, **delta, **attn, **common)
    if family == "qwen3_5_moe_text":  # (not in FAMILIES, as qwen2: see there)
        return T.Qwen3_5MoeTextConfig(num_hidden_layers=2, head_dim=16, num_experts=2, num_experts_per_tok=1,
                                      moe_intermediate_size=64, shared_expert_intermediate_size=64,
                                      **delta, **attn, **common)
    if family == "olmo_hybrid":
        return T.OlmoHybridConfig(num_hidden_layers=2, **delta, **attn, **common)
    if family == "kimi_linear":  # Kimi Delta Attention + multi-head latent attention, experts
        # (key/value heads as many as query heads: fewer failed with a shape error in its attention)
        return T.KimiLinearConfig(num_hidden_layers=2, layer_types=["linear_attention", "full_attention"],
                                  linear_head_dim=16, linear_num_heads=4, linear_conv_kernel_dim=4,
                                  num_attention_heads=4, num_key_value_heads=4, intermediate_size=128,
                                  kv_lora_rank=16, q_lora_rank=None, qk_rope_head_dim=8, v_head_dim=16,
                                  qk_nope_head_dim=8, num_local_experts=2, num_experts_per_tok=1,
                                  moe_intermediate_size=64, max_position_embeddings=4096, **common)
    if family == "lfm2_moe":
        return T.Lfm2MoeConfig(num_hidden_layers=2, layer_types=["conv", "full_attention"], num_dense_layers=1,
                               num_experts=2, num_experts_per_tok=1, moe_intermediate_size=64,
                               max_position_embeddings=4096, **attn, **common)
    if family == "lfm2":  # short gated convolutions + attention (LiquidAI LFM2)
        return T.Lfm2Config(num_hidden_layers=2, layer_types=["conv", "full_attention"], max_position_embeddings=4096,
                            **attn, **common)
    if family == "lfm3":  # LFM2's short convolutions and attention, a newer layout
        return T.Lfm3Config(num_hidden_layers=2, layer_types=["conv", "full_attention"], head_dim=16,
                            max_position_embeddings=4096, **attn, **common)
    if family == "zamba":  # Zamba v1: Mamba-1 layers and a shared attention block (two hybrid layers)
        return T.ZambaConfig(num_hidden_layers=4, attn_layer_period=2, attn_layer_offset=0, attention_hidden_size=128,
                             attention_head_dim=32, n_mamba_heads=2, mamba_d_state=16, max_position_embeddings=4096,
                             **attn, **common)
    if family == "bailing_hybrid":  # Kimi Delta Attention + multi-head latent attention, experts
        # (key/value heads as many as query heads, one expert group: otherwise shape errors)
        return T.BailingHybridConfig(num_hidden_layers=2, layer_types=["linear_attention", "full_attention"],
                                     head_dim=16, kv_lora_rank=16, qk_rope_head_dim=8, v_head_dim=16,
                                     qk_nope_head_dim=8, num_local_experts=2, num_experts_per_tok=1,
                                     moe_intermediate_size=64, first_k_dense_replace=1, n_group=1, topk_group=1,
                                     max_position_embeddings=4096, **{**attn, "num_key_value_heads": 4}, **common)
    if family == "zaya":  # layers that are a recurrent mixer and attention at once, experts
        return T.ZayaConfig(num_hidden_layers=2, head_dim=16, num_experts=2, num_experts_per_tok=1,
                            moe_intermediate_size=64, max_position_embeddings=4096, num_attention_heads=4,
                            num_key_value_heads=2, **common)
    if family == "minimax":  # lightning (linear) attention + softmax attention, experts; a cache of its own
        return T.MiniMaxConfig(num_hidden_layers=2, layer_types=["linear_attention", "full_attention"], head_dim=16,
                               num_local_experts=2, num_experts_per_tok=1, block_size=16,
                               max_position_embeddings=4096, **attn, **common)
    if family == "recurrent_gemma":
        return T.RecurrentGemmaConfig(num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=1,
                                      intermediate_size=128, lru_width=64, attention_window_size=64,
                                      block_types=["recurrent", "recurrent", "attention"], **common)
    if family == "rwkv":
        return T.RwkvConfig(num_hidden_layers=2, attention_hidden_size=64, intermediate_size=128,
                            context_length=1024, **common)
    raise ValueError(family)


def looks_trained(model) -> None:
    """Give a freshly initialised model what a trained one has and a fresh one lacks: nonzero
    biases and a nonzero embedding for the pad token (initialisation zeroes both). With zeros, a
    left-padded position computes exact zeros in many layers and a leak of padding into the real
    tokens (a convolution reaching back over it) changes nothing, so a test could not see it."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") and p.dim() == 1 and not p.any():
                p.normal_(0, 0.1)
        embed = model.get_input_embeddings().weight
        pad = model.config.pad_token_id
        if pad is not None and not embed[pad].any():
            embed[pad].normal_(0, 1)


def make_checkpoint(family: str, folder: Path, tokenizer, seed: int = 0) -> Path:
    """Save a random model of `family` with `tokenizer` (a longctx Tokenizer) into `folder`."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, len(tokenizer.hf)))
    looks_trained(model)
    model.save_pretrained(folder)
    tokenizer.hf.save_pretrained(folder)
    return folder


MAMBA_SSM_CONFIGS = {
    # Shapes of state-spaces/mamba2-2.7b, mamba2attn-2.7b and transformerpp-2.7b, scaled down.
    "mamba2": dict(d_model=64, d_intermediate=0, n_layer=2,
                   ssm_cfg={"layer": "Mamba2", "d_state": 16, "headdim": 16, "chunk_size": 32}),
    "mamba2attn": dict(d_model=64, d_intermediate=0, n_layer=3, attn_layer_idx=[1],
                       ssm_cfg={"layer": "Mamba2", "d_state": 16, "headdim": 16, "chunk_size": 32},
                       attn_cfg={"causal": True, "d_conv": 4, "head_dim": 16, "num_heads": 4,
                                 "out_proj_bias": False, "qkv_proj_bias": False, "rotary_emb_dim": 8}),
    "transformerpp": dict(d_model=64, d_intermediate=128, n_layer=2, attn_layer_idx=[0, 1],
                          attn_cfg={"causal": True, "head_dim": 16, "num_heads": 4, "num_heads_kv": 2,
                                    "out_proj_bias": False, "qkv_proj_bias": False, "rotary_emb_dim": 16}),
}


def make_mamba_ssm_checkpoint(kind: str, folder: Path, tokenizer, seed: int = 0, safetensors: bool = False) -> Path:
    """A random checkpoint in the mamba_ssm format: config.json + pytorch_model.bin with mamba_ssm's
    parameter names (or model.safetensors), plus the tokenizer files."""
    import json
    import math

    import torch

    from longctx.models.mixer_lm import MixerConfig, MixerLM

    raw = dict(vocab_size=len(tokenizer.hf), attn_layer_idx=[], attn_cfg={}, ssm_cfg={}, rms_norm=True,
               residual_in_fp32=True, fused_add_norm=True, pad_vocab_size_multiple=16, tie_embeddings=True)
    raw.update(MAMBA_SSM_CONFIGS[kind])
    cfg = MixerConfig(**{**raw, "attn_layer_idx": tuple(raw["attn_layer_idx"])})
    torch.manual_seed(seed)
    model = MixerLM(cfg)
    with torch.no_grad():  # mamba_ssm's initialisation ranges, so the SSM actually mixes
        for name, p in model.named_parameters():
            if name.endswith("A_log"):
                p.copy_(torch.log(torch.empty_like(p).uniform_(1, 16)))
            elif name.endswith("dt_bias"):
                dt = torch.exp(torch.empty_like(p).uniform_(math.log(1e-3), math.log(1e-1)))
                p.copy_(dt + torch.log(-torch.expm1(-dt)))
            elif p.dim() >= 2:
                torch.nn.init.normal_(p, std=0.1)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(raw))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if safetensors:
        from safetensors.torch import save_file

        state.pop("lm_head.weight")
        save_file(state, str(folder / "model.safetensors"))
    else:
        torch.save(state, folder / "pytorch_model.bin")
    tokenizer.hf.save_pretrained(folder)
    return folder


# A checkpoint that ships its own modelling code with the interface of RWKV/rwkv-6-world-3b-v2.1's
# (trust_remote_code): model_type "rwkv6", a `state` list taken and returned, an attention mask
# taken and ignored, logits computed for every position, no `logits_to_keep` and no **kwargs. The
# recurrence itself is a toy (a decaying sum per layer), written here, not RWKV-6's.
STATE_LM_CODE = '''
from dataclasses import dataclass

import torch
from torch import nn
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput


class StateLMConfig(PretrainedConfig):
    model_type = "rwkv6"

    def __init__(self, vocab_size=64, hidden_size=16, num_hidden_layers=2, **kwargs):
        self.vocab_size, self.hidden_size, self.num_hidden_layers = vocab_size, hidden_size, num_hidden_layers
        super().__init__(**kwargs)


@dataclass
class StateLMOutput(ModelOutput):
    logits: torch.FloatTensor = None
    state: list = None


class StateLMForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = StateLMConfig

    def __init__(self, config):
        super().__init__(config)
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.mix = nn.ModuleList(nn.Linear(config.hidden_size, config.hidden_size)
                                 for _ in range(config.num_hidden_layers))
        self.decay = nn.Parameter(torch.rand(config.num_hidden_layers, config.hidden_size))
        self.head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self):
        return self.head

    def prepare_inputs_for_generation(self, input_ids, state=None, inputs_embeds=None, **kwargs):
        if state is not None:
            input_ids = input_ids[:, -1:]
        return {"input_ids": input_ids, "state": state}

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, state=None, labels=None,
                use_cache=None, output_attentions=None, output_hidden_states=None, return_dict=None):
        hidden = self.embeddings(input_ids)
        if state is None:
            state = [torch.zeros(hidden.shape[0], hidden.shape[2], len(self.mix))]
        for layer, mix in enumerate(self.mix):
            carried, outputs = state[0][:, :, layer], []
            for t in range(hidden.shape[1]):
                carried = torch.sigmoid(self.decay[layer]) * carried + torch.tanh(mix(hidden[:, t]))
                outputs.append(carried)
            state[0][:, :, layer] = carried
            hidden = hidden + torch.stack(outputs, dim=1)
        return StateLMOutput(logits=self.head(hidden), state=state)
'''


def make_state_lm_checkpoint(folder: Path, tokenizer, seed: int = 0) -> Path:
    """Save a random model of STATE_LM_CODE, its code, and `tokenizer` into `folder`, as a hub
    download of a checkpoint with its own modelling code leaves them."""
    import importlib.util

    import torch

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "modeling_state_lm.py").write_text(STATE_LM_CODE)
    spec = importlib.util.spec_from_file_location("modeling_state_lm", folder / "modeling_state_lm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(seed)
    config = module.StateLMConfig(vocab_size=len(tokenizer.hf), bos_token_id=1, eos_token_id=2, pad_token_id=2)
    config.auto_map = {"AutoConfig": "modeling_state_lm.StateLMConfig",
                       "AutoModelForCausalLM": "modeling_state_lm.StateLMForCausalLM"}
    config.architectures = ["StateLMForCausalLM"]
    module.StateLMForCausalLM(config).save_pretrained(folder)
    tokenizer.hf.save_pretrained(folder)
    return folder
