"""The "measured" cell of each row of benchmarks/README.md's performance table, read from the committed results.

    .venv/bin/python benchmarks/summary.py            # one line per results file: `name: cell`
    .venv/bin/python benchmarks/summary.py --json     # the same as JSON {name: cell}

Every cell is written from `benchmarks/results/<name>.json` alone (median and interquartile range of the
spread each script stores, the ratios it computed), so the table can be checked against the files
(tests/test_docs.py does) and a re-run restates it by running this again. A results file that is absent
is left out.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def med(s: Mapping[str, Any], scale: float = 1.0, digits: int = 2) -> str:
    """A spread as `median [q1–q3]` (scaled, fixed digits; thousands separated)."""
    def f(x: float) -> str:
        return f"{x * scale:,.{digits}f}"

    if s["n"] == 1:
        return f(s["median"])
    return f"{f(s['median'])} [{f(s['q1'])}–{f(s['q3'])}]"


def overlap(r: Mapping[str, Any]) -> str:
    return f"{med(r['wall_s'])} s (n {r['wall_s']['n']})"


def projection(r: Mapping[str, Any]) -> str:
    cli, build = r["cli"], r["build_alone"]
    return (f"{med(cli['wall_s'])} s, {med(cli['peak_rss_mib'], digits=0)} MiB peak (n {cli['wall_s']['n']}); "
            f"build alone {med(build['build_s'], digits=3)} s")


def align(r: Mapping[str, Any]) -> str:
    cases = [f"{med(c['tokens_per_s'], 1e-6, 1)} M tok/s ({name.split(',')[1].strip().split(' (')[0]})"
             for name, c in r["cases"].items()]
    ratios = [c["speedup"] for c in r["comparisons"]]
    return f"{'; '.join(cases)}; vs NeMo-style DP {min(ratios):.0f}–{max(ratios):.0f}× over {len(ratios)} pairs"


def pkl(r: Mapping[str, Any]) -> str:
    by = {x["variant"]: x for x in r["results"] if x["device"] == "cpu"}
    fast, naive = by["fast"], by["naive"]
    return (f"T {fast['seq']}: {med(fast['ms'], 1e-3)} s vs {med(naive['ms'], 1e-3)} s, "
            f"{fast['peak_mib'] / 1024:.2f} vs {naive['peak_mib'] / 1024:.2f} GiB above inputs")


def engine(r: Mapping[str, Any]) -> str:
    s = r["summary"]
    split = "/".join(f"{s['engine']['time'][p]['median']:.2f}" for p in ("data", "teacher", "student"))
    bare = "/".join(f"{s['bare']['time'][p]['median']:.2f}" for p in ("data", "teacher", "student"))
    return (f"{med(s['engine']['tokens_per_s'], digits=0)} vs bare {med(s['bare']['tokens_per_s'], digits=0)} "
            f"tok/s ({s['ratios']['engine_over_bare']:.2f}×); data/teacher/student s per step {split} vs {bare}")


def data(r: Mapping[str, Any]) -> str:
    cells = []
    for name, sl in r["slices"].items():
        if "workers" not in sl:  # the target entry
            continue
        w = sl["workers"]
        cells.append(f"{name} " + ", ".join(f"{med(w[k]['student_tokens_per_s'], 1e-6)} M ({k} w)" for k in sorted(w)))
    return "; ".join(cells) + " student tok/s"


def teacher_memory(r: Mapping[str, Any]) -> str:
    s = r["summary"]
    sliced = sorted((k for k in s if k.startswith("sliced-")), key=lambda k: int(k.split("-")[1]))
    cells = [f"full {med(s['full']['peak_rss_increase_mib'], digits=0)} MiB"]
    cells += [f"slice {k.split('-')[1]} {med(s[k]['peak_rss_increase_mib'], digits=0)} MiB "
              f"({s['full_over_sliced'][k]:.1f}× less)" for k in sliced]
    return ", ".join(cells)


def ray(r: Mapping[str, Any]) -> str:
    s = r["steps"]["summary"]
    names = ("local-1", "local-2", "ray-sync", "ray-async")
    tps = ", ".join(f"{k} {med(s[k]['tokens_per_s'], digits=0)}" for k in names)
    q = s["ratios"]
    t = r["transport"]
    return (f"tok/s {tps}; async/local-1 {q['ray_async_over_local_1']:.2f}× (bound "
            f"{s['async_bound_from_local_1_split']:.2f}×), async/local-2 {q['ray_async_over_local_2']:.2f}×, "
            f"async/sync {q['ray_async_over_ray_sync']:.2f}×, sync/local-1 {q['ray_sync_over_local_1']:.2f}×; "
            f"top-k {t['topk']['bytes']:,} B in {med(t['topk']['put_and_fetch_s'], 1e3, 1)} ms vs full fp32 "
            f"{t['full_fp32']['bytes'] / 1e9:.2f} GB in {med(t['full_fp32']['put_and_fetch_s'], 1e3, 0)} ms")


def bench_generate(r: Mapping[str, Any]) -> str:
    g = r["generation"]
    tps = g["new_tokens_per_s"]
    cell = (f"{med(tps['xtalign'], digits=0)} vs model.generate {med(tps['bare_generate'], digits=0)} new tok/s "
            f"({g['xtalign_over_bare']:.2f}×)")
    if r.get("ray"):
        q = r["ray"]["student_tokens_per_s"]
        cell += (f"; on-policy Ray sync {med(q['sync'], digits=0)}, async {med(q['async'], digits=0)} student tok/s "
                 f"({r['ray']['async_over_sync']:.2f}×)")
    return cell


CELLS: dict[str, Callable[[Mapping[str, Any]], str]] = {
    "overlap": overlap, "projection": projection, "align": align, "pkl": pkl, "engine": engine, "data": data,
    "teacher_memory": teacher_memory, "ray": ray, "bench_generate": bench_generate}


def cells(results: Path = RESULTS) -> dict[str, str]:
    """{results name: measured cell} for every results file present."""
    out = {}
    for name, cell in CELLS.items():
        path = results / f"{name}.json"
        if path.is_file():
            out[name] = cell(json.loads(path.read_text()))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    found = cells(args.results)
    if args.json:
        print(json.dumps(found, indent=2, ensure_ascii=False))
    else:
        for name, cell in found.items():
            print(f"{name}: {cell}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
