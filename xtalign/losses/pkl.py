"""P-KL, the X-Token projected KL between a student and a teacher with different tokenizers.

Notation: ``p_s = softmax(z_s / T)`` over the FULL student vocabulary at each student position,
``q = p_s @ W`` its projection onto teacher ids, restricted to a column subset ``S`` (a chunk's
columns). Teacher log-probs at a position are its exact top-k log-probs on kept ids; a column of ``S``
outside that position's top-k gets the maximum-entropy fill (``TeacherTopK.fill_logprob``); then they
are renormalised over ``S`` (with ``S`` = the top-k this just drops the outside mass, as NeMo does).

Aggregations over a chunk ``c`` (student positions ``i = 1..m``, teacher positions ``j = 1..n``):

``nemo`` (faithful to NeMo RL):
    ``Q_c = normalise_S(mean_i q_i|S + eps)``, ``L_c = mean_j log_softmax_S(teacher_j)``,
    ``KL_c = Σ_S exp(L_c)(L_c − log Q_c)`` (forward). The student is an arithmetic mean of
    probabilities, the teacher an un-renormalised geometric mean (``Σ exp(L_c) ≤ 1``), so ``KL_c`` can
    be slightly negative when the teacher's positions disagree.

``chain`` (symmetric, length-normalised chain-rule pooling):
    ``ℓ^s_c = log_softmax_S(mean_i log normalise_S(q_i|S + eps))``,
    ``ℓ^t_c = log_softmax_S(mean_j log_softmax_S(teacher_j))``, ``KL_c = KL(ℓ^t_c ‖ ℓ^s_c)``.
    Why: by the chain rule a chunk's log-likelihood is the SUM of its positions' log-probs, so
    positions combine additively in log space (a product of experts), not by averaging probabilities.
    Dividing by the position count puts the student (m positions) and the teacher (n positions) on one
    scale: identical per-position distributions then give exactly 0, where the plain sum would compare
    ``p^m`` with ``p^n``. Both sides are pooled the same way and renormalised, so ``KL_c`` is a true
    KL (≥ 0, 0 iff the pooled distributions agree). For a one-position chunk on both sides, ``nemo``
    and ``chain`` coincide.

``reverse`` swaps the roles: ``Σ_S Q(log Q − L)``. Loss = ``T² · mean over chunks`` present on both
sides.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from xtalign.losses.chunks import ChunkLayout, group_mean
from xtalign.losses.config import PKLConfig
from xtalign.losses.kl import (
    check_chunk_shapes,
    check_chunked_inputs,
    check_temperature,
    kl_from_logprobs,
    zero_loss,
)
from xtalign.losses.projection import LearnableProjection, ProjectionIndex
from xtalign.losses.softmax_projection import PairPlan, SharedPlan, projected_softmax
from xtalign.losses.stages import PreparedLoss, Window, compute_dtype, mean_or_zero, teacher_rows
from xtalign.losses.types import SparseProjection, TeacherTopK

__all__ = ["PKLLoss", "PreparedPKL"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Subset:
    """The teacher columns of every chunk and how the student reaches them.

    ``t_slot [P_t, K]``: column of each teacher top-k id in its chunk's list (−1 = not kept);
    ``n_cols`` M; ``mask [G, M]`` valid columns per chunk (None = all); ``plan`` for the student;
    ``w_index`` where each entry's weight sits in the flat ``[V_s·k]`` weights.
    """

    t_slot: Tensor
    n_cols: int
    mask: Tensor | None
    plan: SharedPlan | PairPlan
    w_index: Tensor


@dataclass(frozen=True)
class _Columns:
    """The batch-global subset of ``per_batch``: ``t_slot [P_t, K]``, M, and the W entries feeding it."""

    t_slot: Tensor
    n_cols: int
    entry_row: Tensor
    entry_col: Tensor
    w_index: Tensor

    def subset(self, students: Tensor, teachers: tuple[int, int]) -> _Subset:
        """The part of one window: student rows ``students [p]``, teacher entries ``teachers``."""
        plan = SharedPlan(students, self.entry_row, self.entry_col, self.n_cols)
        return _Subset(self.t_slot[teachers[0] : teachers[1]], self.n_cols, None, plan, self.w_index)


@dataclass(frozen=True)
class _Part:
    """One window of P-KL: its chunks (student positions = rows of the slice's logits) and teacher rows."""

    layout: ChunkLayout
    lp_t: Tensor
    fill: Tensor
    sub: _Subset


class PKLLoss(nn.Module):
    """Projected KL (see module docstring). Build with ``PKLConfig(...).build(projection)``.

    ``projection`` is a fixed ``SparseProjection`` or a ``LearnableProjection`` (then its parameters are
    this module's too and get gradients through the loss).
    """

    def __init__(self, config: PKLConfig, projection: SparseProjection | LearnableProjection) -> None:
        super().__init__()
        self.config = config
        self.learnable: LearnableProjection | None = None
        if isinstance(projection, LearnableProjection):
            self.learnable = projection
            indices, mask = projection.indices, projection.mask
        else:
            indices, mask = projection.indices.long(), projection.weights.detach() > 0
            self.register_buffer("weights", projection.weights.detach().clone())
        self.student_vocab_size = int(indices.shape[0])
        self.teacher_vocab_size = projection.teacher_vocab_size
        self.index = ProjectionIndex(indices, mask, projection.teacher_vocab_size)

    def _weights_flat(self) -> Tensor:
        w = self.learnable() if self.learnable is not None else self.weights  # [V_s, k]
        return w.reshape(-1)

    def forward(
        self, student_logits: Tensor, teacher: TeacherTopK, student_chunk: Tensor, teacher_chunk: Tensor
    ) -> Tensor:
        """``student_logits [B, Ts, V_s]``, ``teacher`` top-k on ``[B, Tt]``, chunk ids ``[B, Ts]`` and
        ``[B, Tt]`` (−1 = none). Returns the scalar ``T² · mean_c KL_c``."""
        self._check(student_logits, teacher)
        check_chunked_inputs(student_logits, teacher, student_chunk, teacher_chunk)
        prepared = self.prepare(teacher, student_chunk, teacher_chunk, compute_dtype(student_logits.dtype))
        if prepared.n_groups == 0:
            return zero_loss(student_logits)
        return prepared.run(student_logits.reshape(-1, student_logits.shape[-1]))  # [B*Ts, V_s] view

    def prepare(
        self,
        teacher: TeacherTopK,
        student_chunk: Tensor,
        teacher_chunk: Tensor,
        dtype: torch.dtype = torch.float32,
    ) -> PreparedPKL:
        """Teacher side of one batch (no student logits); ``dtype`` is the compute dtype of the loss."""
        self._check_teacher(teacher)
        check_chunk_shapes(tuple(student_chunk.shape), teacher, student_chunk, teacher_chunk)
        layout = ChunkLayout.build(student_chunk, teacher_chunk).ordered()
        lp_t, ids_t, fill = teacher_rows(teacher, layout.teacher_pos, dtype)  # [P_t, K], [P_t, K], [P_t]
        columns = None
        if self.config.subset == "per_batch" and layout.n_groups:
            columns = self._per_batch(ids_t, lp_t)
        return PreparedPKL(self, layout, (lp_t, ids_t, fill), columns, self._weights_flat().to(dtype))

    def _check(self, student_logits: Tensor, teacher: TeacherTopK) -> None:
        check_temperature(teacher, self.config.temperature)
        if student_logits.dim() != 3 or student_logits.shape[-1] != self.student_vocab_size:
            raise ValueError(
                f"PKLLoss: student logits must be [B, T, {self.student_vocab_size}], "
                f"got {tuple(student_logits.shape)}"
            )
        self._check_teacher(teacher)

    def _check_teacher(self, teacher: TeacherTopK) -> None:
        check_temperature(teacher, self.config.temperature)
        if teacher.vocab_size != self.teacher_vocab_size:
            raise ValueError(
                f"PKLLoss: teacher vocab {teacher.vocab_size} != projection's {self.teacher_vocab_size}"
            )

    def _per_batch(self, ids_t: Tensor, lp_t: Tensor) -> _Columns:
        """One column list for the batch: the teacher top-k ids seen, at most ``subset_cap``."""
        v_t, dev = self.teacher_vocab_size, ids_t.device
        best = torch.full((v_t,), float("-inf"), dtype=lp_t.dtype, device=dev)  # [V_t]
        best = best.scatter_reduce(0, ids_t.reshape(-1), lp_t.reshape(-1), "amax")
        cols = torch.nonzero(best > float("-inf")).squeeze(1)  # [M] ascending teacher ids
        if cols.shape[0] > self.config.subset_cap:
            logger.debug("P-KL subset capped: %d → %d columns", cols.shape[0], self.config.subset_cap)
            top = torch.topk(best[cols], self.config.subset_cap).indices
            cols = torch.sort(cols[top]).values
        n_cols = int(cols.shape[0])
        inv = torch.full((v_t,), -1, dtype=torch.long, device=dev)  # [V_t] teacher id → column
        inv[cols] = torch.arange(n_cols, device=dev)
        ent_col = inv[self.index.entry_col]  # [E_all]
        hit = torch.nonzero(ent_col >= 0).squeeze(1)  # [E] entries of W that land in the subset
        return _Columns(inv[ids_t], n_cols, self.index.entry_row[hit], ent_col[hit], self.index.entry_flat[hit])

    def _per_chunk(self, layout: ChunkLayout, ids_t: Tensor) -> _Subset:
        """Each chunk's columns: the union of its teacher positions' top-k ids (sorted)."""
        v_t, dev = self.teacher_vocab_size, ids_t.device
        key = layout.teacher_group[:, None] * v_t + ids_t  # [P_t, K]
        uniq, inverse = torch.unique(key.reshape(-1), return_inverse=True)  # [U] sorted by (chunk, id)
        e_group, e_id = torch.div(uniq, v_t, rounding_mode="floor"), uniq % v_t  # [U]
        count = torch.bincount(e_group, minlength=layout.n_groups)  # [G]
        start = torch.cumsum(count, 0) - count  # [G]
        n_cols = int(count.max())
        t_slot = inverse.reshape(key.shape) - start[layout.teacher_group][:, None]  # [P_t, K]
        mask = torch.arange(n_cols, device=dev)[None, :] < count[:, None]  # [G, M]
        # (student position, column) pairs, then one triple per W entry feeding that column.
        per_pos = count[layout.student_group]  # [P_s]
        n_pos = per_pos.shape[0]
        pair_pos = torch.repeat_interleave(torch.arange(n_pos, device=dev), per_pos)  # [N2]
        pair_slot = (
            torch.arange(pair_pos.shape[0], device=dev) - (torch.cumsum(per_pos, 0) - per_pos)[pair_pos]
        )
        pair_id = e_id[start[layout.student_group[pair_pos]] + pair_slot]  # [N2] teacher ids
        which, entry = self.index.column_entries(pair_id)  # [N3], [N3]
        plan = PairPlan(
            positions=layout.student_pos,
            trip_pos=pair_pos[which],
            trip_row=self.index.entry_row[entry],
            trip_out=pair_pos[which] * n_cols + pair_slot[which],
            n_cols=n_cols,
        )
        return _Subset(t_slot, n_cols, mask, plan, self.index.entry_flat[entry])

    def chunk_kl(self, z: Tensor, part: _Part, weights_flat: Tensor) -> Tensor:
        """``[g]`` KL of each chunk of one window from the rows ``z [S, V_s]`` its layout points at."""
        sub = part.sub
        q = projected_softmax(z, weights_flat[sub.w_index], sub.plan, self.config.temperature)  # [P_s, M]
        t_pos = _teacher_on_subset(part.lp_t, part.fill, sub, part.layout)  # [P_t, M] renormalised
        if self.config.aggregation == "nemo":
            return self._nemo(q, t_pos, sub.mask, part.layout)  # [g]
        return self._chain(q, t_pos, sub.mask, part.layout)  # [g]

    def _nemo(self, q: Tensor, t_pos: Tensor, mask: Tensor | None, layout: ChunkLayout) -> Tensor:
        eps = self.config.eps
        lt = group_mean(t_pos, layout.teacher_group, layout.teacher_count)  # [G, M] mean log-probs
        qm = group_mean(q, layout.student_group, layout.student_count)  # [G, M] mean probabilities
        qm = qm + (eps if mask is None else eps * mask)
        log_q = _safe_log(qm, mask) - torch.log(qm.sum(-1, keepdim=True))  # [G, M]
        return kl_from_logprobs(lt, log_q, self.config.direction, mask)  # [G]

    def _chain(self, q: Tensor, t_pos: Tensor, mask: Tensor | None, layout: ChunkLayout) -> Tensor:
        eps = self.config.eps
        pos_mask = None if mask is None else mask[layout.student_group]  # [P_s, M]
        qe = q + (eps if pos_mask is None else eps * pos_mask)  # [P_s, M]
        lq = _safe_log(qe, pos_mask) - torch.log(qe.sum(-1, keepdim=True))  # [P_s, M]
        if pos_mask is not None:
            lq = lq.masked_fill(~pos_mask, 0.0)
        ls = _masked_log_softmax(group_mean(lq, layout.student_group, layout.student_count), mask)  # [G, M]
        lt = _masked_log_softmax(group_mean(t_pos, layout.teacher_group, layout.teacher_count), mask)
        return kl_from_logprobs(lt, ls, self.config.direction, mask)  # [G]


class PreparedPKL(PreparedLoss):
    """P-KL of one batch, teacher side done; ``values`` = the KL of each chunk of a window."""

    def __init__(
        self,
        loss: PKLLoss,
        layout: ChunkLayout,
        teacher: tuple[Tensor, Tensor, Tensor],
        columns: _Columns | None,
        weights_flat: Tensor,
    ) -> None:
        self.loss, self.layout, self.columns = loss, layout, columns
        self.lp_t, self.ids_t, self.fill = teacher  # [P_t, K], [P_t, K], [P_t] in ordered layout order
        self.positions = layout.student_pos  # [P_s]
        self.group_first, self.group_last = layout.group_spans()  # [G], [G]
        self.t_bounds = layout.teacher_bounds()
        self.extra = weights_flat  # [V_s·k] in the compute dtype; carries the learnable W's graph
        self.student_vocab_size = loss.student_vocab_size

    def part(self, window: Window) -> _Part:
        ga, gb = window.groups
        teachers = (self.t_bounds[ga], self.t_bounds[gb])
        layout = self.layout.window(window.local, window.students, window.groups, teachers)
        if self.columns is not None:
            sub = self.columns.subset(layout.student_pos, teachers)
        else:
            sub = self.loss._per_chunk(layout, self.ids_t[teachers[0] : teachers[1]])
        return _Part(layout, self.lp_t[teachers[0] : teachers[1]], self.fill[teachers[0] : teachers[1]], sub)

    def values(self, z: Tensor, part: _Part, extra: Tensor | None) -> Tensor:
        assert extra is not None
        return self.loss.chunk_kl(z, part, extra)  # [g]

    def reduce(self, values: Tensor) -> Tensor:
        return mean_or_zero(values, self.loss.config.temperature**2)


def _teacher_on_subset(lp_t: Tensor, fill: Tensor, sub: _Subset, layout: ChunkLayout) -> Tensor:
    """Teacher log-probs on each position's chunk columns, renormalised there → ``[P_t, M]``.

    Kept ids get their exact log-prob, other columns the fill; masked columns hold 0 (not −inf) so
    that they can be averaged.
    """
    n_pos, m = lp_t.shape[0], sub.n_cols
    dense = fill[:, None].expand(n_pos, m + 1).clone()  # [P_t, M+1]; column M swallows dropped ids
    dense.scatter_(1, torch.where(sub.t_slot >= 0, sub.t_slot, m), lp_t)
    dense = dense[:, :m]  # [P_t, M]
    pos_mask = None if sub.mask is None else sub.mask[layout.teacher_group]  # [P_t, M]
    return _masked_log_softmax(dense, pos_mask)


def _safe_log(x: Tensor, mask: Tensor | None) -> Tensor:
    """``log x`` on valid columns, 0 elsewhere, without ever evaluating log 0 (whose gradient is nan)."""
    if mask is None:
        return torch.log(x)
    return torch.log(torch.where(mask, x, 1.0))


def _masked_log_softmax(x: Tensor, mask: Tensor | None) -> Tensor:
    """log_softmax over the valid columns of the last dim; invalid columns come out as 0."""
    if mask is None:
        return torch.log_softmax(x, dim=-1)
    return torch.log_softmax(x.masked_fill(~mask, float("-inf")), dim=-1).masked_fill(~mask, 0.0)
