"""Projection helpers for the losses: a learnable W, the fixed sparsity index, and the "common" set."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from xtalign.losses.types import SparseProjection

__all__ = ["LearnableProjection", "ProjectionIndex", "common_pairs"]


class LearnableProjection(nn.Module):
    """A projection W learnt jointly with the student on a FIXED sparsity pattern.

    Holds ``indices [V_s, k]`` (buffer) and ``logits [V_s, k]`` (parameter) initialised to
    ``log(weight)``; the weights are the row softmax of ``logits`` with empty slots (weight 0 at
    construction) masked to −inf, and all-zero rows stay all-zero. Rows with one slot stay exactly 1.0.

    Give these parameters their own optimizer param group; the X-Token paper learns W at lr 1e-2
    (vs 5e-5 for the student), e.g.
    ``AdamW([{"params": student.parameters()}, {"params": proj.parameters(), "lr": 1e-2}])``.
    Empty slots hold a finite 0 in ``logits`` and are masked in ``forward`` so that optimizers never
    see −inf parameters.
    """

    def __init__(self, projection: SparseProjection) -> None:
        super().__init__()
        mask = projection.weights.detach() > 0  # [V_s, k]
        init = torch.where(mask, projection.weights.detach().clamp_min(1e-30).log(), 0.0)  # [V_s, k]
        self.teacher_vocab_size = projection.teacher_vocab_size
        self.register_buffer("indices", projection.indices.detach().long().clone())
        self.register_buffer("mask", mask)
        self.register_buffer("row_mapped", mask.any(dim=1, keepdim=True))  # [V_s, 1]
        self.logits = nn.Parameter(init.to(projection.weights.dtype))

    def forward(self) -> Tensor:
        """Current weights ``[V_s, k]`` (rows sum to 1, or 0 for unmapped rows)."""
        x = self.logits.masked_fill(~self.mask, float("-inf"))  # [V_s, k]
        x = torch.where(self.row_mapped, x, 0.0)  # unmapped rows: avoid softmax of all −inf
        return torch.softmax(x, dim=1) * self.mask

    def projection(self) -> SparseProjection:
        """The current W as a ``SparseProjection`` (weights carry gradients)."""
        return SparseProjection(
            indices=self.indices, weights=self(), teacher_vocab_size=self.teacher_vocab_size
        )


class ProjectionIndex(nn.Module):
    """The fixed structure of W, precomputed once: its non-zero entries in row order and by column.

    Buffers: ``entry_flat [E]`` flat slot index ``row * k + slot`` of each non-zero slot (row-major),
    ``entry_row [E]``, ``entry_col [E]``, ``by_col [E]`` (positions in ``entry_*`` sorted by column),
    ``col_ptr [V_t + 1]`` (CSC offsets into ``by_col``).
    """

    def __init__(self, indices: Tensor, mask: Tensor, teacher_vocab_size: int) -> None:
        super().__init__()
        k = indices.shape[1]
        flat = torch.nonzero(mask.reshape(-1)).squeeze(1)  # [E] row-major, so rows ascend
        cols = indices.reshape(-1).long()[flat]  # [E]
        order = torch.sort(cols, stable=True).indices  # [E]
        counts = torch.bincount(cols, minlength=teacher_vocab_size)  # [V_t]
        col_ptr = torch.zeros(teacher_vocab_size + 1, dtype=torch.long, device=indices.device)
        col_ptr[1:] = torch.cumsum(counts, 0)
        self.teacher_vocab_size = teacher_vocab_size
        self.register_buffer("entry_flat", flat)
        self.register_buffer("entry_row", torch.div(flat, k, rounding_mode="floor"))
        self.register_buffer("entry_col", cols)
        self.register_buffer("by_col", order)
        self.register_buffer("col_ptr", col_ptr)

    def column_entries(self, cols: Tensor) -> tuple[Tensor, Tensor]:
        """For each teacher id in ``cols [N]``, its entries: ``(which [N3] index into cols, entry [N3])``."""
        start = self.col_ptr[cols]  # [N]
        deg = self.col_ptr[cols + 1] - start  # [N]
        which = torch.repeat_interleave(torch.arange(cols.shape[0], device=cols.device), deg)  # [N3]
        offset = torch.arange(which.shape[0], device=cols.device) - (torch.cumsum(deg, 0) - deg)[which]
        return which, self.by_col[start[which] + offset]


def common_pairs(projection: SparseProjection, *, threshold: float, strict: bool) -> tuple[Tensor, Tensor]:
    """The one-to-one "common" vocabulary between student and teacher, from W.

    A student row is a candidate when its top weight is ``>= threshold`` (``strict``: the row is a single
    non-zero entry equal to exactly 1.0, GOLD's exact-match set); it claims the teacher column of that
    top weight (ties inside a row: lowest teacher id). When several rows claim one column, the highest
    weight wins, ties go to the lowest student id.

    Returns ``(student_ids [n_c], teacher_ids [n_c])`` sorted by student id.
    """
    w = projection.weights.detach()  # [V_s, k]
    idx = projection.indices.long()  # [V_s, k]
    if w.numel() == 0:
        empty = torch.zeros(0, dtype=torch.long, device=w.device)
        return empty, empty
    # Highest weight per row; among equal weights the lowest teacher id (sort by id first, then stable).
    by_id = torch.sort(torch.where(w > 0, idx, projection.teacher_vocab_size), dim=1, stable=True).indices
    w_sorted = w.gather(1, by_id)  # [V_s, k]
    best = torch.sort(w_sorted, dim=1, descending=True, stable=True).indices[:, 0]  # [V_s]
    slot = by_id.gather(1, best[:, None]).squeeze(1)  # [V_s]
    top_w = w.gather(1, slot[:, None]).squeeze(1)  # [V_s]
    top_col = idx.gather(1, slot[:, None]).squeeze(1)  # [V_s]
    if strict:
        cand = ((w > 0).sum(dim=1) == 1) & (top_w == 1.0)
    else:
        cand = top_w >= threshold
    rows = torch.nonzero(cand).squeeze(1)  # [n] ascending student id
    cw, cc = top_w[rows], top_col[rows]
    # Order by (column, -weight, student id) with stable sorts, keep the first row per column.
    order = torch.sort(-cw, stable=True).indices
    order = order[torch.sort(cc[order], stable=True).indices]
    cols_sorted = cc[order]
    first = torch.ones_like(cols_sorted, dtype=torch.bool)
    first[1:] = cols_sorted[1:] != cols_sorted[:-1]
    win = torch.sort(rows[order][first]).values
    keep_col = top_col[win]
    return win, keep_col
