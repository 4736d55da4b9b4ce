"""The projection W: hand-computed cases on tiny in-memory tokenizers, properties on real zoo pairs."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from xtalign.projection import ProjectionConfig, RowSource, build_projection, encode_exact
from xtalign.vocab import TokenKind, make_vocab
from xtalign.zoo.tokenizer import GreedyTrieBackend, Tokenizer

N, S, B, U = TokenKind.NORMAL, TokenKind.SPECIAL, TokenKind.BYTE, TokenKind.UNUSED


class DummyPrefixBackend:
    """SentencePiece-like: a phantom space is prepended to every non-empty text."""

    def __init__(self, inner: GreedyTrieBackend) -> None:
        self.inner = inner

    def encode(self, text: str) -> list[int]:
        return self.inner.encode(" " + text) if text else []

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]


def tiny(name: str, entries: list[tuple[object, int]], roles: dict[str, int] | None = None, *,
         dummy_prefix: bool = False, backend: object = None, model_rows: int | None = None) -> Tokenizer:
    """entries: (bytes, NORMAL) | (name, SPECIAL/UNUSED) | (byte value, BYTE), in id order."""
    tb, kinds, names = [], [], []
    for value, kind in entries:
        if kind == B:
            tb.append(bytes([value])), names.append(f"<0x{value:02X}>")
        elif kind == N:
            tb.append(value), names.append(value.decode("utf-8", errors="backslashreplace"))
        else:
            tb.append(b""), names.append(value)
        kinds.append(kind)
    vocab = make_vocab(name, tb, kinds, names, roles)

    def factory() -> object:
        greedy = GreedyTrieBackend(vocab.bytes_to_id)
        return backend or (DummyPrefixBackend(greedy) if dummy_prefix else greedy)

    return Tokenizer(name=name, family="test", source="test", vocab=vocab, backend_factory=factory,
                     dummy_prefix=dummy_prefix, model_rows=model_rows)


TEACHER = [("<unk>", S), ("<s>", S), ("</s>", S), ("<|im_start|>", S), ("<|im_end|>", S), ("<|tool_x|>", S),
           (b" ", N), (b"a", N), (b"b", N), (b"c", N), (b"d", N), (b"x", N), (b"y", N), (b"z", N),   # 6..13
           (b"ab", N), (b"abcd", N), (b" the", N), (b"q", N), (0xC3, B), (b"w", N)]                    # 14..19
STUDENT = [("<|begin_of_text|>", S), ("<|end_of_text|>", S), ("<|start_header_id|>", S), ("<|eot_id|>", S),
           ("<tool_x>", S), ("<|reserved_special_token_0|>", U), ("<pad>", S),                          # 0..6
           (ord("a"), B), (0xC3, B), (0xFF, B),                                                         # 7..9
           (b" the", N), (b"a", N), (b"b", N), (b"c", N), (b"d", N),                                    # 10..14
           (b"abc", N), (b"xyz", N), (b"xy", N), (b"wxyzq", N), (b"a\xc3", N),                         # 15..19
           (b" ", N), (b"x", N), (b"y", N), (b"z", N), (b"q", N), (b"w", N)]                           # 20..25


@pytest.fixture(scope="module")
def pair() -> tuple[Tokenizer, Tokenizer]:
    teacher = tiny("tiny-teacher", TEACHER, {"unk": 0, "bos": 1, "eos": 2})
    student = tiny("tiny-student", STUDENT, {"bos": 0, "eos": 1, "pad": 6}, model_rows=28)
    return student, teacher


def row(proj, sid: int) -> list[tuple[int, float]]:
    return [(t, round(w, 6)) for t, w in proj.row(sid)]


def test_piece_weights_pinned() -> None:
    cfg = ProjectionConfig()
    assert np.round(cfg.piece_weights(2), 6).tolist() == [0.909091, 0.090909]
    assert np.round(cfg.piece_weights(3), 6).tolist() == [0.900901, 0.09009, 0.009009]


def test_exact_and_decompositions(pair) -> None:
    student, teacher = pair
    proj = build_projection(student, teacher, ProjectionConfig(reverse=False))
    assert row(proj, 10) == [(16, 1.0)] and proj.row_source[10] == RowSource.EXACT  # " the"
    assert row(proj, 15) == [(14, 0.909091), (9, 0.090909)]  # "abc" -> "ab" "c"
    assert row(proj, 16) == [(11, 0.900901), (12, 0.09009), (13, 0.009009)]  # "xyz" -> x y z
    assert row(proj, 17) == [(11, 0.909091), (12, 0.090909)]
    # five pieces, max_pieces 4: the fifth ("q") gets nothing; weights γ^i / (1 + γ + γ² + γ³)
    assert row(proj, 18) == [(19, 0.90009), (11, 0.090009), (12, 0.009001), (13, 0.0009)]
    # invalid UTF-8: "a" encoded as text, the lone 0xC3 byte-wise onto the teacher's byte-fallback token
    assert row(proj, 19) == [(7, 0.909091), (18, 0.090909)]


def test_reverse_pass_adds_and_ties_break_on_lower_id(pair) -> None:
    student, teacher = pair
    proj = build_projection(student, teacher)
    # teacher "abcd" re-encoded by the student is "abc" "d": +0.909091 on ("abc", "abcd"), equal to "ab"'s weight
    assert row(proj, 15) == [(14, 0.47619), (15, 0.47619), (9, 0.047619)]
    assert proj.row_source[15] == RowSource.DECOMPOSED
    assert row(proj, 14) == [(10, 1.0)]  # exact rows stay one-hot although "abcd" also adds to ("d", "abcd")


def test_top_k_cut_renormalises(pair) -> None:
    student, teacher = pair
    proj = build_projection(student, teacher, ProjectionConfig(top_k=2))
    assert proj.indices.shape == (28, 2)
    assert row(proj, 15) == [(14, 0.5), (15, 0.5)]
    assert row(proj, 18) == [(19, 0.909091), (11, 0.090909)]


def test_specials_bytes_and_empty_rows(pair) -> None:
    student, teacher = pair
    proj = build_projection(student, teacher)
    assert row(proj, 0) == [(1, 1.0)] and row(proj, 1) == [(2, 1.0)]  # bos, eos by role
    assert row(proj, 2) == [(3, 1.0)] and row(proj, 3) == [(4, 1.0)]  # turn start / end markers
    assert row(proj, 4) == [(5, 1.0)] and proj.row_source[4] == RowSource.SPECIAL_FUZZY
    assert proj.row_source[0] == RowSource.SPECIAL_ROLE
    assert row(proj, 7) == [(7, 1.0)] and row(proj, 8) == [(18, 1.0)]  # byte rows: normal "a", byte 0xC3
    assert proj.row_source[7] == RowSource.BYTE and proj.is_exact[[7, 8]].all()
    for empty in (5, 6, 9, 26, 27):  # unused, pad (teacher has none), byte 0xFF, two model padding rows
        assert row(proj, empty) == [] and proj.row_source[empty] == RowSource.EMPTY
    assert proj.stats["empty_rows"] == 5
    assert proj.stats["empty_by_reason"] == {"unused": 1, "model_padding": 2, "special_unmapped": 1,
                                             "byte_unmapped": 1, "normal_unmapped": 0}
    assert proj.indices[5].tolist() == [0, 0, 0, 0] and proj.weights[5].tolist() == [0, 0, 0, 0]


def test_encode_exact_dummy_prefix() -> None:
    entries = [(b" ", N), (b"a", N), (b"b", N), (b"c", N), (b"ab", N), (b" ab", N), (b" the", N), (b"the", N)]
    tok = tiny("spm-like", entries, dummy_prefix=True)
    assert tok.encode("abc") == [5, 3]  # the phantom space merged into " ab"
    pieces, fallbacks = encode_exact(tok, [b"abc", b" abc", b" the", b" ", b"  ab", b"c"])
    assert fallbacks == 0
    assert pieces == [[4, 3], [5, 3], [6], [0], [0, 5], [3]]


def test_encode_exact_falls_back_when_the_encoder_is_lossy() -> None:
    class Lossy:
        def encode(self, text: str) -> list[int]:
            return [0]

        def encode_batch(self, texts: list[str]) -> list[list[int]]:
            return [[0] for _ in texts]

    tok = tiny("lossy", [(b"a", N), (b"b", N), (b"ab", N)], backend=Lossy())
    pieces, fallbacks = encode_exact(tok, [b"a", b"abb", b"ba"])
    assert fallbacks == 2 and pieces == [[0], [2, 1], [1, 0]]


# --- real zoo pairs ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama_qwen(zoo):
    return build_projection(zoo("llama3"), zoo("qwen3"))


def check_properties(proj, student, teacher) -> None:
    w, idx = proj.weights, proj.indices
    sums = w.sum(axis=1)
    nonempty = w[:, 0] > 0
    assert np.allclose(sums[nonempty], 1.0, atol=1e-5) and (sums[~nonempty] == 0).all()
    assert idx.shape[1] == 4 and (np.diff(w, axis=1) <= 1e-7).all()  # ≤ k entries, largest first
    assert (proj.row_source[~nonempty] == RowSource.EMPTY).all()
    exact = np.flatnonzero(proj.is_exact)
    assert (w[exact, 0] == 1.0).all() and (w[exact, 1:] == 0).all()
    sb, tb = student.vocab.token_bytes, teacher.vocab.token_bytes
    assert all(sb[i] == tb[t] for i, t in zip(exact.tolist(), idx[exact, 0].tolist(), strict=True))
    assert idx.max() < proj.teacher_cols
    assert proj.to_scipy().nnz == int((w > 0).sum())


def test_llama3_qwen3_examples(llama_qwen, zoo) -> None:
    llama, qwen = zoo("llama3"), zoo("qwen3")
    check_properties(llama_qwen, llama, qwen)
    assert llama_qwen.shape == (128_256, 151_936)  # columns cover Qwen3's model rows
    (the,) = llama.encode(" the")
    assert llama_qwen.row(the) == [(qwen.vocab.bytes_to_id[b" the"], 1.0)]
    (n201,) = llama.encode("201")
    ids = [qwen.vocab.bytes_to_id[d] for d in (b"2", b"0", b"1")]
    assert [(t, round(w, 4)) for t, w in llama_qwen.row(n201)] == list(zip(ids, [0.9009, 0.0901, 0.009], strict=True))
    # why the reverse pass adds nothing there: no Qwen3 token holds two digits in a row
    two_digits = re.compile(rb"[0-9]{2}")
    assert not any(two_digits.search(t) for t in qwen.vocab.normal_set)
    assert llama_qwen.stats["exact_rows"] == 109_566  # the brief's overlap count


def test_identity_pair(zoo) -> None:
    llama = zoo("llama3")
    proj = build_projection(llama, llama)
    normal = llama.vocab.normal_ids
    assert (proj.indices[normal, 0] == normal).all() and (proj.weights[normal, 0] == 1.0).all()
    assert proj.is_exact[normal].all() and proj.stats["exact_share"] == 1.0


@pytest.mark.parametrize("student,teacher", [("mistral-v1", "llama3"), ("gemma3", "llama3")])
def test_real_pair_properties(zoo, student, teacher) -> None:
    s, t = zoo(student), zoo(teacher)
    proj = build_projection(s, t)
    check_properties(proj, s, t)
    assert proj.stats["reencode_fallbacks"] == {"forward": 0, "reverse": 0}
    bytes_rows = np.flatnonzero(s.vocab.kinds == TokenKind.BYTE)
    assert (proj.row_source[bytes_rows] == RowSource.BYTE).all()  # every byte-fallback row maps to its byte
    assert proj.row(s.vocab.roles["bos"]) == [(t.vocab.roles["bos"], 1.0)]


def test_inspect_cli_llama3_qwen3(llama_qwen, tmp_path, capsys) -> None:
    from xtalign.cli.main import main
    from xtalign.io import save_projection

    path = save_projection(llama_qwen, tmp_path / "w.safetensors")
    assert main(["inspect", str(path), "--token", " the", "--token", "201", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    the, n201 = report["tokens"]
    assert the["rows"][0]["source"] == "exact"
    assert [(e["bytes"], e["weight"]) for e in the["rows"][0]["entries"]] == [(" the", 1.0)]
    assert [(e["bytes"], round(e["weight"], 4)) for e in n201["rows"][0]["entries"]] == [
        ("2", 0.9009), ("0", 0.0901), ("1", 0.009)]
    assert report["header"]["teacher"]["model_rows"] == 151_936
    assert main(["inspect", str(path), "--token", " the"]) == 0
    text = capsys.readouterr().out
    assert "token ' the' -> student" in text and "1.0000" in text and "qwen3" in text
    assert main(["inspect", str(path), "--token", "x", "--student", "qwen3"]) == 2
    assert "student vocabulary mismatch" in capsys.readouterr().err
