"""The run database: one SQLite file (WAL mode) per run, the interface between stages.

It holds the resolved spec (with package versions and the git revision), the sample index (ids
and metadata; prompt texts stay in the sample cache), predictions and scores. Each batch of
predictions is written with its scores in one transaction, so a crash at any instant loses at
most the batch in flight and never leaves a prediction without its score. Done = the row exists.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Iterable, Sequence

from .errors import UsageError
from .models.base import Completion
from .types import Sample

SCHEMA = """
CREATE TABLE IF NOT EXISTS run (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS samples (
    model TEXT NOT NULL, sample_id TEXT NOT NULL, task TEXT NOT NULL, length INTEGER NOT NULL,
    idx INTEGER NOT NULL, metric TEXT NOT NULL, targets TEXT NOT NULL, tokens_to_generate INTEGER NOT NULL,
    meta TEXT NOT NULL, PRIMARY KEY (model, sample_id));
CREATE TABLE IF NOT EXISTS predictions (
    model TEXT NOT NULL, sample_id TEXT NOT NULL, text TEXT NOT NULL, prompt_tokens INTEGER,
    output_tokens INTEGER, seconds REAL NOT NULL, error TEXT, created REAL NOT NULL,
    PRIMARY KEY (model, sample_id));
CREATE TABLE IF NOT EXISTS examples (
    model TEXT NOT NULL, sample_id TEXT NOT NULL, prompt TEXT NOT NULL, PRIMARY KEY (model, sample_id));
CREATE TABLE IF NOT EXISTS scores (
    model TEXT NOT NULL, sample_id TEXT NOT NULL, metric TEXT NOT NULL, score REAL,
    PRIMARY KEY (model, sample_id));
CREATE TABLE IF NOT EXISTS diagnostics (
    diagnostic TEXT NOT NULL, model TEXT NOT NULL, sample_id TEXT NOT NULL, rows TEXT NOT NULL,
    PRIMARY KEY (diagnostic, model, sample_id));
"""


TABLES = {"run", "samples", "predictions", "examples", "scores"}
LATER_TABLES = {"diagnostics"}  # absent from runs made before `longctx why` existed


class RunStore:
    """One run database. `mode`: "create" (`run`: created if absent; an existing file must be a
    longctx run or empty), "write" (`score`: an existing longctx run, opened for writing) or "read"
    (`report`, dry runs: an existing longctx run, opened read-only, so nothing can change it)."""

    def __init__(self, path: Path, mode: str = "create"):
        self.path = Path(path)
        self._binding: tuple[str, str, dict] | None = None  # recorded with the first prediction (bind)
        if mode != "create" and not self.path.is_file():
            raise UsageError(f"run database not found: {self.path}")
        try:
            if mode == "create":
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.db = sqlite3.connect(str(self.path), timeout=30, isolation_level=None)
            else:
                uri = f"file:{self.path.resolve()}?mode={'ro' if mode == 'read' else 'rw'}"
                self.db = sqlite3.connect(uri, uri=True, timeout=30, isolation_level=None)
            self._check_is_a_run(created=mode == "create")
            if mode != "read":
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable against process crashes
            if mode == "create":
                self.db.executescript(SCHEMA)
        except sqlite3.DatabaseError as e:
            raise UsageError(f"{self.path} is not a longctx run database ({e})") from None
        except OSError as e:
            raise UsageError(f"cannot open the run database {self.path}: {e.strerror or e}") from None

    def _check_is_a_run(self, created: bool) -> None:
        """Refuse a file that is some other program's SQLite database (before anything is written
        to it); an empty file is a run yet to start only where it may be created."""
        tables = {name for (name,) in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables and created:
            return
        if not TABLES <= tables or tables - TABLES - LATER_TABLES:
            other = sorted(tables - TABLES - LATER_TABLES)
            what = f"it holds other tables ({', '.join(other[:5])})" if other else "it has no longctx tables"
            raise UsageError(f"{self.path} is not a longctx run database: {what}; give another path")

    def close(self) -> None:
        self.db.close()

    # -- the run's identity -------------------------------------------------------------
    def meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM run WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def bind(self, spec_json: str, identity: str, provenance: dict | None = None) -> None:
        """Record the run's spec and identity (and what it ran with: `provenance`) with the first
        prediction stored, not before: a run that fails before storing one (a wrong path, a
        missing corpus) binds nothing, so the corrected spec is not refused as another run's.
        The caller checks a stored identity first (`runner.claim`)."""
        self._binding = (spec_json, identity, provenance or {})
        if self.meta("identity") is not None:  # already bound: only the latest spec is noted now
            with self.transaction():
                self._write_binding()

    def _write_binding(self) -> None:
        """(Inside a transaction.) The spec of the first session is kept; later sessions' latest
        spec goes to last_spec."""
        spec_json, identity, provenance = self._binding
        rows = [("identity", identity), ("spec", spec_json), ("created", str(time.time())),
                *((key, json.dumps(value)) for key, value in provenance.items())]
        self.db.executemany("INSERT OR IGNORE INTO run VALUES (?, ?)", rows)
        self.db.execute("INSERT OR REPLACE INTO run VALUES ('last_spec', ?)", (spec_json,))
        self._binding = None

    def add_wall_time(self, seconds: float) -> None:
        """Add a session's wall time to the run's total."""
        with self.transaction():
            total = float(self.meta("wall_seconds") or 0) + seconds
            self.db.execute("INSERT OR REPLACE INTO run VALUES ('wall_seconds', ?)", (f"{total:.1f}",))

    # -- writes -----------------------------------------------------------------------
    def transaction(self):
        return _Transaction(self.db)

    def add_samples(self, model: str, samples: Iterable[Sample]) -> None:
        rows = [(model, s.id, s.task, s.length, s.index, s.metric, json.dumps(list(s.targets)), s.tokens_to_generate,
                 json.dumps(s.meta, sort_keys=True)) for s in samples]
        with self.transaction():
            self.db.executemany("INSERT OR IGNORE INTO samples VALUES (?,?,?,?,?,?,?,?,?)", rows)

    def add_examples(self, model: str, samples: Iterable[Sample]) -> None:
        """A few full prompts per cell, for reports (all other prompt texts stay in the sample cache)."""
        with self.transaction():
            self.db.executemany("INSERT OR IGNORE INTO examples VALUES (?,?,?)",
                                [(model, s.id, s.full_prompt) for s in samples])

    def set_model_info(self, model: str, info: dict) -> None:
        with self.transaction():
            self.db.execute("INSERT OR REPLACE INTO run VALUES (?, ?)", (f"model:{model}", json.dumps(info)))

    def model_info(self) -> dict[str, dict]:
        return {k[len("model:"):]: json.loads(v) for k, v in self.db.execute(
            "SELECT key, value FROM run WHERE key LIKE 'model:%'")}

    def write_batch(self, model: str, samples: Sequence[Sample], completions: Sequence[Completion],
                    scores: Sequence[float | None]) -> None:
        """Predictions and their scores, all or nothing."""
        now = time.time()
        with self.transaction():
            if self._binding is not None:
                self._write_binding()
            self.db.executemany("INSERT INTO predictions VALUES (?,?,?,?,?,?,?,?)", [
                (model, s.id, c.text, c.prompt_tokens, c.output_tokens, c.seconds, c.error, now)
                for s, c in zip(samples, completions)])
            self.db.executemany("INSERT OR REPLACE INTO scores VALUES (?,?,?,?)", [  # derived data
                (model, s.id, s.metric, sc) for s, sc in zip(samples, scores)])

    def forget_failures(self) -> int:
        """Delete failed predictions (and their scores) so the next run retries them."""
        with self.transaction():
            self.db.execute("DELETE FROM scores WHERE (model, sample_id) IN "
                            "(SELECT model, sample_id FROM predictions WHERE error IS NOT NULL)")
            return self.db.execute("DELETE FROM predictions WHERE error IS NOT NULL").rowcount

    def rescore(self) -> tuple[int, int]:
        """Recompute every score from the stored prediction and targets with today's metrics
        (a metric fix never needs re-inference). Returns (rows scored, rows whose score changed)."""
        from .scoring import score

        rows = self.db.execute(
            "SELECT p.model, p.sample_id, p.text, p.error, s.metric, s.targets, sc.score FROM predictions p "
            "JOIN samples s USING (model, sample_id) LEFT JOIN scores sc USING (model, sample_id)").fetchall()
        updates, changed = [], 0
        for model, sid, text, error, metric, targets, old in rows:
            new = None if error is not None else score(metric, text, json.loads(targets))
            changed += new != old
            updates.append((model, sid, metric, new))
        with self.transaction():
            self.db.executemany("INSERT OR REPLACE INTO scores VALUES (?,?,?,?)", updates)
        return len(updates), changed

    # -- reads ------------------------------------------------------------------------
    def done_ids(self, model: str, ids: Sequence[str]) -> set[str]:
        done: set[str] = set()
        for start in range(0, len(ids), 500):
            part = ids[start:start + 500]
            marks = ",".join("?" * len(part))
            done |= {r[0] for r in self.db.execute(
                f"SELECT sample_id FROM predictions WHERE model = ? AND sample_id IN ({marks})", (model, *part))}
        return done

    # -- diagnostics (`longctx why`) ------------------------------------------------------
    def add_diagnostic(self, diagnostic: str, model: str, sample_id: str, rows: list[dict]) -> None:
        """A diagnostic's rows for one sample ("" for the model as a whole), all or nothing."""
        with self.transaction():
            self.db.execute("INSERT OR REPLACE INTO diagnostics VALUES (?,?,?,?)",
                            (diagnostic, model, sample_id, json.dumps(rows)))

    def diagnosed(self, diagnostic: str, model: str) -> set[str]:
        """The sample ids (and "" for the model) a diagnostic has rows for."""
        return {r[0] for r in self.db.execute(
            "SELECT sample_id FROM diagnostics WHERE diagnostic = ? AND model = ?", (diagnostic, model))}

    def diagnostics(self) -> list[dict]:
        """Every diagnostic row, with its model, sample and the sample's task and length ([] for a
        run made before diagnostics existed)."""
        if not self.db.execute("SELECT 1 FROM sqlite_master WHERE name = 'diagnostics'").fetchone():
            return []
        out = []
        for diagnostic, model, sid, rows, task, length, meta in self.db.execute(
                "SELECT d.diagnostic, d.model, d.sample_id, d.rows, s.task, s.length, s.meta FROM diagnostics d "
                "LEFT JOIN samples s USING (model, sample_id) ORDER BY d.diagnostic, d.model, s.task, s.length"):
            depth = json.loads(meta).get("params", {}).get("depth") if meta else None
            out += [{"diagnostic": diagnostic, "model": model, "sample_id": sid, "task": task, "length": length,
                     "depth": depth, **row} for row in json.loads(rows)]
        return out

    def prediction_count(self, model: str | None = None) -> int:
        """Predictions stored, of one model or of all."""
        if model is None:
            return self.db.execute("SELECT COUNT(*) FROM predictions").fetchone()[0]
        return self.db.execute("SELECT COUNT(*) FROM predictions WHERE model = ?", (model,)).fetchone()[0]

    def results(self) -> list[dict]:
        """One row per prediction, joined with its sample (targets, as JSON), its score and the
        prompt the run kept for it (`add_examples`; None for most)."""
        cur = self.db.execute(
            "SELECT p.model, s.task, s.length, s.idx, p.sample_id, p.text, p.prompt_tokens, p.output_tokens, "
            "p.seconds, p.error, sc.score, s.meta, s.targets, e.prompt AS kept_prompt FROM predictions p "
            "JOIN samples s USING (model, sample_id) LEFT JOIN scores sc USING (model, sample_id) "
            "LEFT JOIN examples e USING (model, sample_id) ORDER BY p.model, s.task, s.length, s.idx")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row)) for row in cur]

    def throughput(self, model: str) -> float | None:
        """A model's measured prompt tokens per second over this run's predictions, if any."""
        tokens, seconds = self.db.execute(
            "SELECT SUM(prompt_tokens), SUM(seconds) FROM predictions WHERE error IS NULL AND model = ?",
            (model,)).fetchone()
        return tokens / seconds if tokens and seconds else None


class _Transaction:
    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, kind, value, tb):
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")
        return False


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("longctx", "torch", "transformers", "tokenizers", "llama-cpp-python", "vllm", "httpx"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def source_revision() -> dict | None:
    """The commit longctx runs from, and whether its files differ from it, only when the package
    is imported from its own checkout (src/longctx in a git work tree whose pyproject names
    longctx); an installed copy inside some other repository has no revision of its own."""
    root = Path(__file__).resolve().parents[2]
    try:
        if 'name = "longctx"' not in (root / "pyproject.toml").read_text():
            return None
        def git(*args):
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
        top = git("rev-parse", "--show-toplevel")
        if top.returncode or Path(top.stdout.strip()).resolve() != root:
            return None
        head = git("rev-parse", "HEAD").stdout.strip()
        dirty = bool(git("status", "--porcelain", "--untracked-files=no").stdout.strip())
        return {"commit": head, "dirty": dirty} if head else None
    except (OSError, subprocess.SubprocessError):
        return None
