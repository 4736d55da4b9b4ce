"""GOLD, H-KL and ULD: KL on a one-to-one "common" vocabulary plus sorted-probability L1 on the rest.

Per chunk ``c`` both sides are pooled as chunk-averaged log-probs over their FULL vocabularies,
``ℓ^s_c = mean_i log_softmax(z_s,i / T)`` and ``ℓ^t_c = mean_j log p_t,j`` (teacher: exact top-k
log-probs, the maximum-entropy fill elsewhere — see ``TeacherTopK.fill_logprob``). With the common
pairs ``C = {(s_i, t_i)}`` from ``common_pairs``:

- common term (forward): ``Σ_i exp(ℓ^t_c(t_i)) (ℓ^t_c(t_i) − ℓ^s_c(s_i))`` — NOT renormalised over C,
  so the student's mass outside C counts as missing mass (this is what lets GOLD push down every
  uncommon student token); reverse: ``Σ_i exp(ℓ^s)(ℓ^s − ℓ^t)``.
- ULD term: ``Σ_r |u^s_c(r) − u^t_c(r)|`` where ``u`` are the probabilities ``exp(ℓ_c)`` of the ids
  outside C sorted in decreasing order, both cut to ``n = min(cap, max(|V_s∖C|, |V_t∖C|))`` ranks,
  the shorter side padded with zeros (ULD's convention).

GOLD: C = student rows that are a single exact 1.0 entry. H-KL: rows whose top weight ≥ threshold.
ULD alone: C is empty. Loss = ``T² · mean_c (common_weight · KL_c + uld_weight · L1_c)``.

The teacher is never expanded to its vocabulary: within a chunk it is a per-chunk base value
(the mean fill) plus exact values on the union of its positions' top-k ids.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xtalign.losses.chunks import ChunkLayout, group_mean
from xtalign.losses.config import Direction, GoldConfig, ULDConfig
from xtalign.losses.kl import check_chunk_shapes, check_chunked_inputs, check_temperature, zero_loss
from xtalign.losses.projection import common_pairs
from xtalign.losses.stages import PreparedLoss, Window, compute_dtype, mean_or_zero, teacher_rows
from xtalign.losses.types import SparseProjection, TeacherTopK

__all__ = ["GoldLoss", "PreparedChunked", "ULDLoss"]


class _PooledTeacher:
    """Chunk-pooled teacher log-probs: ``base [G]`` everywhere, except ``val [U]`` at ``(group, id) [U]``.

    ``lp [P_t, K]`` (floored), ``ids [P_t, K]``, ``fill [P_t]`` are the rows of ``layout``'s teacher entries.
    """

    def __init__(self, lp: Tensor, ids: Tensor, fill: Tensor, layout: ChunkLayout, vocab_size: int) -> None:
        dtype, v_t = lp.dtype, vocab_size
        self.vocab_size = vocab_size
        self.base = group_mean(fill, layout.teacher_group, layout.teacher_count)  # [G]
        key = layout.teacher_group[:, None] * v_t + ids  # [P_t, K]
        uniq, inverse = torch.unique(key.reshape(-1), return_inverse=True)  # [U] sorted by (group, id)
        self.group = torch.div(uniq, v_t, rounding_mode="floor")  # [U]
        self.id = uniq % v_t  # [U]
        per = (lp - fill[:, None]) / layout.teacher_count[layout.teacher_group].to(dtype)[:, None]  # [P_t, K]
        extra = torch.zeros(uniq.shape[0], dtype=dtype, device=lp.device).index_add_(
            0, inverse, per.reshape(-1)
        )
        self.val = self.base[self.group] + extra  # [U] mean over the chunk of (log-prob or fill)


def _pooled_student(student_logits: Tensor, layout: ChunkLayout, temperature: float) -> Tensor:
    """``[G, V_s]`` chunk means of ``log_softmax(z / T)``; ``student_logits`` is ``[N, V_s]`` or ``[B, T, V_s]``."""
    cd = compute_dtype(student_logits.dtype)
    z = student_logits.reshape(-1, student_logits.shape[-1])  # [N, V_s] view
    if layout.student_pos.shape[0] != z.shape[0]:  # gather only when some positions are left out
        z = z[layout.student_pos]  # [P_s, V_s]
    if temperature != 1.0:
        z = z / temperature
    ls = F.log_softmax(z, dim=-1, dtype=cd)  # [P_s, V_s], the one autograd keeps
    return group_mean(ls, layout.student_group, layout.student_count)  # [G, V_s]


def _uld_l1(
    ls: Tensor, t: _PooledTeacher, s_common: Tensor | None, t2c: Tensor | None, n_teacher: int, cap: int
) -> Tensor:
    """Sorted-probability L1 per chunk on the ids outside the common set → ``[G]``."""
    n_g, v_s = ls.shape
    n_c = 0 if s_common is None else int(s_common.sum())
    n_s, n_t = v_s - n_c, n_teacher - n_c
    n = min(cap, max(n_s, n_t))
    ls_unc = ls if s_common is None else ls.masked_fill(s_common, float("-inf"))  # [G, V_s]
    k_s = min(n, n_s)
    us = torch.exp(torch.topk(ls_unc, k_s, dim=-1).values)  # [G, k_s]
    us = F.pad(us, (0, n - k_s))  # [G, n]
    unc = torch.ones_like(t.id, dtype=torch.bool) if t2c is None else t2c[t.id] < 0  # [U]
    u_group, u_val = t.group[unc], t.val[unc]  # sorted by group
    cnt = torch.bincount(u_group, minlength=n_g)  # [G]
    slot = torch.arange(u_group.shape[0], device=ls.device) - (torch.cumsum(cnt, 0) - cnt)[u_group]
    width = int(cnt.max()) if cnt.numel() else 0
    exact = torch.full((n_g, width), float("-inf"), dtype=ls.dtype, device=ls.device)  # [G, Mu]
    exact[u_group, slot] = u_val
    head = min(width, n)
    exact = torch.sort(exact, dim=-1, descending=True).values[:, :head]  # [G, h]
    base_p = torch.exp(t.base)[:, None]  # [G, 1]
    ut = base_p.expand(n_g, n).clone()  # [G, n] unseen ids all sit at the base value, below the exact ones
    ut[:, :head] = torch.where(torch.isfinite(exact), torch.exp(exact), base_p)
    if n > n_t:
        ut[:, n_t:] = 0.0
    return (us - ut).abs().sum(-1)


def _common_kl(
    ls: Tensor, t: _PooledTeacher, s_mask: Tensor, c_student: Tensor, t2c: Tensor, direction: Direction
) -> Tensor:
    """KL on the common pairs per chunk → ``[G]``, teacher values = base except at its kept entries."""
    n_c = c_student.shape[0]
    cm = s_mask.to(ls.dtype)  # [V_s] 1 on common student ids
    hit = t2c[t.id] >= 0  # [U] kept teacher entries that are common
    g, v = t.group[hit], t.val[hit]  # [H]
    base_e = t.base[g]  # [H]
    sc = ls[g, c_student[t2c[t.id[hit]]]]  # [H] student pooled log-prob of the paired student id
    zeros = torch.zeros_like(t.base)
    if direction == "forward":
        total = torch.exp(t.base) * (n_c * t.base - ls @ cm)  # [G]: every pair at the base value
        fix = torch.exp(v) * (v - sc) - torch.exp(base_e) * (base_e - sc)  # [H] swap in the exact ones
    else:
        ps = torch.exp(ls)  # [G, V_s]
        total = (ps * ls) @ cm - t.base * (ps @ cm)  # [G]
        fix = -torch.exp(sc) * (v - base_e)  # [H]
    return total + zeros.index_add(0, g, fix)


class ULDLoss(nn.Module):
    """ULD: sorted-probability L1 per chunk over the whole vocabularies (capped), × T²."""

    def __init__(self, config: ULDConfig) -> None:
        super().__init__()
        self.config = config

    def forward(
        self, student_logits: Tensor, teacher: TeacherTopK, student_chunk: Tensor, teacher_chunk: Tensor
    ) -> Tensor:
        """Same inputs as ``PKLLoss.forward``. Returns a scalar."""
        check_temperature(teacher, self.config.temperature)
        check_chunked_inputs(student_logits, teacher, student_chunk, teacher_chunk)
        prepared = self.prepare(teacher, student_chunk, teacher_chunk, compute_dtype(student_logits.dtype))
        if prepared.n_groups == 0:
            return zero_loss(student_logits)
        return prepared.run(student_logits.reshape(-1, student_logits.shape[-1]))

    def prepare(
        self, teacher: TeacherTopK, student_chunk: Tensor, teacher_chunk: Tensor, dtype: torch.dtype = torch.float32
    ) -> PreparedChunked:
        """Teacher side of one batch (no student logits); ``dtype`` is the compute dtype of the loss."""
        check_temperature(teacher, self.config.temperature)
        return PreparedChunked(self, teacher, (student_chunk, teacher_chunk), dtype, None)

    def chunk_values(self, ls: Tensor, t: _PooledTeacher) -> Tensor:
        """``[G]`` L1 of each chunk from the pooled student ``ls [G, V_s]`` and teacher ``t``."""
        return _uld_l1(ls, t, None, None, t.vocab_size, self.config.cap)


class GoldLoss(nn.Module):
    """GOLD / H-KL (see module docstring). Build with ``GoldConfig(...).build(projection)``.

    The common set is computed once here from the fixed projection; ``common_student`` /
    ``common_teacher`` hold it (sorted by student id).
    """

    def __init__(self, config: GoldConfig, projection: SparseProjection) -> None:
        super().__init__()
        self.config = config
        strict = config.variant == "gold"
        s_ids, t_ids = common_pairs(projection, threshold=config.hkl_threshold, strict=strict)
        v_s, v_t = projection.student_vocab_size, projection.teacher_vocab_size
        t2c = torch.full((v_t,), -1, dtype=torch.long, device=s_ids.device)  # [V_t] → common index
        t2c[t_ids] = torch.arange(t_ids.shape[0], device=s_ids.device)
        s_mask = torch.zeros(v_s, dtype=torch.bool, device=s_ids.device)  # [V_s]
        s_mask[s_ids] = True
        self.teacher_vocab_size = v_t
        self.register_buffer("common_student", s_ids)
        self.register_buffer("common_teacher", t_ids)
        self.register_buffer("t2c", t2c)
        self.register_buffer("s_common", s_mask)

    def forward(
        self, student_logits: Tensor, teacher: TeacherTopK, student_chunk: Tensor, teacher_chunk: Tensor
    ) -> Tensor:
        """Same inputs as ``PKLLoss.forward``. Returns a scalar."""
        check_temperature(teacher, self.config.temperature)
        if student_logits.shape[-1] != self.s_common.shape[0]:
            raise ValueError("GoldLoss: student/teacher vocabulary sizes do not match the projection")
        self._check_teacher(teacher)
        check_chunked_inputs(student_logits, teacher, student_chunk, teacher_chunk)
        prepared = self.prepare(teacher, student_chunk, teacher_chunk, compute_dtype(student_logits.dtype))
        if prepared.n_groups == 0:
            return zero_loss(student_logits)
        return prepared.run(student_logits.reshape(-1, student_logits.shape[-1]))

    def prepare(
        self, teacher: TeacherTopK, student_chunk: Tensor, teacher_chunk: Tensor, dtype: torch.dtype = torch.float32
    ) -> PreparedChunked:
        """Teacher side of one batch (no student logits); ``dtype`` is the compute dtype of the loss."""
        self._check_teacher(teacher)
        return PreparedChunked(self, teacher, (student_chunk, teacher_chunk), dtype, int(self.s_common.shape[0]))

    def _check_teacher(self, teacher: TeacherTopK) -> None:
        check_temperature(teacher, self.config.temperature)
        if teacher.vocab_size != self.teacher_vocab_size:
            raise ValueError("GoldLoss: student/teacher vocabulary sizes do not match the projection")

    def chunk_values(self, ls: Tensor, t: _PooledTeacher) -> Tensor:
        """``[G]`` common KL + ULD term of each chunk from the pooled student ``ls [G, V_s]`` and teacher ``t``."""
        cfg = self.config
        per_chunk = torch.zeros_like(t.base)  # [G]
        if cfg.common_weight > 0 and self.common_student.numel():
            kl = _common_kl(ls, t, self.s_common, self.common_student, self.t2c, cfg.direction)
            per_chunk = per_chunk + cfg.common_weight * kl
        if cfg.uld_weight > 0:
            l1 = _uld_l1(ls, t, self.s_common, self.t2c, self.teacher_vocab_size, cfg.uld_cap)
            per_chunk = per_chunk + cfg.uld_weight * l1
        return per_chunk


class PreparedChunked(PreparedLoss):
    """GOLD / H-KL or ULD of one batch, teacher side done; ``values`` = each chunk's loss in a window.

    The full-vocabulary chunk mean ``mean_i log_softmax(z_i / T)`` (needed before ULD's sort and by the
    reverse common KL) is formed inside the window: a window never splits a chunk, so every chunk's
    whole-vocabulary work stays inside one slice and only ``[g]`` values leave it.
    """

    def __init__(
        self,
        loss: GoldLoss | ULDLoss,
        teacher: TeacherTopK,
        chunks: tuple[Tensor, Tensor],
        dtype: torch.dtype,
        student_vocab_size: int | None,
    ) -> None:
        check_chunk_shapes(tuple(chunks[0].shape), teacher, *chunks)
        self.loss, self.vocab_size = loss, teacher.vocab_size
        self.layout = ChunkLayout.build(*chunks).ordered()
        self.lp, self.ids, self.fill = teacher_rows(teacher, self.layout.teacher_pos, dtype)  # [P_t, K] ...
        self.positions = self.layout.student_pos  # [P_s]
        self.group_first, self.group_last = self.layout.group_spans()  # [G], [G]
        self.t_bounds = self.layout.teacher_bounds()
        self.student_vocab_size = student_vocab_size

    def part(self, window: Window) -> tuple[ChunkLayout, _PooledTeacher]:
        ga, gb = window.groups
        ta, tb = self.t_bounds[ga], self.t_bounds[gb]
        layout = self.layout.window(window.local, window.students, window.groups, (ta, tb))
        pooled = _PooledTeacher(self.lp[ta:tb], self.ids[ta:tb], self.fill[ta:tb], layout, self.vocab_size)
        return layout, pooled

    def values(self, z: Tensor, part: tuple[ChunkLayout, _PooledTeacher], extra: Tensor | None) -> Tensor:
        layout, pooled = part
        ls = _pooled_student(z, layout, self.loss.config.temperature)  # [g, V_s]
        return self.loss.chunk_values(ls, pooled)  # [g]

    def reduce(self, values: Tensor) -> Tensor:
        return mean_or_zero(values, self.loss.config.temperature**2)
