"""The distillation loop: data → teachers → student, with metrics, eval, checkpoints, export.

The loop talks to its workers through a small interface only — `TeacherSource.submit(batch).result()` and
the student's `train_step` / `token_nll` / `save_checkpoint` / `restore` / `export_model` — so the Ray
backend puts the same workers in actors without a second loop. `Session` builds everything from a config;
`run` and `resume` drive it.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xtalign.config import ConfigError, to_dict
from xtalign.distill.config import DistillConfig

__all__ = ["Session", "run"]

log = logging.getLogger(__name__)

StepCallback = Callable[[dict[str, Any]], None]


@dataclass
class Timer:
    """Seconds spent per phase within one optimiser step."""

    parts: dict[str, float] = field(default_factory=lambda: {"data": 0.0, "teacher": 0.0, "transfer": 0.0,
                                                               "student": 0.0})

    def add(self, key: str, since: float) -> float:
        now = time.perf_counter()
        self.parts[key] += now - since
        return now


class Session:
    """Everything one run needs, built from a config (nothing runs until `run`)."""

    def __init__(self, cfg: DistillConfig, run_dir: Path) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        if cfg.backend == "ray":
            from xtalign.distill.ray_backend import build_parts
        else:
            from xtalign.distill.setup import build_parts
        self.parts = build_parts(cfg, run_dir)

    def __getattr__(self, name: str) -> Any:
        """The run's parts (`student`, `sources`, `device`, `corpus`, …) read straight from `setup.Parts`."""
        if name == "parts":  # not built yet: avoid recursing
            raise AttributeError(name)
        return getattr(self.parts, name)

    # --- eval ------------------------------------------------------------------------------------------

    def student_bits_per_byte(self) -> dict[str, Any]:
        from xtalign.distill.evaluate import student_bpb

        return student_bpb(self.student, self.student_tok, self.eval_batches)

    def teacher_bits_per_byte(self, i: int) -> dict[str, Any] | None:
        from xtalign.distill.evaluate import teacher_bpb

        return teacher_bpb(self.sources[i], self.teacher_toks[i], self.eval_batches)

    def close(self) -> None:
        """Stop remote workers (Ray actors); local workers need nothing."""
        if self.parts.close is not None:
            self.parts.close()


def _jsonl_truncate(path: Path, lines: int) -> None:
    """Keep the first `lines` lines of a JSONL file (what the resumed checkpoint had written)."""
    if not path.exists():
        return
    kept = path.read_text(encoding="utf-8").splitlines(keepends=True)[:lines]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(kept), encoding="utf-8")
    tmp.replace(path)


class _Writer:
    """Appends JSON lines and counts them (the count goes into every checkpoint)."""

    def __init__(self, path: Path, lines: int = 0) -> None:
        self.path = path
        self.lines = lines

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=False) + "\n")
        self.lines += 1


def _step_record(step: int, stats: dict[str, Any], timer: Timer, tokens: int, seen: int, wall: float,
                 labels: list[str], peak: float) -> dict[str, Any]:
    rec: dict[str, Any] = {"step": step, "tokens": seen, "loss": stats["loss"], "ce": stats["ce"]}
    if "kd" in stats:
        rec["kd"] = dict(zip(labels, stats["kd"], strict=True))
        rec["kd_total"] = stats["kd_total"]
        rec["loss_scale"] = stats["loss_scale"]
        rec["teacher_weights"] = dict(zip(labels, stats["teacher_weights"], strict=True))
    rec.update(lr=stats["lr"], grad_norm=stats["grad_norm"], accuracy=stats["accuracy"],
               agreement=dict(zip(labels, stats["agreement"], strict=True)),
               tokens_per_s=tokens / wall if wall > 0 else 0.0, step_s=wall,
               time={k: round(v, 6) for k, v in timer.parts.items()}, peak_memory_mb=round(peak, 1))
    return rec


def _eval_record(step: int, who: str, result: dict[str, Any]) -> dict[str, Any]:
    return {"step": step, "model": who, **result}


class Loop:
    """Drives a `Session`: the step loop, eval, checkpoints and the final export."""

    def __init__(self, session: Session, *, start_step: int = 0, cursor: int = 0, seen: int = 0,
                 metrics_lines: int = 0, eval_lines: int = 0, on_step: StepCallback | None = None) -> None:
        self.s = session
        self.step = start_step
        self.cursor = cursor
        self.seen = seen
        self.metrics = _Writer(session.run_dir / "metrics.jsonl", metrics_lines)
        self.evals = _Writer(session.run_dir / "eval.jsonl", eval_lines)
        self.on_step = on_step
        self._ahead: deque[tuple[Any, list[Any]]] = deque()  # micro-batches whose teacher work is under way

    def _eval_student(self) -> dict[str, Any]:
        res = self.s.student_bits_per_byte()
        self.evals.write(_eval_record(self.step, "student", res))
        return res

    def _eval_teachers(self) -> None:
        for i, src in enumerate(self.s.sources):
            res = self.s.teacher_bits_per_byte(i)
            if res is not None:
                self.evals.write(_eval_record(self.step, f"teacher:{src.label}", res))

    def _fetch(self, it: Any, timer: Timer) -> tuple[Any, list[Any]]:
        """The next micro-batch, with every teacher's work on it submitted (a remote teacher starts now)."""
        t = time.perf_counter()
        batch = next(it)
        t = timer.add("data", t)
        handles = [src.submit(batch) for src in self.s.sources]
        timer.add("teacher", t)
        return batch, handles

    def _collect(self, handles: list[Any], timer: Timer) -> tuple[list[Any], int]:
        import torch

        t = time.perf_counter()
        outs = [h.result() for h in handles]
        t = timer.add("teacher", t)
        sent = sum(h.nbytes for h in handles)
        outs = [o.to(self.s.device) for o in outs]
        if self.s.device.type == "cuda":
            torch.cuda.synchronize()
        timer.add("transfer", t)
        return outs, sent

    def _one_step(self, it: Any) -> dict[str, Any]:
        import torch

        cfg, timer = self.s.cfg, Timer()
        t0 = time.perf_counter()
        micro, tokens, sent = [], 0, 0
        for _ in range(cfg.grad_accum):
            batch, handles = self._ahead.popleft() if self._ahead else self._fetch(it, timer)
            outs, nbytes = self._collect(handles, timer)
            micro.append((batch, outs))
            tokens += batch.student_tokens
            sent += nbytes
        if cfg.ray.async_teachers and self.step + 1 < cfg.steps:  # teachers start on the next step now
            self._ahead.extend(self._fetch(it, timer) for _ in range(cfg.grad_accum))
        t = time.perf_counter()
        stats = self.s.student.train_step(micro)
        if self.s.device.type == "cuda":
            torch.cuda.synchronize()
        timer.add("student", t)
        self.cursor += cfg.grad_accum
        self.seen += tokens
        self.step += 1
        labels = [src.label for src in self.s.sources]
        rec = _step_record(self.step, stats, timer, tokens, self.seen, time.perf_counter() - t0, labels,
                           self.s.student.peak_memory_mb())
        rec["teacher_bytes"] = sent
        self.metrics.write(rec)
        return rec

    def _resume_hint(self) -> str:
        from xtalign.distill.checkpoint import latest_checkpoint

        last = latest_checkpoint(self.s.run_dir)
        where = f"the last complete checkpoint is {last.name}" if last else "no checkpoint was complete yet"
        return f"stopped at step {self.step}, {where}; continue with `xtalign distill --resume {self.s.run_dir}`"

    def checkpoint(self) -> Path:
        state = {"step": self.step, "cursor": self.cursor, "tokens": self.seen, "metrics_lines": self.metrics.lines,
                 "eval_lines": self.evals.lines}
        return Path(self.s.student.save_checkpoint(self.s.run_dir, self.step, state, self.s.cfg.checkpoint.keep_last))

    def run(self) -> dict[str, Any]:
        from xtalign.distill.data import DataPipeline

        cfg = self.s.cfg
        if self.step == 0:
            self._eval_teachers()
            self._eval_student()
        pipe = DataPipeline(self.s.corpus, self.s.builder, batch_size=cfg.batch_size, seed=cfg.seed,
                            start_batch=self.cursor, workers=cfg.data.workers, prefetch=cfg.data.prefetch)
        last: dict[str, Any] = {}
        try:
            it = iter(pipe)
            while self.step < cfg.steps:
                try:
                    last = self._one_step(it)
                except RuntimeError as exc:
                    if type(exc).__name__ == "WorkerDiedError":
                        raise type(exc)(f"{exc}; {self._resume_hint()}") from None
                    raise
                if self.on_step is not None:
                    self.on_step(last)
                if cfg.eval.every and self.step % cfg.eval.every == 0 and self.step < cfg.steps:
                    self._eval_student()
                if cfg.checkpoint.every and self.step % cfg.checkpoint.every == 0 and self.step < cfg.steps:
                    self.checkpoint()
        finally:
            pipe.close()
            for src in self.s.sources:
                src.close()
        final = self._eval_student()
        self.checkpoint()
        return {"last_step": last, "final_eval": final}


def prepare_run_dir(run_dir: Path, cfg: DistillConfig) -> None:
    from xtalign.cli.common import write_atomic

    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(run_dir / "config.json", json.dumps(to_dict(cfg), indent=2, sort_keys=True) + "\n")


def write_choices(session: Session) -> None:
    from xtalign.cli.common import write_atomic

    rows = {src.label: {"loss": ch.loss, "reason": ch.reason, "projection": plan.source}
            for src, ch, plan in zip(session.sources, session.choices, session.plans_meta, strict=True)}
    write_atomic(session.run_dir / "losses.json", json.dumps(rows, indent=2) + "\n")


def run(cfg: DistillConfig, run_dir: Path, *, on_step: StepCallback | None = None) -> dict[str, Any]:
    """A fresh run into `run_dir` (already checked to be empty or overwritable)."""
    session = Session(cfg, run_dir)  # everything is loaded and checked before the directory is touched
    try:
        prepare_run_dir(run_dir, cfg)
        _clear_previous_run(run_dir)
        write_choices(session)
        summary = Loop(session, on_step=on_step).run()
        return _finish(session, summary)
    finally:
        session.close()


def _clear_previous_run(run_dir: Path) -> None:
    """A fresh run in a directory the user allowed to overwrite: drop the old run's outputs."""
    import shutil

    for name in ("metrics.jsonl", "eval.jsonl", "summary.json", "losses.json"):
        (run_dir / name).unlink(missing_ok=True)
    for name in ("checkpoints", "export"):
        shutil.rmtree(run_dir / name, ignore_errors=True)


SAFE_OVERRIDES = ("steps", "eval.", "checkpoint.", "data.workers", "data.prefetch", "threads", "backend", "ray.",
                  "student.num_workers", "student.sharding", "student.num_gpus", "student.num_cpus",
                  "student.resources")


def check_resume_overrides(overrides: list[str]) -> None:
    for item in overrides:
        key = item.split("=", 1)[0]
        if not any(key == s or (s.endswith(".") and key.startswith(s)) for s in SAFE_OVERRIDES):
            raise ConfigError(f"--resume keeps the saved config; {key!r} cannot change mid-run (allowed: steps, "
                              "eval.*, checkpoint.*, data.workers, data.prefetch, threads, backend, ray.*, and the "
                              "student's num_workers, sharding, num_gpus, num_cpus, resources)")


def resume(run_dir: Path, overrides: list[str], *, on_step: StepCallback | None = None) -> dict[str, Any]:
    """Continue `run_dir` from its newest complete checkpoint with its saved config (+ safe overrides)."""
    from xtalign.distill.checkpoint import latest_checkpoint
    from xtalign.distill.config import config_from_dict

    check_resume_overrides(overrides)
    saved = run_dir / "config.json"
    if not saved.is_file():
        raise ConfigError(f"--resume {run_dir}: no config.json there; give the directory of an earlier run")
    ckpt_dir = latest_checkpoint(run_dir)
    if ckpt_dir is None:
        raise ConfigError(f"--resume {run_dir}: no complete checkpoint under checkpoints/; nothing to resume")
    cfg = config_from_dict(json.loads(saved.read_text()), overrides)
    session = Session(cfg, run_dir)
    try:
        state = session.student.restore(ckpt_dir)
        if state["step"] >= cfg.steps:
            raise ConfigError(f"--resume {run_dir}: already at step {state['step']} of steps={cfg.steps}; "
                              "pass steps=N with a larger N to train further")
        prepare_run_dir(run_dir, cfg)
        _jsonl_truncate(run_dir / "metrics.jsonl", state["metrics_lines"])
        _jsonl_truncate(run_dir / "eval.jsonl", state["eval_lines"])
        log.info("resuming %s at step %d (batch %d)", run_dir, state["step"], state["cursor"])
        loop = Loop(session, start_step=state["step"], cursor=state["cursor"], seen=state["tokens"],
                    metrics_lines=state["metrics_lines"], eval_lines=state["eval_lines"], on_step=on_step)
        return _finish(session, loop.run())
    finally:
        session.close()


def _finish(session: Session, summary: dict[str, Any]) -> dict[str, Any]:
    from xtalign.cli.common import write_atomic
    from xtalign.distill.setup import export_run

    summary["exported"] = export_run(session)
    write_atomic(session.run_dir / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def fill_cache(cfg: DistillConfig, out: Path, *, on_batch: Callable[[int, int], None] | None = None
               ) -> dict[str, Any]:
    """Run every teacher over the batches a `cfg` run would see (steps × grad_accum) into `out/<teacher>`,
    plus each teacher's held-out bits per byte; no student is loaded."""
    from dataclasses import replace

    from xtalign.distill.data import DataPipeline
    from xtalign.distill.evaluate import teacher_bpb
    from xtalign.distill.setup import build_teacher_parts

    if not cfg.teachers:
        raise ConfigError("the config has no teachers; nothing to cache")
    cfg = replace(cfg, cache_teachers=str(out), teachers=tuple(replace(t, cache=None) for t in cfg.teachers))
    tp = build_teacher_parts(cfg)
    total = cfg.steps * cfg.grad_accum
    pipe = DataPipeline(tp.corpus, tp.builder, batch_size=cfg.batch_size, seed=cfg.seed, workers=cfg.data.workers,
                        prefetch=cfg.data.prefetch)
    t0 = time.perf_counter()
    try:
        it = iter(pipe)
        for n in range(total):
            batch = next(it)
            for src in tp.sources:
                src.outputs(batch)
            if on_batch is not None:
                on_batch(n + 1, total)
    finally:
        pipe.close()
        for src in tp.sources:
            src.close()
    evals = {src.label: teacher_bpb(src, tok, tp.eval_batches) for src, tok in zip(tp.sources, tp.teacher_toks,
                                                                                   strict=True)}
    return {"batches": total, "seconds": time.perf_counter() - t0, "teachers": {
        src.label: {"dir": str(out / src.label), "forwards": src.forwards, "cache_hits": src.cache_hits,
                    "heldout": evals[src.label]} for src in tp.sources}}
