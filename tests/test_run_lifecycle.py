"""A run's life beyond the happy path: a failed start binds nothing, a second process is told who
holds the database, Ctrl-C stops cleanly and resumably, a backend that never answers stops the run,
the corpora's location is not the run's identity, and the run records what it ran with."""

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import yaml

from longctx.cli import main
from longctx.config import parse_spec
from longctx.files import exclusive_lock
from longctx.store import RunStore

SPEC = {"name": "life", "models": [{"name": "m", "backend": "mock"}], "tasks": ["niah_single_1", "vt"],
        "lengths": [1024], "samples": 2}


def write(tmp_path, spec, name="spec.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec))
    return path


def run_meta(db) -> dict:
    con = sqlite3.connect(db)
    out = dict(con.execute("SELECT key, value FROM run"))
    con.close()
    return out


def predictions(db) -> int:
    con = sqlite3.connect(db)
    n = con.execute("SELECT COUNT(*) FROM predictions").fetchone()[0]
    con.close()
    return n


def test_a_failed_start_binds_nothing_and_a_refusal_names_the_fields(tmp_path, capsys):
    """A run whose backend never answers stores nothing and binds nothing: the corrected spec
    (another model argument) then runs. A truly different spec is refused with what differs."""
    db = tmp_path / "run.sqlite"
    dead = SPEC | {"db": str(db), "models": [{"name": "m", "backend": "mock", "args": {"fail": "connection refused"}}]}
    assert main(["run", str(write(tmp_path, dead))]) == 2
    assert "every call of model m failed (first: connection refused)" in capsys.readouterr().err
    assert predictions(db) == 0 and "identity" not in run_meta(db)
    assert main(["run", str(write(tmp_path, SPEC | {"db": str(db)}))]) == 0
    assert predictions(db) == 4
    capsys.readouterr()
    assert main(["run", str(write(tmp_path, SPEC | {"db": str(db), "lengths": [1024, 2048], "seed": 1}))]) == 2
    err = capsys.readouterr().err
    assert "lengths was [1024], now [1024, 2048]; seed was 42, now 1" in err and "\n" not in err.strip()


def test_a_second_run_on_a_busy_database_is_told_who_holds_it(tmp_path, capsys):
    db = tmp_path / "run.sqlite"
    with exclusive_lock(db.with_name(db.name + ".lock"), "the run database"):
        assert main(["run", str(write(tmp_path, SPEC | {"db": str(db)}))]) == 2
    assert f"is in use by another longctx process (pid {os.getpid()})" in capsys.readouterr().err
    assert not db.exists()
    assert main(["run", str(write(tmp_path, SPEC | {"db": str(db)}))]) == 0  # released


def test_ctrl_c_stops_with_one_line_and_the_run_resumes(tmp_path):
    """SIGINT in the middle of a run: exit 130, one line, the stored predictions kept; the same
    command then finishes exactly the rest."""
    db = tmp_path / "run.sqlite"
    spec = write(tmp_path, SPEC | {"db": str(db), "samples": 6, "batch": 1,
                                   "models": [{"name": "m", "backend": "mock", "args": {"delay": 0.3}}]})
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "longctx.cli", "run", str(spec)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not db.exists() or predictions(db) < 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == ("longctx: interrupted; every stored prediction is kept (run the same "
                                            "command to resume)") and "Traceback" not in err
    kept = predictions(db)
    assert 2 <= kept < 12
    assert subprocess.run([sys.executable, "-m", "longctx.cli", "run", str(spec)], capture_output=True,
                          env=env).returncode == 0
    assert predictions(db) == 12


def test_where_the_corpora_live_is_not_the_runs_identity_their_content_is_recorded(tmp_path, data_dir, capsys):
    """The same run resumes from another copy of the corpora (`run --data-dir`); the run records
    their sha256, its versions, source revision, host and wall time."""
    db = tmp_path / "run.sqlite"
    spec = write(tmp_path, SPEC | {"db": str(db), "tasks": ["qa_1"], "data_dir": str(data_dir)})
    assert main(["run", str(spec)]) == 0
    elsewhere = tmp_path / "copy"
    elsewhere.symlink_to(data_dir, target_is_directory=True)
    assert main(["run", str(spec), "--data-dir", str(elsewhere)]) == 0
    assert predictions(db) == 2
    meta = run_meta(db)
    squad = hashlib.sha256((data_dir / "squad" / "dev-v2.0.json").read_bytes()).hexdigest()
    assert json.loads(meta["corpora"]) == {"squad": squad}
    assert json.loads(meta["versions"])["longctx"] and json.loads(meta["host"])["cores"] == os.cpu_count()
    assert float(meta["wall_seconds"]) > 0
    source = json.loads(meta["source"])  # the tests run from longctx's own checkout
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                          text=True).stdout.strip()
    assert source["commit"] == head and isinstance(source["dirty"], bool)


def test_a_copy_of_longctx_inside_another_repository_records_no_revision(tmp_path, monkeypatch):
    """An installed copy that sits in some other git work tree has no revision of its own."""
    from longctx import store

    other = tmp_path / "other"
    (other / "src" / "longctx").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(other)], check=True)
    (other / "pyproject.toml").write_text('[project]\nname = "something-else"\n')
    monkeypatch.setattr(store, "__file__", str(other / "src" / "longctx" / "store.py"))
    assert store.source_revision() is None


def test_runs_bound_before_data_dir_left_the_identity_still_resume(tmp_path, data_dir):
    db = tmp_path / "run.sqlite"
    raw = SPEC | {"db": str(db), "data_dir": str(data_dir)}
    store = RunStore(db)
    store.db.execute("INSERT INTO run VALUES ('identity', ?)", (parse_spec(raw).legacy_identity(),))
    store.close()
    assert main(["run", str(write(tmp_path, raw))]) == 0 and predictions(db) == 4


def test_a_log_gets_a_line_per_finished_cell(tmp_path, capsys):
    assert main(["run", str(write(tmp_path, SPEC | {"db": str(tmp_path / "run.sqlite")}))]) == 0
    err = capsys.readouterr().err
    assert "m niah_single_1@1024: 2/4 samples" in err and "m vt@1024: 4/4 samples" in err
