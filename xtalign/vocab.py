"""Canonical vocabularies: for every token id, the exact bytes it contributes to decoded text.

Tokenizer families spell the same text differently (GPT-2's `Ġ`, SentencePiece's `▁` and `<0xNN>`,
WordPiece's `##`, raw tiktoken bytes). Comparing vocabularies on raw token strings undercounts
their overlap badly; comparing on the bytes each token puts into text is exact.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import IntEnum
from functools import cached_property

import numpy as np


class TokenKind(IntEnum):
    """What a token id is, as far as text is concerned."""

    NORMAL = 0  # contributes its bytes to text
    SPECIAL = 1  # control / chat / role markers: no bytes in text
    BYTE = 2  # byte-fallback token (<0xNN>): contributes one raw byte
    UNUSED = 3  # reserved or unused slot, never produced by encoding


# Special-token roles recognised across families; `Vocab.roles` maps role -> id.
ROLES = ("bos", "eos", "pad", "unk", "mask", "sep", "cls")


@dataclass(frozen=True, eq=False)
class Vocab:
    """Per-id canonical bytes and kinds of one tokenizer.

    `token_bytes[i]` is what token i contributes to decoded text (b"" for specials and unused
    slots; the single raw byte for byte-fallback tokens). `names[i]` is the raw token string as the
    tokenizer spells it (kept for specials and display). `roles` maps special roles (bos, eos, …)
    to ids.
    """

    name: str
    token_bytes: tuple[bytes, ...]
    kinds: np.ndarray  # [V] uint8 TokenKind
    names: tuple[str, ...]
    roles: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.token_bytes) != len(self.kinds) or len(self.names) != len(self.kinds):
            raise ValueError(f"vocab {self.name!r}: token_bytes, kinds and names differ in length")

    @property
    def size(self) -> int:
        return len(self.token_bytes)

    def __len__(self) -> int:
        return len(self.token_bytes)

    @cached_property
    def fingerprint(self) -> str:
        """sha256 over (id, kind, bytes) of the whole table: equal iff the id->bytes map is equal."""
        h = hashlib.sha256(b"xtalign-vocab-v1")
        h.update(np.int64(self.size).tobytes())
        h.update(self.kinds.astype(np.uint8).tobytes())
        h.update(self.byte_lengths.astype("<i4").tobytes())  # lengths fix the boundaries of the blob
        h.update(b"".join(self.token_bytes))
        return h.hexdigest()

    @cached_property
    def byte_lengths(self) -> np.ndarray:
        """[V] int32: number of text bytes each token contributes (0 for specials/unused)."""
        return np.fromiter((len(b) for b in self.token_bytes), dtype=np.int32, count=self.size)

    @cached_property
    def normal_ids(self) -> np.ndarray:
        """Ids of NORMAL tokens, ascending."""
        return np.flatnonzero(self.kinds == TokenKind.NORMAL)

    @cached_property
    def normal_set(self) -> frozenset[bytes]:
        """Distinct canonical byte strings of NORMAL tokens (the set overlap is computed on)."""
        return frozenset(self.token_bytes[i] for i in self.normal_ids.tolist())

    @cached_property
    def special_ids(self) -> np.ndarray:
        return np.flatnonzero(self.kinds == TokenKind.SPECIAL)

    @cached_property
    def bytes_to_id(self) -> dict[bytes, int]:
        """Canonical bytes -> lowest NORMAL id with those bytes (duplicates keep the first)."""
        out: dict[bytes, int] = {}
        for i in self.normal_ids.tolist():
            out.setdefault(self.token_bytes[i], i)
        return out

    @cached_property
    def byte_token_ids(self) -> dict[int, int]:
        """Raw byte value -> id of its byte-fallback token, where the family has them."""
        return {self.token_bytes[i][0]: int(i) for i in np.flatnonzero(self.kinds == TokenKind.BYTE)}

    def counts(self) -> dict[str, int]:
        """Number of ids of each kind, plus distinct normal byte strings."""
        out = {k.name.lower(): int((self.kinds == k).sum()) for k in TokenKind}
        out["distinct_normal"] = len(self.normal_set)
        return out

    def decode_bytes(self, ids: list[int] | np.ndarray) -> bytes:
        """Concatenated canonical bytes of `ids` (specials contribute nothing)."""
        tb = self.token_bytes
        return b"".join(tb[i] for i in ids)


def make_vocab(
    name: str,
    token_bytes: list[bytes],
    kinds: list[int] | np.ndarray,
    names: list[str],
    roles: dict[str, int] | None = None,
) -> Vocab:
    """Build a Vocab, forcing specials and unused slots to contribute no bytes."""
    kinds_arr = np.asarray(kinds, dtype=np.uint8)
    keep = (TokenKind.NORMAL, TokenKind.BYTE)
    tb = [b if k in keep else b"" for b, k in zip(token_bytes, kinds_arr.tolist(), strict=True)]
    return Vocab(name=name, token_bytes=tuple(tb), kinds=kinds_arr, names=tuple(names), roles=dict(roles or {}))


# --- byte-level BPE (GPT-2) printable-unicode <-> byte table -------------------------------------


def _gpt2_byte_to_unicode() -> dict[int, str]:
    # Bytes that are printable and not space keep their code point; the rest are shifted above 255
    # in byte order. This is GPT-2's published mapping, recomputed here.
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


BYTE_TO_UNICODE: dict[int, str] = _gpt2_byte_to_unicode()
UNICODE_TO_BYTE: dict[str, int] = {c: b for b, c in BYTE_TO_UNICODE.items()}


def bytelevel_to_bytes(token: str) -> bytes | None:
    """Decode a GPT-2 byte-level token string to bytes; None if it has characters outside the map."""
    try:
        return bytes(UNICODE_TO_BYTE[c] for c in token)
    except KeyError:
        return None


def sentencepiece_to_bytes(piece: str) -> bytes:
    """SentencePiece piece -> bytes: `▁` is a space; `<0xNN>` pieces are handled by the caller."""
    return piece.replace("\u2581", " ").encode("utf-8")


def parse_byte_piece(piece: str) -> int | None:
    """`<0x0A>` -> 10; anything else -> None."""
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        try:
            return int(piece[3:5], 16)
        except ValueError:
            return None
    return None
