"""Packed samples -> `Batch`es for the student and every teacher.

`BatchBuilder` tokenizes each text on every side (student + teachers with another vocabulary), cuts it
BY TEXT at the longest prefix that ends on a token boundary of every side and on a UTF-8 character
boundary with every side within `seq_len` tokens, and aligns each cross-vocabulary teacher to the
student (`xtalign.align`). The kept ids are prefixes of the full tokenizations.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from xtalign.align import align_ends
from xtalign.distill.data.batch import IGNORE, Batch, TeacherSide
from xtalign.distill.errors import DataError
from xtalign.zoo.tokenizer import TiktokenBackend, Tokenizer

__all__ = ["BatchBuilder", "cut_point_multi", "pad_rows", "start_token", "tokenize_texts"]


# --- truncation by text on N sides -----------------------------------------------------------------


def cut_point_multi(ends: Sequence[np.ndarray], *, max_tokens: int, text: bytes) -> tuple[int, list[int]]:
    """Longest prefix of `text` that every side covers exactly within `max_tokens` tokens.

    `ends[i]` ``[T_i]``: byte offset where each token of side i ends (non-decreasing; 0 for a leading
    special). Returns ``(n_bytes, counts)``: the prefix ends where every side ends a token, not inside
    a UTF-8 character, and the first ``counts[i]`` tokens of side i cover exactly bytes ``[0, n_bytes)``.
    ``n_bytes`` is 0 when no such prefix fits (the budget is smaller than the first aligned chunk).
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1; got {max_tokens}")
    lim = len(text)
    for e in ends:
        lim = min(lim, int(e[max_tokens - 1]) if e.shape[0] > max_tokens else (int(e[-1]) if e.size else 0))
    common = np.ones(lim + 1, dtype=bool)  # [lim + 1] True where every side ends a token
    for e in ends:
        hit = np.zeros(lim + 1, dtype=bool)
        hit[e[e <= lim]] = True
        common &= hit
    common[0] = False
    lead = np.frombuffer(text, dtype=np.uint8, count=min(lim + 1, len(text)))
    common[: lead.shape[0]] &= (lead & 0xC0) != 0x80  # the next byte must start a character
    where = np.flatnonzero(common)
    n_bytes = int(where[-1]) if where.size else 0
    return n_bytes, [min(max_tokens, int(np.searchsorted(e, n_bytes, side="right"))) for e in ends]


def _first_chunk_tokens(ends: Sequence[np.ndarray], text: bytes) -> int:
    """Tokens the longest side needs to cover the first aligned chunk of `text` (for the error message)."""
    common = ends[0][ends[0] > 0]
    for e in ends[1:]:
        common = np.intersect1d(common, e)
    lead = np.frombuffer(text, dtype=np.uint8)
    common = [int(c) for c in common if c >= lead.shape[0] or (lead[c] & 0xC0) != 0x80]
    first = common[0] if common else len(text)
    return max(int(np.searchsorted(e, first, side="right")) for e in ends)


# --- the builder -----------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Row:
    """One text cut for every distinct side: the covered text and, per side, kept ids and their byte ends."""

    text: str
    n_bytes: int
    ids: tuple[np.ndarray, ...]  # per side [n_i] int32
    ends: tuple[np.ndarray, ...]  # per side [n_i] int32


def start_token(tok: Tokenizer, add_bos: bool) -> list[int]:
    """The document-start token: bos, else eos, else none."""
    if not add_bos:
        return []
    roles = tok.vocab.roles
    return [roles["bos"]] if "bos" in roles else [roles["eos"]] if "eos" in roles else []


def _encode_rows(tok: Tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Token ids per text. tiktoken releases the GIL per text, so the pipeline's worker threads parallelise
    it (its own batch call spawns a thread pool each time: 1.5x slower here); SentencePiece and HF hold
    the GIL per text but parallelise a batch natively."""
    if isinstance(tok.backend, TiktokenBackend):
        return [tok.encode(t) for t in texts]
    return tok.encode_batch(texts)


def tokenize_texts(tok: Tokenizer, start: list[int], texts: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per text: ids ``[T]`` (start token first) and byte ends ``[T]`` of the full tokenization."""
    head = np.asarray(start, dtype=np.int64)
    out = []
    if tok.lossless:
        lengths = tok.vocab.byte_lengths
        for row in _encode_rows(tok, texts):
            ids = np.concatenate([head, np.asarray(row, dtype=np.int64)])  # [T]
            ends = np.cumsum(lengths[ids], dtype=np.int64)
            if tok.dummy_prefix:  # SentencePiece's phantom leading space is not in the text
                np.maximum(ends - 1, 0, out=ends)
            out.append((ids, ends))
        return out
    for text in texts:  # normalising tokenizers: ends from the encoder's offsets
        ids, ends = tok.byte_ends(text)
        ends = np.minimum(ends, len(text.encode("utf-8")))
        out.append((np.concatenate([head, ids]), np.concatenate([np.zeros(len(start), np.int64), ends])))
    return out


def pad_rows(rows: Sequence[np.ndarray], fill: int) -> np.ndarray:
    """Rows ``[n_b]`` -> right-padded ``[B, max n_b]`` int64."""
    out = np.full((len(rows), max((r.shape[0] for r in rows), default=0)), fill, dtype=np.int64)
    for b, r in enumerate(rows):
        out[b, : r.shape[0]] = r
    return out


def _next_token_targets(ids: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """``[B, T]`` padded ids and byte ends (-1 padded) -> next-token targets, IGNORE where the next token
    is padding or carries no text (a special), and at the last real position."""
    prev = np.zeros_like(ends)
    prev[:, 1:] = ends[:, :-1]
    carries = ends > prev  # [B, T] the token adds bytes (padding: -1 > x is False)
    targets = np.full_like(ids, IGNORE)
    targets[:, :-1] = np.where(carries[:, 1:], ids[:, 1:], IGNORE)
    return targets


class BatchBuilder:
    """Texts -> `Batch` for a student and its teachers (thread-safe; tokenizations cached per text).

    A teacher whose vocabulary fingerprint equals the student's is a same-vocabulary side (the student's
    ids, no chunks); the others are aligned to the student on exact bytes and shifted for prediction.
    """

    def __init__(self, student: Tokenizer, teachers: Sequence[Tokenizer], *, seq_len: int, add_bos: bool,
                 cache_size: int = 2048) -> None:
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1; got {seq_len}")
        self.student, self.teachers = student, tuple(teachers)
        self.seq_len, self.add_bos, self.cache_size = seq_len, add_bos, cache_size
        sides: dict[str, int] = {student.vocab.fingerprint: 0}
        self._sides = [student]
        for t in self.teachers:
            if t.vocab.fingerprint not in sides:
                sides[t.vocab.fingerprint] = len(self._sides)
                self._sides.append(t)
        self._side_of = [sides[t.vocab.fingerprint] for t in self.teachers]
        self._starts = [start_token(t, add_bos) for t in self._sides]
        for tok in self._sides:  # build lazy members now, not racing in worker threads
            _ = tok.backend, tok.vocab.byte_lengths
        self._cache: OrderedDict[str, _Row] = OrderedDict()
        self._lock = threading.Lock()

    def _cut(self, sample_id: int, text: str, full: list[tuple[np.ndarray, np.ndarray]]) -> _Row:
        data = text.encode("utf-8")
        ends = [e for _, e in full]
        n_bytes, counts = cut_point_multi(ends, max_tokens=self.seq_len, text=data)
        if n_bytes == 0:
            need = _first_chunk_tokens(ends, data)
            raise DataError(f"seq_len={self.seq_len} is too short to hold one aligned chunk of sample {sample_id} "
                            f"(its first chunk needs {need} tokens on its longest side); raise seq_len")
        return _Row(text=data[:n_bytes].decode("utf-8"), n_bytes=n_bytes,
                    ids=tuple(ids[:n].astype(np.int32) for (ids, _), n in zip(full, counts, strict=True)),
                    ends=tuple(e[:n].astype(np.int32) for (_, e), n in zip(full, counts, strict=True)))

    def _rows(self, sample_ids: Sequence[int], texts: Sequence[str]) -> list[_Row]:
        """The cut rows of `texts`, from the cache where present (tokenizing the rest once per side)."""
        with self._lock:
            found = [self._cache.get(t) for t in texts]
            for t, r in zip(texts, found, strict=True):
                if r is not None:
                    self._cache.move_to_end(t)
        miss = [i for i, r in enumerate(found) if r is None]
        if miss:
            missed = [texts[i] for i in miss]
            per_side = [tokenize_texts(tok, start, missed)
                        for tok, start in zip(self._sides, self._starts, strict=True)]
            for k, i in enumerate(miss):
                found[i] = self._cut(int(sample_ids[i]), texts[i], [side[k] for side in per_side])
            with self._lock:
                for i in miss:
                    self._cache[texts[i]] = found[i]  # type: ignore[assignment]
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return found  # type: ignore[return-value]

    def build(self, index: int, sample_ids: np.ndarray, texts: Sequence[str], sources: Sequence[str] = ()) -> Batch:
        """One batch: every side tokenized, cut by text, padded with -1; teachers aligned to the student."""
        sample_ids = np.asarray(sample_ids, dtype=np.int64)  # [B]
        if sample_ids.shape != (len(texts),):
            raise ValueError(f"{sample_ids.shape[0]} sample ids for {len(texts)} texts")
        rows = self._rows(sample_ids, texts)
        cut_texts = tuple(r.text for r in rows)
        ids = [pad_rows([r.ids[s] for r in rows], -1) for s in range(len(self._sides))]  # per side [B, T_s]
        ends = [pad_rows([r.ends[s] for r in rows], -1) for s in range(len(self._sides))]
        lengths = [np.array([r.ids[s].shape[0] for r in rows], dtype=np.int64) for s in range(len(self._sides))]
        targets = [_next_token_targets(i, e) for i, e in zip(ids, ends, strict=True)]
        teachers = []
        for s in self._side_of:
            if s == 0:
                teachers.append(TeacherSide(ids=ids[0], lengths=lengths[0], targets=targets[0]))
                continue
            al = align_ends([r.ends[0] for r in rows], [r.ends[s] for r in rows], texts=cut_texts).shifted()
            teachers.append(TeacherSide(ids=ids[s], lengths=lengths[s], targets=targets[s],
                                        student_chunk=al.student_chunk, teacher_chunk=al.teacher_chunk))
        return Batch(index=index, sample_ids=sample_ids, n_bytes=np.array([r.n_bytes for r in rows], np.int64),
                     student_ids=ids[0], student_lengths=lengths[0], student_targets=targets[0],
                     teachers=tuple(teachers), texts=cut_texts, sources=tuple(sources))
