"""Chat data for the engine: conversations → `Batch`es, each side in its own chat template.

A sample is one conversation (never packed with another). Each side renders it with its own template;
every teacher with another tokenizer or template is aligned to the student per message content
(`xtalign.chat.align_conversation`); a teacher with the student's tokenizer AND template is a same-
vocabulary side (the student's ids). With several teachers a conversation is truncated once, to what fits
every side, so the student's ids are the same for all of them. Loss masks come from `data.train_on`;
held-out bits per byte is over assistant content bytes only (the same bytes on both sides).

Rows are checked when the corpus loads: a row that cannot be rendered or aligned is counted and skipped
(one summary line), or with `data.strict` refused with its row number.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import Counter, OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from xtalign.chat import (
    ChatDataError,
    ChatError,
    ChatSide,
    ChatTemplate,
    ChatTokens,
    Conversation,
    ConversationAlignment,
    TokenPart,
    align_conversation,
    read_conversations,
)
from xtalign.chat.align_batch import align_batch
from xtalign.chat.side_batch import render_sides
from xtalign.distill.config import DataConfig, DistillConfig
from xtalign.distill.data.batch import IGNORE, Batch, TeacherSide
from xtalign.distill.data.builder import pad_rows
from xtalign.distill.data.corpus import split_documents
from xtalign.distill.errors import DataError
from xtalign.zoo.tokenizer import Tokenizer

__all__ = ["ChatBatchBuilder", "ChatCorpus", "chat_builder", "chat_sides", "load_chat_corpus", "template_digest"]

log = logging.getLogger(__name__)

_HASH_FORMAT = "xtalign-chat-data/1"
_CHECK_BATCH = 64  # conversations checked per batch when the corpus loads
Aligned = tuple[Conversation, list[ConversationAlignment | None]]  # what `ChatBatchBuilder.align` returns
SCORED = (TokenPart.CONTENT, TokenPart.REASONING)  # the bytes bits per byte is over (assistant messages)


@dataclass(frozen=True, eq=False)
class ChatCorpus:
    """Conversations as samples: train sample ``i`` has id ``i``, held-out ``j`` has ``len(train) + j``."""

    train: tuple[Conversation, ...]
    heldout: tuple[Conversation, ...]
    data_hash: str
    description: str
    skipped: dict[str, int]
    train_sources: tuple[str, ...] = ()
    heldout_sources: tuple[str, ...] = ()


def template_digest(template: ChatTemplate) -> str:
    return hashlib.sha256(template.source.encode("utf-8")).hexdigest()


def _conversation_json(conv: Conversation) -> str:
    return json.dumps(asdict(conv), sort_keys=True, ensure_ascii=False)


def _cache_key(conv: Conversation) -> Hashable:
    """The conversation itself (equal exactly where its JSON is), its JSON where it holds lists."""
    try:
        hash(conv)
    except TypeError:
        return _conversation_json(conv)
    return conv


def chat_data_hash(train: Sequence[Conversation], heldout: Sequence[Conversation]) -> str:
    """sha256 over every conversation (train then held-out), in order."""
    h = hashlib.sha256(json.dumps({"format": _HASH_FORMAT, "n_train": len(train), "n_heldout": len(heldout)}).encode())
    for conv in (*train, *heldout):
        data = _conversation_json(conv).encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def _read(path: str, cfg: DataConfig) -> list[Conversation]:
    fmt = {"jsonl": "jsonl", "parquet": "parquet"}.get(Path(path).suffix.lstrip(".").lower(), "auto")
    try:
        convs, skipped = read_conversations(path, fmt=fmt, strict=cfg.strict)  # type: ignore[arg-type]
    except ChatDataError as exc:
        raise DataError(f"{exc} (data.strict: true refuses bad rows; set it false to skip them)") from None
    if skipped:
        log.warning("%s: skipped %d bad rows (%s)", path, sum(skipped.values()),
                    ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items())))
    if not convs:
        raise DataError(f"{path}: no usable conversation (rows need a 'messages' list with an assistant turn)")
    return convs


def _keep_alignable(convs: list[Conversation], builder: ChatBatchBuilder, *, strict: bool, where: str,
                    skipped: Counter[str]) -> list[Conversation]:
    """The conversations every side can render and align within the budget; the rest counted (or refused)."""
    out = []
    for lo in range(0, len(convs), _CHECK_BATCH):
        part = convs[lo: lo + _CHECK_BATCH]
        try:
            builder._align_batch(part)  # all of them align: as `align` would, one by one
            out.extend(part)
            continue
        except (ChatError, ValueError):
            pass
        for n, conv in enumerate(part, start=lo + 1):
            try:
                builder.align(conv)
            except ChatError as exc:
                if strict:
                    raise DataError(f"{where} row {n}: {exc}") from None
                skipped[getattr(exc, "reason", "template")] += 1
                continue
            out.append(conv)
    return out


def load_chat_corpus(cfg: DataConfig, builder: ChatBatchBuilder, *, seed: int) -> ChatCorpus:
    """Read, check against every side's template, and split (by conversation) the configured chat data."""
    convs = _read(cfg.train, cfg)
    skipped: Counter[str] = Counter()
    if cfg.heldout is not None:
        train, held = convs, _read(cfg.heldout, cfg)
        how = f"held-out file {cfg.heldout}"
    else:
        t_idx, h_idx = split_documents(len(convs), cfg.heldout_fraction, seed)
        train, held = [convs[i] for i in t_idx], [convs[i] for i in h_idx]
        how = f"{len(held)} of {len(convs)} conversations held out (seed {seed})"
    train = _keep_alignable(train, builder, strict=cfg.strict, where=cfg.train, skipped=skipped)
    held = _keep_alignable(held, builder, strict=cfg.strict, where=cfg.heldout or cfg.train, skipped=skipped)
    if skipped:
        log.warning("chat data: skipped %d conversations the templates cannot render or align (%s)",
                    sum(skipped.values()), ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items())))
    if not train or not held:
        raise DataError(f"{cfg.train}: no {'training' if not train else 'held-out'} conversation is usable with "
                        f"these templates and seq_len (skipped: {dict(skipped)})")
    description = (f"{cfg.train}: {len(train)} training conversations; {how} -> {len(held)} held-out; "
                   f"{sum(skipped.values())} skipped")
    return ChatCorpus(train=tuple(train), heldout=tuple(held), data_hash=chat_data_hash(train, held),
                      description=description, skipped=dict(skipped),
                      train_sources=(Path(cfg.train).name,) * len(train),
                      heldout_sources=(Path(cfg.heldout or cfg.train).name,) * len(held))


# --- one conversation on every side --------------------------------------------------------------------


def _shift_targets(ids: np.ndarray, loss: np.ndarray) -> np.ndarray:
    """``[T]`` next-token targets where the next token carries loss, IGNORE elsewhere and at the end."""
    out = np.full(ids.shape, IGNORE, dtype=np.int64)
    out[:-1] = np.where(loss[1:], ids[1:], IGNORE)
    return out


def _scored(tokens: ChatTokens, assistant: np.ndarray) -> np.ndarray:
    """``[T]`` bool: the tokens bits per byte scores (assistant content and reasoning)."""
    content = (tokens.part == SCORED[0]) | (tokens.part == SCORED[1])  # np.isin, without its overhead
    return content & assistant[np.maximum(tokens.message, 0)] & (tokens.message >= 0)


@dataclass(frozen=True, eq=False)
class _ChatRow:
    """One conversation on every side: the student's arrays and, per distinct teacher side, its arrays."""

    text: str
    n_bytes: int
    s_ids: np.ndarray
    s_ends: np.ndarray
    s_targets: np.ndarray
    s_scored: np.ndarray
    sides: tuple[tuple[np.ndarray, ...] | None, ...]  # per teacher side: ids, ends, targets, scored, s_pred, t_pred
    teacher_texts: tuple[str, ...]
    teacher: str | None


class ChatBatchBuilder:
    """Conversations -> `Batch` for a student and its teachers, each side in its own template (thread-safe;
    rows cached per conversation). The conversations of a batch not in the cache are aligned together
    (`align_batch`: one rendering pass and one `encode_batch` call per side), bitwise as `align` one by one."""

    def __init__(self, student: ChatSide, teachers: Sequence[ChatSide], labels: Sequence[str], *, seq_len: int,
                 train_on: str, now: datetime, cache_size: int = 2048) -> None:
        self.student, self.teachers, self.labels = student, tuple(teachers), tuple(labels)
        self.seq_len, self.train_on, self.now = seq_len, train_on, now
        key = (student.tokenizer.vocab.fingerprint, template_digest(student.template))
        self._same = [(t.tokenizer.vocab.fingerprint, template_digest(t.template)) == key for t in self.teachers]
        self._cache: OrderedDict[Hashable, _ChatRow] = OrderedDict()
        self.cache_size = cache_size
        self._lock = threading.Lock()

    def same_vocab(self, i: int) -> bool:
        return self._same[i]

    def _kw(self, teacher: ChatSide) -> dict[str, Any]:
        return {"student": self.student, "teacher": teacher, "train_on": self.train_on,
                "max_student_tokens": self.seq_len, "max_teacher_tokens": self.seq_len, "now": self.now}

    def _align_all(self, conv: Conversation) -> list[ConversationAlignment | None]:
        return [None if same else align_conversation(conv, **self._kw(t))
                for t, same in zip(self.teachers, self._same, strict=True)]

    def align(self, conv: Conversation) -> Aligned:
        """Every teacher side's alignment of `conv`, truncated ONCE to what fits every side (so the student's
        ids are the same for all); ChatError when a template refuses it or nothing fits."""
        return self._settle(conv, self._align_all(conv))

    def _settle(self, conv: Conversation, als: list[ConversationAlignment | None],
                alone: ConversationAlignment | None = None) -> Aligned:
        """`align` from the teacher sides' alignments of `conv` (and, with no cross-vocabulary teacher, the
        student's alignment with itself where already made)."""
        cut = [a for a in als if a is not None and a.truncation is not None]
        if cut:  # re-align every side on the most cut conversation
            conv = min(cut, key=lambda a: a.student.n_tokens).conversation
            als = self._align_all(conv)
        ids = [a.student.ids for a in als if a is not None]
        if any(not np.array_equal(ids[0], x) for x in ids[1:]):
            raise ChatDataError("inconsistent", "the teachers' budgets cut the conversation at different places")
        if not ids:  # no cross-vocabulary teacher: the student side alone
            als_s = alone or align_conversation(conv, **self._kw(self.student))
            return als_s.conversation, [None] * len(self.teachers) + [als_s]
        return conv, als

    def align_batch(self, convs: Sequence[Conversation]) -> list[Aligned]:
        """`align` of every conversation, each side rendered and encoded for the whole batch at once (the student
        once for all teachers); the same results, and where one is refused, the same error as `align`."""
        try:
            return self._align_batch(list(convs))
        except (ChatError, ValueError):
            return [self.align(c) for c in convs]

    def _align_batch(self, convs: list[Conversation]) -> list[Aligned]:
        if not all(any(m.role == "assistant" for m in c.messages) for c in convs):
            raise ChatDataError("no_assistant", "a conversation has no assistant turn")
        student = render_sides(self.student, convs, now=self.now)
        per_teacher = [None if same else align_batch(convs, student, render_sides(t, convs, now=self.now),
                                                     **self._kw(t))
                       for t, same in zip(self.teachers, self._same, strict=True)]
        alone = (align_batch(convs, student, student, **self._kw(self.student)) if all(self._same)
                 else [None] * len(convs))
        return [self._settle(conv, [None if p is None else p[b] for p in per_teacher], alone[b])
                for b, conv in enumerate(convs)]

    def _row(self, conv: Conversation, als: list[ConversationAlignment | None]) -> _ChatRow:
        ref = next(a for a in als if a is not None)
        s = ref.student
        assistant = np.array([m.role == "assistant" for m in conv.messages], bool)
        sides: list[tuple[np.ndarray, ...] | None] = []
        texts = []
        for al in als[: len(self.teachers)]:
            if al is None:
                sides.append(None)
                texts.append(s.text)
                continue
            keep = al.loss_chunk
            s_pred, t_pred = al.prediction_chunks()
            s_pred = np.where((s_pred >= 0) & keep[np.maximum(s_pred, 0)], s_pred, -1)
            t_pred = np.where((t_pred >= 0) & keep[np.maximum(t_pred, 0)], t_pred, -1)
            t = al.teacher
            sides.append((t.ids, t.ends, _shift_targets(t.ids, t.loss_token), _scored(t, assistant), s_pred,
                          t_pred))
            texts.append(t.text)
        data = s.text.encode("utf-8")
        return _ChatRow(text=s.text, n_bytes=len(data), s_ids=s.ids, s_ends=s.ends,
                        s_targets=_shift_targets(s.ids, s.loss_token), s_scored=_scored(s, assistant),
                        sides=tuple(sides), teacher_texts=tuple(texts), teacher=conv.teacher)

    def _rows(self, convs: Sequence[Conversation]) -> list[_ChatRow]:
        """The rows of `convs`, from the cache where present (the rest aligned as one batch)."""
        keys = [_cache_key(c) for c in convs]
        with self._lock:
            found = {k: self._cache[k] for k in keys if k in self._cache}
        miss = list({k: c for k, c in zip(keys, convs, strict=True) if k not in found}.items())
        if miss:
            made = {k: self._row(*aligned) for (k, _), aligned in zip(miss, self.align_batch([c for _, c in miss]),
                                                                        strict=True)}
            with self._lock:
                for k, row in made.items():
                    self._cache[k] = row
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
            found.update(made)
        return [found[k] for k in keys]

    def _route(self, rows: Sequence[_ChatRow]) -> np.ndarray:
        """``[n_teachers, B]`` bool: teacher i teaches row b (a row naming a teacher goes to it only)."""
        out = np.ones((len(self.teachers), len(rows)), dtype=bool)
        for b, row in enumerate(rows):
            if row.teacher is not None:
                if row.teacher not in self.labels:
                    raise DataError(f"a row names teacher {row.teacher!r}, which the run does not have (teachers: "
                                    f"{', '.join(self.labels)})")
                out[:, b] = np.array([lab == row.teacher for lab in self.labels])
        return out

    def _side(self, i: int, rows: Sequence[_ChatRow], route: np.ndarray, s: dict[str, np.ndarray]) -> TeacherSide:
        if self._same[i]:
            targets = np.where(route[i][:, None], s["targets"], IGNORE)
            return TeacherSide(ids=s["ids"], lengths=s["lengths"], targets=targets, ends=s["ends"],
                               scored=s["scored"] & route[i][:, None], texts=tuple(r.text for r in rows))
        parts = [r.sides[i] for r in rows]
        ids = pad_rows([p[0] for p in parts], -1)  # type: ignore[index]
        cols = {name: pad_rows([p[k] for p in parts], fill) for name, k, fill in  # type: ignore[index]
                (("ends", 1, -1), ("targets", 2, IGNORE), ("s_pred", 4, -1), ("t_pred", 5, -1))}
        scored = pad_rows([p[3] for p in parts], 0).astype(bool)  # type: ignore[index]
        off = ~route[i][:, None]
        return TeacherSide(ids=ids, lengths=np.array([p[0].shape[0] for p in parts], np.int64),  # type: ignore[index]
                           targets=np.where(off, IGNORE, cols["targets"]), ends=cols["ends"], scored=scored & ~off,
                           student_chunk=np.where(off, -1, cols["s_pred"]),
                           teacher_chunk=np.where(off, -1, cols["t_pred"]),
                           texts=tuple(r.teacher_texts[i] for r in rows))

    def build(self, index: int, sample_ids: np.ndarray, convs: Sequence[Conversation],
              sources: Sequence[str] = ()) -> Batch:
        """One batch of conversations, every side padded with -1."""
        sample_ids = np.asarray(sample_ids, dtype=np.int64)
        rows = self._rows(convs)
        route = self._route(rows)
        s = {"ids": pad_rows([r.s_ids for r in rows], -1), "ends": pad_rows([r.s_ends for r in rows], -1),
             "targets": pad_rows([r.s_targets for r in rows], IGNORE),
             "scored": pad_rows([r.s_scored for r in rows], 0).astype(bool),
             "lengths": np.array([r.s_ids.shape[0] for r in rows], np.int64)}
        teachers = tuple(self._side(i, rows, route, s) for i in range(len(self.teachers)))
        return Batch(index=index, sample_ids=sample_ids, n_bytes=np.array([r.n_bytes for r in rows], np.int64),
                     student_ids=s["ids"], student_lengths=s["lengths"], student_targets=s["targets"],
                     teachers=teachers, texts=tuple(r.text for r in rows), sources=tuple(sources),
                     student_ends=s["ends"], student_scored=s["scored"], route=route)


def _template(spec: str | None, model: str, tokenizer: str, key: str) -> ChatTemplate:
    from xtalign.chat import ChatTemplateError, load_template, template_for_tokenizer

    try:
        if spec is not None:
            return load_template(spec)
        try:
            return template_for_tokenizer(model)
        except ChatTemplateError:
            return template_for_tokenizer(tokenizer)
    except ChatTemplateError as exc:
        what = exc.missing or str(exc)
        raise DataError(f"{key}: {what}; set {key} to a template name (xtalign.chat.template_names(), e.g. "
                        "google-gemma-2-2b-it), a .jinja file, an HF folder or a .gguf") from None


def chat_sides(cfg: DistillConfig, s_tok: Tokenizer, t_toks: Sequence[Tokenizer]) -> tuple[ChatSide, list[ChatSide]]:
    """Each side's tokenizer with its chat template (configured, else the one its model brings)."""
    from xtalign.distill.models.identity import tokenizer_name

    s = cfg.student
    student = ChatSide(s_tok, _template(s.chat_template, s.model, tokenizer_name(s.model, s.tokenizer),
                                        "student.chat_template"), add_bos=cfg.data.add_bos)
    teachers = [ChatSide(tok, _template(t.chat_template, t.model, tokenizer_name(t.model, t.tokenizer),
                                        f"teachers.{i}.chat_template"), add_bos=cfg.data.add_bos)
                for i, (t, tok) in enumerate(zip(cfg.teachers, t_toks, strict=True))]
    return student, teachers


def chat_builder(cfg: DistillConfig, s_tok: Tokenizer, t_toks: Sequence[Tokenizer]) -> ChatBatchBuilder:
    student, teachers = chat_sides(cfg, s_tok, t_toks)
    now = datetime.fromisoformat(cfg.data.chat_date)
    return ChatBatchBuilder(student, teachers, [t.label for t in cfg.teachers], seq_len=cfg.seq_len,
                            train_on=cfg.data.train_on, now=now)


def student_chat_template(cfg: DistillConfig) -> str | None:
    """The student's chat template source for its export (None for text data)."""
    if cfg.data.format != "chat":
        return None
    from xtalign.distill.models.identity import tokenizer_name

    s = cfg.student
    return _template(s.chat_template, s.model, tokenizer_name(s.model, s.tokenizer), "student.chat_template").source
