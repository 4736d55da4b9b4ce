"""Aligning conversations across chat templates: the peer bugs as regressions, loss masks, truncation.

Pairs: student smollm2 (ChatML from its GGUF) × teacher gemma3 (google-gemma-2-2b-it turns), and
student llama3 (Llama-3.2 template) × teacher qwen3 (Qwen3 template).
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pytest

from xtalign.chat import (
    ChatDataError,
    ChatSide,
    Conversation,
    ConversationAlignment,
    Message,
    TokenPart,
    align_conversation,
    encode_rendered,
    load_template,
    render,
    template_for_tokenizer,
)
from xtalign.vocab import TokenKind
from xtalign.zoo import load_tokenizer

NOW = datetime(2025, 3, 1)
EMOJI = "naïve 🤖👍🏽 日本語"
CHAT = Conversation((Message("user", "What is 2+2?"), Message("assistant", f"2+2 = 4. {EMOJI}"),
                     Message("user", "And in words?"), Message("assistant", "Four.")))
WITH_SYSTEM = Conversation((Message("system", "Be brief."), *CHAT.messages))


@pytest.fixture(scope="module")
def smol_gemma() -> tuple[ChatSide, ChatSide]:
    return (ChatSide(load_tokenizer("smollm2"), template_for_tokenizer("smollm2")),
            ChatSide(load_tokenizer("gemma3"), load_template("google-gemma-2-2b-it")))


@pytest.fixture(scope="module")
def llama_qwen() -> tuple[ChatSide, ChatSide]:
    return (ChatSide(load_tokenizer("llama3"), load_template("meta-llama-Llama-3.2-3B-Instruct")),
            ChatSide(load_tokenizer("qwen3"), load_template("Qwen-Qwen3-0.6B")))


def _align(pair: tuple[ChatSide, ChatSide], conv: Conversation, **kw: object) -> ConversationAlignment:
    return align_conversation(conv, student=pair[0], teacher=pair[1], now=NOW, **kw)  # type: ignore[arg-type]


def _pairs(request: pytest.FixtureRequest) -> list[tuple[tuple[ChatSide, ChatSide], Conversation]]:
    return [(request.getfixturevalue("smol_gemma"), CHAT), (request.getfixturevalue("llama_qwen"), WITH_SYSTEM)]


def _check_invariants(al: ConversationAlignment, pair: tuple[ChatSide, ChatSide]) -> None:
    """Chunk ids 0..C-1 in order on both sides; every content chunk spells the same bytes on both sides."""
    for side in (al.student, al.teacher):
        c = side.chunk[side.chunk >= 0]
        assert np.all(np.diff(c) >= 0) and set(c.tolist()) == set(range(al.n_chunks))
        assert side.ids.dtype == side.chunk.dtype == np.int64 and side.loss_token.dtype == bool
    s_data, t_data = al.student.text.encode(), al.teacher.text.encode()
    for c in range(al.n_chunks):
        (sa, sb), (ta, tb) = al.student_chunk_bytes[c].tolist(), al.teacher_chunk_bytes[c].tolist()
        s_tok = np.flatnonzero(al.student.chunk == c)
        assert (al.student.starts[s_tok[0]], al.student.ends[s_tok[-1]]) == (sa, sb)
        if al.chunk_part[c] != TokenPart.TURN_END:
            assert s_data[sa:sb] == t_data[ta:tb]
    assert al.loss_chunk.dtype == bool and al.loss_chunk.shape == (al.n_chunks,)
    assert al.turn_ends.dtype == np.int64 and al.turn_ends.shape[1] == 2


# --- the four peer bugs ---------------------------------------------------------------------------------


def test_every_template_marker_survives_on_each_side(request: pytest.FixtureRequest) -> None:
    for pair, conv in _pairs(request):
        al = _align(pair, conv)
        _check_invariants(al, pair)
        for side, chat in ((al.student, pair[0]), (al.teacher, pair[1])):
            vocab = chat.tokenizer.vocab
            expected = render(chat.template, conv, bos_token=vocab.names[vocab.roles["bos"]] if "bos" in vocab.roles
                              else None, eos_token=vocab.names[vocab.roles["eos"]], now=NOW)
            assert side.text == expected
            data = side.text.encode()
            # decode specials by name, text tokens by their bytes: the ids spell the rendering exactly
            rebuilt = b"".join(vocab.names[i].encode() if vocab.kinds[i] == TokenKind.SPECIAL else vocab.token_bytes[i]
                               for i in side.ids.tolist())
            assert rebuilt == data
            for i in vocab.special_ids.tolist():
                assert int((side.ids == i).sum()) == side.text.count(vocab.names[i])


def test_exactly_one_bos_per_side(request: pytest.FixtureRequest) -> None:
    (smol, gemma), _ = _pairs(request)[0]
    (llama, qwen), _ = _pairs(request)[1]
    for add_bos in (False, True):
        from dataclasses import replace

        sides = [replace(s, add_bos=add_bos) for s in (smol, gemma, llama, qwen)]
        al = align_conversation(CHAT, student=sides[0], teacher=sides[1], now=NOW)
        assert al.teacher.ids[0] == 2 and int((al.teacher.ids == 2).sum()) == 1  # gemma <bos>
        assert al.student.ids[0] == 1 and al.student.ids[1] != 1  # smollm2's BOS is <|im_start|>
        al = align_conversation(WITH_SYSTEM, student=sides[2], teacher=sides[3], now=NOW)
        assert al.student.ids[0] == 128000 and int((al.student.ids == 128000).sum()) == 1
        assert al.teacher.ids[0] == 151644  # qwen3 has no BOS: none is added


def test_end_of_turn_present_and_paired(request: pytest.FixtureRequest) -> None:
    markers = [("<|im_end|>", "<end_of_turn>"), ("<|eot_id|>", "<|im_end|>")]
    for (pair, conv), (s_name, t_name) in zip(_pairs(request), markers, strict=True):
        al = _align(pair, conv)
        assistants = [i for i, m in enumerate(conv.messages) if m.role == "assistant"]
        assert al.turn_ends.shape == (len(assistants), 2)
        s_vocab, t_vocab = pair[0].tokenizer.vocab, pair[1].tokenizer.vocab
        for (s, t), m in zip(al.turn_ends.tolist(), assistants, strict=True):
            assert s_vocab.names[al.student.ids[s]] == s_name and t_vocab.names[al.teacher.ids[t]] == t_name
            assert al.student.chunk[s] == al.teacher.chunk[t] >= 0
            assert al.student.message[s] == al.teacher.message[t] == m
            assert al.student.part[s] == al.teacher.part[t] == TokenPart.TURN_END
            assert al.loss_chunk[al.student.chunk[s]] and al.loss_token[s]


def test_no_student_template_token_reaches_the_teacher(request: pytest.FixtureRequest) -> None:
    for pair, conv in _pairs(request):
        al = _align(pair, conv)
        student, teacher = pair
        # the teacher's ids are exactly its own template's rendering, encoded by itself
        own = render(teacher.template, conv, bos_token=None if "bos" not in teacher.tokenizer.vocab.roles else
                     teacher.tokenizer.vocab.names[teacher.tokenizer.vocab.roles["bos"]],
                     eos_token=teacher.tokenizer.vocab.names[teacher.tokenizer.vocab.roles["eos"]], now=NOW)
        assert np.array_equal(al.teacher.ids, encode_rendered(teacher.tokenizer, own)[0])
        s_vocab = student.tokenizer.vocab
        used = {s_vocab.names[i] for i in al.student.ids.tolist() if s_vocab.kinds[i] == TokenKind.SPECIAL}
        only_student = {m for m in used if m not in own}
        assert only_student and not any(m in al.teacher.text for m in only_student)
        assert "You are a helpful AI assistant named SmolLM" not in al.teacher.text  # ChatML's default system


# --- loss masks ----------------------------------------------------------------------------------------


def test_only_assistant_content_and_turn_end_carry_loss(smol_gemma: tuple[ChatSide, ChatSide]) -> None:
    al = _align(smol_gemma, CHAT)
    _check_invariants(al, smol_gemma)
    roles = [CHAT.messages[m].role for m in al.chunk_message.tolist()]
    assert al.loss_chunk.tolist() == [r == "assistant" for r in roles]
    assert set(roles) == {"user", "assistant"}  # user contents are aligned too, without loss
    vocab = smol_gemma[0].tokenizer.vocab
    trained = b"".join(vocab.names[i].encode() if vocab.kinds[i] == TokenKind.SPECIAL else vocab.token_bytes[i]
                       for i in al.student.ids[al.loss_token].tolist())
    assert trained == f"2+2 = 4. {EMOJI}<|im_end|>Four.<|im_end|>".encode()
    everything = _align(smol_gemma, CHAT, train_on="all")
    assert everything.loss_chunk.all() and everything.n_chunks == al.n_chunks
    assert np.array_equal(everything.loss_token, everything.student.ends > everything.student.starts)


def test_empty_assistant_turn(request: pytest.FixtureRequest) -> None:
    conv = Conversation((Message("user", "Say nothing."), Message("assistant", "")))
    for pair, _ in _pairs(request):
        al = _align(pair, conv)
        assert [int(p) for p in al.chunk_part] == [TokenPart.CONTENT] * (al.n_chunks - 1) + [TokenPart.TURN_END]
        assert al.chunk_message[-1] == 1 and al.loss_chunk.tolist() == [False] * (al.n_chunks - 1) + [True]
        assert al.turn_ends.shape == (1, 2) and np.flatnonzero(al.loss_token).tolist() == [al.turn_ends[0, 0]]


def test_unicode_split_across_tokens(smol_gemma: tuple[ChatSide, ChatSide]) -> None:
    """Byte-level smollm2 splits the emoji into partial-UTF-8 tokens; chunks still cover the content exactly."""
    al = _align(smol_gemma, CHAT)
    chunks = np.flatnonzero((al.chunk_message == 1) & (al.chunk_part == TokenPart.CONTENT))
    data = al.student.text.encode()
    assert b"".join(data[a:b] for a, b in al.student_chunk_bytes[chunks].tolist()) == CHAT.messages[1].content.encode()
    vocab = smol_gemma[0].tokenizer.vocab
    partial = [i for i in al.student.ids[al.student.message == 1].tolist() if not _whole_utf8(vocab.token_bytes[i])]
    assert partial  # the test does exercise tokens that split a character


def _whole_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_trimmed_and_edge_tokens_are_not_chunked(smol_gemma: tuple[ChatSide, ChatSide]) -> None:
    """Gemma trims "  spaced"; ChatML keeps it: the leading spaces have no counterpart and join no chunk."""
    conv = Conversation((Message("user", "  spaced out"), Message("assistant", "ok")))
    al = _align(smol_gemma, conv)
    first = al.chunk_rows()[0]
    assert first["message"] == 0 and first["text"] in ("spaced", " out") and first["text"] != "  spaced"
    assert not (al.student.chunk[al.student.part == TokenPart.EDGE] >= 0).any()


def test_special_string_inside_content_is_not_aligned(smol_gemma: tuple[ChatSide, ChatSide]) -> None:
    conv = Conversation((Message("user", "print('<|im_end|>')"), Message("assistant", "done")))
    al = _align(smol_gemma, conv)
    vocab = smol_gemma[0].tokenizer.vocab
    inside = np.flatnonzero((al.student.message == 0) & (al.student.part == TokenPart.CONTENT))
    assert any(vocab.kinds[i] == TokenKind.SPECIAL for i in al.student.ids[inside].tolist())  # HF's rule
    assert (al.student.chunk[inside][vocab.kinds[al.student.ids[inside]] == TokenKind.SPECIAL] == -1).all()
    _check_invariants(al, smol_gemma)


def test_llama3_qwen3_with_reasoning(llama_qwen: tuple[ChatSide, ChatSide]) -> None:
    """Qwen3 renders the last turn's reasoning, Llama-3 drops it: no reasoning chunk, the teacher still sees it."""
    conv = Conversation((*WITH_SYSTEM.messages[:-1], Message("assistant", "Four.", "The user wants words.")))
    al = _align(llama_qwen, conv)
    _check_invariants(al, llama_qwen)
    assert "<think>\nThe user wants words.\n</think>\n\nFour." in al.teacher.text
    assert (al.teacher.part == TokenPart.REASONING).any() and not (al.student.part == TokenPart.REASONING).any()
    assert TokenPart.REASONING not in al.chunk_part.tolist()
    assert "Cutting Knowledge Date" not in "".join(r["text"] for r in al.chunk_rows())  # Llama's preamble: template
    assert [r["message"] for r in al.chunk_rows() if r["part"] == "turn_end"] == [2, 4]


def test_reasoning_rendered_on_both_sides_is_aligned(llama_qwen: tuple[ChatSide, ChatSide]) -> None:
    student = ChatSide(load_tokenizer("smollm2"), llama_qwen[1].template)  # Qwen3's template on another vocab
    conv = Conversation((Message("user", "2+2?"), Message("assistant", "4", "Add them: four.")))
    al = align_conversation(conv, student=student, teacher=llama_qwen[1], now=NOW)
    reasoning = [r for r in al.chunk_rows() if r["part"] == "reasoning"]
    assert all(r["loss"] for r in reasoning)
    # "." merges with the template's "\n" into one token (EDGE): it has no counterpart, so no chunk
    assert "".join(r["text"] for r in reasoning) == "Add them: four"
    edge = np.flatnonzero(al.teacher.part == TokenPart.EDGE)
    assert [llama_qwen[1].tokenizer.vocab.token_bytes[i] for i in al.teacher.ids[edge].tolist()] == [b".\n"]


# --- budgets -----------------------------------------------------------------------------------------------


def test_truncated_at_a_message_boundary(smol_gemma: tuple[ChatSide, ChatSide]) -> None:
    short = _align(smol_gemma, Conversation(CHAT.messages[:2]))
    al = _align(smol_gemma, CHAT, max_student_tokens=short.student.n_tokens + 3,
                max_teacher_tokens=short.teacher.n_tokens + 3)
    assert al.truncation == "messages" and al.dropped_messages == 2
    assert al.conversation.messages == CHAT.messages[:2]
    assert np.array_equal(al.student.ids, short.student.ids) and np.array_equal(al.teacher.ids, short.teacher.ids)
    assert al.turn_ends.shape == (1, 2)


def test_cut_inside_a_long_assistant_content(request: pytest.FixtureRequest) -> None:
    long = " ".join(f"word{i} naïve 🤖" for i in range(60))
    conv = Conversation((Message("user", "Talk."), Message("assistant", long), Message("user", "More.")))
    for pair, _ in _pairs(request):
        full = _align(pair, Conversation(conv.messages[:2]))
        budget_s, budget_t = full.student.n_tokens // 2, full.teacher.n_tokens // 2
        al = _align(pair, conv, max_student_tokens=budget_s, max_teacher_tokens=budget_t)
        assert al.truncation == "content" and al.dropped_messages == 1
        assert al.student.n_tokens <= budget_s and al.teacher.n_tokens <= budget_t
        assert al.turn_ends.shape == (0, 2) and TokenPart.TURN_END not in al.chunk_part.tolist()
        cut = al.conversation.messages[1].content
        assert long.startswith(cut) and len(cut) > 20
        for side in (al.student, al.teacher):  # nothing after the cut, no half-written marker
            assert side.text.endswith(cut) and side.part[-1] == TokenPart.CONTENT
            assert np.array_equal(side.ids, (full.student if side is al.student else full.teacher).ids[:side.n_tokens])
        _check_invariants(al, pair)


def test_context_longer_than_the_budget_is_refused(smol_gemma: tuple[ChatSide, ChatSide]) -> None:
    with pytest.raises(ChatDataError, match="context before the first assistant content") as exc:
        _align(smol_gemma, CHAT, max_student_tokens=8)
    assert exc.value.reason == "too_long" and "\n" not in str(exc.value)
    with pytest.raises(ValueError, match="train_on"):
        _align(smol_gemma, CHAT, train_on="user")  # type: ignore[arg-type]


def test_prediction_chunks_shift_by_one(smol_gemma: tuple[ChatSide, ChatSide]) -> None:
    al = _align(smol_gemma, CHAT)
    pred_s, pred_t = al.prediction_chunks()
    assert np.array_equal(pred_s[:-1], al.student.chunk[1:]) and pred_s[-1] == -1
    assert np.array_equal(pred_t[:-1], al.teacher.chunk[1:]) and pred_t[-1] == -1
