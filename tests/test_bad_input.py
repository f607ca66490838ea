"""Malformed specs, arguments and data files: each gives one clear line on stderr and exit code
2, never a traceback, and an existing run database is left exactly as it was."""

import sqlite3

import pytest
import yaml

from longctx.cli import main

GOOD = {"name": "t", "models": [{"name": "mock", "backend": "mock"}], "tasks": ["niah_single_1"],
        "lengths": [1024], "samples": 2}


def drop(key):
    return lambda s: {k: v for k, v in s.items() if k != key}


def put(**kv):
    return lambda s: s | kv


def model(**kv):
    return lambda s: s | {"models": [s["models"][0] | kv]}


CASES = [
    # (id, change to the spec, or raw YAML text, extra CLI arguments, expected words in the message)
    ("unknown-key", put(lenghts=[1024]), [], "unknown key 'lenghts'"),
    ("no-models", drop("models"), [], "needs 'models'"),
    ("no-tasks", drop("tasks"), [], "needs 'tasks'"),
    ("no-lengths", drop("lengths"), [], "needs 'lengths'"),
    ("models-not-list", put(models="hf"), [], "every item of models must be a mapping"),
    ("model-unknown-key", model(weights="x"), [], "unknown key 'weights' in models[0]"),
    ("bad-backend", model(backend="tgi"), [], "models[0].backend must be one of"),
    ("args-not-mapping", model(args=[1, 2]), [], "args must be a mapping"),
    ("backend-unknown-option", model(args={"bogus": 1}), [], "has no option bogus"),
    ("backend-missing-option", model(backend="openai", args={"model": "x"}), [], "needs the option 'base_url'"),
    ("unknown-alias", model(args={"tokenizer": "@nope"}), [], "unknown model alias"),
    ("template-twice", model(backend="openai", model_template="chat",
                             args={"base_url": "http://127.0.0.1:9", "model": "m", "endpoint": "chat"}), [], "twice"),
    ("dup-model-names", put(models=[{"name": "a", "backend": "mock"}, {"name": "a", "backend": "mock"}]), [], "unique"),
    ("unknown-task", put(tasks=["niah_single_9"]), [], "unknown task 'niah_single_9'"),
    ("task-param-syntax", put(tasks=["niah:depth"]), [], "expected key=value"),
    ("task-unknown-param", put(tasks=["niah_single_1:color=red"]), [], "unknown parameter 'color'"),
    ("task-bad-depth", put(tasks=["niah_single_1:depth=120"]), [], "depth must be a number in 0..100"),
    ("task-bad-haystack", put(tasks=["niah:haystack=poems"]), [], "haystack must be one of"),
    ("task-bad-hops", put(tasks=["vt:num_hops=0"]), [], "num_hops must be a positive integer"),
    ("task-bad-alpha", put(tasks=["fwe:alpha=1"]), [], "alpha must be a number above 1"),
    ("task-bad-dataset", put(tasks=["qa:dataset=nq"]), [], "dataset must be squad or hotpotqa"),
    ("length-text", put(lengths=["long"]), [], "lengths must be token counts"),
    ("length-tiny", put(lengths=[10]), [], "too small"),
    ("samples-zero", put(samples=0), [], "samples must be at least 1"),
    ("samples-text", put(samples="five"), [], "samples must be int"),
    ("seed-text", put(seed="x"), [], "seed must be int"),
    ("batch-zero", put(batch=0), [], "batch must be at least 1"),
    ("depth-range", put(depths=[150]), [], "depths are percentages"),
    ("depths-without-needles", put(tasks=["vt"], depths=[50]), [], "depths apply to needle tasks"),
    ("unknown-format", put(formats=["essay-uuid-word"]), [], "unknown format"),
    ("generation-not-mapping", put(generation="main"), [], "generation must be a mapping"),
    ("generation-unknown", put(generation={"temperature": 0}), [], "unknown generation setting 'temperature'"),
    ("generation-era", put(generation={"era": "2023"}), [], "era must be 'main' or '2024'"),
    ("generation-flag", put(generation={"ruler_compat": "yes"}), [], "ruler_compat must be true or false"),
    ("name-slash", put(name="a/b"), [], "name must be a non-empty word"),
    ("yaml-syntax", "models: [\n  - {backend: mock", [], "not valid YAML"),
    ("yaml-list", "- 1\n- 2\n", [], "must be a YAML mapping"),
    ("override-no-value", None, ["--samples"], "neither an option of run nor a --key=value"),
    ("override-bad-index", None, ["--models.3.args.x=1"], "does not exist"),
    ("override-bad-value", None, ["--samples=[1"], "cannot read"),
    ("override-type", None, ["--lengths=abc"], "lengths must be token counts"),
    ("changed-spec", None, ["--seed=1"], "different spec"),
    ("qa-too-short", put(tasks=["qa_2"], lengths=[128], db="{tmp}/short.sqlite"), [], "qa_2"),
    # Checked for every model before the run database is touched (nothing of the first model runs).
    ("model-path-missing", model(backend="hf", args={"path": "{tmp}/nowhere"}), [], "path {tmp}/nowhere not found"),
    ("model-path-not-checkpoint", model(backend="hf", args={"path": "{tmp}/empty"}), [], "without a config.json"),
    ("gguf-not-gguf", model(backend="hf", args={"path": "{tmp}/junk.gguf"}), [], "is not a GGUF file"),
    ("tokenizer-folder-empty", model(args={"tokenizer": "{tmp}/empty"}), [], "holds no tokenizer files"),
    ("second-model-typo", put(models=[{"name": "a", "backend": "mock"},
                                      {"name": "b", "backend": "hf", "args": {"path": "./no/such/dir"}}]), [],
     "model 'b': path ./no/such/dir not found"),
    ("length-beyond-memory", put(lengths=[1_000_000_000]), [], "GiB to generate"),
    ("db-unwritable", put(db="/proc/longctx/run.sqlite"), [], "cannot write the run database"),
    ("db-is-folder", put(db="{tmp}/empty"), [], "is a folder"),
    ("ray-unreachable", None, ["--executor=ray", "--address=127.0.0.1:9"], "cannot reach the Ray cluster at 127.0.0.1:9"),
    ("ray-address-syntax", None, ["--executor=ray", "--address=somewhere"], "--address must look like HOST:PORT"),
    ("server-down", model(backend="openai", args={"base_url": "http://127.0.0.1:9/v1", "model": "m", "max_retries": 0,
                                                  "tokenizer": "@smollm2"}), ["--db={tmp}/down.sqlite"],
     "every call of model mock failed"),
    ("backend-never-answers", model(args={"fail": "connection refused"}, name="dead"), ["--db={tmp}/dead.sqlite"],
     "every call of model dead failed (first: connection refused)"),
]


@pytest.fixture(scope="module")
def existing_run(tmp_path_factory, data_dir):
    """A finished run that every bad command points at, and its rows."""
    root = tmp_path_factory.mktemp("existing")
    spec = GOOD | {"db": str(root / "run.sqlite"), "data_dir": str(data_dir)}
    (root / "good.yaml").write_text(yaml.safe_dump(spec))
    assert main(["run", str(root / "good.yaml")]) == 0
    return root, spec, snapshot(root / "run.sqlite")


def snapshot(db):
    con = sqlite3.connect(db)
    out = (con.execute("SELECT * FROM predictions ORDER BY sample_id").fetchall(),
           con.execute("SELECT * FROM run ORDER BY key").fetchall(), con.execute("PRAGMA integrity_check").fetchone())
    con.close()
    return out


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_spec_is_one_line_exit_2_and_harmless(case, existing_run, tmp_path, capsys):
    _, change, args, message = case
    root, good, before = existing_run
    if isinstance(change, str):
        text = change
    else:
        text = yaml.safe_dump((change or (lambda s: s))(dict(good))).replace("{tmp}", str(tmp_path))
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file")
    assert main(["run", str(path), *[a.replace("{tmp}", str(tmp_path)) for a in args]]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("longctx: error:") and "\n" not in err and message.replace("{tmp}", str(tmp_path)) in err, err
    assert snapshot(root / "run.sqlite") == before


def test_bad_files_and_paths(tmp_path, capsys, data_dir):
    assert main(["run", str(tmp_path / "missing.yaml")]) == 2
    assert "run spec not found" in capsys.readouterr().err
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database" * 100)
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump(GOOD | {"db": str(junk), "data_dir": str(data_dir)}))
    assert main(["run", str(spec)]) == 2
    assert "is not a longctx run database" in capsys.readouterr().err
    assert junk.read_bytes() == b"this is not a database" * 100
    spec.write_text(yaml.safe_dump(GOOD | {"tasks": ["niah_single_2"], "db": str(tmp_path / "r.sqlite"),
                                           "data_dir": str(tmp_path / "empty")}))
    assert main(["run", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "longctx data download" in err and err.count("\n") == 1
    assert len(CASES) + 3 >= 30
