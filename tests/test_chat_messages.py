"""Chat rows: parsing, reason codes, JSONL and parquet readers (counted skips or strict refusal)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xtalign.chat import REASONS, ChatDataError, Conversation, Message, parse_conversation, read_conversations

GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]}


def test_parse_a_row() -> None:
    conv = parse_conversation({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                                            {"role": "assistant", "content": "a", "reasoning_content": "r"}],
                               "teacher": "qwen3"})
    assert conv == Conversation((Message("system", "s"), Message("user", "u"), Message("assistant", "a", "r")),
                                teacher="qwen3")
    assert conv.first_assistant == 2
    assert parse_conversation(GOOD).messages[1].content == ""  # an empty assistant turn is allowed


@pytest.mark.parametrize(("row", "reason"), [
    ([1, 2], "not_object"),
    ({"text": "x"}, "no_messages"),
    ({"messages": "x"}, "no_messages"),
    ({"messages": [{"role": "user"}]}, "bad_message"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "unknown_role"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}]}, "bad_content"),
    ({"messages": [{"role": "assistant", "content": "x", "reasoning_content": 3}]}, "bad_content"),
    ({"messages": [{"role": "user", "content": "x"}]}, "no_assistant"),
    ({**GOOD, "teacher": 7}, "bad_teacher"),
])
def test_bad_rows_have_reason_codes(row: object, reason: str) -> None:
    with pytest.raises(ChatDataError) as exc:
        parse_conversation(row)
    assert exc.value.reason == reason and reason in REASONS
    assert isinstance(exc.value, ValueError) and "\n" not in str(exc.value)


def _jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def test_jsonl_counts_and_skips(tmp_path: Path) -> None:
    rows = [GOOD, "{not json", {"messages": [{"role": "user", "content": "x"}]}, "", {**GOOD, "teacher": "gemma3"},
            {"messages": [{"role": "bot", "content": "x"}]}]
    path = _jsonl(tmp_path / "d.jsonl", rows)
    convs, skipped = read_conversations(path)
    assert [c.teacher for c in convs] == [None, "gemma3"]
    assert skipped == {"bad_json": 1, "no_assistant": 1, "unknown_role": 1}
    first, _ = read_conversations(path, limit=1)
    assert len(first) == 1


def test_strict_names_file_and_row(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "d.jsonl", [GOOD, GOOD, {"messages": [{"role": "user", "content": 3}]}])
    with pytest.raises(ChatDataError, match=r"d\.jsonl: row 3: message 0 \(user\) has int content") as exc:
        read_conversations(path, strict=True)
    assert exc.value.reason == "bad_content"


def test_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    msg = pa.struct([("role", pa.string()), ("content", pa.string()), ("reasoning_content", pa.string())])
    table = pa.table({
        "messages": pa.array([
            [{"role": "user", "content": "naïve 🤖", "reasoning_content": None},
             {"role": "assistant", "content": "ok", "reasoning_content": "think"}],
            [{"role": "user", "content": "only a question", "reasoning_content": None}],
        ], type=pa.list_(msg)),
        "teacher": ["qwen3", None],
    })
    path = tmp_path / "d.parquet"
    pq.write_table(table, path)
    convs, skipped = read_conversations(path)
    assert convs == [Conversation((Message("user", "naïve 🤖"), Message("assistant", "ok", "think")), "qwen3")]
    assert skipped == {"no_assistant": 1}
    with pytest.raises(ChatDataError, match="row 2"):
        read_conversations(path, fmt="parquet", strict=True)
    pq.write_table(pa.table({"text": ["x"]}), tmp_path / "plain.parquet")
    with pytest.raises(ChatDataError, match="no 'messages' column"):
        read_conversations(tmp_path / "plain.parquet")
