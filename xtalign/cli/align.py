"""`xtalign align`: the chunks two tokenizers share on a text (exact UTF-8 byte boundaries).

A chunk ends wherever both tokenizations end a token, so each chunk covers the same bytes on both
sides and none can be split further. The table lists, per chunk, its text and each side's tokens.

--json gives each chunk its exact byte span "bytes": [start, end) in the UTF-8 text; a chunk that ends
inside a multi-byte character (an emoji split by a byte-fallback tokenizer) has an escaped "text" for
reading only. Rebuild a chunk exactly with text.encode('utf-8')[start:end]; the spans tile the input.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from xtalign.cli.common import CLIError

EXAMPLE = """example:
  xtalign align --student llama3 --teacher qwen3 --text "The year 2025 had 365 days."
  -> 10 chunks; e.g. chunk 3 '202' = llama3 [2366] '202' = qwen3 [17, 15, 17] '2' '0' '2'
  xtalign align --student mistral-v1 --teacher llama3 --text-file notes.txt --json
"""


def add_parser(sub: Any, verb: str) -> None:
    p = sub.add_parser(verb, help="show the aligned chunks of a text under two tokenizers", description=__doc__,
                       epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--student", "-s", required=True, help="student tokenizer: zoo name, local path or hub id")
    p.add_argument("--teacher", "-t", required=True, help="teacher tokenizer: zoo name, local path or hub id")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="the text to align")
    src.add_argument("--text-file", type=Path, help="read the text to align from this UTF-8 file")
    p.add_argument("--json", action="store_true",
                   help='print {"chunks": [{"text", "bytes": [start, end), "student": [ids], "teacher": [ids]}, ...]} '
                        "instead of a table; the exact chunk is text.encode('utf-8')[start:end] (\"text\" is "
                        "backslash-escaped where a chunk splits a character)")
    p.set_defaults(run=run)


def _read_text(args: argparse.Namespace) -> str:
    if args.text_file is not None:
        path: Path = args.text_file
        if not path.is_file():
            raise CLIError(f"--text-file {path}: no such file")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise CLIError(f"--text-file {path}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from exc
    else:
        text = args.text
    if not text:
        raise CLIError("the text is empty; give at least one character with --text or --text-file")
    return text


def run(args: argparse.Namespace) -> int:
    from xtalign.align import align_text
    from xtalign.zoo import load_tokenizer

    text = _read_text(args)
    student, teacher = load_tokenizer(args.student), load_tokenizer(args.teacher)
    al = align_text(text, student=student, teacher=teacher)
    if args.json:
        print(json.dumps(al.to_json(0), ensure_ascii=False))
        return 0
    _print_table(al.chunks(0), text.encode("utf-8"), student, teacher)
    return 0


def _show(data: bytes) -> str:
    """repr of the text a byte string spells, or of the bytes when they are not whole UTF-8 characters."""
    try:
        return repr(data.decode("utf-8"))
    except UnicodeDecodeError:
        return repr(data)


def _pieces(tok: Any, ids: list[int]) -> str:
    return " ".join(_show(tok.vocab.token_bytes[i]) for i in ids)


def _print_table(chunks: list[dict[str, Any]], data: bytes, student: Any, teacher: Any) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    n_s = sum(len(c["student"]) for c in chunks)
    n_t = sum(len(c["teacher"]) for c in chunks)
    table = Table(title=f"{len(chunks)} chunks · {student.name} {n_s} tokens · {teacher.name} {n_t} tokens")
    for name in ("#", "text", f"{student.name} ids", f"{student.name} pieces", f"{teacher.name} ids",
                 f"{teacher.name} pieces"):
        table.add_column(name, justify="right" if name == "#" else "left")
    for k, c in enumerate(chunks):
        # Text() cells: pieces like '[INST]' must not be read as rich markup
        start, end = c["bytes"]
        cells = [_show(data[start:end]), str(c["student"]), _pieces(student, c["student"]), str(c["teacher"]),
                 _pieces(teacher, c["teacher"])]
        table.add_row(str(k), *(Text(x) for x in cells))
    Console().print(table)
