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


# --- --messages: a chat conversation, each side in its own template --------------------------------------

CHAT = {"messages": [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello! naïve 🤖"},
                     {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}
SMOL_GEMMA = ["align", "--student", "smollm2", "--teacher", "gemma3", "--teacher-template", "google-gemma-2-2b-it"]


def test_align_messages_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "chat.json"
    path.write_text(json.dumps(CHAT, indent=2), encoding="utf-8")
    assert main([*SMOL_GEMMA, "--messages", str(path)]) == 0
    out = capsys.readouterr().out
    assert "conversation 1: 4 messages · smollm2 (smollm2)" in out and "gemma3 (google-gemma-2-2b-it)" in out
    assert "student rendering: '<|im_start|>system\\nYou are a helpful AI assistant" in out  # markers visible
    assert "teacher rendering: '<bos><start_of_turn>user\\nHi there<end_of_turn>\\n<start_of_turn>model\\n" in out
    assert "13 chunks · loss on assistant" in out
    assert "end of turn, message 1: student 39 '<|im_end|>' <-> teacher 16 '<end_of_turn>'" in out
    assert "end of turn, message 3: student 55 '<|im_end|>' <-> teacher 31 '<end_of_turn>'" in out


def test_align_messages_json_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "chat.jsonl"
    second = {"messages": [{"role": "user", "content": "Yes?"}, {"role": "assistant", "content": ""}]}
    path.write_text("\n".join(json.dumps(r) for r in (CHAT, second, CHAT)) + "\n", encoding="utf-8")
    assert main([*SMOL_GEMMA, "--messages", str(path), "--rows", "2", "--train-on", "all", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    first, empty = out["conversations"]
    assert [first["row"], empty["row"]] == [1, 2] and first["train_on"] == "all" and first["truncation"] is None
    assert first["student"]["tokenizer"] == "smollm2" and first["teacher"]["template"] == "google-gemma-2-2b-it"
    assert first["teacher"]["text"].startswith("<bos><start_of_turn>user\nHi there<end_of_turn>")
    assert first["teacher"]["n_tokens"] == len(first["teacher"]["ids"]) == 33
    chunk = first["chunks"][2]
    assert {k: chunk[k] for k in ("chunk", "role", "message", "part", "loss", "text")} == {
        "chunk": 2, "role": "assistant", "message": 1, "part": "content", "loss": True, "text": "Hello"}
    assert all(c["loss"] for c in first["chunks"])  # --train-on all
    assert first["turn_ends"][0] == {"message": 1, "student": 39, "teacher": 16, "student_token": "<|im_end|>",
                                     "teacher_token": "<end_of_turn>"}
    assert [c["part"] for c in empty["chunks"]][-1] == "turn_end" and len(empty["turn_ends"]) == 1


def test_align_messages_parquet_llama_qwen(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "chat.parquet"
    pq.write_table(pa.table({"messages": [[{"role": "system", "content": "Be brief."}, *CHAT["messages"]]]}), path)
    argv = ["align", "-s", "llama3", "-t", "qwen3", "--student-template", "meta-llama-Llama-3.2-3B-Instruct",
            "--teacher-template", "Qwen-Qwen3-0.6B", "--messages", str(path), "--json"]
    assert main(argv) == 0
    conv = json.loads(capsys.readouterr().out)["conversations"][0]
    assert "Cutting Knowledge Date: December 2023" in conv["student"]["text"]
    assert [(e["student_token"], e["teacher_token"]) for e in conv["turn_ends"]] == [("<|eot_id|>", "<|im_end|>")] * 2


@pytest.mark.parametrize(("extra", "message"), [
    (["--student", "smollm2", "--teacher", "gemma3"], "--teacher gemma3: tokenizer gemma3: its GGUF"),
    (["--student", "llama3", "--teacher", "gemma3", "--teacher-template", "google-gemma-2-2b-it"],
     "--student llama3: tokenizer llama3"),
    ([*SMOL_GEMMA[1:], "--student-template", "no-such-template"], "closest names"),
    ([*SMOL_GEMMA[1:], "--rows", "0"], "--rows must be >= 1"),
])
def test_align_messages_refusals(tmp_path: Path, extra: list[str], message: str,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "chat.json"
    path.write_text(json.dumps(CHAT), encoding="utf-8")
    assert main(["align", *extra, "--messages", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("xtalign align: ") and message in err and len(err.splitlines()) == 1


def test_align_messages_bad_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps(CHAT) + "\n" + json.dumps({"messages": [{"role": "user", "content": "x"}]}) + "\n",
                    encoding="utf-8")
    assert main([*SMOL_GEMMA, "--messages", str(path), "--rows", "2"]) == 2
    assert "row 2: the row has no assistant turn" in capsys.readouterr().err
    system = tmp_path / "system.json"
    system.write_text(json.dumps({"messages": [{"role": "system", "content": "s"}, *CHAT["messages"]]}), "utf-8")
    assert main([*SMOL_GEMMA, "--messages", str(system)]) == 2
    assert "System role not supported" in capsys.readouterr().err
    assert main([*SMOL_GEMMA, "--messages", str(tmp_path / "none.json")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main([*SMOL_GEMMA, "--text", "hello"]) == 2  # templates apply to --messages only
    assert "--messages only" in capsys.readouterr().err


def test_align_help_has_messages_example(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The help's --messages example is real: its chat gives the output the help shows."""
    with pytest.raises(SystemExit):
        main(["align", "--help"])
    out = capsys.readouterr().out
    example = "xtalign align --student smollm2 --teacher gemma3 --teacher-template google-gemma-2-2b-it --messages"
    assert example in out and "--train-on" in out
    chat = out.split("-> chat.json = ")[1].split("}]}:")[0] + "}]}"
    shown = out.split("(3 with loss) and")[1].strip().splitlines()[0]
    (tmp_path / "chat.json").write_text(chat, encoding="utf-8")
    assert main([*SMOL_GEMMA, "--messages", str(tmp_path / "chat.json"), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)["conversations"][0]
    assert len(got["chunks"]) == 5 and sum(c["loss"] for c in got["chunks"]) == 3
    assert main([*SMOL_GEMMA, "--messages", str(tmp_path / "chat.json")]) == 0
    assert shown in capsys.readouterr().out
