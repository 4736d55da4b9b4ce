"""Teacher cache: one expensive teacher pass serves many student runs.

A cache directory holds safetensors shards (each the teacher's answers for up to `shard_batches`
batches) and `manifest.json`: the `CacheKey` it was made for, the format, the shard list with the
batch indices each holds and their write order. Shards and the manifest are written atomically
(temporary name + rename) and the manifest names only complete shards, so a killed run leaves a
readable cache of what it finished; re-opening it with the same key continues it.

Per batch a shard stores the `TeacherTopK` tensors exactly as given (bf16 logits, int32 ids, fp32
logsumexp and target log-prob), the teacher's token ids, lengths and targets, the alignment chunks of
the side (cross-vocabulary teachers) and the sample ids: enough to check that a later run sees the
same batch and to use the answer without running the teacher.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from xtalign.distill.batch import TeacherSide
from xtalign.losses import TeacherTopK

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "CacheError", "CacheKey", "CacheMismatchError", "TeacherCacheReader",
           "TeacherCacheWriter"]

log = logging.getLogger(__name__)

FORMAT_NAME = "xtalign-teacher-cache"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_SIDE_ARRAYS = ("teacher_ids", "teacher_lengths", "teacher_targets", "student_chunk", "teacher_chunk", "sample_ids")


class CacheError(ValueError):
    """The directory is not a readable teacher cache (no manifest, garbled, missing shard, other format)."""


class CacheMismatchError(CacheError):
    """The cache was made for another teacher, tokenizer, data or batch geometry than this run's."""


@dataclass(frozen=True, kw_only=True)
class CacheKey:
    """Everything the cached teacher answers depend on; a reader refuses a cache made with any other value.

    teacher: the teacher's label; teacher_model / teacher_tokenizer / student_tokenizer: fingerprints
    (model file hash or id, vocab sha256s); data_hash: the training data and packing; the rest as configured.
    """

    teacher: str
    teacher_model: str
    teacher_tokenizer: str
    student_tokenizer: str
    k: int
    temperature: float
    data_hash: str
    seq_len: int
    batch_size: int
    seed: int
    add_bos: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CacheKey:
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in data]
        if missing:
            raise CacheError(f"cache key lacks {', '.join(missing)}; the cache was written by another xtalign version")
        return cls(**{n: data[n] for n in names})


def _show(value: Any) -> str:
    text = str(value)
    return text[:12] + "…" if isinstance(value, str) and len(text) > 40 else text


def _describe_mismatch(directory: Path, stored: CacheKey, expected: CacheKey) -> str | None:
    """One line naming the first field where the stored key differs from this run's, else None."""
    for f in fields(CacheKey):
        have, want = getattr(stored, f.name), getattr(expected, f.name)
        if have != want:
            a, b = _show(have), _show(want)
            if a == b:
                a, b = str(have), str(want)
            return (f"teacher cache {directory} was made with {f.name}={a}, this run uses {f.name}={b}; "
                    "use another cache directory (or delete this one) to recompute the teacher")
    return None


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _load_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST
    if not path.is_file():
        raise CacheError(f"teacher cache {directory} has no {MANIFEST}; it is not a teacher cache (or was never "
                         "started): point the cache to a directory written by xtalign distill")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        key = CacheKey.from_dict(manifest["key"])
        shards = [(str(s["file"]), [int(i) for i in s["batches"]]) for s in manifest["shards"]]
    except CacheError:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise CacheError(f"teacher cache {directory}: {MANIFEST} is garbled ({type(exc).__name__}: {exc}); "
                         "delete the directory and recompute the teacher") from None
    if manifest.get("format") != FORMAT_NAME or manifest.get("format_version") != FORMAT_VERSION:
        raise CacheError(f"teacher cache {directory}: format {manifest.get('format')!r} version "
                         f"{manifest.get('format_version')!r} is not {FORMAT_NAME!r} version {FORMAT_VERSION}; "
                         "recompute the teacher into a fresh directory")
    manifest["key"], manifest["shards_parsed"] = key, shards
    return manifest


def _check_key(directory: Path, stored: CacheKey, expected: CacheKey) -> None:
    message = _describe_mismatch(directory, stored, expected)
    if message:
        raise CacheMismatchError(message)


def _np_tensor(array: np.ndarray) -> Tensor:
    return torch.from_numpy(np.array(array, copy=True, order="C"))


def _batch_tensors(index: int, side: TeacherSide, out: TeacherTopK, sample_ids: np.ndarray | None) -> dict[str, Tensor]:
    """The named tensors one batch stores (cloned: safetensors refuses shared storage)."""
    tensors = {
        f"{index}.logits": out.logits.detach().cpu().contiguous().clone(),  # [B, Tt, K] bf16
        f"{index}.ids": out.ids.detach().cpu().contiguous().clone(),  # [B, Tt, K] int32
        f"{index}.logsumexp": out.logsumexp.detach().cpu().contiguous().clone(),  # [B, Tt] fp32
        f"{index}.teacher_ids": _np_tensor(side.ids),  # [B, Tt] int64
        f"{index}.teacher_lengths": _np_tensor(side.lengths),  # [B]
        f"{index}.teacher_targets": _np_tensor(side.targets),  # [B, Tt]
    }
    if out.target_logprob is not None:
        tensors[f"{index}.target_logprob"] = out.target_logprob.detach().cpu().contiguous().clone()  # [B, Tt]
    if side.student_chunk is not None and side.teacher_chunk is not None:
        tensors[f"{index}.student_chunk"] = _np_tensor(side.student_chunk)  # [B, Ts]
        tensors[f"{index}.teacher_chunk"] = _np_tensor(side.teacher_chunk)  # [B, Tt]
    if sample_ids is not None:
        tensors[f"{index}.sample_ids"] = _np_tensor(sample_ids)  # [B]
    return tensors


class TeacherCacheWriter:
    """Appends one teacher's answers, batch by batch, to a cache directory (new, or one with the same key).

    Batches are kept in memory until `shard_batches` of them fill a shard; `close()` writes the rest.
    Use it as a context manager so the last partial shard is written on the way out.
    """

    def __init__(self, directory: Path, key: CacheKey, *, shard_batches: int = 16) -> None:
        if shard_batches < 1:
            raise ValueError(f"shard_batches must be >= 1; got {shard_batches}")
        self.directory, self.key, self.shard_batches = Path(directory), key, shard_batches
        self._shards: list[dict[str, Any]] = []
        self._pending: list[tuple[int, dict[str, Tensor], dict[str, Any]]] = []
        self._order: list[int] = []
        self._closed = False
        if (self.directory / MANIFEST).is_file():
            self._resume()
        elif self.directory.is_dir() and any(self.directory.iterdir()):
            raise CacheError(f"teacher cache directory {self.directory} is not empty and has no {MANIFEST}; "
                             "give an empty or new directory for the cache")
        else:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._write_manifest()
        self._known = set(self._order)

    def _resume(self) -> None:
        manifest = _load_manifest(self.directory)
        _check_key(self.directory, manifest["key"], self.key)
        self._shards = [dict(s) for s in manifest["shards"]]
        self._order = [int(i) for i in manifest.get("sample_order", [])]
        log.info("continuing teacher cache %s: %d batches in %d shards", self.directory, len(self._order),
                 len(self._shards))

    def __enter__(self) -> TeacherCacheWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def has(self, batch_index: int) -> bool:
        """True when `batch_index` is already in the cache (written or waiting for its shard)."""
        return batch_index in self._known

    def write(self, batch_index: int, side: TeacherSide, out: TeacherTopK, *,
              sample_ids: np.ndarray | None = None) -> None:
        """Store the teacher's answer for one batch; an index already present is skipped."""
        if self._closed:
            raise CacheError(f"teacher cache {self.directory} is closed; open a new TeacherCacheWriter to append")
        if batch_index in self._known:
            log.debug("teacher cache %s already holds batch %d; skipped", self.directory, batch_index)
            return
        self._check_answer(batch_index, side, out)
        info = {"vocab_size": int(out.vocab_size), "temperature": float(out.temperature)}
        self._pending.append((int(batch_index), _batch_tensors(batch_index, side, out, sample_ids), info))
        self._known.add(batch_index)
        if len(self._pending) >= self.shard_batches:
            self._flush()

    def _check_answer(self, batch_index: int, side: TeacherSide, out: TeacherTopK) -> None:
        if out.temperature != self.key.temperature:
            raise CacheError(f"batch {batch_index}: the teacher answered at temperature {out.temperature}, the cache "
                             f"key says {self.key.temperature}; build the key from the same teacher config")
        if out.k != self.key.k and not (out.k == out.vocab_size < self.key.k):
            raise CacheError(f"batch {batch_index}: the teacher kept k={out.k}, the cache key says k={self.key.k}; "
                             "build the key from the same teacher config")
        if tuple(out.logits.shape[:2]) != tuple(side.ids.shape):
            raise CacheError(f"batch {batch_index}: teacher output covers {tuple(out.logits.shape[:2])} positions but "
                             f"the side's ids are {tuple(side.ids.shape)}; pass the side the teacher ran on")

    def close(self) -> None:
        """Write the last (partial) shard and the manifest; later writes are refused."""
        if not self._closed:
            if self._pending:
                self._flush()
            self._closed = True

    def _flush(self) -> None:
        from safetensors.torch import save

        number = len(self._shards)
        name = f"shard-{number:05d}.safetensors"
        tensors: dict[str, Tensor] = {}
        for _, named, _info in self._pending:
            tensors.update(named)
        meta = {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION),
                "batches": json.dumps({str(i): info for i, _, info in self._pending})}
        data = save(tensors, metadata=meta)
        _atomic_write(self.directory / name, data)
        indices = [i for i, _, _ in self._pending]
        self._shards.append({"file": name, "batches": indices, "bytes": len(data),
                             "sha256": hashlib.sha256(data).hexdigest()})
        self._order.extend(indices)
        self._pending = []
        self._write_manifest()
        log.debug("teacher cache %s: wrote %s (%d batches, %d bytes)", self.directory, name, len(indices), len(data))

    def _write_manifest(self) -> None:
        from xtalign import __version__

        manifest = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "xtalign_version": __version__,
                    "key": self.key.to_dict(), "shards": self._shards, "sample_order": self._order}
        _atomic_write(self.directory / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode("utf-8"))


class TeacherCacheReader:
    """Reads a teacher cache made for exactly this run's `CacheKey` (refused otherwise, naming the field)."""

    def __init__(self, directory: Path, expected: CacheKey) -> None:
        self.directory = Path(directory)
        manifest = _load_manifest(self.directory)
        _check_key(self.directory, manifest["key"], expected)
        self.key: CacheKey = manifest["key"]
        self._shards = manifest["shards"]
        self._where: dict[int, int] = {}
        for number, (_, indices) in enumerate(manifest["shards_parsed"]):
            for index in indices:
                self._where[index] = number
        self._order = [int(i) for i in manifest.get("sample_order", list(self._where))]

    def __len__(self) -> int:
        return len(self._where)

    def has(self, batch_index: int) -> bool:
        return batch_index in self._where

    def indices(self) -> list[int]:
        """The cached batch indices in the order they were written."""
        return list(self._order)

    def _shard_path(self, batch_index: int) -> Path:
        if batch_index not in self._where:
            raise CacheError(f"teacher cache {self.directory} has no batch {batch_index} (it holds {len(self)} "
                             "batches); run the teacher for it or extend the cache")
        shard = self._shards[self._where[batch_index]]
        path = self.directory / shard["file"]
        if not path.is_file() or ("bytes" in shard and path.stat().st_size != shard["bytes"]):
            raise CacheError(f"teacher cache {self.directory}: shard {shard['file']} is missing or truncated; "
                             "delete the directory and recompute the teacher")
        return path

    def _load(self, batch_index: int) -> tuple[dict[str, Tensor], dict[str, Any]]:
        from safetensors import SafetensorError, safe_open

        path = self._shard_path(batch_index)
        prefix = f"{batch_index}."
        try:
            with safe_open(str(path), framework="pt") as f:
                info = json.loads((f.metadata() or {})["batches"])[str(batch_index)]
                names = [n for n in f.keys() if n.startswith(prefix)]
                tensors = {n[len(prefix):]: f.get_tensor(n) for n in names}
        except (OSError, SafetensorError, KeyError, ValueError) as exc:
            raise CacheError(f"teacher cache {self.directory}: shard {path.name} is unreadable ({exc}); "
                             "delete the directory and recompute the teacher") from None
        return tensors, info

    def read(self, batch_index: int, side: TeacherSide) -> TeacherTopK:
        """The teacher's answer for `batch_index`, bitwise as written, after checking `side` is the cached batch."""
        tensors, info = self._load(batch_index)
        self._check_side(batch_index, side, tensors)
        return TeacherTopK(logits=tensors["logits"], ids=tensors["ids"], logsumexp=tensors["logsumexp"],
                           vocab_size=int(info["vocab_size"]), temperature=float(info["temperature"]),
                           target_logprob=tensors.get("target_logprob"))

    def _check_side(self, batch_index: int, side: TeacherSide, tensors: dict[str, Tensor]) -> None:
        checks = [("teacher_ids", side.ids), ("teacher_lengths", side.lengths)]
        if side.student_chunk is not None and "student_chunk" in tensors:
            checks += [("student_chunk", side.student_chunk), ("teacher_chunk", side.teacher_chunk)]
        for name, given in checks:
            stored = tensors[name].numpy()
            if given is None or stored.shape != np.shape(given) or not np.array_equal(stored, given):
                raise CacheMismatchError(
                    f"teacher cache {self.directory}: batch {batch_index} differs from the cached one ({name} differ); "
                    "the data, its order or the tokenization changed: use a fresh cache directory")

    def side(self, batch_index: int) -> TeacherSide:
        """The `TeacherSide` the cached answer was computed on (ids, lengths, targets, alignment chunks)."""
        tensors, _ = self._load(batch_index)
        arrays = {n: tensors[n].numpy() for n in _SIDE_ARRAYS if n in tensors}
        return TeacherSide(ids=arrays["teacher_ids"], lengths=arrays["teacher_lengths"],
                           targets=arrays["teacher_targets"], student_chunk=arrays.get("student_chunk"),
                           teacher_chunk=arrays.get("teacher_chunk"))

    def sample_ids(self, batch_index: int) -> np.ndarray | None:
        """The sample ids stored with `batch_index` (None when the writer was not given them)."""
        tensors, _ = self._load(batch_index)
        return tensors["sample_ids"].numpy() if "sample_ids" in tensors else None

    def verify(self) -> None:
        """Check every shard's size and sha256 against the manifest (reads the whole cache)."""
        for shard in self._shards:
            path = self.directory / shard["file"]
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
            if digest != shard.get("sha256", digest):
                raise CacheError(f"teacher cache {self.directory}: shard {shard['file']} does not match its sha256 in "
                                 f"{MANIFEST}; delete the directory and recompute the teacher")
            if digest is None:
                raise CacheError(f"teacher cache {self.directory}: shard {shard['file']} is missing; "
                                 "delete the directory and recompute the teacher")
