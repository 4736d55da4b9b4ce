"""The engine's declared interfaces: what the loop asks of a batch source, a teacher and the student.

Both backends implement these (`backend: local` in one process, `backend: ray` with actors); the loop
holds no device and no tensor: it moves `Batch`es (numpy) and opaque `TeacherAnswer` handles from the
teachers to the student and writes the `StepStats` it gets back. `merge_stats` is the ONE way per-micro-
batch or per-rank figures combine, so 1 and N ranks report the same figures on the same data.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from xtalign.distill.data.batch import Batch, TeacherSide

if TYPE_CHECKING:
    from xtalign.losses import TeacherTopK

__all__ = ["BatchSource", "MicroBatch", "StepStats", "Student", "TeacherAnswer", "TeacherCompute", "TeacherSource",
           "merge_stats"]


class BatchSource(Protocol):
    """Training batches in order (`next(source)`); `position` is the index of the next one (the data cursor)."""

    position: int

    def __iter__(self) -> Iterator[Batch]: ...

    def __next__(self) -> Batch: ...

    def close(self) -> None: ...


@runtime_checkable
class TeacherAnswer(Protocol):
    """One teacher's answer for one batch, wherever it lives (on the teacher's device, in Ray's object store,
    read from a cache). `nbytes`: what it moves across a process boundary (0 when it does not)."""

    nbytes: int

    def topk(self) -> TeacherTopK:
        """The answer in this process (for a student worker in the same process, or the cache writer)."""
        ...


class TeacherCompute(Protocol):
    """Where a teacher's forwards run: a worker in this process or Ray actors."""

    def compute(self, side: TeacherSide) -> TeacherAnswer: ...

    def likelihood(self, side: TeacherSide) -> np.ndarray:
        """``[B, T]`` float32 log-prob of each target at temperature 1 (0 where ignored)."""
        ...

    def close(self) -> None: ...


class TeacherSource(Protocol):
    """One teacher's answers for batches (cache reads and writes included), in config position `index`."""

    label: str
    index: int
    forwards: int
    cache_hits: int
    cache_path: Path | None

    def submit(self, batch: Batch) -> TeacherAnswer: ...

    def likelihood(self, side: TeacherSide) -> np.ndarray: ...

    def close(self, *, flush: bool = True) -> None: ...


MicroBatch = tuple[Batch, Sequence[TeacherAnswer]]


@dataclass(frozen=True, kw_only=True)
class StepStats:
    """One optimiser step's figures as a worker reports them: losses are means over equal shares (micro-
    batches, ranks), accuracy and agreement are kept as counts so that merging takes ratios of sums."""

    loss: float
    ce: float
    kd: tuple[float, ...] = ()
    kd_total: float | None = None
    loss_scale: float | None = None
    teacher_weights: tuple[float, ...] = ()
    acc_hits: int = 0
    acc_n: int = 0
    agree_hits: tuple[int, ...] = ()
    agree_n: tuple[int, ...] = ()
    grad_norm: float = 0.0
    lr: float = 0.0
    teacher_wait_s: float = 0.0
    peak_memory_mb: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        return self.acc_hits / self.acc_n if self.acc_n else 0.0

    @property
    def agreement(self) -> tuple[float, ...]:
        return tuple(h / n if n else 0.0 for h, n in zip(self.agree_hits, self.agree_n, strict=True))


def _mean(values: Sequence[float | None]) -> float | None:
    return None if values[0] is None else sum(float(v) for v in values) / len(values)  # type: ignore[arg-type]


def _column_means(rows: Sequence[tuple[float, ...]]) -> tuple[float, ...]:
    return tuple(sum(r[i] for r in rows) / len(rows) for i in range(len(rows[0])))


def _column_sums(rows: Sequence[tuple[int, ...]]) -> tuple[int, ...]:
    return tuple(sum(r[i] for r in rows) for i in range(len(rows[0])))


def merge_stats(parts: Sequence[StepStats], **set_: Any) -> StepStats:
    """Equal shares' stats → one: means of the losses and weights, sums of the counts (ratios of sums),
    the largest wait and memory; `grad_norm` / `lr` from the first part unless given in `set_`."""
    if not parts:
        raise ValueError("merge_stats needs at least one StepStats")
    first = parts[0]
    extra = {k: sum(p.extra.get(k, 0.0) for p in parts) / len(parts) for k in first.extra}
    merged = StepStats(
        loss=sum(p.loss for p in parts) / len(parts), ce=sum(p.ce for p in parts) / len(parts),
        kd=_column_means([p.kd for p in parts]) if first.kd else (),
        kd_total=_mean([p.kd_total for p in parts]), loss_scale=_mean([p.loss_scale for p in parts]),
        teacher_weights=_column_means([p.teacher_weights for p in parts]) if first.teacher_weights else (),
        acc_hits=sum(p.acc_hits for p in parts), acc_n=sum(p.acc_n for p in parts),
        agree_hits=_column_sums([p.agree_hits for p in parts]) if first.agree_hits else (),
        agree_n=_column_sums([p.agree_n for p in parts]) if first.agree_n else (),
        grad_norm=first.grad_norm, lr=first.lr, teacher_wait_s=max(p.teacher_wait_s for p in parts),
        peak_memory_mb=max(p.peak_memory_mb for p in parts), extra=extra)
    return replace(merged, **set_) if set_ else merged


class Student(Protocol):
    """The student, however many ranks it has: the loop's only handle on the model being trained."""

    def train_step(self, micro: Sequence[MicroBatch]) -> StepStats:
        """One optimiser step over `micro` (gradient accumulation)."""
        ...

    def token_nll(self, batch: Batch) -> np.ndarray:
        """``[B, Ts]`` float64 nats of each token given the ones before (column 0 and padding: nan)."""
        ...

    def generate(self, prompts: Sequence[np.ndarray], *, seeds: Sequence[int], cfg: Any, stop_ids: Sequence[int],
                 pad_id: int) -> list[np.ndarray]:
        """Per prompt ``[P]`` ids, the student's sampled ids (seeded per row; ending with a stop id if drawn)."""
        ...

    def save_checkpoint(self, run_dir: Path, step: int, state: dict[str, Any], keep_last: int) -> Path:
        """Model, optimiser, scheduler, RNG and learnable W with the loop's `state`; returns the directory."""
        ...

    def restore(self, path: Path) -> dict[str, Any]:
        """Load a checkpoint; returns the loop state saved with it."""
        ...

    def export_model(self, out_dir: Path) -> Path:
        """The student as a Hugging Face folder."""
        ...

    def projections(self) -> list[tuple[np.ndarray, np.ndarray] | None]:
        """Current (indices, weights) of each teacher's learnable W (None for fixed ones)."""
        ...

    def close(self) -> None: ...
