"""The Ray backend against the local one and a bare loop, and what top-k transport saves.

1. Steps: the same tiny models and batches through (a) a bare PyTorch loop, (b) `backend: local`,
   (c) `backend: ray` sync, (d) `backend: ray` with async teachers — teacher and student one CPU each
   (torch threads 1; the Ray cluster has 2 CPUs). The teacher is sized so its forward costs about what the
   student's step does (the case where async can help most); both figures are printed.
2. Transport: bytes and object-store time for one sample of a Gemma-3-sized vocabulary (262,144) at
   2,048 positions, as top-64 (bf16 values + int32 ids + fp32 logsumexp) against full fp32 logits.

    .venv/bin/python benchmarks/bench_ray.py                  # both parts
    .venv/bin/python benchmarks/bench_ray.py --skip-transport --steps 30
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ARCH_S = {"family": "llama", "hidden_size": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2,
          "intermediate_size": 128, "max_position": 256}
ARCH_T = {"family": "llama", "hidden_size": 256, "num_layers": 4, "num_heads": 4, "num_kv_heads": 2,
          "intermediate_size": 768, "max_position": 256}


def config(steps: int, backend: str, asyn: bool) -> object:
    from xtalign.distill.config import config_from_dict

    return config_from_dict({
        "student": {"model": "random", "tokenizer": "mistral-v1", "arch": ARCH_S},
        "teachers": [{"name": "t", "model": "random", "tokenizer": "gpt2", "arch": ARCH_T, "loss": "p-kl",
                      "top_k": 64, "head_slice": 256}],
        "data": {"train": "botchan", "pack_chars": 600}, "optim": {"lr": 1e-3}, "schedule": {"kind": "constant"},
        "eval": {"every": 0, "max_batches": 1}, "steps": steps, "batch_size": 4, "seq_len": 128, "threads": 1,
        "device": "cpu", "backend": backend, "ray": {"async_teachers": asyn},
    })


def run_engine(cfg: object, warmup: int) -> tuple[list[float], dict[str, float], object]:
    """Student tokens/s per step after `warmup` (evals and checkpoints left out of the timing)."""
    from xtalign.distill.engine import Loop, Session

    with tempfile.TemporaryDirectory() as tmp:
        session = Session(cfg, Path(tmp))
        try:
            loop = Loop(session)
            loop._eval_student = lambda: {}  # type: ignore[method-assign]
            loop._eval_teachers = lambda: None  # type: ignore[method-assign]
            loop.checkpoint = lambda: Path(tmp)  # type: ignore[method-assign]
            loop.run()
            rows = [json.loads(x) for x in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
        finally:
            session.close()
    tokens = [rows[0]["tokens"]] + [b["tokens"] - a["tokens"] for a, b in zip(rows, rows[1:], strict=False)]
    tps = [n / r["step_s"] for n, r in zip(tokens[warmup:], rows[warmup:], strict=True)]
    split = {k: statistics.median(r["time"][k] for r in rows[warmup:]) for k in rows[0]["time"]}
    split["teacher_bytes"] = statistics.median(r["teacher_bytes"] for r in rows[warmup:])
    return tps, split, session


def bare(cfg: object, warmup: int) -> list[float]:
    import torch

    from benchmarks.bench_engine import bare_loop
    from xtalign.distill.data import DataPipeline
    from xtalign.distill.engine import Session

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        session = Session(cfg, Path(tmp))
        pipe = DataPipeline(session.corpus, session.builder, batch_size=cfg.batch_size, seed=cfg.seed)
        batches = [next(pipe) for _ in range(cfg.steps)]
        pipe.close()
        times = bare_loop(session, batches, cfg.teachers[0].top_k)
    return [b.student_tokens / t for b, t in zip(batches[warmup:], times[warmup:], strict=True)]


def steps_part(steps: int, warmup: int) -> dict[str, object]:
    import ray

    out: dict[str, object] = {}
    out["bare"] = statistics.median(bare(config(steps, "local", False), warmup))
    tps, split, _ = run_engine(config(steps, "local", False), warmup)
    out["local"], out["local_split"] = statistics.median(tps), split
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        for name, asyn in (("ray_sync", False), ("ray_async", True)):
            tps, split, _ = run_engine(config(steps, "ray", asyn), warmup)
            out[name], out[f"{name}_split"] = statistics.median(tps), split
    finally:
        ray.shutdown()
    return out


def transport_part(vocab: int = 262_144, positions: int = 2048, k: int = 64) -> dict[str, object]:
    import ray
    import torch

    from xtalign.distill.transport import pack_topk, packed_nbytes
    from xtalign.losses import TeacherTopK

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             object_store_memory=5 * 2**30)

    @ray.remote
    def touch(x: object) -> int:  # the receiving side maps the object (zero-copy for numpy)
        if isinstance(x, dict):
            return sum(int(v.nbytes) for v in x.values() if isinstance(v, np.ndarray))
        return int(x.nbytes)

    try:
        ray.get(touch.remote(np.zeros(1)))
        logits = torch.randn(1, positions, vocab)  # [1, T, V] fp32: what NeMo ships
        t0 = time.perf_counter()
        top = pack_topk(TeacherTopK.from_logits(logits, k=k))
        reduce_s = time.perf_counter() - t0
        res: dict[str, object] = {"vocab": vocab, "positions": positions, "k": k, "topk_reduce_s": reduce_s}
        for name, obj in (("topk", top), ("full_fp32", logits.numpy())):
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                ref = ray.put(obj)
                nbytes = ray.get(touch.remote(ref))
                times.append(time.perf_counter() - t0)
                del ref
            res[name] = {"bytes": nbytes, "put_and_fetch_s": statistics.median(times)}
        assert res["topk"]["bytes"] == packed_nbytes(top)
        return res
    finally:
        ray.shutdown()


def main() -> int:
    from xtalign.cli.common import dump_json, provenance

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--skip-steps", action="store_true")
    p.add_argument("--skip-transport", action="store_true")
    p.add_argument("--out", default=str(ROOT / "out/bench/ray.json"))
    args = p.parse_args()
    result: dict[str, object] = {"provenance": provenance()}
    if not args.skip_steps:
        s = steps_part(args.steps, args.warmup)
        result["steps"] = s
        print("student tokens/s (median over steps; teacher and student one CPU each):")
        for name in ("bare", "local", "ray_sync", "ray_async"):
            print(f"  {name:<10} {s[name]:10,.0f}")
        print(f"  ray sync / local  {s['ray_sync'] / s['local']:.3f}  (target >= 0.85)")
        print(f"  ray async / sync  {s['ray_async'] / s['ray_sync']:.3f}  (target >= 1.3)")
        split = s["local_split"]
        print(f"  local step split (s): teacher {split['teacher']:.3f}, student {split['student']:.3f}, "
              f"data {split['data']:.4f}; ray teacher bytes/step {s['ray_sync_split']['teacher_bytes']:,.0f}")
    if not args.skip_transport:
        t = transport_part()
        result["transport"] = t
        print(f"transport, one sample of {t['positions']} positions x {t['vocab']:,} vocab:")
        for name in ("topk", "full_fp32"):
            print(f"  {name:<10} {t[name]['bytes']:>14,} B   put + fetch {t[name]['put_and_fetch_s']:.4f} s")
        ratio = t["full_fp32"]["bytes"] / t["topk"]["bytes"]
        print(f"  full / top-{t['k']}: {ratio:,.0f}x the bytes; top-k reduction itself {t['topk_reduce_s']:.2f} s")
    dump_json(Path(args.out), result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
