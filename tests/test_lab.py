"""The lab: tokenizer, families at one budget, measured state size, deterministic and resumable
training, spec errors, and `longctx lab` end to end on a tiny spec (train, evaluate, report, resume)."""

import json
import shutil

import pytest
import torch

from longctx.errors import UsageError
from longctx.lab.families import FAMILIES, fit_family, non_embedding_params, state_bytes
from longctx.lab.spec import load_lab_spec, parse_lab_spec
from longctx.lab.vocab import build_tokenizer

IDS = dict(pad_token_id=0, unk_token_id=1, bos_token_id=2, eos_token_id=3)
FORMATS = ["niah_single_1:digits=2", "niah_single_1:haystack=words,digits=2", "niah_single_1:key_type=numbers,digits=2"]


@pytest.fixture(scope="module")
def lab_tok(tmp_path_factory):
    out = tmp_path_factory.mktemp("labtok")
    build_tokenizer(out)
    return out


def test_lab_tokenizer_round_trips_every_format_and_fits_exactly(lab_tok):
    from longctx.tasks import generate_samples, parse_task
    from longctx.tasks.base import GenContext, GenOptions
    from longctx.tokenizer import load_tokenizer

    tok = load_tokenizer(str(lab_tok))
    ctx = GenContext(tok, GenOptions(verify="all"))
    for fmt in FORMATS + ["niah_single_1:value_type=words"]:
        for length in (128, 256, 1024):
            for s in generate_samples(parse_task(fmt + ",tokens_to_generate=8"), length, range(6), ctx):
                ids = tok.encode(s.full_prompt)
                assert tok.hf.unk_token_id not in ids
                assert tok.hf.decode(ids) == s.full_prompt
                assert len(ids) == s.meta["token_count"]
                assert 0.97 * length <= len(ids) + 8 <= length
                assert s.targets[0] in s.prompt


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_family_fits_the_budget_and_runs(name, lab_tok):
    from transformers import AutoModelForCausalLM

    cfg, n = fit_family(name, 15000, 64, 120_000, 256, IDS)
    assert abs(n - 120_000) <= 12_000
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    assert non_embedding_params(model) == n
    sizes = [state_bytes(model, length) for length in (64, 128, 256)]
    kv, rec = [s["kv"] for s in sizes], [s["recurrent"] for s in sizes]
    if name == "llama":  # a KV cache grows linearly with the sequence; no recurrent state
        assert kv[1] == 2 * kv[0] and kv[2] == 4 * kv[0] and rec == [0, 0, 0]
        layers, d = cfg.num_hidden_layers, cfg.hidden_size
        assert kv[0] == 2 * layers * d * 64 * 4  # K and V, fp32
    if name in ("mamba2", "rwkv"):  # a fixed-size state, no KV cache
        assert rec[0] == rec[1] == rec[2] > 0 and kv == [0, 0, 0]
    if name == "bamba":  # one attention layer's KV grows, the Mamba2 layers' state does not
        assert kv[1] == 2 * kv[0] and rec[0] == rec[2] > 0
    if name in ("recurrentgemma", "sliding"):  # windowed attention: the KV cache stops growing
        assert kv[2] == kv[1] > 0
    assert all(k + r > 0 for k, r in zip(kv, rec))


def test_evaluation_leaves_autograd_on(tmp_path, lab_tok):
    """The lab trains in processes that evaluated a model before: generation must not switch
    autograd off for the whole process."""
    from longctx.models import GenParams, load_model

    model = _model()
    model.save_pretrained(tmp_path)
    shutil.copy(lab_tok / "tokenizer.json", tmp_path)
    shutil.copy(lab_tok / "tokenizer_config.json", tmp_path)
    adapter = load_model("hf", path=str(tmp_path))
    adapter.generate(["The grass is green."], GenParams(3))
    assert torch.is_grad_enabled()


def test_unreachable_budget_and_unknown_family_are_errors():
    with pytest.raises(UsageError, match="more than 10%"):
        fit_family("llama", 100, 64, 1_000, 256, IDS)
    with pytest.raises(UsageError, match="unknown lab family 'gpt5'"):
        fit_family("gpt5", 100, 64, 50_000, 256, IDS)


def _tiny_batches(lab_tok, steps):
    from longctx.lab.data import build_batches

    return build_batches([f + ",tokens_to_generate=8" for f in FORMATS[:2]], 128, 160, steps, 4, 7, lab_tok)


def _model(name="llama"):
    from transformers import AutoModelForCausalLM

    cfg, _ = fit_family(name, 15300, 32, 30_000, 160, IDS)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg)


def test_training_data_masks_only_the_answer(lab_tok):
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(str(lab_tok))
    b = _tiny_batches(lab_tok, 3)
    for x, m in zip(b["input_ids"], b["loss_mask"]):
        for row, mask in zip(x.tolist(), m.tolist()):
            answer = [t for t, k in zip(row, mask) if k]
            assert answer[-1] == tok.eos_token_id and len(answer) == 3  # " d", "d", EOS
            text = tok.decode(row)
            assert text.split("[EOS]")[0].endswith("is" + tok.decode(answer[:-1]))


def test_training_is_deterministic_and_resumes_to_the_same_weights(lab_tok, tmp_path):
    from longctx.lab.train import TRAIN_STATE, TrainSettings, train

    batches = _tiny_batches(lab_tok, 8)
    settings = TrainSettings(steps=8, lr=3e-3, warmup=2, seed=0, save_every=4, log_every=2)
    a, b = _model(), _model()
    train(a, batches, tmp_path / "a", settings)
    train(b, batches, tmp_path / "b", settings)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    # Interrupted after step 4 (its checkpoint exists), then rerun: same weights as uninterrupted.
    c = _model()
    half = TrainSettings(steps=8, lr=3e-3, warmup=2, seed=0, save_every=4, log_every=2)

    class Stop(Exception):
        pass

    def crash(step, point):
        if step == 6:
            raise Stop

    with pytest.raises(Stop):
        train(c, batches, tmp_path / "c", half, progress=crash)
    assert (tmp_path / "c" / TRAIN_STATE).exists()
    d = _model()
    train(d, batches, tmp_path / "c", half)
    for (k, va), vd in zip(a.state_dict().items(), d.state_dict().values()):
        assert torch.equal(va, vd), k
    curve = (tmp_path / "c" / "training_curve.csv").read_text().splitlines()
    assert curve[0] == "step,loss,accuracy,cpu_seconds" and len(curve) == 5


@pytest.mark.parametrize("name", ["llama", "bamba", "recurrentgemma", "sliding", "mamba2"])
def test_rope_theta_reaches_every_rotary_layer(name):
    from transformers import AutoModelForCausalLM

    cfg, _ = fit_family(name, 500, 64, 120_000, 256, IDS, rope_theta=500)
    model = AutoModelForCausalLM.from_config(cfg)
    rotary = [m for m in model.modules() if hasattr(m, "inv_freq")]
    if name == "mamba2":  # no rotary layers: the setting does not apply
        assert rotary == []
        return
    assert rotary
    for module in rotary:  # inv_freq[i] = theta^(-2i/dim), over the rotary part of each head
        dim = 2 * module.inv_freq.numel()
        expected = 500.0 ** (-torch.arange(0, dim, 2, dtype=torch.float) / dim)
        assert torch.allclose(module.inv_freq, expected), name
    default, _ = fit_family(name, 500, 64, 120_000, 256, IDS)
    assert default.rope_parameters["rope_theta"] == 10000.0


def test_rope_theta_is_part_of_the_training_identity():
    raw = {"name": "t", "families": ["llama"], "formats": FORMATS}
    base, low = parse_lab_spec(raw), parse_lab_spec(raw | {"rope_theta": 500})
    assert base.rope_theta is None and low.rope_theta == 500.0
    assert base.training_identity() != low.training_identity()


@pytest.mark.parametrize("change, message", [
    ({"colour": 1}, "unknown key 'colour'"),
    ({"rope_theta": -1}, "rope_theta must be a positive number"),
    ({"families": ["llama", "gpt5"]}, "unknown lab family 'gpt5'"),
    ({"families": ["llama", "llama"]}, "must be distinct"),
    ({"train": {"steps": 0}}, "steps must be an integer of at least 1"),
    ({"train": {"lenght": 256}}, "unknown key 'lenght' in train"),
    ({"train": {"length": 64}}, "at least 96 tokens"),
    ({"train": {"min_length": 300}}, "must not exceed train.length"),
    ({"eval": {"depths": [0, 150]}}, "0..100"),
    ({"formats": ["niah_single_3"]}, "number or word values"),
    ({"formats": ["vt"]}, "NIAH tasks"),
    ({"formats": ["niah_single_1:digits=0"]}, "digits"),
])
def test_lab_spec_errors_are_one_line(change, message):
    raw = {"name": "t", "families": ["llama"], "formats": FORMATS} | change
    with pytest.raises(UsageError, match=message):
        parse_lab_spec(raw)


def test_shipped_lab_configs_parse():
    from pathlib import Path

    for path in sorted(Path(__file__).resolve().parents[1].glob("configs/lab/*.yaml")):
        spec = load_lab_spec(path)
        assert spec.families and spec.formats


def test_lab_cli_trains_evaluates_reports_and_resumes(tmp_path, capsys):
    from longctx.cli import main

    spec = tmp_path / "tiny.yaml"
    spec.write_text(
        "name: tiny\nfamilies: [llama, mamba2]\nparams: 30000\nhidden_size: 32\nseed: 3\nworkers: 2\n"
        f"out: {tmp_path / 'lab'}\n"
        f"formats: {json.dumps(FORMATS[:2])}\n"
        "train: {length: 160, min_length: 128, steps: 6, batch: 4}\n"
        f"eval: {{lengths: [128, 256], depths: [0, 100], samples: 2, held_out: {json.dumps(FORMATS[2:])}}}\n")
    assert main(["lab", str(spec)]) == 0
    out = capsys.readouterr().out
    lab = tmp_path / "lab"
    report = lab / "report"
    for f in ("lab.md", "report.html", "tables/lab_models.md", "tables/lab_state.md", "tables/lab_accuracy.csv",
              "tables/lab_distance.md",
              "figures/lab_training_curves.png", "figures/lab_heatmaps.png", "figures/heatmap_llama.png", "figures/heatmap_mamba2.png"):
        assert (report / f).exists(), f
    assert "did not learn" in out  # 6 steps: the report must say so plainly
    for fam in ("llama", "mamba2"):
        mdir = lab / "models" / fam
        done = json.loads((mdir / "done.json").read_text())
        assert done["steps"] == 6 and abs(done["non_embedding_params"] - 30000) <= 3000
        assert (mdir / "model.safetensors").exists() and (mdir / "tokenizer.json").exists()
        state = json.loads((mdir / "state.json").read_text())
        assert set(state) == {"128", "256"} and state["256"]["kv" if fam == "llama" else "recurrent"] > 0
    from longctx.store import RunStore

    db = RunStore(lab / "models" / "llama" / "eval.sqlite")
    rows = db.results()
    db.close()
    assert len(rows) == 3 * 2 * 2 * 2  # formats (2 trained, 1 held out) x depths x lengths x samples
    assert "(held out)" in (report / "tables" / "lab_formats.md").read_text()
    assert {json.loads(r["meta"])["params"]["depth"] for r in rows} == {0, 100}
    # Resume: nothing is retrained or re-evaluated.
    stamp = (lab / "models" / "llama" / "model.safetensors").stat().st_mtime_ns
    assert main(["lab", str(spec)]) == 0
    assert (lab / "models" / "llama" / "model.safetensors").stat().st_mtime_ns == stamp
    # A changed evaluation keeps the weights and starts the evaluation over, the old one set aside.
    assert main(["lab", str(spec), "--eval.lengths=[128]"]) == 0
    assert (lab / "models" / "llama" / "model.safetensors").stat().st_mtime_ns == stamp
    assert (lab / "models" / "llama" / "eval.sqlite.old-1").exists()
    db = RunStore(lab / "models" / "llama" / "eval.sqlite")
    assert {r["length"] for r in db.results()} == {128}
    db.close()
    # Weights trained under another spec are not mixed in silently.
    assert main(["lab", str(spec), "--train.steps=7"]) == 2
    assert "different spec" in capsys.readouterr().err
    assert main(["lab", str(spec), "--train.steps=7", "--families=[llama]", "--new"]) == 0
    assert (tmp_path / "lab.old-1" / "models" / "mamba2" / "done.json").exists()
    shutil.rmtree(tmp_path / "lab.old-1")


def test_accuracy_by_distance_splits_needles_at_the_training_length():
    from longctx.lab.report import accuracy_by_distance

    def row(length, depth, score):
        return {"model": "llama", "length": length, "score": score, "meta": json.dumps({"depth": depth})}

    # At 512 with training length 256: depth 0 and 25 sit 512 and 384 tokens back (far), 50-100 within.
    rows = [row(512, d, s) for d, s in [(0, 0), (0, 0), (25, 1), (50, 1), (75, 1), (100, 1)]]
    rows += [row(512, None, 1), row(1024, 100, 1), {"model": "mamba2", "length": 512, "score": 0,
                                                   "meta": json.dumps({"depth": 0})}]
    acc = accuracy_by_distance(rows, ["llama"], [512, 1024], 256)
    assert acc["llama", 512, True].n == 3 and abs(acc["llama", 512, True].mean - 1 / 3) < 1e-9
    assert acc["llama", 512, False].n == 3 and acc["llama", 512, False].mean == 1
    assert acc["llama", 1024, False].n == 1 and ("llama", 1024, True) not in acc
