"""Every command block of README.md and distill/README.md marked `<!-- checked -->` runs as written and prints
what the docs show (lines with a time or a rate in them excepted: they vary from run to run)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from xtalign.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "distill/README.md")
BLOCK = re.compile(r"<!-- checked -->\s*\n```[a-z]*\n(.*?)```", re.S)
VARIES = re.compile(r"\d[\d,.]*\s*(s|ms|min)\b|/s\b|tokens/s|seconds|\bin \d")


def _blocks() -> list[tuple[str, str, list[str]]]:
    """(doc, command, expected output lines) of each checked block (one `$ xtalign …` command per block)."""
    out = []
    for doc in DOCS:
        for body in BLOCK.findall((ROOT / doc).read_text(encoding="utf-8")):
            lines = body.rstrip("\n").splitlines()
            assert lines and lines[0].startswith("$ xtalign "), f"{doc}: a checked block must start with '$ xtalign'"
            out.append((doc, lines[0][2:], lines[1:]))
    return out


def _comparable(lines: list[str]) -> list[str]:
    return [ln.rstrip() for ln in lines if ln.strip() and not VARIES.search(ln)]


@pytest.mark.slow
@pytest.mark.parametrize("doc, command, expected", _blocks(), ids=lambda v: v if isinstance(v, str) else "")
def test_checked_command_prints_what_the_docs_show(doc: str, command: str, expected: list[str], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # outputs land in a scratch folder; inputs are read from the repository
    monkeypatch.setenv("COLUMNS", "200")
    args = [a.replace("distill/configs/", str(ROOT / "distill/configs") + "/") for a in shlex.split(command)[1:]]
    args = [str(ROOT / a) if (ROOT / a).is_file() and not Path(a).is_absolute() else a for a in args]
    assert main(args) == 0, command
    got = capsys.readouterr().out.splitlines()
    assert _comparable(got) == _comparable(expected), f"{doc}: `{command}` prints something else"


def test_there_are_checked_blocks() -> None:
    assert len(_blocks()) >= 1


def test_benchmark_table_quotes_the_committed_results() -> None:
    """Each row of the performance tables (benchmarks/README.md, README.md) that names
    `benchmarks/results/<name>.json` quotes, as its last cell, what benchmarks/summary.py reads out of that file;
    every results file summary.py knows has its row in both."""
    from tests.scripts import load_script

    summary = load_script("benchmarks/summary.py", "bench_summary")
    cells = summary.cells()
    for doc in ("benchmarks/README.md", "README.md"):
        quoted = {}
        for line in (ROOT / doc).read_text(encoding="utf-8").splitlines():
            named = re.search(r"\| `benchmarks/results/(\w+)\.json` \|", line)
            if named and named.group(1) in summary.CELLS:
                quoted[named.group(1)] = line.rstrip().rstrip("|").rsplit("|", 1)[1].strip()
        for name, cell in cells.items():
            assert quoted.get(name) == cell, f"{doc}: the {name} row does not quote its results file"
