"""Per-teacher loss plans: which `xtalign.losses` module a teacher gets, and how W is fitted to the models.

A `TeacherPlan` is the plain, picklable description (label, resolved loss, temperature, W as numpy) that
a student worker turns into torch modules on its own device; nothing here holds a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from xtalign.config import ConfigError

if TYPE_CHECKING:
    import torch

    from xtalign.projection import Projection

__all__ = ["TeacherPlan", "build_loss", "fit_projection"]

CROSS_LOSSES = ("p-kl", "h-kl", "gold", "uld")


@dataclass(frozen=True, kw_only=True, eq=False)
class TeacherPlan:
    """What the student needs to know about one teacher to compute its KD term.

    loss: the resolved loss (never `auto`); indices/weights: W fitted to ``[student rows, k]`` (None for
    `same-vocab` and `uld`, which need no projection); teacher_rows: the teacher's vocabulary as its
    logits see it (embedding rows).
    """

    label: str
    loss: str
    temperature: float
    aggregation: str
    teacher_rows: int
    subset: str = "per_batch"
    subset_cap: int = 8192
    weight: float
    indices: np.ndarray | None = None
    weights: np.ndarray | None = None
    learnable: bool = False
    projection_lr: float = 1e-2


def fit_projection(proj: Projection, *, student_rows: int, teacher_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """W's ``indices, weights [student_rows, k]``: extra model rows (embedding rows past the tokenizer's
    vocabulary) get empty rows; a W that addresses ids past the models' rows is refused."""
    rows = proj.indices.shape[0]
    live = proj.weights > 0
    if rows > student_rows and bool(live[student_rows:].any()):
        raise ConfigError(f"the projection has {rows} student rows but the student model has {student_rows} embedding "
                          "rows; build the projection for the student's tokenizer")
    if live.any() and int(proj.indices[live].max()) >= teacher_rows:
        raise ConfigError(f"the projection addresses teacher id {int(proj.indices[live].max())} but the teacher model "
                          f"has {teacher_rows} embedding rows; build it for the teacher's tokenizer")
    k = proj.indices.shape[1]
    indices = np.zeros((student_rows, k), dtype=np.int64)
    weights = np.zeros((student_rows, k), dtype=np.float32)
    n = min(rows, student_rows)
    indices[:n] = np.where(live[:n], proj.indices[:n], 0)
    weights[:n] = proj.weights[:n]
    return indices, weights


def build_loss(plan: TeacherPlan, device: torch.device) -> tuple[Any, Any]:
    """``(loss module, learnable projection or None)`` for one teacher, on ``device``."""
    from xtalign.losses import (
        GoldConfig,
        LearnableProjection,
        PKLConfig,
        SparseProjection,
        TopKKLConfig,
        ULDConfig,
    )

    t = plan.temperature
    if plan.loss == "same-vocab":
        return TopKKLConfig(temperature=t).build().to(device), None
    if plan.loss == "uld":
        return ULDConfig(temperature=t).build().to(device), None
    import torch

    assert plan.indices is not None and plan.weights is not None
    w = SparseProjection(indices=torch.as_tensor(plan.indices, device=device),
                         weights=torch.as_tensor(plan.weights, device=device), teacher_vocab_size=plan.teacher_rows)
    if plan.loss == "p-kl":
        learn = LearnableProjection(w).to(device) if plan.learnable else None
        cfg = PKLConfig(temperature=t, aggregation=plan.aggregation,  # type: ignore[arg-type]
                        subset=plan.subset, **({"subset_cap": plan.subset_cap} if plan.subset == "per_batch" else {}))
        return cfg.build(learn if learn is not None else w).to(device), learn
    variant = "hkl" if plan.loss == "h-kl" else "gold"
    return GoldConfig(variant=variant, temperature=t).build(w).to(device), None
