"""Wall time of the README's main command, `xtalign overlap` on the default 5-tokenizer set.

    .venv/bin/python benchmarks/bench_overlap.py [--repeats 3]

Artifacts must already be cached (the first run fetches them). Each repeat is a fresh process, so the
figure includes interpreter start-up, imports, tokenizer loading, the overlap and the three output files.
Target (issue #2): ≤ 20 s on the 2-core machine. Writes out/bench/overlap.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    cmd = [sys.executable, "-m", "xtalign.cli.main", "overlap"]
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([*cmd, "--out", f"{tmp}/warm"], check=True, capture_output=True)  # fetch/extract once
        walls = []
        for i in range(args.repeats):
            t0 = time.perf_counter()
            subprocess.run([*cmd, "--out", f"{tmp}/r{i}"], check=True, capture_output=True)
            walls.append(time.perf_counter() - t0)
    from xtalign.cli.common import provenance

    med = statistics.median(walls)
    result = {"benchmark": "overlap-default-5", "median_wall_s": round(med, 3), "walls_s": [round(w, 3) for w in walls],
              "target_s": 20.0, **provenance()}
    out = ROOT / "out" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "overlap.json").write_text(json.dumps(result, indent=2))
    print(f"xtalign overlap (default 5 tokenizers): median {med:.2f} s wall over {args.repeats} runs "
          f"(target ≤ 20 s; {os.cpu_count()} cpus) -> {out / 'overlap.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
