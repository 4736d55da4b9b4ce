"""A real cross-tokenizer teacher on CPU: Gemma-3-270M teaches a from-scratch student with P-KL, against CE only.

    .venv/bin/python benchmarks/gemma3_cpu.py --dry-run        # both arms' resolved configs, nothing loaded
    .venv/bin/python benchmarks/gemma3_cpu.py --smoke --allow-dirty   # tiny student, 3 steps, real teacher, ~3-4 min
    .venv/bin/python analysis/corpus.py && .venv/bin/python benchmarks/gemma3_cpu.py   # the study (clean tree)

From one clean commit (provenance is taken at the START; a dirty tree is refused, one line and exit 2, unless
--allow-dirty, and then the diff's sha256 is recorded; a --smoke run never writes into benchmarks/results/
and needs --allow-dirty on a tree with uncommitted changes like any other): the teacher cache fill of
distill/configs/gemma3-teacher-cpu.yaml on the pinned corpus (out/corpus, analysis/corpus.py), then for every
student init seed (`student.init_seed`; default 0 and 1) the P-KL arm (the config as it is) and the CE-only
arm (`combine.scaling=fixed combine.kd_weight=0`), which read the same cache and see the very same batches.
Before anything trains, the batches a run will see are listed: a budget that repeats a training sample is
refused, and the distinct student tokens are counted (checked afterwards against every run's own count).

Work folder --out (default out/gemma3-cpu[-smoke], git-ignored): cache/, runs/{pkl,ce}/seed-<s>/ (`xtalign
distill` run directories plus result.json; reused when finished at the same config and commit). Results
--results (default benchmarks/results/gemma3-cpu/, for --smoke <out>/results/), written at the end:
gemma3_cpu.json (provenance, hardware, data use, per arm and seed the held-out bits per byte overall, by class
and by source, paired differences P-KL − CE, the teacher's own figure, wall times), gemma3_cpu.md and
training_curves.png (figures/training_curves.py), drawn from copies of the runs' metrics.jsonl and eval.jsonl
kept under runs/<arm>/seed-<s>/ there, so the figure redraws from committed files.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
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
    fill_teacher,
    finish,
    hardware,
    load_script,
    planned_ids,
    portable,
    rel,
    run_one,
    short_hardware,
    start,
    versions,
    write_text_outputs,
)
from eval_rows import figures, paired  # noqa: E402
from gemma3_markdown import markdown  # noqa: E402

from xtalign.cli.common import CLIError  # noqa: E402
from xtalign.config import ConfigError, load_yaml, to_dict  # noqa: E402
from xtalign.distill.config import DistillConfig, config_from_dict  # noqa: E402

CONFIG = ROOT / "distill" / "configs" / "gemma3-teacher-cpu.yaml"
TEACHER = "gemma3-270m"
ARMS = {"pkl": ("CE + P-KL from Gemma-3-270M (dynamic scaling)", ()),
        "ce": ("CE only (the same batches)", ("combine.scaling=fixed", "combine.kd_weight=0"))}
SEEDS = (0, 1)
SMOKE = ("steps=3", "batch_size=2", "seq_len=128", "data.pack_chars=300", "eval.every=0", "eval.max_batches=2",
         "checkpoint.every=0", "schedule.warmup_steps=1", "student.arch.hidden_size=64", "student.arch.num_layers=2",
         "student.arch.num_heads=2", "student.arch.num_kv_heads=1", "student.arch.intermediate_size=128",
         "student.arch.max_position=128", "teachers.0.head_slice=128")


# --- configs ---------------------------------------------------------------------------------------------

def base_dict(*, corpus: Path, smoke: bool, steps: int | None = None) -> dict[str, Any]:
    """The recipe as a validated dict, on `corpus` (a folder with train.jsonl and heldout.jsonl)."""
    over = [f"data.train={corpus / 'train.jsonl'}", f"data.heldout={corpus / 'heldout.jsonl'}"]
    over += list(SMOKE) if smoke else []
    over += [f"steps={steps}"] if steps is not None else []
    return to_dict(config_from_dict(load_yaml(CONFIG), over))


def arm_config(base: dict[str, Any], arm: str, seed: int, cache: Path) -> DistillConfig:
    """One arm at one student init seed, reading the teacher cache `cache`."""
    return config_from_dict(base, [*ARMS[arm][1], f"student.init_seed={seed}", f"cache_teachers={cache}"])


def fill_config(base: dict[str, Any], cache: Path) -> DistillConfig:
    """The teacher cache fill: the P-KL arm's batches (the CE arm's are the same)."""
    return config_from_dict(base, [f"cache_teachers={cache}"])


# --- the data a run sees ---------------------------------------------------------------------------------

def data_audit(cfg: DistillConfig) -> dict[str, Any]:
    """The training samples a run of `cfg` sees (steps × grad_accum batches of its data order): refused when
    one repeats; their distinct student tokens (as the run's own builder cuts them) and bytes, per source."""
    import numpy as np

    from xtalign.distill.data.builder import BatchBuilder
    from xtalign.distill.data.corpus import load_corpus
    from xtalign.distill.models.identity import tokenizer_name
    from xtalign.zoo import load_tokenizer

    corpus = load_corpus(cfg.data, seed=cfg.seed)
    ids = planned_ids(len(corpus.train), cfg)
    distinct = np.unique(ids)
    if distinct.size < ids.size:
        raise CLIError(f"this budget repeats {ids.size - distinct.size} training samples ({ids.size} samples of "
                       f"{len(corpus.train)}: {ids.size / len(corpus.train):.2f} epochs); lower steps or batch_size, "
                       "or lower data.pack_chars for more samples")
    s, teachers = cfg.student, cfg.teachers
    builder = BatchBuilder(load_tokenizer(tokenizer_name(s.model, s.tokenizer)),
                           [load_tokenizer(tokenizer_name(t.model, t.tokenizer)) for t in teachers],
                           seq_len=cfg.seq_len, add_bos=cfg.data.add_bos)
    tokens = text_bytes = trained_bytes = cut = 0
    per_source: dict[str, int] = {}
    for k in range(0, distinct.size, 64):
        part = distinct[k: k + 64]
        texts = [corpus.train[i] for i in part]
        batch = builder.build(0, part, texts)
        full = np.array([len(t.encode("utf-8")) for t in texts])
        tokens += batch.student_tokens
        text_bytes, trained_bytes = text_bytes + int(full.sum()), trained_bytes + int(batch.n_bytes.sum())
        cut += int((batch.n_bytes < full).sum())
        for i in part:
            name = corpus.train_sources[i] if corpus.train_sources else "data"
            per_source[name] = per_source.get(name, 0) + 1
    return {"train_samples": len(corpus.train), "heldout_samples": len(corpus.heldout), "samples_used": int(ids.size),
            "distinct_samples": int(distinct.size), "repeated_samples": 0, "epochs": ids.size / len(corpus.train),
            "distinct_tokens": tokens, "sample_bytes": text_bytes, "trained_bytes": trained_bytes,
            "samples_cut_at_seq_len": cut, "samples_by_source": dict(sorted(per_source.items())),
            "data_hash": corpus.data_hash}


# --- running ---------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny student, 3 steps, the real teacher")
    p.add_argument("--dry-run", action="store_true", help="print both arms' resolved configs and exit")
    p.add_argument("--corpus", type=Path, default=ROOT / "out" / "corpus",
                   help="a folder with train.jsonl and heldout.jsonl (analysis/corpus.py; default out/corpus)")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps per run (default: the recipe's)")
    p.add_argument("--seeds", default="0,1", help="student init seeds, comma-separated (default 0,1)")
    p.add_argument("--out", type=Path, default=None, help="work folder (default out/gemma3-cpu[-smoke])")
    p.add_argument("--results", type=Path, default=None,
                   help="results folder (default benchmarks/results/gemma3-cpu, <out>/results with --smoke)")
    p.add_argument("--overwrite", action="store_true", help="redo finished runs whose config or commit changed")
    p.add_argument("--allow-dirty", action="store_true", help="run on a dirty git tree (its diff's sha256 is kept)")
    args = p.parse_args(argv)
    seeds = [s.strip() for s in args.seeds.split(",")]
    if not seeds or not all(s.isdigit() for s in seeds):
        p.error(f"--seeds must be integers >= 0 separated by commas, e.g. 0,1; got {args.seeds!r}")
    args.seeds = tuple(int(s) for s in seeds)
    args.out = args.out or ROOT / "out" / f"gemma3-cpu{'-smoke' if args.smoke else ''}"
    args.results = args.results or (args.out / "results" if args.smoke else ROOT / "benchmarks" / "results" /
                                    "gemma3-cpu")
    return args


def _run_all(args: argparse.Namespace, base: dict[str, Any], ctx: dict[str, Any]
             ) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """The fill, then seed by seed the P-KL and CE-only runs (each reused when finished and unchanged)."""
    cache, hw, code = args.out / "cache", ctx["hw"], ctx["code"]
    fill = fill_teacher(fill_config(base, cache), TEACHER, cache, hw, code, args.overwrite)
    runs: dict[str, list[dict[str, Any]]] = {arm: [] for arm in ARMS}
    for seed in args.seeds:
        for arm in ARMS:
            rec = run_one(arm_config(base, arm, seed, cache), args.out / "runs" / arm / f"seed-{seed}", hw, code,
                          args.overwrite)
            runs[arm].append(rec)
            print(f"{arm} seed {seed}: {rec['final']['bits_per_byte']:.4f} bits/byte, {rec['wall_s']:.0f} s",
                  flush=True)
    return fill, runs


def _arm(arm: str, runs: list[dict[str, Any]], expected_tokens: int) -> dict[str, Any]:
    keep = ("seed", "wall_s", "train_s", "steps", "tokens", "tokens_per_s", "final_loss", "final_ce", "by_step",
            "final", "losses")
    return {"label": ARMS[arm][0], "overrides": list(ARMS[arm][1]), **figures([r["final"] for r in runs]),
            "untrained": figures([r["initial"] for r in runs]),
            "tokens_match_audit": all(r["tokens"] == expected_tokens for r in runs),
            "wall_s": [r["wall_s"] for r in runs], "runs": [{k: r.get(k) for k in keep} for r in runs]}


def assemble(args: argparse.Namespace, base: dict[str, Any], ctx: dict[str, Any], fill: dict[str, Any],
             runs: dict[str, list[dict[str, Any]]], wall: float) -> dict[str, Any]:
    """The results JSON: provenance, data use, both arms per seed, paired differences, the teacher, wall times."""
    cfg: DistillConfig = config_from_dict(base, [])
    audit = ctx["audit"]
    arms = {arm: _arm(arm, rs, audit["distinct_tokens"]) for arm, rs in runs.items()}
    budget = {"steps": cfg.steps, "batch_size": cfg.batch_size, "seq_len": cfg.seq_len, "grad_accum": cfg.grad_accum,
              "data_seed": cfg.seed, "pack_chars": cfg.data.pack_chars, "eval_max_batches": cfg.eval.max_batches,
              "heldout_bytes": runs["ce"][0]["final"]["bytes"], "heldout_rows": runs["ce"][0]["final"].get("rows")}
    return {"mode": "smoke" if args.smoke else "full", "config": rel(CONFIG), "smoke_overrides": list(SMOKE)
            if args.smoke else [], "hardware": ctx["hw"], "provenance": ctx["prov"],
            "commits": commits([fill, *runs["pkl"], *runs["ce"]]), "versions": versions(),
            "data": {"corpus": rel(args.corpus), "corpus_sha256": ctx.get("corpus_sha256"), **audit},
            "student": cfg.student.arch and to_dict(cfg.student.arch), "student_tokenizer": cfg.student.tokenizer,
            "teacher": {"name": TEACHER, "heldout": fill["heldout"], "fill_wall_s": fill["wall_s"],
                        "batches": fill["batches"], "forwards": fill["forwards"]},
            "seeds": list(args.seeds), "budget": budget, "arms": arms,
            "paired": paired(runs["pkl"], runs["ce"]), "tokens_match_audit": all(a["tokens_match_audit"]
                                                                              for a in arms.values()),
            "wall_s": wall, **finish()}


RECORDS = ("metrics.jsonl", "eval.jsonl")  # what figures/training_curves.py reads; small (≈ 0.6 KB a step)


def keep_run_records(folder: Path, runs: dict[str, Path], runs_root: Path) -> dict[str, Path]:
    """Copy each run's step and eval records to folder/runs/<arm>/seed-<s>/, so the figure redraws from them."""
    kept = {}
    for label, run in runs.items():
        dest = folder / "runs" / run.relative_to(runs_root)
        dest.mkdir(parents=True, exist_ok=True)
        for name in RECORDS:
            if (run / name).is_file():
                shutil.copyfile(run / name, dest / name)
        kept[label] = dest
    return kept


def write_outputs(folder: Path, results: dict[str, Any], runs: dict[str, Path], runs_root: Path) -> list[Path]:
    """gemma3_cpu.json and .md, the runs' records (label → run dir under runs_root), and training_curves.png
    (figures/training_curves.py) drawn from those copies."""
    written = write_text_outputs(folder, "gemma3_cpu", results, markdown(results))
    kept = keep_run_records(folder, runs, runs_root)
    curves = load_script("figures/training_curves.py", "training_curves_figure")
    curves.plot({label: curves.read_metrics(path) for label, path in kept.items()}, folder / "training_curves.png")
    return [*written, *(path / name for path in kept.values() for name in RECORDS if (path / name).is_file()),
            folder / "training_curves.png"]


def _prepare(args: argparse.Namespace, base: dict[str, Any]) -> dict[str, Any]:
    """Provenance first (a dirty tree stops here), then hardware and the data audit; nothing trained yet."""
    if not (args.corpus / "train.jsonl").is_file() or not (args.corpus / "heldout.jsonl").is_file():
        raise CLIError(f"no corpus at {rel(args.corpus)} (train.jsonl, heldout.jsonl); build it with "
                       "`.venv/bin/python analysis/corpus.py` or give --corpus")
    prov = start(allow_dirty=args.allow_dirty, smoke=args.smoke, results=args.results)
    hw = hardware("cpu")
    bind_hardware(args.out, hw)
    manifest = args.corpus / "manifest.json"
    sha = json.loads(manifest.read_text()).get("sha256") if manifest.is_file() else None
    audit = data_audit(fill_config(base, args.out / "cache"))
    print(f"data: {audit['distinct_samples']:,} distinct samples of {audit['train_samples']:,} "
          f"({audit['epochs']:.2f} epochs, none repeated), {audit['distinct_tokens']:,} student tokens", flush=True)
    return {"prov": prov, "code": code_state(prov), "hw": hw, "audit": audit, "corpus_sha256": sha}


def run_study(args: argparse.Namespace, base: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    ctx = _prepare(args, base)
    fill, runs = _run_all(args, base, ctx)
    results = assemble(args, base, ctx, fill, runs, time.perf_counter() - t0)
    dirs = {f"{'P-KL' if arm == 'pkl' else 'CE only'} seed {s}": args.out / "runs" / arm / f"seed-{s}"
            for s in args.seeds for arm in ARMS}
    write_outputs(args.results, results, dirs, args.out / "runs")
    return results


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    args = parse_args(argv)
    try:
        base = base_dict(corpus=args.corpus.resolve(), smoke=args.smoke, steps=args.steps)
        cache = args.out / "cache"
        if args.dry_run:
            arms = {arm: to_dict(arm_config(base, arm, args.seeds[0], cache)) for arm in ARMS}
            print(json.dumps({"config": rel(CONFIG), "seeds": list(args.seeds), "cache_fill": to_dict(fill_config(
                base, cache)), "arms": arms}, indent=2))
            return 0
        results = run_study(args, base)
    except (CLIError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(markdown(portable(results)))
    print(f"wrote {rel(args.results)}/gemma3_cpu.json, gemma3_cpu.md, training_curves.png in "
          f"{results['wall_s']:.0f} s ({short_hardware(results['hardware'])})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
