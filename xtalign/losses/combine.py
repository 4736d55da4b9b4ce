"""Combining losses: KD with the student's CE (dynamic or fixed), and several teachers into one KD."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from xtalign.losses.config import MultiTeacherConfig, ScalingConfig, Score
from xtalign.losses.types import TeacherTopK

__all__ = ["LossCombiner", "MultiTeacher", "teacher_score"]


class LossCombiner(nn.Module):
    """KD + CE. ``dynamic``: ``kd_weight · sg(CE / |KD|) · KD + ce_weight · CE``; ``fixed``:
    ``kd_weight · KD + ce_weight · CE``.

    The dynamic factor uses ``|KD|`` so that a (slightly) negative KD — possible with P-KL's ``nemo``
    aggregation — still has its gradient followed downhill; a KD of exactly 0 gets factor 0.
    """

    def __init__(self, config: ScalingConfig) -> None:
        super().__init__()
        self.config = config

    def forward(self, kd: Tensor, ce: Tensor) -> Tensor:
        """Scalars ``kd`` and ``ce`` → the scalar training loss."""
        cfg = self.config
        if cfg.mode == "fixed":
            return cfg.kd_weight * kd + cfg.ce_weight * ce
        mag = kd.detach().abs()
        scale = torch.where(mag > 0, ce.detach() / mag.clamp_min(torch.finfo(mag.dtype).tiny), 0.0)
        return cfg.kd_weight * scale * kd + cfg.ce_weight * ce


def teacher_score(teacher: TeacherTopK, score: Score, mask: Tensor | None = None) -> Tensor:
    """One teacher's confidence on a batch (higher = more trusted), a detached scalar.

    ``ce``: mean ``target_logprob`` (= −CE on its own next tokens; needs ``TeacherTopK.target_logprob``).
    ``entropy``: −mean entropy, the top-k probabilities plus the outside mass spread evenly over the
    unseen ids (exact when k = V_t). ``max_prob``: mean top probability. All at the teacher's
    temperature; ``mask [B, Tt]`` picks the positions (default all).
    """
    keep = torch.ones(teacher.logsumexp.shape, dtype=torch.bool, device=teacher.logits.device)
    keep = keep if mask is None else mask.bool()
    lp = teacher.logprobs()[keep]  # [N, K]
    if score == "ce":
        if teacher.target_logprob is None:
            raise ValueError("score 'ce' needs TeacherTopK.target_logprob (from_logits(..., targets=...))")
        per = teacher.target_logprob.float()[keep]  # [N]
    elif score == "max_prob":
        per = torch.exp(lp.max(dim=-1).values)  # [N]
    elif score == "entropy":
        fill = teacher.fill_logprob()[keep]  # [N]
        unseen = teacher.vocab_size - teacher.k
        rest = torch.exp(fill) * unseen  # [N] outside mass
        per = (torch.exp(lp) * lp).sum(-1) + rest * fill  # [N] = −entropy
    else:
        raise ValueError(f"unknown score {score!r}; use 'ce', 'entropy' or 'max_prob'")
    if per.numel() == 0:
        return torch.zeros((), device=lp.device)
    return per.mean().detach()


class MultiTeacher(nn.Module):
    """Several teachers' KD losses → one, per batch (with micro-batch 1, per sample).

    ``sum``: the static weights. ``dynamic``: ``softmax(alpha · scores)``. ``select``: all weight on
    the best score (with ``score='ce'``: the lowest-CE teacher; ties → the first). Weights never
    carry gradient.
    """

    def __init__(self, config: MultiTeacherConfig) -> None:
        super().__init__()
        self.config = config

    def weights(self, scores: Tensor | None = None) -> Tensor:
        """``[n_teachers]`` stop-gradient weights from ``scores [n_teachers]`` (unused for ``sum``)."""
        cfg = self.config
        if cfg.mode == "sum":
            assert cfg.weights is not None
            return torch.tensor(cfg.weights)
        if scores is None or scores.shape != (cfg.n_teachers,):
            raise ValueError(f"MultiTeacher mode {cfg.mode!r} needs scores of shape [{cfg.n_teachers}]")
        scores = scores.detach().float()
        if cfg.mode == "dynamic":
            return torch.softmax(cfg.alpha * scores, dim=0)
        out = torch.zeros_like(scores)
        out[torch.argmax(scores)] = 1.0
        return out

    def forward(self, kd_losses: Sequence[Tensor], scores: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``kd_losses``: one scalar per teacher; returns ``(combined scalar, weights [n_teachers])``."""
        if len(kd_losses) != self.config.n_teachers:
            raise ValueError(f"MultiTeacher expects {self.config.n_teachers} losses, got {len(kd_losses)}")
        stacked = torch.stack(list(kd_losses))  # [n]
        w = self.weights(scores).to(device=stacked.device, dtype=stacked.dtype)  # [n]
        return (w * stacked).sum(), w
