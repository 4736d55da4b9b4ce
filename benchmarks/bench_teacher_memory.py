"""Peak memory of one teacher forward: the sliced LM head (TeacherWorker) against the best full-logits forward.

    .venv/bin/python benchmarks/bench_teacher_memory.py              # real Gemma-3-270M, 4 x 512, 3 runs each
    .venv/bin/python benchmarks/bench_teacher_memory.py --model random   # the same shape, random init (no GGUF)
    .venv/bin/python benchmarks/bench_teacher_memory.py --smoke --out /tmp/teacher_memory.json --allow-dirty

Variants, each measured `--runs` times in its own fresh child process, alternating (the order rotates
each round):

- `full`: `FullLogitsTeacher` (benchmarks/common.py), the best full-logits forward one can write: the
  body's hidden states, ONE [B·T, V] fp32 logits tensor, soft-capped in place where the model caps (as
  TeacherWorker does), top-k and the target's logit read from it, then an in-place logsumexp — no second
  full-size buffer (TeacherTopK.from_logits would add one for z / T, and torch.logsumexp more).
- `sliced-H` for each `--head-slices` H (default 64, 256, 512): `TeacherWorker.forward` with head_slice H.

A child loads the model, builds its inputs (seeded random ids, every position real), resets the kernel's
RSS high-water mark (/proc/self/clear_refs; 1 ms psutil sampling where that is refused), runs one forward
and reports the high-water mark minus the RSS before. All variants must agree on the logsumexp and the
top-1 logit (checked). Models: `zoo` = `load_model(model="gemma3-270m")` (de-quantising the cached GGUF takes
~40 s and ~1 GB per child), `random` = a random-init model of Gemma-3-270M's shape, `smoke` = a small
random Gemma-3 (262,144 rows) for the tests.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import begin, parser, ratio, spread, write_results  # noqa: E402

GEMMA3_270M = dict(family="gemma3", hidden_size=640, num_layers=18, num_heads=4, num_kv_heads=1, head_dim=256,
                   intermediate_size=2048, max_position=32768, tie_embeddings=True)
GEMMA3_SMOKE = dict(family="gemma3", hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=32,
                    intermediate_size=128, max_position=512, tie_embeddings=True)


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


class PeakRSS:
    """Peak RSS over a block: the kernel's high-water mark after a reset, else 1 ms psutil sampling."""

    def __enter__(self) -> PeakRSS:
        gc.collect()
        self.before = _status_kb("VmRSS")
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            self.method = "VmHWM"
        except OSError:
            self.method, self.sampled, self._stop = "psutil-1ms", self.before, threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        import psutil

        proc = psutil.Process()
        while not self._stop.is_set():
            self.sampled = max(self.sampled, proc.memory_info().rss // 1024)
            time.sleep(0.001)

    def __exit__(self, *exc: object) -> None:
        if self.method == "VmHWM":
            self.peak = _status_kb("VmHWM")
        else:
            self._stop.set()
            self._thread.join()
            self.peak = self.sampled

    @property
    def increase_mib(self) -> float:
        return (self.peak - self.before) / 1024


def _load(kind: str) -> Any:
    from xtalign.distill.config import ArchConfig
    from xtalign.distill.models.load import load_model

    if kind == "zoo":
        return load_model(model="gemma3-270m")
    arch = GEMMA3_270M if kind == "random" else GEMMA3_SMOKE
    return load_model(model="random", arch=ArchConfig(**arch), tokenizer="gemma3", seed=0)


def _inputs(lm: Any, batch: int, seq: int) -> tuple[Any, Any, Any]:
    """Seeded random ids ``[B, T]`` (every position real), lengths ``[B]``, next-token targets ``[B, T]``."""
    import numpy as np

    ids = np.random.default_rng(0).integers(0, lm.tokenizer.size, (batch, seq))
    lengths = np.full(batch, seq)
    targets = np.concatenate([ids[:, 1:], np.full((batch, 1), -100)], axis=1)
    return ids, lengths, targets


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One variant in this (fresh) process: its peak RSS increase over one forward, and what it computed."""
    import torch

    from benchmarks.common import FullLogitsTeacher
    from xtalign.distill.teacher.worker import TeacherWorker

    torch.set_num_threads(args.threads)
    lm = _load(args.model)
    ids, lengths, targets = _inputs(lm, args.batch, args.seq)
    head_slice = int(args.child.split("-")[1]) if args.child.startswith("sliced-") else 512
    worker = TeacherWorker(lm, top_k=args.top_k, temperature=args.temperature, head_slice=head_slice)
    forward = worker.forward if args.child.startswith("sliced-") else FullLogitsTeacher(worker).forward
    start = time.perf_counter()
    with PeakRSS() as mem:
        out = forward(ids, lengths, targets)
    seconds = time.perf_counter() - start
    return {"variant": args.child, "peak_rss_increase_mib": round(mem.increase_mib, 1),
            "rss_before_mib": round(mem.before / 1024, 1), "method": mem.method, "seconds": round(seconds, 3),
            "rows": lm.rows, "n_params": lm.n_params, "fingerprint": lm.fingerprint[:24],
            "softcap": worker.softcap, **_sample(out)}


def _sample(out: Any) -> dict[str, list[float]]:
    """The logsumexp and top-1 logit at 256 positions spread over the batch (every slice), for the agreement check."""
    lse, top1 = out.logsumexp.flatten(), out.logits[..., 0].float().flatten()
    step = max(1, lse.numel() // 256)
    return {"logsumexp": lse[::step].tolist(), "top1": top1[::step].tolist()}


def _run_child(variant: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", variant, "--model", args.model, "--batch", str(args.batch),
           "--seq", str(args.seq), "--top-k", str(args.top_k), "--temperature", str(args.temperature),
           "--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"bench_teacher_memory.py: child {variant} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(variants: list[str], args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    for r in range(args.runs):
        for k in range(len(variants)):
            v = variants[(r + k) % len(variants)]
            res = _run_child(v, args)
            res["round"] = r
            runs[v].append(res)
            print(f"  round {r} {v:<11} {res['peak_rss_increase_mib']:9.1f} MiB  {res['seconds']:7.2f} s", flush=True)
    return runs


def check_agreement(runs: dict[str, list[dict[str, Any]]], tol: float) -> dict[str, float]:
    """Largest |difference| from the full forward's logsumexp and top-1 logit, per variant (all must be <= tol:
    the variants compute the same thing)."""
    ref = runs["full"][0]
    worst: dict[str, float] = {}
    for v, results in runs.items():
        d = max(max(abs(a - b) for a, b in zip(r[key], ref[key], strict=True)) for r in results
                for key in ("logsumexp", "top1"))
        worst[v] = d
        if d > tol:
            raise SystemExit(f"bench_teacher_memory.py: {v} disagrees with the full forward by {d:.3g} (> {tol})")
    return worst


def summarise(runs: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {v: {"peak_rss_increase_mib": spread([r["peak_rss_increase_mib"] for r in rs]),
                               "seconds": spread([r["seconds"] for r in rs]), "method": rs[0]["method"]}
                           for v, rs in runs.items()}
    rows, n = runs["full"][0]["rows"], args.batch * args.seq
    out["full_over_sliced"] = {v: ratio(out["full"]["peak_rss_increase_mib"], out[v]["peak_rss_increase_mib"])
                               for v in runs if v != "full"}
    out["one_fp32_logits_buffer_mib"] = n * rows * 4 / 2**20
    out["max_difference_from_full"] = check_agreement(runs, tol=0.05)
    return out


def report(summary: dict[str, Any], variants: list[str], args: argparse.Namespace, rows: int) -> None:
    print(f"teacher forward peak RSS increase, model {args.model} ({rows:,} rows), {args.batch} x {args.seq} tokens, "
          f"top-{args.top_k}, T = {args.temperature:g}, {args.threads} threads, {args.runs} runs each")
    print(f"{'variant':<11} {'median MiB':>11} {'min':>9} {'max':>9} {'median s':>9}")
    for v in variants:
        m, s = summary[v]["peak_rss_increase_mib"], summary[v]["seconds"]
        print(f"{v:<11} {m['median']:11.1f} {m['min']:9.1f} {m['max']:9.1f} {s['median']:9.2f}")
    print(f"one [B·T, V] fp32 logits buffer: {summary['one_fp32_logits_buffer_mib']:.1f} MiB")
    print("full / sliced (medians): " + ", ".join(f"{v} {x:.2f}x" for v, x in summary["full_over_sliced"].items()))
    print("largest |difference| from the full forward (logsumexp, top-1 logit): " + ", ".join(
        f"{v} {d:.2e}" for v, d in summary["max_difference_from_full"].items()))


def _args() -> argparse.Namespace:
    p = parser("teacher_memory", __doc__)
    p.add_argument("--model", choices=["zoo", "random", "smoke"], default="zoo")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--top-k", type=int, default=64)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--head-slices", type=int, nargs="+", default=[64, 256, 512])
    p.add_argument("--runs", type=int, default=3, help="runs of each variant (each its own process)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.smoke and not args.child:
        args.model, args.batch, args.seq, args.runs, args.head_slices = "smoke", 2, 128, 1, [32]
    return args


def main() -> int:
    args = _args()
    if args.child:
        print(json.dumps(child(args)))
        return 0
    prov = begin(args, "bench_teacher_memory.py")
    variants = ["full", *(f"sliced-{h}" for h in args.head_slices)]
    runs = measure(variants, args)
    summary = summarise(runs, args)
    rows = runs["full"][0]["rows"]
    report(summary, variants, args, rows)
    config = {"model": args.model, "rows": rows, "batch": args.batch, "seq": args.seq, "top_k": args.top_k,
              "temperature": args.temperature, "head_slices": args.head_slices, "runs": args.runs,
              "threads": args.threads, "fingerprint": runs["full"][0]["fingerprint"],
              "softcap": runs["full"][0]["softcap"]}
    for rs in runs.values():
        for r in rs:
            r.pop("logsumexp"), r.pop("top1")
    write_results(args, "teacher_memory", prov, {"config": config, "summary": summary, "runs": runs})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
