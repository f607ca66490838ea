"""The README and the docs say what the code does: every relative link resolves, the two set-up
commands stay the README's first lines, and the README's mock example runs as written."""

import re
from pathlib import Path

import pytest

from longctx.cli import main

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", REPO / "CHANGELOG.md", REPO / "benchmarks" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO)) for p in PAGES])
def test_every_relative_link_resolves(page):
    links = [target for target in LINK.findall(page.read_text()) if not re.match(r"[a-z]+:", target)]
    missing = [t for t in links if not (page.parent / t.split("#")[0]).exists()]
    assert not missing, missing


def test_the_readme_opens_with_the_two_set_up_commands():
    lines = (REPO / "README.md").read_text().splitlines()
    assert lines[3].startswith("python3 -m venv .venv") and lines[3].endswith("longctx run configs/quickstart.yaml")
    assert lines[4].endswith("python -m pytest -q tests")
    assert "python -m pytest -q tests" in (REPO / ".ci" / "run").read_text()


def test_the_readmes_mock_example_runs_and_reports(tmp_path, monkeypatch):
    text = (REPO / "README.md").read_text()
    spec = re.search(r"```yaml\n# mock.yaml\n(.*?)```", text, re.S).group(1)
    command = re.search(r"`(longctx run mock.yaml && longctx report runs/mock.sqlite --out mock-report)`", text).group(1)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mock.yaml").write_text(spec)
    for part in command.split(" && "):
        assert main(part.split()[1:]) == 0, part
    assert (tmp_path / "mock-report" / "report.html").exists()
