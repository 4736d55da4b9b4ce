"""Teacher cache: one expensive teacher pass serves many student runs, of ANY batch geometry.

A cache directory holds safetensors shards and `manifest.json`: the `CacheKey` it was made for, the codec,
and per shard the SAMPLE ids it holds. Answers are stored per sample (one row of a batch, its positions
``[0, length)``), so a run with another `batch_size`, `grad_accum`, rank count or data order over the same
samples reads them; what changes the teacher's answer (teacher weights, tokenizers, data, `seq_len`, k, T,
chat rendering) is in the key, and a mismatch is refused in one line naming the field. With each answer the
teacher's token ids of the sample are kept, so a run whose text or tokenization differs is refused too.
Shards and the manifest are written atomically (temporary name + rename); the manifest names only complete
shards, so a killed run leaves a readable cache of what it finished. How answers are stored is the codec's
business (`teacher.rows`): `exact` keeps the engine's tensors bit for bit (6k + 8 bytes per position);
`compact` (`teacher.codec`) stores quantised log-probs, compressed (about 115 bytes per position at k = 64 on
the pinned corpus with Gemma-3-270M), and a run that fills a compact cache trains on the decoded answers.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from xtalign.distill.data.batch import TeacherSide
from xtalign.distill.errors import CacheError, CacheMismatchError
from xtalign.distill.teacher.rows import CodecSpec, make_codec
from xtalign.losses import TeacherTopK

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "CacheError", "CacheKey", "CacheMismatchError", "TeacherCacheReader",
           "TeacherCacheWriter"]

log = logging.getLogger(__name__)

FORMAT_NAME = "xtalign-teacher-cache"
FORMAT_VERSION = 2
MANIFEST = "manifest.json"


@dataclass(frozen=True, kw_only=True)
class CacheKey:
    """Everything a cached teacher answer depends on; a reader refuses a cache made with any other value.

    teacher: the teacher's label; teacher_model / teacher_tokenizer / student_tokenizer: fingerprints
    (model file hash or id, vocab sha256s); data_hash: the training data and packing; seq_len and add_bos:
    how a sample is cut and started; data_format / chat_rendering / train_on: chat data's rendering.
    """

    teacher: str
    teacher_model: str
    teacher_tokenizer: str
    student_tokenizer: str
    k: int
    temperature: float
    data_hash: str
    seq_len: int
    add_bos: bool
    data_format: str = "text"
    chat_rendering: str = ""
    train_on: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CacheKey:
        required = [f.name for f in fields(cls) if f.default is MISSING]
        missing = [n for n in required if n not in data]
        if missing:
            raise CacheError(f"cache key lacks {', '.join(missing)}; the cache was written by another xtalign version")
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


def _show(value: Any) -> str:
    text = str(value)
    return text[:12] + "…" if isinstance(value, str) and len(text) > 40 else text


def _describe_mismatch(directory: Path, stored: CacheKey, expected: CacheKey) -> str | None:
    """One line naming the first field where the stored key differs from this run's, else None (the data's
    kind first: a chat cache for a text run differs in its data hash too, but that says less)."""
    for f in sorted(fields(CacheKey), key=lambda f: f.name != "data_format"):
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


def _rebuild_hint(directory: Path) -> str:
    return (f"rebuild it: `xtalign cache-teachers --config CONFIG --out NEWDIR` (or delete {directory} and run "
            "again)")


def _load_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST
    if not path.is_file():
        raise CacheError(f"teacher cache {directory} has no {MANIFEST}; it is not a teacher cache (or was never "
                         "started): point the cache to a directory written by xtalign distill")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise CacheError(f"teacher cache {directory}: {MANIFEST} is garbled ({exc}); {_rebuild_hint(directory)}") \
            from None
    if manifest.get("format") != FORMAT_NAME or manifest.get("format_version") != FORMAT_VERSION:
        raise CacheError(f"teacher cache {directory} is format {manifest.get('format')!r} version "
                         f"{manifest.get('format_version')!r} (version 1 kept answers per batch); this xtalign "
                         f"reads version {FORMAT_VERSION}, per sample: {_rebuild_hint(directory)}")
    try:
        manifest["key"] = CacheKey.from_dict(manifest["key"])
        manifest["codec"] = CodecSpec(**manifest["codec"])
        manifest["shards_parsed"] = [(str(s["file"]), [int(i) for i in s["samples"]]) for s in manifest["shards"]]
    except CacheError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise CacheError(f"teacher cache {directory}: {MANIFEST} is garbled ({type(exc).__name__}: {exc}); "
                         f"{_rebuild_hint(directory)}") from None
    return manifest


def _check_key(directory: Path, stored: CacheKey, expected: CacheKey) -> None:
    message = _describe_mismatch(directory, stored, expected)
    if message:
        raise CacheMismatchError(message)


def _row_tensors(sample: int, side: TeacherSide, row: int, encoded: dict[str, Tensor]) -> dict[str, Tensor]:
    """The named tensors one sample stores: its answer (as the codec wrote it) and its teacher ids."""
    n = int(side.lengths[row])
    named = {f"{sample}.{k}": v for k, v in encoded.items()}
    named[f"{sample}.teacher_ids"] = torch.from_numpy(np.ascontiguousarray(side.ids[row, :n], dtype=np.int32))
    return named


class TeacherCacheWriter:
    """Appends one teacher's answers, sample by sample, to a cache directory (new, or one with the same key).

    Samples are kept in memory until `shard_samples` of them fill a shard; `close()` writes the rest. Use
    it as a context manager so the last partial shard is written on the way out.
    """

    def __init__(self, directory: Path, key: CacheKey, *, codec: CodecSpec | None = None,
                 shard_samples: int = 64) -> None:
        if shard_samples < 1:
            raise ValueError(f"shard_samples must be >= 1; got {shard_samples}")
        self.directory, self.key, self.shard_samples = Path(directory), key, shard_samples
        self.spec = codec or CodecSpec()
        self._shards: list[dict[str, Any]] = []
        self._pending: list[tuple[int, dict[str, Tensor]]] = []
        self._closed = False
        if (self.directory / MANIFEST).is_file():
            self._resume()
        elif self.directory.is_dir() and any(self.directory.iterdir()):
            raise CacheError(f"teacher cache directory {self.directory} is not empty and has no {MANIFEST}; "
                             "give an empty or new directory for the cache")
        else:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._write_manifest()
        self.codec = make_codec(self.spec)
        self._known = {i for s in self._shards for i in s["samples"]}

    def _resume(self) -> None:
        manifest = _load_manifest(self.directory)
        _check_key(self.directory, manifest["key"], self.key)
        if manifest["codec"] != self.spec:
            raise CacheMismatchError(f"teacher cache {self.directory} stores answers as {manifest['codec']}, this run "
                                     f"as {self.spec}; use another cache directory")
        self._shards = [dict(s) for s in manifest["shards"]]
        log.info("continuing teacher cache %s: %d samples", self.directory,
                 sum(len(s["samples"]) for s in self._shards))

    def __enter__(self) -> TeacherCacheWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def has(self, sample_ids: np.ndarray) -> bool:
        """True when every sample of `sample_ids` is already in the cache (written or waiting for its shard)."""
        return all(int(i) in self._known for i in sample_ids)

    def write(self, batch_index: int, side: TeacherSide, out: TeacherTopK, *, sample_ids: np.ndarray) -> TeacherTopK:
        """Store the teacher's answer for each row of one batch (samples already present are skipped) and return
        the answer as a reader will decode it: `out` itself for a lossless codec."""
        if self._closed:
            raise CacheError(f"teacher cache {self.directory} is closed; open a new TeacherCacheWriter to append")
        self._check_answer(batch_index, side, out)
        samples = [int(i) for i in sample_ids]
        # a lossless codec returns `out` itself, so a row already stored need not be encoded; a lossy one
        # decodes every row of the batch
        encoded = [self.codec.encode(out, row, int(n)) if self.codec.lossy or samples[row] not in self._known
                   else None for row, n in enumerate(side.lengths)]
        for row, sample in enumerate(samples):
            if sample in self._known:
                continue
            self._pending.append((sample, _row_tensors(sample, side, row, encoded[row])))
            self._known.add(sample)
        if len(self._pending) >= self.shard_samples:
            self._flush()
        if not self.codec.lossy:
            return out
        return self.codec.decode(encoded, lengths=[int(x) for x in side.lengths], width=int(side.ids.shape[1]),
                                 vocab_size=int(out.vocab_size), temperature=float(out.temperature))

    @property
    def lossy(self) -> bool:
        return self.codec.lossy

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
        self._meta = {"vocab_size": int(out.vocab_size), "temperature": float(out.temperature), "k": int(out.k)}

    def close(self) -> None:
        """Write the last (partial) shard and the manifest; later writes are refused."""
        if not self._closed:
            if self._pending:
                self._flush()
            self._closed = True

    def _flush(self) -> None:
        from safetensors.torch import save

        name = f"shard-{len(self._shards):05d}.safetensors"
        tensors: dict[str, Tensor] = {}
        for _, named in self._pending:
            tensors.update(named)
        data = save(tensors, metadata={"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION),
                                       "answer": json.dumps(self._meta)})
        _atomic_write(self.directory / name, data)
        samples = [s for s, _ in self._pending]
        self._shards.append({"file": name, "samples": samples, "bytes": len(data),
                             "sha256": hashlib.sha256(data).hexdigest()})
        self._pending = []
        self._write_manifest()

    def _write_manifest(self) -> None:
        from xtalign import __version__

        manifest = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "xtalign_version": __version__,
                    "key": self.key.to_dict(), "codec": asdict(self.spec), "shards": self._shards}
        _atomic_write(self.directory / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode("utf-8"))


class TeacherCacheReader:
    """Reads a teacher cache made for exactly this run's `CacheKey` (refused otherwise, naming the field)."""

    def __init__(self, directory: Path, expected: CacheKey) -> None:
        self.directory = Path(directory)
        manifest = _load_manifest(self.directory)
        _check_key(self.directory, manifest["key"], expected)
        self.key: CacheKey = manifest["key"]
        self.spec: CodecSpec = manifest["codec"]
        self.codec = make_codec(self.spec)
        self._shards = manifest["shards"]
        self._where: dict[int, int] = {}
        for number, (_, samples) in enumerate(manifest["shards_parsed"]):
            for sample in samples:
                self._where[sample] = number

    def __len__(self) -> int:
        return len(self._where)

    def has(self, sample_ids: np.ndarray) -> bool:
        return all(int(i) in self._where for i in sample_ids)

    def _shard_path(self, number: int) -> Path:
        shard = self._shards[number]
        path = self.directory / shard["file"]
        if not path.is_file() or ("bytes" in shard and path.stat().st_size != shard["bytes"]):
            raise CacheError(f"teacher cache {self.directory}: shard {shard['file']} is missing or truncated; "
                             f"{_rebuild_hint(self.directory)}")
        return path

    def _load(self, samples: list[int]) -> tuple[dict[int, dict[str, Tensor]], dict[str, Any]]:
        """Each sample's stored tensors (one open per shard), and the answers' metadata."""
        from safetensors import SafetensorError, safe_open

        by_shard: dict[int, list[int]] = defaultdict(list)
        for s in samples:
            if s not in self._where:
                raise CacheError(f"teacher cache {self.directory} has no sample {s} ({len(self)} cached); run the "
                                 "teacher for it or extend the cache")
            by_shard[self._where[s]].append(s)
        out: dict[int, dict[str, Tensor]] = {}
        meta: dict[str, Any] = {}
        for number, wanted in by_shard.items():
            path = self._shard_path(number)
            try:
                with safe_open(str(path), framework="pt") as f:
                    meta = json.loads((f.metadata() or {})["answer"])
                    names = set(f.keys())
                    for s in wanted:
                        prefix = f"{s}."
                        out[s] = {n[len(prefix):]: f.get_tensor(n) for n in names if n.startswith(prefix)}
            except (OSError, SafetensorError, KeyError, ValueError) as exc:
                raise CacheError(f"teacher cache {self.directory}: shard {path.name} is unreadable ({exc}); "
                                 f"{_rebuild_hint(self.directory)}") from None
        return out, meta

    def read(self, sample_ids: np.ndarray, side: TeacherSide) -> TeacherTopK:
        """The teacher's answer for a batch of cached samples, rows in `sample_ids` order, padded to the side's
        width, after checking each sample's teacher ids are the ones `side` holds."""
        samples = [int(i) for i in sample_ids]
        stored, meta = self._load(samples)
        for row, s in enumerate(samples):
            have = stored[s]["teacher_ids"].numpy()
            n = int(side.lengths[row])
            if have.shape[0] != n or not np.array_equal(have, side.ids[row, :n]):
                raise CacheMismatchError(
                    f"teacher cache {self.directory}: sample {s} differs from the cached one (teacher ids differ); "
                    "the data, its cut or the tokenization changed: use a fresh cache directory")
        rows = [{k: v for k, v in stored[s].items() if k != "teacher_ids"} for s in samples]
        return self.codec.decode(rows, lengths=[int(x) for x in side.lengths], width=int(side.ids.shape[1]),
                                 vocab_size=int(meta["vocab_size"]), temperature=float(meta["temperature"]))

    def bytes_per_position(self) -> float:
        """Stored bytes (shard files, the teacher ids kept for checking included) per cached position."""
        total = sum(int(s.get("bytes", 0)) for s in self._shards)
        stored, _ = self._load(list(self._where))
        positions = sum(int(t["teacher_ids"].shape[0]) for t in stored.values())
        return total / positions if positions else 0.0

    def verify(self) -> None:
        """Check every shard's size and sha256 against the manifest (reads the whole cache)."""
        for shard in self._shards:
            path = self.directory / shard["file"]
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
            if digest is None or digest != shard.get("sha256", digest):
                raise CacheError(f"teacher cache {self.directory}: shard {shard['file']} does not match its sha256 in "
                                 f"{MANIFEST}; {_rebuild_hint(self.directory)}")
