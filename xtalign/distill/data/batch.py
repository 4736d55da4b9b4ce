"""What travels between the data pipeline, the teacher workers and the student worker.

Plain numpy on the way in (a `Batch` is made by background data workers and may cross a process
boundary); a teacher's answer is `xtalign.losses.TeacherTopK` (bf16 logits, int32 ids, fp32
logsumexp, fp32 target log-prob), on CPU. Nothing here holds a model or a device.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Batch", "IGNORE", "TeacherSide", "concat_rows", "take_rows"]

IGNORE = -100  # target of a position that predicts nothing (padding, the last token, a special)


@dataclass(frozen=True, kw_only=True, eq=False)
class TeacherSide:
    """One teacher's view of a batch: its own token ids of the same texts and the alignment to the student.

    ids: ``[B, Tt]`` int64 teacher token ids, right-padded with -1.
    lengths: ``[B]`` int64 real tokens per row.
    targets: ``[B, Tt]`` int64 the teacher's next token at each position, ``IGNORE`` where none.
    student_chunk / teacher_chunk: ``[B, Ts]`` / ``[B, Tt]`` int64 prediction chunks (already shifted,
        `xtalign.align.Alignment.shifted`), -1 = none. For a same-tokenizer teacher both are None: the
        teacher sees the student's ids and the loss is per position.
    ends / scored / texts (chat data): ``[B, Tt]`` byte end of each token in the teacher's own rendering,
        which tokens bits per byte scores, and the renderings; None / () for text data (the text is the
        student's and the ends follow from the vocabulary).
    """

    ids: np.ndarray
    lengths: np.ndarray
    targets: np.ndarray
    student_chunk: np.ndarray | None = None
    teacher_chunk: np.ndarray | None = None
    ends: np.ndarray | None = None
    scored: np.ndarray | None = None
    texts: tuple[str, ...] = ()

    @property
    def same_vocab(self) -> bool:
        return self.student_chunk is None


@dataclass(frozen=True, kw_only=True, eq=False)
class Batch:
    """B packed samples, tokenized for the student and every teacher, truncated by text so all sides
    cover exactly the same bytes.

    index: position of this batch in the run's deterministic order (the data cursor counts batches).
    sample_ids: ``[B]`` int64 ids of the packed samples (stable for the same data, packing and seed).
    n_bytes: ``[B]`` int64 UTF-8 bytes each row covers (identical on every side).
    student_ids / student_lengths / student_targets: as in `TeacherSide`, for the student.
    teachers: one `TeacherSide` per configured teacher, in config order.
    texts: the B texts exactly as covered (for bits per byte by character class).
    sources: the B samples' sources (bits per byte per source), when the data names them.
    student_ends / student_scored (chat data): ``[B, Ts]`` byte end of each student token in its rendering and
        which tokens bits per byte scores (assistant content); None for text data.
    route: ``[n_teachers, B]`` bool, which rows each teacher teaches (`combine.multi: route`); None = all.
    policy_rows / policy_targets / policy_widths (on-policy): ``[B]`` which rows are the student's own samples,
        ``[B, Ts]`` the sampled token each position predicts (IGNORE outside completions) and its bytes.
    stats: figures of how the batch was made (generation time, sampled tokens, …), for the step's metrics.
    """

    index: int
    sample_ids: np.ndarray
    n_bytes: np.ndarray
    student_ids: np.ndarray
    student_lengths: np.ndarray
    student_targets: np.ndarray
    teachers: tuple[TeacherSide, ...] = ()
    texts: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    student_ends: np.ndarray | None = None
    student_scored: np.ndarray | None = None
    route: np.ndarray | None = None
    policy_rows: np.ndarray | None = None
    policy_targets: np.ndarray | None = None
    policy_widths: np.ndarray | None = None
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return int(self.sample_ids.shape[0])

    @property
    def student_tokens(self) -> int:
        return int(self.student_lengths.sum())


def _take(a: np.ndarray | None, rows: np.ndarray, axis: int = 0) -> np.ndarray | None:
    return None if a is None else np.ascontiguousarray(np.take(a, rows, axis=axis))


def _take_side(side: TeacherSide, rows: np.ndarray, student_ids: np.ndarray) -> TeacherSide:
    same = side.student_chunk is None
    return TeacherSide(ids=student_ids if same else _take(side.ids, rows), lengths=_take(side.lengths, rows),
                       targets=_take(side.targets, rows), student_chunk=_take(side.student_chunk, rows),
                       teacher_chunk=_take(side.teacher_chunk, rows), ends=_take(side.ends, rows),
                       scored=_take(side.scored, rows), texts=tuple(side.texts[i] for i in rows) if side.texts else ())


def take_rows(batch: Batch, rows: np.ndarray) -> Batch:
    """The batch's rows `rows` (any subset, in that order; padding width kept)."""
    rows = np.asarray(rows, dtype=np.int64)
    s_ids = _take(batch.student_ids, rows)
    assert s_ids is not None
    return Batch(index=batch.index, sample_ids=_take(batch.sample_ids, rows), n_bytes=_take(batch.n_bytes, rows),
                 student_ids=s_ids, student_lengths=_take(batch.student_lengths, rows),
                 student_targets=_take(batch.student_targets, rows),
                 teachers=tuple(_take_side(t, rows, s_ids) for t in batch.teachers),
                 texts=tuple(batch.texts[i] for i in rows), sources=tuple(batch.sources[i] for i in rows) if
                 batch.sources else (), student_ends=_take(batch.student_ends, rows),
                 student_scored=_take(batch.student_scored, rows),
                 route=_take(batch.route, rows, axis=1), policy_rows=_take(batch.policy_rows, rows),
                 policy_targets=_take(batch.policy_targets, rows), policy_widths=_take(batch.policy_widths, rows),
                 stats=dict(batch.stats))


def _stack(parts: list[np.ndarray | None], fill: int | bool, rows: list[int], dtype: type,
           width: int | None = None) -> np.ndarray:
    """Row blocks ``[b_i, T_i]`` (None: `rows[i]` rows of `fill`) → one right-padded ``[Σ b_i, width]`` (default:
    the widest block)."""
    width = width if width is not None else max((p.shape[1] for p in parts if p is not None), default=0)
    out = np.full((sum(rows), width), fill, dtype=dtype)
    at = 0
    for p, n in zip(parts, rows, strict=True):
        if p is not None:
            out[at: at + n, : p.shape[1]] = p
        at += n
    return out


def _all_or_none(parts: list[np.ndarray | None], fill: int | bool, rows: list[int], dtype: type,
                 width: int | None = None) -> np.ndarray | None:
    return None if any(p is None for p in parts) else _stack(parts, fill, rows, dtype, width)


def _concat_side(sides: list[TeacherSide], rows: list[int], student_ids: np.ndarray) -> TeacherSide:
    ts = student_ids.shape[1]
    if sides[0].student_chunk is None:  # same vocabulary: the student's ids
        ids = student_ids
        chunks: tuple[np.ndarray | None, np.ndarray | None] = (None, None)
    else:
        ids = _stack([s.ids for s in sides], -1, rows, np.int64)
        chunks = (_stack([s.student_chunk for s in sides], -1, rows, np.int64, ts),
                  _stack([s.teacher_chunk for s in sides], -1, rows, np.int64, ids.shape[1]))
    tt = ids.shape[1]
    texts = tuple(t for s in sides for t in s.texts) if all(s.texts for s in sides) else ()
    return TeacherSide(ids=ids, lengths=np.concatenate([s.lengths for s in sides]),
                       targets=_stack([s.targets for s in sides], IGNORE, rows, np.int64, tt), student_chunk=chunks[0],
                       teacher_chunk=chunks[1], ends=_all_or_none([s.ends for s in sides], -1, rows, np.int64, tt),
                       scored=_all_or_none([s.scored for s in sides], False, rows, bool, tt), texts=texts)


def concat_rows(parts: list[Batch], index: int) -> Batch:
    """Batches' rows one after another as batch `index` (each array right-padded to the widest)."""
    rows = [p.size for p in parts]
    s_ids = _stack([p.student_ids for p in parts], -1, rows, np.int64)
    ts = s_ids.shape[1]
    cat = np.concatenate
    routes = [p.route if p.route is not None else np.ones((len(p.teachers), p.size), bool) for p in parts]
    return Batch(index=index, sample_ids=cat([p.sample_ids for p in parts]), n_bytes=cat([p.n_bytes for p in parts]),
                 student_ids=s_ids, student_lengths=cat([p.student_lengths for p in parts]),
                 student_targets=_stack([p.student_targets for p in parts], IGNORE, rows, np.int64, ts),
                 teachers=tuple(_concat_side([p.teachers[i] for p in parts], rows, s_ids)
                                for i in range(len(parts[0].teachers))),
                 texts=tuple(t for p in parts for t in p.texts),
                 sources=tuple(s for p in parts for s in p.sources) if all(p.sources for p in parts) else (),
                 student_ends=_all_or_none([p.student_ends for p in parts], -1, rows, np.int64, ts),
                 student_scored=_all_or_none([p.student_scored for p in parts], False, rows, bool, ts),
                 route=None if all(p.route is None for p in parts) else np.concatenate(routes, axis=1),
                 policy_rows=cat([p.policy_rows if p.policy_rows is not None else np.zeros(p.size, bool)
                                  for p in parts]),
                 policy_targets=_stack([p.policy_targets for p in parts], IGNORE, rows, np.int64, ts),
                 policy_widths=_stack([p.policy_widths for p in parts], 0, rows, np.int64, ts),
                 stats={k: v for p in parts for k, v in p.stats.items()})
