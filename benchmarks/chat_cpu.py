"""Chat distillation on CPU with the real pair in their real templates: CE only against P-KL and H-KL.

    .venv/bin/python analysis/chat_corpus.py                    # once: out/chat/{train,heldout}.jsonl
    .venv/bin/python benchmarks/chat_cpu.py --dry-run           # every arm's resolved config
    .venv/bin/python benchmarks/chat_cpu.py --smoke --allow-dirty   # 2 steps, the real models, a few minutes
    .venv/bin/python benchmarks/chat_cpu.py                     # the study (clean tree)

distill/configs/chat-smollm2-gemma3-cpu.yaml: the student SmolLM2-135M-Instruct (its own ChatML template)
continues training against Gemma-3-270M reading every conversation in the Gemma turn format. For each data
order (`seed`, default 0 and 1) the teacher cache is filled once and the three arms read it — CE only
(`combine.scaling=fixed combine.kd_weight=0`), P-KL, H-KL (the audit's pick for this pair) — so they see the
very same batches. Scores: assistant-content bits per byte on the held-out conversations (all of them),
overall, by class and by source, paired per data order against CE only; the teacher's own figure; wall times.
Provenance is taken at the start from a clean tree (--allow-dirty records the diff hash). Work folder
out/chat-cpu[-smoke]; results benchmarks/results/chat-cpu/{chat_cpu.json, chat_cpu.md}.
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
    fill_teacher,
    finish,
    hardware,
    portable,
    rel,
    run_one,
    short_hardware,
    start,
    versions,
    write_text_outputs,
)
from eval_rows import figures, paired  # noqa: E402

from xtalign.cli.common import CLIError  # noqa: E402
from xtalign.config import ConfigError, load_yaml, to_dict  # noqa: E402
from xtalign.distill.config import DistillConfig, config_from_dict  # noqa: E402

CONFIG = ROOT / "distill" / "configs" / "chat-smollm2-gemma3-cpu.yaml"
TEACHER = "gemma3-270m"
ARMS = {"ce": ("CE only (the same batches)", ("combine.scaling=fixed", "combine.kd_weight=0")),
        "pkl": ("CE + P-KL from Gemma-3-270M", ("teachers.0.loss=p-kl",)),
        "hkl": ("CE + H-KL from Gemma-3-270M (the audit's pick)", ("teachers.0.loss=h-kl",))}
SMOKE = ("steps=2", "batch_size=2", "seq_len=256", "eval.max_batches=2")


def base_dict(*, data: Path, smoke: bool, steps: int | None, eval_batches: int | None = None) -> dict[str, Any]:
    over = [f"data.train={data / 'train.jsonl'}", f"data.heldout={data / 'heldout.jsonl'}"]
    over += list(SMOKE) if smoke else []
    over += [f"steps={steps}"] if steps is not None else []
    over += [f"eval.max_batches={eval_batches}"] if eval_batches is not None else []
    return to_dict(config_from_dict(load_yaml(CONFIG), over))


def arm_config(base: dict[str, Any], arm: str, seed: int, cache: Path) -> DistillConfig:
    """One arm on data order `seed` (the pretrained student has no init to vary), reading `cache`."""
    return config_from_dict(base, [*ARMS[arm][1], f"seed={seed}", f"student.init_seed={seed}",
                                   f"cache_teachers={cache}"])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--data", type=Path, default=ROOT / "out" / "chat", help="analysis/chat_corpus.py's folder")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--seeds", default="0,1", help="data orders, comma-separated")
    p.add_argument("--arms", default=",".join(ARMS), help=f"arms to run, comma-separated (of {', '.join(ARMS)}; "
                   "ce is always run: the others are paired against it)")
    p.add_argument("--eval-batches", type=int, default=None, help="held-out batches scored (default: the config's)")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--results", type=Path, default=None)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--allow-dirty", action="store_true")
    args = p.parse_args(argv)
    args.seeds = tuple(int(s) for s in args.seeds.split(","))
    args.arms = tuple(a for a in ARMS if a == "ce" or a in args.arms.split(","))
    args.out = args.out or ROOT / "out" / f"chat-cpu{'-smoke' if args.smoke else ''}"
    args.results = args.results or (args.out / "results" if args.smoke else ROOT / "benchmarks" / "results" /
                                    "chat-cpu")
    return args


def _run_all(args: argparse.Namespace, base: dict[str, Any], hw: dict[str, Any], code: dict[str, Any]
             ) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]]]:
    fills, runs = [], {arm: [] for arm in args.arms}
    for seed in args.seeds:
        cache = args.out / f"cache-seed-{seed}"
        fills.append(fill_teacher(arm_config(base, "pkl", seed, cache), TEACHER, cache, hw, code, args.overwrite))
        for arm in args.arms:
            rec = run_one(arm_config(base, arm, seed, cache), args.out / "runs" / arm / f"seed-{seed}", hw, code,
                          args.overwrite)
            runs[arm].append(rec)
            print(f"{arm} data order {seed}: {rec['final']['bits_per_byte']:.4f} bits/byte (assistant content), "
                  f"{rec['wall_s']:.0f} s", flush=True)
    return fills, runs


def _arm(arm: str, runs: list[dict[str, Any]], ce: list[dict[str, Any]]) -> dict[str, Any]:
    keep = ("seed", "wall_s", "steps", "tokens", "tokens_per_s", "final_loss", "final_ce", "final", "losses")
    return {"label": ARMS[arm][0], "overrides": list(ARMS[arm][1]), **figures([r["final"] for r in runs]),
            "before_training": figures([r["initial"] for r in runs]),
            "minus_ce": paired(runs, ce) if arm != "ce" else None,
            "runs": [{k: r.get(k) for k in keep} for r in runs]}


def markdown(r: dict[str, Any]) -> str:
    b = r["budget"]
    lines = [f"# Chat distillation on CPU ({short_hardware(r['hardware'])}: {r['hardware']['cpu']})", "",
             f"Student SmolLM2-135M-Instruct (ChatML) <- teacher Gemma-3-270M (Gemma turns, google-gemma-2-2b-it). "
             f"Data: {r['data']}; {b['steps']} steps x {b['batch_size']} conversations x <= {b['seq_len']} tokens, "
             f"loss on assistant contents and ends of turn; data orders {r['seeds']} (the same batches for every "
             f"arm of an order). Held-out: assistant-content bits per byte over {b['heldout_bytes']:,} bytes of "
             f"{b['heldout_rows']} conversations. Code: {', '.join(r['commits'])}.", "",
             "| arm | held-out bits/byte (mean ± std over orders) | minus CE only, paired | before training |",
             "|---|---:|---:|---:|",
             f"| teacher Gemma-3-270M (its own tokens, its template) | {r['teacher']['bits_per_byte']:.4f} | | |"]
    for a in r["arms"].values():
        bpb, before = a["bits_per_byte"], a["before_training"]["bits_per_byte"]
        diff = a["minus_ce"]["bits_per_byte"] if a["minus_ce"] else None
        cell = f"{diff['mean']:+.4f} ± {diff['std'] or 0:.4f}" if diff else "—"
        lines.append(f"| {a['label']} | {bpb['mean']:.4f} ± {bpb['std'] or 0:.4f} | {cell} | {before['mean']:.4f} |")
    lines += ["", "The public texts behind these conversations are not held out for the pretrained models (SmolLM2 "
              "and Gemma-3 may have seen them); only the split between training and held-out conversations is "
              "clean."]
    return "\n".join(lines) + "\n"


def run_study(args: argparse.Namespace, base: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    if not (args.data / "train.jsonl").is_file():
        raise CLIError(f"no chat data at {rel(args.data)}; build it with `.venv/bin/python analysis/chat_corpus.py`")
    prov = start(allow_dirty=args.allow_dirty, smoke=args.smoke, results=args.results)
    hw = hardware("cpu")
    bind_hardware(args.out, hw)
    fills, runs = _run_all(args, base, hw, code_state(prov))
    cfg = config_from_dict(base, [])
    ce = runs["ce"]
    results = {"mode": "smoke" if args.smoke else "full", "config": rel(CONFIG), "hardware": hw, "provenance": prov,
               "commits": commits([*fills, *[x for rs in runs.values() for x in rs]]), "versions": versions(),
               "data": rel(args.data), "seeds": list(args.seeds),
               "budget": {"steps": cfg.steps, "batch_size": cfg.batch_size, "seq_len": cfg.seq_len,
                          "heldout_bytes": ce[0]["final"]["bytes"], "heldout_rows": ce[0]["final"].get("rows")},
               "teacher": {"name": TEACHER, "bits_per_byte": fills[0]["heldout"]["bits_per_byte"],
                           "heldout": fills[0]["heldout"], "fill_wall_s": [f["wall_s"] for f in fills]},
               "arms": {arm: _arm(arm, rs, ce) for arm, rs in runs.items()}, "wall_s": time.perf_counter() - t0,
               **finish()}
    write_text_outputs(args.results, "chat_cpu", results, markdown(results))
    return results


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    args = parse_args(argv)
    try:
        base = base_dict(data=args.data.resolve(), smoke=args.smoke, steps=args.steps, eval_batches=args.eval_batches)
        if args.dry_run:
            arms = {a: to_dict(arm_config(base, a, args.seeds[0], args.out / "cache-seed-0")) for a in args.arms}
            print(json.dumps({"config": rel(CONFIG), "seeds": list(args.seeds), "arms": arms}, indent=2))
            return 0
        results = run_study(args, base)
    except (CLIError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(markdown(portable(results)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
