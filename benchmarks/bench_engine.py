"""Engine overhead: `xtalign distill` (backend local) against a bare PyTorch loop doing the same work.

    .venv/bin/python benchmarks/bench_engine.py                     # tiny-cpu, 30 steps, 5 alternations
    .venv/bin/python benchmarks/bench_engine.py --device cuda --config distill/configs/smollm2-from-gemma3.yaml
    .venv/bin/python benchmarks/bench_engine.py --smoke --out /tmp/engine.json --allow-dirty

Three variants, alternated `--repeats` times in one run (the order rotates each round), each a fresh
run of `--steps` steps from the same initial weights and data:

- `engine`: `build_run(cfg)` + the engine's `Loop` (evals and checkpoints off), figures from its
  metrics.jsonl (`step_s`, `time.{data,teacher,student}`).
- `bare`: a hand-written loop over the same parts: the same `DataPipeline` (workers, prefetch) with
  `next()` INSIDE the step timer, the same `TeacherWorker.forward` (sliced LM head), the same student
  weights, loss module (the plan's W), dynamic scaling, clip, AdamW + LambdaLR schedule
  (`build_optimizer`); no metrics, no stats, no checkpoint.
- `bare, full logits`: the bare loop with the teacher replaced by `FullLogitsTeacher`, the best plain
  PyTorch full-logits forward (one [B·T, V] fp32 logits tensor, top-k and an in-place logsumexp).

Per run: median student tokens/s over the steps after `--warmup` (at least 1: the engine loads its
teacher on its first step, the bare loop before its first), and median seconds per phase (data / teacher
/ student; on CUDA the clock is read after a synchronize, in the engine too: `engine_rows` makes each
teacher `submit` wait for the device). Reported: median and IQR of the per-run medians for each variant,
the ratios of medians, and every step's loss of every run (the bare loops must match the engine's step for
step, which shows they do the same computation). `--smoke`: 4 steps x 2 rounds at batch 2 x 64, one thread.

The C heap is pinned first (`--heap pinned`, the default: `common.pin_heap`), so that both loops reuse their large
buffers; under glibc's own policy a 51 MiB logits slice is a fresh mapping unless the heap happens to hold a free
chunk that big, and which loop that luck favours depends on what it allocated before (`--heap default` shows it:
the same forward took 0.07 s in the engine and 0.13 s in the bare loop, at ~0 against ~40,000 minor faults per
forward). One thread arena too: a thread's own arena maps large requests afresh whatever the threshold. An
unmeasured bare-loop run first grows the heap to a step's peak. Each run records its minor page faults per step
(model loading included).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402
    FullLogitsTeacher,
    PhaseClock,
    begin,
    engine_rows,
    minor_faults,
    parser,
    pin_heap,
    ratio,
    spread,
    step_figures,
    write_results,
)
from xtalign.distill.config import DistillConfig, load_config  # noqa: E402
from xtalign.distill.data.batch import IGNORE, Batch  # noqa: E402
from xtalign.distill.data.pipeline import DataPipeline  # noqa: E402
from xtalign.losses import LossCombiner, ScalingConfig, TeacherTopK  # noqa: E402
from xtalign.losses.kl import next_token_ce  # noqa: E402

PHASES = ("data", "teacher", "student")
VARIANTS = ("engine", "bare", "bare, full logits")
TeacherFn = Callable[[Any, Any, Any], TeacherTopK]


@dataclass(eq=False)
class BareParts:
    """What the hand-written loop holds: data, the teacher's forward, the student and its optimiser."""

    pipe: DataPipeline
    teacher: TeacherFn
    student: torch.nn.Module
    term: Any  # xtalign.distill.student.kd.KDTerm: the plan's loss module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    combiner: LossCombiner
    device: torch.device
    autocast_dtype: torch.dtype | None
    grad_clip: float


def bare_parts(cfg: DistillConfig, full_logits: bool) -> BareParts:
    """The bare loop's parts, built from the same pieces the engine builds its run from (setup, not timed)."""
    from xtalign.distill.build import teacher_rows
    from xtalign.distill.data.builder import BatchBuilder
    from xtalign.distill.data.corpus import load_corpus
    from xtalign.distill.models.identity import tokenizer_name
    from xtalign.distill.student.kd import build_term
    from xtalign.distill.student.optim import build_optimizer
    from xtalign.distill.student.plans import choose_loss, plan_teacher
    from xtalign.distill.workers import load_student, teacher_worker
    from xtalign.zoo import load_tokenizer

    if len(cfg.teachers) != 1 or cfg.grad_accum != 1:
        raise SystemExit("bench_engine.py: the bare loop is written for one teacher and grad_accum=1")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t = cfg.teachers[0]
    s_tok = load_tokenizer(tokenizer_name(cfg.student.model, cfg.student.tokenizer))
    t_tok = load_tokenizer(tokenizer_name(t.model, t.tokenizer))
    rows = teacher_rows(t_tok)
    worker = teacher_worker(cfg, 0, rows)
    loaded, dev = load_student(cfg)
    plan = plan_teacher(t, choose_loss(t, s_tok, t_tok), student_rows=loaded.rows, teacher_rows=rows, s_tok=s_tok,
                        t_tok=t_tok)[0]
    device = torch.device(dev.device)
    student = loaded.model.to(device).train()
    term = build_term(plan, device)
    optimizer, scheduler = build_optimizer(student, [term], cfg.optim, cfg.schedule, cfg.steps)
    builder = BatchBuilder(s_tok, [t_tok], seq_len=cfg.seq_len, add_bos=cfg.data.add_bos)
    pipe = DataPipeline(load_corpus(cfg.data, seed=cfg.seed), builder, batch_size=cfg.batch_size, seed=cfg.seed,
                        workers=cfg.data.workers, prefetch=cfg.data.prefetch)
    combiner = LossCombiner(ScalingConfig(mode=cfg.combine.scaling, kd_weight=cfg.combine.kd_weight,
                                          ce_weight=cfg.combine.ce_weight))
    teacher = FullLogitsTeacher(worker).forward if full_logits else worker.forward
    return BareParts(pipe=pipe, teacher=teacher, student=student, term=term, optimizer=optimizer, scheduler=scheduler,
                     combiner=combiner, device=device, autocast_dtype=dev.autocast_dtype, grad_clip=cfg.optim.grad_clip)


def _tensor(a: Any, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(a).to(device)


def _student_loss(bp: BareParts, batch: Batch, top: TeacherTopK) -> torch.Tensor:
    """CE + the teacher's KD term, combined as the config says (what StudentWorker computes, no metrics)."""
    ids = _tensor(batch.student_ids, bp.device)
    enabled = bp.autocast_dtype is not None
    with torch.autocast(bp.device.type, dtype=bp.autocast_dtype, enabled=enabled):
        logits = bp.student(input_ids=ids.clamp_min(0), attention_mask=(ids >= 0).long()).logits
    logits = logits.float()  # [B, Ts, V_s]
    ce = next_token_ce(logits, _tensor(batch.student_targets, bp.device), ignore_index=IGNORE)
    side = batch.teachers[0]
    if side.same_vocab:
        kd = bp.term.module(logits, top.to(bp.device), _tensor(side.targets, bp.device) != IGNORE)
    else:
        kd = bp.term.module(logits, top.to(bp.device), _tensor(side.student_chunk, bp.device),
                            _tensor(side.teacher_chunk, bp.device))
    return bp.combiner(kd, ce)


def bare_step(bp: BareParts, clock: PhaseClock) -> dict[str, Any]:
    """One step, data fetched inside the timer; the row has the same keys as the engine's metrics rows."""
    clock.start()
    batch = next(bp.pipe)
    clock.lap("data")
    side = batch.teachers[0]
    top = bp.teacher(side.ids, side.lengths, side.targets)
    clock.lap("teacher")
    loss = _student_loss(bp, batch, top)
    bp.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for g in bp.optimizer.param_groups for p in g["params"]]
    if bp.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, bp.grad_clip)
    bp.optimizer.step()
    bp.scheduler.step()
    clock.lap("student")
    return {"tokens": batch.student_tokens, "step_s": clock.total, "time": dict(clock.parts), "loss": loss}


def bare_rows(cfg: DistillConfig, full_logits: bool) -> list[dict[str, Any]]:
    """`cfg.steps` steps of the bare loop; the losses are read after the timed steps."""
    bp = bare_parts(cfg, full_logits)
    clock = PhaseClock(bp.device)
    try:
        rows = [bare_step(bp, clock) for _ in range(cfg.steps)]
    finally:
        bp.pipe.close()
    for r in rows:
        r["loss"] = float(r["loss"].detach())
    return rows


def run_variant(name: str, cfg: DistillConfig) -> list[dict[str, Any]]:
    if name == "engine":
        with tempfile.TemporaryDirectory(prefix="bench-engine-") as tmp:
            return engine_rows(cfg, Path(tmp) / "run")
    return bare_rows(cfg, full_logits=name == "bare, full logits")


def measure(cfg: DistillConfig, repeats: int, warmup: int) -> dict[str, list[dict[str, Any]]]:
    """Each variant `repeats` times, alternating (round r starts at variant r mod 3), after one unmeasured run of
    the bare loop: the process's first run grows the heap to a step's peak, which would charge the first variant."""
    t0, f0 = time.perf_counter(), minor_faults()
    run_variant("bare", cfg)
    print(f"  heap warm-up (bare loop, not measured): {time.perf_counter() - t0:.1f} s, "
          f"{(minor_faults() - f0) / cfg.steps:,.0f} faults/step", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    for r in range(repeats):
        for k in range(len(VARIANTS)):
            name = VARIANTS[(r + k) % len(VARIANTS)]
            t0, f0 = time.perf_counter(), minor_faults()
            fig = step_figures(run_variant(name, cfg), warmup, PHASES)
            fig.update(round=r, wall_s=round(time.perf_counter() - t0, 2),
                       minor_faults_per_step=round((minor_faults() - f0) / cfg.steps))
            runs[name].append(fig)
            print(f"  round {r} {name:<18} {fig['tokens_per_s']:10,.0f} student tokens/s  "
                  + "  ".join(f"{p} {fig['time'][p]:.4f}s" for p in PHASES)
                  + f"  {fig['minor_faults_per_step']:,} faults/step", flush=True)
    return runs


def summarise(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per variant: spread of the per-run medians (tokens/s, step seconds, each phase); ratios of medians;
    the largest difference between the bare loop's and the engine's losses at the same step."""
    out: dict[str, Any] = {}
    for name, figs in runs.items():
        out[name] = {"tokens_per_s": spread([f["tokens_per_s"] for f in figs]),
                     "step_s": spread([f["step_s"] for f in figs]),
                     "time": {p: spread([f["time"][p] for f in figs]) for p in PHASES},
                     "minor_faults_per_step": spread([f["minor_faults_per_step"] for f in figs])}
    eng = out["engine"]["tokens_per_s"]
    out["ratios"] = {"engine_over_bare": ratio(eng, out["bare"]["tokens_per_s"]),
                     "engine_over_bare_full_logits": ratio(eng, out["bare, full logits"]["tokens_per_s"]),
                     "bare_over_bare_full_logits": ratio(out["bare"]["tokens_per_s"],
                                                         out["bare, full logits"]["tokens_per_s"])}
    ref = runs["engine"][0]["losses"]
    out["max_loss_difference_vs_engine"] = {name: max(abs(a - b) for f in figs for a, b in zip(f["losses"], ref,
                                                                                               strict=True))
                                            for name, figs in runs.items()}
    return out


def report(cfg: DistillConfig, args: argparse.Namespace, summary: dict[str, Any]) -> None:
    print(f"{Path(args.config).name} on {args.device}: batch {cfg.batch_size} x seq {cfg.seq_len}, {args.steps} steps "
          f"({args.warmup} warm-up) x {args.repeats} rounds, torch threads {torch.get_num_threads()}")
    print(f"{'variant':<18} {'tokens/s median':>15} {'IQR':>9}   median s/step: " + " / ".join(PHASES))
    for name in VARIANTS:
        s = summary[name]
        print(f"{name:<18} {s['tokens_per_s']['median']:15,.0f} {s['tokens_per_s']['iqr']:9,.0f}   "
              + " / ".join(f"{s['time'][p]['median']:.4f}" for p in PHASES))
    r = summary["ratios"]
    print(f"engine / bare {r['engine_over_bare']:.3f} (target >= 0.90); engine / bare full logits "
          f"{r['engine_over_bare_full_logits']:.3f}; bare / bare full logits {r['bare_over_bare_full_logits']:.3f}")
    print("max |loss - engine loss| at the same step: " + ", ".join(
        f"{k} {v:.2e}" for k, v in summary["max_loss_difference_vs_engine"].items()))


def _args() -> argparse.Namespace:
    p = parser("engine", __doc__)
    p.add_argument("--config", default="distill/configs/tiny-cpu.yaml", help="relative to the repository root")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5, help="steps left out of each run's medians")
    p.add_argument("--repeats", type=int, default=5, help="rounds of the three variants, alternated")
    p.add_argument("--heap", choices=["pinned", "default"], default="pinned",
                   help="pinned: fix glibc's mmap/trim thresholds and use one arena first, so every loop reuses "
                        "its large buffers; default: glibc's own policy")
    args = p.parse_args()
    if args.smoke:
        args.steps, args.warmup, args.repeats = 4, 1, 2
    if args.warmup < 1 or args.steps <= args.warmup:
        p.error("need --warmup >= 1 (the engine loads its teacher in its first step) and --steps > --warmup")
    return args


def main() -> int:
    args = _args()
    prov = begin(args, "bench_engine.py")
    heap = pin_heap() if args.heap == "pinned" else {"policy": "default", "applied": False}
    overrides = [f"steps={args.steps}", "eval.every=0", "checkpoint.every=0", f"device={args.device}"]
    if args.smoke:
        overrides += ["threads=1", "batch_size=2", "seq_len=64"]
    cfg = load_config(ROOT / args.config, overrides)
    runs = measure(cfg, args.repeats, args.warmup)
    summary = summarise(runs)
    report(cfg, args, summary)
    config = {"config": args.config, "device": args.device, "batch_size": cfg.batch_size, "seq_len": cfg.seq_len,
              "steps": args.steps, "warmup": args.warmup, "repeats": args.repeats,
              "torch_threads": torch.get_num_threads(), "data_workers": cfg.data.workers,
              "prefetch": cfg.data.prefetch, "heap": heap}
    write_results(args, "engine", prov, {
        "config": config, "summary": summary, "runs": runs,
        "definitions": "tokens_per_s: student tokens of a step / its seconds, median over the steps after the "
                       "warm-up of one run; summary: spread over the runs of those medians; time: seconds per "
                       "step in each phase (medians likewise); ratios: of the medians"})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
