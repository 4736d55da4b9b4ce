"""The Ray backend against `backend: local`, and what top-k transport saves over full logits.

    .venv/bin/python benchmarks/bench_ray.py                        # both parts: 30 steps x 3 rounds, 5 transfers
    .venv/bin/python benchmarks/bench_ray.py --skip-transport --steps 40 --repeats 5
    .venv/bin/python benchmarks/bench_ray.py --smoke --out /tmp/ray.json --allow-dirty

1. Steps: the same tiny random-init models and batches through the engine's public path (`build_run` +
   the engine's `Loop`, evals and checkpoints off; figures from metrics.jsonl), four variants alternated
   `--repeats` times in one run (the order rotates each round):
   - `local-1`: `backend: local`, torch threads 1 (one core);
   - `local-2`: `backend: local`, torch threads 2 (two cores: what async uses, in one process);
   - `ray-sync`: `backend: ray`, teacher and student actors one CPU and one thread each, in turn;
   - `ray-async`: the same with `ray.async`: the teacher works on the next batch while the student steps.
   One Ray cluster (2 CPUs) is started for the whole run, so every variant sees the same background.
   The teacher is sized so its forward costs about what the student's step does (where async helps
   most). Per run: median student tokens/s over the steps after `--warmup`; reported: median, min, max
   and IQR of the per-run medians, ratios of medians, and the bound async could reach from local-1's
   step split, (data + teacher + student) / max(teacher, student).
2. Transport: one sample of a Gemma-3-sized vocabulary (262,144) at 2,048 positions through Ray's object
   store (put, then a task that maps it), as top-64 (bf16 values + int32 ids + fp32 logsumexp and target
   log-prob) against full fp32 logits, alternated `--transfers` times: bytes and the spread of seconds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import begin, engine_rows, parser, ratio, spread, step_figures, write_results  # noqa: E402

ARCH_S = {"family": "llama", "hidden_size": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2,
          "intermediate_size": 128, "max_position": 256}
ARCH_T = {"family": "llama", "hidden_size": 256, "num_layers": 4, "num_heads": 4, "num_kv_heads": 2,
          "intermediate_size": 768, "max_position": 256}
VARIANTS = {"local-1": ("local", 1, False), "local-2": ("local", 2, False), "ray-sync": ("ray", 1, False),
            "ray-async": ("ray", 1, True)}  # name -> (backend, torch threads, async teachers)
PHASES = ("data", "teacher", "student", "teacher_wait")


def config(steps: int, backend: str, threads: int, asyn: bool, batch_size: int, seq_len: int) -> Any:
    from xtalign.distill.config import config_from_dict

    return config_from_dict({
        "student": {"model": "random", "tokenizer": "mistral-v1", "arch": ARCH_S},
        "teachers": [{"name": "t", "model": "random", "tokenizer": "gpt2", "arch": ARCH_T, "loss": "p-kl",
                      "top_k": 64, "head_slice": 256}],
        "data": {"train": "botchan", "pack_chars": 600}, "optim": {"lr": 1e-3}, "schedule": {"kind": "constant"},
        "eval": {"every": 0, "max_batches": 1}, "checkpoint": {"every": 0}, "steps": steps,
        "batch_size": batch_size, "seq_len": seq_len, "threads": threads, "device": "cpu", "backend": backend,
        "ray": {"async_teachers": asyn},
    })


def run_variant(name: str, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    backend, threads, asyn = VARIANTS[name]
    cfg = config(args.steps, backend, threads, asyn, args.batch_size, args.seq_len)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        rows = engine_rows(cfg, Path(tmp) / "run")
    fig = step_figures(rows, args.warmup, PHASES)
    fig["teacher_bytes_per_step"] = statistics.median(r["teacher_bytes"] for r in rows[args.warmup:])
    fig["wall_s"] = round(time.perf_counter() - t0, 2)
    torch.set_num_threads(args.driver_threads)  # a local run set the driver's threads; the next starts equal
    return fig


def steps_part(args: argparse.Namespace) -> dict[str, Any]:
    names = list(VARIANTS)
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for r in range(args.repeats):
        for k in range(len(names)):
            name = names[(r + k) % len(names)]
            fig = run_variant(name, args)
            fig["round"] = r
            runs[name].append(fig)
            print(f"  round {r} {name:<10} {fig['tokens_per_s']:9,.0f} student tokens/s  "
                  + "  ".join(f"{p} {fig['time'][p]:.4f}s" for p in PHASES), flush=True)
    summary: dict[str, Any] = {n: {"tokens_per_s": spread([f["tokens_per_s"] for f in runs[n]]),
                                   "time": {p: spread([f["time"][p] for f in runs[n]]) for p in PHASES},
                                   "teacher_bytes_per_step": runs[n][0]["teacher_bytes_per_step"]} for n in names}
    tps = {n: summary[n]["tokens_per_s"] for n in names}
    summary["ratios"] = {"ray_async_over_local_1": ratio(tps["ray-async"], tps["local-1"]),
                         "ray_async_over_local_2": ratio(tps["ray-async"], tps["local-2"]),
                         "ray_async_over_ray_sync": ratio(tps["ray-async"], tps["ray-sync"]),
                         "ray_sync_over_local_1": ratio(tps["ray-sync"], tps["local-1"]),
                         "local_2_over_local_1": ratio(tps["local-2"], tps["local-1"])}
    t = {p: summary["local-1"]["time"][p]["median"] for p in ("data", "teacher", "student")}
    summary["async_bound_from_local_1_split"] = sum(t.values()) / max(t["teacher"], t["student"])
    return {"summary": summary, "runs": runs}


def transport_part(args: argparse.Namespace) -> dict[str, Any]:
    """Bytes and put + fetch seconds of one answer through the object store, top-k against full fp32."""
    import ray
    import torch

    from xtalign.distill.teacher.wire import pack_topk, packed_nbytes
    from xtalign.losses import TeacherTopK

    @ray.remote
    def touch(x: Any) -> int:  # the receiving side maps the object (zero-copy for numpy)
        if isinstance(x, dict):
            return sum(int(v.nbytes) for v in x.values() if isinstance(v, np.ndarray))
        return int(x.nbytes)

    ray.get(touch.remote(np.zeros(1)))
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(1, args.positions, args.vocab, generator=gen)  # [1, T, V] fp32: what NeMo ships
    targets = torch.randint(0, args.vocab, (1, args.positions), generator=gen)
    objects = {"topk": pack_topk(TeacherTopK.from_logits(logits, k=args.k, targets=targets)),
               "full_fp32": logits.numpy()}
    times: dict[str, list[float]] = {n: [] for n in objects}
    nbytes: dict[str, int] = {}
    for r in range(args.transfers):
        for name in (list(objects) if r % 2 == 0 else list(objects)[::-1]):
            t0 = time.perf_counter()
            ref = ray.put(objects[name])
            nbytes[name] = ray.get(touch.remote(ref))
            times[name].append(time.perf_counter() - t0)
            del ref
    assert nbytes["topk"] == packed_nbytes(objects["topk"])
    res: dict[str, Any] = {"vocab": args.vocab, "positions": args.positions, "k": args.k, "transfers": args.transfers}
    for name in objects:
        res[name] = {"bytes": nbytes[name], "put_and_fetch_s": spread(times[name])}
    res["bytes_ratio_full_over_topk"] = nbytes["full_fp32"] / nbytes["topk"]
    res["time_ratio_full_over_topk"] = ratio(res["full_fp32"]["put_and_fetch_s"], res["topk"]["put_and_fetch_s"])
    return res


def report_steps(s: dict[str, Any]) -> None:
    print("student tokens/s, per-run medians over rounds (teacher and student one CPU each under Ray):")
    print(f"  {'variant':<10} {'median':>9} {'min':>9} {'max':>9} {'IQR':>8}   median s/step: teacher / student")
    for n in VARIANTS:
        t, tm = s[n]["tokens_per_s"], s[n]["time"]
        print(f"  {n:<10} {t['median']:9,.0f} {t['min']:9,.0f} {t['max']:9,.0f} {t['iqr']:8,.0f}   "
              f"{tm['teacher']['median']:.4f} / {tm['student']['median']:.4f}")
    r = s["ratios"]
    print(f"  ray async / local-1 {r['ray_async_over_local_1']:.3f} (bound from local-1's split "
          f"{s['async_bound_from_local_1_split']:.3f}); async / local-2 {r['ray_async_over_local_2']:.3f}; "
          f"async / ray sync {r['ray_async_over_ray_sync']:.3f} (target >= 1.3); ray sync / local-1 "
          f"{r['ray_sync_over_local_1']:.3f} (target >= 0.85); local-2 / local-1 {r['local_2_over_local_1']:.3f}")


def report_transport(t: dict[str, Any]) -> None:
    print(f"transport, one sample of {t['positions']:,} positions x {t['vocab']:,} vocab, {t['transfers']} transfers:")
    for name in ("topk", "full_fp32"):
        s = t[name]["put_and_fetch_s"]
        print(f"  {name:<10} {t[name]['bytes']:>14,} B   put + fetch median {s['median']:.4f} s "
              f"(min {s['min']:.4f}, max {s['max']:.4f})")
    print(f"  full / top-{t['k']}: {t['bytes_ratio_full_over_topk']:,.0f}x the bytes, "
          f"{t['time_ratio_full_over_topk']:,.0f}x the time")


def _args() -> argparse.Namespace:
    p = parser("ray", __doc__)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=4, help="steps left out of each run's median")
    p.add_argument("--repeats", type=int, default=3, help="rounds of the four variants, alternated")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--transfers", type=int, default=5, help="alternated transfers of each transport variant")
    p.add_argument("--vocab", type=int, default=262_144)
    p.add_argument("--positions", type=int, default=2048)
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--skip-steps", action="store_true")
    p.add_argument("--skip-transport", action="store_true")
    args = p.parse_args()
    if args.smoke:
        args.steps, args.warmup, args.repeats, args.transfers, args.positions = 4, 1, 1, 2, 128
        args.batch_size, args.seq_len = 2, 64
    if args.warmup < 1 or args.steps <= args.warmup:
        p.error("need --warmup >= 1 (teachers load, actors start in the first step) and --steps > --warmup")
    return args


def main() -> int:
    import ray
    import torch

    args = _args()
    prov = begin(args, "bench_ray.py")
    args.driver_threads = torch.get_num_threads()
    os.environ.setdefault("RAY_worker_niceness", "0")  # as the engine does when it starts Ray itself
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             object_store_memory=max(2**30, int(2.5 * 4 * args.positions * args.vocab)))
    body: dict[str, Any] = {"config": {"student_arch": ARCH_S, "teacher_arch": ARCH_T, "batch_size": args.batch_size,
                                       "seq_len": args.seq_len, "steps": args.steps, "warmup": args.warmup,
                                       "repeats": args.repeats, "ray_cpus": 2, "driver_niceness": os.nice(0)}}
    try:
        if not args.skip_steps:
            body["steps"] = steps_part(args)
            report_steps(body["steps"]["summary"])
        if not args.skip_transport:
            body["transport"] = transport_part(args)
            report_transport(body["transport"])
    finally:
        ray.shutdown()
    write_results(args, "ray", prov, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
