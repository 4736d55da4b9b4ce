"""`xtalign align` run in-process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xtalign.cli.main import main


def test_align_json_chunks(capsys: pytest.CaptureFixture[str]) -> None:
    text = "The year 2025 had 365 days."
    assert main(["align", "--student", "llama3", "--teacher", "qwen3", "--text", text, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out) == ["chunks"]
    chunks = out["chunks"]
    assert all(list(c) == ["text", "bytes", "student", "teacher"] for c in chunks)
    assert "".join(c["text"] for c in chunks) == text
    # qwen3 splits digits
    assert {"text": "365", "bytes": [18, 21], "student": [12676], "teacher": [18, 21, 20]} in chunks
    assert all(c["student"] and c["teacher"] for c in chunks)


def test_align_table_and_text_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "t.txt"
    path.write_text("héllo [INST] 👍🏽\n", encoding="utf-8")
    assert main(["align", "--student", "mistral-v1", "--teacher", "llama3", "--text-file", str(path)]) == 0
    out = capsys.readouterr().out
    assert "chunks · mistral-v1 11 tokens · llama3 12 tokens" in out
    assert "'INST'" in out and "b'\\xf0\\x9f'" in out  # markup-like text survives; split emoji bytes shown as bytes
    assert main(["align", "-s", "mistral-v1", "-t", "llama3", "--text-file", str(path), "--json"]) == 0
    chunks = json.loads(capsys.readouterr().out)["chunks"]
    assert "".join(c["text"] for c in chunks if "\\x" not in c["text"]).startswith("héllo [INST] ")


def test_align_json_bytes_rebuild_input(capsys: pytest.CaptureFixture[str]) -> None:
    """Chunk spans tile the input exactly, even where a chunk ends inside an emoji or the text has a backslash."""
    text = "a\\x f0 👍🏽 \\ done 🇯🇵"
    assert main(["align", "-s", "llama3", "-t", "mistral-v1", "--text", text, "--json"]) == 0
    chunks = json.loads(capsys.readouterr().out)["chunks"]
    data = text.encode("utf-8")
    assert b"".join(data[a:b] for a, b in (c["bytes"] for c in chunks)) == data
    assert [c["bytes"][0] for c in chunks[1:]] == [c["bytes"][1] for c in chunks[:-1]]  # contiguous
    pieces = [data[a:b] for a, b in (c["bytes"] for c in chunks)]
    whole = [_decodes(x) for x in pieces]
    assert not all(whole)  # some chunk ends inside a multi-byte character: its text alone cannot rebuild the input
    assert all(c["text"] == x.decode("utf-8") for c, x, ok in zip(chunks, pieces, whole, strict=True) if ok)
    assert {"text": "\\x", "bytes": [1, 3]}.items() <= chunks[1].items()  # a literal backslash, not an escape


def _decodes(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@pytest.mark.parametrize(("argv", "message"), [
    (["--text", ""], "the text is empty"),
    (["--text-file", "/nonexistent/x.txt"], "no such file"),
])
def test_align_bad_input(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["align", "--student", "llama3", "--teacher", "qwen3", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_align_unknown_tokenizer_and_missing_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["align", "--student", "no-such-tokenizer", "--teacher", "qwen3", "--text", "x"]) == 2
    assert "unknown tokenizer" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["align", "--student", "llama3", "--teacher", "qwen3"])
    assert exc.value.code == 2


def test_align_help_has_example(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["align", "--help"])
    example = 'xtalign align --student llama3 --teacher qwen3 --text "The year 2025 had 365 days."'
    assert example in capsys.readouterr().out
