"""Losses split into a per-slice stage on the student logits and a cheap reduction.

Every student loss of this package is a mean (or a sum) over GROUPS of student positions: aligned chunks
for P-KL, GOLD / H-KL and ULD, single positions for the CE and the same-vocabulary top-k KL. Each chunk's
value depends only on the logits of its own positions (the teacher side is fixed), so a loss is

    prepared = loss.prepare(teacher, ...)              # teacher-side bookkeeping, no student logits
    values = cat(prepared.values(z_k, prepared.part(window_k)) for each slice k)   # [G]
    loss = prepared.reduce(values)                     # mean over chunks × T², or sum / count

where slice ``k`` holds whole chunks and ``z_k`` its logits. Nothing full-vocabulary crosses a slice:
``values`` returns one number per chunk. The modules' own ``forward`` is the one-slice case
(``PreparedLoss.run`` on the full ``[B·T, V]`` logits); ``xtalign.losses.sliced`` runs many slices and
recomputes each one's logits in the backward pass.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from xtalign.losses.types import LOG_FLOOR, TeacherTopK

__all__ = ["PreparedLoss", "Window", "compute_dtype", "mean_or_zero", "take_rows", "teacher_rows"]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The losses compute in float64 for float64 logits, else in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def take_rows(z: Tensor, local: Tensor) -> Tensor:
    """``z[local]`` for ascending distinct ``local``; ``z`` itself (no copy) when ``local`` covers every row."""
    return z if local.shape[0] == z.shape[0] else z.index_select(0, local)


def mean_or_zero(values: Tensor, scale: float = 1.0) -> Tensor:
    """``scale · mean(values)``; a connected 0 when there are no values."""
    if values.numel() == 0:
        return values.sum() * 0.0
    return values.mean() * scale


def teacher_rows(teacher: TeacherTopK, pos: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """Teacher top-k log-probs ``[P, K]`` (floored), ids ``[P, K]`` and fill ``[P]`` at flat positions ``pos``."""
    k = teacher.k
    lp = teacher.logprobs(dtype).reshape(-1, k)[pos].clamp_min(LOG_FLOOR)  # [P, K]
    ids = teacher.ids.reshape(-1, k)[pos].long()  # [P, K]
    fill = teacher.fill_logprob(dtype).reshape(-1)[pos]  # [P]
    return lp, ids, fill


@dataclass(frozen=True)
class Window:
    """One slice's share of a prepared loss.

    Attributes:
        local: ``[p]`` rows of the slice's logits that hold the loss's positions ``students``.
        students: ``(pa, pb)`` range of the loss's positions (indices into ``PreparedLoss.positions``).
        groups: ``(ga, gb)`` range of its groups; exactly the groups of those positions.
    """

    local: Tensor
    students: tuple[int, int]
    groups: tuple[int, int]

    @property
    def empty(self) -> bool:
        return self.students[0] == self.students[1]


class PreparedLoss(ABC):
    """A loss made ready for one batch; see the module docstring.

    Attributes (set by subclasses):
        positions: ``[P]`` flat student positions (rows of ``[B·T]``) the loss reads, ascending.
        group_first: ``[G]`` first position of each group, ascending; ``group_last [G]`` the last. A slice
            boundary never falls inside ``(first, last]`` of any group.
        extra: a tensor the per-slice stage reads that may need a gradient (a learnable W's flat
            weights), or None. The sliced path passes it through its autograd function.
        student_vocab_size: V_s the loss expects, or None when it does not check.
    """

    positions: Tensor
    group_first: Tensor
    group_last: Tensor
    extra: Tensor | None = None
    student_vocab_size: int | None = None

    @property
    def n_groups(self) -> int:
        return int(self.group_first.shape[0])

    @property
    def single_positions(self) -> bool:
        """True when every group is one position (no slicing constraint)."""
        return self.group_first is self.group_last

    def whole(self) -> Window:
        """The one window of the straightforward path: logits rows = flat positions."""
        return Window(self.positions, (0, int(self.positions.shape[0])), (0, self.n_groups))

    def run(self, logits2d: Tensor) -> Tensor:
        """The straightforward path: the whole batch as one slice of the full ``[B·T, V]`` logits."""
        return self.reduce(self.values(logits2d, self.part(self.whole()), self.extra))

    @abstractmethod
    def part(self, window: Window) -> Any:
        """Everything ``values`` needs for one window except the logits (teacher side, index plans)."""

    @abstractmethod
    def values(self, z: Tensor, part: Any, extra: Tensor | None) -> Tensor:
        """``[g]`` one value per group of the window, from the slice's logits ``z [S, V]``."""

    @abstractmethod
    def reduce(self, values: Tensor) -> Tensor:
        """All groups' values ``[G]`` (in group order) → the scalar loss.

        Must be linear in ``values`` (a weighted sum, such as a mean): the fused sliced path takes its
        gradient once, up front.
        """
