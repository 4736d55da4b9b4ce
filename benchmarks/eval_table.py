"""The eval table: every distillation loss side by side in held-out bits per byte, on real teachers.

    .venv/bin/python benchmarks/eval_table.py --dry-run              # every row's resolved config, nothing loaded
    .venv/bin/python benchmarks/eval_table.py --smoke --allow-dirty  # reduced table, real teachers, ~7-9 minutes
    .venv/bin/python analysis/corpus.py && .venv/bin/python benchmarks/eval_table.py    # the CPU table (clean tree)
    .venv/bin/python benchmarks/eval_table.py --device cuda --dry-run    # the GPU table: SmolLM2-135M continued

The rows, their configs and statistics are in benchmarks/eval_rows.py, the markdown in eval_markdown.py.
Every trained row derives from distill/configs/eval-table-cpu.yaml; every seed sets only
`student.init_seed`, so all rows and seeds see the same batches and token budget. Each teacher runs once into
the teacher cache under --out, which every row reads.

Provenance is taken at the START: a dirty git tree is refused (one line, exit 2) unless --allow-dirty, and
then the diff's sha256 is recorded (add --allow-dirty to --smoke on a tree with uncommitted changes; a
--smoke run never writes into benchmarks/results/).
Work folder --out (default out/eval[-gpu][-smoke], git-ignored): runs/<row>/seed-<s>/ (an `xtalign distill`
run directory plus result.json), cache/, and the table so far after each pass over the rows. Results
--results (default benchmarks/results/eval-table-cpu/, for the GPU eval-table-gpu/, for --smoke
<out>/results/), written once at the end: eval_table.json (rows, paired differences from CE, per-source
figures, the learned W's movement, every run, provenance, hardware), eval_table.md, eval_table.png. Started
again, the script reuses every finished run whose config and commit are unchanged (an interrupted table
resumes); one --out holds one hardware, and a run or cache measured on another is refused.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from distill_runs import (  # noqa: E402
    bind_hardware,
    code_state,
    commits,
    data_usage,
    fill_teacher,
    finish,
    hardware,
    load_script,
    portable,
    rel,
    reusable,
    run_one,
    short_hardware,
    start,
    versions,
    write_text_outputs,
)
from eval_markdown import markdown  # noqa: E402
from eval_rows import (  # noqa: E402
    BASE_CONFIG,
    CLASSES,
    GEMMA,
    ROWS,
    SEEDS,
    SMOKE_SEEDS,
    SMOL,
    Row,
    auto_pick,
    base_dict,
    build_rows,
    check_same_text,
    fill_config,
    mean_std,
    row_config,
    w_movement,
)

from xtalign.cli.common import CLIError  # noqa: E402
from xtalign.config import ConfigError, to_dict  # noqa: E402
from xtalign.distill.config import DistillConfig  # noqa: E402

__all__ = ["CLASSES", "GEMMA", "ROWS", "SMOL", "CLIError", "Row", "auto_pick", "base_dict", "bind_hardware",
           "build_rows", "check_same_text", "fill_config", "main", "markdown", "mean_std", "reusable", "row_config"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="cpu: the from-scratch table; cuda: SmolLM2-135M continued training on one GPU")
    p.add_argument("--smoke", action="store_true", help="a reduced table (tiny student, few steps, two seeds)")
    p.add_argument("--dry-run", action="store_true", help="print every row's resolved config and exit")
    p.add_argument("--corpus", default=None, help="'botchan' or a folder from analysis/corpus.py with train.jsonl "
                   "and heldout.jsonl (default: out/corpus for the table, botchan for --smoke)")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps per run (default: the base config's)")
    p.add_argument("--seeds", default=None, help="student init seeds, comma-separated (default 0,1,2; smoke 0,1)")
    p.add_argument("--out", type=Path, default=None, help="work folder (default out/eval[-gpu][-smoke])")
    p.add_argument("--results", type=Path, default=None, help="results folder (default benchmarks/results/"
                   "eval-table-cpu, eval-table-gpu with --device cuda, <out>/results with --smoke)")
    p.add_argument("--overwrite", action="store_true", help="redo finished runs whose config or commit changed")
    p.add_argument("--allow-dirty", action="store_true", help="run on a dirty git tree (its diff's sha256 is kept)")
    args = p.parse_args(argv)
    args.corpus = args.corpus or ("botchan" if args.smoke else str(ROOT / "out" / "corpus"))
    seeds = args.seeds.split(",") if args.seeds else (SMOKE_SEEDS if args.smoke else SEEDS)
    if not all(str(s).strip().isdigit() for s in seeds):
        p.error(f"--seeds must be integers >= 0 separated by commas, e.g. 0,1,2; got {args.seeds!r}")
    args.seeds = tuple(int(s) for s in seeds)
    gpu = "-gpu" if args.device == "cuda" else ""
    if args.out is None:
        args.out = ROOT / "out" / f"eval{gpu}{'-smoke' if args.smoke else ''}"
    if args.results is None:
        committed = ROOT / "benchmarks" / "results" / f"eval-table{gpu or '-cpu'}"
        args.results = args.out / "results" if args.smoke else committed
    return args


def dry_run(base: dict[str, Any], cache: Path, seeds: tuple[int, ...]) -> str:
    """Every row's resolved config (seed: the first; the others differ only in student.init_seed)."""
    rows = {r.key: to_dict(row_config(base, r, seeds[0], cache)) for r in ROWS}
    fills = {t: to_dict(fill_config(base, t, cache)) for t in (GEMMA, SMOL)}
    return json.dumps({"base_config": rel(BASE_CONFIG), "seeds": list(seeds), "cache": str(cache),
                       "cache_fill": fills, "rows": rows}, indent=2)


def _check_ready(args: argparse.Namespace) -> None:
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda needs a CUDA GPU visible to torch and this machine has none; use --dry-run "
                       "to see the rows, or run the CPU table")
    if args.corpus != "botchan" and not (Path(args.corpus) / "train.jsonl").is_file():
        raise CLIError(f"no corpus at {args.corpus} (train.jsonl missing); build it with "
                       "`.venv/bin/python analysis/corpus.py` or pass --corpus botchan")


def _data_record(corpus: str, cfg: DistillConfig, data_hash: str) -> dict[str, Any]:
    rec: dict[str, Any] = {"name": rel(corpus), "data_hash": data_hash, "pack_chars": cfg.data.pack_chars}
    manifest = Path(corpus) / "manifest.json"
    if corpus != "botchan" and manifest.is_file():
        rec["corpus_sha256"] = json.loads(manifest.read_text()).get("sha256")
    return rec


def _student(cfg: DistillConfig) -> str:
    s = cfg.student
    if s.model == "random" and s.arch is not None:
        a = s.arch
        return (f"random-init {a.family} ({a.hidden_size} wide, {a.num_layers} layers, {a.num_heads} heads) on the "
                f"{s.tokenizer} tokenizer, trained from scratch")
    return f"{s.model} (continued training, {cfg.precision})"


def learned_w(base: dict[str, Any], cache: Path, out: Path, seeds: tuple[int, ...]) -> dict[str, Any] | None:
    """How far the learned-W row's exported W (`export/projection-<teacher>.safetensors`) moved from the initial
    W, per seed (`eval_rows.w_movement`); None when that row has no finished run yet."""
    from xtalign.distill.models.identity import tokenizer_name
    from xtalign.distill.student.plans import resolve_projection
    from xtalign.io import load_projection
    from xtalign.zoo import load_tokenizer

    row = next(r for r in ROWS if r.key == "p-kl-learned")
    paths = {s: out / "runs" / row.key / f"seed-{s}" / "export" / f"projection-{row.teachers[0]}.safetensors"
             for s in seeds}
    if not any(p.is_file() for p in paths.values()):
        return None
    cfg = row_config(base, row, seeds[0], cache)
    t, s = cfg.teachers[0], cfg.student
    init, _ = resolve_projection(t.projection, load_tokenizer(tokenizer_name(s.model, s.tokenizer)),
                                 load_tokenizer(tokenizer_name(t.model, t.tokenizer)))
    per_seed = []
    for seed, path in paths.items():
        if path.is_file():
            w = load_projection(path)
            per_seed.append({"seed": seed, **w_movement(init.indices, init.weights, w.indices, w.weights)})
    return {"row": row.key, "label": row.label, "teacher": row.teachers[0], "lr": t.projection.lr,
            "per_seed": per_seed}


def assemble(args: argparse.Namespace, ctx: dict[str, Any], fills: dict[str, Any],
             runs: dict[str, list[dict[str, Any]]], auto: dict[str, Any], wall: float) -> dict[str, Any]:
    """The results JSON: rows (mean ± std over seeds, paired differences), every run, fills, budget, provenance."""
    base_cfg: DistillConfig = ctx["base_cfg"]
    trained = [r for rs in runs.values() for r in rs]
    ce = runs["ce"][0]
    budget = {"steps": base_cfg.steps, "batch_size": base_cfg.batch_size, "seq_len": base_cfg.seq_len,
              "grad_accum": base_cfg.grad_accum, "tokens": ce["tokens"], "data_seed": base_cfg.seed,
              "heldout_bytes": ce["final"]["bytes"], "heldout_rows": ce["final"].get("rows")}
    same = len({(r["tokens"], r["final"]["bytes"]) for r in trained}) == 1
    rows = build_rows(fills, runs, auto)
    if args.device == "cuda":  # the student starts as SmolLM2-135M-Instruct: its same-vocab term is self-KD
        for r in rows:
            if r["key"] in ("same-vocab", "multi-sum", "multi-dynamic"):
                r["note"] = "the student starts as SmolLM2-135M-Instruct: its same-vocab term is self-distillation"
    return {"mode": "smoke" if args.smoke else "full", "device": args.device, "hardware": ctx["hw"],
            "provenance": ctx["prov"], "commits": commits(trained + list(fills.values())),
            "base_config": rel(BASE_CONFIG), "data": ctx["data"], "data_usage": ctx["usage"],
            "student": _student(base_cfg), "seeds": list(args.seeds), "budget": budget, "equal_token_budget": same,
            "cache_reused": all(r["teacher_bytes_computed"] == 0 for r in trained), "auto": auto,
            "versions": versions(), "rows": rows, "learned_w": ctx.get("learned_w"), "fills": fills,
            "runs": {k: [{kk: v for kk, v in r.items() if kk != "initial"} for r in rs] for k, rs in runs.items()},
            "wall_s": wall, **finish()}


def write_outputs(folder: Path, table: dict[str, Any]) -> list[Path]:
    """eval_table.json and .md (repository-relative paths) and eval_table.png (figures/eval_table.py)."""
    written = write_text_outputs(folder, "eval_table", table, markdown(table))
    try:
        figure = load_script("figures/eval_table.py", "eval_table_figure")
        written.append(figure.draw(portable(table), folder / "eval_table.png"))
    except ImportError as exc:
        print(f"no figure ({exc}); draw it later with figures/eval_table.py", file=sys.stderr)
    return written


def _prepare(args: argparse.Namespace, base: dict[str, Any], cache: Path) -> dict[str, Any]:
    """Provenance (first: a dirty tree stops here), hardware, the data checks; nothing trained yet."""
    _check_ready(args)
    prov = start(allow_dirty=args.allow_dirty, smoke=args.smoke, results=args.results)
    hw = hardware(args.device)
    bind_hardware(args.out, hw)
    base_cfg = row_config(base, ROWS[-1], args.seeds[0], cache)  # both teachers: the strictest cut
    usage = data_usage(base_cfg)
    if usage["repeated_samples"]:
        print(f"note: {usage['repeated_samples']} training samples repeat ({usage['epochs']:.2f} epochs)", flush=True)
    data = _data_record(args.corpus, base_cfg, check_same_text(base_cfg))
    return {"prov": prov, "code": code_state(prov), "hw": hw, "base_cfg": base_cfg, "usage": usage, "data": data}


def run_table(args: argparse.Namespace, base: dict[str, Any], cache: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    ctx = _prepare(args, base, cache)
    hw, code = ctx["hw"], ctx["code"]
    auto = auto_pick(base, cache)
    print(f"auto picks {auto['loss']} ({auto['reason']})", flush=True)
    fills = {t: fill_teacher(fill_config(base, t, cache), t, cache, hw, code, args.overwrite) for t in (GEMMA, SMOL)}
    runs: dict[str, list[dict[str, Any]]] = {r.key: [] for r in ROWS if r.key != "auto" or not auto["same_as"]}
    for seed in args.seeds:  # seed-major: after the first pass every row has a number
        for key in runs:
            row = next(r for r in ROWS if r.key == key)
            rec = run_one(row_config(base, row, seed, cache), args.out / "runs" / key / f"seed-{seed}", hw, code,
                          args.overwrite)
            runs[key].append(rec)
            print(f"{key} seed {seed}: {rec['final']['bits_per_byte']:.4f} bits/byte, {rec['wall_s']:.0f} s",
                  flush=True)
        ctx["learned_w"] = learned_w(base, cache, args.out, args.seeds)
        table = assemble(args, ctx, fills, runs, auto, time.perf_counter() - t0)
        write_text_outputs(args.out, "eval_table", table, markdown(table))  # the table so far, in the work folder
    write_outputs(args.results, table)
    return table


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    args = parse_args(argv)
    try:
        base = base_dict(device=args.device, smoke=args.smoke, corpus=args.corpus, steps=args.steps)
        cache = args.out / "cache"
        if args.dry_run:
            print(dry_run(base, cache, args.seeds))
            return 0
        table = run_table(args, base, cache)
    except (CLIError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(markdown(portable(table)))
    print(f"wrote {rel(args.results)}/eval_table.json, eval_table.md, eval_table.png in {table['wall_s']:.0f} s "
          f"({short_hardware(table['hardware'])})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
