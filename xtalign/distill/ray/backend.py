"""`backend: ray`: the same workers as `backend: local`, as Ray actors on their own devices and nodes.

Each teacher is `num_replicas` `WorkerActor`s holding a `TeacherWorker`, each answering an equal share of
a batch's rows; the student is `student.num_workers` actors holding a `StudentWorker` (DDP over gloo on
CPU or NCCL on GPU, or FSDP2), each training on an equal share. A teacher answers in PIECES cut where a
replica's or a rank's rows begin (`wire.row_cuts`), one object ref per piece, so each rank fetches its
own rows straight from the object store: the driver relays no top-k, it sees refs and byte counts (and
reads answers only to write them to a teacher cache). Every worker resolves its device in its actor.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import ray

from xtalign.distill.config import DistillConfig
from xtalign.distill.data.batch import Batch, TeacherSide
from xtalign.distill.devices import WorkerDevice
from xtalign.distill.models.load import LoadedModel
from xtalign.distill.protocols import MicroBatch, StepStats, TeacherAnswer, merge_stats
from xtalign.distill.ray.cluster import Cluster
from xtalign.distill.ray.placement import teacher_slots
from xtalign.distill.student.plans import TeacherPlan
from xtalign.distill.student.worker import StudentWorker
from xtalign.distill.teacher.wire import (
    answer_nbytes,
    concat_topk,
    pack_topk,
    row_cuts,
    shard_batch,
    shard_rows,
    shard_topk,
    unpack_topk,
)
from xtalign.distill.teacher.worker import TeacherWorker
from xtalign.distill.workers import load_student, student_worker, teacher_worker
from xtalign.losses import TeacherTopK

__all__ = ["RayBackend", "RayTeacher", "RemoteAnswer", "StudentGroup"]


# --- functions the actors run (module level: Ray ships them by reference) ------------------------------


def _forward_pieces(worker: TeacherWorker, ids: np.ndarray, lengths: np.ndarray, targets: np.ndarray,
                    cuts: list[int]) -> Any:
    """Top-k for the replica's rows, packed for the wire in pieces ``[cuts[j], cuts[j+1])`` (one per ref)."""
    out = worker.forward(ids, lengths, targets)
    pieces = [pack_topk(shard_topk(out, slice(a, b))) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    return pieces[0] if len(pieces) == 1 else pieces


def _likelihood(worker: TeacherWorker, ids: np.ndarray, lengths: np.ndarray, targets: np.ndarray) -> np.ndarray:
    return worker.likelihood(ids, lengths, targets)


@dataclass(eq=False)
class _Rank:
    """A student rank's state inside its actor: the loaded model until `build`, then its worker."""

    cfg: DistillConfig
    loaded: LoadedModel
    device: WorkerDevice
    worker: StudentWorker | None = None


def _load_rank(cfg: DistillConfig) -> _Rank:
    loaded, device = load_student(cfg)
    return _Rank(cfg, loaded, device)


def _rank_info(rank: _Rank) -> dict[str, Any]:
    return {"rows": rank.loaded.rows, "tokenizer": rank.loaded.tokenizer.vocab.fingerprint,
            "device": rank.device.device}


def _init_group(rank: _Rank, address: str, port: int, index: int, world: int) -> None:
    import torch.distributed as dist

    backend = "nccl" if rank.device.device == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://{address}:{port}", rank=index, world_size=world)


def _build_rank(rank: _Rank, plans: list[TeacherPlan]) -> None:
    rank.worker = student_worker(rank.cfg, rank.loaded, rank.device, plans)


def _fetch(share: Any) -> TeacherTopK:
    """A rank's rows of one answer: refs of pieces (fetched here, from the object store) or packed arrays."""
    if isinstance(share, list):
        return concat_topk([unpack_topk(p) for p in ray.get(share)])
    return unpack_topk(share)


def _train_step(rank: _Rank, share: list[tuple[Batch, list[Any]]]) -> StepStats:
    t0 = time.perf_counter()
    micro = [(batch, [_fetch(s) for s in answers]) for batch, answers in share]
    waited = time.perf_counter() - t0
    return replace(_worker(rank).train_on(micro), teacher_wait_s=waited)


def _worker(rank: _Rank) -> StudentWorker:
    assert rank.worker is not None, "the rank was not built"
    return rank.worker


def _token_nll(rank: _Rank, batch: Batch) -> np.ndarray:
    return _worker(rank).token_nll(batch)


def _save(rank: _Rank, run_dir: Path, step: int, state: dict[str, Any], keep_last: int) -> Path:
    return _worker(rank).save_checkpoint(run_dir, step, state, keep_last)


def _restore(rank: _Rank, path: Path) -> dict[str, Any]:
    return _worker(rank).restore(path)


def _export(rank: _Rank, out_dir: Path) -> Path:
    return _worker(rank).export_model(out_dir)


def _projections(rank: _Rank) -> list[tuple[np.ndarray, np.ndarray] | None]:
    return _worker(rank).projections()


def _generate(rank: _Rank, prompts: list[np.ndarray], seeds: list[int], cfg: Any, stop_ids: list[int],
              pad_id: int) -> list[np.ndarray]:
    return _worker(rank).generate(prompts, seeds=seeds, cfg=cfg, stop_ids=stop_ids, pad_id=pad_id)


# --- the driver's side ----------------------------------------------------------------------------------


class RemoteAnswer:
    """A teacher answer in the object store: one ref per row piece ``[start, stop)``, in row order."""

    def __init__(self, pieces: list[tuple[int, int, Any]], nbytes: int, cluster: Cluster) -> None:
        self.pieces, self.nbytes, self._cluster = pieces, nbytes, cluster

    def refs_for(self, rows: slice) -> list[Any]:
        """The refs covering `rows` (pieces are cut at every rank's boundary)."""
        return [ref for a, b, ref in self.pieces if a >= rows.start and b <= rows.stop]

    def topk(self) -> TeacherTopK:
        """The whole answer on the host (what the teacher cache writer needs)."""
        return concat_topk([unpack_topk(p) for p in self._cluster.get([ref for _, _, ref in self.pieces])])


class RayTeacher:
    """A `TeacherCompute` over a teacher's replica actors."""

    def __init__(self, cluster: Cluster, replicas: list[Any], k: int, ranks: int) -> None:
        self.cluster, self.replicas, self.k, self.ranks = cluster, replicas, k, ranks

    def compute(self, side: TeacherSide) -> RemoteAnswer:
        self.cluster.locate()  # the actors have started (a no-op after the first call)
        b = side.ids.shape[0]
        cuts = row_cuts(b, len(self.replicas), self.ranks)
        pieces: list[tuple[int, int, Any]] = []
        for r, actor in enumerate(self.replicas):
            rows = shard_rows(b, r, len(self.replicas))
            local = [c - rows.start for c in cuts if rows.start <= c <= rows.stop]
            refs = actor.execute.options(num_returns=len(local) - 1).remote(
                _forward_pieces, side.ids[rows], side.lengths[rows], side.targets[rows], local)
            refs = refs if isinstance(refs, list) else [refs]
            pieces += [(rows.start + a, rows.start + e, ref) for a, e, ref in zip(local[:-1], local[1:], refs,
                                                                                 strict=True)]
        sent = side.ids.nbytes + side.lengths.nbytes + side.targets.nbytes
        return RemoteAnswer(pieces, sent + answer_nbytes(int(side.ids.size), self.k), self.cluster)

    def likelihood(self, side: TeacherSide) -> np.ndarray:
        self.cluster.locate()
        return self.cluster.get(self.replicas[0].execute.remote(_likelihood, side.ids, side.lengths, side.targets))

    def close(self) -> None:
        return None


def _share(answer: TeacherAnswer, rows: slice) -> Any:
    """What a rank needs of one answer: the refs of its rows, or (answer read here, e.g. from the cache)
    its rows packed for the wire."""
    if isinstance(answer, RemoteAnswer):
        return answer.refs_for(rows)
    return pack_topk(shard_topk(answer.topk(), rows))


class StudentGroup:
    """The student's ranks behind the `Student` protocol."""

    def __init__(self, cluster: Cluster, ranks: list[Any]) -> None:
        self.cluster, self.ranks, self.world = cluster, ranks, len(ranks)

    def _all(self, fn: Any, *args: Any) -> list[Any]:
        return self.cluster.get([r.execute.remote(fn, *args) for r in self.ranks])

    def train_step(self, micro: Sequence[MicroBatch]) -> StepStats:
        refs = []
        for r, actor in enumerate(self.ranks):
            share = []
            for batch, answers in micro:
                rows = shard_rows(batch.size, r, self.world)
                share.append((shard_batch(batch, r, self.world), [_share(a, rows) for a in answers]))
            refs.append(actor.execute.remote(_train_step, share))
        return merge_stats(self.cluster.get(refs))

    def token_nll(self, batch: Batch) -> np.ndarray:
        """Every rank scores the whole batch (FSDP2 needs them all for a forward); rank 0's answer."""
        return self._all(_token_nll, batch)[0]

    def save_checkpoint(self, run_dir: Path, step: int, state: dict[str, Any], keep_last: int) -> Path:
        return self._all(_save, run_dir, step, state, keep_last)[0]

    def restore(self, path: Path) -> dict[str, Any]:
        return self._all(_restore, path)[0]

    def export_model(self, out_dir: Path) -> Path:
        return self._all(_export, out_dir)[0]

    def projections(self) -> list[tuple[np.ndarray, np.ndarray] | None]:
        return self.cluster.get(self.ranks[0].execute.remote(_projections))

    def generate(self, prompts: Sequence[np.ndarray], *, seeds: Sequence[int], cfg: Any, stop_ids: Sequence[int],
                 pad_id: int) -> list[np.ndarray]:
        """Each rank samples its equal share of the rows (seeded per row, so the split does not matter)."""
        shares = np.array_split(np.arange(len(prompts)), self.world)
        refs = [r.execute.remote(_generate, [prompts[i] for i in rows], [seeds[i] for i in rows], cfg, list(stop_ids),
                                 pad_id) for r, rows in zip(self.ranks, shares, strict=True) if rows.size]
        return [row for part in self.cluster.get(refs) for row in part]

    def close(self) -> None:
        return None


class _PendingGroup:
    """Ranks spawned and loaded, before the teachers' plans exist."""

    def __init__(self, cluster: Cluster, ranks: list[Any]) -> None:
        self.cluster, self.ranks = cluster, ranks
        info = cluster.get(ranks[0].execute.remote(_rank_info))
        self.rows, self.tokenizer_fingerprint = int(info["rows"]), str(info["tokenizer"])

    def build(self, plans: Sequence[TeacherPlan]) -> StudentGroup:
        world = len(self.ranks)
        if world > 1:
            master = self.cluster.where[self.ranks[0]].node_ip
            port = _free_port() if master == ray.util.get_node_ip_address() else 29500
            self.cluster.get([r.execute.remote(_init_group, master, port, i, world) for i, r in enumerate(self.ranks)])
        self.cluster.get([r.execute.remote(_build_rank, list(plans)) for r in self.ranks])
        return StudentGroup(self.cluster, self.ranks)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


class RayBackend:
    """Teachers and student ranks as actors in one placement group reserved before anything runs."""

    def __init__(self, cfg: DistillConfig, run_dir: Path | None = None) -> None:
        self.cfg = cfg
        self.cluster = Cluster(cfg, run_dir)

    def teacher(self, index: int, rows: int) -> RayTeacher:
        t = self.cfg.teachers[index]
        replicas = [self.cluster.spawn(slot, "teacher", t.label + (f" replica {r}" if t.num_replicas > 1 else ""),
                                       teacher_worker, index, rows)
                    for r, slot in enumerate(teacher_slots(self.cfg, index))]
        return RayTeacher(self.cluster, replicas, min(t.top_k, rows), self.cfg.student.num_workers)

    def student(self) -> _PendingGroup:
        first = sum(t.num_replicas for t in self.cfg.teachers)
        ranks = [self.cluster.spawn(first + r, "student", f"rank {r}", _load_rank)
                 for r in range(self.cfg.student.num_workers)]
        self.cluster.locate()
        return _PendingGroup(self.cluster, ranks)

    def close(self) -> None:
        self.cluster.close()
