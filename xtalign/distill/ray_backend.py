"""`backend: ray`: the same workers as `backend: local`, as Ray actors on their own devices and nodes.

Each teacher is a `TeacherActor` (a `TeacherWorker` inside); the student is `student.num_workers` ranks of
`StudentRank` (a `StudentWorker` inside, DDP over gloo on CPU or NCCL on GPU), each fed an equal share
of every batch. The loop is the local one: it sees `RayTeacherSource`s and a `StudentGroup` with the
same methods as their local counterparts. Teachers get token ids and return top-k only (numpy, through
the object store). A placement group reserves every actor's resources before the first step, and an
actor that dies stops the run with one line naming it and its node.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray.exceptions import GetTimeoutError, RayActorError
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from xtalign.config import ConfigError, to_dict
from xtalign.distill.batch import Batch, TeacherSide
from xtalign.distill.config import DistillConfig
from xtalign.distill.placement import PlacementError, bundles, check_feasible, show_bundle
from xtalign.distill.sources import Pending, TeacherSource
from xtalign.distill.transport import (
    concat_topk,
    pack_topk,
    shard_batch,
    shard_rows,
    shard_topk,
    topk_nbytes,
    unpack_topk,
)

__all__ = ["PlacementError", "StudentGroup", "WorkerDiedError", "build_parts"]

log = logging.getLogger(__name__)


class WorkerDiedError(RuntimeError):
    """A teacher actor or student rank died mid-run."""


@dataclass(frozen=True)
class Where:
    """Where an actor runs, for messages and `workers.json`."""

    kind: str
    label: str
    node_ip: str
    pid: int
    hostname: str


def _where(kind: str, label: str) -> Where:
    return Where(kind, label, ray.util.get_node_ip_address(), os.getpid(), socket.gethostname())


def _threads(cfg: DistillConfig, num_cpus: float) -> int:
    """torch threads in an actor: the run's `threads` if set (bitwise parity with `local`), else its CPUs."""
    return int(cfg.threads) if cfg.threads else max(1, int(num_cpus))


def _keep_priority() -> None:
    """Ray starts workers at nice 15, so on a busy machine a training actor gets a fraction of the CPU a
    local run would; where the OS lets us, run at the driver's priority (nice 0)."""
    try:
        if os.getpriority(os.PRIO_PROCESS, 0) > 0:
            os.setpriority(os.PRIO_PROCESS, 0, 0)
    except OSError:
        log.debug("cannot raise this actor's priority; it keeps Ray's nice value")


def _device(num_gpus: float) -> str:
    return "cuda" if num_gpus > 0 else "cpu"


@ray.remote(max_restarts=0)
class TeacherActor:
    """One teacher model in its own process: top-k answers for token ids."""

    def __init__(self, cfg_json: str, index: int, rows: int) -> None:
        import torch

        from xtalign.distill.config import config_from_dict
        from xtalign.distill.setup import make_teacher_worker

        _keep_priority()
        cfg = config_from_dict(json.loads(cfg_json))
        t = cfg.teachers[index]
        torch.set_num_threads(_threads(cfg, t.num_cpus))
        self.where = _where("teacher", t.label)
        device = _device(t.num_gpus)
        autocast = torch.bfloat16 if device == "cuda" and cfg.precision in ("auto", "bf16") else None
        self.worker = make_teacher_worker(cfg, t, index, device, autocast, rows)()
        self._eval: Any = None

    def location(self) -> Where:
        return self.where

    def forward(self, ids: np.ndarray, lengths: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
        return pack_topk(self.worker.forward(ids, lengths, targets))

    def likelihood(self, ids: np.ndarray, lengths: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
        from xtalign.distill.teacher import TeacherWorker

        if self._eval is None:
            w = self.worker
            self._eval = TeacherWorker(w.loaded, top_k=1, temperature=1.0, head_slice=w.head_slice,
                                       device=str(w.device))
        return pack_topk(self._eval.forward(ids, lengths, targets))


@ray.remote(max_restarts=0)
class StudentRank:
    """One data-parallel rank of the student: loads the model, then (after `build`) trains its share."""

    def __init__(self, cfg_json: str, rank: int, world: int) -> None:
        import torch

        from xtalign.distill.config import config_from_dict
        from xtalign.distill.setup import load_student

        _keep_priority()
        self.cfg = config_from_dict(json.loads(cfg_json))
        s = self.cfg.student
        torch.set_num_threads(_threads(self.cfg, s.num_cpus))
        self.rank, self.world = rank, world
        self.device = _device(s.num_gpus)
        self.where = _where("student", f"rank {rank}")
        self.loaded = load_student(self.cfg, self.device)
        self.worker: Any = None

    def location(self) -> Where:
        return self.where

    def info(self) -> dict[str, Any]:
        return {"rows": self.loaded.rows, "tokenizer": self.loaded.tokenizer.vocab.fingerprint}

    def init_group(self, address: str, port: int) -> None:
        import torch.distributed as dist

        backend = "nccl" if self.device == "cuda" else "gloo"
        dist.init_process_group(backend, init_method=f"tcp://{address}:{port}", rank=self.rank,
                                world_size=self.world)

    def build(self, plans: list[Any]) -> None:
        import torch

        from xtalign.distill.setup import student_worker

        autocast = torch.bfloat16 if self.device == "cuda" and self.cfg.precision in ("auto", "bf16") else None
        self.worker = student_worker(self.cfg, self.loaded, plans, self.device, autocast)

    def train_step(self, micro: list[tuple[Batch, list[dict[str, Any]]]]) -> dict[str, Any]:
        return self.worker.train_step([(b, [unpack_topk(p) for p in outs]) for b, outs in micro])

    def token_nll(self, batch: Batch) -> np.ndarray:
        return self.worker.token_nll(batch)

    def save_checkpoint(self, run_dir: str, step: int, state: dict[str, Any], keep_last: int) -> str:
        return self.worker.save_checkpoint(run_dir, step, state, keep_last)

    def restore(self, path: str) -> dict[str, Any]:
        return self.worker.restore(path)

    def export_model(self, out_dir: str) -> str:
        return self.worker.export_model(out_dir)

    def projections(self) -> list[Any]:
        return self.worker.projections()

    def peak_memory_mb(self) -> float:
        return self.worker.peak_memory_mb()


class Actors:
    """Every actor of a run with where it lives: `get` turns an actor's death into one clear line."""

    def __init__(self) -> None:
        self.where: dict[Any, Where] = {}

    def get(self, refs: Any, actor: Any | list[Any], timeout: float | None = None) -> Any:
        try:
            return ray.get(refs, timeout=timeout)
        except RayActorError as exc:
            dead = self._dead(actor if isinstance(actor, list) else [actor])
            w = self.where.get(dead)
            who = f"{w.kind} actor {w.label} on node {w.node_ip} ({w.hostname}, pid {w.pid})" if w else "an actor"
            raise WorkerDiedError(f"{who} died: {_reason(exc)}") from None

    def _dead(self, actors: list[Any]) -> Any:
        for a in actors:
            try:
                ray.get(a.location.remote(), timeout=5)
            except (RayActorError, GetTimeoutError):
                return a
        return actors[0]


def _reason(exc: Exception) -> str:
    """One line on why an actor died: the error its constructor raised, else Ray's first line."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    if "creation task" in lines[0]:
        return f"its start failed: {lines[-1][:300]}"
    return lines[0].split(" (pid=")[0][:200]


class RayTeacherSource(TeacherSource):
    """A `TeacherSource` whose model lives in `TeacherActor`s (one per replica, each answering an equal share
    of a batch's rows); cache reads and writes stay here."""

    def __init__(self, base: TeacherSource, actors: list[Any], registry: Actors) -> None:
        super().__init__(base.label, base.index, lambda: None, reader=base.reader, writer=base.writer)
        self.cache_path = base.cache_path
        self.replicas, self.registry = actors, registry

    @property
    def actor(self) -> Any:
        return self.replicas[0]

    @property
    def loaded(self) -> bool:
        return self.forwards > 0

    def _compute(self, batch: Batch, side: TeacherSide) -> Pending:
        n = len(self.replicas)
        parts = [shard_rows(side.ids.shape[0], r, n) for r in range(n)]
        refs = [a.forward.remote(side.ids[p], side.lengths[p], side.targets[p]) for a, p in zip(self.replicas, parts,
                                                                                                strict=True)]
        sent = side.ids.nbytes + side.lengths.nbytes + side.targets.nbytes  # token ids out, top-k back

        def resolve() -> Any:
            outs = [unpack_topk(x) for x in self.registry.get(refs, self.replicas)]
            out = concat_topk(outs)
            pending.nbytes = sent + topk_nbytes(out)
            return self._store(batch, side, out)

        pending = Pending(resolve=resolve)
        return pending

    def likelihood(self, side: TeacherSide) -> Any:
        ref = self.actor.likelihood.remote(side.ids, side.lengths, side.targets)
        return unpack_topk(self.registry.get(ref, self.actor))


class StudentGroup:
    """The student's ranks behind the `StudentWorker` interface the loop uses."""

    def __init__(self, ranks: list[Any], actors: Actors) -> None:
        self.ranks, self.actors = ranks, actors
        self.world = len(ranks)

    def _all(self, refs: list[Any]) -> list[Any]:
        return self.actors.get(refs, self.ranks)

    def train_step(self, micro: list[tuple[Batch, list[Any]]]) -> dict[str, Any]:
        refs = []
        for r, rank in enumerate(self.ranks):
            share = []
            for batch, outs in micro:
                rows = shard_rows(batch.size, r, self.world)
                share.append((shard_batch(batch, r, self.world), [pack_topk(shard_topk(o, rows)) for o in outs]))
            refs.append(rank.train_step.remote(share))
        return merge_rank_stats(self._all(refs))

    def token_nll(self, batch: Batch) -> np.ndarray:
        """Every rank scores the whole batch (FSDP2 needs them all for a forward); rank 0's answer."""
        return self._all([r.token_nll.remote(batch) for r in self.ranks])[0]

    def save_checkpoint(self, run_dir: Path, step: int, state: dict[str, Any], keep_last: int) -> str:
        refs = [r.save_checkpoint.remote(str(run_dir), step, state, keep_last) for r in self.ranks]
        return self._all(refs)[0]

    def restore(self, path: Path) -> dict[str, Any]:
        return self._all([r.restore.remote(str(path)) for r in self.ranks])[0]

    def export_model(self, out_dir: Path) -> str:
        return self._all([r.export_model.remote(str(out_dir)) for r in self.ranks])[0]

    def projections(self) -> list[Any]:
        return self.actors.get(self.ranks[0].projections.remote(), self.ranks[0])

    def peak_memory_mb(self) -> float:
        return max(self._all([r.peak_memory_mb.remote() for r in self.ranks]))


def merge_rank_stats(per: list[dict[str, Any]]) -> dict[str, Any]:
    """Ranks' step metrics → one: means of the losses and rates (ranks hold equal shares); the grad norm
    and lr are the same on every rank after DDP's all-reduce."""
    if len(per) == 1:
        return per[0]
    out = dict(per[0])
    n = len(per)
    for key in ("loss", "ce", "kd_total", "loss_scale", "accuracy"):
        if key in out:
            out[key] = sum(p[key] for p in per) / n
    for key in ("kd", "teacher_weights", "agreement"):
        if key in out:
            out[key] = [sum(p[key][i] for p in per) / n for i in range(len(out[key]))]
    return out


# --- starting a run on Ray ---------------------------------------------------------------------------


def _node_resources() -> list[dict[str, float]]:
    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


def start_ray(cfg: DistillConfig) -> bool:
    """Connect to (or start) Ray; True when this run started it and must shut it down."""
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if cfg.ray.address is None and cfg.ray.num_cpus is not None:
        kwargs["num_cpus"] = cfg.ray.num_cpus
    if cfg.ray.address is None:
        os.environ.setdefault("RAY_worker_niceness", "0")  # see _keep_priority
    ray.init(address=cfg.ray.address or "local", **kwargs)  # no address: a cluster of this run's own
    return True


def reserve(cfg: DistillConfig) -> tuple[PlacementGroup, list[tuple[str, dict[str, float]]]]:
    wanted = bundles(cfg)
    check_feasible(wanted, _node_resources())
    pg = placement_group([b for _, b in wanted], strategy=cfg.ray.placement_strategy)
    try:
        ray.get(pg.ready(), timeout=cfg.ray.placement_timeout_s)
    except GetTimeoutError:
        remove_placement_group(pg)
        avail = ray.available_resources()
        raise PlacementError(f"the Ray cluster did not free {show_bundle(_sum(wanted))} within "
                             f"{cfg.ray.placement_timeout_s:g} s (available now: {show_bundle(avail)}); other jobs "
                             "hold them, or raise ray.placement_timeout_s") from None
    return pg, wanted


def _sum(wanted: list[tuple[str, dict[str, float]]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for _, b in wanted:
        for k, v in b.items():
            out[k] = out.get(k, 0.0) + v
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def _spawn(cls: Any, pg: PlacementGroup, index: int, bundle: dict[str, float], *args: Any) -> Any:
    extra = {k: v for k, v in bundle.items() if k not in ("CPU", "GPU")}
    return cls.options(num_cpus=bundle.get("CPU", 0.0), num_gpus=bundle.get("GPU", 0.0), resources=extra or None,
                       scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=index),
                       ).remote(*args)


class RayRun:
    """Owns a run's actors and placement group; `close` shuts them down (and Ray, if the run started it)."""

    def __init__(self, cfg: DistillConfig) -> None:
        self.owns_ray = start_ray(cfg)
        self.actors = Actors()
        self.pg, self.wanted = reserve(cfg)

    def spawn(self, cls: Any, index: int, *args: Any) -> Any:
        actor = _spawn(cls, self.pg, index, self.wanted[index][1], *args)
        return actor

    def locate(self, actors: list[Any]) -> None:
        found = self.actors.get([a.location.remote() for a in actors], actors)
        self.actors.where.update(zip(actors, found, strict=True))

    def close(self) -> None:
        for actor in list(self.actors.where):
            ray.kill(actor, no_restart=True)
        self.actors.where.clear()
        try:
            remove_placement_group(self.pg)
        except Exception:  # noqa: BLE001 - best effort at shutdown
            pass
        if self.owns_ray:
            ray.shutdown()


def _teacher_sources(cfg: DistillConfig, run: RayRun, bases: list[TeacherSource], rows: list[int],
                     cfg_json: str) -> list[RayTeacherSource]:
    out, slot = [], 0
    for i, (t, base) in enumerate(zip(cfg.teachers, bases, strict=True)):
        replicas = [run.spawn(TeacherActor, slot + r, cfg_json, i, rows[i]) for r in range(t.num_replicas)]
        slot += t.num_replicas
        out.append(RayTeacherSource(base, replicas, run.actors))
    return out


def _student_group(cfg: DistillConfig, run: RayRun, cfg_json: str) -> StudentGroup:
    n, first = cfg.student.num_workers, sum(t.num_replicas for t in cfg.teachers)
    ranks = [run.spawn(StudentRank, first + r, cfg_json, r, n) for r in range(n)]
    return StudentGroup(ranks, run.actors)


def build_parts(cfg: DistillConfig, run_dir: Path | None = None) -> Any:
    """The `setup.Parts` of a Ray run: teachers and student ranks as actors, placed before anything runs."""
    from xtalign.distill import setup

    tp = setup.build_teacher_parts(cfg)
    cfg_json = json.dumps(to_dict(cfg))
    run = RayRun(cfg)
    try:
        rows = [setup.teacher_rows(t, tok) for t, tok in zip(cfg.teachers, tp.teacher_toks, strict=True)]
        sources = _teacher_sources(cfg, run, tp.sources, rows, cfg_json)
        group = _student_group(cfg, run, cfg_json)
        run.locate([a for s in sources for a in s.replicas] + group.ranks)
        info = run.actors.get(group.ranks[0].info.remote(), group.ranks[0])
        if info["tokenizer"] != tp.student_tok.vocab.fingerprint:
            raise ConfigError(f"student model {cfg.student.model} does not come with tokenizer {tp.student_tok.name}; "
                              "drop student.tokenizer or give the model's own")
        built = [setup.plan_teacher(t, ch, info["rows"], tp.student_tok, tok)
                 for t, ch, tok in zip(cfg.teachers, tp.choices, tp.teacher_toks, strict=True)]
        plans = [b[0] for b in built]
        if group.world > 1:
            master = run.actors.where[group.ranks[0]].node_ip
            port = _free_port() if master == ray.util.get_node_ip_address() else 29500
            run.actors.get([r.init_group.remote(master, port) for r in group.ranks], group.ranks)
        run.actors.get([r.build.remote(plans) for r in group.ranks], group.ranks)
    except BaseException:
        run.close()
        raise
    if run_dir is not None:
        _write_workers(run_dir, run)
    return setup.Parts(device=tp.device, autocast=tp.autocast, student_tok=tp.student_tok,
                       teacher_toks=tp.teacher_toks, choices=tp.choices, plans=plans,
                       plans_meta=[b[1] for b in built], projections=[b[2] for b in built], corpus=tp.corpus,
                       builder=tp.builder, student=group, student_loaded=None, sources=sources,
                       eval_batches=tp.eval_batches, close=run.close)


def _write_workers(run_dir: Path, run: RayRun) -> None:
    from xtalign.cli.common import write_atomic

    run_dir.mkdir(parents=True, exist_ok=True)
    rows = [asdict(w) for w in run.actors.where.values()]
    write_atomic(run_dir / "workers.json", json.dumps(rows, indent=2) + "\n")
