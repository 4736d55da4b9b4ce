"""Overlap metrics on hand-built vocabularies, the real default set, and the CLI verb in-process."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from xtalign.cli.main import main
from xtalign.overlap import compute_overlap, corpus_coverage, metric_matrix, token_byte_counts
from xtalign.vocab import TokenKind, make_vocab

N, S = TokenKind.NORMAL, TokenKind.SPECIAL


def _vocab(name: str, toks: list[bytes], kinds: list[int] | None = None):
    kinds = kinds or [N] * len(toks)
    return make_vocab(name, toks, kinds, [t.decode() for t in toks])


def test_metrics_by_hand() -> None:
    a = _vocab("a", [b"a", b"b", b"c", b"d", b"<s>"], [N, N, N, N, S])
    b = _vocab("b", [b"b", b"c", b"e"])
    res = compute_overlap([a, b], metric="min")
    assert res.sizes == [4, 3] and res.intersections == [[4, 2], [2, 3]]
    assert res.matrix[0][1] == pytest.approx(2 / 3)
    inter, sizes = np.array(res.intersections), np.array(res.sizes)
    assert metric_matrix(inter, sizes, "jaccard")[0, 1] == pytest.approx(2 / 5)
    cov = metric_matrix(inter, sizes, "coverage")
    assert (cov[0, 1], cov[1, 0]) == (pytest.approx(2 / 4), pytest.approx(2 / 3))


def test_include_special_counts_names() -> None:
    a = _vocab("a", [b"x", b"<s>"], [N, S])
    b = _vocab("b", [b"x", b"<s>"], [N, S])
    assert compute_overlap([a, b], include_special=True).intersections[0][1] == 2
    assert compute_overlap([a, b]).intersections[0][1] == 1


def test_corpus_coverage_by_hand() -> None:
    a = _vocab("a", [b"ab", b"c", b"d"])
    counts = token_byte_counts([[0, 1, 2, 0]], a)  # bytes: ab c d ab -> 2+1+1+2 = 6
    other = frozenset({b"ab", b"d"})
    assert corpus_coverage(counts, a, other) == pytest.approx(5 / 6)


def test_overlap_cli_writes_three_files_and_refuses_overwrite(tmp_path: Path, capsys) -> None:
    out = tmp_path / "ov"
    corpus = tmp_path / "c.txt"
    corpus.write_text("The year 2025 had 365 days.\n\nNumbers like 123456 split differently.\n")
    rc = main(["overlap", "--tokenizers", "llama3", "qwen3", "gpt2", "--corpus", str(corpus), "--out", str(out)])
    assert rc == 0
    data = json.loads((out / "overlap.json").read_text())
    assert data["tokenizers"] == ["llama3", "qwen3", "gpt2"] and data["metric"] == "min"
    assert data["intersections"][0][1] == 109_566
    assert data["matrix"][0][1] == pytest.approx(109_566 / 128_000, abs=1e-6)
    assert 0 < data["corpus_byte_coverage"][0][1] < 1
    assert (out / "overlap.csv").read_text().startswith("tokenizer,size,llama3,qwen3,gpt2")
    assert (out / "overlap.png").stat().st_size > 1000
    before = (out / "overlap.json").read_bytes()
    capsys.readouterr()
    assert main(["overlap", "--tokenizers", "llama3", "gpt2", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--overwrite" in err and len(err.splitlines()) == 1
    assert (out / "overlap.json").read_bytes() == before


def test_overlap_cli_unknown_tokenizer_one_line(tmp_path: Path, capsys) -> None:
    assert main(["overlap", "--tokenizers", "llama3", "qwen9", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "qwen" in err
    assert not (tmp_path / "o" / "overlap.json").exists()
