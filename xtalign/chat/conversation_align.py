"""Align one conversation between a student and a teacher that each render it with their own template.

The rendered texts differ (``<|im_start|>assistant\\n…<|im_end|>`` against ``<start_of_turn>model\\n…
<end_of_turn>``), but every message's content is the same bytes on both sides, so chunks are cut inside
content spans only, by `xtalign.align.align_ends` on content-relative byte offsets: a chunk ends where
both sides end a token. A token covering template bytes too (`TokenPart.EDGE`) leaves its bytes out of
every chunk, and so does a chunk holding a special token written inside a content (HF encodes such a
string as the special; its meaning differs across vocabularies). Each assistant message's end-of-turn
marker gets one chunk of its own, the same id on both sides (paired by role, not by bytes).

Chunk ids follow `xtalign.align`: ``chunk[t] = c >= 0`` for a token of chunk ``c``, ``-1`` for none,
numbered ``0..n_chunks-1`` in text order on both sides; a loss shifts them with `prediction_chunks`.

Token budgets: trailing whole messages are dropped first (the shorter conversation is rendered again;
the first assistant turn is always kept); when the first assistant turn alone is too long it is cut
inside its content at a chunk end (a common token boundary, never inside a UTF-8 character), with no
end of turn and nothing after it; a conversation whose context before that content does not fit is
refused (ChatDataError ``too_long``). The teacher always sees the conversation in its own template: no
student template token reaches the teacher's ids.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal

import numpy as np

from xtalign.align import align_ends, common_boundaries, prediction_chunks
from xtalign.chat.messages import ChatDataError, Conversation
from xtalign.chat.sides import ChatSide, RenderedSide, TokenPart, render_side
from xtalign.chat.templates import ChatTemplateError
from xtalign.vocab import TokenKind, Vocab

__all__ = ["ChatTokens", "ConversationAlignment", "align_conversation"]
log = logging.getLogger(__name__)

TrainOn = Literal["assistant", "all"]


@dataclass(frozen=True, eq=False)
class ChatTokens:
    """One side of an aligned conversation: its rendering (cut where truncated) and per-token arrays.

    text: the rendered text the ids spell; byte offsets index ``text.encode("utf-8")``.
    ids, starts, ends: ``[T]`` int64 token ids and byte spans (specials span their marker; an added BOS
        and SentencePiece's lone dummy-prefix piece span nothing).
    message: ``[T]`` int64 message index; part: ``[T]`` uint8 `TokenPart`.
    chunk: ``[T]`` int64 token chunk id (-1 none); loss_token: ``[T]`` bool, token t is a CE target.
    turn_end: ``[M]`` int64 token index of each message's end-of-turn special, -1 where none.
    """

    text: str
    ids: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    message: np.ndarray
    part: np.ndarray
    chunk: np.ndarray
    loss_token: np.ndarray
    turn_end: np.ndarray
    template: str

    @property
    def n_tokens(self) -> int:
        return int(self.ids.shape[0])


@dataclass(frozen=True, eq=False)
class ConversationAlignment:
    """A conversation aligned across two chat templates.

    Per chunk ``[C]``: chunk_message int64, chunk_part uint8 (CONTENT / REASONING / TURN_END),
    student_chunk_bytes / teacher_chunk_bytes int64 ``[C, 2]`` spans in each side's text (a content chunk
    spells the same bytes on both sides; a turn-end chunk spans each side's own marker), loss_chunk bool.
    turn_ends: ``[E, 2]`` int64 (student token index, teacher token index) of each paired assistant end of turn.
    truncation: None, "messages" (`dropped_messages` trailing messages dropped) or "content" (the first
    assistant content cut; `conversation` then holds the cut text).
    """

    conversation: Conversation
    student: ChatTokens
    teacher: ChatTokens
    chunk_message: np.ndarray
    chunk_part: np.ndarray
    student_chunk_bytes: np.ndarray
    teacher_chunk_bytes: np.ndarray
    loss_chunk: np.ndarray
    turn_ends: np.ndarray
    train_on: str
    truncation: str | None = None
    dropped_messages: int = 0

    @property
    def n_chunks(self) -> int:
        return int(self.chunk_message.shape[0])

    @property
    def student_chunk(self) -> np.ndarray:
        return self.student.chunk

    @property
    def teacher_chunk(self) -> np.ndarray:
        return self.teacher.chunk

    @property
    def loss_token(self) -> np.ndarray:
        """``[Ts]`` bool: the student tokens its CE trains on (token t, predicted by the logits at t - 1)."""
        return self.student.loss_token

    def prediction_chunks(self) -> tuple[np.ndarray, np.ndarray]:
        """(student ``[Ts]``, teacher ``[Tt]``) prediction chunks: position p gets the chunk of token p + 1."""
        return prediction_chunks(self.student.chunk), prediction_chunks(self.teacher.chunk)

    def chunk_rows(self) -> list[dict[str, Any]]:
        """Per chunk: id, role, message, part, loss, each side's token ids and byte span, and the student text."""
        s_data, t_data = self.student.text.encode("utf-8"), self.teacher.text.encode("utf-8")
        rows = []
        for c in range(self.n_chunks):
            m = int(self.chunk_message[c])
            (sa, sb), (ta, tb) = self.student_chunk_bytes[c].tolist(), self.teacher_chunk_bytes[c].tolist()
            rows.append({"chunk": c, "role": self.conversation.messages[m].role, "message": m,
                         "part": TokenPart(int(self.chunk_part[c])).name.lower(), "loss": bool(self.loss_chunk[c]),
                         "student": self.student.ids[self.student.chunk == c].tolist(),
                         "teacher": self.teacher.ids[self.teacher.chunk == c].tolist(),
                         "student_bytes": [sa, sb], "teacher_bytes": [ta, tb],
                         "text": s_data[sa:sb].decode("utf-8", errors="backslashreplace"),
                         "teacher_text": t_data[ta:tb].decode("utf-8", errors="backslashreplace")})
        return rows


# --- chunking ------------------------------------------------------------------------------------------


@dataclass
class _Chunks:
    """Chunks under construction (global ids in order)."""

    s_chunk: np.ndarray
    t_chunk: np.ndarray
    message: list[int]
    part: list[int]
    s_bytes: list[tuple[int, int]]
    t_bytes: list[tuple[int, int]]
    pairs: list[tuple[int, int]]


def _field_tokens(side: RenderedSide, message: int, fld: str) -> np.ndarray:
    part = TokenPart.CONTENT if fld == "content" else TokenPart.REASONING
    return np.flatnonzero((side.part == part) & (side.message == message))


def _boundaries(side: RenderedSide, idx: np.ndarray, start: int, offset: int) -> np.ndarray:
    """Value-relative positions where the side can cut inside a field: its first token's start and every end."""
    if not idx.size:
        return np.zeros(0, np.int64)
    rel = np.concatenate([side.starts[idx[:1]], side.ends[idx]]) - start + offset
    return np.unique(rel)


def _align_field(out: _Chunks, s: RenderedSide, t: RenderedSide, message: int, fld: str, s_vocab: Vocab,
                 t_vocab: Vocab) -> None:
    """Chunks of one field common to both renderings, appended to `out`."""
    ss, ts = s.span(message, fld), t.span(message, fld)
    assert ss is not None and ts is not None
    lo = max(ss.offset, ts.offset)  # the bytes of the value both sides rendered (trimming may differ)
    hi = min(ss.offset + ss.end - ss.start, ts.offset + ts.end - ts.start)
    si, ti = _field_tokens(s, message, fld), _field_tokens(t, message, fld)
    bs, bt = _boundaries(s, si, ss.start, ss.offset), _boundaries(t, ti, ts.start, ts.offset)
    bs, bt = bs[(bs >= lo) & (bs <= hi)], bt[(bt >= lo) & (bt <= hi)]
    common = common_boundaries(bs - lo, bt - lo) + lo
    if lo in bs and lo in bt:
        common = np.concatenate([[lo], common])
    if common.size < 2:
        return
    p0, p1 = int(common[0]), int(common[-1])
    sides = []
    for side, idx, sp in ((s, si, ss), (t, ti, ts)):
        vs, ve = side.starts[idx] - sp.start + sp.offset, side.ends[idx] - sp.start + sp.offset
        keep = idx[(vs >= p0) & (ve <= p1)]
        sides.append((keep, side.ends[keep] - sp.start + sp.offset - p0))
    al = align_ends([sides[0][1]], [sides[1][1]])
    n = int(al.n_chunks[0])
    chunks = [al.student_chunk[0, : sides[0][0].size], al.teacher_chunk[0, : sides[1][0].size]]
    ok = np.ones(n, bool)  # a chunk holding a special written inside the content is left out
    for (keep, _), ch, vocab, side in ((sides[0], chunks[0], s_vocab, s), (sides[1], chunks[1], t_vocab, t)):
        special = vocab.kinds[side.ids[keep]] == TokenKind.SPECIAL
        ok[ch[special & (ch >= 0)]] = False
    new = np.cumsum(ok) - 1 + len(out.message)  # [n] global id of each kept chunk
    spans = al.chunk_bytes[0, :n] + p0
    for (keep, _), ch, target in ((sides[0], chunks[0], out.s_chunk), (sides[1], chunks[1], out.t_chunk)):
        valid = (ch >= 0) & ok[np.maximum(ch, 0)]
        target[keep[valid]] = new[ch[valid]]
    part = TokenPart.CONTENT if fld == "content" else TokenPart.REASONING
    for c in np.flatnonzero(ok).tolist():
        a, b = spans[c].tolist()
        out.message.append(message)
        out.part.append(part)
        out.s_bytes.append((a - ss.offset + ss.start, b - ss.offset + ss.start))
        out.t_bytes.append((a - ts.offset + ts.start, b - ts.offset + ts.start))


def _ordered_fields(s: RenderedSide, t: RenderedSide, message: int) -> list[str]:
    """Fields of a message both sides rendered, in text order (which both sides must share)."""
    s_order = [sp.field for sp in s.spans if sp.message == message]
    t_order = [sp.field for sp in t.spans if sp.message == message]
    both = [f for f in s_order if f in t_order]
    if both != [f for f in t_order if f in s_order]:
        raise ChatTemplateError(f"the two templates order message {message}'s reasoning and content differently")
    return both


def _chunk(conv: Conversation, s: RenderedSide, t: RenderedSide, s_vocab: Vocab, t_vocab: Vocab) -> _Chunks:
    out = _Chunks(s_chunk=np.full(s.n_tokens, -1, np.int64), t_chunk=np.full(t.n_tokens, -1, np.int64),
                  message=[], part=[], s_bytes=[], t_bytes=[], pairs=[])
    for i, msg in enumerate(conv.messages):
        for fld in _ordered_fields(s, t, i):
            _align_field(out, s, t, i, fld, s_vocab, t_vocab)
        se, te = int(s.turn_end[i]), int(t.turn_end[i])
        if msg.role == "assistant" and se >= 0 and te >= 0:
            out.s_chunk[se] = out.t_chunk[te] = len(out.message)
            out.message.append(i)
            out.part.append(TokenPart.TURN_END)
            out.s_bytes.append((int(s.starts[se]), int(s.ends[se])))
            out.t_bytes.append((int(t.starts[te]), int(t.ends[te])))
            out.pairs.append((se, te))
    for name, ch in (("student", out.s_chunk), ("teacher", out.t_chunk)):
        c = ch[ch >= 0]
        if np.any(c[1:] < c[:-1]):
            raise ChatTemplateError(f"the {name} template renders the messages out of order; cannot align them")
    return out


def _loss_token(side: RenderedSide, conv: Conversation, train_on: TrainOn) -> np.ndarray:
    if train_on == "all":
        return side.ends > side.starts
    assistant = np.array([m.role == "assistant" for m in conv.messages], bool)[np.maximum(side.message, 0)]
    trained = np.isin(side.part, (TokenPart.CONTENT, TokenPart.REASONING, TokenPart.EDGE, TokenPart.TURN_END))
    return trained & assistant & (side.message >= 0)


def _tokens(side: RenderedSide, chunk: np.ndarray, conv: Conversation, train_on: TrainOn,
            template: str) -> ChatTokens:
    return ChatTokens(text=side.text, ids=side.ids, starts=side.starts, ends=side.ends, message=side.message,
                      part=side.part, chunk=chunk, loss_token=_loss_token(side, conv, train_on),
                      turn_end=side.turn_end, template=template)


def _build(conv: Conversation, s: RenderedSide, t: RenderedSide, student: ChatSide, teacher: ChatSide,
           train_on: TrainOn) -> ConversationAlignment:
    ch = _chunk(conv, s, t, student.tokenizer.vocab, teacher.tokenizer.vocab)
    roles = np.array([conv.messages[m].role == "assistant" for m in ch.message], bool)
    return ConversationAlignment(
        conversation=conv, student=_tokens(s, ch.s_chunk, conv, train_on, student.template.name),
        teacher=_tokens(t, ch.t_chunk, conv, train_on, teacher.template.name),
        chunk_message=np.asarray(ch.message, np.int64), chunk_part=np.asarray(ch.part, np.uint8),
        student_chunk_bytes=np.asarray(ch.s_bytes, np.int64).reshape(-1, 2),
        teacher_chunk_bytes=np.asarray(ch.t_bytes, np.int64).reshape(-1, 2),
        loss_chunk=np.ones(len(ch.message), bool) if train_on == "all" else roles,
        turn_ends=np.asarray(ch.pairs, np.int64).reshape(-1, 2), train_on=train_on)


def check_arguments(train_on: str, max_student_tokens: int | None, max_teacher_tokens: int | None) -> None:
    """ValueError for a `train_on` or a budget `align_conversation` does not take."""
    if train_on not in ("assistant", "all"):
        raise ValueError(f"train_on must be 'assistant' or 'all'; got {train_on!r}")
    for name, budget in (("max_student_tokens", max_student_tokens), ("max_teacher_tokens", max_teacher_tokens)):
        if budget is not None and budget < 1:
            raise ValueError(f"{name} must be >= 1 or None; got {budget}")


# --- budgets -------------------------------------------------------------------------------------------


def _fits(s: RenderedSide, t: RenderedSide, max_s: int | None, max_t: int | None) -> bool:
    return (max_s is None or s.n_tokens <= max_s) and (max_t is None or t.n_tokens <= max_t)


def _estimate(side: RenderedSide, k: int) -> int:
    """Tokens of the first `k` messages in the full rendering (close to a rendering of those alone)."""
    return int(np.count_nonzero(side.message < k))


def _cut_tokens(tokens: ChatTokens, n: int, n_chunks: int) -> ChatTokens:
    """The first `n` tokens of a side, and its text up to their end."""
    end = int(tokens.ends[n - 1]) if n else 0
    text = tokens.text.encode("utf-8")[:end].decode("utf-8")
    turn_end = np.where(tokens.turn_end < n, tokens.turn_end, -1)
    chunk = tokens.chunk[:n]
    assert chunk.size == 0 or chunk.max() < n_chunks
    return replace(tokens, text=text, ids=tokens.ids[:n], starts=tokens.starts[:n], ends=tokens.ends[:n],
                   message=tokens.message[:n], part=tokens.part[:n], chunk=chunk, loss_token=tokens.loss_token[:n],
                   turn_end=turn_end)


def _cut_conversation(conv: Conversation, message: int, fld: str, n_bytes: int) -> Conversation:
    """The conversation as a cut left it: `message`'s field keeps its first `n_bytes` bytes, later fields none."""
    msg = conv.messages[message]
    fields: dict[str, Any] = {fld: getattr(msg, fld).encode("utf-8")[:n_bytes].decode("utf-8")}
    if fld == "reasoning_content":
        fields["content"] = ""
    return replace(conv, messages=(*conv.messages[:message], replace(msg, **fields)))


def _context_tokens(side: RenderedSide, message: int) -> int:
    """Tokens before the first rendered field of `message` (all of them where none is rendered)."""
    start = next((sp.start for sp in side.spans if sp.message == message), int(side.ends[-1]) + 1)
    return int(np.count_nonzero(side.starts < start))


def _context_error(s: RenderedSide, t: RenderedSide, a: int, max_s: int | None, max_t: int | None) -> ChatDataError:
    return ChatDataError("too_long", f"the context before the first assistant content takes {_context_tokens(s, a)} "
                                     f"student / {_context_tokens(t, a)} teacher tokens; the budget ({max_s} / "
                                     f"{max_t}) leaves no room for one chunk of it")


def _last_tokens(chunk: np.ndarray, n_chunks: int) -> np.ndarray:
    """``[C]`` index of the last token of each chunk (chunk ids are sorted along the tokens)."""
    idx = np.flatnonzero(chunk >= 0)
    return idx[np.searchsorted(chunk[idx], np.arange(n_chunks), side="right") - 1]


def _cut_inside(conv: Conversation, s: RenderedSide, t: RenderedSide, al: ConversationAlignment,
                max_s: int | None, max_t: int | None) -> ConversationAlignment:
    """Cut the (only) assistant turn inside its fields at the last chunk end both budgets allow."""
    a = conv.first_assistant
    n_s = _last_tokens(al.student.chunk, al.n_chunks) + 1  # [C] tokens kept on a cut after each chunk
    n_t = _last_tokens(al.teacher.chunk, al.n_chunks) + 1
    lead = np.frombuffer(s.text.encode("utf-8") + b"\0", np.uint8)[al.student_chunk_bytes[:, 1]]
    ok = ((al.chunk_message == a) & (al.chunk_part != TokenPart.TURN_END)
          & ((lead & 0xC0) != 0x80)  # the cut is not inside a UTF-8 character
          & (n_s <= (max_s or n_s.max(initial=0))) & (n_t <= (max_t or n_t.max(initial=0))))
    if not ok.any():
        raise _context_error(s, t, a, max_s, max_t)
    c = int(np.flatnonzero(ok)[-1])
    keep_s, keep_t, end = int(n_s[c]), int(n_t[c]), int(al.student_chunk_bytes[c, 1])
    fld = "content" if al.chunk_part[c] == TokenPart.CONTENT else "reasoning_content"
    span = s.span(a, fld)
    assert span is not None
    cut = _cut_conversation(conv, a, fld, end - span.start + span.offset)
    pairs = al.turn_ends[(al.turn_ends[:, 0] < keep_s) & (al.turn_ends[:, 1] < keep_t)]
    return replace(al, conversation=cut, student=_cut_tokens(al.student, keep_s, c + 1),
                   teacher=_cut_tokens(al.teacher, keep_t, c + 1), chunk_message=al.chunk_message[: c + 1],
                   chunk_part=al.chunk_part[: c + 1], student_chunk_bytes=al.student_chunk_bytes[: c + 1],
                   teacher_chunk_bytes=al.teacher_chunk_bytes[: c + 1], loss_chunk=al.loss_chunk[: c + 1],
                   turn_ends=pairs, truncation="content")


def align_conversation(conv: Conversation, *, student: ChatSide, teacher: ChatSide, train_on: TrainOn = "assistant",
                       max_student_tokens: int | None = None, max_teacher_tokens: int | None = None,
                       now: datetime | None = None) -> ConversationAlignment:
    """Render `conv` on both sides, align its contents and pair its assistant ends of turn (module docstring).

    `train_on`: "assistant" puts the loss on assistant contents and their ends of turn; "all" on every
    aligned chunk and every text-carrying student token. `now` fixes the date templates read (Llama-3);
    default: the current time, read once so both renderings of a side agree.
    Raises ChatTemplateError (a template refuses the conversation or hides a content) and ChatDataError
    (``too_long``: the context before the first assistant content exceeds a budget).
    """
    check_arguments(train_on, max_student_tokens, max_teacher_tokens)
    if not any(m.role == "assistant" for m in conv.messages):
        raise ChatDataError("no_assistant", f"the conversation has no assistant turn ({len(conv.messages)} messages)")
    now = now or datetime.now()
    s, t = render_side(student, conv, now=now), render_side(teacher, conv, now=now)
    return align_rendered(conv, s, t, student=student, teacher=teacher, train_on=train_on,
                          max_student_tokens=max_student_tokens, max_teacher_tokens=max_teacher_tokens, now=now)


def align_rendered(conv: Conversation, s: RenderedSide, t: RenderedSide, *, student: ChatSide, teacher: ChatSide,
                   train_on: TrainOn, max_student_tokens: int | None, max_teacher_tokens: int | None,
                   now: datetime) -> ConversationAlignment:
    """`align_conversation` of `conv` from its renderings on both sides (`render_side` with the same `now`)."""
    if _fits(s, t, max_student_tokens, max_teacher_tokens):
        return _build(conv, s, t, student, teacher, train_on)
    n, a = len(conv.messages), conv.first_assistant
    # the longest prefix the full rendering suggests fits, then shorter ones until one does
    top = n - 1
    while top > a + 1 and not _fits_estimate(s, t, top, max_student_tokens, max_teacher_tokens):
        top -= 1
    prefix = conv
    for k in range(top, a, -1):
        prefix = conv.prefix(k)
        s, t = render_side(student, prefix, now=now), render_side(teacher, prefix, now=now)
        if _fits(s, t, max_student_tokens, max_teacher_tokens):
            return replace(_build(prefix, s, t, student, teacher, train_on), truncation="messages",
                           dropped_messages=n - k)
    al = _build(prefix, s, t, student, teacher, train_on)
    log.debug("conversation cut inside message %d (budgets %s / %s)", a, max_student_tokens, max_teacher_tokens)
    return replace(_cut_inside(prefix, s, t, al, max_student_tokens, max_teacher_tokens),
                   dropped_messages=n - a - 1)


def _fits_estimate(s: RenderedSide, t: RenderedSide, k: int, max_s: int | None, max_t: int | None) -> bool:
    return (max_s is None or _estimate(s, k) <= max_s) and (max_t is None or _estimate(t, k) <= max_t)
