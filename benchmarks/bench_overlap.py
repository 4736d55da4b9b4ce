"""Wall time of the README's main command, `xtalign overlap` on the default 5-tokenizer set.

    .venv/bin/python benchmarks/bench_overlap.py                 # 3 repeats
    .venv/bin/python benchmarks/bench_overlap.py --repeats 5
    .venv/bin/python benchmarks/bench_overlap.py --smoke --out /tmp/overlap.json --allow-dirty

Artifacts must already be cached (the first, untimed run fetches them). Each repeat is a fresh process, so
the figure includes interpreter start-up, imports, tokenizer loading, the overlap and the three output
files. Target (issue #2): ≤ 20 s on the 2-core machine. Results (the spread of the wall times over the
repeats: median, quartiles, IQR, min, max and the values) go to benchmarks/results/overlap.json.
`--smoke`: one repeat (its number is not a result).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import begin, parser, spread, write_results  # noqa: E402

TARGET_S = 20.0


def main() -> int:
    p = parser("overlap", __doc__)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    if args.smoke:
        args.repeats = 1
    prov = begin(args, "bench_overlap.py")
    cmd = [sys.executable, "-m", "xtalign.cli.main", "overlap"]
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([*cmd, "--out", f"{tmp}/warm"], check=True, capture_output=True)  # fetch/extract once
        walls = []
        for i in range(args.repeats):
            t0 = time.perf_counter()
            subprocess.run([*cmd, "--out", f"{tmp}/r{i}"], check=True, capture_output=True)
            walls.append(time.perf_counter() - t0)
    wall = spread(walls)
    print(f"xtalign overlap (default 5 tokenizers): median {wall['median']:.2f} s wall over {args.repeats} runs "
          f"(IQR {wall['iqr']:.2f}, min {wall['min']:.2f}, max {wall['max']:.2f}; target ≤ {TARGET_S:.0f} s; "
          f"{prov['cpu_count']} cpus, load {prov['load_average_1min_start']:.2f})")
    write_results(args, "overlap", prov, {
        "config": {"measured": "xtalign overlap, the default 5 tokenizers, whole process", "repeats": args.repeats},
        "wall_s": wall, "target_s": TARGET_S, "met": wall["median"] <= TARGET_S})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
