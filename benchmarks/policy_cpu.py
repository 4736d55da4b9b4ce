"""On-policy cross-tokenizer distillation on CPU: off-policy P-KL against on-policy (P-KL, reverse KL) and mix.

    .venv/bin/python analysis/corpus.py                        # once: out/corpus
    .venv/bin/python benchmarks/policy_cpu.py --dry-run
    .venv/bin/python benchmarks/policy_cpu.py --smoke --allow-dirty   # 2 steps per arm, the real models
    .venv/bin/python benchmarks/policy_cpu.py                  # the study (clean tree)

distill/configs/policy-smollm2-gemma3-cpu.yaml: SmolLM2-135M-Instruct (student) and Gemma-3-270M (teacher).
Arms, each on data orders `--seeds` (default 0, 1): `off` (P-KL on corpus text, samples of about the length
of a prompt + completion, so the arms train on similar student tokens per step), `on-kd` (every row a
student sample, P-KL over its completion), `on-rkl` (the sequence-level reverse KL by the policy gradient),
`mix` (half the rows samples, P-KL), and `off-wall`: off-policy for as many steps as `on-kd` took wall clock
(generation costs time). After training, each student samples continuations of held-out documents' openings
(`rollout.evaluate.score_samples`, seeded): the teacher's bits per byte of those samples and the reverse-KL
estimate per byte; and its held-out bits per byte on real text (the engine's eval), so a method that games
the teacher shows up. Results benchmarks/results/policy-cpu/{policy_cpu.json, policy_cpu.md}.
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
from eval_rows import mean_std  # noqa: E402

from xtalign.cli.common import CLIError  # noqa: E402
from xtalign.config import ConfigError, load_yaml, to_dict  # noqa: E402
from xtalign.distill.config import DistillConfig, config_from_dict  # noqa: E402

CONFIG = ROOT / "distill" / "configs" / "policy-smollm2-gemma3-cpu.yaml"
ARMS = {"off": ("off-policy P-KL (corpus text)", ("policy.mode=off",)),
        "on-kd": ("on-policy, P-KL over the completions", ()),
        "on-rkl": ("on-policy, sequence-level reverse KL (policy gradient)", ("policy.objective=reverse_kl",)),
        "mix": ("mix: half samples, half text, P-KL", ("policy.mode=mix", "policy.on_fraction=0.5"))}
SMOKE = ("steps=2", "policy.max_new_tokens=8", "eval.max_batches=1")
EVAL_PROMPTS, SMOKE_PROMPTS = 16, 2


def base_dict(*, corpus: Path, smoke: bool, steps: int | None) -> dict[str, Any]:
    over = [f"data.train={corpus / 'train.jsonl'}", f"data.heldout={corpus / 'heldout.jsonl'}"]
    over += list(SMOKE) if smoke else []
    over += [f"steps={steps}"] if steps is not None else []
    return to_dict(config_from_dict(load_yaml(CONFIG), over))


def arm_config(base: dict[str, Any], arm: str, seed: int, steps: int | None = None) -> DistillConfig:
    over = [*ARMS.get(arm, ARMS["off"])[1], f"seed={seed}", f"student.init_seed={seed}"]
    return config_from_dict(base, over + ([f"steps={steps}"] if steps else []))


def _score(run_dir: Path, prompts: list[str], cfg: DistillConfig, teacher: Any) -> dict[str, Any]:
    """The exported student's own samples on held-out openings, scored by the teacher."""
    from xtalign.distill.models.load import load_model
    from xtalign.distill.rollout.evaluate import score_samples
    from xtalign.distill.rollout.sampling import SamplingConfig

    student = load_model(model=str(run_dir / "export")) if (run_dir / "export").is_dir() else load_model(
        model=cfg.student.model)
    p = cfg.policy
    return score_samples(student.model, student.tokenizer, teacher, teacher.loaded.tokenizer, prompts,
                         prompt_chars=p.prompt_chars, sampling=SamplingConfig(max_new_tokens=p.max_new_tokens,
                                                                              temperature=p.temperature),
                         seed=cfg.seed, budget=cfg.seq_len - p.max_new_tokens)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--corpus", type=Path, default=ROOT / "out" / "corpus")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--results", type=Path, default=None)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--allow-dirty", action="store_true")
    args = p.parse_args(argv)
    args.seeds = tuple(int(s) for s in args.seeds.split(","))
    args.out = args.out or ROOT / "out" / f"policy-cpu{'-smoke' if args.smoke else ''}"
    args.results = args.results or (args.out / "results" if args.smoke else ROOT / "benchmarks" / "results" /
                                    "policy-cpu")
    return args


def _heldout_prompts(cfg: DistillConfig, n: int) -> list[str]:
    from xtalign.distill.data.corpus import read_documents

    assert cfg.data.heldout is not None
    return read_documents(cfg.data.heldout, field=cfg.data.field)[:n]


def _run_seed(args: argparse.Namespace, base: dict[str, Any], seed: int, hw: dict[str, Any], code: dict[str, Any],
              teacher: Any, prompts: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for arm in ARMS:
        cfg = arm_config(base, arm, seed)
        rec = run_one(cfg, args.out / "runs" / arm / f"seed-{seed}", hw, code, args.overwrite)
        out[arm] = {**rec, "samples": _score(args.out / "runs" / arm / f"seed-{seed}", prompts, cfg, teacher)}
        print(f"{arm} seed {seed}: {rec['final']['bits_per_byte']:.4f} bits/byte on text, samples "
              f"{out[arm]['samples']['teacher_bits_per_byte_of_samples']:.4f} teacher bits/byte, {rec['wall_s']:.0f} s",
              flush=True)
    steps = max(1, round(arm_config(base, "off", seed).steps * out["on-kd"]["train_s"] / max(out["off"]["train_s"],
                                                                                            1e-9)))
    cfg = arm_config(base, "off", seed, steps)
    rec = run_one(cfg, args.out / "runs" / "off-wall" / f"seed-{seed}", hw, code, args.overwrite)
    out["off-wall"] = {**rec, "samples": _score(args.out / "runs" / "off-wall" / f"seed-{seed}", prompts, cfg,
                                                teacher)}
    return out


def _summary(per_seed: dict[int, dict[str, dict[str, Any]]], arm: str) -> dict[str, Any]:
    runs = [per_seed[s][arm] for s in per_seed]
    keys = ("teacher_bits_per_byte_of_samples", "reverse_kl_bits_per_byte", "ended_by_eos", "mean_completion_tokens")
    label = ARMS[arm][0] if arm in ARMS else "off-policy P-KL at the wall clock of on-policy P-KL"
    return {"label": label, "steps": [r["steps"] for r in runs], "student_tokens": [r["tokens"] for r in runs],
            "train_s": [r["train_s"] for r in runs],
            "heldout_text_bits_per_byte": mean_std([r["final"]["bits_per_byte"] for r in runs]),
            **{k: mean_std([r["samples"][k] for r in runs]) for k in keys},
            "per_seed": [{"seed": s, "text_bpb": per_seed[s][arm]["final"]["bits_per_byte"],
                          "samples": per_seed[s][arm]["samples"]} for s in per_seed]}


def before_row(before: dict[int, dict[str, Any]], per_seed: dict[int, dict[str, dict[str, Any]]],
               keys: tuple[str, ...]) -> dict[str, Any]:
    """The untrained student: its samples' figures, and its held-out text bits per byte (step 0 of each seed's
    off-policy run: every arm of a seed starts from the same student and scores the same held-out rows)."""
    row = {k: mean_std([before[s][k] for s in before]) for k in keys}
    return {**row, "heldout_text_bits_per_byte": mean_std([per_seed[s]["off"]["initial"]["bits_per_byte"]
                                                           for s in per_seed])}


def markdown(r: dict[str, Any]) -> str:
    lines = [f"# On-policy distillation on CPU ({short_hardware(r['hardware'])}: {r['hardware']['cpu']})", "",
             f"Student SmolLM2-135M-Instruct <- teacher Gemma-3-270M, data orders {r['seeds']}; code "
             f"{', '.join(r['commits'])}. Samples: continuations of {r['prompts']} held-out documents' openings, "
             "seeded; lower is better in every column.", "",
             "| arm | steps | student tokens | train s | held-out text bits/byte | teacher bits/byte of the "
             "student's samples | reverse KL bits/byte | ended by EOS |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for a in [r["before"], *r["arms"].values()]:
        cells = [a["label"], "/".join(map(str, a.get("steps", []))) or "0",
                 "/".join(f"{t:,}" for t in a.get("student_tokens", [])) or "0",
                 "/".join(f"{t:.0f}" for t in a.get("train_s", [])) or "0"]
        cells += [_cell(a.get(k)) for k in ("heldout_text_bits_per_byte", "teacher_bits_per_byte_of_samples",
                                            "reverse_kl_bits_per_byte", "ended_by_eos")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(stat: dict[str, Any] | None) -> str:
    if not stat or stat.get("mean") is None:
        return "—"
    return f"{stat['mean']:.4f}" + (f" ± {stat['std']:.4f}" if stat.get("std") is not None else "")


def run_study(args: argparse.Namespace, base: dict[str, Any]) -> dict[str, Any]:
    from xtalign.distill.teacher.worker import TeacherWorker
    from xtalign.distill.workers import teacher_worker

    t0 = time.perf_counter()
    prov = start(allow_dirty=args.allow_dirty, smoke=args.smoke, results=args.results)
    hw = hardware("cpu")
    bind_hardware(args.out, hw)
    cfg0 = arm_config(base, "on-kd", args.seeds[0])
    teacher: TeacherWorker = teacher_worker(cfg0, 0, 262144)
    prompts = _heldout_prompts(cfg0, SMOKE_PROMPTS if args.smoke else EVAL_PROMPTS)
    before = {s: _score(args.out / "none", prompts, arm_config(base, "on-kd", s), teacher) for s in args.seeds}
    per_seed = {s: _run_seed(args, base, s, hw, code_state(prov), teacher, prompts) for s in args.seeds}
    arms = {arm: _summary(per_seed, arm) for arm in [*ARMS, "off-wall"]}
    keys = ("teacher_bits_per_byte_of_samples", "reverse_kl_bits_per_byte", "ended_by_eos")
    results = {"mode": "smoke" if args.smoke else "full", "config": rel(CONFIG), "hardware": hw, "provenance": prov,
               "commits": commits([r for s in per_seed.values() for r in s.values()]), "versions": versions(),
               "seeds": list(args.seeds), "prompts": len(prompts),
               "before": {"label": "the student before training", **before_row(before, per_seed, keys)},
               "arms": arms, "wall_s": time.perf_counter() - t0, **finish()}
    write_text_outputs(args.results, "policy_cpu", results, markdown(results))
    return results


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    args = parse_args(argv)
    try:
        if not (args.corpus / "train.jsonl").is_file():
            raise CLIError(f"no corpus at {rel(args.corpus)}; build it with `.venv/bin/python analysis/corpus.py`")
        base = base_dict(corpus=args.corpus.resolve(), smoke=args.smoke, steps=args.steps)
        if args.dry_run:
            print(json.dumps({a: to_dict(arm_config(base, a, args.seeds[0])) for a in ARMS}, indent=2))
            return 0
        results = run_study(args, base)
    except (CLIError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(markdown(portable(results)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
