"""Peak memory of one teacher forward: sliced LM head + top-k (TeacherWorker) vs full logits + top-k.

Each variant runs in a fresh child process (tracemalloc does not see torch's allocator): the child
loads the model, resets the kernel's RSS high-water mark (/proc/self/clear_refs), runs one forward
and reports VmHWM − VmRSS-before. Default model: the real Gemma-3-270M from the zoo (262,144-row head);
`--random` builds a randomly initialised model of the same shape instead (no download).

    .venv/bin/python benchmarks/bench_teacher_memory.py --random
    .venv/bin/python benchmarks/bench_teacher_memory.py            # real zoo model (fetches ~250 MB once)
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

GEMMA3_270M = dict(family="gemma3", hidden_size=640, num_layers=18, num_heads=4, num_kv_heads=1, head_dim=256,
                   intermediate_size=2048, max_position=32768, tie_embeddings=True)


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


def _load(args: argparse.Namespace) -> Any:
    from xtalign.distill.config import ArchConfig
    from xtalign.distill.models import load_model

    if args.random:
        return load_model(model="random", arch=ArchConfig(**GEMMA3_270M), tokenizer="gemma3", seed=0)
    return load_model(model="gemma3-270m")


def child(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import torch

    from xtalign.distill.teacher import TeacherWorker
    from xtalign.losses import TeacherTopK

    torch.set_num_threads(args.threads)
    lm = _load(args)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, lm.tokenizer.size, (args.batch, args.seq))  # [B, T]
    lengths = np.full(args.batch, args.seq)
    targets = np.concatenate([ids[:, 1:], np.full((args.batch, 1), -100)], axis=1)  # [B, T]
    worker = TeacherWorker(lm, top_k=args.top_k, temperature=1.0, head_slice=args.head_slice)
    start = time.perf_counter()
    with PeakRSS() as mem:
        if args.child == "sliced":
            out = worker.forward(ids, lengths, targets)
        else:
            with torch.no_grad():
                logits = lm.model(input_ids=torch.from_numpy(ids), attention_mask=torch.ones_like(
                    torch.from_numpy(ids))).logits  # [B, T, V]
                out = TeacherTopK.from_logits(logits, args.top_k, 1.0, torch.from_numpy(targets))
                del logits
    seconds = time.perf_counter() - start
    return {"variant": args.child, "peak_rss_increase_mib": round(mem.increase_mib, 1),
            "rss_before_mib": round(mem.before / 1024, 1), "method": mem.method, "seconds": round(seconds, 2),
            "rows": lm.rows, "n_params": lm.n_params, "fingerprint": lm.fingerprint[:24],
            "logsumexp_mean": float(out.logsumexp.mean())}


def _run_child(variant: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", variant, "--batch", str(args.batch), "--seq", str(args.seq),
           "--top-k", str(args.top_k), "--head-slice", str(args.head_slice), "--threads", str(args.threads)]
    cmd += ["--random"] if args.random else []
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"child {variant} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--random", action="store_true", help="random-init Gemma-3-270M-shaped model (no download)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--top-k", type=int, default=64)
    p.add_argument("--head-slice", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("out/bench/teacher_memory.json"))
    p.add_argument("--child", choices=["sliced", "full"], help=argparse.SUPPRESS)
    return p


def main() -> int:
    args = _parser().parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return 0
    from xtalign.cli.common import dump_json, provenance

    results = [_run_child(v, args) for v in ("sliced", "full")]
    model = "random Gemma-3-270M shape" if args.random else "gemma3-270m (zoo)"
    print(f"teacher forward peak RSS, {model}, {args.batch}x{args.seq} tokens, top-{args.top_k}, "
          f"head slice {args.head_slice}, {args.threads} threads")
    print(f"{'variant':<8} {'peak RSS increase':>18} {'seconds':>8}")
    for r in results:
        print(f"{r['variant']:<8} {r['peak_rss_increase_mib']:>14.1f} MiB {r['seconds']:>8.2f}")
    ratio = results[1]["peak_rss_increase_mib"] / max(results[0]["peak_rss_increase_mib"], 1e-9)
    print(f"full / sliced: {ratio:.1f}x")
    config = {"model": model, "batch": args.batch, "seq": args.seq, "top_k": args.top_k,
              "head_slice": args.head_slice, "threads": args.threads}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    dump_json(args.out, {"benchmark": "teacher_memory", "provenance": provenance(), "config": config,
                         "results": results, "full_over_sliced": round(ratio, 2)})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
