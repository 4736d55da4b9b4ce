"""Training curves of `xtalign distill` runs from their metrics.jsonl: loss, KD per teacher, CE, accuracy.

    .venv/bin/python benchmarks/gemma3_cpu.py           # the Gemma-3 CPU runs; keeps their records under
                                                        # benchmarks/results/gemma3-cpu/runs/ and draws this
                                                        # figure from them into its training_curves.png
    .venv/bin/python figures/training_curves.py --run out/eval/runs/multi-sum/seed-0 \
        --run out/eval/runs/multi-dynamic/seed-0 --out figures/training_curves_multi.png   # eval-table runs
    .venv/bin/python figures/training_curves.py         # figures/training_curves.png from the committed
                                                        # gemma3_cpu.py seed-0 records if present, else
                                                        # out/runs/tiny (xtalign distill --config tiny-cpu.yaml)

Each panel is plotted against the optimiser step: raw values thin, an exponential moving average (the
`--smooth` factor) on top. Several runs overlay (same colour per run); the KD panel has one line per
teacher of each run (a CE-only run has none). The title names the runs and their last step.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# the committed copies benchmarks/gemma3_cpu.py keeps of its seed-0 runs' records
GEMMA3_RUNS = tuple(ROOT / "benchmarks" / "results" / "gemma3-cpu" / "runs" / arm / "seed-0" for arm in ("pkl", "ce"))
TINY_RUN = ROOT / "out" / "runs" / "tiny"
COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3")


def read_metrics(run: Path) -> list[dict[str, Any]]:
    """The step records of a run directory (or of a metrics.jsonl path)."""
    path = run / "metrics.jsonl" if run.is_dir() else run
    if not path.is_file():
        raise SystemExit(f"error: {path} does not exist; give a run directory written by `xtalign distill`")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        raise SystemExit(f"error: {path} has no steps yet; wait for the run to log one")
    return rows


def ema(values: Sequence[float], factor: float) -> list[float]:
    """Exponential moving average (bias-corrected, so the first value is itself); factor 0 = no smoothing."""
    out, acc, weight = [], 0.0, 0.0
    for v in values:
        acc = factor * acc + (1 - factor) * v
        weight = factor * weight + (1 - factor)
        out.append(acc / weight)
    return out


def series(rows: Sequence[dict[str, Any]]) -> dict[str, tuple[list[int], list[float]]]:
    """Panel name → (steps, values): loss, ce, accuracy and one ``kd:<teacher>`` per teacher."""
    out: dict[str, tuple[list[int], list[float]]] = {}
    for key in ("loss", "ce", "accuracy"):
        pts = [(r["step"], float(r[key])) for r in rows if r.get(key) is not None]
        out[key] = ([s for s, _ in pts], [v for _, v in pts])
    teachers = sorted({t for r in rows for t in (r.get("kd") or {})})
    for t in teachers:
        pts = [(r["step"], float(r["kd"][t])) for r in rows if t in (r.get("kd") or {})]
        out[f"kd:{t}"] = ([s for s, _ in pts], [v for _, v in pts])
    return out


def plot(runs: dict[str, list[dict[str, Any]]], path: Path, smooth: float = 0.8) -> None:
    """Four panels (loss, KD per teacher, CE, accuracy) for every run in ``runs`` (label → step records)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 6.4), sharex=True, constrained_layout=True)
    panels = {"loss": axes[0, 0], "kd": axes[0, 1], "ce": axes[1, 0], "accuracy": axes[1, 1]}
    for i, (label, rows) in enumerate(runs.items()):
        colour = COLOURS[i % len(COLOURS)]
        curves = series(rows)
        kd_names = [k for k in curves if k.startswith("kd:")]
        for name, (steps, values) in curves.items():
            panel = "kd" if name in kd_names else name
            ax = panels[panel]
            ls = ("-", "--", ":", "-.")[kd_names.index(name) % 4] if panel == "kd" else "-"
            line_label = f"{label}: {name[3:]}" if panel == "kd" else label
            ax.plot(steps, values, color=colour, alpha=0.25, lw=0.8, ls=ls)
            ax.plot(steps, ema(values, smooth), color=colour, lw=1.6, ls=ls, label=line_label)
    titles = {"loss": "total loss", "kd": "KD per teacher", "ce": "student CE (nats/token)",
              "accuracy": "student top-1 accuracy"}
    for name, ax in panels.items():
        ax.set_title(titles[name], fontsize=10)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    for ax in axes[1]:
        ax.set_xlabel("optimiser step")
    last = ", ".join(f"{label} ({rows[-1]['step']} steps)" for label, rows in runs.items())
    fig.suptitle(f"xtalign distill training curves: {last}\n(thin: raw; thick: EMA {smooth})", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


def default_runs() -> list[Path]:
    """The committed gemma3_cpu.py seed-0 records (P-KL and CE only) that exist, else the tiny-cpu run."""
    return [r for r in GEMMA3_RUNS if (r / "metrics.jsonl").is_file()] or [TINY_RUN]


def _label(run: Path) -> str:
    return "/".join(run.resolve().parts[-2:]) if run.is_dir() else run.stem


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, action="append", help="a run directory or metrics.jsonl (repeatable)")
    ap.add_argument("--smooth", type=float, default=0.8, help="EMA factor in [0, 1) (0 = raw only)")
    ap.add_argument("--out", type=Path, default=HERE / "training_curves.png")
    args = ap.parse_args(argv)
    if not 0 <= args.smooth < 1:
        raise SystemExit(f"error: --smooth must lie in [0, 1), got {args.smooth}")
    runs = args.run or default_runs()
    plot({_label(r): read_metrics(r) for r in runs}, args.out, args.smooth)
    print(f"wrote {args.out} from {', '.join(map(str, runs))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
