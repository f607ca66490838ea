"""The `mamba_ssm` backend: state-spaces checkpoints (mamba2-2.7b, mamba2attn-2.7b,
transformerpp-2.7b) without CUDA or the mamba_ssm package.

A checkpoint is a `config.json` (d_model, n_layer, ssm_cfg, attn_layer_idx, attn_cfg, ...) and
mamba_ssm-named weights. Pure Mamba2 maps exactly onto transformers' Mamba2ForCausalLM (one
renamed key); anything with attention or MLP blocks runs on our `MixerLM`. On a GPU with
mamba_ssm installed, its own model and kernels are used instead (`use_kernels`).
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

from ..errors import UsageError
from ..tokenizer import load_tokenizer
from .hf import HFModel
from .mixer_lm import MixerConfig, MixerLM

# RULER's mamba path always uses this tokenizer, whatever the checkpoint (ruler-spec section 8).
DEFAULT_TOKENIZER = "EleutherAI/gpt-neox-20b"


class MambaSSMModel(HFModel):
    def __init__(self, path: str, tokenizer: str = DEFAULT_TOKENIZER, dtype: str = "auto", device: str = "cpu",
                 batch_size: int = 8, prefill_chunk: int | None = 2048, allow_pickle: bool = False,
                 use_kernels: bool = True, max_context: int | None = None, name: str | None = None):
        self._setup(device, dtype, batch_size)
        folder = _local_folder(path)
        cfg = read_config(folder)
        state = read_weights(folder, allow_pickle)
        model, family = build(cfg, state, use_kernels and self.device.startswith("cuda"))
        tok = load_tokenizer(folder if (folder / "tokenizer.json").exists() else tokenizer)
        if isinstance(model, _KernelStepper):  # mamba_ssm cannot continue a multi-token prefill
            prefill_chunk = None
        # The state-spaces 2.7B models were trained on 2048-token sequences.
        self._attach(model.to(self.dtype), family, tok, name or Path(str(path)).name, batch_size=batch_size,
                     prefill_chunk=prefill_chunk, chat_template=False, max_context=max_context, train_context=2048)


def read_config(folder: Path) -> MixerConfig:
    path = folder / "config.json"
    if not path.exists():
        raise UsageError(f"{folder} has no config.json: not a mamba_ssm checkpoint")
    raw = json.loads(path.read_text())
    known = {f.name for f in fields(MixerConfig)}
    if "d_model" not in raw or "n_layer" not in raw:
        raise UsageError(f"{path} is not a mamba_ssm config (no d_model / n_layer); use the hf backend")
    unknown = sorted(set(raw) - known)
    if unknown:
        raise UsageError(f"{path} has keys this backend does not know: {', '.join(unknown)}")
    raw["attn_layer_idx"] = tuple(raw.get("attn_layer_idx") or ())
    raw["ssm_cfg"], raw["attn_cfg"] = raw.get("ssm_cfg") or {}, raw.get("attn_cfg") or {}
    return MixerConfig(**raw)


def read_weights(folder: Path, allow_pickle: bool) -> dict:
    import torch

    safe = folder / "model.safetensors"
    if safe.exists():
        from safetensors.torch import load_file

        return load_file(str(safe))
    pickled = folder / "pytorch_model.bin"
    if not pickled.exists():
        raise UsageError(f"{folder} has neither model.safetensors nor pytorch_model.bin")
    if not allow_pickle:
        raise UsageError(f"{pickled} is a pickle, which can run code when loaded; pass allow_pickle=true "
                         "to load it (the state-spaces checkpoints ship only this format)")
    return torch.load(str(pickled), map_location="cpu", weights_only=True, mmap=True)


def is_plain_mamba2(cfg: MixerConfig) -> bool:
    ssm = cfg.ssm_cfg
    return (not cfg.attn_layer_idx and cfg.d_intermediate == 0 and ssm.get("layer") == "Mamba2"
            and cfg.rms_norm and not ssm.get("D_has_hdim") and ssm.get("d_ssm") is None)


def build(cfg: MixerConfig, state: dict, use_kernels: bool):
    """The module to run, and its family name for the generation loop."""
    if use_kernels:
        kernel = _mamba_ssm_kernel_model(cfg, state)
        if kernel is not None:
            return kernel
    if is_plain_mamba2(cfg):
        from transformers import Mamba2ForCausalLM

        model = Mamba2ForCausalLM(to_transformers_config(cfg))
        renamed = {k.replace("backbone.embedding.", "backbone.embeddings."): v for k, v in state.items()}
        _load_exact(model, renamed, cfg.tie_embeddings)
        return model, "mamba2"
    model = MixerLM(cfg)
    _load_exact(model, state, cfg.tie_embeddings)
    return model, "mamba_ssm"


def to_transformers_config(cfg: MixerConfig):
    from transformers import Mamba2Config

    ssm = cfg.ssm_cfg
    expand, headdim = ssm.get("expand", 2), ssm.get("headdim", 64)
    return Mamba2Config(
        vocab_size=cfg.padded_vocab, hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layer,
        state_size=ssm.get("d_state", 128), expand=expand, head_dim=headdim,
        num_heads=expand * cfg.d_model // headdim, n_groups=ssm.get("ngroups", 1), conv_kernel=ssm.get("d_conv", 4),
        chunk_size=ssm.get("chunk_size", 256), use_bias=ssm.get("bias", False), use_conv_bias=ssm.get("conv_bias", True),
        layer_norm_epsilon=cfg.norm_epsilon, residual_in_fp32=cfg.residual_in_fp32,
        tie_word_embeddings=cfg.tie_embeddings, time_step_limit=tuple(ssm.get("dt_limit", (0.0, float("inf")))),
        bos_token_id=0, eos_token_id=0, pad_token_id=0)


def _load_exact(model, state: dict, tied: bool) -> None:
    """Load every parameter; a missing or unexpected key is an error, not a silent random weight."""
    if tied:
        state = {k: v for k, v in state.items() if k != "lm_head.weight"}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (tied and k == "lm_head.weight")]
    if missing or unexpected:
        raise UsageError(f"checkpoint does not match its config: missing {missing[:4]}, unexpected {unexpected[:4]}")
    if tied and hasattr(model, "tie_weights"):
        model.tie_weights()


def _mamba_ssm_kernel_model(cfg: MixerConfig, state: dict):
    """mamba_ssm's own model (Triton/CUDA kernels) when it is installed, else None."""
    import importlib.util

    if importlib.util.find_spec("mamba_ssm") is None:
        return None
    from mamba_ssm.models.config_mamba import MambaConfig
    from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel

    raw = {f.name: getattr(cfg, f.name) for f in fields(MixerConfig) if f.name != "norm_epsilon"}
    raw["attn_layer_idx"] = list(cfg.attn_layer_idx)
    model = MambaLMHeadModel(MambaConfig(**raw), device="cuda")
    model.load_state_dict(state)
    return _KernelStepper(model), "mamba_ssm"


class _KernelStepper:
    """Adapts mamba_ssm's MambaLMHeadModel to MixerLM's `step(ids, state)`. mamba_ssm decodes one
    token at a time after a one-pass prefill, so its prompt is not chunked."""

    takes_padding = False  # mamba_ssm's own model gets no mask: prompts are batched with equal lengths only

    def __init__(self, model):
        self.model = model

    def to(self, *args, **kwargs):
        self.model.to(*args, **kwargs)
        return self

    def eval(self):
        self.model.eval()
        return self

    def step(self, ids, state=None):
        from mamba_ssm.utils.generation import InferenceParams

        if state is None:
            state = InferenceParams(max_seqlen=65536, max_batch_size=ids.shape[0])
        logits = self.model(ids, inference_params=state, num_last_tokens=1).logits[:, -1]
        state.seqlen_offset += ids.shape[1]
        return logits, state


def _local_folder(path: str) -> Path:
    p = Path(str(path)).expanduser()
    if p.is_dir():
        return p
    if p.exists():
        raise UsageError(f"{p} is a file; the mamba_ssm backend takes a checkpoint folder or a hub id")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(path), allow_patterns=["config.json", "*.bin", "*.safetensors"]))
    except Exception as e:  # offline, unknown repo, no permission: one line
        raise UsageError(f"cannot fetch {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
