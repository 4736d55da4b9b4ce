"""CLI verbs in-process: tokenizers, encode, help texts, usage errors."""

from __future__ import annotations

import json

import pytest

from xtalign.cli.main import VERBS, build_parser, main


def test_tokenizers_lists_the_zoo(capsys) -> None:
    assert main(["tokenizers", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    names = {r["name"] for r in rows}
    assert {"gpt2", "llama3", "qwen3", "gemma3", "tekken", "rwkv-world", "claude-v1"} <= names
    assert all(r["vocab_size"] > 0 and r["source"] for r in rows)


def test_encode_prints_ids(capsys) -> None:
    assert main(["encode", "--tokenizer", "gpt2", "This is a test"]) == 0
    assert json.loads(capsys.readouterr().out) == [1212, 318, 257, 1332]
    assert main(["encode", "-t", "cl100k", "--json", "hello world"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ids"] == [15339, 1917] and out["tokens"] == ["hello", " world"]


def test_encode_unknown_tokenizer_is_one_line_exit_2(capsys) -> None:
    assert main(["encode", "--tokenizer", "gtp2", "x"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "gpt2" in err


@pytest.mark.parametrize("verb", [v for v in VERBS])
def test_every_verb_has_an_example_in_its_help(verb: str) -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "verb")
    if verb not in sub.choices:
        pytest.skip(f"{verb} not in this checkout")
    assert f"xtalign {verb}" in (sub.choices[verb].epilog or "")


def test_bad_flag_is_usage_error(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["overlap", "--metric", "cosine"])
    assert exc.value.code == 2
