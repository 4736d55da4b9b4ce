"""The student's output layer as `xtalign.losses.sliced` computes it, slice by slice: the weights (`LMHead`) and
the fixed rules that turn one slice of hidden states into logits (`_HeadMath`: matmul dtype, scale, softcap)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xtalign.losses.stages import compute_dtype

__all__ = ["LMHead"]


@dataclass(frozen=True)
class LMHead:
    """The student's output layer: ``z = softcap(scale · (h @ weight.T + bias))``.

    Attributes:
        weight: ``[V, H]`` (a parameter; may be tied to the input embeddings).
        bias: ``[V]`` or None.
        scale: logit multiplier (Cohere's ``logit_scale``, Granite's ``1 / logits_scaling``) or None.
        softcap: Gemma's final-logit softcap ``cap · tanh(z / cap)``, or None.
    """

    weight: Tensor
    bias: Tensor | None = None
    scale: float | None = None
    softcap: float | None = None

    @classmethod
    def from_hf(cls, model: nn.Module) -> LMHead:
        """From a Hugging Face causal LM: ``get_output_embeddings()`` plus the config's logit post-processing."""
        head = model.get_output_embeddings()  # type: ignore[operator]
        config = model.config
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        cap = getattr(text, "final_logit_softcapping", None)
        scale = getattr(model, "logit_scale", None)
        if getattr(text, "logits_scaling", None) not in (None, 1, 1.0):
            scale = 1.0 / float(text.logits_scaling)
        bias = getattr(head, "bias", None)
        return cls(weight=head.weight, bias=bias, scale=None if scale is None else float(scale),
                   softcap=float(cap) if cap else None)

    @property
    def vocab_size(self) -> int:
        return int(self.weight.shape[0])


@dataclass(frozen=True)
class _HeadMath:
    """How a slice's logits are formed, fixed when the forward pass starts (autocast included)."""

    dtype: torch.dtype  # matmul dtype: the autocast dtype under autocast, else the weight's
    scale: float | None
    softcap: float | None

    @classmethod
    def of(cls, head: LMHead, hidden: Tensor) -> _HeadMath:
        dev = hidden.device.type
        dtype = head.weight.dtype
        if torch.is_autocast_enabled(dev) and dtype != torch.float64:
            dtype = torch.get_autocast_dtype(dev)  # what autocast would give F.linear
        return cls(dtype, head.scale, head.softcap)

    @property
    def loss_dtype(self) -> torch.dtype:
        return compute_dtype(self.dtype)

    def cast(self, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """The head's parameters in the matmul dtype (a no-op outside autocast)."""
        return weight.to(self.dtype), None if bias is None else bias.to(self.dtype)

    def raw(self, h: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """``[S, V]`` matmul output ``h W^T + b``, in the matmul dtype (what a Hugging Face ``lm_head`` gives)."""
        return F.linear(h.to(self.dtype), weight, bias)  # [S, V]

    def finish(self, raw: Tensor) -> Tensor:
        """Scale and softcap in the logits' dtype (as the models do), then float32 (float64 stays), like the
        workers' ``.float()``."""
        z = raw if self.scale is None else raw * self.scale  # [S, V]
        z = z if self.softcap is None else torch.tanh(z / self.softcap) * self.softcap  # [S, V]
        return z if z.dtype in (torch.float32, torch.float64) else z.float()
