"""One command on a machine with one CUDA GPU (no package index needed): the GPU checks of the engine.

    python benchmarks/gpu_check.py                         # -> out/gpu_check.json
    python benchmarks/gpu_check.py --wheels .whl           # first install the carried wheels (ray, …) offline

It runs, each in its own subprocess so one failure does not hide the rest, and records every result:
1. the `gpu`-marked tests (`pytest -m gpu`);
2. the tiny recipe on `device: cuda` with `backend: local`, and with `backend: ray` on the one GPU shared
   by the teacher and the student (`num_gpus: 0.5` each);
3. `benchmarks/bench_engine.py --device cuda` and `benchmarks/bench_pkl.py --device cuda`.
The JSON names the GPU, the versions and the git state (taken at the start).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _run(name: str, cmd: list[str], timeout: float) -> dict[str, Any]:
    """One step: its command, exit code, seconds and the tail of its output."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        code, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        code, out = 124, f"timed out after {timeout:g} s\n{exc.stdout or ''}"
    wall = time.perf_counter() - t0
    print(f"[{'ok' if code == 0 else 'FAIL'}] {name} ({wall:.0f} s)", flush=True)
    return {"name": name, "command": " ".join(cmd), "returncode": code, "seconds": round(wall, 1),
            "output_tail": out[-4000:]}


def _install(wheels: Path) -> dict[str, Any]:
    return _run("install carried wheels", [sys.executable, "-m", "pip", "install", "--no-index", "--find-links",
                                           str(wheels), "--no-deps", *map(str, sorted(wheels.glob("*.whl")))], 600)


def _metrics(run_dir: Path) -> dict[str, Any]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()] if (
        run_dir / "metrics.jsonl").is_file() else []
    if not rows:
        return {}
    tps = sorted(r["tokens_per_s"] for r in rows[2:]) or [rows[-1]["tokens_per_s"]]
    return {"steps": len(rows), "final_loss": rows[-1]["loss"], "median_tokens_per_s": tps[len(tps) // 2],
            "peak_memory_mb": rows[-1]["peak_memory_mb"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--wheels", type=Path, help="a folder of wheels to install first (offline)")
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "gpu_check.json")
    ap.add_argument("--steps", type=int, default=40, help="steps of the tiny recipe")
    args = ap.parse_args(argv)
    from xtalign.provenance import provenance

    record: dict[str, Any] = {"provenance": provenance(), "steps": []}
    if args.wheels:
        record["steps"].append(_install(args.wheels))
    py, runs = sys.executable, ROOT / "out" / "gpu_check"
    tiny = [py, "-m", "xtalign.cli.main", "distill", "--config", "distill/configs/tiny-cpu.yaml", "device=cuda",
            f"steps={args.steps}", "--overwrite"]
    plan = [
        ("gpu tests", [py, "-m", "pytest", "-q", "-m", "gpu", "tests/"], 900),
        ("tiny recipe, cuda, local", [*tiny, "--out", str(runs / "local")], 600),
        ("tiny recipe, cuda, ray (one GPU shared)", [*tiny, "backend=ray", "student.num_gpus=0.5",
                                                     "teachers.0.num_gpus=0.5", "--out", str(runs / "ray")], 900),
        ("bench_engine on cuda", [py, "benchmarks/bench_engine.py", "--device", "cuda", "--allow-dirty", "--out",
                                  str(runs / "bench_engine.json")], 900),
        ("bench_pkl on cuda", [py, "benchmarks/bench_pkl.py", "--device", "cuda", "--allow-dirty", "--out",
                               str(runs / "bench_pkl.json")], 900),
    ]
    for name, cmd, timeout in plan:
        record["steps"].append(_run(name, cmd, timeout))
    record["runs"] = {name: _metrics(runs / name) for name in ("local", "ray")}
    for name in ("bench_engine", "bench_pkl"):
        path = runs / f"{name}.json"
        record[name] = json.loads(path.read_text()) if path.is_file() else None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    failed = [s["name"] for s in record["steps"] if s["returncode"] != 0]
    print(f"wrote {args.out}; {len(record['steps']) - len(failed)} of {len(record['steps'])} steps passed"
          + (f" (failed: {', '.join(failed)})" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
