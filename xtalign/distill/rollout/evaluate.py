"""Scoring a student's own samples on held-out prompts: what on-policy training is meant to improve.

For each prompt the student samples a continuation (seeded per prompt); the teacher reads prompt +
continuation in its own tokens; over the completion chunks both sides share this gives the teacher's bits
per byte of the student's text (how likely the teacher finds what the student writes) and the reverse-KL
estimate per byte, ``Σ_c [log p_s(c) − log p_t(c)]`` over the completion bytes (both at temperature 1).
A method that games the teacher shows up in the student's held-out bits per byte on real text, which the
engine's eval reports beside these.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import numpy as np
import torch

from xtalign.distill.data.builder import start_token
from xtalign.distill.rollout.objective import chunk_sums, student_token_logprobs
from xtalign.distill.rollout.samples import completion, sample_row, text_prompt
from xtalign.distill.rollout.sampling import SamplingConfig, sample
from xtalign.distill.rollout.source import row_seed, stop_ids
from xtalign.distill.teacher.worker import TeacherWorker
from xtalign.zoo.tokenizer import Tokenizer

__all__ = ["score_samples"]


def _student_chunk_lp(model: Any, ids: np.ndarray, targets: np.ndarray, chunk: np.ndarray, n: int) -> np.ndarray:
    device = next(model.parameters()).device
    t_ids = torch.as_tensor(ids, device=device)
    with torch.no_grad():
        logits = model(input_ids=t_ids.clamp_min(0)[None], attention_mask=(t_ids >= 0).long()[None]).logits
    lp = student_token_logprobs(logits, torch.as_tensor(targets, device=device)[None])
    sums, _ = chunk_sums(lp.double(), torch.as_tensor(chunk, device=device)[None], n)
    return sums[0].cpu().numpy()


def score_samples(model: Any, tok: Tokenizer, teacher: TeacherWorker, teacher_tok: Tokenizer, prompts: Sequence[str],
                  *, prompt_chars: int, sampling: SamplingConfig, seed: int, budget: int,
                  add_bos: bool = True) -> dict[str, Any]:
    """The student's samples on `prompts`, scored by the teacher (text prompts; numbers over all prompts)."""
    made = [text_prompt(tok, p, prompt_chars=prompt_chars, budget=budget, start=start_token(tok, add_bos))
            for p in prompts]
    stops = stop_ids(tok)
    pad = int(tok.vocab.roles.get("pad", tok.vocab.roles.get("eos", 0)))
    drawn = sample(model, [m.ids for m in made], cfg=sampling, stop_ids=stops,
                   seeds=[row_seed(seed, -1, i) for i in range(len(made))], pad_id=pad)
    s_lp = t_lp = n_bytes = 0.0
    ended = 0
    for prompt, d in zip(made, drawn, strict=True):
        comp = completion(tok, d, set(stops))
        ended += comp.ended
        row = sample_row(tok, prompt, comp, [(teacher_tok, start_token(teacher_tok, add_bos), None)],
                         now=datetime(2026, 1, 1))
        side = row.teachers[0]
        n = int(max(side["teacher_chunk"].max(initial=-1), side["student_chunk"].max(initial=-1))) + 1
        if n == 0:
            continue
        answer = teacher.likelihood(side["ids"][None], np.array([side["ids"].shape[0]]),  # type: ignore[index]
                                    side["targets"][None])  # type: ignore[index]
        t_sum, _ = chunk_sums(torch.as_tensor(answer, dtype=torch.float64), torch.as_tensor(
            side["teacher_chunk"])[None], n)  # type: ignore[arg-type]
        s_sum = _student_chunk_lp(model, row.student_ids, row.policy_targets, side["student_chunk"], n)  # type: ignore
        used = np.unique(side["teacher_chunk"][side["teacher_chunk"] >= 0])  # type: ignore[index]
        spans = side["chunk_bytes"][used]  # type: ignore[index]
        s_lp += float(s_sum[used].sum())
        t_lp += float(t_sum[0].numpy()[used].sum())
        n_bytes += float((spans[:, 1] - spans[:, 0]).sum())
    ln2 = math.log(2)
    return {"prompts": len(made), "completion_bytes": n_bytes, "ended_by_eos": ended / max(1, len(made)),
            "teacher_bits_per_byte_of_samples": -t_lp / n_bytes / ln2 if n_bytes else None,
            "student_bits_per_byte_of_samples": -s_lp / n_bytes / ln2 if n_bytes else None,
            "reverse_kl_bits_per_byte": (s_lp - t_lp) / n_bytes / ln2 if n_bytes else None,
            "mean_completion_tokens": float(np.mean([d.shape[0] for d in drawn])) if drawn else 0.0}
