"""A Hugging Face causal LM with the sliced losses in its forward (`SlicedLM`, what DDP wraps) and the
held-out NLL one slice at a time (`sliced_token_nll`): neither forms the ``[B, T, V]`` logits."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xtalign.losses.kl import PreparedCE
from xtalign.losses.lm_head import LMHead, _HeadMath
from xtalign.losses.sliced import SlicedOutput, SlicedTerm, auto_slice_positions, check_inputs, sliced_losses

__all__ = ["SlicedLM", "sliced_token_nll"]


@torch.no_grad()
def sliced_token_nll(
    hidden: Tensor,
    head: LMHead,
    targets: Tensor,
    *,
    slice_positions: int | None = None,
    ignore_index: int = -100,
) -> Tensor:
    """``[B, T]`` float64 nats of each target given the logits at its position (nan where ignored).

    Like the engine's eval: ``-log_softmax(logits.float().double())[target]``, one slice at a time.
    """
    bsz, seq = check_inputs(hidden, head, targets)
    math_ = _HeadMath.of(head, hidden)
    prepared = PreparedCE(targets, ignore_index)
    size = slice_positions or auto_slice_positions(head.vocab_size)
    hidden2d = hidden.reshape(bsz * seq, -1)  # [N, H]
    out = torch.full((bsz * seq,), math.nan, dtype=torch.float64, device=hidden.device)  # [N]
    w, b = math_.cast(head.weight, head.bias)
    with torch.autocast(hidden.device.type, enabled=False):
        for i in range(0, prepared.n_groups, size):
            rows = prepared.positions[i : i + size]  # [S]
            z = math_.finish(math_.raw(hidden2d[rows], w, b))  # [S, V]
            lp = F.log_softmax(z.double(), dim=-1)  # [S, V]
            out[rows] = -lp.gather(1, prepared.targets[i : i + size, None]).squeeze(1)
    return out.reshape(bsz, seq)


class SlicedLM(nn.Module):
    """A Hugging Face causal LM whose ``forward`` returns the sliced losses instead of logits.

    Wrap THIS module in ``DistributedDataParallel`` (not the bare model): body, head and losses then run
    in one ``forward`` and DDP's hooks see every parameter the losses use. Learnable projections are not
    parameters of the model; average their gradients by hand as today.
    """

    def __init__(self, model: nn.Module, *, slice_positions: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.slice_positions = slice_positions

    def body(self) -> nn.Module:
        """The decoder stack (``get_decoder()``; ``base_model`` where that is missing)."""
        get = getattr(self.model, "get_decoder", None)
        return get() if callable(get) else self.model.base_model  # type: ignore[return-value]

    def hidden(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """``[B, T, H]`` last hidden states (final norm applied), no logits."""
        out = self.body()(input_ids=input_ids, attention_mask=attention_mask)
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        *,
        targets: Tensor | None = None,
        terms: Sequence[SlicedTerm] = (),
        argmax: bool = False,
        ignore_index: int = -100,
        weights: Sequence[float] | None = None,
    ) -> SlicedOutput:
        """Body → ``[B, T, H]`` hidden states → ``sliced_losses`` (same keyword arguments)."""
        hidden = self.hidden(input_ids, attention_mask)  # [B, T, H]
        return sliced_losses(hidden, LMHead.from_hf(self.model), targets=targets, terms=terms,
                             slice_positions=self.slice_positions, ignore_index=ignore_index, argmax=argmax,
                             weights=weights)

    @torch.no_grad()
    def token_nll(
        self, input_ids: Tensor, attention_mask: Tensor | None, targets: Tensor, ignore_index: int = -100
    ) -> Tensor:
        """``[B, T]`` float64 nll of ``targets`` (see ``sliced_token_nll``)."""
        hidden = self.hidden(input_ids, attention_mask)
        return sliced_token_nll(hidden, LMHead.from_hf(self.model), targets,
                                slice_positions=self.slice_positions, ignore_index=ignore_index)
