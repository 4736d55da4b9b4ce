"""The sequence-level reverse KL across tokenizers, exact at chunk level, trained by the policy gradient.

A completion's chunks spell the same bytes on both sides, so each side's chunk log-probability is the sum
of its own tokens' log-probs over the chunk, and ``Σ_c [log p_s(c) − log p_t(c)] = log p_s(x) − log p_t(x)``
over the chunks the sides share. With reward ``r_c = log p_t(c) − log p_s(c)`` (stop-gradient) and
reward-to-go ``G_c = Σ_{c' ≥ c} γ^(c'−c) r_c'`` within a row, the loss ``−mean_c log p_s(c) · (G_c − b)``
(b: the batch mean of G) has the gradient of the reverse KL KL(p_s ‖ p_t) for γ = 1 (score function; the
baseline only lowers its variance); γ = 0 credits each chunk with its own reward only (on-policy
distillation's per-token reverse KL, at chunk level). `estimate` is ``mean over rows of Σ_c −r_c`` per byte.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from xtalign.distill.data.batch import IGNORE

__all__ = ["chunk_sums", "discounted_returns", "reverse_kl_policy_loss", "student_token_logprobs"]


def student_token_logprobs(logits: Tensor, targets: Tensor) -> Tensor:
    """``[B, T]`` log p_s of each position's target (0 where IGNORE), at temperature 1."""
    lp = torch.log_softmax(logits.float(), dim=-1)  # [B, T, V]
    picked = lp.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)  # [B, T]
    return torch.where(targets != IGNORE, picked, 0.0)


def chunk_sums(values: Tensor, chunk: Tensor, n_chunks: int) -> tuple[Tensor, Tensor]:
    """Per row and chunk, the sum of ``values [B, T]`` over positions of that chunk, and the count ``[B, C]``."""
    b = values.shape[0]
    keep = chunk >= 0
    key = (torch.arange(b, device=chunk.device)[:, None] * n_chunks + chunk.clamp_min(0))[keep]  # [P]
    sums = values.new_zeros(b * n_chunks).index_add(0, key, values[keep])
    counts = torch.bincount(key, minlength=b * n_chunks)
    return sums.reshape(b, n_chunks), counts.reshape(b, n_chunks)


def discounted_returns(rewards: Tensor, valid: Tensor, discount: float) -> Tensor:
    """``[B, C]`` reward-to-go within each row: ``G_c = r_c + γ G_{c+1}`` over valid chunks (others 0)."""
    r = torch.where(valid, rewards, 0.0)
    if discount == 0.0:
        return r
    out = torch.zeros_like(r)
    running = torch.zeros_like(r[:, 0])
    for c in range(r.shape[1] - 1, -1, -1):
        running = r[:, c] + discount * running
        out[:, c] = running
    return torch.where(valid, out, 0.0)


def reverse_kl_policy_loss(student_lp: Tensor, student_chunk: Tensor, teacher_lp: Tensor, teacher_chunk: Tensor,
                           chunk_bytes: Tensor, *, discount: float) -> tuple[Tensor, dict[str, float]]:
    """The policy-gradient loss of the reverse KL over shared chunks, and its figures.

    student_lp ``[B, Ts]`` (with grad) / teacher_lp ``[B, Tt]``: each position's log-prob of its target;
    student_chunk / teacher_chunk: prediction chunks (-1 none); chunk_bytes ``[B, Ts]``: the bytes of the token
    each student position predicts. Returns (loss, {reverse_kl_nats, bytes, chunks, reverse_kl_bits_per_byte}).
    """
    n = int(max(int(student_chunk.max()), int(teacher_chunk.max()), -1)) + 1
    if n == 0:
        return student_lp.sum() * 0.0, {"reverse_kl_nats": 0.0, "bytes": 0.0, "chunks": 0.0}
    s_sum, s_cnt = chunk_sums(student_lp, student_chunk, n)  # [B, C]
    t_sum, t_cnt = chunk_sums(teacher_lp.to(student_lp.dtype), teacher_chunk, n)
    n_bytes, _ = chunk_sums(chunk_bytes.to(student_lp.dtype), student_chunk, n)
    valid = (s_cnt > 0) & (t_cnt > 0)
    reward = (t_sum - s_sum).detach()  # [B, C] r_c
    ret = discounted_returns(reward, valid, discount)
    count = valid.sum().clamp_min(1)
    baseline = ret[valid].mean() if bool(valid.any()) else ret.new_zeros(())
    loss = -(torch.where(valid, s_sum * (ret - baseline), 0.0)).sum() / count
    kl = float(-(torch.where(valid, reward, 0.0)).sum())
    total_bytes = float(torch.where(valid, n_bytes, 0.0).sum())
    return loss, {"reverse_kl_nats": kl, "bytes": total_bytes, "chunks": float(valid.sum()),
                  "reverse_kl_bits_per_byte": kl / total_bytes / math.log(2) if total_bytes else 0.0}
