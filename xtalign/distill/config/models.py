"""The models of a run: the student, its teachers, random-init architectures and the projection W."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from xtalign.distill.config.checks import (
    check_loss_slice,
    check_model,
    check_resources,
    positive,
    positive_int,
    require,
)

__all__ = ["ArchConfig", "LossName", "ProjectionSpec", "StudentConfig", "TeacherConfig"]

LossName = Literal["p-kl", "h-kl", "gold", "uld", "same-vocab", "auto"]


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
            positive_int(name, getattr(self, name))
        require(self.num_heads % self.num_kv_heads == 0, f"{{p}}num_heads ({self.num_heads}) must be a multiple of "
                f"{{p}}num_kv_heads ({self.num_kv_heads})")
        require(self.head_dim is not None or self.hidden_size % self.num_heads == 0,
                f"{{p}}hidden_size ({self.hidden_size}) must be a multiple of {{p}}num_heads ({self.num_heads}) "
                "or set {p}head_dim")


@dataclass(frozen=True, kw_only=True)
class StudentConfig:
    """The model being trained.

    model: a zoo model (`xtalign models`: smollm2-135m, gemma3-270m), a `.gguf` file, a local Hugging Face
        folder, a hub id, or `random` (then `arch` and `tokenizer` are required).
    tokenizer: a tokenizer name/path (`xtalign tokenizers`); zoo and GGUF models bring their own.
    num_workers / sharding: data-parallel ranks (`backend: ray`; each gets batch_size / num_workers rows)
        that replicate the model (DDP) or shard it (FSDP2).
    num_gpus / num_cpus / resources: what each rank's Ray actor reserves; its device is resolved inside
        the actor from what it was given (see `device`).
    chat_template (chat data): a `.jinja` file, an HF folder or `tokenizer_config.json`, a `.gguf`, or the
        name of a real template in the pinned llama.cpp set (`xtalign.chat.template_names()`); default: the
        template the model brings (a model without one is refused: set this).
    loss_slice: the student's LM head, CE and KD over slices of this many positions, never holding the
        `[B, Ts, V_s]` logits (recomputed in the backward pass); 0: the full logits; null (default): slice when
        a micro-batch's fp32 logits would exceed 256 MiB, with about 2**25 logits per slice.
    """

    model: str
    tokenizer: str | None = None
    arch: ArchConfig | None = None
    trust_remote_code: bool = False
    chat_template: str | None = None
    init_seed: int | None = None  # random init of the student (default: the run's seed, which also orders the data)
    num_workers: int = 1
    sharding: Literal["ddp", "fsdp"] = "ddp"
    num_gpus: float = 0.0
    num_cpus: float = 1.0
    resources: dict[str, float] | None = None
    loss_slice: int | None = None

    def __post_init__(self) -> None:
        check_model(self.model, self.tokenizer, self.arch is not None)
        check_loss_slice(self.loss_slice)
        positive_int("num_workers", self.num_workers)
        require(self.sharding == "ddp" or self.num_workers > 1, "{p}sharding=fsdp needs {p}num_workers > 1")
        check_resources(self.num_gpus, self.num_cpus, self.resources)


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
        positive_int("top_k", self.top_k)
        positive_int("max_pieces", self.max_pieces)
        positive("lr", self.lr)


@dataclass(frozen=True, kw_only=True)
class TeacherConfig:
    """One teacher: its model, its loss and how its outputs travel.

    loss: `p-kl`, `h-kl`, `gold`, `uld`, `same-vocab` (teacher shares the student's tokenizer: per-position
        top-k KL, no projection, no alignment) or `auto` (`xtalign audit`'s recommendation, recorded).
    direction: `forward` KL(teacher ‖ student) or `reverse` KL(student ‖ teacher) (P-KL, GOLD/H-KL's common
        term, same-vocab; ULD has none).
    subset / subset_cap: P-KL's teacher columns: one list per batch of at most `subset_cap` ids (NeMo's
        8,192), or each chunk's own top-k union (`per_chunk`, never capped). `per_batch` is the default because
        it is closer to the full distribution at the shipped geometry (4 x 2,048 Gemma-3 positions, top-64:
        gradient cosine 0.987 vs 0.931; analysis/cache_codec.md).
    top_k: teacher logits kept per position (with the full-vocabulary logsumexp); at most the teacher's
        embedding rows.
    head_slice: positions per LM-head slice (peak memory = model + one [slice, V_t] block).
    cache: a teacher-cache directory to read this teacher from instead of running it.
    num_replicas: Ray actors serving this teacher, each a copy of the model answering an equal share of
        every batch's rows (`backend: ray`; the batch size must be a multiple).
    num_gpus / num_cpus / resources: what each of its Ray actors reserves; fractions of a GPU let small
        teachers share one; a custom resource (e.g. ``{"teacher-node": 1}``) pins it to a node.
    chat_template: as for the student (chat data: the teacher sees every conversation in its own template).
    """

    model: str
    name: str | None = None
    tokenizer: str | None = None
    arch: ArchConfig | None = None
    trust_remote_code: bool = False
    chat_template: str | None = None
    weight: float = 1.0
    loss: LossName = "auto"
    aggregation: Literal["nemo", "chain"] = "nemo"
    direction: Literal["forward", "reverse"] = "forward"
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
    loss_slice: int | None = None

    def __post_init__(self) -> None:
        check_model(self.model, self.tokenizer, self.arch is not None)
        check_loss_slice(self.loss_slice)
        positive_int("num_replicas", self.num_replicas)
        check_resources(self.num_gpus, self.num_cpus, self.resources)
        positive("temperature", self.temperature)
        positive_int("top_k", self.top_k)
        positive_int("head_slice", self.head_slice)
        positive_int("subset_cap", self.subset_cap)
        require(self.weight >= 0, f"{{p}}weight must be >= 0; got {self.weight}")
        require(self.direction == "forward" or self.loss != "uld", "{p}direction=reverse: ULD has no direction")
        require(not (self.projection.learnable and self.loss not in ("p-kl", "auto")),
                f"{{p}}projection.learnable needs {{p}}loss=p-kl (got {self.loss}); only P-KL learns W")

    @property
    def label(self) -> str:
        return self.name or Path(self.model).name
