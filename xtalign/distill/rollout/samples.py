"""From a training sample to a prompt, and from the student's sampled ids to a batch row every side can train on.

Prompts: `text` — the first `prompt_chars` characters of a sample, tokenized by the student (a prompt longer
than the budget is cut by text at a token boundary); `chat` — the turns up to the last user turn, in the
student's template with its generation prompt. The completion is the sampled ids up to the first stop id
(kept), cut after the last complete UTF-8 character. The TEXT is what the teachers see: each teacher
tokenizes prompt + completion itself (chat: the whole conversation with the completion as the assistant's
turn, in its own template), so no student token id reaches a teacher; the aligner pairs chunks over the
completion only (chat: and the student's end of turn with the teacher's).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

import numpy as np

from xtalign.align import align_ends, prediction_chunks
from xtalign.chat import ChatSide, Conversation, Message, encode_rendered, render
from xtalign.chat.encode import bos_string, eos_string
from xtalign.chat.sides import render_side
from xtalign.distill.data.batch import IGNORE
from xtalign.distill.data.builder import tokenize_texts
from xtalign.zoo.tokenizer import Tokenizer

__all__ = ["Completion", "Prompt", "SampleRow", "chat_prompt", "completion", "sample_row", "text_prompt"]


@dataclass(frozen=True, eq=False)
class Prompt:
    """What the student continues: its text (the rendering, for chat), the student's ids and their byte ends."""

    text: str
    ids: np.ndarray  # [P] int64
    ends: np.ndarray  # [P] int64 byte ends in `text`
    conversation: Conversation | None = None  # chat: the turns up to the last user turn


@dataclass(frozen=True, eq=False)
class Completion:
    """The kept sampled ids, the bytes they spell (text) and whether a stop id ended them."""

    ids: np.ndarray  # [N] int64 (ending with the stop id when `ended`)
    text: str
    ended: bool
    drawn: int  # tokens sampled (before any cut)


@dataclass(frozen=True, eq=False)
class SampleRow:
    """One student sample as a batch row: the student's side and, per teacher, its own side of the same text.

    Student arrays ``[Ts]``; per teacher ids/ends/targets ``[Tt]`` and the shifted prediction chunks over the
    completion (`student_chunk [Ts]`, `teacher_chunk [Tt]`); `policy_targets [Ts]`: the sampled token each
    position predicts (IGNORE outside the completion); `chunk_bytes`: per teacher, bytes of each chunk.
    """

    text: str
    student_ids: np.ndarray
    student_ends: np.ndarray
    policy_targets: np.ndarray
    completion_bytes: int
    teachers: tuple[dict[str, np.ndarray | str], ...]


def _cut_to_budget(tok: Tokenizer, text: str, ids: np.ndarray, ends: np.ndarray, budget: int
                   ) -> tuple[str, np.ndarray, np.ndarray]:
    if ids.shape[0] <= budget:
        return text, ids, ends
    n = int(ends[budget - 1])
    data = text.encode("utf-8")[:n]
    while n and (data[-1:] and (data[-1] & 0xC0) == 0x80 or not _decodes(data)):
        budget -= 1
        n = int(ends[budget - 1]) if budget else 0
        data = text.encode("utf-8")[:n]
    return data.decode("utf-8"), ids[:budget], ends[:budget]


def _decodes(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def text_prompt(tok: Tokenizer, sample: str, *, prompt_chars: int, budget: int, start: list[int]) -> Prompt:
    """The first `prompt_chars` characters of `sample` (at most `budget` student tokens, cut by text)."""
    text = sample[:prompt_chars]
    (ids, ends), = tokenize_texts(tok, start, [text])
    text, ids, ends = _cut_to_budget(tok, text, ids, ends, budget)
    return Prompt(text=text, ids=ids, ends=ends)


def chat_prompt(side: ChatSide, conv: Conversation, *, budget: int, now: datetime) -> Prompt:
    """The turns up to the last user turn, rendered in the student's template with its generation prompt."""
    last_user = max(i for i, m in enumerate(conv.messages) if m.role == "user")
    prompt = replace(conv, messages=conv.messages[: last_user + 1])
    tok = side.tokenizer
    text = render(side.template, prompt, bos_token=bos_string(tok), eos_token=eos_string(tok),
                  add_generation_prompt=True, variables=side.variables, now=now)
    ids, _starts, ends = encode_rendered(tok, text, add_bos=side.add_bos)
    if ids.shape[0] > budget:  # keep the END of a long prompt: the generation prompt must stay
        raise ValueError(f"the chat prompt takes {ids.shape[0]} student tokens, more than the {budget} left "
                         "after policy.max_new_tokens; raise seq_len or shorten the conversations")
    return Prompt(text=text, ids=ids, ends=ends, conversation=prompt)


def completion(tok: Tokenizer, drawn: np.ndarray, stop_ids: set[int]) -> Completion:
    """The sampled ids up to the first stop id, cut after the last complete UTF-8 character (a stop id that
    follows a cut character is dropped: the text before it changed)."""
    ids = drawn.astype(np.int64)
    ended = bool(ids.size) and int(ids[-1]) in stop_ids
    body = ids[:-1] if ended else ids
    lengths = tok.vocab.byte_lengths[body]
    data = b"".join(tok.vocab.token_bytes[int(i)] for i in body)  # exact bytes (no dummy-prefix stripping)
    n = body.shape[0]
    while n and not _decodes(data[: int(lengths[:n].sum())]):
        n -= 1
    if n < body.shape[0]:
        ended = False
    kept = np.concatenate([body[:n], ids[-1:]]) if ended else body[:n]
    return Completion(ids=kept, text=data[: int(lengths[:n].sum())].decode("utf-8"), ended=ended,
                      drawn=int(drawn.shape[0]))


def _student_side(prompt: Prompt, comp: Completion, tok: Tokenizer) -> tuple[np.ndarray, np.ndarray, int]:
    """The student's ids and byte ends over prompt + completion, and where the completion starts (bytes)."""
    p_bytes = len(prompt.text.encode("utf-8"))
    c_ends = p_bytes + np.cumsum(tok.vocab.byte_lengths[comp.ids], dtype=np.int64)
    return np.concatenate([prompt.ids, comp.ids]), np.concatenate([prompt.ends, c_ends]), p_bytes


def _targets(ids: np.ndarray, first: int) -> np.ndarray:
    """``[T]`` next tokens at positions predicting tokens `first`…, IGNORE elsewhere."""
    out = np.full(ids.shape, IGNORE, dtype=np.int64)
    out[first - 1: -1] = ids[first:]
    return out


def _keep_chunks(chunk: np.ndarray, spans: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Token chunks whose bytes lie in ``[lo, hi)``; others -1."""
    ok = (spans[:, 0] >= lo) & (spans[:, 1] <= hi)
    return np.where((chunk >= 0) & ok[np.maximum(chunk, 0)], chunk, -1)


def _text_teacher(tok: Tokenizer, start: list[int], full: str, s_ends: np.ndarray, p_bytes: int
                  ) -> dict[str, np.ndarray | str]:
    (ids, ends), = tokenize_texts(tok, start, [full])
    al = align_ends([s_ends], [ends], texts=[full])
    spans = al.chunk_bytes[0, : int(al.n_chunks[0])]
    s_chunk = _keep_chunks(al.student_chunk[0, : s_ends.shape[0]], spans, p_bytes, len(full.encode("utf-8")))
    t_chunk = _keep_chunks(al.teacher_chunk[0, : ids.shape[0]], spans, p_bytes, len(full.encode("utf-8")))
    return _teacher_dict(ids, ends, full, s_chunk, t_chunk, spans)


def _teacher_dict(ids: np.ndarray, ends: np.ndarray, text: str, s_chunk: np.ndarray, t_chunk: np.ndarray,
                  spans: np.ndarray) -> dict[str, np.ndarray | str]:
    """A teacher's side: its targets are the next tokens inside kept chunks (their log-probs score chunks)."""
    t_pred, s_pred = prediction_chunks(t_chunk), prediction_chunks(s_chunk)
    targets = np.full(ids.shape, IGNORE, dtype=np.int64)
    targets[:-1] = np.where(t_chunk[1:] >= 0, ids[1:], IGNORE)
    return {"ids": ids, "ends": ends, "targets": targets, "student_chunk": s_pred, "teacher_chunk": t_pred,
            "text": text, "chunk_bytes": spans}


def _chat_teacher(side: ChatSide, prompt: Prompt, comp: Completion, s_ends: np.ndarray, p_bytes: int,
                  student_stop: bool, now: datetime) -> dict[str, np.ndarray | str]:
    """The teacher's rendering of the conversation with the completion as the assistant's turn; chunks over
    the completion's bytes both sides hold, and the two ends of turn paired."""
    assert prompt.conversation is not None
    conv = replace(prompt.conversation, messages=(*prompt.conversation.messages, Message("assistant", comp.text)))
    r = render_side(side, conv, now=now)
    last = len(conv.messages) - 1
    span = r.span(last, "content")
    n_s = s_ends.shape[0]
    s_chunk, t_chunk = np.full(n_s, -1, np.int64), np.full(r.ids.shape[0], -1, np.int64)
    spans: list[tuple[int, int]] = []
    if span is not None and comp.text:
        spans = _align_completion(s_ends, p_bytes, len(comp.text.encode("utf-8")), r, span, s_chunk, t_chunk)
    te = int(r.turn_end[last])
    if student_stop and te >= 0:  # the student's stop and the teacher's end of turn: one chunk, by role
        s_chunk[n_s - 1] = t_chunk[te] = len(spans)
        spans.append((int(r.starts[te]), int(r.ends[te])))
    return _teacher_dict(r.ids, r.ends, r.text, s_chunk, t_chunk, np.asarray(spans, np.int64).reshape(-1, 2))


def _inside(starts: np.ndarray, ends: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Indices of the text-carrying tokens lying wholly in ``[lo, hi]``."""
    return np.flatnonzero((starts >= lo) & (ends <= hi) & (ends > starts))


def _align_completion(s_ends: np.ndarray, p_bytes: int, c_len: int, r: object, span: object, s_chunk: np.ndarray,
                      t_chunk: np.ndarray) -> list[tuple[int, int]]:
    """Chunks over the completion bytes both renderings hold (a template may trim the content), from the first
    to the last byte where both sides have a token boundary; returns each chunk's span in the teacher's text."""
    offset, start, end = span.offset, span.start, span.end  # type: ignore[attr-defined]
    lo, hi = max(0, offset), min(c_len, offset + end - start)
    s_end = s_ends - p_bytes  # completion-relative
    s_start = np.concatenate([[0], s_ends[:-1]]) - p_bytes
    t_end = r.ends - start + offset  # type: ignore[attr-defined]
    t_start = r.starts - start + offset  # type: ignore[attr-defined]
    s_in, t_in = _inside(s_start, s_end, lo, hi), _inside(t_start, t_end, lo, hi)
    if not s_in.size or not t_in.size:
        return []
    bs = np.unique(np.concatenate([s_start[s_in[:1]], s_end[s_in]]))
    bt = np.unique(np.concatenate([t_start[t_in[:1]], t_end[t_in]]))
    common = np.intersect1d(bs, bt)
    if common.size < 2:
        return []
    p0, p1 = int(common[0]), int(common[-1])
    s_in = s_in[(s_start[s_in] >= p0) & (s_end[s_in] <= p1)]
    t_in = t_in[(t_start[t_in] >= p0) & (t_end[t_in] <= p1)]
    al = align_ends([s_end[s_in] - p0], [t_end[t_in] - p0])
    s_chunk[s_in] = al.student_chunk[0, : s_in.shape[0]]
    t_chunk[t_in] = al.teacher_chunk[0, : t_in.shape[0]]
    base = start - offset + p0
    return [(int(a) + base, int(b) + base) for a, b in al.chunk_bytes[0, : int(al.n_chunks[0])]]


def sample_row(student: Tokenizer, prompt: Prompt, comp: Completion, teachers: list[tuple[Tokenizer, list[int],
               ChatSide | None]], *, now: datetime) -> SampleRow:
    """One sample on every side. `teachers`: per teacher its tokenizer, its document-start ids (text data) and,
    for chat, its `ChatSide`."""
    s_ids, s_ends, p_bytes = _student_side(prompt, comp, student)
    full = prompt.text + comp.text
    sides = [_text_teacher(tok, start, full, s_ends, p_bytes) if chat is None else
             _chat_teacher(chat, prompt, comp, s_ends, p_bytes, comp.ended, now) for tok, start, chat in teachers]
    return SampleRow(text=full, student_ids=s_ids, student_ends=s_ends,
                     policy_targets=_targets(s_ids, prompt.ids.shape[0]),
                     completion_bytes=len(comp.text.encode("utf-8")), teachers=tuple(sides))
