"""The mamba_ssm-format checkpoints run without CUDA: each module is checked against an
independent reference (the plain SSM recurrence, transformers' Mamba2 and Llama on the same
weights, mamba_ssm's padded convolution), and generation is checked chunked vs one pass and
cached vs uncached."""

import pytest
import torch

from longctx.errors import UsageError
from longctx.models import GenParams, load_model
from longctx.models.mamba_ssm import build, read_config, read_weights
from longctx.models.mixer_lm import MixerLM, _causal_conv, ssd_chunked, ssd_reference
from tiny_models import make_mamba_ssm_checkpoint

KINDS = ["mamba2", "mamba2attn", "transformerpp"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, bpe):
    root = tmp_path_factory.mktemp("mamba_ssm")
    return {kind: make_mamba_ssm_checkpoint(kind, root / kind, bpe) for kind in KINDS}


def _mixer(folder):
    cfg = read_config(folder)
    model = MixerLM(cfg)
    state = read_weights(folder, allow_pickle=True)
    model.load_state_dict(state)  # strict: every mamba_ssm parameter name must match ours
    return model.eval()


def test_ssd_chunks_equal_the_plain_recurrence():
    torch.manual_seed(0)
    b, length, h, p, n = 2, 70, 3, 4, 5  # 70 is not a multiple of the chunk: exercises padding
    x, bb, cc = torch.randn(b, length, h, p), torch.randn(b, length, h, n), torch.randn(b, length, h, n)
    dt = torch.rand(b, length, h) * 0.5
    a = -torch.rand(h) * 2
    h0 = torch.randn(b, h, p, n)
    y, final = ssd_chunked(x, dt, a, bb, cc, h0, chunk=16)
    y_ref, final_ref = ssd_reference(x, dt, a, bb, cc, h0)
    assert torch.allclose(y, y_ref, atol=1e-4) and torch.allclose(final, final_ref, atol=1e-4)


def test_causal_conv_with_state_equals_mamba_ssm_padded_conv():
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(6, 6, 4, groups=6, padding=3)
    x = torch.randn(2, 9, 6)
    ours, _ = _causal_conv(x, conv, torch.zeros(2, 6, 3))
    theirs = conv(x.transpose(1, 2))[..., :-3].transpose(1, 2)  # mamba_ssm's formula
    first, prev = _causal_conv(x[:, :5], conv, torch.zeros(2, 6, 3))
    second, _ = _causal_conv(x[:, 5:], conv, prev)
    assert torch.allclose(ours, theirs, atol=1e-6)
    assert torch.allclose(torch.cat([first, second], 1), theirs, atol=1e-6)


def test_plain_mamba2_maps_onto_transformers_and_matches_our_module(checkpoints):
    folder = checkpoints["mamba2"]
    model, family = build(read_config(folder), read_weights(folder, allow_pickle=True), use_kernels=False)
    assert family == "mamba2" and type(model).__name__ == "Mamba2ForCausalLM"
    ids = torch.randint(3, 2000, (2, 45))
    with torch.no_grad():
        ours = _mixer(folder)(ids)
        theirs = model.eval()(ids).logits
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()


def test_transformerpp_blocks_equal_llama_on_the_same_weights(checkpoints):
    """Attention with full rotary, GQA and the gated MLP, against transformers' Llama."""
    from transformers import LlamaConfig, LlamaForCausalLM

    ours = _mixer(checkpoints["transformerpp"])
    cfg = ours.config
    hidden = ours.backbone.layers[0].mlp.fc2.weight.shape[1]
    llama = LlamaForCausalLM(LlamaConfig(
        vocab_size=cfg.padded_vocab, hidden_size=cfg.d_model, intermediate_size=hidden, num_hidden_layers=cfg.n_layer,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5, tie_word_embeddings=True,
        rope_theta=10000.0, max_position_embeddings=4096)).eval()
    state = {"model.embed_tokens.weight": ours.backbone.embedding.weight, "model.norm.weight": ours.backbone.norm_f.weight}
    for i, layer in enumerate(ours.backbone.layers):
        q, k, v = layer.mixer.in_proj.weight.split([64, 32, 32])
        up, gate = layer.mlp.fc1.weight.chunk(2)
        pre = f"model.layers.{i}."
        state |= {pre + "self_attn.q_proj.weight": q, pre + "self_attn.k_proj.weight": k, pre + "self_attn.v_proj.weight": v,
                  pre + "self_attn.o_proj.weight": layer.mixer.out_proj.weight, pre + "mlp.gate_proj.weight": gate,
                  pre + "mlp.up_proj.weight": up, pre + "mlp.down_proj.weight": layer.mlp.fc2.weight,
                  pre + "input_layernorm.weight": layer.norm.weight, pre + "post_attention_layernorm.weight": layer.norm2.weight}
    missing, unexpected = llama.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    llama.tie_weights()
    ids = torch.randint(3, 2000, (2, 40))
    with torch.no_grad():
        assert torch.allclose(ours(ids), llama(ids).logits, atol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_chunked_prefill_and_cached_decoding_equal_one_uncached_pass(kind, checkpoints):
    model = _mixer(checkpoints[kind])
    ids = torch.randint(3, 2000, (2, 50))
    with torch.no_grad():
        whole = model(ids)[:, -1]
        state, logits = None, None
        for start in range(0, 50, 16):
            logits, state = model.step(ids[:, start:start + 16], state)
        assert torch.allclose(logits, whole, atol=1e-4)
        # Greedy continuation: cached steps vs recomputing the whole sequence each time.
        cached, uncached, seq = [], [], ids
        for _ in range(6):
            nxt = logits.argmax(-1)
            cached.append(nxt)
            logits, state = model.step(nxt[:, None], state)
            full_next = model(seq)[:, -1].argmax(-1)
            uncached.append(full_next)
            seq = torch.cat([seq, full_next[:, None]], 1)
    assert torch.equal(torch.stack(cached), torch.stack(uncached))


@pytest.mark.parametrize("kind", ["mamba2attn", "transformerpp"])
def test_padded_rows_give_each_prompt_alone(kind, checkpoints, monkeypatch):
    """MixerLM.step with left-padded rows (0, 2, 5 and 30 tokens: inside a convolution kernel and
    past a 16-token chunk), prefilled in chunks of 16 or 1, gives each prompt's logits alone, and
    so does a decode step after them: padding is zeroed before the convolutions and the scan, and
    no real position attends to padding. No query is left without a key (a kernel may give NaN there)."""
    masks = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording(q, k, v, attn_mask=None, **kwargs):
        masks.append(attn_mask)
        return sdpa(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording)
    model = _mixer(checkpoints[kind])
    gen = torch.Generator().manual_seed(4)
    prompts = [torch.randint(3, 2000, (n,), generator=gen).tolist() for n in (50, 48, 45, 20)]
    pads = torch.tensor([50 - len(p) for p in prompts])
    ids = torch.tensor([[0] * (50 - len(p)) + p for p in prompts])
    with torch.no_grad():
        for chunk in (16, 1):
            state = None
            for start in range(0, 50, chunk):
                logits, state = model.step(ids[:, start:start + chunk], state, pads if state is None else None)
            assert torch.isfinite(logits).all()
            nxt = logits.argmax(-1)
            stepped, _ = model.step(nxt[:, None], state)
            for row, prompt in enumerate(prompts):
                whole = model(torch.tensor([prompt]))[0, -1]
                again = model(torch.tensor([prompt + [int(nxt[row])]]))[0, -1]
                assert torch.allclose(logits[row], whole, atol=1e-4), (chunk, row, float((logits[row] - whole).abs().max()))
                assert torch.allclose(stepped[row], again, atol=1e-4), (chunk, row, float((stepped[row] - again).abs().max()))
    assert masks and all(bool(m.any(-1).all()) for m in masks)


@pytest.mark.parametrize("kind", KINDS)
def test_backend_loads_counts_and_generates(kind, checkpoints, bpe):
    prompts = ["The grass is green. " * 12 + "The special magic number is 1234.", "hello world " * 7]
    chunked = load_model("mamba_ssm", path=str(checkpoints[kind]), allow_pickle=True, prefill_chunk=16)
    whole = load_model("mamba_ssm", path=str(checkpoints[kind]), allow_pickle=True, prefill_chunk=None, batch_size=1)
    a, b = chunked.generate(prompts, GenParams(8)), whole.generate(prompts, GenParams(8))
    assert all(c.ok and c.output_tokens == 8 and c.text for c in a)
    encoded = [bpe.encode(p) for p in prompts]
    assert chunked._batches([0, 1], encoded) == [[1, 0]]  # different lengths, one padded batch
    assert [c.text for c in a] == [c.text for c in b]  # ... answering as each prompt alone
    assert [c.prompt_tokens for c in a] == [chunked.tokenizer.count(p) for p in prompts] == [bpe.count(p) for p in prompts]


def test_pickled_weights_need_the_opt_in_and_safetensors_do_not(checkpoints, tmp_path, bpe):
    with pytest.raises(UsageError, match="allow_pickle"):
        load_model("mamba_ssm", path=str(checkpoints["mamba2attn"]))
    safe = make_mamba_ssm_checkpoint("mamba2attn", tmp_path / "safe", bpe, safetensors=True)
    model = load_model("mamba_ssm", path=str(safe))
    pickled = load_model("mamba_ssm", path=str(checkpoints["mamba2attn"]), allow_pickle=True)
    prompt = ["a b c d e f g"]
    assert model.generate(prompt, GenParams(5))[0].text == pickled.generate(prompt, GenParams(5))[0].text


def test_bad_checkpoints_are_clear_errors(tmp_path, checkpoints):
    (tmp_path / "config.json").write_text('{"hidden_size": 8}')
    with pytest.raises(UsageError, match="not a mamba_ssm config"):
        load_model("mamba_ssm", path=str(tmp_path))
    with pytest.raises(UsageError, match="has no option"):
        load_model("mamba_ssm", path=str(checkpoints["mamba2"]), trust_remote_code=True)
