"""Chat data for cross-tokenizer distillation: each side renders a conversation with its own template.

- `messages`: `Message`, `Conversation`, `parse_conversation`, `read_conversations` (JSONL / parquet).
- `templates`: `ChatTemplate`, `load_template` (file, HF folder, tokenizer_config.json, .gguf, or a name of
  the pinned llama.cpp templates), `template_names`, `template_for_tokenizer`.
- `render`: `render` (transformers' `apply_chat_template` semantics, without transformers).
- `encode`: `encode_rendered` (template markers as specials, exact byte spans, one BOS).
- `spans`: `locate_spans`, `FieldSpan` (where each content sits in a rendering).
- `conversation_align`: `align_conversation` with `ChatSide` -> `ConversationAlignment`.
- batches, bitwise the same per conversation: `encode_rendered_batch` (one `encode_batch` call for all the
  renderings' text pieces), `side_batch.render_sides`, `align_batch.align_conversations` / `align_batch`.

Pure numpy / tokenizers / jinja2: no torch, no ray.
"""

from __future__ import annotations

from xtalign.chat.align_batch import align_conversations
from xtalign.chat.conversation_align import ChatTokens, ConversationAlignment, align_conversation
from xtalign.chat.encode import bos_string, encode_rendered, encode_rendered_batch, eos_string
from xtalign.chat.messages import (
    REASONS,
    ChatDataError,
    ChatError,
    Conversation,
    Message,
    parse_conversation,
    read_conversations,
)
from xtalign.chat.render import render
from xtalign.chat.sides import ChatSide, TokenPart
from xtalign.chat.spans import FieldSpan, locate_spans
from xtalign.chat.templates import (
    ChatTemplate,
    ChatTemplateError,
    load_template,
    template_for_tokenizer,
    template_names,
)

__all__ = ["REASONS", "ChatDataError", "ChatError", "ChatSide", "ChatTemplate", "ChatTemplateError", "ChatTokens",
           "Conversation", "ConversationAlignment", "FieldSpan", "Message", "TokenPart", "align_conversation",
           "align_conversations", "bos_string", "encode_rendered", "encode_rendered_batch", "eos_string",
           "load_template", "locate_spans", "parse_conversation", "read_conversations", "render",
           "template_for_tokenizer", "template_names"]
