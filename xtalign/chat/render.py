"""Render a conversation with a chat template the way transformers' `apply_chat_template` does.

The environment matches transformers' compiled one (written here, not imported, so the core stays free
of transformers): a sandbox that refuses to mutate objects (`ImmutableSandboxedEnvironment`),
``trim_blocks`` and ``lstrip_blocks``, the ``loopcontrols`` extension and a ``{% generation %}`` block tag,
a ``tojson`` filter that does not HTML-escape (``ensure_ascii=False``), the globals ``raise_exception``,
``strftime_now``, a ``dict`` constructor and a ``namespace`` that refuses ``_``-prefixed attributes. The
template sees ``messages`` (dicts; ``reasoning_content`` also under ``thinking``, as transformers aliases
it), ``tools=None``, ``documents=None``, ``add_generation_prompt``, ``bos_token``/``eos_token`` where
given, and the caller's extra variables (e.g. Llama-3's ``date_string``).

`now` fixes the clock ``strftime_now`` reads, so a rendering is reproducible (Llama-3 writes today's
date into its system header); the spans of a rendering are found by rendering it twice, which must
see the same date.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import jinja2
import jinja2.exceptions
import jinja2.ext
import jinja2.nodes
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

from xtalign.chat.messages import Conversation, Message
from xtalign.chat.templates import ChatTemplate, ChatTemplateError

__all__ = ["message_dicts", "render", "render_dicts"]


class _TemplateRaised(jinja2.exceptions.TemplateError):
    """What a template's `raise_exception(message)` throws; turned into ChatTemplateError by `render`."""


class _GenerationBlock(jinja2.ext.Extension):
    """``{% generation %}…{% endgeneration %}``: transformers tracks these spans for assistant masks; xtalign
    finds content spans itself (`xtalign.chat.spans`), so the block just renders its body."""

    tags = {"generation"}

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Callable[[], str]) -> str:
        return caller()


class _Namespace(jinja2.utils.Namespace):
    """`namespace(...)` without ``_``-prefixed attributes (they would reach Python internals)."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805 - Namespace's own signature trick
        self, rest = args[0], args[1:]
        for name in dict(*rest, **kwargs):
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, *rest, **kwargs)

    def __setitem__(self, name: str, value: Any) -> None:
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"chat templates cannot set the attribute {name!r} on a namespace")


class _DictFactory:
    """The template's `dict(...)`: builds plain dicts, exposes nothing else of the type."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
        return dict.fromkeys(*args, **kwargs)


def _raise_exception(message: str) -> None:
    raise _TemplateRaised(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@functools.lru_cache(maxsize=1)
def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_GenerationBlock, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now, dict=_DictFactory(),
                       namespace=_Namespace)
    return env


@functools.lru_cache(maxsize=64)
def _compiled(source: str) -> jinja2.Template:
    return _environment().from_string(source)


def message_dicts(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """Messages as the template sees them: reasoning under ``thinking`` and ``reasoning_content`` (the key
    order transformers gives), no key for a missing one (templates test ``is defined``)."""
    out = []
    for m in messages:
        d: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.reasoning_content is not None:
            d = {"thinking": m.reasoning_content, **d, "reasoning_content": m.reasoning_content}
        out.append(d)
    return out


def render_dicts(template: ChatTemplate, messages: list[dict[str, Any]], *, bos_token: str | None,
                 eos_token: str | None, add_generation_prompt: bool = False,
                 variables: Mapping[str, Any] | None = None, now: datetime | None = None) -> str:
    """Render message dicts (see `render`); template errors become ChatTemplateError."""
    try:
        compiled = _compiled(template.source)
    except jinja2.exceptions.TemplateSyntaxError as exc:
        raise ChatTemplateError(f"template {template.name} ({template.origin}) does not parse: {exc.message} "
                                f"(line {exc.lineno})") from None
    context: dict[str, Any] = {"tools": None, "documents": None}
    context.update({k: v for k, v in (("bos_token", bos_token), ("eos_token", eos_token)) if v is not None})
    context.update(variables or {})
    if now is not None:  # a context variable shadows the global: every call in this render sees one date
        context["strftime_now"] = now.strftime
    context.update(messages=messages, add_generation_prompt=add_generation_prompt)
    try:
        return compiled.render(**context)
    except _TemplateRaised as exc:
        raise ChatTemplateError(f"template {template.name}: {exc.message}") from None
    except Exception as exc:  # a template is code: any error it raises is its refusal of these inputs
        raise ChatTemplateError(f"template {template.name} failed to render: {type(exc).__name__}: {exc}") from None


def render(template: ChatTemplate, conversation: Conversation | Sequence[Message], *, bos_token: str | None,
           eos_token: str | None, add_generation_prompt: bool = False, variables: Mapping[str, Any] | None = None,
           now: datetime | None = None) -> str:
    """The conversation rendered by `template`, as transformers' `apply_chat_template(tokenize=False)` gives it
    with a tokenizer whose bos/eos strings are `bos_token`/`eos_token` (None: not defined in the template).

    A template's `raise_exception` (Gemma-2: "System role not supported") raises ChatTemplateError with
    the template's message; `variables` are extra template variables; `now` fixes `strftime_now`'s clock.
    """
    messages = conversation.messages if isinstance(conversation, Conversation) else tuple(conversation)
    return render_dicts(template, message_dicts(messages), bos_token=bos_token, eos_token=eos_token,
                        add_generation_prompt=add_generation_prompt, variables=variables, now=now)
