"""When and how the student worker computes its losses over slices of positions (`xtalign.losses.sliced`).

The straightforward path holds the student's ``[B, Ts, V_s]`` fp32 logits, their log-softmax and their
gradient; the sliced path never forms them (one slice's ``[S, V_s]`` at a time, recomputed in the backward
pass). `student.loss_slice` chooses: null (auto) slices when a micro-batch's fp32 logits would exceed
`AUTO_BYTES`, 0 never, N > 0 always with N positions per slice. On-policy sample rows (their policy
gradient reads the logits themselves) and FSDP2 sharding (the head is called outside the sharded root)
take the straightforward path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from xtalign.distill.data.batch import IGNORE, TeacherSide
from xtalign.distill.student.kd import KDTerm, on_device
from xtalign.losses import TeacherTopK
from xtalign.losses.sliced import SlicedOutput, SlicedTerm
from xtalign.losses.sliced_lm import SlicedLM

__all__ = ["AUTO_BYTES", "StudentForward", "sliced_terms", "use_slices"]

# fp32 logits of one micro-batch above which `loss_slice: null` slices (256 MiB: 4 x 512 positions at V 32k).
AUTO_BYTES = 1 << 28


def use_slices(loss_slice: int | None, rows: int, positions: int, vocab_size: int) -> bool:
    """Whether a micro-batch of ``[rows, positions]`` student tokens takes the sliced path."""
    if loss_slice is None:
        return rows * positions * vocab_size * 4 > AUTO_BYTES
    return loss_slice > 0


class StudentForward(nn.Module):
    """The student's one forward for DDP: full logits, or body + sliced losses (``terms`` given).

    DDP wraps this module once, so both paths run inside a forward its gradient hooks expect.
    """

    def __init__(self, model: nn.Module, slice_positions: int | None) -> None:
        super().__init__()
        self.model = model
        self.sliced = SlicedLM(model, slice_positions=slice_positions)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, *, targets: Tensor | None = None,
                terms: Sequence[SlicedTerm] | None = None, ignore_index: int = IGNORE) -> Tensor | SlicedOutput:
        if terms is None:
            return self.model(input_ids=input_ids, attention_mask=attention_mask).logits  # [B, Ts, V_s]
        return self.sliced(input_ids, attention_mask, targets=targets, terms=terms, argmax=True,
                           ignore_index=ignore_index)

    def token_nll(self, input_ids: Tensor, attention_mask: Tensor, targets: Tensor) -> Tensor:
        """``[B, Ts]`` float64 nats of each target (nan where ignored), one slice at a time."""
        return self.sliced.token_nll(input_ids, attention_mask, targets, ignore_index=IGNORE)


def sliced_terms(terms: Sequence[KDTerm], sides: Sequence[TeacherSide], teachers: Sequence[TeacherTopK],
                 device: torch.device) -> list[SlicedTerm]:
    """Each teacher's KD term as `sliced_losses` takes it (the same inputs `kd.kd_terms` gives the module)."""
    out = []
    for term, side, answer in zip(terms, sides, teachers, strict=True):
        if side.same_vocab:
            keep = on_device(side.targets, device) != IGNORE  # [B, Ts]
            out.append(SlicedTerm(term.module, answer, mask=keep))
        else:
            out.append(SlicedTerm(term.module, answer, student_chunk=on_device(side.student_chunk, device),
                                  teacher_chunk=on_device(side.teacher_chunk, device)))
    return out


def vocab_size_of(model: nn.Module) -> int:
    """The student's output rows (its LM head), for `use_slices`."""
    head: Any = model.get_output_embeddings()
    return int(head.weight.shape[0]) if head is not None else int(np.iinfo(np.int32).max)
