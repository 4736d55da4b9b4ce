"""`xtalign align`: the chunks two tokenizers share on a text (exact UTF-8 byte boundaries).

A chunk ends wherever both tokenizations end a token, so each chunk covers the same bytes on both
sides and none can be split further. The table lists, per chunk, its text and each side's tokens.

--messages aligns a chat conversation instead: each side renders it with its own chat template (the one
its tokenizer's file carries, or --student-template / --teacher-template), chunks are cut inside message
contents only, and each assistant end-of-turn marker is paired across sides. The output shows both
renderings (markers visible), the chunk table (role, message, whether the chunk carries loss) and the
paired end-of-turn markers.

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
  xtalign align --student smollm2 --teacher gemma3 --teacher-template google-gemma-2-2b-it --messages chat.json
  -> chat.json = {"messages": [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"}]}:
     both renderings, 5 chunks (3 with loss) and
     end of turn, message 1: student 34 '<|im_end|>' <-> teacher 13 '<end_of_turn>'
"""

TRAIN_ON = ("assistant", "all")


def add_parser(sub: Any, verb: str) -> None:
    p = sub.add_parser(verb, help="show the aligned chunks of a text or a chat under two tokenizers",
                       description=__doc__, epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--student", "-s", required=True, help="student tokenizer: zoo name, local path or hub id")
    p.add_argument("--teacher", "-t", required=True, help="teacher tokenizer: zoo name, local path or hub id")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="the text to align")
    src.add_argument("--text-file", type=Path, help="read the text to align from this UTF-8 file")
    src.add_argument("--messages", type=Path, metavar="FILE",
                     help='a chat to align: a JSON file holding {"messages": [{"role", "content"}, ...]}, or a JSONL / '
                          "parquet dataset of such rows (the first --rows)")
    p.add_argument("--rows", type=int, default=1, help="with --messages: how many conversations to align (default 1)")
    p.add_argument("--student-template", metavar="SPEC",
                   help="the student's chat template: a name (e.g. Qwen-Qwen3-0.6B), a .jinja file, an HF folder, a "
                        "tokenizer_config.json or a .gguf (default: the template the student tokenizer brings)")
    p.add_argument("--teacher-template", metavar="SPEC", help="the teacher's chat template (as --student-template)")
    p.add_argument("--train-on", choices=TRAIN_ON, default="assistant",
                   help="which chunks carry loss: assistant contents and their end of turn (default), or all")
    p.add_argument("--add-bos", action="store_true",
                   help="with --messages: add each tokenizer's BOS where its rendering does not start with it")
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

    if args.messages is not None:
        return _run_messages(args)
    if args.student_template or args.teacher_template:
        raise CLIError("--student-template and --teacher-template apply to --messages only")
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


# --- --messages: a chat conversation rendered by each side's own template ---------------------------------


def _conversations(path: Path, rows: int) -> list[Any]:
    """The first `rows` conversations of a JSON file (one object or a list) or a JSONL / parquet dataset."""
    from xtalign.chat import ChatDataError, parse_conversation, read_conversations

    if not path.is_file():
        raise CLIError(f"--messages {path}: no such file")
    if rows < 1:
        raise CLIError(f"--rows must be >= 1; got {rows}")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
        if head != b"PAR1":
            try:
                whole = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                whole = None  # not one JSON document: JSONL
            except UnicodeDecodeError as exc:
                raise CLIError(f"--messages {path}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from exc
            if isinstance(whole, dict):
                return [parse_conversation(whole)]
            if isinstance(whole, list):
                return [parse_conversation(obj) for obj in whole[:rows]]
        convs, _ = read_conversations(path, strict=True, limit=rows)
    except ChatDataError as exc:
        raise CLIError(f"--messages {path}: {exc}") from exc
    if not convs:
        raise CLIError(f"--messages {path}: holds no conversation")
    return convs


def _template(spec: str | None, tokenizer: str, side: str) -> Any:
    from xtalign.chat import ChatTemplateError, load_template, template_for_tokenizer

    try:
        return load_template(spec) if spec else template_for_tokenizer(tokenizer)
    except ChatTemplateError as exc:
        if spec:
            raise CLIError(f"--{side}-template {spec}: {exc}") from exc
        raise CLIError(f"--{side} {tokenizer}: {exc.missing or exc}; pass --{side}-template NAME|FILE (a name such as "
                       "google-gemma-2-2b-it, a .jinja, an HF folder or a .gguf)") from exc


def _run_messages(args: argparse.Namespace) -> int:
    from datetime import datetime

    from xtalign.chat import ChatDataError, ChatSide, ChatTemplateError, align_conversation
    from xtalign.zoo import load_tokenizer

    convs = _conversations(args.messages, args.rows)
    s_tok, t_tok = load_tokenizer(args.student), load_tokenizer(args.teacher)
    student = ChatSide(s_tok, _template(args.student_template, args.student, "student"), add_bos=args.add_bos)
    teacher = ChatSide(t_tok, _template(args.teacher_template, args.teacher, "teacher"), add_bos=args.add_bos)
    now = datetime.now()  # one date for every row and both sides (templates that print today's date)
    results = []
    for row, conv in enumerate(convs, start=1):
        try:
            results.append(align_conversation(conv, student=student, teacher=teacher, train_on=args.train_on, now=now))
        except (ChatTemplateError, ChatDataError) as exc:
            raise CLIError(f"conversation {row}: {exc}") from exc
    if args.json:
        print(json.dumps({"conversations": [_chat_json(k, al, s_tok, t_tok) for k, al in enumerate(results, 1)]},
                         ensure_ascii=False))
        return 0
    for k, al in enumerate(results, start=1):
        _print_chat(k, al, s_tok, t_tok)
    return 0


def _side_json(tokens: Any, tok: Any) -> dict[str, Any]:
    return {"tokenizer": tok.name, "template": tokens.template, "text": tokens.text, "n_tokens": tokens.n_tokens,
            "ids": tokens.ids.tolist()}


def _turn_ends(al: Any, student: Any, teacher: Any) -> list[dict[str, Any]]:
    out = []
    for s, t in al.turn_ends.tolist():
        out.append({"message": int(al.student.message[s]), "student": s, "teacher": t,
                    "student_token": student.vocab.names[int(al.student.ids[s])],
                    "teacher_token": teacher.vocab.names[int(al.teacher.ids[t])]})
    return out


def _chat_json(row: int, al: Any, student: Any, teacher: Any) -> dict[str, Any]:
    return {"row": row, "messages": len(al.conversation.messages), "train_on": al.train_on,
            "truncation": al.truncation, "student": _side_json(al.student, student),
            "teacher": _side_json(al.teacher, teacher), "chunks": al.chunk_rows(),
            "turn_ends": _turn_ends(al, student, teacher)}


def _token_list(tok: Any, ids: list[int]) -> str:
    """Ids with their pieces; a special by its name (markers visible)."""
    from xtalign.vocab import TokenKind

    def piece(i: int) -> str:
        return tok.vocab.names[i] if tok.vocab.kinds[i] == TokenKind.SPECIAL else _show(tok.vocab.token_bytes[i])

    return " ".join(f"{i}:{piece(i)}" for i in ids)


def _print_chat(row: int, al: Any, student: Any, teacher: Any) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console()
    s, t = al.student, al.teacher
    console.print(Text(f"conversation {row}: {len(al.conversation.messages)} messages · {student.name} "
                       f"({s.template}) {s.n_tokens} tokens · {teacher.name} ({t.template}) {t.n_tokens} tokens"
                       + (f" · truncated ({al.truncation})" if al.truncation else "")), soft_wrap=True)
    console.print(Text(f"student rendering: {s.text!r}"), soft_wrap=True)
    console.print(Text(f"teacher rendering: {t.text!r}"), soft_wrap=True)
    table = Table(title=f"{al.n_chunks} chunks · loss on {al.train_on}")
    for name in ("#", "role", "msg", "loss", "text", f"{student.name} tokens", f"{teacher.name} tokens", "bytes"):
        table.add_column(name, justify="right" if name in ("#", "msg") else "left", overflow="fold")
    for c in al.chunk_rows():
        text = c["text"] if c["part"] != "turn_end" else f"{c['text']} | {c['teacher_text']}"
        cells = [str(c["chunk"]), f"{c['role']} {c['part']}", str(c["message"]), "yes" if c["loss"] else "no",
                 repr(text), _token_list(student, c["student"]), _token_list(teacher, c["teacher"]),
                 "s[{},{}) t[{},{})".format(*c["student_bytes"], *c["teacher_bytes"])]
        table.add_row(*(Text(x) for x in cells))  # Text(): markers like '[INST]' are not rich markup
    console.print(table)
    for e in _turn_ends(al, student, teacher):
        console.print(Text(f"end of turn, message {e['message']}: student {e['student']} {e['student_token']!r} "
                           f"<-> teacher {e['teacher']} {e['teacher_token']!r}"))
