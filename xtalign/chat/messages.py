"""Chat rows: conversations of system / user / assistant messages, read from JSONL or parquet.

A row is ``{"messages": [{"role": ..., "content": ..., "reasoning_content": ...}, ...], "teacher": ...}``
(``reasoning_content`` and ``teacher`` optional). A bad row is reported with a reason code (`REASONS`) so
a reader can count what it skipped and log one summary line, or refuse the file with the row number.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

__all__ = ["REASONS", "ROLES", "ChatDataError", "Conversation", "Message", "parse_conversation",
           "read_conversations"]
log = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")
REASONS: dict[str, str] = {
    "bad_json": "the line is not valid JSON",
    "not_object": "the row is not a JSON object",
    "no_messages": "no 'messages' list",
    "bad_message": "a message is not an object with 'role' and 'content'",
    "unknown_role": "a role other than system, user, assistant",
    "bad_content": "a content (or reasoning_content) that is not a string",
    "no_assistant": "no assistant turn",
    "bad_teacher": "a 'teacher' that is not a string",
    "too_long": "the context before the first assistant content exceeds the token budget",
}


class ChatError(ValueError):
    """Chat data or a chat template that cannot be used; the message is one line (the CLI exits 2)."""


class ChatDataError(ChatError):
    """A chat row that cannot be used; `reason` is a key of `REASONS`, the message is one line."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Message:
    """One turn. `reasoning_content` is the assistant's thinking where the data has it (templates that
    render it, like Qwen3's, put it between think markers; others drop it)."""

    role: str
    content: str
    reasoning_content: str | None = None


@dataclass(frozen=True)
class Conversation:
    """The messages of one row, and the teacher the row names (None: the run's teachers)."""

    messages: tuple[Message, ...]
    teacher: str | None = None

    @property
    def first_assistant(self) -> int:
        """Index of the first assistant message (a parsed conversation always has one)."""
        return next(i for i, m in enumerate(self.messages) if m.role == "assistant")

    def prefix(self, n: int) -> Conversation:
        """The first `n` messages (the teacher kept)."""
        return replace(self, messages=self.messages[:n])


def _message(obj: Any, i: int) -> Message:
    if not isinstance(obj, Mapping) or "role" not in obj or "content" not in obj:
        raise ChatDataError("bad_message", f"message {i} is not an object with 'role' and 'content'")
    role, content = obj["role"], obj["content"]
    if role not in ROLES:
        raise ChatDataError("unknown_role", f"message {i} has role {role!r}; allowed: {', '.join(ROLES)}")
    if not isinstance(content, str):
        raise ChatDataError("bad_content", f"message {i} ({role}) has {type(content).__name__} content, not a string")
    reasoning = obj.get("reasoning_content")
    if reasoning is not None and not isinstance(reasoning, str):
        raise ChatDataError("bad_content", f"message {i} ({role}) has a {type(reasoning).__name__} reasoning_content")
    return Message(role=role, content=content, reasoning_content=reasoning)


def parse_conversation(obj: Any) -> Conversation:
    """A row (a mapping with a `messages` list, optional `teacher`) -> Conversation; ChatDataError if unusable."""
    if not isinstance(obj, Mapping):
        raise ChatDataError("not_object", f"the row is a {type(obj).__name__}, not an object")
    raw = obj.get("messages")
    if not isinstance(raw, list | tuple):  # parquet list columns arrive as lists; numpy arrays are refused
        raise ChatDataError("no_messages", "the row has no 'messages' list")
    messages = tuple(_message(m, i) for i, m in enumerate(raw))
    if not any(m.role == "assistant" for m in messages):
        raise ChatDataError("no_assistant", f"the row has no assistant turn ({len(messages)} messages)")
    teacher = obj.get("teacher")
    if teacher is not None and not isinstance(teacher, str):
        raise ChatDataError("bad_teacher", f"'teacher' is a {type(teacher).__name__}, not a string")
    return Conversation(messages=messages, teacher=teacher)


def _detect(path: Path) -> str:
    with open(path, "rb") as f:
        magic = f.read(4)
    return "parquet" if magic == b"PAR1" or path.suffix in (".parquet", ".pq") else "jsonl"


def _jsonl_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """(1-based line number, parsed object or the decode error) per non-blank line."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError as exc:
                yield n, ChatDataError("bad_json", f"not valid JSON ({exc.msg} at column {exc.colno})")


def _parquet_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """(1-based row number, {"messages", "teacher"?}) per parquet row, read in record batches."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    if "messages" not in names:
        raise ChatDataError("no_messages", f"{path}: no 'messages' column (columns: {', '.join(names)})")
    columns = ["messages"] + (["teacher"] if "teacher" in names else [])
    n = 0
    for batch in pf.iter_batches(columns=columns, batch_size=1024):
        for row in batch.to_pylist():
            n += 1
            yield n, row


def read_conversations(path: str | Path, *, fmt: Literal["auto", "jsonl", "parquet"] = "auto", strict: bool = False,
                       limit: int | None = None) -> tuple[list[Conversation], dict[str, int]]:
    """Conversations of a JSONL or parquet file, and the count of skipped rows per reason.

    Bad rows are skipped and counted (the caller logs one summary line), or with `strict` refused by a
    ChatDataError naming the file and the row (JSONL: line) number. `limit` stops after that many good rows.
    """
    path = Path(path)
    if not path.is_file():
        raise ChatDataError("no_messages", f"{path}: no such file")
    kind = _detect(path) if fmt == "auto" else fmt
    if kind not in ("jsonl", "parquet"):
        raise ValueError(f"fmt must be 'auto', 'jsonl' or 'parquet'; got {fmt!r}")
    rows = _parquet_rows(path) if kind == "parquet" else _jsonl_rows(path)
    out: list[Conversation] = []
    skipped: Counter[str] = Counter()
    for n, obj in rows:
        if limit is not None and len(out) >= limit:
            break
        try:
            if isinstance(obj, ChatDataError):
                raise obj
            out.append(parse_conversation(obj))
        except ChatDataError as exc:
            if strict:
                raise ChatDataError(exc.reason, f"{path}: row {n}: {exc}") from None
            skipped[exc.reason] += 1
    return out, dict(skipped)
