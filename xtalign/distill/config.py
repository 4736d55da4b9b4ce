"""`xtalign distill`'s one typed config: frozen keyword-only dataclasses, loaded strictly from YAML.

A run is a student, one or more teachers (each with its loss and projection), data, optimiser,
schedule, batch geometry, eval and checkpoint settings. `load_config` reads YAML + dotted overrides
(`teachers.0.temperature=2`) and refuses unknown keys naming the closest valid one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from xtalign.config import ConfigError, apply_overrides, from_mapping, load_yaml

__all__ = ["ArchConfig", "CheckpointConfig", "CombineConfig", "DataConfig", "DistillConfig", "EvalConfig",
           "LossName", "OptimConfig", "ProjectionSpec", "RayConfig", "ScheduleConfig", "StudentConfig",
           "TeacherConfig", "load_config"]

LossName = Literal["p-kl", "h-kl", "gold", "uld", "same-vocab", "auto"]


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _positive_int(name: str, value: int) -> None:
    _require(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
             f"{name} must be an integer >= 1; got {value!r}")


def _positive(name: str, value: float) -> None:
    _require(isinstance(value, int | float) and math.isfinite(value) and value > 0,
             f"{name} must be a finite number > 0; got {value!r}")


@dataclass(frozen=True, kw_only=True)
class ArchConfig:
    """A small decoder for random init (tests, throughput, from-scratch students): a Llama-style model
    (`llama`) or a Gemma-3-style one (`gemma3`), sized here; the vocabulary comes from the tokenizer."""

    family: Literal["llama", "gemma3"] = "llama"
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 4
    head_dim: int | None = None
    intermediate_size: int = 256
    max_position: int = 2048
    tie_embeddings: bool = True

    def __post_init__(self) -> None:
        for name in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size", "max_position"):
            _positive_int(f"arch.{name}", getattr(self, name))
        _require(self.num_heads % self.num_kv_heads == 0,
                 f"arch.num_heads ({self.num_heads}) must be a multiple of arch.num_kv_heads ({self.num_kv_heads})")
        _require(self.head_dim is not None or self.hidden_size % self.num_heads == 0,
                 f"arch.hidden_size ({self.hidden_size}) must be a multiple of arch.num_heads ({self.num_heads}) "
                 "or set arch.head_dim")


@dataclass(frozen=True, kw_only=True)
class StudentConfig:
    """The model being trained.

    model: a zoo model (`xtalign models`: smollm2-135m, gemma3-270m), a `.gguf` file, a local Hugging Face
        folder, a hub id, or `random` (then `arch` and `tokenizer` are required).
    tokenizer: a tokenizer name/path (`xtalign tokenizers`); zoo and GGUF models bring their own.
    """

    model: str
    tokenizer: str | None = None
    arch: ArchConfig | None = None
    trust_remote_code: bool = False
    init_seed: int | None = None  # random init of the student (default: the run's seed, which also orders the data)
    num_workers: int = 1  # data-parallel ranks (`backend: ray`); each gets batch_size / num_workers rows
    sharding: Literal["ddp", "fsdp"] = "ddp"  # ranks replicate the model (DDP) or shard it (FSDP2)
    num_gpus: float = 0.0
    num_cpus: float = 1.0
    resources: dict[str, float] | None = None

    def __post_init__(self) -> None:
        _check_model("student", self.model, self.tokenizer, self.arch)
        _positive_int("student.num_workers", self.num_workers)
        _require(self.sharding == "ddp" or self.num_workers > 1, "student.sharding=fsdp needs num_workers > 1")
        _check_resources("student", self.num_gpus, self.num_cpus, self.resources)


def _check_resources(who: str, num_gpus: float, num_cpus: float, resources: dict[str, float] | None) -> None:
    _require(num_gpus >= 0 and num_cpus >= 0, f"{who}.num_gpus and {who}.num_cpus must be >= 0")
    for name, amount in (resources or {}).items():
        _require(isinstance(amount, int | float) and amount > 0,
                 f"{who}.resources.{name} must be a number > 0; got {amount!r}")


def _check_model(who: str, model: str, tokenizer: str | None, arch: ArchConfig | None) -> None:
    _require(bool(model), f"{who}.model is empty; give a zoo model, a .gguf, a folder, a hub id or 'random'")
    if model == "random":
        _require(arch is not None and tokenizer is not None,
                 f"{who}.model=random needs {who}.arch and {who}.tokenizer")
    else:
        _require(arch is None, f"{who}.arch only applies to model=random (got model={model!r})")


@dataclass(frozen=True, kw_only=True)
class ProjectionSpec:
    """The student→teacher map W: `build` (built once, cached by both vocab fingerprints and this config)
    or a path to a `xtalign build-projection` file. `learnable`: learn W jointly at `lr` (paper: 1e-2)."""

    source: str = "build"
    top_k: int = 4
    max_pieces: int = 4
    beta: float = 0.9
    gamma: float = 0.1
    reverse: bool = True
    learnable: bool = False
    lr: float = 1e-2

    def __post_init__(self) -> None:
        _positive_int("projection.top_k", self.top_k)
        _positive_int("projection.max_pieces", self.max_pieces)
        _positive("projection.lr", self.lr)


@dataclass(frozen=True, kw_only=True)
class TeacherConfig:
    """One teacher: its model, its loss and how its outputs travel.

    loss: `p-kl`, `h-kl`, `gold`, `uld`, `same-vocab` (teacher shares the student's tokenizer: per-position
        top-k KL, no projection, no alignment) or `auto` (`xtalign audit`'s recommendation, recorded).
    subset / subset_cap: P-KL's teacher columns: one list per batch of at most `subset_cap` ids (NeMo's
        8,192), or each chunk's own top-k union (`per_chunk`, never capped).
    top_k: teacher logits kept per position (with the full-vocabulary logsumexp).
    head_slice: positions per LM-head slice (peak memory = model + one [slice, V_t] block).
    cache: a teacher-cache directory to read this teacher from instead of running it.
    num_replicas: Ray actors serving this teacher, each a copy of the model answering an equal share of
        every batch's rows (`backend: ray`; the batch size must be a multiple).
    num_gpus / num_cpus / resources: what each of its Ray actors reserves; fractions of a GPU let small
        teachers share one; a custom resource (e.g. ``{"teacher-node": 1}``) pins it to a node.
    """

    model: str
    name: str | None = None
    tokenizer: str | None = None
    arch: ArchConfig | None = None
    trust_remote_code: bool = False
    weight: float = 1.0
    loss: LossName = "auto"
    aggregation: Literal["nemo", "chain"] = "nemo"
    subset: Literal["per_batch", "per_chunk"] = "per_batch"
    subset_cap: int = 8192
    temperature: float = 1.0
    top_k: int = 64
    head_slice: int = 512
    projection: ProjectionSpec = field(default_factory=ProjectionSpec)
    cache: str | None = None
    num_replicas: int = 1
    num_gpus: float = 0.0
    num_cpus: float = 1.0
    resources: dict[str, float] | None = None

    def __post_init__(self) -> None:
        _check_model("teacher", self.model, self.tokenizer, self.arch)
        _positive_int("teacher.num_replicas", self.num_replicas)
        _check_resources("teacher", self.num_gpus, self.num_cpus, self.resources)
        _positive("teacher.temperature", self.temperature)
        _positive_int("teacher.top_k", self.top_k)
        _positive_int("teacher.head_slice", self.head_slice)
        _require(self.weight >= 0, f"teacher.weight must be >= 0; got {self.weight}")
        _require(not (self.projection.learnable and self.loss not in ("p-kl", "auto")),
                 f"teacher.projection.learnable needs loss p-kl (got {self.loss}); only P-KL learns W")

    @property
    def label(self) -> str:
        return self.name or Path(self.model).name


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Training text and its held-out split.

    train: a text file, a JSONL file (`field`), a parquet file (`field` = column), or `botchan` (the
        public-domain novel from a pinned artifact, the embedded default).
    documents: how a plain-text file splits into documents: `paragraph` (blank lines), `line`, `file`.
    pack_chars: documents are packed into samples of about this many characters (NeMo: 16,384).
    heldout: a separate held-out file, else `heldout_fraction` of the documents (chosen from the seed).
    workers / prefetch: background tokenize+align workers and the bounded queue's depth (in batches).
    """

    train: str = "botchan"
    format: Literal["auto", "text", "jsonl", "parquet"] = "auto"
    field: str = "text"
    documents: Literal["paragraph", "line", "file"] = "paragraph"
    pack_chars: int = 16384
    heldout: str | None = None
    heldout_fraction: float = 0.05
    add_bos: bool = True
    workers: int = 1
    prefetch: int = 4

    def __post_init__(self) -> None:
        _positive_int("data.pack_chars", self.pack_chars)
        _require(0 < self.heldout_fraction < 1,
                 f"data.heldout_fraction must lie in (0, 1); got {self.heldout_fraction}")
        _positive_int("data.workers", self.workers)
        _positive_int("data.prefetch", self.prefetch)


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    """AdamW (the paper: lr 5e-5, betas (0.9, 0.95), grad-norm 1.0)."""

    lr: float = 5e-5
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip: float = 1.0

    def __post_init__(self) -> None:
        _positive("optim.lr", self.lr)
        _require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
                 f"optim.betas must be two numbers in [0, 1); got {self.betas}")
        _require(self.grad_clip >= 0, f"optim.grad_clip must be >= 0 (0 = off); got {self.grad_clip}")


@dataclass(frozen=True, kw_only=True)
class ScheduleConfig:
    """Learning-rate schedule: linear warm-up, then `cosine` down to `min_lr_ratio`·lr, or `constant`."""

    kind: Literal["cosine", "constant"] = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1

    def __post_init__(self) -> None:
        _require(self.warmup_steps >= 0, f"schedule.warmup_steps must be >= 0; got {self.warmup_steps}")
        _require(0 <= self.min_lr_ratio <= 1, f"schedule.min_lr_ratio must lie in [0, 1]; got {self.min_lr_ratio}")


@dataclass(frozen=True, kw_only=True)
class CombineConfig:
    """How KD and CE combine (`dynamic`: sg(CE/KD)·KD + CE) and how several teachers combine
    (`sum` with the teachers' weights normalised, `dynamic` softmax(alpha·score), `select`)."""

    scaling: Literal["dynamic", "fixed"] = "dynamic"
    kd_weight: float = 1.0
    ce_weight: float = 1.0
    multi: Literal["sum", "dynamic", "select"] = "sum"
    score: Literal["ce", "entropy", "max_prob"] = "ce"
    alpha: float = 1.0


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """Held-out bits per byte: every `every` steps (0 = only at the start and the end), on at most
    `max_batches` held-out batches."""

    every: int = 0
    max_batches: int = 8

    def __post_init__(self) -> None:
        _require(self.every >= 0, f"eval.every must be >= 0; got {self.every}")
        _positive_int("eval.max_batches", self.max_batches)


@dataclass(frozen=True, kw_only=True)
class CheckpointConfig:
    """Checkpoints every `every` steps (0 = only at the end), keeping the newest `keep_last`."""

    every: int = 0
    keep_last: int = 2

    def __post_init__(self) -> None:
        _require(self.every >= 0, f"checkpoint.every must be >= 0; got {self.every}")
        _positive_int("checkpoint.keep_last", self.keep_last)


@dataclass(frozen=True, kw_only=True)
class RayConfig:
    """`backend: ray`. address: None starts a local cluster for the run, `auto` joins the running one, or a
    cluster address. async_teachers (YAML `async`): teachers work one batch ahead of the student.
    placement_timeout_s: how long to wait for the placement group before failing with what is missing."""

    address: str | None = None
    async_teachers: bool = False
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    placement_timeout_s: float = 60.0
    num_cpus: int | None = None  # for a local cluster started by the run (None: Ray's default)


@dataclass(frozen=True, kw_only=True)
class DistillConfig:
    """A whole `xtalign distill` run. `steps` counts optimiser steps; a step sees
    `batch_size × grad_accum` samples of at most `seq_len` student tokens (`batch_size` is global: with
    `student.num_workers` ranks each gets an equal share)."""

    student: StudentConfig
    teachers: tuple[TeacherConfig, ...] = ()
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    combine: CombineConfig = field(default_factory=CombineConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    steps: int = 100
    batch_size: int = 4
    seq_len: int = 512
    grad_accum: int = 1
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0
    threads: int | None = None
    cache_teachers: str | None = None
    backend: Literal["local", "ray"] = "local"
    ray: RayConfig = field(default_factory=RayConfig)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "seq_len", "grad_accum"):
            _positive_int(name, getattr(self, name))
        _require(self.seq_len >= 8, f"seq_len={self.seq_len} is too short to hold an aligned chunk; use >= 8")
        if self.teachers:
            _require(sum(t.weight for t in self.teachers) > 0, "teachers' weights are all 0; give one a weight > 0")
        if self.backend == "local":
            _require(self.student.num_workers == 1, "student.num_workers > 1 needs backend: ray")
            _require(all(t.num_replicas == 1 for t in self.teachers), "teachers' num_replicas > 1 needs backend: ray")
            _require(not self.ray.async_teachers, "async teachers need backend: ray")
        for t in self.teachers:
            _require(self.batch_size % t.num_replicas == 0,
                     f"batch_size={self.batch_size} must be a multiple of teacher {t.label}'s num_replicas="
                     f"{t.num_replicas}")
        _require(self.batch_size % self.student.num_workers == 0,
                 f"batch_size={self.batch_size} must be a multiple of student.num_workers={self.student.num_workers} "
                 "(each rank gets an equal share of every batch)")
        _require(self.student.sharding == "ddp" or not any(t.projection.learnable for t in self.teachers),
                 "a learnable projection needs student.sharding=ddp (its parameters are not sharded)")
        labels = [t.label for t in self.teachers]
        _require(len(set(labels)) == len(labels),
                 f"teachers need distinct names (got {labels}); set teachers.N.name")


def _normalise(raw: dict[str, Any]) -> dict[str, Any]:
    """A dotted override may address `teachers.0.x`; `ray.async` is the YAML name of `ray.async_teachers`."""
    ray = raw.get("ray")
    if isinstance(ray, dict) and "async" in ray:
        ray["async_teachers"] = ray.pop("async")
    teachers = raw.get("teachers")
    if isinstance(teachers, dict):  # built by overrides like teachers.0.model=…
        raw["teachers"] = [teachers[k] for k in sorted(teachers, key=lambda k: int(k))]
    return raw


def _apply_list_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`teachers.N.key=value` edits teacher N of the YAML list (apply_overrides handles mappings only)."""
    plain, listed = [], []
    for item in overrides:
        parts = item.split("=", 1)[0].split(".")
        (listed if len(parts) > 2 and parts[0] == "teachers" and parts[1].isdigit() else plain).append(item)
    out = apply_overrides(data, plain)
    if listed:
        teachers = {str(i): t for i, t in enumerate(out.get("teachers") or [])}
        sub = apply_overrides({"teachers": teachers}, listed)["teachers"]
        out["teachers"] = sub
    return out


def config_from_dict(data: dict[str, Any], overrides: list[str] | None = None) -> DistillConfig:
    data = _normalise(_apply_list_overrides(data, overrides or []))
    try:
        return from_mapping(DistillConfig, data)
    except TypeError as exc:  # a required key is missing
        raise ConfigError(f"incomplete config: {exc}") from None
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(str(exc)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> DistillConfig:
    """YAML file + `key.sub=value` overrides → a validated `DistillConfig` (ConfigError on any problem)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; give a YAML file (see distill/configs/)")
    return config_from_dict(load_yaml(path), overrides)
