"""On a CUDA device (skipped elsewhere; `benchmarks/gpu_check.py` runs them): each worker resolves CUDA for
itself, the teacher's answer stays on its device, and the engine trains end to end in bf16 autocast."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_distill_engine import distill, fast_config, metrics

pytestmark = pytest.mark.gpu


def test_teacher_answer_stays_on_its_device_and_matches_cpu() -> None:
    from xtalign.distill.config import ArchConfig
    from xtalign.distill.models.load import load_model
    from xtalign.distill.teacher.worker import TeacherWorker

    arch = ArchConfig(hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)
    ids = np.array([[5, 6, 7, 8, 9, -1]])
    lens, targets = np.array([5]), np.array([[6, 7, 8, 9, -100, -100]])
    cpu = TeacherWorker(load_model(model="random", tokenizer="gpt2", arch=arch, seed=1), top_k=8, temperature=1.0)
    gpu = TeacherWorker(load_model(model="random", tokenizer="gpt2", arch=arch, seed=1, device="cuda"), top_k=8,
                        temperature=1.0, device="cuda")
    a, b = cpu.forward(ids, lens, targets), gpu.forward(ids, lens, targets)
    assert b.logits.device.type == "cuda" and b.ids.device.type == "cuda"
    assert torch.equal(a.ids[0, :4], b.ids.cpu()[0, :4])
    torch.testing.assert_close(a.logsumexp, b.logsumexp.cpu(), rtol=1e-4, atol=1e-4)


def test_tiny_run_on_cuda_local(tmp_path: Path) -> None:
    out = tmp_path / "cuda"
    assert distill("--config", fast_config(tmp_path, steps=4), "device=cuda", "--out", out) == 0
    rows = metrics(out)
    assert len(rows) == 4 and rows[-1]["loss"] < rows[0]["loss"] * 1.5 and rows[-1]["peak_memory_mb"] > 0


def test_tiny_run_on_cuda_ray_one_gpu_shared(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    out = tmp_path / "ray"
    assert distill("--config", fast_config(tmp_path, steps=3), "backend=ray", "device=cuda", "student.num_gpus=0.5",
                   "teachers.0.num_gpus=0.5", "--out", out) == 0
    assert [r["step"] for r in metrics(out)] == [1, 2, 3] and all(r["teacher_bytes"] > 0 for r in metrics(out))
