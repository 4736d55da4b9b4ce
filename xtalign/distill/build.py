"""One assembly of a run's parts for both backends: tokenizers, losses, data, teacher sources, the student.

Everything is checked before the first step. What differs between `backend: local` and `backend: ray` is
only where the workers live, behind `Backend`: `teacher(i, rows)` gives teacher i's `TeacherCompute`,
`student()` loads the student where it will train (returning its embedding rows and tokenizer) and its
`build(plans)` gives the `Student`. The cache around each teacher, the plans and the checks are shared.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol

import torch

from xtalign.config import ConfigError
from xtalign.distill.config import DistillConfig, TeacherConfig
from xtalign.distill.data.batch import Batch
from xtalign.distill.data.builder import BatchBuilder
from xtalign.distill.data.chat import ChatBatchBuilder, ChatCorpus, chat_builder, load_chat_corpus, template_digest
from xtalign.distill.data.corpus import Corpus, load_corpus
from xtalign.distill.data.pipeline import heldout_batches
from xtalign.distill.models.identity import model_identity, tokenizer_name
from xtalign.distill.protocols import Student, TeacherCompute, TeacherSource
from xtalign.distill.rollout.source import RolloutMaker
from xtalign.distill.student.plans import LossChoice, ProjectionMeta, TeacherPlan, choose_loss, plan_teacher
from xtalign.distill.teacher.cache import CacheKey, TeacherCacheReader, TeacherCacheWriter
from xtalign.distill.teacher.rows import CodecSpec
from xtalign.distill.teacher.source import CachedTeacher, LocalTeacher, cache_dir_for
from xtalign.distill.workers import load_student, student_worker, teacher_seed, teacher_worker
from xtalign.projection import Projection
from xtalign.zoo import load_tokenizer
from xtalign.zoo.tokenizer import Tokenizer

__all__ = ["Backend", "LocalBackend", "PendingStudent", "RunParts", "TeacherParts", "build_run", "build_teachers"]



class PendingStudent(Protocol):
    """A student loaded where it will train, before its teachers' plans exist."""

    rows: int
    tokenizer_fingerprint: str

    def build(self, plans: Sequence[TeacherPlan]) -> Student: ...


class Backend(Protocol):
    """Where a run's workers live."""

    def teacher(self, index: int, rows: int) -> TeacherCompute: ...

    def student(self) -> PendingStudent: ...

    def close(self) -> None: ...


class _LocalPending:
    def __init__(self, cfg: DistillConfig) -> None:
        self.cfg = cfg
        self.loaded, self.device = load_student(cfg)
        self.rows, self.tokenizer_fingerprint = self.loaded.rows, self.loaded.tokenizer.vocab.fingerprint

    def build(self, plans: Sequence[TeacherPlan]) -> Student:
        return student_worker(self.cfg, self.loaded, self.device, plans)


class LocalBackend:
    """Every worker in this process (teachers loaded on first need)."""

    def __init__(self, cfg: DistillConfig) -> None:
        self.cfg = cfg

    def teacher(self, index: int, rows: int) -> TeacherCompute:
        return LocalTeacher(self.cfg.teachers[index].label, lambda: teacher_worker(self.cfg, index, rows))

    def student(self) -> PendingStudent:
        return _LocalPending(self.cfg)

    def close(self) -> None:
        return None


def make_backend(cfg: DistillConfig, run_dir: Path | None = None) -> Backend:
    if cfg.backend == "ray":
        from xtalign.distill.ray.backend import RayBackend  # Ray is imported only for Ray runs

        return RayBackend(cfg, run_dir)
    return LocalBackend(cfg)


@dataclass(eq=False)
class TeacherParts:
    """What serving teachers needs (no student): tokenizers, losses, data, eval batches, teacher sources."""

    cfg: DistillConfig
    student_tok: Tokenizer
    teacher_toks: list[Tokenizer]
    choices: list[LossChoice]
    corpus: Corpus | ChatCorpus
    builder: BatchBuilder | ChatBatchBuilder
    eval_batches: list[Batch]
    teacher_rows: list[int]
    sources: list[TeacherSource]
    backend: Backend


@dataclass(eq=False)
class RunParts(TeacherParts):
    """Everything a run needs: the teacher parts plus the plans and the student."""

    plans: list[TeacherPlan] = field(default_factory=list)
    plans_meta: list[ProjectionMeta] = field(default_factory=list)
    projections: list[Projection | None] = field(default_factory=list)
    student: Student | None = None
    rollout: RolloutMaker | None = None

    def close(self) -> None:
        if self.student is not None:
            self.student.close()
        self.backend.close()


def teacher_rows(tok: Tokenizer) -> int:
    """Embedding rows of a teacher known before loading it: the tokenizer's model rows (zoo and random
    models); other models are checked again once loaded."""
    return int(tok.model_rows or tok.size)


def _check_top_k(cfg: DistillConfig, rows: Sequence[int]) -> None:
    for i, (t, n) in enumerate(zip(cfg.teachers, rows, strict=True)):
        if t.top_k > n:
            raise ConfigError(f"teachers.{i}.top_k={t.top_k} exceeds teacher {t.label}'s vocabulary ({n:,} embedding "
                              f"rows); use at most {n}")


def _chat_key(builder: BatchBuilder | ChatBatchBuilder, i: int) -> str:
    """What a chat rendering depends on beyond the data: both sides' templates and the fixed date."""
    if not isinstance(builder, ChatBatchBuilder):
        return ""
    return f"{template_digest(builder.student.template)}:{template_digest(builder.teachers[i].template)}:{builder.now}"


def cache_key(cfg: DistillConfig, i: int, t_tok: Tokenizer, s_tok: Tokenizer, data_hash: str,
              builder: BatchBuilder | ChatBatchBuilder) -> CacheKey:
    t = cfg.teachers[i]
    identity = model_identity(t.model, t_tok, t.arch, teacher_seed(cfg, i))
    chat = isinstance(builder, ChatBatchBuilder)
    return CacheKey(teacher=t.label, teacher_model=identity, teacher_tokenizer=t_tok.vocab.fingerprint,
                    student_tokenizer=s_tok.vocab.fingerprint, k=t.top_k, temperature=t.temperature,
                    data_hash=data_hash, seq_len=cfg.seq_len, add_bos=cfg.data.add_bos,
                    data_format="chat" if chat else "text",
                    chat_rendering=_chat_key(builder, i), train_on=cfg.data.train_on if chat else "")


def cache_codec(cfg: DistillConfig, t: TeacherConfig) -> CodecSpec:
    """How this run stores a teacher's answers: `exact`, or `compact` keeping the teacher's k."""
    return CodecSpec() if cfg.cache_codec == "exact" else CodecSpec("compact", {"k": t.top_k})


def _source(cfg: DistillConfig, i: int, compute: TeacherCompute, key: CacheKey) -> CachedTeacher:
    t: TeacherConfig = cfg.teachers[i]
    where = cache_dir_for(t.label, t.cache, cfg.cache_teachers)
    reader = writer = None
    if where is not None:
        if (where / "manifest.json").exists():
            reader = TeacherCacheReader(where, key)
        writer = TeacherCacheWriter(where, key, codec=cache_codec(cfg, t))
    return CachedTeacher(t.label, i, compute, reader=reader, writer=writer, cache_path=where)


def _data(cfg: DistillConfig, s_tok: Tokenizer, t_toks: Sequence[Tokenizer]
          ) -> tuple[Corpus | ChatCorpus, BatchBuilder | ChatBatchBuilder]:
    """The corpus and the batch builder: packed text, or conversations in each side's chat template."""
    if cfg.data.format == "chat":
        chat = chat_builder(cfg, s_tok, t_toks)
        return load_chat_corpus(cfg.data, chat, seed=cfg.seed), chat
    return load_corpus(cfg.data, seed=cfg.seed), BatchBuilder(s_tok, t_toks, seq_len=cfg.seq_len,
                                                              add_bos=cfg.data.add_bos)


def _chat_choice(cfg: DistillConfig, i: int, choice: LossChoice, builder: ChatBatchBuilder) -> LossChoice:
    """A teacher with the student's tokenizer but another chat template aligns by chunks, not positions."""
    if choice.loss != "same-vocab" or builder.same_vocab(i):
        return choice
    if cfg.teachers[i].loss == "same-vocab":
        raise ConfigError(f"teachers.{i}.loss=same-vocab needs the student's chat template too (the renderings "
                          "differ, so positions do not pair); use p-kl or auto")
    return LossChoice("p-kl", "the student's tokenizer in another chat template: the sides align by chunks (P-KL)")


def build_teachers(cfg: DistillConfig, backend: Backend | None = None, run_dir: Path | None = None) -> TeacherParts:
    """Tokenizers, losses, data and teacher sources, checked; raises ConfigError / DataError with one line."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    s_tok = load_tokenizer(tokenizer_name(cfg.student.model, cfg.student.tokenizer))
    t_toks = [load_tokenizer(tokenizer_name(t.model, t.tokenizer)) for t in cfg.teachers]
    rows = [teacher_rows(tok) for tok in t_toks]
    _check_top_k(cfg, rows)
    choices = [choose_loss(t, s_tok, tok) for t, tok in zip(cfg.teachers, t_toks, strict=True)]
    corpus, builder = _data(cfg, s_tok, t_toks)
    if isinstance(builder, ChatBatchBuilder):
        choices = [_chat_choice(cfg, i, ch, builder) for i, ch in enumerate(choices)]
    evals = heldout_batches(corpus, builder, batch_size=cfg.batch_size, max_batches=cfg.eval.max_batches, seed=cfg.seed)
    backend = backend or make_backend(cfg, run_dir)
    try:
        sources: list[TeacherSource] = [
            _source(cfg, i, backend.teacher(i, rows[i]),
                    cache_key(cfg, i, t_toks[i], s_tok, corpus.data_hash, builder))
            for i in range(len(cfg.teachers))]
    except BaseException:
        backend.close()
        raise
    return TeacherParts(cfg=cfg, student_tok=s_tok, teacher_toks=t_toks, choices=choices, corpus=corpus,
                        builder=builder, eval_batches=evals, teacher_rows=rows, sources=sources, backend=backend)


def build_run(cfg: DistillConfig, run_dir: Path | None = None) -> RunParts:
    """Everything a run needs, with the student loaded where it trains and each teacher's W fitted to it."""
    tp = build_teachers(cfg, run_dir=run_dir)
    try:
        pending = tp.backend.student()
        if pending.tokenizer_fingerprint != tp.student_tok.vocab.fingerprint:
            raise ConfigError(f"student model {cfg.student.model} does not come with tokenizer {tp.student_tok.name}; "
                              "drop student.tokenizer or give the model's own")
        built = [plan_teacher(t, ch, student_rows=pending.rows, teacher_rows=n, s_tok=tp.student_tok, t_tok=tok)
                 for t, ch, n, tok in zip(cfg.teachers, tp.choices, tp.teacher_rows, tp.teacher_toks, strict=True)]
        plans = [b[0] for b in built]
        student = pending.build(plans)
    except BaseException:
        tp.backend.close()
        raise
    return RunParts(**vars(tp), plans=plans, plans_meta=[b[1] for b in built], projections=[b[2] for b in built],
                    student=student, rollout=_rollout(tp))


def _rollout(tp: TeacherParts) -> RolloutMaker | None:
    """What turns the student's samples into batch rows (on-policy runs only)."""
    cfg = tp.cfg
    if cfg.policy.mode == "off":
        return None
    chat = tp.builder if isinstance(tp.builder, ChatBatchBuilder) else None
    same = [chat.same_vocab(i) if chat is not None else tok.vocab.fingerprint == tp.student_tok.vocab.fingerprint
            for i, tok in enumerate(tp.teacher_toks)]
    return RolloutMaker(cfg=cfg, student=tp.student_tok, teachers=tp.teacher_toks, same_vocab=same,
                        student_chat=chat.student if chat is not None else None,
                        teacher_chats=chat.teachers if chat is not None else None,
                        now=datetime.fromisoformat(cfg.data.chat_date))
