"""Coverage audit of a student/teacher pair: which character classes fall in the strict common set,
and therefore which cross-tokenizer loss to use (the X-Token paper's audit, automated).

The strict common set is the set of student rows a projection fills with one exact 1.0 entry: student
NORMAL tokens whose canonical bytes exist among the teacher's normal tokens. Probe strings
(numerals, punctuation, whitespace runs) count as common when the student covers the probe with
exactly one token and that token is in the strict common set.

Numerals are probed in two places. "context": after a word, as they occur in running text (`42` in
`is 42`); this is the headline and what `recommend` reads. "start": the numeral alone at text
start; a SentencePiece dummy-prefix space that the student emits as a token of its own is not part of
the numeral and is skipped, one merged into the numeral's token is kept (that token is what the
student produces). Punctuation and whitespace probes are the string alone at text start.

Probe classes also count the items that are *aligned*: the teacher splits the probe into the same byte
pieces as the student and every student piece is common, so the text is token-for-token an exact match
on both sides. For a student that writes a numeral as one token this equals "common"; for a student
that splits digits it says whether the teacher splits them the same way. `recommend` reads it.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from xtalign.vocab import TokenKind, Vocab

if TYPE_CHECKING:
    from xtalign.zoo.tokenizer import Tokenizer

Loss = Literal["P-KL", "H-KL"]

# Recommendation thresholds (see `recommend`).
NUMERAL_THRESHOLD = 0.5  # share of 2-digit (00-99) and of 3-digit (000-999) numerals that must be aligned
CORPUS_THRESHOLD = 0.9  # share of corpus tokens that must be exact matches
VOCAB_THRESHOLD = 0.5  # without a corpus: share of student normal tokens that must be exact matches

NUMERAL_PREFIX = "is "  # context for numerals: a word and a space, so the space is a real separator
MAX_MISSING = 5  # examples of uncommon items kept per class

# CJK unified ideographs (base, extension A, B-F, compatibility) and emoji blocks (misc symbols,
# dingbats, and U+1F000-U+1FAFF: pictographs, emoticons, transport, flags, supplemental symbols).
_CJK = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ebef]")
_EMOJI = re.compile("[\u2600-\u27bf\U0001f000-\U0001faff]")

_ORDINAL = {1: "one", 2: "two", 3: "three"}


def numeral_probes(digits: int, *, padded: bool = True) -> list[str]:
    """All `digits`-digit numerals; `padded` includes leading zeros (00-99: the paper's denominators)."""
    lo = 0 if padded or digits == 1 else 10 ** (digits - 1)
    return [f"{n:0{digits}d}" for n in range(lo, 10**digits)]


def text_probes() -> dict[str, tuple[str, list[str]]]:
    """Non-numeral probe classes: key -> (label, probe strings), each probed alone at text start."""
    return {
        "punctuation": ("ASCII punctuation", list(string.punctuation)),
        "whitespace.spaces": ("runs of 1-16 spaces", [" " * k for k in range(1, 17)]),
        "whitespace.tabs": ("runs of 1-8 tabs", ["\t" * k for k in range(1, 9)]),
        "whitespace.newlines": ("runs of 1-8 newlines", ["\n" * k for k in range(1, 9)]),
        "whitespace.indent": ("indentation \\n + 2/4/8 spaces", ["\n" + " " * k for k in (2, 4, 8)]),
    }


def _numeral_groups() -> dict[str, tuple[str, list[str], str]]:
    """key -> (label, numerals, mode). Paper denominators for the headline keys numerals.{1,2,3}."""
    out: dict[str, tuple[str, list[str], str]] = {}
    for mode, tag, where in (("context", "", "after a word"), ("start", ".start", "at text start")):
        out[f"numerals{tag}.1"] = (f"numerals 0-9, {where}", numeral_probes(1), mode)
        out[f"numerals{tag}.2"] = (f"numerals 00-99, {where}", numeral_probes(2), mode)
        out[f"numerals{tag}.3"] = (f"numerals 000-999, {where}", numeral_probes(3), mode)
        if mode == "context":  # without leading zeros: a subset, so only the headline mode repeats it
            out["numerals.2.nopad"] = (f"numerals 10-99, {where}", numeral_probes(2, padded=False), mode)
            out["numerals.3.nopad"] = (f"numerals 100-999, {where}", numeral_probes(3, padded=False), mode)
    return out


def covering_tokens(tok: Tokenizer, texts: Sequence[str],
                    spans: Sequence[tuple[int, int]]) -> list[tuple[int, ...]]:
    """For each text, the ids of the tokens that overlap its byte span [a, b), in order.

    Byte ends come from `Tokenizer.byte_ends`, which removes SentencePiece's dummy-prefix space: a
    token that is only that space spans no text bytes and never overlaps a probe.
    """
    ids_per_text: list[list[int] | None] = list(tok.encode_batch(texts)) if tok.lossless else [None] * len(texts)
    out: list[tuple[int, ...]] = []
    for text, ids, (a, b) in zip(texts, ids_per_text, spans, strict=True):
        arr, ends = tok.byte_ends(text, ids)
        starts = np.concatenate([np.zeros(1, dtype=np.int64), ends[:-1]])
        out.append(tuple(arr[(starts < b) & (ends > a)].tolist()))
    return out


def strict_common_mask(student: Vocab, teacher: Vocab) -> np.ndarray:
    """[V_student] bool: NORMAL student tokens whose projection row is one-hot exact — their canonical bytes
    are a teacher token (a single byte may be the teacher's byte-fallback token), as `build-projection` decides."""
    from xtalign.projection import exact_matches

    return (exact_matches(student, teacher) >= 0) & (student.kinds == TokenKind.NORMAL)


def _ids_matching(vocab: Vocab, pattern: re.Pattern[str]) -> np.ndarray:
    """NORMAL ids whose bytes decode as UTF-8 to text matching `pattern` (partial-UTF-8 pieces don't)."""
    hits = []
    for i in vocab.normal_ids.tolist():
        try:
            if pattern.search(vocab.token_bytes[i].decode("utf-8")):
                hits.append(i)
        except UnicodeDecodeError:
            continue
    return np.asarray(hits, dtype=np.int64)


def chunk_corpus(text: str, target: int = 1 << 16) -> list[str]:
    """Split at paragraph ends into pieces of about `target` characters, keeping every character."""
    paras = re.split(r"(?<=\n\n)", text)
    chunks, cur, size = [], [], 0
    for p in paras:
        cur.append(p)
        size += len(p)
        if size >= target:
            chunks.append("".join(cur))
            cur, size = [], 0
    if cur:
        chunks.append("".join(cur))
    return [c for c in chunks if c]


Probe = tuple[str, tuple[str, ...], tuple[tuple[int, ...], ...]]  # label, probe strings, covering ids per probe


@dataclass(frozen=True, kw_only=True, eq=False)  # holds arrays: identity, not value, equality
class Probes:
    """One side of an audit: how one tokenizer covers every probe (and, for a student, the corpus).

    Computed once per tokenizer and reused across pairs (`audit_pair(..., probes=, teacher_probes=)`).
    """

    name: str
    vocab: Vocab
    probes: dict[str, Probe]
    corpus_ids: np.ndarray | None = None
    corpus_name: str | None = None

    @cached_property
    def cjk_ids(self) -> np.ndarray:
        return _ids_matching(self.vocab, _CJK)

    @cached_property
    def emoji_ids(self) -> np.ndarray:
        return _ids_matching(self.vocab, _EMOJI)


def probe_tokenizer(tok: Tokenizer, *, corpus_text: str | None = None, corpus_name: str | None = None) -> Probes:
    """Tokenize all probes (and the corpus, if given) with `tok`."""
    probes: dict[str, Probe] = {}
    for key, (label, nums, mode) in _numeral_groups().items():
        pre = NUMERAL_PREFIX if mode == "context" else ""
        off = len(pre.encode("utf-8"))
        covers = covering_tokens(tok, [pre + n for n in nums], [(off, off + len(n)) for n in nums])
        probes[key] = (label, tuple(nums), tuple(covers))
    for key, (label, texts) in text_probes().items():
        covers = covering_tokens(tok, texts, [(0, len(t.encode("utf-8"))) for t in texts])
        probes[key] = (label, tuple(texts), tuple(covers))
    corpus_ids = None
    if corpus_text is not None:
        batches = tok.encode_batch(chunk_corpus(corpus_text))
        corpus_ids = np.concatenate([np.asarray(b, dtype=np.int64) for b in batches] or [np.zeros(0, np.int64)])
    return Probes(name=tok.name, vocab=tok.vocab, probes=probes, corpus_ids=corpus_ids, corpus_name=corpus_name)


@dataclass(frozen=True)
class ClassCount:
    """How many items of one class are common; `missing` holds a few that are not (for display).

    `aligned` (probe classes only): items the teacher splits into the same pieces, all of them common.
    """

    key: str
    label: str
    common: int
    total: int
    missing: tuple[str, ...] = ()
    aligned: int | None = None

    @property
    def share(self) -> float | None:
        return self.common / self.total if self.total else None

    @property
    def fraction(self) -> str:
        return f"{self.common:,}/{self.total:,}"

    def to_json(self) -> dict[str, Any]:
        share = None if self.share is None else round(self.share, 6)
        out: dict[str, Any] = {"label": self.label, "common": self.common, "total": self.total, "share": share}
        if self.aligned is not None:
            out["aligned"] = self.aligned
        return {**out, "missing_examples": list(self.missing)}


@dataclass(frozen=True, kw_only=True)
class AuditReport:
    """Counts per class for one student/teacher pair; `recommendation` applies `recommend`."""

    student: str
    teacher: str
    student_fingerprint: str
    teacher_fingerprint: str
    classes: tuple[ClassCount, ...]
    corpus: str | None = None
    numeral_mode: str = "context"

    def get(self, key: str) -> ClassCount:
        for c in self.classes:
            if c.key == key:
                return c
        raise KeyError(f"no class {key!r} in this audit; have {[c.key for c in self.classes]}")

    def has(self, key: str) -> bool:
        return any(c.key == key for c in self.classes)

    @property
    def numerals_headline(self) -> str:
        """E.g. "10/10 one-digit, 0/100 two-digit, 0/1000 three-digit" (paper denominators, in context)."""
        return ", ".join(f"{self.get(f'numerals.{d}').common}/{self.get(f'numerals.{d}').total} "
                         f"{_ORDINAL[d]}-digit" for d in (1, 2, 3))

    @property
    def recommendation(self) -> tuple[Loss, str]:
        return recommend(self)

    def to_json(self) -> dict[str, Any]:
        loss, reason = self.recommendation
        return {"student": self.student, "teacher": self.teacher,
                "student_fingerprint": self.student_fingerprint, "teacher_fingerprint": self.teacher_fingerprint,
                "corpus": self.corpus, "numeral_mode": self.numeral_mode, "numerals": self.numerals_headline,
                "classes": {c.key: c.to_json() for c in self.classes},
                "recommendation": {"loss": loss, "reason": reason},
                "thresholds": {"numerals": NUMERAL_THRESHOLD, "corpus_tokens": CORPUS_THRESHOLD,
                               "vocab": VOCAB_THRESHOLD}}


def _shown(vocab: Vocab, i: int) -> str:
    return repr(vocab.token_bytes[i].decode("utf-8", errors="backslashreplace"))[1:-1]  # \n stays visible


def _probe_counts(sp: Probes, tp: Probes, mask: np.ndarray) -> list[ClassCount]:
    """Common: the student covers the probe with one token, in the set. Aligned: same pieces, all common."""
    stb, ttb = sp.vocab.token_bytes, tp.vocab.token_bytes
    out = []
    for key, (label, texts, covers) in sp.probes.items():
        ok = [len(c) == 1 and bool(mask[c[0]]) for c in covers]
        same = [all(mask[i] for i in c) and [stb[i] for i in c] == [ttb[j] for j in tc]
                for c, tc in zip(covers, tp.probes[key][2], strict=True)]
        missing = tuple(repr(s)[1:-1] for s, good in zip(texts, ok, strict=True) if not good)[:MAX_MISSING]
        out.append(ClassCount(key, label, sum(ok), len(ok), missing, aligned=sum(same)))
    return out


def _id_class(key: str, label: str, vocab: Vocab, ids: np.ndarray, mask: np.ndarray) -> ClassCount:
    ok = mask[ids] if len(ids) else np.zeros(0, dtype=bool)
    missing = tuple(_shown(vocab, int(i)) for i in ids[~ok][:MAX_MISSING])
    return ClassCount(key, label, int(ok.sum()), len(ids), missing)


def special_counts(student: Vocab, teacher: Vocab) -> ClassCount:
    """Student special tokens that the projection maps to a teacher special: by role (bos, eos, chat
    markers, …), then rapidfuzz for specials without a role — the same rule as `build-projection`."""
    from xtalign.projection import map_special_tokens

    mapped = map_special_tokens(student, teacher)
    missing = tuple(student.names[i] for i in student.special_ids.tolist() if i not in mapped)[:MAX_MISSING]
    return ClassCount("special", "special / chat tokens (as W maps them)", len(mapped), len(student.special_ids),
                      missing)


def _corpus_counts(sp: Probes, mask: np.ndarray) -> list[ClassCount]:
    if sp.corpus_ids is None:
        return []
    ids = sp.corpus_ids
    hit = mask[ids]
    nbytes = sp.vocab.byte_lengths[ids].astype(np.int64)
    name = sp.corpus_name or "corpus"
    return [ClassCount("corpus.tokens", f"{name} tokens (student-tokenized)", int(hit.sum()), len(ids)),
            ClassCount("corpus.bytes", f"{name} bytes in those tokens", int(nbytes[hit].sum()), int(nbytes.sum()))]


def audit_pair(student: Tokenizer, teacher: Tokenizer, *, corpus_text: str | None = None,
               corpus_name: str | None = None, probes: Probes | None = None,
               teacher_probes: Probes | None = None) -> AuditReport:
    """Audit `student` against `teacher`. Pass `probes` / `teacher_probes` (from `probe_tokenizer`) to
    reuse tokenizations across pairs; `probes` then also supplies the corpus."""
    if probes is None:
        probes = probe_tokenizer(student, corpus_text=corpus_text, corpus_name=corpus_name)
    if teacher_probes is None:
        teacher_probes = probe_tokenizer(teacher)
    sv, tv = student.vocab, teacher.vocab
    mask = strict_common_mask(sv, tv)
    normal = sv.normal_ids
    classes = [ClassCount("vocab", "student normal tokens (exact match)", int(mask[normal].sum()), len(normal)),
               *_corpus_counts(probes, mask), *_probe_counts(probes, teacher_probes, mask),
               _id_class("cjk", "tokens with CJK ideographs", sv, probes.cjk_ids, mask),
               _id_class("emoji", "tokens with emoji", sv, probes.emoji_ids, mask),
               special_counts(sv, tv)]
    return AuditReport(student=student.name, teacher=teacher.name, student_fingerprint=sv.fingerprint,
                       teacher_fingerprint=tv.fingerprint, classes=tuple(classes), corpus=probes.corpus_name)


def _pct(c: ClassCount) -> str:
    return "n/a" if c.share is None else f"{100 * c.share:.1f}%"


def _aligned(c: ClassCount) -> tuple[int, float]:
    n = c.common if c.aligned is None else c.aligned
    return n, n / c.total if c.total else 0.0


def recommend(report: AuditReport) -> tuple[Loss, str]:
    """P-KL or H-KL, with the numbers that decided it. The rule, in order:

    1. P-KL if fewer than NUMERAL_THRESHOLD (50%) of the 2-digit (00-99) or of the 3-digit (000-999)
       numerals are aligned (both sides write them with the same pieces, all exact matches). Numerals
       decide math: with a Llama-3 student (numerals are one token, so aligned = common) the paper's
       Qwen3 teacher keeps 0/100 and 0/1000 → P-KL 38.85 vs H-KL 35.30; Phi-4-mini keeps 100/100 and
       1000/1000 → H-KL 39.18 vs P-KL 37.50. A common-set KL pushes down every student numeral token
       outside the set; alignment also catches the mirror case (a digit-splitting student, a teacher
       that groups digits: the teacher's numeral mass sits on tokens no common student row reaches).
    2. With a corpus: P-KL if fewer than CORPUS_THRESHOLD (90%) of its student tokens are exact
       matches, else H-KL.
    3. Without a corpus: the same with the vocabulary's exact-match share against VOCAB_THRESHOLD (50%).
    """
    nums, teacher = report.numerals_headline, report.teacher
    n2, n3 = report.get("numerals.2"), report.get("numerals.3")
    (a2, s2), (a3, s3) = _aligned(n2), _aligned(n3)
    split = f"{a2}/{n2.total} two-digit and {a3}/{n3.total} three-digit numerals are split the same way by both"
    one = f"as one exact-match token: {nums}"
    if min(s2, s3) < NUMERAL_THRESHOLD:
        return "P-KL", (f"numerals, the paper's decisive class, are not shared with {teacher}: only {split} ({one}; "
                        f"H-KL needs >= {NUMERAL_THRESHOLD:.0%}); a common-set KL would push the student's other "
                        "numeral tokens down, P-KL projects every token through W")
    if report.has("corpus.tokens"):
        c, what, thr = report.get("corpus.tokens"), f"{report.corpus or 'corpus'} tokens", CORPUS_THRESHOLD
    else:
        c, what, thr = report.get("vocab"), "student normal tokens (no corpus given)", VOCAB_THRESHOLD
    if (c.share or 0.0) < thr:
        return "P-KL", (f"{split} ({one}) but only {_pct(c)} of {what} are exact matches in {teacher} "
                        f"(< {thr:.0%}): most text would sit outside H-KL's exact-match KL")
    return "H-KL", (f"{split} ({one}) and {_pct(c)} of {what} are exact matches in {teacher} "
                    f"(>= {thr:.0%}): the exact-match KL covers most of the text")


__all__ = ["AuditReport", "ClassCount", "Probes", "audit_pair", "covering_tokens",
           "numeral_probes", "probe_tokenizer", "recommend", "special_counts", "strict_common_mask", "text_probes"]
