"""Tests for xtalign.align: exact byte-boundary chunks, batching, the shift, truncation by text."""

from __future__ import annotations

import bisect

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xtalign.align import (
    align_ends,
    align_ids,
    align_text,
    align_texts,
    common_boundaries,
    cut_point,
    prediction_chunks,
    token_ends,
    truncate_text,
)
from xtalign.zoo import Tokenizer, load_tokenizer

PAIRS = [("llama3", "qwen3"), ("llama3", "gemma3"), ("mistral-v1", "llama3"), ("gpt2", "phi3"), ("tekken", "qwen3")]

TEXTS = [
    "The year 2025 had 365 days.",
    "   leading spaces,\ttabs\t\tand\n\n\nnewlines   ",
    " starts with one space",
    "日本語のテキスト、中文文本，한국어 텍스트",
    "family 👨‍👩‍👧‍👦, flag 🏳️‍🌈, thumbs 👍🏽 and 🎉🎉🎉",
    "combining: e\u0301 a\u0308 n\u0303 \u0915\u094d\u0937 (Devanagari), ﬁ ligature, ＡＢＣ fullwidth",
    "def fib(n: int) -> int:\n    return n if n < 2 else fib(n - 1) + fib(n - 2)  # O(2^n)\n",
    "pi = 3.14159265358979323846264338327950288419716939937510; id=00001234567890",
    "mixed: Привет мир, مرحبا بالعالم, שלום, Γειά σου, ไทย, emoji🙂end",
    "\u200b zero width \u00a0 nbsp \ufeff bom \x00 nul \x7f del",
    "x",
    "🙂",
]

# fragments the property tests glue together (SentencePiece maps a literal U+2581 to a space: excluded)
FRAGMENTS = [" ", "  ", "\t", "\n", "\r\n", "the", " cat", "Hello", "日本語", "中文", "👨‍👩‍👧", "🏳️‍🌈", "e\u0301",
             "ＡＢＣ", "ﬁ", "1234567890123", "3.14", "def f(x):", "    return", "{}[]();", "é", "ß", "Ω", "\u200b"]
text_st = st.lists(
    st.sampled_from(FRAGMENTS) | st.text(st.characters(codec="utf-8", exclude_characters="\u2581"), max_size=4),
    max_size=10,
).map("".join)


@pytest.fixture(scope="module")
def zoo() -> dict[str, Tokenizer]:
    names = {n for pair in PAIRS for n in pair} | {"bert"}
    return {n: load_tokenizer(n) for n in sorted(names)}


# --- an independent pure-Python reference ----------------------------------------------------------


def ref_ends(tok: Tokenizer, ids: list[int]) -> list[int]:
    """Byte end of each token, by walking the tokens one by one."""
    out, pos, phantom = [], 0, tok.dummy_prefix
    for i in ids:
        n = len(tok.vocab.token_bytes[i])
        if phantom and n:
            n, phantom = n - 1, False
        pos += n
        out.append(pos)
    return out


def ref_chunks(s_ends: list[int], t_ends: list[int]) -> tuple[list[int], list[int], list[int]]:
    """Chunk ids by definition: boundaries = offsets where both sides end a text-carrying token."""

    def carrying(ends: list[int]) -> list[bool]:
        return [e > (ends[i - 1] if i else 0) for i, e in enumerate(ends)]

    s_c, t_c = carrying(s_ends), carrying(t_ends)
    bounds = sorted({e for e, c in zip(s_ends, s_c, strict=True) if c}
                    & {e for e, c in zip(t_ends, t_c, strict=True) if c})

    def ids(ends: list[int], car: list[bool]) -> list[int]:
        return [bisect.bisect_left(bounds, e) if c else -1 for e, c in zip(ends, car, strict=True)]

    return ids(s_ends, s_c), ids(t_ends, t_c), bounds


def check_row(al, row: int, text: str, s_tok: Tokenizer, t_tok: Tokenizer) -> None:
    """Partition, byte agreement, minimality and padding of one row against the reference."""
    data = text.encode("utf-8")
    n = int(al.n_chunks[row])
    spans = al.chunk_bytes[row, :n]
    assert np.all(al.chunk_bytes[row, n:] == -1)
    if n:
        assert spans[0, 0] == 0 and spans[-1, 1] == len(data)
        assert np.all(spans[1:, 0] == spans[:-1, 1]) and np.all(spans[:, 1] > spans[:, 0])
    for chunk, ids_pad, length, tok in ((al.student_chunk, al.student_ids, al.student_len, s_tok),
                                        (al.teacher_chunk, al.teacher_ids, al.teacher_len, t_tok)):
        ln = int(length[row])
        c, ids = chunk[row, :ln], ids_pad[row, :ln].tolist()
        assert np.all(chunk[row, ln:] == -1) and np.all(ids_pad[row, ln:] == -1)
        real = c[c >= 0]
        assert np.all(np.diff(real) >= 0) and set(real.tolist()) == set(range(n))  # contiguous, sorted
        for k in range(n):
            got = tok.vocab.decode_bytes([i for i, x in zip(ids, c.tolist(), strict=True) if x == k])
            want = data[spans[k, 0]:spans[k, 1]]
            # the SentencePiece phantom space rides on the first chunk's first token
            assert got == want or (tok.dummy_prefix and k == 0 and got == b" " + want), (k, got, want)
        # every token that carries bytes of the text sits in a chunk; the others get -1
        ref = ref_ends(tok, ids)
        assert [x >= 0 for x in c.tolist()] == [e > (ref[i - 1] if i else 0) for i, e in enumerate(ref)]


def check_reference(al, row: int, s_tok: Tokenizer, t_tok: Tokenizer) -> None:
    """Exact equality with the pure-Python definition (which is minimal by construction)."""
    s_ids = al.student_ids[row, : al.student_len[row]].tolist()
    t_ids = al.teacher_ids[row, : al.teacher_len[row]].tolist()
    rs, rt, bounds = ref_chunks(ref_ends(s_tok, s_ids), ref_ends(t_tok, t_ids))
    assert al.student_chunk[row, : len(rs)].tolist() == rs
    assert al.teacher_chunk[row, : len(rt)].tolist() == rt
    assert al.chunk_bytes[row, : len(bounds), 1].tolist() == bounds


# --- hand-computed cases ---------------------------------------------------------------------------


def test_hand_computed_chunks() -> None:
    # row 0: student "The| ye|ar" ends 3,6,8 vs teacher "Th|e |year" ends 2,4,8: no interior common end
    # row 1: ends 3,5,8 vs 2,5,6,8: common ends 5 and 8 (the teacher row is one longer: padding)
    al = align_ends([[3, 6, 8], [3, 5, 8]], [[2, 4, 8], [2, 5, 6, 8]])
    assert al.student_chunk.tolist() == [[0, 0, 0], [0, 0, 1]]
    assert al.teacher_chunk.tolist() == [[0, 0, 0, -1], [0, 0, 1, 1]]
    assert al.n_chunks.tolist() == [1, 2]
    assert al.chunk_bytes.tolist() == [[[0, 8], [-1, -1]], [[0, 5], [5, 8]]]
    assert al.student_len.tolist() == [3, 3] and al.teacher_len.tolist() == [3, 4]


def test_specials_get_minus_one() -> None:
    # bos (end 0), two tokens, eos (repeats the last end); a special in the middle repeats its left end
    al = align_ends([[0, 3, 5, 5]], [[0, 2, 2, 5]])
    assert al.student_chunk.tolist() == [[-1, 0, 0, -1]]
    assert al.teacher_chunk.tolist() == [[-1, 0, -1, 0]]


def test_boundary_inside_utf8_character_counts_only_if_shared() -> None:
    # "é" = C3 A9: both sides split the character -> two chunks; one side whole -> one chunk
    assert align_ends([[1, 2]], [[1, 2]]).n_chunks.tolist() == [2]
    al = align_ends([[1, 2]], [[2]])
    assert al.student_chunk.tolist() == [[0, 0]] and al.teacher_chunk.tolist() == [[0]]


def test_empty_rows_and_validation() -> None:
    al = align_ends([[], [0], [4]], [[], [], [1, 4]])
    assert al.n_chunks.tolist() == [0, 0, 1]
    assert al.student_chunk.tolist() == [[-1], [-1], [0]]
    with pytest.raises(ValueError, match="row 0: student tokens cover 5 bytes, teacher tokens 4"):
        align_ends([[5]], [[4]])
    with pytest.raises(ValueError, match="non-decreasing"):
        align_ends([[3, 2, 4]], [[4]])
    with pytest.raises(ValueError, match="batch sizes differ"):
        align_ends([[1]], [[1], [1]])
    with pytest.raises(ValueError, match="text has 2"):
        align_ends([[1]], [[1]], texts=["ab"])


def test_common_boundaries_and_cut_point() -> None:
    s, t = np.array([0, 3, 5, 8, 8]), np.array([2, 5, 6, 8])
    assert common_boundaries(s, t).tolist() == [5, 8]
    assert cut_point(s, t, max_student_tokens=3, max_teacher_tokens=9) == (5, 3, 2)  # bos kept in the budget
    assert cut_point(s, t, max_student_tokens=9, max_teacher_tokens=9) == (8, 5, 4)
    assert cut_point(s, t, max_student_tokens=1, max_teacher_tokens=9) == (0, 1, 0)
    # a common boundary inside a UTF-8 character is not a place to cut text
    assert cut_point([1, 2], [1, 2], max_student_tokens=1, max_teacher_tokens=1, text="é".encode()) == (0, 0, 0)


def test_prediction_shift() -> None:
    tok = np.array([[-1, 0, 0, 1, -1], [0, 1, 2, -1, -1]])  # row 0: bos .. eos ; row 1: padded
    assert prediction_chunks(tok).tolist() == [[0, 0, 1, -1, -1], [1, 2, -1, -1, -1]]
    al = align_ends([[0, 3, 5, 5]], [[5]])
    sh = al.shifted()
    assert sh.is_shifted and sh.student_chunk.tolist() == [[0, 0, -1, -1]] and sh.teacher_chunk.tolist() == [[-1]]
    with pytest.raises(ValueError, match="already shifted"):
        sh.shifted()


# --- real tokenizers -------------------------------------------------------------------------------


@pytest.mark.parametrize(("s_name", "t_name"), PAIRS)
def test_real_pairs_fixed_texts(zoo: dict[str, Tokenizer], s_name: str, t_name: str) -> None:
    s_tok, t_tok = zoo[s_name], zoo[t_name]
    al = align_texts(TEXTS, student=s_tok, teacher=t_tok)
    for row, text in enumerate(TEXTS):
        check_row(al, row, text, s_tok, t_tok)
        check_reference(al, row, s_tok, t_tok)
        one = align_text(text, student=s_tok, teacher=t_tok)  # batching with padding == per-row
        for name in ("student_chunk", "teacher_chunk", "student_ids", "teacher_ids"):
            width = getattr(one, name).shape[1]
            assert np.array_equal(getattr(al, name)[row, :width], getattr(one, name)[0]), name
            assert np.all(getattr(al, name)[row, width:] == -1)
        assert al.n_chunks[row] == one.n_chunks[0]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(text_st, min_size=1, max_size=4), pair=st.sampled_from(PAIRS))
def test_property_partition_and_minimality(zoo: dict[str, Tokenizer], texts: list[str],
                                           pair: tuple[str, str]) -> None:
    s_tok, t_tok = zoo[pair[0]], zoo[pair[1]]
    al = align_texts(texts, student=s_tok, teacher=t_tok, add_bos=True, add_eos=True)
    for row, text in enumerate(texts):
        check_row(al, row, text, s_tok, t_tok)
        check_reference(al, row, s_tok, t_tok)


def test_identical_tokenizers_give_one_to_one_chunks(zoo: dict[str, Tokenizer]) -> None:
    for name in ("llama3", "mistral-v1"):
        tok = zoo[name]
        al = align_texts(TEXTS, student=tok, teacher=tok)
        assert np.array_equal(al.student_chunk, al.teacher_chunk)
        for row in range(len(TEXTS)):
            real = al.student_chunk[row][al.student_chunk[row] >= 0]
            assert real.tolist() == list(range(int(al.n_chunks[row])))  # one token per chunk


def test_special_tokens_and_shift_on_real_pair(zoo: dict[str, Tokenizer]) -> None:
    s_tok, t_tok = zoo["tekken"], zoo["qwen3"]  # qwen3 has no bos role: only its eos is added
    al = align_text("Hello world", student=s_tok, teacher=t_tok, add_bos=True, add_eos=True)
    s_ids, t_ids = al.student_ids[0].tolist(), al.teacher_ids[0].tolist()
    assert s_ids[0] == s_tok.vocab.roles["bos"] and s_ids[-1] == s_tok.vocab.roles["eos"]
    assert t_ids[0] != t_tok.vocab.roles["eos"] and t_ids[-1] == t_tok.vocab.roles["eos"]
    assert al.student_chunk[0, 0] == -1 and al.student_chunk[0, -1] == -1 and al.teacher_chunk[0, -1] == -1
    pred = al.shifted()
    # the bos position predicts the first text token (chunk 0); the one before eos predicts nothing
    assert pred.student_chunk[0, 0] == 0 and pred.student_chunk[0, -2] == -1 and pred.student_chunk[0, -1] == -1
    assert pred.student_chunk[0, :-1].tolist() == al.student_chunk[0, 1:].tolist()


def test_align_ids_with_vocab_and_token_ends(zoo: dict[str, Tokenizer]) -> None:
    s_tok, t_tok = zoo["llama3"], zoo["qwen3"]
    s_ids, t_ids = s_tok.encode_batch(TEXTS), t_tok.encode_batch(TEXTS)
    a = align_ids(s_ids, t_ids, student=s_tok.vocab, teacher=t_tok.vocab, texts=TEXTS)
    b = align_ids([np.asarray(x) for x in s_ids], t_ids, student=s_tok, teacher=t_tok)
    assert np.array_equal(a.student_chunk, b.student_chunk) and np.array_equal(a.teacher_chunk, b.teacher_chunk)
    assert token_ends([s_ids[0]], s_tok)[0].tolist() == ref_ends(s_tok, s_ids[0])
    sp = zoo["mistral-v1"]
    ids = sp.encode(" hi there")
    assert token_ends([ids], sp)[0].tolist() == ref_ends(sp, ids) == sp.byte_ends(" hi there")[1].tolist()
    with pytest.raises(ValueError, match="outside vocabulary"):
        align_ids([[10**7]], [[1]], student=s_tok, teacher=t_tok)


def test_non_lossless_tokenizer_falls_back_to_offsets(zoo: dict[str, Tokenizer]) -> None:
    bert, llama = zoo["bert"], zoo["llama3"]
    texts = ["  Hello, World! Numbers 12345 and CJK 日本語  ", "ÉCOLE café naïve", "x"]
    al = align_texts(texts, student=bert, teacher=llama, add_bos=True)
    for row, text in enumerate(texts):
        n = int(al.n_chunks[row])
        spans = al.chunk_bytes[row, :n]
        assert spans[0, 0] == 0 and spans[-1, 1] == len(text.encode()) and np.all(spans[1:, 0] == spans[:-1, 1])
        for chunk, length in ((al.student_chunk, al.student_len), (al.teacher_chunk, al.teacher_len)):
            c = chunk[row, : length[row]]
            real = c[c >= 0]
            assert np.all(np.diff(real) >= 0) and set(real.tolist()) == set(range(n))
        # the llama3 side is exact: its tokens in each chunk spell the chunk's text
        for k, ch in enumerate(al.chunks(row)):
            assert llama.vocab.decode_bytes(ch["teacher"]) == text.encode()[spans[k, 0]:spans[k, 1]]
    assert al.student_chunk[0, 0] == -1  # bert's [CLS] as bos


# --- truncation by text ----------------------------------------------------------------------------


@pytest.mark.parametrize(("s_name", "t_name"), PAIRS)
def test_truncation_by_text_covers_identical_bytes(zoo: dict[str, Tokenizer], s_name: str, t_name: str) -> None:
    s_tok, t_tok = zoo[s_name], zoo[t_name]
    text = " ".join(TEXTS)
    full_s, full_t = len(s_tok.encode(text)), len(t_tok.encode(text))
    for b_s, b_t in [(1, 1), (7, 11), (20, 13), (40, 40), (full_s, full_t), (10**6, 5)]:
        tr = truncate_text(text, student=s_tok, teacher=t_tok, max_student_tokens=b_s, max_teacher_tokens=b_t,
                           add_bos=True)
        assert len(tr.student_ids) <= b_s and len(tr.teacher_ids) <= b_t
        data = tr.text.encode()
        assert data == text.encode()[: tr.n_bytes]
        for tok, ids in ((s_tok, tr.student_ids), (t_tok, tr.teacher_ids)):
            assert tok.decode_bytes(ids) == data  # both sides cover exactly the same bytes
        al = align_ids([tr.student_ids], [tr.teacher_ids], student=s_tok, teacher=t_tok, texts=[tr.text])
        check_row(al, 0, tr.text, s_tok, t_tok)
    tr = truncate_text(text, student=s_tok, teacher=t_tok, max_student_tokens=full_s, max_teacher_tokens=full_t)
    assert tr.text == text  # budgets that fit everything keep everything


def test_truncation_is_maximal_and_beats_equal_token_counts(zoo: dict[str, Tokenizer]) -> None:
    s_tok, t_tok = zoo["llama3"], zoo["qwen3"]
    text = "In 2025 there were 8123456789 people and 365 days; " * 3
    s_ids, t_ids = s_tok.encode(text), t_tok.encode(text)
    s_e, t_e = token_ends([s_ids], s_tok)[0], token_ends([t_ids], t_tok)[0]
    for budget in range(1, 40):
        n_bytes, n_s, n_t = cut_point(s_e, t_e, max_student_tokens=budget, max_teacher_tokens=budget)
        # maximal: the next common boundary would need more than the budget on some side
        nxt = common_boundaries(s_e, t_e)
        nxt = nxt[nxt > n_bytes]
        if nxt.size:
            need_s = int(np.searchsorted(s_e, nxt[0])) + 1
            need_t = int(np.searchsorted(t_e, nxt[0])) + 1
            assert need_s > budget or need_t > budget
    # NeMo-style: cut both sides to the same token count -> the tails cover different text
    differ = [n for n in range(1, 40) if s_tok.decode_bytes(s_ids[:n]) != t_tok.decode_bytes(t_ids[:n])]
    assert len(differ) > 20
