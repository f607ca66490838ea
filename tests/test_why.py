"""`longctx why`: each diagnostic on hand-built models where the quantity is known exactly, the fast
path against a full reference, and the command's storage, resume and skip reasons."""

import math
import sqlite3
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from longctx.cli import main
from longctx.types import Sample
from longctx.why.attention import NeedleAttention, needle_spans
from longctx.why.rope import GRID, RotaryGeometry, angles, bound_holds
from tiny_models import make_checkpoint

NEEDLE = "The special magic number for quiet-river is: 4071."
PROMPT = "Some filler text about the grass. " * 12 + NEEDLE + " More filler about the sky. " * 8 + \
    "What is the special magic number for quiet-river?"


def sample(prompt=PROMPT, targets=("4071",)):
    return Sample("s0", "niah_single_1", 1024, 0, prompt, " Answer:", targets, 4, "string_match_all", {"params": {}})


def llama(bpe, seed=0, zero_scores=False):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(bpe.hf), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=512)
    model = LlamaForCausalLM(config).eval()
    if zero_scores:  # every score 0: each query spreads its attention evenly over what it sees
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.data.zero_()
    return model


def adapter(model, tokenizer):
    return SimpleNamespace(model=model, tokenizer=tokenizer, eos_ids=set(), train_context=512)


def test_needle_span_is_the_targets_tokens(bpe):
    s = sample()
    spans = needle_spans(bpe, s)
    ids = bpe.encode(s.full_prompt)
    assert len(spans) == 1
    a, b = spans[0]
    assert "4071" in bpe.hf.decode(ids[a:b]).replace(" ", "") and "4071" not in bpe.hf.decode(ids[:a] + ids[b:])


def test_uniform_attention_puts_exactly_the_span_share_on_the_needle(bpe):
    """With every attention score 0, each head's mass on the needle is needle tokens / positions
    seen, for the last prompt token and for every answer token."""
    rows = NeedleAttention(answer_tokens=3).measure(adapter(llama(bpe, zero_scores=True), bpe), sample())
    assert {r["query"] for r in rows} == {"last", "answer_1", "answer_2", "answer_3"}
    assert len(rows) == 4 * 2 * 4  # queries x layers x heads
    for r in rows:
        assert r["needle_mass"] == pytest.approx(r["needle_tokens"] / r["positions"], abs=2e-6)
        assert r["uniform"] == pytest.approx(r["needle_tokens"] / r["positions"], abs=1e-6)
    assert {r["positions"] for r in rows if r["query"] == "last"} == {len(bpe.encode(sample().full_prompt))}


def test_needle_attention_equals_the_full_attention_maps_rows(bpe):
    """The fast path (fast-kernel prefill, then eager single rows) against transformers' full
    eager attention maps over prompt + answer, on a random model."""
    model, s = llama(bpe, seed=3), sample()
    rows = NeedleAttention(answer_tokens=2).measure(adapter(model, bpe), s)
    ids = bpe.encode(s.full_prompt)
    a, b = needle_spans(bpe, s)[0]
    answer = [int(x) for x in model.generate(torch.tensor([ids]), max_new_tokens=2, do_sample=False,
                                             pad_token_id=0)[0, len(ids):]]
    own = model.config._attn_implementation
    model.set_attn_implementation("eager")
    with torch.no_grad():
        maps = model(input_ids=torch.tensor([ids + answer]), output_attentions=True).attentions
    model.set_attn_implementation(own)
    for r in rows:
        at = len(ids) - 1 + (0 if r["query"] == "last" else int(r["query"].split("_")[1]))
        want = float(maps[r["layer"]][0, r["head"], at, a:b].sum())
        assert r["needle_mass"] == pytest.approx(want, abs=1e-5), r


def test_needle_attention_skips_what_it_cannot_measure(bpe, tmp_path):
    d = NeedleAttention()
    assert "no attention layer" in d.skip_reason(adapter(
        __import__("transformers").AutoModelForCausalLM.from_config(
            __import__("tiny_models").tiny_config("mamba2", len(bpe.hf))), bpe))
    assert "needs a transformers model" in d.skip_reason(SimpleNamespace(tokenizer=bpe))
    assert "no target" in d.skip_reason(adapter(llama(bpe), bpe), sample(targets=("9999",)))


def test_rotary_table_and_bound_against_numpy():
    config = SimpleNamespace(rope_parameters={"rope_theta": 500.0}, hidden_size=64, num_attention_heads=4,
                             head_dim=16, max_position_embeddings=256)
    rows = RotaryGeometry(target_length=1024).measure(SimpleNamespace(model=SimpleNamespace(config=config),
                                                                      train_context=256), None)
    dims, summary = [r for r in rows if r["kind"] == "dim"], rows[-1]
    theta = 500.0 ** (-np.arange(0, 16, 2) / 16)
    assert [r["theta"] for r in dims] == pytest.approx(list(theta))
    assert [r["period"] for r in dims] == pytest.approx(list(2 * np.pi / theta))
    assert summary["dims_turning_in_train"] == int((2 * np.pi / theta <= 256).sum())
    assert summary["first_incomplete_period_over_train"] == pytest.approx(min(p for p in 2 * np.pi / theta / 256 if p > 1))

    def direct(base):  # every m from 0 to 1024
        m = np.arange(0, 1025)[:, None]
        return bool((np.cos(m * base ** (-np.arange(0, 16, 2) / 16)).sum(1) >= 0).all())

    assert summary["bound_holds_at_base"] == direct(500.0)
    holds = [direct(b) for b in GRID]
    assert summary["first_passing_base"] == GRID[holds.index(True)]
    assert summary["all_pass_from_base"] == next(b for i, b in enumerate(GRID) if all(holds[i:]))
    assert all(bound_holds(b, 16, 1024) == h for b, h in zip(GRID[::40], holds[::40]))
    assert angles(10000.0, 4) == pytest.approx([1.0, 0.01])
    assert "no rotary" in RotaryGeometry().skip_reason(SimpleNamespace(model=SimpleNamespace(
        config=SimpleNamespace(hidden_size=8, num_attention_heads=1))))


def test_why_stores_resumes_skips_with_reasons_and_writes_csvs(bpe, tmp_path, capsys, monkeypatch):
    folder = make_checkpoint("llama", tmp_path / "llama", bpe)
    spec = {"name": "w", "db": str(tmp_path / "w.sqlite"), "tasks": ["niah_single_1", "vt"], "lengths": [1024],
            "samples": 2, "diagnostics": ["attention", "rope"],
            "models": [{"name": "tiny", "backend": "hf", "args": {"path": str(folder)}},
                       {"name": "stand-in", "backend": "mock", "args": {"tokenizer": str(folder)}}]}
    path = tmp_path / "w.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "why"
    assert main(["why", str(path), "--out", str(out)]) == 0
    attention = (out / "needle_attention.csv").read_text().splitlines()
    assert attention[0].startswith("model,sample_id,task,length,depth,query,layer,head,needle_mass,uniform")
    assert any(line.startswith("tiny,") and ",niah_single_1,1024," in line for line in attention)
    assert any(line.startswith("stand-in,") and "needs a transformers model" in line for line in attention)
    rope = (out / "rope.csv").read_text()
    assert "summary" in rope and "stand-in" in rope
    con = sqlite3.connect(tmp_path / "w.sqlite")
    stored = con.execute("SELECT COUNT(*) FROM diagnostics").fetchone()[0]
    con.close()
    # Resume: nothing is measured again.
    monkeypatch.setattr(NeedleAttention, "measure", lambda *a: pytest.fail("measured twice"))
    assert main(["why", str(path), "--out", str(out)]) == 0
    con = sqlite3.connect(tmp_path / "w.sqlite")
    assert con.execute("SELECT COUNT(*) FROM diagnostics").fetchone()[0] == stored
    con.close()
    spec["diagnostics"] = ["attention", "gradients"]
    path.write_text(yaml.safe_dump(spec))
    assert main(["why", str(path)]) == 2
    assert "unknown diagnostic 'gradients'" in capsys.readouterr().err


def test_the_reports_why_tables_by_hand():
    from longctx.why.summary import why_tables

    def row(sid, layer, head, mass, query="last"):
        return {"diagnostic": "needle_attention", "model": "m", "sample_id": sid, "task": "niah_single_1",
                "length": 1024, "depth": 50, "query": query, "layer": layer, "head": head, "needle_mass": mass,
                "uniform": 0.01}

    rows = [row("a", 0, 0, 0.2), row("a", 1, 1, 0.6), row("b", 0, 0, 0.4), row("b", 1, 1, 0.1),
            row("b", 1, 1, 0.9, query="answer_1"),
            {"diagnostic": "rope", "model": "m", "sample_id": "", "skipped": "the model has no rotary position embedding"}]
    attention, skipped = why_tables(rows)
    # peaks: a 0.6, b 0.4 -> 50.00; head 1:1 averages (0.6 + 0.1)/2 = 0.35 against 0:0's 0.3
    assert attention.rows == [["m", "niah_single_1", "1K", "50", "2", "50.00", "1.00", "1:1"]]
    assert skipped.rows == [["m", "rope", "the model has no rotary position embedding"]]


def test_masking_a_head_zeroes_that_head_and_nothing_else(bpe):
    """Masking (layer 0, head 2): at the input of layer 0's output projection, head 2's slice is
    zero and every other head's slice is what it was; layer 1 is untouched by the hook itself."""
    from longctx.why.retrieval import masked

    model = llama(bpe, seed=5)
    seen = {}
    proj = model.model.layers[0].self_attn.o_proj
    width = proj.in_features // model.config.num_attention_heads
    ids = torch.tensor([bpe.encode(PROMPT)])
    with torch.no_grad():
        handle = proj.register_forward_hook(lambda m, args, out: seen.setdefault("x", []).append(args[0].clone()))
        plain_logits = model(input_ids=ids).logits
        with masked(model, [(0, 2)]):
            masked_logits = model(input_ids=ids).logits
        handle.remove()
    before, after = seen["x"]
    for head in range(model.config.num_attention_heads):
        part = slice(head * width, (head + 1) * width)
        if head == 2:
            assert before[..., part].abs().sum() > 0 and after[..., part].abs().sum() == 0
        else:
            assert torch.equal(before[..., part], after[..., part])
    assert not torch.allclose(plain_logits, masked_logits)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, plain_logits)  # the hook is gone


def test_a_copy_event_and_the_retrieval_score_by_hand(monkeypatch):
    """Head 0 attends most to a needle position holding the generated token (a copy); head 1 to a
    needle position holding another token; head 2 outside the needle. Two samples, a needle of 2
    tokens: head 0 copies once in each, so its score is (1/2 + 1/2) / 2 = 0.5."""
    from longctx.why import retrieval
    from longctx.why.attention import head_rows

    sequence = [10, 11, 12, 13, 14]  # needle at positions 1, 2 (tokens 11, 12)
    weights = torch.zeros(1, 3, 1, 5)
    weights[0, 0, 0, 1] = weights[0, 1, 0, 2] = weights[0, 2, 0, 4] = 1.0
    rows = head_rows([weights], [1, 2], sequence, generated=11, query="answer_1")
    assert [r["copies"] for r in rows] == [1, 0, 0]
    assert [r["needle_mass"] for r in rows] == [1.0, 1.0, 0.0]
    steps = [("last", [weights], sequence, 11), ("answer_1", [weights], sequence + [11], 99)]
    monkeypatch.setattr(retrieval, "attention_steps", lambda adapter, s, n: iter(steps))
    monkeypatch.setattr(retrieval, "needle_tokens", lambda tokenizer, s: [1, 2])
    ranked = retrieval.retrieval_scores(SimpleNamespace(tokenizer=None), [sample(), sample()], 4)
    assert ranked == [((0, 0), 0.5), ((0, 1), 0.0), ((0, 2), 0.0)]


def test_retrieval_heads_on_a_model_that_answers_nothing_says_so(bpe, tmp_path):
    from longctx.models import load_model
    from longctx.why.retrieval import RetrievalHeads

    model = load_model("hf", path=str(make_checkpoint("llama", tmp_path / "llama", bpe)))
    rows = RetrievalHeads().measure(model, [sample()])
    assert rows == [{"table": "retrieval_heads", "skipped": "the model answered no needle sample correctly"}]


def tiny_adapter(family, bpe, tmp_path):
    from longctx.models import load_model

    return load_model("hf", path=str(make_checkpoint(family, tmp_path / family, bpe)))


@pytest.mark.parametrize("family", ["mamba2", "mamba"])
def test_state_statistics_equal_a_one_pass_reading(family, bpe, tmp_path):
    """The state after each chunk equals the state one pass over the prompt up to there leaves."""
    from transformers import DynamicCache

    from longctx.models.transformers_compat import with_cache
    from longctx.why.state import RecurrentState, heads_of, summarise

    adapter = tiny_adapter(family, bpe, tmp_path)
    rows = RecurrentState(every=16).measure(adapter, sample())
    ids = bpe.encode(sample().full_prompt)
    for position in (16, 48, len(ids)):
        cache = DynamicCache(config=adapter.model.config)
        with torch.no_grad():
            adapter.model(input_ids=torch.tensor([ids[:position]]), use_cache=True, **with_cache(adapter.model, cache))
        for layer in range(len(cache.layers)):
            for head, values in enumerate(heads_of(cache.get_recurrent_state(layer)[0])):
                got = next(r for r in rows if (r["position"], r["layer"], r["head"]) == (position, layer, head))
                want = summarise(values)
                assert all(got[k] == pytest.approx(want[k], rel=1e-3, abs=1e-6) for k in want), (position, layer, head)
    assert {r["beyond_train"] for r in rows} == {False}


def test_state_decay_by_hand(bpe, tmp_path):
    """Mamba2 heads with -A = 1, 2, ... and a time-step bias b decay by exp(-a * log(1 + e^b))."""
    from longctx.why.state import StateDecay

    adapter = tiny_adapter("mamba2", bpe, tmp_path)
    mixers = [m for m in adapter.model.modules() if hasattr(m, "A_log")]
    heads = mixers[0].A_log.shape[0]
    with torch.no_grad():
        mixers[0].A_log.copy_(torch.log(torch.arange(1, heads + 1, dtype=torch.float)))
        mixers[0].dt_bias.fill_(-2.0)
    rows = [r for r in StateDecay().measure(adapter, []) if r["layer"] == 0]
    for r in rows:
        decay = math.exp(-(r["head"] + 1) * math.log1p(math.exp(-2.0)))
        assert r["decay"] == pytest.approx(decay, rel=1e-5)
        assert r["memory_tokens"] == pytest.approx(1 / (1 - decay), rel=1e-4)


def test_collapse_rule_by_hand():
    from longctx.why.state import collapsed

    def series(*rms, train=3):
        return [{"position": p, "rms": v, "beyond_train": p > train} for p, v in enumerate(rms, start=1)]

    assert collapsed(series(1.0, 2.0, 1.5, 3.9, 4.1)) == 5  # beyond 3: 3.9 within [0.5, 4], 4.1 out
    assert collapsed(series(1.0, 2.0, 1.5, 0.6, 0.4)) == 5  # below half the smallest
    assert collapsed(series(1.0, 2.0, 1.5, 2.5)) is None
    assert collapsed(series(5.0, train=0)) is None  # nothing within training to compare with


def test_state_skips_what_it_does_not_read(bpe, tmp_path):
    from longctx.why.state import RecurrentState

    assert RecurrentState().skip_reason(tiny_adapter("llama", bpe, tmp_path)) == "the model has no recurrent state"
    assert "not rwkv" in RecurrentState().skip_reason(SimpleNamespace(family="rwkv", model=torch.nn.Linear(1, 1)))


def test_the_reports_state_tables_by_hand():
    from longctx.why.summary import why_tables

    def point(sid, head, position, rms):
        return {"diagnostic": "state", "model": "m", "sample_id": sid, "task": "niah_single_1", "length": 4096,
                "depth": None, "position": position, "layer": 0, "head": head, "rms": rms, "mean": 0, "var": 0,
                "max_abs": 0, "train_length": 2048, "beyond_train": position > 2048}

    rows = [point("a", 0, 1024, 1.0), point("a", 0, 2048, 2.0), point("a", 0, 3072, 5.0),   # collapses at 3072
            point("a", 1, 1024, 1.0), point("a", 1, 2048, 1.0), point("a", 1, 3072, 1.5)]   # stays
    rows += [{"diagnostic": "state_decay", "model": "m", "sample_id": "", "layer": 0, "head": h, "decay": 0.5,
              "memory_tokens": t} for h, t in enumerate([2.0, 10.0, 4.0])]
    state, decay = why_tables(rows)
    assert state.rows == [["m", "niah_single_1", "4K", "2K", "2", "1", "3072", "2.50"]]
    assert decay.rows == [["m", "0", "4.0", "10.0"]]


def test_needle_attention_says_when_a_sample_would_not_fit(bpe, monkeypatch):
    """Before it starts: a sample whose prefill would need more memory than the machine can give
    is skipped with the sizes."""
    from longctx import host

    model = llama(bpe)
    monkeypatch.setattr(host, "available_memory", lambda: 10_000)
    reason = NeedleAttention().skip_reason(adapter(model, bpe), sample())
    assert reason.startswith("needs about") and "GiB at" in reason and "can give 0.0 GiB" in reason
    monkeypatch.setattr(host, "available_memory", lambda: 10 ** 12)
    assert NeedleAttention().skip_reason(adapter(model, bpe), sample()) is None


@pytest.mark.parametrize("family", ["llama", "mamba2"])
def test_position_loss_equals_a_plain_forwards_cross_entropy(family, bpe, tmp_path, monkeypatch):
    """The decoder's one pass with the output layer applied a chunk at a time gives every
    position's loss as the model's own full logits do."""
    import torch.nn.functional as F

    from longctx.why import position_loss

    adapter = tiny_adapter(family, bpe, tmp_path)
    ids = bpe.encode(PROMPT)
    monkeypatch.setattr(position_loss, "HEAD_CHUNK", 7)  # several chunks, the last one short
    got = position_loss.token_losses(adapter.model, ids)
    with torch.no_grad():
        logits = adapter.model(input_ids=torch.tensor([ids])).logits[0, :-1]
    want = F.cross_entropy(logits.float(), torch.tensor(ids[1:]), reduction="none").tolist()
    assert got == pytest.approx(want, abs=1e-4)


def test_position_loss_buckets_and_skips(bpe, tmp_path, data_dir):
    from longctx.corpora import DataPaths
    from longctx.why.position_loss import PositionLoss

    adapter = tiny_adapter("llama", bpe, tmp_path)
    adapter.train_context = 256
    rows = PositionLoss(length=512, data=DataPaths(data_dir), buckets=8).measure(adapter, [])
    assert [(r["from_position"], r["to_position"]) for r in rows][:2] == [(1, 63), (64, 126)]
    assert rows[-1]["to_position"] == 511 and sum(r["tokens"] for r in rows) == 511
    assert [r["beyond_train"] for r in rows] == [r["from_position"] > 256 for r in rows]
    missing = PositionLoss(data=DataPaths(tmp_path / "no-data")).skip_reason(adapter)
    assert "essays not found" in missing and "longctx data download" in missing


def test_rwkv_has_no_attention_to_measure(bpe, tmp_path):
    """RWKV's config has no attention heads (its "attention" is a linear recurrence): every
    diagnostic that needs attention or a rotary embedding skips it with a reason (the lab demo
    evaluates an RWKV)."""
    from longctx.why.retrieval import RetrievalHeads

    rwkv = tiny_adapter("rwkv", bpe, tmp_path)
    assert NeedleAttention().skip_reason(rwkv, sample()) == "the model has no attention layer"
    assert RetrievalHeads().skip_reason(rwkv) == "the model has no attention layer"
    assert RotaryGeometry().skip_reason(rwkv) == "the model has no rotary position embedding"


def test_a_local_layers_row_covers_only_its_window():
    """A sliding-window layer returns the weights of its window's positions only (the latest): a
    needle before the window gets no mass there, one inside gets its own columns."""
    from longctx.why.attention import head_rows

    sequence = list(range(10))
    weights = torch.zeros(1, 1, 1, 4)  # positions 6..9
    weights[0, 0, 0, 1] = 1.0  # position 7
    assert head_rows([weights], [2, 3], sequence, 0, "last")[0]["needle_mass"] == 0.0
    row = head_rows([weights], [7], sequence, 7, "last")[0]
    assert (row["needle_mass"], row["copies"]) == (1.0, 1)
