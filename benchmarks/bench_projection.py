"""Benchmark `xtalign build-projection`: the whole command (wall, peak RSS) and the build alone.

    .venv/bin/python benchmarks/bench_projection.py                       # llama3 x qwen3, 3 CLI runs
    .venv/bin/python benchmarks/bench_projection.py --student gemma3 --teacher llama3 --runs 5

Targets (llama3 x qwen3, artifacts cached, 2 CPU cores): the command <= 10 s wall and <= 1 GB peak
RSS; the sparse construction with tokenizers preloaded < 1 s. Each CLI run is its own process, measured
with os.wait4 (wall clock, and that child's own ru_maxrss). Prints the figures and writes JSON with
provenance (git sha, date, versions, hardware) to --out.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any


def cli_run(student: str, teacher: str, out: Path) -> dict[str, float]:
    """One `xtalign build-projection` in a fresh process: wall seconds and peak RSS (MiB)."""
    cmd = [sys.executable, "-m", "xtalign.cli.main", "build-projection", "--student", student, "--teacher", teacher,
           "--out", str(out), "--overwrite"]
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"build-projection failed ({proc.returncode}): {err.read().decode(errors='replace')}")
    return {"wall_s": wall, "peak_rss_mib": usage.ru_maxrss / 1024}  # Linux reports ru_maxrss in KiB


def in_process(student_name: str, teacher_name: str, runs: int) -> dict[str, Any]:
    """The build alone, tokenizers loaded and their encoders built; the first build also fills vocab caches."""
    from xtalign.projection import ProjectionConfig, RowSource, encode_exact
    from xtalign.zoo import load_tokenizer

    t0 = time.perf_counter()
    student, teacher = load_tokenizer(student_name), load_tokenizer(teacher_name)
    student.encode("warm up"), teacher.encode("warm up")
    load_s = time.perf_counter() - t0
    cfg = ProjectionConfig()
    times = []
    for _ in range(runs + 1):
        t0 = time.perf_counter()
        proj = cfg.build(student, teacher)
        times.append(time.perf_counter() - t0)
    decomposed = (proj.row_source == RowSource.DECOMPOSED).nonzero()[0].tolist()
    forward = [student.vocab.token_bytes[i] for i in decomposed]
    reverse = [teacher.vocab.token_bytes[i] for i in teacher.vocab.normal_ids.tolist()]
    t0 = time.perf_counter()
    encode_exact(teacher, forward)
    fwd_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    encode_exact(student, reverse)
    rev_s = time.perf_counter() - t0
    return {"load_tokenizers_s": load_s, "first_build_s": times[0], "build_s": times[1:],
            "build_median_s": statistics.median(times[1:]), "reencode_forward_s": fwd_s,
            "reencode_reverse_s": rev_s, "forward_tokens": len(forward), "reverse_tokens": len(reverse),
            "stats": proj.stats}


def hardware() -> dict[str, Any]:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"memory_gib": round(mem, 1), "load_avg_1m": os.getloadavg()[0]}


def versions() -> dict[str, str]:
    out = {}
    for pkg in ("numpy", "scipy", "tiktoken", "sentencepiece", "tokenizers", "safetensors", "rapidfuzz"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "missing"
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", default="llama3")
    ap.add_argument("--teacher", default="qwen3")
    ap.add_argument("--runs", type=int, default=3, help="CLI runs (median reported); the build alone runs 5 times")
    ap.add_argument("--out", type=Path, default=Path("out/bench/projection.json"))
    args = ap.parse_args()
    from xtalign.cli.common import dump_json, provenance

    build = in_process(args.student, args.teacher, runs=5)  # also makes sure the artifacts are cached
    with tempfile.TemporaryDirectory() as tmp:
        cli = [cli_run(args.student, args.teacher, Path(tmp) / "w.safetensors") for _ in range(args.runs)]
    result = {
        "benchmark": "build-projection", "student": args.student, "teacher": args.teacher,
        "cli": {"runs": cli, "wall_median_s": statistics.median(r["wall_s"] for r in cli),
                "peak_rss_median_mib": statistics.median(r["peak_rss_mib"] for r in cli),
                "targets": {"wall_s": 10.0, "peak_rss_mib": 1024}},
        "build_alone": {**build, "target_s": 1.0},
        "provenance": provenance(), "versions": versions(), "hardware": hardware(),
    }
    print(f"{args.student} x {args.teacher} on {result['provenance']['cpu_count']} CPUs "
          f"(load {result['hardware']['load_avg_1m']:.2f})")
    print(f"  xtalign build-projection: wall median {result['cli']['wall_median_s']:.2f} s "
          f"(runs {', '.join(format(r['wall_s'], '.2f') for r in cli)}), peak RSS median "
          f"{result['cli']['peak_rss_median_mib']:.0f} MiB   [targets <= 10 s, <= 1024 MiB]")
    print(f"  build alone (preloaded): median {build['build_median_s']:.3f} s of {len(build['build_s'])}, first "
          f"{build['first_build_s']:.3f} s   [target < 1 s]")
    print(f"    re-encoding: forward {build['forward_tokens']:,} tokens {build['reencode_forward_s']:.3f} s, "
          f"reverse {build['reverse_tokens']:,} tokens {build['reencode_reverse_s']:.3f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    dump_json(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
