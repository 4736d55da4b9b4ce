"""Distillation losses for cross-tokenizer KD (torch only; any device).

Configs (frozen, keyword-only; ``.build()`` gives the module): ``PKLConfig`` → ``PKLLoss``,
``GoldConfig`` → ``GoldLoss`` (GOLD / H-KL), ``ULDConfig`` → ``ULDLoss``, ``TopKKLConfig`` →
``TopKKLLoss``, ``ScalingConfig`` → ``LossCombiner``, ``MultiTeacherConfig`` → ``MultiTeacher``.
Inputs: ``TeacherTopK`` (teacher top-k per position), ``SparseProjection`` or ``LearnableProjection``
(W), chunk ids from the aligner.

Memory-light student side: ``sliced_losses(hidden, LMHead(...), targets=..., terms=[SlicedTerm(loss, ...)])``
computes the LM head, CE and every KD term over slices of positions and never forms ``[B·T, V]`` logits
(``xtalign.losses.sliced``; ``SlicedLM`` wraps a Hugging Face causal LM for DDP).
"""

from xtalign.losses.chunks import ChunkLayout, chunk_means
from xtalign.losses.combine import LossCombiner, MultiTeacher, teacher_score
from xtalign.losses.config import (
    GoldConfig,
    MultiTeacherConfig,
    PKLConfig,
    ScalingConfig,
    TopKKLConfig,
    ULDConfig,
)
from xtalign.losses.gold import GoldLoss, ULDLoss
from xtalign.losses.kl import TopKKLLoss, kl_from_logprobs, next_token_ce
from xtalign.losses.pkl import PKLLoss
from xtalign.losses.projection import LearnableProjection, common_pairs
from xtalign.losses.sliced import LMHead, SlicedOutput, SlicedTerm, sliced_losses
from xtalign.losses.sliced_lm import SlicedLM, sliced_token_nll
from xtalign.losses.softmax_projection import projected_softmax
from xtalign.losses.types import SparseProjection, TeacherTopK

__all__ = [
    "ChunkLayout",
    "GoldConfig",
    "GoldLoss",
    "LMHead",
    "LearnableProjection",
    "LossCombiner",
    "MultiTeacher",
    "MultiTeacherConfig",
    "PKLConfig",
    "PKLLoss",
    "ScalingConfig",
    "SlicedLM",
    "SlicedOutput",
    "SlicedTerm",
    "SparseProjection",
    "TeacherTopK",
    "TopKKLConfig",
    "TopKKLLoss",
    "ULDConfig",
    "ULDLoss",
    "chunk_means",
    "common_pairs",
    "kl_from_logprobs",
    "next_token_ce",
    "projected_softmax",
    "sliced_losses",
    "sliced_token_nll",
    "teacher_score",
]
