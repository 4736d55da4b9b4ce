"""The eval table's rows, their configs and the statistics of the table (benchmarks/eval_table.py drives it).

    .venv/bin/python benchmarks/eval_table.py --dry-run      # every row's resolved config, from this module

Every trained row derives from one base config (distill/configs/eval-table-cpu.yaml): it keeps some of the
base's teachers (Gemma-3-270M, SmolLM2-135M-Instruct) and sets their loss or `combine.multi`; every seed sets
only `student.init_seed`, so all rows and seeds see the same batches (one data order, the config's `seed`)
and the same token budget. A row's figures are the mean ± sample std over seeds, overall, by character class
and by source, and its difference from CE only paired by seed (row − CE at the same init seed).
"""

from __future__ import annotations

import copy
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xtalign.cli.common import CLIError
from xtalign.config import ConfigError, load_yaml, to_dict, to_json
from xtalign.distill.config import DistillConfig, config_from_dict

ROOT = Path(__file__).resolve().parents[1]
BASE_CONFIG = ROOT / "distill" / "configs" / "eval-table-cpu.yaml"
GEMMA, SMOL = "gemma3-270m", "smollm2-135m"
CLASSES = ("digits", "whitespace", "punctuation", "letters", "other")
NOISE_BYTES = 1000  # a class or source with fewer held-out bytes than this is marked as noise
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


def auto_pick(base: dict[str, Any], cache: Path) -> dict[str, Any]:
    """What `loss: auto` resolves to (as the engine resolves it) and which row runs the same config."""
    from xtalign.distill.models.identity import tokenizer_name
    from xtalign.distill.student.plans import choose_loss
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

    from xtalign.distill.data.builder import BatchBuilder
    from xtalign.distill.data.corpus import load_corpus
    from xtalign.distill.models.identity import tokenizer_name
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


# --- statistics ------------------------------------------------------------------------------------------

def mean_std(values: list[float | None]) -> dict[str, Any]:
    """Mean and sample standard deviation (n − 1) over the seeds that have a value."""
    xs = [float(v) for v in values if v is not None]
    return {"mean": statistics.fmean(xs) if xs else None, "std": statistics.stdev(xs) if len(xs) > 1 else None,
            "n": len(xs), "values": xs}


def sources_of(evals: list[dict[str, Any]]) -> list[str]:
    """The held-out sources the eval records name (sorted; none for records without `by_source`)."""
    return sorted({s for e in evals for s in (e.get("by_source") or {})})


def _source_bpb(e: dict[str, Any], source: str) -> float | None:
    return ((e.get("by_source") or {}).get(source) or {}).get("bits_per_byte")


def figures(evals: list[dict[str, Any]]) -> dict[str, Any]:
    """Overall, per class and per source bits per byte over the given eval records (one per seed)."""
    first = evals[0] if evals else {}
    return {"bits_per_byte": mean_std([e["bits_per_byte"] for e in evals]),
            "by_class": {c: mean_std([e["by_class"][c]["bits_per_byte"] for e in evals]) for c in CLASSES},
            "class_bytes": {c: first["by_class"][c]["bytes"] for c in CLASSES} if evals else {},
            "by_source": {s: mean_std([_source_bpb(e, s) for e in evals]) for s in sources_of(evals)},
            "source_bytes": {s: v["bytes"] for s, v in (first.get("by_source") or {}).items()}}


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def paired(runs: list[dict[str, Any]], ce_runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each run's final figures minus CE only's at the same student init seed (negative = better than CE)."""
    ce = {r["seed"]: r["final"] for r in ce_runs}
    pairs = [(r["seed"], r["final"], ce[r["seed"]]) for r in runs if r["seed"] in ce]
    sources = sources_of([p[1] for p in pairs])
    return {"seeds": [s for s, _, _ in pairs],
            "bits_per_byte": mean_std([_diff(a["bits_per_byte"], b["bits_per_byte"]) for _, a, b in pairs]),
            "by_class": {c: mean_std([_diff(a["by_class"][c]["bits_per_byte"], b["by_class"][c]["bits_per_byte"])
                                      for _, a, b in pairs]) for c in CLASSES},
            "by_source": {s: mean_std([_diff(_source_bpb(a, s), _source_bpb(b, s)) for _, a, b in pairs])
                          for s in sources}}


# --- rows ------------------------------------------------------------------------------------------------

def teacher_row(fill: dict[str, Any], tokens: int | None) -> dict[str, Any]:
    wall = fill["wall_s"]
    return {"key": f"teacher:{fill['teacher']}", "label": f"teacher {fill['teacher']}", "kind": "teacher", "loss": "—",
            **figures([fill["heldout"]]), "tokens_per_s": mean_std([tokens / wall if tokens else None]),
            "wall_s": mean_std([wall]), "note": "its own bits per byte on the student's held-out split (pretrained: "
            "may have seen these public texts); wall time = the one cache fill"}


def trained_row(row: Row, runs: list[dict[str, Any]], loss: str, ce_runs: list[dict[str, Any]], note: str = ""
                ) -> dict[str, Any]:
    out = {"key": row.key, "label": row.label, "kind": "trained", "loss": loss, **figures([r["final"] for r in runs]),
           "tokens_per_s": mean_std([r["tokens_per_s"] for r in runs]), "wall_s": mean_std([r["wall_s"] for r in runs]),
           "tokens": sorted({r["tokens"] for r in runs}), "seeds": [r["seed"] for r in runs], "note": note}
    if row.key != "ce":
        out["vs_ce"] = paired(runs, ce_runs)
    return out


def untrained_row(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"key": "untrained", "label": "untrained student", "kind": "untrained", "loss": "—",
            **figures([r["initial"] for r in runs]), "tokens_per_s": mean_std([]), "wall_s": mean_std([]),
            "seeds": [r["seed"] for r in runs], "note": "step 0 of the CE-only runs (each seed's init)"}


def _loss_of(runs: list[dict[str, Any]]) -> str:
    return " + ".join(v["loss"] for v in runs[0]["losses"].values()) if runs[0]["losses"] else "ce"


def build_rows(fills: dict[str, dict[str, Any]], runs: dict[str, list[dict[str, Any]]], auto: dict[str, Any]
               ) -> list[dict[str, Any]]:
    """Teachers, the untrained student, then every trained row in ROWS order (auto shares its twin's runs)."""
    tokens, ce = runs["ce"][0]["tokens"], runs["ce"]
    out = [teacher_row(fills[t], tokens) for t in (GEMMA, SMOL)] + [untrained_row(ce)]
    for row in ROWS:
        if row.key == "auto":
            note = f"auto picks {auto['loss']}" + (f": the same runs as {auto['same_as']}" if auto["same_as"] else "")
            out.append(trained_row(row, runs[auto["same_as"] or "auto"], f"auto → {auto['loss']}", ce, note))
        else:
            out.append(trained_row(row, runs[row.key], _loss_of(runs[row.key]), ce))
    return out


# --- the learned W ---------------------------------------------------------------------------------------

def w_movement(init_idx: Any, init_w: Any, learned_idx: Any, learned_w: Any, tol: float = 1e-3) -> dict[str, Any]:
    """How far a learned W moved from its initial W, row by row (L1 of the weight change): one-slot rows
    cannot move (a softmax over one entry), so the figures are over rows with ≥ 2 live entries."""
    import numpy as np

    init_idx, init_w = np.asarray(init_idx), np.asarray(init_w, dtype=np.float64)  # [R, k]
    n = min(init_w.shape[0], np.asarray(learned_w).shape[0])
    learned_idx, learned_w = np.asarray(learned_idx)[:n], np.asarray(learned_w, dtype=np.float64)[:n]
    init_idx, init_w = init_idx[:n], init_w[:n]
    live = init_w > 0  # [R, k]
    n_live = live.sum(1)  # [R]
    multi, one = n_live >= 2, n_live == 1
    l1 = np.abs(learned_w - init_w).sum(1)  # [R]
    moved = l1[multi]
    return {"rows": int(n), "empty_rows": int((n_live == 0).sum()), "one_slot_rows": int(one.sum()),
            "multi_entry_rows": int(multi.sum()), "one_slot_fraction": float(one.sum() / max(1, (n_live > 0).sum())),
            "pattern_kept": bool(np.array_equal(np.where(live, init_idx, 0), np.where(live, learned_idx, 0))),
            "l1_mean": float(moved.mean()) if moved.size else None,
            "l1_median": float(np.median(moved)) if moved.size else None,
            "l1_max": float(moved.max()) if moved.size else None, "moved_rows": int((moved > tol).sum()),
            "moved_tol": tol, "one_slot_l1_max": float(l1[one].max()) if one.any() else None}
