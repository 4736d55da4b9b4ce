"""How a worker process builds its worker from the run config: the same code in the loop's process
(`backend: local`) and inside each Ray actor. Each call resolves the device HERE, from what this process
sees (`devices.resolve_worker_device`), never from the driver's view."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from xtalign.config import ConfigError
from xtalign.distill.config import DistillConfig
from xtalign.distill.data.chat import student_chat_template
from xtalign.distill.devices import WorkerDevice, resolve_worker_device
from xtalign.distill.models.load import LoadedModel, load_model, max_positions
from xtalign.distill.student.plans import TeacherPlan
from xtalign.distill.student.worker import StudentWorker
from xtalign.distill.teacher.worker import TeacherWorker

__all__ = ["load_student", "student_worker", "teacher_seed", "teacher_worker", "worker_device"]



def worker_device(cfg: DistillConfig, who: str) -> WorkerDevice:
    """This process's device and autocast for one worker of `cfg`."""
    return resolve_worker_device(cfg.device, cfg.precision, cuda_available=torch.cuda.is_available(), who=who)


def teacher_seed(cfg: DistillConfig, i: int) -> int:
    """Random-init teachers get their own seed, fixed by the run seed and their position."""
    return cfg.seed + 1000 * (i + 1)


def _check_positions(loaded: LoadedModel, seq_len: int, who: str) -> None:
    limit = max_positions(loaded)
    if limit is not None and seq_len > limit:
        raise ConfigError(f"seq_len={seq_len} exceeds {who}'s {limit} positions (max_position_embeddings); lower "
                          "seq_len")


def teacher_worker(cfg: DistillConfig, i: int, rows: int) -> TeacherWorker:
    """Teacher `i` of `cfg`, loaded on this process's device (bf16 weights where it autocasts)."""
    t = cfg.teachers[i]
    dev = worker_device(cfg, f"teacher {t.label}")
    dtype = torch.bfloat16 if dev.autocast is not None else torch.float32
    loaded = load_model(model=t.model, tokenizer=t.tokenizer, arch=t.arch, trust_remote_code=t.trust_remote_code,
                        seed=teacher_seed(cfg, i), device=dev.device, dtype=dtype)
    if loaded.rows != rows:
        raise ConfigError(f"teacher {t.label}: the model has {loaded.rows} embedding rows but its tokenizer "
                          f"implies {rows}; set teachers.{i}.tokenizer to the model's own tokenizer")
    _check_positions(loaded, cfg.seq_len, f"teacher {t.label}")
    return TeacherWorker(loaded, top_k=t.top_k, temperature=t.temperature, head_slice=t.head_slice,
                         device=dev.device)


def load_student(cfg: DistillConfig) -> tuple[LoadedModel, WorkerDevice]:
    """The student model (fp32 master weights) on this process's device."""
    s = cfg.student
    dev = worker_device(cfg, "the student")
    seed = cfg.seed if s.init_seed is None else s.init_seed
    loaded = load_model(model=s.model, tokenizer=s.tokenizer, arch=s.arch, trust_remote_code=s.trust_remote_code,
                        seed=seed, device=dev.device, dtype=torch.float32)
    _check_positions(loaded, cfg.seq_len, "the student")
    return loaded, dev


def student_worker(cfg: DistillConfig, loaded: LoadedModel, dev: WorkerDevice,
                   plans: Sequence[TeacherPlan]) -> StudentWorker:
    return StudentWorker(loaded.model, plans=plans, optim=cfg.optim, schedule=cfg.schedule, combine=cfg.combine,
                         total_steps=cfg.steps, device=dev.device, autocast_dtype=dev.autocast_dtype,
                         tokenizer=loaded.tokenizer, sharding=cfg.student.sharding,
                         chat_template=student_chat_template(cfg), policy=cfg.policy,
                         loss_slice=cfg.student.loss_slice)
