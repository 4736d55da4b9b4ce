"""One side of a chat alignment: a tokenizer with its own template, the conversation rendered and encoded,
and every token labelled with the message it belongs to and the part it plays (`TokenPart`).

Labels: a token wholly inside a content (reasoning) span is CONTENT (REASONING); one that covers content
bytes and template bytes is EDGE (its content bytes have no counterpart token on the other side); the
end-of-turn special after a message's content is TURN_END; the rest is TEMPLATE. Template tokens belong
to the message whose turn they are in: the header before a content goes with it, the markers up to and
including a message's end of turn with that message, the preamble with the first message.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import IntEnum
from typing import Any

import numpy as np

from xtalign.chat.encode import bos_string, encode_rendered, eos_string
from xtalign.chat.messages import Conversation
from xtalign.chat.render import render
from xtalign.chat.spans import FieldSpan, locate_spans, turn_end_token
from xtalign.chat.templates import ChatTemplate
from xtalign.zoo.tokenizer import Tokenizer

__all__ = ["ChatSide", "RenderedSide", "TokenPart", "render_side"]


class TokenPart(IntEnum):
    """What a token of a rendered chat is (stored per token, uint8)."""

    TEMPLATE = 0  # written by the template (markers, role names, preambles)
    CONTENT = 1  # inside a message's content
    REASONING = 2  # inside a message's reasoning_content
    TURN_END = 3  # the end-of-turn special closing a message
    EDGE = 4  # covers content bytes and template bytes at once


_FIELD_PART = {"content": TokenPart.CONTENT, "reasoning_content": TokenPart.REASONING}


@dataclass(frozen=True, eq=False)
class ChatSide:
    """A tokenizer with the chat template its model was trained with.

    `add_bos`: add the tokenizer's BOS where the rendering does not start with it (see `encode_rendered`);
    `variables`: extra template variables (Llama-3's ``date_string``, Qwen3's ``enable_thinking``).
    """

    tokenizer: Tokenizer
    template: ChatTemplate
    add_bos: bool = False
    variables: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class RenderedSide:
    """A conversation as one side sees it. Arrays are per token ``[T]``; `turn_end` is per message ``[M]``."""

    text: str
    ids: np.ndarray  # [T] int64
    starts: np.ndarray  # [T] int64 byte offsets into text.encode("utf-8")
    ends: np.ndarray  # [T] int64
    message: np.ndarray  # [T] int64 message index
    part: np.ndarray  # [T] uint8 TokenPart
    spans: tuple[FieldSpan, ...]  # rendered fields in text order
    turn_end: np.ndarray  # [M] int64 token index of each message's end-of-turn special, -1 where none

    @property
    def n_tokens(self) -> int:
        return int(self.ids.shape[0])

    def span(self, message: int, fld: str) -> FieldSpan | None:
        return next((s for s in self.spans if s.message == message and s.field == fld), None)


def _turn_ends(tok: Tokenizer, ids: np.ndarray, starts: np.ndarray, spans: tuple[FieldSpan, ...],
               n_messages: int) -> np.ndarray:
    """[M] the first turn_end/eos special after each content, before the next rendered field."""
    out = np.full(n_messages, -1, np.int64)
    for k, sp in enumerate(spans):
        if sp.field != "content":
            continue
        before = spans[k + 1].start if k + 1 < len(spans) else int(np.iinfo(np.int64).max)
        hit = turn_end_token(tok.vocab, ids, starts, sp.end, before)
        out[sp.message] = -1 if hit is None else hit
    return out


def _label(starts: np.ndarray, ends: np.ndarray, spans: tuple[FieldSpan, ...],
           turn_end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per token: message index [T] int64 and TokenPart [T] uint8."""
    part = np.full(starts.shape[0], TokenPart.TEMPLATE, np.uint8)
    message = np.full(starts.shape[0], -1, np.int64)
    carries = ends > starts
    for sp in spans:
        inside = (starts >= sp.start) & (ends <= sp.end) & carries
        part[inside], message[inside] = _FIELD_PART[sp.field], sp.message
        if sp.end > sp.start:  # an empty field has no bytes a token could share with the template
            edge = (starts < sp.end) & (ends > sp.start) & ~inside
            part[edge], message[edge] = TokenPart.EDGE, sp.message
    for i, t in enumerate(turn_end.tolist()):
        if t >= 0:
            part[t], message[t] = TokenPart.TURN_END, i
    if not spans:
        return message, part
    # template tokens: cut the text between consecutive turns after the earlier one's end of turn
    cuts, labels = [], [spans[0].message]
    for a, b in zip(spans, spans[1:], strict=False):
        if a.message != b.message:
            t = int(turn_end[a.message])
            cuts.append(int(ends[t]) if t >= 0 else a.end)
            labels.append(b.message)
    free = message < 0
    message[free] = np.asarray(labels, np.int64)[np.searchsorted(np.asarray(cuts, np.int64), starts[free],
                                                                 side="right")]
    return message, part


def render_side(side: ChatSide, conversation: Conversation, *, now: datetime) -> RenderedSide:
    """Render `conversation` with the side's template, encode it with its tokenizer and label every token."""
    tok = side.tokenizer
    bos, eos = bos_string(tok), eos_string(tok)
    text = render(side.template, conversation, bos_token=bos, eos_token=eos, variables=side.variables, now=now)
    ids, starts, ends = encode_rendered(tok, text, add_bos=side.add_bos)
    spans = tuple(locate_spans(side.template, conversation, text, bos_token=bos, eos_token=eos,
                               variables=side.variables, now=now))
    turn_end = _turn_ends(tok, ids, starts, spans, len(conversation.messages))
    message, part = _label(starts, ends, spans, turn_end)
    return RenderedSide(text=text, ids=ids, starts=starts, ends=ends, message=message, part=part, spans=spans,
                        turn_end=turn_end)
