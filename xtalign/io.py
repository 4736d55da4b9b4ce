"""Projection files: safetensors with string metadata (no pickle), scipy `.npz` export, NeMo RL `.pt` import.

A projection file holds three tensors — `indices` int32 [R, k], `weights` float32 [R, k] (empty slots:
index 0, weight 0) and `row_source` uint8 [R] (`xtalign.projection.RowSource`) — and the metadata
keys in `METADATA_KEYS`, all strings. Indices are tokenizer ids of the teacher (equal to its
embedding-row ids); rows are tokenizer ids of the student. Where a model has more embedding rows than
its tokenizer has ids, the row (student) or column (teacher) space covers the model rows.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from xtalign.projection import Projection, RowSource

__all__ = [
    "FORMAT_NAME", "FORMAT_VERSION", "METADATA_KEYS", "ProjectionFormatError", "ProjectionMismatchError",
    "check_fingerprints", "dump_json", "export_npz", "import_nemo_pt", "load_projection", "projection_to_bytes",
    "read_metadata", "save_projection", "write_atomic",
]

FORMAT_NAME = "xtalign-projection"
FORMAT_VERSION = "1"
INDEX_SPACE = "tokenizer ids (= embedding rows); rows past a tokenizer's ids are empty"
METADATA_KEYS = (
    "format", "format_version", "xtalign_version", "orientation", "index_space",
    "student_name", "teacher_name", "student_vocab_size", "teacher_vocab_size", "rows", "teacher_cols",
    "student_model_rows", "teacher_model_rows",  # present only where the model's rows differ from the vocab
    "student_fingerprint", "teacher_fingerprint", "top_k", "config", "stats",
)


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write via a temporary sibling and rename, so a failure never leaves a half-written output."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    if isinstance(data, str):
        tmp.write_text(data, encoding="utf-8")
    else:
        tmp.write_bytes(data)
    tmp.replace(path)


def dump_json(path: Path, obj: Any) -> None:
    """`obj` as indented JSON, written atomically."""
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


class ProjectionFormatError(ValueError):
    """The file is not an xtalign projection of a version this code reads."""


class ProjectionMismatchError(ValueError):
    """The projection was built for other tokenizers than the ones given."""


def _metadata(proj: Projection) -> dict[str, str]:
    from xtalign import __version__

    meta = {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "xtalign_version": __version__,
        "orientation": "rows = student ids, columns = teacher ids; q_teacher = p_student @ W",
        "index_space": INDEX_SPACE,
        "student_name": proj.student_name, "teacher_name": proj.teacher_name,
        "student_vocab_size": str(proj.student_vocab_size), "teacher_vocab_size": str(proj.teacher_vocab_size),
        "rows": str(proj.shape[0]), "teacher_cols": str(proj.teacher_cols),
        "student_fingerprint": proj.student_fingerprint, "teacher_fingerprint": proj.teacher_fingerprint,
        "top_k": str(proj.top_k), "config": json.dumps(proj.config, sort_keys=True),
        "stats": json.dumps(proj.stats, sort_keys=True),
    }
    for side, rows in (("student", proj.student_model_rows), ("teacher", proj.teacher_model_rows)):
        if rows is not None:
            meta[f"{side}_model_rows"] = str(rows)
    return meta


def projection_to_bytes(proj: Projection) -> bytes:
    """The safetensors file content of `proj` (deterministic: no dates in it)."""
    from safetensors.numpy import save

    tensors = {"indices": np.ascontiguousarray(proj.indices, dtype=np.int32),
               "weights": np.ascontiguousarray(proj.weights, dtype=np.float32),
               "row_source": np.ascontiguousarray(proj.row_source, dtype=np.uint8)}
    return save(tensors, metadata=_metadata(proj))


def save_projection(proj: Projection, path: str | os.PathLike[str]) -> Path:
    """Write `proj` to `path` atomically (temporary file + rename); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(projection_to_bytes(proj))
    tmp.replace(path)
    return path


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The string metadata of a projection file (header only; the tensors are not read)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
    except (OSError, SafetensorError) as exc:
        raise ProjectionFormatError(f"{path}: not a readable safetensors file ({exc})") from None
    if meta.get("format") != FORMAT_NAME:
        raise ProjectionFormatError(
            f"{path}: format {meta.get('format')!r} is not {FORMAT_NAME!r}; give a file written by "
            "`xtalign build-projection` (NeMo .pt files: xtalign.io.import_nemo_pt)")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ProjectionFormatError(
            f"{path}: {FORMAT_NAME} version {meta.get('format_version')!r} is not supported (this xtalign reads "
            f"version {FORMAT_VERSION}); rebuild it with `xtalign build-projection`")
    return meta


def _fingerprint_of(obj: Any) -> tuple[str, str]:
    vocab = getattr(obj, "vocab", obj)  # a Tokenizer or a Vocab
    return vocab.name, vocab.fingerprint


def check_fingerprints(proj: Projection, *, student: Any = None, teacher: Any = None) -> None:
    """Refuse tokenizers (or Vocabs) whose vocabulary differs from the one the projection was built for."""
    for side, obj, name, expected in (("student", student, proj.student_name, proj.student_fingerprint),
                                      ("teacher", teacher, proj.teacher_name, proj.teacher_fingerprint)):
        if obj is None:
            continue
        got_name, got = _fingerprint_of(obj)
        if got != expected:
            raise ProjectionMismatchError(
                f"{side} vocabulary mismatch: the projection expects {name} (sha256 {expected[:12]}…) but got "
                f"{got_name} (sha256 {got[:12]}…); pass the {side} tokenizer it was built for, or rebuild with "
                f"`xtalign build-projection`")


def load_projection(path: str | os.PathLike[str], *, student: Any = None, teacher: Any = None) -> Projection:
    """Read a projection file; with `student`/`teacher` tokenizers given, refuse a fingerprint mismatch."""
    from safetensors.numpy import load_file

    meta = read_metadata(path)
    t = load_file(str(path))
    if not {"indices", "weights", "row_source"} <= set(t):
        raise ProjectionFormatError(f"{path}: tensors {sorted(t)} lack indices/weights/row_source; rebuild the file")

    def opt(key: str) -> int | None:
        return int(meta[key]) if key in meta else None

    proj = Projection(
        indices=t["indices"], weights=t["weights"], row_source=t["row_source"],
        student_name=meta["student_name"], teacher_name=meta["teacher_name"],
        student_vocab_size=int(meta["student_vocab_size"]), teacher_vocab_size=int(meta["teacher_vocab_size"]),
        student_fingerprint=meta["student_fingerprint"], teacher_fingerprint=meta["teacher_fingerprint"],
        teacher_cols=int(meta["teacher_cols"]), student_model_rows=opt("student_model_rows"),
        teacher_model_rows=opt("teacher_model_rows"), config=json.loads(meta["config"]),
        stats=json.loads(meta["stats"]))
    check_fingerprints(proj, student=student, teacher=teacher)
    return proj


def export_npz(proj: Projection, path: str | os.PathLike[str]) -> Path:
    """W as a scipy CSR `.npz` [R, teacher_cols] float32 (`scipy.sparse.load_npz` reads it without pickle)."""
    import scipy.sparse as sp

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sp.save_npz(path, proj.to_scipy(), compressed=True)
    return path


def import_nemo_pt(path: str | os.PathLike[str], *, student: Any = None, teacher: Any = None,
                   student_name: str = "unknown", teacher_name: str = "unknown",
                   teacher_vocab_size: int | None = None, renormalize: bool = True) -> Projection:
    """Read NeMo RL's top-k projection (`{"indices": [V_s, k] int, "likelihoods": [V_s, k] float}`, −1 = empty).

    Loaded with `torch.load(weights_only=True)` only (no arbitrary unpickling). Slots with a negative
    index or a non-positive likelihood are empty. Given `student`/`teacher` tokenizers, their names,
    sizes and fingerprints are recorded (no check is possible: NeMo files carry no fingerprint). A row
    with one entry of weight 1 is marked exact (NeMo's exact matches are one-hot); other non-empty rows
    are `IMPORTED`. `renormalize` makes every non-empty row sum to 1.
    """
    import torch  # only here: the core of xtalign never imports torch

    data = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or not {"indices", "likelihoods"} <= set(data):
        raise ProjectionFormatError(f"{path}: expected a dict with 'indices' and 'likelihoods' (NeMo RL top-k map)")
    idx = data["indices"].detach().cpu().numpy().astype(np.int64)
    w = data["likelihoods"].detach().cpu().to(torch.float64).numpy()
    if idx.ndim != 2 or idx.shape != w.shape:
        raise ProjectionFormatError(f"{path}: indices {idx.shape} and likelihoods {w.shape} must both be [V_s, k]")
    empty = (idx < 0) | ~(w > 0)
    idx, w = np.where(empty, 0, idx), np.where(empty, 0.0, w)
    order = np.lexsort((idx, -w), axis=1) if w.size else np.zeros_like(idx)  # largest first, as built ones
    idx, w = np.take_along_axis(idx, order, 1), np.take_along_axis(w, order, 1)
    if renormalize:
        total = w.sum(axis=1, keepdims=True)
        w = np.divide(w, total, out=np.zeros_like(w), where=total > 0)
    n = (w > 0).sum(axis=1)
    source = np.where(n == 0, RowSource.EMPTY, RowSource.IMPORTED).astype(np.uint8)
    source[(n == 1) & np.isclose(w[:, 0], 1.0)] = RowSource.EXACT
    s_name, s_fp = _fingerprint_of(student) if student is not None else (student_name, "")
    t_name, t_fp = _fingerprint_of(teacher) if teacher is not None else (teacher_name, "")
    t_size = getattr(teacher, "size", None) or teacher_vocab_size or int(idx.max(initial=-1)) + 1
    t_rows = getattr(teacher, "model_rows", None)
    return Projection(
        indices=idx.astype(np.int32), weights=w.astype(np.float32), row_source=source,
        student_name=s_name, teacher_name=t_name, student_vocab_size=getattr(student, "size", None) or idx.shape[0],
        teacher_vocab_size=t_size, student_fingerprint=s_fp, teacher_fingerprint=t_fp,
        teacher_cols=max(t_size, t_rows or 0, int(idx.max(initial=-1)) + 1),
        student_model_rows=getattr(student, "model_rows", None), teacher_model_rows=t_rows,
        config={"imported_from": "nemo-rl", "path": str(path), "renormalize": renormalize},
        stats=_import_stats(source, w, student))


def _normal_rows(student: Any, rows: int) -> np.ndarray:
    """``[rows]`` True where the row is a normal student token (all rows when the tokenizer is unknown)."""
    if student is None:
        return np.ones(rows, dtype=bool)
    from xtalign.vocab import TokenKind

    kinds = np.asarray(student.vocab.kinds)
    out = np.zeros(rows, dtype=bool)
    n = min(rows, kinds.shape[0])
    out[:n] = kinds[:n] == TokenKind.NORMAL
    return out


def _import_stats(source: np.ndarray, weights: np.ndarray, student: Any = None) -> dict[str, Any]:
    """The build's stats, as far as an imported file allows: exact shares are of the student's normal tokens
    when its tokenizer is given (of all rows otherwise)."""
    entries = (weights > 0).sum(axis=1)
    empty = entries == 0
    normal = _normal_rows(student, len(source))
    exact = int(((source == RowSource.EXACT) & normal).sum())
    return {
        "rows": len(source), "entries": int(entries.sum()), "normal_rows": int(normal.sum()),
        "mean_entries_per_row": round(float(entries[~empty].mean()) if (~empty).any() else 0.0, 4),
        "exact_share": round(exact / max(int(normal.sum()), 1), 6), "exact_rows": exact,
        "rows_by_source": {s.name.lower(): int((source == s).sum()) for s in RowSource},
        "empty_rows": int(empty.sum()),
    }
