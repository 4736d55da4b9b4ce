"""The run-level configs: data, optimiser, schedule, loss combination, eval, checkpoints, Ray, logging,
and `DistillConfig`, the whole run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from xtalign.distill.config.checks import positive, positive_int, require
from xtalign.distill.config.models import StudentConfig, TeacherConfig

__all__ = ["CheckpointConfig", "CombineConfig", "DataConfig", "DistillConfig", "EvalConfig", "LogConfig",
           "OptimConfig", "PolicyConfig", "RayConfig", "ScheduleConfig"]


def _is_date(text: str) -> bool:
    from datetime import date

    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Training text and its held-out split.

    train: a text file, a JSONL file (`field`), a parquet file (`field` = column), or `botchan` (the
        public-domain novel from a pinned artifact, the embedded default).
    format: `chat` reads JSONL / parquet rows with `messages: [{role, content}, …]` (and an optional
        `teacher` naming the teacher the row is for); each side renders them in its own chat template.
    train_on (chat): `assistant` (assistant contents and their end of turn carry CE and KD) or `all`.
    strict (chat): refuse a bad row with its row number instead of counting and skipping it.
    chat_date (chat): the date templates that print one (Llama-3) see, fixed so renderings reproduce.
    source_field: the JSONL key / parquet column naming each document's source (bits per byte is also
        reported per source; samples never mix sources); missing keys count as the file's own name.
    documents: how a plain-text file splits into documents: `paragraph` (blank lines), `line`, `file`.
    pack_chars: documents are packed into samples of about this many characters (NeMo: 16,384).
    heldout: a separate held-out file, else `heldout_fraction` of the documents (chosen from the seed).
    workers / prefetch: background tokenize+align workers and the bounded queue's depth (in batches).
    """

    train: str = "botchan"
    format: Literal["auto", "text", "jsonl", "parquet", "chat"] = "auto"
    field: str = "text"
    source_field: str = "source"
    documents: Literal["paragraph", "line", "file"] = "paragraph"
    pack_chars: int = 16384
    heldout: str | None = None
    heldout_fraction: float = 0.05
    add_bos: bool = True
    workers: int = 1
    prefetch: int = 4
    train_on: Literal["assistant", "all"] = "assistant"
    strict: bool = False
    chat_date: str = "2026-01-01"

    def __post_init__(self) -> None:
        positive_int("pack_chars", self.pack_chars)
        require(_is_date(self.chat_date), f"{{p}}chat_date must be a date YYYY-MM-DD; got {self.chat_date!r}")
        require(0 < self.heldout_fraction < 1, f"{{p}}heldout_fraction must lie in (0, 1); got {self.heldout_fraction}")
        positive_int("workers", self.workers)
        positive_int("prefetch", self.prefetch)


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    """AdamW (the paper: lr 5e-5, betas (0.9, 0.95), grad-norm 1.0)."""

    lr: float = 5e-5
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        positive("lr", self.lr)
        require(all(0 <= b < 1 for b in self.betas), f"{{p}}betas must be two numbers in [0, 1); got {self.betas}")
        require(self.grad_clip >= 0, f"{{p}}grad_clip must be >= 0 (0 = off); got {self.grad_clip}")


@dataclass(frozen=True, kw_only=True)
class ScheduleConfig:
    """Learning-rate schedule: linear warm-up, then `cosine` down to `min_lr_ratio`·lr, or `constant`."""

    kind: Literal["cosine", "constant"] = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1

    def __post_init__(self) -> None:
        require(self.warmup_steps >= 0, f"{{p}}warmup_steps must be >= 0; got {self.warmup_steps}")
        require(0 <= self.min_lr_ratio <= 1, f"{{p}}min_lr_ratio must lie in [0, 1]; got {self.min_lr_ratio}")


@dataclass(frozen=True, kw_only=True)
class CombineConfig:
    """How KD and CE combine (`dynamic`: sg(CE/KD)·KD + CE) and how several teachers combine
    (`sum` with the teachers' weights normalised, `dynamic` softmax(alpha·score), `select`, or `route`: a chat
    row naming a teacher gets KD from it only, a row naming none from all; each teacher's term is weighted
    by its share of the micro-batch's rows)."""

    scaling: Literal["dynamic", "fixed"] = "dynamic"
    kd_weight: float = 1.0
    ce_weight: float = 1.0
    multi: Literal["sum", "dynamic", "select", "route"] = "sum"
    score: Literal["ce", "entropy", "max_prob"] = "ce"
    alpha: float = 1.0


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """Held-out bits per byte: every `every` steps (0 = only at the start and the end), on at most
    `max_batches` batches of held-out samples — all of them when they fit, else a seeded spread over the
    whole split, drawn per source in proportion to its size (at least one sample each)."""

    every: int = 0
    max_batches: int = 8

    def __post_init__(self) -> None:
        require(self.every >= 0, f"{{p}}every must be >= 0; got {self.every}")
        positive_int("max_batches", self.max_batches)


@dataclass(frozen=True, kw_only=True)
class CheckpointConfig:
    """Checkpoints every `every` steps (0 = only at the end), keeping the newest `keep_last`."""

    every: int = 0
    keep_last: int = 2

    def __post_init__(self) -> None:
        require(self.every >= 0, f"{{p}}every must be >= 0; got {self.every}")
        positive_int("keep_last", self.keep_last)


@dataclass(frozen=True, kw_only=True)
class RayConfig:
    """`backend: ray`. address: None starts a local cluster for the run, `auto` joins the running one, or a
    cluster address. async_teachers (YAML and overrides: `async`): teachers work one batch ahead of the
    student. placement_timeout_s: how long to wait for the placement group before failing with what is
    missing."""

    address: str | None = None
    async_teachers: bool = False
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    placement_timeout_s: float = 60.0
    num_cpus: int | None = None  # for a local cluster started by the run (None: Ray's default)


@dataclass(frozen=True, kw_only=True)
class LogConfig:
    """Where step metrics go besides `metrics.jsonl` (always written): `tensorboard` event files under
    `<run>/tensorboard`, `wandb` (offline by default: `<run>/wandb`, no network; `online` needs a login)."""

    to: tuple[Literal["tensorboard", "wandb"], ...] = ()
    wandb_project: str = "xtalign"
    wandb_mode: Literal["offline", "online"] = "offline"


@dataclass(frozen=True, kw_only=True)
class PolicyConfig:
    """On-policy distillation: the student writes, the teachers read the student's text in their own tokens.

    mode: `off` (train on data), `on` (every row a student sample), `mix` (a fraction `on_fraction` of each
        batch's rows are student samples, the rest data: GKD's λ).
    prompts: where a sample's prompt comes from: `text`, the first `prompt_chars` characters of a training
        sample; `chat` (needs data.format chat), every turn up to the last user turn, in the student's
        template with its generation prompt. `auto`: chat for chat data, else text.
    max_new_tokens / temperature / top_p / top_k (0 = off): the sampling; seeded per run, step and row.
    objective: `kd` (every teacher's configured loss over the completion chunks; `teachers[].direction`
        picks forward or reverse KL) or `reverse_kl` (the sequence-level reverse KL through the policy
        gradient: per completion chunk c, reward r_c = log p_teacher(c) − log p_student(c), stop-gradient,
        a per-batch baseline, rewards of later chunks discounted by `discount`; 0 = the chunk's own).
    """

    mode: Literal["off", "on", "mix"] = "off"
    on_fraction: float = 0.5
    prompts: Literal["auto", "text", "chat"] = "auto"
    prompt_chars: int = 256
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    objective: Literal["kd", "reverse_kl"] = "kd"
    discount: float = 0.0

    def __post_init__(self) -> None:
        require(0 <= self.on_fraction <= 1, f"{{p}}on_fraction must lie in [0, 1]; got {self.on_fraction}")
        positive_int("prompt_chars", self.prompt_chars)
        positive_int("max_new_tokens", self.max_new_tokens)
        positive("temperature", self.temperature)
        require(0 < self.top_p <= 1, f"{{p}}top_p must lie in (0, 1]; got {self.top_p}")
        require(self.top_k >= 0, f"{{p}}top_k must be >= 0 (0 = off); got {self.top_k}")
        require(0 <= self.discount <= 1, f"{{p}}discount must lie in [0, 1]; got {self.discount}")


def _check_policy(cfg: DistillConfig) -> None:
    p = cfg.policy
    if p.mode == "off":
        return
    require(bool(cfg.teachers), "policy.mode on/mix needs a teacher to score the student's samples")
    require(p.prompts != "chat" or cfg.data.format == "chat", "policy.prompts=chat needs data.format: chat")
    require(cfg.seq_len > p.max_new_tokens, f"seq_len={cfg.seq_len} must exceed policy.max_new_tokens="
            f"{p.max_new_tokens} (the prompt needs room too)")
    require(cfg.cache_teachers is None and all(t.cache is None for t in cfg.teachers),
            "policy.mode on/mix cannot read a teacher cache: the teachers score the student's own new samples")
    require(cfg.student.sharding == "ddp", "policy.mode on/mix needs student.sharding=ddp (each rank samples its "
            "rows with its own full model)")


def _check_positions(cfg: DistillConfig) -> None:
    """A random-init model cannot take more positions than its arch has."""
    models = [("student", cfg.student.model, cfg.student.arch)]
    models += [(f"teachers.{i}", t.model, t.arch) for i, t in enumerate(cfg.teachers)]
    for who, model, arch in models:
        if model == "random" and arch is not None:
            require(cfg.seq_len <= arch.max_position, f"seq_len={cfg.seq_len} exceeds {who}.arch.max_position="
                    f"{arch.max_position}; lower seq_len or raise {who}.arch.max_position")


def _check_backend(cfg: DistillConfig) -> None:
    if cfg.backend == "local":
        require(cfg.student.num_workers == 1, "student.num_workers > 1 needs backend: ray")
        require(all(t.num_replicas == 1 for t in cfg.teachers), "teachers' num_replicas > 1 needs backend: ray")
        require(not cfg.ray.async_teachers, "ray.async (async teachers) needs backend: ray")
        return
    if cfg.device == "cuda":  # each actor sees only the GPUs it reserved
        require(cfg.student.num_gpus > 0, "device=cuda with backend: ray needs student.num_gpus > 0 (a Ray actor "
                "sees only the GPUs it reserves)")
        for i, t in enumerate(cfg.teachers):
            require(t.num_gpus > 0 or t.cache is not None, f"device=cuda with backend: ray needs teachers.{i}.num_gpus "
                    "> 0 (a Ray actor sees only the GPUs it reserves)")


@dataclass(frozen=True, kw_only=True)
class DistillConfig:
    """A whole `xtalign distill` run. `steps` counts optimiser steps; a step sees
    `batch_size × grad_accum` samples of at most `seq_len` tokens on every side (`batch_size` is global:
    with `student.num_workers` ranks each gets an equal share). `device`/`precision` are resolved by each
    worker on its own machine: `auto` is CUDA (bf16 autocast) where the worker sees a GPU, else CPU fp32."""

    student: StudentConfig
    teachers: tuple[TeacherConfig, ...] = ()
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    combine: CombineConfig = field(default_factory=CombineConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    steps: int = 100
    batch_size: int = 4
    seq_len: int = 512
    grad_accum: int = 1
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0
    threads: int | None = None
    cache_teachers: str | None = None
    cache_codec: Literal["exact", "compact"] = "exact"
    backend: Literal["local", "ray"] = "local"
    ray: RayConfig = field(default_factory=RayConfig)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "seq_len", "grad_accum"):
            positive_int(name, getattr(self, name))
        require(self.seq_len >= 8, f"seq_len={self.seq_len} is too short to hold an aligned chunk; use >= 8")
        require(self.threads is None or self.threads >= 1, f"threads must be >= 1 (or null); got {self.threads}")
        if self.teachers:
            require(sum(t.weight for t in self.teachers) > 0, "teachers' weights are all 0; give one a weight > 0")
        _check_backend(self)
        _check_positions(self)
        _check_policy(self)
        for i, t in enumerate(self.teachers):
            require(self.batch_size % t.num_replicas == 0, f"batch_size={self.batch_size} must be a multiple of "
                    f"teachers.{i}.num_replicas={t.num_replicas}")
        require(self.batch_size % self.student.num_workers == 0,
                f"batch_size={self.batch_size} must be a multiple of student.num_workers={self.student.num_workers} "
                "(each rank gets an equal share of every batch)")
        require(self.student.sharding == "ddp" or not any(t.projection.learnable for t in self.teachers),
                "a learnable projection needs student.sharding=ddp (its parameters are not sharded)")
        require(self.combine.multi != "route" or self.data.format == "chat",
                "combine.multi=route sends each chat row's KD to the teacher it names; it needs data.format: chat")
        labels = [t.label for t in self.teachers]
        require(len(set(labels)) == len(labels), f"teachers need distinct names (got {labels}); set teachers.N.name")
