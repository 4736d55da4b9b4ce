"""The student worker: forward, every teacher's KD term, CE, loss scaling, backward, clip, step.

A plain class with typed methods and no assumption that it shares a process with the loop: it takes
numpy batches and CPU `TeacherTopK`s, moves them to its own device, and answers with plain floats.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from xtalign.distill.batch import IGNORE, Batch
from xtalign.distill.config import CombineConfig, OptimConfig, ScheduleConfig
from xtalign.distill.losses import TeacherPlan, build_loss
from xtalign.losses import LossCombiner, MultiTeacher, MultiTeacherConfig, ScalingConfig, TeacherTopK, teacher_score
from xtalign.losses.kl import next_token_ce

__all__ = ["StudentWorker", "lr_lambda"]


def lr_lambda(schedule: ScheduleConfig, total_steps: int) -> Any:
    """Multiplier of the base lr at optimiser step `s` (0-based): linear warm-up, then cosine or constant."""
    warm, floor = schedule.warmup_steps, schedule.min_lr_ratio

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if schedule.kind == "constant":
            return 1.0
        span = max(1, total_steps - warm)
        progress = min(1.0, (step - warm) / span)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def _tensor(a: np.ndarray, device: torch.device) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).to(device)


@dataclass
class _Micro:
    """One micro-batch's tensors on the student device."""

    ids: Tensor  # [B, Ts] padded with 0
    mask: Tensor  # [B, Ts] attention mask
    targets: Tensor  # [B, Ts] IGNORE where none


def _micro(batch: Batch, device: torch.device) -> _Micro:
    ids = _tensor(batch.student_ids, device)
    mask = ids >= 0
    return _Micro(ids=ids.clamp_min(0), mask=mask.long(), targets=_tensor(batch.student_targets, device))


class StudentWorker:
    """Holds the student model, its optimiser and scheduler, and one loss per teacher."""

    def __init__(self, model: nn.Module, *, plans: Sequence[TeacherPlan], optim: OptimConfig,
                 schedule: ScheduleConfig, combine: CombineConfig, total_steps: int, device: str = "cpu",
                 autocast_dtype: torch.dtype | None = None, tokenizer: Any = None, sharding: str = "ddp") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.model.train()
        self.tokenizer = tokenizer
        self.world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        self.rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        self.fsdp = self.world > 1 and sharding == "fsdp"
        self.forward_model: nn.Module = self.model
        if self.fsdp:  # FSDP2: every decoder layer and the rest are sharded across ranks, in place
            _fully_shard(self.model)
        elif self.world > 1:  # data-parallel: DDP averages the model's gradients across ranks
            from torch.nn.parallel import DistributedDataParallel

            self.forward_model = DistributedDataParallel(self.model, broadcast_buffers=False)
        self.plans = list(plans)
        self.autocast_dtype = autocast_dtype
        self.grad_clip = optim.grad_clip
        built = [build_loss(p, self.device) for p in self.plans]
        self.losses = [b[0] for b in built]
        self.best_columns = [_best_columns(p, self.device) for p in self.plans]  # fixed W: computed once
        self.learnable = [b[1] for b in built]
        groups: list[dict[str, Any]] = [{"params": [p for p in self.model.parameters() if p.requires_grad]}]
        for plan, learn in zip(self.plans, self.learnable, strict=True):
            if learn is not None:
                groups.append({"params": list(learn.parameters()), "lr": plan.projection_lr})
        self.optimizer = torch.optim.AdamW(groups, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps,
                                           weight_decay=optim.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(schedule, total_steps))
        self.combiner = LossCombiner(ScalingConfig(mode=combine.scaling, kd_weight=combine.kd_weight,
                                                   ce_weight=combine.ce_weight))
        self.multi = self._multi(combine)
        self.score = combine.score

    def _multi(self, combine: CombineConfig) -> MultiTeacher | None:
        if not self.plans:
            return None
        n = len(self.plans)
        if combine.multi == "sum":
            total = sum(p.weight for p in self.plans)
            weights = tuple(p.weight / total for p in self.plans)
            return MultiTeacherConfig(mode="sum", n_teachers=n, weights=weights).build()
        return MultiTeacherConfig(mode=combine.multi, n_teachers=n, score=combine.score, alpha=combine.alpha).build()

    def _autocast(self) -> Any:
        if self.autocast_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _logits(self, m: _Micro, *, train: bool = True) -> Tensor:
        model = self.forward_model if train else self.model  # DDP's wrapper only where gradients sync
        with self._autocast():
            out = model(input_ids=m.ids, attention_mask=m.mask)
        return out.logits.float()  # [B, Ts, V_s]

    def _kd_terms(self, logits: Tensor, batch: Batch, teachers: Sequence[TeacherTopK]) -> list[Tensor]:
        terms = []
        for loss, side, out in zip(self.losses, batch.teachers, teachers, strict=True):
            if side.same_vocab:
                keep = _tensor(side.targets, self.device) != IGNORE  # [B, Ts]
                terms.append(loss(logits, out, keep))
            else:
                s_chunk = _tensor(side.student_chunk, self.device)
                t_chunk = _tensor(side.teacher_chunk, self.device)
                terms.append(loss(logits, out, s_chunk, t_chunk))
        return terms

    def _scores(self, batch: Batch, teachers: Sequence[TeacherTopK]) -> Tensor | None:
        if self.multi is None or self.multi.config.mode == "sum":
            return None
        vals = [teacher_score(out, self.score, _tensor(side.targets, self.device) != IGNORE)
                for side, out in zip(batch.teachers, teachers, strict=True)]
        return torch.stack(vals)

    def _micro_step(self, batch: Batch, teachers: Sequence[TeacherTopK], scale: float) -> dict[str, Any]:
        m = _micro(batch, self.device)
        teachers = [t.to(self.device) for t in teachers]
        logits = self._logits(m)
        ce = next_token_ce(logits, m.targets, ignore_index=IGNORE)
        stats: dict[str, Any] = {"ce": float(ce.detach())}
        if self.multi is not None:
            terms = self._kd_terms(logits, batch, teachers)
            kd, w = self.multi(terms, self._scores(batch, teachers))
            loss = self.combiner(kd, ce)
            mag = float(kd.detach().abs())
            stats.update(kd=[float(t.detach()) for t in terms], kd_total=float(kd.detach()),
                         teacher_weights=[float(x) for x in w],
                         loss_scale=float(ce.detach()) / mag if self.combiner.config.mode == "dynamic" and mag else 1.0)
        else:
            loss = ce
        (loss * scale).backward()
        stats["loss"] = float(loss.detach())
        stats.update(self._agreement(logits.detach(), m, batch, teachers))
        return stats

    def _agreement(self, logits: Tensor, m: _Micro, batch: Batch, teachers: Sequence[TeacherTopK]) -> dict[str, Any]:
        top = logits.argmax(-1)  # [B, Ts]
        keep = m.targets != IGNORE
        hits, n = int(((top == m.targets) & keep).sum()), int(keep.sum())
        agree = [_teacher_agreement(top, side, out, best)
                 for side, out, best in zip(batch.teachers, teachers, self.best_columns, strict=True)]
        return {"acc_hits": hits, "acc_n": n, "agree": agree}

    def _accumulate(self, micro: Sequence[tuple[Batch, Sequence[TeacherTopK]]]) -> list[dict[str, Any]]:
        """Forward/backward every micro-batch; under DDP gradients are synchronised on the last one only."""
        per = []
        for i, (b, t) in enumerate(micro):
            last = i == len(micro) - 1
            plain = last or self.world == 1 or self.fsdp  # FSDP2 reduce-scatters every backward
            sync = contextlib.nullcontext() if plain else self.forward_model.no_sync()
            with sync:
                per.append(self._micro_step(b, t, 1.0 / len(micro)))
        if self.world > 1:  # a learnable W sits outside DDP: average its gradients by hand
            for learn in self.learnable:
                for p in learn.parameters() if learn is not None else ():
                    if p.grad is not None:
                        torch.distributed.all_reduce(p.grad)
                        p.grad /= self.world
        return per

    def train_step(self, micro: Sequence[tuple[Batch, Sequence[TeacherTopK]]]) -> dict[str, Any]:
        """One optimiser step over `micro` (gradient accumulation); returns plain metrics."""
        self.optimizer.zero_grad(set_to_none=True)
        per = self._accumulate(micro)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        if self.grad_clip > 0:
            norm = float(torch.nn.utils.clip_grad_norm_(params, self.grad_clip))
        else:
            norm = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None])))
        lr = float(self.optimizer.param_groups[0]["lr"])
        self.optimizer.step()
        self.scheduler.step()
        return _merge(per, grad_norm=norm, lr=lr)

    @torch.no_grad()
    def token_nll(self, batch: Batch) -> np.ndarray:
        """``[B, Ts]`` float64 nats of each token given the ones before (column 0 and padding: nan)."""
        m = _micro(batch, self.device)
        was = self.model.training
        self.model.eval()
        logits = self._logits(m, train=False)  # [B, Ts, V]
        self.model.train(was)
        lp = torch.log_softmax(logits.double(), dim=-1)  # [B, Ts, V]
        safe = m.targets.clamp_min(0)
        nll = -lp.gather(-1, safe.unsqueeze(-1)).squeeze(-1)  # [B, Ts] at position p: token p+1
        nll = torch.where(m.targets != IGNORE, nll, float("nan"))
        out = torch.full_like(nll, float("nan"))
        out[:, 1:] = nll[:, :-1]  # re-index by the predicted token
        return out.cpu().numpy()

    def projections(self) -> list[tuple[np.ndarray, np.ndarray] | None]:
        """Current (indices, weights) of each learnable W (None for fixed ones)."""
        out: list[tuple[np.ndarray, np.ndarray] | None] = []
        for learn in self.learnable:
            if learn is None:
                out.append(None)
                continue
            with torch.no_grad():
                out.append((learn.indices.cpu().numpy(), learn().float().cpu().numpy()))
        return out

    def extra_tensors(self) -> dict[str, Tensor]:
        """State beyond model/optimiser/scheduler that a checkpoint must carry (learnable W logits)."""
        return {f"projection.{i}.logits": learn.logits.detach().cpu().clone()
                for i, learn in enumerate(self.learnable) if learn is not None}

    def load_extra_tensors(self, tensors: dict[str, Tensor]) -> None:
        for i, learn in enumerate(self.learnable):
            if learn is not None:
                with torch.no_grad():
                    learn.logits.copy_(tensors[f"projection.{i}.logits"])

    def peak_memory_mb(self) -> float:
        """Peak memory of this worker's process: CUDA allocations on a GPU, max RSS on CPU."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def _full_state(self) -> tuple[dict[str, Tensor], Any]:
        """Model and optimiser state as one rank would hold them (gathered from every rank under FSDP2;
        all ranks must call this together)."""
        if not self.fsdp:
            return self.model.state_dict(), self.optimizer
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model = get_model_state_dict(self.model, options=opts)
        optim = get_optimizer_state_dict(self.model, self.optimizer, options=opts)
        return model, _Holder(optim)

    def save_checkpoint(self, run_dir: str | Path, step: int, state: dict[str, Any], keep_last: int) -> str:
        """Model, optimiser, scheduler, RNG and learnable W, with the loop's `state` (cursor, counts); rank 0
        writes (every rank must call this: FSDP2 gathers the shards)."""
        from xtalign.distill.checkpoint import save_checkpoint

        model, optimizer = self._full_state()
        if self.rank != 0:
            return ""
        tensors = {"rng.torch": torch.get_rng_state(), **self.extra_tensors()}
        path = save_checkpoint(Path(run_dir), step, model=model, optimizer=optimizer,
                               scheduler=self.scheduler, tensors=tensors, state=state, keep_last=keep_last)
        return str(path)

    def restore(self, path: str | Path) -> dict[str, Any]:
        """Load a checkpoint into this worker; returns the loop state saved with it."""
        from xtalign.distill.checkpoint import load_checkpoint

        ck = load_checkpoint(Path(path))
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_model_state_dict,
                set_optimizer_state_dict,
            )

            opts = StateDictOptions(full_state_dict=True)
            set_model_state_dict(self.model, ck.model, options=opts)
            set_optimizer_state_dict(self.model, self.optimizer, ck.optimizer_state, options=opts)
        else:
            self.model.load_state_dict(ck.model)
            self.optimizer.load_state_dict(ck.optimizer_state)
        self.scheduler.load_state_dict(ck.scheduler_state)
        self.load_extra_tensors(ck.tensors)
        torch.set_rng_state(ck.tensors["rng.torch"])
        return ck.state

    def export_model(self, out_dir: str | Path) -> str:
        """The student as a Hugging Face folder (with tokenizer.json where the tokenizer can be one); rank 0
        writes (every rank must call this: FSDP2 gathers the shards)."""
        from xtalign.distill.export import export_hf

        state = self._full_state()[0] if self.fsdp else None
        if self.rank != 0:
            return ""
        return str(export_hf(self.model, self.tokenizer, Path(out_dir), overwrite=True, state_dict=state))


class _Holder:
    """Something with `.state_dict()` for `save_checkpoint`, holding an already gathered optimiser state."""

    def __init__(self, state: dict[str, Any]) -> None:
        self._state = state

    def state_dict(self) -> dict[str, Any]:
        return self._state


def _fully_shard(model: nn.Module) -> None:
    """FSDP2 over a Hugging Face causal LM: each decoder layer is its own unit, the rest the root's."""
    from torch.distributed.fsdp import fully_shard

    layers = [m for name, m in model.named_modules() if name.endswith("layers") and isinstance(m, nn.ModuleList)]
    for layer in (layers[0] if layers else []):
        fully_shard(layer)
    fully_shard(model)


def _best_columns(plan: TeacherPlan, device: torch.device) -> Tensor | None:
    """``[V_s]`` the teacher id of each student row's largest W entry (-1 for empty rows); None without W."""
    if plan.indices is None or plan.weights is None:
        return None
    idx = torch.from_numpy(plan.indices).to(device)
    w = torch.from_numpy(plan.weights).to(device)
    best = idx.gather(1, w.argmax(1, keepdim=True)).squeeze(1)  # [V_s]
    return torch.where(w.max(1).values > 0, best, -1)


def _teacher_agreement(top: Tensor, side: Any, out: TeacherTopK, best: Tensor | None) -> tuple[int, int]:
    """(hits, n): positions where the student's top-1, mapped through W's largest entry (`best`), is the
    teacher's top-1 for the same next token (first token of each chunk; same-vocab: every counted position)."""
    t_top = out.ids[..., 0].long()  # [B, Tt] top-k ids come sorted
    if side.same_vocab:
        keep = torch.from_numpy(side.targets).to(top.device) != IGNORE
        return int(((top == t_top) & keep).sum()), int(keep.sum())
    if best is None:
        return 0, 0
    mapped = best[top]  # [B, Ts]
    s_chunk = torch.from_numpy(side.student_chunk).to(top.device)
    t_chunk = torch.from_numpy(side.teacher_chunk).to(top.device)
    s_first, t_first = _first_of_chunk(s_chunk), _first_of_chunk(t_chunk)  # [B, C] positions, -1 = none
    ok = (s_first >= 0) & (t_first >= 0)
    s_pred = mapped.gather(1, s_first.clamp_min(0))
    t_pred = t_top.gather(1, t_first.clamp_min(0))
    return int(((s_pred == t_pred) & ok).sum()), int(ok.sum())


def _first_of_chunk(chunk: Tensor) -> Tensor:
    """``[B, T]`` prediction chunks → ``[B, C]`` first position of each chunk id (-1 where absent)."""
    b, t = chunk.shape
    n = int(chunk.max()) + 1 if chunk.numel() and int(chunk.max()) >= 0 else 1
    pos = torch.arange(t, device=chunk.device).expand(b, t)
    big = torch.full((b, n), t, dtype=torch.long, device=chunk.device)
    valid = chunk >= 0
    big = big.scatter_reduce(1, chunk.clamp_min(0), torch.where(valid, pos, t), "amin")
    return torch.where(big < t, big, -1)


def _merge(per: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """Average the micro-batches' scalars; sum their counts."""
    out: dict[str, Any] = dict(extra)
    n = len(per)
    for key in ("loss", "ce", "kd_total", "loss_scale"):
        if key in per[0]:
            out[key] = sum(p[key] for p in per) / n
    if "kd" in per[0]:
        out["kd"] = [sum(p["kd"][i] for p in per) / n for i in range(len(per[0]["kd"]))]
        out["teacher_weights"] = [sum(p["teacher_weights"][i] for p in per) / n
                                  for i in range(len(per[0]["teacher_weights"]))]
    hits, total = sum(p["acc_hits"] for p in per), sum(p["acc_n"] for p in per)
    out["accuracy"] = hits / total if total else 0.0
    agree = []
    for i in range(len(per[0]["agree"])):
        h, t = sum(p["agree"][i][0] for p in per), sum(p["agree"][i][1] for p in per)
        agree.append(h / t if t else 0.0)
    out["agreement"] = agree
    return out
