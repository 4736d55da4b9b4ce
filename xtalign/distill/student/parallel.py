"""Data parallelism for a student rank: DDP (replicated) or FSDP2 (sharded) over the process group the
rank joined, gradient sync on the last micro-batch only, and the full state gathered for checkpoints."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from xtalign.distill.student.kd import KDTerm

__all__ = ["Parallel"]


def _fully_shard(model: nn.Module) -> None:
    """FSDP2 over a Hugging Face causal LM: each decoder layer is its own unit, the rest the root's."""
    from torch.distributed.fsdp import fully_shard

    layers = [m for name, m in model.named_modules() if name.endswith("layers") and isinstance(m, nn.ModuleList)]
    for layer in (layers[0] if layers else []):
        fully_shard(layer)
    fully_shard(model)


class _Holder:
    """Something with `.state_dict()` for `save_checkpoint`, holding an already gathered optimiser state."""

    def __init__(self, state: dict[str, Any]) -> None:
        self._state = state

    def state_dict(self) -> dict[str, Any]:
        return self._state


class Parallel:
    """The rank's view of data parallelism (world 1: a no-op wrapper)."""

    def __init__(self, model: nn.Module, sharding: str, forward: nn.Module | None = None) -> None:
        """`forward`: the module the worker calls for its losses (it holds `model`; DDP wraps it instead of
        `model`, so every path of it syncs gradients). Under FSDP2 the bare sharded `model` is called."""
        dist = torch.distributed
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.fsdp = self.world > 1 and sharding == "fsdp"
        self.model = model
        self.forward_model: nn.Module = model if self.fsdp or forward is None else forward
        if self.fsdp:  # FSDP2: every decoder layer and the rest are sharded across ranks, in place
            _fully_shard(model)
        elif self.world > 1:  # data-parallel: DDP averages the model's gradients across ranks
            from torch.nn.parallel import DistributedDataParallel

            self.forward_model = DistributedDataParallel(self.forward_model, broadcast_buffers=False)

    def sync_context(self, last: bool) -> contextlib.AbstractContextManager[Any]:
        """DDP syncs gradients on the last micro-batch only; FSDP2 reduce-scatters every backward."""
        if last or self.world == 1 or self.fsdp:
            return contextlib.nullcontext()
        return self.forward_model.no_sync()  # type: ignore[operator]

    def average_learnable(self, terms: Sequence[KDTerm]) -> None:
        """A learnable W sits outside DDP: average its gradients across ranks by hand."""
        if self.world == 1:
            return
        for term in terms:
            for p in term.learnable.parameters() if term.learnable is not None else ():
                if p.grad is not None:
                    torch.distributed.all_reduce(p.grad)
                    p.grad /= self.world

    def full_state(self, optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], Any]:
        """Model and optimiser state as one rank would hold them (gathered under FSDP2; all ranks call it)."""
        if not self.fsdp:
            return self.model.state_dict(), optimizer
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model = get_model_state_dict(self.model, options=opts)
        return model, _Holder(get_optimizer_state_dict(self.model, optimizer, options=opts))

    def load_state(self, optimizer: torch.optim.Optimizer, model_state: dict[str, Tensor],
                   optimizer_state: dict[str, Any]) -> None:
        if not self.fsdp:
            self.model.load_state_dict(model_state)
            optimizer.load_state_dict(optimizer_state)
            return
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True)
        set_model_state_dict(self.model, model_state, options=opts)
        set_optimizer_state_dict(self.model, optimizer, optimizer_state, options=opts)
