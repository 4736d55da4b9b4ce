"""Building a run's parts from its config (tokenizers, losses, projections, data, student, teachers),
checking every cross-part fact before the first step, and exporting the result at the end."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xtalign.config import ConfigError
from xtalign.distill.config import DistillConfig, TeacherConfig
from xtalign.distill.losses import TeacherPlan, fit_projection
from xtalign.distill.plan import (
    LossChoice,
    choose_loss,
    model_identity,
    resolve_device,
    resolve_projection,
    tokenizer_name,
)
from xtalign.distill.sources import TeacherSource, cache_dir_for

if TYPE_CHECKING:
    import torch

    from xtalign.distill.batch import Batch
    from xtalign.zoo.tokenizer import Tokenizer

__all__ = ["Parts", "build_parts", "export_run"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProjectionMeta:
    source: str | None
    stats: dict[str, Any]


@dataclass(eq=False)
class Parts:
    device: torch.device
    autocast: torch.dtype | None
    student_tok: Tokenizer
    teacher_toks: list[Tokenizer]
    choices: list[LossChoice]
    plans: list[TeacherPlan]
    plans_meta: list[ProjectionMeta]
    projections: list[Any]
    corpus: Any
    builder: Any
    student: Any
    student_loaded: Any
    sources: list[TeacherSource]
    eval_batches: list[Batch]
    close: Callable[[], None] | None = None


def teacher_seed(cfg: DistillConfig, i: int) -> int:
    """Random-init teachers get their own seed, fixed by the run seed and their position."""
    return cfg.seed + 1000 * (i + 1)


def teacher_rows(t: TeacherConfig, tok: Tokenizer) -> int:
    """Embedding rows of a teacher known before loading it: the tokenizer's model rows (zoo and random
    models); for other models, checked again once the model is loaded."""
    return int(tok.model_rows or tok.size)


def plan_teacher(t: TeacherConfig, choice: LossChoice, student_rows: int, s_tok: Tokenizer, t_tok: Tokenizer,
          ) -> tuple[TeacherPlan, ProjectionMeta, Any]:
    rows = teacher_rows(t, t_tok)
    base = dict(label=t.label, loss=choice.loss, temperature=t.temperature, aggregation=t.aggregation,
                teacher_rows=rows, weight=t.weight, learnable=t.projection.learnable, projection_lr=t.projection.lr,
                subset=t.subset, subset_cap=t.subset_cap)
    if choice.loss in ("same-vocab", "uld"):
        return TeacherPlan(**base), ProjectionMeta(None, {}), None
    proj, where = resolve_projection(t.projection, s_tok, t_tok)
    indices, weights = fit_projection(proj, student_rows=student_rows, teacher_rows=rows)
    return TeacherPlan(**base, indices=indices, weights=weights), ProjectionMeta(where, proj.stats), proj


def _cache_key(cfg: DistillConfig, t: TeacherConfig, i: int, t_tok: Tokenizer, s_tok: Tokenizer,
               data_hash: str) -> Any:
    from xtalign.distill.cache import CacheKey

    identity = model_identity(t.model, t_tok, t.arch, teacher_seed(cfg, i))
    return CacheKey(teacher=t.label, teacher_model=identity, teacher_tokenizer=t_tok.vocab.fingerprint,
                    student_tokenizer=s_tok.vocab.fingerprint, k=t.top_k, temperature=t.temperature,
                    data_hash=data_hash, seq_len=cfg.seq_len, batch_size=cfg.batch_size, seed=cfg.seed,
                    add_bos=cfg.data.add_bos)


def make_teacher_worker(cfg: DistillConfig, t: TeacherConfig, i: int, device: Any, autocast: Any, rows: int) -> Any:
    def make() -> Any:
        import torch

        from xtalign.distill.models import load_model
        from xtalign.distill.teacher import TeacherWorker

        dtype = torch.bfloat16 if autocast is not None else torch.float32
        loaded = load_model(model=t.model, tokenizer=t.tokenizer, arch=t.arch, trust_remote_code=t.trust_remote_code,
                            seed=teacher_seed(cfg, i), device=str(device), dtype=dtype)
        if loaded.rows != rows:
            raise ConfigError(f"teacher {t.label}: the model has {loaded.rows} embedding rows but its tokenizer "
                              f"implies {rows}; set teachers.{i}.tokenizer to the model's own tokenizer")
        return TeacherWorker(loaded, top_k=t.top_k, temperature=t.temperature, head_slice=t.head_slice,
                             device=str(device), autocast_dtype=None)

    return make


def _sources(cfg: DistillConfig, toks: list[Tokenizer], s_tok: Tokenizer, rows: list[int],
             data_hash: str, device: Any, autocast: Any) -> list[TeacherSource]:
    from xtalign.distill.cache import TeacherCacheReader, TeacherCacheWriter

    out = []
    for i, (t, tok, n_rows) in enumerate(zip(cfg.teachers, toks, rows, strict=True)):
        reader = writer = None
        where = cache_dir_for(t.label, t.cache, cfg.cache_teachers)
        if where is not None:
            key = _cache_key(cfg, t, i, tok, s_tok, data_hash)
            if (where / "manifest.json").exists():
                reader = TeacherCacheReader(where, key)
            writer = TeacherCacheWriter(where, key)
        src = TeacherSource(t.label, i, make_teacher_worker(cfg, t, i, device, autocast, n_rows),
                            reader=reader, writer=writer)
        src.cache_path = where
        out.append(src)
    return out


def load_student(cfg: DistillConfig, device: Any) -> Any:
    import torch

    from xtalign.distill.models import load_model

    s = cfg.student
    seed = cfg.seed if s.init_seed is None else s.init_seed
    return load_model(model=s.model, tokenizer=s.tokenizer, arch=s.arch, trust_remote_code=s.trust_remote_code,
                      seed=seed, device=str(device), dtype=torch.float32)


def student_worker(cfg: DistillConfig, loaded: Any, plans: list[TeacherPlan], device: Any, autocast: Any) -> Any:
    from xtalign.distill.student import StudentWorker

    return StudentWorker(loaded.model, plans=plans, optim=cfg.optim, schedule=cfg.schedule, combine=cfg.combine,
                         total_steps=cfg.steps, device=str(device), autocast_dtype=autocast,
                         tokenizer=loaded.tokenizer, sharding=cfg.student.sharding)


@dataclass(eq=False)
class TeacherParts:
    """What serving teachers needs (no student): tokenizers, data, batch builder, teacher sources."""

    device: torch.device
    autocast: torch.dtype | None
    student_tok: Tokenizer
    teacher_toks: list[Tokenizer]
    choices: list[LossChoice]
    corpus: Any
    builder: Any
    sources: list[TeacherSource]
    eval_batches: list[Batch]


def build_teacher_parts(cfg: DistillConfig, run_dir: Path | None = None) -> TeacherParts:
    """Tokenizers, losses, data and teacher sources, checked; raises ConfigError / DataError with one line."""
    import torch

    from xtalign.distill.data import BatchBuilder, DataPipeline, load_corpus
    from xtalign.zoo import load_tokenizer

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device, autocast = resolve_device(cfg)
    s_tok = load_tokenizer(tokenizer_name(cfg.student.model, cfg.student.tokenizer))
    t_toks = [load_tokenizer(tokenizer_name(t.model, t.tokenizer)) for t in cfg.teachers]
    choices = [choose_loss(t, s_tok, tok) for t, tok in zip(cfg.teachers, t_toks, strict=True)]
    corpus = load_corpus(cfg.data, seed=cfg.seed)
    builder = BatchBuilder(s_tok, t_toks, seq_len=cfg.seq_len, add_bos=cfg.data.add_bos)
    rows = [teacher_rows(t, tok) for t, tok in zip(cfg.teachers, t_toks, strict=True)]
    sources = _sources(cfg, t_toks, s_tok, rows, corpus.data_hash, device, autocast)
    pipe = DataPipeline(corpus, builder, batch_size=cfg.batch_size, seed=cfg.seed, workers=1, prefetch=1)
    try:
        eval_batches = pipe.heldout_batches(cfg.eval.max_batches)
    finally:
        pipe.close()
    return TeacherParts(device=device, autocast=autocast, student_tok=s_tok, teacher_toks=t_toks, choices=choices,
                        corpus=corpus, builder=builder, sources=sources, eval_batches=eval_batches)


def build_parts(cfg: DistillConfig, run_dir: Path | None = None) -> Parts:
    """Everything a run needs, with the student loaded and each teacher's W fitted to it."""
    tp = build_teacher_parts(cfg)
    loaded = load_student(cfg, tp.device)
    s_tok = tp.student_tok
    if loaded.tokenizer.vocab.fingerprint != s_tok.vocab.fingerprint:
        raise ConfigError(f"student model {cfg.student.model} comes with tokenizer {loaded.tokenizer.name}, not "
                          f"{s_tok.name}; drop student.tokenizer or give the model's own")
    built = [plan_teacher(t, ch, loaded.rows, s_tok, tok)
             for t, ch, tok in zip(cfg.teachers, tp.choices, tp.teacher_toks, strict=True)]
    plans = [b[0] for b in built]
    student = student_worker(cfg, loaded, plans, tp.device, tp.autocast)
    return Parts(device=tp.device, autocast=tp.autocast, student_tok=s_tok, teacher_toks=tp.teacher_toks,
                 choices=tp.choices, plans=plans, plans_meta=[b[1] for b in built],
                 projections=[b[2] for b in built], corpus=tp.corpus, builder=tp.builder, student=student,
                 student_loaded=loaded, sources=tp.sources, eval_batches=tp.eval_batches)


def export_run(session: Any) -> dict[str, Any]:
    """The student as a Hugging Face folder, and each learned W in the `build-projection` format."""
    out = session.run_dir / "export"
    written: dict[str, Any] = {"student": session.student.export_model(out)}
    for i, current in enumerate(session.student.projections()):
        if current is None:
            continue
        path = out / f"projection-{session.sources[i].label}.safetensors".replace("/", "_")
        _save_learned(session.projections[i], current, path)
        written[f"projection:{session.sources[i].label}"] = str(path)
    return written


def _save_learned(base: Any, current: tuple[Any, Any], path: Path) -> None:
    """A learned W in the build-projection file format (same fingerprints; its rows' sources kept)."""
    from dataclasses import replace

    import numpy as np

    from xtalign.io import save_projection

    indices, weights = current
    rows = base.indices.shape[0]
    idx = np.zeros_like(base.indices)
    w = np.zeros_like(base.weights)
    n = min(rows, indices.shape[0])
    idx[:n], w[:n] = indices[:n], weights[:n]
    stats = {**base.stats, "learned": True}
    save_projection(replace(base, indices=idx.astype(np.int32), weights=w.astype(np.float32),
                            config={**base.config, "learned": True}, stats=stats), path)
    log.info("wrote learned projection %s", path)
