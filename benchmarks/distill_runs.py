"""Shared by the results scripts that train with `xtalign distill` (benchmarks/eval_table.py, benchmarks/gemma3_cpu.py):
provenance taken at the start (a dirty tree refused), one hardware per work folder, reuse of finished runs,
a run's figures from its files, how much of the training split a run uses, and repository-relative paths.

Not a script; the scripts import it (`sys.path` holds benchmarks/):

    .venv/bin/python benchmarks/eval_table.py --smoke --allow-dirty   # uses it
    .venv/bin/python benchmarks/gemma3_cpu.py --smoke --allow-dirty   # uses it
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from xtalign.cli.common import CLIError, dump_json, write_atomic
from xtalign.config import to_json
from xtalign.distill.config import DistillConfig

ROOT = Path(__file__).resolve().parents[1]
HOME = str(Path.home())


# --- provenance and paths --------------------------------------------------------------------------------

def start(*, allow_dirty: bool, smoke: bool = False, results: Path | None = None) -> dict[str, Any]:
    """Provenance as the run STARTS, with the load average; a dirty tree is a CLIError (one line, exit 2) unless
    `allow_dirty`, and so is a --smoke run whose `results` folder lies in benchmarks/results/ (full runs only)."""
    from xtalign import provenance

    committed = (ROOT / "benchmarks" / "results").resolve()
    if smoke and results is not None and results.resolve().is_relative_to(committed):
        raise CLIError(f"--smoke writes no committed results; give --results outside {rel(committed)}/")
    try:
        record = provenance.start_provenance(allow_dirty=allow_dirty)
    except provenance.DirtyTreeError as exc:
        raise CLIError(str(exc)) from None
    return {**record, "load_average_1min_start": round(os.getloadavg()[0], 2)}


def finish() -> dict[str, Any]:
    """The exact command (repository-relative) and the load average at the end (other work slows every run)."""
    import sys

    return {"command": " ".join([".venv/bin/python", *(rel(a) if Path(a).is_absolute() else a for a in sys.argv)]),
            "load_average_1min_end": round(os.getloadavg()[0], 2)}


def code_state(prov: dict[str, Any]) -> dict[str, Any]:
    """The part of a provenance record that names the code: commit, dirty or not, the diff's hash."""
    return {k: prov.get(k) for k in ("git_sha", "git_dirty", "git_diff_sha256")}


def rel(path: str | Path) -> str:
    """`path` relative to the repository root when it lies inside it (else with the home folder as ~); a symlink
    inside the repository (out/corpus -> elsewhere) keeps its own name rather than its target's absolute path."""
    p = Path(path)
    if not (p.is_absolute() or p.exists()):
        return str(p)
    for q in (Path(os.path.abspath(p)), p.resolve()):  # the name as given first, then its target
        if q.is_relative_to(ROOT):
            return str(q.relative_to(ROOT))
    return portable(str(p))


def portable(obj: Any) -> Any:
    """`obj` with every absolute path inside the repository made relative and the home folder written ~."""
    if isinstance(obj, str):
        return obj.replace(f"{ROOT}/", "").replace(str(ROOT), ".").replace(HOME, "~")
    if isinstance(obj, dict):
        return {k: portable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [portable(v) for v in obj]
    return obj


def absolute_paths(obj: Any) -> list[str]:
    """Strings in `obj` that name this repository's or the home folder's absolute path (should be none)."""
    if isinstance(obj, str):
        return [obj] if str(ROOT) in obj or HOME in obj else []
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in absolute_paths(v)]
    if isinstance(obj, list | tuple):
        return [s for v in obj for s in absolute_paths(v)]
    return []


# --- hardware --------------------------------------------------------------------------------------------

def hardware(device: str) -> dict[str, Any]:
    """What a figure was measured on; a work folder never mixes two of these."""
    import torch

    from xtalign.cli.common import cpu_model

    gpu = torch.cuda.get_device_name(0) if device == "cuda" and torch.cuda.is_available() else None
    return {"device": device, "cpu": cpu_model(), "cpu_count": os.cpu_count(), "gpu": gpu}


def short_hardware(hw: dict[str, Any]) -> str:
    return hw["gpu"] if hw.get("gpu") else f"{hw['cpu_count']}-core CPU"


def bind_hardware(out: Path, hw: dict[str, Any]) -> None:
    """Tie the work folder `out` to one hardware (`hardware.json`); refuse a folder measured on another."""
    path = out / "hardware.json"
    if path.is_file():
        old = json.loads(path.read_text())
        if old != hw:
            raise CLIError(f"{out} holds a table measured on {short_hardware(old)} ({old['cpu']}), this machine is "
                           f"{short_hardware(hw)} ({hw['cpu']}); one table never mixes hardware: give another --out")
        return
    out.mkdir(parents=True, exist_ok=True)
    dump_json(path, hw)


def versions() -> dict[str, str]:
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__}


# --- running ---------------------------------------------------------------------------------------------

def digest(cfg: DistillConfig) -> str:
    return hashlib.sha256(to_json(cfg).encode()).hexdigest()


def reusable(path: Path, key: str, hw: dict[str, Any], code: dict[str, Any], overwrite: bool
             ) -> dict[str, Any] | None:
    """A finished record at `path` of config digest `key`, made on this hardware at this commit, else None
    (redo it); another config or commit is refused unless `overwrite`, other hardware always."""
    if not path.is_file():
        return None
    old = json.loads(path.read_text())
    if old.get("hardware") != hw:
        raise CLIError(f"{path} was measured on other hardware ({short_hardware(old['hardware'])}); "
                       "one table never mixes hardware: give another --out")
    made_at = (old.get("code") or {}).get("git_sha")
    if old.get("config_sha256") == key and made_at == code.get("git_sha"):
        return old
    if not overwrite:
        what = ("another config" if old.get("config_sha256") != key else
                f"the code of commit {made_at}, this is {code.get('git_sha')}")
        raise CLIError(f"{path} holds a finished run of {what}; pass --overwrite to redo it or give another --out")
    return None


def fill_teacher(cfg: DistillConfig, teacher: str, cache: Path, hw: dict[str, Any], code: dict[str, Any],
                 overwrite: bool) -> dict[str, Any]:
    """Run one teacher (the fill config `cfg`) once over a run's batches into `cache/<teacher>` (reused)."""
    from xtalign.distill.engine import fill_cache

    record = cache / f"{teacher}.fill.json"
    old = reusable(record, digest(cfg), hw, code, overwrite)
    if old is not None:
        return old
    print(f"teacher {teacher} -> {rel(cache / teacher)} ({cfg.steps * cfg.grad_accum} batches)", flush=True)
    t0 = time.perf_counter()
    res = fill_cache(cfg, cache)
    info = res["teachers"][teacher]
    rec = {"teacher": teacher, "config_sha256": digest(cfg), "hardware": hw, "code": code,
           "wall_s": time.perf_counter() - t0, "batches": res["batches"], "forwards": info["forwards"],
           "heldout": info["heldout"]}
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
            "by_step": [{"step": e["step"], "bits_per_byte": e["bits_per_byte"]} for e in students],
            "losses": json.loads((run_dir / "losses.json").read_text())}


def run_one(cfg: DistillConfig, run_dir: Path, hw: dict[str, Any], code: dict[str, Any], overwrite: bool
            ) -> dict[str, Any]:
    """One `xtalign distill` run into `run_dir` plus its result.json (reused when finished and unchanged)."""
    from xtalign.distill import engine

    old = reusable(run_dir / "result.json", digest(cfg), hw, code, overwrite)
    if old is not None:
        return old
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    engine.run(cfg, run_dir)
    rec = {"config_sha256": digest(cfg), "hardware": hw, "code": code, "wall_s": time.perf_counter() - t0,
           "seed": cfg.student.init_seed, **collect(run_dir)}
    dump_json(run_dir / "result.json", rec)
    return rec


def code_label(code: dict[str, Any]) -> str:
    """A commit, with the diff's hash when the tree was dirty: `abc123` or `abc123 (dirty, diff 0f1e2d3c4b5a)`."""
    sha = str(code.get("git_sha"))
    return f"{sha} (dirty, diff {str(code.get('git_diff_sha256'))[:12]})" if code.get("git_dirty") else sha


def commits(records: list[dict[str, Any]]) -> list[str]:
    """The distinct code states the given run/fill records were made at (one, for a table from one commit)."""
    return sorted({code_label(r.get("code") or {}) for r in records})


# --- data ------------------------------------------------------------------------------------------------

def data_usage(cfg: DistillConfig) -> dict[str, Any]:
    """Which training samples a run of `cfg` trains on (steps × grad_accum batches of its data order):
    distinct samples, how many repeat, the fraction of an epoch; no tokenization."""
    import numpy as np

    from xtalign.distill.data.corpus import load_corpus

    corpus = load_corpus(cfg.data, seed=cfg.seed)
    ids = planned_ids(len(corpus.train), cfg)
    distinct = np.unique(ids)
    return {"train_samples": len(corpus.train), "heldout_samples": len(corpus.heldout),
            "samples_used": int(ids.size), "distinct_samples": int(distinct.size),
            "repeated_samples": int(ids.size - distinct.size), "epochs": ids.size / len(corpus.train),
            "data_hash": corpus.data_hash}


def planned_ids(n_train: int, cfg: DistillConfig) -> Any:
    """``[steps × grad_accum × B]`` the train sample ids a run of `cfg` sees, in order (as DataPipeline)."""
    import numpy as np

    from xtalign.distill.data.pipeline import batch_order

    per_epoch = max(1, n_train // cfg.batch_size)
    out, orders = [], {}
    for index in range(cfg.steps * cfg.grad_accum):
        epoch, pos = divmod(index, per_epoch)
        if epoch not in orders:
            orders[epoch] = batch_order(n_train, cfg.batch_size, cfg.seed, epoch)
        out.append(orders[epoch][pos])
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


# --- outputs ---------------------------------------------------------------------------------------------

def load_script(rel_path: str, name: str) -> ModuleType:
    """A figure script of this repository as a module (they are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / rel_path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_text_outputs(folder: Path, stem: str, results: dict[str, Any], md: str) -> list[Path]:
    """`folder/<stem>.json` and `.md`, with repository-relative paths (and ~ for the home folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    dump_json(folder / f"{stem}.json", portable(results))
    write_atomic(folder / f"{stem}.md", portable(md))
    return [folder / f"{stem}.json", folder / f"{stem}.md"]
