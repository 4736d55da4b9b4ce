"""Sampling the student's continuations in its own worker: a KV-cache decoding loop, seeded per row.

Prompts are left-padded into one batch; each step feeds one token per row through the model with its
cache and samples from `softmax(z / temperature)` after top-k and top-p filtering. Every row draws from
its own `torch.Generator` seeded by the caller (run seed, batch, row), so a row's sample does not depend on
which other rows share its batch or rank, and a resumed run samples the same tokens. A row stops at its
first stop id (EOS, the chat turn end), which it keeps; the loop ends when every row has stopped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["SamplingConfig", "sample"]


@dataclass(frozen=True, kw_only=True)
class SamplingConfig:
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0


def _left_pad(prompts: Sequence[np.ndarray], pad: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """``[B, P]`` ids left-padded with `pad`, and the ``[B, P]`` attention mask."""
    width = max(p.shape[0] for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, width - p.shape[0]:] = torch.as_tensor(p, dtype=torch.long)
        mask[b, width - p.shape[0]:] = 1
    return ids.to(device), mask.to(device)


def _filter(logits: Tensor, cfg: SamplingConfig) -> Tensor:
    """``[B, V]`` logits / T with everything outside top-k and the top-p nucleus set to -inf."""
    z = logits.float() / cfg.temperature
    if cfg.top_k and cfg.top_k < z.shape[-1]:
        kth = torch.topk(z, cfg.top_k, dim=-1).values[:, -1:]  # [B, 1]
        z = z.masked_fill(z < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_z, order = torch.sort(z, dim=-1, descending=True)  # [B, V]
        probs = torch.softmax(sorted_z, dim=-1)
        drop = probs.cumsum(-1) - probs > cfg.top_p  # keep the smallest prefix reaching top_p
        z = z.scatter(-1, order, sorted_z.masked_fill(drop, float("-inf")))
    return z


def _draw(z: Tensor, gens: Sequence[torch.Generator]) -> Tensor:
    """One token per row ``[B]``, row b from `gens[b]`."""
    probs = torch.softmax(z, dim=-1)  # [B, V]
    return torch.stack([torch.multinomial(probs[b], 1, generator=g)[0] for b, g in enumerate(gens)])


def _generators(seeds: Sequence[int], device: torch.device) -> list[torch.Generator]:
    out = []
    for s in seeds:
        g = torch.Generator(device=device)
        g.manual_seed(int(s) % (2**63))
        out.append(g)
    return out


def _forward(model: nn.Module, ids: Tensor, mask: Tensor, positions: Tensor, cache: object) -> Tensor:
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True)
    return out.logits[:, -1]  # [B, V]


@torch.no_grad()
def sample(model: nn.Module, prompts: Sequence[np.ndarray], *, cfg: SamplingConfig, stop_ids: Sequence[int],
           seeds: Sequence[int], pad_id: int) -> list[np.ndarray]:
    """Per prompt, the sampled ids (``[n] int64``, ending with a stop id where one was drawn)."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    was = model.training
    model.eval()
    ids, mask = _left_pad(prompts, pad_id, device)
    positions = (mask.cumsum(-1) - 1).clamp_min(0)  # [B, P] real positions despite the left padding
    cache = DynamicCache(config=model.config)
    gens = _generators(seeds, device)
    stops = torch.as_tensor(list(stop_ids), dtype=torch.long, device=device)
    logits = _forward(model, ids, mask, positions, cache)
    done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    out = []
    for _ in range(cfg.max_new_tokens):
        tok = torch.where(done, pad_id, _draw(_filter(logits, cfg), gens))  # [B]
        out.append(tok)
        done |= torch.isin(tok, stops)
        if bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)  # a stopped row's outputs are unused
        positions = positions[:, -1:] + 1
        logits = _forward(model, tok[:, None], mask, positions, cache)
    model.train(was)
    drawn = torch.stack(out, dim=1).cpu().numpy() if out else np.zeros((len(prompts), 0), np.int64)  # [B, N]
    return [_until_stop(row, set(int(s) for s in stop_ids)) for row in drawn]


def _until_stop(row: np.ndarray, stops: set[int]) -> np.ndarray:
    """The row up to and including its first stop id."""
    for i, t in enumerate(row.tolist()):
        if t in stops:
            return row[: i + 1].astype(np.int64)
    return row.astype(np.int64)
