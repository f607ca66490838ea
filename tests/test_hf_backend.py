"""The hf backend on a tiny random checkpoint of every family it must run: load from a folder,
count tokens exactly, and generate with batching and chunked prefill exactly what a naive
one-prompt-at-a-time, uncached `generate` produces."""

import json

import pytest
import torch

from longctx.errors import UsageError
from longctx.models import GenParams, load_model
from tiny_models import FAMILIES, make_checkpoint

PROMPTS = ["The grass is green. The sky is blue. " * 9 + "The special magic number is 1234.",
           "hello world " * 7, "one two three four " * 10, "hello world " * 7 + "!"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, bpe):
    root = tmp_path_factory.mktemp("hf")
    return {f: make_checkpoint(f, root / f, bpe) for f in FAMILIES}


def naive(model, tokenizer, prompt: str, max_new: int) -> str:
    """One prompt, no padding, no cache: the reference every fast path must equal."""
    ids = torch.tensor([tokenizer.encode(prompt)])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new, do_sample=False,
                         use_cache=False, pad_token_id=2)
    return tokenizer.decode(out[0, ids.shape[1]:].tolist())


@pytest.mark.parametrize("family", FAMILIES)
def test_family_batched_chunked_equals_naive_uncached(family, checkpoints, bpe):
    fast = load_model("hf", path=str(checkpoints[family]), batch_size=4, prefill_chunk=16)
    got = fast.generate(PROMPTS, GenParams(max_new_tokens=6))
    assert fast.family == family
    assert [c.prompt_tokens for c in got] == [bpe.count(p) for p in PROMPTS]
    assert all(c.ok and 1 <= c.output_tokens <= 6 and c.seconds > 0 for c in got)
    want = [naive(fast.model, bpe, p, 6) for p in PROMPTS]
    assert [c.text for c in got] == want


def test_attention_batches_drop_finished_rows_and_equal_naive(checkpoints, bpe):
    """Off the CPU, Llama batches decode with rows leaving the batch as they end (greedy_shrinking)."""
    from transformers import GenerationConfig

    model = load_model("hf", path=str(checkpoints["llama"]), batch_size=4)
    assert model.prefill_chunk is None and model._shrinks
    model._continuous = lambda todo, encoded: False  # the fixed-batch path (off the CPU)
    # Make a frequent token an end token, so rows end at different steps.
    first = [c.text for c in model.generate(PROMPTS, GenParams(max_new_tokens=12))]
    common = bpe.encode(first[0])[-1] if bpe.encode(first[0]) else 5
    model.eos_ids = {2, common}
    model.model.generation_config = GenerationConfig(eos_token_id=[2, common], pad_token_id=2)
    got = model.generate(PROMPTS, GenParams(max_new_tokens=12))
    lengths = {c.output_tokens for c in got}
    want = [naive(model.model, bpe, p, 12) for p in PROMPTS]
    assert [c.text for c in got] == want
    assert len(lengths) > 1  # rows really ended at different steps


def test_recurrent_families_prefill_in_chunks_by_default(checkpoints):
    assert load_model("hf", path=str(checkpoints["mamba2"])).prefill_chunk == 2048
    assert load_model("hf", path=str(checkpoints["llama"])).prefill_chunk is None
    assert load_model("hf", path=str(checkpoints["recurrent_gemma"]), prefill_chunk=16).prefill_chunk is None


def test_batches_group_by_length_and_never_pad_the_stateful_loop(checkpoints):
    rwkv = load_model("hf", path=str(checkpoints["rwkv"]), batch_size=8)
    llama = load_model("hf", path=str(checkpoints["llama"]), batch_size=2)
    enc = [[0] * n for n in (30, 10, 10, 20, 11)]
    mamba2 = load_model("hf", path=str(checkpoints["mamba2"]), batch_size=8, prefill_chunk=4)
    assert mamba2._batches(list(range(5)), enc) == [[1, 2], [4], [3], [0]]
    assert llama._batches(list(range(5)), enc) == [[1, 2], [4, 3], [0]]
    assert rwkv._batches(list(range(5)), enc) == [[1], [2], [4], [3], [0]]  # see the next test


@pytest.mark.parametrize("family", ["rwkv", "mamba2"])
def test_equal_length_prompts_batched_in_the_stateful_loop_equal_naive(family, checkpoints, bpe):
    """Different prompts of the same length share a batch in the stateful loop; transformers'
    RWKV decodes such a batch wrongly (rows mixed), so RWKV runs them one at a time."""
    prompts = ["one two three four " * 10, "four three two one " * 10, "two one four three " * 10]
    assert len({bpe.count(p) for p in prompts}) == 1
    fast = load_model("hf", path=str(checkpoints[family]), batch_size=4, prefill_chunk=16)
    got = [c.text for c in fast.generate(prompts, GenParams(max_new_tokens=6))]
    assert got == [naive(fast.model, bpe, p, 6) for p in prompts]


def test_over_budget_is_a_failed_row_never_a_truncation(checkpoints, bpe):
    model = load_model("hf", path=str(checkpoints["llama"]), max_context=40)
    long, short = "word " * 60, "a b c"
    got = model.generate([long, short], GenParams(max_new_tokens=4))
    assert not got[0].ok and "over budget" in got[0].error and got[0].prompt_tokens == bpe.count(long)
    assert got[1].ok


def test_stop_strings_cut_the_text(checkpoints):
    model = load_model("hf", path=str(checkpoints["llama"]))
    full = model.generate(PROMPTS[:1], GenParams(max_new_tokens=8))[0].text
    stop = full.strip()[2:4]
    cut = model.generate(PROMPTS[:1], GenParams(max_new_tokens=8, stop=(stop,)))[0].text
    assert cut == full[: full.find(stop)]


def test_pickled_weights_need_the_opt_in(tmp_path, bpe):
    from transformers import AutoModelForCausalLM

    from tiny_models import tiny_config

    model = AutoModelForCausalLM.from_config(tiny_config("llama", len(bpe.hf)))
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")  # the pre-safetensors format
    bpe.hf.save_pretrained(tmp_path)
    with pytest.raises(UsageError, match="allow_pickle"):
        load_model("hf", path=str(tmp_path))
    assert load_model("hf", path=str(tmp_path), allow_pickle=True).generate(["a b"], GenParams(2))[0].ok


def test_remote_code_needs_the_opt_in(tmp_path, checkpoints):
    """A checkpoint with its own modelling code (as RWKV/rwkv-6-world-3b-v2.1 ships)."""
    import shutil

    folder = tmp_path / "custom"
    shutil.copytree(checkpoints["llama"], folder)
    (folder / "modeling_custom.py").write_text(
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "class CustomConfig(LlamaConfig):\n    model_type = 'custom_llama'\n"
        "class CustomForCausalLM(LlamaForCausalLM):\n    config_class = CustomConfig\n")
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(model_type="custom_llama", architectures=["CustomForCausalLM"],
               auto_map={"AutoConfig": "modeling_custom.CustomConfig",
                         "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"})
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UsageError, match="trust_remote_code"):
        load_model("hf", path=str(folder))
    model = load_model("hf", path=str(folder), trust_remote_code=True)
    assert type(model.model).__name__ == "CustomForCausalLM" and model.generate(["a b c"], GenParams(3))[0].ok


def test_options_and_backends_are_validated(checkpoints):
    with pytest.raises(UsageError, match="unknown backend"):
        load_model("nope")
    with pytest.raises(UsageError, match="has no option bogus"):
        load_model("hf", path=str(checkpoints["llama"]), bogus=1)
    with pytest.raises(UsageError, match="dtype"):
        load_model("hf", path=str(checkpoints["llama"]), dtype="int3")
    with pytest.raises(UsageError, match="chat_template"):
        load_model("hf", path=str(checkpoints["llama"]), chat_template=True)
    with pytest.raises(UsageError, match="cannot load|not found"):
        load_model("hf", path="/no/such/model")


def test_reserved_kv_cache_gives_dynamic_cache_logits_exactly(bpe):
    """greedy_shrinking's cache writes into reserved room instead of torch.cat: prefill, decode
    steps and a row dropped mid-way give bit-identical logits to transformers' DynamicCache."""
    from transformers import AutoModelForCausalLM, DynamicCache, MistralConfig

    from longctx.models.kv_cache import ReservedLayer, reserved_cache
    from tiny_models import tiny_config

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("llama", len(bpe.hf))).eval()
    ids = torch.randint(5, len(bpe.hf), (3, 20))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # a left-padded row

    def run(cache):
        logits = []
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        m = mask
        out = model(input_ids=ids, attention_mask=m, position_ids=positions, past_key_values=cache, use_cache=True)
        last = positions[:, -1]
        for step in range(6):
            nxt = out.logits[:, -1].argmax(-1)
            logits.append(out.logits[:, -1])
            if step == 3:  # drop the middle row, as greedy_shrinking does when it ends
                keep = torch.tensor([0, 2])
                cache.batch_select_indices(keep)
                nxt, m, last = nxt[keep], m[keep], last[keep]
            m, last = torch.cat([m, m.new_ones(m.shape[0], 1)], 1), last + 1
            out = model(input_ids=nxt[:, None], attention_mask=m, position_ids=last[:, None], past_key_values=cache,
                        use_cache=True)
        return logits

    with torch.no_grad():
        reserved = reserved_cache(model.config, 20 + 6)
        assert all(isinstance(layer, ReservedLayer) for layer in reserved.layers)
        got, want = run(reserved), run(DynamicCache(config=model.config))
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    with pytest.raises(RuntimeError, match="reserved KV cache"):
        reserved.layers[0].update(torch.zeros(2, 2, 1, 8), torch.zeros(2, 2, 1, 8))  # past its 26 positions
    windowed = MistralConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             intermediate_size=64, sliding_window=8, vocab_size=64)
    assert not any(isinstance(layer, ReservedLayer) for layer in reserved_cache(windowed, 32).layers)


def test_reserved_rows_take_a_prompt_placed_alone_and_shift_left(bpe):
    """ReservedLayer.place puts one prompt's keys at the right of its row (padding stays zeros);
    shift drops leading columns of every row and keeps the rest in order."""
    from transformers import AutoModelForCausalLM, DynamicCache

    from longctx.models.kv_cache import reserved_cache
    from tiny_models import tiny_config

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_config(tiny_config("llama", len(bpe.hf))).eval()
    ids = torch.randint(5, len(bpe.hf), (1, 7))
    with torch.no_grad():
        alone = DynamicCache(config=model.config)
        model(input_ids=ids, past_key_values=alone, use_cache=True)
    cache = reserved_cache(model.config, 16)
    layer, own = cache.layers[0], alone.layers[0]
    layer.place(1, 2, 5, own.keys, own.values)  # row 1 of 2, columns 5..11
    assert layer.get_seq_length() == 12 and torch.equal(layer.keys[1, :, 5:], own.keys[0])
    assert not layer.keys[1, :, :5].any() and not layer.keys[0].any()
    layer.shift(4)
    assert layer.get_seq_length() == 8 and torch.equal(layer.keys[1, :, 1:], own.keys[0])
    assert torch.equal(layer.values[1, :, 1:], own.values[0])


@pytest.mark.parametrize("draft", [0, 3])
def test_continuous_batching_refills_rows_and_equals_naive(checkpoints, bpe, monkeypatch, draft):
    """More prompts than batch rows: each row takes the next prompt when its answer ends, dead
    cache columns are dropped, and with draft tokens a step keeps several tokens; the tokens equal
    the naive loop's."""
    from transformers import GenerationConfig

    from longctx.models import continuous
    from longctx.models.kv_cache import ReservedLayer

    model = load_model("hf", path=str(checkpoints["llama"]), batch_size=2, draft_tokens=draft)
    prompts = PROMPTS + ["two one " * 9, "sky grass " * 12 + "1234", "three " * 5]
    first = model.generate(prompts[:1], GenParams(max_new_tokens=12))[0].text
    common = bpe.encode(first)[-1] if bpe.encode(first) else 5  # a frequent token ends some answers early
    model.eos_ids = {2, common}
    model.model.generation_config = GenerationConfig(eos_token_id=[2, common], pad_token_id=2)
    calls, shifts, steps = [], [], []
    real_continuous, real_shift, real_forward = continuous.greedy_continuous, ReservedLayer.shift, model.model.forward
    monkeypatch.setattr("longctx.models.hf.greedy_continuous",
                        lambda *a, **k: calls.append(len(a[1])) or real_continuous(*a, **k))
    monkeypatch.setattr(ReservedLayer, "shift", lambda self, m: shifts.append(m) or real_shift(self, m))
    monkeypatch.setattr(model.model, "forward", lambda **k: steps.append(k["input_ids"].shape) or real_forward(**k))
    got = model.generate(prompts, GenParams(max_new_tokens=12))
    assert [c.text for c in got] == [naive(model.model, bpe, p, 12) for p in prompts]
    assert len({c.output_tokens for c in got}) > 1 and calls and sum(calls) == len(prompts)
    assert shifts and min(shifts) > 0  # dead columns were dropped
    decode = [shape for shape in steps if shape[1] == draft + 1 and shape[0] <= 2]
    new_tokens = sum(c.output_tokens for c in got) - len(prompts)  # the first of each comes from its prefill
    if draft:  # guesses were kept: fewer steps than tokens even with two rows sharing a step
        assert len(decode) < new_tokens / 2
    else:
        assert len(decode) >= new_tokens / 2


@pytest.mark.parametrize("draft", [0, 2])
def test_continuous_batching_when_every_answer_ends_at_once(checkpoints, bpe, draft):
    """An untrained model may end every answer with its first token: a slot then takes the next
    prompts itself, and the slots left without one stay empty."""
    from longctx.models.continuous import greedy_continuous

    model = load_model("hf", path=str(checkpoints["llama"]), batch_size=3)
    rows = [bpe.encode(p) for p in PROMPTS[:4]]
    with torch.no_grad():
        got = greedy_continuous(model.model, rows, 8, set(range(model.model.config.vocab_size)), 3, draft)
    assert [len(r) for r in got] == [1, 1, 1, 1]
    assert got == [[int(model.model(input_ids=torch.tensor([r])).logits[0, -1].argmax())] for r in rows]


def test_prompt_lookup_drafts_continue_the_latest_earlier_match():
    from longctx.models.continuous import PromptLookup

    look = PromptLookup([5, 6, 7, 8, 1, 6, 7, 9, 2])
    assert look.draft(3) == []  # 2 never came before
    look.extend([6, 7])  # (6, 7) came twice: the latest was followed by 9, 2, 6
    assert look.draft(3) == [9, 2, 6]
    look.extend([8])  # (6, 7, 8) once, at the start: the longest match wins over (7, 8) and (8)
    assert look.draft(2) == [1, 6]
    look.extend([3, 3])  # the only earlier 3 is the one before the last: its follower is the last 3
    assert look.draft(4) == [3]


def test_length_bands_keep_unlike_lengths_apart():
    from longctx.models.hf import _length_bands

    encoded = [[0] * n for n in (100, 110, 130, 1000, 1200, 5000)]
    assert _length_bands(list(range(6)), encoded) == [[0, 1, 2], [3, 4], [5]]


def test_packed_attention_equals_sdpa_on_several_masked_positions():
    """Grouped-query heads packed as extra query positions give SDPA's logits, with padding and
    several new positions over a cache (a draft step); other models are left alone."""
    from transformers import AttentionInterface, DynamicCache, LlamaConfig, LlamaForCausalLM

    from longctx.models import packed_attention

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=48)
    model = LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 64, (3, 12))
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[0, :4], mask[2, :7] = 0, 0

    def run():
        cache = DynamicCache(config=config)
        with torch.no_grad():
            model(input_ids=ids[:, :9], attention_mask=mask[:, :9], past_key_values=cache, use_cache=True)
            return model(input_ids=ids[:, 9:], attention_mask=mask, past_key_values=cache, use_cache=True).logits

    want = run()
    assert packed_attention.use_packed_attention(model) and packed_attention.use_packed_attention(model)
    packed, real = [], packed_attention.packed_sdpa_forward
    spy = lambda m, q, *a, **k: packed.append(q.shape) or real(m, q, *a, **k)  # noqa: E731
    AttentionInterface.register(packed_attention.NAME, spy)
    try:
        got = run()
    finally:
        AttentionInterface.register(packed_attention.NAME, real)
    assert torch.allclose(got, want, atol=1e-6)
    assert (3, 4, 3, 8) in packed  # the draft step's 3 positions went through the packed form
    eager = LlamaForCausalLM(LlamaConfig(**{**config.to_dict(), "attn_implementation": "eager"}))
    assert eager.config._attn_implementation == "eager" and not packed_attention.use_packed_attention(eager)
