"""Encode a rendered chat: its template markers as special tokens, the text between them as text.

xtalign's encoders never parse special tokens out of text (`xtalign.zoo.tokenizer`), so a rendered
chat is split here at every occurrence of the vocabulary's SPECIAL token names (longest first, so
``<|im_start|>`` wins over a shorter special it contains), each marker becomes its token with the byte
span of the marker, and the pieces between are encoded as ordinary text. This is how HF tokenizers
encode a rendered chat (``add_special_tokens=False``); it keeps every marker the template wrote (a
peer bug dropped them before re-encoding).

Decision, as HF does: a special-token string that occurs inside a message's content is encoded as
that special token too (the rendered text cannot tell who wrote it). `xtalign.chat.conversation_align`
keeps such tokens out of the aligned chunks.

Byte spans: ``starts[t]``/``ends[t]`` are offsets into the UTF-8 of the rendered text. A text piece
uses the exact bytes of its tokens where they spell the piece (SentencePiece's dummy-prefix space,
added at the start of each piece as for any fresh text, is not in the text: its lone ``▁`` token gets an
empty span); a normalising tokenizer falls back to the encoder's offsets. An added BOS has the empty
span ``[0, 0)``.

BOS rule (exactly one): a rendered text that starts with the BOS token's string already has it (the
template wrote ``{{ bos_token }}``); otherwise the tokenizer's BOS is added only when `add_bos` is asked.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Sequence

import numpy as np

from xtalign.vocab import Vocab
from xtalign.zoo.tokenizer import Tokenizer

__all__ = ["bos_string", "encode_rendered", "encode_rendered_batch", "eos_string", "special_pattern"]


@functools.lru_cache(maxsize=32)
def special_pattern(vocab: Vocab) -> tuple[re.Pattern[str] | None, dict[str, int]]:
    """A regex matching the vocabulary's special-token names, longest first, and name -> lowest id."""
    ids: dict[str, int] = {}
    for i in vocab.special_ids.tolist():
        name = vocab.names[i]
        if name:
            ids.setdefault(name, int(i))
    if not ids:
        return None, ids
    return re.compile("|".join(re.escape(n) for n in sorted(ids, key=len, reverse=True))), ids


def _role_string(tok: Tokenizer, role: str) -> str | None:
    tid = tok.vocab.roles.get(role)
    return tok.vocab.names[tid] if tid is not None and tok.vocab.names[tid] else None


def bos_string(tok: Tokenizer) -> str | None:
    """The BOS token's string (what ``{{ bos_token }}`` renders), None where the tokenizer has none."""
    return _role_string(tok, "bos")


def eos_string(tok: Tokenizer) -> str | None:
    """The EOS token's string (what ``{{ eos_token }}`` renders), None where the tokenizer has none."""
    return _role_string(tok, "eos")


def _piece_ends(tok: Tokenizer, piece: str, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Ids and byte ends (relative to the piece) of one text piece between markers."""
    data = piece.encode("utf-8")
    if tok.decode_bytes(ids) == data:  # exact bytes: also for byte-level vocabularies flagged lossy
        return tok.byte_ends(piece, ids)
    if tok.lossless:
        raise ValueError(f"{tok.name}: the tokens of {piece[:40]!r} do not spell it (a literal U+2581 in "
                         "SentencePiece text?)")
    arr, ends = tok.byte_ends(piece)  # a normalising tokenizer: the encoder's offsets
    ends = np.minimum(ends, len(data))
    if ends.size:  # text the normaliser dropped at the end joins the last token that carries text
        ends[np.searchsorted(ends, ends[-1]):] = len(data)
    return arr, ends


def _segments(pattern: re.Pattern[str] | None, text: str) -> list[tuple[bool, str]]:
    """(is_special, text) of a rendering in order: every marker, and the non-empty text between markers."""
    segments: list[tuple[bool, str]] = []
    pos = 0
    for m in pattern.finditer(text) if pattern is not None else ():
        if m.start() > pos:
            segments.append((False, text[pos:m.start()]))
        segments.append((True, m.group()))
        pos = m.end()
    if pos < len(text):
        segments.append((False, text[pos:]))
    return segments


def encode_rendered(tokenizer: Tokenizer, text: str, *, add_bos: bool = False) -> tuple[np.ndarray, np.ndarray,
                                                                                          np.ndarray]:
    """A rendered chat -> ``(ids [T], starts [T], ends [T])`` int64, spans in bytes of ``text.encode()``."""
    pattern, name_ids = special_pattern(tokenizer.vocab)
    data_len = len(text.encode("utf-8"))
    segments = _segments(pattern, text)
    pieces = [s for special, s in segments if not special]
    encoded = iter(tokenizer.encode_batch(pieces) if pieces else [])
    ids: list[np.ndarray] = []
    starts: list[np.ndarray] = []
    ends: list[np.ndarray] = []
    bos = bos_string(tokenizer)
    if add_bos and bos is not None and not text.startswith(bos):
        ids.append(np.array([tokenizer.vocab.roles["bos"]], np.int64))
        starts.append(np.zeros(1, np.int64))
        ends.append(np.zeros(1, np.int64))
    offset = 0
    for special, seg in segments:
        n = len(seg.encode("utf-8"))
        if special:
            ids.append(np.array([name_ids[seg]], np.int64))
            starts.append(np.array([offset], np.int64))
            ends.append(np.array([offset + n], np.int64))
        else:
            arr, rel = _piece_ends(tokenizer, seg, next(encoded))
            rel = rel.astype(np.int64)
            begin = np.empty_like(rel)
            begin[:1] = 0
            begin[1:] = rel[:-1]  # tokens of a piece tile it: each starts where the previous ends
            ids.append(arr.astype(np.int64))
            starts.append(begin + offset)
            ends.append(rel + offset)
        offset += n
    if offset != data_len:
        raise AssertionError(f"encoded segments cover {offset} of {data_len} bytes")  # a bug, not bad input
    if not ids:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(ids), np.concatenate(starts), np.concatenate(ends)


# --- many renderings at once -----------------------------------------------------------------------------


class _Segments:
    """Every segment of a batch of renderings in order (an added BOS counts as one), and the text pieces."""

    def __init__(self) -> None:
        self.is_piece: list[bool] = []
        self.offset: list[int] = []  # byte offset in its own rendering
        self.n_bytes: list[int] = []
        self.token: list[int] = []  # the id of a marker or an added BOS; -1 for a text piece
        self.text: list[int] = []  # which rendering
        self.pieces: list[str] = []
        self.piece_bytes: list[bytes] = []

    def add(self, text: int, offset: int, n_bytes: int, token: int, piece: tuple[str, bytes] | None) -> None:
        self.is_piece.append(piece is not None)
        self.offset.append(offset)
        self.n_bytes.append(n_bytes)
        self.token.append(token)
        self.text.append(text)
        if piece is not None:
            self.pieces.append(piece[0])
            self.piece_bytes.append(piece[1])


def _segment_table(tokenizer: Tokenizer, texts: Sequence[str], add_bos: bool) -> _Segments:
    pattern, name_ids = special_pattern(tokenizer.vocab)
    bos = bos_string(tokenizer)
    table = _Segments()
    for b, text in enumerate(texts):
        if add_bos and bos is not None and not text.startswith(bos):
            table.add(b, 0, 0, tokenizer.vocab.roles["bos"], None)
        offset = 0
        for special, seg in _segments(pattern, text):
            data = seg.encode("utf-8")
            table.add(b, offset, len(data), name_ids[seg] if special else -1, None if special else (seg, data))
            offset += len(data)
    return table


def _inexact(decoded: bytes, raw: np.ndarray, piece_bytes: list[bytes], dummy_prefix: bool) -> list[bool] | None:
    """Per piece: its tokens do NOT spell it (`_piece_ends`'s test, on slices of one decoding); None: all do."""
    if not dummy_prefix and decoded == b"".join(piece_bytes) and raw.tolist() == [len(d) for d in piece_bytes]:
        return None
    out, pos = [], 0
    for n, data in zip(raw.tolist(), piece_bytes, strict=True):
        got = decoded[pos: pos + n]
        pos += n
        if dummy_prefix and got.startswith(b" "):
            got = got[1:]
        out.append(got != data)
    return out if any(out) else None


def _piece_tokens(tokenizer: Tokenizer, table: _Segments,
                  encoded: list[list[int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat ids [n] and piece-relative byte ends [n] of every piece's tokens, and the tokens per piece [P]."""
    counts = np.fromiter(map(len, encoded), np.int64, len(encoded))
    flat = list(itertools.chain.from_iterable(encoded))
    ids = np.array(flat, dtype=np.int64)
    csum = np.zeros(ids.shape[0] + 1, np.int64)
    np.cumsum(tokenizer.vocab.byte_lengths[ids], dtype=np.int64, out=csum[1:])
    first = np.zeros(counts.shape[0] + 1, np.int64)
    np.cumsum(counts, out=first[1:])
    raw = csum[first[1:]] - csum[first[:-1]]  # [P] bytes the tokens of each piece decode to
    rel = csum[1:] - np.repeat(csum[first[:-1]], counts)
    if tokenizer.dummy_prefix:  # as `Tokenizer.byte_ends`: the phantom space leaves each piece's ends
        rel = np.where(np.repeat(raw > 0, counts), np.maximum(rel - 1, 0), rel)
    decoded = b"".join(map(tokenizer.vocab.token_bytes.__getitem__, flat))  # `Vocab.decode_bytes`, faster
    bad = _inexact(decoded, raw, table.piece_bytes, tokenizer.dummy_prefix)
    if bad is None:
        return ids, rel, counts
    parts = []  # the rare piece whose tokens do not spell it: `_piece_ends` (offsets, or its error)
    for k, wrong in enumerate(bad):
        if wrong:
            arr, ends = _piece_ends(tokenizer, table.pieces[k], encoded[k])
            parts.append((arr.astype(np.int64), ends.astype(np.int64)))
        else:
            parts.append((ids[first[k]: first[k + 1]], rel[first[k]: first[k + 1]]))
    counts = np.array([p[0].shape[0] for p in parts], np.int64)
    return (np.concatenate([p[0] for p in parts]).astype(np.int64),
            np.concatenate([p[1] for p in parts]).astype(np.int64), counts)


def encode_rendered_batch(tokenizer: Tokenizer, texts: Sequence[str], *,
                          add_bos: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`encode_rendered` of many renderings, with ONE `encode_batch` call for all their text pieces.

    Returns flat ``(ids [N], starts [N], ends [N])`` int64 (spans in bytes of each rendering's own UTF-8)
    and ``offsets [B+1]``: rendering b is tokens ``offsets[b]:offsets[b + 1]``, exactly its `encode_rendered`.
    """
    table = _segment_table(tokenizer, texts, add_bos)
    encoded = tokenizer.encode_batch(table.pieces) if table.pieces else []
    ids, rel, counts = _piece_tokens(tokenizer, table, encoded)
    is_piece = np.array(table.is_piece, bool)
    offset, n_bytes = np.array(table.offset, np.int64), np.array(table.n_bytes, np.int64)
    n_tok = np.ones(is_piece.shape[0], np.int64)
    n_tok[is_piece] = counts
    seg_first = np.zeros(n_tok.shape[0] + 1, np.int64)  # output index of each segment's first token
    np.cumsum(n_tok, out=seg_first[1:])
    out_ids, starts, ends = (np.empty(int(seg_first[-1]), np.int64) for _ in range(3))
    single, at = ~is_piece, seg_first[:-1]
    out_ids[at[single]] = np.array(table.token, np.int64)[single]
    starts[at[single]], ends[at[single]] = offset[single], offset[single] + n_bytes[single]
    piece_first = np.zeros(counts.shape[0] + 1, np.int64)
    np.cumsum(counts, out=piece_first[1:])
    dst = np.repeat(at[is_piece] - piece_first[:-1], counts) + np.arange(ids.shape[0])
    base = np.repeat(offset[is_piece], counts)
    begin = np.empty_like(rel)  # tokens of a piece tile it: each starts where the previous ends
    begin[1:] = rel[:-1]
    begin[piece_first[:-1][counts > 0]] = 0
    out_ids[dst], starts[dst], ends[dst] = ids, begin + base, rel + base
    offsets = np.zeros(len(texts) + 1, np.int64)
    per_text = np.bincount(np.array(table.text, np.int64), weights=n_tok, minlength=len(texts))
    np.cumsum(per_text.astype(np.int64), out=offsets[1:])
    return out_ids, starts, ends, offsets
