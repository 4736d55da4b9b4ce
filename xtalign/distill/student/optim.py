"""The student's optimiser and schedule: AdamW over the model (and each learnable W in its own group at
its own lr), linear warm-up then cosine or constant."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from xtalign.distill.config import OptimConfig, ScheduleConfig
from xtalign.distill.student.kd import KDTerm

__all__ = ["build_optimizer", "lr_lambda"]


def lr_lambda(schedule: ScheduleConfig, total_steps: int) -> Callable[[int], float]:
    """Multiplier of the base lr at optimiser step `s` (0-based): linear warm-up, then cosine or constant."""
    warm, floor = schedule.warmup_steps, schedule.min_lr_ratio

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if schedule.kind == "constant":
            return 1.0
        span = max(1, total_steps - warm)
        progress = min(1.0, (step - warm) / span)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def build_optimizer(model: nn.Module, terms: Sequence[KDTerm], optim: OptimConfig, schedule: ScheduleConfig,
                    total_steps: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    groups: list[dict[str, Any]] = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    groups += [{"params": list(t.learnable.parameters()), "lr": t.plan.projection_lr}
               for t in terms if t.learnable is not None]
    optimizer = torch.optim.AdamW(groups, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps,
                                  weight_decay=optim.weight_decay)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(schedule, total_steps))
