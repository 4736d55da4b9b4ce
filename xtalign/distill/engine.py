"""Starting, resuming and serving runs: `run` (a fresh run), `resume` (from the newest checkpoint, exactly),
`fill_cache` (the teachers alone, into a teacher cache). Each builds the run's parts once (`build`),
writes the run directory's files and hands the parts to `loop.Loop`."""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from xtalign.config import ConfigError
from xtalign.distill.build import RunParts, build_run, build_teachers
from xtalign.distill.checkpoint import latest_checkpoint
from xtalign.distill.config import DistillConfig, config_from_dict, config_to_dict
from xtalign.distill.data.pipeline import DataPipeline
from xtalign.distill.evaluate import teacher_bpb
from xtalign.distill.loop import Loop, StepCallback
from xtalign.distill.metrics import build_sinks
from xtalign.io import save_projection, write_atomic
from xtalign.projection import Projection

__all__ = ["SAFE_OVERRIDES", "fill_cache", "resume", "run"]

log = logging.getLogger(__name__)

# keys that may change on --resume: how and where the run computes, not what it computes
SAFE_OVERRIDES = ("steps", "eval.", "checkpoint.", "log.", "data.workers", "data.prefetch", "threads", "backend",
                  "ray.", "device", "student.num_workers", "student.sharding", "student.num_gpus", "student.num_cpus",
                  "student.resources", "teachers.*.num_replicas", "teachers.*.num_gpus", "teachers.*.num_cpus",
                  "teachers.*.resources")


def prepare_run_dir(run_dir: Path, cfg: DistillConfig) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(run_dir / "config.json", json.dumps(config_to_dict(cfg), indent=2, sort_keys=True) + "\n")


def write_choices(parts: RunParts, run_dir: Path) -> None:
    rows = {src.label: {"loss": ch.loss, "reason": ch.reason, "projection": meta.source}
            for src, ch, meta in zip(parts.sources, parts.choices, parts.plans_meta, strict=True)}
    write_atomic(run_dir / "losses.json", json.dumps(rows, indent=2) + "\n")


def _clear_previous_run(run_dir: Path) -> None:
    """A fresh run in a directory the user allowed to overwrite: drop the old run's outputs."""
    for name in ("metrics.jsonl", "eval.jsonl", "summary.json", "losses.json"):
        (run_dir / name).unlink(missing_ok=True)
    for name in ("checkpoints", "export", "tensorboard", "wandb"):
        shutil.rmtree(run_dir / name, ignore_errors=True)


def _save_learned(base: Projection, current: tuple[np.ndarray, np.ndarray], path: Path) -> None:
    """A learned W in the build-projection file format (same fingerprints; its rows' sources kept)."""
    indices, weights = current
    idx, w = np.zeros_like(base.indices), np.zeros_like(base.weights)
    n = min(base.indices.shape[0], indices.shape[0])
    idx[:n], w[:n] = indices[:n], weights[:n]
    save_projection(replace(base, indices=idx.astype(np.int32), weights=w.astype(np.float32),
                            config={**base.config, "learned": True}, stats={**base.stats, "learned": True}), path)
    log.info("wrote learned projection %s", path)


def export_run(parts: RunParts, run_dir: Path) -> dict[str, Any]:
    """The student as a Hugging Face folder, and each learned W in the `build-projection` format."""
    assert parts.student is not None
    out = run_dir / "export"
    written: dict[str, Any] = {"student": str(parts.student.export_model(out))}
    for src, base, current in zip(parts.sources, parts.projections, parts.student.projections(), strict=True):
        if current is None or base is None:
            continue
        path = out / f"projection-{src.label}.safetensors".replace("/", "_")
        _save_learned(base, current, path)
        written[f"projection:{src.label}"] = str(path)
    return written


def _finish(parts: RunParts, run_dir: Path, summary: dict[str, Any]) -> dict[str, Any]:
    summary["exported"] = export_run(parts, run_dir)
    write_atomic(run_dir / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def _drive(parts: RunParts, run_dir: Path, state: dict[str, Any] | None, on_step: StepCallback | None
           ) -> dict[str, Any]:
    state = state or {}
    sinks = build_sinks(run_dir, parts.cfg.log, config_to_dict(parts.cfg), metrics_lines=state.get("metrics_lines", 0),
                        eval_lines=state.get("eval_lines", 0))
    try:
        loop = Loop(parts, run_dir, sinks, start_step=state.get("step", 0), cursor=state.get("cursor", 0),
                    seen=state.get("tokens", 0), on_step=on_step)
        return _finish(parts, run_dir, loop.run())
    finally:
        sinks.close()


def run(cfg: DistillConfig, run_dir: Path, *, on_step: StepCallback | None = None) -> dict[str, Any]:
    """A fresh run into `run_dir` (already checked to be empty or overwritable)."""
    parts = build_run(cfg, run_dir)  # everything is loaded and checked before the directory is touched
    try:
        prepare_run_dir(run_dir, cfg)
        _clear_previous_run(run_dir)
        write_choices(parts, run_dir)
        return _drive(parts, run_dir, None, on_step)
    finally:
        parts.close()


def _safe(key: str) -> bool:
    parts = key.split(".")
    if len(parts) == 3 and parts[0] == "teachers" and parts[1].isdigit():
        key = f"teachers.*.{parts[2]}"
    return any(key == s or (s.endswith(".") and key.startswith(s)) for s in SAFE_OVERRIDES)


def check_resume_overrides(overrides: list[str]) -> None:
    for item in overrides:
        key = item.split("=", 1)[0]
        if not _safe(key):
            allowed = ", ".join(s + "*" if s.endswith(".") else s for s in SAFE_OVERRIDES)
            raise ConfigError(f"--resume keeps the saved config; {key!r} cannot change mid-run (allowed: {allowed})")


def _jsonl_truncate(path: Path, lines: int) -> None:
    """Keep the first `lines` lines of a JSONL file (what the resumed checkpoint had written)."""
    if not path.exists():
        return
    kept = path.read_text(encoding="utf-8").splitlines(keepends=True)[:lines]
    write_atomic(path, "".join(kept))


def resume(run_dir: Path, overrides: list[str], *, on_step: StepCallback | None = None) -> dict[str, Any]:
    """Continue `run_dir` from its newest complete checkpoint with its saved config (+ safe overrides)."""
    check_resume_overrides(overrides)
    saved = run_dir / "config.json"
    if not saved.is_file():
        raise ConfigError(f"--resume {run_dir}: no config.json there; give the directory of an earlier run")
    ckpt_dir = latest_checkpoint(run_dir)
    if ckpt_dir is None:
        raise ConfigError(f"--resume {run_dir}: no complete checkpoint under checkpoints/; nothing to resume")
    cfg = config_from_dict(json.loads(saved.read_text()), overrides)
    parts = build_run(cfg, run_dir)
    try:
        assert parts.student is not None
        state = parts.student.restore(ckpt_dir)
        if state["step"] >= cfg.steps:
            raise ConfigError(f"--resume {run_dir}: already at step {state['step']} of steps={cfg.steps}; "
                              "pass steps=N with a larger N to train further")
        prepare_run_dir(run_dir, cfg)
        _jsonl_truncate(run_dir / "metrics.jsonl", state["metrics_lines"])
        _jsonl_truncate(run_dir / "eval.jsonl", state["eval_lines"])
        log.info("resuming %s at step %d (batch %d)", run_dir, state["step"], state["cursor"])
        return _drive(parts, run_dir, state, on_step)
    finally:
        parts.close()


def fill_cache(cfg: DistillConfig, out: Path, *, on_batch: Callable[[int, int], None] | None = None
               ) -> dict[str, Any]:
    """Run every teacher (where `cfg.backend` puts them: here or in Ray actors) over the batches a `cfg` run
    would see (steps × grad_accum) into `out/<teacher>`, plus each teacher's held-out bits per byte."""
    if not cfg.teachers:
        raise ConfigError("the config has no teachers; nothing to cache")
    cfg = replace(cfg, cache_teachers=str(out), teachers=tuple(replace(t, cache=None) for t in cfg.teachers))
    tp = build_teachers(cfg)
    total = cfg.steps * cfg.grad_accum
    pipe = DataPipeline(tp.corpus, tp.builder, batch_size=cfg.batch_size, seed=cfg.seed, workers=cfg.data.workers,
                        prefetch=cfg.data.prefetch)
    t0 = time.perf_counter()
    ok = False
    try:
        for n in range(total):
            batch = next(pipe)
            for src in tp.sources:
                src.submit(batch)
            if on_batch is not None:
                on_batch(n + 1, total)
        ok = True
    finally:
        pipe.close()
        for src in tp.sources:
            src.close(flush=ok)
    try:
        evals = {src.label: teacher_bpb(src, tok, tp.eval_batches) for src, tok in zip(tp.sources, tp.teacher_toks,
                                                                                       strict=True)}
    finally:
        tp.backend.close()
    return {"batches": total, "seconds": time.perf_counter() - t0, "teachers": {
        src.label: {"dir": str(out / src.label), "forwards": src.forwards, "cache_hits": src.cache_hits,
                    "heldout": evals[src.label]} for src in tp.sources}}
