"""The eval table as a figure: each trained row's DIFFERENCE from CE only, paired by seed.

    .venv/bin/python figures/eval_table.py          # benchmarks/results/eval-table-cpu/eval_table.json -> here
    .venv/bin/python figures/eval_table.py --from out/eval-smoke/results/eval_table.json --out /tmp/eval_table.png

For every trained row and every student init seed: the row's held-out bits per byte minus CE only's at the
same seed. Each panel draws the per-seed differences as small points, their range as a line and their mean
as a large marker; 0 (dashed) is CE only. Left: overall; middle: by character class; right: by source.
A class or source with fewer than 1,000 held-out bytes is drawn grey and hollow and named "noise" in the
legend. The CE-only, untrained-student and teacher figures are written as text under the title, not drawn
(the teachers are pretrained and may have seen these public texts; their split is not held out for them).
`benchmarks/eval_table.py` draws the same figure into its results folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_SOURCE = ROOT / "benchmarks" / "results" / "eval-table-cpu" / "eval_table.json"
CLASSES = ("digits", "whitespace", "punctuation", "letters", "other")
NOISE_BYTES = 1000
COLOURS = ("#c44e52", "#55a868", "#dd8452", "#4c72b0", "#8172b3", "#937860", "#da8bc3")
NOISE_COLOUR = "#b0b0b0"
MARKERS = ("D", "o", "s", "^", "v", "P", "X")
Stat = dict[str, Any]


def _pair(row: dict[str, Any], ce: dict[str, Any], get: Callable[[dict[str, Any]], Stat | None]) -> Stat:
    """Per-seed differences row − CE from the two rows' per-seed values (for tables without `vs_ce`)."""
    a, b = get(row) or {}, get(ce) or {}
    ce_by_seed = dict(zip(ce.get("seeds", []), b.get("values", []), strict=False))
    vals = [v - ce_by_seed[s] for s, v in zip(row.get("seeds", []), a.get("values", []), strict=False)
            if s in ce_by_seed]
    return {"mean": sum(vals) / len(vals) if vals else None, "values": vals}


def differences(table: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per trained row but CE only: label and paired differences overall / by class / by source
    (auto folded into the row that ran the same config)."""
    rows = table["rows"]
    ce = next(r for r in rows if r["key"] == "ce")
    twin = (table.get("auto") or {}).get("same_as")
    out = []
    for r in rows:
        if r["kind"] != "trained" or r["key"] == "ce" or (r["key"] == "auto" and twin):
            continue
        v = r.get("vs_ce") or {
            "bits_per_byte": _pair(r, ce, lambda x: x["bits_per_byte"]),
            "by_class": {c: _pair(r, ce, lambda x, c=c: x["by_class"][c]) for c in CLASSES},
            "by_source": {s: _pair(r, ce, lambda x, s=s: x.get("by_source", {}).get(s))
                          for s in r.get("by_source", {})}}
        label = r["label"] + (" (= auto)" if r["key"] == twin else "")
        out.append({"key": r["key"], "label": label, **v})
    return out


def _groups(names: list[str], n_bytes: dict[str, int], palette: tuple[str, ...]) -> list[tuple[str, str, bool]]:
    """(legend label, colour, noisy) per class or source; fewer than NOISE_BYTES bytes = noisy."""
    out = []
    for i, name in enumerate(names):
        nb = n_bytes.get(name)
        noisy = nb is not None and nb < NOISE_BYTES
        label = f"{name} (n = {nb:,} bytes < {NOISE_BYTES:,}: noise)" if noisy else name
        out.append((label, NOISE_COLOUR if noisy else palette[i % len(palette)], noisy))
    return out


def _dots(ax: Any, stats: list[list[Stat | None]], groups: list[tuple[str, str, bool]]) -> None:
    """Rows top to bottom; per row one band, per group a slot: seed points, their range, the mean."""
    n = len(stats)
    h = 0.8 / max(1, len(groups))
    for g, (label, colour, noisy) in enumerate(groups):
        face = "none" if noisy else colour
        for i, per_group in enumerate(stats):
            stat = per_group[g]
            if not stat or stat.get("mean") is None:
                continue
            y = (n - 1 - i) + 0.4 - (g + 0.5) * h
            vals = stat.get("values") or [stat["mean"]]
            ax.hlines(y, min(vals), max(vals), color=colour, lw=1.0, alpha=0.7)
            ax.scatter(vals, [y] * len(vals), s=9, color=colour, alpha=0.6, zorder=3)
            ax.scatter([stat["mean"]], [y], s=42, marker=MARKERS[g % len(MARKERS)], facecolors=face, edgecolors=colour,
                       zorder=4,
                       label=label if i == 0 else None)
    ax.axvline(0.0, color="black", linestyle="--", linewidth=0.8)
    ax.grid(axis="x", alpha=0.3)


def _overall(ax: Any, diffs: list[dict[str, Any]]) -> None:
    """Left panel; a row far off the others' scale (more than 4× their median |difference|) is written at the
    edge with its value instead of stretching the axis."""
    import statistics

    stats = [d["bits_per_byte"] for d in diffs]
    _dots(ax, [[s] for s in stats], [("mean over seeds (dots: each seed; line: range)", "#4c72b0", False)])
    ax.set_title("overall", fontsize=9)
    known = [abs(s["mean"]) for s in stats if s.get("mean") is not None]
    scale = max(4 * statistics.median(known), 0.05) if len(known) >= 3 else float("inf")
    off = [s.get("mean") is not None and abs(s["mean"]) > scale for s in stats]
    inside = [v for s, o in zip(stats, off, strict=True) if s.get("mean") is not None and not o
              for v in s.get("values") or [s["mean"]]]
    lo, hi = min([*inside, 0.0]), max([*inside, 0.0])
    pad = 0.25 * (hi - lo or 0.05)
    if any(off):
        ax.set_xlim(lo - pad, hi + pad)
    for i, (s, o) in enumerate(zip(stats, off, strict=True)):
        m, y = s.get("mean"), len(stats) - 1 - i
        if m is None:
            continue
        if not o:
            ax.annotate(f"{m:+.3f}", (m, y), xytext=(0, 6), textcoords="offset points", fontsize=7, ha="center")
        elif m > 0:
            ax.annotate(f"{m:+.3f} (off scale) →", (hi + pad, y), fontsize=7, ha="right", va="center")
        else:
            ax.annotate(f"← {m:+.3f} (off scale)", (lo - pad, y), fontsize=7, ha="left", va="center")


def _context(table: dict[str, Any]) -> str:
    """CE only, the untrained student and the teachers, as one line of text."""
    rows = {r["key"]: r for r in table["rows"]}

    def fmt(r: dict[str, Any]) -> str:
        s = r["bits_per_byte"]
        return "—" if s["mean"] is None else f"{s['mean']:.3f}" + (f" ± {s['std']:.3f}" if s.get("std") else "")

    teachers = ", ".join(f"{r['label'].removeprefix('teacher ')} {fmt(r)}" for r in table["rows"]
                         if r["kind"] == "teacher")
    parts = [f"0 = CE only ({fmt(rows['ce'])} bits/byte)"]
    if "untrained" in rows:
        parts.append(f"untrained student {fmt(rows['untrained'])}")
    if teachers:
        parts.append(f"teachers (pretrained, split not held out for them): {teachers}")
    return "; ".join(parts)


def draw(table: dict[str, Any], path: Path) -> Path:
    """Overall, by class and (when the table has it) by source differences from CE only, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    diffs = differences(table)
    first = table["rows"][0]
    sources = sorted({s for d in diffs for s in d.get("by_source", {})})
    ncols = 3 if sources else 2
    fig, axes = plt.subplots(1, ncols, figsize=(5.2 * ncols, 0.42 * max(4, len(diffs)) + 2.4), dpi=100, sharey=True)
    _overall(axes[0], diffs)
    cls = _groups(list(CLASSES), first.get("class_bytes", {}), COLOURS)
    _dots(axes[1], [[d["by_class"].get(c) for c in CLASSES] for d in diffs], cls)
    axes[1].set_title("by character class", fontsize=9)
    if sources:
        src = _groups(sources, first.get("source_bytes", {}), COLOURS[3:] + COLOURS[:3])
        _dots(axes[2], [[d["by_source"].get(s) for s in sources] for d in diffs], src)
        axes[2].set_title("by source", fontsize=9)
    for ax in axes:
        ax.set_xlabel("bits per byte − CE only's, same seed (negative = better)", fontsize=8)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6.5, loc="best")
    axes[0].set_yticks(range(len(diffs) - 1, -1, -1), [d["label"] for d in diffs], fontsize=7)
    hw, b = table["hardware"], table["budget"]
    where = hw.get("gpu") or f"{hw['cpu_count']}-core CPU"
    fig.suptitle(f"xtalign eval table ({table['mode']}, {where}): held-out bits per byte minus CE only's, paired by "
                 f"student init seed {table['seeds']}; {b['tokens']:,} student tokens per run\n{_context(table)}",
                 fontsize=8.5)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="source", type=Path, default=DEFAULT_SOURCE, help="an eval_table.json")
    p.add_argument("--out", type=Path, default=HERE / "eval_table.png")
    args = p.parse_args(argv)
    if not args.source.is_file():
        print(f"error: {args.source} does not exist; run benchmarks/eval_table.py first", file=sys.stderr)
        return 2
    print(f"wrote {draw(json.loads(args.source.read_text()), args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
