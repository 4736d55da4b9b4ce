"""Chunk bookkeeping: which positions of each side belong to which aligned chunk, and per-chunk means.

Chunk ids come from the aligner, already shifted for next-token prediction: ``chunk[b, t] = c >= 0``
means the logits at position ``t`` predict a token of chunk ``c`` of row ``b``; -1 means no chunk
(padding, specials, the last position). Both sides number the chunks of a row the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["ChunkLayout", "chunk_means", "group_mean"]


def group_mean(values: Tensor, group: Tensor, counts: Tensor) -> Tensor:
    """Mean of ``values [P, *F]`` per group (``group [P]`` in ``[0, G)``, ``counts [G]`` > 0) → ``[G, *F]``.

    When every group is one position, already in order, ``values`` is returned as is (no copy).
    """
    n_groups = counts.shape[0]
    if (
        values.shape[0] == n_groups
        and bool((counts == 1).all())
        and bool((group == torch.arange(n_groups, device=group.device)).all())
    ):
        return values  # every chunk is one position, already in order: nothing to average
    out = values.new_zeros((n_groups, *values.shape[1:]))  # [G, *F]
    out = out.index_add(0, group, values)
    shape = (n_groups,) + (1,) * (values.dim() - 1)
    return out / counts.to(values.dtype).reshape(shape)


def chunk_means(values: Tensor, chunk: Tensor, n_chunks: int | None = None) -> tuple[Tensor, Tensor]:
    """Per-chunk means of ``values [B, T, *F]`` under ``chunk [B, T]`` (−1 = no chunk).

    Returns ``(means [B, C, *F], counts [B, C])``; chunks without positions have mean 0 and count 0.
    One ``index_add`` over the flattened positions, no Python loop.
    """
    bsz, seq = chunk.shape
    if n_chunks is None:
        n_chunks = int(chunk.max().clamp_min(-1)) + 1 if chunk.numel() else 0
    keep = chunk >= 0  # [B, T]
    key = (torch.arange(bsz, device=chunk.device).unsqueeze(1) * n_chunks + chunk)[keep]  # [P]
    flat = values.reshape(bsz * seq, *values.shape[2:])[keep.reshape(-1)]  # [P, *F]
    sums = values.new_zeros((bsz * n_chunks, *values.shape[2:])).index_add(0, key, flat)  # [B*C, *F]
    counts = torch.bincount(key, minlength=bsz * n_chunks)  # [B*C]
    shape = (bsz * n_chunks,) + (1,) * (values.dim() - 2)
    means = sums / counts.clamp_min(1).to(values.dtype).reshape(shape)
    return means.reshape(bsz, n_chunks, *values.shape[2:]), counts.reshape(bsz, n_chunks)


@dataclass(frozen=True)
class ChunkLayout:
    """The chunks present on BOTH sides, renumbered ``0..G-1`` across the batch (row-major).

    Attributes:
        n_groups: G, the number of chunks with at least one student and one teacher position.
        student_pos: ``[P_s]`` flat index into ``B * Ts`` of the student positions in those chunks.
        student_group: ``[P_s]`` chunk (group) of each of those positions.
        student_count: ``[G]`` student positions per chunk.
        teacher_pos, teacher_group, teacher_count: the same for the teacher side.
    """

    n_groups: int
    student_pos: Tensor
    student_group: Tensor
    student_count: Tensor
    teacher_pos: Tensor
    teacher_group: Tensor
    teacher_count: Tensor

    @classmethod
    def build(cls, student_chunk: Tensor, teacher_chunk: Tensor) -> ChunkLayout:
        """From ``student_chunk [B, Ts]`` and ``teacher_chunk [B, Tt]`` (int, −1 = no chunk)."""
        if student_chunk.dim() != 2 or teacher_chunk.dim() != 2:
            raise ValueError("chunk ids must be [B, T] on both sides")
        if student_chunk.shape[0] != teacher_chunk.shape[0]:
            raise ValueError(
                f"batch sizes differ: student {student_chunk.shape[0]}, teacher {teacher_chunk.shape[0]}"
            )
        bsz = student_chunk.shape[0]
        top = max(
            int(student_chunk.max()) if student_chunk.numel() else -1,
            int(teacher_chunk.max()) if teacher_chunk.numel() else -1,
        )
        n_chunks = top + 1
        s_key, s_pos = _keys(student_chunk, n_chunks)
        t_key, t_pos = _keys(teacher_chunk, n_chunks)
        s_cnt = torch.bincount(s_key, minlength=bsz * n_chunks)  # [B*C]
        t_cnt = torch.bincount(t_key, minlength=bsz * n_chunks)  # [B*C]
        both = (s_cnt > 0) & (t_cnt > 0)  # [B*C]
        renum = torch.cumsum(both.long(), 0) - 1  # [B*C] new id of each kept chunk
        s_keep, t_keep = both[s_key], both[t_key]
        return cls(
            n_groups=int(both.sum()),
            student_pos=s_pos[s_keep],
            student_group=renum[s_key[s_keep]],
            student_count=s_cnt[both],
            teacher_pos=t_pos[t_keep],
            teacher_group=renum[t_key[t_keep]],
            teacher_count=t_cnt[both],
        )

    def group_spans(self) -> tuple[Tensor, Tensor]:
        """``(first [G], last [G])``: the smallest and largest flat student position of each chunk."""
        big = torch.iinfo(torch.long).max
        first = torch.full((self.n_groups,), big, dtype=torch.long, device=self.student_pos.device)
        first = first.scatter_reduce(0, self.student_group, self.student_pos, "amin")  # [G]
        last = torch.full_like(first, -1).scatter_reduce(0, self.student_group, self.student_pos, "amax")  # [G]
        return first, last

    def ordered(self) -> ChunkLayout:
        """The same chunks renumbered by their first student position, teacher entries sorted by chunk.

        Then the chunks inside any range of student positions are a contiguous range of ids, and so are
        their teacher entries (``teacher_bounds``). Losses are means over chunks, so numbering is free.
        Returns ``self`` when it is already in that order (chunk ids that grow along each row).
        """
        if self.n_groups == 0:
            return self
        order = torch.sort(self.group_spans()[0], stable=True).indices  # [G] old ids by first position
        rank = torch.empty_like(order)
        rank[order] = torch.arange(self.n_groups, device=order.device)  # [G] old id → new id
        t_group = rank[self.teacher_group]  # [P_t]
        t_order = torch.sort(t_group, stable=True).indices  # [P_t] positions stay ascending per chunk
        dev = order.device
        same_s = bool((order == torch.arange(self.n_groups, device=dev)).all())
        if same_s and bool((t_order == torch.arange(t_order.shape[0], device=dev)).all()):
            return self
        return ChunkLayout(
            n_groups=self.n_groups,
            student_pos=self.student_pos,
            student_group=rank[self.student_group],
            student_count=self.student_count[order],
            teacher_pos=self.teacher_pos[t_order],
            teacher_group=t_group[t_order],
            teacher_count=self.teacher_count[order],
        )

    def teacher_bounds(self) -> list[int]:
        """``G + 1`` offsets: chunk ``g``'s teacher entries are ``[b[g], b[g + 1])`` (on an ``ordered`` layout)."""
        return [0, *torch.cumsum(self.teacher_count, 0).tolist()]

    def window(self, local: Tensor, students: tuple[int, int], groups: tuple[int, int],
               teachers: tuple[int, int]) -> ChunkLayout:
        """The chunks ``groups = (ga, gb)`` alone, renumbered from 0, on an ``ordered`` layout.

        ``students``/``teachers`` are their entry ranges; ``local [p]`` replaces the student positions
        (the rows of a slice's logits that hold them). The teacher positions stay flat ``B * Tt`` indices.
        """
        (pa, pb), (ga, gb), (ta, tb) = students, groups, teachers
        return ChunkLayout(
            n_groups=gb - ga,
            student_pos=local,
            student_group=self.student_group[pa:pb] - ga,
            student_count=self.student_count[ga:gb],
            teacher_pos=self.teacher_pos[ta:tb],
            teacher_group=self.teacher_group[ta:tb] - ga,
            teacher_count=self.teacher_count[ga:gb],
        )


def _keys(chunk: Tensor, n_chunks: int) -> tuple[Tensor, Tensor]:
    """Global chunk key ``b * C + c`` and flat position of every position that has a chunk."""
    bsz, seq = chunk.shape
    chunk = chunk.long()
    keep = (chunk >= 0).reshape(-1)  # [B*T]
    key = (torch.arange(bsz, device=chunk.device).unsqueeze(1) * n_chunks + chunk).reshape(-1)  # [B*T]
    pos = torch.arange(bsz * seq, device=chunk.device)  # [B*T]
    return key[keep], pos[keep]
