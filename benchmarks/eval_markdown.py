"""The eval table as markdown (benchmarks/eval_table.py writes it next to the results JSON).

    .venv/bin/python benchmarks/eval_table.py --smoke --allow-dirty    # writes out/eval-smoke/results/eval_table.md

Sections: the header (data, budget, seeds, data use, code), held-out bits per byte per row (overall and by
character class), each trained row's difference from CE only paired by seed, bits per byte by source, how
far a learned W moved, and what the held-out split does and does not mean for the pretrained teachers.
"""

from __future__ import annotations

from typing import Any

from distill_runs import code_label, short_hardware
from eval_rows import CLASSES, NOISE_BYTES

CONTAMINATION = ("The held-out split is held out for the student only: its documents are never trained on in "
                 "these runs. It is NOT held out for the pretrained teachers: Gemma-3-270M and SmolLM2-135M may "
                 "have seen these public texts (Botchan from Project Gutenberg; the docutils, Sphinx and pytest "
                 "documentation) in pretraining, so the teacher rows are not held-out scores.")


def cell(stat: dict[str, Any] | None, fmt: str = "{:.3f}", spread: bool = False) -> str:
    """`mean ± std` (and `[min, max]` with `spread`), or — without a value."""
    if not stat or stat.get("mean") is None:
        return "—"
    out = fmt.format(stat["mean"]) + ("" if stat.get("std") is None else " ± " + fmt.format(stat["std"]))
    values = stat.get("values") or []
    if spread and len(values) > 1:
        out += f" [{fmt.format(min(values))}, {fmt.format(max(values))}]"
    return out


def signed_cell(stat: dict[str, Any] | None) -> str:
    return cell(stat, "{:+.3f}", spread=True).replace(" ± +", " ± ")


def noisy_name(name: str, n_bytes: dict[str, int]) -> str:
    return f"{name}†" if n_bytes.get(name, NOISE_BYTES) < NOISE_BYTES else name


def _header(table: dict[str, Any]) -> list[str]:
    hw, b, d = table["hardware"], table["budget"], table["data"]
    use = table.get("data_usage")
    used = (f" {use['distinct_samples']:,} of {use['train_samples']:,} training samples ({use['epochs']:.2f} "
            f"epochs), {use['repeated_samples']} repeated." if use else "")
    scored = b.get("heldout_rows")
    of = f" ({scored} of {use['heldout_samples']} held-out samples)" if use and scored else ""
    lines = [f"# xtalign eval table ({table['mode']}, {short_hardware(hw)}: {hw['gpu'] or hw['cpu']})", "",
             f"Data: {d['name']} (data hash {d['data_hash'][:12]}). Student: {table['student']}. Every trained row: "
             f"{b['steps']} steps × {b['batch_size']} × ≤ {b['seq_len']} tokens = {b['tokens']:,} student tokens, "
             f"student init seeds {table['seeds']} (mean ± sample std); one data order (seed {b['data_seed']});"
             f"{used} Held-out: {b['heldout_bytes']:,} bytes{of}."]
    prov = table.get("provenance")
    if prov:
        state = "clean tree" if not prov.get("git_dirty") else f"DIRTY tree, diff sha256 {prov['git_diff_sha256']}"
        made = table.get("commits") or [code_label(prov)]
        at = "every run and fill made at it" if made == [code_label(prov)] else f"runs made at {'; '.join(made)}"
        load = (f"; load average (1 min) {prov['load_average_1min_start']} at the start, "
                f"{table.get('load_average_1min_end')} at the end (other work on the cores slows every run)"
                if "load_average_1min_start" in prov else "")
        lines += ["", f"Code: commit {prov['git_sha']} ({state}), taken at the start; {at}. Started {prov['date']}"
                  f"{load}."]
    return lines


def _main_table(table: dict[str, Any]) -> list[str]:
    rows, hw = table["rows"], table["hardware"]
    class_bytes = rows[0].get("class_bytes", {})
    heads = [noisy_name(c, class_bytes) for c in CLASSES]
    lines = ["", "## Held-out bits per byte", "",
             "| row | loss | held-out bits/byte | " + " | ".join(heads) + " | tokens/s | wall s | hardware |",
             "|---" * (len(CLASSES) + 6) + "|"]
    for r in rows:
        cells = [r["label"], r["loss"], cell(r["bits_per_byte"]), *[cell(r["by_class"][c]) for c in CLASSES],
                 cell(r["tokens_per_s"], "{:,.0f}"), cell(r["wall_s"], "{:.0f}"), short_hardware(hw)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Bytes per class: " + ", ".join(f"{c} {class_bytes.get(c, 0):,}" for c in CLASSES)
              + f". † fewer than {NOISE_BYTES:,} held-out bytes: noise, not a result. tokens/s: student tokens per "
              "second of training (teachers: of the one cache fill)."]
    return lines


def _paired_table(table: dict[str, Any]) -> list[str]:
    rows = [r for r in table["rows"] if "vs_ce" in r]
    if not rows:
        return []
    class_bytes = table["rows"][0].get("class_bytes", {})
    sources = list(rows[0]["vs_ce"].get("by_source", {}))
    source_bytes = table["rows"][0].get("source_bytes", {})
    heads = [noisy_name(c, class_bytes) for c in CLASSES] + [noisy_name(s, source_bytes) for s in sources]
    lines = ["", "## Difference from CE only, paired by seed", "",
             "Per seed: the row's held-out bits per byte minus CE only's at the same student init seed; mean ± "
             "sample std over the seeds [min, max]. Negative = lower (better) than CE only.", "",
             "| row | overall | " + " | ".join(heads) + " |", "|---" * (len(heads) + 2) + "|"]
    for r in rows:
        v = r["vs_ce"]
        cells = [r["label"], signed_cell(v["bits_per_byte"]), *[signed_cell(v["by_class"][c]) for c in CLASSES],
                 *[signed_cell(v["by_source"].get(s)) for s in sources]]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _source_table(table: dict[str, Any]) -> list[str]:
    sources = list(table["rows"][0].get("by_source") or {})
    if not sources:
        return []
    source_bytes = table["rows"][0].get("source_bytes", {})
    lines = ["", "## Held-out bits per byte by source", "", "| row | overall | " + " | ".join(sources) + " |",
             "|---" * (len(sources) + 2) + "|"]
    for r in table["rows"]:
        cells = [r["label"], cell(r["bits_per_byte"]), *[cell(r.get("by_source", {}).get(s)) for s in sources]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Bytes per source: " + ", ".join(f"{s} {source_bytes.get(s, 0):,}" for s in sources) + ".", "",
              CONTAMINATION]
    return lines


def _learned_w(table: dict[str, Any]) -> list[str]:
    w = table.get("learned_w")
    if not w or not w.get("per_seed"):
        return []
    first = w["per_seed"][0]
    seeds = "; ".join(f"seed {s['seed']}: mean {s['l1_mean']:.2e}, max {s['l1_max']:.2e}, {s['moved_rows']:,} rows "
                      f"moved > {s['moved_tol']:g}" for s in w["per_seed"] if s.get("l1_mean") is not None)
    return ["", "## How far the learned W moved", "",
            f"{w['label']} (W lr {w['lr']:g}, {table['budget']['steps']} steps): of W's {first['rows']:,} student "
            f"rows, {first['one_slot_rows']:,} ({100 * first['one_slot_fraction']:.1f} % of the non-empty rows) have "
            f"one live entry and cannot move (a softmax over one entry; largest change seen "
            f"{first['one_slot_l1_max'] or 0:.1e}); {first['multi_entry_rows']:,} rows have ≥ 2 entries. L1 change of "
            f"each multi-entry row's weights from the initial W: {seeds}. Sparsity pattern kept: "
            f"{all(s['pattern_kept'] for s in w['per_seed'])}."]


def markdown(table: dict[str, Any]) -> str:
    """The whole table as markdown: header, per-row figures, paired differences, sources, learned W, notes."""
    lines = _header(table) + _main_table(table) + _paired_table(table) + _source_table(table) + _learned_w(table)
    lines += ["", "## Notes", ""] + [f"- {r['label']}: {r['note']}" for r in table["rows"] if r.get("note")]
    done = min((r["bits_per_byte"]["n"] for r in table["rows"] if r["kind"] == "trained"), default=0)
    if done < len(table["seeds"]):
        lines.append(f"- PARTIAL: some rows have {done} of {len(table['seeds'])} seeds so far.")
    if not table["equal_token_budget"]:
        lines.append("- WARNING: the trained rows did not all see the same number of student tokens.")
    return "\n".join(lines) + "\n"
