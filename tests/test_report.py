"""Tables, intervals, effective length and the HTML report on a hand-made run with known answers."""

import shutil
import subprocess

import pytest

from longctx.cli import main
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
    rows, info = load_rows([run_db])
    t = by_key(build_tables(rows, info, threshold=0.6))
    # Table 1: mean over tasks of task means. Mamba2 1K: (75 + 50)/2; 2K: (25 + 0)/2. B 2K: (100 + 75)/2.
    assert t["table1"].columns == ["model", "1K", "2K", "Avg"]
    assert t["table1"].rows == [["B", "100.00", "87.50", "93.75"], ["Mamba2", "62.50", "12.50", "37.50"]]
    assert t["task_vt"].rows == [["B", "100.00", "75.00"], ["Mamba2", "50.00", "0.00"]]
    # Effective length at threshold 60: B stays above through 2K; Mamba2 only at 1K.
    # AUC over log2 lengths 10..11: B (100 + 87.5)/2, Mamba2 (62.5 + 12.5)/2.
    assert t["effective"].rows == [["B", "2K", "2K", "93.75"], ["Mamba2", "1K", "1K", "37.50"]]
    # Depth tables at 1x (1024) and 2x (2048) Mamba2's training length; the failed row is left out.
    assert t["depth_1x"].rows == [["Mamba2", "1K", "100.00", "50.00", "75.00"]]
    assert t["depth_2x"].rows == [["Mamba2", "2K", "0.00", "50.00", "25.00"]]
    assert t["format_essay-word-number"].rows == [["B", "-"], ["Mamba2", "25.00"]]
    cells = interval_table(rows)
    row = next(r for r in cells.rows if r[:3] == ["Mamba2", "niah_single_1", "1024"])
    w = wilson(3, 4)
    assert row[3:] == ["4", "75.00", f"{100 * w.low:.2f}", f"{100 * w.high:.2f}"]


def test_paired_comparison_by_sample_index(run_db):
    from longctx.report.tables import paired_table

    rows, _ = load_rows([run_db])
    t = paired_table(rows)
    # B vs Mamba2 at niah_single_1@2048: B [1,1,1,1], Mamba2 [1,0,0,0]: 3 discordant pairs, all for
    # B, exact two-sided McNemar p = 2 * (1/2)^3 = 0.25.
    assert ["B", "Mamba2", "niah_single_1", "2048", "4", "+75.00", "0.25", "McNemar"] in t.rows
    assert ["B", "Mamba2", "vt", "1024", "4", "+50.00", "0.5", "McNemar"] in t.rows


def test_published_numbers_beside_ours(run_db):
    rows, info = load_rows([run_db])
    t = by_key(build_tables(rows, info, reference=True))
    assert t["table1"].rows[1][1] == "62.50 (38.52)"  # the paper's Mamba2 RULER average at 1K
    assert t["task_niah_single_1"].rows[1][1] == "75.00 (66.80)"
    assert t["table1"].rows[0][1] == "100.00"  # B is not a model of the paper


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
    out = tmp_path / "report"
    assert main(["report", str(run_db), "--out", str(out), "--reference"]) == 0
    for name in ("heatmap_Mamba2.png", "heatmap_Mamba2.svg", "length_curves.png", "tasks.svg"):
        assert (out / "figures" / name).stat().st_size > 1000
    assert (out / "tables" / "table1.tex").exists()
    dom, log = chromium((out / "report.html").as_uri(), tmp_path)
    assert ":CONSOLE" not in log, log
    assert 'data-check="ok images=3 tables=' in dom  # every image decoded, every table has rows
    assert "over budget: 5000 prompt" in dom and "<details>" in dom
    # The check can fail: a page with a script error is caught.
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>notDefined()</script></body></html>")
    assert ":CONSOLE" in chromium(bad.as_uri(), tmp_path)[1]


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
