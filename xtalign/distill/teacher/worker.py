"""The teacher worker: one forward of a teacher model into `TeacherTopK`, without full-vocabulary logits.

The model body gives the final hidden states; the LM head then runs over slices of at most
`head_slice` flattened positions, and each `[slice, V]` block is reduced at once to its top-k raw
logits, the logsumexp of logits/T over all embedding rows and the log-prob of the target. Peak
memory is the model plus one `[slice, V]` block instead of `[B, T, V]` (a 262k-row head at 4×512
positions is 2.1 GB of fp32 logits). Inputs are numpy; the answer stays on the worker's device until it
crosses a boundary (the cache writer, or `wire.pack_topk` for another process).
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch
from torch import Tensor

from xtalign.distill.models.load import LoadedModel
from xtalign.losses import TeacherTopK

__all__ = ["TeacherWorker"]



def _softcap(config: Any) -> float | None:
    """Gemma-style final logit soft-capping (`cap·tanh(z/cap)`), when the config sets one."""
    cap = getattr(config, "final_logit_softcapping", None)
    if cap is None and hasattr(config, "get_text_config"):
        cap = getattr(config.get_text_config(), "final_logit_softcapping", None)
    return float(cap) if cap else None


def _body(model: Any) -> Any:
    """The decoder stack that returns final (normed) hidden states: `model.model` for Llama/Gemma3/Qwen."""
    body = model.get_decoder() if hasattr(model, "get_decoder") else None
    if body is None or body is model:
        body = getattr(model, "base_model", None)
    if body is None or body is model:
        raise ValueError(f"{type(model).__name__}: cannot find the decoder body (no get_decoder()/base_model)")
    return body


def _check_inputs(ids: np.ndarray, lengths: np.ndarray, targets: np.ndarray, rows: int) -> None:
    if ids.ndim != 2 or targets.shape != ids.shape or lengths.shape != (ids.shape[0],):
        raise ValueError(f"teacher forward: ids and targets must be [B, T] and lengths [B]; got {ids.shape}, "
                         f"{targets.shape}, {lengths.shape}")
    if lengths.size and (lengths.min() < 0 or lengths.max() > ids.shape[1]):
        raise ValueError(f"teacher forward: lengths must lie in [0, {ids.shape[1]}]; "
                         f"got {lengths.min()}..{lengths.max()}")
    valid = np.arange(ids.shape[1])[None, :] < lengths[:, None]  # [B, T]
    real = ids[valid]
    if real.size and (real.min() < 0 or real.max() >= rows):
        raise ValueError(f"teacher forward: token ids must lie in [0, {rows}) within lengths; got "
                         f"{real.min()}..{real.max()} (is this the teacher's own tokenization?)")
    tgt = targets[targets >= 0]
    if tgt.size and tgt.max() >= rows:
        raise ValueError(f"teacher forward: target id {tgt.max()} is out of range for {rows} embedding rows")


class TeacherWorker:
    """Runs one teacher: `forward(ids, lengths, targets) -> TeacherTopK` on its own device, and
    `likelihood` (exact target log-probs at T = 1, for bits per byte)."""

    def __init__(self, loaded: LoadedModel, *, top_k: int, temperature: float, head_slice: int = 512,
                 device: str = "cpu", autocast_dtype: torch.dtype | None = None) -> None:
        if top_k < 1 or head_slice < 1 or not temperature > 0:
            raise ValueError(f"TeacherWorker: top_k and head_slice must be >= 1 and temperature > 0; got "
                             f"top_k={top_k}, head_slice={head_slice}, temperature={temperature}")
        self.loaded = loaded
        self.top_k = min(int(top_k), loaded.rows)
        self.temperature = float(temperature)
        self.head_slice = int(head_slice)
        self.device = torch.device(device)
        self.autocast_dtype = autocast_dtype
        self.model = loaded.model.to(self.device).eval()
        self.body = _body(self.model)
        self.head = self.model.get_output_embeddings()
        self.softcap = _softcap(self.model.config)

    def info(self) -> dict[str, Any]:
        tok = self.loaded.tokenizer
        return {"rows": self.loaded.rows, "fingerprint": self.loaded.fingerprint,
                "tokenizer": tok.name, "tokenizer_fingerprint": tok.vocab.fingerprint,
                "k": self.top_k, "temperature": self.temperature, "head_slice": self.head_slice,
                "source": self.loaded.source}

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def _hidden(self, ids: Tensor, mask: Tensor) -> Tensor:
        """Final hidden states of the body, zeroed at padding so every padded output stays finite."""
        out = self.body(input_ids=ids, attention_mask=mask.long(), use_cache=False)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]  # [B, T, H]
        return hidden.masked_fill(~mask.unsqueeze(-1), 0.0)

    def _logits(self, h: Tensor) -> Tensor:
        """One slice's fp32 logits ``[S, V]`` (soft-capped where the model caps them)."""
        with self._autocast():
            z = self.head(h)  # [S, V]
        z = z.float()
        if self.softcap is not None:
            z = torch.tanh(z / self.softcap) * self.softcap  # [S, V]
        return z

    def _reduce_slice(self, h: Tensor, tgt: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One slice of positions → (top-k raw logits, ids, logsumexp(z/T), target log-prob); [S, K] ×2, [S] ×2."""
        z = self._logits(h)  # [S, V]
        top = torch.topk(z, self.top_k, dim=-1)  # [S, K]
        zt = z if self.temperature == 1.0 else z / self.temperature  # [S, V]
        lse = torch.logsumexp(zt, dim=-1)  # [S]
        keep = tgt >= 0  # [S]
        picked = zt.gather(-1, tgt.clamp_min(0).unsqueeze(-1)).squeeze(-1)  # [S]
        return top.values.to(torch.bfloat16), top.indices.to(torch.int32), lse, torch.where(keep, picked - lse, 0.0)

    def _inputs(self, ids: np.ndarray, lengths: np.ndarray, targets: np.ndarray) -> tuple[Tensor, Tensor, Tensor]:
        """Checked inputs on the device: hidden states ``[B·T, H]``, targets ``[B·T]`` (-100 at padding), mask."""
        ids, lengths, targets = np.asarray(ids), np.asarray(lengths), np.asarray(targets)
        _check_inputs(ids, lengths, targets, self.loaded.rows)
        b, t = ids.shape
        tids = torch.as_tensor(ids, dtype=torch.long, device=self.device).clamp_min(0)  # [B, T]
        mask = torch.arange(t, device=self.device)[None, :] < torch.as_tensor(lengths, device=self.device)[:, None]
        with self._autocast():
            hidden = self._hidden(tids, mask).reshape(b * t, -1)  # [B·T, H]
        tgt = torch.as_tensor(targets, dtype=torch.long, device=self.device).reshape(b * t)  # [B·T]
        return hidden, torch.where(mask.reshape(-1), tgt, -100), mask  # padded positions predict nothing

    @torch.no_grad()  # not inference_mode: the outputs later meet the student's autograd graph
    def forward(self, ids: np.ndarray, lengths: np.ndarray, targets: np.ndarray) -> TeacherTopK:
        """ids/targets `[B, T]` int64 (-1 padded / -100 ignored), lengths `[B]` → `TeacherTopK` on this device."""
        hidden, tgt, mask = self._inputs(ids, lengths, targets)
        (b, t), k, n = mask.shape, self.top_k, hidden.shape[0]
        logits = torch.empty(n, k, dtype=torch.bfloat16, device=self.device)  # [B·T, K]
        top_ids = torch.empty(n, k, dtype=torch.int32, device=self.device)  # [B·T, K]
        lse = torch.empty(n, dtype=torch.float32, device=self.device)  # [B·T]
        tlp = torch.empty(n, dtype=torch.float32, device=self.device)  # [B·T]
        for s in range(0, n, self.head_slice):
            e = min(s + self.head_slice, n)
            logits[s:e], top_ids[s:e], lse[s:e], tlp[s:e] = self._reduce_slice(hidden[s:e], tgt[s:e])
        return TeacherTopK(logits=logits.reshape(b, t, k), ids=top_ids.reshape(b, t, k), logsumexp=lse.reshape(b, t),
                           vocab_size=self.loaded.rows, temperature=self.temperature,
                           target_logprob=tlp.reshape(b, t))

    @torch.no_grad()
    def likelihood(self, ids: np.ndarray, lengths: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """``[B, T]`` float32 exact log-prob of each target at temperature 1 (0 where ignored), on the host."""
        hidden, tgt, mask = self._inputs(ids, lengths, targets)
        out = torch.zeros(hidden.shape[0], dtype=torch.float32, device=self.device)  # [B·T]
        for s in range(0, hidden.shape[0], self.head_slice):
            e = min(s + self.head_slice, hidden.shape[0])
            z = self._logits(hidden[s:e])  # [S, V]
            picked = z.gather(-1, tgt[s:e].clamp_min(0).unsqueeze(-1)).squeeze(-1) - torch.logsumexp(z, dim=-1)
            out[s:e] = torch.where(tgt[s:e] >= 0, picked, 0.0)
        return out.reshape(mask.shape).cpu().numpy()
