"""Align many conversations at once: `align_conversation` for a batch, bitwise the same result per conversation.

Each side renders every conversation (`render_sides`: one `encode_batch` call per side for the batch),
then every message field of every conversation is chunked together on flat arrays: a field's cut
positions are keyed ``field * K + value offset``, so one sorted intersection finds the common boundaries
of all fields and one `np.searchsorted` numbers the chunks (what `align_ends` gives field by field: a
chunk ends where both sides end a token); the chunk ids of each conversation follow its messages in
order (fields, then the assistant's end of turn) as `align_conversation` numbers them. A conversation
over a token budget is truncated as `align_conversation` does, from the renderings already made.

`align_conversations` aligns the batch again conversation by conversation where any conversation is
refused (a template error, no assistant turn, a budget nothing fits), so the error raised is the one
`align_conversation` gives for the first refused conversation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from xtalign.chat.conversation_align import (
    ChatTokens,
    ConversationAlignment,
    TrainOn,
    align_conversation,
    align_rendered,
    check_arguments,
)
from xtalign.chat.messages import ChatDataError, ChatError, Conversation
from xtalign.chat.side_batch import RenderedBatch, render_sides
from xtalign.chat.sides import ChatSide, RenderedSide, TokenPart
from xtalign.chat.spans import FieldSpan
from xtalign.chat.templates import ChatTemplateError
from xtalign.vocab import TokenKind, Vocab

__all__ = ["align_batch", "align_conversations"]

_FIELD_COLUMNS = 9  # conv, message, is_reasoning, student start/end/offset, teacher start/end/offset
_ITEM_COLUMNS = 5  # conv, field (-1: an end of turn), message, student token, teacher token


@dataclass(frozen=True, eq=False)
class _Plan:
    """What gets chunked, in chunk order: the fields both sides rendered, and the paired ends of turn."""

    fields: np.ndarray  # [F, 9]
    items: np.ndarray  # [I, 5]


@dataclass(frozen=True, eq=False)
class _Chunked:
    """Chunks of the batch: token chunk ids per side (flat) and per-chunk tables, conversation after conversation."""

    s_chunk: np.ndarray
    t_chunk: np.ndarray
    message: np.ndarray
    part: np.ndarray
    s_bytes: np.ndarray
    t_bytes: np.ndarray
    chunk_off: np.ndarray  # [B+1]
    pairs: np.ndarray  # [E, 2] rendering-relative (student, teacher) token of each paired end of turn
    pair_off: np.ndarray  # [B+1]


def _by_message(spans: tuple[FieldSpan, ...]) -> dict[int, list[FieldSpan]]:
    out: dict[int, list[FieldSpan]] = {}
    for sp in spans:
        out.setdefault(sp.message, []).append(sp)
    return out


def _plan(convs: Sequence[Conversation], s: RenderedBatch, t: RenderedBatch) -> _Plan:
    """The fields and ends of turn of every conversation in `align_conversation`'s chunk order."""
    fields: list[tuple[int, ...]] = []
    items: list[tuple[int, ...]] = []
    s_te, t_te = s.turn_end.tolist(), t.turn_end.tolist()
    for b, conv in enumerate(convs):
        s_by, t_by, base = _by_message(s.sides[b].spans), _by_message(t.sides[b].spans), int(s.msg_off[b])
        for i, msg in enumerate(conv.messages):
            s_f, t_f = {sp.field: sp for sp in s_by.get(i, ())}, {sp.field: sp for sp in t_by.get(i, ())}
            both = [f for f in s_f if f in t_f]
            if both != [f for f in t_f if f in s_f]:
                raise ChatTemplateError(f"the two templates order message {i}'s reasoning and content differently")
            for fld in both:
                ss, ts = s_f[fld], t_f[fld]
                items.append((b, len(fields), i, -1, -1))
                fields.append((b, i, int(fld == "reasoning_content"), ss.start, ss.end, ss.offset, ts.start, ts.end,
                               ts.offset))
            se, te = s_te[base + i], t_te[base + i]
            if msg.role == "assistant" and se >= 0 and te >= 0:
                items.append((b, -1, i, se, te))
    return _Plan(fields=np.array(fields, np.int64).reshape(-1, _FIELD_COLUMNS),
                 items=np.array(items, np.int64).reshape(-1, _ITEM_COLUMNS))


def _field_tokens(side: RenderedBatch, fields: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(token index, field index) of every token inside a planned field, in token order."""
    lookup = np.full(2 * int(side.msg_off[-1]), -1, np.int64)
    lookup[(side.msg_off[fields[:, 0]] + fields[:, 1]) * 2 + fields[:, 2]] = np.arange(fields.shape[0])
    cand = np.flatnonzero((side.part == TokenPart.CONTENT) | (side.part == TokenPart.REASONING))
    f = lookup[(side.msg_off[side.conv[cand]] + side.message[cand]) * 2 + (side.part[cand] == TokenPart.REASONING)]
    keep = f >= 0
    return cand[keep], f[keep]


@dataclass(frozen=True, eq=False)
class _FieldSide:
    """One side's tokens inside the planned fields, with their field and value-relative byte span."""

    tok: np.ndarray
    field: np.ndarray
    vs: np.ndarray
    ve: np.ndarray


def _field_side(side: RenderedBatch, fields: np.ndarray, col: int) -> _FieldSide:
    """`col`: the column of the side's span start in `fields` (its end and offset follow)."""
    tok, f = _field_tokens(side, fields)
    start, offset = fields[f, col], fields[f, col + 2]
    return _FieldSide(tok=tok, field=f, vs=side.starts[tok] - start + offset, ve=side.ends[tok] - start + offset)


def _keys(fs: _FieldSide, lo: np.ndarray, hi: np.ndarray, k: int) -> np.ndarray:
    """Sorted unique ``field * k + position`` of where the side can cut each field within ``[lo, hi]``: the
    start of its first token and every token's end."""
    n = fs.field.shape[0]
    first = np.ones(n, bool)
    first[1:] = fs.field[1:] != fs.field[:-1]  # a field's tokens are one run: its first token starts it
    heads = np.flatnonzero(first)
    at = np.arange(n) + np.cumsum(first)  # each run's start goes just before its first end
    f, v = np.empty(n + heads.shape[0], np.int64), np.empty(n + heads.shape[0], np.int64)
    f[at], v[at] = fs.field, fs.ve
    f[heads + np.arange(heads.shape[0])], v[heads + np.arange(heads.shape[0])] = fs.field[heads], fs.vs[heads]
    m = (v >= lo[f]) & (v <= hi[f])
    keys = f[m] * k + v[m]
    if np.all(keys[1:] > keys[:-1]):  # the tokens tile each field and the fields come in order: sorted already
        return keys
    return np.unique(keys)


def _intersect(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The values of sorted unique `a` that are in sorted unique `b`."""
    if not b.size:
        return b
    at = np.minimum(np.searchsorted(b, a), b.shape[0] - 1)
    return a[b[at] == a]


def _exclusive(counts: np.ndarray) -> np.ndarray:
    out = np.zeros(counts.shape[0] + 1, np.int64)
    np.cumsum(counts, out=out[1:])
    return out


@dataclass(frozen=True, eq=False)
class _Bounds:
    """The common cut positions of every field, keyed ``field * k + value offset`` and sorted."""

    k: int
    common: np.ndarray  # [K] keys
    value: np.ndarray  # [K] value offsets
    start: np.ndarray  # [F] index of each field's first key
    p0: np.ndarray  # [F] first and last common position of each field (chunked only where it has two)
    p1: np.ndarray
    n_chunks: np.ndarray  # [F]
    base: np.ndarray  # [F+1] each field's first chunk in the batch, before specials are dropped


def _bounds(fl: np.ndarray, fs: _FieldSide, ft: _FieldSide) -> _Bounds:
    lo = np.maximum(fl[:, 5], fl[:, 8])  # the bytes of the value both sides rendered (trimming may differ)
    hi = np.minimum(fl[:, 5] + fl[:, 4] - fl[:, 3], fl[:, 8] + fl[:, 7] - fl[:, 6])
    k = int(max(hi.max(initial=0), fs.ve.max(initial=0), ft.ve.max(initial=0))) + 1
    common = _intersect(_keys(fs, lo, hi, k), _keys(ft, lo, hi, k))
    value = common % k
    cnt = np.bincount(common // k, minlength=fl.shape[0])
    start = _exclusive(cnt)[:-1]
    active, last = cnt >= 2, max(value.shape[0] - 1, 0)
    p0 = np.where(active, value[np.minimum(start, last)], 0) if value.size else np.zeros_like(cnt)
    p1 = np.where(active, value[np.minimum(start + cnt - 1, last)], 0) if value.size else np.zeros_like(cnt)
    n_chunks = np.where(active, cnt - 1, 0)
    return _Bounds(k=k, common=common, value=value, start=start, p0=p0, p1=p1, n_chunks=n_chunks,
                   base=_exclusive(n_chunks))


def _kept(x: _FieldSide, bd: _Bounds) -> tuple[np.ndarray, np.ndarray]:
    """(token, chunk in the batch) of the field tokens between their field's first and last common position:
    a token's chunk counts the common positions before its end (`align_ends` on the field)."""
    m = (bd.n_chunks[x.field] > 0) & (x.vs >= bd.p0[x.field]) & (x.ve <= bd.p1[x.field])
    f = x.field[m]
    return x.tok[m], bd.base[f] + np.searchsorted(bd.common, f * bd.k + x.ve[m], side="left") - bd.start[f] - 1


@dataclass(frozen=True, eq=False)
class _Numbers:
    """Chunk ids: the chunks kept, and where each planned item's first chunk goes."""

    ok: np.ndarray  # [NC] the chunk holds no special written inside the content
    rank: np.ndarray  # [NC] kept chunks before it in its field
    first: np.ndarray  # [I+1] each item's first chunk in the batch
    local: np.ndarray  # [I] the same in its conversation
    field_item: np.ndarray  # [F] the item of each field
    chunk_off: np.ndarray  # [B+1]
    turns: np.ndarray  # the items that are ends of turn


def _numbers(plan: _Plan, bd: _Bounds, kept: list[tuple[np.ndarray, np.ndarray]], sides: list[RenderedBatch],
             vocabs: list[Vocab]) -> _Numbers:
    bad = np.zeros(int(bd.base[-1]), bool)
    for (tok, g), side, vocab in zip(kept, sides, vocabs, strict=True):
        bad[g[vocab.kinds[side.ids[tok]] == TokenKind.SPECIAL]] = True
    ok = ~bad
    ok_before = _exclusive(ok)
    it = plan.items
    is_field = it[:, 1] >= 0
    count = np.ones(it.shape[0], np.int64)
    count[is_field] = (ok_before[bd.base[1:]] - ok_before[bd.base[:-1]])[it[is_field, 1]]
    first = _exclusive(count)
    chunk_off = _exclusive(np.bincount(it[:, 0], weights=count, minlength=len(sides[0].sides)).astype(np.int64))
    field_item = np.zeros(plan.fields.shape[0], np.int64)
    field_item[it[is_field, 1]] = np.flatnonzero(is_field)
    return _Numbers(ok=ok, rank=ok_before[:-1] - np.repeat(ok_before[bd.base[:-1]], bd.n_chunks), first=first,
                    local=first[:-1] - chunk_off[it[:, 0]], field_item=field_item, chunk_off=chunk_off,
                    turns=np.flatnonzero(~is_field))


def _token_chunks(side: RenderedBatch, kept: tuple[np.ndarray, np.ndarray], field: np.ndarray, nb: _Numbers,
                  plan: _Plan, col: int) -> np.ndarray:
    """``[N]`` the chunk id of each token in its conversation (-1 none); `col`: the item column of its end of turn."""
    tok, g = kept
    keep = nb.ok[g]
    ch = np.full(side.ids.shape[0], -1, np.int64)
    ch[tok[keep]] = nb.local[nb.field_item[field[keep]]] + nb.rank[g[keep]]
    it = plan.items[nb.turns]
    ch[side.tok_off[it[:, 0]] + it[:, col]] = nb.local[nb.turns]
    return ch


def _check_order(name: str, ch: np.ndarray, side: RenderedBatch) -> None:
    idx = np.flatnonzero(ch >= 0)
    c, conv = ch[idx], side.conv[idx]
    if np.any((c[1:] < c[:-1]) & (conv[1:] == conv[:-1])):
        raise ChatTemplateError(f"the {name} template renders the messages out of order; cannot align them")


def _chunk(plan: _Plan, s: RenderedBatch, t: RenderedBatch, s_vocab: Vocab, t_vocab: Vocab) -> _Chunked:
    """`align_conversation`'s chunks of every conversation (its `_chunk`, for the batch at once)."""
    fs, ft = _field_side(s, plan.fields, 3), _field_side(t, plan.fields, 6)
    bd = _bounds(plan.fields, fs, ft)
    kept = [_kept(fs, bd), _kept(ft, bd)]
    nb = _numbers(plan, bd, kept, [s, t], [s_vocab, t_vocab])
    field = np.repeat(np.arange(plan.fields.shape[0]), bd.n_chunks)  # the field of each chunk
    chunks = [_token_chunks(side, kp, field[kp[1]], nb, plan, col)
              for side, kp, col in ((s, kept[0], 3), (t, kept[1], 4))]
    _check_order("student", chunks[0], s)
    _check_order("teacher", chunks[1], t)
    return _tables(plan, s, t, chunks, bd, nb, field)


def _tables(plan: _Plan, s: RenderedBatch, t: RenderedBatch, chunks: list[np.ndarray], bd: _Bounds, nb: _Numbers,
            field: np.ndarray) -> _Chunked:
    """Per chunk of the batch, conversation after conversation: message, part and each side's byte span."""
    fl, it = plan.fields, plan.items
    total = int(nb.first[-1])
    message, part = np.empty(total, np.int64), np.empty(total, np.uint8)
    s_bytes, t_bytes = np.empty((total, 2), np.int64), np.empty((total, 2), np.int64)
    g = np.flatnonzero(nb.ok)
    f = field[g]
    pos = nb.first[nb.field_item[f]] + nb.rank[g]
    at = bd.start[f] + g - bd.base[f]
    a, b = bd.value[at], bd.value[at + 1]  # value-relative span [a, b) of each kept chunk
    message[pos] = fl[f, 1]
    part[pos] = np.where(fl[f, 2] == 1, TokenPart.REASONING, TokenPart.CONTENT)
    for out, c in ((s_bytes, 3), (t_bytes, 6)):
        out[pos, 0], out[pos, 1] = a - fl[f, c + 2] + fl[f, c], b - fl[f, c + 2] + fl[f, c]
    te = it[nb.turns]
    turn_at = nb.first[nb.turns]
    message[turn_at], part[turn_at] = te[:, 2], TokenPart.TURN_END
    for out, side, col in ((s_bytes, s, 3), (t_bytes, t, 4)):
        tok = side.tok_off[te[:, 0]] + te[:, col]
        out[turn_at, 0], out[turn_at, 1] = side.starts[tok], side.ends[tok]
    return _Chunked(s_chunk=chunks[0], t_chunk=chunks[1], message=message, part=part, s_bytes=s_bytes,
                    t_bytes=t_bytes, chunk_off=nb.chunk_off, pairs=np.ascontiguousarray(te[:, 3:5]),
                    pair_off=_exclusive(np.bincount(te[:, 0], minlength=len(s.sides))))


def _loss_tokens(side: RenderedBatch, assistant: np.ndarray, train_on: TrainOn) -> np.ndarray:
    """``[N]`` the CE targets of every conversation (`align_conversation`'s ``loss_token``)."""
    if train_on == "all":
        return side.ends > side.starts
    owner = assistant[side.msg_off[side.conv] + np.maximum(side.message, 0)]
    return (side.part != TokenPart.TEMPLATE) & owner & (side.message >= 0)


def _tokens(side: RenderedSide, chunk: np.ndarray, loss: np.ndarray, template: str) -> ChatTokens:
    return ChatTokens(text=side.text, ids=side.ids, starts=side.starts, ends=side.ends, message=side.message,
                      part=side.part, chunk=chunk, loss_token=loss, turn_end=side.turn_end, template=template)


def _fits(s: RenderedSide, t: RenderedSide, max_s: int | None, max_t: int | None) -> bool:
    return (max_s is None or s.n_tokens <= max_s) and (max_t is None or t.n_tokens <= max_t)


def align_batch(convs: Sequence[Conversation], s: RenderedBatch, t: RenderedBatch, *, student: ChatSide,
                teacher: ChatSide, train_on: TrainOn = "assistant", max_student_tokens: int | None = None,
                max_teacher_tokens: int | None = None, now: datetime) -> list[ConversationAlignment]:
    """`align_conversation` of every conversation from both sides' `render_sides` (made with the same `now`).

    Raises what `align_conversation` raises, for some refused conversation (not necessarily the first)."""
    for c in convs:
        if not any(m.role == "assistant" for m in c.messages):
            raise ChatDataError("no_assistant", f"the conversation has no assistant turn ({len(c.messages)} messages)")
    ch = _chunk(_plan(convs, s, t), s, t, student.tokenizer.vocab, teacher.tokenizer.vocab)
    assistant = np.array([m.role == "assistant" for c in convs for m in c.messages], bool)
    s_loss, t_loss = _loss_tokens(s, assistant, train_on), _loss_tokens(t, assistant, train_on)
    conv_of_chunk = np.repeat(np.arange(len(convs)), np.diff(ch.chunk_off))
    loss_chunk = (np.ones(ch.message.shape[0], bool) if train_on == "all"
                  else assistant[s.msg_off[conv_of_chunk] + ch.message])
    out = []
    for b, conv in enumerate(convs):
        ss, ts = s.sides[b], t.sides[b]
        if not _fits(ss, ts, max_student_tokens, max_teacher_tokens):
            out.append(align_rendered(conv, ss, ts, student=student, teacher=teacher, train_on=train_on,
                                      max_student_tokens=max_student_tokens, max_teacher_tokens=max_teacher_tokens,
                                      now=now))
            continue
        sa, sb, ta, tb = s.tok_off[b], s.tok_off[b + 1], t.tok_off[b], t.tok_off[b + 1]
        ca, cb, pa, pb = ch.chunk_off[b], ch.chunk_off[b + 1], ch.pair_off[b], ch.pair_off[b + 1]
        out.append(ConversationAlignment(
            conversation=conv, student=_tokens(ss, ch.s_chunk[sa:sb], s_loss[sa:sb], student.template.name),
            teacher=_tokens(ts, ch.t_chunk[ta:tb], t_loss[ta:tb], teacher.template.name),
            chunk_message=ch.message[ca:cb], chunk_part=ch.part[ca:cb], student_chunk_bytes=ch.s_bytes[ca:cb],
            teacher_chunk_bytes=ch.t_bytes[ca:cb], loss_chunk=loss_chunk[ca:cb], turn_ends=ch.pairs[pa:pb],
            train_on=train_on))
    return out


def align_conversations(convs: Sequence[Conversation], *, student: ChatSide, teacher: ChatSide,
                        train_on: TrainOn = "assistant", max_student_tokens: int | None = None,
                        max_teacher_tokens: int | None = None,
                        now: datetime | None = None) -> list[ConversationAlignment]:
    """`align_conversation` of every conversation (one `now` for all: default the current time, read once),
    rendered and encoded side by side for the whole batch; the same results, and the same errors."""
    check_arguments(train_on, max_student_tokens, max_teacher_tokens)
    now = now or datetime.now()
    convs = list(convs)
    kw = {"student": student, "teacher": teacher, "train_on": train_on, "max_student_tokens": max_student_tokens,
          "max_teacher_tokens": max_teacher_tokens, "now": now}
    try:
        if not all(any(m.role == "assistant" for m in c.messages) for c in convs):
            raise ChatDataError("no_assistant", "a conversation has no assistant turn")
        return align_batch(convs, render_sides(student, convs, now=now), render_sides(teacher, convs, now=now),
                           **kw)  # type: ignore[arg-type]
    except (ChatError, ValueError):
        return [align_conversation(c, **kw) for c in convs]  # type: ignore[arg-type]
