"""The sparse student→teacher projection W of X-Token, built without a dense V_s×V_t at any step.

Rows are student token ids, columns teacher token ids, and every non-empty row is a probability
distribution over at most `top_k` teacher ids, so `q_teacher = p_student @ W`. Ids are TOKENIZER ids
(equal to embedding-row ids); where a model has more embedding rows than its tokenizer has ids
(Qwen3: 151,669 vs 151,936) the row/column space covers the model rows and the extra rows are empty.

How each student row is filled:
1. exact: the teacher has a token with the same canonical bytes → one entry, weight 1.0. A student
   byte-fallback token is exact on the teacher token of the same single byte.
2. decomposed (other NORMAL tokens): forward pass — the student token's bytes re-encoded by the teacher,
   the first `max_pieces` pieces weighted β·γ^i, normalised; reverse pass — every teacher NORMAL token
   re-encoded by the student adds the same normalised weights to (s_i, t). Both passes add; each row
   keeps its `top_k` largest (ties: lower teacher id) and is renormalised. β cancels in the
   normalisation; it is kept for fidelity to the published description.
3. special: by role (bos, eos, pad, unk, chat markers from `CHAT_ROLES`), then rapidfuzz on the names
   of role-less specials. Rows with no mapping (unused slots, roles the teacher lacks) stay empty and
   are counted in `stats`, never invented.

Re-encoding is exact by construction (`encode_exact`): SentencePiece's dummy-prefix space is removed;
bytes that are not valid UTF-8 on their own (partial multi-byte pieces) go byte-wise (single-byte or
byte-fallback tokens, or a longer token with exactly those bytes) while valid runs around them are
encoded as text; a result whose bytes do not concatenate to the target falls back to a greedy longest
match over the vocabulary (counted in `stats`).
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from xtalign.align import flatten_rows
from xtalign.vocab import TokenKind, Vocab

if TYPE_CHECKING:
    from xtalign.zoo.tokenizer import Tokenizer

__all__ = ["CHAT_ROLES", "Projection", "ProjectionConfig", "RowSource", "build_projection", "encode_exact"]
log = logging.getLogger(__name__)

# Chat / tool markers that play the same part across families (role -> names); `<|end|>` is Phi-3's
# and harmony's end of turn, `<|message|>` harmony's end of a header.
CHAT_ROLES: dict[str, tuple[str, ...]] = {
    "turn_start": ("<|im_start|>", "<|start_header_id|>", "<start_of_turn>", "<|start|>"),
    "turn_end": ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>"),
    "header_end": ("<|end_header_id|>", "<|message|>"),
    "think_start": ("<think>",), "think_end": ("</think>",),
    "tool_call_start": ("<tool_call>", "[TOOL_CALLS]"), "tool_call_end": ("</tool_call>",),
    "fim_prefix": ("<|fim_prefix|>", "<fim_prefix>", "[PREFIX]"),
    "fim_middle": ("<|fim_middle|>", "<fim_middle>", "[MIDDLE]"),
    "fim_suffix": ("<|fim_suffix|>", "<fim_suffix>", "[SUFFIX]"),
}
_ESCAPED = re.compile("([\udc80-\udcff]+)")  # bytes that are not UTF-8, after surrogateescape decoding


class RowSource(IntEnum):
    """How a projection row was filled (stored per row, uint8). BYTE: a student byte-fallback token, exact
    on the teacher token of the same byte; IMPORTED: read from another tool's file, how is unknown."""

    EMPTY, EXACT, DECOMPOSED, BYTE, SPECIAL_ROLE, SPECIAL_FUZZY, IMPORTED = range(7)


@dataclass(frozen=True, kw_only=True)
class ProjectionConfig:
    """How to build W. `beta`, `gamma`: piece i of an n-piece decomposition weighs β·γ^i / Σ_j<n β·γ^j."""

    top_k: int = 4
    max_pieces: int = 4
    beta: float = 0.9
    gamma: float = 0.1
    reverse: bool = True
    special_fuzzy_threshold: float = 85.0  # rapidfuzz ratio (0–100) for specials without a known role

    def __post_init__(self) -> None:
        if self.top_k < 1 or self.max_pieces < 1:
            raise ValueError(f"top_k and max_pieces must be >= 1, got {self.top_k} and {self.max_pieces}")
        if not (self.beta > 0 and self.gamma > 0):
            raise ValueError(f"beta and gamma must be > 0, got {self.beta} and {self.gamma}")
        if not 0 <= self.special_fuzzy_threshold <= 100:
            raise ValueError(f"special_fuzzy_threshold must be in [0, 100], got {self.special_fuzzy_threshold}")

    def piece_weights(self, n: int) -> np.ndarray:
        """[n] float64 normalised weights of an n-piece decomposition (n=3 → 0.9009, 0.0901, 0.0090)."""
        w = self.beta * self.gamma ** np.arange(n, dtype=np.float64)
        return w / w.sum()

    def build(self, student: Tokenizer, teacher: Tokenizer) -> Projection:
        return build_projection(student, teacher, self)


@dataclass(frozen=True, eq=False, kw_only=True)
class Projection:
    """W as `indices [R, k]` int32 + `weights [R, k]` float32 (empty slots: index 0, weight 0).

    R = max(student vocab size, student model rows); columns span `teacher_cols` = max(teacher vocab
    size, teacher model rows). Indices are tokenizer ids. `row_source [R]` uint8 says how each row was
    filled (`RowSource`); `stats` counts rows per source and empty rows per reason.
    """

    indices: np.ndarray
    weights: np.ndarray
    row_source: np.ndarray
    student_name: str
    teacher_name: str
    student_vocab_size: int
    teacher_vocab_size: int
    student_fingerprint: str
    teacher_fingerprint: str
    teacher_cols: int
    student_model_rows: int | None = None
    teacher_model_rows: int | None = None
    config: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        shapes = (self.indices.shape, self.weights.shape, self.row_source.shape)
        if self.indices.ndim != 2 or shapes[1] != shapes[0] or shapes[2] != shapes[0][:1]:
            raise ValueError(f"indices, weights, row_source must be [R, k], [R, k], [R]; got {shapes}")
        if self.indices.size and (self.indices.min() < 0 or self.indices.max() >= self.teacher_cols
                                  or self.weights.min() < 0):
            raise ValueError(f"indices must lie in [0, {self.teacher_cols}) and weights be >= 0")

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.indices.shape[0]), int(self.teacher_cols))

    @property
    def top_k(self) -> int:
        return int(self.indices.shape[1])

    @property
    def is_exact(self) -> np.ndarray:
        """[R] bool: one-hot rows whose teacher token has exactly the student token's bytes."""
        return np.isin(self.row_source, (RowSource.EXACT, RowSource.BYTE))

    def row(self, student_id: int) -> list[tuple[int, float]]:
        """Non-empty entries of one row as (teacher_id, weight), largest weight first."""
        keep = self.weights[student_id] > 0
        ids, ws = self.indices[student_id][keep].tolist(), self.weights[student_id][keep].tolist()
        return list(zip(ids, ws, strict=True))

    def to_scipy(self) -> sp.csr_matrix:
        """W as a scipy CSR matrix [R, teacher_cols] float32."""
        mask = self.weights > 0
        indptr = np.concatenate([[0], np.cumsum(mask.sum(axis=1))]).astype(np.int64)
        m = sp.csr_matrix((self.weights[mask], self.indices[mask], indptr), shape=self.shape)
        m.sort_indices()
        return m


def _single_byte_ids(vocab: Vocab) -> dict[int, int]:
    """Byte value -> the token the family emits for it alone: a NORMAL token if one exists, else byte-fallback."""
    b2i = vocab.bytes_to_id
    return {**vocab.byte_token_ids, **{b: b2i[bytes([b])] for b in range(256) if bytes([b]) in b2i}}


@functools.lru_cache(maxsize=32)
def _longest(vocab: Vocab) -> int:  # cached: _greedy runs once per SentencePiece first piece
    return int(vocab.byte_lengths.max(initial=1))


def _greedy(vocab: Vocab, data: bytes, singles: dict[int, int]) -> list[int]:
    """Greedy longest match over the vocabulary; a byte with no token at all is skipped."""
    b2i, longest, out, i = vocab.bytes_to_id, _longest(vocab), [], 0
    while i < len(data):
        for ln in range(min(longest, len(data) - i), 1, -1):
            if (tid := b2i.get(data[i : i + ln])) is not None:
                out.append(tid)
                i += ln
                break
        else:
            if (tid := singles.get(data[i])) is not None:
                out.append(tid)
            i += 1
    return out


def _encode_texts(tok: Tokenizer, texts: list[str], singles: dict[int, int]) -> list[list[int]]:
    # A per-text loop: tiktoken's encode_batch spawns one thread-pool task per text, ~40x slower than a
    # plain loop for 10^5 token-sized strings; tiktoken is called directly to skip two wrapper frames.
    encode = getattr(getattr(tok.backend, "encoding", None), "encode_ordinary", tok.encode)
    if not tok.dummy_prefix:
        return list(map(encode, texts))
    # SentencePiece prepends a phantom space: let it stand for a real leading space, and remove it
    # (or the space it merged into) from the first piece otherwise.
    strip = [t[:1] == " " and len(t) > 1 for t in texts]  # "" would encode to nothing, not to the phantom
    out = list(map(encode, (t[1:] if cut else t for t, cut in zip(texts, strip, strict=True))))
    tb = tok.vocab.token_bytes
    for j, ids in enumerate(out):
        if not strip[j] and ids and tb[ids[0]].startswith(b" "):  # longest match finds the exact token
            out[j] = _greedy(tok.vocab, tb[ids[0]][1:], singles) + ids[1:]
    return out


def _encode_mixed(tok: Tokenizer, data: bytes, singles: dict[int, int]) -> list[int]:
    """Bytes that are not valid UTF-8 (partial multi-byte pieces) cannot be encoded as text: a token with
    exactly these bytes if there is one, else valid runs encoded as text and the other bytes matched
    byte-wise (greedy longest match, i.e. single-byte / byte-fallback tokens unless a longer token fits)."""
    if (tid := singles.get(data[0]) if len(data) == 1 else tok.vocab.bytes_to_id.get(data)) is not None:
        return [tid]
    out: list[int] = []
    for j, part in enumerate(_ESCAPED.split(data.decode("utf-8", errors="surrogateescape"))):
        if j % 2:  # odd parts of the split are the escaped runs
            out.extend(_greedy(tok.vocab, part.encode("utf-8", errors="surrogateescape"), singles))
        elif part:
            out.extend(_encode_texts(tok, [part], singles)[0])
    return out


def _mismatches(vocab: Vocab, targets: Sequence[bytes], pieces: list[list[int]]) -> np.ndarray:
    """Indices of targets whose pieces do not concatenate to them."""
    flat, offsets = flatten_rows(pieces)
    counts = np.diff(offsets)
    got = np.bincount(np.repeat(np.arange(len(pieces)), counts), weights=vocab.byte_lengths[flat],
                      minlength=len(pieces))
    want = np.fromiter(map(len, targets), dtype=np.int64, count=len(targets))
    tb = vocab.token_bytes
    # equal lengths per target and one equal blob mean every target matches: no per-target loop then
    if np.array_equal(got, want) and b"".join([tb[i] for i in flat.tolist()]) == b"".join(targets):
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero([vocab.decode_bytes(p) != t for p, t in zip(pieces, targets, strict=True)])


def encode_exact(tok: Tokenizer, targets: Sequence[bytes]) -> tuple[list[list[int]], int]:
    """Ids of `tok` whose bytes concatenate to each target exactly; returns (pieces, number of fallbacks)."""
    singles = _single_byte_ids(tok.vocab)
    pieces: list[list[int]] = [[] for _ in targets]
    texts, where = [], []
    for i, data in enumerate(targets):
        try:
            texts.append(data.decode("utf-8"))
            where.append(i)
        except UnicodeDecodeError:
            pieces[i] = _encode_mixed(tok, data, singles)
    for i, ids in zip(where, _encode_texts(tok, texts, singles), strict=True):
        pieces[i] = ids
    bad = _mismatches(tok.vocab, targets, pieces)
    for i in bad.tolist():
        pieces[i] = _greedy(tok.vocab, targets[i], singles)
    return pieces, len(bad)


def _piece_triplets(pieces: list[list[int]], owners: np.ndarray, cfg: ProjectionConfig) -> tuple[np.ndarray, ...]:
    """(owner [N], piece id [N], weight [N]) for the first `max_pieces` pieces of each decomposition."""
    flat, offsets = flatten_rows(pieces)
    counts = np.diff(offsets)
    owner_pos = np.repeat(np.arange(len(pieces)), counts)
    pos = np.arange(len(flat)) - np.repeat(np.cumsum(counts) - counts, counts)
    keep = pos < cfg.max_pieces
    table = np.zeros((cfg.max_pieces + 1, cfg.max_pieces))
    for n in range(1, cfg.max_pieces + 1):
        table[n, :n] = cfg.piece_weights(n)
    n = np.minimum(counts, cfg.max_pieces)[owner_pos[keep]]
    return owners[owner_pos[keep]], flat[keep], table[n, pos[keep]]


def exact_matches(student: Vocab, teacher: Vocab) -> np.ndarray:
    """[V_s] int64 teacher id with the same bytes, -1 where none (NORMAL and BYTE student rows only)."""
    out = np.full(student.size, -1, dtype=np.int64)
    ids = np.flatnonzero(np.isin(student.kinds, (TokenKind.NORMAL, TokenKind.BYTE)) & (student.byte_lengths > 0))
    tb, get = student.token_bytes, teacher.bytes_to_id.get
    out[ids] = [get(tb[i], -1) for i in ids.tolist()]
    singles = _single_byte_ids(teacher)  # single bytes may also match a teacher byte-fallback token
    one = ids[student.byte_lengths[ids] == 1]
    out[one] = [singles.get(tb[i][0], -1) for i in one.tolist()]
    return out


def _roles_of(vocab: Vocab, tid: int) -> list[str]:
    """Roles of one special id, most specific first: chat markers by name, the vocab's roles, role names."""
    from xtalign.zoo.builders import ROLE_NAMES

    name = vocab.names[tid]
    roles = [r for r, names in CHAT_ROLES.items() if name in names]
    roles += [r for r, i in vocab.roles.items() if i == tid and r not in roles]
    return roles + [r for r, names in ROLE_NAMES.items() if name in names and r not in roles]


def map_special_tokens(student: Vocab, teacher: Vocab, threshold: float = 85.0) -> dict[int, tuple[int, RowSource]]:
    """Student SPECIAL id -> (teacher id, how); by role first, rapidfuzz for specials without a role."""
    from rapidfuzz import fuzz, process, utils

    by_role: dict[str, int] = {}
    loose: list[tuple[int, str]] = []  # teacher specials without a known role: the fuzzy candidates
    for t in teacher.special_ids.tolist():
        roles = _roles_of(teacher, t)
        for r in roles:
            by_role.setdefault(r, t)
        if not roles:
            loose.append((t, teacher.names[t]))
    by_role.update({r: i for r, i in teacher.roles.items() if teacher.kinds[i] != TokenKind.UNUSED})
    out: dict[int, tuple[int, RowSource]] = {}
    for s in student.special_ids.tolist():
        roles = _roles_of(student, s)
        hit = next((by_role[r] for r in roles if r in by_role), None)
        if hit is not None:
            out[s] = (hit, RowSource.SPECIAL_ROLE)
        elif not roles and loose:
            m = process.extractOne(student.names[s], [n for _, n in loose], scorer=fuzz.ratio,
                                   processor=utils.default_process, score_cutoff=threshold)
            if m is not None:
                out[s] = (loose[m[2]][0], RowSource.SPECIAL_FUZZY)
    return out


def _top_k(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, shape: tuple[int, int],
           k: int) -> tuple[np.ndarray, np.ndarray]:
    """Sum duplicate (row, col) entries, keep each row's k largest (ties: lower col), renormalise."""
    m = sp.coo_matrix((vals, (rows, cols)), shape=shape).tocsr()
    m.sum_duplicates()
    r = np.repeat(np.arange(shape[0]), np.diff(m.indptr))
    # rounding makes mathematically equal sums tie exactly, so the lower teacher id wins
    order = np.lexsort((m.indices, -np.round(m.data, 12), r))
    r, c, v = r[order], m.indices[order], m.data[order]
    rank = np.arange(len(r)) - m.indptr[r]
    keep = (rank < k) & (v > 0)
    idx, w = np.zeros((shape[0], k), dtype=np.int32), np.zeros((shape[0], k), dtype=np.float64)
    idx[r[keep], rank[keep]], w[r[keep], rank[keep]] = c[keep], v[keep]
    total = w.sum(axis=1, keepdims=True)
    return idx, np.divide(w, total, out=np.zeros_like(w), where=total > 0).astype(np.float32)


def _decomposition_triplets(student: Tokenizer, teacher: Tokenizer, open_rows: np.ndarray,
                            cfg: ProjectionConfig) -> tuple[tuple[np.ndarray, ...], dict[str, int]]:
    """(row, col, weight) of the forward pass over `open_rows` and, if enabled, the reverse pass."""
    tb = student.vocab.token_bytes
    fwd, n_fwd = encode_exact(teacher, [tb[i] for i in open_rows.tolist()])
    rows, cols, vals = _piece_triplets(fwd, open_rows, cfg)
    fallbacks = {"forward": n_fwd, "reverse": 0}
    if cfg.reverse:
        t_ids = teacher.vocab.normal_ids
        rev, fallbacks["reverse"] = encode_exact(student, [teacher.vocab.token_bytes[i] for i in t_ids.tolist()])
        r_cols, r_rows, r_vals = _piece_triplets(rev, t_ids, cfg)
        keep = np.isin(r_rows, open_rows)  # exact, special and byte rows are fixed; only decomposed rows accumulate
        rows, cols = np.concatenate([rows, r_rows[keep]]), np.concatenate([cols, r_cols[keep]])
        vals = np.concatenate([vals, r_vals[keep]])
    return (rows, cols, vals), fallbacks


def build_projection(student: Tokenizer, teacher: Tokenizer, config: ProjectionConfig | None = None) -> Projection:
    """Build W for `student` (rows) onto `teacher` (columns); see the module docstring for the method."""
    cfg = config or ProjectionConfig()
    sv, tv = student.vocab, teacher.vocab
    shape = (max(sv.size, student.model_rows or 0), max(tv.size, teacher.model_rows or 0))
    exact = exact_matches(sv, tv)
    source = np.zeros(shape[0], dtype=np.uint8)
    source[: sv.size][exact >= 0] = np.where(sv.kinds[exact >= 0] == TokenKind.BYTE, RowSource.BYTE, RowSource.EXACT)
    open_rows = np.flatnonzero((sv.kinds == TokenKind.NORMAL) & (exact < 0) & (sv.byte_lengths > 0))
    (rows, cols, vals), fallbacks = _decomposition_triplets(student, teacher, open_rows, cfg)
    fixed = np.flatnonzero(exact >= 0)
    specials = map_special_tokens(sv, tv, cfg.special_fuzzy_threshold)
    s_rows = np.fromiter(specials, dtype=np.int64, count=len(specials))
    s_cols = np.array([t for t, _ in specials.values()], dtype=np.int64)
    source[s_rows] = [how for _, how in specials.values()]
    rows, cols = np.concatenate([rows, fixed, s_rows]), np.concatenate([cols, exact[fixed], s_cols])
    vals = np.concatenate([vals, np.ones(len(fixed) + len(s_rows))])
    indices, weights = _top_k(rows, cols, vals, shape, cfg.top_k)
    source[(weights[:, 0] > 0) & (source == RowSource.EMPTY)] = RowSource.DECOMPOSED
    stats = _stats(student, source, weights, fallbacks)
    log.info("projection %s -> %s: %s", sv.name, tv.name, stats)
    return Projection(indices=indices, weights=weights, row_source=source, student_name=student.name,
                      teacher_name=teacher.name, student_vocab_size=sv.size, teacher_vocab_size=tv.size,
                      student_fingerprint=sv.fingerprint, teacher_fingerprint=tv.fingerprint, teacher_cols=shape[1],
                      student_model_rows=student.model_rows, teacher_model_rows=teacher.model_rows,
                      config=asdict(cfg), stats=stats)


_EMPTY_REASONS = {"unused": TokenKind.UNUSED, "model_padding": 255, "special_unmapped": TokenKind.SPECIAL,
                  "byte_unmapped": TokenKind.BYTE, "normal_unmapped": TokenKind.NORMAL}


def _stats(student: Tokenizer, source: np.ndarray, weights: np.ndarray, fallbacks: dict[str, int]) -> dict[str, Any]:
    """Row counts per source, empty rows per reason, exact share of the student's NORMAL tokens."""
    entries = (weights > 0).sum(axis=1)
    empty = entries == 0
    kinds = np.full(len(source), 255, dtype=np.int64)  # 255: model rows past the tokenizer's ids
    kinds[: student.vocab.size] = student.vocab.kinds
    exact = int(((kinds == TokenKind.NORMAL) & (source == RowSource.EXACT)).sum())
    return {
        "rows": len(source), "entries": int(entries.sum()), "normal_rows": int((kinds == TokenKind.NORMAL).sum()),
        "mean_entries_per_row": round(float(entries[~empty].mean()) if (~empty).any() else 0.0, 4),
        "exact_share": round(exact / max(int((kinds == TokenKind.NORMAL).sum()), 1), 6), "exact_rows": exact,
        "rows_by_source": {s.name.lower(): int((source == s).sum()) for s in RowSource if s != RowSource.IMPORTED},
        "empty_rows": int(empty.sum()),
        "empty_by_reason": {k: int((empty & (kinds == v)).sum()) for k, v in _EMPTY_REASONS.items()},
        "reencode_fallbacks": fallbacks,
    }
