"""How the teacher cache stores one sample's answer: the codec interface, and the exact codec.

A `RowCodec` turns row `row` of a batch's `TeacherTopK` (its first `length` positions) into named tensors,
and rows of such tensors back into a batch `TeacherTopK` padded to a width. `exact` stores the engine's
tensors as they are (bf16 top-k logits, int32 ids, fp32 logsumexp and target log-prob: 6k + 8 bytes per
position); `compact` (`teacher.codec`) quantises and compresses them. Padded positions are filled with
values no loss reads (they are outside every chunk and target mask), with distinct ids per position.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor

from xtalign.losses import TeacherTopK

__all__ = ["CodecSpec", "CompactRows", "ExactRows", "RowCodec", "make_codec"]


@dataclass(frozen=True)
class CodecSpec:
    """A codec's name and settings, as the manifest records them."""

    kind: str = "exact"
    settings: dict[str, Any] = field(default_factory=dict)


class RowCodec(Protocol):
    lossy: bool

    def encode(self, out: TeacherTopK, row: int, length: int) -> dict[str, Tensor]: ...

    def decode(self, rows: Sequence[dict[str, Tensor]], *, lengths: Sequence[int], width: int, vocab_size: int,
               temperature: float) -> TeacherTopK: ...


class ExactRows:
    """The engine's tensors, bit for bit."""

    lossy = False

    def encode(self, out: TeacherTopK, row: int, length: int) -> dict[str, Tensor]:
        named = {"logits": out.logits[row, :length], "ids": out.ids[row, :length].to(torch.int32),
                 "logsumexp": out.logsumexp[row, :length].float()}
        if out.target_logprob is not None:
            named["target_logprob"] = out.target_logprob[row, :length].float()
        return {k: v.detach().cpu().contiguous().clone() for k, v in named.items()}

    def decode(self, rows: Sequence[dict[str, Tensor]], *, lengths: Sequence[int], width: int, vocab_size: int,
               temperature: float) -> TeacherTopK:
        k = int(rows[0]["ids"].shape[1]) if rows else 1
        b = len(rows)
        logits = torch.zeros((b, width, k), dtype=rows[0]["logits"].dtype if rows else torch.bfloat16)
        ids = torch.arange(k, dtype=torch.int32).expand(b, width, k).clone()  # distinct ids at padding
        lse = torch.zeros((b, width), dtype=torch.float32)
        tlp = torch.zeros((b, width), dtype=torch.float32)
        has_target = all("target_logprob" in r for r in rows)
        for i, (r, n) in enumerate(zip(rows, lengths, strict=True)):
            logits[i, :n], ids[i, :n], lse[i, :n] = r["logits"], r["ids"], r["logsumexp"]
            if has_target:
                tlp[i, :n] = r["target_logprob"]
        return TeacherTopK(logits=logits, ids=ids, logsumexp=lse, vocab_size=vocab_size, temperature=temperature,
                           target_logprob=tlp if has_target else None)


class CompactRows:
    """`teacher.codec`'s compact form: one compressed blob per sample (quantised log-probs, ids by rank).

    Lossy (each kept log-prob within `step / 2`), so a run that fills the cache trains on the decoded answers,
    exactly what a later run reads.
    """

    lossy = True

    def __init__(self, settings: dict[str, Any]) -> None:
        from xtalign.distill.teacher.codec import CodecConfig

        self.cfg = CodecConfig(kind="compact", **settings)

    def encode(self, out: TeacherTopK, row: int, length: int) -> dict[str, Tensor]:
        from xtalign.distill.teacher.codec import encode_row, row_arrays

        one = TeacherTopK(logits=out.logits[row: row + 1, :length], ids=out.ids[row: row + 1, :length],
                          logsumexp=out.logsumexp[row: row + 1, :length], vocab_size=out.vocab_size,
                          temperature=out.temperature,
                          target_logprob=None if out.target_logprob is None
                          else out.target_logprob[row: row + 1, :length])
        (arrays,) = row_arrays(one, [length])
        blob = encode_row(*arrays, vocab_size=int(out.vocab_size), temperature=float(out.temperature), cfg=self.cfg)
        return {"blob": torch.frombuffer(bytearray(blob), dtype=torch.uint8)}

    def decode(self, rows: Sequence[dict[str, Tensor]], *, lengths: Sequence[int], width: int, vocab_size: int,
               temperature: float) -> TeacherTopK:
        from xtalign.distill.teacher.codec import decode_rows

        blobs = [r["blob"].numpy().tobytes() for r in rows]
        return decode_rows(blobs, self.cfg, vocab_size, temperature, width=width)


def make_codec(spec: CodecSpec) -> RowCodec:
    if spec.kind == "exact":
        return ExactRows()
    if spec.kind == "compact":
        return CompactRows(spec.settings)
    raise ValueError(f"unknown teacher-cache codec {spec.kind!r}; use 'exact' or 'compact'")
