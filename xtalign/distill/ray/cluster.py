"""The Ray side of a run: connecting to (or starting) a cluster, one placement group reserved up front,
ONE generic actor (`WorkerActor`: it builds its worker from the run config, then runs typed functions
on it through `execute(fn, …)`), and turning an actor's death into one line that names it."""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import ray
import torch
from ray.exceptions import GetTimeoutError, RayActorError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from xtalign.distill.config import DistillConfig, config_from_dict, config_to_dict
from xtalign.distill.errors import PlacementError, WorkerDiedError
from xtalign.distill.ray.placement import bundles, check_feasible, show_bundle
from xtalign.io import write_atomic

__all__ = ["Cluster", "Where", "WorkerActor", "start_ray"]

log = logging.getLogger(__name__)

W = TypeVar("W")
R = TypeVar("R")


@dataclass(frozen=True)
class Where:
    """Where an actor runs, for messages and `workers.json`."""

    kind: str
    label: str
    node_ip: str
    pid: int
    hostname: str


def _keep_priority() -> None:
    """Ray starts workers at nice 15, so on a busy machine a training actor gets a fraction of the CPU a
    local run would; where the OS lets us, run at the driver's priority (nice 0)."""
    try:
        if os.getpriority(os.PRIO_PROCESS, 0) > 0:
            os.setpriority(os.PRIO_PROCESS, 0, 0)
    except OSError:
        log.debug("cannot raise this actor's priority; it keeps Ray's nice value")


@ray.remote(max_restarts=0)
class WorkerActor:
    """One worker in its own process: `setup(cfg, *args)` builds it, `execute(fn, *a)` runs `fn(worker, *a)`."""

    def __init__(self, kind: str, label: str, cfg_json: str, threads: int,
                 setup: Callable[..., Any], *args: Any) -> None:
        _keep_priority()
        torch.set_num_threads(max(1, threads))
        self.where = Where(kind, label, ray.util.get_node_ip_address(), os.getpid(), socket.gethostname())
        self.worker = setup(config_from_dict(json.loads(cfg_json)), *args)

    def location(self) -> Where:
        return self.where

    def execute(self, fn: Callable[..., R], *args: Any, **kwargs: Any) -> R:
        return fn(self.worker, *args, **kwargs)


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


def _reason(exc: Exception) -> str:
    """One line on why an actor died: the error its constructor raised, else Ray's first line."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    if "creation task" in lines[0]:
        return f"its start failed: {lines[-1][:300]}"
    return lines[0].split(" (pid=")[0][:200]


def _total(wanted: list[tuple[str, dict[str, float]]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for _, b in wanted:
        for k, v in b.items():
            out[k] = out.get(k, 0.0) + v
    return out


def _threads(cfg: DistillConfig, num_cpus: float) -> int:
    """torch threads in an actor: the run's `threads` if set (bitwise parity with `local`), else its CPUs."""
    return int(cfg.threads) if cfg.threads else max(1, int(num_cpus))


class Cluster:
    """A run's Ray cluster connection, placement group and actors; `close` removes them (and Ray itself
    when the run started it)."""

    def __init__(self, cfg: DistillConfig, run_dir: Path | None) -> None:
        self.cfg, self.run_dir = cfg, run_dir
        self.cfg_json = json.dumps(config_to_dict(cfg))
        self.owns_ray = start_ray(cfg)
        self.names: dict[Any, tuple[str, str]] = {}  # every actor spawned: (kind, label)
        self.where: dict[Any, Where] = {}  # those located so far
        self.wanted = bundles(cfg)
        check_feasible(self.wanted, [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")])
        self.pg = placement_group([b for _, b in self.wanted], strategy=cfg.ray.placement_strategy)
        try:
            ray.get(self.pg.ready(), timeout=cfg.ray.placement_timeout_s)
        except GetTimeoutError:
            self._remove_pg()
            raise PlacementError(f"the Ray cluster did not free {show_bundle(_total(self.wanted))} within "
                                 f"{cfg.ray.placement_timeout_s:g} s (available now: "
                                 f"{show_bundle(ray.available_resources())}); other jobs hold them, or raise "
                                 "ray.placement_timeout_s") from None

    def spawn(self, slot: int, kind: str, label: str, setup: Callable[..., Any], *args: Any) -> Any:
        """A `WorkerActor` in bundle `slot`, starting (`locate` waits for it; its death is reported by name)."""
        bundle = self.wanted[slot][1]
        extra = {k: v for k, v in bundle.items() if k not in ("CPU", "GPU")}
        strategy = PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=slot)
        actor = WorkerActor.options(num_cpus=bundle.get("CPU", 0.0), num_gpus=bundle.get("GPU", 0.0),
                                    resources=extra or None, scheduling_strategy=strategy,
                                    ).remote(kind, label, self.cfg_json, _threads(self.cfg, bundle.get("CPU", 1.0)),
                                             setup, *args)
        self.names[actor] = (kind, label)
        return actor

    def locate(self) -> None:
        """Wait until every spawned actor has started (their models loaded); record where they run."""
        todo = [a for a in self.names if a not in self.where]
        for actor in todo:
            try:
                self.where[actor] = ray.get(actor.location.remote())
            except RayActorError as exc:
                kind, label = self.names[actor]
                raise WorkerDiedError(f"{kind} actor {label} died: {_reason(exc)}") from None
        self._write_workers()

    def get(self, refs: Any, timeout: float | None = None) -> Any:
        """`ray.get`, with an actor's death (this run's or one its call waited on) as one `WorkerDiedError`."""
        try:
            return ray.get(refs, timeout=timeout)
        except RayActorError as exc:
            raise WorkerDiedError(f"{self._describe_dead()} died: {_reason(exc)}") from None

    def _describe_dead(self) -> str:
        for actor, (kind, label) in list(self.names.items()):
            try:
                ray.get(actor.location.remote(), timeout=5)
            except (RayActorError, GetTimeoutError):
                w = self.where.get(actor)
                return f"{kind} actor {label}" + (f" on node {w.node_ip} ({w.hostname}, pid {w.pid})" if w else "")
        return "an actor"

    def _write_workers(self) -> None:
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            rows = [asdict(w) for w in self.where.values()]
            write_atomic(self.run_dir / "workers.json", json.dumps(rows, indent=2) + "\n")

    def _remove_pg(self) -> None:
        try:
            remove_placement_group(self.pg)
        except (RayActorError, ValueError, RuntimeError) as exc:  # already gone, or Ray shutting down
            log.debug("placement group removal: %s", exc)

    def close(self) -> None:
        for actor in list(self.names):
            ray.kill(actor, no_restart=True)
        self.names.clear()
        self.where.clear()
        self._remove_pg()
        if self.owns_ray:
            ray.shutdown()
