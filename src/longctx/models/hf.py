"""The `hf` backend: any transformers causal LM, from a local folder, a hub id or a .gguf file.

Speed and memory care, all checked against transformers' own `generate` in the tests:
- prompts are sorted by token count and batched, so left padding stays within a few tokens;
  families whose state is corrupted by padding (RWKV, a bias before a Mamba convolution) are
  batched only with equal lengths, and RecurrentGemma, Mamba, Mamba2 and the mamba_ssm
  checkpoints (MixerLM) are padded only in our own loop, which keeps the padding out of their state;
- only the last position's logits are computed on prefill (`logits_to_keep=1`);
- attention models decode from a KV cache with reserved room (no copy per token); on the CPU
  they batch continuously, each prompt prefilled alone (reusing the cache of a long prefix it
  shares with the prompt before it) and a row refilled as soon as its answer ends, and each step
  verifies `draft_tokens` guesses looked up in the row's own prompt and answer
  (`continuous.greedy_continuous`; still greedy decoding's tokens); elsewhere finished rows leave
  the batch (`greedy_shrinking`);
- recurrent and hybrid models prefill in chunks, so peak memory does not grow with the prompt:
  transformers' own `prefill_chunk_size` for the hybrids it supports, and `stateful.py`'s
  loop for Mamba, Mamba2, RWKV and RecurrentGemma, whose caches transformers cannot chunk;
  Mamba-1 layers (Mamba, Jamba) scan on from the carried state (`scan_carry.py`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

from ..errors import UsageError
from ..tokenizer import Tokenizer, _file_sha256, default_cache_dir, load_tokenizer
from .base import Completion, GenParams, cut_at_stop, failed, triage
from .continuous import greedy_continuous
from .scan_carry import scans_carry_state
from .transformers_compat import with_cache
from .stateful import PADDED_IN_LOOP, STATEFUL_FAMILIES, greedy_shrinking, greedy_stateful, takes_logits_to_keep

# Pure attention decoders whose KV cache can drop finished rows mid-batch (each tested on a tiny
# checkpoint; qwen2 with its tokenizer given apart, tests/tiny_models.py says why).
SHRINKABLE = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "olmo", "olmo2",
              "granite", "smollm3", "starcoder2"}

# Families with a recurrent state: prefill in chunks by default.
# Each is tested on a tiny checkpoint (tests/test_hf_backend.py): chunks give one pass's answers and logits.
RECURRENT_FAMILIES = {"mamba", "falcon_mamba", "mamba2", "rwkv", "rwkv6", "bamba", "zamba2", "falcon_h1",
                      "nemotron_h", "recurrent_gemma", "jamba", "granitemoehybrid", "qwen3_next", "qwen3_5_text",
                      "olmo_hybrid", "kimi_linear", "lfm2", "lfm2_moe", "lfm3", "zamba", "bailing_hybrid", "zaya",
                      "qwen3_5_moe_text"}
# Every prompt of a STATEFUL_FAMILIES model runs through stateful.py's loop: transformers cannot
# chunk their prefill, and `generate` lets padding into RecurrentGemma (its convolution ignores
# the attention mask; the test shows the logits move). The loop pads only PADDED_IN_LOOP families,
# keeping the padding out of their state. The others (transformers' RWKV and the RWKV-6 code
# ignore the mask; mamba_ssm's own model on a GPU, `takes_padding` False) are batched only with
# prompts of the same length, and so is any model with a bias before a Mamba convolution
# (`_input_bias_reaches_convolution`), in the loop or not.
DEFAULT_CHUNK = 2048
# transformers families whose cached state takes in left padding although `generate` masks it
# (a test shows a padded row's next decoded logits move): batched only with equal lengths.
# MiniMax's lightning attention keeps the padding in the state it hands a decode step.
PADDING_LEAKS = {"minimax"}
# Families transformers cannot prefill in chunks, with the reason (a test shows it): one pass only.
UNCHUNKABLE = {"minimax": "transformers' MiniMax gives other last-position logits when its prompt is prefilled in "
                          "chunks (measured: up to 3e-3 on a tiny checkpoint), so it runs in one pass"}


class HFModel:
    """Greedy generation with transformers. `path` is a local folder, a `.gguf` file or a hub id."""

    draft_tokens = 0  # prompt-lookup guesses per decode step (subclasses that build their own module: none)

    def __init__(self, path: str, dtype: str = "auto", device: str = "cpu", batch_size: int = 8,
                 prefill_chunk: int | None = -1, trust_remote_code: bool = False, allow_pickle: bool = False,
                 chat_template: bool = False, max_context: int | None = None, tokenizer: str | None = None,
                 name: str | None = None, draft_tokens: int = 4):
        self._setup(device, dtype, batch_size)
        if draft_tokens < 0:
            raise UsageError(f"draft_tokens must be 0 (off) or more, not {draft_tokens}")
        self.draft_tokens = draft_tokens
        with _quiet_loading():
            model = _load_model(path, self.dtype, trust_remote_code, allow_pickle)
            tok = load_tokenizer(tokenizer or path, trust_remote_code=trust_remote_code)
        self._attach(model, model.config.model_type, tok, name or Path(str(path)).name, batch_size=batch_size,
                     prefill_chunk=prefill_chunk, chat_template=chat_template,
                     max_context=max_context if max_context is not None else _hard_limit(model.config),
                     train_context=_train_context(model.config))

    def _setup(self, device: str, dtype: str, batch_size: int) -> None:
        """Options checked before anything is loaded (shared with the mamba_ssm backend)."""
        if batch_size < 1:
            raise UsageError(f"batch_size must be at least 1, not {batch_size}")
        self.device = _device(device)
        self.dtype = _dtype(dtype, self.device)
        if self.device == "cpu":
            # transformers advises installing GPU kernels (mamba_ssm, causal_conv1d) whenever a mixer
            # runs its PyTorch reference path; on the CPU there is none to install: noise in a run's log.
            logging.getLogger("transformers.integrations.hub_kernels").setLevel(logging.ERROR)

    def _attach(self, model, family: str, tokenizer: Tokenizer, name: str, *, batch_size: int, prefill_chunk,
                chat_template: bool, max_context: int | None, train_context: int | None) -> None:
        """Everything after loading, shared with backends that build their own module (mamba_ssm)."""
        self.model = model.to(self.device).eval()
        _warn_of_ignored_generation_settings(model, name)
        self.family, self.tokenizer, self.name, self.batch_size = family, tokenizer, name, batch_size
        self.model_template = "chat" if chat_template else "base"
        if chat_template and not tokenizer.chat_template:
            raise UsageError(f"chat_template requested but {name}'s tokenizer has none")
        self.max_context, self.train_context = max_context, train_context
        self._shrinks = family in SHRINKABLE
        leaks = family in PADDING_LEAKS or _input_bias_reaches_convolution(model)
        self._in_loop = family in STATEFUL_FAMILIES
        self._too_big: list[tuple[int, int]] = []  # (positions a row needs, rows) of batches that ran out of memory
        self._loop_pads = family in PADDED_IN_LOOP and getattr(model, "takes_padding", True) and not leaks
        # Whether prompts of different lengths may share a batch, left-padded.
        self._pads = self._loop_pads or not (self._in_loop or leaks)
        if prefill_chunk is not None and prefill_chunk < -1:  # (its type: models.check_options)
            raise UsageError(f"prefill_chunk must be a number of tokens (0: one pass; -1: the family's default), "
                             f"not {prefill_chunk!r}")
        if prefill_chunk == -1:  # auto
            prefill_chunk = DEFAULT_CHUNK if family in RECURRENT_FAMILIES else None
        if prefill_chunk and family in UNCHUNKABLE:
            raise UsageError(f"prefill_chunk: {UNCHUNKABLE[family]}; leave prefill_chunk unset or 0")
        self.prefill_chunk = int(prefill_chunk) if prefill_chunk else None
        gen = getattr(model, "generation_config", None)
        eos = gen.eos_token_id if gen is not None and gen.eos_token_id is not None else tokenizer.hf.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
        self.pad_id = tokenizer.hf.pad_token_id
        if self.pad_id is None:
            self.pad_id = min(self.eos_ids) if self.eos_ids else 0

    def generate(self, prompts: Sequence[str], params: GenParams) -> list[Completion]:
        encoded = [self.tokenizer.encode(p) for p in prompts]
        results, todo = triage(encoded, params.max_new_tokens, self.max_context)
        if self._continuous(todo, encoded):
            todo = self._run_continuous(results, todo, encoded, params)
        self._run_fixed_batches(results, todo, encoded, params)
        return results  # type: ignore[return-value]

    def _run_continuous(self, results: list, todo: list[int], encoded: list[list[int]], params: GenParams) -> list[int]:
        """Continuous batching, band by band of like lengths; the prompts it leaves to the fixed batches
        (all of them when the model cannot keep rows of their own, or the rest when memory runs out)."""
        import torch

        for band in _length_bands(sorted(todo, key=lambda i: len(encoded[i])), encoded):
            start = time.perf_counter()
            try:
                with torch.no_grad():
                    rows = greedy_continuous(self.model, [encoded[i] for i in band], params.max_new_tokens,
                                             self.eos_ids, self._max_batch, self.draft_tokens)
            except RuntimeError as e:
                if not _out_of_memory(e):
                    raise
                rows = None  # the fixed batches halve a batch that does not fit
            if rows is None:
                break
            self._record(results, band, rows, encoded, params, start)
        return [i for i in todo if results[i] is None]

    def _run_fixed_batches(self, results: list, todo: list[int], encoded: list[list[int]], params: GenParams) -> None:
        """Batches sorted by length (`_batches`). A batch that runs out of memory runs again as its
        two halves, one after the other; a prompt that does not fit even alone becomes a failed row,
        so one overlong prompt cannot stop a run (nor every resume of it). The adapter remembers
        what did not fit (`_known_too_big`)."""
        import torch

        pending = self._batches(todo, encoded)
        while pending:
            batch = pending.pop(0)
            size = (max(len(encoded[i]) for i in batch) + params.max_new_tokens, len(batch))
            rows, start = None, time.perf_counter()
            if not self._known_too_big(size):
                try:
                    with torch.no_grad(), _head_on_last_position(self.model):  # no_grad local: the lab trains here
                        rows = self._generate_batch([encoded[i] for i in batch], params.max_new_tokens)
                except RuntimeError as e:
                    if not _out_of_memory(e):
                        raise
                    self._too_big.append(size)
                if rows is None:
                    _free_accelerator_memory()  # (outside the except block, which holds the batch's tensors)
            if rows is not None:
                self._record(results, batch, rows, encoded, params, start)
            elif len(batch) > 1:
                pending[:0] = [batch[:len(batch) // 2], batch[len(batch) // 2:]]
            else:
                n = len(encoded[batch[0]])
                results[batch[0]] = failed(f"out of memory: {n} prompt + {params.max_new_tokens} new tokens do not "
                                           f"fit on {self.device} even alone", n)

    def _known_too_big(self, size: tuple[int, int]) -> bool:
        """Whether a batch of `size` (positions a row needs, rows) is at least as big as one that ran
        out of memory before: it is split (or, alone, failed) without trying, so a long run does not
        fail one allocation per batch."""
        return any(positions <= size[0] and rows <= size[1] for positions, rows in self._too_big)

    def _record(self, results: list, indices: list[int], rows: list[list[int]], encoded: list[list[int]],
                params: GenParams, start: float) -> None:
        """Completions of the prompts `indices` from their new token ids, sharing the time since `start`."""
        share = (time.perf_counter() - start) / len(indices)
        for i, new_ids in zip(indices, rows):
            text = cut_at_stop(self.tokenizer.decode(new_ids), params.stop)
            results[i] = Completion(text, len(encoded[i]), len(new_ids), share)

    def _continuous(self, todo: list[int], encoded: list[list[int]]) -> bool:
        """Whether these prompts go through continuous batching (continuous.greedy_continuous):
        attention models on the CPU whose prompts are not prefilled in chunks."""
        return (self._shrinks and self.device == "cpu" and len(todo) > 1
                and not (self.prefill_chunk and max(len(encoded[i]) for i in todo) > self.prefill_chunk))

    @property
    def call_size(self) -> int:
        """Prompts per call the runner sends by default: continuous batching refills a row from
        the call's queue, so a call of only `batch_size` prompts would leave rows empty as answers end."""
        return 8 * self.batch_size

    @property
    def _max_batch(self) -> int:
        # transformers' RWKV mixes the rows of a batch when it decodes one token from a state
        # (extract_key_value broadcasts a [B, H] shift against [B, 1, H]): one prompt at a time.
        return 1 if self.family == "rwkv" else self.batch_size

    def _batches(self, todo: list[int], encoded: list[list[int]]) -> list[list[int]]:
        """Sorted by length; prompts that cannot be padded (`_pads`) are batched only with equal lengths."""
        order = sorted(todo, key=lambda i: len(encoded[i]))
        batches: list[list[int]] = []
        for i in order:
            last = batches[-1] if batches else None
            fits = last is not None and len(last) < self._max_batch and (
                self._pads or len(encoded[last[0]]) == len(encoded[i]))
            if fits:
                last.append(i)
            else:
                batches.append([i])
        return batches

    def _generate_batch(self, rows: list[list[int]], max_new: int) -> list[list[int]]:
        import torch

        width = max(len(r) for r in rows)
        ids = torch.tensor([[self.pad_id] * (width - len(r)) + r for r in rows], device=self.device)
        if self._in_loop:  # equal lengths unless the loop pads the family (see _batches)
            pads = torch.tensor([width - len(r) for r in rows]) if self._loop_pads else None
            out = greedy_stateful(self.model, self.family, ids, max_new, self.eos_ids, self.prefill_chunk, pads)
            return [_until_eos(row.tolist(), self.eos_ids) for row in out]
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=self.device)
        chunked = bool(self.prefill_chunk and width > self.prefill_chunk)
        if self._shrinks and len(rows) > 1 and not chunked:
            produced = greedy_shrinking(self.model, ids, mask, max_new, self.eos_ids)
            return [_until_eos(p, self.eos_ids) for p in produced]
        extra = {}
        if chunked:
            from transformers import DynamicCache

            extra = {"prefill_chunk_size": self.prefill_chunk, **with_cache(self.model, DynamicCache(config=self.model.config))}
        with (scans_carry_state(self.model) if chunked else contextlib.nullcontext(),  # Jamba's Mamba layers
              _argmax_generation_config(self.model)):
            out = self.model.generate(ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False,
                                      num_beams=1, pad_token_id=self.pad_id, eos_token_id=sorted(self.eos_ids),
                                      top_k=None, top_p=None, temperature=None, **extra)[:, width:]
        return [_until_eos(row.tolist(), self.eos_ids) for row in out]


def _out_of_memory(error: RuntimeError) -> bool:
    """Whether an error is an allocation that failed: the accelerator's memory, or an allocation
    larger than the host can give (torch then raises a plain RuntimeError)."""
    import torch

    return isinstance(error, torch.OutOfMemoryError) or "can't allocate memory" in str(error)


def _free_accelerator_memory() -> None:
    """Hand the failed batch's cached blocks back before its halves run."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# The fields of a checkpoint's generation_config.json that `generate` may still take: token ids
# and cache settings. Every other field (repetition_penalty, no_repeat_ngram_size,
# suppress_tokens, min_new_tokens, sampling...) stays at transformers' default, so `generate`
# decodes the argmax as our own loops do. (transformers fills every field a call leaves unset
# from the checkpoint's file: Qwen2.5-Instruct's, for one, sets repetition_penalty 1.05.)
KEPT_GENERATION_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id",
                          "cache_implementation", "cache_config", "max_cache_len", "use_cache")


# Settings of a checkpoint's generation_config.json that would change greedy decoding's tokens
# (sampling settings need no mention: greedy decoding is what the study measures).
GREEDY_CHANGING_FIELDS = ("repetition_penalty", "no_repeat_ngram_size", "min_length", "min_new_tokens",
                          "suppress_tokens", "begin_suppress_tokens", "bad_words_ids", "sequence_bias",
                          "forced_bos_token_id", "forced_eos_token_id", "exponential_decay_length_penalty")


class IgnoredGenerationSettingsWarning(UserWarning):
    """A checkpoint's generation_config.json asks for settings that greedy decoding leaves out."""


def _warn_of_ignored_generation_settings(model, name: str) -> None:
    """Say once, at load, which of the checkpoint's own decoding settings longctx does not apply
    (RULER's hf path, through `generate`, would)."""
    import warnings

    from transformers import GenerationConfig

    own = getattr(model, "generation_config", None)
    if own is None:
        return
    default = GenerationConfig()
    ignored = {k: getattr(own, k, None) for k in GREEDY_CHANGING_FIELDS}
    ignored = {k: v for k, v in ignored.items() if v not in (None, [], getattr(default, k, None))}
    if ignored:
        settings = ", ".join(f"{k}={v!r}" for k, v in ignored.items())
        warnings.warn(f"{name}: its generation_config.json sets {settings}; longctx decodes greedily without "
                      "them (docs/ruler-differences.md, #19)", IgnoredGenerationSettingsWarning, stacklevel=3)


@contextmanager
def _argmax_generation_config(model):
    """While `generate` runs, the model's generation_config is transformers' default but for
    KEPT_GENERATION_FIELDS."""
    from transformers import GenerationConfig

    own = getattr(model, "generation_config", None)
    if own is None:
        yield
        return
    model.generation_config = GenerationConfig(**{k: getattr(own, k) for k in KEPT_GENERATION_FIELDS
                                                  if getattr(own, k, None) is not None})
    try:
        yield
    finally:
        model.generation_config = own


def _input_bias_reaches_convolution(model) -> bool:
    """Whether a transformers mixer of `model` with a causal convolution (Mamba's, Mamba2's, LFM2's
    short convolution) has a bias on its input projection. transformers zeroes padding before
    that projection, so every padded position then feeds the bias to the convolution, which
    carries it into the row's first real tokens (a test shows the logits move). Our own MixerLM
    zeroes padding after it."""
    import torch

    return any(type(m).__module__.startswith("transformers.")
               and getattr(getattr(m, "in_proj", None), "bias", None) is not None
               and any(isinstance(child, torch.nn.Conv1d) for child in m.children()) for m in model.modules())


@contextmanager
def _head_on_last_position(model):
    """For a model whose forward takes no `logits_to_keep` (the RWKV-6 checkpoints' own code),
    feed its output head only the last position while we generate. Otherwise a 16K prompt would
    materialise [16K, 65536] logits (4 GiB in float32 for RWKV's vocabulary). Used only around
    the fixed-batch loops (stateful.py, greedy_shrinking, transformers' `generate`), which read
    only the last position's logits; continuous batching reads more."""
    head = getattr(model, "get_output_embeddings", lambda: None)()
    if head is None or takes_logits_to_keep(model):
        yield
        return
    handle = head.register_forward_pre_hook(lambda module, args: (args[0][:, -1:], *args[1:]))
    try:
        yield
    finally:
        handle.remove()


def _length_bands(order: list[int], encoded: list[list[int]]) -> list[list[int]]:
    """Prompts (sorted by length) in bands of similar length: in continuous batching every row
    attends over the band's longest prompt's columns, so a 1K prompt never shares with a 16K one."""
    bands: list[list[int]] = []
    for i in order:
        if bands and len(encoded[i]) <= 1.25 * len(encoded[bands[-1][0]]) + 64:
            bands[-1].append(i)
        else:
            bands.append([i])
    return bands


def _until_eos(ids: list[int], eos: set[int]) -> list[int]:
    for k, t in enumerate(ids):
        if t in eos:
            return ids[: k + 1]
    return ids


def _device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.device(device)
    except RuntimeError:
        raise UsageError(f"device must be cpu, cuda, cuda:N or auto (or another torch device), not {device!r}") from None
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device {device!r} requested but torch sees no CUDA GPU")
    return device


def _dtype(name: str, device: str):
    import torch

    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if name not in table:
        raise UsageError(f"dtype must be one of auto, {', '.join(table)}; not {name!r}")
    return table[name]


def _dtype_name(name: str) -> str:
    """A dtype option checked and spelled as torch names it (for backends that take strings)."""
    return "auto" if name == "auto" else str(_dtype(name, "cpu")).removeprefix("torch.")


def _hard_limit(config) -> int | None:
    """Learned absolute positions (GPT-2 style) cannot go past their table; RoPE and recurrent
    models can (the study evaluates them at 2x their training length), so they have no hard limit."""
    return getattr(config, "n_positions", None)


def _train_context(config) -> int | None:
    # longctx_train_length: written by `longctx lab` into the checkpoints it trains.
    for key in ("longctx_train_length", "max_position_embeddings", "context_length", "n_positions"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    return None


@contextlib.contextmanager
def _quiet_loading():
    """transformers' own progress bars while a checkpoint loads (weights, GGUF conversion, shards
    written to the cache) say nothing a user acts on and fill a run's log: off while it loads.
    Downloads keep the hub's own bars."""
    from transformers.utils import logging

    was = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            logging.enable_progress_bar()


def _load_model(path: str, dtype, trust_remote_code: bool, allow_pickle: bool):
    from transformers import AutoModelForCausalLM

    p = Path(str(path)).expanduser()
    if p.is_file() and p.suffix == ".gguf":
        return _load_gguf(p, dtype)
    if p.is_dir():
        _check_weights_format(p, allow_pickle)
    try:
        return AutoModelForCausalLM.from_pretrained(
            str(p) if p.exists() else str(path), dtype=dtype, trust_remote_code=trust_remote_code,
            use_safetensors=None if allow_pickle else True)
    except ValueError as e:
        if "trust_remote_code" in str(e):
            raise UsageError(f"{path} needs its own modelling code: pass trust_remote_code=true "
                             "if you trust it (it runs code from the checkpoint)") from None
        raise
    except OSError as e:
        raise UsageError(f"cannot load model {path}: {str(e).splitlines()[0]}") from None


def _check_weights_format(folder: Path, allow_pickle: bool) -> None:
    has_safe = any(folder.glob("*.safetensors"))
    has_pickle = any(folder.glob("*.bin")) or any(folder.glob("*.pt"))
    if not has_safe and has_pickle and not allow_pickle:
        raise UsageError(f"{folder} holds only pickled weights (.bin), which can run code when loaded; "
                         "pass allow_pickle=true to load them anyway")


def _load_gguf(path: Path, dtype):
    """transformers dequantises a GGUF to full precision (seconds); the result is cached as
    safetensors keyed by the file's sha256, so the next load takes well under a second."""
    from transformers import AutoModelForCausalLM

    cache = default_cache_dir() / "models" / _file_sha256(path)[:16]
    if not (cache / "config.json").exists():
        import torch

        # transformers' GGUF conversion draws a bar of its own (plain tqdm, deaf to its progress
        # setting): its output is dropped; an error still raises.
        with contextlib.redirect_stderr(io.StringIO()):
            model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
        # A GGUF-loaded model refuses to serialise while it carries the GGUF quantizer.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        tmp = cache.with_name(cache.name + ".tmp")
        model.save_pretrained(str(tmp))
        tmp.rename(cache)
    return AutoModelForCausalLM.from_pretrained(str(cache), dtype=dtype)
