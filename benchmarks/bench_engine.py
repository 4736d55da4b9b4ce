"""Engine overhead: `xtalign distill` (local backend) against a bare PyTorch loop on the same models and batches.

The bare loop is what one would write by hand: teacher forward with full logits and a top-k, the student's
forward, P-KL + CE with dynamic scaling, backward, clip, AdamW — no data pipeline (batches pre-built), no
metrics, no checkpoints. The engine runs the same config through `Session`/`Loop` (data workers, sliced
teacher head, metrics, progress). Both see identical batches; medians over the steps after a warm-up.

    .venv/bin/python benchmarks/bench_engine.py                       # tiny-cpu recipe, 30 steps each
    .venv/bin/python benchmarks/bench_engine.py --steps 20 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def bare_loop(session, batches: list, k: int) -> list[float]:  # noqa: ANN001 - a benchmark script
    """Seconds per step of the hand-written loop over `batches` (fresh copies of the engine's models)."""
    import copy

    from xtalign.distill.batch import IGNORE
    from xtalign.losses import LossCombiner, PKLConfig, ScalingConfig, SparseProjection, TeacherTopK
    from xtalign.losses.kl import next_token_ce

    teacher = session.sources[0].worker.model
    student = copy.deepcopy(session.student.model)
    plan = session.plans[0]
    w = SparseProjection(indices=torch.as_tensor(plan.indices), weights=torch.as_tensor(plan.weights),
                         teacher_vocab_size=plan.teacher_rows)
    pkl = PKLConfig(temperature=plan.temperature, aggregation=plan.aggregation).build(w)
    comb = LossCombiner(ScalingConfig(mode="dynamic"))
    opt = torch.optim.AdamW(student.parameters(), lr=1e-3, betas=(0.9, 0.95))
    times = []
    for b in batches:
        t0 = time.perf_counter()
        side = b.teachers[0]
        t_ids = torch.from_numpy(side.ids)
        with torch.no_grad():
            logits_t = teacher(input_ids=t_ids.clamp_min(0), attention_mask=(t_ids >= 0).long()).logits
            top = TeacherTopK.from_logits(logits_t, k=k, temperature=plan.temperature)
        s_ids = torch.from_numpy(b.student_ids)
        logits = student(input_ids=s_ids.clamp_min(0), attention_mask=(s_ids >= 0).long()).logits
        targets = torch.from_numpy(b.student_targets)
        ce = next_token_ce(logits, targets, ignore_index=IGNORE)
        kd = pkl(logits, top, torch.from_numpy(side.student_chunk), torch.from_numpy(side.teacher_chunk))
        loss = comb(kd, ce)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        times.append(time.perf_counter() - t0)
    return times


def engine_loop(cfg, steps: int) -> tuple[list[float], list[int], object]:  # noqa: ANN001
    from xtalign.distill.engine import Loop, Session

    with tempfile.TemporaryDirectory() as tmp:
        session = Session(cfg, Path(tmp))
        loop = Loop(session)
        loop._eval_student = lambda: {}  # type: ignore[method-assign] - time the steps only
        loop._eval_teachers = lambda: None  # type: ignore[method-assign]
        loop.checkpoint = lambda: Path(tmp)  # type: ignore[method-assign]
        loop.run()
        rows = [json.loads(x) for x in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    return [r["step_s"] for r in rows], [r["tokens"] for r in rows], session


def main() -> int:
    from xtalign.cli.common import dump_json, provenance
    from xtalign.distill.config import load_config
    from xtalign.distill.data import DataPipeline

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "distill/configs/tiny-cpu.yaml"))
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2, help="bare/engine alternations (medians over all)")
    p.add_argument("--out", default=str(ROOT / "out/bench/engine.json"))
    args = p.parse_args()
    cfg = load_config(args.config, [f"steps={args.steps}", "eval.every=0", "checkpoint.every=0"])
    bare_tps, eng_tps = [], []
    for _ in range(args.repeats):
        step_s, tokens, session = engine_loop(cfg, args.steps)
        per_step = [tokens[0]] + [b - a for a, b in zip(tokens, tokens[1:], strict=False)]
        eng_tps += [n / s for n, s in zip(per_step[args.warmup:], step_s[args.warmup:], strict=True)]
        pipe = DataPipeline(session.corpus, session.builder, batch_size=cfg.batch_size, seed=cfg.seed)
        batches = [next(iter(pipe)) for _ in range(args.steps)]
        pipe.close()
        times = bare_loop(session, batches, cfg.teachers[0].top_k)
        bare_tps += [b.student_tokens / t for b, t in zip(batches[args.warmup:], times[args.warmup:], strict=True)]
    bare, eng = statistics.median(bare_tps), statistics.median(eng_tps)
    print(f"config {Path(args.config).name}: {args.steps} steps x {args.repeats} repeats, batch {cfg.batch_size} x "
          f"seq {cfg.seq_len}, torch threads {torch.get_num_threads()}")
    print(f"bare loop      {bare:10,.0f} student tokens/s (median)")
    print(f"xtalign local  {eng:10,.0f} student tokens/s (median)")
    print(f"engine / bare  {eng / bare:10.3f}  (target >= 0.90)")
    dump_json(Path(args.out), {"bare_tokens_per_s": bare, "engine_tokens_per_s": eng, "ratio": eng / bare,
                               "steps": args.steps, "repeats": args.repeats, "config": args.config,
                               "provenance": provenance()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
