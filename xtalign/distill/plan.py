"""Resolving a config into what the engine runs: tokenizers, each teacher's loss (with `auto`'s reason),
its projection W (built once and cached by both fingerprints and the projection config), devices."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xtalign.config import ConfigError
from xtalign.distill.config import DistillConfig, ProjectionSpec, TeacherConfig

if TYPE_CHECKING:
    import torch

    from xtalign.projection import Projection
    from xtalign.zoo.tokenizer import Tokenizer

__all__ = ["LossChoice", "choose_loss", "model_identity", "resolve_device", "resolve_projection", "tokenizer_name"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LossChoice:
    loss: str
    reason: str


def tokenizer_name(model: str, tokenizer: str | None) -> str:
    """The tokenizer a model uses: the one given, a zoo model's own, else the model path/id itself."""
    if tokenizer:
        return tokenizer
    entry = _zoo_entry(model)
    return entry.tokenizer if entry is not None else model


def _zoo_entry(model: str) -> Any:
    from xtalign.distill import models

    name = models._ALIASES.get(model.lower())
    return models.MODEL_ZOO[name] if name else None


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
    from xtalign.audit import audit_pair, recommend

    loss, reason = recommend(audit_pair(student_tok, teacher_tok))
    return LossChoice(loss.lower(), f"xtalign audit {student_tok.name} -> {teacher_tok.name}: {reason}")


def _projection_config(spec: ProjectionSpec) -> Any:
    from xtalign.projection import ProjectionConfig

    return ProjectionConfig(top_k=spec.top_k, max_pieces=spec.max_pieces, beta=spec.beta, gamma=spec.gamma,
                            reverse=spec.reverse)


def projection_cache_path(student: Tokenizer, teacher: Tokenizer, spec: ProjectionSpec) -> Path:
    from xtalign.zoo.artifacts import cache_dir

    cfg = json.dumps(asdict(_projection_config(spec)), sort_keys=True)
    key = hashlib.sha256(f"{student.vocab.fingerprint}|{teacher.vocab.fingerprint}|{cfg}".encode()).hexdigest()[:16]
    return cache_dir() / "projections" / f"{student.name}__{teacher.name}__{key}.safetensors".replace("/", "_")


def resolve_projection(spec: ProjectionSpec, student: Tokenizer, teacher: Tokenizer) -> tuple[Projection, str]:
    """W from a file (fingerprints checked) or built and cached; returns it with where it came from."""
    from xtalign.io import ProjectionFormatError, ProjectionMismatchError, load_projection, save_projection

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
    from xtalign.projection import build_projection

    proj = build_projection(student, teacher, _projection_config(spec))
    save_projection(proj, path)
    return proj, f"built, cached at {path}"


def model_identity(model: str, tokenizer: Tokenizer, arch: Any, seed: int) -> str:
    """A cheap string naming a model's weights before loading it (for the teacher-cache key)."""
    if model == "random":
        spec = json.dumps({"arch": asdict(arch), "vocab": tokenizer.vocab.fingerprint, "seed": seed}, sort_keys=True)
        return "random:" + hashlib.sha256(spec.encode()).hexdigest()
    entry = _zoo_entry(model)
    if entry is not None:
        from xtalign.zoo.artifacts import ARTIFACTS

        return f"zoo:{entry.name}:{entry.sha256 or ARTIFACTS[entry.artifacts[0]].sha256}"
    path = Path(model)
    if path.is_file():
        st = path.stat()
        return f"file:{path.resolve()}:{st.st_size}:{int(st.st_mtime)}"
    if path.is_dir():
        parts = sorted((p.name, p.stat().st_size) for p in path.iterdir() if p.is_file())
        return "dir:" + hashlib.sha256(json.dumps([str(path.resolve()), parts]).encode()).hexdigest()
    return f"hub:{model}"


def resolve_device(cfg: DistillConfig) -> tuple[torch.device, torch.dtype | None]:
    """The device and the autocast dtype (None = plain fp32): bf16 on GPU, fp32 on CPU by default."""
    import torch

    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA GPU is visible to torch; use device=cpu (or auto)")
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    if cfg.precision == "bf16" or (cfg.precision == "auto" and use_cuda):
        return device, torch.bfloat16
    return device, None
