"""Determinism, identity, RULER-compat switches, chat templates, the CLI and its errors."""

import hashlib
import json
import subprocess
import sys

import pytest

from longctx.cli import main
from longctx.corpora import DataPaths
from longctx.tasks import RULER_TASKS, generate_samples, parse_task
from longctx.tasks.base import GenContext, GenOptions

GEN = [sys.executable, "-m", "longctx.cli", "generate", "--tasks", "ruler", "--lengths", "1024", "--n", "2",
       "--no-cache"]


def _digest(folder):
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*.jsonl")):
        h.update(p.relative_to(folder).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def test_byte_identical_across_two_processes(tmp_path, data_dir):
    for name in ("a", "b"):
        subprocess.run(GEN + ["--data-dir", str(data_dir), "--out", str(tmp_path / name)], check=True,
                       capture_output=True)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    rows = [json.loads(x) for x in (tmp_path / "a/1024/niah_single_1/validation.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == [0, 1]  # real indices (RULER stored an answer offset here)
    assert {"index", "input", "outputs", "length", "answer_prefix", "id"} <= rows[0].keys()
    assert rows[0]["id"] != rows[1]["id"]


def test_samples_differ_unless_ruler_compat(smol, data_dir):
    def slots(compat):
        ctx = GenContext(smol, GenOptions(ruler_compat=compat), DataPaths(data_dir))
        return [(s.meta["num_docs"], s.meta["gold_slots"][0])
                for s in generate_samples(RULER_TASKS["qa_1"], 2048, range(12), ctx)]

    assert len({slot for _, slot in slots(False)}) > 1
    by_size: dict = {}
    for n_docs, slot in slots(True):  # RULER's fixed shuffle: one gold slot per document count
        by_size.setdefault(n_docs, set()).add(slot)
    assert all(len(v) == 1 for v in by_size.values())

    def openings(compat):
        ctx = GenContext(smol, GenOptions(ruler_compat=compat), DataPaths(data_dir))
        return {s.prompt.split("afterwards.\n")[1][:200] for s in generate_samples(RULER_TASKS["niah_single_2"], 1024, range(4), ctx)}

    assert len(openings(False)) == 4 and len(openings(True)) == 1


def test_chat_template_wraps_and_keeps_system_prompt_intact(smol, data_dir):
    ctx = GenContext(smol, GenOptions(model_template="chat"), DataPaths(data_dir))
    (s,) = generate_samples(RULER_TASKS["niah_single_1"], 1024, range(1), ctx)
    assert s.prompt.startswith("<|im_start|>system\nYou are a helpful")
    assert s.prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert s.answer_prefix.startswith(" The special magic number for")
    ctx = GenContext(smol, GenOptions(model_template="chat", ruler_compat=True), DataPaths(data_dir))
    (c,) = generate_samples(RULER_TASKS["niah_single_1"], 1024, range(1), ctx)
    assert "You is a helpful" in c.prompt  # RULER's blind rewrite of the whole wrapped prompt


def test_2024_era_keeps_prefix_in_input(smol, data_dir):
    ctx = GenContext(smol, GenOptions(era="2024"), DataPaths(data_dir))
    (s,) = generate_samples(RULER_TASKS["vt"], 2048, range(1), ctx)
    assert s.answer_prefix == "" and "are assgined the value" in s.prompt


def test_remove_newline_tab_equals_ruler_whitespace_collapse(smol, data_dir):
    ctx = GenContext(smol, GenOptions(remove_newline_tab=True), DataPaths(data_dir))
    for name in ("niah_single_1", "vt", "qa_1"):
        (s,) = generate_samples(RULER_TASKS[name], 1024, range(1), ctx)
        full = s.prompt + s.answer_prefix
        assert full == " ".join(full.split())
        assert smol.count(full) == s.meta["token_count"]


def test_task_spec_parsing_and_suites():
    spec = parse_task("niah:haystack=needle,key_type=uuids,value_type=words,depth=50")
    assert spec.get("depth") == 50 and spec.get("haystack") == "needle"


@pytest.mark.parametrize("argv, message", [
    (["generate", "--tasks", "nope"], "unknown task"),
    (["generate", "--lengths", "abc"], "--lengths"),
    (["generate", "--n", "0"], "--n"),
    (["generate", "--tokenizer", "/does/not/exist"], "tokenizer not found"),
    (["generate", "--tasks", "niah:haystack=lake"], "haystack"),
    (["generate", "--model-template", "nope"], "unknown model template"),
])
def test_cli_errors_are_one_line_and_exit_2(argv, message, capsys, data_dir, tmp_path):
    code = main(argv + ["--data-dir", str(data_dir), "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1


def test_missing_data_names_the_download_command(capsys, tmp_path):
    code = main(["generate", "--tasks", "qa_1", "--lengths", "2048", "--n", "1", "--data-dir", str(tmp_path),
                 "--out", str(tmp_path / "o"), "--no-cache"])
    err = capsys.readouterr().err
    assert code == 2 and "longctx data download" in err


@pytest.mark.parametrize("length", [1024, 4096])
def test_a_sample_is_the_same_generated_alone_or_after_others(smol, data_dir, length):
    """The fit searches from the previous sample's size; what it draws must not depend on that
    (a cache extended from m to n samples generates only the new ones)."""
    names = list(RULER_TASKS) if length == 1024 else ["niah_single_2", "niah_multikey_2", "niah_multikey_3"]
    ctx = GenContext(smol, GenOptions(), DataPaths(data_dir))  # each call starts its own search state
    for name in names:
        spec = RULER_TASKS[name]
        batch = generate_samples(spec, length, range(6), ctx)
        for i in (2, 5):
            assert generate_samples(spec, length, range(i, i + 1), ctx)[0].prompt == batch[i].prompt, (name, i)
