"""The student worker's sliced loss path (`student.loss_slice`) trains like the full-logits path.

Each run pair differs only in `student.loss_slice` (0: full logits; 5: slices of 5 positions, so every
micro-batch of 2 x 32 tokens is cut many times, chunks never split); the losses and figures of every step
must agree to float rounding, for each loss, a learnable W, a same-vocabulary teacher and dynamic scaling.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from test_distill_engine import TINY_ARCH, distill, fast_config, metrics

from xtalign.distill.student.sliced import AUTO_BYTES, use_slices

GPT2 = {"name": "t-gpt2", "model": "random", "tokenizer": "gpt2", "arch": TINY_ARCH, "top_k": 16, "head_slice": 32}
SAME = {"name": "same", "model": "random", "tokenizer": "mistral-v1", "arch": TINY_ARCH, "loss": "same-vocab",
        "top_k": 16}
CASES = {
    "p-kl": {"teachers": [{**GPT2, "loss": "p-kl"}]},
    "h-kl": {"teachers": [{**GPT2, "loss": "h-kl"}]},
    "gold": {"teachers": [{**GPT2, "loss": "gold"}]},
    "uld": {"teachers": [{**GPT2, "loss": "uld"}]},
    "learnable-w": {"teachers": [{**GPT2, "loss": "p-kl", "projection": {"learnable": True, "lr": 1e-2}}]},
    "same-vocab+p-kl, dynamic": {"teachers": [{**GPT2, "loss": "p-kl"}, SAME],
                                  "combine": {"scaling": "dynamic"}},
    "ce only": {"teachers": []},
}


def _run(tmp: Path, name: str, loss_slice: int, extra: dict) -> list[dict]:
    student = {"model": "random", "tokenizer": "mistral-v1", "arch": TINY_ARCH, "loss_slice": loss_slice}
    cfg = fast_config(tmp, f"{name}.yaml", student=student, steps=3, eval={"every": 3, "max_batches": 1}, **extra)
    assert distill("--config", cfg, "--out", tmp / name) == 0
    return metrics(tmp / name)


@pytest.mark.parametrize("case", list(CASES))
def test_sliced_steps_equal_the_full_logits_steps(tmp_path: Path, case: str) -> None:
    full, cut = _run(tmp_path, "full", 0, CASES[case]), _run(tmp_path, "cut", 5, CASES[case])
    for a, b in zip(full, cut, strict=True):
        for key in ("loss", "ce", "grad_norm"):
            assert math.isclose(a[key], b[key], rel_tol=2e-5, abs_tol=1e-6), (a["step"], key, a[key], b[key])
        assert a["counts"] == b["counts"]  # accuracy and agreement from the sliced top-1: the same hits
        for lab, v in (a.get("kd") or {}).items():
            assert math.isclose(v, b["kd"][lab], rel_tol=2e-5, abs_tol=1e-6), (case, lab)


def test_auto_slices_only_above_the_threshold() -> None:
    assert not use_slices(None, 4, 512, 32_000)  # 250 MiB of fp32 logits
    assert use_slices(None, 4, 2048, 49_152) and AUTO_BYTES == 1 << 28
    assert use_slices(7, 1, 1, 2) and not use_slices(0, 64, 8192, 262_144)
