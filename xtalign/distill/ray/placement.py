"""What a Ray run reserves: one bundle of resources per actor, checked against the cluster before
anything is placed (pure functions; no Ray here)."""

from __future__ import annotations

from xtalign.distill.config import DistillConfig
from xtalign.distill.errors import PlacementError

__all__ = ["PlacementError", "bundles", "check_feasible", "show_bundle", "teacher_slots"]


def _bundle(num_cpus: float, num_gpus: float, resources: dict[str, float] | None) -> dict[str, float]:
    b = {"CPU": float(num_cpus)} if num_cpus else {}
    if num_gpus:
        b["GPU"] = float(num_gpus)
    b.update({k: float(v) for k, v in (resources or {}).items()})
    return b or {"CPU": 0.01}  # Ray refuses an empty bundle


def bundles(cfg: DistillConfig) -> list[tuple[str, dict[str, float]]]:
    """(who, resources) of every actor: the teachers first, then the student ranks."""
    out = [(f"teacher {t.label}" + (f" replica {r}" if t.num_replicas > 1 else ""),
            _bundle(t.num_cpus, t.num_gpus, t.resources)) for t in cfg.teachers for r in range(t.num_replicas)]
    s = cfg.student
    out += [(f"student rank {r}", _bundle(s.num_cpus, s.num_gpus, s.resources)) for r in range(s.num_workers)]
    return out


def teacher_slots(cfg: DistillConfig, index: int) -> range:
    """The bundle indices of teacher `index`'s replicas (teachers come first, in config order)."""
    first = sum(t.num_replicas for t in cfg.teachers[:index])
    return range(first, first + cfg.teachers[index].num_replicas)


def check_feasible(wanted: list[tuple[str, dict[str, float]]], nodes: list[dict[str, float]]) -> None:
    """Refuse at once what no placement could satisfy: totals above the cluster's, or one actor's
    resources above every single node's. (What is merely busy is left to the placement group's wait.)"""
    total: dict[str, float] = {}
    for node in nodes:
        for k, v in node.items():
            total[k] = total.get(k, 0.0) + v
    need: dict[str, float] = {}
    for _, b in wanted:
        for k, v in b.items():
            need[k] = need.get(k, 0.0) + v
    short = [f"{v:g} {k} (the cluster has {total.get(k, 0.0):g})" for k, v in sorted(need.items())
             if v > total.get(k, 0.0) + 1e-9]
    if short:
        raise PlacementError(f"the Ray cluster cannot hold this run: it needs {', '.join(short)}; lower num_gpus / "
                             "num_cpus / resources in the config or add nodes (`ray start --address …`)")
    for who, b in wanted:
        if not any(all(node.get(k, 0.0) + 1e-9 >= v for k, v in b.items()) for node in nodes):
            raise PlacementError(f"no single node of the Ray cluster can hold {who} ({show_bundle(b)}); "
                                 "lower its num_gpus / num_cpus / resources or add a node that has them")


def show_bundle(b: dict[str, float]) -> str:
    return ", ".join(f"{v:g} {k}" for k, v in sorted(b.items()))
