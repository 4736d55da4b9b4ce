"""Where each message's content sits in a rendered chat, and where each assistant turn ends.

Spans are found by rendering the conversation a second time with every content (and reasoning)
wrapped in private-use markers that name it. That rendering gives the template's own text around each
field exactly; the real rendering must then be that same text with each field in its place, whole or
with leading/trailing whitespace trimmed (Gemma and Llama-3 `trim` contents; Qwen3 strips newlines
around reasoning). Searching the real text for a content string instead would find a short content
("user", "a") inside the template's markers.

A template that rewrites a content beyond trimming (e.g. Qwen3 splitting a ``</think>`` written into
the content), drops a content, or renders it twice raises ChatTemplateError naming the message.
Reasoning may be dropped (most templates do; Qwen3 keeps only the latest turns').
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from xtalign.chat.messages import Conversation
from xtalign.chat.render import message_dicts, render_dicts
from xtalign.chat.templates import ChatTemplate, ChatTemplateError
from xtalign.vocab import TokenKind, Vocab

__all__ = ["END_ROLES", "FIELDS", "FieldSpan", "is_turn_end", "locate_spans", "turn_end_token"]

FIELDS = ("reasoning_content", "content")
END_ROLES = frozenset({"turn_end", "eos"})
_OPEN, _CLOSE, _TAG0 = "\U00100000", "\U00100001", 0x100100  # plane-16 private use: never in real text
_MARKED = re.compile(f"{_OPEN}([\U00100100-\U0010fffd])(.*?){_CLOSE}", re.DOTALL)
_RESERVED = re.compile("[\U00100000-\U0010ffff]")


@dataclass(frozen=True)
class FieldSpan:
    """A message field in a rendered text: bytes ``[start, end)`` of the rendered UTF-8, which hold the
    field's own UTF-8 bytes ``[offset, offset + end - start)`` (offset > 0 where the template trimmed it)."""

    message: int
    field: str  # "content" or "reasoning_content"
    start: int
    end: int
    offset: int


def _marked(conversation: Conversation) -> tuple[list[dict[str, Any]], list[tuple[int, str]]]:
    """Message dicts with every field wrapped in markers, and (message, field) of each marker tag."""
    dicts = message_dicts(conversation.messages)
    tags: list[tuple[int, str]] = []
    for i, d in enumerate(dicts):
        for fld in FIELDS:
            value = d.get(fld)
            if value is None:
                continue
            if _RESERVED.search(value):
                raise ChatTemplateError(f"message {i}'s {fld} holds plane-16 private-use characters, which xtalign "
                                        "uses to find spans")
            d[fld] = f"{_OPEN}{chr(_TAG0 + len(tags))}{value}{_CLOSE}"
            tags.append((i, fld))
        if "thinking" in d:
            d["thinking"] = d["reasoning_content"]
    return dicts, tags


def _trims(value: str) -> list[tuple[int, int]]:
    """Candidate (start, end) char slices of a value, least trimmed first: whole, newlines, any whitespace."""
    n = len(value)
    heads = [0, len(value) - len(value.lstrip("\n")), len(value) - len(value.lstrip())]
    tails = [n, len(value.rstrip("\n")), len(value.rstrip())]
    out: list[tuple[int, int]] = []
    for a in heads:
        for b in tails:
            if (a, b) not in out and a <= b:
                out.append((a, b))
    return sorted(out, key=lambda ab: (ab[0] + n - ab[1], ab))


def locate_spans(template: ChatTemplate, conversation: Conversation, rendered: str, *, bos_token: str | None,
                 eos_token: str | None, add_generation_prompt: bool = False,
                 variables: Mapping[str, Any] | None = None, now: datetime | None = None) -> list[FieldSpan]:
    """Spans of every rendered field of `conversation` in `rendered` (its rendering with the same arguments),
    in text order. Every message's content must be found once; ChatTemplateError names the one that is not."""
    dicts, tags = _marked(conversation)
    marked = render_dicts(template, dicts, bos_token=bos_token, eos_token=eos_token,
                          add_generation_prompt=add_generation_prompt, variables=variables, now=now)
    pieces = _MARKED.split(marked)  # [text, tag, inner, text, tag, inner, ..., text]
    if _RESERVED.search("".join(pieces[::3])):
        raise ChatTemplateError(f"template {template.name} splits or rewrites a message content (markers left "
                                "unpaired); xtalign cannot locate its span")
    seen: dict[tuple[int, str], int] = {}
    spans: list[FieldSpan] = []
    pos, byte_pos = 0, 0
    for j in range(0, len(pieces) - 1, 3):
        literal, tag, inner = pieces[j], pieces[j + 1], pieces[j + 2]
        message, fld = tags[ord(tag) - _TAG0]
        value = getattr(conversation.messages[message], fld)
        if (message, fld) in seen or inner != value:
            what = "renders it twice" if (message, fld) in seen else "rewrites it"
            raise ChatTemplateError(f"template {template.name} {what}: message {message}'s {fld}")
        seen[message, fld] = 1
        if not rendered.startswith(literal, pos):
            raise _mismatch(template, message, fld)
        byte_pos += len(literal.encode("utf-8"))
        pos += len(literal)
        follow = pieces[j + 3]  # the template text after this field, up to the next one
        whole = rendered.startswith(value, pos) and rendered.startswith(follow, pos + len(value))
        for a, b in [(0, len(value))] if whole else _trims(value):  # the whole value is the first candidate
            part = value[a:b]
            if rendered.startswith(part, pos) and rendered.startswith(follow, pos + len(part)):
                n = len(part.encode("utf-8"))
                spans.append(FieldSpan(message=message, field=fld, start=byte_pos, end=byte_pos + n,
                                       offset=len(value[:a].encode("utf-8"))))
                pos += len(part)
                byte_pos += n
                break
        else:
            raise _mismatch(template, message, fld)
    if rendered[pos:] != pieces[-1]:
        raise ChatTemplateError(f"template {template.name} renders differently around the last message (does it "
                                "test a content's value?); xtalign cannot locate the spans")
    for i in range(len(conversation.messages)):
        if (i, "content") not in seen:
            raise ChatTemplateError(f"template {template.name} does not render message {i}'s content "
                                    f"({conversation.messages[i].role})")
    return spans


def _mismatch(template: ChatTemplate, message: int, fld: str) -> ChatTemplateError:
    return ChatTemplateError(f"template {template.name}: cannot find message {message}'s {fld} in the rendering "
                             "(the template renders it differently from its value, or tests the value)")


def is_turn_end(vocab: Vocab, token_id: int) -> bool:
    """A SPECIAL token whose role (projection's chat roles, then the vocab's) is turn_end or eos."""
    from xtalign.projection import _roles_of  # the one role lookup the projection also maps specials by

    return bool(vocab.kinds[token_id] == TokenKind.SPECIAL) and not END_ROLES.isdisjoint(_roles_of(vocab, token_id))


def turn_end_token(vocab: Vocab, ids: np.ndarray, starts: np.ndarray, after: int, before: int) -> int | None:
    """Index of the first turn_end/eos special starting in bytes ``[after, before)``, None where there is none."""
    lo = int(np.searchsorted(starts, after, side="left"))
    hi = int(np.searchsorted(starts, before, side="left"))
    for t in range(lo, hi):
        if is_turn_end(vocab, int(ids[t])):
            return t
    return None
