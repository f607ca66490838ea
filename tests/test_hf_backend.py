"""The hf backend on a tiny random checkpoint of every family it must run: load from a folder,
count tokens exactly, and generate with batching and chunked prefill exactly what a naive
one-prompt-at-a-time, uncached `generate` produces."""

import json
import sys
import warnings

import pytest
import torch

from longctx.errors import UsageError
from longctx.models import GenParams, load_model
from longctx.models.hf import PADDING_LEAKS, RECURRENT_FAMILIES, SHRINKABLE, UNCHUNKABLE
from longctx.models.stateful import PADDED_IN_LOOP, STATEFUL_FAMILIES
from longctx.models.transformers_compat import output_cache, with_cache
from tiny_models import FAMILIES, make_checkpoint

# Attention decoders batched continuously on the CPU (rows of their own) and, elsewhere, with
# finished rows leaving the batch; Gemma 2's soft-capped scores take fixed batches (its own test).
ROW_FAMILIES = sorted(SHRINKABLE & set(FAMILIES) - {"gemma2"})
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


def left_padded_pair(tokenizer):
    """PROMPTS[0] and the shorter PROMPTS[1] in one batch, the short one left-padded with token 2:
    (ids [2, L], attention mask, positions numbered as `generate` numbers them, the short
    prompt's ids, its padding)."""
    short, long = tokenizer.encode(PROMPTS[1]), tokenizer.encode(PROMPTS[0])
    pad = len(long) - len(short)
    mask = torch.tensor([[1] * len(long), [0] * pad + [1] * len(short)])
    return torch.tensor([long, [2] * pad + short]), mask, (mask.cumsum(-1) - 1).clamp(min=0), short, pad


def padded_and_alone_logits(net, tokenizer):
    """The short prompt of `left_padded_pair` left-padded in a batch and alone, then one cached
    decode step of token 5 after each: (padded row's logits over its own positions, alone ones,
    padded row's step logits, alone step logits)."""
    ids, mask, positions, short, pad = left_padded_pair(tokenizer)
    with torch.no_grad():
        padded = net(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        alone = net(input_ids=torch.tensor([short]), use_cache=True)
        padded_step = net(input_ids=torch.tensor([[5], [5]]), use_cache=True, **with_cache(net, output_cache(padded)),
                          attention_mask=torch.cat([mask, torch.ones(2, 1, dtype=mask.dtype)], 1),
                          position_ids=positions[:, -1:] + 1)
        alone_step = net(input_ids=torch.tensor([[5]]), use_cache=True, **with_cache(net, output_cache(alone)),
                         position_ids=torch.tensor([[len(short)]]))
    return padded.logits[1, pad:], alone.logits[0], padded_step.logits[1], alone_step.logits[0]


def end_token_splitting_answers(model, tokenizer, prompts: list[str], max_new: int) -> int:
    """A token that, made an end token, ends the naive answers to `prompts` after different
    numbers of tokens (the first that does, in the order the answers use them)."""
    answers = []
    for prompt in prompts:
        ids = torch.tensor([tokenizer.encode(prompt)])
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new, do_sample=False,
                             use_cache=False, pad_token_id=2)
        answers.append(out[0, ids.shape[1]:].tolist())
    for token in dict.fromkeys(t for answer in answers for t in answer):
        if len({answer.index(token) + 1 if token in answer else len(answer) for answer in answers}) > 1:
            return token
    pytest.fail(f"no token ends these answers after different numbers of tokens: {answers}")


@pytest.mark.parametrize("family", FAMILIES)
def test_family_batched_chunked_equals_naive_uncached(family, checkpoints, bpe):
    chunk = 0 if family in UNCHUNKABLE else 16
    fast = load_model("hf", path=str(checkpoints[family]), batch_size=4, prefill_chunk=chunk)
    got = fast.generate(PROMPTS, GenParams(max_new_tokens=6))
    assert fast.family == family
    assert [c.prompt_tokens for c in got] == [bpe.count(p) for p in PROMPTS]
    assert all(c.ok and 1 <= c.output_tokens <= 6 and c.seconds > 0 for c in got)
    want = [naive(fast.model, bpe, p, 6) for p in PROMPTS]
    assert [c.text for c in got] == want


@pytest.mark.parametrize("family", ROW_FAMILIES)
def test_attention_batches_drop_finished_rows_and_equal_naive(family, checkpoints, bpe):
    """Off the CPU, attention models batch decode with rows leaving the batch as they end
    (greedy_shrinking), sliding-window layers (Gemma 3) included."""
    from transformers import GenerationConfig

    model = load_model("hf", path=str(checkpoints[family]), batch_size=4)
    assert model.prefill_chunk is None and model._shrinks
    model._continuous = lambda todo, encoded: False  # the fixed-batch path (off the CPU)
    end = end_token_splitting_answers(model.model, bpe, PROMPTS, 12)  # so rows end at different steps
    model.eos_ids = {2, end}
    model.model.generation_config = GenerationConfig(eos_token_id=[2, end], pad_token_id=2)
    got = model.generate(PROMPTS, GenParams(max_new_tokens=12))
    lengths = {c.output_tokens for c in got}
    want = [naive(model.model, bpe, p, 12) for p in PROMPTS]
    assert [c.text for c in got] == want
    assert len(lengths) > 1  # rows really ended at different steps


def test_recurrent_families_prefill_in_chunks_by_default(checkpoints):
    """Every family with a recurrent state (its own loop's, or a linear-attention or convolution
    layer in transformers' cache) prefills in 2048-token chunks unless transformers cannot chunk
    it (UNCHUNKABLE); attention models in one pass."""
    from transformers import DynamicCache
    from transformers.cache_utils import LinearAttentionCacheLayerMixin

    for family in FAMILIES:
        model = load_model("hf", path=str(checkpoints[family]))
        recurrent = family in STATEFUL_FAMILIES or any(
            isinstance(layer, LinearAttentionCacheLayerMixin) for layer in DynamicCache(config=model.model.config).layers)
        assert model.prefill_chunk == (2048 if recurrent and family not in UNCHUNKABLE else None), family
    assert {"mamba2", "recurrent_gemma", "jamba", "zamba", "minimax"} <= set(FAMILIES)


@pytest.mark.parametrize("family", ["mamba", "falcon_mamba", "mamba2", "rwkv", "recurrent_gemma"])
@pytest.mark.parametrize("chunk", [16, 7, 2, 49, 80, 1])
def test_chunked_prefill_gives_one_pass_logits(family, chunk, checkpoints):
    """stateful.py's loop over prompt chunks, carrying the recurrent state (and RecurrentGemma's
    convolution columns and attention cache) from chunk to chunk, gives the logits of one pass
    over the whole prompt, longer than RecurrentGemma's attention window (64 here). 100 tokens in
    chunks of 49 leave a last chunk of 2, shorter than RecurrentGemma's convolution; chunks of 2
    never reach back past one chunk; chunks of 80 are longer than the window; chunks of 1 start
    the prompt with a one-token call, which must not read what an earlier prompt left behind
    (RecurrentGemma keeps its states on its modules: one runs first here). Mamba (v1) scans on
    from the carried state (scan_carry.py)."""
    from longctx.models.stateful import _step

    model = load_model("hf", path=str(checkpoints[family])).model
    rows = 1 if family == "rwkv" else 2  # transformers' RWKV mixes rows when it decodes (hf._max_batch)
    ids = torch.randint(5, model.config.vocab_size, (rows, 100), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole = model(input_ids=ids).logits[:, -1]
        _step(model, family, ids.flip(1)[:, :9], None)  # an earlier prompt
        state = None
        for start in range(0, ids.shape[1], chunk):
            logits, state = _step(model, family, ids[:, start:start + chunk], state)
        # and a decode step after the chunks, against one pass over prompt + token
        nxt = logits.argmax(-1)[:, None]
        stepped, _ = _step(model, family, nxt, state)
        again = model(input_ids=torch.cat([ids, nxt], 1)).logits[:, -1]
    assert torch.allclose(logits, whole, atol=1e-4), float((logits - whole).abs().max())
    assert torch.allclose(stepped, again, atol=1e-4), float((stepped - again).abs().max())


@pytest.mark.parametrize("family", sorted(set(FAMILIES) & RECURRENT_FAMILIES - STATEFUL_FAMILIES))
def test_hybrids_batched_through_generate_give_each_prompt_alone_logits(family, checkpoints, monkeypatch):
    """The hybrids go through transformers' `generate`, left-padded (but those in PADDING_LEAKS,
    one prompt length per batch) and prefilled in chunks (`prefill_chunk_size`; Jamba's Mamba
    layers under scan_carry): every row's logits, at the prompt's end and after each decoded
    token, are those of its prompt alone in one uncached pass."""
    assert_generate_rows_equal_alone(load_model("hf", path=str(checkpoints[family]), prefill_chunk=16, batch_size=4),
                                     monkeypatch)


def test_qwen3_5_moe_with_its_tokenizer_given_apart_batches_through_generate_as_alone(tmp_path, bpe, monkeypatch):
    """Qwen3.5-MoE's text model (Gated DeltaNet + attention, experts), its tokenizer from a folder
    of its own (beside its config.json transformers would build a Qwen3.5 tokenizer over the test
    vocabulary: tests/tiny_models.py): chunked by default, and as the other hybrids above."""
    folder = make_checkpoint("qwen3_5_moe_text", tmp_path / "qwen3_5_moe", bpe)
    bpe.hf.save_pretrained(tmp_path / "tokenizer")
    assert load_model("hf", path=str(folder), tokenizer=str(tmp_path / "tokenizer")).prefill_chunk == 2048
    model = load_model("hf", path=str(folder), tokenizer=str(tmp_path / "tokenizer"), prefill_chunk=16, batch_size=4)
    assert model.family == "qwen3_5_moe_text"
    assert_generate_rows_equal_alone(model, monkeypatch)


def assert_generate_rows_equal_alone(model, monkeypatch) -> None:
    """Four prompts of 20 to 50 random tokens through the backend (prefill chunk 16, batch 4):
    every `generate` call's rows, at the prompt's end and after each decoded token, have the
    logits of the row's prompt alone in one uncached pass."""
    net, calls = model.model, []
    inner = net.generate

    def recording(ids, **kwargs):
        out = inner(ids, **kwargs, output_logits=True, return_dict_in_generate=True)
        calls.append((ids, kwargs["attention_mask"], out))
        return out.sequences

    monkeypatch.setattr(net, "generate", recording)
    gen = torch.Generator().manual_seed(5)
    prompts = [torch.randint(5, net.config.vocab_size, (n,), generator=gen).tolist() for n in (50, 47, 35, 20)]
    model.generate([model.tokenizer.decode(p) for p in prompts], GenParams(max_new_tokens=3))
    if model.family in PADDING_LEAKS:  # a batch per prompt, unpadded
        assert len(calls) == 4 and all(bool(mask.all()) for _, mask, _ in calls)
    else:  # one padded batch
        assert len(calls) == 1 and len(set(calls[0][1].sum(1).tolist())) > 1
    assert all(ids.shape[1] > 16 for ids, _, _ in calls)  # prefilled in chunks
    with torch.no_grad():
        for (ids, mask, out), row in ((call, row) for call in calls for row in range(call[0].shape[0])):
            alone = ids[row, mask[row].bool()].tolist()
            for k, step_logits in enumerate(out.logits):
                answer = out.sequences[row, ids.shape[1]:ids.shape[1] + k].tolist()
                want = net(input_ids=torch.tensor([alone + answer]), use_cache=False).logits[0, -1]
                torch.testing.assert_close(step_logits[row], want, atol=1e-4, rtol=1e-4)


def test_recurrent_gemma_padding_leaks_in_transformers(checkpoints, bpe):
    """Why RecurrentGemma never goes through `generate` with padding: transformers' recurrent
    blocks ignore the attention mask and convolve a row's first tokens with the padding before them."""
    net = load_model("hf", path=str(checkpoints["recurrent_gemma"])).model
    ids, mask, _, short, _ = left_padded_pair(bpe)
    with torch.no_grad():
        leaked = net(input_ids=ids, attention_mask=mask).logits[1, -1]
        alone = net(input_ids=torch.tensor([short])).logits[0, -1]
    assert (leaked - alone).abs().max() > 1e-2


def test_minimax_lightning_attention_state_takes_in_left_padding(checkpoints, bpe):
    """Why MiniMax is never padded (hf.PADDING_LEAKS): with a left-padded prompt, transformers
    masks the padding out of the prompt's own logits, but the lightning attention's state that
    the next decode step reads has taken it in."""
    padded, alone, padded_step, alone_step = padded_and_alone_logits(
        load_model("hf", path=str(checkpoints["minimax"])).model, bpe)
    torch.testing.assert_close(padded, alone, atol=1e-4, rtol=1e-4)
    assert float((padded_step - alone_step).abs().max()) > 1e-3


def test_minimax_refuses_chunked_prefill_and_its_one_pass_equals_alone(checkpoints):
    """Why MiniMax is in UNCHUNKABLE: transformers' `generate`, chunking its prefill into its
    own cache class, moves the logits at the prompt's end; an explicit chunk is refused; in one
    pass every step's logits are those of the sequence alone, uncached."""
    from transformers.models.minimax.modeling_minimax import MiniMaxCache

    with pytest.raises(UsageError, match="MiniMax"):
        load_model("hf", path=str(checkpoints["minimax"]), prefill_chunk=16)
    model = load_model("hf", path=str(checkpoints["minimax"]))
    assert model.prefill_chunk is None
    net = model.model
    ids = torch.randint(5, net.config.vocab_size, (1, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        gaps = {}
        for chunk in (0, 16):
            extra = dict(prefill_chunk_size=chunk, **with_cache(net, MiniMaxCache())) if chunk else {}
            out = net.generate(ids, max_new_tokens=3, do_sample=False, output_logits=True, return_dict_in_generate=True,
                               pad_token_id=2, **extra)
            want = [net(out.sequences[:, :40 + k], use_cache=False).logits[0, -1] for k in range(3)]
            gaps[chunk] = max(float((got[0] - w).abs().max()) for got, w in zip(out.logits, want))
    assert gaps[0] < 1e-4 and gaps[16] > 1e-3, gaps


@pytest.mark.parametrize("family", [f for f in FAMILIES if f not in STATEFUL_FAMILIES | PADDING_LEAKS])
def test_left_padding_leaves_the_logits_of_the_families_generate_pads(family, checkpoints, bpe):
    """The families that go through transformers' `generate` with left padding (all but the
    stateful loop's): the attention mask keeps the padding out of a row, so its logits are the
    prompt's alone, for a whole prompt and for a decode step after it."""
    padded, alone, padded_step, alone_step = padded_and_alone_logits(
        load_model("hf", path=str(checkpoints[family])).model, bpe)
    torch.testing.assert_close(padded, alone, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(padded_step, alone_step, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family, flag", [("mamba", "use_bias"), ("falcon_mamba", "use_bias"), ("mamba2", "use_bias"),
                                          ("bamba", "mamba_proj_bias"), ("jamba", "mamba_proj_bias"),
                                          ("lfm2", "conv_bias")])
def test_a_model_with_a_bias_before_its_convolution_is_never_padded(family, flag, checkpoints, tmp_path, bpe):
    """transformers' Mamba mixers and LFM2's short convolutions zero padding before their input
    projection, whose bias (Mamba's and Mamba2's `use_bias`, the hybrids' `mamba_proj_bias`,
    LFM2's `conv_bias`) then reaches the convolution over a row's first tokens: such a model is
    batched only with prompts of its length, in the stateful loop (Mamba, Mamba2) and in
    `generate` (the hybrids)."""
    import shutil

    folder = tmp_path / "biased"
    shutil.copytree(checkpoints[family], folder)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, flag: True}))
    model = load_model("hf", path=str(folder), batch_size=4)
    net = model.model
    projections = [m.in_proj for m in net.modules()
                   if hasattr(m, "in_proj") and any(isinstance(c, torch.nn.Conv1d) for c in m.children())]
    assert projections and all(p.bias is not None for p in projections)
    gen = torch.Generator().manual_seed(6)
    with torch.no_grad():
        for p in projections:
            p.bias.copy_(torch.randn(p.bias.shape, generator=gen) * 0.5)
        ids, mask, positions, short, pad = left_padded_pair(bpe)
        leaked = net(input_ids=ids, attention_mask=mask, position_ids=positions).logits[1, pad:]
        alone = net(input_ids=torch.tensor([short])).logits[0]
    assert (leaked - alone).abs().max() > 1e-3  # most at the first tokens, which the convolution reaches back from
    encoded = [bpe.encode(p) for p in PROMPTS]
    assert all(len({len(encoded[i]) for i in b}) == 1 for b in model._batches(list(range(len(PROMPTS))), encoded))
    got = model.generate(PROMPTS, GenParams(max_new_tokens=6))
    assert [c.text for c in got] == [naive(net, bpe, p, 6) for p in PROMPTS]


def test_mamba1_layers_scan_on_from_the_carried_state(checkpoints):
    """transformers' Mamba-1 mixers (Mamba, FalconMamba, Jamba's layers) scan every multi-token call
    from a zero state, so a prompt prefilled in chunks loses the state of the chunks before;
    `scans_carry_state` continues the scan from the cache's state: chunks then give one pass's
    logits. (The backend's chunked `generate` runs Jamba under it: the hybrids' test above.)"""
    from transformers import DynamicCache

    from longctx.models import scan_carry

    for family in ("mamba", "falcon_mamba", "jamba"):
        net = load_model("hf", path=str(checkpoints[family])).model
        modules = {sys.modules[type(m).__module__] for m in scan_carry.carrying_mixers(net)}
        own = {module: getattr(module, scan_carry.SCAN) for module in modules}
        ids = torch.randint(5, net.config.vocab_size, (2, 60), generator=torch.Generator().manual_seed(4))
        with torch.no_grad():
            whole = net(input_ids=ids).logits[:, -1]
            last = {}
            for carry in (False, True):
                cache = DynamicCache(config=net.config)
                with scan_carry.scans_carry_state(net) if carry else torch.no_grad():
                    for start in range(0, 60, 16):
                        last[carry] = net(input_ids=ids[:, start:start + 16], use_cache=True,
                                          **with_cache(net, cache)).logits[:, -1]
        assert len(modules) == 1
        assert (last[False] - whole).abs().max() > 1e-4, family  # what transformers alone gives
        torch.testing.assert_close(last[True], whole, atol=1e-5, rtol=1e-5)
        assert all(getattr(module, scan_carry.SCAN) is scan for module, scan in own.items())  # restored


@pytest.mark.parametrize("family", sorted(PADDED_IN_LOOP - {"mamba_ssm"}))  # MixerLM: test_mamba_ssm.py
def test_padded_rows_in_the_stateful_loop_give_each_prompt_alone(family, checkpoints, bpe):
    """stateful.py's loop pads these families without letting the padding in (RecurrentGemma:
    zeros in place of padding in its convolution; Mamba2: transformers' own mask): rows padded by
    0, 2 (inside a convolution kernel), 5 and 30 tokens (past a 16-token chunk), prefilled in
    chunks of 16 or 1, give each prompt's logits alone, and so does a decode step after them.
    Different lengths share a batch and answer as the naive loop does."""
    from longctx.models.stateful import _step, greedy_stateful

    model = load_model("hf", path=str(checkpoints[family]), batch_size=4)
    net = model.model
    gen = torch.Generator().manual_seed(2)
    prompts = [torch.randint(5, net.config.vocab_size, (n,), generator=gen).tolist() for n in (70, 68, 65, 40)]
    pads = torch.tensor([70 - len(p) for p in prompts])
    ids = torch.tensor([[2] * (70 - len(p)) + p for p in prompts])
    with torch.no_grad():
        for chunk in (16, 1):  # one-token chunks go through transformers' decoding branch, padding too
            state = None
            for start in range(0, 70, chunk):
                logits, state = _step(net, family, ids[:, start:start + chunk], state, pads if state is None else None)
            nxt = logits.argmax(-1)
            stepped, _ = _step(net, family, nxt[:, None], state)
            for row, prompt in enumerate(prompts):
                whole = net(input_ids=torch.tensor([prompt])).logits[0, -1]
                again = net(input_ids=torch.tensor([prompt + [int(nxt[row])]])).logits[0, -1]
                assert torch.allclose(logits[row], whole, atol=1e-4), (chunk, row, float((logits[row] - whole).abs().max()))
                assert torch.allclose(stepped[row], again, atol=1e-4), (chunk, row, float((stepped[row] - again).abs().max()))
        assert greedy_stateful(net, family, ids, 4, {2}, 16, pads).shape[0] == 4

    encoded = [bpe.encode(p) for p in PROMPTS]
    assert len({len(e) for e in encoded}) > 1 and model._batches(list(range(len(PROMPTS))), encoded) == [[1, 3, 2, 0]]
    got = model.generate(PROMPTS, GenParams(max_new_tokens=6))
    assert [c.text for c in got] == [naive(net, bpe, p, 6) for p in PROMPTS]


def test_recurrent_gemma_convolution_patch_keeps_a_forward_already_on_the_module(checkpoints):
    """A forward already set on the convolution module (an accelerate hook sets one) still runs
    inside the chunked prefill, and is the module's forward again afterwards."""
    from longctx.models.stateful import _recurrent_blocks, _step

    model = load_model("hf", path=str(checkpoints["recurrent_gemma"])).model
    conv = _recurrent_blocks(model)[0].conv_1d
    calls = []

    def hooked(x, inner=conv.forward):
        calls.append(x.shape[-1])
        return inner(x)

    conv.forward = hooked
    ids = torch.randint(5, model.config.vocab_size, (1, 20), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        whole = model(input_ids=ids).logits[:, -1]
        calls.clear()
        _, state = _step(model, "recurrent_gemma", ids[:, :12], None)
        logits, _ = _step(model, "recurrent_gemma", ids[:, 12:], state)
    assert calls == [12, 8 + 3]  # the second chunk with the 3 columns carried from the first
    assert conv.forward is hooked
    assert torch.allclose(logits, whole, atol=1e-4)


def test_batches_group_by_length_and_pad_only_what_the_loop_can_pad(checkpoints):
    rwkv = load_model("hf", path=str(checkpoints["rwkv"]), batch_size=8)
    llama = load_model("hf", path=str(checkpoints["llama"]), batch_size=2)
    enc = [[0] * n for n in (30, 10, 10, 20, 11)]
    mamba2 = load_model("hf", path=str(checkpoints["mamba2"]), batch_size=8, prefill_chunk=4)
    assert mamba2._batches(list(range(5)), enc) == [[1, 2, 4, 3, 0]]  # the loop pads Mamba2 (PADDED_IN_LOOP)
    assert llama._batches(list(range(5)), enc) == [[1, 2], [4, 3], [0]]
    assert rwkv._batches(list(range(5)), enc) == [[1], [2], [4], [3], [0]]  # see the next test
    minimax = load_model("hf", path=str(checkpoints["minimax"]), batch_size=8)  # hf.PADDING_LEAKS
    assert minimax._batches(list(range(5)), enc) == [[1, 2], [4], [3], [0]]


@pytest.mark.parametrize("family", ["rwkv", "mamba2", "recurrent_gemma"])
def test_equal_length_prompts_batched_in_the_stateful_loop_equal_naive(family, checkpoints, bpe):
    """Different prompts of the same length share a batch in the stateful loop; transformers'
    RWKV decodes such a batch wrongly (rows mixed), so RWKV runs them one at a time."""
    prompts = ["one two three four " * 10, "four three two one " * 10, "two one four three " * 10]
    assert len({bpe.count(p) for p in prompts}) == 1
    fast = load_model("hf", path=str(checkpoints[family]), batch_size=4, prefill_chunk=16)
    got = [c.text for c in fast.generate(prompts, GenParams(max_new_tokens=6))]
    assert got == [naive(fast.model, bpe, p, 6) for p in prompts]


def test_rwkv6_checkpoint_code_is_never_padded_and_its_head_sees_only_the_last_position(tmp_path, bpe):
    """RWKV/rwkv-6-world-3b-v2.1 runs on its own code, whose forward ignores the attention mask and
    has no logits_to_keep (stand-in with that interface: tiny_models.STATE_LM_CODE). Prompts of
    different lengths, prefilled in chunks and batched when their lengths are equal, must give
    what each gives alone in one uncached pass per token, and the output head must never compute
    more than one position (at 16K tokens that would be 4 GiB of logits per row)."""
    from tiny_models import make_state_lm_checkpoint

    folder = make_state_lm_checkpoint(tmp_path / "rwkv6", bpe)
    assert load_model("hf", path=str(folder), trust_remote_code=True).prefill_chunk == 2048
    model = load_model("hf", path=str(folder), trust_remote_code=True, batch_size=4, prefill_chunk=16)
    assert model.family == "rwkv6"

    def uncached(prompt: str, max_new: int) -> str:
        ids = bpe.encode(prompt)
        new = []
        for _ in range(max_new):
            new.append(int(model.model(input_ids=torch.tensor([ids + new])).logits[0, -1].argmax()))
            if new[-1] in model.eos_ids:
                break
        return bpe.decode(new)

    prompts = PROMPTS + ["four three two one " * 10, "two one four three " * 10]  # as long as PROMPTS[2]
    encoded = [bpe.encode(p) for p in prompts]
    batches = model._batches(list(range(len(prompts))), encoded)
    assert all(len({len(encoded[i]) for i in b}) == 1 for b in batches) and max(map(len, batches)) == 3
    heads = []
    hook = model.model.get_output_embeddings().register_forward_hook(lambda m, a, out: heads.append(out.shape[1]))
    got = model.generate(prompts, GenParams(max_new_tokens=6))
    hook.remove()
    assert set(heads) == {1}
    assert [c.prompt_tokens for c in got] == [len(e) for e in encoded]
    assert [c.text for c in got] == [uncached(p, 6) for p in prompts]


def test_over_budget_is_a_failed_row_never_a_truncation(checkpoints, bpe):
    model = load_model("hf", path=str(checkpoints["llama"]), max_context=40)
    long, short = "word " * 60, "a b c"
    got = model.generate([long, short], GenParams(max_new_tokens=4))
    assert not got[0].ok and "over budget" in got[0].error and got[0].prompt_tokens == bpe.count(long)
    assert got[1].ok


@pytest.mark.parametrize("family, options", [("llama", {"prefill_chunk": 16}), ("bamba", {}), ("gemma2", {}),
                                             ("mamba2", {}), ("llama", {})])
def test_greedy_on_every_path_ignores_the_checkpoints_decoding_settings(family, options, checkpoints, bpe, tmp_path):
    """A checkpoint's generation_config.json may set a repetition penalty, banned n-grams or
    suppressed tokens, which transformers' `generate` would apply. Every path of the backend
    (`generate` for chunked prompts and hybrids, the shrinking fixed batches of Gemma 2, the
    stateful loop, continuous batching) decodes the argmax: the same text as the checkpoint
    without them, and as the naive loop on it, while the naive loop on the folder that has them
    gives other text."""
    import shutil
    import warnings

    from longctx.models.hf import IgnoredGenerationSettingsWarning

    prompts = ["hello world " * 7, "one two three four " * 10, "The grass is green. " * 6]
    with warnings.catch_warnings():
        warnings.simplefilter("error", IgnoredGenerationSettingsWarning)  # none without such settings
        plain = load_model("hf", path=str(checkpoints[family]), batch_size=4, **options)
    with torch.no_grad():  # suppressing each answer's first token surely changes `generate`'s answers
        firsts = [int(plain.model(torch.tensor([bpe.encode(p)])).logits[0, -1].argmax()) for p in prompts]
    folder = tmp_path / family
    shutil.copytree(checkpoints[family], folder)
    settings = json.loads((folder / "generation_config.json").read_text())
    settings.update(repetition_penalty=3.0, no_repeat_ngram_size=2, suppress_tokens=firsts, min_new_tokens=8)
    (folder / "generation_config.json").write_text(json.dumps(settings))
    with pytest.warns(IgnoredGenerationSettingsWarning, match="repetition_penalty=3.0, no_repeat_ngram_size=2"):
        loaded = load_model("hf", path=str(folder), batch_size=4, **options)
    assert loaded.model.generation_config.repetition_penalty == 3.0
    want = [naive(plain.model, bpe, p, 12) for p in prompts]
    assert [c.text for c in loaded.generate(prompts, GenParams(12))] == want
    assert [naive(loaded.model, bpe, p, 12) for p in prompts] != want  # the settings do change `generate`
    assert loaded.model.generation_config.repetition_penalty == 3.0  # the model's own config is back


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


def test_remote_code_needs_the_opt_in(tmp_path, checkpoints, bpe):
    """A checkpoint with its own modelling code (as RWKV/rwkv-6-world-3b-v2.1 ships). Its forward
    here names no logits_to_keep, so `generate` would compute every position's logits on prefill;
    the backend feeds the head the last position only, and the text stays that of a plain run."""
    import shutil

    folder = tmp_path / "custom"
    shutil.copytree(checkpoints["llama"], folder)
    (folder / "modeling_custom.py").write_text(
        "from transformers import LlamaConfig, LlamaForCausalLM\n"
        "class CustomConfig(LlamaConfig):\n    model_type = 'custom_llama'\n"
        "class CustomForCausalLM(LlamaForCausalLM):\n    config_class = CustomConfig\n"
        "    def forward(self, input_ids=None, **kwargs):\n"
        "        return super().forward(input_ids=input_ids, **kwargs)\n")
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(model_type="custom_llama", architectures=["CustomForCausalLM"],
               auto_map={"AutoConfig": "modeling_custom.CustomConfig",
                         "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"})
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UsageError, match="trust_remote_code"):
        load_model("hf", path=str(folder))
    model = load_model("hf", path=str(folder), trust_remote_code=True, batch_size=4)
    assert type(model.model).__name__ == "CustomForCausalLM"
    heads = []
    hook = model.model.get_output_embeddings().register_forward_hook(lambda m, a, out: heads.append(out.shape[1]))
    got = model.generate(PROMPTS, GenParams(max_new_tokens=5))
    hook.remove()
    assert set(heads) == {1}
    assert [c.text for c in got] == [naive(model.model, bpe, p, 5) for p in PROMPTS]


def test_options_and_backends_are_validated(checkpoints):
    with pytest.raises(UsageError, match="unknown backend"):
        load_model("nope")
    with pytest.raises(UsageError, match="has no option bogus"):
        load_model("hf", path=str(checkpoints["llama"]), bogus=1)
    with pytest.raises(UsageError, match="dtype"):
        load_model("hf", path=str(checkpoints["llama"]), dtype="int3")
    with pytest.raises(UsageError, match="chat_template"):
        load_model("hf", path=str(checkpoints["llama"]), chat_template=True)
    for bad in (-5, 2.5, "16"):
        with pytest.raises(UsageError, match="prefill_chunk"):
            load_model("hf", path=str(checkpoints["mamba2"]), prefill_chunk=bad)
    for option, bad in [("batch_size", "8"), ("draft_tokens", True), ("max_context", 0), ("device", "tpu"),
                        ("trust_remote_code", "yes"), ("tokenizer", 3)]:
        with pytest.raises(UsageError, match=option):
            load_model("hf", path=str(checkpoints["llama"]), **{option: bad})
    assert load_model("hf", path=str(checkpoints["llama"]), max_context=None, prefill_chunk=None).max_context is None
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
        out = model(input_ids=ids, attention_mask=m, position_ids=positions, use_cache=True, **with_cache(model, cache))
        last = positions[:, -1]
        for step in range(6):
            nxt = out.logits[:, -1].argmax(-1)
            logits.append(out.logits[:, -1])
            if step == 3:  # drop the middle row, as greedy_shrinking does when it ends
                keep = torch.tensor([0, 2])
                cache.batch_select_indices(keep)
                nxt, m, last = nxt[keep], m[keep], last[keep]
            m, last = torch.cat([m, m.new_ones(m.shape[0], 1)], 1), last + 1
            out = model(input_ids=nxt[:, None], attention_mask=m, position_ids=last[:, None], **with_cache(model, cache),
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


def test_rows_of_their_own_compute_what_each_row_computes_alone():
    """Three prompts of different lengths placed at the start of their rows; a step of 3
    positions inside rows_at (each row writes after its own end, attends over its own columns,
    causally among the new positions) gives the logits of each prompt continued alone one token at
    a time, as the naive loop computes them. A second step overwrites the columns of guesses
    rejected in the first."""
    from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

    from longctx.models.kv_cache import reserved_cache, rows_at
    from longctx.models.row_attention import step_mask, use_row_attention

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=96, max_position_embeddings=256)
    model = LlamaForCausalLM(config).eval()
    prompts = [torch.randint(0, 64, (1, n)) for n in (40, 23, 57)]
    new = torch.randint(0, 64, (3, 3))
    again = torch.randint(0, 64, (3, 2))
    keep = [1, 3, 2]  # tokens of the first step each row keeps (the rest were rejected guesses)
    def one_at_a_time(tokens, cache):  # as the naive loop feeds them
        return torch.cat([model(input_ids=t.view(1, 1), use_cache=True, **with_cache(model, cache)).logits[0] for t in tokens])

    with torch.no_grad():
        want = []
        for p, fed, kept, fed2 in zip(prompts, new, keep, again):
            alone = DynamicCache(config=config)
            model(input_ids=p, use_cache=True, **with_cache(model, alone))
            first = one_at_a_time(fed, alone)
            alone.crop(kept - 3)  # what the row keeps of the step (transformers: minus the tokens removed)
            want.append((first, one_at_a_time(fed2, alone)))
        assert use_row_attention(model) and use_row_attention(model)
        cache = reserved_cache(config, 80)
        for row, p in enumerate(prompts):
            alone = DynamicCache(config=config)
            model(input_ids=p, use_cache=True, **with_cache(model, alone))
            for layer, own in zip(cache.layers, alone.layers):
                layer.place(row, 3, own.keys, own.values)
        ends = [p.shape[1] for p in prompts]
        step_mask.cache_clear()
        with rows_at(ends):
            first = model(input_ids=new, position_ids=torch.tensor(ends)[:, None] + torch.arange(3),
                          use_cache=True, **with_cache(model, cache)).logits
        ends = [e + k for e, k in zip(ends, keep)]
        with rows_at(ends):
            second = model(input_ids=again, position_ids=torch.tensor(ends)[:, None] + torch.arange(2),
                           use_cache=True, **with_cache(model, cache)).logits
    masks = step_mask.cache_info()  # each step's mask built by its first layer, reused by the second
    assert (masks.misses, masks.hits) == (2, 2), masks
    for row, (w1, w2) in enumerate(want):
        assert torch.allclose(first[row], w1, atol=1e-5) and torch.allclose(second[row], w2, atol=1e-5), row
    eager = LlamaForCausalLM(LlamaConfig(**{**config.to_dict(), "attn_implementation": "eager"}))
    assert eager.config._attn_implementation == "eager" and not use_row_attention(eager)
    capped = LlamaForCausalLM(LlamaConfig(**{**config.to_dict(), "attn_implementation": "sdpa"}))
    capped.config.attn_logit_softcapping = 50.0  # scores the row attention would not cap
    assert capped.config._attn_implementation == "sdpa" and not use_row_attention(capped)


@pytest.mark.parametrize("draft", [0, 3])
@pytest.mark.parametrize("family", ROW_FAMILIES)
def test_continuous_batching_refills_rows_and_equals_naive(family, checkpoints, bpe, monkeypatch, draft):
    """More prompts than batch rows: each row takes the next prompt when its answer ends, rows of
    different lengths share a step, and with draft tokens a step keeps several tokens; the tokens
    equal the naive loop's. Gemma 3's local layers see only the last 8 positions, far fewer than
    a prompt: their window is applied in every step."""
    from transformers import GenerationConfig

    from longctx.models import continuous, kv_cache

    model = load_model("hf", path=str(checkpoints[family]), batch_size=2, draft_tokens=draft)
    assert model.call_size == 16  # the runner's default: a call brings more prompts than rows
    prompts = PROMPTS + ["two one " * 9, "sky grass " * 12 + "1234", "three " * 5]
    end = end_token_splitting_answers(model.model, bpe, prompts, 12)  # it ends some answers early
    model.eos_ids = {2, end}
    model.model.generation_config = GenerationConfig(eos_token_id=[2, end], pad_token_id=2)
    calls, layouts, steps = [], [], []
    real_continuous, real_rows_at, real_forward = continuous.greedy_continuous, kv_cache.rows_at, model.model.forward
    monkeypatch.setattr("longctx.models.hf.greedy_continuous",
                        lambda *a, **k: calls.append(len(a[1])) or real_continuous(*a, **k))
    monkeypatch.setattr(kv_cache, "rows_at", lambda ends: layouts.append(list(ends)) or real_rows_at(ends))
    monkeypatch.setattr(model.model, "forward", lambda **k: steps.append(k["input_ids"].shape) or real_forward(**k))
    got = model.generate(prompts, GenParams(max_new_tokens=12))
    assert [c.text for c in got] == [naive(model.model, bpe, p, 12) for p in prompts]
    assert len({c.output_tokens for c in got}) > 1 and calls and sum(calls) == len(prompts)
    assert any(len(set(ends)) > 1 for ends in layouts)  # rows of different lengths shared a step
    decode = [shape for shape in steps if shape[1] == draft + 1 and shape[0] <= 2]
    new_tokens = sum(c.output_tokens for c in got) - len(prompts)  # the first of each comes from its prefill
    if not draft:
        assert len(decode) >= new_tokens / 2
    elif family in ("llama", "gemma3_text"):  # their answers repeat the prompts: guesses were kept,
        assert len(decode) < new_tokens / 2  # fewer steps than tokens even with two rows sharing a step


def test_qwen2_with_its_tokenizer_given_apart_batches_continuously_as_the_naive_loop(tmp_path, bpe, monkeypatch):
    """Qwen2 (biases on q, k and v) through continuous batching with draft tokens. Its tokenizer
    comes from a folder of its own: beside a Qwen2 config.json, transformers would build a
    Qwen2Tokenizer over the test vocabulary (tests/tiny_models.py)."""
    from longctx.models import continuous

    folder = make_checkpoint("qwen2", tmp_path / "qwen2", bpe)
    bpe.hf.save_pretrained(tmp_path / "tokenizer")
    model = load_model("hf", path=str(folder), tokenizer=str(tmp_path / "tokenizer"), batch_size=2, draft_tokens=3)
    calls, real = [], continuous.greedy_continuous
    monkeypatch.setattr("longctx.models.hf.greedy_continuous", lambda *a, **k: calls.append(1) or real(*a, **k))
    prompts = PROMPTS + ["two one " * 9, "sky grass " * 12 + "1234"]
    got = model.generate(prompts, GenParams(max_new_tokens=12))
    assert calls and model.family == "qwen2"
    assert [c.prompt_tokens for c in got] == [bpe.count(p) for p in prompts]
    assert [c.text for c in got] == [naive(model.model, bpe, p, 12) for p in prompts]


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


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])
def test_prompts_sharing_a_prefix_prefill_only_the_rest(family, checkpoints, bpe, monkeypatch):
    """Prompts are admitted in token order, and one sharing at least MIN_SHARED leading tokens
    with the prompt before it reuses that prompt's cache for them: only its own rest goes
    through the model, and its tokens still equal the naive loop's (for Gemma 3 the rest's
    local layers see the shared prefix only through their window)."""
    from longctx.models import continuous

    model = load_model("hf", path=str(checkpoints[family]), batch_size=2)
    texts = ["The grass is green. The sky is blue. " * 3 + "The special magic number is 1234.",
             "one two three four " * 4, "The grass is green. The sky is blue. " * 3 + "hello world hello"]
    rows = [bpe.encode(t) for t in texts]
    shared = continuous.shared_prefix(rows[0], rows[2])
    assert shared > 20
    monkeypatch.setattr(continuous, "MIN_SHARED", shared)
    fed, real_forward = [], model.model.forward
    monkeypatch.setattr(model.model, "forward", lambda **k: fed.append(k["input_ids"].shape[1]) or real_forward(**k))
    with torch.no_grad():
        got = continuous.greedy_continuous(model.model, rows, 10, model.eos_ids, 2, draft=2)
    during = list(fed)  # (the naive loop below goes through the same forward)
    assert [bpe.decode(r) for r in got] == [naive(model.model, bpe, t, 10) for t in texts]
    # the later of the two in token order prefilled only what follows the shared prefix
    later, rest = max(rows[0], rows[2]), len(max(rows[0], rows[2])) - shared
    prefills = [n for n in during if n != 3]  # decode steps feed 3 positions (1 + 2 guesses)
    assert rest != 3 and len(prefills) == 3 and rest in prefills and len(later) not in prefills, prefills
    assert continuous.shared_prefix([1, 2, 3], [1, 2, 3]) == 2  # its last token is always computed
    assert continuous.shared_prefix([1, 2, 3, 4], [1, 2, 5, 4, 6]) == 2


def test_sliding_windows_far_beyond_their_window_go_to_fixed_batches(checkpoints, bpe, monkeypatch):
    """Rows of their own keep a sliding layer's every position; when that is more than
    BEYOND_WINDOWS_BYTES beyond the model's own cache, the prompts go to the fixed batches
    (same tokens)."""
    from longctx.models import continuous
    from longctx.models.kv_cache import beyond_windows_bytes, reserved_cache

    def beyond(config, rows, capacity, dtype):
        return beyond_windows_bytes(reserved_cache(config, capacity, windows=True), config, rows, dtype)

    model = load_model("hf", path=str(checkpoints["gemma3_text"]), batch_size=2)
    config = model.model.config  # one local layer of window 8, two key/value heads of 16
    assert beyond(config, 2, 100, torch.float32) == (100 - 8) * 2 * 2 * 2 * 16 * 4
    assert beyond(config, 2, 5, torch.bfloat16) == 0  # within the window
    llama = load_model("hf", path=str(checkpoints["llama"]))
    assert beyond(llama.model.config, 8, 10_000, torch.float32) == 0
    rows = [bpe.encode(p) for p in PROMPTS]
    with torch.no_grad():
        assert continuous.greedy_continuous(model.model, rows, 4, model.eos_ids, 2) is not None
        monkeypatch.setattr(continuous, "BEYOND_WINDOWS_BYTES", 0)
        assert continuous.greedy_continuous(model.model, rows, 4, model.eos_ids, 2) is None
    got = model.generate(PROMPTS, GenParams(max_new_tokens=8))
    assert [c.text for c in got] == [naive(model.model, bpe, p, 8) for p in PROMPTS]


def test_continuous_batching_decodes_fewer_rows_when_their_cache_would_not_fit_in_memory(checkpoints, bpe,
                                                                                       monkeypatch):
    """The rows' cache is reserved up front: when `slots` rows of it would not fit in the memory
    available, fewer rows run at a time (with a warning), giving the same tokens."""
    from longctx.models import continuous, kv_cache

    assert continuous.rows_in_memory(8, 100, None) == 8  # unknown: as asked
    assert continuous.rows_in_memory(8, 100, 10_000) == 8
    assert continuous.rows_in_memory(8, 100, 1000) == int(1000 * continuous.MEMORY_SHARE) // 100 - continuous.PREFILL_ROWS
    assert continuous.rows_in_memory(8, 100, 10) == 1  # never none
    config = load_model("hf", path=str(checkpoints["llama"])).model.config
    cache = kv_cache.reserved_cache(config, 100)  # 2 layers, 2 key/value heads of 16
    assert kv_cache.reserved_bytes(cache, config, 3, torch.float32) == 100 * 2 * 3 * 2 * 2 * 16 * 4
    assert sys.platform != "linux" or 1e8 < kv_cache.available_memory() < 1e14  # from /proc/meminfo

    model = load_model("hf", path=str(checkpoints["llama"]), batch_size=3)
    rows = [bpe.encode(p) for p in PROMPTS]
    widths, real_forward = [], model.model.forward
    monkeypatch.setattr(model.model, "forward", lambda **k: widths.append(k["input_ids"].shape[0]) or real_forward(**k))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")
        roomy = continuous.greedy_continuous(model.model, rows, 8, model.eos_ids, 3, draft=2)
    assert max(widths) == 3
    widths.clear()
    row_bytes = kv_cache.reserved_bytes(kv_cache.reserved_cache(config, max(map(len, rows)) + 8 + 3), config, 1,
                                        torch.float32)
    monkeypatch.setattr(kv_cache, "available_memory", lambda: int((2 + continuous.PREFILL_ROWS) * row_bytes
                                                                  / continuous.MEMORY_SHARE) + 1)
    with torch.no_grad(), pytest.warns(continuous.CacheMemoryWarning, match="decoding 2 rows at a time instead of 3"):
        tight = continuous.greedy_continuous(model.model, rows, 8, model.eos_ids, 3, draft=2)
    assert max(widths) == 2 and tight == roomy
    assert [bpe.decode(r) for r in tight] == [naive(model.model, bpe, p, 8) for p in PROMPTS]


def test_out_of_memory_halves_a_batch_and_fails_only_a_prompt_too_big_alone(checkpoints, bpe, monkeypatch):
    """Running out of memory (a GPU's, or an allocation bigger than the host can give) does not
    stop a run: a fixed batch runs again as its two halves, a prompt that does not fit even alone
    becomes a failed row, and every other prompt gets the tokens it gets without the fault; later
    calls do not try again what did not fit. Continuous batching that runs out of room leaves its
    prompts to the fixed batches."""
    from longctx.models import hf

    model = load_model("hf", path=str(checkpoints["mamba2"]), batch_size=4)
    clean = model.generate(PROMPTS, GenParams(8))
    longest = max(len(bpe.encode(p)) for p in PROMPTS)
    sizes, real_batch = [], model._generate_batch

    def tight(rows, max_new):  # room for two prompts, and for the longest not even alone
        sizes.append(len(rows))
        if len(rows) > 2 or longest in map(len, rows):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_batch(rows, max_new)

    monkeypatch.setattr(model, "_generate_batch", tight)
    got = model.generate(PROMPTS, GenParams(8))
    assert [len(bpe.encode(p)) for p in PROMPTS].count(longest) == 1
    assert sizes == [4, 2, 2, 1, 1]  # the whole; its shorter half; the longer half, then its prompts one by one
    worst = next(i for i, p in enumerate(PROMPTS) if len(bpe.encode(p)) == longest)
    assert got[worst].error == f"out of memory: {longest} prompt + 8 new tokens do not fit on cpu even alone"
    assert [c.text for i, c in enumerate(got) if i != worst] == [c.text for i, c in enumerate(clean) if i != worst]
    assert all(c.ok for i, c in enumerate(got) if i != worst)
    sizes.clear()  # the adapter remembers what did not fit: the next call tries only what may
    again = model.generate(PROMPTS, GenParams(8))
    assert sizes == [2, 1] and [(c.text, c.error) for c in again] == [(c.text, c.error) for c in got]
    sizes.clear()  # fewer new tokens is a smaller batch than any that failed: tried again
    model.generate(PROMPTS, GenParams(4))
    assert sizes[0] == 4

    monkeypatch.setattr(model, "_generate_batch", lambda rows, max_new: (_ for _ in ()).throw(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):  # any other error still stops the run
        model.generate(PROMPTS, GenParams(8))

    llama = load_model("hf", path=str(checkpoints["llama"]), batch_size=2)
    clean = llama.generate(PROMPTS, GenParams(8))
    host_full = RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory")
    monkeypatch.setattr(hf, "greedy_continuous", lambda *a, **k: (_ for _ in ()).throw(host_full))
    assert [c.text for c in llama.generate(PROMPTS, GenParams(8))] == [c.text for c in clean]


def test_soft_capped_attention_batches_without_rows_of_their_own(checkpoints, bpe):
    """Gemma 2 soft-caps its attention scores, so transformers runs it only with eager attention
    (the row attention is an SDPA and does not cap either): continuous batching declines it, and
    the fixed batches give the naive loop's tokens."""
    from longctx.models.continuous import greedy_continuous

    model = load_model("hf", path=str(checkpoints["gemma2"]), batch_size=4)
    assert model.model.config.attn_logit_softcapping and model._shrinks
    assert model.model.config._attn_implementation == "eager"
    with torch.no_grad():
        assert greedy_continuous(model.model, [bpe.encode(p) for p in PROMPTS], 4, model.eos_ids, 2) is None
    got = model.generate(PROMPTS, GenParams(max_new_tokens=8))
    assert [c.text for c in got] == [naive(model.model, bpe, p, 8) for p in PROMPTS]


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


def test_loading_shows_no_progress_bars_of_transformers_own(checkpoints, capfd):
    """A checkpoint's load (weights, GGUF conversion) prints no progress bar into a run's log; the
    user's own setting is back afterwards."""
    from transformers.utils import logging

    assert logging.is_progress_bar_enabled()
    load_model("hf", path=str(checkpoints["llama"]))
    assert "Loading weights" not in capfd.readouterr().err and logging.is_progress_bar_enabled()


def test_no_advice_to_install_gpu_kernels_on_the_cpu(checkpoints):
    """Mamba2's mixers run their PyTorch reference path on the CPU; transformers' advice to install
    GPU kernels for it would be noise in a CPU run's log."""
    import logging

    from transformers.utils import logging as hf_logging

    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    kernels = logging.getLogger("transformers.integrations.hub_kernels")
    kernels.addHandler(handler)
    hf_logging.warning_once.cache_clear()  # said once per process: an earlier test may have said it
    try:
        model = load_model("hf", path=str(checkpoints["mamba2"]))
        model.generate([PROMPTS[0]], GenParams(max_new_tokens=2))
    finally:
        kernels.removeHandler(handler)
    assert not [m for m in seen if "falling back to its reference PyTorch implementation" in m], seen
