"""Canonical bytes: hand cases per family rule, and the round-trip property on every lossless tokenizer."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xtalign.vocab import (
    BYTE_TO_UNICODE,
    TokenKind,
    bytelevel_to_bytes,
    make_vocab,
    parse_byte_piece,
    sentencepiece_to_bytes,
)
from xtalign.zoo import ZOO, load_tokenizer

LOSSLESS = [n for n in ZOO if n not in ("bert", "clip", "claude-v1", "j2", "smollm2", "falcon", "starcoder2", "refact")]


def test_lossless_flags() -> None:
    flags = {n: load_tokenizer(n).lossless for n in ZOO}
    assert [n for n in ZOO if not flags[n]] == [n for n in ZOO if n not in LOSSLESS]
    # smollm2 has no token for some control bytes (e.g. 0x04): byte-level BPE silently drops them
    smol = load_tokenizer("smollm2")
    assert 4 in smol.meta["missing_bytes"] and smol.decode_bytes(smol.encode("a\x04b")) == b"ab"


def test_special_strings_in_text_are_text() -> None:
    for name in ("smollm2", "claude-v1", "llama3", "gemma3"):
        tok = load_tokenizer(name)
        text = "<|endoftext|><EOT><|begin_of_text|><bos>"
        assert all(tok.vocab.kinds[i] != TokenKind.SPECIAL for i in tok.encode(text)), name

SAMPLES = [
    "plain ascii text.",
    "  leading spaces and   runs of    spaces  ",
    "tabs\tand\t\tnewlines\n\n\r\nmixed \n\t \n",
    "中文文本，日本語のテキスト、한국어 텍스트",
    "emoji 🤗🦙 and ZWJ 👩‍👩‍👧 flags 🇫🇷",
    "combining e\u0301 a\u0308 and precomposed é ä",
    "def f(x):\n    return x ** 2  # code\n",
    "numbers 1 12 123 1234 12345678901234567890 3.14159",
    "mixed: Привет мир, مرحبا بالعالم, שלום עולם",
    "",
    " ",
    "\n",
]


def test_gpt2_byte_map_is_a_bijection() -> None:
    assert len(set(BYTE_TO_UNICODE.values())) == 256
    assert bytelevel_to_bytes("Ġthe") == b" the"
    assert bytelevel_to_bytes("Ċ") == b"\n"
    assert bytelevel_to_bytes("âĢĻ") == "’".encode()  # a mojibake-looking token is exact bytes
    assert bytelevel_to_bytes("▁x") is None


def test_sentencepiece_rules() -> None:
    assert sentencepiece_to_bytes("▁the") == b" the"
    assert parse_byte_piece("<0x0A>") == 10
    assert parse_byte_piece("<0xZZ>") is None and parse_byte_piece("<s>") is None


def test_make_vocab_strips_bytes_of_specials_and_fingerprint_tracks_content() -> None:
    kinds = [TokenKind.NORMAL, TokenKind.SPECIAL, TokenKind.NORMAL]
    a = make_vocab("a", [b"x", b"<s>", b"y"], kinds, ["x", "<s>", "y"])
    b = make_vocab("b", [b"x", b"", b"z"], kinds, ["x", "<s>", "z"])
    assert a.token_bytes[1] == b"" and a.byte_lengths.tolist() == [1, 0, 1]
    assert a.fingerprint != b.fingerprint
    assert a.bytes_to_id == {b"x": 0, b"y": 2}


def test_wordpiece_rules_from_real_bert() -> None:
    bert = load_tokenizer("bert")
    ids = bert.encode("tokenization")
    assert [bert.vocab.names[i] for i in ids] == ["token", "##ization"]
    assert bert.vocab.decode_bytes(ids) == b" tokenization"


def test_sentencepiece_byte_fallback_and_dummy_prefix() -> None:
    tok = load_tokenizer("mistral-v1")
    ids = tok.encode("🦙")
    assert all(tok.vocab.kinds[i] == TokenKind.BYTE for i in ids[1:])
    assert tok.dummy_prefix and tok.decode_bytes(ids) == "🦙".encode()


@pytest.mark.parametrize("name", LOSSLESS)
def test_round_trip_on_samples(name: str) -> None:
    tok = load_tokenizer(name)
    for text in SAMPLES:
        assert tok.decode_bytes(tok.encode(text)) == text.encode("utf-8"), (name, text)


# SentencePiece writes a space as U+2581, so a literal U+2581 in text decodes as a space: that
# character is excluded here and its loss is pinned in test_sentencepiece_cannot_keep_literal_2581.
_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="\u2581"),
                max_size=60)


def test_sentencepiece_cannot_keep_literal_2581() -> None:
    tok = load_tokenizer("mistral-v1")
    assert tok.decode_bytes(tok.encode("a\u2581b")) == b"a b"
    assert load_tokenizer("llama3").decode_bytes(load_tokenizer("llama3").encode("a\u2581b")) == "a\u2581b".encode()


@pytest.mark.parametrize("name", ["llama3", "qwen3", "gemma3", "mistral-v1", "tekken", "phi3", "rwkv-world"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=_TEXT)
def test_round_trip_property(name: str, text: str) -> None:
    tok = load_tokenizer(name)
    assert tok.decode_bytes(tok.encode(text)) == text.encode("utf-8")
