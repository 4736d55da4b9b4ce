"""What travels between the data pipeline, the teacher workers and the student worker.

Plain numpy on the way in (a `Batch` is made by background data workers and may cross a process
boundary); a teacher's answer is `xtalign.losses.TeacherTopK` (bf16 logits, int32 ids, fp32
logsumexp, fp32 target log-prob), on CPU. Nothing here holds a model or a device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Batch", "TeacherSide", "IGNORE"]

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
    """

    ids: np.ndarray
    lengths: np.ndarray
    targets: np.ndarray
    student_chunk: np.ndarray | None = None
    teacher_chunk: np.ndarray | None = None

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
    """

    index: int
    sample_ids: np.ndarray
    n_bytes: np.ndarray
    student_ids: np.ndarray
    student_lengths: np.ndarray
    student_targets: np.ndarray
    teachers: tuple[TeacherSide, ...] = ()
    texts: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        return int(self.sample_ids.shape[0])

    @property
    def student_tokens(self) -> int:
        return int(self.student_lengths.sum())
