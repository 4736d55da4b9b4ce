"""Where a teacher's outputs come from: a live `TeacherWorker`, its teacher cache, or both (read-through).

The loop only ever calls `TeacherSource.outputs(batch)`; whether that ran a model, read a shard, or (in
the Ray backend) waited on an actor is the source's business. The model is loaded on first need, so a
run whose cache is complete never loads the teacher.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xtalign.distill.transport import topk_nbytes

if TYPE_CHECKING:
    from xtalign.distill.batch import Batch, TeacherSide
    from xtalign.distill.cache import TeacherCacheReader, TeacherCacheWriter
    from xtalign.losses import TeacherTopK

__all__ = ["Pending", "TeacherSource"]

log = logging.getLogger(__name__)


class Pending:
    """A teacher answer that is ready (`value`) or will be (`resolve` is called once, on `result`)."""

    def __init__(self, value: TeacherTopK | None = None, *, resolve: Callable[[], TeacherTopK] | None = None,
                 nbytes: int = 0) -> None:
        self._value, self._resolve, self.nbytes = value, resolve, nbytes

    def result(self) -> TeacherTopK:
        if self._value is None:
            assert self._resolve is not None
            self._value = self._resolve()
        return self._value


class TeacherSource:
    """One teacher's outputs for batches, in config position `index` of `Batch.teachers`."""

    def __init__(self, label: str, index: int, make_worker: Callable[[], Any], *,
                 reader: TeacherCacheReader | None = None, writer: TeacherCacheWriter | None = None) -> None:
        self.label = label
        self.index = index
        self._make_worker = make_worker
        self._worker: Any = None
        self.reader = reader
        self.writer = writer
        self.cache_hits = 0
        self.forwards = 0
        self._eval: Any = None
        self.cache_path: Path | None = None

    @property
    def worker(self) -> Any:
        if self._worker is None:
            log.info("loading teacher %s", self.label)
            self._worker = self._make_worker()
        return self._worker

    @property
    def loaded(self) -> bool:
        return self._worker is not None

    def side(self, batch: Batch) -> TeacherSide:
        return batch.teachers[self.index]

    def outputs(self, batch: Batch) -> TeacherTopK:
        return self.submit(batch).result()

    def submit(self, batch: Batch) -> Pending:
        """Start this teacher's work on `batch`; `.result()` gives the answer (a cache hit is read now)."""
        side = self.side(batch)
        if self.reader is not None and self.reader.has(batch.index):
            self.cache_hits += 1
            return Pending(self.reader.read(batch.index, side), nbytes=0)
        self.forwards += 1
        return self._compute(batch, side)

    def _compute(self, batch: Batch, side: TeacherSide) -> Pending:
        """A local teacher computes at once; the Ray backend overrides this with an actor call."""
        out = self.worker.forward(side.ids, side.lengths, side.targets)
        return Pending(self._store(batch, side, out), nbytes=topk_nbytes(out))

    def _store(self, batch: Batch, side: TeacherSide, out: TeacherTopK) -> TeacherTopK:
        if self.writer is not None:
            self.writer.write(batch.index, side, out, sample_ids=batch.sample_ids)
        return out

    def likelihood(self, side: TeacherSide) -> TeacherTopK:
        """The teacher at temperature 1 and k = 1 on `side` (exact likelihoods, for bits per byte)."""
        if self._eval is None:
            from xtalign.distill.teacher import TeacherWorker

            w = self.worker
            self._eval = TeacherWorker(w.loaded, top_k=1, temperature=1.0, head_slice=w.head_slice,
                                       device=str(w.device))
        return self._eval.forward(side.ids, side.lengths, side.targets)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def cache_dir_for(label: str, own: str | None, shared: str | None) -> Path | None:
    """A teacher's cache directory: its own `cache`, else `<cache_teachers>/<label>`, else none."""
    if own:
        return Path(own)
    if shared:
        return Path(shared) / label.replace("/", "_")
    return None
