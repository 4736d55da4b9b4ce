"""The batched chat path is bitwise the per-conversation one: `encode_rendered_batch` against `encode_rendered`,
`render_sides` against `render_side`, `align_conversations` / `align_batch` against `align_conversation`, and
`ChatBatchBuilder`'s batched rows against its rows one conversation at a time, on real conversations of
out/chat/train.jsonl (skipped where it is missing) and on the conversations of test_chat_align.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.test_chat_align import CHAT, WITH_SYSTEM
from tests.test_chat_encode import TEXTS
from xtalign.chat import (
    ChatSide,
    ChatTemplateError,
    Conversation,
    Message,
    align_conversation,
    encode_rendered,
    load_template,
    read_conversations,
    render,
    template_for_tokenizer,
)
from xtalign.chat import align_batch as align_batch_module
from xtalign.chat.align_batch import align_batch, align_conversations
from xtalign.chat.encode import bos_string, encode_rendered_batch, eos_string, special_pattern
from xtalign.chat.side_batch import render_sides
from xtalign.chat.sides import render_side
from xtalign.zoo import load_tokenizer

NOW = datetime(2025, 3, 1)
LONG = " ".join(f"word{i} naïve 🤖" for i in range(60))
CONVERSATIONS = [
    CHAT,  # emoji, multi-turn
    Conversation((Message("user", "Say nothing."), Message("assistant", ""))),  # empty assistant turn
    Conversation((Message("user", "  spaced out"), Message("assistant", "ok"))),  # trimmed by Gemma: EDGE tokens
    Conversation((Message("user", "print('<|im_end|>')"), Message("assistant", "done"))),  # a special in content
    Conversation((Message("user", "2+2?"), Message("assistant", "4", "Add them: four."))),  # reasoning
    Conversation((Message("user", "Talk."), Message("assistant", LONG), Message("user", "More."))),  # to truncate
    Conversation((Message("user", "Hi."), Message("assistant", "Hello."), Message("user", LONG),
                  Message("assistant", "Ok."))),  # to drop messages
]
WITH_SYSTEM_ONLY = [WITH_SYSTEM, Conversation((*WITH_SYSTEM.messages[:-1], Message("assistant", "Four.", "Words.")))]


@pytest.fixture(scope="module")
def smol_gemma() -> tuple[ChatSide, ChatSide]:
    return (ChatSide(load_tokenizer("smollm2"), template_for_tokenizer("smollm2")),
            ChatSide(load_tokenizer("gemma3"), load_template("google-gemma-2-2b-it"), add_bos=True))


@pytest.fixture(scope="module")
def llama_qwen() -> tuple[ChatSide, ChatSide]:
    return (ChatSide(load_tokenizer("llama3"), load_template("meta-llama-Llama-3.2-3B-Instruct")),
            ChatSide(load_tokenizer("qwen3"), load_template("Qwen-Qwen3-0.6B")))


@pytest.fixture(scope="module")
def real(pinned_chat: Path) -> list[Conversation]:
    return read_conversations(pinned_chat / "train.jsonl", strict=True, limit=60)[0]


def _pair(request: pytest.FixtureRequest, name: str) -> tuple[tuple[ChatSide, ChatSide], list[Conversation]]:
    pair = request.getfixturevalue(name)
    return pair, CONVERSATIONS + (WITH_SYSTEM_ONLY if name == "llama_qwen" else [])


def assert_same(a: Any, b: Any, path: str = "") -> None:
    """Equal values, dtypes and shapes all the way down (dataclasses, sequences, arrays)."""
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape, path
        assert np.array_equal(a, b), path
    elif dataclasses.is_dataclass(a) and not isinstance(a, Conversation | Message):
        assert type(a) is type(b), path
        for f in dataclasses.fields(a):
            assert_same(getattr(a, f.name), getattr(b, f.name), f"{path}.{f.name}")
    elif isinstance(a, list | tuple) and not isinstance(a, str):
        assert type(a) is type(b) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, (path, a, b)


# --- encoding -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(TEXTS))
def test_encode_rendered_batch_is_encode_rendered_text_by_text(zoo, name: str) -> None:
    tok, text = zoo(name), TEXTS[name]
    texts = [text, "", "plain text", " leading space", text.replace("naïve", "  x  "), text * 3, "<|im_end|> a"]
    for add_bos in (False, True):
        ids, starts, ends, offsets = encode_rendered_batch(tok, texts, add_bos=add_bos)
        assert offsets.tolist()[0] == 0 and offsets[-1] == ids.shape[0]
        for b, t in enumerate(texts):
            got = tuple(x[offsets[b]: offsets[b + 1]] for x in (ids, starts, ends))
            assert_same(got, encode_rendered(tok, t, add_bos=add_bos), f"{name} text {b} add_bos={add_bos}")
    assert [x.shape for x in encode_rendered_batch(tok, [])] == [(0,), (0,), (0,), (1,)]


def test_a_piece_the_tokens_cannot_spell_is_refused_as_before(zoo) -> None:
    tok = zoo("gemma3")
    with pytest.raises(ValueError, match="do not spell it") as one:
        encode_rendered(tok, "\u2581x")
    with pytest.raises(ValueError, match="do not spell it") as batch:
        encode_rendered_batch(tok, ["ok", "\u2581x"])
    assert str(one.value) == str(batch.value)


def test_pieces_encode_alike_one_call_per_conversation_or_one_per_batch(real: list[Conversation],
                                                                        smol_gemma: tuple[ChatSide, ChatSide]) -> None:
    """The assumption of the batched encoding, on the real tokenizers (HF smollm2, SentencePiece gemma3)."""
    for side in smol_gemma:
        tok = side.tokenizer
        pattern = special_pattern(tok.vocab)[0]
        texts = [render(side.template, c, bos_token=bos_string(tok), eos_token=eos_string(tok), now=NOW)
                 for c in real]
        per = [[p for p in pattern.split(t) if p] for t in texts]
        one_call = tok.encode_batch([p for ps in per for p in ps])
        assert one_call == [ids for ps in per for ids in tok.encode_batch(ps)]
        assert one_call == [tok.encode(p) for ps in per for p in ps]


# --- sides and alignments -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["smol_gemma", "llama_qwen"])
def test_render_sides_is_render_side(request: pytest.FixtureRequest, real: list[Conversation], name: str) -> None:
    pair, convs = _pair(request, name)
    for side in pair:
        batch = render_sides(side, real + convs, now=NOW)
        for b, conv in enumerate(real + convs):
            assert_same(batch.sides[b], render_side(side, conv, now=NOW), f"{name} conversation {b}")


def test_labels_fall_back_per_conversation_alike(smol_gemma: tuple[ChatSide, ChatSide],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Where a rendering's turn cuts are out of order, `_label` labels the batch one rendering at a time."""
    from xtalign.chat import side_batch

    monkeypatch.setattr(side_batch, "_cuts", lambda b: None)
    for side in smol_gemma:
        batch = render_sides(side, CONVERSATIONS, now=NOW)
        assert_same(list(batch.sides), [render_side(side, c, now=NOW) for c in CONVERSATIONS])


@pytest.mark.parametrize("name", ["smol_gemma", "llama_qwen"])
def test_align_batch_is_align_conversation(request: pytest.FixtureRequest, real: list[Conversation], name: str,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    (student, teacher), convs = _pair(request, name)
    convs = real + convs
    s, t = render_sides(student, convs, now=NOW), render_sides(teacher, convs, now=NOW)
    want = {}
    for train_on in ("assistant", "all"):
        want[train_on] = [align_conversation(c, student=student, teacher=teacher, train_on=train_on, now=NOW)
                          for c in convs]
        got = align_batch(convs, s, t, student=student, teacher=teacher, train_on=train_on, now=NOW)
        assert_same(got, want[train_on], f"{name} {train_on}")
    monkeypatch.setattr(align_batch_module, "align_conversation", None)  # the public call must not fall back
    assert_same(align_conversations(convs, student=student, teacher=teacher, now=NOW), want["assistant"])


@pytest.mark.parametrize("name", ["smol_gemma", "llama_qwen"])
def test_truncated_in_a_batch_as_alone(request: pytest.FixtureRequest, real: list[Conversation], name: str) -> None:
    (student, teacher), convs = _pair(request, name)
    kw = {"student": student, "teacher": teacher, "max_student_tokens": 160, "max_teacher_tokens": 170, "now": NOW}
    fit = []
    for c in real[:30] + convs:
        try:
            fit.append((c, align_conversation(c, **kw)))  # type: ignore[arg-type]
        except ChatTemplateError:
            raise
        except ValueError:  # too_long: nothing fits the budget
            continue
    assert {a.truncation for _, a in fit} >= {None, "messages", "content"}
    convs = [c for c, _ in fit]
    got = align_batch(convs, render_sides(student, convs, now=NOW), render_sides(teacher, convs, now=NOW),
                      **kw)  # type: ignore[arg-type]
    assert_same(got, [a for _, a in fit])


def test_a_refused_conversation_raises_as_alone(smol_gemma: tuple[ChatSide, ChatSide]) -> None:
    """Gemma-2's template refuses a system prompt: the batch raises the error `align_conversation` gives."""
    student, teacher = smol_gemma
    with pytest.raises(ChatTemplateError) as alone:
        align_conversation(WITH_SYSTEM, student=student, teacher=teacher, now=NOW)
    with pytest.raises(ChatTemplateError) as batch:
        align_conversations([CHAT, WITH_SYSTEM, CHAT], student=student, teacher=teacher, now=NOW)
    assert str(batch.value) == str(alone.value) == "template google-gemma-2-2b-it: System role not supported"
    with pytest.raises(ValueError, match="train_on"):
        align_conversations([CHAT], student=student, teacher=teacher, train_on="user")  # type: ignore[arg-type]
    assert align_conversations([], student=student, teacher=teacher) == []


# --- the engine's builder -----------------------------------------------------------------------------------


def _builder(pair: tuple[ChatSide, ...], seq_len: int, same: bool = False) -> Any:
    from xtalign.distill.data.chat import ChatBatchBuilder

    teachers = [pair[0]] if same else list(pair[1:])
    return ChatBatchBuilder(pair[0], teachers, [f"t{i}" for i in range(len(teachers))], seq_len=seq_len,
                            train_on="assistant", now=NOW, cache_size=0)


@pytest.mark.parametrize("seq_len,same", [(2048, False), (170, False), (2048, True)])
def test_builder_batches_are_the_rows_one_by_one(real: list[Conversation], smol_gemma: tuple[ChatSide, ChatSide],
                                                 seq_len: int, same: bool) -> None:
    builder = _builder(smol_gemma, seq_len, same)
    convs = [c for c in real[:24] + CONVERSATIONS[:4] if _aligns(builder, c)]
    rows = builder._rows(convs)
    assert_same(rows, [builder._row(*builder.align(c)) for c in convs])
    assert_same(builder.align_batch(convs), [builder.align(c) for c in convs])
    batch = builder.build(0, np.arange(len(convs)), convs)
    assert batch.student_ids.shape[0] == len(convs)


def test_builder_refuses_in_a_batch_as_alone(smol_gemma: tuple[ChatSide, ChatSide]) -> None:
    from xtalign.distill.data.chat import _keep_alignable

    builder = _builder(smol_gemma, 2048)
    convs = [CHAT, WITH_SYSTEM, CONVERSATIONS[1]]
    with pytest.raises(ChatTemplateError, match="System role not supported"):
        builder.align_batch(convs)
    with pytest.raises(ChatTemplateError, match="System role not supported"):
        builder.build(0, np.arange(3), convs)
    skipped: Counter[str] = Counter()
    assert _keep_alignable(convs, builder, strict=False, where="x", skipped=skipped) == [CHAT, CONVERSATIONS[1]]
    assert skipped == {"template": 1}
    assert_same(builder._rows([CHAT, CONVERSATIONS[1], CHAT]), [builder._row(*builder.align(c))
                                                              for c in (CHAT, CONVERSATIONS[1], CHAT)])


def _aligns(builder: Any, conv: Conversation) -> bool:
    try:
        builder.align(conv)
    except ValueError:
        return False
    return True
