"""The student worker: forward, every teacher's KD term, CE, loss scaling, backward, clip, step.

It owns its device: it takes numpy batches and teacher answers wherever they lie, moves each input to its
device once, and answers with plain numbers (`StepStats`, numpy NLL). The same class runs in the loop's
process (`backend: local`) and inside each Ray rank; it implements `xtalign.distill.protocols.Student`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from xtalign.distill.checkpoint import load_checkpoint, save_checkpoint
from xtalign.distill.config import CombineConfig, OptimConfig, PolicyConfig, ScheduleConfig
from xtalign.distill.data.batch import IGNORE, Batch
from xtalign.distill.export import export_hf
from xtalign.distill.protocols import MicroBatch, StepStats, merge_stats
from xtalign.distill.rollout.sampling import SamplingConfig, sample
from xtalign.distill.student.kd import build_multi, build_term, kd_terms, on_device, route_combine, teacher_scores
from xtalign.distill.student.metrics import accuracy_counts, agreement_counts, peak_memory_mb
from xtalign.distill.student.optim import build_optimizer
from xtalign.distill.student.parallel import Parallel
from xtalign.distill.student.plans import TeacherPlan
from xtalign.distill.student.policy import data_rows_only, policy_figures, policy_term, rkl_figures
from xtalign.distill.student.sliced import StudentForward, sliced_terms, use_slices, vocab_size_of
from xtalign.losses import LossCombiner, ScalingConfig, TeacherTopK
from xtalign.losses.kl import next_token_ce
from xtalign.losses.sliced import SlicedOutput

__all__ = ["StudentWorker"]


@dataclass
class _Micro:
    """One micro-batch's student tensors on the student device."""

    ids: Tensor  # [B, Ts] padded with 0
    mask: Tensor  # [B, Ts] attention mask
    targets: Tensor  # [B, Ts] IGNORE where none


def _micro(batch: Batch, device: torch.device) -> _Micro:
    ids = on_device(batch.student_ids, device)
    return _Micro(ids=ids.clamp_min(0), mask=(ids >= 0).long(), targets=on_device(batch.student_targets, device))


class StudentWorker:
    """Holds the student model, its optimiser and scheduler, and one KD term per teacher."""

    def __init__(self, model: nn.Module, *, plans: Sequence[TeacherPlan], optim: OptimConfig,
                 schedule: ScheduleConfig, combine: CombineConfig, total_steps: int, device: str = "cpu",
                 autocast_dtype: torch.dtype | None = None, tokenizer: Any = None, sharding: str = "ddp",
                 chat_template: str | None = None, policy: PolicyConfig | None = None,
                 loss_slice: int | None = None) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.model.train()
        self.tokenizer, self.chat_template = tokenizer, chat_template
        self.loss_slice = loss_slice
        self.forward = StudentForward(self.model, loss_slice or None)
        self.parallel = Parallel(self.model, sharding, self.forward)
        self.vocab_size = vocab_size_of(self.model)
        self.autocast_dtype = autocast_dtype
        self.grad_clip = optim.grad_clip
        self.terms = [build_term(p, self.device) for p in plans]
        self.optimizer, self.scheduler = build_optimizer(self.model, self.terms, optim, schedule, total_steps)
        self.combiner = LossCombiner(ScalingConfig(mode=combine.scaling, kd_weight=combine.kd_weight,
                                                   ce_weight=combine.ce_weight))
        self.multi = build_multi(plans, combine)
        self.score = combine.score
        self.policy = policy or PolicyConfig()
        self.labels = [p.label for p in plans]

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.autocast_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _logits(self, m: _Micro, *, train: bool = True) -> Tensor:
        with self._autocast():
            if self.parallel.fsdp:  # the sharded model itself
                return self.model(input_ids=m.ids, attention_mask=m.mask).logits.float()  # [B, Ts, V_s]
            model = self.parallel.forward_model if train else self.forward  # DDP's wrapper only where grads sync
            return model(m.ids, m.mask).float()  # [B, Ts, V_s]

    def _sliced(self, m: _Micro, batch: Batch, has_ce: bool) -> bool:
        """Whether this micro-batch's losses are computed over slices of positions (see `student.sliced`)."""
        if self.parallel.fsdp or (batch.policy_rows is not None and bool(batch.policy_rows.any())):
            return False
        if not has_ce and not self.terms:
            return False
        return use_slices(self.loss_slice, int(m.ids.shape[0]), int(m.ids.shape[1]), self.vocab_size)

    def _sliced_losses(self, m: _Micro, batch: Batch, teachers: Sequence[TeacherTopK], has_ce: bool
                       ) -> SlicedOutput:
        terms = sliced_terms(self.terms, batch.teachers, teachers, self.device)
        with self._autocast():
            return self.parallel.forward_model(m.ids, m.mask, targets=m.targets if has_ce else None, terms=terms)

    def _terms(self, logits: Tensor, batch: Batch, teachers: Sequence[TeacherTopK]
               ) -> tuple[list[Tensor], dict[str, float] | None]:
        """Each teacher's KD term: its configured loss, or on sample rows the reverse-KL policy gradient; with the
        latter also the reverse-KL figures it computed on the way (None: not computed)."""
        samples = batch.policy_rows is not None and bool(batch.policy_rows.any())
        if not samples or self.policy.objective != "reverse_kl":
            return kd_terms(self.terms, logits, batch.teachers, teachers, self.device), None
        share = float(batch.policy_rows.mean())  # type: ignore[union-attr]
        pg = [policy_term(logits, batch, side, t, discount=self.policy.discount, device=self.device)
              for side, t in zip(batch.teachers, teachers, strict=True)]
        figs = rkl_figures([f for _, f in pg], self.labels)
        if share == 1.0:
            return [g for g, _ in pg], figs
        data = kd_terms(self.terms, logits, [data_rows_only(s, batch) for s in batch.teachers], teachers, self.device)
        return [(1 - share) * d + share * g for d, (g, _) in zip(data, pg, strict=True)], figs

    def _kd(self, terms: Sequence[Tensor], ce: Tensor, batch: Batch, teachers: Sequence[TeacherTopK]
            ) -> tuple[Tensor, dict[str, Any]]:
        """The combined KD loss and its figures (each term, the teachers' weights, the dynamic scale)."""
        if self.multi is None:  # combine.multi: route
            kd, weights = route_combine(terms, batch.route)
        else:
            kd, weights = self.multi(terms, teacher_scores(self.multi, self.score, batch.teachers, teachers,
                                                           self.device))
        mag = float(kd.detach().abs())
        scale = float(ce.detach()) / mag if self.combiner.config.mode == "dynamic" and mag else 1.0
        return kd, {"kd": tuple(float(t.detach()) for t in terms), "kd_total": float(kd.detach()),
                    "teacher_weights": tuple(float(x) for x in weights), "loss_scale": scale}

    def _micro_step(self, batch: Batch, teachers: Sequence[TeacherTopK], scale: float) -> StepStats:
        m = _micro(batch, self.device)
        has_ce = bool((m.targets != IGNORE).any())  # an on-policy batch of samples only has no CE target
        parts: dict[str, Any] = {}
        if self._sliced(m, batch, has_ce):
            out = self._sliced_losses(m, batch, teachers, has_ce)
            ce = out.ce if out.ce is not None else torch.zeros((), device=self.device)
            terms, top = list(out.kd), out.argmax  # top: [B, Ts], -1 where no loss reads
        else:
            logits = self._logits(m)
            ce = next_token_ce(logits, m.targets, ignore_index=IGNORE) if has_ce else logits.sum() * 0.0
            terms, figs = self._terms(logits, batch, teachers) if self.terms else ([], None)
            top = logits.detach().argmax(-1)  # [B, Ts]
            if batch.policy_rows is not None and bool(batch.policy_rows.any()):
                parts["extra"] = figs if figs is not None else policy_figures(logits, batch, batch.teachers, teachers,
                                                                               self.labels, self.device)
        loss = ce
        if self.terms:
            kd, kd_parts = self._kd(terms, ce, batch, teachers)
            parts.update(kd_parts)
            loss = self.combiner(kd, ce) if has_ce else kd
        (loss * scale).backward()
        acc_hits, acc_n = accuracy_counts(top, m.targets)
        agree_hits, agree_n = agreement_counts(top, batch.teachers, teachers, self.terms)
        return StepStats(loss=float(loss.detach()), ce=float(ce.detach()), acc_hits=acc_hits, acc_n=acc_n,
                         agree_hits=agree_hits, agree_n=agree_n, **parts)

    def train_step(self, micro: Sequence[MicroBatch]) -> StepStats:
        """One optimiser step over `micro`, each teacher answer taken where it lies (see `train_on`)."""
        return self.train_on([(batch, [a.topk() for a in answers]) for batch, answers in micro])

    def train_on(self, micro: Sequence[tuple[Batch, Sequence[TeacherTopK]]]) -> StepStats:
        """One optimiser step over micro-batches whose teacher answers are at hand (gradient accumulation); each
        answer moves to this device once (no copy when it is already here)."""
        self.optimizer.zero_grad(set_to_none=True)
        per = []
        for i, (batch, teachers) in enumerate(micro):
            with self.parallel.sync_context(last=i == len(micro) - 1):
                per.append(self._micro_step(batch, [t.to(self.device) for t in teachers], 1.0 / len(micro)))
        self.parallel.average_learnable(self.terms)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        if self.grad_clip > 0:
            norm = float(torch.nn.utils.clip_grad_norm_(params, self.grad_clip))
        else:
            norm = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None])))
        lr = float(self.optimizer.param_groups[0]["lr"])
        self.optimizer.step()
        self.scheduler.step()
        return merge_stats(per, grad_norm=norm, lr=lr, peak_memory_mb=peak_memory_mb(self.device))

    def generate(self, prompts: Sequence[np.ndarray], *, seeds: Sequence[int], cfg: SamplingConfig,
                 stop_ids: Sequence[int], pad_id: int) -> list[np.ndarray]:
        """The student's sampled continuation of each prompt (its own model, on its device, seeded per row)."""
        return sample(self.model, prompts, cfg=cfg, stop_ids=stop_ids, seeds=seeds, pad_id=pad_id)

    @torch.no_grad()
    def token_nll(self, batch: Batch) -> np.ndarray:
        """``[B, Ts]`` float64 nats of each token given the ones before (column 0 and padding: nan)."""
        m = _micro(batch, self.device)
        was = self.model.training
        self.model.eval()
        if not self.parallel.fsdp and use_slices(self.loss_slice, *m.ids.shape, self.vocab_size):
            with self._autocast():
                nll = self.forward.token_nll(m.ids, m.mask, m.targets)  # [B, Ts] at position p: token p+1
        else:
            logits = self._logits(m, train=False)  # [B, Ts, V]
            lp = torch.log_softmax(logits.double(), dim=-1)  # [B, Ts, V]
            nll = -lp.gather(-1, m.targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)  # [B, Ts]: token p+1
            nll = torch.where(m.targets != IGNORE, nll, float("nan"))
        self.model.train(was)
        out = torch.full_like(nll, float("nan"))
        out[:, 1:] = nll[:, :-1]  # re-index by the predicted token
        return out.cpu().numpy()

    def projections(self) -> list[tuple[np.ndarray, np.ndarray] | None]:
        """Current (indices, weights) of each learnable W (None for fixed ones)."""
        out: list[tuple[np.ndarray, np.ndarray] | None] = []
        for term in self.terms:
            learn = term.learnable
            with torch.no_grad():
                out.append(None if learn is None else (learn.indices.cpu().numpy(), learn().float().cpu().numpy()))
        return out

    def _extra_tensors(self) -> dict[str, Tensor]:
        """State beyond model/optimiser/scheduler that a checkpoint must carry (learnable W logits)."""
        return {f"projection.{i}.logits": t.learnable.logits.detach().cpu().clone()
                for i, t in enumerate(self.terms) if t.learnable is not None}

    def save_checkpoint(self, run_dir: Path, step: int, state: dict[str, Any], keep_last: int) -> Path:
        """Model, optimiser, scheduler, RNG and learnable W, with the loop's `state` (cursor, counts); rank 0
        writes (every rank must call this: FSDP2 gathers the shards)."""
        model, optimizer = self.parallel.full_state(self.optimizer)
        if self.parallel.rank != 0:
            return Path()
        tensors = {"rng.torch": torch.get_rng_state(), **self._extra_tensors()}
        return save_checkpoint(Path(run_dir), step, model=model, optimizer=optimizer, scheduler=self.scheduler,
                               tensors=tensors, state=state, keep_last=keep_last)

    def restore(self, path: Path) -> dict[str, Any]:
        """Load a checkpoint into this worker; returns the loop state saved with it."""
        ck = load_checkpoint(Path(path))
        self.parallel.load_state(self.optimizer, ck.model, ck.optimizer_state)
        self.scheduler.load_state_dict(ck.scheduler_state)
        for i, term in enumerate(self.terms):
            if term.learnable is not None:
                with torch.no_grad():
                    term.learnable.logits.copy_(ck.tensors[f"projection.{i}.logits"])
        torch.set_rng_state(ck.tensors["rng.torch"])
        return ck.state

    def export_model(self, out_dir: Path) -> Path:
        """The student as a Hugging Face folder; rank 0 writes (every rank must call this under FSDP2)."""
        state = self.parallel.full_state(self.optimizer)[0] if self.parallel.fsdp else None
        if self.parallel.rank != 0:
            return Path()
        return export_hf(self.model, self.tokenizer, Path(out_dir), overwrite=True, state_dict=state,
                         chat_template=self.chat_template)

    def close(self) -> None:
        return None
