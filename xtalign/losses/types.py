"""Inputs shared by the losses: the teacher's top-k logits and the sparse student→teacher projection."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["LOG_FLOOR", "SparseProjection", "TeacherTopK"]

# Log-probability used where a value is known to be ~0 but must stay finite (0·log 0 terms, masks).
LOG_FLOOR = -60.0


@dataclass(frozen=True, kw_only=True)
class TeacherTopK:
    """The teacher's k largest logits per position, plus what is needed to make them exact log-probs.

    Full-vocabulary teacher logits are never stored or sent: ``logsumexp`` is taken over the FULL
    teacher vocabulary of ``logits / temperature``, so ``logits / temperature - logsumexp`` are the
    exact log-probabilities of the kept ids, and ``1 - sum(exp(...))`` is the exact mass outside them.

    Attributes:
        logits: ``[B, Tt, K]`` raw teacher logits of the kept ids (not divided by the temperature).
        ids: ``[B, Tt, K]`` teacher token ids (int32 is enough; any integer dtype is accepted).
        logsumexp: ``[B, Tt]`` logsumexp over the full teacher vocabulary of ``logits / temperature``.
        vocab_size: the teacher vocabulary size V_t (needed to spread the outside mass).
        temperature: the temperature ``logsumexp`` was computed at; losses refuse a mismatch.
        target_logprob: optional ``[B, Tt]`` exact log-prob (at ``temperature``) of the teacher's own
            next token, for the multi-teacher ``ce`` score; 0 where the target was ignored.
    """

    logits: Tensor
    ids: Tensor
    logsumexp: Tensor
    vocab_size: int
    temperature: float = 1.0
    target_logprob: Tensor | None = None

    def __post_init__(self) -> None:
        if self.logits.dim() != 3 or self.ids.shape != self.logits.shape:
            raise ValueError(
                f"TeacherTopK: logits and ids must both be [B, T, K], got {tuple(self.logits.shape)} "
                f"and {tuple(self.ids.shape)}"
            )
        if self.ids.is_floating_point() or self.ids.is_complex():
            raise ValueError(f"TeacherTopK: ids must be an integer tensor, got {self.ids.dtype}")
        if self.logsumexp.shape != self.logits.shape[:2]:
            raise ValueError(f"TeacherTopK: logsumexp must be [B, T], got {tuple(self.logsumexp.shape)}")
        if self.logits.shape[2] > self.vocab_size:
            raise ValueError(f"TeacherTopK: k={self.logits.shape[2]} exceeds vocab_size={self.vocab_size}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"TeacherTopK: temperature must be > 0, got {self.temperature}")
        if self.target_logprob is not None and self.target_logprob.shape != self.logsumexp.shape:
            raise ValueError("TeacherTopK: target_logprob must be [B, T] like logsumexp")

    @classmethod
    @torch.no_grad()
    def from_logits(
        cls, logits: Tensor, k: int, temperature: float = 1.0, targets: Tensor | None = None
    ) -> TeacherTopK:
        """Keep the top-``k`` of full teacher logits ``[B, Tt, V_t]``.

        ``targets`` (``[B, Tt]``, already shifted, -100 = ignored) fills ``target_logprob``.
        """
        vocab = logits.shape[-1]
        top = torch.topk(logits, min(k, vocab), dim=-1)  # [B, Tt, K]; order is temperature-invariant
        cd = torch.float64 if logits.dtype == torch.float64 else torch.float32  # fp32 at least
        lse = torch.logsumexp(logits.to(cd) / temperature, dim=-1)  # [B, Tt]
        target_lp = None
        if targets is not None:
            keep = targets >= 0  # [B, Tt]
            picked = logits.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)  # [B, Tt]
            target_lp = torch.where(keep, picked.to(cd) / temperature - lse, 0.0)  # [B, Tt]
        return cls(
            logits=top.values,
            ids=top.indices.to(torch.int32),
            logsumexp=lse,
            vocab_size=vocab,
            temperature=float(temperature),
            target_logprob=target_lp,
        )

    @property
    def k(self) -> int:
        return int(self.logits.shape[-1])

    def logprobs(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """Exact log-probabilities of the kept ids, ``[B, Tt, K]``."""
        return self.logits.to(dtype) / self.temperature - self.logsumexp.to(dtype).unsqueeze(-1)

    def fill_logprob(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """Log-prob given to each id outside the top-k, ``[B, Tt]``.

        The outside mass ``r = 1 - Σ_k p_k`` is known exactly; how it splits is not, so it is spread
        evenly over the ``V_t - K`` unseen ids (the maximum-entropy completion): ``log(r / (V_t - K))``.
        Clamped to at most the smallest kept log-prob (true by construction, kept under rounding) and
        at least ``LOG_FLOOR``; with ``K == V_t`` nothing is unseen and the floor is returned.
        """
        lp = self.logprobs(dtype)  # [B, Tt, K]
        unseen = self.vocab_size - self.k
        if unseen == 0:
            return torch.full(lp.shape[:2], LOG_FLOOR, dtype=dtype, device=lp.device)
        log_rest = log1mexp(torch.logsumexp(lp, dim=-1))  # [B, Tt]
        fill = log_rest - math.log(unseen)
        return torch.minimum(fill, lp.min(dim=-1).values).clamp_min(LOG_FLOOR)  # [B, Tt]

    def to(self, device: torch.device | str) -> TeacherTopK:
        tl = None if self.target_logprob is None else self.target_logprob.to(device)
        return TeacherTopK(
            logits=self.logits.to(device),
            ids=self.ids.to(device),
            logsumexp=self.logsumexp.to(device),
            vocab_size=self.vocab_size,
            temperature=self.temperature,
            target_logprob=tl,
        )


def log1mexp(x: Tensor) -> Tensor:
    """``log(1 - exp(x))`` for ``x <= 0``, stable at both ends; ``x`` is kept below 0 so it stays finite."""
    x = x.clamp_max(-1e-9 if x.dtype == torch.float64 else -1e-7)
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


@dataclass(frozen=True, kw_only=True)
class SparseProjection:
    """Row-stochastic student→teacher projection stored as ``k`` slots per student row.

    Rows are student ids, columns teacher ids, ``q_teacher = p_student @ W``. A slot with weight 0 is
    empty (its index may be any valid id). Rows sum to 1 or are all zero (unmapped student token).

    Attributes:
        indices: ``[V_s, k]`` teacher ids (any integer dtype).
        weights: ``[V_s, k]`` non-negative weights.
        teacher_vocab_size: V_t.
    """

    indices: Tensor
    weights: Tensor
    teacher_vocab_size: int

    def __post_init__(self) -> None:
        if self.indices.dim() != 2 or self.indices.shape != self.weights.shape:
            raise ValueError(
                f"SparseProjection: indices and weights must both be [V_s, k], got "
                f"{tuple(self.indices.shape)} and {tuple(self.weights.shape)}"
            )
        if self.indices.is_floating_point() or not self.weights.is_floating_point():
            raise ValueError("SparseProjection: indices must be integer and weights floating point")
        if self.indices.numel() and (
            int(self.indices.min()) < 0 or int(self.indices.max()) >= self.teacher_vocab_size
        ):
            raise ValueError(f"SparseProjection: indices must lie in [0, {self.teacher_vocab_size})")
        if self.weights.numel() and bool((self.weights.detach() < 0).any()):
            raise ValueError("SparseProjection: weights must be >= 0")

    @property
    def student_vocab_size(self) -> int:
        return int(self.indices.shape[0])

    @classmethod
    def from_projection(cls, projection: Any, device: torch.device | str | None = None) -> SparseProjection:
        """From an `xtalign.projection.Projection` (numpy ``indices``/``weights``, ``teacher_cols``)."""
        return cls(indices=torch.as_tensor(projection.indices, dtype=torch.long, device=device),
                   weights=torch.as_tensor(projection.weights, dtype=torch.float32, device=device),
                   teacher_vocab_size=int(projection.teacher_cols))

    @classmethod
    def from_dense(cls, dense: Tensor, k: int | None = None) -> SparseProjection:
        """Small matrices only (tests, examples): keep each row's ``k`` largest entries of ``[V_s, V_t]``."""
        k = k or max(1, int((dense > 0).sum(dim=1).max()))
        top = torch.topk(dense, min(k, dense.shape[1]), dim=1)  # [V_s, k]
        return cls(indices=top.indices, weights=top.values.clamp_min(0), teacher_vocab_size=dense.shape[1])

    def to_dense(self) -> Tensor:
        """``[V_s, V_t]`` dense copy; small matrices only (tests, debugging)."""
        out = self.weights.new_zeros(self.student_vocab_size, self.teacher_vocab_size)
        return out.scatter_add(1, self.indices.long(), self.weights)

    def to(self, device: torch.device | str) -> SparseProjection:
        return SparseProjection(
            indices=self.indices.to(device),
            weights=self.weights.to(device),
            teacher_vocab_size=self.teacher_vocab_size,
        )
