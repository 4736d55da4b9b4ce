"""Where a teacher's answers come from: its cache, or a `TeacherCompute` (a worker here, or Ray actors).

`CachedTeacher` is the one `TeacherSource` both backends use: a batch the cache holds is read from it
(the model is never loaded for it), any other goes to the compute, and with a writer its answer is
stored. Answers are written a batch late, so that storing one never waits on a teacher still computing
it (Ray, async); `close` writes the rest. `LocalTeacher` runs a `TeacherWorker` in this process, loaded
on first need, and answers with the worker's output where it lies (its own device).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from pathlib import Path

import numpy as np

from xtalign.distill.data.batch import Batch, TeacherSide
from xtalign.distill.protocols import TeacherAnswer, TeacherCompute
from xtalign.distill.teacher.cache import TeacherCacheReader, TeacherCacheWriter
from xtalign.distill.teacher.worker import TeacherWorker
from xtalign.losses import TeacherTopK

__all__ = ["CachedTeacher", "LocalAnswer", "LocalTeacher", "cache_dir_for"]

log = logging.getLogger(__name__)


class LocalAnswer:
    """An answer already in this process: a local worker's output (on its device) or a cache read (host)."""

    def __init__(self, out: TeacherTopK, nbytes: int = 0) -> None:
        self._out, self.nbytes = out, nbytes

    def topk(self) -> TeacherTopK:
        return self._out


class LocalTeacher:
    """A `TeacherCompute` that runs a `TeacherWorker` in this process (built by `make` on first need)."""

    def __init__(self, label: str, make: Callable[[], TeacherWorker]) -> None:
        self.label, self._make = label, make
        self._worker: TeacherWorker | None = None

    @property
    def worker(self) -> TeacherWorker:
        if self._worker is None:
            log.info("loading teacher %s", self.label)
            self._worker = self._make()
        return self._worker

    @property
    def loaded(self) -> bool:
        return self._worker is not None

    def compute(self, side: TeacherSide) -> LocalAnswer:
        return LocalAnswer(self.worker.forward(side.ids, side.lengths, side.targets))

    def likelihood(self, side: TeacherSide) -> np.ndarray:
        return self.worker.likelihood(side.ids, side.lengths, side.targets)

    def close(self) -> None:
        return None


class CachedTeacher:
    """One teacher's answers, in config position `index` of `Batch.teachers` (read-through cache)."""

    def __init__(self, label: str, index: int, compute: TeacherCompute, *, reader: TeacherCacheReader | None = None,
                 writer: TeacherCacheWriter | None = None, cache_path: Path | None = None) -> None:
        self.label, self.index, self.compute = label, index, compute
        self.reader, self.writer, self.cache_path = reader, writer, cache_path
        self.cache_hits = 0
        self.forwards = 0
        self._unwritten: deque[tuple[Batch, TeacherSide, TeacherAnswer]] = deque()

    def submit(self, batch: Batch) -> TeacherAnswer:
        """Start this teacher's work on `batch` (a cache hit is read now)."""
        side = batch.teachers[self.index]
        if self.reader is not None and self.reader.has(batch.sample_ids):
            self.cache_hits += 1
            return LocalAnswer(self.reader.read(batch.sample_ids, side))
        self.forwards += 1
        answer = self.compute.compute(side)
        if self.writer is not None and self.writer.lossy:  # train on what a reader of the cache will get
            return LocalAnswer(self.writer.write(batch.index, side, answer.topk(), sample_ids=batch.sample_ids))
        if self.writer is not None:
            self._unwritten.append((batch, side, answer))
            self._write(keep=1)
        return answer

    def _write(self, keep: int) -> None:
        """Store every unwritten answer but the newest `keep` (those may still be under way)."""
        assert self.writer is not None
        while len(self._unwritten) > keep:
            batch, side, answer = self._unwritten.popleft()
            self.writer.write(batch.index, side, answer.topk(), sample_ids=batch.sample_ids)

    def likelihood(self, side: TeacherSide) -> np.ndarray:
        return self.compute.likelihood(side)

    def close(self, *, flush: bool = True) -> None:
        """Write what is left to the cache (unless `flush` is false: a failed run drops answers it may never
        get) and release the compute."""
        if self.writer is not None:
            if flush:
                self._write(keep=0)
            self.writer.close()
        self.compute.close()


def cache_dir_for(label: str, own: str | None, shared: str | None) -> Path | None:
    """A teacher's cache directory: its own `cache`, else `<cache_teachers>/<label>`, else none."""
    if own:
        return Path(own)
    if shared:
        return Path(shared) / label.replace("/", "_")
    return None
