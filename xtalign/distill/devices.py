"""Which device and autocast a worker uses: ONE rule, applied by every worker in its own process.

A worker (teacher, student rank) resolves its device from the run's `device` / `precision` and what IT
can see: locally that is this process's GPUs; in a Ray actor, the GPUs the actor reserved. The driver
never resolves a device for anyone. Names stay strings here, so the rule imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from xtalign.config import ConfigError

__all__ = ["WorkerDevice", "resolve_worker_device"]


@dataclass(frozen=True)
class WorkerDevice:
    """`device`: "cpu" or "cuda"; `autocast`: "bfloat16" or None (plain fp32)."""

    device: str
    autocast: str | None

    @property
    def autocast_dtype(self) -> object | None:
        """The torch dtype of `autocast` (imports torch)."""
        import torch

        return None if self.autocast is None else getattr(torch, self.autocast)


def resolve_worker_device(device: Literal["auto", "cpu", "cuda"], precision: Literal["auto", "fp32", "bf16"], *,
                          cuda_available: bool, who: str = "this worker") -> WorkerDevice:
    """`auto` is CUDA where the worker sees a GPU; bf16 autocast on CUDA by default, fp32 on CPU."""
    if device == "cuda" and not cuda_available:
        raise ConfigError(f"device=cuda but {who} sees no CUDA GPU (torch.cuda.is_available() is False); use "
                          "device=cpu or auto, or (backend: ray) reserve GPUs for it with num_gpus")
    use_cuda = device == "cuda" or (device == "auto" and cuda_available)
    bf16 = precision == "bf16" or (precision == "auto" and use_cuda)
    return WorkerDevice("cuda" if use_cuda else "cpu", "bfloat16" if bf16 else None)


def local_cuda() -> bool:
    """Whether this process sees a CUDA GPU (imports torch)."""
    import torch

    return bool(torch.cuda.is_available())
