"""Bits per byte against hand-computed values: classes, multi-byte characters, split tokens, bos rules."""

from __future__ import annotations

import json
import math
import string

import numpy as np
import pytest

from xtalign.distill.bpb import BYTE_CLASSES, BitsPerByte, byte_classes

LN2 = math.log(2.0)
D, W, P, L, X = range(5)


def test_byte_classes_by_hand() -> None:
    assert BYTE_CLASSES == ("digits", "whitespace", "punctuation", "letters", "other")
    text = "a1 ,é\u00a0日😀ſ\u0250٣\u3000"
    expected = [L, D, W, P, L, L, W, W, X, X, X, X, X, X, X, L, L, X, X, X, X, W, W, W]
    assert len(text.encode()) == len(expected)
    got = byte_classes(text)
    assert got.dtype == np.uint8 and got.tolist() == expected
    assert byte_classes("").tolist() == []
    assert byte_classes("\x1c\t\n\x85").tolist() == [W, W, W, W, W]  # str.isspace, incl. U+0085 (2 bytes)
    assert byte_classes("«»µÆ").tolist() == [X, X, X, X, L, L, L, L]  # Latin-1 punctuation is `other`


def test_byte_classes_match_the_definition_everywhere() -> None:
    chars = [chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000]
    assert all(ord(ch) <= 0x3000 for ch in chars if ch.isspace())
    sample = "".join(chars[::7]) + string.printable + "".join(chr(c) for c in range(0x250))

    def cls(ch: str) -> int:
        if ch in "0123456789":
            return D
        if ch.isspace():
            return W
        if ch in string.punctuation:
            return P
        return L if ord(ch) < 0x250 and ch.isalpha() else X

    want = [cls(ch) for ch in sample for _ in ch.encode()]
    assert byte_classes(sample).tolist() == want
    with pytest.raises(ValueError, match="not valid Unicode"):
        byte_classes("a\ud800")


def test_three_token_row_with_bos() -> None:
    bpb = BitsPerByte()
    bpb.add("a1 ", np.array([0, 1, 2, 3]), np.array([0.0, LN2 * 2, LN2 * 3, LN2 * 4]))  # bos, a, 1, space
    r = bpb.result()
    assert r["bits_per_byte"] == pytest.approx(3.0, abs=1e-12)
    assert (r["bytes"], r["tokens"], r["uncovered_bytes"], r["text_bytes"]) == (3, 3, 0, 3)
    assert r["by_class"]["letters"] == {"bits_per_byte": pytest.approx(2.0, abs=1e-12), "bytes": 1}
    assert r["by_class"]["digits"]["bits_per_byte"] == pytest.approx(3.0, abs=1e-12)
    assert r["by_class"]["whitespace"]["bits_per_byte"] == pytest.approx(4.0, abs=1e-12)
    assert r["by_class"]["punctuation"] == {"bits_per_byte": None, "bytes": 0}
    json.dumps(r, allow_nan=False)


def test_token_spanning_classes_and_multibyte() -> None:
    bpb = BitsPerByte()
    # "a," (2 bytes: letter + punct) = 4 bits; "é" (2 letter bytes) = 6 bits; 日 split 1+2 bytes = 1 + 5 bits
    text = "a,é日"
    bpb.add(text, np.array([0, 2, 4, 5, 7]), np.array([np.nan, 4 * LN2, 6 * LN2, 1 * LN2, 5 * LN2]))
    r = bpb.result()
    assert r["bytes"] == 7 and r["tokens"] == 4 and r["uncovered_bytes"] == 0
    assert r["bits_per_byte"] == pytest.approx(16 / 7, rel=1e-12)
    by = r["by_class"]
    assert by["punctuation"]["bits_per_byte"] == pytest.approx(2.0, rel=1e-12)
    assert by["letters"] == {"bits_per_byte": pytest.approx((2 + 6) / 3, rel=1e-12), "bytes": 3}
    assert by["other"] == {"bits_per_byte": pytest.approx(6 / 3, rel=1e-12), "bytes": 3}


def test_bosless_first_token_and_uncounted() -> None:
    bpb = BitsPerByte()
    bpb.add("ab c", np.array([1, 2, 2, 4]), np.array([np.nan, LN2, 9.0, 2 * LN2]))  # "a" unpredicted, "" specials
    r = bpb.result()
    assert (r["bytes"], r["tokens"], r["uncovered_bytes"]) == (3, 2, 1)
    assert r["bits_per_byte"] == pytest.approx(3 / 3, rel=1e-12)
    given = BitsPerByte()
    given.add("ab c", np.array([1, 2, 2, 4]), np.array([3 * LN2, LN2, 9.0, 2 * LN2]))  # first token predicted
    assert given.result()["bits_per_byte"] == pytest.approx(6 / 4, rel=1e-12)
    assert given.result()["uncovered_bytes"] == 0
    tail = BitsPerByte()
    tail.add("abc", np.array([0, 1]), np.array([0.0, LN2]))  # tokens stop before the text's end
    assert tail.result()["uncovered_bytes"] == 2 and tail.result()["bytes"] == 1
    empty = BitsPerByte()
    empty.add("xy", np.zeros(0, dtype=np.int64), np.zeros(0))
    assert empty.result()["bits_per_byte"] is None and empty.result()["uncovered_bytes"] == 2


def test_merge_equals_one_accumulator() -> None:
    rows = [("a1 ", [0, 1, 2, 3], [0.0, 0.5, 1.5, 2.0]), ("日本 9", [0, 3, 6, 8], [0.0, 2.0, 1.0, 0.25])]
    whole, parts = BitsPerByte(), [BitsPerByte(), BitsPerByte()]
    for (text, ends, nll), part in zip(rows, parts, strict=True):
        whole.add(text, np.array(ends), np.array(nll))
        part.add(text, np.array(ends), np.array(nll))
    merged = parts[0].merge(parts[1]).result()
    assert merged == whole.result() and merged["rows"] == 2 and merged["bytes"] == 11
    assert merged["bits_per_byte"] == pytest.approx((4.0 + 3.25) / LN2 / 11, rel=1e-12)


def test_bad_rows_are_refused() -> None:
    bpb = BitsPerByte()
    with pytest.raises(ValueError, match="same length"):
        bpb.add("ab", np.array([1, 2]), np.array([0.0]))
    with pytest.raises(ValueError, match="non-decreasing"):
        bpb.add("ab", np.array([2, 1]), np.array([0.0, 0.0]))
    with pytest.raises(ValueError, match="within the text's 2 bytes"):
        bpb.add("ab", np.array([1, 3]), np.array([0.0, 0.0]))
    assert bpb.result()["rows"] == 0
