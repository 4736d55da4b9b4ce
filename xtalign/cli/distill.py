"""`xtalign distill`: distil one or more teachers into a student that may tokenize differently.

The run is one YAML config (distill/configs/) plus `key.sub=value` overrides; the run directory gets
config.json (resolved), losses.json (each teacher's loss and why), metrics.jsonl (one line per step),
eval.jsonl (held-out bits per byte), checkpoints/ and export/ (a Hugging Face folder of the student).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

EXAMPLE = """example:
  xtalign distill --config distill/configs/tiny-cpu.yaml --out out/runs/tiny
      # random-init tiny student (mistral-v1 tokenizer) <- tiny teacher (gpt2 tokenizer), P-KL, ~30 s on 2 CPUs
  xtalign distill --config distill/configs/tiny-cpu.yaml steps=60 teachers.0.loss=h-kl --out out/runs/tiny-hkl
  xtalign distill --resume out/runs/tiny steps=80          # continue from the newest complete checkpoint
  xtalign distill --config distill/configs/gemma3-teacher-cpu.yaml --cache-teachers out/cache --out out/runs/g3
      # the real Gemma-3-270M teacher; its top-k outputs go to out/cache and serve later runs
  xtalign distill --config distill/configs/tiny-cpu.yaml backend=ray ray.async=true student.num_workers=2 \
      --out out/runs/tiny-ray     # teachers as Ray actors one batch ahead, two DDP student ranks
"""


def add_parser(sub: Any, verb: str) -> None:
    p = sub.add_parser(verb, help="distil teachers into a student (cross-tokenizer KD)", description=__doc__,
                       epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, anywhere on the line, e.g. "
                   "steps=50 teachers.0.temperature=2 optim.lr=3e-4")
    p.add_argument("--config", type=Path, help="run config (YAML); see distill/configs/")
    p.add_argument("--out", type=Path, help="run directory (default: out/runs/<config name>)")
    p.add_argument("--resume", type=Path, metavar="DIR", help="continue the run in DIR from its newest checkpoint")
    p.add_argument("--cache-teachers", type=Path, metavar="DIR",
                   help="teacher cache: read teachers' outputs from DIR/<teacher> where present, write them otherwise")
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --out")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.set_defaults(run=run)


def resolve(args: argparse.Namespace) -> tuple[Any, Path]:
    """The validated config and run directory from the arguments (ConfigError on bad input)."""
    from xtalign.cli.common import CLIError
    from xtalign.distill.config import load_config

    if args.config is None:
        raise CLIError("give --config FILE (a run config, see distill/configs/) or --resume DIR")
    overrides = list(args.overrides)
    if args.cache_teachers is not None:
        overrides.append(f"cache_teachers={args.cache_teachers}")
    cfg = load_config(args.config, overrides)
    out = args.out or Path("out/runs") / args.config.stem
    return cfg, out


def _progress(total: int, start: int) -> Any:
    """A rich progress bar on a terminal; nothing when stderr is not one."""
    if not sys.stderr.isatty():
        return None, None
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("step {task.completed}/{task.total}"), BarColumn(), TextColumn("{task.fields[info]}"),
                   TimeRemainingColumn(), transient=False)
    task = bar.add_task("distill", total=total, completed=start, info="")

    def update(rec: dict[str, Any]) -> None:
        bar.update(task, completed=rec["step"],
                   info=f"loss {rec['loss']:.4f}  ce {rec['ce']:.4f}  {rec['tokens_per_s']:,.0f} tok/s")

    return bar, update


def run(args: argparse.Namespace) -> int:
    import json

    from xtalign.cli.common import usage_errors
    from xtalign.distill import engine
    from xtalign.distill.config import config_to_dict

    with usage_errors():
        if args.resume is not None:
            if args.config is not None:
                from xtalign.cli.common import CLIError

                raise CLIError("--resume uses the run's saved config; drop --config (overrides still apply)")
            if args.dry_run:
                print((args.resume / "config.json").read_text())
                return 0
            total = json.loads((args.resume / "config.json").read_text()).get("steps", 0) if (
                args.resume / "config.json").is_file() else 0
            bar, update = _progress(total, 0)
            summary = _with_bar(bar, lambda: engine.resume(args.resume, list(args.overrides), on_step=update))
            _report(args.resume, summary)
            return 0
        cfg, out = resolve(args)
        if args.dry_run:
            print(json.dumps(config_to_dict(cfg), indent=2, sort_keys=True))
            return 0
        _check_out(out, overwrite=args.overwrite)  # created only once the run's parts have loaded
        bar, update = _progress(cfg.steps, 0)
        summary = _with_bar(bar, lambda: engine.run(cfg, out, on_step=update))
        _report(out, summary)
    return 0


def _check_out(out: Path, *, overwrite: bool) -> None:
    from xtalign.cli.common import CLIError

    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} exists and is not a directory; choose another path")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise CLIError(f"--out {out} already holds files; pass --overwrite to replace them or choose another path")


def _with_bar(bar: Any, fn: Any) -> Any:
    if bar is None:
        return fn()
    with bar:
        return fn()


def _report(out: Path, summary: dict[str, Any]) -> None:
    final = summary.get("final_eval", {})
    last = summary.get("last_step", {})
    if last:
        print(f"step {last['step']}: loss {last['loss']:.4f}, ce {last['ce']:.4f}, "
              f"{last['tokens_per_s']:,.0f} student tokens/s")
    if final:
        print(f"held-out bits per byte (student): {final['bits_per_byte']:.4f} over {final['bytes']:,} bytes")
    print(f"wrote {out}/config.json, metrics.jsonl, eval.jsonl, checkpoints/, export/")
