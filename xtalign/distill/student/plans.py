"""Per-teacher loss plans: which loss a teacher gets (and why), its projection W, fitted to the models.

A `TeacherPlan` is the plain, picklable description (label, the core loss config, W as numpy) that a
student worker turns into torch modules on its own device (`kd.build_term`): the config's `.build()`
gives the module. W is built once per tokenizer pair and projection config and cached on disk.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xtalign.audit import audit_pair, recommend
from xtalign.config import ConfigError
from xtalign.distill.config import ProjectionSpec, TeacherConfig
from xtalign.io import ProjectionFormatError, ProjectionMismatchError, load_projection, save_projection
from xtalign.losses import GoldConfig, PKLConfig, TopKKLConfig, ULDConfig
from xtalign.projection import Projection, ProjectionConfig, build_projection
from xtalign.zoo.artifacts import cache_dir
from xtalign.zoo.tokenizer import Tokenizer

__all__ = ["LossChoice", "ProjectionMeta", "TeacherPlan", "choose_loss", "fit_projection", "loss_config",
           "plan_teacher", "resolve_projection"]

log = logging.getLogger(__name__)

LossConfig = PKLConfig | GoldConfig | ULDConfig | TopKKLConfig
NEEDS_PROJECTION = ("p-kl", "h-kl", "gold")


@dataclass(frozen=True)
class LossChoice:
    loss: str
    reason: str


@dataclass(frozen=True)
class ProjectionMeta:
    source: str | None
    stats: dict[str, Any]


@dataclass(frozen=True, kw_only=True, eq=False)
class TeacherPlan:
    """What the student needs to know about one teacher to compute its KD term.

    loss: the resolved loss name (never `auto`); config: the core loss config whose `.build()` makes the
    module; indices/weights: W fitted to ``[student rows, k]`` (None for `same-vocab` and `uld`);
    teacher_rows: the teacher's vocabulary as its logits see it (embedding rows).
    """

    label: str
    loss: str
    config: LossConfig
    weight: float
    teacher_rows: int
    indices: np.ndarray | None = None
    weights: np.ndarray | None = None
    learnable: bool = False
    projection_lr: float = 1e-2


def choose_loss(teacher: TeacherConfig, student_tok: Tokenizer, teacher_tok: Tokenizer) -> LossChoice:
    """The configured loss, or for `auto` the audit's recommendation (same tokenizer → `same-vocab`)."""
    same = student_tok.vocab.fingerprint == teacher_tok.vocab.fingerprint
    if teacher.loss == "same-vocab" and not same:
        raise ConfigError(f"teacher {teacher.label}: loss same-vocab needs the student's tokenizer, but "
                          f"{teacher_tok.name} differs from {student_tok.name}; use p-kl, h-kl, gold, uld or auto")
    if teacher.loss != "auto":
        return LossChoice(teacher.loss, "set in the config")
    if same:
        return LossChoice("same-vocab", f"{teacher_tok.name} is the student's tokenizer: per-position top-k KL")
    loss, reason = recommend(audit_pair(student_tok, teacher_tok))
    return LossChoice(loss.lower(), f"xtalign audit {student_tok.name} -> {teacher_tok.name}: {reason}")


def _pkl(t: TeacherConfig) -> PKLConfig:
    cap = {"subset_cap": t.subset_cap} if t.subset == "per_batch" else {}
    return PKLConfig(temperature=t.temperature, direction=t.direction, aggregation=t.aggregation, subset=t.subset,
                     **cap)


_LOSS_CONFIGS: dict[str, Callable[[TeacherConfig], LossConfig]] = {
    "p-kl": _pkl,
    "h-kl": lambda t: GoldConfig(variant="hkl", temperature=t.temperature, direction=t.direction),
    "gold": lambda t: GoldConfig(variant="gold", temperature=t.temperature, direction=t.direction),
    "uld": lambda t: ULDConfig(temperature=t.temperature),
    "same-vocab": lambda t: TopKKLConfig(temperature=t.temperature, direction=t.direction),
}


def loss_config(loss: str, t: TeacherConfig) -> LossConfig:
    """The core loss config of a resolved loss name, with the teacher's settings."""
    return _LOSS_CONFIGS[loss](t)


def _projection_config(spec: ProjectionSpec) -> ProjectionConfig:
    return ProjectionConfig(top_k=spec.top_k, max_pieces=spec.max_pieces, beta=spec.beta, gamma=spec.gamma,
                            reverse=spec.reverse)


def projection_cache_path(student: Tokenizer, teacher: Tokenizer, spec: ProjectionSpec) -> Path:
    cfg = json.dumps(asdict(_projection_config(spec)), sort_keys=True)
    key = hashlib.sha256(f"{student.vocab.fingerprint}|{teacher.vocab.fingerprint}|{cfg}".encode()).hexdigest()[:16]
    return cache_dir() / "projections" / f"{student.name}__{teacher.name}__{key}.safetensors".replace("/", "_")


def resolve_projection(spec: ProjectionSpec, student: Tokenizer, teacher: Tokenizer) -> tuple[Projection, str]:
    """W from a file (fingerprints checked) or built and cached; returns it with where it came from."""
    if spec.source != "build":
        path = Path(spec.source)
        if not path.is_file():
            raise ConfigError(f"projection file {path} does not exist; give a `xtalign build-projection` file "
                              "or 'build'")
        try:
            return load_projection(path, student=student, teacher=teacher), str(path)
        except (ProjectionMismatchError, ProjectionFormatError) as exc:
            raise ConfigError(f"projection {path}: {exc}") from None
    path = projection_cache_path(student, teacher, spec)
    if path.is_file():
        try:
            return load_projection(path, student=student, teacher=teacher), f"cache {path}"
        except (ProjectionMismatchError, ProjectionFormatError):
            log.warning("cached projection %s is unreadable; rebuilding it", path)
    proj = build_projection(student, teacher, _projection_config(spec))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_projection(proj, path)
    return proj, f"built, cached at {path}"


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


def plan_teacher(t: TeacherConfig, choice: LossChoice, *, student_rows: int, teacher_rows: int, s_tok: Tokenizer,
                 t_tok: Tokenizer) -> tuple[TeacherPlan, ProjectionMeta, Projection | None]:
    """The plan of one teacher (and where its W came from, and W itself for exporting a learned one)."""
    base = dict(label=t.label, loss=choice.loss, config=loss_config(choice.loss, t), weight=t.weight,
                teacher_rows=teacher_rows, learnable=t.projection.learnable, projection_lr=t.projection.lr)
    if choice.loss not in NEEDS_PROJECTION:
        return TeacherPlan(**base), ProjectionMeta(None, {}), None
    proj, where = resolve_projection(t.projection, s_tok, t_tok)
    indices, weights = fit_projection(proj, student_rows=student_rows, teacher_rows=teacher_rows)
    return TeacherPlan(**base, indices=indices, weights=weights), ProjectionMeta(where, proj.stats), proj
