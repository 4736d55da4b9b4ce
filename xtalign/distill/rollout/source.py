"""On-policy batches: a `BatchSource` whose rows are (partly) the student's own samples, scored by the teachers.

For each data batch the first ``k`` rows (``k = B`` with `policy.mode: on`, ``round(on_fraction · B)`` with
`mix`) become prompts; the student samples their continuations in its own worker (`Student.generate`,
seeded per run seed, batch and row, so a resumed run samples the same tokens); every teacher's side is
built from the sampled TEXT (`samples.sample_row`); the other ``B − k`` rows stay the data rows they were.
With ``k = 0`` the data batch passes through untouched, so `mix` at `on_fraction: 0` is the off-policy run.
Sample rows carry no CE target (the student's own tokens are no ground truth); their KD and the policy
objective act on the completion only.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

import numpy as np

from xtalign.chat import ChatSide, Conversation
from xtalign.distill.config import DistillConfig
from xtalign.distill.data.batch import IGNORE, Batch, TeacherSide, concat_rows, take_rows
from xtalign.distill.data.builder import pad_rows, start_token
from xtalign.distill.protocols import BatchSource, Student
from xtalign.distill.rollout.samples import Prompt, SampleRow, chat_prompt, completion, sample_row, text_prompt
from xtalign.distill.rollout.sampling import SamplingConfig
from xtalign.projection import CHAT_ROLES
from xtalign.zoo.tokenizer import Tokenizer

__all__ = ["RolloutMaker", "RolloutSource", "row_seed", "samples_per_batch", "stop_ids"]


def samples_per_batch(cfg: DistillConfig) -> int:
    """Rows of each batch that are student samples."""
    p = cfg.policy
    if p.mode == "off":
        return 0
    return cfg.batch_size if p.mode == "on" else int(round(p.on_fraction * cfg.batch_size))


def row_seed(seed: int, batch_index: int, row: int) -> int:
    """The sampling seed of one row: fixed by the run seed, the batch and the row (not the rank)."""
    digest = hashlib.sha256(f"xtalign-rollout:{seed}:{batch_index}:{row}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def stop_ids(tok: Tokenizer) -> list[int]:
    """The ids that end a sample: EOS and the chat turn-end markers of the student's vocabulary."""
    names = dict(zip(tok.vocab.names, range(len(tok.vocab.names)), strict=False))
    ends = [names[n] for n in CHAT_ROLES.get("turn_end", ()) if n in names]
    eos = tok.vocab.roles.get("eos")
    return sorted({*ends, *([eos] if eos is not None else [])})


@dataclass(eq=False)
class RolloutMaker:
    """Turns training samples into prompts and sampled ids into batch rows (driver side, numpy only)."""

    cfg: DistillConfig
    student: Tokenizer
    teachers: Sequence[Tokenizer]
    same_vocab: Sequence[bool]
    student_chat: ChatSide | None
    teacher_chats: Sequence[ChatSide] | None
    now: datetime

    def __post_init__(self) -> None:
        self.stops = stop_ids(self.student)
        self.sampling = SamplingConfig(max_new_tokens=self.cfg.policy.max_new_tokens,
                                       temperature=self.cfg.policy.temperature, top_p=self.cfg.policy.top_p,
                                       top_k=self.cfg.policy.top_k)
        roles = self.student.vocab.roles
        self.pad_id = int(roles.get("pad", roles.get("eos", 0)))
        self.budget = self.cfg.seq_len - self.cfg.policy.max_new_tokens

    @property
    def chat(self) -> bool:
        p = self.cfg.policy.prompts
        return p == "chat" or (p == "auto" and self.cfg.data.format == "chat")

    def prompt(self, item: str | Conversation) -> Prompt:
        if self.chat:
            assert self.student_chat is not None and isinstance(item, Conversation)
            return chat_prompt(self.student_chat, item, budget=self.budget, now=self.now)
        text = item if isinstance(item, str) else item.messages[0].content
        return text_prompt(self.student, text, prompt_chars=self.cfg.policy.prompt_chars, budget=self.budget,
                           start=start_token(self.student, self.cfg.data.add_bos))

    def rows(self, prompts: Sequence[Prompt], drawn: Sequence[np.ndarray]) -> list[SampleRow]:
        stops = set(self.stops)
        sides = [(t, start_token(t, self.cfg.data.add_bos), self.teacher_chats[i] if self.chat and
                  self.teacher_chats is not None else None) for i, t in enumerate(self.teachers)]
        return [sample_row(self.student, p, completion(self.student, d, stops), sides, now=self.now)
                for p, d in zip(prompts, drawn, strict=True)]

    def batch(self, index: int, sample_ids: np.ndarray, rows: Sequence[SampleRow]) -> Batch:
        """The sample rows as a batch: no CE targets, the policy targets, every teacher's side."""
        s_ids = pad_rows([r.student_ids for r in rows], -1)
        lengths = np.array([r.student_ids.shape[0] for r in rows], np.int64)
        targets = pad_rows([r.policy_targets for r in rows], IGNORE)
        widths = pad_rows([_widths(r.student_ends) for r in rows], 0)
        sides = tuple(self._side(i, rows, s_ids, lengths, targets) for i in range(len(self.teachers)))
        return Batch(index=index, sample_ids=np.asarray(sample_ids, np.int64),
                     n_bytes=np.array([len(r.text.encode("utf-8")) for r in rows], np.int64), student_ids=s_ids,
                     student_lengths=lengths, student_targets=np.full_like(targets, IGNORE), teachers=sides,
                     texts=tuple(r.text for r in rows), policy_rows=np.ones(len(rows), bool), policy_targets=targets,
                     policy_widths=widths)

    def _side(self, i: int, rows: Sequence[SampleRow], s_ids: np.ndarray, lengths: np.ndarray,
              targets: np.ndarray) -> TeacherSide:
        if self.same_vocab[i]:  # a teacher with the student's own vocabulary reads its ids
            return TeacherSide(ids=s_ids, lengths=lengths, targets=targets)
        t = [r.teachers[i] for r in rows]
        return TeacherSide(ids=pad_rows([x["ids"] for x in t], -1),  # type: ignore[misc]
                           lengths=np.array([x["ids"].shape[0] for x in t], np.int64),  # type: ignore[union-attr]
                           targets=pad_rows([x["targets"] for x in t], IGNORE),  # type: ignore[misc]
                           student_chunk=pad_rows([x["student_chunk"] for x in t], -1),  # type: ignore[misc]
                           teacher_chunk=pad_rows([x["teacher_chunk"] for x in t], -1),  # type: ignore[misc]
                           ends=pad_rows([x["ends"] for x in t], -1))  # type: ignore[misc]


def _widths(ends: np.ndarray) -> np.ndarray:
    """``[T]`` bytes of the token each position predicts (the next token's width; 0 at the last)."""
    out = np.zeros(ends.shape, np.int64)
    out[:-1] = np.diff(ends)
    return out


class RolloutSource:
    """A `BatchSource` over a data `BatchSource`: the first `k` rows of every batch are student samples."""

    def __init__(self, data: BatchSource, items: Sequence[str | Conversation], student: Student,
                 maker: RolloutMaker, k: int, seed: int) -> None:
        self.data, self.items, self.student, self.maker, self.k, self.seed = data, items, student, maker, k, seed

    @property
    def position(self) -> int:
        return self.data.position

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        batch = next(self.data)
        if self.k == 0:
            return batch
        ids = batch.sample_ids[: self.k]
        prompts = [self.maker.prompt(self.items[int(i)]) for i in ids]
        t0 = time.perf_counter()
        drawn = self.student.generate([p.ids for p in prompts], seeds=[row_seed(self.seed, batch.index, r)
                                                                        for r in range(self.k)],
                                      cfg=self.maker.sampling, stop_ids=self.maker.stops, pad_id=self.maker.pad_id)
        gen_s = time.perf_counter() - t0
        rows = self.maker.rows(prompts, drawn)
        samples = self.maker.batch(batch.index, ids, rows)
        out = samples if self.k == batch.size else concat_rows([samples, take_rows(batch, np.arange(self.k,
                                                                                                   batch.size))],
                                                               batch.index)
        stops = set(self.maker.stops)
        n_drawn = sum(d.shape[0] for d in drawn)
        return replace(out, stats={"generate_s": gen_s, "generated_tokens": float(n_drawn),
                                   "generate_tokens_per_s": n_drawn / gen_s if gen_s > 0 else 0.0,
                                   "mean_completion_tokens": n_drawn / len(drawn),
                                   "ended_by_eos": sum(bool(d.size) and int(d[-1]) in stops
                                                       for d in drawn) / len(drawn),
                                   "completion_bytes": float(sum(r.completion_bytes for r in rows))})

    def close(self) -> None:
        self.data.close()
