"""Tables, intervals, effective length and the HTML report on a hand-made run with known answers."""

import shutil
from pathlib import Path
import subprocess

import pytest

from longctx.cli import main
from longctx.errors import UsageError
from longctx.models.base import Completion
from longctx.report.tables import build_tables, interval_table, load_rows, to_csv, to_latex, to_markdown
from longctx.stats import wilson
from longctx.store import RunStore
from longctx.types import Sample

# (model, task, length, scores); Mamba2 is a name the paper's tables use, so --reference applies.
CELLS = [
    ("Mamba2", "niah_single_1", 1024, [1, 1, 1, 0]), ("Mamba2", "vt", 1024, [1, 1, 0, 0]),
    ("Mamba2", "niah_single_1", 2048, [1, 0, 0, 0]), ("Mamba2", "vt", 2048, [0, 0, 0, 0]),
    ("B", "niah_single_1", 1024, [1, 1, 1, 1]), ("B", "vt", 1024, [1, 1, 1, 1]),
    ("B", "niah_single_1", 2048, [1, 1, 1, 1]), ("B", "vt", 2048, [1, 1, 1, 0]),
    ("Mamba2", "niah_single_2:depth=0", 1024, [1, 1]), ("Mamba2", "niah_single_2:depth=50", 1024, [0, 1]),
    ("Mamba2", "niah_single_2:depth=0", 2048, [0, 0]), ("Mamba2", "niah_single_2:depth=50", 2048, [1, 0]),
    ("Mamba2", "essay-word-number:depth=50", 1024, [1, 0, 0, 0]),
]


@pytest.fixture
def run_db(tmp_path):
    store = RunStore(tmp_path / "hand.sqlite")
    store.bind("{}", "hand")
    for model, task, length, scores in CELLS:
        depth = int(task.split("depth=")[1]) if "depth=" in task else None
        samples = [Sample(f"{model}-{task}-{length}-{i}", task, length, i, f"prompt {i}", " answer:", ("42",), 32,
                          "string_match_all", {"params": {"depth": depth} if depth is not None else {},
                                               "token_count": length - 40}) for i in range(len(scores))]
        store.add_samples(model, samples)
        store.add_examples(model, samples[:1])
        store.write_batch(model, samples, [Completion(" 42" if s else " no", length - 40, 2, 0.1) for s in scores],
                          [float(s) for s in scores])
    fail = Sample(f"{model}-fail", "vt", 1024, 9, "p", "", ("1",), 30, "string_match_all", {"params": {}})
    store.add_samples("B", [fail])
    store.write_batch("B", [fail], [Completion("", 5000, 0, 0.0, "over budget: 5000 prompt + 30 new tokens > 4096")],
                      [None])
    store.set_model_info("Mamba2", {"train_context": 1024})
    store.set_model_info("B", {"train_context": 2048})
    store.close()
    return tmp_path / "hand.sqlite"


def by_key(tables):
    return {t.key: t for t in tables}


def test_tables_equal_hand_computed_values(run_db):
    """Two models that ran different task sets (Mamba2 also a niah_single_2 depth sweep): Table 1
    first averages the tasks both ran, then Mamba2's larger set, each labelled with its tasks;
    the sweep counts toward niah_single_2 there and keeps its depth axis in Tables 2-3."""
    rows, info = load_rows([run_db])
    t = by_key(build_tables(rows, info, threshold=0.6))
    # Table 1 over niah_single_1 and vt: mean over tasks of task means. Mamba2 1K: (75 + 50)/2;
    # 2K: (25 + 0)/2. B 2K: (100 + 75)/2 (its failed row is left out).
    assert t["table1"].title.startswith("average of 2 of RULER's 13 tasks (niah_single_1, vt) per length")
    assert t["table1"].columns == ["model", "1K", "2K", "Avg", "n"]
    assert t["table1"].rows == [["B", "100.00", "87.50", "93.75", "4"], ["Mamba2", "62.50", "12.50", "37.50", "4"]]
    # Mamba2's own set adds niah_single_2 (both depths pooled): 1K (75 + 75 + 50)/3, 2K (25 + 25 + 0)/3.
    assert t["table1_2"].title.startswith("average of 3 of RULER's 13 tasks (niah_single_1, niah_single_2, vt)")
    assert t["table1_2"].rows == [["Mamba2", "66.67", "16.67", "41.67", "4"]]
    assert t["task_vt"].rows == [["B", "100.00", "75.00", "4"], ["Mamba2", "50.00", "0.00", "4"]]
    assert t["task_niah_single_2"].rows == [["B", "-", "-", "-"], ["Mamba2", "75.00", "25.00", "4"]]
    # Effective length at threshold 60: B stays above through 2K; Mamba2 only at 1K.
    # AUC over log2 lengths 10..11: B (100 + 87.5)/2, Mamba2 (62.5 + 12.5)/2, and (66.67 + 16.67)/2.
    assert t["effective"].rows == [["B", "2K", "2K", "93.75"], ["Mamba2", "1K", "1K", "37.50"]]
    assert t["effective_2"].rows == [["Mamba2", "1K", "1K", "41.67"]]
    # Depth tables at 1x (1024) and 2x (2048) Mamba2's training length, 2 samples per depth.
    assert t["depth_1x"].rows == [["Mamba2", "1K", "100.00", "50.00", "75.00", "2"]]
    assert t["depth_2x"].rows == [["Mamba2", "2K", "0.00", "50.00", "25.00", "2"]]
    assert t["format_essay-word-number"].rows == [["B", "-", "-"], ["Mamba2", "25.00", "4"]]
    cells = interval_table(rows)
    row = next(r for r in cells.rows if r[:3] == ["Mamba2", "niah_single_1", "1024"])
    w = wilson(3, 4)
    assert row[3:] == ["4", "75.00", f"{100 * w.low:.2f}", f"{100 * w.high:.2f}"]


def test_a_model_missing_a_task_at_one_length_gets_no_average_there(run_db, tmp_path):
    """A cell of Table 1 averages every task of its set or shows '-': never fewer tasks under the
    same label (nor an Avg or AUC over fewer lengths)."""
    store = RunStore(run_db)
    store.db.execute("DELETE FROM predictions WHERE model = 'B' AND sample_id LIKE 'B-vt-2048-%'")
    store.close()
    rows, info = load_rows([run_db])
    t = by_key(build_tables(rows, info, threshold=0.6))
    assert t["table1"].rows[0] == ["B", "100.00", "-", "-", "4"]
    assert t["effective"].rows[0] == ["B", "2K", "1K", "-"]


def test_paired_comparison_by_sample_index(run_db):
    from longctx.report.tables import paired_table

    rows, _ = load_rows([run_db])
    t = paired_table(rows, "B")
    # B vs Mamba2 at niah_single_1@2048: B [1,1,1,1], Mamba2 [1,0,0,0]: 3 discordant pairs, all for
    # B, exact two-sided McNemar p = 2 * (1/2)^3 = 0.25. Four comparisons, p 1, 0.25, 0.5, 0.25:
    # Benjamini-Hochberg q = 0.25 * 4/2 = 0.5 for both 0.25s, 0.5 * 4/3 = 0.667, 1.
    assert "paired comparison with B" in t.title and "over the 4 comparisons" in t.title
    assert ["B", "Mamba2", "niah_single_1", "2048", "4", "+75.00", "0.25", "0.5", "McNemar (exact)"] in t.rows
    assert ["B", "Mamba2", "vt", "1024", "4", "+50.00", "0.5", "0.667", "McNemar (exact)"] in t.rows
    assert ["Mamba2", "B", "vt", "1024", "4", "-50.00", "0.5", "0.667", "McNemar (exact)"] in \
        paired_table(rows, "Mamba2").rows
    with pytest.raises(UsageError, match="not a model of these runs"):
        paired_table(rows, "C")


def test_published_numbers_beside_ours(run_db):
    """The paper's Table 1 averages all 13 tasks: beside a 2-task average it is left out, with the
    reason in the title; per-task tables show it."""
    rows, info = load_rows([run_db])
    t = by_key(build_tables(rows, info, reference=True))
    assert t["table1"].rows[1][1] == "62.50" and "the paper's values are left out" in t["table1"].title
    assert t["task_niah_single_1"].rows[1][1] == "75.00 (66.80)"
    assert t["task_niah_single_1"].rows[0][1] == "100.00"  # B is not a model of the paper


def test_published_table1_beside_a_13_task_average(tmp_path):
    from longctx.tasks import RULER_TASKS

    store = RunStore(tmp_path / "all.sqlite")
    store.bind("{}", "all")
    samples = [Sample(f"s-{task}", task, 1024, 0, "p", "", ("1",), 8, "string_match_all", {"params": {}})
               for task in RULER_TASKS]
    store.add_samples("Mamba2", samples)
    store.write_batch("Mamba2", samples, [Completion(" 1", 900, 1, 0.1)] * len(samples), [1.0] * len(samples))
    store.close()
    rows, info = load_rows([tmp_path / "all.sqlite"])
    t = by_key(build_tables(rows, info, reference=True))
    assert t["table1"].title.startswith("RULER average (all 13 tasks)") and "left out" not in t["table1"].title
    assert t["table1"].rows == [["Mamba2", "100.00 (38.52)", "100.00", "1"]]


def test_runs_are_never_pooled_by_accident(run_db, tmp_path, capsys):
    """The same database twice (also through a link) is refused; two runs whose models share a
    name keep them apart, named by their run."""
    link = tmp_path / "link.sqlite"
    link.symlink_to(run_db)
    for dbs in ([run_db, run_db], [run_db, link]):
        with pytest.raises(UsageError, match="is given twice"):
            load_rows(dbs)
        assert main(["report", *map(str, dbs), "--out", str(tmp_path / "r")]) == 2
    assert "is given twice" in capsys.readouterr().err and not (tmp_path / "r").exists()
    other = tmp_path / "other" / "second.sqlite"
    other.parent.mkdir()
    shutil.copy(run_db, other)
    rows, info = load_rows([run_db, other])
    models = {r["model"] for r in rows}
    assert models == {"hand/B", "hand/Mamba2", "second/B", "second/Mamba2"} and set(info) == {"hand/Mamba2",
                                                                                             "hand/B", "second/Mamba2",
                                                                                             "second/B"}
    assert len(rows) == 2 * len(load_rows([run_db])[0])


def sha(path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_commands_never_write_into_a_foreign_sqlite_file(tmp_path, capsys):
    """report, score and run --db refuse another program's SQLite database, leaving it as it was."""
    import sqlite3

    foreign = tmp_path / "app.sqlite"
    con = sqlite3.connect(foreign)
    con.execute("CREATE TABLE users (name TEXT)")
    con.commit()
    con.close()
    before = sha(foreign)
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: s\nmodels: [{name: m, backend: mock}]\ntasks: [vt]\nlengths: [1024]\nsamples: 1\n")
    for argv in (["report", str(foreign), "--out", str(tmp_path / "r")], ["score", str(foreign)],
                 ["run", str(spec), "--db", str(foreign)]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "is not a longctx run database" in err, err
        assert sha(foreign) == before and not (tmp_path / "r").exists()


def test_a_report_replaces_the_previous_one_whole(run_db, tmp_path, capsys):
    """A second report into the same folder leaves none of the first's files (a stale table that
    a paper \\inputs); a folder with files of its own, or a file, is refused and left alone."""
    out = tmp_path / "r"
    assert main(["report", str(run_db), "--out", str(out)]) == 0
    stale = out / "tables" / "task_qa_1.tex"  # as if the earlier run had had qa_1
    stale.write_text("old numbers")
    assert main(["report", str(run_db), "--out", str(out)]) == 0
    assert not stale.exists() and (out / "tables" / "table1.tex").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".r.")]  # no staging folder left
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    afile = tmp_path / "afile"
    afile.write_text("keep")
    for target, message in ((mine, "holds files this command did not write"), (afile, "is a file"),
                            (Path("/proc/longctx/report"), "cannot write to /proc/longctx")):
        assert main(["report", str(run_db), "--out", str(target)]) == 2
        assert message in capsys.readouterr().err
    assert (mine / "notes.txt").read_text() == "keep" and sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    assert afile.read_text() == "keep"


def test_renderers():
    from longctx.report.tables import Table

    t = Table("x", "a_b table", ["model", "1K"], [["m_1", "50.00"]])
    assert to_markdown(t) == "**a_b table**\n\n| model | 1K |\n|---|---|\n| m_1 | 50.00 |\n"
    assert to_csv(t) == "model,1K\r\nm_1,50.00\r\n"
    assert r"m\_1 & 50.00 \\" in to_latex(t) and r"\caption{a\_b table}" in to_latex(t)


def chromium(url: str, tmp_path) -> tuple[str, str]:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe, "Debian's chromium is needed (apt-get install chromium; .ci/run installs it)"
    out = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
                          f"--user-data-dir={tmp_path / 'chrome'}", "--virtual-time-budget=5000", "--dump-dom", url],
                         capture_output=True, text=True, timeout=120)
    return out.stdout, out.stderr


def test_report_opens_in_headless_chromium_without_console_errors(run_db, tmp_path, capsys):
    """The page loads offline with no console error, every image decodes and every table has rows;
    the explorer's filters (set from the address) select exactly the predictions they name; the
    failures are grouped by reason."""
    out = tmp_path / "report"
    assert main(["report", str(run_db), "--out", str(out), "--reference"]) == 0
    for name in ("heatmap_Mamba2.png", "heatmap_Mamba2.svg", "length_curves.png", "tasks.svg"):
        assert (out / "figures" / name).stat().st_size > 1000
    assert (out / "tables" / "table1.tex").exists()
    page = (out / "report.html").as_uri()
    dom, log = chromium(page, tmp_path)
    assert ":CONSOLE" not in log, log
    assert 'data-check="ok images=4 tables=' in dom  # the headline's curve, then the three figures
    rows, _ = load_rows([run_db])
    assert f'data-explorer="rows={len(rows)}"' in dom
    assert "1 × over budget: N prompt + N new tokens &gt; N</summary>" in dom
    assert "the headline" in dom and "hsl(" in dom  # the summary, and colour-coded scores
    # Mamba2's wrong vt answers: [1,1,0,0] at 1K and [0,0,0,0] at 2K.
    dom, log = chromium(page + "#model=Mamba2&task=vt&verdict=wrong", tmp_path)
    assert 'data-explorer="rows=6"' in dom and ":CONSOLE" not in log
    dom, _ = chromium(page + "#model=B&verdict=failed", tmp_path)
    assert 'data-explorer="rows=1"' in dom
    # The check can fail: a page with a script error is caught.
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>notDefined()</script></body></html>")
    assert ":CONSOLE" in chromium(bad.as_uri(), tmp_path)[1]


def test_the_explorer_holds_every_prediction_with_its_targets_and_kept_prompts(run_db):
    from longctx.report.explorer import _data

    rows, _ = load_rows([run_db])
    data = _data(rows)
    assert len(data["rows"]) == len(rows) and data["truncated"] == 0
    first = next(r for r in data["rows"] if r["m"] == "Mamba2" and r["t"] == "vt" and r["n"] == 1024 and r["i"] == 0)
    assert first["g"] == ["42"] and first["v"] == "right" and data["prompts"][first["p"]] == "prompt 0 answer:"
    assert {r["v"] for r in data["rows"]} == {"right", "wrong", "failed"}


def test_a_run_keeps_the_prompts_of_each_cells_first_wrong_answers(tmp_path):
    import sqlite3

    import yaml

    spec = {"name": "w", "models": [{"name": "m", "backend": "mock", "args": {"accuracy": 0.3}}],
            "tasks": ["niah_single_1"], "lengths": [1024], "samples": 12, "batch": 3, "db": str(tmp_path / "w.sqlite")}
    (tmp_path / "w.yaml").write_text(yaml.safe_dump(spec))
    assert main(["run", str(tmp_path / "w.yaml")]) == 0
    con = sqlite3.connect(tmp_path / "w.sqlite")
    kept = con.execute("SELECT s.idx, sc.score FROM examples JOIN samples s USING (model, sample_id) "
                       "JOIN scores sc USING (model, sample_id) ORDER BY s.idx").fetchall()
    wrong = [i for i, score in con.execute("SELECT s.idx, sc.score FROM scores sc JOIN samples s USING (model, sample_id) "
                                           "ORDER BY s.idx") if score < 1]
    assert [i for i, _ in kept] == sorted({0, 1} | set(wrong[:2])) and len(wrong) >= 2


def test_group_by_any_columns(run_db, tmp_path):
    from longctx.report.tables import group_table

    rows, _ = load_rows([run_db])
    t = group_table(rows, ["model", "depth"])
    # Mamba2 depth 0: [1,1] at 1K and [0,0] at 2K -> 2/4; depth 50: niah_single_2 [0,1] + [1,0] and
    # essay-word-number [1,0,0,0] -> 3/8
    assert ["Mamba2", "0", "4", "50.00"] == t.rows[1][:4] and ["Mamba2", "50", "8", "37.50"] == t.rows[2][:4]
    assert main(["report", str(run_db), "--out", str(tmp_path / "r"), "--by", "model,haystack"]) == 0
    assert (tmp_path / "r" / "tables" / "by_model_haystack.md").exists()


def test_report_errors(run_db, tmp_path, capsys):
    assert main(["report", str(tmp_path / "none.sqlite")]) == 2
    assert "run database not found" in capsys.readouterr().err
    assert main(["report", str(run_db), "--by", "model,colour"]) == 2
    assert "--by takes columns" in capsys.readouterr().err


def test_a_model_has_one_colour_in_every_panel(run_db, tmp_path, monkeypatch):
    """Per-task panels where a model misses a task (B has no niah_single_2) keep each model's
    colour; the length curves use the same colours."""
    from longctx.report import figures

    drawn = []
    monkeypatch.setattr(figures, "_save", lambda fig, out, stem: drawn.append(fig) or [])
    rows, info = load_rows([run_db])
    figures.task_multiples(rows, tmp_path)
    figures.length_curves(rows, info, tmp_path)
    colours = {}
    for fig in drawn:
        for ax in fig.axes:
            for line in ax.get_lines():
                if not line.get_label().startswith("_"):
                    colours.setdefault(line.get_label(), set()).add(line.get_color())
    assert set(colours) == {"B", "Mamba2"} and all(len(c) == 1 for c in colours.values())
    assert colours["B"] != colours["Mamba2"]
