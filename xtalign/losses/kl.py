"""KL primitives, same-tokenizer top-k KL, and the student's next-token cross-entropy."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xtalign.losses.config import Direction, TopKKLConfig
from xtalign.losses.types import TeacherTopK, log1mexp

__all__ = [
    "TopKKLLoss",
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
    if student_logits.dim() != 3 or student_logits.shape[:2] != student_chunk.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} do not match "
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
    flat_t = targets.reshape(-1)  # [B*T]
    if not bool((flat_t != ignore_index).any()):
        return zero_loss(logits)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), flat_t.long(), ignore_index=ignore_index)


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
        cfg = self.config
        check_temperature(teacher, cfg.temperature)
        if teacher.logits.shape[:2] != student_logits.shape[:2]:
            raise ValueError("TopKKLLoss: teacher and student must cover the same [B, T] positions")
        cd = torch.float64 if student_logits.dtype == torch.float64 else torch.float32
        keep = torch.ones(student_logits.shape[:2], dtype=torch.bool, device=student_logits.device)
        keep = keep if mask is None else mask.bool()
        if not bool(keep.any()):
            return zero_loss(student_logits)
        all_kept = bool(keep.all())
        z = (
            student_logits.reshape(-1, student_logits.shape[-1]) if all_kept else student_logits[keep]
        )  # [N, V]
        if cfg.temperature != 1.0:
            z = z / cfg.temperature
        ls_all = F.log_softmax(z, dim=-1, dtype=cd)  # [N, V] the one autograd keeps
        ids = teacher.ids[keep].long()  # [N, K]
        ls = ls_all.gather(1, ids)  # [N, K]
        lt = teacher.logprobs(cd)[keep]  # [N, K]
        if cfg.tail == "renormalize":
            ls = ls - torch.logsumexp(ls, -1, keepdim=True)
            lt = lt - torch.logsumexp(lt, -1, keepdim=True)
        else:
            ls = torch.cat([ls, log1mexp(torch.logsumexp(ls, -1, keepdim=True))], dim=-1)  # [N, K+1]
            lt = torch.cat([lt, log1mexp(torch.logsumexp(lt, -1, keepdim=True))], dim=-1)  # [N, K+1]
        kl = kl_from_logprobs(lt, ls, cfg.direction)  # [N]
        return kl.mean() * cfg.temperature**2
