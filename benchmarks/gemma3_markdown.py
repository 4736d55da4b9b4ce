"""The Gemma-3 CPU study as markdown (benchmarks/gemma3_cpu.py writes it next to its results JSON).

    .venv/bin/python benchmarks/gemma3_cpu.py --smoke --allow-dirty  # out/gemma3-cpu-smoke/results/gemma3_cpu.md

Sections: what ran on which data and code (and whether any training sample repeated), held-out bits per byte
per arm (overall and by character class) with the P-KL − CE difference paired by seed, each seed, each
source (with what "held out" means for the pretrained teacher), the curve at each eval, and wall times.
"""

from __future__ import annotations

from typing import Any

from distill_runs import code_label, short_hardware
from eval_markdown import cell, noisy_name, signed_cell
from eval_rows import CLASSES, NOISE_BYTES, mean_std

ARMS = ("ce", "pkl")
TEACHER_NOTE = ("The held-out split is held out for the student only (its documents are never trained on here). "
                "It is NOT held out for the pretrained teacher: Gemma-3-270M may have seen these public texts "
                "(Botchan from Project Gutenberg; the docutils, Sphinx and pytest documentation) in pretraining, "
                "so its row is not a held-out score.")


def _header(r: dict[str, Any]) -> list[str]:
    hw, b, d, a = r["hardware"], r["budget"], r["data"], r["student"] or {}
    student = (f"random-init {a.get('family')} ({a.get('hidden_size')} wide, {a.get('num_layers')} layers) on the "
               f"{r['student_tokenizer']} tokenizer" if a else r["student_tokenizer"])
    sources = ", ".join(f"{k} {v:,}" for k, v in d["samples_by_source"].items())
    repeat = ("No training sample repeats, so KD is not acting as a regulariser against repeated data here."
              if d["repeated_samples"] == 0 else f"WARNING: {d['repeated_samples']} training samples repeat.")
    match = ("every run's own token count equals it" if r["tokens_match_audit"]
             else "WARNING: a run's own token count differs from it")
    lines = [f"# Gemma-3-270M teaches a from-scratch student on CPU: P-KL vs CE only ({r['mode']}, "
             f"{short_hardware(hw)}: {hw['gpu'] or hw['cpu']})", "",
             f"Config: {r['config']}{' + smoke overrides' if r['smoke_overrides'] else ''}. Student: {student}, "
             f"init seeds {r['seeds']}. Teacher: {r['teacher']['name']}, run once into the teacher cache both arms "
             f"read; the CE-only arm is the same config with `combine.scaling=fixed combine.kd_weight=0`, on the very "
             f"same batches (data order seed {b['data_seed']}).", "",
             f"Data: {d['corpus']} (corpus sha256 {str(d.get('corpus_sha256'))[:16]}…, data hash {d['data_hash'][:12]}"
             f", samples of ≤ {b['pack_chars']:,} characters). Every run: {b['steps']} steps × {b['batch_size']} × "
             f"≤ {b['seq_len']} tokens = {d['distinct_samples']:,} distinct training samples of {d['train_samples']:,} "
             f"({d['epochs']:.2f} epochs; by source: {sources}) = {d['distinct_tokens']:,} distinct student tokens "
             f"({d['trained_bytes']:,} bytes; {d['samples_cut_at_seq_len']} samples cut at seq_len); {match}. "
             f"{repeat}", "",
             f"Held-out: {b['heldout_bytes']:,} bytes ({b['heldout_rows']} of {d['heldout_samples']} held-out "
             "samples)."]
    prov = r.get("provenance")
    if prov:
        state = "clean tree" if not prov.get("git_dirty") else f"DIRTY tree, diff sha256 {prov['git_diff_sha256']}"
        at = ("the fill and every run made at it" if r["commits"] == [code_label(prov)]
              else f"WARNING: the fill and runs were made at {'; '.join(r['commits'])}")
        load = (f"; load average (1 min) {prov['load_average_1min_start']} at the start, "
                f"{r.get('load_average_1min_end')} at the end (other work on the cores slows every run)"
                if "load_average_1min_start" in prov else "")
        lines += ["", f"Code: commit {prov['git_sha']} ({state}), taken at the start; {at}. Started {prov['date']}"
                  f"{load}."]
    return lines


def _stat_cells(fig: dict[str, Any], signed: bool = False) -> list[str]:
    f = signed_cell if signed else cell
    return [f(fig["bits_per_byte"]), *[f(fig["by_class"].get(c)) for c in CLASSES]]


def _overall(r: dict[str, Any]) -> list[str]:
    arms, t = r["arms"], r["teacher"]
    class_bytes = arms["ce"].get("class_bytes", {})
    heads = [noisy_name(c, class_bytes) for c in CLASSES]
    teacher = {"bits_per_byte": mean_std([t["heldout"]["bits_per_byte"]]),
               "by_class": {c: mean_std([t["heldout"]["by_class"][c]["bits_per_byte"]]) for c in CLASSES}}
    tokens = f"{r['data']['distinct_tokens']:,}"
    lines = ["", "## Held-out bits per byte (mean ± sample std over seeds)", "",
             "| model | held-out bits/byte | " + " | ".join(heads) + " | student tokens | wall s |",
             "|---" * (len(CLASSES) + 4) + "|",
             "| " + " | ".join([f"teacher {t['name']}", *_stat_cells(teacher), "–",
                                f"{t['fill_wall_s']:.0f} (cache fill)"]) + " |",
             "| " + " | ".join(["student, untrained", *_stat_cells(arms["ce"]["untrained"]), "0", "–"]) + " |"]
    for arm in ARMS:
        a = arms[arm]
        lines.append("| " + " | ".join([a["label"], *_stat_cells(a), tokens, cell(mean_std(a["wall_s"]), "{:.0f}")])
                     + " |")
    lines.append("| " + " | ".join(["**P-KL − CE only, paired by seed** [min, max]", *_stat_cells(r["paired"], True),
                                    "", ""]) + " |")
    lines += ["", f"Bytes per class: {', '.join(f'{c} {class_bytes.get(c, 0):,}' for c in CLASSES)}. † fewer than "
              f"{NOISE_BYTES:,} held-out bytes: noise, not a result. Negative differences: P-KL is lower (better)."]
    return lines


def _per_seed(r: dict[str, Any]) -> list[str]:
    runs = {arm: {x["seed"]: x for x in r["arms"][arm]["runs"]} for arm in ARMS}
    lines = ["", "## Per seed", "", "| seed | CE only | P-KL | P-KL − CE | CE wall s | P-KL wall s |",
             "|---|---|---|---|---|---|"]
    for seed in r["seeds"]:
        ce, pk = runs["ce"].get(seed), runs["pkl"].get(seed)
        if ce is None or pk is None:
            continue
        a, b = ce["final"]["bits_per_byte"], pk["final"]["bits_per_byte"]
        lines.append(f"| {seed} | {a:.4f} | {b:.4f} | {b - a:+.4f} | {ce['wall_s']:.0f} | {pk['wall_s']:.0f} |")
    return lines


def _by_source(r: dict[str, Any]) -> list[str]:
    arms = r["arms"]
    sources = list(arms["ce"].get("by_source") or {})
    if not sources:
        return []
    nb = arms["ce"].get("source_bytes", {})
    t = r["teacher"]["heldout"].get("by_source") or {}
    teacher = [cell(mean_std([r["teacher"]["heldout"]["bits_per_byte"]]))] + [
        cell(mean_std([(t.get(s) or {}).get("bits_per_byte")])) for s in sources]
    lines = ["", "## Held-out bits per byte by source", "",
             "| model | overall | " + " | ".join(noisy_name(s, nb) for s in sources) + " |",
             "|---" * (len(sources) + 2) + "|",
             "| " + " | ".join([f"teacher {r['teacher']['name']} (not held out for it)", *teacher]) + " |",
             "| " + " | ".join(["student, untrained", cell(arms["ce"]["untrained"]["bits_per_byte"]),
                                *[cell(arms["ce"]["untrained"]["by_source"].get(s)) for s in sources]]) + " |"]
    for arm in ARMS:
        a = arms[arm]
        lines.append("| " + " | ".join([a["label"], cell(a["bits_per_byte"]),
                                        *[cell(a["by_source"].get(s)) for s in sources]]) + " |")
    p = r["paired"]
    lines.append("| " + " | ".join(["**P-KL − CE only, paired by seed**", signed_cell(p["bits_per_byte"]),
                                    *[signed_cell(p["by_source"].get(s)) for s in sources]]) + " |")
    lines += ["", "Bytes per source: " + ", ".join(f"{s} {nb.get(s, 0):,}" for s in sources) + ".", "", TEACHER_NOTE]
    return lines


def _by_step(r: dict[str, Any]) -> list[str]:
    steps: dict[int, dict[str, dict[int, float]]] = {}
    for arm in ARMS:
        for run in r["arms"][arm]["runs"]:
            for e in run.get("by_step") or []:
                steps.setdefault(e["step"], {}).setdefault(arm, {})[run["seed"]] = e["bits_per_byte"]
    if len(steps) < 2:
        return []
    lines = ["", "## Held-out bits per byte at each eval", "", "| step | CE only | P-KL | P-KL − CE, paired by seed |",
             "|---|---|---|---|"]
    for step, by_arm in sorted(steps.items()):
        ce, pk = by_arm.get("ce", {}), by_arm.get("pkl", {})
        diff = mean_std([pk[s] - ce[s] for s in pk if s in ce])
        lines.append(f"| {step} | {cell(mean_std(list(ce.values())))} | {cell(mean_std(list(pk.values())))} | "
                     f"{signed_cell(diff)} |")
    return lines


def markdown(r: dict[str, Any]) -> str:
    """The whole study as markdown: header, overall, per seed, by source, by step, wall times."""
    t = r["teacher"]
    lines = _header(r) + _overall(r) + _per_seed(r) + _by_source(r) + _by_step(r)
    lines += ["", "## Wall time", "",
              f"Teacher cache fill ({t['batches']} batches, {t['forwards']} teacher forwards, then the teacher's "
              f"held-out eval): {t['fill_wall_s']:.0f} s. Runs: "
              + "; ".join(f"{r['arms'][arm]['label']}: " + ", ".join(f"seed {x['seed']} {x['wall_s']:.0f} s"
                                                                     for x in r["arms"][arm]["runs"]) for arm in ARMS)
              + f". Whole study (this invocation, reused runs not re-timed): {r['wall_s']:.0f} s on "
              f"{short_hardware(r['hardware'])}."]
    return "\n".join(lines) + "\n"
