"""Checkpoints for exact resume: safetensors for tensors, JSON for the rest, never pickle.

`save_checkpoint` writes ``run_dir/checkpoints/step-{step:08d}/`` through a ``.tmp-step-…`` directory
renamed when complete (a `COMPLETE` marker is its last file), then prunes older checkpoints beyond
`keep_last`. Nested state (optimizer, scheduler, run state) goes through one codec: tensors are moved to
a safetensors file under their dotted path (``state.0.exp_avg``) and referenced from the JSON; tuples
and dicts with non-string keys are tagged, so `optimizer.load_state_dict` gets back exactly what
`optimizer.state_dict()` gave (Adam's float32 ``step`` tensors included).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from xtalign.distill.errors import CheckpointError

__all__ = ["Checkpoint", "CheckpointError", "latest_checkpoint", "load_checkpoint", "save_checkpoint"]

log = logging.getLogger(__name__)

FORMAT_NAME = "xtalign-checkpoint"
FORMAT_VERSION = "1"
COMPLETE = "COMPLETE"
_STEP_DIR = re.compile(r"^step-(\d{8,})$")
_TAGS = ("__tensor__", "__ndarray__", "__tuple__", "__items__")


@dataclass(frozen=True, kw_only=True)
class Checkpoint:
    """One loaded checkpoint: ready for `model.load_state_dict`, `optimizer.load_state_dict`, …"""

    path: Path
    step: int
    model: dict[str, Tensor]
    optimizer_state: dict[str, Any]
    scheduler_state: dict[str, Any] | None
    tensors: dict[str, Tensor]
    state: dict[str, Any]


def _storage_key(t: Tensor) -> tuple[Any, ...] | None:
    if t.numel() == 0:
        return None
    return (t.device.type, t.device.index, t.untyped_storage().data_ptr())


def _view_key(t: Tensor) -> tuple[Any, ...]:
    return (_storage_key(t), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)


def _unshared(tensors: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """CPU, contiguous tensors no two of which share storage (safetensors refuses that).

    Returns (tensors to store, aliases): a name whose tensor is the very same view as an earlier one
    (tied weights) becomes an alias of it; any other overlap is cloned.
    """
    out: dict[str, Tensor] = {}
    aliases: dict[str, str] = {}
    views: dict[tuple[Any, ...], str] = {}
    storages: set[tuple[Any, ...]] = set()
    for name, t in tensors.items():
        if not isinstance(t, Tensor):
            raise CheckpointError(f"{name} is a {type(t).__name__}, not a tensor; a checkpoint's tensor dicts hold "
                                  "tensors only")
        t = t.detach()
        skey, vkey = _storage_key(t), _view_key(t)
        if skey is not None and vkey in views:
            aliases[name] = views[vkey]
            continue
        shared = skey is not None and skey in storages
        cpu = t.cpu().contiguous()
        out[name] = cpu.clone() if shared else cpu
        if skey is not None:
            views[vkey] = name
            storages.add(skey)
    return out, aliases


def _save_tensors(path: Path, tensors: dict[str, Tensor], extra_meta: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    stored, aliases = _unshared(tensors)
    meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "aliases": json.dumps(aliases),
            "order": json.dumps(list(tensors)), **(extra_meta or {})}
    save_file(stored, str(path), metadata=meta)


def _load_tensors(path: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            stored = {name: f.get_tensor(name) for name in f.keys()}
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc}); the checkpoint is damaged") from None
    for alias, canonical in json.loads(meta.get("aliases", "{}")).items():
        stored[alias] = stored[canonical]  # restores the tie: both names hold one tensor
    order = json.loads(meta.get("order", "[]")) or list(stored)
    return {name: stored[name] for name in order}


def _encode(obj: Any, path: str, tensors: dict[str, Tensor]) -> Any:
    """`obj` as JSON, its tensors and arrays moved into `tensors` under dotted paths."""
    if isinstance(obj, Tensor | np.ndarray):
        if path in tensors:
            raise CheckpointError(f"two entries of the state map to the tensor name {path!r}; rename one of them")
        tensors[path] = obj if isinstance(obj, Tensor) else torch.from_numpy(np.array(obj, copy=True, order="C"))
        return {"__tensor__" if isinstance(obj, Tensor) else "__ndarray__": path}
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, f"{path}.{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, f"{path}.{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        plain = all(isinstance(k, str) for k in obj) and not any(k in _TAGS for k in obj)
        if plain:
            return {k: _encode(v, _join(path, k), tensors) for k, v in obj.items()}
        if not all(k is None or isinstance(k, bool | int | float | str) for k in obj):
            raise CheckpointError(f"a dict at {path or 'the top'} has keys that are not numbers or strings; "
                                  "a checkpoint cannot hold it")
        return {"__items__": [[k, _encode(v, _join(path, str(k)), tensors)] for k, v in obj.items()]}
    raise CheckpointError(f"cannot store a {type(obj).__name__} at {path or 'the top'} in a checkpoint; give tensors, "
                          "arrays, numbers, strings, lists, tuples or dicts")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _decode(obj: Any, tensors: dict[str, Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__ndarray__" in obj:
        return tensors[obj["__ndarray__"]].numpy()
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors) for v in obj["__tuple__"])
    if "__items__" in obj:
        return {k: _decode(v, tensors) for k, v in obj["__items__"]}
    return {k: _decode(v, tensors) for k, v in obj.items()}


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1) + "\n", encoding="utf-8")


def _save_structured(directory: Path, name: str, obj: Any, *, always_tensors: bool = False) -> None:
    """`name`.json, plus `name`.safetensors for the tensors inside `obj` (if any, or `always_tensors`)."""
    tensors: dict[str, Tensor] = {}
    _write_json(directory / f"{name}.json", _encode(obj, "", tensors))
    if tensors or always_tensors:
        _save_tensors(directory / f"{name}.safetensors", tensors)


def _load_structured(directory: Path, name: str) -> Any:
    tpath = directory / f"{name}.safetensors"
    tensors = _load_tensors(tpath) if tpath.is_file() else {}
    try:
        raw = json.loads((directory / f"{name}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{directory / name}.json is unreadable ({exc}); the checkpoint is damaged") from None
    try:
        return _decode(raw, tensors)
    except KeyError as exc:
        raise CheckpointError(f"{directory / name}.json names tensor {exc} that {tpath.name} lacks; the checkpoint is "
                              "damaged") from None


def _checkpoints_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def _complete_steps(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint, oldest first."""
    root = _checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        match = _STEP_DIR.match(entry.name)
        if match and (entry / COMPLETE).is_file():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run (incomplete and temporary directories are ignored)."""
    found = _complete_steps(run_dir)
    return found[-1][1] if found else None


def _write_all(tmp: Path, step: int, model: dict[str, Tensor], optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler | None, tensors: dict[str, Tensor],
               state: dict[str, Any]) -> None:
    from xtalign import __version__

    _save_tensors(tmp / "model.safetensors", model, {"kind": "model"})
    _save_structured(tmp, "optimizer", optimizer.state_dict(), always_tensors=True)
    _save_structured(tmp, "scheduler", None if scheduler is None else scheduler.state_dict())
    _save_tensors(tmp / "extra.safetensors", tensors, {"kind": "extra"})
    _save_structured(tmp, "state", state)
    marker = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "xtalign_version": __version__, "step": step}
    _write_json(tmp / COMPLETE, marker)  # last: its presence means every other file is whole


def save_checkpoint(run_dir: Path, step: int, *, model: dict[str, Tensor], optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler | None, tensors: dict[str, Tensor],
                    state: dict[str, Any], keep_last: int) -> Path:
    """Write a complete checkpoint for `step` atomically; keep the newest `keep_last`. Returns its path."""
    if keep_last < 1:
        raise CheckpointError(f"keep_last must be >= 1; got {keep_last}")
    if step < 0:
        raise CheckpointError(f"step must be >= 0; got {step}")
    root = _checkpoints_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        _write_all(tmp, step, model, optimizer, scheduler, tensors, state)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():  # the same step saved again (e.g. right after a resume): swap, then drop the old one
        old = root / f".tmp-replaced-{final.name}-{os.getpid()}"
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)
    _prune(root, run_dir, final, keep_last)
    log.info("checkpoint %s written", final)
    return final


def _prune(root: Path, run_dir: Path, new: Path, keep_last: int) -> None:
    """Delete complete checkpoints older than the newest `keep_last` (never `new`) and stale .tmp-* dirs."""
    found = _complete_steps(run_dir)
    keep = {path for _, path in found[-keep_last:]} | {new}
    for _, path in found:
        if path not in keep:
            shutil.rmtree(path, ignore_errors=True)
    for entry in root.iterdir():
        if entry.name.startswith(".tmp-") and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)


def _resolve(path: Path) -> Path:
    """A checkpoint directory itself, or the newest complete one of a run directory."""
    if (path / COMPLETE).is_file():
        return path
    if _STEP_DIR.match(path.name) or path.name.startswith(".tmp-"):
        raise CheckpointError(f"{path} is an incomplete checkpoint (no {COMPLETE} marker: its save was interrupted); "
                              "resume from the run directory to use the newest complete one")
    latest = latest_checkpoint(path)
    if latest is None:
        raise CheckpointError(f"{path} has no complete checkpoint under checkpoints/; nothing to resume")
    return latest


def load_checkpoint(path: Path) -> Checkpoint:
    """Load a checkpoint directory, or the newest complete checkpoint of a run directory."""
    where = _resolve(Path(path))
    try:
        marker = json.loads((where / COMPLETE).read_text(encoding="utf-8"))
        step = int(marker["step"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{where / COMPLETE} is unreadable ({exc}); the checkpoint is damaged") from None
    if marker.get("format") != FORMAT_NAME or marker.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{where} is format {marker.get('format')!r} version {marker.get('format_version')!r}, "
                              f"not {FORMAT_NAME!r} version {FORMAT_VERSION}; it was written by another xtalign")
    return Checkpoint(path=where, step=step, model=_load_tensors(where / "model.safetensors"),
                      optimizer_state=_load_structured(where, "optimizer"),
                      scheduler_state=_load_structured(where, "scheduler"),
                      tensors=_load_tensors(where / "extra.safetensors"), state=_load_structured(where, "state"))
