"""Batches in a seeded order, built ahead in background threads; the held-out batches eval scores.

`DataPipeline` is the loop's text `BatchSource`: training batches `start_batch, start_batch + 1, …`
forever (epochs roll over), each depending only on its index, so resuming at `start_batch=n` continues an
interrupted run exactly. `heldout_selection` picks the held-out samples eval scores: all of them when
they fit, else a seeded spread over the whole split, per source in proportion to its size.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType

import numpy as np

from xtalign.distill.data.batch import Batch
from xtalign.distill.data.builder import BatchBuilder
from xtalign.distill.data.corpus import Corpus
from xtalign.distill.errors import DataError

__all__ = ["DataPipeline", "batch_order", "heldout_batches", "heldout_selection"]


def batch_order(n_samples: int, batch_size: int, seed: int, epoch: int) -> np.ndarray:
    """Sample ids of each batch of `epoch` ``[n_batches, B]``: a seeded permutation, ragged tail dropped;
    with fewer samples than `batch_size`, one batch of the permutation repeated (wrap-around)."""
    if n_samples < 1 or batch_size < 1:
        raise ValueError(f"need n_samples >= 1 and batch_size >= 1; got {n_samples}, {batch_size}")
    perm = np.random.default_rng([seed % 2**64, epoch, 0xBA7C]).permutation(n_samples).astype(np.int64)
    if n_samples < batch_size:
        return np.resize(perm, (1, batch_size))
    n_batches = n_samples // batch_size
    return perm[: n_batches * batch_size].reshape(n_batches, batch_size)


def _quotas(sizes: Sequence[int], budget: int) -> list[int]:
    """Per-source sample counts summing to `budget`: proportional (largest remainders), at least 1 each."""
    total = sum(sizes)
    want = [max(1, int(budget * n / total)) for n in sizes]
    rest = sorted(range(len(sizes)), key=lambda i: budget * sizes[i] / total - int(budget * sizes[i] / total),
                  reverse=True)
    for i in rest:
        if sum(want) >= budget:
            break
        if want[i] < sizes[i]:
            want[i] += 1
    return [min(w, n) for w, n in zip(want, sizes, strict=True)]


def heldout_selection(sources: Sequence[str], budget: int, seed: int) -> np.ndarray:
    """Held-out sample indices to score (sorted): every one when `budget` covers them, else a seeded draw
    per source in proportion to its size, at least one sample of each source."""
    n = len(sources)
    if n <= budget:
        return np.arange(n, dtype=np.int64)
    names = list(dict.fromkeys(sources))
    members = [np.flatnonzero(np.asarray(sources) == name) for name in names]
    quotas = _quotas([m.shape[0] for m in members], max(budget, len(names)))
    rng = np.random.default_rng([abs(int(seed)), 0xE7A1])
    picked = [rng.permutation(m)[:q] for m, q in zip(members, quotas, strict=True)]
    return np.sort(np.concatenate(picked)).astype(np.int64)


def heldout_batches(corpus: Corpus, builder: BatchBuilder, *, batch_size: int, max_batches: int,
                    seed: int) -> list[Batch]:
    """The selected held-out samples in order, `batch_size` per batch (the last may be smaller); sample ids
    continue after the training ids."""
    sources = corpus.heldout_sources or ("data",) * len(corpus.heldout)
    chosen = heldout_selection(sources, max_batches * batch_size, seed)
    base, out = len(corpus.train), []
    for k in range(0, chosen.shape[0], batch_size):
        ids = chosen[k: k + batch_size]
        out.append(builder.build(len(out), base + ids, [corpus.heldout[i] for i in ids],
                                 sources=[sources[i] for i in ids]))
    return out


class DataPipeline:
    """Training batches start_batch, start_batch + 1, … forever, built ahead by `workers` threads into at
    most `prefetch` pending batches and yielded in order (`next(pipe)`); the stream is the same for any
    worker count. `position` is the index of the next batch it yields."""

    def __init__(self, corpus: Corpus, builder: BatchBuilder, *, batch_size: int, seed: int, start_batch: int = 0,
                 workers: int = 1, prefetch: int = 4) -> None:
        if not corpus.train:
            raise DataError("the corpus has no training samples; give more text")
        if batch_size < 1 or workers < 1 or prefetch < 1 or start_batch < 0:
            raise ValueError("batch_size, workers and prefetch must be >= 1 and start_batch >= 0")
        self.corpus, self.builder = corpus, builder
        self.batch_size, self.seed, self.workers, self.prefetch = batch_size, seed, workers, prefetch
        self.batches_per_epoch = max(1, len(corpus.train) // batch_size)
        self.position = start_batch
        self._submit_next = start_batch
        self._pending: deque[Future[Batch]] = deque()
        self._pool: ThreadPoolExecutor | None = None
        self._order: tuple[int, np.ndarray] | None = None
        self._closed = False

    def sample_ids(self, index: int) -> np.ndarray:
        """``[B]`` train sample ids of batch `index`."""
        epoch, pos = divmod(index, self.batches_per_epoch)
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, batch_order(len(self.corpus.train), self.batch_size, self.seed, epoch))
        return self._order[1][pos]

    def _submit(self) -> None:
        assert self._pool is not None
        ids = self.sample_ids(self._submit_next)
        texts = [self.corpus.train[i] for i in ids]
        sources = [self.corpus.train_sources[i] for i in ids] if self.corpus.train_sources else []
        self._pending.append(self._pool.submit(self.builder.build, self._submit_next, ids, texts, sources))
        self._submit_next += 1

    def __iter__(self) -> DataPipeline:
        return self

    def __next__(self) -> Batch:
        if self._closed:
            raise StopIteration
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="xtalign-data")
        while len(self._pending) < self.prefetch:
            self._submit()
        future = self._pending.popleft()
        try:
            batch = future.result()
        except BaseException:
            self.close()
            raise
        self._submit()
        self.position += 1
        return batch

    def close(self) -> None:
        """Stop the workers: pending batches are dropped, a running one finishes."""
        self._closed = True
        for f in self._pending:
            f.cancel()
        self._pending.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> DataPipeline:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
