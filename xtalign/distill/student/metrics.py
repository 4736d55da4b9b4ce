"""What the student reports besides its losses: next-token accuracy and agreement with each teacher (as
hit/count pairs, so ranks and micro-batches merge as ratios of sums), and its peak memory."""

from __future__ import annotations

import resource
from collections.abc import Sequence

import torch
from torch import Tensor

from xtalign.distill.data.batch import IGNORE, TeacherSide
from xtalign.distill.student.kd import KDTerm, on_device
from xtalign.losses import TeacherTopK

__all__ = ["accuracy_counts", "agreement_counts", "peak_memory_mb"]


def accuracy_counts(top: Tensor, targets: Tensor) -> tuple[int, int]:
    """(hits, n) of the student's top-1 ``[B, Ts]`` against its next-token targets."""
    keep = targets != IGNORE
    return int(((top == targets) & keep).sum()), int(keep.sum())


def _first_of_chunk(chunk: Tensor) -> Tensor:
    """``[B, T]`` prediction chunks → ``[B, C]`` first position of each chunk id (-1 where absent)."""
    b, t = chunk.shape
    n = int(chunk.max()) + 1 if chunk.numel() and int(chunk.max()) >= 0 else 1
    pos = torch.arange(t, device=chunk.device).expand(b, t)
    big = torch.full((b, n), t, dtype=torch.long, device=chunk.device)
    big = big.scatter_reduce(1, chunk.clamp_min(0), torch.where(chunk >= 0, pos, t), "amin")
    return torch.where(big < t, big, -1)


def _agreement(top: Tensor, side: TeacherSide, answer: TeacherTopK, best: Tensor | None) -> tuple[int, int]:
    """(hits, n): positions where the student's top-1, mapped through W's largest entry (`best`), is the
    teacher's top-1 for the same next token (first token of each chunk; same-vocab: every counted position)."""
    t_top = answer.ids[..., 0].long()  # [B, Tt] top-k ids come sorted
    if side.same_vocab:
        keep = on_device(side.targets, top.device) != IGNORE
        return int(((top == t_top) & keep).sum()), int(keep.sum())
    if best is None:
        return 0, 0
    mapped = best[top]  # [B, Ts]
    s_first = _first_of_chunk(on_device(side.student_chunk, top.device))  # [B, C] positions, -1 = none
    t_first = _first_of_chunk(on_device(side.teacher_chunk, top.device))
    ok = (s_first >= 0) & (t_first >= 0)
    s_pred = mapped.gather(1, s_first.clamp_min(0))
    t_pred = t_top.gather(1, t_first.clamp_min(0))
    return int(((s_pred == t_pred) & ok).sum()), int(ok.sum())


def agreement_counts(top: Tensor, sides: Sequence[TeacherSide], teachers: Sequence[TeacherTopK],
                     terms: Sequence[KDTerm]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Per teacher (hits, n) of `_agreement`, as two tuples."""
    pairs = [_agreement(top, s, t, term.best_columns) for s, t, term in zip(sides, teachers, terms, strict=True)]
    return tuple(h for h, _ in pairs), tuple(n for _, n in pairs)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this worker: CUDA allocations on a GPU, the process's max RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
