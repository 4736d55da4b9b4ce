"""The training loop: batches → teachers → student, with eval, checkpoints and metrics.

The loop owns no device and no tensor. It takes `Batch`es from a `BatchSource`, hands each to every
teacher source (`submit` → an opaque `TeacherAnswer`), gives the student the micro-batches with their
answers (`train_step` → `StepStats`) and writes what it gets back. With `ray.async` the teachers start
on the next step's batches before the student steps on this one. Any other batch source (e.g. the
student's own samples) plugs in without a second loop.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xtalign.distill.build import RunParts
from xtalign.distill.checkpoint import latest_checkpoint
from xtalign.distill.data.batch import Batch
from xtalign.distill.data.pipeline import DataPipeline
from xtalign.distill.errors import WorkerDiedError
from xtalign.distill.evaluate import student_bpb, teacher_bpb
from xtalign.distill.metrics import Sinks
from xtalign.distill.protocols import BatchSource, StepStats, TeacherAnswer
from xtalign.distill.rollout.source import RolloutSource, samples_per_batch

__all__ = ["Loop", "StepCallback", "step_record"]


StepCallback = Callable[[dict[str, Any]], None]
Fetched = tuple[Batch, list[TeacherAnswer]]


@dataclass
class Timer:
    """Seconds spent per phase within one optimiser step."""

    parts: dict[str, float] = field(default_factory=lambda: {"data": 0.0, "generate": 0.0, "teacher": 0.0,
                                                               "student": 0.0})

    def add(self, key: str, since: float) -> float:
        now = time.perf_counter()
        self.parts[key] += now - since
        return now


def _policy_record(stats: StepStats, made: list[dict[str, float]], labels: list[str]) -> dict[str, Any]:
    """On-policy figures: generation (from how the batches were made) and the reverse-KL estimate per byte."""
    if not any("generate_s" in m for m in made):
        return {}
    gen = sum(m.get("generate_s", 0.0) for m in made)
    tokens = sum(m.get("generated_tokens", 0.0) for m in made)
    rec: dict[str, Any] = {"generate_tokens_per_s": tokens / gen if gen > 0 else 0.0,
                           "mean_completion_tokens": sum(m.get("mean_completion_tokens", 0.0) for m in made)
                           / len(made), "ended_by_eos": sum(m.get("ended_by_eos", 0.0) for m in made) / len(made)}
    rec["reverse_kl_bits_per_byte"] = {
        lab: stats.extra.get(f"rkl_nats/{lab}", 0.0) / stats.extra[f"rkl_bytes/{lab}"] / math.log(2)
        for lab in labels if stats.extra.get(f"rkl_bytes/{lab}")}
    return {"policy": rec}


def step_record(step: int, stats: StepStats, labels: list[str], *, seen: int, tokens: int, wall: float,
                timer: Timer, sent: int, made: list[dict[str, float]] | None = None) -> dict[str, Any]:
    """One `metrics.jsonl` line from a step's `StepStats` (and the stats of how its batches were made)."""
    rec: dict[str, Any] = {"step": step, "tokens": seen, "loss": stats.loss, "ce": stats.ce}
    if stats.kd:
        rec.update(kd=dict(zip(labels, stats.kd, strict=True)), kd_total=stats.kd_total, loss_scale=stats.loss_scale,
                   teacher_weights=dict(zip(labels, stats.teacher_weights, strict=True)))
    rec.update(lr=stats.lr, grad_norm=stats.grad_norm, accuracy=stats.accuracy,
               agreement=dict(zip(labels, stats.agreement, strict=True)),
               counts={"accuracy": [stats.acc_hits, stats.acc_n],
                       "agreement": {lab: [h, n] for lab, h, n in zip(labels, stats.agree_hits, stats.agree_n,
                                                                      strict=True)}},
               tokens_per_s=tokens / wall if wall > 0 else 0.0, step_s=wall,
               time={**{k: round(v, 6) for k, v in timer.parts.items()
                        if k != "generate" or any("generate_s" in m for m in made or [])},
                     "teacher_wait": round(stats.teacher_wait_s, 6)},
               peak_memory_mb=round(stats.peak_memory_mb, 1), teacher_bytes=sent,
               **_policy_record(stats, made or [], labels))
    return rec


class Loop:
    """Drives a run's parts: the step loop, eval, checkpoints. `cursor` counts the batches trained on."""

    def __init__(self, parts: RunParts, run_dir: Path, sinks: Sinks, *, start_step: int = 0, cursor: int = 0,
                 seen: int = 0, on_step: StepCallback | None = None) -> None:
        self.p, self.run_dir, self.sinks = parts, run_dir, sinks
        self.step, self.cursor, self.seen = start_step, cursor, seen
        self.on_step = on_step
        self._ahead: deque[Fetched] = deque()  # micro-batches whose teacher work is under way
        assert parts.student is not None
        self.student = parts.student

    def _eval_student(self) -> dict[str, Any]:
        res = student_bpb(self.student, self.p.student_tok, self.p.eval_batches)
        self.sinks.eval({"step": self.step, "model": "student", **res})
        return res

    def _eval_teachers(self) -> None:
        for src, tok in zip(self.p.sources, self.p.teacher_toks, strict=True):
            res = teacher_bpb(src, tok, self.p.eval_batches)
            if res is not None:
                self.sinks.eval({"step": self.step, "model": f"teacher:{src.label}", **res})

    def _fetch(self, batches: BatchSource, timer: Timer) -> Fetched:
        """The next micro-batch, with every teacher's work on it submitted (a remote teacher starts now)."""
        t = time.perf_counter()
        batch = next(batches)
        t = timer.add("data", t)
        gen = batch.stats.get("generate_s", 0.0)  # the student's sampling, inside the batch source
        timer.parts["data"] -= gen
        timer.parts["generate"] += gen
        answers = [src.submit(batch) for src in self.p.sources]
        timer.add("teacher", t)
        return batch, answers

    def _one_step(self, batches: BatchSource) -> dict[str, Any]:
        cfg, timer = self.p.cfg, Timer()
        t0 = time.perf_counter()
        micro = [self._ahead.popleft() if self._ahead else self._fetch(batches, timer) for _ in range(cfg.grad_accum)]
        if cfg.ray.async_teachers and self.step + 1 < cfg.steps:  # teachers start on the next step now
            self._ahead.extend(self._fetch(batches, timer) for _ in range(cfg.grad_accum))
        t = time.perf_counter()
        stats = self.student.train_step(micro)
        timer.add("student", t)
        tokens = sum(b.student_tokens for b, _ in micro)
        self.cursor += cfg.grad_accum
        self.seen += tokens
        self.step += 1
        rec = step_record(self.step, stats, [s.label for s in self.p.sources], seen=self.seen, tokens=tokens,
                          wall=time.perf_counter() - t0, timer=timer,
                          sent=sum(a.nbytes for _, answers in micro for a in answers), made=[b.stats for b, _ in micro])
        self.sinks.train(rec)
        return rec

    def _resume_hint(self) -> str:
        last = latest_checkpoint(self.run_dir)
        where = f"the last complete checkpoint is {last.name}" if last else "no checkpoint was complete yet"
        return f"stopped at step {self.step}, {where}; continue with `xtalign distill --resume {self.run_dir}`"

    def checkpoint(self) -> Path:
        state = {"step": self.step, "cursor": self.cursor, "tokens": self.seen,
                 "metrics_lines": self.sinks.metrics.lines, "eval_lines": self.sinks.evals.lines}
        return self.student.save_checkpoint(self.run_dir, self.step, state, self.p.cfg.checkpoint.keep_last)

    def _batches(self) -> BatchSource:
        """The data pipeline from the cursor; with a policy, the rollout source over it."""
        cfg = self.p.cfg
        data = DataPipeline(self.p.corpus, self.p.builder, batch_size=cfg.batch_size, seed=cfg.seed,
                            start_batch=self.cursor, workers=cfg.data.workers, prefetch=cfg.data.prefetch)
        if self.p.rollout is None:
            return data
        return RolloutSource(data, self.p.corpus.train, self.student, self.p.rollout, samples_per_batch(cfg), cfg.seed)

    def _after_step(self) -> None:
        cfg = self.p.cfg
        if cfg.eval.every and self.step % cfg.eval.every == 0 and self.step < cfg.steps:
            self._eval_student()
        if cfg.checkpoint.every and self.step % cfg.checkpoint.every == 0 and self.step < cfg.steps:
            self.checkpoint()

    def run(self, batches: BatchSource | None = None) -> dict[str, Any]:
        if self.step == 0:
            self._eval_teachers()
            self._eval_student()
        batches = batches or self._batches()
        last: dict[str, Any] = {}
        ok = False
        try:
            while self.step < self.p.cfg.steps:
                try:
                    last = self._one_step(batches)
                except WorkerDiedError as exc:
                    raise WorkerDiedError(f"{exc}; {self._resume_hint()}") from None
                if self.on_step is not None:
                    self.on_step(last)
                self._after_step()
            ok = True
        finally:
            batches.close()
            for src in self.p.sources:
                src.close(flush=ok)
        final = self._eval_student()
        self.checkpoint()
        return {"last_step": last, "final_eval": final}
