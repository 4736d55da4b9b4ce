"""KL primitives, same-tokenizer top-k KL, and the student's next-token cross-entropy."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xtalign.losses.config import Direction, TopKKLConfig
from xtalign.losses.stages import PreparedLoss, Window, compute_dtype, mean_or_zero, take_rows
from xtalign.losses.types import TeacherTopK, log1mexp

__all__ = [
    "PreparedCE",
    "PreparedTopK",
    "TopKKLLoss",
    "check_chunk_shapes",
    "check_chunked_inputs",
    "check_temperature",
    "kl_from_logprobs",
    "next_token_ce",
    "zero_loss",
]


def kl_from_logprobs(
    teacher_lp: Tensor, student_lp: Tensor, direction: Direction, mask: Tensor | None = None
) -> Tensor:
    """Σ over the last dim of ``p(log p − log q)``; forward: p = teacher, reverse: p = student.

    ``teacher_lp``/``student_lp`` ``[..., M]`` log-probs (may be unnormalised); ``mask [..., M]`` marks
    the columns that exist (others contribute 0, even if they hold −inf). Returns ``[...]``.
    """
    if mask is not None:  # zero the missing columns BEFORE exp/log, so no inf·0 reaches the gradient
        teacher_lp = teacher_lp.masked_fill(~mask, 0.0)
        student_lp = student_lp.masked_fill(~mask, 0.0)
    a, b = (teacher_lp, student_lp) if direction == "forward" else (student_lp, teacher_lp)
    terms = torch.exp(a) * (a - b)  # [..., M]
    if mask is not None:
        terms = terms.masked_fill(~mask, 0.0)
    return terms.sum(-1)


def zero_loss(like: Tensor) -> Tensor:
    """A 0 that stays connected to the graph (so ``backward`` works when nothing was counted)."""
    return like.sum() * 0.0


def check_temperature(teacher: TeacherTopK, temperature: float) -> None:
    if not math.isclose(teacher.temperature, temperature, rel_tol=1e-6):
        raise ValueError(
            f"teacher top-k was taken at temperature {teacher.temperature}, the loss uses {temperature}"
        )


def check_chunked_inputs(
    student_logits: Tensor, teacher: TeacherTopK, student_chunk: Tensor, teacher_chunk: Tensor
) -> None:
    """Refuse mismatches: logits ``[B, Ts, V]`` vs ``student_chunk [B, Ts]``, teacher vs ``[B, Tt]``."""
    if student_logits.dim() != 3:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} do not match "
            f"student_chunk {tuple(student_chunk.shape)}"
        )
    check_chunk_shapes(tuple(student_logits.shape), teacher, student_chunk, teacher_chunk)


def check_chunk_shapes(
    student_shape: tuple[int, ...], teacher: TeacherTopK, student_chunk: Tensor, teacher_chunk: Tensor
) -> None:
    """Refuse ``student_chunk`` not ``[B, Ts]`` of ``student_shape [B, Ts, ...]`` or a teacher not on ``[B, Tt]``."""
    if tuple(student_shape[:2]) != tuple(student_chunk.shape):
        raise ValueError(
            f"student logits {tuple(student_shape)} do not match "
            f"student_chunk {tuple(student_chunk.shape)}"
        )
    if teacher.logits.shape[:2] != teacher_chunk.shape:
        raise ValueError(
            f"teacher top-k {tuple(teacher.logits.shape)} does not match "
            f"teacher_chunk {tuple(teacher_chunk.shape)}"
        )


def next_token_ce(logits: Tensor, targets: Tensor, ignore_index: int = -100) -> Tensor:
    """Mean cross-entropy of the student on its own next tokens.

    ``logits [B, T, V]``, ``targets [B, T]`` already shifted (``targets[b, t]`` is the token the logits
    at ``t`` predict); ``ignore_index`` positions are skipped. Computed in the logits' dtype (no fp32
    copy of the logits is made here). Returns a connected 0 when no position counts.
    """
    prepared = PreparedCE(targets, ignore_index)
    if prepared.n_groups == 0:
        return zero_loss(logits)
    return prepared.run(logits.reshape(-1, logits.shape[-1]))


class PreparedCE(PreparedLoss):
    """The CE as a prepared loss: per position ``logsumexp(z) − z[target]``, then the mean."""

    def __init__(self, targets: Tensor, ignore_index: int = -100) -> None:
        flat = targets.reshape(-1)  # [B*T]
        self.positions = torch.nonzero(flat != ignore_index).squeeze(1)  # [P]
        self.group_first = self.group_last = self.positions
        self.targets = flat[self.positions].long()  # [P]

    def part(self, window: Window) -> tuple[Tensor, Tensor]:
        pa, pb = window.students
        return window.local, self.targets[pa:pb]

    def values(self, z: Tensor, part: tuple[Tensor, Tensor], extra: Tensor | None) -> Tensor:
        local, targets = part
        return F.cross_entropy(take_rows(z, local), targets, reduction="none")  # [p] nats

    def reduce(self, values: Tensor) -> Tensor:
        return mean_or_zero(values)


class TopKKLLoss(nn.Module):
    """Same-tokenizer KD: per-position KL between teacher and student on the teacher's top-k ids.

    ``bucket`` tail: both distributions are coarsened to the K kept ids plus one "everything else"
    bucket. The teacher's bucket mass is exact (``1 − Σ_k p_k`` from its full-vocab logsumexp), the
    student's is ``1 − Σ_k q_k``; the KL over these K+1 outcomes is a true KL (≥ 0, a lower bound on
    the full-vocabulary KL) in either direction. ``renormalize``: both sides renormalised over the K
    ids, the outside mass dropped. Mean over the masked positions, × T².
    """

    def __init__(self, config: TopKKLConfig) -> None:
        super().__init__()
        self.config = config

    def forward(self, student_logits: Tensor, teacher: TeacherTopK, mask: Tensor | None = None) -> Tensor:
        """``student_logits [B, T, V]``, ``teacher`` on the same ``[B, T]`` positions and vocabulary,
        ``mask [B, T]`` bool (True = counted; default all). Returns a scalar."""
        if teacher.logits.shape[:2] != student_logits.shape[:2]:
            raise ValueError("TopKKLLoss: teacher and student must cover the same [B, T] positions")
        prepared = self.prepare(teacher, mask, compute_dtype(student_logits.dtype))
        if prepared.n_groups == 0:
            return zero_loss(student_logits)
        return prepared.run(student_logits.reshape(-1, student_logits.shape[-1]))

    def prepare(
        self, teacher: TeacherTopK, mask: Tensor | None = None, dtype: torch.dtype = torch.float32
    ) -> PreparedTopK:
        """Teacher side of one batch; ``dtype`` is the compute dtype (``compute_dtype`` of the logits)."""
        check_temperature(teacher, self.config.temperature)
        if mask is not None and mask.shape != teacher.logits.shape[:2]:
            raise ValueError(f"TopKKLLoss: mask {tuple(mask.shape)} must be [B, T] like the teacher")
        return PreparedTopK(self.config, teacher, mask, dtype)


class PreparedTopK(PreparedLoss):
    """The top-k KL as a prepared loss: every counted position is its own group."""

    def __init__(self, config: TopKKLConfig, teacher: TeacherTopK, mask: Tensor | None, dtype: torch.dtype) -> None:
        self.config = config
        keep = torch.ones(teacher.logits.shape[:2], dtype=torch.bool, device=teacher.logits.device)
        keep = keep if mask is None else mask.bool()
        self.positions = torch.nonzero(keep.reshape(-1)).squeeze(1)  # [P]
        self.group_first = self.group_last = self.positions
        k = teacher.k
        self.ids = teacher.ids.reshape(-1, k)[self.positions].long()  # [P, K]
        self.lt = teacher.logprobs(dtype).reshape(-1, k)[self.positions]  # [P, K]

    def part(self, window: Window) -> tuple[Tensor, Tensor, Tensor]:
        pa, pb = window.students
        return window.local, self.ids[pa:pb], self.lt[pa:pb]

    def values(self, z: Tensor, part: tuple[Tensor, Tensor, Tensor], extra: Tensor | None) -> Tensor:
        cfg = self.config
        local, ids, lt = part
        z = take_rows(z, local)  # [p, V]
        if cfg.temperature != 1.0:
            z = z / cfg.temperature
        ls_all = F.log_softmax(z, dim=-1, dtype=lt.dtype)  # [p, V] the one autograd keeps
        ls = ls_all.gather(1, ids)  # [p, K]
        if cfg.tail == "renormalize":
            ls = ls - torch.logsumexp(ls, -1, keepdim=True)
            lt = lt - torch.logsumexp(lt, -1, keepdim=True)
        else:
            ls = torch.cat([ls, log1mexp(torch.logsumexp(ls, -1, keepdim=True))], dim=-1)  # [p, K+1]
            lt = torch.cat([lt, log1mexp(torch.logsumexp(lt, -1, keepdim=True))], dim=-1)  # [p, K+1]
        return kl_from_logprobs(lt, ls, cfg.direction)  # [p]

    def reduce(self, values: Tensor) -> Tensor:
        return mean_or_zero(values, self.config.temperature**2)
