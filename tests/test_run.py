"""The runner and its database: resume computes only what is missing, a changed spec is refused,
the budget guard stores failed rows, and a sweep killed with SIGKILL at 20 random moments loses
and duplicates nothing."""

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import yaml

from longctx.cli import main
from longctx.config import load_spec
from longctx.runner import run
from longctx.store import RunStore


def write_spec(tmp_path, data_dir, **changes):
    spec = {"name": "t", "models": [{"name": "mock", "backend": "mock", "args": {"accuracy": 0.7}}],
            "tasks": ["niah_single_1", "niah_multikey_2", "vt"], "lengths": [1024], "samples": 4, "batch": 3,
            "data_dir": str(data_dir), "db": str(tmp_path / "run.sqlite")}
    spec.update(changes)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def rows(db):
    con = sqlite3.connect(db)
    out = con.execute("SELECT p.model, p.sample_id, p.text, p.error, s.score FROM predictions p "
                      "JOIN scores s USING (model, sample_id) ORDER BY 1, 2").fetchall()
    con.close()
    return out


def test_resume_computes_only_missing_predictions(tmp_path, data_dir, monkeypatch):
    path = write_spec(tmp_path, data_dir)
    assert main(["run", str(path)]) == 0
    first = rows(tmp_path / "run.sqlite")
    assert len(first) == 12 and {r[4] for r in first} >= {0.0, 1.0}
    calls = []
    from longctx.models.mock import MockModel

    original = MockModel.generate
    monkeypatch.setattr(MockModel, "generate", lambda self, prompts, params: calls.append(len(prompts))
                        or original(self, prompts, params))
    assert main(["run", str(path)]) == 0 and calls == []  # nothing to do
    assert main(["run", str(path), "--samples=6"]) == 0  # a larger n extends every cell
    assert sum(calls) == 6
    after = rows(tmp_path / "run.sqlite")
    assert len(after) == 18 and set(first) <= set(after)


def test_a_changed_spec_is_refused_unless_new(tmp_path, data_dir, capsys):
    path = write_spec(tmp_path, data_dir)
    assert main(["run", str(path)]) == 0
    before = rows(tmp_path / "run.sqlite")
    assert main(["run", str(path), "--seed=7"]) == 2
    assert "different spec" in capsys.readouterr().err
    assert rows(tmp_path / "run.sqlite") == before
    assert main(["run", str(path), "--models.0.args.delay=0.001"]) == 0  # speed settings do not invalidate
    assert main(["run", str(path), "--seed=7", "--new"]) == 0
    assert (tmp_path / "run.sqlite.old-1").exists() and rows(tmp_path / "run.sqlite.old-1") == before
    assert len(rows(tmp_path / "run.sqlite")) == 12 and rows(tmp_path / "run.sqlite") != before


def test_budget_guard_stores_failed_rows(tmp_path, data_dir, capsys):
    path = write_spec(tmp_path, data_dir, models=[{"name": "small", "backend": "mock", "args": {"max_context": 600}}])
    assert main(["run", str(path)]) == 0
    got = rows(tmp_path / "run.sqlite")
    assert len(got) == 12 and all(r[3].startswith("over budget") and r[4] is None for r in got)
    assert main(["run", str(path), "--retry-failed"]) == 0
    assert "retrying 12 failed" in capsys.readouterr().out


def test_dry_run_counts_and_writes_nothing(tmp_path, data_dir, capsys):
    path = write_spec(tmp_path, data_dir, lengths=[1024, 2048], samples=5)
    assert main(["run", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "6 cells" in out and "30 samples" in out and f"{3 * 5 * 3072:,} prompt tokens" in out
    assert "prompt tokens/s (measured now on 4 prompts of about" in out  # the mock model, probed
    assert not (tmp_path / "run.sqlite").exists()


def test_sigkill_at_20_random_moments_loses_and_duplicates_nothing(tmp_path, data_dir):
    # 180 predictions of 0.15 s each: longer than 20 kill cycles can finish, so kills land everywhere
    # (during start-up, sample generation, between and inside transactions).
    def spec_args(delay):
        return dict(samples=60, batch=2, models=[{"name": "mock", "backend": "mock",
                                                  "args": {"accuracy": 0.7, "delay": delay}}])

    reference = tmp_path / "ref"
    reference.mkdir()
    ref_spec = load_spec(write_spec(reference, data_dir, **spec_args(0.0)))  # delay changes speed, not outputs
    store = RunStore(ref_spec.db_path)
    store.bind(ref_spec.to_json(), ref_spec.identity())
    run(ref_spec, store)
    store.close()
    want = rows(reference / "run.sqlite")
    assert len(want) == 180

    path = write_spec(tmp_path, data_dir, **spec_args(0.15))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    rng = random.Random(20)
    db = tmp_path / "run.sqlite"
    count = lambda: len(rows(db)) if db.exists() else 0  # noqa: E731
    progress_at_kill, warmup = [], None
    for _ in range(20):
        proc = subprocess.Popen([sys.executable, "-m", "longctx.cli", "run", str(path)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        proc.stdout.readline()  # the plan line: printed once the run database is open
        opened, before = time.time(), count()
        if warmup is None:  # the first cycle measures how long loading takes on this (loaded) machine
            while count() == before and proc.poll() is None:
                time.sleep(0.01)
            warmup = time.time() - opened
        else:  # then kill anywhere from mid-loading to a second and a half into the predictions
            time.sleep(warmup * rng.uniform(0.5, 1.0) + rng.uniform(0.0, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        progress_at_kill.append(count())
    assert subprocess.run([sys.executable, "-m", "longctx.cli", "run", str(path)], env=env,
                          capture_output=True).returncode == 0
    got = rows(tmp_path / "run.sqlite")
    assert got == want  # same predictions and scores, none lost, none twice (primary keys)
    print("predictions stored at each kill:", progress_at_kill)
    assert sum(0 < n < 180 for n in progress_at_kill) >= 10, progress_at_kill  # kills landed mid-sweep
    con = sqlite3.connect(tmp_path / "run.sqlite")
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert con.execute("SELECT COUNT(*) FROM predictions").fetchone()[0] == 180


def test_shipped_configs_are_valid_and_dry_run(capsys):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "configs"
    assert main(["run", str(root / "quickstart.yaml"), "--dry-run", "--no-probe"]) == 0
    assert main(["run", str(root / "huang2024.yaml"), "--dry-run", "--no-probe"]) == 0
    out = capsys.readouterr().out
    assert "12 cells" in out and "1160 cells (8 models x 29 tasks x 5 lengths)" in out
    spec = load_spec(root / "huang2024.yaml")
    from longctx.models.catalog import study_checkpoints

    assert [m.args["path"] for m in spec.models] == [c.name for c in study_checkpoints()]


def test_the_quickstart_needs_no_corpus(tmp_path, monkeypatch, capsys):
    """The README's first command runs on a fresh machine: with no data folder anywhere, its plan
    needs no corpus, and its dry run passes."""
    from pathlib import Path

    from longctx.corpora import DataPaths
    from longctx.preflight import needed_corpora
    from longctx.runner import plan

    monkeypatch.delenv("LONGCTX_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.cache/longctx/data either
    spec = load_spec(Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml")
    assert spec.data_dir is None and needed_corpora(plan(spec).tasks, DataPaths()) == {}
    assert main(["run", str(Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"), "--dry-run",
                 "--no-probe"]) == 0


def test_ray_executor_writes_the_same_rows_as_local(tmp_path, data_dir, monkeypatch):
    """A local Ray runtime on loopback only; ray.shutdown() stops just the processes it started."""
    pytest.importorskip("ray", reason="ray is part of the dev extra")
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    local_dir, ray_dir = tmp_path / "local", tmp_path / "ray"
    local_dir.mkdir(), ray_dir.mkdir()
    assert main(["run", str(write_spec(local_dir, data_dir, samples=5, batch=2))]) == 0
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        path = write_spec(ray_dir, data_dir, samples=5, batch=2)
        assert main(["run", str(path), "--executor", "ray", "--workers", "2"]) == 0
        assert rows(ray_dir / "run.sqlite") == rows(local_dir / "run.sqlite")
        # Resume semantics are the same: a second run has nothing left to do.
        con = sqlite3.connect(ray_dir / "run.sqlite")
        con.execute("DELETE FROM predictions WHERE rowid IN (SELECT rowid FROM predictions LIMIT 4)")
        con.execute("DELETE FROM scores WHERE (model, sample_id) NOT IN (SELECT model, sample_id FROM predictions)")
        con.commit()
        con.close()
        assert main(["run", str(path), "--executor", "ray", "--workers", "2"]) == 0
        assert rows(ray_dir / "run.sqlite") == rows(local_dir / "run.sqlite")
    finally:
        ray.shutdown()


def test_score_recomputes_from_stored_predictions(tmp_path, data_dir, capsys):
    path = write_spec(tmp_path, data_dir)
    assert main(["run", str(path)]) == 0
    db = tmp_path / "run.sqlite"
    want = rows(db)
    con = sqlite3.connect(db)
    con.execute("UPDATE scores SET score = 0.5")  # as if an old metric had been wrong
    con.commit()
    con.close()
    assert main(["score", str(db)]) == 0
    assert "12 scores changed" in capsys.readouterr().out
    assert rows(db) == want
    assert main(["score", str(tmp_path / "nope.sqlite")]) == 2


def test_calls_bring_the_backends_call_size_unless_the_spec_sets_batch(tmp_path, data_dir, monkeypatch):
    """Without `batch`, the runner sends each adapter call as many samples as the backend asks for
    (the hf backend's continuous batching needs more prompts than rows); `batch` overrides it."""
    from longctx.models.mock import MockModel

    sizes = []
    real_generate = MockModel.generate
    monkeypatch.setattr(MockModel, "generate", lambda self, prompts, params: sizes.append(len(prompts))
                        or real_generate(self, prompts, params))
    monkeypatch.setattr(MockModel, "call_size", 5, raising=False)
    for batch, want in ((None, [5, 5, 2]), (3, [3, 3, 3, 3])):
        sizes.clear()
        folder = tmp_path / str(batch)
        folder.mkdir()
        spec = load_spec(write_spec(folder, data_dir, batch=batch, tasks=["niah_single_1"], samples=12))
        store = RunStore(spec.db_path)
        store.bind(spec.to_json(), spec.identity())
        run(spec, store)
        store.close()
        assert sizes == want and len(rows(folder / "run.sqlite")) == 12
    monkeypatch.delattr(MockModel, "call_size")
    spec = load_spec(write_spec(tmp_path, data_dir, batch=None))
    from longctx.runner import call_size
    assert call_size(spec, MockModel()) == 8


def test_a_models_template_setting_shapes_its_prompts(tmp_path, data_dir, monkeypatch, smol):
    """`model_template` on a model overrides the backend's choice: with `chat` the backend gets
    prompts rendered in the tokenizer's chat template, fitted with it to the length."""
    from longctx.models.mock import MockModel
    from longctx.templates import model_wrapper

    sent = []
    real_generate = MockModel.generate
    monkeypatch.setattr(MockModel, "generate", lambda self, prompts, params: sent.extend(prompts)
                        or real_generate(self, prompts, params))
    chat = model_wrapper("chat", smol)
    models = [{"name": "plain", "backend": "mock"}, {"name": "chat", "backend": "mock", "model_template": "chat"}]
    assert main(["run", str(write_spec(tmp_path, data_dir, models=models, tasks=["niah_single_1"]))]) == 0
    plain, chatted = sent[:4], sent[4:]
    assert len(chatted) == 4 and not any(p.startswith(chat.before) for p in plain)
    assert all(p.startswith(chat.before) and chat.after in p for p in chatted)
    assert all(1024 * 0.97 <= smol.count(p) + 128 <= 1024 for p in chatted)


def test_each_model_is_closed_and_dropped_before_the_next_loads(tmp_path, data_dir, monkeypatch):
    """Two models never share the memory: the runner closes an adapter (an HTTP client's
    connections) and drops it once its cells are done, before it loads the next."""
    import weakref

    from longctx import runner
    from longctx.models.mock import MockModel

    loaded, alive_at_load, closed = [], [], []
    real_load = runner.load_model

    def load(backend, **args):
        alive_at_load.append([ref() is not None for ref in loaded])
        adapter = real_load(backend, **args)
        loaded.append(weakref.ref(adapter))
        return adapter

    monkeypatch.setattr(runner, "load_model", load)
    monkeypatch.setattr(MockModel, "close", lambda self: closed.append(self.name), raising=False)
    models = [{"name": "a", "backend": "mock"}, {"name": "b", "backend": "mock"}]
    assert main(["run", str(write_spec(tmp_path, data_dir, models=models, tasks=["niah_single_1"]))]) == 0
    assert alive_at_load == [[], [False]] and len(closed) == 2
    assert all(ref() is None for ref in loaded)
