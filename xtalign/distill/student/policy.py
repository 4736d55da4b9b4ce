"""The student's side of on-policy distillation: the policy objective on its own samples, and the
reverse-KL estimate every step reports.

Rows of a batch that are student samples (`Batch.policy_rows`) carry no CE. With `policy.objective: kd`
every teacher's configured loss acts on their completion chunks as on data; with `reverse_kl` a teacher's
term is the policy-gradient loss of `rollout.objective` on the sample rows (its configured loss still on
the data rows of a `mix` batch, each part weighted by its share of the rows). A teacher with the student's
vocabulary scores per position (each position its own chunk).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
from torch import Tensor

from xtalign.distill.data.batch import IGNORE, Batch, TeacherSide
from xtalign.distill.rollout.objective import reverse_kl_policy_loss, student_token_logprobs
from xtalign.distill.student.kd import on_device
from xtalign.losses import TeacherTopK

__all__ = ["data_rows_only", "policy_figures", "policy_term", "rkl_figures"]


def _position_chunks(targets: np.ndarray) -> np.ndarray:
    """``[B, T]`` each counted position its own chunk (same vocabulary: positions pair one to one)."""
    keep = targets != IGNORE
    ids = np.cumsum(keep, axis=1) - 1
    return np.where(keep, ids, -1)


def _sample_chunks(side: TeacherSide, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
    """(student, teacher) prediction chunks of the sample rows (-1 on data rows)."""
    rows = batch.policy_rows[:, None]  # type: ignore[index]
    if side.same_vocab:
        pos = np.where(rows, _position_chunks(batch.policy_targets), -1)  # type: ignore[arg-type]
        return pos, pos
    return np.where(rows, side.student_chunk, -1), np.where(rows, side.teacher_chunk, -1)


def policy_term(logits: Tensor, batch: Batch, side: TeacherSide, answer: TeacherTopK, *, discount: float,
                device: torch.device) -> tuple[Tensor, dict[str, float]]:
    """The reverse-KL policy-gradient loss of one teacher over the batch's sample rows, and its figures."""
    assert batch.policy_targets is not None and batch.policy_widths is not None and answer.target_logprob is not None
    s_lp = student_token_logprobs(logits, on_device(batch.policy_targets, device))  # [B, Ts]
    s_chunk, t_chunk = (on_device(c, device) for c in _sample_chunks(side, batch))
    return reverse_kl_policy_loss(s_lp, s_chunk, answer.target_logprob.float(), t_chunk,
                                  on_device(batch.policy_widths, device), discount=discount)


def policy_figures(logits: Tensor, batch: Batch, sides: Sequence[TeacherSide], teachers: Sequence[TeacherTopK],
                   labels: Sequence[str], device: torch.device) -> dict[str, float]:
    """Per teacher, the reverse-KL estimate's nats and bytes over the sample rows (summed, so micro-batches and
    ranks merge as a ratio of sums)."""
    with torch.no_grad():
        figs = [policy_term(logits.detach(), batch, side, answer, discount=0.0, device=device)[1]
                for side, answer in zip(sides, teachers, strict=True)]
    return rkl_figures(figs, labels)


def rkl_figures(figs: Sequence[dict[str, float]], labels: Sequence[str]) -> dict[str, float]:
    """`policy_term`'s figures per teacher as the step's metric parts (the estimate does not depend on the
    discount, so the training term's figures serve as they are)."""
    out: dict[str, float] = {}
    for fig, label in zip(figs, labels, strict=True):
        out[f"rkl_nats/{label}"] = fig["reverse_kl_nats"]
        out[f"rkl_bytes/{label}"] = fig["bytes"]
    return out


def data_rows_only(side: TeacherSide, batch: Batch) -> TeacherSide:
    """The side with the sample rows masked out (for a teacher's configured loss on a mix batch's data rows)."""
    rows = batch.policy_rows[:, None]  # type: ignore[index]
    if side.same_vocab:
        return replace(side, targets=np.where(rows, IGNORE, side.targets))
    return replace(side, student_chunk=np.where(rows, -1, side.student_chunk),
                   teacher_chunk=np.where(rows, -1, side.teacher_chunk))
