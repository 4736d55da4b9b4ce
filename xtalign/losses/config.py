"""One frozen, keyword-only config per loss family; ``.build()`` gives the ``nn.Module``.

Invalid values and combinations are refused at construction with a one-line ``ValueError``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

if TYPE_CHECKING:
    from xtalign.losses.combine import LossCombiner, MultiTeacher
    from xtalign.losses.gold import GoldLoss, ULDLoss
    from xtalign.losses.kl import TopKKLLoss
    from xtalign.losses.pkl import PKLLoss
    from xtalign.losses.projection import LearnableProjection
    from xtalign.losses.types import SparseProjection

__all__ = [
    "Direction",
    "GoldConfig",
    "MultiTeacherConfig",
    "PKLConfig",
    "ScalingConfig",
    "TopKKLConfig",
    "ULDConfig",
]

Direction = Literal["forward", "reverse"]
Aggregation = Literal["nemo", "chain"]
SubsetMode = Literal["per_batch", "per_chunk"]
GoldVariant = Literal["gold", "hkl"]
TailMode = Literal["bucket", "renormalize"]
ScalingMode = Literal["dynamic", "fixed"]
MultiMode = Literal["sum", "dynamic", "select"]
Score = Literal["ce", "entropy", "max_prob"]

DEFAULT_CAP = 8192
DEFAULT_HKL_THRESHOLD = 0.6


def _choice(cls: str, name: str, value: Any, options: Any) -> None:
    allowed = get_args(options)
    if value not in allowed:
        raise ValueError(f"{cls}.{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")


def _positive(cls: str, name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ValueError(f"{cls}.{name} must be a finite number > 0; got {value!r}")


def _non_negative(cls: str, name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{cls}.{name} must be a finite number >= 0; got {value!r}")


def _count(cls: str, name: str, value: int) -> None:
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        raise ValueError(f"{cls}.{name} must be an integer >= 1; got {value!r}")


@dataclass(frozen=True, kw_only=True)
class PKLConfig:
    """Projected KL (X-Token). See ``xtalign.losses.pkl`` for what each mode computes.

    Attributes:
        temperature: T; logits are divided by T and the loss is multiplied by T².
        direction: ``forward`` = KL(teacher ‖ student), ``reverse`` = KL(student ‖ teacher), per chunk.
        aggregation: ``nemo`` (faithful to NeMo RL) or ``chain`` (symmetric length-normalised
            chain-rule pooling).
        subset: ``per_batch`` = one teacher column subset for the batch: the union of the top-k ids of
            the teacher positions that enter the loss, at most ``subset_cap`` columns (like NeMo's
            batch-global 8192); ``per_chunk`` = each chunk uses the union of the top-k ids of its own
            teacher positions (for a 1-token teacher chunk: exactly that position's top-k).
        subset_cap: largest per-batch subset; when the union is larger, the ids with the highest teacher
            log-prob at any position win (NeMo ranks by max logit; log-probs compare across positions).
        eps: added to the student's projected probabilities before the log (columns no student row
            reaches would otherwise give log 0).
    """

    temperature: float = 1.0
    direction: Direction = "forward"
    aggregation: Aggregation = "nemo"
    subset: SubsetMode = "per_batch"
    subset_cap: int = DEFAULT_CAP
    eps: float = 1e-10

    def __post_init__(self) -> None:
        _positive("PKLConfig", "temperature", self.temperature)
        _choice("PKLConfig", "direction", self.direction, Direction)
        _choice("PKLConfig", "aggregation", self.aggregation, Aggregation)
        _choice("PKLConfig", "subset", self.subset, SubsetMode)
        _count("PKLConfig", "subset_cap", self.subset_cap)
        if self.subset == "per_chunk" and self.subset_cap != DEFAULT_CAP:
            raise ValueError("PKLConfig.subset_cap only applies to subset='per_batch'")
        _positive("PKLConfig", "eps", self.eps)
        if self.eps > 1e-3:
            raise ValueError(f"PKLConfig.eps must be <= 1e-3 (a guard against log 0); got {self.eps}")

    def build(self, projection: SparseProjection | LearnableProjection) -> PKLLoss:
        from xtalign.losses.pkl import PKLLoss

        return PKLLoss(self, projection)


@dataclass(frozen=True, kw_only=True)
class GoldConfig:
    """GOLD (strict common set) or H-KL (relaxed common set) — see ``xtalign.losses.gold``.

    Attributes:
        variant: ``gold`` = common rows are a single exact 1.0 entry; ``hkl`` = rows whose top weight is
            ``>= hkl_threshold``.
        temperature: T (loss × T²).
        direction: direction of the KL on the common set.
        hkl_threshold: in (0, 1]; only for ``hkl``.
        uld_cap: at most this many sorted probabilities per side enter the L1 term.
        common_weight, uld_weight: weights of the two terms (both ≥ 0, not both 0).
    """

    variant: GoldVariant = "gold"
    temperature: float = 1.0
    direction: Direction = "forward"
    hkl_threshold: float = DEFAULT_HKL_THRESHOLD
    uld_cap: int = DEFAULT_CAP
    common_weight: float = 1.0
    uld_weight: float = 1.0

    def __post_init__(self) -> None:
        _choice("GoldConfig", "variant", self.variant, GoldVariant)
        _positive("GoldConfig", "temperature", self.temperature)
        _choice("GoldConfig", "direction", self.direction, Direction)
        _positive("GoldConfig", "hkl_threshold", self.hkl_threshold)
        if self.hkl_threshold > 1:
            raise ValueError(f"GoldConfig.hkl_threshold must lie in (0, 1]; got {self.hkl_threshold}")
        if self.variant == "gold" and self.hkl_threshold != DEFAULT_HKL_THRESHOLD:
            raise ValueError("GoldConfig.hkl_threshold only applies to variant='hkl'")
        _count("GoldConfig", "uld_cap", self.uld_cap)
        _non_negative("GoldConfig", "common_weight", self.common_weight)
        _non_negative("GoldConfig", "uld_weight", self.uld_weight)
        if self.common_weight == 0 and self.uld_weight == 0:
            raise ValueError("GoldConfig: common_weight and uld_weight cannot both be 0")

    def build(self, projection: SparseProjection) -> GoldLoss:
        from xtalign.losses.gold import GoldLoss

        return GoldLoss(self, projection)


@dataclass(frozen=True, kw_only=True)
class ULDConfig:
    """ULD alone: L1 between the sorted probabilities of both sides (no projection needed).

    Attributes:
        temperature: T (loss × T²).
        cap: at most this many sorted probabilities per side.
    """

    temperature: float = 1.0
    cap: int = DEFAULT_CAP

    def __post_init__(self) -> None:
        _positive("ULDConfig", "temperature", self.temperature)
        _count("ULDConfig", "cap", self.cap)

    def build(self) -> ULDLoss:
        from xtalign.losses.gold import ULDLoss

        return ULDLoss(self)


@dataclass(frozen=True, kw_only=True)
class TopKKLConfig:
    """Same-tokenizer KD: per-position KL on the teacher's top-k ids.

    Attributes:
        temperature: T (loss × T²).
        direction: ``forward`` or ``reverse``.
        tail: ``bucket`` = the top-k ids plus one bucket for all other ids on both sides (exact masses
            from the teacher's logsumexp; a true KL on that coarsening); ``renormalize`` = both sides
            renormalised over the top-k ids (the outside mass is dropped).
    """

    temperature: float = 1.0
    direction: Direction = "forward"
    tail: TailMode = "bucket"

    def __post_init__(self) -> None:
        _positive("TopKKLConfig", "temperature", self.temperature)
        _choice("TopKKLConfig", "direction", self.direction, Direction)
        _choice("TopKKLConfig", "tail", self.tail, TailMode)

    def build(self) -> TopKKLLoss:
        from xtalign.losses.kl import TopKKLLoss

        return TopKKLLoss(self)


@dataclass(frozen=True, kw_only=True)
class ScalingConfig:
    """How the KD term and the student's CE combine.

    ``dynamic`` (default): ``loss = kd_weight · sg(CE / |KD|) · KD + ce_weight · CE`` — the KD term is
    rescaled to CE's magnitude each step (value ``kd_weight·CE`` in magnitude), its gradient direction
    kept. ``fixed``: ``loss = kd_weight · KD + ce_weight · CE``; the usual ``α·KD + (1−α)·CE`` is
    ``kd_weight=α, ce_weight=1−α``.
    """

    mode: ScalingMode = "dynamic"
    kd_weight: float = 1.0
    ce_weight: float = 1.0

    def __post_init__(self) -> None:
        _choice("ScalingConfig", "mode", self.mode, ScalingMode)
        _non_negative("ScalingConfig", "kd_weight", self.kd_weight)
        _non_negative("ScalingConfig", "ce_weight", self.ce_weight)
        if self.kd_weight == 0 and self.ce_weight == 0:
            raise ValueError("ScalingConfig: kd_weight and ce_weight cannot both be 0")
        if self.mode == "dynamic" and (self.ce_weight == 0 or self.kd_weight == 0):
            raise ValueError(
                "ScalingConfig: mode='dynamic' scales KD by CE and needs kd_weight > 0, ce_weight > 0"
            )

    @classmethod
    def from_alpha(cls, alpha: float) -> ScalingConfig:
        """Fixed ``α·KD + (1−α)·CE``."""
        if not (isinstance(alpha, int | float) and 0 <= alpha <= 1):
            raise ValueError(f"ScalingConfig.from_alpha: alpha must lie in [0, 1]; got {alpha!r}")
        return cls(mode="fixed", kd_weight=float(alpha), ce_weight=1.0 - float(alpha))

    def build(self) -> LossCombiner:
        from xtalign.losses.combine import LossCombiner

        return LossCombiner(self)


@dataclass(frozen=True, kw_only=True)
class MultiTeacherConfig:
    """How several teachers' KD losses combine (per batch).

    Attributes:
        mode: ``sum`` = static ``weights``; ``dynamic`` = ``softmax(alpha · score)`` per batch,
            stop-gradient; ``select`` = the teacher with the best score (lowest CE with ``score='ce'``).
        n_teachers: number of teachers.
        weights: static weights for ``sum`` (one per teacher, ≥ 0, summing to 1).
        score: ``ce`` (−CE of the teacher on its own next tokens), ``entropy`` (−mean entropy) or
            ``max_prob`` (mean top probability); higher = more trusted.
        alpha: sharpness of the dynamic softmax (> 0).
    """

    mode: MultiMode = "sum"
    n_teachers: int = 1
    weights: tuple[float, ...] | None = None
    score: Score = "ce"
    alpha: float = 1.0

    def __post_init__(self) -> None:
        _choice("MultiTeacherConfig", "mode", self.mode, MultiMode)
        _count("MultiTeacherConfig", "n_teachers", self.n_teachers)
        _choice("MultiTeacherConfig", "score", self.score, Score)
        _positive("MultiTeacherConfig", "alpha", self.alpha)
        if self.mode != "sum":
            if self.weights is not None:
                raise ValueError("MultiTeacherConfig.weights only apply to mode='sum'")
            return
        weights = self.weights if self.weights is not None else (1.0,) * (self.n_teachers == 1)
        if len(weights) != self.n_teachers:
            raise ValueError(
                f"MultiTeacherConfig.weights needs {self.n_teachers} entries (one per teacher); "
                f"got {len(weights)}"
            )
        for w in weights:
            _non_negative("MultiTeacherConfig", "weights", w)
        if abs(sum(weights) - 1.0) > 1e-6:
            raise ValueError(f"MultiTeacherConfig.weights must sum to 1; got {sum(weights):.6g}")
        object.__setattr__(self, "weights", tuple(float(w) for w in weights))

    def build(self) -> MultiTeacher:
        from xtalign.losses.combine import MultiTeacher

        return MultiTeacher(self)
