"""The eval table: every distillation loss side by side in held-out bits per byte, on real teachers.

    .venv/bin/python benchmarks/eval_table.py --dry-run              # every row's resolved config, nothing loaded
    .venv/bin/python benchmarks/eval_table.py --smoke                # reduced table, real teachers, a few minutes
    .venv/bin/python benchmarks/eval_table.py                        # the CPU table (<= 2 h on 2 cores) -> out/eval/
    .venv/bin/python benchmarks/eval_table.py --corpus out/corpus    # on the pinned corpus (analysis/corpus.py)
    .venv/bin/python benchmarks/eval_table.py --device cuda --dry-run    # the GPU table: SmolLM2-135M continued

Every trained row derives from one base config (distill/configs/eval-table-cpu.yaml): it keeps some of the
base's teachers (Gemma-3-270M, SmolLM2-135M-Instruct) and sets their loss or `combine.multi`; every seed sets
only `student.init_seed`, so all rows and seeds see the same batches (one data order, the config's `seed`)
and the same token budget. Each teacher runs once into the teacher cache under --out, which every row reads.
`auto` is resolved as the engine resolves it; when it names a row already in the table it shares its runs.

Writes under --out: runs/<row>/seed-<s>/ (an `xtalign distill` run directory plus result.json), cache/,
eval_table.json (rows, runs, provenance, hardware), eval_table.md and eval_table.png (figures/eval_table.py).
Started again, the script reuses every finished run whose config is unchanged (an interrupted table
resumes); one --out holds one hardware, and a run or cache measured on another is refused.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xtalign.cli.common import CLIError, dump_json, provenance, write_atomic  # noqa: E402
from xtalign.config import ConfigError, load_yaml, to_dict, to_json  # noqa: E402
from xtalign.distill.config import DistillConfig, config_from_dict  # noqa: E402

log = logging.getLogger("eval_table")

BASE_CONFIG = ROOT / "distill" / "configs" / "eval-table-cpu.yaml"
GEMMA, SMOL = "gemma3-270m", "smollm2-135m"
CLASSES = ("digits", "whitespace", "punctuation", "letters", "other")
SEEDS, SMOKE_SEEDS = (0, 1, 2), (0, 1)
SMOKE = ("steps=3", "batch_size=2", "seq_len=128", "data.pack_chars=360", "eval.max_batches=1",
         "schedule.warmup_steps=1", "student.arch.hidden_size=64", "student.arch.num_layers=2",
         "student.arch.num_heads=2", "student.arch.num_kv_heads=1", "student.arch.intermediate_size=128",
         "student.arch.max_position=128", "teachers.0.head_slice=128", "teachers.1.head_slice=128")
# The GPU table: the real SmolLM2-135M-Instruct continues training (bf16) from the same teachers and rows.
CUDA = ("device=cuda", "precision=bf16", "threads=null", "optim.lr=5e-5", "optim.weight_decay=0.0", "steps=400",
        "schedule.warmup_steps=20", "batch_size=8", "seq_len=2048", "data.pack_chars=6400", "data.workers=2",
        "data.prefetch=8", "teachers.0.head_slice=4096", "teachers.1.head_slice=4096")


@dataclass(frozen=True)
class Row:
    """One trained row: the base teachers it keeps (in order) and the overrides that make its method."""

    key: str
    label: str
    teachers: tuple[str, ...]
    overrides: tuple[str, ...] = ()


ROWS = (
    Row("ce", "CE only", ()),
    Row("same-vocab", "same-tokenizer KD (SmolLM2-135M)", (SMOL,), ("teachers.0.loss=same-vocab",)),
    Row("uld", "ULD (Gemma-3-270M)", (GEMMA,), ("teachers.0.loss=uld",)),
    Row("gold", "GOLD (Gemma-3-270M)", (GEMMA,), ("teachers.0.loss=gold",)),
    Row("h-kl", "H-KL (Gemma-3-270M)", (GEMMA,), ("teachers.0.loss=h-kl",)),
    Row("p-kl-nemo", "P-KL nemo, fixed W (Gemma-3-270M)", (GEMMA,),
        ("teachers.0.loss=p-kl", "teachers.0.aggregation=nemo")),
    Row("p-kl-chain", "P-KL chain, fixed W (Gemma-3-270M)", (GEMMA,),
        ("teachers.0.loss=p-kl", "teachers.0.aggregation=chain")),
    Row("p-kl-learned", "P-KL nemo, learned W (Gemma-3-270M)", (GEMMA,),
        ("teachers.0.loss=p-kl", "teachers.0.aggregation=nemo", "teachers.0.projection.learnable=true")),
    Row("auto", "auto (Gemma-3-270M)", (GEMMA,), ("teachers.0.loss=auto",)),
    Row("multi-sum", "Gemma-3 P-KL + SmolLM2 same-vocab, sum", (GEMMA, SMOL), ("combine.multi=sum",)),
    Row("multi-dynamic", "Gemma-3 P-KL + SmolLM2 same-vocab, dynamic", (GEMMA, SMOL), ("combine.multi=dynamic",)),
)


# --- configs ---------------------------------------------------------------------------------------------

def base_dict(*, device: str, smoke: bool, corpus: str, steps: int | None = None) -> dict[str, Any]:
    """The base config as a plain dict, with the GPU profile, the smoke reduction and the corpus applied."""
    data = load_yaml(BASE_CONFIG)
    over: list[str] = []
    if device == "cuda":
        data["student"] = {"model": SMOL}
        over += CUDA
    if smoke:
        over += [o for o in SMOKE if not (device == "cuda" and o.startswith("student."))]
    if corpus != "botchan":
        over += [f"data.train={Path(corpus) / 'train.jsonl'}", f"data.heldout={Path(corpus) / 'heldout.jsonl'}"]
    if steps is not None:
        over.append(f"steps={steps}")
    return to_dict(config_from_dict(data, over))  # validated, every default filled in


def _teachers(base: dict[str, Any], names: tuple[str, ...]) -> list[dict[str, Any]]:
    by_name = {t["name"]: t for t in base.get("teachers", [])}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise ConfigError(f"{BASE_CONFIG.name} has no teacher named {missing[0]}; it needs {GEMMA} and {SMOL}")
    return [copy.deepcopy(by_name[n]) for n in names]


def _config(base: dict[str, Any], names: tuple[str, ...], overrides: list[str]) -> DistillConfig:
    data = copy.deepcopy(base)
    data["teachers"] = _teachers(base, names)
    if data.get("student", {}).get("model") != "random":
        data["student"].pop("arch", None)
    return config_from_dict(data, overrides)


def row_config(base: dict[str, Any], row: Row, seed: int, cache: Path) -> DistillConfig:
    """One row at one student init seed, reading the teacher cache `cache`."""
    return _config(base, row.teachers, [*row.overrides, f"student.init_seed={seed}", f"cache_teachers={cache}"])


def fill_config(base: dict[str, Any], teacher: str, cache: Path) -> DistillConfig:
    """The config that runs one teacher over the table's batches into `cache/<teacher>`."""
    return _config(base, (teacher,), [f"cache_teachers={cache}"])


def digest(cfg: DistillConfig) -> str:
    return hashlib.sha256(to_json(cfg).encode()).hexdigest()


def auto_pick(base: dict[str, Any], cache: Path) -> dict[str, Any]:
    """What `loss: auto` resolves to (as the engine resolves it) and which row runs the same config."""
    from xtalign.distill.plan import choose_loss, tokenizer_name
    from xtalign.zoo import load_tokenizer

    auto = next(r for r in ROWS if r.key == "auto")
    cfg = row_config(base, auto, 0, cache)
    t, s = cfg.teachers[0], cfg.student
    choice = choose_loss(t, load_tokenizer(tokenizer_name(s.model, s.tokenizer)),
                         load_tokenizer(tokenizer_name(t.model, t.tokenizer)))
    fixed = to_json(row_config(base, Row("x", "", auto.teachers, (*auto.overrides, f"teachers.0.loss={choice.loss}")),
                               0, cache))
    same = next((r.key for r in ROWS if r.key != "auto" and to_json(row_config(base, r, 0, cache)) == fixed), None)
    return {"loss": choice.loss, "reason": choice.reason, "same_as": same}


def check_same_text(cfg: DistillConfig) -> str:
    """Every sample is cut at `seq_len` at the same byte with the teachers as without them, so rows with and
    without Gemma see the same text (the same batches for the teacher cache); returns the data hash."""
    import numpy as np

    from xtalign.distill.data import BatchBuilder, load_corpus
    from xtalign.distill.plan import tokenizer_name
    from xtalign.zoo import load_tokenizer

    corpus = load_corpus(cfg.data, seed=cfg.seed)
    s_tok = load_tokenizer(tokenizer_name(cfg.student.model, cfg.student.tokenizer))
    t_toks = [load_tokenizer(tokenizer_name(t.model, t.tokenizer)) for t in cfg.teachers]
    both = BatchBuilder(s_tok, t_toks, seq_len=cfg.seq_len, add_bos=cfg.data.add_bos)
    alone = BatchBuilder(s_tok, [], seq_len=cfg.seq_len, add_bos=cfg.data.add_bos)
    texts = list(corpus.train) + list(corpus.heldout)
    for i in range(0, len(texts), 64):
        part, ids = texts[i: i + 64], np.arange(i, min(i + 64, len(texts)))
        cut = np.flatnonzero(both.build(0, ids, part).n_bytes != alone.build(0, ids, part).n_bytes)
        if cut.size:
            raise CLIError(f"sample {i + int(cut[0])} is cut at seq_len={cfg.seq_len} at another byte with the "
                           "teachers than without, so rows would see different text; lower data.pack_chars "
                           f"(now {cfg.data.pack_chars}) or raise seq_len")
    return corpus.data_hash


# --- hardware --------------------------------------------------------------------------------------------

def hardware(device: str) -> dict[str, Any]:
    """What a figure was measured on; a table never mixes two of these."""
    import torch

    from xtalign.cli.common import cpu_model

    gpu = torch.cuda.get_device_name(0) if device == "cuda" and torch.cuda.is_available() else None
    return {"device": device, "cpu": cpu_model(), "cpu_count": os.cpu_count(), "gpu": gpu}


def short_hardware(hw: dict[str, Any]) -> str:
    return hw["gpu"] if hw.get("gpu") else f"{hw['cpu_count']}-core CPU"


def bind_hardware(out: Path, hw: dict[str, Any]) -> None:
    """Tie `out` to one hardware (`hardware.json`); refuse an output directory measured on another."""
    path = out / "hardware.json"
    if path.is_file():
        old = json.loads(path.read_text())
        if old != hw:
            raise CLIError(f"{out} holds a table measured on {short_hardware(old)} ({old['cpu']}), this machine is "
                           f"{short_hardware(hw)} ({hw['cpu']}); one table never mixes hardware: give another --out")
        return
    out.mkdir(parents=True, exist_ok=True)
    dump_json(path, hw)


# --- running ---------------------------------------------------------------------------------------------

def _reusable(path: Path, key: str, hw: dict[str, Any], overwrite: bool) -> dict[str, Any] | None:
    """A finished record at `path` made with config digest `key` on this hardware, else None."""
    if not path.is_file():
        return None
    old = json.loads(path.read_text())
    if old.get("hardware") != hw:
        raise CLIError(f"{path} was measured on other hardware ({short_hardware(old['hardware'])}); "
                       "one table never mixes hardware: give another --out")
    if old.get("config_sha256") == key:
        return old
    if not overwrite:
        raise CLIError(f"{path} holds a finished run of another config; pass --overwrite to redo it or give "
                       "another --out")
    return None


def fill_teacher(base: dict[str, Any], teacher: str, cache: Path, hw: dict[str, Any], overwrite: bool
                 ) -> dict[str, Any]:
    """Run one teacher once over the table's batches into the cache (reused when already complete)."""
    from xtalign.distill.engine import fill_cache

    cfg = fill_config(base, teacher, cache)
    record = cache / f"{teacher}.fill.json"
    old = _reusable(record, digest(cfg), hw, overwrite)
    if old is not None:
        return old
    log.info("teacher %s -> %s (%d batches)", teacher, cache / teacher, cfg.steps * cfg.grad_accum)
    t0 = time.perf_counter()
    res = fill_cache(cfg, cache)
    info = res["teachers"][teacher]
    rec = {"teacher": teacher, "config_sha256": digest(cfg), "hardware": hw, "wall_s": time.perf_counter() - t0,
           "batches": res["batches"], "forwards": info["forwards"], "heldout": info["heldout"]}
    dump_json(record, rec)
    return rec


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def collect(run_dir: Path) -> dict[str, Any]:
    """A finished run's figures from its eval.jsonl, metrics.jsonl and losses.json."""
    evals, steps = _jsonl(run_dir / "eval.jsonl"), _jsonl(run_dir / "metrics.jsonl")
    students = [e for e in evals if e["model"] == "student"]
    train_s = sum(s["step_s"] for s in steps)
    return {"initial": students[0], "final": students[-1], "steps": len(steps), "tokens": steps[-1]["tokens"],
            "train_s": train_s, "tokens_per_s": steps[-1]["tokens"] / train_s if train_s > 0 else None,
            "teacher_bytes_computed": sum(s.get("teacher_bytes", 0) for s in steps),
            "final_loss": steps[-1]["loss"], "final_ce": steps[-1]["ce"],
            "losses": json.loads((run_dir / "losses.json").read_text())}


def run_one(cfg: DistillConfig, run_dir: Path, hw: dict[str, Any], overwrite: bool) -> dict[str, Any]:
    """One `xtalign distill` run into `run_dir` plus its result.json (reused when finished and unchanged)."""
    from xtalign.distill import engine

    old = _reusable(run_dir / "result.json", digest(cfg), hw, overwrite)
    if old is not None:
        return old
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    engine.run(cfg, run_dir)
    rec = {"config_sha256": digest(cfg), "hardware": hw, "wall_s": time.perf_counter() - t0,
           "seed": cfg.student.init_seed, **collect(run_dir)}
    dump_json(run_dir / "result.json", rec)
    return rec


# --- the table -------------------------------------------------------------------------------------------

def mean_std(values: list[float | None]) -> dict[str, Any]:
    """Mean and sample standard deviation (n − 1) over the seeds that have a value."""
    xs = [float(v) for v in values if v is not None]
    return {"mean": statistics.fmean(xs) if xs else None, "std": statistics.stdev(xs) if len(xs) > 1 else None,
            "n": len(xs), "values": xs}


def _figures(evals: list[dict[str, Any]]) -> dict[str, Any]:
    return {"bits_per_byte": mean_std([e["bits_per_byte"] for e in evals]),
            "by_class": {c: mean_std([e["by_class"][c]["bits_per_byte"] for e in evals]) for c in CLASSES},
            "class_bytes": {c: evals[0]["by_class"][c]["bytes"] for c in CLASSES} if evals else {}}


def teacher_row(fill: dict[str, Any], tokens: int | None) -> dict[str, Any]:
    wall = fill["wall_s"]
    return {"key": f"teacher:{fill['teacher']}", "label": f"teacher {fill['teacher']}", "kind": "teacher", "loss": "—",
            **_figures([fill["heldout"]]), "tokens_per_s": mean_std([tokens / wall if tokens else None]),
            "wall_s": mean_std([wall]), "note": "its own held-out bits per byte; wall time = the one cache fill"}


def trained_row(row: Row, runs: list[dict[str, Any]], loss: str, note: str = "") -> dict[str, Any]:
    return {"key": row.key, "label": row.label, "kind": "trained", "loss": loss,
            **_figures([r["final"] for r in runs]), "tokens_per_s": mean_std([r["tokens_per_s"] for r in runs]),
            "wall_s": mean_std([r["wall_s"] for r in runs]), "tokens": sorted({r["tokens"] for r in runs}),
            "seeds": [r["seed"] for r in runs], "note": note}


def untrained_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"key": "untrained", "label": "untrained student", "kind": "untrained", "loss": "—",
            **_figures([r["initial"] for r in runs]), "tokens_per_s": mean_std([]), "wall_s": mean_std([]),
            "seeds": [r["seed"] for r in runs], "note": "step 0 of the CE-only runs (each seed's init)"}


def _loss_of(runs: list[dict[str, Any]]) -> str:
    return " + ".join(v["loss"] for v in runs[0]["losses"].values()) if runs[0]["losses"] else "ce"


def build_rows(fills: dict[str, dict[str, Any]], runs: dict[str, list[dict[str, Any]]], auto: dict[str, Any]
               ) -> list[dict[str, Any]]:
    tokens = runs["ce"][0]["tokens"]
    out = [teacher_row(fills[t], tokens) for t in (GEMMA, SMOL)] + [untrained_row(runs["ce"])]
    for row in ROWS:
        if row.key == "auto":
            note = f"auto picks {auto['loss']}" + (f": the same runs as {auto['same_as']}" if auto["same_as"] else "")
            out.append(trained_row(row, runs[auto["same_as"] or "auto"], f"auto → {auto['loss']}", note))
        else:
            out.append(trained_row(row, runs[row.key], _loss_of(runs[row.key])))
    return out


def _cell(stat: dict[str, Any], fmt: str = "{:.3f}") -> str:
    if stat["mean"] is None:
        return "—"
    return fmt.format(stat["mean"]) + ("" if stat["std"] is None else " ± " + fmt.format(stat["std"]))


def markdown(table: dict[str, Any]) -> str:
    """The table as markdown: a header naming data, budget, seeds and hardware, then one line per row."""
    hw, b = table["hardware"], table["budget"]
    lines = [f"# xtalign eval table ({table['mode']}, {short_hardware(hw)}: {hw['gpu'] or hw['cpu']})", "",
             f"Data: {table['data']['name']} (data hash {table['data']['data_hash'][:12]}). Student: "
             f"{table['student']}. Every trained row: {b['steps']} steps × {b['batch_size']} × ≤ {b['seq_len']} "
             f"tokens = {b['tokens']:,} student tokens, student init seeds {table['seeds']} (mean ± sample std); "
             f"one data order (seed {b['data_seed']}). Held-out: {b['heldout_bytes']:,} bytes.", "",
             "| row | loss | held-out bits/byte | " + " | ".join(CLASSES) + " | tokens/s | wall s | hardware |",
             "|---" * (len(CLASSES) + 6) + "|"]
    for r in table["rows"]:
        cells = [r["label"], r["loss"], _cell(r["bits_per_byte"]), *[_cell(r["by_class"][c]) for c in CLASSES],
                 _cell(r["tokens_per_s"], "{:,.0f}"), _cell(r["wall_s"], "{:.0f}"), short_hardware(hw)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Bytes per class: " + ", ".join(f"{c} {table['rows'][0]['class_bytes'][c]:,}" for c in CLASSES)
              + ". tokens/s: student tokens per second of training (teachers: of the one cache fill)."]
    lines += [f"- {r['label']}: {r['note']}" for r in table["rows"] if r.get("note")]
    done = min((r["bits_per_byte"]["n"] for r in table["rows"] if r["kind"] == "trained"), default=0)
    if done < len(table["seeds"]):
        lines.append(f"- PARTIAL: some rows have {done} of {len(table['seeds'])} seeds so far.")
    if not table["equal_token_budget"]:
        lines.append("- WARNING: the trained rows did not all see the same number of student tokens.")
    return "\n".join(lines) + "\n"


# --- driver ----------------------------------------------------------------------------------------------

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
    p.add_argument("--out", type=Path, default=None, help="output folder (default out/eval[-gpu][-smoke])")
    p.add_argument("--overwrite", action="store_true", help="redo finished runs whose config changed")
    args = p.parse_args(argv)
    args.corpus = args.corpus or ("botchan" if args.smoke else str(ROOT / "out" / "corpus"))
    seeds = args.seeds.split(",") if args.seeds else (SMOKE_SEEDS if args.smoke else SEEDS)
    if not all(str(s).strip().isdigit() for s in seeds):
        p.error(f"--seeds must be integers >= 0 separated by commas, e.g. 0,1,2; got {args.seeds!r}")
    args.seeds = tuple(int(s) for s in seeds)
    if args.out is None:
        args.out = ROOT / "out" / f"eval{'-gpu' if args.device == 'cuda' else ''}{'-smoke' if args.smoke else ''}"
    return args


def dry_run(base: dict[str, Any], cache: Path, seeds: tuple[int, ...]) -> str:
    """Every row's resolved config (seed: the first; the others differ only in student.init_seed)."""
    rows = {r.key: to_dict(row_config(base, r, seeds[0], cache)) for r in ROWS}
    fills = {t: to_dict(fill_config(base, t, cache)) for t in (GEMMA, SMOL)}
    return json.dumps({"base_config": str(BASE_CONFIG), "seeds": list(seeds), "cache": str(cache),
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
    rec: dict[str, Any] = {"name": corpus, "data_hash": data_hash, "pack_chars": cfg.data.pack_chars}
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


def assemble(args: argparse.Namespace, base_cfg: DistillConfig, data: dict[str, Any], hw: dict[str, Any],
             fills: dict[str, Any], runs: dict[str, list[dict[str, Any]]], auto: dict[str, Any], wall: float
             ) -> dict[str, Any]:
    """The results JSON: rows (mean ± std over seeds), every run, fills, budget, provenance."""
    trained = [r for rs in runs.values() for r in rs]
    ce = runs["ce"][0]
    budget = {"steps": base_cfg.steps, "batch_size": base_cfg.batch_size, "seq_len": base_cfg.seq_len,
              "grad_accum": base_cfg.grad_accum, "tokens": ce["tokens"], "data_seed": base_cfg.seed,
              "heldout_bytes": ce["final"]["bytes"]}
    same = len({(r["tokens"], r["final"]["bytes"]) for r in trained}) == 1
    return {"mode": "smoke" if args.smoke else "full", "device": args.device, "hardware": hw,
            "provenance": provenance(), "base_config": str(BASE_CONFIG.relative_to(ROOT)), "data": data,
            "student": _student(base_cfg), "seeds": list(args.seeds), "budget": budget, "equal_token_budget": same,
            "cache_reused": all(r["teacher_bytes_computed"] == 0 for r in trained), "auto": auto,
            "versions": _versions(), "rows": _device_notes(build_rows(fills, runs, auto), args.device), "fills": fills,
            "runs": {k: [{kk: v for kk, v in r.items() if kk != "initial"} for r in rs] for k, rs in runs.items()},
            "wall_s": wall}


def _versions() -> dict[str, str]:
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__}


def _device_notes(rows: list[dict[str, Any]], device: str) -> list[dict[str, Any]]:
    """On the GPU the student starts as SmolLM2-135M-Instruct itself: its same-vocab term is self-distillation."""
    if device == "cuda":
        for r in rows:
            if r["key"] in ("same-vocab", "multi-sum", "multi-dynamic"):
                r["note"] = "the student starts as SmolLM2-135M-Instruct: its same-vocab term is self-distillation"
    return rows


def write_outputs(out: Path, table: dict[str, Any]) -> None:
    dump_json(out / "eval_table.json", table)
    write_atomic(out / "eval_table.md", markdown(table))
    try:
        import importlib.util

        spec = importlib.util.spec_from_file_location("eval_table_figure", ROOT / "figures" / "eval_table.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.draw(table, out / "eval_table.png")
    except ImportError as exc:
        log.warning("no figure (%s); draw it later with figures/eval_table.py", exc)


def run_table(args: argparse.Namespace, base: dict[str, Any], cache: Path) -> dict[str, Any]:
    _check_ready(args)
    hw = hardware(args.device)
    bind_hardware(args.out, hw)
    t0 = time.perf_counter()
    base_cfg = row_config(base, ROWS[-1], args.seeds[0], cache)  # both teachers: the strictest cut
    data = _data_record(args.corpus, base_cfg, check_same_text(base_cfg))
    auto = auto_pick(base, cache)
    print(f"auto picks {auto['loss']} ({auto['reason']})", flush=True)
    fills = {t: fill_teacher(base, t, cache, hw, args.overwrite) for t in (GEMMA, SMOL)}
    runs: dict[str, list[dict[str, Any]]] = {r.key: [] for r in ROWS if r.key != "auto" or not auto["same_as"]}
    for seed in args.seeds:  # seed-major: after the first pass every row has a number
        for key in runs:
            row = next(r for r in ROWS if r.key == key)
            rec = run_one(row_config(base, row, seed, cache), args.out / "runs" / key / f"seed-{seed}", hw,
                          args.overwrite)
            runs[key].append(rec)
            print(f"{key} seed {seed}: {rec['final']['bits_per_byte']:.4f} bits/byte, {rec['wall_s']:.0f} s",
                  flush=True)
        table = assemble(args, base_cfg, data, hw, fills, runs, auto, time.perf_counter() - t0)
        write_outputs(args.out, table)
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
    print(markdown(table))
    print(f"wrote {args.out}/eval_table.json, eval_table.md, eval_table.png in {table['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
