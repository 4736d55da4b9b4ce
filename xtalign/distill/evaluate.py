"""Held-out bits per byte for the student and for each teacher (tokenizer-independent, so they compare),
overall, by character class and by the samples' source.

A teacher is evaluated once per data and model: the result is kept beside its teacher cache, so a run
that reads a complete cache never loads the teacher model just to evaluate it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from xtalign.align import token_ends
from xtalign.distill.bpb import BitsPerByte
from xtalign.distill.config import CombineConfig, OptimConfig, ScheduleConfig
from xtalign.distill.data.batch import IGNORE, Batch
from xtalign.distill.data.builder import BatchBuilder
from xtalign.distill.protocols import Student, TeacherSource
from xtalign.io import write_atomic
from xtalign.zoo.tokenizer import Tokenizer

__all__ = ["ByteScore", "model_bits_per_byte", "nll_from_target_logprob", "student_bpb", "teacher_bpb"]



class ByteScore:
    """Bits per byte overall and per source (each a `BitsPerByte`)."""

    def __init__(self) -> None:
        self.total = BitsPerByte()
        self.sources: dict[str, BitsPerByte] = {}

    def add_rows(self, batch: Batch, texts: Sequence[str], ids: np.ndarray, lengths: np.ndarray, nll: np.ndarray,
                 tok: Tokenizer, ends: np.ndarray | None = None, scored: np.ndarray | None = None) -> None:
        """B rows: ``ids``/``nll [B, T]`` (nll indexed by the predicted token). Chat data gives each token's byte
        end in its rendering (`ends`) and the tokens to score (`scored`); text data's ends follow from `tok`."""
        if ends is None:
            row_ends = token_ends([ids[b, : int(lengths[b])] for b in range(ids.shape[0])], tok)
        else:
            row_ends = [ends[b, : int(lengths[b])] for b in range(ids.shape[0])]
        if scored is not None:
            nll = np.where(scored, nll, np.nan)
        for b, text in enumerate(texts):
            n = int(lengths[b])
            row = np.asarray(nll[b, :n], dtype=np.float64)
            self.total.add(text, row_ends[b], row)
            if batch.sources:
                self.sources.setdefault(batch.sources[b], BitsPerByte()).add(text, row_ends[b], row)

    def result(self) -> dict[str, Any]:
        out = self.total.result()
        if self.sources:
            out["by_source"] = {name: acc.result() for name, acc in sorted(self.sources.items())}
        return out


def nll_from_target_logprob(target_logprob: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """``[B, T]`` target log-probs at position p (for token p+1) → nats indexed by the predicted token."""
    out = np.full(target_logprob.shape, np.nan, dtype=np.float64)
    ok = targets[:, :-1] != IGNORE
    out[:, 1:] = np.where(ok, -target_logprob[:, :-1].astype(np.float64), np.nan)
    return out


def student_bpb(student: Student, tok: Tokenizer, batches: Sequence[Batch]) -> dict[str, Any]:
    score = ByteScore()
    for batch in batches:
        score.add_rows(batch, batch.texts, batch.student_ids, batch.student_lengths, student.token_nll(batch), tok,
                       batch.student_ends, batch.student_scored)
    return score.result() if batches else {}


def _eval_key(src: TeacherSource) -> str | None:
    holder = getattr(src, "reader", None) or getattr(src, "writer", None)
    key = getattr(holder, "key", None)
    if key is None:
        return None
    fields = {k: v for k, v in vars(key).items() if k not in ("k", "temperature")}
    return json.dumps(fields, sort_keys=True, default=str)


def teacher_bpb(src: TeacherSource, tok: Tokenizer, batches: Sequence[Batch]) -> dict[str, Any] | None:
    """A teacher's held-out bits per byte at T = 1 (kept beside its cache when it has one)."""
    key = _eval_key(src)
    stored = src.cache_path / "heldout_eval.json" if src.cache_path is not None else None
    if stored is not None and stored.is_file():
        data = json.loads(stored.read_text())
        if data.get("key") == key:
            return {**data["result"], "from_cache": True}
    if not batches:
        return None
    score = ByteScore()
    for batch in batches:
        side = batch.teachers[src.index]
        nll = nll_from_target_logprob(src.likelihood(side), side.targets)
        score.add_rows(batch, side.texts or batch.texts, side.ids, side.lengths, nll, tok, side.ends, side.scored)
    result = score.result()
    if stored is not None:
        stored.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(stored, json.dumps({"key": key, "result": result}, indent=2) + "\n")
    return result


def windows(texts: Sequence[str], builder: BatchBuilder) -> list[Batch]:
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
    from xtalign.distill.student.worker import StudentWorker  # torch: only for this entry point

    builder = BatchBuilder(tok, [], seq_len=seq_len, add_bos=add_bos)
    worker = StudentWorker(model, plans=[], optim=OptimConfig(), schedule=ScheduleConfig(), combine=CombineConfig(),
                           total_steps=1, device=device)
    result = student_bpb(worker, tok, windows(texts, builder))
    result["text_bytes"] = sum(len(t.encode("utf-8")) for t in texts)
    return result
