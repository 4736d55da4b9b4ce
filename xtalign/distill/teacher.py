"""The teacher worker: one forward of a teacher model into `TeacherTopK`, without full-vocabulary logits.

The model body gives the final hidden states; the LM head then runs over slices of at most
`head_slice` flattened positions, and each `[slice, V]` block is reduced at once to its top-k raw
logits, the logsumexp of logits/T over all embedding rows and the log-prob of the target. Peak
memory is the model plus one `[slice, V]` block instead of `[B, T, V]` (a 262k-row head at 4×512
positions is 2.1 GB of fp32 logits). Inputs and outputs are plain numpy / CPU tensors, so a worker
can live in another process.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import numpy as np
import torch
from torch import Tensor

from xtalign.distill.config import TeacherConfig
from xtalign.distill.models import LoadedModel, load_model
from xtalign.losses import TeacherTopK

__all__ = ["TeacherWorker"]

log = logging.getLogger(__name__)


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
    """Runs one teacher: `forward(ids, lengths, targets) -> TeacherTopK` on CPU.

    The constructor takes a `LoadedModel` plus plain values (see `from_config` to load one in place).
    """

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

    @classmethod
    def from_config(cls, cfg: TeacherConfig, *, seed: int = 0, device: str = "cpu",
                    dtype: torch.dtype = torch.float32, autocast_dtype: torch.dtype | None = None) -> TeacherWorker:
        """Load the teacher a `TeacherConfig` names (for use inside a worker process)."""
        loaded = load_model(model=cfg.model, tokenizer=cfg.tokenizer, arch=cfg.arch,
                            trust_remote_code=cfg.trust_remote_code, seed=seed, device=device, dtype=dtype)
        return cls(loaded, top_k=cfg.top_k, temperature=cfg.temperature, head_slice=cfg.head_slice, device=device,
                   autocast_dtype=autocast_dtype)

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

    def _reduce_slice(self, h: Tensor, tgt: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """One slice of positions → (top-k raw logits, ids, logsumexp(z/T), target log-prob); [S, K] ×2, [S] ×2."""
        with self._autocast():
            z = self.head(h)  # [S, V]
        z = z.float()
        if self.softcap is not None:
            z = torch.tanh(z / self.softcap) * self.softcap  # [S, V]
        top = torch.topk(z, self.top_k, dim=-1)  # [S, K]
        zt = z if self.temperature == 1.0 else z / self.temperature  # [S, V]
        lse = torch.logsumexp(zt, dim=-1)  # [S]
        keep = tgt >= 0  # [S]
        picked = zt.gather(-1, tgt.clamp_min(0).unsqueeze(-1)).squeeze(-1)  # [S]
        return top.values, top.indices, lse, torch.where(keep, picked - lse, 0.0)

    @torch.no_grad()  # not inference_mode: the outputs later meet the student's autograd graph
    def forward(self, ids: np.ndarray, lengths: np.ndarray, targets: np.ndarray) -> TeacherTopK:
        """ids/targets `[B, T]` int64 (-1 padded / -100 ignored), lengths `[B]` → `TeacherTopK` on CPU."""
        ids, lengths, targets = np.asarray(ids), np.asarray(lengths), np.asarray(targets)
        _check_inputs(ids, lengths, targets, self.loaded.rows)
        b, t = ids.shape
        k = self.top_k
        tids = torch.as_tensor(ids, dtype=torch.long, device=self.device).clamp_min(0)  # [B, T]
        mask = torch.arange(t, device=self.device)[None, :] < torch.as_tensor(lengths, device=self.device)[:, None]
        with self._autocast():
            hidden = self._hidden(tids, mask).reshape(b * t, -1)  # [B·T, H]
        tgt = torch.as_tensor(targets, dtype=torch.long, device=self.device).reshape(b * t)  # [B·T]
        tgt = torch.where(mask.reshape(-1), tgt, -100)  # padded positions predict nothing
        logits = torch.empty(b * t, k, dtype=torch.bfloat16)  # [B·T, K]
        top_ids = torch.empty(b * t, k, dtype=torch.int32)  # [B·T, K]
        lse = torch.empty(b * t, dtype=torch.float32)  # [B·T]
        tlp = torch.empty(b * t, dtype=torch.float32)  # [B·T]
        for s in range(0, b * t, self.head_slice):
            e = min(s + self.head_slice, b * t)
            vals, idx, ls, tl = self._reduce_slice(hidden[s:e], tgt[s:e])
            logits[s:e], top_ids[s:e], lse[s:e], tlp[s:e] = vals.cpu(), idx.cpu(), ls.cpu(), tl.cpu()
        return TeacherTopK(logits=logits.reshape(b, t, k), ids=top_ids.reshape(b, t, k), logsumexp=lse.reshape(b, t),
                           vocab_size=self.loaded.rows, temperature=self.temperature,
                           target_logprob=tlp.reshape(b, t))
