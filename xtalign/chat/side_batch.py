"""One side of many conversations at once: `render_side` for a batch, the token work done on flat arrays.

Every conversation is rendered and its spans located as `render_side` does; then ALL renderings are
encoded with one `encode_rendered_batch` call, and the turn ends and token labels of the whole batch are
found with a few vectorised searches over one shared byte space (each rendering laid after the previous
one with a one-byte gap, so no span or cut of one conversation can reach another's tokens). The result
is, conversation by conversation, exactly `render_side`'s (`sides[b]` views the flat arrays).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from xtalign.chat.encode import bos_string, encode_rendered_batch, eos_string
from xtalign.chat.messages import Conversation
from xtalign.chat.render import render
from xtalign.chat.sides import ChatSide, RenderedSide, TokenPart, _label
from xtalign.chat.spans import FieldSpan, is_turn_end, locate_spans
from xtalign.vocab import Vocab

__all__ = ["RenderedBatch", "render_sides"]


@dataclass(frozen=True, eq=False)
class RenderedBatch:
    """B conversations as one side sees them: flat per-token arrays ``[N]`` (rendering b is tokens
    ``tok_off[b]:tok_off[b + 1]``, byte offsets into its own text), per-message ``turn_end`` ``[sum M]``
    (rendering-relative token indices; conversation b's messages are ``msg_off[b]:msg_off[b + 1]``),
    `conv` ``[N]`` the conversation of each token, and `sides`, each conversation's `RenderedSide`."""

    sides: tuple[RenderedSide, ...]
    ids: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    message: np.ndarray
    part: np.ndarray
    turn_end: np.ndarray
    tok_off: np.ndarray
    msg_off: np.ndarray
    conv: np.ndarray


@functools.lru_cache(maxsize=32)
def _end_table(vocab: Vocab) -> np.ndarray:
    """``[V]`` bool: the id is a turn_end/eos special (`is_turn_end`)."""
    out = np.zeros(vocab.size, bool)
    for i in vocab.special_ids.tolist():
        out[i] = is_turn_end(vocab, i)
    return out


@dataclass(frozen=True)
class _Spans:
    """Every rendered field of the batch in text order, conversation by conversation (flat ``[S]`` arrays)."""

    conv: np.ndarray
    message: np.ndarray
    content: np.ndarray  # bool: the field is a content (else reasoning)
    start: np.ndarray  # in the shared byte space
    end: np.ndarray


def _flat_spans(spans: Sequence[tuple[FieldSpan, ...]], base: np.ndarray) -> _Spans:
    rows = [(b, sp.message, sp.field == "content", sp.start, sp.end) for b, ss in enumerate(spans) for sp in ss]
    table = np.array(rows, np.int64).reshape(-1, 5)
    conv = table[:, 0]
    return _Spans(conv=conv, message=table[:, 1], content=table[:, 2].astype(bool), start=table[:, 3] + base[conv],
                  end=table[:, 4] + base[conv])


def _turn_ends(ids: np.ndarray, gstarts: np.ndarray, sp: _Spans, base: np.ndarray, tok_off: np.ndarray,
               msg_off: np.ndarray, vocab: Vocab) -> np.ndarray:
    """``[sum M]`` each message's first turn_end/eos special after its content, before the next rendered field."""
    out = np.full(int(msg_off[-1]), -1, np.int64)
    same_next = np.zeros(sp.conv.shape[0], bool)
    same_next[:-1] = sp.conv[1:] == sp.conv[:-1]
    nxt = np.append(sp.start[1:], 0)
    before = np.where(same_next, nxt, base[sp.conv + 1])  # the next field, else the end of the rendering
    k = np.flatnonzero(sp.content)
    lo = np.searchsorted(gstarts, sp.end[k], side="left")
    hi = np.searchsorted(gstarts, before[k], side="left")
    ends = np.flatnonzero(_end_table(vocab)[ids])  # token indices of every turn_end/eos special
    j = np.searchsorted(ends, lo, side="left")
    hit = ends[np.minimum(j, max(ends.shape[0] - 1, 0))] if ends.size else np.zeros_like(lo)
    found = (j < ends.shape[0]) & (hit < hi)
    c = sp.conv[k]
    out[msg_off[c] + sp.message[k]] = np.where(found, hit - tok_off[c], -1)
    return out


@dataclass(frozen=True, eq=False)
class _Batch:
    """The batch's token spans in the shared byte space (and each rendering's own), fields, turn ends."""

    spans: _Spans
    span_lists: tuple[tuple[FieldSpan, ...], ...]
    gstarts: np.ndarray
    gends: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    base: np.ndarray
    turn_end: np.ndarray
    tok_off: np.ndarray
    msg_off: np.ndarray
    n_conv: int


def _cuts(b: _Batch) -> tuple[np.ndarray, np.ndarray] | None:
    """Shared-space cuts between turns (each rendering's start first) and the message after each; None where
    a rendering's cuts are not in order (then `_label` does it conversation by conversation)."""
    sp, n_conv = b.spans, b.n_conv
    first = np.searchsorted(sp.conv, np.arange(n_conv), side="left")  # each rendering's first field
    has = first < np.searchsorted(sp.conv, np.arange(n_conv), side="right")
    label0 = np.where(has, sp.message[np.minimum(first, max(sp.conv.shape[0] - 1, 0))] if sp.conv.size else -1, -1)
    a = np.flatnonzero((sp.conv[1:] == sp.conv[:-1]) & (sp.message[1:] != sp.message[:-1]))
    c = sp.conv[a]
    t = b.turn_end[b.msg_off[c] + sp.message[a]]  # the earlier turn's end of turn, else its field's end
    cut = np.where(t >= 0, b.gends[b.tok_off[c] + np.maximum(t, 0)], sp.end[a])
    order = np.argsort(np.concatenate([np.arange(n_conv) * 2, c * 2 + 1]), kind="stable")
    cuts = np.concatenate([b.base[:n_conv], cut])[order]
    labels = np.concatenate([label0, sp.message[a + 1]])[order]
    return (cuts, labels) if np.all(cuts[1:] >= cuts[:-1]) else None


def _labels(b: _Batch) -> tuple[np.ndarray, np.ndarray]:
    """Per token of the batch: message index and TokenPart, as `_label` gives them rendering by rendering."""
    sp, gs, ge = b.spans, b.gstarts, b.gends
    part = np.full(gs.shape[0], TokenPart.TEMPLATE, np.uint8)
    message = np.full(gs.shape[0], -1, np.int64)
    if not sp.start.size:  # no rendered field (no conversation): nothing but template
        return message, part
    k = np.searchsorted(sp.start, gs, side="right") - 1  # the last field starting at or before the token
    kk = np.maximum(k, 0)
    inside = (k >= 0) & (ge <= sp.end[kk]) & (ge > gs)
    part[inside] = np.where(sp.content[kk[inside]], TokenPart.CONTENT, TokenPart.REASONING)
    message[inside] = sp.message[kk[inside]]
    ne = np.flatnonzero(sp.end > sp.start)  # an empty field has no bytes a token could share with the template
    if ne.size:  # the last such field starting before the token ends: the one whose EDGE it is, if it overlaps
        j = np.searchsorted(sp.start[ne], ge, side="left") - 1
        jj = ne[np.maximum(j, 0)]
        edge = (j >= 0) & (sp.end[jj] > gs) & ~inside
        part[edge], message[edge] = TokenPart.EDGE, sp.message[jj[edge]]
    te = np.flatnonzero(b.turn_end >= 0)
    c = np.searchsorted(b.msg_off, te, side="right") - 1
    at = b.tok_off[c] + b.turn_end[te]
    part[at], message[at] = TokenPart.TURN_END, te - b.msg_off[c]
    cuts = _cuts(b)
    if cuts is None:
        return _per_conversation(b)
    free = message < 0
    message[free] = cuts[1][np.searchsorted(cuts[0], gs[free], side="right") - 1]
    return message, part


def _per_conversation(b: _Batch) -> tuple[np.ndarray, np.ndarray]:
    parts = [_label(b.starts[b.tok_off[i]: b.tok_off[i + 1]], b.ends[b.tok_off[i]: b.tok_off[i + 1]],
                    b.span_lists[i], b.turn_end[b.msg_off[i]: b.msg_off[i + 1]]) for i in range(b.n_conv)]
    return (np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64),
            np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.uint8))


def render_sides(side: ChatSide, convs: Sequence[Conversation], *, now: datetime) -> RenderedBatch:
    """`render_side` of every conversation, the encoding and labelling done once for the whole batch."""
    tok = side.tokenizer
    bos, eos = bos_string(tok), eos_string(tok)
    texts = [render(side.template, c, bos_token=bos, eos_token=eos, variables=side.variables, now=now) for c in convs]
    span_lists = tuple(tuple(locate_spans(side.template, c, text, bos_token=bos, eos_token=eos,
                                          variables=side.variables, now=now)) for c, text in zip(convs, texts,
                                                                                                strict=True))
    ids, starts, ends, tok_off = encode_rendered_batch(tok, texts, add_bos=side.add_bos)
    n = len(convs)
    base = np.zeros(n + 1, np.int64)  # each rendering's first byte in the shared space
    np.cumsum(np.array([len(t.encode("utf-8")) + 1 for t in texts], np.int64), out=base[1:])
    msg_off = np.zeros(n + 1, np.int64)
    np.cumsum(np.array([len(c.messages) for c in convs], np.int64), out=msg_off[1:])
    conv = np.repeat(np.arange(n), np.diff(tok_off))
    gstarts, gends = starts + base[conv], ends + base[conv]
    spans = _flat_spans(span_lists, base)
    turn_end = _turn_ends(ids, gstarts, spans, base, tok_off, msg_off, tok.vocab)
    message, part = _labels(_Batch(spans=spans, span_lists=span_lists, gstarts=gstarts, gends=gends, starts=starts,
                                   ends=ends, base=base, turn_end=turn_end, tok_off=tok_off, msg_off=msg_off,
                                   n_conv=n))
    sides = []
    for i, text in enumerate(texts):
        a, b = int(tok_off[i]), int(tok_off[i + 1])
        sides.append(RenderedSide(text=text, ids=ids[a:b], starts=starts[a:b], ends=ends[a:b], message=message[a:b],
                                  part=part[a:b], spans=span_lists[i],
                                  turn_end=turn_end[msg_off[i]: msg_off[i + 1]]))
    return RenderedBatch(sides=tuple(sides), ids=ids, starts=starts, ends=ends, message=message, part=part,
                         turn_end=turn_end, tok_off=tok_off, msg_off=msg_off, conv=conv)
