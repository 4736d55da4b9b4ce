"""What crosses a process boundary between workers, as plain numpy arrays (the wire format).

A teacher answer travels as top-k only: bf16 logits (as their raw 16-bit patterns), int32 ids, fp32
logsumexp and target log-prob — at k = 64 and 2048 positions 0.8 MB per sample (6k + 8 bytes per
position), against 1.24 GB of fp32 logits for a 151,936-token vocabulary. `pack_topk` is where an answer
leaves its device; numpy arrays go through Ray's object store without a copy. Row cuts split a batch
among teacher replicas and data-parallel student ranks.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from xtalign.distill.data.batch import Batch, take_rows
from xtalign.losses import TeacherTopK

__all__ = ["answer_nbytes", "concat_topk", "pack_topk", "packed_nbytes", "row_cuts", "shard_batch", "shard_rows",
           "shard_topk", "topk_nbytes", "unpack_topk"]


def pack_topk(out: TeacherTopK) -> dict[str, Any]:
    """A `TeacherTopK` (on any device) as host numpy arrays (bf16 kept bit-exact as int16) plus two scalars."""
    logits = out.logits.to(torch.bfloat16).contiguous().view(torch.int16).cpu().numpy()  # [B, T, K] bf16 bits
    packed: dict[str, Any] = {"logits_bf16": logits, "ids": out.ids.to(torch.int32).cpu().numpy(),
                              "logsumexp": out.logsumexp.float().cpu().numpy(), "vocab_size": int(out.vocab_size),
                              "temperature": float(out.temperature)}
    if out.target_logprob is not None:
        packed["target_logprob"] = out.target_logprob.float().cpu().numpy()
    return packed


def unpack_topk(packed: dict[str, Any]) -> TeacherTopK:
    """The inverse of `pack_topk`: identical tensors (bf16 logits, int32 ids, fp32 rest)."""
    logits = torch.from_numpy(np.array(packed["logits_bf16"], copy=True)).view(torch.bfloat16)
    tl = packed.get("target_logprob")
    return TeacherTopK(logits=logits, ids=torch.from_numpy(np.array(packed["ids"], copy=True)),
                       logsumexp=torch.from_numpy(np.array(packed["logsumexp"], copy=True)),
                       vocab_size=int(packed["vocab_size"]), temperature=float(packed["temperature"]),
                       target_logprob=None if tl is None else torch.from_numpy(np.array(tl, copy=True)))


def packed_nbytes(packed: dict[str, Any]) -> int:
    return sum(int(v.nbytes) for v in packed.values() if isinstance(v, np.ndarray))


def topk_nbytes(out: TeacherTopK) -> int:
    """Bytes of a teacher answer as it travels (the same figure `pack_topk` would give)."""
    n = out.logits.numel() * 2 + out.ids.numel() * 4 + out.logsumexp.numel() * 4
    return n + (out.target_logprob.numel() * 4 if out.target_logprob is not None else 0)


def answer_nbytes(positions: int, k: int) -> int:
    """Bytes of a packed answer over `positions` positions at top-`k`: 6k + 8 per position."""
    return positions * (6 * k + 8)


def row_cuts(batch_size: int, *divisors: int) -> list[int]:
    """Row boundaries ``[0, …, B]`` where any of the equal splits into `divisors` parts cuts the batch (teacher
    replicas and student ranks), so every piece lies within one replica's and one rank's rows."""
    cuts = {0, batch_size}
    for n in divisors:
        cuts |= {r * (batch_size // n) for r in range(n)}
    return sorted(cuts)


def shard_rows(batch_size: int, rank: int, world: int) -> slice:
    """Rank `rank`'s equal share of `batch_size` rows."""
    per = batch_size // world
    return slice(rank * per, (rank + 1) * per)


def shard_batch(batch: Batch, rank: int, world: int) -> Batch:
    """Rank `rank`'s equal share of the batch's rows, every per-row field with them (padding width kept)."""
    rows = shard_rows(batch.size, rank, world)
    return take_rows(batch, np.arange(rows.start, rows.stop))


def shard_topk(out: TeacherTopK, rows: slice) -> TeacherTopK:
    tl = None if out.target_logprob is None else out.target_logprob[rows].contiguous()
    return TeacherTopK(logits=out.logits[rows].contiguous(), ids=out.ids[rows].contiguous(),
                       logsumexp=out.logsumexp[rows].contiguous(), vocab_size=out.vocab_size,
                       temperature=out.temperature, target_logprob=tl)


def concat_topk(parts: list[TeacherTopK]) -> TeacherTopK:
    """Replicas' answers for consecutive row shards → one answer for the whole batch (rows in order)."""
    if len(parts) == 1:
        return parts[0]
    tl = parts[0].target_logprob
    return TeacherTopK(logits=torch.cat([p.logits for p in parts]), ids=torch.cat([p.ids for p in parts]),
                       logsumexp=torch.cat([p.logsumexp for p in parts]), vocab_size=parts[0].vocab_size,
                       temperature=parts[0].temperature,
                       target_logprob=None if tl is None else torch.cat([p.target_logprob for p in parts]))
