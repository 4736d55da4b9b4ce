"""Exact cross-tokenizer sequence alignment on UTF-8 byte offsets.

The same text tokenized by a student and a teacher is cut into *chunks*: a chunk ends wherever BOTH
tokenizations have a token boundary, so every chunk covers exactly the same bytes on both sides and no
chunk can be split further. A token is described by the byte offset where it ends in the UTF-8 text;
boundaries are compared as bytes, so a cut inside a multi-byte character counts when both sides make it.

Conventions (the one place the shift is defined):

* Token chunks (what `align_*` return): ``chunk[b, t] = c >= 0`` means token ``t`` of row ``b`` lies in
  chunk ``c``; ``-1`` means the token carries no text (bos/eos/other specials, SentencePiece's lone
  dummy-prefix piece) or is padding. Chunk ids of a row run ``0..n_chunks-1``, non-decreasing, with the
  same numbering on both sides.
* Prediction chunks (what a loss consumes, `Alignment.shifted()` / `prediction_chunks`): the logits at
  position ``p`` predict token ``p + 1``, so ``pred[b, p] = chunk[b, p + 1]`` and the last position is
  ``-1``. A special token as target therefore gives ``-1`` at the position before it.

Vectorised over a flat concatenation of the batch (rows laid end to end in one byte space), linear in
tokens plus text bytes; rows are right-padded with ``-1``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from xtalign.vocab import Vocab

if TYPE_CHECKING:
    from xtalign.zoo.tokenizer import Tokenizer

__all__ = ["Alignment", "Truncation", "align_ends", "align_ids", "align_text", "align_texts", "common_boundaries",
           "cut_point", "flatten_rows", "prediction_chunks", "token_ends", "truncate_text"]

Rows = Sequence[Sequence[int] | np.ndarray]


@dataclass(frozen=True, eq=False)
class Alignment:
    """Chunk ids of a batch of B rows, both sides right-padded with -1 (always batched; one text: B = 1).

    A loss consumes ``alignment.shifted().student_chunk`` ``[B, Ts]`` and ``.teacher_chunk`` ``[B, Tt]``:
    ``c >= 0`` = the logits at that position predict a token of chunk ``c``; ``-1`` = none.

    Attributes:
        student_chunk: ``[B, Ts]`` int64 chunk of each student token (or prediction, if `is_shifted`).
        teacher_chunk: ``[B, Tt]`` int64, same numbering as the student within each row.
        n_chunks: ``[B]`` int64 chunks per row.
        chunk_bytes: ``[B, C, 2]`` int64 ``[start, end)`` byte span of each chunk in its row's text, -1 padded.
        student_len, teacher_len: ``[B]`` int64 real (unpadded) tokens per row.
        student_ids, teacher_ids: ``[B, T]`` int64 token ids, -1 padded, where the caller gave ids.
        texts: the row texts, where known (for `chunks` / `to_json`).
        is_shifted: False for token chunks, True for prediction chunks (see the module docstring).
    """

    student_chunk: np.ndarray
    teacher_chunk: np.ndarray
    n_chunks: np.ndarray
    chunk_bytes: np.ndarray
    student_len: np.ndarray
    teacher_len: np.ndarray
    student_ids: np.ndarray | None = None
    teacher_ids: np.ndarray | None = None
    texts: tuple[str, ...] | None = None
    is_shifted: bool = False

    @property
    def batch_size(self) -> int:
        return int(self.n_chunks.shape[0])

    def shifted(self) -> Alignment:
        """Prediction chunks: position p gets the chunk of token p + 1; the last position gets -1."""
        if self.is_shifted:
            raise ValueError("alignment is already shifted for next-token prediction; shifting twice is a bug")
        return replace(self, student_chunk=prediction_chunks(self.student_chunk),
                       teacher_chunk=prediction_chunks(self.teacher_chunk), is_shifted=True)

    def chunks(self, row: int = 0) -> list[dict[str, Any]]:
        """Per chunk of `row`: its text (bytes not valid UTF-8 are backslash-escaped) and each side's
        token ids (token positions when ids were not given)."""
        if self.is_shifted:
            raise ValueError("chunks() lists token membership; call it on the unshifted alignment")
        n = int(self.n_chunks[row])
        data = self.texts[row].encode("utf-8") if self.texts is not None else None
        sides = []
        for chunk, ids, length in ((self.student_chunk, self.student_ids, self.student_len),
                                   (self.teacher_chunk, self.teacher_ids, self.teacher_len)):
            c = chunk[row, : int(length[row])]  # [T]
            vals = ids[row, : int(length[row])] if ids is not None else np.arange(c.shape[0])
            keep = c >= 0
            # chunk ids are sorted, so a split at the first position of each chunk groups them
            cuts = np.searchsorted(c[keep], np.arange(1, n))
            sides.append([part.tolist() for part in np.split(vals[keep], cuts)] if n else [])
        spans = self.chunk_bytes[row, :n].tolist()
        return [{"text": None if data is None else data[a:b].decode("utf-8", errors="backslashreplace"),
                 "bytes": [a, b], "student": sides[0][k], "teacher": sides[1][k]} for k, (a, b) in enumerate(spans)]

    def to_json(self, row: int = 0) -> dict[str, Any]:
        """``{"chunks": [{"text", "bytes": [start, end), "student": [ids], "teacher": [ids]}, …]}`` for one row;
        ``text`` is for reading (escaped where a chunk splits a character), ``utf8[start:end]`` is exact."""
        return {"chunks": [{k: c[k] for k in ("text", "bytes", "student", "teacher")} for c in self.chunks(row)]}


@dataclass(frozen=True)
class Truncation:
    """A text cut at a common boundary: both id prefixes cover exactly ``text`` (its first ``n_bytes`` bytes);
    for lossless tokenizers they decode to it byte for byte."""

    text: str
    n_bytes: int
    student_ids: list[int]
    teacher_ids: list[int]


def prediction_chunks(token_chunk: np.ndarray) -> np.ndarray:
    """``[..., T]`` token chunks -> prediction chunks: ``out[..., p] = in[..., p + 1]``, ``out[..., -1] = -1``."""
    token_chunk = np.asarray(token_chunk)
    out = np.full_like(token_chunk, -1)
    out[..., :-1] = token_chunk[..., 1:]
    return out


# --- flat (ragged) helpers ------------------------------------------------------------------------


def flatten_rows(rows: Rows) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ints -> (flat [N] int64, offsets [B+1] int64)."""
    lens = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    if offsets[-1] == 0:
        return np.zeros(0, dtype=np.int64), offsets
    if all(isinstance(r, np.ndarray) for r in rows):
        return np.concatenate([np.asarray(r, dtype=np.int64) for r in rows]), offsets
    flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int64, count=int(offsets[-1]))
    return flat, offsets


def _pad(flat: np.ndarray, offsets: np.ndarray, fill: int = -1) -> np.ndarray:
    """Flat [N, *F] with offsets [B+1] -> right-padded [B, T, *F]."""
    lens = np.diff(offsets)  # [B]
    width = int(lens.max()) if lens.size else 0
    out = np.full((lens.shape[0], width, *flat.shape[1:]), fill, dtype=flat.dtype)
    out[np.arange(width) < lens[:, None]] = flat  # a row-major boolean mask visits the flat order
    return out


def _last_per_row(flat: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """[B] last value of each row (0 for an empty row)."""
    nonempty = offsets[1:] > offsets[:-1]
    out = np.zeros(offsets.shape[0] - 1, dtype=np.int64)
    out[nonempty] = flat[offsets[1:][nonempty] - 1]
    return out


def _global_ends(ends: np.ndarray, offsets: np.ndarray, base: np.ndarray, side: str) -> tuple[np.ndarray, np.ndarray]:
    """Row-relative ends -> (ends in the shared byte space [N], True where the token carries text [N])."""
    lens = np.diff(offsets)
    g = ends + np.repeat(base, lens)  # [N]
    if g.size and (ends.min() < 0 or np.any(g[1:] < g[:-1])):
        raise ValueError(f"{side} byte ends must be >= 0 and non-decreasing within each row")
    prev = np.empty_like(g)
    prev[1:] = g[:-1]
    nonempty = lens > 0
    prev[offsets[:-1][nonempty]] = base[nonempty]  # a row's first token starts at its row's byte 0
    return g, g > prev


def _chunk_ids(common: np.ndarray, carries: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Chunk of each token = common boundaries strictly before its end, counted within its row."""
    csum = np.zeros(common.shape[0] + 1, dtype=np.int64)
    np.cumsum(common, out=csum[1:])
    before = csum[offsets[:-1]]  # [B] common boundaries in earlier rows
    chunk = csum[:-1] - np.repeat(before, np.diff(offsets))  # [N] exclusive count within the row
    chunk[~carries] = -1
    return chunk, csum[offsets[1:]] - before


def _align_flat(s_ends: np.ndarray, s_off: np.ndarray, t_ends: np.ndarray, t_off: np.ndarray) -> dict[str, np.ndarray]:
    """Core: flat row-relative ends of both sides -> flat chunk ids, per-row counts and chunk spans."""
    if s_off.shape != t_off.shape:
        raise ValueError(f"batch sizes differ: student {s_off.shape[0] - 1} rows, teacher {t_off.shape[0] - 1}")
    total = _last_per_row(s_ends, s_off)  # [B] bytes covered per row
    t_total = _last_per_row(t_ends, t_off)
    for r in np.flatnonzero(total != t_total)[:1]:
        raise ValueError(f"row {r}: student tokens cover {total[r]} bytes, teacher tokens {t_total[r]}; "
                         "both sides must tokenize the same text")
    # rows are laid end to end with a one-byte gap, so no boundary of one row can meet another row's
    base = np.zeros_like(total)
    np.cumsum(total[:-1] + 1, out=base[1:])
    s_g, s_carry = _global_ends(s_ends, s_off, base, "student")
    t_g, t_carry = _global_ends(t_ends, t_off, base, "teacher")
    size = int(base[-1] + total[-1] + 1) if total.size else 1
    mark = np.zeros(size, dtype=np.uint8)  # bit 0: a teacher token ends here, bit 1: a student token
    mark[t_g] = 1
    mark[s_g] |= 2
    # a position where both sides end a token is common; count it once per side via text-carrying tokens
    s_common = s_carry & (mark[s_g] == 3)
    t_common = t_carry & (mark[t_g] == 3)
    s_chunk, n_chunks = _chunk_ids(s_common, s_carry, s_off)
    t_chunk, _ = _chunk_ids(t_common, t_carry, t_off)
    c_off = np.zeros(n_chunks.shape[0] + 1, dtype=np.int64)
    np.cumsum(n_chunks, out=c_off[1:])
    c_end = _pad(s_ends[s_common], c_off)  # [B, C] row-relative chunk ends, -1 padded
    c_start = np.zeros_like(c_end)
    c_start[:, 1:] = c_end[:, :-1]  # a chunk starts where the previous one ends; the first at byte 0
    c_start[c_end < 0] = -1
    return {"s_chunk": s_chunk, "t_chunk": t_chunk, "n_chunks": n_chunks,
            "chunk_bytes": np.stack([c_start, c_end], axis=-1)}


def _build(s: tuple[np.ndarray, np.ndarray], t: tuple[np.ndarray, np.ndarray], s_ids: np.ndarray | None,
           t_ids: np.ndarray | None, texts: Sequence[str] | None) -> Alignment:
    """Flat (ends, offsets) of both sides (+ optional flat ids, texts) -> padded Alignment."""
    core = _align_flat(s[0], s[1], t[0], t[1])
    if texts is not None:
        if len(texts) != core["n_chunks"].shape[0]:
            raise ValueError(f"{len(texts)} texts for {core['n_chunks'].shape[0]} rows")
        covered, n_bytes = _last_per_row(s[0], s[1]), np.array([len(x.encode("utf-8")) for x in texts], np.int64)
        for r in np.flatnonzero(covered != n_bytes)[:1]:
            raise ValueError(f"row {r}: tokens cover {covered[r]} bytes but the text has {n_bytes[r]} "
                             "(a normalising tokenizer? use align_texts, which falls back to offsets)")
    return Alignment(
        student_chunk=_pad(core["s_chunk"], s[1]), teacher_chunk=_pad(core["t_chunk"], t[1]),
        n_chunks=core["n_chunks"], chunk_bytes=core["chunk_bytes"],
        student_len=np.diff(s[1]), teacher_len=np.diff(t[1]),
        student_ids=None if s_ids is None else _pad(s_ids, s[1]),
        teacher_ids=None if t_ids is None else _pad(t_ids, t[1]),
        texts=None if texts is None else tuple(texts),
    )


def align_ends(student_ends: Rows, teacher_ends: Rows, *, texts: Sequence[str] | None = None) -> Alignment:
    """Align B rows given per-token byte ends (``[Ts_b]`` and ``[Tt_b]`` per row, non-decreasing).

    A token whose end equals the previous end (or 0 at the start) carries no text and gets chunk -1.
    Both sides of a row must end at the same byte (they tokenize the same text).
    """
    return _build(flatten_rows(student_ends), flatten_rows(teacher_ends), None, None, texts)


def _vocab_of(side: Tokenizer | Vocab) -> tuple[Vocab, bool]:
    return (side, False) if isinstance(side, Vocab) else (side.vocab, bool(side.dummy_prefix))


def _ends_flat(ids: np.ndarray, offsets: np.ndarray, vocab: Vocab, dummy_prefix: bool) -> np.ndarray:
    """Flat ids [N] -> flat row-relative byte ends [N] from the exact per-token byte lengths."""
    if ids.size and (ids.min() < 0 or ids.max() >= vocab.size):
        raise ValueError(f"token ids outside vocabulary {vocab.name!r} (size {vocab.size})")
    csum = np.zeros(ids.shape[0] + 1, dtype=np.int64)
    np.cumsum(vocab.byte_lengths[ids], out=csum[1:])
    ends = csum[1:] - np.repeat(csum[offsets[:-1]], np.diff(offsets))  # [N]
    if dummy_prefix:  # SentencePiece's phantom leading space sits in the first token with bytes: drop it
        np.maximum(ends - 1, 0, out=ends)
    return ends


def token_ends(ids: Rows, side: Tokenizer | Vocab) -> list[np.ndarray]:
    """Per row, the byte offset where each token ends ``[T_b]`` (exact bytes; dummy prefix handled)."""
    vocab, dummy = _vocab_of(side)
    flat, offsets = flatten_rows(ids)
    return np.split(_ends_flat(flat, offsets, vocab, dummy), offsets[1:-1])


def align_ids(student_ids: Rows, teacher_ids: Rows, *, student: Tokenizer | Vocab, teacher: Tokenizer | Vocab,
              texts: Sequence[str] | None = None) -> Alignment:
    """Align B rows of token ids by the exact bytes each id contributes (the batched fast path).

    Pass a `Tokenizer` (not a bare `Vocab`) for SentencePiece models so the dummy-prefix space is
    removed. With `texts`, each row is checked to cover exactly its text's bytes.
    """
    (s_vocab, s_dummy), (t_vocab, t_dummy) = _vocab_of(student), _vocab_of(teacher)
    s_ids, s_off = flatten_rows(student_ids)
    t_ids, t_off = flatten_rows(teacher_ids)
    s_ends = _ends_flat(s_ids, s_off, s_vocab, s_dummy)
    t_ends = _ends_flat(t_ids, t_off, t_vocab, t_dummy)
    return _build((s_ends, s_off), (t_ends, t_off), s_ids, t_ids, texts)


def _encode(tok: Tokenizer, texts: Sequence[str], add_bos: bool, add_eos: bool) -> tuple[list, list | None]:
    """Ids per row (with bos/eos where asked and the tokenizer has them) and, for normalising
    tokenizers, byte ends per row from the encoder's offsets (None for lossless ones)."""
    bos = [tok.vocab.roles["bos"]] if add_bos and "bos" in tok.vocab.roles else []
    eos = [tok.vocab.roles["eos"]] if add_eos and "eos" in tok.vocab.roles else []
    if tok.lossless:
        return [bos + list(r) + eos for r in tok.encode_batch(texts)], None
    ids_rows, ends_rows = [], []
    for text in texts:
        ids, ends = tok.byte_ends(text)
        total = len(text.encode("utf-8"))
        ends = np.minimum(ends, total)
        if ends.size:
            # text the encoder dropped at the end (trailing whitespace) joins the last token with text
            ends[np.searchsorted(ends, ends[-1]):] = total
        last = int(ends[-1]) if ends.size else 0
        ids_rows.append(bos + ids.tolist() + eos)
        ends_rows.append(np.concatenate([np.zeros(len(bos), np.int64), ends, np.full(len(eos), last, np.int64)]))
    return ids_rows, ends_rows


def align_texts(texts: Sequence[str], *, student: Tokenizer, teacher: Tokenizer, add_bos: bool = False,
                add_eos: bool = False) -> Alignment:
    """Tokenize B texts with both tokenizers and align them.

    Lossless tokenizers use exact byte lengths; normalising ones (BERT, CLIP) fall back to the
    encoder's character offsets (`Tokenizer.byte_ends`): leading text a normaliser drops joins the
    first token, trailing text the last. bos/eos are added only where the tokenizer has those roles.
    Raises ValueError when a row's tokens cannot spell its text (e.g. a normaliser dropped all of it, or
    SentencePiece read a literal U+2581 as a space).
    """
    texts = list(texts)
    s_rows, s_ends = _encode(student, texts, add_bos, add_eos)
    t_rows, t_ends = _encode(teacher, texts, add_bos, add_eos)
    if s_ends is None and t_ends is None:
        return align_ids(s_rows, t_rows, student=student, teacher=teacher, texts=texts)
    s_flat, s_off = flatten_rows(s_rows)
    t_flat, t_off = flatten_rows(t_rows)
    s_e = _side_ends(s_flat, s_off, s_ends, student)
    t_e = _side_ends(t_flat, t_off, t_ends, teacher)
    return _build((s_e, s_off), (t_e, t_off), s_flat, t_flat, texts)


def _side_ends(flat: np.ndarray, offsets: np.ndarray, ends_rows: list | None, tok: Tokenizer) -> np.ndarray:
    """Flat byte ends of one side: from the encoder's offsets where given, else from exact byte lengths."""
    return flatten_rows(ends_rows)[0] if ends_rows is not None else _ends_flat(flat, offsets, tok.vocab,
                                                                                 tok.dummy_prefix)


def align_text(text: str, *, student: Tokenizer, teacher: Tokenizer, add_bos: bool = False,
               add_eos: bool = False) -> Alignment:
    """`align_texts` for one text (B = 1)."""
    return align_texts([text], student=student, teacher=teacher, add_bos=add_bos, add_eos=add_eos)


# --- truncation by text ---------------------------------------------------------------------------


def common_boundaries(student_ends: np.ndarray, teacher_ends: np.ndarray) -> np.ndarray:
    """Sorted byte offsets ``[C]`` (> 0) where both sides end a text-carrying token: the chunk ends."""
    s = np.unique(np.asarray(student_ends, dtype=np.int64))
    t = np.unique(np.asarray(teacher_ends, dtype=np.int64))
    both = np.intersect1d(s, t, assume_unique=True)
    return both[both > 0]


def cut_point(student_ends: np.ndarray, teacher_ends: np.ndarray, *, max_student_tokens: int,
              max_teacher_tokens: int, text: bytes | None = None) -> tuple[int, int, int]:
    """Longest text prefix both sides can cover within their token budgets.

    Returns ``(n_bytes, n_student, n_teacher)``: the prefix ends at a common boundary (and, with
    `text`, on a UTF-8 character boundary), and the first ``n_student`` / ``n_teacher`` tokens cover
    exactly bytes ``[0, n_bytes)`` on each side (leading specials are kept within the budget).
    Cutting both sides to the same token count, as NeMo does, leaves tails covering different text.
    """
    s = np.asarray(student_ends, dtype=np.int64)
    t = np.asarray(teacher_ends, dtype=np.int64)
    if max_student_tokens < 0 or max_teacher_tokens < 0:
        raise ValueError("token budgets must be >= 0")
    common = common_boundaries(s, t)
    if text is not None and common.size:
        lead = np.frombuffer(text, dtype=np.uint8)
        inside = common < lead.shape[0]
        ok = ~inside
        ok[inside] = (lead[common[inside]] & 0xC0) != 0x80  # not a UTF-8 continuation byte
        common = common[ok]

    def limit(ends: np.ndarray, budget: int) -> int:
        if budget >= ends.shape[0]:
            return int(ends[-1]) if ends.size else 0
        return int(ends[budget - 1]) if budget > 0 else 0

    lim = min(limit(s, max_student_tokens), limit(t, max_teacher_tokens))
    k = int(np.searchsorted(common, lim, side="right")) - 1
    n_bytes = int(common[k]) if k >= 0 else 0
    n_s = min(max_student_tokens, int(np.searchsorted(s, n_bytes, side="right")))
    n_t = min(max_teacher_tokens, int(np.searchsorted(t, n_bytes, side="right")))
    return n_bytes, n_s, n_t


def truncate_text(text: str, *, student: Tokenizer, teacher: Tokenizer, max_student_tokens: int,
                  max_teacher_tokens: int, add_bos: bool = False) -> Truncation:
    """Cut `text` at a common boundary so each side fits its budget and both cover identical bytes.

    The returned ids are prefixes of the full text's tokenizations (re-encoding the cut text can tokenize
    its end differently); `align_ids` on them with ``texts=[result.text]`` partitions both sides.
    """
    s_rows, s_ends = _encode(student, [text], add_bos, False)
    t_rows, t_ends = _encode(teacher, [text], add_bos, False)
    s_e = s_ends[0] if s_ends is not None else token_ends(s_rows, student)[0]
    t_e = t_ends[0] if t_ends is not None else token_ends(t_rows, teacher)[0]
    data = text.encode("utf-8")
    n_bytes, n_s, n_t = cut_point(s_e, t_e, max_student_tokens=max_student_tokens,
                                  max_teacher_tokens=max_teacher_tokens, text=data)
    return Truncation(text=data[:n_bytes].decode("utf-8"), n_bytes=n_bytes, student_ids=s_rows[0][:n_s],
                      teacher_ids=t_rows[0][:n_t])
