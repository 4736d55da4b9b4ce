"""The student's KD terms: each teacher's plan built into its loss module on the student's device, and
the terms (plus the multi-teacher combination) computed on one micro-batch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from xtalign.distill.config import CombineConfig
from xtalign.distill.data.batch import IGNORE, TeacherSide
from xtalign.distill.student.plans import TeacherPlan
from xtalign.losses import (
    LearnableProjection,
    MultiTeacher,
    MultiTeacherConfig,
    SparseProjection,
    TeacherTopK,
    teacher_score,
)

__all__ = ["KDTerm", "build_multi", "build_term", "kd_terms", "route_combine", "teacher_scores"]


def on_device(a: np.ndarray, device: torch.device) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).to(device)


@dataclass(eq=False)
class KDTerm:
    """One teacher's loss module, its learnable W (if any) and W's best teacher column per student row."""

    plan: TeacherPlan
    module: nn.Module
    learnable: LearnableProjection | None
    best_columns: Tensor | None  # [V_s] teacher id of each row's largest W entry, -1 for empty rows


def _best_columns(w: SparseProjection) -> Tensor:
    best = w.indices.gather(1, w.weights.argmax(1, keepdim=True)).squeeze(1)  # [V_s]
    return torch.where(w.weights.max(1).values > 0, best, -1)


def build_term(plan: TeacherPlan, device: torch.device) -> KDTerm:
    """The plan's core config `.build()`, with W (fixed, or learnable for P-KL) on `device`."""
    if plan.indices is None or plan.weights is None:
        return KDTerm(plan, plan.config.build().to(device), None, None)  # type: ignore[call-arg]
    w = SparseProjection(indices=torch.as_tensor(plan.indices, device=device),
                         weights=torch.as_tensor(plan.weights, device=device), teacher_vocab_size=plan.teacher_rows)
    learn = LearnableProjection(w).to(device) if plan.learnable else None
    module = plan.config.build(learn if learn is not None else w).to(device)  # type: ignore[call-arg]
    return KDTerm(plan, module, learn, _best_columns(w))


def build_multi(plans: Sequence[TeacherPlan], combine: CombineConfig) -> MultiTeacher | None:
    """How several teachers' terms combine (`sum` with the teachers' weights normalised); None for `route`
    (see `route_combine`) and without teachers."""
    if not plans or combine.multi == "route":
        return None
    n = len(plans)
    if combine.multi == "sum":
        total = sum(p.weight for p in plans)
        return MultiTeacherConfig(mode="sum", n_teachers=n, weights=tuple(p.weight / total for p in plans)).build()
    return MultiTeacherConfig(mode=combine.multi, n_teachers=n, score=combine.score, alpha=combine.alpha).build()


def route_combine(terms: Sequence[Tensor], route: np.ndarray | None) -> tuple[Tensor, Tensor]:
    """`combine.multi: route`: each teacher's term (computed on its rows only) weighted by its share of the
    micro-batch's rows; a teacher with no row here weighs 0."""
    rows = torch.as_tensor(np.ones((len(terms), 1)) if route is None else route, dtype=torch.float32)
    counts = rows.sum(1).to(terms[0].device)  # [n_teachers]
    weights = counts / counts.sum().clamp_min(1.0)
    return sum(w * t for w, t in zip(weights, terms, strict=True)), weights  # type: ignore[return-value]


def kd_terms(terms: Sequence[KDTerm], logits: Tensor, sides: Sequence[TeacherSide],
             teachers: Sequence[TeacherTopK], device: torch.device) -> list[Tensor]:
    """Each teacher's KD loss on one micro-batch (student `logits [B, Ts, V_s]`)."""
    out = []
    for term, side, answer in zip(terms, sides, teachers, strict=True):
        if side.same_vocab:
            keep = on_device(side.targets, device) != IGNORE  # [B, Ts]
            out.append(term.module(logits, answer, keep))
        else:
            s_chunk, t_chunk = on_device(side.student_chunk, device), on_device(side.teacher_chunk, device)
            out.append(term.module(logits, answer, s_chunk, t_chunk))
    return out


def teacher_scores(multi: MultiTeacher | None, score: str, sides: Sequence[TeacherSide],
                   teachers: Sequence[TeacherTopK], device: torch.device) -> Tensor | None:
    """The per-teacher scores dynamic/select weighting needs (None for `sum`)."""
    if multi is None or multi.config.mode == "sum":
        return None
    return torch.stack([teacher_score(t, score, on_device(s.targets, device) != IGNORE)
                        for s, t in zip(sides, teachers, strict=True)])
