"""The eval table as a figure: held-out bits per byte per row (mean ± std over seeds), and by character class.

    .venv/bin/python figures/eval_table.py                                   # out/eval/eval_table.json
    .venv/bin/python figures/eval_table.py --from out/eval-smoke/eval_table.json --out /tmp/eval_table.png

Left: one horizontal bar per row (teachers, the untrained student, every trained row), error bars = the
sample standard deviation over the student init seeds, the CE-only row as a dashed reference line. Right:
each trained row's bits per byte by character class minus CE only's (negative = the method helps there).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CLASSES = ("digits", "whitespace", "punctuation", "letters", "other")
KIND_COLOURS = {"teacher": "#8172b3", "untrained": "#937860", "trained": "#4c72b0"}
CLASS_COLOURS = ("#c44e52", "#55a868", "#dd8452", "#4c72b0", "#8c8c8c")


def _mean(stat: dict[str, Any]) -> float:
    return float("nan") if stat["mean"] is None else float(stat["mean"])


def _std(stat: dict[str, Any]) -> float:
    return 0.0 if stat.get("std") is None else float(stat["std"])


def _bars(ax: Any, rows: list[dict[str, Any]]) -> None:
    """Left panel: overall bits per byte per row, error bars over seeds, CE only dashed."""
    ys = list(range(len(rows)))[::-1]
    means = [_mean(r["bits_per_byte"]) for r in rows]
    ax.barh(ys, means, xerr=[_std(r["bits_per_byte"]) for r in rows], capsize=3,
            color=[KIND_COLOURS.get(r["kind"], "#4c72b0") for r in rows])
    for y, m in zip(ys, means, strict=True):
        if m == m:  # not nan
            ax.text(m, y, f" {m:.3f}", va="center", fontsize=7)
    ce = next((r for r in rows if r["key"] == "ce"), None)
    if ce is not None and ce["bits_per_byte"]["mean"] is not None:
        ax.axvline(ce["bits_per_byte"]["mean"], color="black", linestyle="--", linewidth=0.8, label="CE only")
        ax.legend(loc="lower right", fontsize=7)
    ax.set_yticks(ys, [r["label"] for r in rows], fontsize=7)
    ax.set_xlabel("held-out bits per byte (lower is better)")


def _class_deltas(ax: Any, rows: list[dict[str, Any]]) -> None:
    """Right panel: per character class, each trained row minus CE only."""
    import numpy as np

    ce = next((r for r in rows if r["key"] == "ce"), None)
    trained = [r for r in rows if r["kind"] == "trained" and r["key"] != "ce"]
    if ce is None or not trained:
        ax.set_axis_off()
        return
    ys = np.arange(len(trained))[::-1]
    h = 0.8 / len(CLASSES)
    for k, (cls, colour) in enumerate(zip(CLASSES, CLASS_COLOURS, strict=True)):
        base = _mean(ce["by_class"][cls])
        deltas = [_mean(r["by_class"][cls]) - base for r in trained]
        ax.barh(ys + 0.4 - (k + 0.5) * h, deltas, height=h, color=colour, label=cls)
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_yticks(ys, [r["label"] for r in trained], fontsize=7)
    ax.set_xlabel("bits per byte minus CE only's, by character class")
    ax.legend(fontsize=7, loc="best")


def draw(table: dict[str, Any], path: Path) -> Path:
    """Both panels as one PNG (Agg backend); the title names hardware, budget and seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = table["rows"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 0.38 * len(rows) + 2.2), dpi=100)
    _bars(left, rows)
    _class_deltas(right, rows)
    hw, b = table["hardware"], table["budget"]
    where = hw.get("gpu") or f"{hw['cpu_count']}-core CPU"
    fig.suptitle(f"xtalign eval table ({table['mode']}, {where}): {b['tokens']:,} student tokens per run, "
                 f"seeds {table['seeds']}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="source", type=Path, default=ROOT / "out" / "eval" / "eval_table.json")
    p.add_argument("--out", type=Path, default=HERE / "eval_table.png")
    args = p.parse_args(argv)
    if not args.source.is_file():
        print(f"error: {args.source} does not exist; run benchmarks/eval_table.py first", file=sys.stderr)
        return 2
    print(f"wrote {draw(json.loads(args.source.read_text()), args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
