"""Bits per byte: a tokenizer-independent held-out score, overall and by character class.

Bits per byte is the summed negative log2-likelihood a model gives a text divided by the text's UTF-8
bytes, so models with different tokenizers compare on the same footing. Each predicted token's loss is
spread evenly over the bytes it covers, which splits the score by the character class of those bytes
(digits, whitespace, punctuation, Latin letters, other); every byte of a multi-byte character gets that
character's class.
"""

from __future__ import annotations

import functools
import math
import string
from typing import Any

import numpy as np

__all__ = ["BYTE_CLASSES", "BitsPerByte", "byte_classes"]

BYTE_CLASSES = ("digits", "whitespace", "punctuation", "letters", "other")
DIGITS, WHITESPACE, PUNCTUATION, LETTERS, OTHER = range(len(BYTE_CLASSES))
LATIN_END = 0x250  # ASCII, Latin-1 Supplement, Latin Extended-A and -B
_TABLE_SIZE = 0x3001  # every code point str.isspace accepts is <= U+3000 (checked in the tests)
_LN2 = math.log(2.0)


@functools.cache
def _class_table() -> np.ndarray:
    """``[0x3001]`` uint8 class of each code point below the table's end; later code points are `other`."""
    table = np.full(_TABLE_SIZE, OTHER, dtype=np.uint8)
    punctuation = set(string.punctuation)
    for cp in range(_TABLE_SIZE):
        ch = chr(cp)
        if "0" <= ch <= "9":
            table[cp] = DIGITS
        elif ch.isspace():
            table[cp] = WHITESPACE
        elif ch in punctuation:
            table[cp] = PUNCTUATION
        elif cp < LATIN_END and ch.isalpha():
            table[cp] = LETTERS
    return table


def byte_classes(text: str) -> np.ndarray:
    """``[n_bytes]`` uint8 index into `BYTE_CLASSES` of each UTF-8 byte of `text` (vectorised)."""
    try:
        cps = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")  # [n_chars] code points
    except UnicodeEncodeError as exc:
        raise ValueError(f"text is not valid Unicode at character {exc.start} ({exc.reason}); "
                         "give text that encodes to UTF-8") from None
    table = _class_table()
    classes = np.where(cps < _TABLE_SIZE, table[np.minimum(cps, _TABLE_SIZE - 1)], OTHER).astype(np.uint8)
    widths = 1 + (cps >= 0x80).astype(np.int64) + (cps >= 0x800) + (cps >= 0x10000)  # UTF-8 bytes per char
    return np.repeat(classes, widths)  # [n_bytes]


def _check_row(n_bytes: int, ends: np.ndarray, nll: np.ndarray) -> None:
    if ends.ndim != 1 or nll.shape != ends.shape:
        raise ValueError(f"token_ends and nll must be 1-D arrays of the same length; got shapes {ends.shape} "
                         f"and {nll.shape}")
    if ends.size and (ends[0] < 0 or np.any(np.diff(ends) < 0) or ends[-1] > n_bytes):
        raise ValueError(f"token_ends must be non-decreasing byte offsets within the text's {n_bytes} bytes; got "
                         f"{ends[0]}..{ends[-1]}; pass each token's end offset (xtalign.align.token_ends)")


class BitsPerByte:
    """Accumulates bits per byte over rows (`add`), mergeable across workers (`merge`); `result()` is JSON-able."""

    def __init__(self) -> None:
        self.bits = 0.0
        self.bytes = 0
        self.tokens = 0
        self.rows = 0
        self.text_bytes = 0
        self.class_bits = np.zeros(len(BYTE_CLASSES), dtype=np.float64)
        self.class_bytes = np.zeros(len(BYTE_CLASSES), dtype=np.int64)

    def add(self, text: str, token_ends: np.ndarray, nll: np.ndarray) -> None:
        """Add one row: `text` as covered, where each token ends (bytes) and the nats spent predicting it.

        Token t covers bytes ``[token_ends[t-1], token_ends[t])`` (token 0 from byte 0). A token is
        counted when it covers at least one byte and its nll is finite: a leading bos (ending at 0) is
        not, and a bos-less row's first token only if a finite nll is given for it (NaN = unpredicted).
        """
        classes = byte_classes(text)  # [n_bytes]
        ends = np.asarray(token_ends, dtype=np.int64)  # [T]
        nll = np.asarray(nll, dtype=np.float64)  # [T]
        _check_row(classes.size, ends, nll)
        self.rows += 1
        self.text_bytes += int(classes.size)
        if ends.size == 0:
            return
        widths = np.diff(ends, prepend=0)  # [T] bytes each token covers
        counted = (widths > 0) & np.isfinite(nll)  # [T]
        bits = np.where(counted, nll, 0.0) / _LN2  # [T]
        per_byte = np.repeat(bits / np.maximum(widths, 1), widths)  # [ends[-1]]
        covered = np.repeat(counted, widths)  # [ends[-1]]
        spanned = classes[: ends[-1]]  # [ends[-1]]
        self.class_bits += np.bincount(spanned, weights=per_byte, minlength=len(BYTE_CLASSES))
        self.class_bytes += np.bincount(spanned[covered], minlength=len(BYTE_CLASSES))
        self.bits += float(bits.sum())
        self.bytes += int(covered.sum())
        self.tokens += int(counted.sum())

    def merge(self, other: BitsPerByte) -> BitsPerByte:
        """Add another accumulator's counts into this one (returns self)."""
        self.bits += other.bits
        self.bytes += other.bytes
        self.tokens += other.tokens
        self.rows += other.rows
        self.text_bytes += other.text_bytes
        self.class_bits += other.class_bits
        self.class_bytes += other.class_bytes
        return self

    @property
    def uncovered_bytes(self) -> int:
        """Text bytes no counted token covered (0 when every row starts with bos)."""
        return self.text_bytes - self.bytes

    def result(self) -> dict[str, Any]:
        """Plain-JSON summary; a rate over 0 bytes is None."""
        by_class = {name: {"bits_per_byte": _rate(float(self.class_bits[i]), int(self.class_bytes[i])),
                           "bytes": int(self.class_bytes[i])} for i, name in enumerate(BYTE_CLASSES)}
        return {"bits_per_byte": _rate(self.bits, self.bytes), "bytes": self.bytes, "tokens": self.tokens,
                "rows": self.rows, "text_bytes": self.text_bytes, "uncovered_bytes": self.uncovered_bytes,
                "by_class": by_class}


def _rate(bits: float, n_bytes: int) -> float | None:
    return bits / n_bytes if n_bytes else None
