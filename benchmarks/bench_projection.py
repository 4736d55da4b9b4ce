"""Benchmark `xtalign build-projection`: the whole command (wall, peak RSS) and the build alone.

    .venv/bin/python benchmarks/bench_projection.py                       # llama3 x qwen3, 3 CLI runs, 5 builds
    .venv/bin/python benchmarks/bench_projection.py --runs 5
    .venv/bin/python benchmarks/bench_projection.py --student gemma3 --teacher llama3 --runs 5
    .venv/bin/python benchmarks/bench_projection.py --smoke --out /tmp/projection.json --allow-dirty

Targets (llama3 x qwen3, artifacts cached, 2 CPU cores): the command <= 10 s wall and <= 1 GB peak
RSS; the sparse construction with tokenizers preloaded < 1 s. Each CLI run is its own process, measured
with os.wait4 (wall clock, and that child's own ru_maxrss). Prints the figures and writes them, each timed
one with its spread (median, quartiles, IQR, min, max, values) and the provenance taken at the start, to
benchmarks/results/projection.json. `--smoke`: 1 CLI run and 1 build after the first (not a result).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import begin, parser, spread, write_results  # noqa: E402

TARGETS = {"wall_s": 10.0, "peak_rss_mib": 1024}
BUILD_TARGET_S = 1.0


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
    return {"load_tokenizers_s": load_s, "first_build_s": times[0], "build_s": spread(times[1:]),
            "reencode_forward_s": fwd_s, "reencode_reverse_s": rev_s, "forward_tokens": len(forward),
            "reverse_tokens": len(reverse), "stats": proj.stats}


def hardware() -> dict[str, Any]:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"memory_gib": round(mem, 1)}


def versions() -> dict[str, str]:
    out = {}
    for pkg in ("numpy", "scipy", "tiktoken", "sentencepiece", "tokenizers", "safetensors", "rapidfuzz"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "missing"
    return out


def main() -> int:
    p = parser("projection", __doc__)
    p.add_argument("--student", default="llama3")
    p.add_argument("--teacher", default="qwen3")
    p.add_argument("--runs", type=int, default=3, help="CLI runs, each its own process")
    p.add_argument("--build-runs", type=int, default=5, help="builds alone, after a first one that fills caches")
    args = p.parse_args()
    if args.smoke:
        args.runs, args.build_runs = 1, 1
    prov = begin(args, "bench_projection.py")
    build = in_process(args.student, args.teacher, runs=args.build_runs)  # also makes sure the artifacts are cached
    with tempfile.TemporaryDirectory() as tmp:
        cli = [cli_run(args.student, args.teacher, Path(tmp) / "w.safetensors") for _ in range(args.runs)]
    wall, rss = spread([r["wall_s"] for r in cli]), spread([r["peak_rss_mib"] for r in cli])
    built = build["build_s"]
    print(f"{args.student} x {args.teacher} on {prov['cpu_count']} CPUs (load {prov['load_average_1min_start']:.2f})")
    print(f"  xtalign build-projection: wall median {wall['median']:.2f} s "
          f"(runs {', '.join(format(r['wall_s'], '.2f') for r in cli)}), peak RSS median "
          f"{rss['median']:.0f} MiB   [targets <= {TARGETS['wall_s']:.0f} s, <= {TARGETS['peak_rss_mib']} MiB]")
    print(f"  build alone (preloaded): median {built['median']:.3f} s of {built['n']} (IQR {built['iqr']:.3f}, "
          f"min {built['min']:.3f}, max {built['max']:.3f}), first {build['first_build_s']:.3f} s   "
          f"[target < {BUILD_TARGET_S:.0f} s]")
    print(f"    re-encoding: forward {build['forward_tokens']:,} tokens {build['reencode_forward_s']:.3f} s, "
          f"reverse {build['reverse_tokens']:,} tokens {build['reencode_reverse_s']:.3f} s")
    write_results(args, "projection", prov, {
        "config": {"student": args.student, "teacher": args.teacher, "runs": args.runs,
                   "build_runs": args.build_runs},
        "cli": {"wall_s": wall, "peak_rss_mib": rss, "runs": cli, "targets": TARGETS,
                "met": wall["median"] <= TARGETS["wall_s"] and rss["median"] <= TARGETS["peak_rss_mib"]},
        "build_alone": {**build, "target_s": BUILD_TARGET_S, "met": built["median"] < BUILD_TARGET_S},
        "versions": versions(), "hardware": hardware()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
