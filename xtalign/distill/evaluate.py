"""Held-out bits per byte for the student and for each teacher (tokenizer-independent, so they compare).

A teacher is evaluated once per data and model: the result is kept beside its teacher cache, so a run
that reads a complete cache never loads the teacher model just to evaluate it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xtalign.distill.batch import IGNORE, Batch

if TYPE_CHECKING:
    from xtalign.distill.sources import TeacherSource
    from xtalign.zoo.tokenizer import Tokenizer

__all__ = ["nll_from_target_logprob", "student_bpb", "teacher_bpb", "bits_per_byte"]

log = logging.getLogger(__name__)


def bits_per_byte(texts: Sequence[str], ids: np.ndarray, lengths: np.ndarray, nll: np.ndarray,
                  tok: Tokenizer, acc: Any = None) -> Any:
    """Add B rows to a `BitsPerByte` accumulator: ``ids``/``nll [B, T]`` (nll indexed by predicted token)."""
    from xtalign.align import token_ends
    from xtalign.distill.bpb import BitsPerByte

    acc = acc if acc is not None else BitsPerByte()
    rows = [ids[b, : int(lengths[b])] for b in range(ids.shape[0])]
    ends = token_ends(rows, tok)
    for b, text in enumerate(texts):
        n = int(lengths[b])
        acc.add(text, ends[b], np.asarray(nll[b, :n], dtype=np.float64))
    return acc


def nll_from_target_logprob(target_logprob: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """``[B, T]`` target log-probs at position p (for token p+1) → nats indexed by the predicted token."""
    out = np.full(target_logprob.shape, np.nan, dtype=np.float64)
    ok = targets[:, :-1] != IGNORE
    out[:, 1:] = np.where(ok, -target_logprob[:, :-1].astype(np.float64), np.nan)
    return out


def student_bpb(student: Any, tok: Tokenizer, batches: Sequence[Batch]) -> dict[str, Any]:
    acc = None
    for batch in batches:
        nll = student.token_nll(batch)
        acc = bits_per_byte(batch.texts, batch.student_ids, batch.student_lengths, nll, tok, acc)
    return acc.result() if acc is not None else {}


def _eval_key(src: TeacherSource) -> str | None:
    reader = src.reader or src.writer
    key = getattr(reader, "key", None)
    if key is None:
        return None
    fields = {k: v for k, v in vars(key).items() if k not in ("k", "temperature")}
    return json.dumps(fields, sort_keys=True, default=str)


def teacher_bpb(src: TeacherSource, tok: Tokenizer, batches: Sequence[Batch]) -> dict[str, Any] | None:
    """A teacher's held-out bits per byte at T = 1 (kept beside its cache when it has one)."""
    cache: Path | None = getattr(src, "cache_path", None)
    key = _eval_key(src)
    stored = cache / "heldout_eval.json" if cache is not None else None
    if stored is not None and stored.is_file():
        data = json.loads(stored.read_text())
        if data.get("key") == key:
            return {**data["result"], "from_cache": True}
    acc = None
    for batch in batches:
        side = src.side(batch)
        out = src.likelihood(side)
        nll = nll_from_target_logprob(out.target_logprob.float().numpy(), side.targets)
        acc = bits_per_byte(batch.texts, side.ids, side.lengths, nll, tok, acc)
    if acc is None:
        return None
    result = acc.result()
    if stored is not None:
        from xtalign.cli.common import write_atomic

        stored.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(stored, json.dumps({"key": key, "result": result}, indent=2) + "\n")
    return result


def windows(texts: Sequence[str], builder: Any) -> list[Batch]:
    """Each text cut into consecutive windows that fit the builder's `seq_len`, so every byte is scored
    (a window ends at a token boundary; the next one starts there with a fresh bos)."""
    out = []
    for text in texts:
        rest = text
        while rest:
            batch = builder.build(len(out), np.array([len(out)], dtype=np.int64), [rest])
            n = int(batch.n_bytes[0])
            if n == 0:
                break
            out.append(batch)
            rest = rest.encode("utf-8")[n:].decode("utf-8")
    return out


def model_bits_per_byte(model: Any, tok: Tokenizer, texts: Sequence[str], *, seq_len: int, add_bos: bool = True,
                        device: str = "cpu") -> dict[str, Any]:
    """Bits per byte of any causal LM the engine can load on `texts` (all bytes, in windows of `seq_len`)."""
    from xtalign.distill.config import CombineConfig, OptimConfig, ScheduleConfig
    from xtalign.distill.data import BatchBuilder
    from xtalign.distill.student import StudentWorker

    builder = BatchBuilder(tok, [], seq_len=seq_len, add_bos=add_bos)
    worker = StudentWorker(model, plans=[], optim=OptimConfig(), schedule=ScheduleConfig(), combine=CombineConfig(),
                           total_steps=1, device=device)
    result = student_bpb(worker, tok, windows(texts, builder))
    result["text_bytes"] = sum(len(t.encode("utf-8")) for t in texts)
    return result
